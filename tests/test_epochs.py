"""Steps ↔ epochs (`jaxssl.epochs`) and the continuous in-memory stream."""

import math

import jax
import numpy as np
import pytest

from jaxssl import epochs
from jaxssl import sharding
from jaxssl.data import in_memory


def _ends(length):
  """{step: epoch label} over the whole run."""
  return {s: length.epoch_end(s) for s in range(1, length.total_steps + 1)
          if length.epoch_end(s) is not None}


@pytest.mark.parametrize("n, b, e, rule", [
    (1437, 256, 40, "simclr"),   # the quickstart: 225 steps
    (256, 64, 5, "simclr"),      # N·E/B integral: the +1 step is no epoch
    (1000, 300, 3, "floor"),     # the floor rule stops short of epoch 3
    (50_000, 512, 0.5, "floor"),  # a fractional run
    (1281167, 4096, 100, "simclr"),
])
def test_epoch_ends_follow_the_examples_seen(n, b, e, rule):
  """Epoch k < E ends at the first step that has seen k·N examples,
  ceil(k·N/B); the last step ends epoch E; labels never exceed E."""
  length = epochs.RunLength.create(n, b, e, rule)
  total = n * e // b + (1 if rule == "simclr" else 0)
  assert length.total_steps == int(total)
  expected = {math.ceil(k * n / b): k for k in range(1, math.ceil(e))
              if k < e and math.ceil(k * n / b) < total}
  expected[length.total_steps] = e
  assert _ends(length) == expected
  assert max(_ends(length).values()) == e
  assert all(length.epoch(s) <= e for s in (1, total // 2, total, total + 5))
  assert length.epoch(1) == pytest.approx(min(b / n, e))


def test_quickstart_logs_40_epochs_not_45():
  length = epochs.RunLength.create(1437, 256, 40, "simclr")
  labels = list(_ends(length).values())
  assert labels == list(range(1, 41))
  assert length.end_step(1) == 6 and length.end_step(40) == 225


def test_eval_every_epochs_at_the_documented_steps():
  """`eval.every_epochs=2`: after epochs 2, 4, ... at ceil(k·N/B), never at
  the last step (evaluated separately)."""
  length = epochs.RunLength.create(1437, 256, 10, "simclr")
  due = [s for s in range(1, length.total_steps + 1) if length.eval_due(s, 2)]
  assert due == [math.ceil(k * 1437 / 256) for k in (2, 4, 6, 8)]
  assert not any(length.eval_due(s, 0) for s in range(1, 60))


def test_steps_rule_and_zero_steps_are_errors():
  with pytest.raises(ValueError, match="steps_rule='ceil'"):
    epochs.RunLength.create(10, 2, 1, "ceil")
  with pytest.raises(ValueError, match="is 0 steps"):
    epochs.RunLength.create(8, 64, 1, "floor")


def test_warmup_covering_the_run_is_named():
  length = epochs.RunLength.create(50_000, 512, 5, "simclr")
  message = length.warmup_warning(10.0)
  assert "warmup_epochs=10.0" in message and "config.epochs=5" in message
  assert length.warmup_warning(1.0) is None


def test_in_memory_stream_is_continuous_and_resumes_anywhere():
  """Step s takes positions [s·B, (s+1)·B) of the per-epoch permutations:
  every example once per epoch (a batch may span two epochs), and a start
  at any step yields the uninterrupted run's batches."""
  n, b = 37, 8
  images = np.arange(n, dtype=np.uint8).reshape(n, 1, 1, 1) * np.ones(
      (1, 2, 2, 3), np.uint8)
  data = in_memory.ArrayDataset(images, np.arange(n, dtype=np.int32) % 3)
  mesh = sharding.data_mesh(jax.devices()[:1])

  def labels_of(start, count):
    it = in_memory.global_batches(data, batch_size=b, mesh=mesh, seed=3,
                                  start_step=start)
    return [np.asarray(next(it)["image"])[:, 0, 0, 0] for _ in range(count)]

  whole = np.concatenate(labels_of(0, 14))  # 112 positions: 3 epochs + 1
  for epoch in range(3):
    np.testing.assert_array_equal(
        whole[epoch * n:(epoch + 1) * n],
        in_memory.epoch_permutation(n, 3, epoch))
  for start in (4, 5, 9):  # step 4 spans epochs 0 and 1
    np.testing.assert_array_equal(np.concatenate(labels_of(start, 3)),
                                  whole[start * b:(start + 3) * b])


def test_steps_until_a_float_epoch():
  """`optimizer.freeze_epochs`: ceil(e·N/B) steps (the first step whose data
  reaches epoch e is not frozen), capped at the run; -1 is the whole run."""
  length = epochs.RunLength.create(1437, 64, 40, "simclr")  # 899 steps
  assert length.total_steps == 1437 * 40 // 64 + 1
  assert length.steps_until(1) == 23  # 22.45 steps per epoch
  assert length.steps_until(0.5) == 12
  assert length.steps_until(0) == 0
  assert length.steps_until(100) == length.total_steps
  assert length.steps_until(-1) == length.total_steps
