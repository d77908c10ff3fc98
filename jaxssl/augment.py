"""Data augmentation on the device: pure functions of images and keys.

Shape work (decoding, random-resized crops) happens on the host in tf.data;
photometric work runs here, inside the jitted train step, with one PRNG key
per image (the design of the BYOL reference, which found the host to be the
bottleneck otherwise).

The deterministic ops follow `tf.image` semantics, as used by the SimCLR
(https://github.com/google-research/simclr, `data_util.py`) and BYOL
(https://github.com/deepmind/deepmind-research/tree/master/byol,
`utils/augmentations.py`) references. They take float images in [0, 1],
`[H, W, 3]` or batched `[B, H, W, 3]` (with scalar or per-image `[B]`
parameters), and return full-precision arrays (`jaxssl.precision`: float32,
or float64 in JAX's 64-bit mode) of the same shape.
"""

from typing import Tuple, Union

import jax
from jax import lax
import jax.numpy as jnp

from jaxssl import precision
from jaxssl import randaugment
from jaxssl.view_presets import ViewSpec

Scalar = Union[float, jax.Array]

# ITU-R 601 luma weights, as `tf.image.rgb_to_grayscale`.
_LUMA = (0.2989, 0.5870, 0.1140)
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def _per_image(value: Scalar, image: jax.Array) -> jax.Array:
  """Broadcasts a scalar or per-image `[B]` parameter against `[..., H, W, C]`."""
  value = precision.to_full(value)
  return value.reshape(value.shape + (1,) * (image.ndim - value.ndim))


# --------------------------------------------------------------------------
# Deterministic ops.
# --------------------------------------------------------------------------


def rgb_to_hsv(image: jax.Array) -> jax.Array:
  """RGB → HSV with all channels in [0, 1] (`tf.image.rgb_to_hsv`)."""
  image = precision.to_full(image)
  r, g, b = image[..., 0], image[..., 1], image[..., 2]
  value = jnp.max(image, axis=-1)
  minimum = jnp.min(image, axis=-1)
  chroma = value - minimum
  safe_value = jnp.where(value > 0, value, 1.0)
  saturation = jnp.where(value > 0, chroma / safe_value, 0.0)
  safe_chroma = jnp.where(chroma > 0, chroma, 1.0)
  hue = jnp.where(
      value == r, (g - b) / safe_chroma,
      jnp.where(value == g, 2.0 + (b - r) / safe_chroma,
                4.0 + (r - g) / safe_chroma))
  hue = jnp.where(chroma > 0, hue / 6.0, 0.0)
  hue = hue - jnp.floor(hue)  # wrap negative hues into [0, 1)
  return jnp.stack([hue, saturation, value], axis=-1)


def hsv_to_rgb(hsv: jax.Array) -> jax.Array:
  """HSV → RGB (`tf.image.hsv_to_rgb`), branch-free for vmap."""
  hsv = precision.to_full(hsv)
  h, s, v = hsv[..., 0], hsv[..., 1], hsv[..., 2]
  dh = h * 6.0
  dr = jnp.clip(jnp.abs(dh - 3.0) - 1.0, 0.0, 1.0)
  dg = jnp.clip(2.0 - jnp.abs(dh - 2.0), 0.0, 1.0)
  db = jnp.clip(2.0 - jnp.abs(dh - 4.0), 0.0, 1.0)
  one_minus_s = 1.0 - s
  rgb = [v * (one_minus_s + s * d) for d in (dr, dg, db)]
  return jnp.stack(rgb, axis=-1)


# sRGB (linear) → CIE XYZ, and the D65 white point of the 2° observer:
# `skimage.color.xyz_from_rgb` and its `illuminants['D65']['2']`.
_XYZ_FROM_RGB = ((0.412453, 0.357580, 0.180423),
                 (0.212671, 0.715160, 0.072169),
                 (0.019334, 0.119193, 0.950227))
_D65 = (0.95047, 1.0, 1.08883)


