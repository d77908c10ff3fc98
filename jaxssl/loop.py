"""The training loop shared by pretraining and linear evaluation.

`train_loop` feeds batches to a compiled step, reports every `log_every`
steps and at every epoch end (`jaxssl.epochs.RunLength`), saves checkpoints
and stops everywhere on a SIGTERM agreed inside the step. Its own state (the
current epoch's partial metric sums, `EpochSums`, and the run's record so
far, `RunRecord`) is saved with each checkpoint, so an epoch summary after a
mid-epoch resume covers the whole epoch, exactly as the uninterrupted run's
does, and a resumed run's `results.json` covers every segment of the run.
"""

from __future__ import annotations

import dataclasses
import time
from typing import Any, Callable, Iterator, Mapping, Optional, Sequence

import jax
import numpy as np

from jaxssl import checkpointing
from jaxssl import epochs as epochs_lib
from jaxssl import metric_writers
from jaxssl import preemption
from jaxssl import progress

LOOP_SUMS = "epoch_sums"  # key of `EpochSums` in the checkpoint's loop state
LOOP_RECORD = "record"  # key of `RunRecord` in the checkpoint's loop state


class Preempted(Exception):
  """Training stopped on request (SIGTERM) after saving a checkpoint."""

  def __init__(self, step: int):
    super().__init__(f"stopped at step {step} on request; checkpoint saved")
    self.step = step


class EpochSums:
  """Running float64 sums of each metric over the current epoch's steps.

  The sums are added step by step in step order, so a run restored from
  `from_json(to_json())` (JSON keeps float64 exactly) continues with the
  same sums, and its epoch means equal the uninterrupted run's bit for bit.
  """

  def __init__(self, sums: Optional[Mapping[str, float]] = None,
               count: int = 0):
    self.sums = {k: float(v) for k, v in (sums or {}).items()}
    self.count = count

  def add(self, metrics: Sequence[Mapping[str, Any]]) -> None:
    """Adds the metrics of consecutive steps, in order."""
    for m in metrics:
      for k, v in m.items():
        self.sums[k] = self.sums.get(k, 0.0) + float(v)
      self.count += 1

  def mean(self) -> dict:
    return {k: v / self.count for k, v in self.sums.items()}

  def to_json(self) -> dict:
    return {"sums": dict(self.sums), "count": self.count}

  @classmethod
  def from_json(cls, data: Optional[Mapping[str, Any]]) -> "EpochSums":
    data = data or {}
    return cls(data.get("sums"), int(data.get("count", 0)))


@dataclasses.dataclass
class RunRecord:
  """What a run reported, over all its segments (a segment: one process
  lifetime, from a start or resume to its last checkpoint or the end).

  Attributes:
    history: `{'step', metric: mean}` at every report (`log_every` steps,
      saves, epoch ends), from step 1.
    epochs: the per-epoch summaries (with their evaluations).
    segments: `{'start_step', 'end_step', 'seconds'}` per segment, in
      order; `seconds` is the segment's wall time from its first step to
      `end_step` (evaluations included). Steps a segment ran after its last
      checkpoint are not in it: the next segment runs them again.
  """
  history: list = dataclasses.field(default_factory=list)
  epochs: list = dataclasses.field(default_factory=list)
  segments: list = dataclasses.field(default_factory=list)

  def to_json(self) -> dict:
    return {"history": list(self.history), "epochs": list(self.epochs),
            "segments": [dict(s) for s in self.segments]}

  @classmethod
  def from_json(cls, data: Optional[Mapping[str, Any]]) -> "RunRecord":
    """The record saved with a checkpoint (empty for a fresh start, or a
    checkpoint written before records were kept)."""
    data = data or {}
    return cls(*(list(data.get(k, ())) for k in ("history", "epochs",
                                                   "segments")))

  @property
  def seconds(self) -> float:
    """Wall time of all segments."""
    return float(sum(s["seconds"] for s in self.segments))


def _mean(metrics: list) -> dict:
  return {k: float(np.mean([m[k] for m in metrics])) for k in metrics[0]}


