"""Full precision: JAX's default float, float32 or (in 64-bit mode) float64.

Parameters, optimizer state, BatchNorm statistics, the heads, logits, losses
and augmentations are computed in *full precision*; bfloat16 is only ever the
encoder's compute dtype (`config.model.dtype`). Full precision is JAX's
default floating dtype: float32, or float64 when 64-bit mode is on
(`JAX_ENABLE_X64=1`, or `with jax.enable_x64(True):` around both state
creation and the step).

64-bit mode exists for checking, not for training: the tests run the
1-vs-8-device, 1-vs-2-process and micro-batched equivalences in float64,
where a different reduction order moves results by ~1e-15 instead of float32's
~1e-6, so that a tolerance far below any real error (a psum too many, local
BatchNorm statistics, a missing gather) holds on every processor.
"""

import jax
import jax.numpy as jnp


def full_dtype() -> jnp.dtype:
  """float32, or float64 under `jax_enable_x64` (read at trace time)."""
  return jnp.result_type(float)


def to_full(x: jax.Array) -> jax.Array:
  """`x` (bfloat16, float32, uint8, ...) cast to full precision."""
  return jnp.asarray(x).astype(full_dtype())
