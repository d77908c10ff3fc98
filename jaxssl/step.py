"""The per-device train step and its compilation over the mesh.

The train step is written for ONE device's share of the batch, with named-axis
collectives (`lax.all_gather` of the negatives in the loss, `lax.pmean` of the
BatchNorm statistics and of the loss). `jax.shard_map` maps it over the 1-D
data mesh and `jax.jit` compiles it once, with the state donated. Under
`shard_map`, the gradient with respect to replicated parameters is already the
sum over devices of the per-device contributions (the transpose of the
implicit broadcast is a `psum`), so the step differentiates the *mean* loss
over devices and adds no pmap-style `psum` of the gradients.
"""

from __future__ import annotations

import functools
from typing import Any, Optional

import jax
from jax import lax
import jax.numpy as jnp
from jax.sharding import Mesh, PartitionSpec as P
import optax

from jaxssl import gradcache
from jaxssl import gradients
from jaxssl import losses
from jaxssl import precision
from jaxssl import preemption
from jaxssl import sharding
from jaxssl import state as state_lib
from jaxssl import views as views_lib
from jaxssl.evaluators import linear_probe
from jaxssl.learner import Learner
from jaxssl.learner import OnlineProbe  # pylint: disable=unused-import
from jaxssl.learner import view_sizes  # pylint: disable=unused-import
from jaxssl.methods import base
from jaxssl.train_state import TrainState

DATA_AXIS = sharding.DATA_AXIS
PyTree = Any


def evaluated_variables(state: TrainState, learner: Learner) -> dict:
  """`{'params', 'batch_stats'}` of `learner.evaluated_network` in `state`:
  the online network's, or the EMA target's."""
  if learner.evaluated == "target":
    return {"params": state.target["params"],
            "batch_stats": state.target["batch_stats"]}
  return {"params": state.params, "batch_stats": state.batch_stats}


def _embedding_std(z: jax.Array, axis_name: Optional[str]) -> jax.Array:
  """Mean per-dimension std of L2-normalised embeddings over the global batch.

  ≈ 1/√d for well-spread embeddings, → 0 on collapse (SimSiam, §4.1).
  """
  zn = losses.l2_normalize(precision.to_full(z))
  moments = jnp.stack([jnp.mean(zn, 0), jnp.mean(jnp.square(zn), 0)])
  if axis_name is not None:
    moments = lax.pmean(moments, axis_name)
  return jnp.mean(jnp.sqrt(jnp.maximum(moments[1] - moments[0]**2, 0.0)))


def forward_backward(state: TrainState, batch: dict, view_rng: jax.Array,
                     ctx: base.StepContext, *,
                     learner: Learner) -> gradients.Gradients:
  """The step's views, loss and gradients: the plain pass
  (`gradients.compute_gradients`) or, with `learner.microbatches > 1`, the
  micro-batched one (`gradcache.microbatched_gradients`)."""
  if learner.microbatches == 1:
    return gradients.compute_gradients(state, batch, view_rng, ctx,
                                       learner=learner)
  return gradcache.microbatched_gradients(state, batch, view_rng, ctx,
                                          learner=learner)


