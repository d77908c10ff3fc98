"""Decoding and crops on the host (TensorFlow ops): one image's views.

`crop_views` decodes an image once and cuts every view's random-resized
crop (`random_crop_resize`: a SimCLR or BYOL box, bicubic resize, uint8);
`center_crop_resize` makes the eval view.

Reduced-resolution JPEG decoding. libjpeg can decode a JPEG at 1/2, 1/4 or
1/8 of its size by inverse-transforming only the low-frequency DCT
coefficients of each 8×8 block (DCT scaling, `tf.io.decode_jpeg(...,
ratio=r)`; the result is ceil(H / r) × ceil(W / r)). A crop that will be
resized to `size` can be cut from the 1/r image when it spans at least
r·size pixels along both axes: the resize still downsamples it, from a
source libjpeg has already low-passed. This saves the IDCT, upsampling and
colour conversion of the skipped coefficients, not the entropy decoding: on
ImageNet photos (~470×395) a 1/2-, 1/4- and 1/8-scale decode take 0.89,
0.80 and 0.74 of a full decode's CPU time. So `crop_views` decodes each JPEG
once, at the largest ratio that every crop of the image allows: a second
decode at another ratio for some crops costs more than their smaller
resizes save, and `tf.image.decode_and_crop_jpeg` per crop repeats the
entropy decoding per crop (BENCHMARKS.md, host input pipeline).

Functions take the TensorFlow module as `tf` (imported lazily by
`host_sources.tf_module`) and work in-graph.
"""

from typing import Sequence

import numpy as np

from jaxssl import view_presets


def decode_rgb(tf, image_bytes):
  """JPEG/PNG/GIF/BMP bytes → uint8 `[H, W, 3]` (gray, CMYK, alpha → RGB)."""
  image = tf.io.decode_image(image_bytes, channels=3, expand_animations=False)
  image.set_shape([None, None, 3])
  return image


def sample_crop_simclr(tf, shape, seed, area_range=(0.08, 1.0),
                       aspect_range=(3 / 4, 4 / 3), min_covered=0.1):
  """SimCLR reference crop: up to 100 attempts, the whole image as fallback.

  `tf.image.sample_distorted_bounding_box` with `min_object_covered=0.1`
  (so areas below 10 % are rejected too), as in `data_util.py`; multi-crop
  local views pass `min_covered=0` to reach areas below 10 %.
  """
  begin, size, _ = tf.image.stateless_sample_distorted_bounding_box(
      shape, bounding_boxes=tf.constant([[[0.0, 0.0, 1.0, 1.0]]]), seed=seed,
      min_object_covered=min_covered,
      aspect_ratio_range=aspect_range,
      area_range=area_range, max_attempts=100,
      use_image_if_no_bounding_boxes=True)
  return begin[0], begin[1], size[0], size[1]


def sample_crop_byol(tf, shape, seed, area_range=(0.08, 1.0),
                     aspect_range=(3 / 4, 4 / 3), min_covered=None):
  """BYOL-style crop: one draw of area and log-aspect, clamped to the image.

  (`min_covered` is accepted for a common signature and unused.)
  """
  del min_covered
  height = tf.cast(shape[0], tf.float32)
  width = tf.cast(shape[1], tf.float32)
  u = tf.random.stateless_uniform([4], seed=seed)
  area = (area_range[0] + u[0] * (area_range[1] - area_range[0])) * height * width
  log_lo, log_hi = np.log(aspect_range[0]), np.log(aspect_range[1])
  ratio = tf.exp(log_lo + u[1] * (log_hi - log_lo))
  w = tf.clip_by_value(tf.round(tf.sqrt(area * ratio)), 1.0, width)
  h = tf.clip_by_value(tf.round(tf.sqrt(area / ratio)), 1.0, height)
  y = tf.floor(u[2] * (height - h + 1.0))
  x = tf.floor(u[3] * (width - w + 1.0))
  return tuple(tf.cast(v, tf.int32) for v in (y, x, h, w))