def rgb_to_lab(images: jax.Array) -> jax.Array:
  """sRGB in [0, 1] (`[..., 3]`) → CIE Lab (D65, 2° observer), as
  `skimage.color.rgb2lab` computes it: CMC's view split (L; ab).

  The sRGB transfer function is undone (`c/12.92` up to 0.04045, then
  `((c + 0.055)/1.055)^2.4`), the linear RGB goes to XYZ, is divided by
  the white point, and `f(t) = t^(1/3)` above 0.008856 (`7.787·t + 16/116`
  below) gives `L = 116·f(Y) − 16`, `a = 500·(f(X) − f(Y))`,
  `b = 200·(f(Y) − f(Z))`: L in [0, 100], a and b in about [−86, 98] and
  [−108, 94].
  """
  rgb = precision.to_full(images)
  linear = jnp.where(rgb > 0.04045,
                     ((jnp.maximum(rgb, 0.04045) + 0.055) / 1.055) ** 2.4,
                     rgb / 12.92)
  xyz = linear @ jnp.asarray(_XYZ_FROM_RGB, rgb.dtype).T
  t = xyz / jnp.asarray(_D65, rgb.dtype)
  f = jnp.where(t > 0.008856, jnp.cbrt(t), 7.787 * t + 16.0 / 116.0)
  fx, fy, fz = f[..., 0], f[..., 1], f[..., 2]
  return jnp.stack([116.0 * fy - 16.0, 500.0 * (fx - fy),
                    200.0 * (fy - fz)], axis=-1)


def to_grayscale(image: jax.Array) -> jax.Array:
  """Luma (`tf.image.rgb_to_grayscale`) replicated on the three channels."""
  image = precision.to_full(image)
  gray = jnp.tensordot(image, precision.to_full(_LUMA), axes=[[-1], [0]])
  return jnp.broadcast_to(gray[..., None], image.shape)


def adjust_brightness(image: jax.Array, delta: Scalar) -> jax.Array:
  """`image + delta` (`tf.image.adjust_brightness`; SimCLR v1, BYOL)."""
  image = precision.to_full(image)
  return image + _per_image(delta, image)


def adjust_contrast(image: jax.Array, factor: Scalar) -> jax.Array:
  """`(x - mean)·factor + mean`, mean per image and channel (`tf.image`)."""
  image = precision.to_full(image)
  mean = jnp.mean(image, axis=(-3, -2), keepdims=True)
  return (image - mean) * _per_image(factor, image) + mean


def adjust_saturation(image: jax.Array, factor: Scalar) -> jax.Array:
  """Scales HSV saturation by `factor`, clipped to [0, 1] (`tf.image`)."""
  hsv = rgb_to_hsv(image)
  factor = _per_image(factor, hsv)[..., 0]
  s = jnp.clip(hsv[..., 1] * factor, 0.0, 1.0)
  return hsv_to_rgb(hsv.at[..., 1].set(s))


def adjust_hue(image: jax.Array, delta: Scalar) -> jax.Array:
  """Rotates HSV hue by `delta` (a fraction of the circle), wrapping (`tf.image`)."""
  hsv = rgb_to_hsv(image)
  delta = _per_image(delta, hsv)[..., 0]
  h = hsv[..., 0] + delta
  h = h - jnp.floor(h)
  return hsv_to_rgb(hsv.at[..., 0].set(h))


def solarize(image: jax.Array, threshold: Scalar = 0.5) -> jax.Array:
  """Inverts pixels at or above `threshold` (BYOL: `x if x < 0.5 else 1 - x`)."""
  image = precision.to_full(image)
  return jnp.where(image < _per_image(threshold, image), image, 1.0 - image)


def _blur_one(image: jax.Array, sigma: jax.Array, kernel_size: int) -> jax.Array:
  radius = int(kernel_size / 2)
  t = jnp.arange(-radius, radius + 1, dtype=precision.full_dtype())
  weights = jnp.exp(-jnp.square(t) / (2.0 * jnp.square(sigma)))
  weights = weights / jnp.sum(weights)
  channels = image.shape[-1]
  x = image[None]  # NHWC
  dn = ("NHWC", "HWIO", "NHWC")
  kernel_h = jnp.tile(weights.reshape(1, -1, 1, 1), (1, 1, 1, channels))
  kernel_v = jnp.tile(weights.reshape(-1, 1, 1, 1), (1, 1, 1, channels))
  x = lax.conv_general_dilated(x, kernel_h, (1, 1), "SAME",
                               dimension_numbers=dn,
                               feature_group_count=channels)
  x = lax.conv_general_dilated(x, kernel_v, (1, 1), "SAME",
                               dimension_numbers=dn,
                               feature_group_count=channels)
  return x[0]


