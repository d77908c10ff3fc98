"""Barlow Twins' redundancy reduction over global-batch statistics."""

from typing import Optional

import jax
from jax import lax
import jax.numpy as jnp

from jaxssl import precision
from jaxssl.losses import core


def standardize(z: jax.Array, *, axis_name: Optional[str] = None,
                epsilon: float = 1e-5) -> jax.Array:
  """Per-dimension `(z − mean)/√(var + ε)` over the GLOBAL batch.

  The statistics (biased variance, as BatchNorm's normalisation) are sums over
  the local rows and then over `axis_name`, so N devices standardise with the
  statistics of the concatenated batch.
  """
  z = precision.to_full(z)
  count = core.global_sum(precision.to_full(z.shape[0]), axis_name)
  mean = core.global_sum(jnp.sum(z, axis=0), axis_name) / count
  var = core.global_sum(jnp.sum(jnp.square(z - mean), axis=0),
                        axis_name) / count
  return (z - mean) * lax.rsqrt(var + epsilon)


def cross_correlation(z1: jax.Array, z2: jax.Array, *,
                      axis_name: Optional[str] = None,
                      epsilon: float = 1e-5) -> jax.Array:
  """Barlow Twins' `C = Σ_b ẑ1_b ẑ2_bᵀ / N` over the global batch of N rows.

  `ẑ` are the embeddings standardised per dimension over the global batch
  (the reference's `BatchNorm1d(affine=False)`, synchronised across GPUs);
  the local products are summed over `axis_name`, as the reference's
  `all_reduce` of `C`. Every device ends with the same `[d, d]` matrix.
  """
  if z1.shape != z2.shape:
    raise ValueError(f"cross_correlation: shapes {z1.shape} and {z2.shape} "
                     "differ")
  z1 = standardize(z1, axis_name=axis_name, epsilon=epsilon)
  z2 = standardize(z2, axis_name=axis_name, epsilon=epsilon)
  count = core.global_sum(precision.to_full(z1.shape[0]), axis_name)
  product = jnp.matmul(z1.T, z2, precision=lax.Precision.HIGHEST)
  return core.global_sum(product, axis_name) / count


def barlow_twins(z1: jax.Array, z2: jax.Array, *, lambd: float = 5e-3,
                 axis_name: Optional[str] = None) -> tuple[jax.Array, jax.Array]:
  """Barlow Twins redundancy-reduction loss.

  Zbontar, Jing, Misra, LeCun, Deny, "Barlow Twins: Self-Supervised Learning
  via Redundancy Reduction", ICML 2021 (https://arxiv.org/abs/2103.03230),
  eq. 1: `Σ_i (1 − C_ii)² + λ Σ_{i≠j} C_ij²` with `C = cross_correlation`.
  The value is the loss of the whole global batch on every device (its mean
  over devices is itself).

  Args:
    z1: `[n, d]` embeddings of the first view of the local batch.
    z2: `[n, d]` embeddings of the second view.
    lambd: λ, the off-diagonal weight (5e-3 in the paper).
    axis_name: mapped device axis holding the rest of the global batch.

  Returns:
    `(loss, C)`.
  """
  c = cross_correlation(z1, z2, axis_name=axis_name)
  diagonal = jnp.diagonal(c)
  on_diag = jnp.sum(jnp.square(1.0 - diagonal))
  off_diag = jnp.sum(jnp.square(c)) - jnp.sum(jnp.square(diagonal))
  return on_diag + lambd * off_diag, c