CROP_SAMPLERS = {"simclr": sample_crop_simclr, "byol": sample_crop_byol}


def resize_uint8(tf, image, size: int):
  """Bicubic resize (TF2 `tf.image.resize`: half-pixel centres), uint8 out."""
  out = tf.image.resize(image, [size, size], method="bicubic")
  return tf.cast(tf.clip_by_value(tf.round(out), 0.0, 255.0), tf.uint8)


def sample_box(tf, shape, spec: view_presets.ViewSpec, seed):
  """One view's random crop box `(y, x, h, w)` in an image of `shape`."""
  if spec.crop_mode not in CROP_SAMPLERS:
    raise ValueError(f"crop_mode {spec.crop_mode!r} is not one of "
                     f"{sorted(CROP_SAMPLERS)}")
  return CROP_SAMPLERS[spec.crop_mode](
      tf, shape, seed, area_range=spec.crop_area,
      min_covered=spec.crop_min_covered)


def random_crop_resize(tf, image, spec: view_presets.ViewSpec, seed):
  """One view's random-resized crop of a decoded image, `[size, size, 3]`."""
  y, x, h, w = sample_box(tf, tf.shape(image), spec, seed)
  crop = tf.image.crop_to_bounding_box(image, y, x, h, w)
  return resize_uint8(tf, crop, spec.size)


def crop_views(tf, image_bytes, specs: Sequence[view_presets.ViewSpec],
               seeds, *, reduced_decode: bool = False):
  """Decodes one image once and cuts every view's crop (`seeds[v]` for
  `specs[v]`): a tuple of uint8 `[size_v, size_v, 3]`.

  With `reduced_decode`, a JPEG's crop boxes are drawn from its header's
  shape (`tf.image.extract_jpeg_shape`, no decode; the same boxes as from
  the decoded image) and the JPEG is decoded at the largest DCT scale 1/r
  that every box allows (`crop_ratios`), each box mapped onto the scaled
  image (`scale_boxes`) before the same bicubic resize. When a crop is not
  downsampled by 2 or more (e.g. a 224 px crop of an ImageNet-sized image),
  r is 1 and every crop is bit-identical to the plain path's. Other formats
  (PNG, GIF, BMP) always take the plain path: a full decode.

  Off by default: at r ≥ 2 the crops are the low-passed ones libjpeg's
  scaled decode gives, not the aliased ones of the full path (whose bicubic
  resize, like the SimCLR reference's, has no anti-aliasing): 1–3 grey
  levels apart (mean absolute difference) on smooth images, about 10 on
  ImageNet photos; and on ImageNet-sized images with 224 px global crops r
  is almost always 1, so it saves nothing there (BENCHMARKS.md).
  """
  def plain():
    image = decode_rgb(tf, image_bytes)
    return tuple(random_crop_resize(tf, image, spec, seed)
                 for spec, seed in zip(specs, seeds))

  def jpeg():
    height_width = tf.image.extract_jpeg_shape(image_bytes)[:2]
    shape = tf.concat([height_width, [3]], axis=0)
    boxes = tf.stack([tf.stack(sample_box(tf, shape, spec, seed))
                      for spec, seed in zip(specs, seeds)])
    sizes = tf.constant([spec.size for spec in specs], tf.int32)
    ratio = tf.reduce_min(crop_ratios(tf, boxes[:, 2], boxes[:, 3], sizes))
    image = decode_jpeg_at(tf, image_bytes, ratio)
    boxes = scale_boxes(tf, boxes, ratio, tf.shape(image))
    begins = tf.pad(boxes[:, :2], [[0, 0], [0, 1]])  # (y, x, 0)
    extents = tf.pad(boxes[:, 2:], [[0, 0], [0, 1]], constant_values=3)
    return tuple(
        resize_uint8(tf, tf.slice(image, begins[v], extents[v]), spec.size)
        for v, spec in enumerate(specs))

  if not reduced_decode:
    return plain()
  return tf.cond(tf.io.is_jpeg(image_bytes), jpeg, plain)


