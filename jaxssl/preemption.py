"""Preemption (SIGTERM) agreed by all hosts at every step, with no extra sync.

A Cloud TPU VM gets about 30 seconds between SIGTERM and the end; often
only some hosts of a pod receive it. Each process feeds its own flag
(SIGTERM seen or not) into every train step as one row per local device;
the step takes the maximum over the data axis (`lax.pmax`, inside the
compiled step, alongside its other collectives) and returns it replicated.
The loop reads step `s − 1`'s agreed flag after dispatching step `s`, when
step `s − 1` has (nearly always) finished: the device keeps step `s`
queued, so the read costs no idle time, and every process sees the same
value at the same step. All processes then save step `s` together and stop.
"""

import signal
import threading

import jax
from jax import lax
from jax.sharding import Mesh
import numpy as np

from jaxssl import sharding

BATCH_KEY = "preempt"  # the flag's key in a batch, and in the step's metrics


class PreemptionFlag:
  """This process's SIGTERM, as a per-device input of the train step.

  Installs a SIGTERM handler (main thread only) until `restore`.
  """

  def __init__(self, mesh: Mesh):
    self.mesh = mesh
    self._event = threading.Event()
    self._announced = False
    self._previous = None
    if threading.current_thread() is threading.main_thread():
      self._previous = signal.signal(signal.SIGTERM,
                                     lambda *_: self._event.set())

  def requested(self) -> bool:
    """Whether this process has received SIGTERM."""
    return self._event.is_set()

  def array(self, step: int) -> jax.Array:
    """`[devices]` int32, this process's flag on each of its devices, for
    train step `step` (the first time it is set, this process says so: the
    run then stops after step `step + 1` on every process)."""
    requested = self.requested()
    if requested and not self._announced:
      self._announced = True
      print(f"process {jax.process_index()}: SIGTERM received, flag set "
            f"from step {step}: all processes stop after step {step + 1}",
            flush=True)
    local = np.full(jax.local_device_count(), int(requested), np.int32)
    return sharding.global_batch(local, self.mesh)

  def restore(self) -> None:
    """Puts back the SIGTERM handler that was there before."""
    if self._previous is not None:
      signal.signal(signal.SIGTERM, self._previous)
      self._previous = None


def agree(flag: jax.Array, axis_name: str) -> jax.Array:
  """Inside the per-device step: 1 if any device's (process's) flag is set."""
  return lax.pmax(flag[0], axis_name)


def agreed(value: jax.Array) -> bool:
  """The host value of the step's replicated agreed flag (waits for it)."""
  return bool(np.asarray(value.addressable_data(0)))
