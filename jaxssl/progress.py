"""Console progress: a bar, metrics, throughput and ETA every `log_every` steps.

One line per report (not a redrawn bar), so logs of TPU VM runs collected
from every host stay readable.
"""

import time
from typing import Mapping

_BAR_WIDTH = 20


def _duration(seconds: float) -> str:
  seconds = int(max(seconds, 0))
  hours, rest = divmod(seconds, 3600)
  minutes, secs = divmod(rest, 60)
  return f"{hours}h{minutes:02d}m" if hours else f"{minutes}m{secs:02d}s"


def bar(done: int, total: int, width: int = _BAR_WIDTH) -> str:
  """`[#####.....]  50%` for `done` of `total`."""
  fraction = min(max(done / max(total, 1), 0.0), 1.0)
  filled = int(round(fraction * width))
  return f"[{'#' * filled}{'.' * (width - filled)}] {fraction:4.0%}"


class Progress:
  """Prints one line per report with a bar, img/s and ETA.

  The img/s of the first report includes compilation."""

  def __init__(self, total_steps: int, batch_size: int, start_step: int = 0,
               print_fn=print):
    self.total_steps = total_steps
    self.batch_size = batch_size
    self.print_fn = print_fn
    self._last_step = start_step
    self._last_time = time.perf_counter()

  def report(self, step: int, metrics: Mapping[str, float]) -> str:
    now = time.perf_counter()
    steps = max(step - self._last_step, 1)
    step_time = (now - self._last_time) / steps
    self._last_step, self._last_time = step, now
    eta = step_time * (self.total_steps - step)
    parts = [f"{bar(step, self.total_steps)} step {step}/{self.total_steps}"]
    parts += [f"{k} {v:.4g}" for k, v in metrics.items()]
    parts += [f"{self.batch_size / step_time:.0f} img/s", f"ETA {_duration(eta)}"]
    line = " | ".join(parts)
    self.print_fn(line, flush=True)
    return line


def print0(*args, **kwargs) -> None:
  """`print` on process 0 only (every process runs the same loop)."""
  import jax  # pylint: disable=g-import-not-at-top
  if jax.process_index() == 0:
    print(*args, **kwargs)
