"""Pretraining: config → learner, the loop, evaluation and outputs.

`train_and_evaluate` is the whole run behind `python -m jaxssl.main`: it
checks the config, builds the input, the learner (`jaxssl.step`) and the
state, restores the latest checkpoint, runs `train_loop` over the compiled
per-device step, evaluates on held-out data, exports the encoder and writes
`results.json`.
"""

from __future__ import annotations

import dataclasses
import json
import os
import time
from typing import TYPE_CHECKING, Any, Callable, Iterator, Optional, Tuple

import jax
from jax.sharding import Mesh
import numpy as np
import optax

from jaxssl import augment
from jaxssl import checkpointing
from jaxssl import export
from jaxssl import metric_writers
from jaxssl import methods
from jaxssl import optim
from jaxssl import paths
from jaxssl import preemption
from jaxssl import progress
from jaxssl import schedules
from jaxssl import sharding
from jaxssl.data import eval_input
from jaxssl.data import sources
from jaxssl.evaluators import representation
# The step's public names, for callers of `jaxssl.train`.
from jaxssl.gradients import compute_gradients, microbatched_gradients  # pylint: disable=unused-import
from jaxssl.step import DATA_AXIS, Learner, OnlineProbe, compile_train_step, create_train_state, make_views, train_step  # pylint: disable=unused-import
from jaxssl.train_state import TrainState

if TYPE_CHECKING:  # configs are only read here: no runtime dependency
  import ml_collections

PyTree = Any


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
  if config.method in ("byol", "simsiam") and config.predictor.num_layers < 1:
    raise ValueError(f"config.method={config.method!r} needs a predictor: "
                     "config.predictor.num_layers >= 1")
  if config.optimizer.name not in optim.OPTIMIZERS:
    raise ValueError(f"config.optimizer.name={config.optimizer.name!r} is not "
                     f"one of {sorted(optim.OPTIMIZERS)}")
  config_view_specs(config)
  sources.check(config.data)


def prepare_workdir(workdir: paths.PathLike) -> paths.Path:
  """`workdir` as a path of the file layer (`jaxssl.paths`): a local folder,
  created with its parents, or a `gs://` prefix in an existing bucket.
  Fails with a clear message otherwise."""
  if not workdir:
    raise ValueError("--workdir is required")
  if paths.is_url(workdir):
    wd = paths.path(workdir)
    bucket = paths.path("/".join(str(wd).split("/")[:3]))
    try:
      found = bucket.exists()
    except Exception as e:  # pylint: disable=broad-except
      raise ValueError(f"cannot reach workdir {workdir!r}: {e}") from e
    if not found:
      raise ValueError(f"workdir {workdir!r}: bucket {str(bucket)!r} does "
                       "not exist or is not accessible")
    return wd
  try:
    wd = paths.makedirs(workdir)
  except OSError as e:
    raise ValueError(f"cannot create workdir {workdir!r}: {e}") from e
  if not os.access(wd, os.W_OK):
    raise ValueError(f"workdir {workdir!r} is not writable")
  return wd


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
               preemption_flag: Optional[preemption.PreemptionFlag] = None
               ) -> tuple[Any, list, list]:
  """Runs `step_fn` to `total_steps`; reports every `log_every` steps and
  at the end of every epoch; saves checkpoints as `checkpointer` says.

  Metrics stay on the devices between reports, so the host never waits for
  a step it does not need to. A non-finite loss stops the run with
  FloatingPointError; metrics are fetched and checked BEFORE every save, so
  no NaN state is ever saved. With `preemption_flag`, every step carries
  this process's SIGTERM flag and returns the flag agreed by all processes;
  the loop reads step s − 1's after dispatching step s and, if set, saves
  step s and raises `Preempted` (on every process at the same step).
  `on_epoch_end(epoch, state)` may return extra (evaluation) metrics.

  Returns:
    The final state, the per-report history and the per-epoch summaries.
  """
  start = int(jax.device_get(state.step))
  reporter = progress.Progress(total_steps, batch_size, start_step=start,
                               print_fn=_print0)
  pending, epoch_metrics, history, epochs = [], [], [], []
  agreed_flag = None  # the previous step's agreed preemption flag
  for step in range(start + 1, total_steps + 1):
    batch = next(batches)
    if preemption_flag is not None:
      batch = dict(batch,
                   **{preemption.BATCH_KEY: preemption_flag.array(step)})
    state, metrics = step_fn(state, batch)
    stop = agreed_flag is not None and preemption.agreed(agreed_flag)
    agreed_flag = metrics.pop(preemption.BATCH_KEY, None)
    pending.append(metrics)
    epoch_end = step % steps_per_epoch == 0 or step == total_steps
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
      if writer is not None:
        writer.flush()  # the metrics up to a checkpoint survive a kill
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
  """The held-out evaluation of config section `eval` (None if disabled).

  Nothing is read here: each evaluation streams the eval split (and, for
  kNN only, the bank: the training examples, the `data.train_fraction`
  subset when pretraining used one) through every process.
  """
  if not config.eval.knn_ks and learner.probe is None:
    return None
  kwargs = dict(image_size=learner.image_size)
  bank = None
  if config.eval.knn_ks:
    bank = eval_input.eval_input(config, config.data.train_split, mesh,
                                 trained_subset=True, **kwargs)
  return representation.RepresentationEvaluator(
      learner.network, image_size=learner.image_size,
      normalize=learner.view_specs[0].normalize, bank_input=bank,
      eval_input=eval_input.eval_input(config, config.data.eval_split, mesh,
                                       **kwargs),
      mesh=mesh, ks=config.eval.knn_ks,
      temperature=config.eval.knn_temperature,
      num_classes=0 if learner.probe is None else learner.probe.num_classes)


