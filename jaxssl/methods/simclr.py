"""SimCLR (Chen et al. 2020, https://arxiv.org/abs/2002.05709).

Two views of every image go through one encoder and a projection head; the
NT-Xent loss contrasts each view against all views of the global batch.
Both views are encoded in one batch, so BatchNorm statistics cover both (as in
the reference, which concatenates the views along the batch:
`Forward(per_view=False)`).

SimCLR v2's memory (`loss.memory`, Chen et al. 2020b,
https://arxiv.org/abs/2006.10029, §2 and Appendix D): "the memory mechanism
from MoCo, which designates a memory network (with a moving average of
weights for stabilization) whose output will be buffered as negative
examples". The released code has no memory, so this follows the paper's
words with MoCo's machinery:

* the memory network is a momentum copy of encoder and projector
  (`config.target`: starts as a copy, τ constant, MoCo's 0.999), run on both
  views concatenated (its own BatchNorm statistics over both, as the online
  network's), without gradient;
* after each step its normalised projections of the global batch's view 1
  then view 2 (each gathered in device order, so the memory is the same on
  any number of devices) overwrite the `loss.queue_size`-row ring buffer at
  its pointer (`moco.enqueue` once per view: 2·B rows a step; K must be a
  multiple of B);
* the NT-Xent logits of every anchor gain its similarity to the K buffered
  rows as negatives (`losses.nt_xent(..., queue=...)`); positives and the
  in-batch negatives stay the online network's.

Monitored with the memory: `memory_sim`, the mean cosine similarity of the
anchors to the buffered negatives.
"""

from __future__ import annotations

import functools
from typing import TYPE_CHECKING, Optional

import jax
from jax.sharding import PartitionSpec

from jaxssl import losses
from jaxssl import schedules
from jaxssl.methods import base
from jaxssl.methods import moco

if TYPE_CHECKING:  # configs are only read here: no runtime dependency
  import ml_collections


def loss(online: base.GroupOutputs, target: Optional[base.GroupOutputs],
         method_state: Optional[dict], ctx: base.StepContext, *,
         temperature: float, memory: bool = False) -> tuple[jax.Array, dict]:
  """NT-Xent on `z = [z_view1; z_view2]` of the local anchors, negatives
  gathered over `ctx.axis_name` (`base.LossFn`); with `memory`, the rows of
  `method_state['queue']` are extra negatives."""
  del target
  z = online["global"]["z"]
  z1, z2 = base.split_views(z, 2)
  queue = method_state["queue"] if memory else None
  value, accuracy = losses.nt_xent_and_accuracy(
      z1, z2, temperature, axis_name=ctx.axis_name, queue=queue)
  metrics = {"contrast_acc": accuracy}
  if queue is not None:
    metrics["memory_sim"] = moco.queue_similarity(z, queue)
  return value, metrics


def update_memory(method_state, online, target, ctx):
  """Pushes the memory network's projections of both views of the global
  batch into the ring buffer."""
  del online
  for z in base.split_views(target["global"]["z"], 2):
    method_state = moco.enqueue(method_state, z, ctx.axis_name)
  return method_state


def create(config: ml_collections.ConfigDict, *, axis_name: Optional[str],
           total_steps: int, num_examples: int) -> base.Method:
  """SimCLR of config sections `model`, `head`, `loss` (`temperature`;
  `memory` with `queue_size` and `target`: SimCLR v2's memory)."""
  del num_examples  # no per-example state
  target = state = None
  if config.loss.get("memory", False):
    size, batch = config.loss.queue_size, config.batch_size
    if size <= 0 or size % batch:
      raise ValueError(
          f"config.loss.queue_size={size} must be a positive multiple of "
          f"config.batch_size={batch} (SimCLR v2's memory takes whole views "
          "of the global batch)")
    target = base.Target(
        network=base.create_network(config, axis_name),
        momentum=schedules.target_momentum(config.target, total_steps),
        tracks=base.subtrees("encoder", "projector"),
        init=config.target.get("init") or "copy",
        forward=base.Forward(per_view=False))
    memory_rng = jax.random.fold_in(jax.random.key(config.seed), 0x6d656d)
    out_dim = config.head.out_dim
    state = base.State(
        init=lambda num_shards: moco.init_queue(memory_rng, size, out_dim),
        update=update_memory, specs=PartitionSpec())
  return base.Method(
      name="simclr", views={"global": 2},
      network=base.create_network(config, axis_name),
      forward=base.Forward(per_view=False),
      loss=functools.partial(loss, temperature=config.loss.temperature,
                             memory=state is not None),
      target=target, state=state)
