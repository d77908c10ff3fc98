"""The largest batch that fits a memory budget, from few compilations.

`tools/bench_step.py --find_max_batch` measures memory(B) by compiling the
train step at B (XLA's buffer assignment); this module is the search over
B, independent of JAX (tests drive it with formulas).
"""

from typing import Callable


def search_max_batch(measure: Callable[[int], int], memory_bytes: int, *,
                     granularity: int, max_compiles: int = 8,
                     time_left: Callable[[], bool] = lambda: True,
                     upper: int = 0):
  """`(largest fitting B, smallest failing B or None)` over multiples of
  `granularity` up to `upper` (0: no bound), for a memory(B) that grows with
  B (`measure`, cached by the caller).

  Until a failing B is found: secant extrapolation to `memory_bytes` through
  the last two measurements. Then false position inside the bracket, each
  guess followed by its neighbour one granule towards the limit (so an
  accurate guess closes the bracket at once).
  """
  g = granularity
  upper = upper // g * g
  lo, hi = g, None
  if measure(lo) > memory_bytes:
    raise ValueError(f"even B={lo} needs {measure(lo) / 2**30:.2f} GiB of "
                     f"{memory_bytes / 2**30:.2f}")
  tried = [lo]
  probe = False  # the last step was a false-position guess: probe its side
  while len(tried) < max_compiles and time_left():
    if hi is not None and hi - lo <= g or lo == upper:
      break
    last = tried[-1]
    if hi is None and len(tried) == 1:
      b = 4 * g
    elif hi is None:
      a = tried[-2]
      slope = (measure(last) - measure(a)) / (last - a)
      b = (int((last + (memory_bytes - measure(last)) / slope) // g) * g
           if slope > 0 else 2 * last)
    elif probe:
      b = last + g if last == lo else last - g
    else:
      b = int((lo + (memory_bytes - measure(lo)) * (hi - lo)
               / (measure(hi) - measure(lo))) // g) * g
    b = max(b, lo + g) if hi is None else min(max(b, lo + g), hi - g)
    if upper and hi is None:
      b = min(b, upper)
    probe = hi is not None and not probe
    tried.append(b)
    if measure(b) <= memory_bytes:
      lo = b
    else:
      hi = b
  return lo, hi
