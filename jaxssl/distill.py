r"""Distillation of a fine-tuned teacher into a student (SimCLR v2, stage 3).

  python -m jaxssl.distill --config=configs/distill.py \
      --config.teacher=/tmp/simclr_ft1 --workdir=/tmp/simclr_distill1

Chen, Kornblith, Swersky, Norouzi & Hinton, "Big Self-Supervised Models are
Strong Semi-Supervised Learners", NeurIPS 2020
(https://arxiv.org/abs/2006.10029), §2 eq. 2–3: the student learns, on the
training images WITHOUT their labels, the teacher's temperature-scaled
class distribution, `−Σ_y P_T(y|x; τ) log P_S(y|x; τ)`
(`losses.soft_label_cross_entropy`); optionally mixed with the
cross-entropy of the labelled fraction, `α·distill + (1 − α)·CE`.

The teacher is a fine-tuned classifier (`jaxssl.linear_eval` in finetune
mode writes `classifier.msgpack`). It runs in inference mode (BatchNorm with
its running statistics) inside the same compiled step, on the same
augmented view as the student, and its variables ride in the train state
without ever being updated. The student is the teacher's architecture
without the projection head (self-distillation) or a smaller ResNet
(`config.student.model`), randomly initialised or a copy of the teacher.
Everything else (the per-device step under `shard_map`, resumable
checkpoints, top-1/top-5 on centre crops) is `jaxssl.downstream`'s.
"""

import dataclasses
import functools
import re
import time
from typing import Any

import flax.struct
import jax
from jax import lax
import jax.numpy as jnp
from jax.sharding import Mesh, PartitionSpec as P
import ml_collections
import optax

from jaxssl import downstream
from jaxssl import export
from jaxssl import losses
from jaxssl import models
from jaxssl import paths
from jaxssl import precision
from jaxssl import progress
from jaxssl import sharding
from jaxssl import train
from jaxssl import view_presets
from jaxssl import views as views_lib
from jaxssl.evaluators import linear_probe

PyTree = Any
DATA_AXIS = sharding.DATA_AXIS
INITS = ("random", "teacher")
_MODEL_SPEC = re.compile(r"^resnet(\d+)x([\d.]+)(sk)?$")


@flax.struct.dataclass
class DistillState:
  """The student's parameters, BN statistics and optimizer state, and the
  teacher's `{'params', 'batch_stats'}` (never updated)."""
  step: jax.Array
  params: PyTree
  batch_stats: PyTree
  opt_state: optax.OptState
  rng: jax.Array
  teacher: PyTree


@dataclasses.dataclass(frozen=True)
class Task:
  """The static parts of the distillation step."""
  student: downstream.Classifier
  teacher: downstream.Classifier
  tx: optax.GradientTransformation
  schedule: Any
  spec: view_presets.ViewSpec
  temperature: float = 1.0
  alpha: float = 1.0  # weight of the distillation term
  classifier_decay: float = 0.0


def student_loss(params: PyTree, batch_stats: PyTree, x: jax.Array,
                 teacher_logits: jax.Array, labels: jax.Array, *, task: Task,
                 axis_name: str = DATA_AXIS, train: bool = True) -> tuple:
  """`α·distill + (1 − α)·CE(labelled rows)` (+ the classifier's decay).

  Returns:
    `(loss, (batch_stats, metrics, student_logits))`.
  """
  variables = {"params": params, "batch_stats": batch_stats}
  if train:
    logits, new_vars = task.student.apply(variables, x, train=True,
                                          mutable=["batch_stats"])
    batch_stats = new_vars["batch_stats"]
  else:
    logits = task.student.apply(variables, x, train=False)
  distill = losses.soft_label_cross_entropy(
      logits, teacher_logits, temperature=task.temperature,
      axis_name=axis_name)
  metrics = {"distill_loss": distill}
  loss = distill
  if task.alpha < 1.0:
    ce, accuracy = linear_probe.classification_loss(logits, labels,
                                                    axis_name=axis_name)
    loss = task.alpha * distill + (1.0 - task.alpha) * ce
    metrics.update(label_loss=ce, label_top1=accuracy)
  loss = loss + downstream.classifier_decay(params, task.classifier_decay)
  return loss, (batch_stats, metrics, logits)


