"""SimCLR v2 distillation: the loss, the frozen teacher, 1 vs 8 devices."""

import dataclasses
import subprocess
import sys

import jax
import jax.numpy as jnp
from jax.sharding import PartitionSpec as P
import numpy as np
import pytest

import config_files
import mesh_runs
import subprocess_env
from jaxssl import distill
from jaxssl import downstream
from jaxssl import losses
from jaxssl import schedules
from jaxssl import sharding
from jaxssl import view_presets
from jaxssl.data import in_memory
from jaxssl.models import heads
from jaxssl.models import resnet

NUM_CLASSES = 5
SIZE = 16
SPEC = view_presets.ViewSpec(size=SIZE, crop_area=(0.08, 1.0), flip_prob=0.5,
                             jitter_prob=0.0, grayscale_prob=0.0,
                             blur_prob=0.0, solarize_prob=0.0)


def _softmax(x):
  e = np.exp(x - x.max(-1, keepdims=True))
  return e / e.sum(-1, keepdims=True)


@pytest.mark.parametrize("temperature", [0.5, 1.0, 3.0])
def test_soft_label_cross_entropy_matches_float64_formula(temperature):
  rng = np.random.default_rng(0)
  s, t = rng.normal(0, 2, (2, 16, 7))
  w = rng.integers(0, 2, 16).astype(np.float64)
  w[0] = 1.0
  p_t, p_s = _softmax(t / temperature), _softmax(s / temperature)
  rows = -np.sum(p_t * np.log(p_s), axis=-1)
  with mesh_runs.float64():
    loss = losses.soft_label_cross_entropy(s, t, temperature=temperature)
    np.testing.assert_allclose(loss, rows.mean(), rtol=1e-13)
    weighted = losses.soft_label_cross_entropy(s, t, temperature=temperature,
                                               weights=w)
    np.testing.assert_allclose(weighted, np.sum(rows * w) / w.sum(),
                               rtol=1e-13)
    grad_s, grad_t = jax.grad(
        lambda a, b: losses.soft_label_cross_entropy(
            a, b, temperature=temperature), argnums=(0, 1))(s, t)
    # d/ds = (P_S − P_T)/(τ·n); the teacher's side has no gradient.
    np.testing.assert_allclose(grad_s, (p_s - p_t) / (temperature * 16),
                               atol=1e-15)
    assert not np.any(np.asarray(grad_t))
    # On 4 devices, the mean over the global batch.
    mesh = sharding.data_mesh(jax.devices()[:4])
    sharded = jax.jit(jax.shard_map(
        lambda a, b: losses.soft_label_cross_entropy(
            a, b, temperature=temperature, axis_name=sharding.DATA_AXIS),
        mesh=mesh, in_specs=(P(sharding.DATA_AXIS), P(sharding.DATA_AXIS)),
        out_specs=P()))(s, t)
    np.testing.assert_allclose(sharded, rows.mean(), rtol=1e-13)


def _classifier(head_layers):
  encoder = resnet.ResNet(depth=10, width_multiplier=1 / 16, cifar_stem=True,
                          axis_name=sharding.DATA_AXIS)
  projector = heads.ProjectionHead(num_layers=3, out_dim=8,
                                   axis_name=sharding.DATA_AXIS)
  return downstream.Classifier(encoder, projector if head_layers else None,
                               head_layers, NUM_CLASSES)


def _task(student, teacher, *, alpha, temperature=1.0):
  _, config = config_files.load("distill", "runlocal")
  schedule = schedules.warmup_cosine(
      0.3, batch_size=32, num_examples=64, epochs=1, warmup_epochs=0.0,
      scaling="linear", total_steps=2)
  return distill.Task(student=student, teacher=teacher,
                      tx=downstream.optimizer(config.optimizer, schedule),
                      schedule=schedule, spec=SPEC, temperature=temperature,
                      alpha=alpha, classifier_decay=1e-4)


def _teacher_variables(teacher):
  """Initialised weights with a random (not zero) classifier and BN
  statistics that are not the identity."""
  variables = teacher.init(jax.random.key(1), jnp.zeros((1, SIZE, SIZE, 3)))
  rng = np.random.default_rng(2)
  def perturb(path, x):
    name = jax.tree_util.keystr(path)
    if "classifier" in name and "kernel" in name:
      return jnp.asarray(rng.normal(0, 0.3, x.shape), x.dtype)
    if "mean" in name:
      return x + 0.1
    if "var" in name:
      return x * 1.5
    return x
  return jax.tree_util.tree_map_with_path(perturb, dict(variables))


def _batches(num, batch_size, seed=0):
  rng = np.random.default_rng(seed)
  images = mesh_runs.random_batches(num, batch_size, SIZE, seed=seed)
  labels = [rng.integers(-1, NUM_CLASSES, batch_size).astype(np.int32)
            for _ in range(num)]
  return [{"image": i, "label": l} for i, l in zip(images, labels)]


