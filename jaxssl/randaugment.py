"""RandAugment on the device, as InfoMin's augmentation uses it.

Cubuk et al., "RandAugment", 2019 (https://arxiv.org/abs/1909.13719), in
the form of timm's `rand_augment_transform('rand-n2-m10-mstd0.5')` that
Tian et al.'s InfoMin ("What Makes for Good Views for Contrastive
Learning?", https://arxiv.org/abs/2005.10243; HobbitLong/PyContrast
`RandAugment.py`) applies after colour jitter and blur: `num_ops` ops
drawn uniformly WITH replacement from `OPS`, each applied with
probability `prob`, each at a magnitude drawn per application from
N(m, σ) clipped to [0, 10]; rotations, shears and translations change
sign with probability 1/2.

Each op follows the PIL call timm makes, on float images in [0, 1]
(`[H, W, 3]`): the photometric ops read the 8-bit value `round(255·x)`
where PIL's work on bytes (posterize, solarize, equalize, the grey and
smoothed images blends start from); blends are not rounded to bytes (PIL
truncates: within 1/255). Geometric ops are PIL's
affine transform (output pixel centre → input point, bilinear, outside
the image the fill colour (124, 116, 104)/255); timm draws bilinear or
bicubic per call, this uses bilinear always.
"""

from typing import Sequence

import jax
from jax import lax
import jax.numpy as jnp

from jaxssl import precision

MAX_LEVEL = 10.0
FILL = (124.0 / 255, 116.0 / 255, 104.0 / 255)  # InfoMin's img_mean
TRANSLATE_FRACTION = 0.45  # of the side, at magnitude 10

OPS = ("AutoContrast", "Equalize", "Invert", "Rotate", "Posterize",
       "Solarize", "SolarizeAdd", "Color", "Contrast", "Brightness",
       "Sharpness", "ShearX", "ShearY", "TranslateXRel", "TranslateYRel")
GEOMETRIC = ("Rotate", "ShearX", "ShearY", "TranslateXRel", "TranslateYRel")


def _bytes(image: jax.Array) -> jax.Array:
  """The 8-bit values PIL would hold: `round(255·x)` as int32."""
  return jnp.round(jnp.clip(image, 0.0, 1.0) * 255.0).astype(jnp.int32)


def _gray(image: jax.Array) -> jax.Array:
  """PIL's "L" conversion (ITU-R 601-2 luma, in its 16-bit fixed point)
  of the 8-bit values: `[..., 1]` in [0, 1], on the byte grid."""
  q = _bytes(image)
  luma = (q[..., :1] * 19595 + q[..., 1:2] * 38470 + q[..., 2:] * 7471
          + 0x8000) >> 16
  return luma.astype(image.dtype) / 255.0


def affine(image: jax.Array, matrix: jax.Array,
           fill: Sequence[float] = FILL) -> jax.Array:
  """PIL's `Image.transform(size, AFFINE, (a, b, c, d, e, f), BILINEAR)`:
  output pixel (x, y) reads the input at (a·x' + b·y' + c, d·x' + e·y' + f),
  x' = x + ½, y' = y + ½ (pixel centres); a point outside [0, W) × [0, H)
  takes `fill`; inside, bilinear interpolation between the pixels around
  it (centres at integer + ½, neighbours clamped to the image)."""
  height, width = image.shape[:2]
  a, b, c, d, e, f = (matrix[i] for i in range(6))
  y, x = jnp.meshgrid(jnp.arange(height, dtype=image.dtype) + 0.5,
                      jnp.arange(width, dtype=image.dtype) + 0.5,
                      indexing="ij")
  u, v = a * x + b * y + c, d * x + e * y + f
  inside = (u >= 0) & (u < width) & (v >= 0) & (v < height)
  u, v = u - 0.5, v - 0.5
  x0, y0 = jnp.floor(u), jnp.floor(v)
  dx, dy = (u - x0)[..., None], (v - y0)[..., None]

  def at(yy, xx):
    yy = jnp.clip(yy, 0, height - 1).astype(jnp.int32)
    xx = jnp.clip(xx, 0, width - 1).astype(jnp.int32)
    return image[yy, xx]

  top = at(y0, x0) * (1 - dx) + at(y0, x0 + 1) * dx
  bottom = at(y0 + 1, x0) * (1 - dx) + at(y0 + 1, x0 + 1) * dx
  out = top * (1 - dy) + bottom * dy
  return jnp.where(inside[..., None], out, jnp.asarray(fill, image.dtype))


