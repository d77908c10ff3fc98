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

import dataclasses
import functools
import json
import os
import time
from typing import Any, Callable, Iterator, Optional, Tuple

import flax.linen as nn
import jax
from jax import lax
import jax.numpy as jnp
from jax.sharding import Mesh, PartitionSpec as P
import ml_collections
import numpy as np
import optax

from jaxssl import augment
from jaxssl import losses
from jaxssl import optim
from jaxssl import progress
from jaxssl import schedules
from jaxssl import sharding
from jaxssl.data import sources
from jaxssl.evaluators import knn
from jaxssl.methods import simclr
from jaxssl.train_state import TrainState

DATA_AXIS = sharding.DATA_AXIS


@dataclasses.dataclass(frozen=True)
class Learner:
  """The static parts of a train step: network, optimizer and view settings.

  Attributes:
    network: flax module returning `(h, z)`, built with `axis_name=DATA_AXIS`.
    tx: optax transformation.
    schedule: learning rate as a function of the step (for logging).
    temperature: NT-Xent temperature.
    view_specs: how each view is cropped and augmented.
  """
  network: nn.Module
  tx: optax.GradientTransformation
  schedule: Callable[[jax.Array], jax.Array]
  temperature: float
  view_specs: Tuple[augment.ViewSpec, ...]

  @property
  def image_size(self) -> int:
    return self.view_specs[0].size


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
  zn = losses.l2_normalize(z.astype(jnp.float32))
  moments = jnp.stack([jnp.mean(zn, 0), jnp.mean(jnp.square(zn), 0)])
  if axis_name is not None:
    moments = lax.pmean(moments, axis_name)
  return jnp.mean(jnp.sqrt(jnp.maximum(moments[1] - moments[0]**2, 0.0)))


def train_step(state: TrainState, batch: dict, rng: jax.Array, *,
               learner: Learner,
               axis_name: str = DATA_AXIS) -> tuple[TrainState, dict]:
  """One optimisation step on one device's share of the global batch.

  Args:
    state: replicated train state.
    batch: `{'image': uint8 [n, H, W, 3], ...}`, this device's rows.
    rng: key of this step (the same on every device).
    learner: network, optimizer and view settings.
    axis_name: the mapped data axis.

  Returns:
    The new state and metrics averaged over devices.
  """
  views = jnp.concatenate(
      make_views(batch, rng, specs=learner.view_specs, axis_name=axis_name))

  def loss_fn(params):
    (_, z), new_vars = learner.network.apply(
        {"params": params, "batch_stats": state.batch_stats}, views,
        train=True, mutable=["batch_stats"])
    local_loss, aux = simclr.loss(z, temperature=learner.temperature,
                                  axis_name=axis_name)
    # The mean over devices of per-device means over local anchors is the
    # loss of the global batch; its gradient needs no further reduction.
    return lax.pmean(local_loss, axis_name), (new_vars["batch_stats"], z, aux)

  (loss, (batch_stats, z, aux)), grads = jax.value_and_grad(
      loss_fn, has_aux=True)(state.params)
  updates, opt_state = learner.tx.update(grads, state.opt_state, state.params)
  params = optax.apply_updates(state.params, updates)
  metrics = {
      "loss": loss,
      "lr": learner.schedule(state.step),
      "grad_norm": optax.tree.norm(grads),
      "param_norm": optax.tree.norm(params),
      "embed_std": _embedding_std(z, axis_name),
  }
  metrics.update(jax.tree.map(lambda m: lax.pmean(m, axis_name), aux))
  new_state = state.replace(step=state.step + 1, params=params,
                            batch_stats=batch_stats, opt_state=opt_state)
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
  """Initialises parameters, BN statistics and optimizer state, replicated."""
  init_rng, state_rng = jax.random.split(rng)

  def init(init_rng, state_rng):
    dummy = jnp.zeros((2, learner.image_size, learner.image_size, 3))
    variables = learner.network.init(init_rng, dummy, train=False)
    params = variables["params"]
    return TrainState(step=jnp.zeros([], jnp.int32), params=params,
                      batch_stats=variables["batch_stats"],
                      opt_state=learner.tx.init(params), rng=state_rng)

  return jax.jit(init, out_shardings=sharding.replicated(mesh))(
      init_rng, state_rng)


