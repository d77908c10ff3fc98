"""Pretraining: state creation, the per-device train step, and the loop.

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
import json
import os
import signal
import threading
import time
from typing import TYPE_CHECKING, Any, Callable, Iterator, Optional, Tuple

import flax.linen as nn
import jax
from jax import lax
import jax.numpy as jnp
from jax.sharding import Mesh, PartitionSpec as P
import numpy as np
import optax

from jaxssl import augment
from jaxssl import checkpointing
from jaxssl import export
from jaxssl import losses
from jaxssl import metric_writers
from jaxssl import optim
from jaxssl import precision
from jaxssl import progress
from jaxssl import schedules
from jaxssl import sharding
from jaxssl.data import in_memory
from jaxssl.data import sources
from jaxssl.evaluators import linear_probe
from jaxssl.evaluators import representation
from jaxssl import methods
from jaxssl.methods import base
from jaxssl.train_state import TrainState

if TYPE_CHECKING:  # configs are only read here: no runtime dependency
  import ml_collections

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
      step; > 1: `microbatched_gradients`, exact-batch contrastive losses
      with the activation memory of one micro-batch).
    microbatch_loop: how the encoder backward passes of the micro-batches
      are sequenced: 'scan', 'unrolled' or 'auto' (`_unroll_microbatches`).
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
    _unroll_microbatches(self.microbatch_loop)  # checks the name

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


@dataclasses.dataclass
class Gradients:
  """What the forward/backward pass of a step hands to the update.

  Attributes:
    loss: the global-batch loss (the same on every device).
    grads: its gradient w.r.t. the online parameters (replicated).
    batch_stats: the online network's new BatchNorm statistics.
    outputs: the online outputs `{'h', 'z'[, 'p']}` of the local views.
    aux: the method's metrics (local).
    method_state: the method's new state.
    target_stats: the target network's new BatchNorm statistics, or None.
  """
  loss: jax.Array
  grads: PyTree
  batch_stats: PyTree
  outputs: dict
  aux: dict
  method_state: Any
  target_stats: Optional[PyTree]


def compute_gradients(state: TrainState, views: jax.Array, *,
                      learner: Learner,
                      axis_name: str = DATA_AXIS) -> Gradients:
  """Loss and gradients of one device's views `[view_1; ...; view_V]`.

  With `learner.microbatches == 1` one forward/backward over all local views;
  otherwise the cached-gradient step of `microbatched_gradients`.
  """
  if learner.microbatches > 1:
    return microbatched_gradients(state, views, learner=learner,
                                  axis_name=axis_name)
  method = learner.method
  target_out = target_stats = None
  if method.target_network is not None:
    # Training mode (batch statistics), as the BYOL reference; the target's
    # own running statistics are updated by this pass.
    target_out, target_vars = method.target_network.apply(
        state.target, views, train=True, mutable=["batch_stats"])
    target_out = lax.stop_gradient(target_out)
    target_stats = target_vars.get("batch_stats", {})

  def loss_fn(params):
    out, new_vars = method.network.apply(
        {"params": params, "batch_stats": state.batch_stats}, views,
        train=True, mutable=["batch_stats"])
    local_loss, aux, method_state = method.loss(
        out, target_out, state.method_state, axis_name=axis_name)
    # The mean over devices of per-device means over local anchors is the
    # loss of the global batch; its gradient needs no further reduction.
    return lax.pmean(local_loss, axis_name), (new_vars.get("batch_stats", {}),
                                              out, aux, method_state)

  (loss, (batch_stats, out, aux, method_state)), grads = jax.value_and_grad(
      loss_fn, has_aux=True)(state.params)
  return Gradients(loss, grads, batch_stats, out, aux, method_state,
                   target_stats)


def _to_microbatches(x: jax.Array, num_views: int, m: int) -> jax.Array:
  """`[view_1; ...; view_V]` (n rows each) → `[m, V·n/m, ...]`: micro-batch
  i holds rows i·n/m … (i+1)·n/m of every view (both views of its images)."""
  n = x.shape[0] // num_views
  x = x.reshape(num_views, m, n // m, *x.shape[1:])
  return jnp.swapaxes(x, 0, 1).reshape(m, num_views * (n // m), *x.shape[3:])


def _from_microbatches(x: jax.Array, num_views: int) -> jax.Array:
  """Inverse of `_to_microbatches`."""
  m, rows = x.shape[:2]
  x = x.reshape(m, num_views, rows // num_views, *x.shape[2:])
  return jnp.swapaxes(x, 0, 1).reshape(m * rows, *x.shape[3:])


def _encode_microbatches(network: nn.Module, variables: PyTree,
                         xs: jax.Array, num_views: int):
  """Encoder features of every micro-batch, one at a time, without keeping
  activations; BN statistics of each micro-batch start from `variables` and
  are averaged over micro-batches."""
  def encode(x):
    h, new_vars = network.apply(variables, x, train=True,
                                mutable=["batch_stats"], method="encode")
    return h, new_vars.get("batch_stats", {})

  hs, stats = lax.map(encode, xs)
  return (_from_microbatches(hs, num_views),
          jax.tree.map(lambda s: jnp.mean(s, axis=0), stats))


def _with_encoder_stats(head_stats: PyTree, encoder_stats: PyTree) -> PyTree:
  """The heads' statistics (whole batch) with the encoder's (micro-batch
  averages)."""
  if "encoder" not in encoder_stats:
    return head_stats
  return {**head_stats, "encoder": encoder_stats["encoder"]}


MICROBATCH_LOOPS = ("auto", "scan", "unrolled")


def _unroll_microbatches(loop: str) -> bool:
  """'auto': unrolled on CPU, a `lax.scan` elsewhere.

  XLA:CPU leaves convolution gradients inside a loop body in a form its fast
  (Eigen) convolution does not take; measured on a 2-core CPU, a kernel
  gradient in a `fori_loop` ran 30× slower than outside it (forward
  convolutions are unaffected). GPU and TPU keep the loop: one copy of the
  encoder in the program, activations of one micro-batch at a time.
  """
  if loop not in MICROBATCH_LOOPS:
    raise ValueError(f"config.train.microbatch_loop={loop!r} is not one of "
                     f"{list(MICROBATCH_LOOPS)}")
  if loop == "auto":
    return jax.default_backend() == "cpu"
  return loop == "unrolled"


def _sum_microbatches(fn: Callable[[PyTree, Any], PyTree], init: PyTree,
                      xs: Any, *, unroll: bool) -> PyTree:
  """`fn(fn(init, xs[0]), xs[1]) ...` over the leading axis of `xs`.

  Unrolled, an optimisation barrier makes micro-batch i+1's inputs wait for
  micro-batch i's result, so that their activations are never live together.
  """
  if not unroll:
    return lax.scan(lambda total, x: (fn(total, x), None), init, xs)[0]
  total = init
  for i in range(jax.tree.leaves(xs)[0].shape[0]):
    x = jax.tree.map(lambda a, i=i: a[i], xs)
    if i:
      total, x = lax.optimization_barrier((total, x))
    total = fn(total, x)
  return total


def microbatched_gradients(state: TrainState, views: jax.Array, *,
                           learner: Learner,
                           axis_name: str = DATA_AXIS) -> Gradients:
  """The cached-gradient step of Gao et al. 2021, "Scaling Deep Contrastive
  Learning Batch Size under Memory Limited Setup" (GradCache,
  https://arxiv.org/abs/2101.06983), with the cache at the encoder output.

  1. Encode the `M = learner.microbatches` micro-batches one after another
     without storing activations (`lax.map`), giving `h` for all local views.
  2. Run the heads (projector, predictor), the target's heads and the loss
     over the WHOLE global batch (negatives gathered across devices as
     usual) and differentiate w.r.t. the head parameters and `h`. The heads
     are small, so their BatchNorm sees the whole batch, as in the full step.
  3. Re-encode each micro-batch (`lax.scan`) and pull `∂L/∂h` of its rows
     back through the encoder (`jax.vjp`); the encoder gradients are summed
     over micro-batches locally and reduced over devices once.

  Activation memory is that of one micro-batch through the encoder; the
  price is a second encoder forward pass (~1.3× the step's FLOPs). The views
  of the whole local batch are made once, before step 1 (float32: B·V·S²·3·4
  bytes, 4.9 GB for 4096 × 2 views at 224 px on one device).

  What differs from the full step: the ENCODER's BatchNorm normalises each
  micro-batch with its own statistics (over its `B/M` images × views on all
  devices, instead of over all `B`), and its running statistics move by the
  average of the micro-batch updates (the running mean by exactly the full
  batch's mean; the variance by the mean within-micro-batch variance, which
  misses the variance between micro-batch means). The same holds for the
  target's encoder. With an encoder whose outputs are per-example (no
  BatchNorm, or frozen statistics) the gradients equal the full step's to
  rounding (tested in float64).
  """
  method = learner.method
  m = learner.microbatches
  num_views = len(learner.view_specs)
  n = views.shape[0] // num_views
  if n % m:
    raise ValueError(f"config.train.microbatches={m} does not divide the "
                     f"{n} images per device (batch_size / devices)")
  for name, network in (("network", method.network),
                        ("target_network", method.target_network)):
    if network is not None and not isinstance(network, base.Network):
      raise TypeError(f"method {method.name!r}: micro-batching needs "
                      f"`{name}` to be a jaxssl.methods.base.Network "
                      f"(encode + heads), got {type(network).__name__}")
  xs = _to_microbatches(views, num_views, m)
  online_vars = {"params": state.params, "batch_stats": state.batch_stats}
  h, encoder_stats = _encode_microbatches(method.network, online_vars, xs,
                                          num_views)
  target_out = target_stats = None
  if method.target_network is not None:
    target_h, target_encoder_stats = _encode_microbatches(
        method.target_network, state.target, xs, num_views)
    target_out, target_vars = method.target_network.apply(
        state.target, target_h, train=True, mutable=["batch_stats"],
        method="heads")
    target_out = lax.stop_gradient(target_out)
    target_stats = _with_encoder_stats(target_vars.get("batch_stats", {}),
                                       target_encoder_stats)

  def loss_fn(params, h):
    out, new_vars = method.network.apply(
        {"params": params, "batch_stats": state.batch_stats}, h,
        train=True, mutable=["batch_stats"], method="heads")
    local_loss, aux, method_state = method.loss(
        out, target_out, state.method_state, axis_name=axis_name)
    return lax.pmean(local_loss, axis_name), (new_vars.get("batch_stats", {}),
                                              out, aux, method_state)

  (loss, (head_stats, out, aux, method_state)), (grads, grad_h) = (
      jax.value_and_grad(loss_fn, argnums=(0, 1), has_aux=True)(
          state.params, h))

  # Local (device-varying) encoder parameters: the per-micro-batch vjps then
  # give this device's contributions, summed here and psum-ed once below,
  # instead of one all-reduce per micro-batch.
  local_params = lax.pcast(state.params["encoder"], axis_name, to="varying")

  def accumulate(total, micro):
    x, grad_h = micro

    def encode(encoder_params):
      h, _ = method.network.apply(
          {"params": {**state.params, "encoder": encoder_params},
           "batch_stats": state.batch_stats}, x, train=True,
          mutable=["batch_stats"], method="encode")
      return h

    _, vjp = jax.vjp(encode, local_params)
    return jax.tree.map(jnp.add, total, vjp(grad_h)[0])

  encoder_grads = _sum_microbatches(
      accumulate, jax.tree.map(jnp.zeros_like, local_params),
      (xs, _to_microbatches(grad_h, num_views, m)),
      unroll=_unroll_microbatches(learner.microbatch_loop))
  grads = {**grads, "encoder": lax.psum(encoder_grads, axis_name)}
  return Gradients(loss, grads, _with_encoder_stats(head_stats, encoder_stats),
                   out, aux, method_state, target_stats)


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
  result = compute_gradients(state, views, learner=learner,
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
  return train_step(state, batch, rng, learner=learner)


def compile_train_step(learner: Learner, mesh: Mesh):
  """`jit(shard_map(train_step))` over `mesh`; the state is donated.

  The returned function maps `(state, global_batch) -> (state, metrics)`, with
  the state and metrics replicated and the batch sharded over the data axis.
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


