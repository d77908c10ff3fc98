r"""Linear evaluation and semi-supervised fine-tuning of a pretrained encoder.

  python -m jaxssl.linear_eval --config=configs/linear_eval.py \
      --config.checkpoint=/tmp/simclr_cifar10 --workdir=/tmp/simclr_linear

Linear evaluation (`mode='linear'`) trains a linear classifier on the frozen
encoder: BatchNorm uses the pretrained running statistics and nothing but the
classifier changes. Fine-tuning (`mode='finetune'`, SimCLR v2) trains the
encoder, the first `head_layers` layers of the projection head and a new
classifier on a (class-balanced) fraction of the labels. Both train on random
crops and flips of the training split and report top-1/top-5 on centre crops
of the evaluation split. The train step is the same per-device function with
named-axis collectives as pretraining, and `loop.train_loop` runs it.
"""

import dataclasses
import functools
import inspect
import time
from typing import Any

import flax.struct
import jax
import jax.numpy as jnp
from jax.sharding import Mesh, PartitionSpec as P
import ml_collections
import optax

from jaxssl import downstream
from jaxssl import view_presets
from jaxssl import export
from jaxssl import paths
from jaxssl import progress
from jaxssl import sharding
from jaxssl import train
from jaxssl import views as views_lib
from jaxssl.evaluators import classification
from jaxssl.evaluators import linear_probe
from jaxssl.models import vit

PyTree = Any
DATA_AXIS = sharding.DATA_AXIS
MODES = ("linear", "finetune")


Classifier = downstream.Classifier


@flax.struct.dataclass
class ClassifierState:
  """Trained parameters, BN statistics, optimizer state, and the frozen
  pretrained parameters (linear mode)."""
  step: jax.Array
  params: PyTree
  batch_stats: PyTree
  opt_state: optax.OptState
  rng: jax.Array
  frozen: PyTree


@dataclasses.dataclass(frozen=True)
class Task:
  """The static parts of the downstream step."""
  model: Classifier
  tx: optax.GradientTransformation
  schedule: Any
  spec: view_presets.ViewSpec
  finetune: bool
  classifier_decay: float = 0.0  # `downstream.classifier_decay_rate`


def classifier_step(state: ClassifierState, batch: dict, rng: jax.Array, *,
                    task: Task, axis_name: str = DATA_AXIS) -> tuple:
  """One step on this device's rows: crop + flip, cross-entropy, update."""
  x = views_lib.make_views(batch, rng, groups={"global": (task.spec,)},
                          axis_name=axis_name)["global"]

  def loss_fn(params):
    if task.finetune:
      logits, new_vars = task.model.apply(
          {"params": params, "batch_stats": state.batch_stats}, x,
          train=True, mutable=["batch_stats"])
      batch_stats = new_vars["batch_stats"]
    else:  # frozen encoder, pretrained BN statistics
      logits = task.model.apply(
          {"params": {**state.frozen, **params},
           "batch_stats": state.batch_stats}, x, train=False)
      batch_stats = state.batch_stats
    loss, accuracy = linear_probe.classification_loss(
        logits, batch["label"], axis_name=axis_name)
    loss = loss + downstream.classifier_decay(params, task.classifier_decay)
    return loss, (batch_stats, accuracy)

  (loss, (batch_stats, accuracy)), grads = jax.value_and_grad(
      loss_fn, has_aux=True)(state.params)
  updates, opt_state = task.tx.update(grads, state.opt_state, state.params)
  new_state = state.replace(step=state.step + 1,
                            params=optax.apply_updates(state.params, updates),
                            batch_stats=batch_stats, opt_state=opt_state)
  return new_state, {"loss": loss, "train_top1": accuracy,
                     "lr": task.schedule(state.step)}


def _step_from_state(state, batch, *, task):
  return classifier_step(state, batch,
                         jax.random.fold_in(state.rng, state.step), task=task)


def compile_step(task: Task, mesh: Mesh):
  return jax.jit(jax.shard_map(
      functools.partial(_step_from_state, task=task), mesh=mesh,
      in_specs=(P(), P(DATA_AXIS)), out_specs=(P(), P())), donate_argnums=0)


def create_state(task: Task, pretrained: dict, seed: int,
                 mesh: Mesh) -> ClassifierState:
  """Pretrained encoder/head variables plus a zero-initialised classifier."""
  size = task.spec.size

  def init(pretrained):
    variables = task.model.init(jax.random.key(0),
                                jnp.zeros((1, size, size, 3)))
    # The pretrained variables the classifier uses (a head cut after
    # `head_layers` layers drops the rest), and its new linear layer.
    params = _like({**pretrained["params"],
                    "classifier": variables["params"]["classifier"]},
                   variables["params"])
    batch_stats = _like(pretrained["batch_stats"],
                        variables.get("batch_stats", {}))
    if task.finetune:
      trained, frozen = params, {}
    else:
      trained = {"classifier": params.pop("classifier")}
      frozen = params
    return ClassifierState(step=jnp.zeros([], jnp.int32), params=trained,
                           batch_stats=batch_stats,
                           opt_state=task.tx.init(trained),
                           rng=jax.random.key(seed), frozen=frozen)

  # The weights are an argument: closed over, they would be compiled into
  # the program as constants.
  return jax.jit(init, out_shardings=sharding.replicated(mesh))(pretrained)


