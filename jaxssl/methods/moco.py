"""MoCo v1 and v2: a momentum key encoder and a queue of negative keys.

He, Fan, Wu, Xie & Girshick, "Momentum Contrast for Unsupervised Visual
Representation Learning", CVPR 2020 (https://arxiv.org/abs/1911.05722);
Chen, Fan, Girshick & He, "Improved Baselines with Momentum Contrastive
Learning" (v2, https://arxiv.org/abs/2003.04297). As the reference
(facebookresearch/moco, `moco/builder.py`):

* the query encoder (encoder → projector: v1 a linear layer to 128, v2 an
  MLP 2048 → 128 without BatchNorm, `head.use_bn=False`) sees view 1 only,
  the key encoder (a momentum copy of encoder and projector, τ = 0.999
  constant, `target.momentum_schedule='constant'`) view 2 only, with no
  gradient;
* the loss is `info_nce(q, k, τ, queue=queue)` (positive at column 0,
  negatives the queue), not symmetrised;
* the queue (`loss.queue_size` K = 65,536 keys of 128 dimensions, initially
  normalised Gaussian vectors) is method state, replicated on every device:
  after the step the normalised keys of the WHOLE global batch, gathered in
  device order, overwrite the K-row ring buffer at its pointer, which then
  moves on by the global batch (`_dequeue_and_enqueue` with
  `concat_all_gather`; K must be a multiple of the batch).

Shuffling BN (`target.shuffle_bn`): the reference's GPUs normalise with
their own batch statistics (32 images each), so a query and its positive
key would be normalised with statistics of the same small sub-batch, a
signal the model can exploit ("cheat"); the reference permutes the key
batch across GPUs before the key encoder and restores the order after it.
Here BatchNorm normalises over the global batch by default
(`model.bn_group_size=0`, SyncBN as solo-learn's MoCo v2+): queries and
positive keys still share the batch's statistics, but those of the whole
batch, so the shortcut is far weaker; this is a deviation from the
reference, which trains fine in practice. With per-device BN
(`model.bn_group_size=1`, the reference's setting) turn
`target.shuffle_bn` on: `ShuffledForward` all-gathers the key views
(every device holds the global batch of key images for a moment: the
reference's memory cost), takes the rows of one permutation drawn on device
0 (the reference's broadcast from rank 0), and un-permutes the keys with a
second all-gather.

Monitored: `contrast_acc` (top-1 of the positive among the K + 1 logits,
the reference's `acc1`), `queue_sim` (mean cosine similarity of the queries
to the queue) and `tau`.
"""

from __future__ import annotations

import dataclasses
import functools
from typing import TYPE_CHECKING, Optional

import jax
from jax import lax
import jax.numpy as jnp
from jax.sharding import PartitionSpec

from jaxssl import losses
from jaxssl import schedules
from jaxssl.methods import base

if TYPE_CHECKING:  # configs are only read here: no runtime dependency
  import ml_collections

QUERY = {"global": (0,)}  # the query encoder sees view 1,
KEY = {"global": (1,)}  # the key encoder view 2.


def loss(online: base.GroupOutputs, target: base.GroupOutputs,
         method_state: dict, ctx: base.StepContext, *,
         temperature: float) -> tuple[jax.Array, dict]:
  """InfoNCE of the local queries against their keys and the queue
  (`base.LossFn`; nothing is gathered: the queue holds the negatives)."""
  del ctx
  queue = method_state["queue"]
  q, k = online["global"]["z"], lax.stop_gradient(target["global"]["z"])
  value, accuracy = losses.info_nce_and_accuracy(q, k, temperature,
                                                 queue=queue)
  return value, {"contrast_acc": accuracy,
                 "queue_sim": queue_similarity(q, queue)}


def queue_similarity(x: jax.Array, queue: jax.Array) -> jax.Array:
  """Mean cosine similarity of the rows of `x` to the (normalised) queue
  rows, no gradient: `mean(x̂ @ queueᵀ)` as `mean(x̂ @ mean(queue))`, the
  same number without the [n, K] product."""
  return lax.stop_gradient(jnp.mean(losses.l2_normalize(x) @ jnp.mean(
      queue.astype(x.dtype), axis=0)))


def init_queue(rng: jax.Array, size: int, dim: int) -> dict:
  """`{'queue': [K, d] normalised N(0, 1) rows, 'ptr': 0}`."""
  queue = losses.l2_normalize(jax.random.normal(rng, (size, dim)))
  return {"queue": queue, "ptr": jnp.zeros([], jnp.int32)}


