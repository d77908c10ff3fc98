"""Resuming the host input pipeline mid-run (`input_pipeline`, `host_sources`).

A run restarted at step s calls `pretrain_dataset(start_position=s * b)`; it
must yield exactly the batches the uninterrupted run yields from step s on,
and (indexable sources) read no example before that position, or (TFRecord
streams) at most the epoch it resumes in. Each case resumes in the middle of
epoch 3 and counts reads by wrapping the source's reader.

Images are tiny random-noise JPEGs/PNGs (every crop differs), so the module
runs in a few seconds on 2 cores.
"""
# pylint: disable=protected-access  (the epoch streams are tested directly)

import dataclasses
import io
import logging
import threading

import numpy as np
from PIL import Image
import pytest

from jaxssl import view_presets
from jaxssl.data import host_sources
from jaxssl.data import input_pipeline as ip

_N = 40            # examples of this process, one epoch
_BATCH = 4
_RESUME_STEP = 35  # position 140: example 20 of epoch 3 (0-based)
_AFTER = 4         # batches compared after the resume
_SPECS = (view_presets.ViewSpec(size=6), view_presets.ViewSpec(size=4,
                                                     crop_mode="byol"))


@pytest.fixture(scope="module")
def tf():
  return host_sources.tf_module()


def _noise(rng, fmt: str) -> bytes:
  buf = io.BytesIO()
  Image.fromarray(rng.integers(0, 256, (8, 10, 3), np.uint8)).save(buf, fmt)
  return buf.getvalue()


class ReadCounter:
  """Counts the examples a source reads (thread-safe: reads run in parallel)."""

  def __init__(self):
    self.count = 0
    self._lock = threading.Lock()

  def _tick(self, value):
    with self._lock:
      self.count += 1
    return value

  def _counted(self, tf, value):
    out = tf.numpy_function(self._tick, [value], value.dtype, stateful=True)
    out.set_shape(value.shape)
    return out

  def wrap(self, source: host_sources.HostSource) -> host_sources.HostSource:
    """`source` with every read (or streamed record) counted."""
    tf = host_sources.tf_module()
    if source.read is not None:
      read = source.read
      return dataclasses.replace(
          source, read=lambda i: read(self._counted(tf, i)))
    records = source.records

    def counted_records(order_seed=None):
      return records(order_seed).map(
          lambda ex: dict(ex, index=self._counted(tf, ex["index"])))
    return dataclasses.replace(source, records=counted_records)


def _batches(source, count: int, start_step: int = 0, **kwargs) -> list:
  ds = ip.pretrain_dataset(source, _SPECS, batch_size=_BATCH, seed=11,
                           start_position=start_step * _BATCH, **kwargs)
  return list(ds.take(count).as_numpy_iterator())


def _assert_same_batches(resumed: list, uninterrupted: list) -> None:
  assert len(resumed) == len(uninterrupted) == _AFTER
  for step, (a, b) in enumerate(zip(resumed, uninterrupted)):
    for key in ("label", "epoch", "index"):
      np.testing.assert_array_equal(a[key], b[key], err_msg=f"{key} {step}")
    for v, (va, vb) in enumerate(zip(a["views"], b["views"])):
      np.testing.assert_array_equal(va, vb, err_msg=f"view {v}, {step}")


