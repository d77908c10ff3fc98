"""Supervised training on a pretrained network, shared by linear evaluation,
fine-tuning (`jaxssl.linear_eval`) and distillation (`jaxssl.distill`).

* `Classifier`: encoder → first `head_layers` projection-head layers → a
  zero-initialised linear layer named `classifier` (SimCLR v2's
  `head_supervised` on `ft_proj_selector` hidden layers).
* `optimizer`: the config's optimizer with the classifier treated as the
  SimCLR reference's LARS treats `head_supervised`: no trust ratio, its
  weight decay an L2 term of the loss (`classifier_decay`).
* `train`: the resumable loop (orbax checkpoints in `workdir/checkpoints`;
  a restarted run continues from the newest one, on the input stream's
  position), and `evaluator`: top-1/top-5 on centre crops of the
  evaluation split, streamed per process (each process reads its share,
  counts are reduced over all devices: host memory independent of the
  split's size, one process or a pod alike).
"""

from __future__ import annotations

import importlib
import sys
from typing import Any, Callable, Optional

from absl import app
import jax
import jax.numpy as jnp
from jax.sharding import Mesh
import ml_collections
import optax

from jaxssl import checkpointing
from jaxssl import classifier as classifier_lib
from jaxssl import epochs as epochs_lib
from jaxssl import loop
from jaxssl import metric_writers
from jaxssl import optim
from jaxssl import paths
from jaxssl import progress
from jaxssl import schedules
from jaxssl import train as train_lib
from jaxssl import view_presets
from jaxssl.data import eval_input
from jaxssl.data import sources
from jaxssl.evaluators import classification

PyTree = Any
CLASSIFIER = classifier_lib.CLASSIFIER
Classifier = classifier_lib.Classifier


def _not_classifier(params: PyTree) -> PyTree:
  """LARS's mask: kernels outside the classifier."""
  default = optim.default_lars_mask(params)
  return {k: (jax.tree.map(lambda _: False, v) if k == CLASSIFIER else v)
          for k, v in default.items()}


def optimizer(opt: ml_collections.ConfigDict, schedule: Callable
              ) -> optax.GradientTransformation:
  """`optim.from_config`, where LARS leaves the classifier out of its trust
  ratio and weight decay (the SimCLR reference's `exclude_from_weight_decay`
  / `exclude_from_layer_adaptation` hold `head_supervised`; its decay
  comes back as the loss term `classifier_decay`), unless
  `opt.adapt_classifier` (SimSiam's linear classification: apex LARC over
  the classifier, `optimizer.decay_mask` as set)."""
  adapt = opt.name != "lars" or opt.get("adapt_classifier", False)
  return optim.from_config(opt, schedule,
                           mask=None if adapt else _not_classifier)


def classifier_decay_rate(opt: ml_collections.ConfigDict) -> float:
  """The weight decay of the classifier kernel as a loss term: LARS's
  `weight_decay` (the reference's `add_weight_decay` for `head_supervised`),
  else 0 (the optimizer decays it, also LARS with `adapt_classifier`)."""
  if opt.name == "lars" and not opt.get("adapt_classifier", False):
    return float(opt.weight_decay)
  return 0.0


def classifier_decay(params: PyTree, rate: float) -> jax.Array:
  """`rate/2·‖W‖²` of the classifier kernel."""
  if not rate:
    return jnp.zeros([])
  kernel = params[CLASSIFIER]["head"]["kernel"]
  return 0.5 * rate * jnp.sum(jnp.square(kernel))


def data_config(data: ml_collections.ConfigDict,
                pretrain_data: ml_collections.ConfigDict, *,
                train_fraction: Optional[float] = None
                ) -> ml_collections.ConfigDict:
  """`data`, or the pretraining run's data section when `data.source` is ''
  (with `train_fraction` replaced when given)."""
  if data.source:
    return data
  out = ml_collections.ConfigDict(pretrain_data.to_dict())
  if train_fraction is not None:
    with out.unlocked():
      out.train_fraction = train_fraction
  return out


