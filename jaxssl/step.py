"""The per-device train step, its compilation over the mesh, and the state.

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

import dataclasses
import functools
from typing import Any, Callable, Optional, Tuple

import flax.linen as nn
import jax
from jax import lax
import jax.numpy as jnp
from jax.sharding import Mesh, PartitionSpec as P
import optax

from jaxssl import augment
from jaxssl import gradients
from jaxssl import losses
from jaxssl import precision
from jaxssl import preemption
from jaxssl import sharding
from jaxssl.evaluators import linear_probe
from jaxssl.methods import base
from jaxssl.train_state import TrainState

DATA_AXIS = sharding.DATA_AXIS
PyTree = Any


@dataclasses.dataclass(frozen=True)
class Learner:
  """The static parts of a train step: method, optimizer and view settings.

  Attributes:
    method: networks, loss, optional target and state (`jaxssl.methods`),
      built with `axis_name=DATA_AXIS`.
    tx: optax transformation.
    schedule: learning rate as a function of the step (for logging).
    view_specs: how each view is cropped and augmented.
    probe: the online linear probe's settings, or None.
    microbatches: encoder micro-batches per device and step (1: the plain
      step; > 1: `gradients.microbatched_gradients`, exact-batch contrastive losses
      with the activation memory of one micro-batch).
    microbatch_loop: how the encoder backward passes of the micro-batches
      are sequenced: 'scan', 'unrolled' or 'auto'
      (`gradients.unroll_microbatches`).
  """
  method: base.Method
  tx: optax.GradientTransformation
  schedule: Callable[[jax.Array], jax.Array]
  view_specs: Tuple[augment.ViewSpec, ...]
  probe: Optional["OnlineProbe"] = None
  microbatches: int = 1
  microbatch_loop: str = "auto"

  def __post_init__(self):
    if self.microbatches < 1:
      raise ValueError(f"config.train.microbatches={self.microbatches} must "
                       "be at least 1")
    gradients.unroll_microbatches(self.microbatch_loop)  # checks the name

  @property
  def network(self) -> nn.Module:
    return self.method.network

  @property
  def image_size(self) -> int:
    return self.view_specs[0].size


@dataclasses.dataclass(frozen=True)
class OnlineProbe:
  """A linear classifier trained during pretraining on stop-gradient
  encoder features of every augmented view, with its own optimizer."""
  num_classes: int
  tx: optax.GradientTransformation


def make_views(batch: dict, rng: jax.Array, *,
               specs: Tuple[augment.ViewSpec, ...],
               axis_name: Optional[str] = DATA_AXIS) -> list:
  """The augmented views of the local batch, one `[n, S_v, S_v, 3]` per spec.

  Host pipelines deliver the crops (`batch['views']`); in-memory data
  delivers whole images (`batch['image']`), which are cropped here with
  `augment.random_resized_crop` (10 vectorised attempts at the spec's area
  range, bilinear; the host's SimCLR/BYOL samplers need TensorFlow). Each
  image's key is `fold_in(rng, global_index)`, with the example's index in
  the global batch: the views depend on the step and the example, not on how
  many devices share the batch.
  """
  host_crops = "views" in batch
  if host_crops and len(batch["views"]) != len(specs):
    raise ValueError(f"batch has {len(batch['views'])} views, the method "
                     f"expects {len(specs)}")
  n = (batch["views"][0] if host_crops else batch["image"]).shape[0]
  first = 0 if axis_name is None else lax.axis_index(axis_name) * n
  keys = jax.vmap(lambda i: jax.random.fold_in(rng, i))(first + jnp.arange(n))
  keys = jax.vmap(lambda k: jax.random.split(k, 2 * len(specs)))(keys)
  views = []
  for v, spec in enumerate(specs):
    if host_crops:
      crops = batch["views"][v]
    else:
      crops = jax.vmap(lambda k, im, spec=spec: augment.random_resized_crop(
          k, im, spec.size, spec.crop_area))(keys[:, len(specs) + v],
                                             batch["image"])
    views.append(augment.augment_batch(keys[:, v], crops, spec))
  return views


def _embedding_std(z: jax.Array, axis_name: Optional[str]) -> jax.Array:
  """Mean per-dimension std of L2-normalised embeddings over the global batch.

  ≈ 1/√d for well-spread embeddings, → 0 on collapse (SimSiam, §4.1).
  """
  zn = losses.l2_normalize(precision.to_full(z))
  moments = jnp.stack([jnp.mean(zn, 0), jnp.mean(jnp.square(zn), 0)])
  if axis_name is not None:
    moments = lax.pmean(moments, axis_name)
  return jnp.mean(jnp.sqrt(jnp.maximum(moments[1] - moments[0]**2, 0.0)))


def _target_params(online: PyTree, target: PyTree) -> PyTree:
  """The online parameters the target tracks (its top-level names)."""
  return {name: online[name] for name in target}



def train_step(state: TrainState, batch: dict, rng: jax.Array, *,
               learner: Learner,
               axis_name: str = DATA_AXIS) -> tuple[TrainState, dict]:
  """One optimisation step on one device's share of the global batch.

  Views → online network → (target network) → method loss → optimizer
  update → EMA of the target towards the updated online parameters.

  Args:
    state: replicated train state.
    batch: `{'image': uint8 [n, H, W, 3]}` or `{'views': [...]}`, this
      device's rows.
    rng: key of this step (the same on every device).
    learner: method, optimizer and view settings.
    axis_name: the mapped data axis.

  Returns:
    The new state and metrics averaged over devices.
  """
  method = learner.method
  views = jnp.concatenate(
      make_views(batch, rng, specs=learner.view_specs, axis_name=axis_name))
  result = gradients.compute_gradients(state, views, learner=learner,
                             axis_name=axis_name)
  grads, out = result.grads, result.outputs
  updates, opt_state = learner.tx.update(grads, state.opt_state, state.params)
  params = optax.apply_updates(state.params, updates)
  metrics = {
      "loss": result.loss,
      "lr": learner.schedule(state.step),
      "grad_norm": optax.tree.norm(grads),
      "param_norm": optax.tree.norm(params),
      "embed_std": _embedding_std(out["z"], axis_name),
  }
  metrics.update(jax.tree.map(lambda m: lax.pmean(m, axis_name),
                              result.aux))
  probe = state.probe
  if learner.probe is not None:
    labels = jnp.tile(batch["label"], len(learner.view_specs))
    probe, metrics["probe_loss"], metrics["probe_acc"] = linear_probe.update(
        state.probe, out["h"], labels, tx=learner.probe.tx,
        num_classes=learner.probe.num_classes, axis_name=axis_name)
  target = state.target
  if method.target_network is not None:
    tau = method.target_momentum(state.step)
    target = {
        # (1 − τ)·online + τ·target, towards the UPDATED online weights.
        "params": optax.incremental_update(
            _target_params(params, state.target["params"]),
            state.target["params"], step_size=1.0 - tau),
        "batch_stats": result.target_stats,
    }
    metrics["tau"] = tau
  new_state = state.replace(step=state.step + 1, params=params,
                            batch_stats=result.batch_stats,
                            opt_state=opt_state, target=target,
                            method_state=result.method_state,
                            probe=probe)
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

  The returned function maps `(state, global_batch) -> (state, metrics)`, with
  the state and metrics replicated and the batch sharded over the data axis.
  A batch may carry `preemption.BATCH_KEY` (`[devices]` flags): the metrics
  then hold their maximum over all devices.
  """
  per_device = jax.shard_map(
      functools.partial(_step_from_state, learner=learner), mesh=mesh,
      in_specs=(P(), P(DATA_AXIS)), out_specs=(P(), P()))
  return jax.jit(per_device, donate_argnums=0)


def create_train_state(rng: jax.Array, learner: Learner,
                       mesh: Mesh) -> TrainState:
  """Initialises the state, replicated over `mesh`.

  Parameters, BN statistics and optimizer state of the online network; for
  methods with a target, a copy of the online parameters and statistics it
  tracks (the BYOL reference's initialisation); the method state.
  """
  init_rng, state_rng = jax.random.split(rng)
  method = learner.method

  def init(init_rng, state_rng):
    dummy = jnp.zeros((2, learner.image_size, learner.image_size, 3))
    variables = method.network.init(init_rng, dummy, train=False)
    params = variables["params"]
    batch_stats = variables.get("batch_stats", {})
    target = None
    if method.target_network is not None:
      shapes = jax.eval_shape(
          functools.partial(method.target_network.init, train=False),
          init_rng, dummy)
      target = {
          "params": _copy_tracked(params, shapes["params"], method.name),
          "batch_stats": _copy_tracked(
              batch_stats, shapes.get("batch_stats", {}), method.name)}
    method_state = (None if method.init_method_state is None
                    else method.init_method_state())
    probe = None
    if learner.probe is not None:
      feature_dim = method.network.apply(variables, dummy,
                                         method="encode").shape[-1]
      probe = linear_probe.create(learner.probe.num_classes, feature_dim,
                                  learner.probe.tx)
    return TrainState(step=jnp.zeros([], jnp.int32), params=params,
                      batch_stats=batch_stats,
                      opt_state=learner.tx.init(params), rng=state_rng,
                      target=target, method_state=method_state, probe=probe)

  return jax.jit(init, out_shardings=sharding.replicated(mesh))(
      init_rng, state_rng)


def _copy_tracked(online: PyTree, target_shapes: PyTree, method: str) -> PyTree:
  """Copies the online subtrees the target tracks, checking their shapes."""
  missing = sorted(set(target_shapes) - set(online))
  if missing:
    raise ValueError(f"method {method!r}: target submodules {missing} have no "
                     f"online counterpart among {sorted(online)}")
  copy = _target_params(online, target_shapes)
  got = jax.tree.map(lambda x: (x.shape, x.dtype), copy)
  want = jax.tree.map(lambda x: (x.shape, x.dtype), target_shapes)
  if got != want:
    raise ValueError(f"method {method!r}: the target network's variables do "
                     "not mirror the online ones they track")
  return jax.tree.map(jnp.copy, copy)

