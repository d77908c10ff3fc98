"""Where each test's time goes: XLA compilation, tracing, lowering, the rest.

The suite is bound by XLA compilation (a ResNet-10 float64 step compiles
in ~8 s at the tests' LLVM level 0 and runs in well under one), so the cost
of a new test is mostly the programs it compiles that no other test
compiled before it. This pytest plugin listens to JAX's compile events and
writes one line per test (setup, call and teardown together):

    <wall s>  compile <s>  trace <s>  lower <s>  <test id>

to `$COMPILE_TIMES` (default `/tmp/compile_times.txt`, appended to; every
pytest-xdist worker appends its own lines). A program loaded from the
suite's persistent compilation cache shows as a short compile.

COMMAND (one file, one process; sort by wall time):

  rm -f /tmp/compile_times.txt
  PYTHONPATH=tools .venv/bin/python -m pytest -q -p compile_times \
      tests/test_train.py
  sort -rn /tmp/compile_times.txt | head
"""

import collections
import os
import time

import pytest

_EVENTS = {"/jax/core/compile/backend_compile_duration": "compile",
           "/jax/core/compile/jaxpr_trace_duration": "trace",
           "/jax/core/compile/jaxpr_to_mlir_module_duration": "lower"}
_totals = collections.Counter()
_registered = []


def _listener(event: str, duration: float, **kwargs) -> None:
  del kwargs
  if event in _EVENTS:
    _totals[_EVENTS[event]] += duration


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_protocol(item, nextitem):
  """Times `item` and the compile events during it."""
  del nextitem
  if not _registered:
    import jax  # pylint: disable=g-import-not-at-top
    jax.monitoring.register_event_duration_secs_listener(_listener)
    _registered.append(True)
  _totals.clear()
  start = time.perf_counter()
  yield
  wall = time.perf_counter() - start
  path = os.environ.get("COMPILE_TIMES", "/tmp/compile_times.txt")
  with open(path, "a", encoding="utf-8") as f:
    f.write(f"{wall:7.1f}  compile {_totals['compile']:6.2f}  "
            f"trace {_totals['trace']:5.2f}  lower {_totals['lower']:5.2f}  "
            f"{item.nodeid}\n")