def train_loop(state, step_fn, batches: Iterator[dict], *,
               length: epochs_lib.RunLength, log_every: int,
               writer: Optional[metric_writers.MetricWriter] = None,
               on_epoch_end: Optional[Callable[[Any, Any], dict]] = None,
               checkpointer: Optional[checkpointing.Checkpointer] = None,
               preemption_flag: Optional[preemption.PreemptionFlag] = None,
               loop_state: Optional[dict] = None,
               ) -> tuple[Any, RunRecord]:
  """Runs `step_fn` to `length.total_steps`; reports every `log_every`
  steps, at every save and at the end of every epoch; saves checkpoints as
  `checkpointer` says.

  Metrics stay on the devices between reports, so the host never waits for
  a step it does not need to. A non-finite loss stops the run with
  FloatingPointError; metrics are fetched and checked BEFORE every save, so
  no NaN state is ever saved. With `preemption_flag`, every step carries
  this process's SIGTERM flag and returns the flag agreed by all processes;
  the loop reads step s − 1's after dispatching step s and, if set, saves
  step s and raises `Preempted` (on every process at the same step).
  `on_epoch_end(epoch, state)` may return extra (evaluation) metrics.

  Args:
    state: the train state (its `step` is where the loop starts).
    step_fn: `(state, batch) -> (state, metrics)`.
    batches: batches from the state's step on.
    length: the run's steps and epochs.
    log_every: report interval in steps.
    writer: metrics to `metrics.jsonl` and TensorBoard.
    on_epoch_end: called after each epoch's summary.
    checkpointer: saves (None: never).
    preemption_flag: this process's SIGTERM flag.
    loop_state: the loop state saved with the checkpoint `state` was
      restored from (None: a fresh start).

  Returns:
    The final state and the run's `RunRecord` (history, epoch summaries
    and segments of the whole run, the restored segments' included).
  """
  start = int(jax.device_get(state.step))
  reporter = progress.Progress(length.total_steps, length.batch_size,
                               start_step=start, print_fn=progress.print0)
  sums = EpochSums.from_json((loop_state or {}).get(LOOP_SUMS))
  record = RunRecord.from_json((loop_state or {}).get(LOOP_RECORD))
  segment = {"start_step": start, "end_step": start, "seconds": 0.0}
  if start < length.total_steps:
    record.segments.append(segment)
  began = time.perf_counter()
  pending = []
  agreed_flag = None  # the previous step's agreed preemption flag
  for step in range(start + 1, length.total_steps + 1):
    batch = next(batches)
    if preemption_flag is not None:
      batch = dict(batch,
                   **{preemption.BATCH_KEY: preemption_flag.array(step)})
    state, metrics = step_fn(state, batch)
    stop = agreed_flag is not None and preemption.agreed(agreed_flag)
    agreed_flag = metrics.pop(preemption.BATCH_KEY, None)
    pending.append(metrics)
    epoch = length.epoch_end(step)
    report = step % log_every == 0 or epoch is not None
    save = checkpointer is not None and (
        stop or step == length.total_steps or checkpointer.should_save(step)
        or (report and checkpointer.time_due()))
    if report or save:
      fetched = jax.device_get(pending)
      pending = []
      sums.add(fetched)
      summary = _mean(fetched)
      if not np.isfinite(summary["loss"]):
        raise FloatingPointError(
            f"loss is {summary['loss']} around step {step}; stopping")
      reporter.report(step, {"epoch": length.epoch(step), **summary})
      record.history.append({"step": step, **summary})
      if writer is not None:
        writer.write_scalars(step, {f"train/{k}": v
                                    for k, v in summary.items()})
    if epoch is not None:
      summary = {"epoch": epoch, "step": step, **sums.mean()}
      sums = EpochSums()
      if on_epoch_end is not None:
        summary.update(on_epoch_end(epoch, state))
      record.epochs.append(summary)
      progress.print0(f"epoch {epoch}: " + " | ".join(
          f"{k} {v:.4g}" for k, v in summary.items()
          if k not in ("epoch", "step")), flush=True)
      if writer is not None:
        writer.write_scalars(step, {f"epoch/{k}": v for k, v in summary.items()
                                    if k != "step"})
        writer.flush()
    if save:
      if writer is not None:
        writer.flush()  # the metrics up to a checkpoint survive a kill
      segment.update(end_step=step, seconds=time.perf_counter() - began)
      checkpointer.save(state, force=True,
                        loop_state={LOOP_SUMS: sums.to_json(),
                                    LOOP_RECORD: record.to_json()})
    if stop:
      if checkpointer is not None:
        checkpointer.wait()
      raise Preempted(step)
  segment.update(end_step=length.total_steps,
                 seconds=time.perf_counter() - began)
  return state, record
