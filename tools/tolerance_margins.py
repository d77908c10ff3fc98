"""How close each numeric assertion of the test suite comes to its tolerance.

A tolerance next to the error it allows is a test that fails on another
processor (XLA:CPU's float32 code differs by ISA) and says nothing about
correctness. This pytest plugin records, for every call of
`numpy.testing.assert_allclose`, the worst ratio

    |actual − desired| / (atol + rtol·|desired|)

(1 = at the tolerance) per assertion site, i.e. the line in a `tests/test_*.py`
file that made the call, directly or through a helper. A second command
merges the records of all pytest-xdist workers and lists the sites by ratio.

COMMAND (the whole suite, then the report; ratios above 0.1 are the ones to
look at, as for each ISA of `XLA_FLAGS=--xla_cpu_max_isa=AVX2|SSE4_2`):

  MARGINS_DIR=/tmp/margins PYTHONPATH=tools .venv/bin/python -m pytest -q \
      tests -n 2 --dist loadfile -p tolerance_margins
  .venv/bin/python tools/tolerance_margins.py /tmp/margins [--min_ratio=0.1]
"""

import argparse
import collections
import functools
import json
import os
import sys
import traceback

import numpy as np
import numpy.testing

_RECORDS = collections.defaultdict(lambda: [0.0, 0, ""])
_ORIGINAL = numpy.testing.assert_allclose


def _site():
  """`tests/test_x.py:LINE` of the innermost test-file frame, or None."""
  for frame in reversed(traceback.extract_stack()[:-2]):
    name = os.path.basename(frame.filename)
    if name.startswith("test_") and name.endswith(".py"):
      return f"tests/{name}:{frame.lineno}"
  return None


def _ratio(actual, desired, rtol, atol):
  actual = np.asarray(actual, np.float64)
  desired = np.asarray(desired, np.float64)
  diff = np.abs(actual - desired)
  bound = atol + rtol * np.abs(desired)
  finite = np.isfinite(diff)
  if not finite.any():
    return 0.0
  diff, bound = np.broadcast_arrays(diff, bound)
  diff, bound = diff[finite], bound[finite]
  with np.errstate(divide="ignore", invalid="ignore"):
    ratio = np.where(bound > 0, diff / bound, np.where(diff > 0, np.inf, 0.0))
  return float(ratio.max()) if ratio.size else 0.0


@functools.wraps(_ORIGINAL)
def _recording_assert_allclose(actual, desired, rtol=1e-7, atol=0, *args,
                               **kwargs):
  site = _site()
  if site is not None:
    try:
      ratio = _ratio(actual, desired, rtol, atol)
    except (TypeError, ValueError):  # non-numeric input: not ours to judge
      ratio = None
    if ratio is not None:
      record = _RECORDS[site]
      if ratio >= record[0]:
        record[0] = ratio
        record[2] = os.environ.get("PYTEST_CURRENT_TEST", "").split(" ")[0]
      record[1] += 1
  return _ORIGINAL(actual, desired, rtol, atol, *args, **kwargs)


def pytest_configure(config):
  del config
  numpy.testing.assert_allclose = _recording_assert_allclose
  np.testing.assert_allclose = _recording_assert_allclose


def pytest_unconfigure(config):
  del config
  out = os.environ.get("MARGINS_DIR")
  if not out or not _RECORDS:
    return
  os.makedirs(out, exist_ok=True)
  worker = os.environ.get("PYTEST_XDIST_WORKER", "main")
  with open(os.path.join(out, f"{worker}-{os.getpid()}.json"), "w",
            encoding="utf-8") as f:
    json.dump({site: {"ratio": r, "calls": n, "test": t}
               for site, (r, n, t) in _RECORDS.items()}, f)


def main(argv=None):
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("margins_dir")
  parser.add_argument("--min_ratio", type=float, default=0.1)
  args = parser.parse_args(argv)
  if not os.path.isdir(args.margins_dir) or not os.listdir(args.margins_dir):
    parser.error(f"{args.margins_dir}: no records; run pytest with "
                 "MARGINS_DIR set to it and -p tolerance_margins first")
  merged = {}
  for name in sorted(os.listdir(args.margins_dir)):
    with open(os.path.join(args.margins_dir, name), encoding="utf-8") as f:
      for site, rec in json.load(f).items():
        if site not in merged or rec["ratio"] > merged[site]["ratio"]:
          merged[site] = rec
  rows = sorted(merged.items(), key=lambda kv: -kv[1]["ratio"])
  shown = [(s, r) for s, r in rows if r["ratio"] >= args.min_ratio]
  print(f"{len(merged)} assert_allclose sites; {len(shown)} at >= "
        f"{args.min_ratio} of their tolerance:")
  for site, rec in shown:
    print(f"  {rec['ratio']:9.3g}  {site:34s} {rec['test']}")
  return 0


if __name__ == "__main__":
  sys.exit(main())
