"""SwAV on the shared train step: 1 vs 8 devices (with the queue), the
prototypes' normalisation and freezing, the queue's life cycle.

The runs are float64 (`mesh_runs.float64`): 1 and 8 devices agree to
~1e-14, `mesh_runs.RTOL` (1e-10) holds on any processor.
"""

import numpy as np
import pytest

import mesh_runs
from jaxssl import config_utils
from jaxssl import train

GLOBAL_BATCH = 16
IMAGE_SIZE = 16
NUM_EXAMPLES = 64  # 4 steps per epoch
STEPS = 8
QUEUE = 32  # 2 global batches: pushed at steps 4 and 5, in the loss from 6


def _config(**overrides):
  c = mesh_runs.tiny_config("swav", batch_size=GLOBAL_BATCH,
                            image_size=IMAGE_SIZE, epochs=3)
  c.augment.preset = "multicrop"
  c.augment.local_crops = 2
  c.augment.local_size = 8
  config_utils.set_head(c.head, num_layers=2, hidden_dim=16, out_dim=8,
                        last_bn="none")
  c.loss.temperature = 0.1
  c.loss.num_prototypes = 12
  c.loss.queue_size = QUEUE
  c.loss.queue_start_epoch = 1
  c.optimizer.name = "lars"
  c.optimizer.decay_mask = "all"
  c.optimizer.lr_in_momentum = False
  c.optimizer.base_lr = 0.5
  c.optimizer.warmup_epochs = 0.0
  c.optimizer.final_lr = 1e-3
  c.optimizer.freeze_pattern = "^predictor/"
  c.optimizer.freeze_epochs = 1.0
  return mesh_runs.finish_config(c, overrides)


def _batches():
  return mesh_runs.random_batches(STEPS, GLOBAL_BATCH, IMAGE_SIZE, seed=13)


@pytest.fixture(scope="module")
def swav_runs():
  with mesh_runs.float64():
    learner = mesh_runs.cropped_learner(
        train.create_learner(_config(), NUM_EXAMPLES))
    return {n: mesh_runs.run_steps(learner, n, _batches()) for n in (1, 8)}


def _rows_sorted(queue):
  """The queue of each assigned crop as a multiset of rows (each device
  keeps its own rows; the union is what the loss sees)."""
  queue = np.asarray(queue)
  return [q[np.lexsort(q.T)] for q in queue]


def test_swav_matches_on_1_and_8_devices(swav_runs):
  """Loss (before and after the queue enters it), parameters, optimizer
  state, BN statistics and the queue's rows over 8 steps."""
  (states1, m1), (states8, m8) = swav_runs[1], swav_runs[8]
  mesh_runs.assert_metrics_close(
      m1, m8, ("loss", "grad_norm", "prototype_usage", "queue_used"))
  for part in ("params", "opt_state", "batch_stats"):
    mesh_runs.assert_trees_close(getattr(states1[-1], part),
                                 getattr(states8[-1], part),
                                 rtol=mesh_runs.RTOL)
  for a, b in zip(_rows_sorted(states1[-1].method_state["queue"]),
                  _rows_sorted(states8[-1].method_state["queue"])):
    np.testing.assert_allclose(a, b, rtol=1e-10, atol=1e-13)


def test_queue_fills_from_its_epoch_and_enters_the_loss_when_full(swav_runs):
  states, metrics = swav_runs[8]
  queues = [np.asarray(s.method_state["queue"]) for s in states]
  for t in range(5):  # epoch 0: nothing pushed (states after steps 0..3)
    np.testing.assert_array_equal(queues[t], 0.0)
  # Each step from epoch 1 pushes unit-norm embeddings; each device's last
  # row is filled after 2 pushes (steps 4, 5).
  assert np.all(np.abs(queues[5]).sum(-1).reshape(2, 8, -1)[:, :, 0] > 0)
  np.testing.assert_allclose(np.linalg.norm(queues[6], axis=-1), 1.0,
                             rtol=1e-12)
  assert [m["queue_used"] for m in metrics] == [0.0] * 6 + [1.0] * 2


def test_prototypes_are_unit_norm_and_frozen_for_the_first_epoch(swav_runs):
  """Unit-norm columns at init and after every step; through the first
  epoch (4 steps) only the normalisation's rounding touches them, after it
  they move."""
  states, _ = swav_runs[8]
  kernels = [np.asarray(s.params["predictor"]["kernel"]) for s in states]
  for k in kernels:
    np.testing.assert_allclose(np.linalg.norm(k, axis=0), 1.0, rtol=1e-14)
  for t in range(1, 5):
    np.testing.assert_allclose(kernels[t], kernels[0], rtol=0, atol=1e-15)
  assert np.abs(kernels[6] - kernels[0]).max() > 1e-5  # LARS: ~lr·η·|p|
  # The rest of the network trains from the first step.
  conv = [s.params["encoder"]["stem_conv"]["kernel"] for s in states]
  assert np.abs(conv[1] - conv[0]).max() > 1e-6


def test_swav_without_local_crops_is_the_2x224_variant():
  """`augment.local_crops=0`: SwAV on the two global crops alone (the
  reference's 2 × 224 script), each predicting the other's codes."""
  learner = train.create_learner(_config(**{"augment.local_crops": 0,
                                            "augment.local_size": 0}),
                                 NUM_EXAMPLES)
  assert dict(learner.method.views) == {"global": 2}
