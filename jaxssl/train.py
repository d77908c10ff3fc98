"""Pretraining: config → learner, the loop, evaluation and outputs.

`train_and_evaluate` is the whole run behind `python -m jaxssl.main`: it
checks the config, builds the input, the learner (`jaxssl.step`) and the
state, restores the latest checkpoint, runs `train_loop` over the compiled
per-device step, evaluates on held-out data, exports the encoder and writes
`results.json`.
"""

from __future__ import annotations

import json
import os
import time
from typing import TYPE_CHECKING, Any, Optional, Tuple

import jax
from jax.sharding import Mesh
import optax

from jaxssl import view_presets
from jaxssl import checkpointing
from jaxssl import epochs as epochs_lib
from jaxssl import loop as loop_lib
from jaxssl import export
from jaxssl import metric_writers
from jaxssl import methods
from jaxssl import optim
from jaxssl import paths
from jaxssl import preemption
from jaxssl import progress
from jaxssl import run_config
from jaxssl import schedules
from jaxssl import sharding
from jaxssl import views as views_lib
from jaxssl.data import eval_input
from jaxssl.data import sources
from jaxssl.evaluators import representation
# The step's and the loop's public names, for callers of `jaxssl.train`.
from jaxssl.epochs import total_steps  # pylint: disable=unused-import
from jaxssl.gradcache import microbatched_gradients  # pylint: disable=unused-import
from jaxssl.gradients import compute_gradients  # pylint: disable=unused-import
from jaxssl.step import DATA_AXIS, Learner, OnlineProbe, compile_train_step, create_train_state, evaluated_variables, forward_backward, make_views, train_step  # pylint: disable=unused-import
from jaxssl.loop import Preempted, train_loop  # pylint: disable=unused-import
from jaxssl.train_state import TrainState

if TYPE_CHECKING:  # configs are only read here: no runtime dependency
  import ml_collections

PyTree = Any


def create_learner(config: ml_collections.ConfigDict, num_examples: int,
                   num_classes: int = 0) -> Learner:
  """Method, optimizer and schedule of `config` for a dataset of this size.

  `num_classes` (0: unlabelled) sizes the online probe of `config.probe`;
  a method that trains on labels (SupCon) refuses 0.
  """
  opt = config.optimizer
  steps = epochs_lib.total_steps(config, num_examples)
  schedule = schedules.from_config(
      opt, batch_size=config.batch_size, num_examples=num_examples,
      epochs=config.epochs, total_steps=steps)
  length = epochs_lib.RunLength.from_config(config, num_examples)
  tx = optim.from_config(opt, schedule, total_steps=steps,
                         freeze_steps=length.steps_until(opt.freeze_epochs))
  method = methods.METHODS[config.method](config, axis_name=DATA_AXIS,
                                          total_steps=steps,
                                          num_examples=num_examples)
  if method.needs_labels and num_classes <= 0:
    raise ValueError(f"config.method={config.method!r} trains on class labels; "
                     f"{config.data.source} data has no labels")
  probe = None
  if config.probe.enabled:
    if num_classes <= 0:
      raise ValueError("config.probe.enabled=True needs a labelled dataset; "
                       f"{config.data.source} data has no labels (set "
                       "--config.probe.enabled=False)")
    probe = OnlineProbe(num_classes, optax.adam(config.probe.learning_rate))
  early = views_lib.config_early_views(config, method.views)
  evaluated = config.eval.get("network", "auto")
  return Learner(method=method, tx=tx, schedule=schedule,
                 evaluated=method.evaluated if evaluated == "auto"
                 else evaluated,
                 views=views_lib.config_view_groups(config, method.views),
                 probe=probe, microbatches=config.train.microbatches,
                 microbatch_loop=config.train.microbatch_loop,
                 epochs_per_step=config.batch_size / num_examples,
                 early_views=early,
                 early_steps=(length.steps_until(config.augment.early_epochs)
                              if early else 0))