def _run(task, teacher_vars, num_devices, batches, init="random"):
  mesh = sharding.data_mesh(jax.devices()[:num_devices])
  state = distill.create_state(task, teacher_vars, init=init, seed=0,
                               mesh=mesh)
  initial = jax.device_get(state)
  step = distill.compile_step(task, mesh)
  metrics = []
  for batch in batches:
    state, m = step(state, sharding.global_batch(batch, mesh))
    metrics.append(jax.device_get(m))
  return initial, jax.device_get(state), metrics


def test_one_vs_eight_devices_and_a_frozen_teacher():
  """2 steps of α = 0.5 (distillation + CE of the labelled rows, label −1
  elsewhere) on 1 and 8 devices: the same loss, student parameters, BN
  statistics and LARS state (float64); the teacher's variables are
  bit-identical to the start on both."""
  with mesh_runs.float64():
    teacher = _classifier(head_layers=1)
    task = _task(_classifier(head_layers=0), teacher, alpha=0.5)
    teacher_vars = _teacher_variables(teacher)
    batches = _batches(2, 32)
    init1, one, m1 = _run(task, teacher_vars, 1, batches)
    init8, eight, m8 = _run(task, teacher_vars, 8, batches)
  mesh_runs.assert_metrics_close(
      m1, m8, ["loss", "distill_loss", "label_loss", "agreement"])
  for got, want in ((eight.params, one.params),
                    (eight.batch_stats, one.batch_stats),
                    (eight.opt_state, one.opt_state)):
    mesh_runs.assert_trees_close(got, want, mesh_runs.RTOL)
  for state, initial in ((one, init1), (eight, init8)):
    for a, b in zip(jax.tree.leaves(state.teacher),
                    jax.tree.leaves(initial.teacher)):
      np.testing.assert_array_equal(a, b)
  moved = [np.abs(a - b).max() for a, b in zip(
      jax.tree.leaves(one.params), jax.tree.leaves(init1.params))]
  assert max(moved) > 1e-3
  assert 0 < m1[0]["label_loss"] and m1[0]["distill_loss"] > 0


def test_teacher_receives_no_gradient():
  """The step's loss does not depend differentiably on the teacher's
  variables (they enter through `stop_gradient`)."""
  with mesh_runs.float64():
    teacher = _classifier(head_layers=1)
    task = _task(_classifier(head_layers=0), teacher, alpha=1.0)
    mesh = sharding.data_mesh(jax.devices()[:2])
    state = distill.create_state(task, _teacher_variables(teacher),
                                 init="random", seed=0, mesh=mesh)
    batch = sharding.global_batch(_batches(1, 8)[0], mesh)

    def loss_of_teacher(teacher_vars, state, batch):
      _, metrics = distill.distill_step(state.replace(teacher=teacher_vars),
                                        batch, jax.random.key(3), task=task)
      return metrics["loss"]

    grads = jax.jit(jax.shard_map(
        jax.grad(loss_of_teacher), mesh=mesh,
        in_specs=(P(), P(), P(sharding.DATA_AXIS)), out_specs=P()))(
            state.teacher, state, batch)
    assert all(not np.any(np.asarray(g)) for g in jax.tree.leaves(grads))


def test_a_student_started_from_the_teacher_leaves_the_teacher_alone():
  """`init='teacher'`: the student's variables start as copies of the
  teacher's (separate buffers: the donated state's student updates never
  reach the teacher), train, and the teacher stays bit-identical."""
  teacher = _classifier(head_layers=1)
  task = _task(teacher, teacher, alpha=1.0)
  variables = _teacher_variables(teacher)
  initial, state, metrics = _run(task, variables, 2, _batches(2, 8),
                                 init="teacher")
  for a, b in zip(jax.tree.leaves(initial.params),
                  jax.tree.leaves(variables["params"])):
    np.testing.assert_array_equal(a, b)
  for a, b in zip(jax.tree.leaves(state.teacher), jax.tree.leaves(variables)):
    np.testing.assert_array_equal(a, b)
  moved = max(float(np.abs(a - b).max()) for a, b in zip(
      jax.tree.leaves(state.params), jax.tree.leaves(variables["params"])))
  assert moved > 1e-4 and np.isfinite(metrics[-1]["loss"])