def _like(tree: dict, template: dict) -> dict:
  """The entries of nested dict `tree` that `template` has."""
  return {k: _like(tree[k], v) if isinstance(v, dict) else tree[k]
          for k, v in template.items()}


def evaluate(task: Task, state: ClassifierState,
             evaluator: classification.ClassificationEvaluator) -> dict:
  """Top-1/top-5 on centre crops (eval-mode BatchNorm)."""
  return evaluator(task.model, {"params": {**state.frozen, **state.params},
                                "batch_stats": state.batch_stats})


def check_head_layers(projector, head_layers: int, method: str) -> None:
  """Fine-tuning from projection-head layer `head_layers` needs a head that
  can stop after a layer (`ProjectionHead(..., layers=L)`)."""
  if head_layers and "layers" not in inspect.signature(
      type(projector).__call__).parameters:
    raise ValueError(
        f"config.head_layers={head_layers}: the {method} projection head "
        f"({type(projector).__name__}) cannot be cut after a layer; "
        "fine-tune from the encoder (head_layers=0)")


REPRESENTATIONS = ("encoder", "dino")


def linear_encoder(encoder: Any, config: ml_collections.ConfigDict,
                   pretrain_config: ml_collections.ConfigDict) -> Any:
  """The encoder whose features the classifier reads: its own output
  (`config.representation='encoder'`), or with 'dino' a ViT's features of
  DINO's `eval_linear.py` (`vit.dino_linear_representation`: ViT-S the
  class tokens of its last 4 blocks; ResNets: their output)."""
  kind = config.get("representation", "encoder")
  if kind not in REPRESENTATIONS:
    raise ValueError(f"config.representation={kind!r} is not one of "
                     f"{list(REPRESENTATIONS)}")
  if kind == "dino" and pretrain_config.model.name == "vit":
    return encoder.clone(representation=vit.dino_linear_representation(
        pretrain_config.model.variant))
  return encoder


def run(config: ml_collections.ConfigDict, workdir: paths.PathLike) -> dict:
  """Linear evaluation or fine-tuning as `config` says; writes results.json."""
  if config.mode not in MODES:
    raise ValueError(f"config.mode={config.mode!r} is not one of {MODES}")
  if not config.checkpoint:
    raise ValueError("config.checkpoint is required: a pretraining workdir "
                     f"(with {export.ENCODER_FILE}) or the file itself")
  workdir = train.prepare_workdir(workdir)
  mesh = sharding.data_mesh()
  sharding.check_batch_size(config.batch_size, mesh)
  finetune = config.mode == "finetune"
  network, pretrained, pretrain_config = export.load_encoder(
      config.checkpoint, axis_name=DATA_AXIS)
  if finetune:
    check_head_layers(network.projector, config.head_layers,
                      pretrain_config.method)
  data = downstream.data_config(config.data, pretrain_config.data,
                                train_fraction=config.data.train_fraction)
  spec, train_input, length, schedule = downstream.training_input(
      config, data, pretrain_config, mesh)
  if train_input.num_classes <= 0:
    raise ValueError(f"{train_input.description} has no labels")
  num_examples = train_input.num_examples
  steps = length.total_steps
  task = Task(
      model=Classifier(linear_encoder(network.encoder, config,
                                      pretrain_config),
                       network.projector,
                       config.head_layers if finetune else 0,
                       train_input.num_classes,
                       config.get("classifier_init", "zeros")),
      tx=downstream.optimizer(config.optimizer, schedule), schedule=schedule,
      spec=spec, finetune=finetune,
      classifier_decay=downstream.classifier_decay_rate(config.optimizer))
  state = create_state(task, pretrained, config.seed, mesh)
  evaluator = downstream.evaluator(data, mesh, spec=spec,
                                   batch_size=config.eval_batch_size)
  print_fn = progress.print0
  print_fn(f"{config.mode} of {config.checkpoint} on "
           f"{train_input.description}: {num_examples} examples, "
           f"{steps} steps")

  def on_epoch_end(epoch, state):
    del epoch
    if not length.eval_due(int(jax.device_get(state.step)),
                           config.eval_every_epochs):
      return {}
    return evaluate(task, state, evaluator)

  start = time.perf_counter()
  state, record, start_step, writer = downstream.train(
      state, compile_step(task, mesh), train_input, length=length,
      config=config, workdir=workdir, on_epoch_end=on_epoch_end)
  results = {"mode": config.mode, "steps": steps, "start_step": start_step,
             "train_seconds": time.perf_counter() - start,
             "run_seconds": record.seconds,
             "num_examples": num_examples,
             **evaluate(task, state, evaluator)}
  writer.write_scalars(steps, {f"eval/{k}": results[k]
                               for k in ("top1", "top5")})
  writer.close()
  print_fn(f"{config.mode} on {evaluator.name}: top-1 {results['top1']:.4f} | "
           f"top-5 {results['top5']:.4f}")
  if finetune:  # the teacher of `jaxssl.distill`
    export.save_classifier(workdir, task.model, jax.device_get(
        {"params": state.params, "batch_stats": state.batch_stats}), {
            "pretrained": str(config.checkpoint),
            "pretrain_config": pretrain_config.to_dict(),
            "head_layers": config.head_layers,
            "num_classes": train_input.num_classes,
            "data": data.to_dict(), "seed": config.seed})
  train.write_results(workdir, results, record)
  return results


if __name__ == "__main__":
  downstream.run_as_main(run)