def gaussian_blur(image: jax.Array, sigma: Scalar, kernel_size: int) -> jax.Array:
  """Separable Gaussian blur with zero padding, as the SimCLR/BYOL references.

  Args:
    image: `[H, W, C]` or `[B, H, W, C]` float image.
    sigma: standard deviation in pixels, scalar or per image `[B]`.
    kernel_size: the references' kernel size (image side // 10); the filter
      has `2·int(kernel_size / 2) + 1` taps.

  Returns:
    The blurred image; pixels outside the image count as 0 (borders darken,
    as with the references' 'SAME' depthwise convolution).
  """
  image = precision.to_full(image)
  sigma = precision.to_full(sigma)
  if image.ndim == 3:
    return _blur_one(image, sigma, kernel_size)
  sigma = jnp.broadcast_to(sigma, image.shape[:1])
  return jax.vmap(lambda im, s: _blur_one(im, s, kernel_size))(image, sigma)


# --------------------------------------------------------------------------
# Random crops (device side, for in-memory data of one size).
# --------------------------------------------------------------------------


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


def random_resized_crop(key: jax.Array, image: jax.Array, size: int,
                        area_range: Tuple[float, float] = (0.08, 1.0)) -> jax.Array:
  """A random-resized crop of one image (uint8 or float) as float in [0, 1]."""
  image = to_float(image)
  box = sample_crop_box(key, image.shape[0], image.shape[1],
                        area_range=area_range)
  return crop_and_resize(image, box, size)


def to_float(image: jax.Array) -> jax.Array:
  """uint8 [0, 255] → full-precision float in [0, 1]; float input is cast."""
  if image.dtype == jnp.uint8:
    return precision.to_full(image) / 255.0
  return precision.to_full(image)


# --------------------------------------------------------------------------
# Random views (device side).
# --------------------------------------------------------------------------


def color_jitter(key: jax.Array, image: jax.Array, spec: ViewSpec) -> jax.Array:
  """Brightness, contrast, saturation, hue in random order, each clipped.

  As `color_jitter_rand` of the SimCLR reference (and BYOL's): each op's
  strength is drawn uniformly, the order is a random permutation, and the
  image is clipped to [0, 1] after every op.

  Each of the four positions applies ONE parametrised op, not a switch over
  the four: under `vmap` (one order per image) a switch computes every
  branch and selects, i.e. 16 ops, 8 of them HSV round trips. Here a
  position computes `(x − m)·a + m + d` (brightness: m = 0, a = 1 or the
  factor, d = 0 or δ; contrast: m = the channel means, a = the factor) and
  one HSV round trip that scales S and shifts H (saturation: hue shift 0;
  hue: saturation factor 1), and keeps the one its op needs. Neutral
  parameters are exact identities (x·1, x + 0, clip(s·1) for s in [0, 1],
  h + 0 − ⌊h⌋ for h in [0, 1)), so each position computes the op it names,
  as `adjust_*` do, up to how XLA fuses the arithmetic (measured against
  the switch: ≤ 1e-6 in float32, 2e-15 in float64), at half the HSV work
  and a smaller compiled program.
  """
  k_order, k_b, k_c, k_s, k_h = jax.random.split(key, 5)

  def uniform(k, lo, hi):
    return jax.random.uniform(k, (), minval=lo, maxval=hi)

  b = spec.brightness
  if spec.multiplicative_brightness:
    b_scale, b_shift = uniform(k_b, max(1.0 - b, 0.0), 1.0 + b), 0.0
  else:
    b_scale, b_shift = 1.0, uniform(k_b, -b, b)
  c = uniform(k_c, max(1.0 - spec.contrast, 0.0), 1.0 + spec.contrast)
  s = uniform(k_s, max(1.0 - spec.saturation, 0.0), 1.0 + spec.saturation)
  h = uniform(k_h, -spec.hue, spec.hue)
  full = lambda v: precision.to_full(jnp.asarray(v))
  b_scale, b_shift, c, s, h = map(full, (b_scale, b_shift, c, s, h))
  one, zero = full(1.0), full(0.0)
  image = precision.to_full(image)
  order = jax.random.permutation(k_order, 4)
  for i in range(4):
    op = order[i]  # 0 brightness, 1 contrast, 2 saturation, 3 hue
    is_contrast = op == 1
    mean = jnp.where(is_contrast, jnp.mean(image, axis=(-3, -2),
                                           keepdims=True), zero)
    scale = jnp.where(is_contrast, c, jnp.where(op == 0, b_scale, one))
    shift = jnp.where(op == 0, b_shift, zero)
    affine = (image - mean) * scale + mean + shift
    hsv = rgb_to_hsv(image)
    sat = jnp.clip(hsv[..., 1] * jnp.where(op == 2, s, one), 0.0, 1.0)
    hue = hsv[..., 0] + jnp.where(op == 3, h, zero)
    hue = hue - jnp.floor(hue)
    rotated = hsv_to_rgb(jnp.stack([hue, sat, hsv[..., 2]], axis=-1))
    image = jnp.clip(jnp.where(op >= 2, rotated, affine), 0.0, 1.0)
  return image