def create_learner(config: ml_collections.ConfigDict,
                   num_examples: int) -> Learner:
  """Network, optimizer and schedule of `config` for a dataset of this size."""
  opt = config.optimizer
  schedule = schedules.warmup_cosine(
      opt.base_lr, batch_size=config.batch_size, num_examples=num_examples,
      epochs=config.epochs, warmup_epochs=opt.warmup_epochs,
      scaling=opt.lr_scaling)
  extra = {}
  if opt.name in ("lars", "sgd"):
    extra["nesterov"] = opt.nesterov
  if opt.name == "lars":
    extra["trust_coefficient"] = opt.trust_coefficient
  tx = optim.create_optimizer(opt.name, schedule,
                              weight_decay=opt.weight_decay,
                              momentum=opt.momentum, **extra)
  return Learner(network=simclr.create_network(config, DATA_AXIS), tx=tx,
                 schedule=schedule, temperature=config.loss.temperature,
                 view_specs=config_view_specs(config))


def config_view_specs(
    config: ml_collections.ConfigDict) -> Tuple[augment.ViewSpec, ...]:
  """The views of config section `augment` at `data.image_size`."""
  if config.augment.preset not in augment.VIEW_PRESETS:
    raise ValueError(f"config.augment.preset={config.augment.preset!r} is not "
                     f"one of {sorted(augment.VIEW_PRESETS)}")
  specs = augment.view_specs(
      config.augment.preset, image_size=config.data.image_size,
      color_strength=config.augment.color_strength, blur=config.augment.blur)
  if len(specs) != 2 or specs[0].size != specs[1].size:
    raise ValueError(f"config.augment.preset={config.augment.preset!r}: "
                     "SimCLR needs two views of one size")
  return specs


def check_config(config: ml_collections.ConfigDict, mesh: Mesh) -> None:
  """Rejects settings that cannot run, before anything is loaded or compiled."""
  sharding.check_batch_size(config.batch_size, mesh)
  if config.epochs <= 0:
    raise ValueError(f"config.epochs={config.epochs} must be positive")
  if config.method != "simclr":
    raise ValueError(f"config.method={config.method!r} is not one of "
                     "['simclr']")
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


def make_embed_fn(learner: Learner):
  """Jitted `(variables, uint8 images) -> h`: encoder features, eval-mode BN.

  The variables are an argument (not closed over), so one compilation serves
  every set of weights evaluated (pretrained, random init, later epochs).
  """
  @jax.jit
  def embed(variables, images):
    x = augment.center_resize(images, learner.image_size)
    h, _ = learner.network.apply(variables, x, train=False)
    return h
  return embed


def evaluate_knn(embed_fn, variables: Any, train_ds, test_ds, *,
                 mesh: Mesh, k: int, temperature: float,
                 batch_size: int) -> float:
  """kNN accuracy of the encoder features of `variables` on `test_ds`."""
  embed = functools.partial(embed_fn, variables)
  train_f = knn.extract_features(embed, train_ds.images, batch_size=batch_size,
                                 mesh=mesh)
  test_f = knn.extract_features(embed, test_ds.images, batch_size=batch_size,
                                mesh=mesh)
  return knn.knn_accuracy(train_f, train_ds.labels, test_f, test_ds.labels,
                          num_classes=train_ds.num_classes, k=k,
                          temperature=temperature)