def distill_step(state: DistillState, batch: dict, rng: jax.Array, *,
                 task: Task, axis_name: str = DATA_AXIS) -> tuple:
  """One step on this device's rows: crop + flip, the teacher's logits in
  inference mode, the student's update."""
  x = views_lib.make_views(batch, rng, groups={"global": (task.spec,)},
                           axis_name=axis_name)["global"]
  teacher_logits = lax.stop_gradient(
      task.teacher.apply(state.teacher, x, train=False))
  labels = batch.get("label", jnp.full(x.shape[:1], -1, jnp.int32))
  (loss, (batch_stats, metrics, logits)), grads = jax.value_and_grad(
      functools.partial(student_loss, task=task, axis_name=axis_name),
      has_aux=True)(state.params, state.batch_stats, x, teacher_logits,
                    labels)
  agree = jnp.mean(precision.to_full(
      jnp.argmax(logits, -1) == jnp.argmax(teacher_logits, -1)))
  updates, opt_state = task.tx.update(grads, state.opt_state, state.params)
  new_state = state.replace(step=state.step + 1,
                            params=optax.apply_updates(state.params, updates),
                            batch_stats=batch_stats, opt_state=opt_state)
  return new_state, {"loss": loss, **metrics,
                     "agreement": lax.pmean(agree, axis_name),
                     "lr": task.schedule(state.step)}


def _step_from_state(state, batch, *, task):
  return distill_step(state, batch, jax.random.fold_in(state.rng, state.step),
                      task=task)


def compile_step(task: Task, mesh: Mesh):
  """`distill_step` over the mesh: state replicated, batch sharded."""
  return jax.jit(jax.shard_map(
      functools.partial(_step_from_state, task=task), mesh=mesh,
      in_specs=(P(), P(DATA_AXIS)), out_specs=(P(), P())), donate_argnums=0)


def student_model_config(spec: str, teacher_model: ml_collections.ConfigDict
                         ) -> ml_collections.ConfigDict:
  """The student's `model` section: the teacher's ('' or 'same'), or a
  ResNet `resnet<depth>x<width>[sk]` (e.g. 'resnet50x1', 'resnet152x3sk')
  with the teacher's other model settings (stem, BN, dtype, remat)."""
  model = ml_collections.ConfigDict(teacher_model.to_dict())
  if spec in ("", "same"):
    return model
  match = _MODEL_SPEC.match(spec)
  if not match:
    raise ValueError(f"config.student.model={spec!r} is not '', 'same' or "
                     "'resnet<depth>x<width>[sk]' (e.g. 'resnet50x1')")
  with model.unlocked():
    model.name = "resnet"
    model.depth = int(match.group(1))
    model.width = float(match.group(2))
    model.sk_ratio = 0.0625 if match.group(3) else 0.0
  return model


def create_task(config: ml_collections.ConfigDict, teacher, info: dict, *,
                spec: view_presets.ViewSpec, schedule) -> Task:
  """The student (random or the teacher's copy) and the step's constants."""
  if config.student.init not in INITS:
    raise ValueError(f"config.student.init={config.student.init!r} is not "
                     f"one of {INITS}")
  if not 0.0 <= config.alpha <= 1.0:
    raise ValueError(f"config.alpha={config.alpha} must be in [0, 1]")
  if config.temperature <= 0:
    raise ValueError(f"config.temperature={config.temperature} must be > 0")
  pretrain = info["pretrain_config"]
  if config.student.init == "teacher":
    if config.student.model not in ("", "same"):
      raise ValueError("config.student.init='teacher' copies the teacher: "
                       "config.student.model must be '' (the teacher's)")
    student = teacher
  else:
    model = student_model_config(config.student.model, pretrain.model)
    head_layers = config.student.head_layers
    projector = (models.create_head(pretrain.head, model, DATA_AXIS)
                 if head_layers else None)
    student = downstream.Classifier(models.create_encoder(model, DATA_AXIS),
                                    projector, head_layers,
                                    info["num_classes"])
  return Task(
      student=student, teacher=teacher,
      tx=downstream.optimizer(config.optimizer, schedule), schedule=schedule,
      spec=spec, temperature=config.temperature, alpha=config.alpha,
      classifier_decay=downstream.classifier_decay_rate(config.optimizer))


def create_state(task: Task, teacher_variables: dict, *, init: str,
                 seed: int, mesh: Mesh) -> DistillState:
  """The student's initial variables (seeded, or the teacher's) and the
  teacher's, replicated over `mesh`."""
  size = task.spec.size

  def make(teacher_variables):
    if init == "teacher":
      variables = teacher_variables
    else:
      variables = task.student.init(jax.random.key(seed),
                                    jnp.zeros((1, size, size, 3)))
    params = variables["params"]
    return DistillState(
        step=jnp.zeros([], jnp.int32), params=params,
        batch_stats=variables.get("batch_stats", {}),
        opt_state=task.tx.init(params),
        rng=jax.random.key(seed + 1), teacher=teacher_variables)

  # The teacher is an argument: closed over, its weights would be compiled
  # into the program as constants.
  return jax.jit(make, out_shardings=sharding.replicated(mesh))(
      teacher_variables)


