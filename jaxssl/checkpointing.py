"""Checkpoints of the whole train state with orbax, and restore-or-init.

Each checkpoint holds two items: `state`, the complete `TrainState`
(parameters, BatchNorm statistics, optimizer state, EMA target, method
state, online probe, step and PRNG key), and `loop`, a small JSON dict of
the training loop's own state (the current epoch's partial metric sums).
The input position is the step itself, since every input source derives
its batches from (seed, step). Orbax writes each checkpoint into a temporary
directory and renames it when complete, so a checkpoint cut short by a kill
is never listed. A listed checkpoint that cannot be read (truncated or
missing files: a full disk, a kill during the final write) is moved aside
to `<directory>_unreadable/` and the newest readable one is restored
(`Checkpointer.restore_all`). The directory may be local or on GCS (`gs://`,
through `jaxssl.paths`). A checkpoint restores onto any device count: the
state is replicated but for row-sharded method state (memory banks), whose
padding to the device count is adjusted on restore (`_restore_args`).
"""

import time
from typing import Optional, Tuple

from absl import logging
import jax
import numpy as np
import orbax.checkpoint as ocp

from jaxssl import paths
from jaxssl.train_state import TrainState

STATE, LOOP = "state", "loop"  # the items of a checkpoint


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
    _no_replica_slices_on_cpu()
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

  def save(self, state: TrainState, *, force: bool = False,
           loop_state: Optional[dict] = None) -> bool:
    """Saves `state` (and the loop's JSON-able `loop_state`) at its step
    (if due, or `force`); returns whether."""
    step = int(jax.device_get(state.step))
    if not (force or self.should_save(step)):
      return False
    if step in self._manager.all_steps():
      return False
    self._last_save = time.monotonic()
    return self._manager.save(step, args=ocp.args.Composite(**{
        STATE: ocp.args.PyTreeSave(_to_saveable(state)),
        LOOP: ocp.args.JsonSave(dict(loop_state or {}))}), force=True)

  def restore(self, template: TrainState) -> TrainState:
    """The newest readable checkpoint's state, placed like `template`."""
    return self.restore_all(template)[0]

  def restore_all(self, template: TrainState) -> Tuple[TrainState, dict]:
    """The newest readable checkpoint: its state, placed like `template`
    (any device count), and its loop state.

    Checkpoints newer than it that cannot be read are moved aside to
    `<directory>_unreadable/<step>` (never deleted), with one line each
    naming the step directory and why. They are moved only once an older
    checkpoint has been restored: if none can be read (a template that no
    longer matches, say), nothing is moved and the error names the
    directory and each step's failure. With several processes, a step is
    used only if every process could read it.

    Raises:
      FileNotFoundError: no checkpoint at all.
      ValueError: no checkpoint can be read.
    """
    steps = self._agreed_steps()
    if not steps:
      raise FileNotFoundError(f"no checkpoint in {self.directory}")
    template = _to_saveable(template)
    target = jax.tree.map(
        lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=x.sharding),
        template)
    restore_args = jax.tree.map(_restore_args, template)
    failed = []
    for step in sorted(steps, reverse=True):
      try:
        restored = self._manager.restore(step, args=ocp.args.Composite(**{
            STATE: ocp.args.PyTreeRestore(target,
                                          restore_args=restore_args),
            LOOP: ocp.args.JsonRestore()}))
        error = None
      except Exception as e:  # pylint: disable=broad-except
        restored, error = None, " ".join(f"{type(e).__name__}: {e}".split())
      if _everywhere(error is None):
        self._set_aside(failed)
        state = restored[STATE]
        return (state.replace(rng=jax.random.wrap_key_data(state.rng)),
                dict(restored[LOOP] or {}))
      failed.append((step, error or "unreadable on another process"))
    raise ValueError(
        f"no readable checkpoint in {self.directory}: " + "; ".join(
            f"step {step}: {why[:300]}" for step, why in failed))

  def _agreed_steps(self) -> list:
    """The listed steps, process 0's listing for all."""
    steps = sorted(self._manager.all_steps())
    if jax.process_count() > 1:
      from jax.experimental import multihost_utils  # pylint: disable=g-import-not-at-top
      count = int(multihost_utils.broadcast_one_to_all(np.int64(len(steps))))
      mine = np.zeros(count, np.int64)
      mine[:min(count, len(steps))] = steps[:count]
      steps = multihost_utils.broadcast_one_to_all(mine).tolist()
    return steps

  def _set_aside(self, failed: list) -> None:
    """Moves the unreadable `failed` (step, why) directories aside."""
    if not failed:
      return
    aside = paths.path(f"{self.directory}_unreadable")
    for step, why in failed:
      target = aside / f"{step}-{time.strftime('%Y%m%d-%H%M%S')}"
      if jax.process_index() == 0:
        paths.move(self.directory / str(step), target)
        print(f"checkpoint {self.directory / str(step)} is unreadable "
              f"({why[:300]}); moved to {target}", flush=True)
    if jax.process_count() > 1:
      from jax.experimental import multihost_utils  # pylint: disable=g-import-not-at-top
      multihost_utils.sync_global_devices("jaxssl: unreadable checkpoints "
                                          "moved aside")
    self._manager.reload()

  def wait(self) -> None:
    """Blocks until asynchronous saves have finished."""
    self._manager.wait_until_finished()

  def close(self) -> None:
    self._manager.close()


