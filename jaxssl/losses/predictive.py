"""Contrastive predictive coding over a grid of patches (CPC v2).

Hénaff et al., "Data-Efficient Image Recognition with Contrastive
Predictive Coding", ICML 2020 (https://arxiv.org/abs/1905.09272), the
appendix pseudo-code `CPC(latents, target_dim=64, emb_scale=0.1,
steps_to_ignore=2, steps_to_predict=3)`: the prediction made from the
context at row r of an image's grid for the patch k rows below is scored
by dot product (no normalisation, no temperature: the predictions are
scaled by `emb_scale` instead) against the targets of EVERY patch of the
batch — every position of every image, its own image's other positions
included — and the positive is that image's patch (r + k, c).
"""

from typing import Optional

import jax
from jax import lax
import jax.numpy as jnp

from jaxssl.losses import core


def cpc_infonce(predictions: jax.Array, targets: jax.Array, *, offset: int,
                axis_name: Optional[str] = None) -> jax.Array:
  """InfoNCE of the predictions `offset` rows ahead, against the global
  batch's patches.

  Args:
    predictions: `[n, H, W, d]`: at (b, r, c) the prediction for this
      device's image b's patch (r + offset, c); rows r ≥ H − offset (no
      patch that far below) are ignored.
    targets: `[n, H, W, d]` this device's patch targets. With `axis_name`
      every device's are gathered (in device order: global image =
      device · n + b), with gradient back to their owners.
    offset: k ≥ 1.
    axis_name: the data axis, or None.

  Returns:
    The mean over this device's n·(H − k)·W predictions of the softmax
    cross-entropy of the positive among all B·H·W patches; the mean over
    devices is the global batch's loss.
  """
  n, height, width, dim = targets.shape
  if predictions.shape != targets.shape:
    raise ValueError(f"cpc_infonce: predictions {predictions.shape} and "
                     f"targets {targets.shape} differ")
  if not 0 < offset < height:
    raise ValueError(f"cpc_infonce: offset {offset} must be in [1, "
                     f"{height - 1}] for a grid of {height} rows")
  everyone = core.gather(targets.reshape(n * height * width, dim), axis_name)
  rows = height - offset
  preds = predictions[:, :rows].reshape(n * rows * width, dim)
  logits = jnp.matmul(preds, everyone.T, precision=lax.Precision.HIGHEST)
  first = 0 if axis_name is None else lax.axis_index(axis_name) * n
  image = first + jnp.arange(n)[:, None, None]
  row = jnp.arange(rows)[None, :, None] + offset
  col = jnp.arange(width)[None, None, :]
  labels = ((image * height + row) * width + col).reshape(-1)
  return core.cross_entropy(logits, labels)
