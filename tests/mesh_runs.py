"""Helpers shared by the 1-vs-8-device tests (test_train, test_methods)."""

import os

import jax
import numpy as np

from jaxssl import sharding
from jaxssl import train


def random_batches(num, batch_size, image_size, seed=0):
  """`num` uint8 image batches `[batch_size, S, S, 3]`."""
  rng = np.random.default_rng(seed)
  return [rng.integers(0, 256, (batch_size, image_size, image_size, 3),
                       dtype=np.uint8) for _ in range(num)]


def run(learner, num_devices, batches):
  """Trains on `batches` on the first `num_devices` devices.

  Returns:
    (initial state, final state, per-step metrics), all on the host.
  """
  mesh = sharding.data_mesh(jax.devices()[:num_devices])
  state = train.create_train_state(jax.random.key(0), learner, mesh)
  init = jax.device_get(state)
  step_fn = train.compile_train_step(learner, mesh)
  metrics = []
  for images in batches:
    batch = sharding.global_batch({"image": images}, mesh)
    state, m = step_fn(state, batch)
    metrics.append(jax.device_get(m))
  return init, jax.device_get(state), metrics


# Leaves whose gradient is zero in exact arithmetic (a bias followed, through
# a dense layer, by BatchNorm, e.g. BYOL's projector bias before the
# predictor) hold only float32 noise, ~1e-9; they are compared absolutely.
NOISE_FLOOR = 1e-7


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


def assert_trees_close(a, b, rtol):
  """Leafwise `|a - b| <= rtol·(|b| + max|b|)`: relative to each leaf's scale
  (with `NOISE_FLOOR` as the least absolute tolerance when rtol > 0)."""
  leaves_a = jax.tree_util.tree_leaves_with_path(a)
  leaves_b = jax.tree.leaves(b)
  assert len(leaves_a) == len(leaves_b)
  for (path, x), y in zip(leaves_a, leaves_b):
    y = np.asarray(y)
    atol = rtol * np.abs(y).max()
    if rtol > 0:
      atol = max(atol, NOISE_FLOOR)
    np.testing.assert_allclose(x, y, rtol=rtol, atol=atol,
                               err_msg=jax.tree_util.keystr(path))