def center_crop_resize(tf, image, size: int, proportion: float = 0.875):
  """Eval view: centre crop of `proportion` of the shorter side, resized.

  The standard ImageNet evaluation (256 → 224 is a proportion of 0.875), as
  the SimCLR reference's `center_crop`: side `round(0.875·min(h, w))`,
  offsets `(h − side + 1) // 2`, bicubic resize (TF2 half-pixel centres).

  Skipped (plain resize) for images of 32 px or less, as SimCLR does on
  CIFAR-10.
  """
  if size > 32:
    shape = tf.shape(image)
    side = tf.cast(tf.round(proportion * tf.cast(tf.minimum(shape[0], shape[1]),
                                                 tf.float32)), tf.int32)
    # The SimCLR reference's offsets: an odd margin puts the extra pixel
    # before the crop.
    y = (shape[0] - side + 1) // 2
    x = (shape[1] - side + 1) // 2
    image = tf.image.crop_to_bounding_box(image, y, x, side, side)
  shape = tf.shape(image)
  return tf.cond(
      tf.logical_and(tf.equal(shape[0], size), tf.equal(shape[1], size)),
      lambda: image, lambda: resize_uint8(tf, image, size))


# --------------------------------------------------------------------------
# Reduced-resolution JPEG decoding.
# --------------------------------------------------------------------------


RATIOS = (1, 2, 4, 8)  # libjpeg's scale denominators that TF exposes


def crop_ratios(tf, heights, widths, sizes):
  """The DCT scale each crop allows: the largest r in `RATIOS` with
  min(height, width) >= r · size, i.e. the crop is downsampled by at least r
  along both axes (int32, elementwise; crops narrower than `size` get 1)."""
  side = tf.minimum(heights, widths)
  ratio = tf.ones_like(side)
  for r in RATIOS[1:]:
    ratio = tf.where(side >= r * sizes, r, ratio)
  return ratio


def decode_jpeg_at(tf, image_bytes, ratio):
  """JPEG bytes → uint8 `[ceil(H / ratio), ceil(W / ratio), 3]`.

  `ratio` (a tensor, one of `RATIOS`) picks one of four decodes: it is a
  static attribute of `DecodeJpeg`, and `tf.switch_case` runs only the
  branch taken. Ratio 1 is `tf.io.decode_jpeg`'s plain decode, which gives
  the same pixels as `tf.io.decode_image` on JPEGs (both are TF's libjpeg
  decode with its default flags).
  """
  branch = tf.reduce_sum(tf.cast(ratio >= tf.constant(RATIOS[1:]), tf.int32))
  image = tf.switch_case(branch, [
      lambda r=r: tf.io.decode_jpeg(image_bytes, channels=3, ratio=r)
      for r in RATIOS])
  image.set_shape([None, None, 3])
  return image


def scale_boxes(tf, boxes, ratio, scaled_shape):
  """Full-resolution crop boxes `[V, 4]` (y, x, h, w) → boxes on the image
  decoded at 1 / `ratio` (`scaled_shape`: its `[H', W', ...]`).

  Pixel j of the scaled image covers full-resolution pixels [j·r, (j+1)·r),
  so a box edge at e maps to e / r, rounded to the nearest whole pixel and
  kept inside the image with at least one pixel: an edge moves by at most
  r / 2 full-resolution pixels, at most half an output pixel for a crop
  downsampled by r. The identity at r = 1.
  """
  y, x, h, w = tf.unstack(boxes, axis=1)
  half = ratio // 2
  limit_y, limit_x = scaled_shape[0], scaled_shape[1]
  top = tf.minimum((y + half) // ratio, limit_y - 1)
  left = tf.minimum((x + half) // ratio, limit_x - 1)
  bottom = tf.clip_by_value((y + h + half) // ratio, top + 1, limit_y)
  right = tf.clip_by_value((x + w + half) // ratio, left + 1, limit_x)
  return tf.stack([top, left, bottom - top, right - left], axis=1)