def rotate_matrix(degrees: jax.Array, height: int, width: int) -> jax.Array:
  """PIL's `Image.rotate(degrees)` (counter-clockwise about the centre
  (W/2, H/2)) as the affine matrix of `affine`."""
  angle = -jnp.deg2rad(degrees)
  cos, sin = jnp.cos(angle), jnp.sin(angle)
  cx, cy = width / 2.0, height / 2.0
  return jnp.stack([cos, sin, cx - cos * cx - sin * cy,
                    -sin, cos, cy + sin * cx - cos * cy])


def geometric_matrix(op: str, level: jax.Array, height: int,
                     width: int) -> jax.Array:
  """The affine matrix of geometric op `op` at signed level (±magnitude/10
  of its range): Rotate ±30°, ShearX/Y ±0.3, TranslateX/YRel ±0.45 of the
  width/height (timm's `_rotate_level_to_arg`, `_shear_level_to_arg`,
  `_translate_rel_level_to_arg`)."""
  one, zero = jnp.ones_like(level), jnp.zeros_like(level)
  if op == "Rotate":
    return rotate_matrix(30.0 * level, height, width)
  if op == "ShearX":
    return jnp.stack([one, 0.3 * level, zero, zero, one, zero])
  if op == "ShearY":
    return jnp.stack([one, zero, zero, 0.3 * level, one, zero])
  if op == "TranslateXRel":
    return jnp.stack([one, zero, TRANSLATE_FRACTION * level * width, zero,
                      one, zero])
  if op == "TranslateYRel":
    return jnp.stack([one, zero, zero, zero, one,
                      TRANSLATE_FRACTION * level * height])
  raise ValueError(f"{op!r} is not a geometric op of {GEOMETRIC}")


def auto_contrast(image: jax.Array) -> jax.Array:
  """`ImageOps.autocontrast`: each channel's [min, max] stretched to
  [0, 1]; a constant channel unchanged."""
  lo = jnp.min(image, axis=(0, 1), keepdims=True)
  hi = jnp.max(image, axis=(0, 1), keepdims=True)
  span = hi - lo
  stretched = (image - lo) / jnp.where(span > 0, span, 1.0)
  return jnp.where(span > 0, stretched, image)


