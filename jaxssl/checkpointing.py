"""Checkpoints of the whole train state with orbax, and restore-or-init.

The saved pytree is the complete `TrainState` (parameters, BatchNorm
statistics, optimizer state, EMA target, method state, online probe, step and
PRNG key); the input position is the step itself, since every input source
derives its batches from (seed, step). Orbax writes each checkpoint into a
temporary directory and renames it when complete, so a checkpoint cut short
by a kill is never listed, and the previous complete one is restored.
The directory may be local or on GCS (`gs://`, through `jaxssl.paths`).
"""

import time
from typing import Optional

import jax
import numpy as np
import orbax.checkpoint as ocp

from jaxssl import paths
from jaxssl.train_state import TrainState


def _to_saveable(state: TrainState) -> TrainState:
  # Typed PRNG keys are stored as their raw uint32 data.
  return state.replace(rng=jax.random.key_data(state.rng))


class Checkpointer:
  """Saves every `every_steps` steps (keeping `keep`) and restores the latest.

  Args:
    directory: where checkpoints live (`workdir/checkpoints`), local or
      `gs://`.
    every_steps: save interval in steps (0: none by step count).
    keep: checkpoints kept.
    asynchronous: write in a background thread while training goes on.
    every_minutes: also save when this much time has passed since the last
      save (0: never by time). Process 0's clock decides, so all processes
      save at the same step.
  """

  def __init__(self, directory: paths.PathLike, *, every_steps: int,
               keep: int = 3, asynchronous: bool = True,
               every_minutes: float = 0.0):
    self.directory = paths.path(directory)
    self.every_steps = every_steps
    self.every_minutes = every_minutes
    self._last_save = time.monotonic()
    options = ocp.CheckpointManagerOptions(
        max_to_keep=keep, create=True,
        enable_async_checkpointing=asynchronous)
    self._manager = ocp.CheckpointManager(self.directory, options=options)

  def latest_step(self) -> Optional[int]:
    """The newest complete checkpoint's step (None: none). With several
    processes, process 0's listing decides for all (every process must
    call this), so a listing that lags on one host cannot make hosts
    restore different steps."""
    step = self._manager.latest_step()
    if jax.process_count() > 1:
      from jax.experimental import multihost_utils  # pylint: disable=g-import-not-at-top
      step = int(multihost_utils.broadcast_one_to_all(
          np.int64(-1 if step is None else step)))
      step = None if step < 0 else step
    return step

  def should_save(self, step: int) -> bool:
    """Due by step count (`time_due` is asked separately, at the loop's
    reporting steps, since it may need a cross-process agreement)."""
    return bool(self.every_steps) and step % self.every_steps == 0

  def time_due(self) -> bool:
    """Whether `every_minutes` have passed (the same answer everywhere)."""
    if not self.every_minutes:
      return False
    due = time.monotonic() - self._last_save >= 60 * self.every_minutes
    if jax.process_count() > 1:
      from jax.experimental import multihost_utils  # pylint: disable=g-import-not-at-top
      due = bool(multihost_utils.broadcast_one_to_all(np.int32(due)))
    return due

  def save(self, state: TrainState, *, force: bool = False) -> bool:
    """Saves `state` at its step (if due, or `force`); returns whether."""
    step = int(jax.device_get(state.step))
    if not (force or self.should_save(step)):
      return False
    if step in self._manager.all_steps():
      return False
    self._last_save = time.monotonic()
    return self._manager.save(
        step, args=ocp.args.StandardSave(_to_saveable(state)), force=True)

  def restore(self, template: TrainState) -> TrainState:
    """The latest checkpoint, placed like `template` (any device count)."""
    step = self.latest_step()
    if step is None:
      raise FileNotFoundError(f"no checkpoint in {self.directory}")
    target = jax.tree.map(
        lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=x.sharding),
        _to_saveable(template))
    restored = self._manager.restore(step, args=ocp.args.StandardRestore(
        target))
    return restored.replace(rng=jax.random.wrap_key_data(restored.rng))

  def wait(self) -> None:
    """Blocks until asynchronous saves have finished."""
    self._manager.wait_until_finished()

  def close(self) -> None:
    self._manager.close()
