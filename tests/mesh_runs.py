"""Helpers shared by the equivalence tests: runs on a mesh of N devices,
float64 mode, tree and metric comparisons at float64 tolerances."""

import dataclasses
import os

import jax
import jax.numpy as jnp
import numpy as np

from jaxssl import sharding
from jaxssl import train
from jaxssl.methods import base


def random_batches(num, batch_size, image_size, seed=0):
  """`num` uint8 image batches `[batch_size, S, S, 3]`."""
  rng = np.random.default_rng(seed)
  return [rng.integers(0, 256, (batch_size, image_size, image_size, 3),
                       dtype=np.uint8) for _ in range(num)]


def stem_conv_float64(views, kernel):
  """The CIFAR stem's 3×3 'SAME' convolution of `[..., B, S, S, C]` views in
  numpy float64 (no bias)."""
  views = np.asarray(views, np.float64)
  lead = views.ndim - 3
  x = np.pad(views, [(0, 0)] * lead + [(1, 1)] * 2 + [(0, 0)])
  size = views.shape[-2]
  patches = np.stack([x[..., i:i + size, j:j + size, :]
                      for i in range(3) for j in range(3)], axis=-2)
  return np.einsum("...hwkc,kcf->...hwf", patches,
                   np.asarray(kernel, np.float64).reshape(9, *kernel.shape[2:]))


def tiny_config(method, *, batch_size, image_size, epochs=1):
  """`method` with a ResNet-10/16 (CIFAR stem) on `image_size` px images,
  the 'floor' steps rule and no probe: the equivalence tests' model
  (unlocked: the test sets the rest, then `finish_config`)."""
  from jaxssl import config_utils  # pylint: disable=g-import-not-at-top
  c = config_utils.base_config()
  c.method = method
  c.batch_size = batch_size
  c.epochs = epochs
  c.steps_rule = "floor"
  c.data.image_size = image_size
  c.model.depth = 10
  c.model.width = 1 / 16
  c.model.cifar_stem = True
  c.probe.enabled = False
  return c


def crop_and_flip(groups):
  """View groups `groups` without colour jitter, grayscale, blur and
  solarisation: the device-count equivalence tests' views. What those
  tests check does not depend on the colour ops (their per-example draws
  are compared on 1 and 8 devices in test_train.py), whose compilation
  would double the step's."""
  return {g: tuple(dataclasses.replace(
      s, jitter_prob=0.0, grayscale_prob=0.0, blur_prob=0.0,
      solarize_prob=0.0) for s in specs) for g, specs in groups.items()}


def cropped_learner(learner):
  """`learner` with `crop_and_flip` views."""
  return dataclasses.replace(learner, views=crop_and_flip(learner.views))


def finish_config(c, overrides):
  """`c` with `overrides` (`{'section.key': value}`) applied, locked."""
  for key, value in overrides.items():
    section, name = key.split(".")
    c[section][name] = value
  c.lock()
  return c


def as_batch(batch, labels=None):
  """A step's host batch: `batch` itself when it is a dict (`'image'` and,
  where the method reads them, the dataset `'index'` and `'label'`: what
  every input source delivers), else `{'image': batch}` with `labels` as
  its `'label'`."""
  if isinstance(batch, dict):
    assert labels is None, "pass the labels inside the batch dict"
    return batch
  return {"image": batch} if labels is None else {"image": batch,
                                                  "label": labels}


def train_steps(learner, mesh, state, batches):
  """Trains `state` on `batches` (`as_batch`) on `mesh`: the final state
  (on the mesh), the states after 0, 1, ... steps and each step's metrics
  (on the host)."""
  step_fn = train.compile_train_step(learner, mesh)
  states, metrics = [jax.device_get(state)], []
  for batch in batches:
    state, m = step_fn(state, sharding.global_batch(as_batch(batch), mesh))
    states.append(jax.device_get(state))
    metrics.append(jax.device_get(m))
  return state, states, metrics


def run_steps(learner, num_devices, batches, labels=None):
  """Trains on `batches` on the first `num_devices` devices from the
  learner's initial state (key 0); the states after 0, 1, ... steps and
  each step's metrics, on the host. A batch is a uint8 image array or a
  dict with `'image'`, `'index'` (the dataset index: memory banks) and
  `'label'` (`as_batch`); `labels`: each array batch's class labels, or
  None."""
  mesh = sharding.data_mesh(jax.devices()[:num_devices])
  state = train.create_train_state(jax.random.key(0), learner, mesh)
  if labels is not None:
    batches = [as_batch(b, y) for b, y in zip(batches, labels, strict=True)]
  _, states, metrics = train_steps(learner, mesh, state, batches)
  return states, metrics


def context(**fields):
  """An unmapped `StepContext` (step 0, epoch 0, key 0, `axis_name` None)
  with `fields` replaced: to call a method's `loss` or state update
  directly, outside the step."""
  defaults = dict(step=jnp.zeros([], jnp.int32), epoch=jnp.zeros([]),
                  rng=jax.random.key(0))
  return base.StepContext(**{**defaults, **fields})