def _describe(results: dict) -> str:
  return " | ".join(f"{k} {v:.4f}" for k, v in results.items())


def train_and_evaluate(config: ml_collections.ConfigDict,
                       workdir: paths.PathLike) -> dict:
  """Pretrains as `config` says, evaluating on held-out data as it goes.

  Writes `metrics.jsonl` and TensorBoard events (train metrics every
  `log_every` steps, epoch summaries, evaluations every
  `eval.every_epochs`), the exported encoder `encoder.msgpack` with
  `config.json`, and `results.json`.

  Args:
    config: an experiment config (see `configs/`).
    workdir: directory for outputs, local (created if missing) or `gs://`.

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
    paths.write_text(workdir / "config.json",
                     config.to_json_best_effort(indent=1))

  rng = jax.random.key(config.seed)
  state = create_train_state(rng, learner, mesh)
  checkpointer = checkpointing.Checkpointer(
      workdir / "checkpoints",
      every_steps=config.checkpoint.every_steps, keep=config.checkpoint.keep,
      every_minutes=config.checkpoint.every_minutes,
      asynchronous=config.checkpoint.asynchronous and not config.deterministic)
  if checkpointer.latest_step() is not None:
    state = checkpointer.restore(state)
    _print0(f"resumed from {checkpointer.directory} at step "
            f"{int(jax.device_get(state.step))}")
  start_step = int(jax.device_get(state.step))
  evaluator = create_evaluator(config, learner, mesh)
  writer = metric_writers.MetricWriter(workdir, start_step=start_step,
                                       print_fn=_print0)

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
  preemption_flag = preemption.PreemptionFlag(mesh)
  try:
    state, history, epochs = train_loop(
        state, step_fn, train_input.batches(start_step), total_steps=steps,
        log_every=config.log_every, batch_size=config.batch_size,
        steps_per_epoch=steps_per_epoch, writer=writer,
        on_epoch_end=on_epoch_end, checkpointer=checkpointer,
        preemption_flag=preemption_flag)
  except Preempted as e:
    _print0(f"preempted: {e}")
    writer.close()
    checkpointer.close()
    return {"preempted_at_step": e.step}
  finally:
    preemption_flag.restore()
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
    paths.write_text(workdir / "results.json", json.dumps(
        {"results": results, "history": history, "epochs": epochs}, indent=1))
  return results


def _probe_params(state: TrainState) -> Optional[PyTree]:
  return None if state.probe is None else state.probe.params

