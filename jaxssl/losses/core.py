"""Building blocks of the losses: normalisation, gathers across devices,
cross-entropy of a labelled column."""

from typing import Optional

import jax
from jax import lax
import jax.numpy as jnp

from jaxssl import precision


def l2_normalize(x: jax.Array, axis: int = -1, eps: float = 1e-12) -> jax.Array:
  """`x / ||x||` as `tf.math.l2_normalize`: `x * rsqrt(max(sum(x**2), eps))`.

  `eps` bounds the *squared* norm, so zero rows map to zero with a finite
  gradient.
  """
  sq = jnp.sum(jnp.square(x), axis=axis, keepdims=True)
  return x * lax.rsqrt(jnp.maximum(sq, eps))


def gather(x: jax.Array, axis_name: Optional[str]) -> jax.Array:
  """All views of the global batch, in device order; identity without axis."""
  if axis_name is None:
    return x
  # The result differs per device only through `x`'s own rows, and it is
  # combined with local (device-varying) anchors anyway, so the default
  # `to='varying'` is what we want; its transpose is a reduce-scatter, which
  # carries the gradient of the negatives back to the device that owns them.
  return lax.all_gather(x, axis_name, axis=0, tiled=True)


def cross_entropy(logits: jax.Array, labels: jax.Array) -> jax.Array:
  """Mean over rows of the softmax cross-entropy of column `labels[i]`."""
  log_p = jax.nn.log_softmax(logits, axis=-1)
  return -jnp.mean(jnp.take_along_axis(log_p, labels[:, None], axis=-1))


def top1(logits: jax.Array, labels: jax.Array) -> jax.Array:
  """Fraction of rows whose largest logit is column `labels[i]` (no
  gradient)."""
  hits = precision.to_full(jnp.argmax(logits, axis=1) == labels)
  return lax.stop_gradient(jnp.mean(hits))


def global_sum(x: jax.Array, axis_name: Optional[str]) -> jax.Array:
  """`x` summed over the devices of `axis_name` (identity without one)."""
  return x if axis_name is None else lax.psum(x, axis_name)
