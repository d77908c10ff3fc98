"""SwAV: swapped assignments between multi-crop views.

Caron, Misra, Mairal, Goyal, Bojanowski & Joulin, "Unsupervised Learning of
Visual Features by Contrasting Cluster Assignments", NeurIPS 2020
(https://arxiv.org/abs/2006.09882). As the reference (facebookresearch/swav,
`main_swav.py`, `src/resnet50.py`):

* network = backbone → projection MLP (2048 hidden, BN, ReLU, 128 out) →
  L2-normalise → prototypes (a linear layer without bias to K = 3000, here
  `Prototypes`, the network's `predictor`); outputs `z` (the projection),
  `p` (the prototype scores of the normalised projection);
* multi-crop: each resolution group encoded together, the heads once over
  all crops; BatchNorm synchronised over all devices, or over groups
  (`model.bn_num_groups`; the batch-4096 scripts' groups of 512 images);
* the prototypes are L2-normalised after every update (`post_update`; the
  reference normalises them before each forward, the same sequence) and
  start normalised; they are frozen for the first epoch by the optimizer
  (`optimizer.freeze_pattern='^predictor/'`, `freeze_epochs=1`);
* loss `losses.swav` on the scores of every crop, codes of crops 0 and 1
  from Sinkhorn over the global batch (and the queue);
* the queue (`loss.queue_size` L, rounded down to whole global batches as
  the reference does; 0 = none) holds the normalised embeddings of the
  assigned crops of past batches. It is method state sharded by rows: each
  device keeps the L/devices most recent of its own rows (the reference's
  per-GPU queue), newest first. From epoch `loss.queue_start_epoch` on
  each step pushes its embeddings in; the loss uses the queue once it is
  full (its last row non-zero, the reference's `use_the_queue`).

Monitored: `queue_used` (1 once the queue enters the loss) and
`prototype_usage` (fraction of prototypes that are the highest score of
some first-crop row of the global batch; → 1/K on collapse).
"""

from __future__ import annotations

import functools
from typing import TYPE_CHECKING, Dict, Optional

import flax.linen as nn
import jax
from jax import lax
import jax.numpy as jnp
from jax.sharding import PartitionSpec

from jaxssl import losses
from jaxssl import models
from jaxssl import precision
from jaxssl import views as views_lib
from jaxssl.methods import base

if TYPE_CHECKING:  # configs are only read here: no runtime dependency
  import ml_collections

CROPS_FOR_ASSIGN = (0, 1)


def _unit_columns(key, shape, dtype=jnp.float32):
  """Random prototypes with unit-norm columns (`[d, K]` kernel)."""
  bound = 1.0 / jnp.sqrt(shape[0])  # PyTorch's nn.Linear default
  w = jax.random.uniform(key, shape, dtype, -bound, bound)
  return w / jnp.linalg.norm(w, axis=0, keepdims=True)


class Prototypes(nn.Module):
  """`normalise(z) @ C`: the scores of the L2-normalised embeddings against
  K prototypes (`kernel`, `[d, K]`, one prototype per column)."""
  num_prototypes: int

  @nn.compact
  def __call__(self, z: jax.Array, train: bool = True) -> jax.Array:
    del train
    full = precision.full_dtype()
    kernel = self.param("kernel", _unit_columns,
                        (z.shape[-1], self.num_prototypes), full)
    return losses.l2_normalize(precision.to_full(z)) @ kernel


def normalize_prototypes(params, ctx):
  """The post-update hook: each prototype (column) back to unit norm."""
  del ctx
  kernel = params["predictor"]["kernel"]
  kernel = kernel / jnp.linalg.norm(kernel, axis=0, keepdims=True)
  return {**params, "predictor": {**params["predictor"], "kernel": kernel}}


def _crops(online: base.GroupOutputs, key: str) -> jax.Array:
  """Every crop's rows of output `key`, crop-major, global crops first."""
  return jnp.concatenate([online[g][key] for g in ("global", "local")
                          if g in online])