def test_student_equal_to_teacher_has_zero_distillation_gradient():
  """τ = 1, the student initialised as the teacher and applied like it
  (inference-mode BatchNorm) on the teacher's own outputs: the gradient of
  the distillation term is zero (float64 rounding); a perturbed student's
  is not."""
  with mesh_runs.float64():
    teacher = _classifier(head_layers=1)
    task = _task(teacher, teacher, alpha=1.0)
    variables = _teacher_variables(teacher)
    x = jnp.asarray(np.random.default_rng(4).uniform(0, 1, (8, SIZE, SIZE, 3)))
    teacher_logits = teacher.apply(variables, x, train=False)
    probs = np.asarray(jax.nn.softmax(teacher_logits))
    assert 0.02 < probs.min() and probs.max() < 0.98  # soft, not one-hot
    labels = jnp.full((8,), -1, jnp.int32)
    grad_fn = jax.jit(jax.grad(
        lambda p: distill.student_loss(
            p, variables["batch_stats"], x, teacher_logits, labels,
            task=dataclasses.replace(task, classifier_decay=0.0),
            axis_name=None, train=False)[0]))
    grads = grad_fn(variables["params"])
    largest = max(float(np.abs(g).max()) for g in jax.tree.leaves(grads))
    assert largest < 1e-13, largest
    noise = np.random.default_rng(5)
    perturbed = jax.tree.map(
        lambda p: p + 0.05 * noise.normal(0, 1, p.shape), variables["params"])
    largest = max(float(np.abs(g).max())
                  for g in jax.tree.leaves(grad_fn(perturbed)))
    assert largest > 1e-4, largest


def test_student_model_specs():
  _, config = config_files.load("simclr_cifar10", "runlocal")
  model = config.model
  assert distill.student_model_config("", model).depth == model.depth
  r50 = distill.student_model_config("resnet50x1", model)
  assert (r50.depth, r50.width, r50.sk_ratio) == (50, 1.0, 0.0)
  big = distill.student_model_config("resnet152x3sk", model)
  assert (big.depth, big.width, big.sk_ratio) == (152, 3.0, 0.0625)
  with pytest.raises(ValueError, match="config.student.model='vit'"):
    distill.student_model_config("vit", model)


def test_partially_labelled_keeps_the_labelled_fraction_inside_the_images():
  data = in_memory.synthetic(400, 8)
  part = in_memory.partially_labelled(data, 0.5, 0.1, seed=0)
  labelled = in_memory.class_balanced_subset(data.labels, 0.1, seed=0)
  kept = in_memory.class_balanced_subset(data.labels, 0.5, seed=0)
  assert len(part) == len(kept) and set(labelled) <= set(kept)
  np.testing.assert_array_equal(part.images, data.images[kept])
  visible = part.labels >= 0
  assert visible.sum() == len(labelled)
  np.testing.assert_array_equal(part.labels[visible],
                                data.labels[np.intersect1d(kept, labelled)])
  # The labelled subset drawn with its own seed (the fine-tuning run's).
  other = in_memory.partially_labelled(data, 0.5, 0.1, seed=0,
                                       labelled_seed=7)
  np.testing.assert_array_equal(other.images, part.images)
  seven = in_memory.class_balanced_subset(data.labels, 0.1, seed=7)
  assert set(kept[other.labels >= 0]) == set(seven) & set(kept)
  assert set(kept[other.labels >= 0]) != set(kept[visible])
  everything = in_memory.partially_labelled(data, 0.0, 0.1, seed=0)
  assert len(everything) == 400 and (everything.labels >= 0).sum() == len(
      labelled)


def test_data_config_draws_subsets_as_the_runs_that_made_them():
  """The distillation images: the pretraining run's data section ('' source)
  and its seed; the labelled fraction (α < 1) the fine-tuning run's, with
  the fine-tuning seed; `config` itself is left as it was."""
  _, config = config_files.load("distill", "runlocal")
  _, pretrain = config_files.load("simclr_cifar10", "runlocal")
  with pretrain.unlocked():
    pretrain.seed = 3
  info = {"pretrain_config": pretrain, "seed": 7,
          "data": {"train_fraction": 0.1}}
  with config.unlocked():
    config.alpha = 0.5
  before = config.to_dict()
  data = distill.data_config(config, info)
  assert config.to_dict() == before
  assert (data.source, data.subset_seed, data.labelled_seed,
          data.labelled_fraction) == (pretrain.data.source, 3, 7, 0.1)
  with config.unlocked():
    config.alpha = 1.0
  assert distill.data_config(config, info).labelled_fraction == 0.0
  info["data"] = {"train_fraction": 0.0}
  with config.unlocked():
    config.alpha = 0.5
  with pytest.raises(ValueError, match="used all labels"):
    distill.data_config(config, info)


def test_command_line_names_a_missing_teacher(tmp_path):
  out = subprocess.run(
      [sys.executable, "-m", "jaxssl.distill",
       "--config=configs/distill.py:runlocal",
       f"--config.teacher={tmp_path}/no_teacher",
       f"--workdir={tmp_path}/distill"], capture_output=True, text=True,
      env=subprocess_env.cpu_env(1), timeout=300,
      cwd=str(tmp_path))
  assert out.returncode != 0
  assert "no_teacher/classifier.msgpack does not exist" in out.stderr
  assert "fine-tuning workdir" in out.stderr
