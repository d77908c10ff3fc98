"""Scalar metrics to `metrics.jsonl` and TensorBoard event files.

Only process 0 writes (JAX multi-host convention). TensorBoard files are
written with the `tensorboard` package's own event writer, which needs
neither TensorFlow nor clu, so the GPU image without TensorFlow can still
produce them; if `tensorboard` is not installed, a one-line notice says so
and only `metrics.jsonl` is written.
"""

import json
import os
import time
from typing import Mapping, Optional

import jax


class MetricWriter:
  """Writes `{name: float}` per step to `workdir/metrics.jsonl` and TensorBoard.

  Attributes:
    tensorboard: whether event files are written.
  """

  def __init__(self, workdir: str, *, tensorboard: bool = True,
               print_fn=print):
    self._active = jax.process_index() == 0
    self._jsonl = None
    self._events = None
    self.tensorboard = False
    if not self._active:
      return
    self._jsonl = open(os.path.join(workdir, "metrics.jsonl"), "a")
    if tensorboard:
      try:
        # pylint: disable=g-import-not-at-top
        from tensorboard.compat.proto import summary_pb2
        from tensorboard.compat.proto import event_pb2
        from tensorboard.summary.writer import event_file_writer
      except ImportError:
        print_fn("tensorboard is not installed: metrics go to "
                 f"{workdir}/metrics.jsonl only (pip install tensorboard)")
      else:
        self._summary_pb2, self._event_pb2 = summary_pb2, event_pb2
        self._events = event_file_writer.EventFileWriter(workdir)
        self.tensorboard = True

  def write_scalars(self, step: int, scalars: Mapping[str, float]) -> None:
    """Records `scalars` at `step` (a no-op on processes other than 0)."""
    if not self._active:
      return
    scalars = {k: float(v) for k, v in scalars.items()}
    self._jsonl.write(json.dumps({"step": int(step), **scalars}) + "\n")
    self._jsonl.flush()
    if self._events is not None:
      summary = self._summary_pb2.Summary(value=[
          self._summary_pb2.Summary.Value(tag=k, simple_value=v)
          for k, v in scalars.items()])
      self._events.add_event(self._event_pb2.Event(
          wall_time=time.time(), step=int(step), summary=summary))

  def flush(self) -> None:
    if self._jsonl is not None:
      self._jsonl.flush()
    if self._events is not None:
      self._events.flush()

  def close(self) -> None:
    if self._jsonl is not None:
      self._jsonl.close()
      self._jsonl = None
    if self._events is not None:
      self._events.close()
      self._events = None


def read_scalars(workdir: str, tag: Optional[str] = None) -> list:
  """`[(step, {tag: value})]` from the TensorBoard event files in `workdir`.

  A small reader for tests and tools (needs `tensorboard`).
  """
  # pylint: disable=g-import-not-at-top
  from tensorboard.backend.event_processing import event_file_loader
  from tensorboard.util import tensor_util

  def value_of(v):
    if v.WhichOneof("value") == "simple_value":
      return v.simple_value
    return float(tensor_util.make_ndarray(v.tensor))  # migrated by the loader

  out = []
  for name in sorted(os.listdir(workdir)):
    if "tfevents" not in name:
      continue
    loader = event_file_loader.EventFileLoader(os.path.join(workdir, name))
    for event in loader.Load():
      values = {v.tag: value_of(v) for v in event.summary.value
                if tag is None or v.tag == tag}
      if values:
        out.append((event.step, values))
  return out
