"""Environment of the training subprocesses the tests start."""

import os
import re

_DEVICE_COUNT = re.compile(r"--xla_force_host_platform_device_count=\S+")
# The checkout these tests belong to: first on the children's PYTHONPATH, so
# a child started in another folder (a gs:// workdir run in an empty
# directory) imports this jaxssl, not another checkout's editable install.
_REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def cpu_env(num_devices: int, **extra: str) -> dict:
  """This process's environment for a CPU-only JAX child with `num_devices`
  fake devices. The parent's other XLA flags are kept: a suite run under
  `XLA_FLAGS=--xla_cpu_max_isa=AVX2` runs its subprocesses so too."""
  flags = _DEVICE_COUNT.sub("", os.environ.get("XLA_FLAGS", "")).split()
  flags.append(f"--xla_force_host_platform_device_count={num_devices}")
  env = dict(os.environ, JAX_PLATFORMS="cpu", XLA_FLAGS=" ".join(flags))
  env["PYTHONPATH"] = os.pathsep.join(
      [_REPO] + [p for p in env.get("PYTHONPATH", "").split(os.pathsep) if p])
  env.update(extra)
  return env