def step_views(state, images, learner):
  """The views a train step made of `images` from `state` (recomputed on
  one device, outside any mapped axis), and the step's method key."""
  rng = jax.random.fold_in(state.rng, state.step)
  view_rng, method_rng = jax.random.split(rng)
  views = train.make_views({"image": jnp.asarray(images)}, view_rng,
                           groups=learner.views, axis_name=None)
  return views, method_rng


def run(learner, num_devices, batches):
  """Trains on `batches` (`as_batch`) on the first `num_devices` devices.

  Returns:
    (initial state, final state, per-step metrics), all on the host.
  """
  states, metrics = run_steps(learner, num_devices, batches)
  return states[0], states[-1], metrics


def float64():
  """Context of JAX's 64-bit mode: full precision (`jaxssl.precision`) is
  float64, for states, steps and comparisons made inside it.

  The equivalence tests (1 vs 8 devices, 1 vs 2 processes, micro-batched vs
  full step) run in float64. Between device counts only the order of the
  reductions differs, which moves float64 results by ~1e-14 of their scale
  (measured: 2 ResNet-18 steps, parameters and optimizer state 2e-14,
  BatchNorm statistics 2e-15, loss and gradient norm 3e-15) on any processor,
  while float32 noise (~1e-5 after two steps) depends on the processor's
  instruction set. A real fault (an extra psum, per-device BatchNorm
  statistics, local negatives, a wrong micro-batch cotangent) moves them by
  > 1e-3: `RTOL` sits 4 orders of magnitude above the noise and 7 below the
  faults.
  """
  return jax.enable_x64(True)


RTOL = 1e-10

# Leaves whose gradient is zero in exact arithmetic (a bias followed by
# BatchNorm or standardisation, directly or through a dense layer: BYOL's
# projector bias before the predictor, Barlow Twins' and SimSiam's last
# projector bias) hold only rounding noise: ~1e-9 in float32; in float64
# ~1e-17 in the parameters and ~1e-15 in their LARS momenta (measured, with
# XLA_FLAGS=--xla_cpu_max_isa=SSE4_2). No leaf is compared more tightly than
# this, absolutely; real parameters and momenta are 1e-4 to 1.
NOISE_FLOOR = {np.float32: 1e-7, np.float64: 1e-12}


def latest_checkpoint(config, num_examples, num_classes, workdir):
  """The train state of `workdir`'s latest checkpoint, on the host (8
  devices), for the config it was trained with."""
  from jaxssl import checkpointing  # pylint: disable=g-import-not-at-top
  learner = train.create_learner(config, num_examples, num_classes)
  template = train.create_train_state(jax.random.key(0), learner,
                                      sharding.data_mesh())
  ckpt = checkpointing.Checkpointer(os.path.join(workdir, "checkpoints"),
                                    every_steps=0, asynchronous=False)
  state = jax.device_get(ckpt.restore(template))
  ckpt.close()
  return state


def train_state_shapes(learner):
  """`(shape, dtype)` of each leaf of `learner`'s train state on one device
  (nothing is computed)."""
  mesh = sharding.data_mesh(jax.devices()[:1])
  return jax.tree.map(
      lambda x: (x.shape, x.dtype),
      jax.eval_shape(lambda: train.create_train_state(
          jax.random.key(0), learner, mesh)))


def assert_trees_close(a, b, rtol):
  """Leafwise `|a - b| <= rtol·(|b| + max|b|)`: relative to each leaf's scale
  (with the leaf dtype's `NOISE_FLOOR` as the least absolute tolerance when
  rtol > 0). Leaves must have the same dtype."""
  leaves_a = jax.tree_util.tree_leaves_with_path(a)
  leaves_b = jax.tree.leaves(b)
  assert len(leaves_a) == len(leaves_b)
  for (path, x), y in zip(leaves_a, leaves_b):
    x, y = np.asarray(x), np.asarray(y)
    assert x.dtype == y.dtype, (jax.tree_util.keystr(path), x.dtype, y.dtype)
    atol = rtol * np.abs(y).max() if y.size else 0.0
    if rtol > 0 and y.dtype.type in NOISE_FLOOR:
      atol = max(atol, NOISE_FLOOR[y.dtype.type])
    np.testing.assert_allclose(x, y, rtol=rtol, atol=atol,
                               err_msg=jax.tree_util.keystr(path))


def assert_metrics_close(metrics_a, metrics_b, keys, rtol=RTOL):
  """Per-step scalar metrics `keys` agree to `rtol` (float64 runs)."""
  assert len(metrics_a) == len(metrics_b)
  for step, (a, b) in enumerate(zip(metrics_a, metrics_b)):
    for key in keys:
      assert np.asarray(a[key]).dtype == np.float64, (key, a[key])
      np.testing.assert_allclose(a[key], b[key], rtol=rtol,
                                 err_msg=f"step {step}: {key}")