def augment_view(key: jax.Array, image: jax.Array, spec: ViewSpec) -> jax.Array:
  """Flip, colour jitter, grayscale, blur, solarise, [RandAugment, then
  grayscale,] normalise one crop.

  Args:
    key: PRNG key of this image and view.
    image: `[H, W, 3]` crop, uint8 or float in [0, 1].
    spec: the view's settings.

  Returns:
    `[H, W, 3]` full-precision float (in [0, 1] unless `spec.normalize`).
  """
  image = to_float(image)
  keys = jax.random.split(key, 9)

  def maybe(k, prob, fn, x):
    if prob <= 0.0:
      return x
    if prob >= 1.0:
      return fn(x)
    return jnp.where(jax.random.bernoulli(k, prob), fn(x), x)

  image = maybe(keys[0], spec.flip_prob, lambda x: x[:, ::-1], image)
  image = maybe(keys[1], spec.jitter_prob,
                lambda x: color_jitter(keys[2], x, spec), image)
  if not spec.randaugment_ops:  # grey before the blur (they commute)
    image = maybe(keys[3], spec.grayscale_prob, to_grayscale, image)
  sigma = jax.random.uniform(keys[5], (), minval=spec.blur_sigma[0],
                             maxval=spec.blur_sigma[1])
  image = maybe(keys[4], spec.blur_prob,
                lambda x: gaussian_blur(x, sigma, spec.blur_kernel_size), image)
  image = maybe(keys[6], spec.solarize_prob, solarize, image)
  if spec.randaugment_ops:  # InfoMin: RandAugment, then grey
    image = randaugment.rand_augment(
        keys[7], jnp.clip(image, 0.0, 1.0), num_ops=spec.randaugment_ops,
        magnitude=spec.randaugment_magnitude,
        magnitude_std=spec.randaugment_std, prob=spec.randaugment_prob)
    image = maybe(keys[3], spec.grayscale_prob, to_grayscale, image)
  image = jnp.clip(image, 0.0, 1.0)
  return normalize_imagenet(image) if spec.normalize else image


def patch_augment(key: jax.Array, patches: jax.Array) -> jax.Array:
  """CPC v2's per-patch augmentation (Hénaff et al. 2019, §3: "colour
  dropping", with random horizontal flips): in every patch two of the
  three channels, chosen at random, are set to 0 (the normalised images'
  mean), and the patch is flipped with probability 1/2, each patch on its
  own draw. `patches` `[..., p, p, 3]`; the key covers all of them."""
  lead = patches.shape[:-3]
  keep_key, flip_key = jax.random.split(key)
  keep = jax.random.randint(keep_key, lead, 0, 3)
  mask = jax.nn.one_hot(keep, 3, dtype=patches.dtype)
  patches = patches * mask[..., None, None, :]
  flip = jax.random.bernoulli(flip_key, 0.5, lead)
  return jnp.where(flip[..., None, None, None], patches[..., :, ::-1, :],
                   patches)


def normalize_imagenet(image: jax.Array) -> jax.Array:
  """`(image − mean) / std` with the ImageNet channel statistics (BYOL)."""
  mean = precision.to_full(IMAGENET_MEAN)
  std = precision.to_full(IMAGENET_STD)
  return (image - mean) / std


def augment_batch(keys: jax.Array, images: jax.Array,
                  spec: ViewSpec) -> jax.Array:
  """`augment_view` over a batch with one key per image."""
  return jax.vmap(lambda k, im: augment_view(k, im, spec))(keys, images)


def center_resize(images: jax.Array, size: int,
                  normalize: bool = False) -> jax.Array:
  """Eval view: the whole image resized to `size`, float in [0, 1] (or
  ImageNet-normalised when the training views were, `normalize=True`)."""
  images = to_float(images)
  if images.shape[-3:-1] != (size, size):
    shape = images.shape[:-3] + (size, size, images.shape[-1])
    images = jax.image.resize(images, shape, method="linear", antialias=True)
  return normalize_imagenet(images) if normalize else images