def config_view_specs(
    config: ml_collections.ConfigDict,
    early: bool = False) -> Optional[Tuple[view_presets.ViewSpec, ...]]:
  """Every view of config section `augment` for `config.method`, in group
  order (as host pipelines crop them); `early`: those of the first
  `augment.early_epochs` (None without)."""
  # The views do not depend on the run's length or the dataset's size.
  method = methods.METHODS[config.method](config, axis_name=DATA_AXIS,
                                          total_steps=1, num_examples=0)
  if early:
    groups = views_lib.config_early_views(config, method.views)
    return None if groups is None else view_presets.flatten(groups)
  return view_presets.flatten(views_lib.config_view_groups(config, method.views))


def check_config(config: ml_collections.ConfigDict, mesh: Mesh) -> None:
  """Rejects settings that cannot run, before anything is loaded or compiled."""
  per_device = sharding.check_batch_size(config.batch_size, mesh)
  m = config.train.microbatches
  if m < 1 or per_device % m:
    raise ValueError(
        f"config.train.microbatches={m} must be a positive divisor of the "
        f"{per_device} images per device (config.batch_size="
        f"{config.batch_size} over {mesh.devices.size} device(s))")
  groups = config.model.get("bn_num_groups", 0)
  if groups and mesh.devices.size % groups:
    raise ValueError(
        f"config.model.bn_num_groups={groups} BatchNorm groups need a "
        f"multiple of {groups} devices; the mesh has {mesh.devices.size}")
  if config.epochs <= 0:
    raise ValueError(f"config.epochs={config.epochs} must be positive")
  if config.method not in methods.METHODS:
    raise ValueError(f"config.method={config.method!r} is not one of "
                     f"{sorted(methods.METHODS)}")
  epochs_lib.check_steps_rule(config.steps_rule)
  if (config.method in ("byol", "simsiam", "mocov3")
      and config.predictor.num_layers < 1):
    raise ValueError(f"config.method={config.method!r} needs a predictor: "
                     "config.predictor.num_layers >= 1")
  if config.target.shuffle_bn and config.method != "moco":
    raise ValueError("config.target.shuffle_bn=True is MoCo v1/v2's "
                     f"(config.method='moco'); config.method="
                     f"{config.method!r} has no shuffled key encoder")
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


def create_evaluator(config: ml_collections.ConfigDict, learner: Learner,
                     mesh: Mesh
                     ) -> Optional[representation.RepresentationEvaluator]:
  """The held-out evaluation of config section `eval` (None if disabled).

  Nothing is read here: each evaluation streams the eval split (and, for
  kNN only, the bank: the training examples, the `data.train_fraction`
  subset when pretraining used one) through every process.
  """
  bank_ks = tuple(config.eval.bank_knn_ks)
  if bank_ks and learner.method.bank_knn is None:
    raise ValueError(f"config.eval.bank_knn_ks={bank_ks}: {config.method} "
                     "has no memory bank (instdisc and cmc have); set "
                     "--config.eval.bank_knn_ks=()")
  if not config.eval.knn_ks and learner.probe is None and not bank_ks:
    return None
  kwargs = dict(image_size=learner.image_size)
  bank = None
  if config.eval.knn_ks:
    bank = eval_input.eval_input(config, config.data.train_split, mesh,
                                 trained_subset=True, **kwargs)
  return representation.RepresentationEvaluator(
      learner.evaluated_network, image_size=learner.image_size,
      normalize=learner.view_specs[0].normalize, bank_input=bank,
      eval_input=eval_input.eval_input(config, config.data.eval_split, mesh,
                                       **kwargs),
      mesh=mesh, ks=config.eval.knn_ks,
      temperature=config.eval.knn_temperature,
      num_classes=0 if learner.probe is None else learner.probe.num_classes,
      memory_bank=learner.method.bank_knn, memory_bank_ks=bank_ks,
      memory_bank_temperature=config.eval.bank_knn_temperature,
      knn_feature=config.eval.knn_feature)