def total_steps(config: ml_collections.ConfigDict, num_examples: int) -> int:
  """Steps of the run (and of its lr and τ schedules), per `steps_rule`."""
  _check_steps_rule(config)
  if config.steps_rule == "simclr":
    return schedules.simclr_total_steps(num_examples, config.epochs,
                                        config.batch_size)
  steps = int(num_examples * config.epochs // config.batch_size)
  if steps <= 0:
    raise ValueError(f"{num_examples} examples × config.epochs="
                     f"{config.epochs} // config.batch_size="
                     f"{config.batch_size} is 0 steps")
  return steps


def _check_steps_rule(config: ml_collections.ConfigDict) -> None:
  if config.steps_rule not in ("simclr", "floor"):
    raise ValueError(f"config.steps_rule={config.steps_rule!r} is not one of "
                     "['floor', 'simclr']")


def create_learner(config: ml_collections.ConfigDict, num_examples: int,
                   num_classes: int = 0) -> Learner:
  """Method, optimizer and schedule of `config` for a dataset of this size.

  `num_classes` (0: unlabelled) sizes the online probe of `config.probe`.
  """
  opt = config.optimizer
  steps = total_steps(config, num_examples)
  schedule = schedules.warmup_cosine(
      opt.base_lr, batch_size=config.batch_size, num_examples=num_examples,
      epochs=config.epochs, warmup_epochs=opt.warmup_epochs,
      scaling=opt.lr_scaling, total_steps=steps)
  tx = optim.from_config(opt, schedule)
  method = methods.METHODS[config.method](config, axis_name=DATA_AXIS,
                                          total_steps=steps)
  probe = None
  if config.probe.enabled:
    if num_classes <= 0:
      raise ValueError("config.probe.enabled=True needs a labelled dataset; "
                       f"{config.data.source} data has no labels (set "
                       "--config.probe.enabled=False)")
    probe = OnlineProbe(num_classes, optax.adam(config.probe.learning_rate))
  return Learner(method=method, tx=tx, schedule=schedule,
                 view_specs=config_view_specs(config), probe=probe,
                 microbatches=config.train.microbatches,
                 microbatch_loop=config.train.microbatch_loop)


def config_view_specs(
    config: ml_collections.ConfigDict) -> Tuple[augment.ViewSpec, ...]:
  """The views of config section `augment` at `data.image_size`."""
  if config.augment.preset not in augment.VIEW_PRESETS:
    raise ValueError(f"config.augment.preset={config.augment.preset!r} is not "
                     f"one of {sorted(augment.VIEW_PRESETS)}")
  specs = augment.view_specs(
      config.augment.preset, image_size=config.data.image_size,
      color_strength=config.augment.color_strength, blur=config.augment.blur)
  min_area = config.augment.min_crop_area
  if min_area:
    if not 0.0 < min_area <= 1.0:
      raise ValueError(f"config.augment.min_crop_area={min_area} must be in "
                       "(0, 1]")
    specs = tuple(dataclasses.replace(s, crop_area=(min_area, 1.0))
                  for s in specs)
  if len(specs) != 2 or specs[0].size != specs[1].size:
    raise ValueError(f"config.augment.preset={config.augment.preset!r}: "
                     f"config.method={config.method!r} needs two views of "
                     "one size")
  return specs


def check_config(config: ml_collections.ConfigDict, mesh: Mesh) -> None:
  """Rejects settings that cannot run, before anything is loaded or compiled."""
  per_device = sharding.check_batch_size(config.batch_size, mesh)
  m = config.train.microbatches
  if m < 1 or per_device % m:
    raise ValueError(
        f"config.train.microbatches={m} must be a positive divisor of the "
        f"{per_device} images per device (config.batch_size="
        f"{config.batch_size} over {mesh.devices.size} device(s))")
  if config.epochs <= 0:
    raise ValueError(f"config.epochs={config.epochs} must be positive")
  if config.method not in methods.METHODS:
    raise ValueError(f"config.method={config.method!r} is not one of "
                     f"{sorted(methods.METHODS)}")
  _check_steps_rule(config)
  if jax.process_count() > 1 and (config.eval.knn_ks or config.probe.enabled):
    raise ValueError(
        "held-out evaluation on several processes is not supported yet: set "
        "--config.eval.knn_ks=() --config.probe.enabled=False")
  if config.method in ("byol", "simsiam") and config.predictor.num_layers < 1:
    raise ValueError(f"config.method={config.method!r} needs a predictor: "
                     "config.predictor.num_layers >= 1")
  if config.optimizer.name not in optim.OPTIMIZERS:
    raise ValueError(f"config.optimizer.name={config.optimizer.name!r} is not "
                     f"one of {sorted(optim.OPTIMIZERS)}")
  config_view_specs(config)
  sources.check(config.data)


def prepare_workdir(workdir: str) -> str:
  """Creates `workdir` (and parents) or fails with a clear message."""
  if not workdir:
    raise ValueError("--workdir is required")
  try:
    os.makedirs(workdir, exist_ok=True)
  except OSError as e:
    raise ValueError(f"cannot create workdir {workdir!r}: {e}") from e
  if not os.access(workdir, os.W_OK):
    raise ValueError(f"workdir {workdir!r} is not writable")
  return workdir


class Preempted(Exception):
  """Training stopped on request (SIGTERM) after saving a checkpoint."""

  def __init__(self, step: int):
    super().__init__(f"stopped at step {step} on request; checkpoint saved")
    self.step = step


def train_loop(state, step_fn, batches: Iterator[dict], *,
               total_steps: int, log_every: int, batch_size: int,
               steps_per_epoch: int,
               writer: Optional[metric_writers.MetricWriter] = None,
               on_epoch_end: Optional[Callable[[int, Any], dict]] = None,
               checkpointer: Optional[checkpointing.Checkpointer] = None,
               should_stop: Optional[Callable[[int], bool]] = None
               ) -> tuple[Any, list, list]:
  """Runs `step_fn` to `total_steps`; reports every `log_every` steps and
  at the end of every epoch; saves checkpoints as `checkpointer` says.

  Metrics stay on the devices between reports, so the host never waits for
  a step it does not need to. A non-finite loss stops the run with
  FloatingPointError; metrics are fetched and checked BEFORE every save, so
  no NaN state is ever saved. When `should_stop(step)` says so (SIGTERM),
  the state is saved and `Preempted` raised.
  `on_epoch_end(epoch, state)` may return extra (evaluation) metrics.

  Returns:
    The final state, the per-report history and the per-epoch summaries.
  """
  start = int(jax.device_get(state.step))
  reporter = progress.Progress(total_steps, batch_size, start_step=start,
                               print_fn=_print0)
  pending, epoch_metrics, history, epochs = [], [], [], []
  for step in range(start + 1, total_steps + 1):
    state, metrics = step_fn(state, next(batches))
    pending.append(metrics)
    epoch_end = step % steps_per_epoch == 0 or step == total_steps
    stop = should_stop is not None and should_stop(step)
    report = step % log_every == 0 or epoch_end
    save = checkpointer is not None and (
        stop or step == total_steps or checkpointer.should_save(step)
        or (report and checkpointer.time_due()))
    if report or save:
      fetched = jax.device_get(pending)
      pending = []
      epoch_metrics += fetched
      summary = _mean(fetched)
      if not np.isfinite(summary["loss"]):
        raise FloatingPointError(
            f"loss is {summary['loss']} around step {step}; stopping")
      reporter.report(step, summary)
      history.append({"step": step, **summary})
      if writer is not None:
        writer.write_scalars(step, {f"train/{k}": v
                                    for k, v in summary.items()})
    if epoch_end:
      epoch = -(-step // steps_per_epoch)
      summary = {"epoch": epoch, "step": step, **_mean(epoch_metrics)}
      epoch_metrics = []
      if on_epoch_end is not None:
        summary.update(on_epoch_end(epoch, state))
      epochs.append(summary)
      _print0(f"epoch {epoch}: " + " | ".join(
          f"{k} {v:.4g}" for k, v in summary.items()
          if k not in ("epoch", "step")), flush=True)
      if writer is not None:
        writer.write_scalars(step, {f"epoch/{k}": v for k, v in summary.items()
                                    if k != "step"})
        writer.flush()
    if save:
      checkpointer.save(state, force=True)
    if stop:
      if checkpointer is not None:
        checkpointer.wait()
      raise Preempted(step)
  return state, history, epochs


def _mean(metrics: list) -> dict:
  return {k: float(np.mean([m[k] for m in metrics])) for k in metrics[0]}


def _print0(*args, **kwargs):
  if jax.process_index() == 0:
    print(*args, **kwargs)


def _variables(state: TrainState) -> dict:
  return {"params": state.params, "batch_stats": state.batch_stats}


def create_evaluator(config: ml_collections.ConfigDict, learner: Learner,
                     mesh: Mesh
                     ) -> Optional[representation.RepresentationEvaluator]:
  """The held-out evaluation of config section `eval` (None if disabled)."""
  if not config.eval.knn_ks and learner.probe is None:
    return None
  kwargs = dict(image_size=learner.image_size)
  train_ds = sources.eval_arrays(config.data, config.data.train_split,
                                 **kwargs)
  if config.data.train_fraction:  # the bank holds the examples trained on
    train_ds = in_memory.label_subset(train_ds, config.data.train_fraction,
                                      seed=config.seed)
  eval_ds = sources.eval_arrays(config.data, config.data.eval_split, **kwargs)
  return representation.RepresentationEvaluator(
      learner.network, image_size=learner.image_size,
      normalize=learner.view_specs[0].normalize, train_ds=train_ds,
      eval_ds=eval_ds, mesh=mesh, ks=config.eval.knn_ks,
      temperature=config.eval.knn_temperature,
      batch_size=config.eval.batch_size,
      num_classes=0 if learner.probe is None else learner.probe.num_classes)


def _describe(results: dict) -> str:
  return " | ".join(f"{k} {v:.4f}" for k, v in results.items())


def train_and_evaluate(config: ml_collections.ConfigDict,
                       workdir: str) -> dict:
  """Pretrains as `config` says, evaluating on held-out data as it goes.

  Writes `metrics.jsonl` and TensorBoard events (train metrics every
  `log_every` steps, epoch summaries, evaluations every
  `eval.every_epochs`), the exported encoder `encoder.msgpack` with
  `config.json`, and `results.json`.

  Args:
    config: an experiment config (see `configs/`).
    workdir: directory for outputs; created if missing.

  Returns:
    A summary dict (also written to `workdir/results.json`).
  """
  workdir = prepare_workdir(workdir)
  mesh = sharding.data_mesh()
  check_config(config, mesh)
  train_input = sources.train_input(config, mesh, config_view_specs(config))
  num_examples = train_input.num_examples
  learner = create_learner(config, num_examples, train_input.num_classes)
  steps = total_steps(config, num_examples)
  steps_per_epoch = max(num_examples // config.batch_size, 1)
  _print0(f"jaxssl: {jax.process_count()} process(es), "
          f"{jax.device_count()} device(s) "
          f"({jax.devices()[0].platform}), {train_input.description}: "
          f"{num_examples} examples, {config.method}, batch "
          f"{config.batch_size}, {steps} steps")
  if jax.process_index() == 0:
    with open(os.path.join(workdir, "config.json"), "w") as f:
      f.write(config.to_json_best_effort(indent=1))

  rng = jax.random.key(config.seed)
  state = create_train_state(rng, learner, mesh)
  checkpointer = checkpointing.Checkpointer(
      os.path.join(workdir, "checkpoints"),
      every_steps=config.checkpoint.every_steps, keep=config.checkpoint.keep,
      every_minutes=config.checkpoint.every_minutes,
      asynchronous=config.checkpoint.asynchronous and not config.deterministic)
  if checkpointer.latest_step() is not None:
    state = checkpointer.restore(state)
    _print0(f"resumed from {checkpointer.directory} at step "
            f"{int(jax.device_get(state.step))}")
  start_step = int(jax.device_get(state.step))
  evaluator = create_evaluator(config, learner, mesh)
  writer = metric_writers.MetricWriter(workdir, print_fn=_print0)

  eval_seconds = [0.0]

  def on_epoch_end(epoch, state):
    every = config.eval.every_epochs
    if evaluator is None or not every or epoch % every or (
        epoch * steps_per_epoch >= steps):
      return {}  # the last epoch is evaluated below
    start = time.perf_counter()
    out = evaluator(_variables(state), _probe_params(state))
    eval_seconds[0] += time.perf_counter() - start
    return out

  step_fn = compile_train_step(learner, mesh)
  start = time.perf_counter()
  stop_signal = _StopOnSigterm()
  try:
    state, history, epochs = train_loop(
        state, step_fn, train_input.batches(start_step), total_steps=steps,
        log_every=config.log_every, batch_size=config.batch_size,
        steps_per_epoch=steps_per_epoch, writer=writer,
        on_epoch_end=on_epoch_end, checkpointer=checkpointer,
        should_stop=functools.partial(stop_signal.agreed,
                                      every=config.log_every))
  except Preempted as e:
    _print0(f"preempted: {e}")
    writer.close()
    checkpointer.close()
    return {"preempted_at_step": e.step}
  finally:
    stop_signal.restore()
  checkpointer.wait()
  checkpointer.close()
  # Training time without the evaluations in between.
  train_seconds = time.perf_counter() - start - eval_seconds[0]
  results = {"steps": steps, "start_step": start_step,
             "train_seconds": train_seconds,
             "images_per_second": ((steps - start_step) * config.batch_size
                                   / train_seconds),
             "final_loss": history[-1]["loss"] if history else float("nan")}
  if train_input.skip_counter is not None:
    results["skipped_images"] = train_input.skip_counter.skipped
    results["skipped_per_epoch"] = {
        str(k): v
        for k, v in train_input.skip_counter.skipped_per_epoch.items()}
    if results["skipped_images"]:
      _print0(f"skipped {results['skipped_images']} unreadable image(s) in "
              f"completed epochs of {train_input.description}")
  export.save_encoder(workdir, state, config)

  if evaluator is not None:
    final = evaluator(_variables(state), _probe_params(state))
    results.update({f"{k}": v for k, v in final.items()})
    writer.write_scalars(steps, {f"eval/{k}": v for k, v in final.items()})
    if config.eval.knn_ks:
      results["knn_pretrained"] = final[f"knn_top1_k{config.eval.knn_ks[0]}"]
    _print0(f"pretrained on {evaluator.name}: {_describe(final)}")
    if config.eval.random_init_baseline:
      init = create_train_state(rng, learner, mesh)
      baseline = evaluator(_variables(init))
      results.update({f"random_init_{k}": v for k, v in baseline.items()})
      if config.eval.knn_ks:
        results["knn_random_init"] = baseline[
            f"knn_top1_k{config.eval.knn_ks[0]}"]
      _print0(f"random init on {evaluator.name}: {_describe(baseline)}")
  writer.close()
  if jax.process_index() == 0:
    with open(os.path.join(workdir, "results.json"), "w") as f:
      json.dump({"results": results, "history": history, "epochs": epochs}, f,
                indent=1)
  return results


class _StopOnSigterm:
  """Turns SIGTERM (TPU VM preemption, `kill`) into a request to save and
  stop after the current step, agreed by all processes."""

  def __init__(self):
    self._event = threading.Event()
    self._previous = None
    if threading.current_thread() is threading.main_thread():
      self._previous = signal.signal(signal.SIGTERM,
                                     lambda *_: self._event.set())

  def agreed(self, step: int, every: int) -> bool:
    if jax.process_count() == 1:
      return self._event.is_set()
    if step % every:  # a cross-host agreement costs a sync: not every step
      return False
    from jax.experimental import multihost_utils  # pylint: disable=g-import-not-at-top
    flags = multihost_utils.process_allgather(np.int32(self._event.is_set()))
    return bool(np.max(flags))

  def restore(self) -> None:
    if self._previous is not None:
      signal.signal(signal.SIGTERM, self._previous)
      self._previous = None


def _probe_params(state: TrainState) -> Optional[PyTree]:
  return None if state.probe is None else state.probe.params