def loss(online, target, method_state, ctx, *, num_crops: int,
         temperature: float, epsilon: float, num_iters: int):
  """SwAV's loss; with a queue, the queue enters once it is full, scored
  by the current prototypes (no gradient)."""
  del target
  scores = _crops(online, "p")
  kwargs = dict(num_crops=num_crops, crops_for_assign=CROPS_FOR_ASSIGN,
                temperature=temperature, epsilon=epsilon,
                num_iters=num_iters, axis_name=ctx.axis_name)
  value = losses.swav(scores, **kwargs)
  n = scores.shape[0] // num_crops
  usage = jnp.zeros(scores.shape[1]).at[jnp.argmax(scores[:n], 1)].set(1.0)
  if ctx.axis_name is not None:  # over the global batch
    usage = lax.pmax(usage, ctx.axis_name)
  metrics = {"prototype_usage": lax.stop_gradient(jnp.mean(usage))}
  if method_state is not None:
    queue = method_state["queue"]
    prototypes = lax.stop_gradient(ctx.params["predictor"]["kernel"])
    with_queue = losses.swav(
        scores, queue_scores=[queue[i] @ prototypes
                              for i in range(len(CROPS_FOR_ASSIGN))],
        **kwargs)
    full = jnp.any(queue[:, -1] != 0)
    value = jnp.where(full, with_queue, value)
    metrics["queue_used"] = precision.to_full(full)
  return value, metrics


def update_queue(method_state, online, target, ctx, *, start_epoch: int):
  """From epoch `start_epoch` on: the step's normalised embeddings of each
  assigned crop pushed in front of its queue, the oldest rows out."""
  del target
  n = online["global"]["z"].shape[0] // 2
  z = losses.l2_normalize(online["global"]["z"])
  queue = method_state["queue"]
  pushed = jnp.stack([
      jnp.concatenate([z[c * n:(c + 1) * n], queue[i, :-n]])
      for i, c in enumerate(CROPS_FOR_ASSIGN)]).astype(queue.dtype)
  on = jnp.floor(ctx.epoch) >= start_epoch
  return {"queue": jnp.where(on, pushed, queue)}


def queue_length(config: ml_collections.ConfigDict) -> int:
  """`loss.queue_size` rounded down to whole global batches (the reference's
  `queue_length -= queue_length % (batch_size · world_size)`)."""
  size = config.loss.queue_size
  return size - size % config.batch_size


def create(config: ml_collections.ConfigDict, *, axis_name: Optional[str],
           total_steps: int, num_examples: int) -> base.Method:
  """SwAV of config sections `model`, `head`, `loss` (`temperature`,
  `num_prototypes`, `sinkhorn_epsilon`, `sinkhorn_iters`, `queue_size`,
  `queue_start_epoch`) and `augment` (multi-crop)."""
  del total_steps, num_examples
  counts = views_lib.group_counts(config)
  if counts.get("global") != 2:
    raise ValueError(f"SwAV assigns codes to 2 global crops; "
                     f"config.augment.preset={config.augment.preset!r} makes "
                     f"{counts}")
  loss_cfg = config.loss
  network = base.Network(models.create_encoder(config.model, axis_name),
                         models.create_head(config.head, config.model,
                                            axis_name),
                         Prototypes(loss_cfg.num_prototypes))
  return build(
      network, views=counts, temperature=loss_cfg.temperature,
      epsilon=loss_cfg.sinkhorn_epsilon, num_iters=loss_cfg.sinkhorn_iters,
      queue_length=queue_length(config) if loss_cfg.queue_size else 0,
      queue_dim=config.head.out_dim,
      queue_start_epoch=loss_cfg.queue_start_epoch, axis_name=axis_name)


def build(network: base.Network, *, views: Dict[str, int],
          temperature: float = 0.1, epsilon: float = 0.05,
          num_iters: int = 3, queue_length: int = 0,  # pylint: disable=redefined-outer-name
          queue_dim: int = 0, queue_start_epoch: int = 0,
          axis_name: Optional[str] = None) -> base.Method:
  """SwAV of its parts (no config): `network` = encoder → projector →
  `Prototypes`, `views` `{'global': 2[, 'local': L]}`, the loss constants,
  and a queue of `queue_length` rows of width `queue_dim` per assigned
  crop over the global batch (0: none), sharded over `axis_name`."""
  state = None
  if queue_length:
    state = base.State(
        init=lambda num_shards: {"queue": jnp.zeros((len(CROPS_FOR_ASSIGN),
                                          queue_length, queue_dim))},
        update=functools.partial(update_queue, start_epoch=queue_start_epoch),
        specs={"queue": PartitionSpec(None, axis_name)})
  return base.Method(
      name="swav", views=views, network=network,
      forward=base.Forward(per_view=False),
      loss=functools.partial(
          loss, num_crops=sum(views.values()), temperature=temperature,
          epsilon=epsilon, num_iters=num_iters),
      state=state, post_update=normalize_prototypes)