def _describe(results: dict) -> str:
  return " | ".join(f"{k} {v:.4f}" for k, v in results.items())


def train_and_evaluate(config: ml_collections.ConfigDict,
                       workdir: paths.PathLike, *,
                       allow_config_change: bool = False) -> dict:
  """Pretrains as `config` says, evaluating on held-out data as it goes.

  Writes `metrics.jsonl` and TensorBoard events (train metrics every
  `log_every` steps, epoch summaries, evaluations every
  `eval.every_epochs`), the exported encoder `encoder.msgpack` with
  `config.json`, and `results.json`. A restart resumes from the newest
  readable checkpoint, refusing a config that differs from the run's pinned
  one (`jaxssl.run_config`) unless `allow_config_change`.

  Args:
    config: an experiment config (see `configs/`).
    workdir: directory for outputs, local (created if missing) or `gs://`.
    allow_config_change: accept a restart whose config changes keys that
      change results (logged, and the new config pinned).

  Returns:
    A summary dict (also written to `workdir/results.json`).
  """
  workdir = prepare_workdir(workdir)
  mesh = sharding.data_mesh()
  check_config(config, mesh)
  train_input = sources.train_input(config, mesh, config_view_specs(config),
                                    config_view_specs(config, early=True))
  num_examples = train_input.num_examples
  if config.eval.bank_knn_ks and not train_input.num_classes:
    raise ValueError(
        f"config.eval.bank_knn_ks={tuple(config.eval.bank_knn_ks)}: the "
        f"training data ({train_input.description}) has no labels to give "
        "the memory bank's rows; set --config.eval.bank_knn_ks=()")
  learner = create_learner(config, num_examples, train_input.num_classes)
  length = epochs_lib.RunLength.from_config(config, num_examples)
  steps = length.total_steps
  progress.print0(f"jaxssl: {jax.process_count()} process(es), "
                  f"{jax.device_count()} device(s) "
                  f"({jax.devices()[0].platform}), "
                  f"{train_input.description}, {config.method}: "
                  f"{epochs_lib.describe(length)}")
  warning = length.warmup_warning(config.optimizer.warmup_epochs)
  if warning:
    progress.print0(f"WARNING: {warning}", flush=True)
  rng = jax.random.key(config.seed)
  state, checkpointer, loop_state = _restore_or_init(
      config, learner, mesh, workdir, rng,
      allow_config_change=allow_config_change)
  start_step = int(jax.device_get(state.step))
  evaluator = create_evaluator(config, learner, mesh)
  writer = metric_writers.MetricWriter(workdir, start_step=start_step,
                                       print_fn=progress.print0)

  eval_seconds = [0.0]

  def on_epoch_end(epoch, state):
    del epoch
    if evaluator is None or not length.eval_due(
        int(jax.device_get(state.step)), config.eval.every_epochs):
      return {}  # the last epoch is evaluated below
    start = time.perf_counter()
    out = evaluator(evaluated_variables(state, learner), _probe_params(state),
                    state.method_state)
    eval_seconds[0] += time.perf_counter() - start
    return out

  step_fn = compile_train_step(learner, mesh)
  start = time.perf_counter()
  preemption_flag = preemption.PreemptionFlag(mesh)
  try:
    state, record = train_loop(
        state, step_fn, train_input.batches(start_step), length=length,
        log_every=config.log_every, writer=writer,
        on_epoch_end=on_epoch_end, checkpointer=checkpointer,
        preemption_flag=preemption_flag, loop_state=loop_state)
  except Preempted as e:
    progress.print0(f"preempted: {e}")
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
             "final_loss": (record.history[-1]["loss"] if record.history
                            else float("nan")),
             "run_seconds": record.seconds,
             **_skipped_images(train_input)}
  export.save_encoder(workdir, evaluated_variables(state, learner), config)
  if evaluator is not None:
    results.update(_final_evaluation(config, evaluator, learner, mesh,
                                     state, rng, writer))
  writer.close()
  write_results(workdir, results, record)
  return results


