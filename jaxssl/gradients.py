"""Loss and gradients of one device's share of the batch (the plain pass).

`compute_gradients` is the forward/backward pass of the per-device train
step (`jaxssl.step`) with `learner.microbatches == 1`: the views, the
target's forward (no gradient), the online forward and the method's loss
under `value_and_grad`. `jaxssl.gradcache` is the micro-batched pass.
"""

from __future__ import annotations

import dataclasses
from typing import TYPE_CHECKING, Any, Optional

import jax
from jax import lax

from jaxssl import sharding
from jaxssl.methods import base
from jaxssl.train_state import TrainState

if TYPE_CHECKING:
  from jaxssl.learner import Learner

DATA_AXIS = sharding.DATA_AXIS
PyTree = Any


@dataclasses.dataclass
class Gradients:
  """What the forward/backward pass of a step hands to the update.

  Attributes:
    loss: the global-batch loss (the same on every device).
    grads: its gradient w.r.t. the online parameters (replicated).
    batch_stats: the online network's new BatchNorm statistics.
    outputs: the online outputs `{group: {'h', 'z'[, 'p']}}` of the local
      views.
    aux: the method's metrics (local).
    target_outputs: the target's outputs (stop-gradient), or None.
    target_stats: the target network's new BatchNorm statistics, or None.
  """
  loss: jax.Array
  grads: PyTree
  batch_stats: PyTree
  outputs: dict
  aux: dict
  target_outputs: Optional[dict]
  target_stats: Optional[PyTree]


def network_rngs(ctx: base.StepContext) -> tuple:
  """Keys of the online and the target networks' random layers (drop-path),
  different on every device: `(online, target)`."""
  rng = jax.random.fold_in(ctx.rng, 0x6e6574)
  if ctx.axis_name is not None:
    rng = jax.random.fold_in(rng, lax.axis_index(ctx.axis_name))
  return jax.random.fold_in(rng, 0), jax.random.fold_in(rng, 1)


def target_forward(learner: Learner, target_vars: PyTree, views: dict,
                   rng: Optional[jax.Array] = None):
  """The target's stop-gradient outputs and new statistics (training-mode
  BatchNorm, as the BYOL reference), or `(None, None)` without a target."""
  target = learner.method.target
  if target is None:
    return None, None
  out, stats = target.forward(target.network, target_vars, views,
                              learner.method.views, rng=rng)
  return lax.stop_gradient(out), stats


def compute_gradients(state: TrainState, batch: dict, view_rng: jax.Array,
                      ctx: base.StepContext, *,
                      learner: Learner) -> Gradients:
  """Loss and gradients of one device's rows of the global batch.

  Args:
    state: the train state.
    batch: this device's rows (`jaxssl.step.train_step`).
    view_rng: the step's key for the views (`jaxssl.step.make_views`).
    ctx: the step's context; `ctx.axis_name` is the data axis.
    learner: method, optimizer and view settings.
  """
  method = learner.method
  views = learner.make_views(batch, view_rng, ctx.step,
                             axis_name=ctx.axis_name)
  online_rng, target_rng = network_rngs(ctx)
  target_out, target_stats = target_forward(learner, state.target, views,
                                            target_rng)

  def loss_fn(params):
    out, batch_stats = method.forward(
        method.network, {"params": params, "batch_stats": state.batch_stats},
        views, method.views, rng=online_rng)
    local_loss, aux = method.loss(out, target_out, state.method_state,
                                  dataclasses.replace(ctx, params=params))
    # The mean over devices of per-device means over local anchors is the
    # loss of the global batch; its gradient needs no further reduction.
    return lax.pmean(local_loss, ctx.axis_name), (batch_stats, out, aux)

  (loss, (batch_stats, out, aux)), grads = jax.value_and_grad(
      loss_fn, has_aux=True)(state.params)
  return Gradients(loss, grads, batch_stats, out, aux, target_out,
                   target_stats)