def training_input(config: ml_collections.ConfigDict,
                   data: ml_collections.ConfigDict,
                   pretrain_config: ml_collections.ConfigDict, mesh: Mesh
                   ) -> tuple:
  """The supervised runs' views, input, length and learning rate.

  Random crop (area 0.08–1) + flip, normalised as the pretraining views
  were (SimCLR's fine-tuning and distillation augmentation); the steps
  rule and the warm-up + cosine schedule of the SimCLR reference.

  Returns:
    `(spec, train_input, length, schedule)`.
  """
  run_config = ml_collections.ConfigDict({
      "data": data.to_dict(), "batch_size": config.batch_size,
      "seed": config.seed})
  sources.check(run_config.data)
  spec = view_presets.ViewSpec(
      size=data.image_size, crop_area=(0.08, 1.0), flip_prob=0.5,
      jitter_prob=0.0, grayscale_prob=0.0, blur_prob=0.0, solarize_prob=0.0,
      normalize=train_lib.config_view_specs(pretrain_config)[0].normalize)
  train_input = sources.train_input(run_config, mesh, (spec,))
  length = epochs_lib.RunLength.create(
      train_input.num_examples, config.batch_size, config.epochs, "simclr")
  schedule = schedules.warmup_cosine(
      config.optimizer.base_lr, batch_size=config.batch_size,
      num_examples=train_input.num_examples, epochs=config.epochs,
      warmup_epochs=config.optimizer.warmup_epochs,
      scaling=config.optimizer.lr_scaling, total_steps=length.total_steps)
  return spec, train_input, length, schedule


def evaluator(data: ml_collections.ConfigDict, mesh: Mesh, *,
              spec: view_presets.ViewSpec, batch_size: int
              ) -> classification.ClassificationEvaluator:
  """Top-1/top-5 on the centre crops of `data.eval_split`, streamed per
  process (`evaluators.classification`), normalised as `spec`."""
  split = eval_input.split_input(data, data.eval_split, mesh,
                                 image_size=spec.size, batch_size=batch_size)
  return classification.ClassificationEvaluator(
      split, mesh=mesh, image_size=spec.size, normalize=spec.normalize)


def train(state, step_fn, train_input: sources.TrainInput, *,
          length: epochs_lib.RunLength, config: ml_collections.ConfigDict,
          workdir: paths.Path, on_epoch_end: Optional[Callable] = None
          ) -> tuple:
  """Runs `step_fn` to the end, resuming from `workdir/checkpoints`.

  Checkpoints every `config.checkpointing.every_steps` steps and
  `every_minutes` minutes, and at the end (a re-run of a finished stage
  restores the last state and trains no further). Metrics go to
  `workdir/metrics.jsonl` (a resumed run keeps the records up to its step).

  Returns:
    `(state, the run's loop.RunRecord (every segment's), the step it
    started from, the metric writer)`.
  """
  opts = config.checkpointing
  checkpointer = checkpointing.Checkpointer(
      workdir / "checkpoints", every_steps=opts.every_steps, keep=opts.keep,
      every_minutes=opts.every_minutes, asynchronous=False)
  loop_state = None
  if checkpointer.latest_step() is not None:
    state, loop_state = checkpointer.restore_all(state)
    progress.print0(f"resumed from {checkpointer.directory} at step "
                    f"{int(jax.device_get(state.step))}", flush=True)
  start = int(jax.device_get(state.step))
  writer = metric_writers.MetricWriter(workdir, start_step=start,
                                       print_fn=progress.print0)
  try:
    state, record = loop.train_loop(
        state, step_fn, train_input.batches(start), length=length,
        log_every=config.log_every, writer=writer, on_epoch_end=on_epoch_end,
        checkpointer=checkpointer, loop_state=loop_state)
  finally:
    checkpointer.close()
  return state, record, start, writer


def run_as_main(run_fn: Callable[[ml_collections.ConfigDict, str], dict]
                ) -> None:
  """Runs `run_fn(config, workdir)` as a program with `jaxssl.main`'s flags
  (--config, --workdir, --distributed, ...); a bad config or path ends it
  with a usage error naming the key or file."""
  # Imported here only, so that importing a module defines no flags.
  entry = importlib.import_module("jaxssl.main")

  def main(argv):
    entry.initialize(argv)
    try:
      run_fn(entry.FLAGS.config, entry.FLAGS.workdir)
    except (ValueError, FileNotFoundError, NotImplementedError) as e:
      raise app.UsageError(str(e)) from e

  app.run(main, argv=entry.resolve_config_argv(sys.argv),
          flags_parser=entry.parse_flags)
