"""The train state: everything a step reads and writes, as one pytree."""

from typing import Any, Optional

import flax.struct
import jax
import optax

PyTree = Any


@flax.struct.dataclass
class TrainState:
  """State of a pretraining run.

  Attributes:
    step: number of optimizer steps taken.
    params: trainable parameters (encoder, heads).
    batch_stats: BatchNorm running statistics.
    opt_state: optimizer state.
    rng: the run's base PRNG key; step `k` uses `fold_in(rng, k)`.
    target: EMA target network (`{'params', 'batch_stats'}`) for methods that
      keep one (BYOL, MoCo, DINO), else None.
    method_state: method-specific state (queues, centres), else None.
    probe: the online linear probe (`evaluators.linear_probe.ProbeState`:
      its parameters and its own optimizer state), else None.
  """
  step: jax.Array
  params: PyTree
  batch_stats: PyTree
  opt_state: optax.OptState
  rng: jax.Array
  target: Optional[PyTree] = None
  method_state: Optional[PyTree] = None
  probe: Optional[PyTree] = None