def row_sharded(x: jax.Array) -> bool:
  """Whether `x` is split by rows over the mesh (a per-example table,
  `jaxssl.methods.rows`)."""
  spec = getattr(x.sharding, "spec", None)
  return bool(spec) and spec[0] is not None


def _restore_args(x: jax.Array) -> ocp.ArrayRestoreArgs:
  """Restores `x` with its template's shape, dtype and sharding. A
  row-sharded table's length is its rows padded to a multiple of the
  device count, the rows themselves at the same positions for any count
  (`jaxssl.methods.rows`): saved on another count it differs only in the
  zero padding at its end, which `strict=False` adds or cuts. Every other
  array must match exactly."""
  return ocp.ArrayRestoreArgs(sharding=x.sharding, global_shape=x.shape,
                              dtype=x.dtype, strict=not row_sharded(x))


def _everywhere(ok: bool) -> bool:
  """Whether `ok` holds on every process."""
  if jax.process_count() == 1:
    return ok
  from jax.experimental import multihost_utils  # pylint: disable=g-import-not-at-top
  return bool(np.all(multihost_utils.process_allgather(np.int32(ok))))


def _no_replica_slices_on_cpu() -> None:
  """Orbax saves a replicated array in slices written by different replicas
  (`use_replica_parallel`), cutting each slice with an XLA op compiled per
  leaf shape and replica: on a CPU (one host's memory, nothing to spread)
  that is ~150 compilations, ~18 s on a 2-core machine, at the first save of
  a ResNet-18 state, for nothing. CPU saves are written whole by replica 0;
  GPU (orbax's own default there) and TPU saves are unchanged."""
  global _CPU_HANDLER_REGISTERED
  if jax.default_backend() != "cpu" or _CPU_HANDLER_REGISTERED:
    return
  verbosity = logging.get_verbosity()
  logging.set_verbosity(logging.ERROR)  # orbax warns of the override
  try:
    ocp.type_handlers.register_type_handler(
        jax.Array, ocp.type_handlers.ArrayHandler(use_replica_parallel=False),
        override=True)
  finally:
    logging.set_verbosity(verbosity)
  _CPU_HANDLER_REGISTERED = True


_CPU_HANDLER_REGISTERED = False



def read_latest(directory: paths.PathLike) -> Tuple[int, dict]:
  """`(step, state tree)` of the newest checkpoint in `directory`, read
  without a template as host numpy arrays (`{'params', 'batch_stats',
  'target', ...}` as saved): for tools that need one part of a run's state
  (an export of the other network) and tests, on one process."""
  directory = paths.path(directory)
  steps = [int(p.name) for p in directory.iterdir() if p.name.isdigit()
           and (p / STATE).exists()] if directory.exists() else []
  if not steps:
    raise FileNotFoundError(f"no checkpoint in {directory}")
  path = directory / str(max(steps)) / STATE
  reader = ocp.PyTreeCheckpointer()
  layout = reader.metadata(path)
  layout = getattr(layout, "item_metadata", layout)
  layout = getattr(layout, "tree", layout)
  tree = reader.restore(path, restore_args=jax.tree.map(
      lambda _: ocp.RestoreArgs(restore_type=np.ndarray), layout))
  return max(steps), tree