def enqueue(state: dict, keys: jax.Array,
            axis_name: Optional[str]) -> dict:
  """Writes the normalised `keys` of the global batch (gathered over
  `axis_name` in device order) at the ring buffer's pointer and moves it
  on: `_dequeue_and_enqueue` of the reference."""
  keys = losses.l2_normalize(keys).astype(state["queue"].dtype)
  if axis_name is not None:
    keys = lax.all_gather(keys, axis_name, axis=0, tiled=True, to="invarying")
  size = state["queue"].shape[0]
  queue = lax.dynamic_update_slice_in_dim(state["queue"], keys, state["ptr"],
                                          axis=0)
  return {"queue": queue, "ptr": (state["ptr"] + keys.shape[0]) % size}


def update_queue(method_state, online, target, ctx):
  del online
  return enqueue(method_state, target["global"]["z"], ctx.axis_name)


def shuffle_rows(x: jax.Array, perm: jax.Array,
                 axis_name: str) -> jax.Array:
  """This device's rows of the global batch `x` (gathered over
  `axis_name`) permuted by `perm` (`[global rows]`, the same everywhere):
  device d gets global rows `perm[d·n:(d+1)·n]`."""
  n = x.shape[0]
  rows = lax.dynamic_slice_in_dim(perm, lax.axis_index(axis_name) * n, n)
  return lax.all_gather(x, axis_name, axis=0, tiled=True)[rows]


def unshuffle_rows(x: jax.Array, perm: jax.Array,
                   axis_name: str) -> jax.Array:
  """The inverse of `shuffle_rows(·, perm)`: each device gets its own rows
  back."""
  return shuffle_rows(x, jnp.argsort(perm), axis_name)


@dataclasses.dataclass(frozen=True)
class ShuffledForward(base.Forward):
  """A forward whose network sees the batch permuted across devices
  (MoCo's shuffling BN), and whose outputs come back in the local order.

  The permutation is drawn from device 0's key (the reference broadcasts
  rank 0's `randperm`); the same one permutes every view. Without an
  axis (one device) it is the plain forward.
  """
  axis_name: Optional[str] = None

  def __call__(self, network, variables, views, counts, *, train=True,
               rng=None):
    if self.axis_name is None:
      return super().__call__(network, variables, views, counts, train=train,
                              rng=rng)
    if rng is None:
      raise ValueError("shuffling BN needs the step's key")
    chosen = self.counts(counts)
    names = self.group_names(views)
    devices = lax.axis_size(self.axis_name)
    perms = {}
    for g in names:
      rows = views[g].shape[0] // counts[g] * devices
      mine = jax.random.permutation(jax.random.fold_in(rng, 0x5348), rows)
      # Device 0's permutation, on every device.
      perms[g] = lax.all_gather(mine, self.axis_name)[0]

    def per_view(x, g, fn):
      return jnp.concatenate([fn(v, perms[g], self.axis_name)
                              for v in base.split_views(x, chosen[g])])

    shuffled = {g: per_view(self._selected(views[g], g, counts), g,
                            shuffle_rows) for g in names}
    plain = base.Forward(per_view=self.per_view)  # views already selected
    out, stats = plain(network, variables, shuffled, chosen, train=train,
                       rng=rng)
    return ({g: {k: per_view(v, g, unshuffle_rows) for k, v in o.items()}
             for g, o in out.items()}, stats)


def create(config: ml_collections.ConfigDict, *, axis_name: Optional[str],
           total_steps: int, num_examples: int) -> base.Method:
  """MoCo v1/v2 of config sections `model`, `head`, `target`, `loss`
  (`temperature`, `queue_size`)."""
  del num_examples  # no per-example state
  size, batch = config.loss.queue_size, config.batch_size
  if size <= 0 or size % batch:
    raise ValueError(f"config.loss.queue_size={size} must be a positive "
                     f"multiple of config.batch_size={batch} (the queue "
                     "takes whole global batches, as the reference asserts)")
  key_forward = base.Forward(select=KEY)
  if config.target.shuffle_bn:
    if config.train.microbatches > 1:
      raise ValueError("config.target.shuffle_bn needs config.train."
                       "microbatches=1 (the micro-batched step encodes the "
                       "keys in slices)")
    key_forward = ShuffledForward(select=KEY, axis_name=axis_name)
  out_dim = config.head.out_dim
  queue_rng = jax.random.fold_in(jax.random.key(config.seed), 0x7175)
  return base.Method(
      name="moco", views={"global": 2},
      network=base.create_network(config, axis_name),
      forward=base.Forward(select=QUERY),
      loss=functools.partial(loss, temperature=config.loss.temperature),
      target=base.Target(
          network=base.create_network(config, axis_name),
          momentum=schedules.target_momentum(config.target, total_steps),
          tracks=base.subtrees("encoder", "projector"),
          init=config.target.get("init") or "copy", forward=key_forward),
      state=base.State(
          init=lambda num_shards: init_queue(queue_rng, size, out_dim),
          update=update_queue, specs=PartitionSpec()))
