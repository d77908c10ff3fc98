"""Data augmentation on the device: pure functions of images and keys.

Images are float32 in [0, 1], `[H, W, 3]`; batched helpers `vmap` them with one
key per image. These run inside the jitted train step (the BYOL reference's
design), so the host only has to deliver uint8 pixels.
"""

from typing import Tuple

import jax
import jax.numpy as jnp

# ITU-R 601 luma weights, as `tf.image.rgb_to_grayscale`.
_LUMA = jnp.array([0.2989, 0.5870, 0.1140], jnp.float32)


def to_grayscale(image: jax.Array) -> jax.Array:
  """Luma replicated on the three channels."""
  gray = jnp.tensordot(image, _LUMA, axes=[[-1], [0]])[..., None]
  return jnp.broadcast_to(gray, image.shape)


def adjust_brightness_multiplicative(image: jax.Array, factor) -> jax.Array:
  """`image · factor` (SimCLR v2 `random_brightness`, multiplicative)."""
  return image * factor


def adjust_contrast(image: jax.Array, factor) -> jax.Array:
  """`(image - mean)·factor + mean`, mean per channel over the image."""
  mean = jnp.mean(image, axis=(-3, -2), keepdims=True)
  return (image - mean) * factor + mean


def adjust_saturation_gray_blend(image: jax.Array, factor) -> jax.Array:
  """Blend with the grayscale image: `gray + factor·(image - gray)`."""
  gray = to_grayscale(image)
  return gray + factor * (image - gray)


def sample_crop_box(key: jax.Array, height: int, width: int,
                    area_range: Tuple[float, float] = (0.08, 1.0),
                    aspect_range: Tuple[float, float] = (3 / 4, 4 / 3),
                    attempts: int = 10) -> jax.Array:
  """Random-resized-crop box `(y, x, h, w)` (Inception/SimCLR sampling).

  Draws `attempts` candidates with area fraction in `area_range` and a
  log-uniform aspect ratio, keeps the first that fits, and falls back to the
  whole image.
  """
  k_area, k_ratio, k_y, k_x = jax.random.split(key, 4)
  area = jax.random.uniform(k_area, (attempts,), minval=area_range[0],
                            maxval=area_range[1]) * height * width
  log_ratio = jax.random.uniform(k_ratio, (attempts,),
                                 minval=jnp.log(aspect_range[0]),
                                 maxval=jnp.log(aspect_range[1]))
  ratio = jnp.exp(log_ratio)
  w = jnp.round(jnp.sqrt(area * ratio))
  h = jnp.round(jnp.sqrt(area / ratio))
  fits = (w >= 1) & (h >= 1) & (w <= width) & (h <= height)
  first = jnp.argmax(fits)
  ok = jnp.any(fits)
  h = jnp.where(ok, h[first], height)
  w = jnp.where(ok, w[first], width)
  y = jnp.floor(jax.random.uniform(k_y) * (height - h + 1))
  x = jnp.floor(jax.random.uniform(k_x) * (width - w + 1))
  return jnp.stack([y, x, h, w])


def crop_and_resize(image: jax.Array, box: jax.Array, size: int) -> jax.Array:
  """Resamples `box = (y, x, h, w)` of `image` to `[size, size]`, bilinear."""
  y, x, h, w = box[0], box[1], box[2], box[3]
  scale = jnp.stack([size / h, size / w])
  translation = -jnp.stack([y, x]) * scale
  out = jax.image.scale_and_translate(
      image, (size, size, image.shape[-1]), spatial_dims=(0, 1), scale=scale,
      translation=translation, method="linear", antialias=True)
  return jnp.clip(out, 0.0, 1.0)


def simple_view(key: jax.Array, image: jax.Array, *, size: int,
                color_strength: float = 0.5) -> jax.Array:
  """One SimCLR-style view: crop-resize, flip, colour jitter (p=0.8), gray (p=0.2).

  The light-weight on-device view used by in-memory data; colour jitter
  strength `s` gives brightness/contrast/saturation 0.8·s as in SimCLR.

  Args:
    key: PRNG key for this image.
    image: `[H, W, 3]` uint8 or float image (uint8 is scaled to [0, 1]).
    size: output side.
    color_strength: SimCLR's colour-jitter strength `s`.

  Returns:
    `[size, size, 3]` float32 in [0, 1].
  """
  if image.dtype == jnp.uint8:
    image = image.astype(jnp.float32) / 255.0
  keys = jax.random.split(key, 8)
  box = sample_crop_box(keys[0], image.shape[0], image.shape[1])
  image = crop_and_resize(image, box, size)
  image = jnp.where(jax.random.bernoulli(keys[1]), image[:, ::-1], image)
  s = 0.8 * color_strength

  def jitter(img):
    f = jax.random.uniform(keys[2], (3,), minval=-s, maxval=s) + 1.0
    f = jnp.maximum(f, 0.0)
    img = jnp.clip(adjust_brightness_multiplicative(img, f[0]), 0.0, 1.0)
    img = jnp.clip(adjust_contrast(img, f[1]), 0.0, 1.0)
    return jnp.clip(adjust_saturation_gray_blend(img, f[2]), 0.0, 1.0)

  image = jnp.where(jax.random.bernoulli(keys[3], 0.8), jitter(image), image)
  image = jnp.where(jax.random.bernoulli(keys[4], 0.2), to_grayscale(image),
                    image)
  return image


def simple_views(keys: jax.Array, images: jax.Array, *, size: int,
                 color_strength: float = 0.5) -> jax.Array:
  """`simple_view` over a batch, one key per image."""
  return jax.vmap(lambda k, im: simple_view(
      k, im, size=size, color_strength=color_strength))(keys, images)


def center_resize(images: jax.Array, size: int) -> jax.Array:
  """Eval view: the whole image resized to `size`, float in [0, 1]."""
  if images.dtype == jnp.uint8:
    images = images.astype(jnp.float32) / 255.0
  if images.shape[-3:-1] == (size, size):
    return images
  shape = images.shape[:-3] + (size, size, images.shape[-1])
  return jax.image.resize(images, shape, method="linear", antialias=True)