def train_loop(state: TrainState, step_fn, batches: Iterator[dict], *,
               total_steps: int, log_every: int,
               batch_size: int) -> tuple[TrainState, list]:
  """Runs `step_fn` to `total_steps`, fetching metrics every `log_every` steps.

  Metrics stay on the devices between reports, so the host never waits for
  a step it does not need to; a non-finite loss stops the run.
  """
  start = int(jax.device_get(state.step))
  reporter = progress.Progress(total_steps, batch_size, start_step=start,
                               print_fn=_print0)
  pending, history = [], []
  for step in range(start + 1, total_steps + 1):
    state, metrics = step_fn(state, next(batches))
    pending.append(metrics)
    if step % log_every == 0 or step == total_steps:
      fetched = jax.device_get(pending)
      pending = []
      summary = {k: float(np.mean([m[k] for m in fetched])) for k in fetched[0]}
      if not np.isfinite(summary["loss"]):
        raise FloatingPointError(
            f"loss is {summary['loss']} around step {step}; stopping")
      reporter.report(step, summary)
      history.append({"step": step, **summary})
  return state, history


def _print0(*args, **kwargs):
  if jax.process_index() == 0:
    print(*args, **kwargs)


def train_and_evaluate(config: ml_collections.ConfigDict,
                       workdir: str) -> dict:
  """Pretrains as `config` says, evaluates kNN, writes `results.json`.

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
  learner = create_learner(config, num_examples)
  total_steps = schedules.simclr_total_steps(num_examples, config.epochs,
                                             config.batch_size)
  _print0(f"jaxssl: {jax.device_count()} device(s) "
          f"({jax.devices()[0].platform}), {train_input.description}: "
          f"{num_examples} examples, batch {config.batch_size}, "
          f"{total_steps} steps")

  rng = jax.random.key(config.seed)
  state = create_train_state(rng, learner, mesh)
  batches = train_input.batches
  step_fn = compile_train_step(learner, mesh)
  start = time.perf_counter()
  state, history = train_loop(state, step_fn, batches, total_steps=total_steps,
                              log_every=config.log_every,
                              batch_size=config.batch_size)
  train_seconds = time.perf_counter() - start
  results = {"steps": total_steps, "train_seconds": train_seconds,
             "final_loss": history[-1]["loss"]}
  if train_input.skip_counter is not None:
    results["skipped_images"] = train_input.skip_counter.skipped
    results["skipped_per_epoch"] = {
        str(k): v
        for k, v in train_input.skip_counter.skipped_per_epoch.items()}
    if results["skipped_images"]:
      _print0(f"skipped {results['skipped_images']} unreadable image(s) in "
              f"completed epochs of {train_input.description}")

  if config.eval.knn_k > 0:
    train_ds = sources.eval_arrays(config.data, config.data.train_split,
                                   image_size=learner.image_size)
    eval_ds = sources.eval_arrays(config.data, config.data.eval_split,
                                  image_size=learner.image_size)
    embed_fn = make_embed_fn(learner)
    knn_args = dict(mesh=mesh, k=config.eval.knn_k,
                    temperature=config.eval.knn_temperature,
                    batch_size=config.eval.batch_size)
    variables = {"params": state.params, "batch_stats": state.batch_stats}
    results["knn_pretrained"] = evaluate_knn(embed_fn, variables, train_ds,
                                             eval_ds, **knn_args)
    if config.eval.random_init_baseline:
      init = create_train_state(rng, learner, mesh)
      variables = {"params": init.params, "batch_stats": init.batch_stats}
      results["knn_random_init"] = evaluate_knn(embed_fn, variables, train_ds,
                                                eval_ds, **knn_args)
    line = (f"kNN top-1 (k={config.eval.knn_k}, T={config.eval.knn_temperature})"
            f" on {eval_ds.name}: pretrained {results['knn_pretrained']:.4f}")
    if "knn_random_init" in results:
      line += f" | random init {results['knn_random_init']:.4f}"
    _print0(line)
  if jax.process_index() == 0:
    with open(os.path.join(workdir, "results.json"), "w") as f:
      json.dump({"results": results, "history": history}, f, indent=1)
  return results
