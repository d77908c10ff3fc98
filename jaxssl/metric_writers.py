"""Scalar metrics to `metrics.jsonl` and TensorBoard event files.

Only process 0 writes (JAX multi-host convention). Files go through the file
layer (`jaxssl.paths`), so a `gs://` workdir works like a local one. Object
stores cannot append, so both files are written whole at each `flush` (the
training loop flushes at every epoch end and checkpoint):

* `metrics.jsonl` is rewritten with every record so far; a run resumed at
  step S keeps the records up to S and drops later ones, which it logs again;
* TensorBoard events since the previous flush go to a new event file
  (TensorBoard reads every `*tfevents*` file of a folder). The records are
  framed as TFRecords and the events built with the `tensorboard` package's
  protos: neither TensorFlow nor clu is needed. Without `tensorboard`, a
  one-line notice says so and only `metrics.jsonl` is written.
"""

import itertools
import json
import os
import socket
import struct
import time
from typing import Mapping, Optional

import jax

from jaxssl import paths

METRICS_FILE = "metrics.jsonl"
_EVENT_FILES = itertools.count()  # event files written by this process


def _masked_crc32c(data: bytes) -> int:
  """TFRecord's masked CRC-32C (tensorboard's implementation)."""
  # pylint: disable=g-import-not-at-top
  from tensorboard.compat.tensorflow_stub import pywrap_tensorflow
  return pywrap_tensorflow.masked_crc32c(data)


def tfrecord(data: bytes) -> bytes:
  """One TFRecord: length, its masked CRC, the data, its masked CRC."""
  length = struct.pack("<Q", len(data))
  return (length + struct.pack("<I", _masked_crc32c(length)) + data +
          struct.pack("<I", _masked_crc32c(data)))


def read_tfrecords(data: bytes) -> list:
  """The records of TFRecord bytes (checksums verified)."""
  records, pos = [], 0
  while pos < len(data):
    length_bytes = data[pos:pos + 8]
    (length,) = struct.unpack("<Q", length_bytes)
    (crc,) = struct.unpack("<I", data[pos + 8:pos + 12])
    if crc != _masked_crc32c(length_bytes):
      raise ValueError(f"corrupt TFRecord length at byte {pos}")
    record = data[pos + 12:pos + 12 + length]
    (crc,) = struct.unpack("<I", data[pos + 12 + length:pos + 16 + length])
    if crc != _masked_crc32c(record):
      raise ValueError(f"corrupt TFRecord data at byte {pos}")
    records.append(record)
    pos += 16 + length
  return records


class MetricWriter:
  """Writes `{name: float}` per step to `workdir/metrics.jsonl` and TensorBoard.

  Args:
    workdir: local folder or `gs://` prefix.
    start_step: the step a resumed run starts from: earlier records of
      `metrics.jsonl` are kept, later ones dropped.
    tensorboard: write TensorBoard event files too.
    print_fn: for the notice when `tensorboard` is missing.

  Attributes:
    tensorboard: whether event files are written.
  """

  def __init__(self, workdir: paths.PathLike, *, start_step: int = 0,
               tensorboard: bool = True, print_fn=print):
    self._active = jax.process_index() == 0
    self._workdir = paths.path(workdir)
    self._lines, self._events = [], []
    self.tensorboard = False
    if not self._active:
      return
    self._lines = _kept_lines(self._workdir / METRICS_FILE, start_step)
    if tensorboard:
      try:
        # pylint: disable=g-import-not-at-top
        from tensorboard.compat.proto import event_pb2
        from tensorboard.compat.proto import summary_pb2
      except ImportError:
        print_fn("tensorboard is not installed: metrics go to "
                 f"{self._workdir / METRICS_FILE} only (pip install "
                 "tensorboard)")
      else:
        self._summary_pb2, self._event_pb2 = summary_pb2, event_pb2
        self.tensorboard = True

  def write_scalars(self, step: int, scalars: Mapping[str, float]) -> None:
    """Records `scalars` at `step` (a no-op on processes other than 0);
    written at the next `flush`."""
    if not self._active:
      return
    scalars = {k: float(v) for k, v in scalars.items()}
    self._lines.append(json.dumps({"step": int(step), **scalars}))
    if self.tensorboard:
      summary = self._summary_pb2.Summary(value=[
          self._summary_pb2.Summary.Value(tag=k, simple_value=v)
          for k, v in scalars.items()])
      self._events.append(self._event_pb2.Event(
          wall_time=time.time(), step=int(step), summary=summary))

  def flush(self) -> None:
    """Writes `metrics.jsonl` whole and the pending events to a new file."""
    if not self._active:
      return
    paths.write_text(self._workdir / METRICS_FILE,
                     "".join(line + "\n" for line in self._lines))
    if self._events:
      first = self._event_pb2.Event(wall_time=self._events[0].wall_time,
                                    file_version="brain.Event:2")
      data = b"".join(tfrecord(e.SerializeToString())
                      for e in [first, *self._events])
      # Names sort by time, then by a counter of this process; the process
      # id and the counter keep writers of the same second apart (a quick
      # restart would otherwise overwrite the previous run's first file).
      name = (f"events.out.tfevents.{int(self._events[0].wall_time):010d}."
              f"{socket.gethostname()}.{os.getpid()}."
              f"{next(_EVENT_FILES):06d}")
      paths.write_bytes(self._workdir / name, data)
      self._events = []

  def close(self) -> None:
    self.flush()


def _kept_lines(metrics_file: paths.Path, start_step: int) -> list:
  """The records of an existing `metrics.jsonl` up to `start_step`."""
  if not metrics_file.exists():
    return []
  kept = []
  for number, line in enumerate(metrics_file.read_text().splitlines(), 1):
    if not line.strip():
      continue
    try:
      step = json.loads(line)["step"]
    except (ValueError, KeyError, TypeError) as e:
      raise ValueError(f"{metrics_file}:{number}: not a metrics record "
                       f"({e}): {line[:80]!r}") from e
    if step <= start_step:
      kept.append(line)
  return kept


def read_scalars(workdir: paths.PathLike, tag: Optional[str] = None) -> list:
  """`[(step, {tag: value})]` from the TensorBoard event files in `workdir`
  (local or `gs://`), in file-name order. Needs `tensorboard`."""
  # pylint: disable=g-import-not-at-top
  from tensorboard.compat.proto import event_pb2
  from tensorboard.util import tensor_util

  def value_of(v):
    if v.WhichOneof("value") == "simple_value":
      return v.simple_value
    return float(tensor_util.make_ndarray(v.tensor))

  out = []
  files = sorted(p for p in paths.path(workdir).iterdir()
                 if "tfevents" in p.name)
  for file in files:
    for record in read_tfrecords(file.read_bytes()):
      event = event_pb2.Event.FromString(record)
      values = {v.tag: value_of(v) for v in event.summary.value
                if tag is None or v.tag == tag}
      if values:
        out.append((event.step, values))
  return out
