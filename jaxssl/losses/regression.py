"""Non-contrastive regression losses: BYOL's and SimSiam's."""

import jax
import jax.numpy as jnp

from jaxssl import precision
from jaxssl.losses import core


def regression_loss(p: jax.Array, z: jax.Array) -> jax.Array:
  """BYOL's normalised regression loss, per example: `‖p̂ − ẑ‖² = 2 − 2·cos`.

  Grill et al., "Bootstrap Your Own Latent", NeurIPS 2020
  (https://arxiv.org/abs/2006.07733), eq. 2, as the DeepMind JAX reference's
  `regression_loss`: both vectors are L2-normalised with 1e-12 bounding the
  squared norm (so zero rows stay finite). No stop-gradient is applied here:
  the caller stops the gradient of the target `z`. BYOL symmetrises by
  *summing* the two directions (the reference's scale; averaging them halves
  the gradient, a known reproduction bug).

  Args:
    p: `[n, d]` online predictions.
    z: `[n, d]` target projections.

  Returns:
    `[n]` per-example losses in [0, 4].
  """
  if p.shape != z.shape:
    raise ValueError(f"regression_loss: shapes {p.shape} and {z.shape} differ")
  p = core.l2_normalize(precision.to_full(p))
  z = core.l2_normalize(precision.to_full(z))
  return jnp.sum(jnp.square(p - z), axis=-1)


def negative_cosine(p: jax.Array, z: jax.Array) -> jax.Array:
  """SimSiam's `D(p, z) = −cos(p, z)` per example.

  Chen & He, "Exploring Simple Siamese Representation Learning", CVPR 2021
  (https://arxiv.org/abs/2011.10566), eq. 1. Both vectors are L2-normalised
  with 1e-12 bounding the squared norm (PyTorch's `cosine_similarity` bounds
  each norm by 1e-8 instead; they differ only for near-zero rows). The caller
  stops the gradient of `z` and symmetrises as `D(p1, z2)/2 + D(p2, z1)/2`.

  Args:
    p: `[n, d]` predictions.
    z: `[n, d]` projections.

  Returns:
    `[n]` values in [−1, 1].
  """
  if p.shape != z.shape:
    raise ValueError(f"negative_cosine: shapes {p.shape} and {z.shape} differ")
  p = core.l2_normalize(precision.to_full(p))
  z = core.l2_normalize(precision.to_full(z))
  return -jnp.sum(p * z, axis=-1)
