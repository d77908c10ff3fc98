"""Online/offline linear probe, collapse monitors, metric writers."""

import functools
import json

import jax
import jax.numpy as jnp
from jax.sharding import PartitionSpec as P
import numpy as np
import optax
import pytest

import mesh_runs
from jaxssl import metric_writers
from jaxssl import sharding
from jaxssl.evaluators import linear_probe
from jaxssl.evaluators import monitors


def _separable(seed, n=512, d=10, num_classes=4):
  """Classes separated by a margin along random directions, features with
  very different scales and offsets (as unnormalised encoder features)."""
  rng = np.random.default_rng(seed)
  w = rng.normal(size=(d, num_classes))
  x = rng.normal(size=(n * 4, d))
  scores = x @ w
  top2 = np.sort(scores, axis=1)[:, -2:]
  keep = (top2[:, 1] - top2[:, 0]) > 0.5  # a margin: linearly separable
  x, labels = x[keep][:n], np.argmax(scores[keep], 1)[:n]
  scale = rng.uniform(0.01, 100.0, d)
  return (x * scale + rng.normal(size=d) * 10).astype(np.float32), labels


def test_linear_probe_fits_a_linearly_separable_set():
  x, labels = _separable(0)
  params = linear_probe.fit(x[:400], labels[:400], num_classes=4, epochs=60,
                            batch_size=64, learning_rate=1e-2)
  train = linear_probe.accuracy(params, x[:400], labels[:400], num_classes=4)
  test = linear_probe.accuracy(params, x[400:], labels[400:], num_classes=4)
  assert train["top1"] >= 0.99, train
  assert test["top1"] >= 0.95, test
  assert train["top5"] == 1.0  # 4 classes: always in the top 4


def test_probe_accuracy_top1_top5_known_values():
  """Logits = features (identity kernel): top-1/top-5 by hand."""
  params = {"head": {"kernel": jnp.eye(6), "bias": jnp.zeros(6)}}
  features = np.array([[0, 1, 2, 3, 4, 5],      # order 5 4 3 2 1 0
                       [5, 4, 3, 2, 1, 0]], np.float32)
  got = linear_probe.accuracy(params, features, np.array([5, 0]),
                              num_classes=6)
  assert got == {"top1": 1.0, "top5": 1.0}
  got = linear_probe.accuracy(params, features, np.array([0, 5]),
                              num_classes=6)
  assert got == {"top1": 0.0, "top5": 0.0}  # the worst class of each row
  got = linear_probe.accuracy(params, features, np.array([1, 1]),
                              num_classes=6)
  assert got == {"top1": 0.0, "top5": 1.0}


@mesh_runs.float64()
def test_online_probe_update_is_global_and_skips_unlabelled_rows():
  """One SGD step of the probe on 8 devices equals one device on the
  concatenated batch (the cross-entropy is a mean over the GLOBAL labelled
  rows), rows labelled −1 do not count, and the loss at zero init is log C
  (float64)."""
  rng = np.random.default_rng(1)
  features = rng.normal(size=(16, 5))
  labels = rng.integers(0, 3, 16).astype(np.int32)
  labels[[2, 9, 10]] = -1
  tx = optax.sgd(0.5)
  state = linear_probe.create(3, 5, tx)
  update = functools.partial(linear_probe.update, tx=tx, num_classes=3)
  one, loss1, acc1 = jax.jit(update)(state, features, labels)
  mesh = sharding.data_mesh()
  eight, loss8, acc8 = jax.jit(jax.shard_map(
      functools.partial(update, axis_name="data"), mesh=mesh,
      in_specs=(P(), P("data"), P("data")), out_specs=(P(), P(), P())))(
          state, features, labels)
  assert loss1.dtype == np.float64
  np.testing.assert_allclose(float(loss1), np.log(3), rtol=1e-14)
  np.testing.assert_allclose(float(loss8), float(loss1), rtol=mesh_runs.RTOL)
  np.testing.assert_allclose(float(acc8), float(acc1), rtol=mesh_runs.RTOL)
  mesh_runs.assert_trees_close(eight.params, one.params, rtol=mesh_runs.RTOL)
  # Zero init: softmax uniform; gradient of the mean CE over the 13 valid
  # rows w.r.t. the bias is mean(1/3 − onehot).
  valid = labels >= 0
  onehot = np.eye(3)[labels[valid]]
  want_bias = -0.5 * np.mean(1 / 3 - onehot, axis=0)
  np.testing.assert_allclose(np.asarray(one.params["head"]["bias"]),
                             want_bias, rtol=1e-13)