def write_results(workdir: paths.Path, results: dict,
                  record: loop_lib.RunRecord) -> None:
  """`workdir/results.json` (process 0): the results and the whole run's
  record (the per-report history, the epoch summaries and the segments,
  those before a resume included); its presence marks the run finished."""
  if jax.process_index() == 0:
    paths.write_text(workdir / "results.json", json.dumps(
        {"results": results, **record.to_json()}, indent=1))


def _restore_or_init(config: ml_collections.ConfigDict, learner: Learner,
                     mesh: Mesh, workdir: paths.Path, rng: jax.Array, *,
                     allow_config_change: bool):
  """The initial (or newest readable checkpoint's) state, the checkpointer
  and the restored loop state; pins the config (`jaxssl.run_config`)."""
  checkpointer = checkpointing.Checkpointer(
      workdir / "checkpoints",
      every_steps=config.checkpoint.every_steps, keep=config.checkpoint.keep,
      every_minutes=config.checkpoint.every_minutes,
      asynchronous=config.checkpoint.asynchronous and not config.deterministic)
  latest = checkpointer.latest_step()
  run_config.pin(config, checkpointer.directory, resumed_step=latest,
                 allow_change=allow_config_change,
                 is_writer=jax.process_index() == 0, print_fn=progress.print0)
  if jax.process_index() == 0:
    paths.write_text(workdir / "config.json",
                     config.to_json_best_effort(indent=1))
  state = create_train_state(rng, learner, mesh)
  loop_state = None
  if latest is not None:
    state, loop_state = checkpointer.restore_all(state)
    progress.print0(f"resumed from {checkpointer.directory} at step "
                    f"{int(jax.device_get(state.step))}")
  return state, checkpointer, loop_state


def _skipped_images(train_input: sources.TrainInput) -> dict:
  """Unreadable images skipped by a host pipeline, for `results.json`."""
  counter = train_input.skip_counter
  if counter is None:
    return {}
  if counter.skipped:
    progress.print0(f"skipped {counter.skipped} unreadable image(s) in "
                    f"completed epochs of {train_input.description}")
  return {"skipped_images": counter.skipped,
          "skipped_per_epoch": {str(k): v for k, v in
                                counter.skipped_per_epoch.items()}}


def _final_evaluation(config: ml_collections.ConfigDict,
                      evaluator: representation.RepresentationEvaluator,
                      learner: Learner, mesh: Mesh, state: TrainState,
                      rng: jax.Array,
                      writer: metric_writers.MetricWriter) -> dict:
  """The held-out evaluation of the trained (written as `eval/*` at the
  last step) and, if asked, the randomly initialised network."""
  final = evaluator(evaluated_variables(state, learner), _probe_params(state),
                    state.method_state)
  writer.write_scalars(int(jax.device_get(state.step)),
                       {f"eval/{k}": v for k, v in final.items()})
  out = dict(final)
  if config.eval.knn_ks:
    out["knn_pretrained"] = final[f"knn_top1_k{config.eval.knn_ks[0]}"]
  progress.print0(f"pretrained on {evaluator.name}: {_describe(final)}")
  if config.eval.random_init_baseline:
    init = create_train_state(rng, learner, mesh)
    baseline = evaluator(evaluated_variables(init, learner))
    out.update({f"random_init_{k}": v for k, v in baseline.items()})
    if config.eval.knn_ks:
      out["knn_random_init"] = baseline[f"knn_top1_k{config.eval.knn_ks[0]}"]
    progress.print0(f"random init on {evaluator.name}: {_describe(baseline)}")
  return out


def _probe_params(state: TrainState) -> Optional[PyTree]:
  return None if state.probe is None else state.probe.params

