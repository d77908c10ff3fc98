"""Patch grids and the masked context network of CPC v2.

Hénaff et al., "Data-Efficient Image Recognition with Contrastive
Predictive Coding", ICML 2020 (https://arxiv.org/abs/1905.09272):

* `patchify` cuts an image into a grid of overlapping square patches;
* `PatchEncoder` encodes every patch with one backbone (a ResNet with
  LayerNorm in CPC v2) into a grid of feature vectors, and pools the grid
  to one vector: the representation linear evaluation reads;
* `MaskedContext` is the paper's PixelCNN-style context network (its
  appendix pseudo-code `pixelCNN`): residual blocks of a 1×1 convolution,
  a 1×3 convolution along the row, and a 2×1 convolution over the row above
  and the row itself, so that the context at row r depends on rows ≤ r of
  the grid only.
"""

from typing import Any, Optional

import flax.linen as nn
import jax
import jax.numpy as jnp

from jaxssl import precision


def grid_size(image_size: int, patch_size: int, stride: int) -> int:
  """Patches per side of a `image_size` image: `(S − p) / s + 1`.

  Raises:
    ValueError: the patches do not tile the image exactly.
  """
  if patch_size <= 0 or stride <= 0 or patch_size > image_size or (
      image_size - patch_size) % stride:
    raise ValueError(
        f"patches of {patch_size} px every {stride} px do not tile a "
        f"{image_size} px image (need (image − patch) divisible by stride; "
        "config.loss.patch_size / patch_stride)")
  return (image_size - patch_size) // stride + 1


def patchify(images: jax.Array, patch_size: int, stride: int) -> jax.Array:
  """`[n, S, S, C]` → `[n, G, G, p, p, C]`: patch (i, j) is the image's
  rows `i·s … i·s + p − 1` and columns `j·s … j·s + p − 1`."""
  n, height, width, channels = images.shape
  if height != width:
    raise ValueError(f"patchify needs square images; got {height}×{width}")
  g = grid_size(height, patch_size, stride)
  starts = jnp.arange(g) * stride
  offsets = jnp.arange(patch_size)
  rows = (starts[:, None] + offsets[None, :])  # [G, p]
  # [n, G, p, S, C] then [n, G, p, G, p, C] → [n, G, G, p, p, C].
  x = images[:, rows]
  x = x[:, :, :, rows]
  del n, channels
  return jnp.transpose(x, (0, 1, 3, 2, 4, 5))


class PatchEncoder(nn.Module):
  """Every patch through `backbone`: a grid of feature vectors.

  Attributes:
    backbone: image `[m, p, p, C]` → pooled features `[m, D]` (a ResNet).
    patch_size: the patches' side.
    stride: the patches' spacing.

  Called on images it returns the grid's mean (`[n, D]`: the paper's
  linear protocol pools the patch features); `encode_patches` takes an
  already cut (and augmented) grid `[n, G, G, p, p, C]` and returns
  `[n, G, G, D]`.
  """
  backbone: nn.Module
  patch_size: int
  stride: int

  def encode_patches(self, patches: jax.Array, train: bool = True
                     ) -> jax.Array:
    n, g1, g2 = patches.shape[:3]
    flat = patches.reshape((n * g1 * g2,) + patches.shape[3:])
    features = self.backbone(flat, train=train)
    return features.reshape((n, g1, g2, features.shape[-1]))

  def __call__(self, images: jax.Array, train: bool = False) -> jax.Array:
    grid = self.encode_patches(
        patchify(images, self.patch_size, self.stride), train=train)
    return jnp.mean(precision.to_full(grid), axis=(1, 2))


class MaskedContext(nn.Module):
  """The context network over a feature grid `[n, H, W, D]` → `[n, H, W, D]`.

  Each residual block: 1×1 conv to `hidden` channels, ReLU; 1×3 conv along
  the row ('SAME'); the row above padded in and a 2×1 'VALID' conv (row
  r − 1 and row r); ReLU; 1×1 conv back to D, added to the block's input.
  A final ReLU. Output row r depends on input rows ≤ r only (rows below
  never reach it), so predicting row r + k ≥ r + 1 from it is not trivial.

  Attributes:
    hidden: the blocks' width (the paper: 256).
    num_blocks: residual blocks (the paper: 5).
    dtype: computation dtype; None: full precision.
  """
  hidden: int = 256
  num_blocks: int = 5
  dtype: Any = None

  @nn.compact
  def __call__(self, grid: jax.Array) -> jax.Array:
    full = precision.full_dtype()
    dtype = full if self.dtype is None else self.dtype
    conv = lambda features, kernel, padding, name: nn.Conv(  # pylint: disable=g-long-lambda
        features, kernel, padding=padding, dtype=dtype, param_dtype=full,
        name=name)
    x = grid.astype(dtype)
    dim = grid.shape[-1]
    for b in range(self.num_blocks):
      y = nn.relu(conv(self.hidden, (1, 1), "VALID", f"block{b}_in")(x))
      y = conv(self.hidden, (1, 3), ((0, 0), (1, 1)), f"block{b}_row")(y)
      y = jnp.pad(y, ((0, 0), (1, 0), (0, 0), (0, 0)))  # the row above row 0
      y = nn.relu(conv(self.hidden, (2, 1), "VALID", f"block{b}_up")(y))
      x = x + conv(dim, (1, 1), "VALID", f"block{b}_out")(y)
    return nn.relu(x)


def direction_view(grid: jax.Array, direction: str) -> jax.Array:
  """The grid turned so that `direction`'s context comes from the rows
  above: 'down' (context above predicts below, the paper's first task) as
  is, 'up' rows reversed, 'right' (context from the left) transposed,
  'left' transposed and reversed. Its own inverse for 'down'/'up'."""
  if direction == "down":
    return grid
  if direction == "up":
    return grid[:, ::-1]
  if direction == "right":
    return jnp.swapaxes(grid, 1, 2)
  if direction == "left":
    return jnp.swapaxes(grid, 1, 2)[:, ::-1]
  raise ValueError(f"CPC direction {direction!r} is not one of "
                   f"{list(DIRECTIONS)}")


DIRECTIONS = ("down", "up", "right", "left")


def stack_offsets(context: jax.Array, heads: list,
                  scale: float) -> jax.Array:
  """`[n, H, W, K, d]`: head k's prediction (`scale`·W_k c) at every row."""
  return jnp.stack([scale * head(context) for head in heads], axis=3)


def dense(features: int, name: Optional[str] = None) -> nn.Dense:
  """A 1×1 convolution (a dense layer on the channel axis), full-precision
  parameters."""
  return nn.Dense(features, param_dtype=precision.full_dtype(), name=name)


class Projection(nn.Module):
  """A 1×1 convolution without bias as a head (`head(x, train)`, the
  `Network` protocol): CPC's targets, on a grid or on pooled features
  alike. No bias: it would shift every logit of a prediction by the same
  amount, so the softmax would give it no gradient."""
  features: int

  @nn.compact
  def __call__(self, x: jax.Array, train: bool = True) -> jax.Array:
    del train
    return nn.Dense(self.features, use_bias=False,
                    param_dtype=precision.full_dtype(), name="dense")(x)