def train_step(state: TrainState, batch: dict, rng: jax.Array, *,
               learner: Learner,
               axis_name: str = DATA_AXIS) -> tuple[TrainState, dict]:
  """One optimisation step on one device's share of the global batch.

  Views → (target forward) → online forward → method loss → optimizer
  update → post-update hook → method state update → EMA of the target
  towards the updated online parameters (`jaxssl.methods.base`).

  Args:
    state: the train state (replicated; the method state as it specifies).
    batch: `{'image': uint8 [n, H, W, 3]}` or `{'views': [...]}`, this
      device's rows, with `'label'` and `'index'` where the data has them.
    rng: key of this step (the same on every device).
    learner: method, optimizer and view settings.
    axis_name: the mapped data axis.

  Returns:
    The new state and metrics averaged over devices.
  """
  method = learner.method
  if method.needs_index and "index" not in batch:
    raise ValueError(f"method {method.name!r} reads each example's dataset "
                     "index (a memory bank's row), but the batch has no "
                     f"'index' (keys: {sorted(batch)})")
  view_rng, method_rng = jax.random.split(rng)
  ctx = base.StepContext(
      step=state.step, epoch=state.step * learner.epochs_per_step,
      rng=method_rng, axis_name=axis_name, index=batch.get("index"),
      label=batch.get("label"))
  result = forward_backward(state, batch, view_rng, ctx, learner=learner)
  grads, out = result.grads, result.outputs
  updates, opt_state = learner.tx.update(grads, state.opt_state, state.params)
  params = optax.apply_updates(state.params, updates)
  if method.post_update is not None:
    params = method.post_update(params, ctx)
  first = out[next(iter(out))]
  metrics = {
      "loss": result.loss,
      "lr": learner.schedule(state.step),
      "grad_norm": optax.tree.norm(grads),
      "param_norm": optax.tree.norm(params),
      "embed_std": _embedding_std(first[method.embedding], axis_name),
  }
  metrics.update(jax.tree.map(lambda m: lax.pmean(m, axis_name),
                              result.aux))
  probe = state.probe
  if learner.probe is not None:
    # The evaluated network's features (the target's: stop-gradient already).
    features = first["h"]
    if learner.evaluated == "target":
      features = result.target_outputs[next(iter(out))]["h"]
    views = features.shape[0] // batch["label"].shape[0]
    labels = jnp.tile(batch["label"], views)
    probe, metrics["probe_loss"], metrics["probe_acc"] = linear_probe.update(
        state.probe, features, labels, tx=learner.probe.tx,
        num_classes=learner.probe.num_classes, axis_name=axis_name)
  method_state = state.method_state
  if method.state is not None:
    method_state = method.state.update(
        method_state, lax.stop_gradient(out), result.target_outputs, ctx)
  target = state.target
  if method.target is not None:
    tau = method.target.momentum(state.step)
    target = {
        # (1 − τ)·online + τ·target, towards the UPDATED online weights.
        "params": optax.incremental_update(
            method.target.tracks(params), state.target["params"],
            step_size=1.0 - tau),
        "batch_stats": result.target_stats,
    }
    metrics["tau"] = tau
  new_state = state.replace(step=state.step + 1, params=params,
                            batch_stats=result.batch_stats,
                            opt_state=opt_state, target=target,
                            method_state=method_state, probe=probe)
  return new_state, metrics


def _step_from_state(state, batch, *, learner):
  rng = jax.random.fold_in(state.rng, state.step)
  batch = dict(batch)
  flag = batch.pop(preemption.BATCH_KEY, None)
  state, metrics = train_step(state, batch, rng, learner=learner)
  if flag is not None:  # any process's SIGTERM, agreed inside the step
    metrics[preemption.BATCH_KEY] = preemption.agree(flag, DATA_AXIS)
  return state, metrics


def compile_train_step(learner: Learner, mesh: Mesh):
  """`jit(shard_map(train_step))` over `mesh`; the state is donated.

  The returned function maps `(state, global_batch) -> (state, metrics)`,
  with the state laid out as `state.state_specs` says (replicated but for a
  sharded method state), the batch sharded over the data axis and the
  metrics replicated. A batch may carry `preemption.BATCH_KEY` (`[devices]`
  flags): the metrics then hold their maximum over all devices.
  """
  specs = state_lib.state_specs(learner)
  per_device = jax.shard_map(
      functools.partial(_step_from_state, learner=learner), mesh=mesh,
      in_specs=(specs, P(DATA_AXIS)), out_specs=(specs, P()))
  return jax.jit(per_device, donate_argnums=0)


# The state's constructor and the views, for callers of `jaxssl.step`.
create_train_state = state_lib.create_train_state
make_views = views_lib.make_views