def _check_resume(source, **kwargs) -> int:
  """Resumed batches == the uninterrupted run's; returns the resume's reads.

  Also checks the uninterrupted run: every epoch visits each example once.
  """
  uninterrupted = _batches(source, _RESUME_STEP + _AFTER, **kwargs)
  index = np.concatenate([b["index"] for b in uninterrupted])
  epoch = np.concatenate([b["epoch"] for b in uninterrupted])
  np.testing.assert_array_equal(epoch, np.arange(len(epoch)) // _N)
  mine = np.sort(index[:_N])
  assert len(set(mine.tolist())) == _N
  for e in (1, 2):
    np.testing.assert_array_equal(np.sort(index[e * _N:(e + 1) * _N]), mine)
    assert not np.array_equal(index[e * _N:(e + 1) * _N], index[:_N])
  third = index[3 * _N:].tolist()  # 36 of epoch 3's 40
  assert len(set(third)) == len(third) and set(third) <= set(mine.tolist())
  assert epoch[_RESUME_STEP * _BATCH] == 3  # mid-epoch 3
  assert (_RESUME_STEP * _BATCH) % _N == _N // 2

  counter = ReadCounter()
  resumed = _batches(counter.wrap(source), _AFTER, start_step=_RESUME_STEP,
                     **kwargs)
  _assert_same_batches(resumed, uninterrupted[_RESUME_STEP:])
  assert counter.count >= _AFTER * _BATCH
  return counter.count


# --------------------------------------------------------------------------
# (a) A folder of image files.
# --------------------------------------------------------------------------


@pytest.fixture(scope="module")
def files_root(tmp_path_factory):
  """40 noise images (JPEG and PNG) in 2 classes."""
  root = tmp_path_factory.mktemp("resume_files")
  rng = np.random.default_rng(0)
  for k in range(_N):
    fmt, ext = ("JPEG", "jpg") if k % 3 else ("PNG", "png")
    folder = root / ("a" if k % 2 else "b")
    folder.mkdir(exist_ok=True)
    (folder / f"{k:02d}.{ext}").write_bytes(_noise(rng, fmt))
  return str(root)


def test_files_resume_reads_nothing_before_it(tf, files_root):
  """A `files` run resumed mid-epoch 3 gives the uninterrupted batches and
  reads under one epoch (the skip-free index path: ~the batches it yields),
  far fewer than the 140 examples before the resume point."""
  del tf
  source = host_sources.files_source(files_root, None, process_index=0,
                                     process_count=1)
  assert source.num_examples == _N
  reads = _check_resume(source)
  assert reads < _N, reads


def test_index_order_depends_on_seed_and_epoch_only(tf, files_root):
  """Index sampling: a stream started anywhere is the tail of the one from
  0 (each epoch's permutation is a function of (seed, epoch)); another seed
  gives another order."""
  del tf
  source = host_sources.files_source(files_root, None, process_index=0,
                                     process_count=1)

  def stream(seed, start, stop):
    ds = ip._indexed_stream(source, seed, start)
    return [(int(p), int(ex["index"])) for p, ex in
            ds.take(stop - start).as_numpy_iterator()]

  whole = stream(1, 0, 3 * _N)
  assert stream(1, _N + 5, 3 * _N) == whole[_N + 5:]
  assert stream(1, 2 * _N, 3 * _N) == whole[2 * _N:]
  assert stream(2, 0, _N) != whole[:_N]


# --------------------------------------------------------------------------
# (b, c) A TFDS dataset in ArrayRecord and in TFRecord format.
# --------------------------------------------------------------------------


@pytest.fixture(scope="module")
def tfds_dirs(tmp_path_factory):
  """'resume_noise' (80 noise JPEGs, 4 classes) prepared in both formats.

  Returns {file_format: data_dir}. On 2 processes each holds 40 (`_N`).
  """
  tfds = pytest.importorskip("tensorflow_datasets")
  tf = host_sources.tf_module()
  tfds.disable_progress_bar()
  rng = np.random.default_rng(1)
  images = rng.integers(0, 256, (2 * _N, 8, 10, 3), np.uint8)
  labels = np.arange(2 * _N) % 4
  features = tfds.features.FeaturesDict({
      "image": tfds.features.Image(shape=(8, 10, 3), encoding_format="jpeg"),
      "label": tfds.features.ClassLabel(num_classes=4)})
  dirs = {}
  for file_format in ("array_record", "tfrecord"):
    dirs[file_format] = str(tmp_path_factory.mktemp(file_format))
    tfds.dataset_builders.TfDataBuilder(
        name="resume_noise", config="default", version="1.0.0",
        data_dir=dirs[file_format], features=features,
        file_format=file_format,
        split_datasets={"train": tf.data.Dataset.from_tensor_slices(
            {"image": images, "label": labels})}).download_and_prepare()
  return dirs


def _tfds(data_dir, process_index=1):
  return host_sources.tfds_source("resume_noise", "train", data_dir=data_dir,
                                  process_index=process_index,
                                  process_count=2)


def test_tfds_array_record_is_indexable(tf, tfds_dirs):
  """ArrayRecord: `read(i)` is record i of this process's even slice, the
  same bytes, label and split-wide index as the TFRecord copy, in order."""
  del tf
  for p, offset in ((0, 0), (1, _N)):
    indexed = _tfds(tfds_dirs["array_record"], p)
    stream = _tfds(tfds_dirs["tfrecord"], p)
    assert indexed.read is not None and indexed.records is None
    assert stream.records is not None and stream.read is None
    assert indexed.num_examples == stream.num_examples == _N
    assert indexed.total_examples == 2 * _N and indexed.num_classes == 4
    a = list(ip._in_order(indexed).as_numpy_iterator())
    b = list(ip._in_order(stream).as_numpy_iterator())
    np.testing.assert_array_equal([x["index"] for x in a],
                                  offset + np.arange(_N))
    for x, y in zip(a, b):
      assert x["image"] == y["image"] and x["label"] == y["label"]
      assert x["index"] == y["index"]


def test_tfds_array_record_resume_reads_nothing_before_it(tf, tfds_dirs,
                                                          caplog):
  """TFDS ArrayRecord, process 2 of 2, resumed mid-epoch 3: the uninterrupted
  batches, under one epoch of reads (140 examples precede the resume), and
  no TFRecord warning."""
  del tf
  with caplog.at_level(logging.WARNING):
    reads = _check_resume(_tfds(tfds_dirs["array_record"]))
  assert reads < _N, reads
  assert "TFRecord" not in caplog.text


def test_tfds_tfrecord_resume_reads_at_most_its_epoch(tf, tfds_dirs, caplog):
  """TFDS TFRecord (no random access), resumed mid-epoch 3: the uninterrupted
  batches; reads are the 20 records of epoch 3 before the resume point, the
  batches, the shuffle buffer and read-ahead — under one epoch plus
  read-ahead, never the 140 before. One warning names the way out."""
  del tf
  buffer = 8
  with caplog.at_level(logging.WARNING):
    reads = _check_resume(_tfds(tfds_dirs["tfrecord"]), shuffle_buffer=buffer)
  assert _N // 2 + _AFTER * _BATCH <= reads < _N + buffer + 2 * _AFTER * _BATCH
  warnings = [r for r in caplog.records if "TFRecord" in r.getMessage()]
  assert len(warnings) == 1
  message = warnings[0].getMessage()
  assert "example 20 of epoch 3" in message and "array_record" in message
  assert "up to one epoch" in message


def test_tfds_stream_epoch_order_depends_on_seed_and_epoch(tf, tfds_dirs):
  """A TFRecord epoch's records (shard order, then shuffle buffer) are a
  function of (seed, epoch): rebuilt alone they equal the endless stream's,
  and the next epoch is shuffled differently."""
  del tf
  source = _tfds(tfds_dirs["tfrecord"])

  def order(start):
    ds = ip._record_stream(source, 3, 8, start)
    return [(int(p), int(ex["index"])) for p, ex in
            ds.take(2 * _N).as_numpy_iterator()]

  whole = order(0)
  assert order(_N) == whole[_N:] + order(2 * _N)[:_N]
  assert [i for _, i in whole[:_N]] != [i for _, i in whole[_N:]]