def test_effective_rank_and_std_known_values():
  rng = np.random.default_rng(2)
  q, _ = np.linalg.qr(rng.normal(size=(64, 8)))
  # Orthogonal columns with equal norms: all 8 singular values equal.
  assert monitors.effective_rank(q * 3.0) == pytest.approx(8.0, rel=1e-5)
  # Rank one (complete collapse onto a line): erank 1, and std 0 when every
  # row is the same point.
  line = np.outer(rng.normal(size=64), rng.normal(size=8))
  assert monitors.effective_rank(line) == pytest.approx(1.0, rel=1e-4)
  same = np.tile(rng.normal(size=8), (64, 1))
  assert monitors.embedding_std(same) == pytest.approx(0.0, abs=1e-12)
  # Two singular values 3 and 1: p = (0.75, 0.25), exp(H) = 1.7548.
  two = np.zeros((4, 2))
  two[0, 0], two[1, 1] = 3.0, 1.0
  want = np.exp(-(0.75 * np.log(0.75) + 0.25 * np.log(0.25)))
  assert monitors.effective_rank(two) == pytest.approx(want, rel=1e-5)
  # Isotropic Gaussian in d dims: normalised std ≈ 1/√d.
  z = rng.normal(size=(20000, 16))
  assert monitors.embedding_std(z) == pytest.approx(0.25, rel=0.02)


def test_streamed_monitors_equal_the_whole_array_ones():
  """From sums and the Gram matrix: the same std and effective rank as from
  all rows, also with fewer rows than dimensions; and a float32 Gram matrix
  of a rank-2 set still says 2 (rounding noise is not read as rank)."""
  rng = np.random.default_rng(5)
  for n, d in ((300, 16), (10, 16)):
    z = rng.normal(size=(n, d)) * np.linspace(0.1, 3.0, d)
    unit = z / np.linalg.norm(z, axis=1, keepdims=True)
    assert monitors.embedding_std_from_sums(
        n, unit.sum(0), (unit**2).sum(0)) == pytest.approx(
            monitors.embedding_std(z), rel=1e-10)
    assert monitors.effective_rank_from_gram(z.T @ z, n) == pytest.approx(
        monitors.effective_rank(z), rel=1e-9)
  low = (rng.normal(size=(4096, 2)) @ rng.normal(size=(2, 512))).astype(
      np.float32)
  gram = low.T @ low
  assert gram.dtype == np.float32
  got = monitors.effective_rank_from_gram(gram, 4096)
  assert got == pytest.approx(monitors.effective_rank(low), rel=1e-3)
  assert got < 2.01


def test_metric_writer_jsonl_and_tensorboard(tmp_path):
  pytest.importorskip("tensorboard")
  writer = metric_writers.MetricWriter(str(tmp_path))
  assert writer.tensorboard
  writer.write_scalars(3, {"train/loss": 1.5, "eval/probe_top1": 0.25})
  writer.write_scalars(7, {"train/loss": 1.25})
  writer.close()
  lines = [json.loads(l) for l in open(tmp_path / "metrics.jsonl")]
  assert lines == [{"step": 3, "train/loss": 1.5, "eval/probe_top1": 0.25},
                   {"step": 7, "train/loss": 1.25}]
  events = metric_writers.read_scalars(str(tmp_path))
  assert events == [(3, {"train/loss": 1.5, "eval/probe_top1": 0.25}),
                    (7, {"train/loss": 1.25})]


def test_metric_writer_resume_and_event_files_tensorboard_reads(tmp_path):
  """A resumed writer keeps the records up to its start step and drops the
  later ones (logged again); each flush adds an event file that
  TensorBoard's own loader reads, checksums included."""
  pytest.importorskip("tensorboard")
  # pylint: disable=g-import-not-at-top
  from tensorboard.backend.event_processing import event_file_loader
  from tensorboard.util import tensor_util

  def value(v):  # the loader may migrate simple_value to a tensor
    return (float(tensor_util.make_ndarray(v.tensor))
            if v.HasField("tensor") else v.simple_value)
  writer = metric_writers.MetricWriter(str(tmp_path))
  writer.write_scalars(2, {"loss": 2.0})
  writer.flush()
  writer.write_scalars(4, {"loss": 1.0})
  writer.write_scalars(6, {"loss": 0.5})
  writer.close()
  resumed = metric_writers.MetricWriter(str(tmp_path), start_step=4)
  resumed.write_scalars(6, {"loss": 0.75})
  resumed.close()
  lines = [json.loads(l) for l in open(tmp_path / "metrics.jsonl")]
  assert lines == [{"step": 2, "loss": 2.0}, {"step": 4, "loss": 1.0},
                   {"step": 6, "loss": 0.75}]
  files = sorted(p for p in tmp_path.iterdir() if "tfevents" in p.name)
  assert len(files) == 3
  seen = []
  for path in files:
    for event in event_file_loader.EventFileLoader(str(path)).Load():
      seen += [(event.step, value(v)) for v in event.summary.value]
  assert seen == [(2, 2.0), (4, 1.0), (6, 0.5), (6, 0.75)]
  data = files[0].read_bytes()
  corrupt = data[:-1] + bytes([data[-1] ^ 1])
  with pytest.raises(ValueError, match="corrupt TFRecord data"):
    metric_writers.read_tfrecords(corrupt)