def data_config(config: ml_collections.ConfigDict, info: dict
                ) -> ml_collections.ConfigDict:
  """The distillation images: `config.data`, or the pretraining run's
  (all the images it saw, '' source). With `alpha < 1` the labels of the
  fine-tuning fraction are kept (`data.labelled_fraction`), others hidden.
  `config` is not changed."""
  pretrain = info["pretrain_config"]
  data = ml_collections.ConfigDict(
      downstream.data_config(config.data, pretrain.data).to_dict())
  data.labelled_fraction = 0.0
  # The subsets are drawn as the runs that made them drew theirs: the
  # images with the pretraining seed, the labelled ones with the
  # fine-tuning seed (`in_memory.class_balanced_subset`).
  data.subset_seed = pretrain.seed
  data.labelled_seed = info["seed"]
  if config.alpha < 1.0:
    fraction = info["data"].get("train_fraction", 0.0)
    if not fraction:
      raise ValueError("config.alpha < 1 mixes in the labelled fraction "
                       "of the teacher's fine-tuning, which used all labels")
    data.labelled_fraction = fraction
  return data


def run(config: ml_collections.ConfigDict, workdir: paths.PathLike) -> dict:
  """Distils `config.teacher` into a student; writes results.json."""
  if not config.teacher:
    raise ValueError("config.teacher is required: a fine-tuning workdir "
                     f"(with {export.CLASSIFIER_FILE})")
  workdir = train.prepare_workdir(workdir)
  mesh = sharding.data_mesh()
  sharding.check_batch_size(config.batch_size, mesh)
  teacher, teacher_variables, info = export.load_classifier(
      config.teacher, axis_name=DATA_AXIS)
  spec, train_input, length, schedule = downstream.training_input(
      config, data_config(config, info), info["pretrain_config"], mesh)
  num_examples = train_input.num_examples
  task = create_task(config, teacher, info, spec=spec, schedule=schedule)
  state = create_state(task, teacher_variables, init=config.student.init,
                       seed=config.seed, mesh=mesh)
  evaluator = downstream.evaluator(
      downstream.data_config(config.data, info["pretrain_config"].data),
      mesh, spec=spec, batch_size=config.eval_batch_size)
  progress.print0(
      f"distillation of {config.teacher} into a {config.student.init} "
      f"student ({config.student.model or 'same'}) on "
      f"{train_input.description}: {num_examples} images, "
      f"{length.total_steps} steps, τ={config.temperature}, "
      f"α={config.alpha}")

  teacher_results = evaluator(teacher, teacher_variables)
  teacher_results.pop("eval_images")

  def evaluate(state):
    out = evaluator(task.student, {"params": state.params,
                                   "batch_stats": state.batch_stats},
                    reference=(teacher, teacher_variables))
    out["test_agreement"] = out.pop("agreement")
    return out

  def on_epoch_end(epoch, state):
    del epoch
    due = length.eval_due(int(jax.device_get(state.step)),
                          config.eval_every_epochs)
    return evaluate(state) if due else {}

  start = time.perf_counter()
  state, record, start_step, writer = downstream.train(
      state, compile_step(task, mesh), train_input, length=length,
      config=config, workdir=workdir, on_epoch_end=on_epoch_end)
  results = {"mode": "distill", "steps": length.total_steps,
             "start_step": start_step,
             "train_seconds": time.perf_counter() - start,
             "run_seconds": record.seconds,
             "num_examples": num_examples, "teacher": str(config.teacher),
             **{f"teacher_{k}": v for k, v in teacher_results.items()},
             **evaluate(state)}
  writer.write_scalars(length.total_steps, {f"eval/{k}": results[k]
                                            for k in ("top1", "top5")})
  writer.close()
  progress.print0(
      f"distilled student on {evaluator.name}: top-1 {results['top1']:.4f} | "
      f"top-5 {results['top5']:.4f} (teacher {results['teacher_top1']:.4f} "
      f"| {results['teacher_top5']:.4f}; same prediction on "
      f"{results['test_agreement']:.1%})")
  train.write_results(workdir, results, record)
  return results


if __name__ == "__main__":
  downstream.run_as_main(run)