def equalize(image: jax.Array) -> jax.Array:
  """`ImageOps.equalize` on the 8-bit values, per channel: with `h` the
  histogram and `step = (Σh − h[last used value]) // 255`, value i maps to
  `(step // 2 + Σ_{j<i} h[j]) // step` (unchanged if step is 0)."""
  q = _bytes(image)

  def channel(values):
    hist = jnp.bincount(values.reshape(-1), length=256)
    last = jnp.max(jnp.where(hist > 0, jnp.arange(256), -1))
    step = (jnp.sum(hist) - hist[last]) // 255
    safe = jnp.maximum(step, 1)
    below = jnp.cumsum(hist) - hist
    lut = jnp.minimum((safe // 2 + below) // safe, 255)
    return jnp.where(step > 0, lut[values], values)

  out = jnp.stack([channel(q[..., i]) for i in range(3)], axis=-1)
  return out.astype(image.dtype) / 255.0


def posterize(image: jax.Array, bits: jax.Array) -> jax.Array:
  """`ImageOps.posterize`: the 8-bit value's top `bits` bits kept."""
  mask = 256 - jnp.left_shift(1, 8 - bits)
  return jnp.bitwise_and(_bytes(image), mask).astype(image.dtype) / 255.0


def solarize_bytes(image: jax.Array, threshold: jax.Array) -> jax.Array:
  """`ImageOps.solarize`: 8-bit values ≥ `threshold` (0…256) inverted."""
  q = _bytes(image)
  return jnp.where(q >= threshold, 255 - q, q).astype(image.dtype) / 255.0


def solarize_add(image: jax.Array, add: jax.Array,
                 threshold: int = 128) -> jax.Array:
  """timm's `solarize_add`: `add` added to the 8-bit values below
  `threshold`, clipped at 255."""
  q = _bytes(image)
  return jnp.where(q < threshold, jnp.minimum(q + add, 255),
                   q).astype(image.dtype) / 255.0


def blend(degenerate: jax.Array, image: jax.Array,
          factor: jax.Array) -> jax.Array:
  """`ImageEnhance._Enhance.enhance`: `degenerate + f·(image −
  degenerate)`, clipped to [0, 1]."""
  return jnp.clip(degenerate + factor * (image - degenerate), 0.0, 1.0)


def smooth(image: jax.Array) -> jax.Array:
  """`ImageFilter.SMOOTH` ([[1, 1, 1], [1, 5, 1], [1, 1, 1]] / 13), the
  one-pixel border unchanged (as PIL's filter)."""
  pad = jnp.pad(image, ((1, 1), (1, 1), (0, 0)), mode="edge")
  height, width = image.shape[:2]
  total = sum(pad[i:i + height, j:j + width] for i in range(3)
              for j in range(3))
  out = (total + 4 * image) / 13.0
  border = jnp.zeros((height, width, 1), bool)
  border = border.at[0].set(True).at[-1].set(True)
  border = border.at[:, 0].set(True).at[:, -1].set(True)
  return jnp.where(border, image, out)


def photometric(op: str, image: jax.Array, level: jax.Array) -> jax.Array:
  """Non-geometric op `op` at level magnitude/10 ∈ [0, 1] (timm's
  `_posterize_tpu_level_to_arg`, `_solarize_level_to_arg`,
  `_solarize_add_level_to_arg`, `_enhance_level_to_arg`)."""
  factor = level * 1.8 + 0.1
  if op == "AutoContrast":
    return auto_contrast(image)
  if op == "Equalize":
    return equalize(image)
  if op == "Invert":
    return 1.0 - image
  if op == "Posterize":
    return posterize(image, (level * 4).astype(jnp.int32))
  if op == "Solarize":
    return solarize_bytes(image, (level * 256).astype(jnp.int32))
  if op == "SolarizeAdd":
    return solarize_add(image, (level * 110).astype(jnp.int32))
  if op == "Color":
    return blend(_gray(image), image, factor)
  if op == "Contrast":
    mean = jnp.floor(jnp.mean(_gray(image)) * 255.0 + 0.5) / 255.0
    return blend(mean, image, factor)
  if op == "Brightness":
    return blend(jnp.zeros_like(image), image, factor)
  if op == "Sharpness":
    smoothed = _bytes(smooth(_bytes(image).astype(image.dtype) / 255.0))
    return blend(smoothed.astype(image.dtype) / 255.0, image, factor)
  raise ValueError(f"{op!r} is not one of {OPS}")


def apply_op(op: str, image: jax.Array, level: jax.Array) -> jax.Array:
  """Op `op` at signed level (geometric) or level (photometric) ∈ [0, 1]."""
  if op in GEOMETRIC:
    height, width = image.shape[:2]
    return affine(image, geometric_matrix(op, level, height, width))
  return photometric(op, image, level)


def rand_augment(key: jax.Array, image: jax.Array, *, num_ops: int = 2,
                 magnitude: float = 10.0, magnitude_std: float = 0.5,
                 prob: float = 0.5, ops: Sequence[str] = OPS) -> jax.Array:
  """`num_ops` ops of `ops` in sequence on one `[H, W, 3]` image in [0, 1].

  Each position draws its op uniformly (with replacement), fires with
  probability `prob`, and draws its magnitude from N(`magnitude`,
  `magnitude_std`) clipped to [0, 10] (level = magnitude/10; geometric
  levels negated with probability 1/2).

  Under `vmap` a switch computes every branch, so a position makes ONE
  affine warp (the drawn geometric op's matrix, or the identity, which
  reproduces the image exactly) and one switch over the photometric ops
  (plus the identity), not a warp per geometric op.
  """
  image = precision.to_full(image)
  height, width = image.shape[:2]
  photometric_ops = [op for op in ops if op not in GEOMETRIC]
  # Each op's photometric branch (0: identity, for the geometric ops).
  branch_of = jnp.asarray([0 if op in GEOMETRIC else
                           1 + photometric_ops.index(op) for op in ops])
  identity = jnp.asarray([1.0, 0.0, 0.0, 0.0, 1.0, 0.0], image.dtype)
  for position in range(num_ops):
    k_op, k_fire, k_mag, k_sign = jax.random.split(
        jax.random.fold_in(key, position), 4)
    choice = jax.random.randint(k_op, (), 0, len(ops))
    m = magnitude + magnitude_std * jax.random.normal(k_mag, (),
                                                      image.dtype)
    level = jnp.clip(m, 0.0, MAX_LEVEL) / MAX_LEVEL
    sign = jnp.where(jax.random.bernoulli(k_sign), -1.0, 1.0)
    matrices = jnp.stack([
        geometric_matrix(op, level * sign, height, width).astype(image.dtype)
        if op in GEOMETRIC else identity for op in ops])
    changed = image
    if len(photometric_ops) < len(ops):
      changed = affine(image, matrices[choice])
    branches = [lambda x: x] + [
        (lambda x, op=op: photometric(op, x, level)) for op in photometric_ops]
    changed = lax.switch(branch_of[choice], branches, changed)
    fire = jax.random.bernoulli(k_fire, prob)
    image = jnp.where(fire, changed, image)
  return image
