"""Environment of the training subprocesses the tests start."""

import os
import re

_DEVICE_COUNT = re.compile(r"--xla_force_host_platform_device_count=\S+")


def cpu_env(num_devices: int, **extra: str) -> dict:
  """This process's environment for a CPU-only JAX child with `num_devices`
  fake devices. The parent's other XLA flags are kept: a suite run under
  `XLA_FLAGS=--xla_cpu_max_isa=AVX2` runs its subprocesses so too."""
  flags = _DEVICE_COUNT.sub("", os.environ.get("XLA_FLAGS", "")).split()
  flags.append(f"--xla_force_host_platform_device_count={num_devices}")
  env = dict(os.environ, JAX_PLATFORMS="cpu", XLA_FLAGS=" ".join(flags))
  env.update(extra)
  return env
