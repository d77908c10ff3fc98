"""Test set-up: 8 fake CPU devices, configured before JAX is imported.

Every test module sees `jax.device_count() == 8`, so the multi-device code
paths (shard_map over a mesh, cross-device all_gather, global BatchNorm) run on
a laptop or a 2-core CI machine exactly as they would on a TPU slice.
"""

import os
import tempfile

# LLVM's optimisation level 0 for XLA:CPU code generation: the suite is
# bound by compilation (two thirds of its time), which this cuts (a ResNet
# state's init 28 s → 7 s), while the programs' HLO, and so what they
# compute, is unchanged. Set JAXSSL_TEST_XLA_OPT=default to keep XLA's own
# level (e.g. to time steps).
_OPT = ("" if os.environ.get("JAXSSL_TEST_XLA_OPT") == "default"
        else " --xla_backend_optimization_level=0")
os.environ["XLA_FLAGS"] = (
    os.environ.get("XLA_FLAGS", "") + _OPT
    + " --xla_force_host_platform_device_count=8").strip()
os.environ.setdefault("JAX_PLATFORMS", "cpu")
# TensorFlow (used by input pipelines only) must never grab an accelerator.
os.environ.setdefault("CUDA_VISIBLE_DEVICES", "")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
# One persistent XLA compilation cache per test run, shared by the
# pytest-xdist workers and the training subprocesses the tests start (they
# inherit the environment), which otherwise each compile the same steps.
# Cached executables are the same programs: bit-identical results; a torn
# entry is reported by JAX and recompiled. The compile-count tests count
# JAX's backend-compile event, which a cache load also emits.
_RUN = os.environ.get("PYTEST_XDIST_TESTRUNUID") or f"pid{os.getpid()}"
os.environ.setdefault("JAX_COMPILATION_CACHE_DIR", os.path.join(
    tempfile.gettempdir(), f"jaxssl-tests-xla-cache-{_RUN}"))
# Every program is cached, not only those compiling over 1 s: a training
# subprocess (kill -9 and resume, SIGTERM, the CLI tests) then loads the
# dozens of small programs around its step too.
os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "0")

import jax  # noqa: E402  (must come after the flags above)
import pytest  # noqa: E402


@pytest.fixture(scope="session", autouse=True)
def _check_devices():
  assert jax.device_count() == 8, (
      "tests expect 8 fake CPU devices; XLA_FLAGS was set too late: "
      f"{os.environ.get('XLA_FLAGS')!r}, got {jax.devices()}")
  yield


# The slowest files (by `--durations=0` on a 2-core CPU, 2026-12-06) start
# first, so that the two pytest-xdist workers (`--dist loadfile` hands out
# whole files in collection order) finish together instead of one worker
# starting a minute-long file while the other is idle. The rest keep their
# order.
SLOWEST_FIRST = ("test_runlocal_cifar.py", "test_runlocal_imagenet.py",
                 "test_multihost.py", "test_checkpointing.py",
                 "test_performance.py", "test_methods.py", "test_moco.py",
                 "test_train.py", "test_main.py", "test_semisupervised.py")


def pytest_collection_modifyitems(session, config, items):
  del session, config
  rank = {name: i for i, name in enumerate(SLOWEST_FIRST)}
  items.sort(key=lambda item: rank.get(item.path.name, len(rank)))
