"""Tests for reduced-resolution JPEG decoding of multi-crop views
(`jaxssl.data.crops`: `crop_ratios`, `decode_jpeg_at`, `scale_boxes`,
`crop_views(reduced_decode=True)`).

The images are written here: 400×300 JPEGs (quality 95) of smooth colour
waves with a few flat ellipses and rectangles (sharp edges), slightly
blurred as a camera's optics would. Every test takes a few seconds at most.
"""

import os

import numpy as np
from PIL import Image, ImageDraw, ImageFilter
import pytest

import image_bytes
from jaxssl import view_presets
from jaxssl.data import crops
from jaxssl.data import host_sources as hs
from jaxssl.data import input_pipeline as ip

_H, _W = 300, 400


@pytest.fixture(scope="module")
def tf():
  return hs.tf_module()


_encode = image_bytes.encode


def _scene(k: int, height: int = _H, width: int = _W) -> Image.Image:
  """Smooth colour waves, four flat shapes, a 1 px Gaussian blur."""
  rng = np.random.default_rng(k)
  yy, xx = np.mgrid[0:height, 0:width].astype(np.float32)
  freq, phase = rng.uniform(0.2, 1.0, 3), rng.uniform(0.0, 6.0, 3)
  waves = np.stack([127 + 100 * np.sin(f * xx / 40 + p) * np.cos(f * yy / 55)
                    for f, p in zip(freq, phase)], axis=-1)
  image = Image.fromarray(np.clip(waves, 0, 255).astype(np.uint8))
  draw = ImageDraw.Draw(image)
  for _ in range(4):
    x, y = int(rng.integers(0, width - 100)), int(rng.integers(0, height - 100))
    box = [x, y, x + int(rng.integers(30, 100)), y + int(rng.integers(30, 100))]
    fill = tuple(int(c) for c in rng.integers(0, 256, 3))
    (draw.ellipse if rng.random() < 0.5 else draw.rectangle)(box, fill=fill)
  return image.filter(ImageFilter.GaussianBlur(1.0))


@pytest.fixture(scope="module")
def jpegs():
  return [_encode(_scene(k), "JPEG", quality=95) for k in range(4)]


def _views(tf, data: bytes, specs, reduced: bool, salt: int = 0):
  seeds = [tf.constant([salt, v], tf.int64) for v in range(len(specs))]
  return [v.numpy() for v in crops.crop_views(
      tf, tf.constant(data), specs, seeds, reduced_decode=reduced)]


def _ratio_of_image(tf, data: bytes, specs, salt: int = 0) -> int:
  """The ratio `crop_views` decodes at: the smallest any crop allows."""
  shape = tf.concat([tf.image.extract_jpeg_shape(data)[:2], [3]], axis=0)
  ratios = [int(crops.crop_ratios(
      tf, *crops.sample_box(tf, shape, spec, tf.constant([salt, v], tf.int64)
                            )[2:], spec.size))
            for v, spec in enumerate(specs)]
  return min(ratios)


def test_crop_ratios_rule(tf):
  """The largest r in {1, 2, 4, 8} with min(h, w) >= r · size."""
  cases = [  # (h, w, size, r)
      (95, 300, 96, 1), (191, 500, 96, 1), (192, 192, 96, 2),
      (500, 192, 96, 2), (383, 383, 96, 2), (384, 390, 96, 4),
      (767, 800, 96, 4), (768, 768, 96, 8), (5000, 4000, 96, 8),
      (447, 447, 224, 1), (448, 448, 224, 2), (300, 400, 24, 8),
      (1, 1, 1, 1), (8, 8, 1, 8)]
  h, w, size, expected = (np.array(c, np.int32) for c in zip(*cases))
  got = crops.crop_ratios(tf, tf.constant(h), tf.constant(w),
                          tf.constant(size)).numpy()
  np.testing.assert_array_equal(got, expected)


@pytest.mark.parametrize("mode", ["RGB", "L", "CMYK"])
def test_decode_jpeg_at_scaled_shape(tf, mode):
  """libjpeg's 1/r decode is ceil(dim / r) a side, RGB for every colour
  space; at r = 1 it is exactly `decode_rgb`'s (`decode_image`'s) decode."""
  image = _scene(3, 299, 401).convert(mode)
  data = tf.constant(_encode(image, "JPEG", quality=95))
  for r in crops.RATIOS:
    out = crops.decode_jpeg_at(tf, data, tf.constant(r)).numpy()
    assert out.shape == (-(-299 // r), -(-401 // r), 3), (mode, r)
    if r == 1:
      np.testing.assert_array_equal(out, ip.decode_rgb(tf, data).numpy())


def test_scale_boxes(tf):
  """Edges e → round(e / r) (halves up), inside the image, ≥ 1 pixel."""
  boxes = tf.constant([[3, 5, 10, 9],      # edges 1.5, 2.5, 6.5, 7
                       [290, 390, 11, 11],  # to the last row and column
                       [0, 0, 3, 3]])       # smaller than a scaled pixel
  np.testing.assert_array_equal(
      crops.scale_boxes(tf, boxes, tf.constant(1), [301, 401]).numpy(),
      boxes.numpy())
  np.testing.assert_array_equal(
      crops.scale_boxes(tf, boxes, tf.constant(2), [151, 201]).numpy(),
      [[2, 3, 5, 4], [145, 195, 6, 6], [0, 0, 2, 2]])
  np.testing.assert_array_equal(
      crops.scale_boxes(tf, boxes, tf.constant(8), [38, 51]).numpy(),
      [[0, 1, 2, 1], [36, 49, 2, 1], [0, 0, 1, 1]])


def test_header_shape_gives_the_same_boxes(tf, jpegs):
  """Boxes are drawn from the header's shape: the decoded image's shape, so
  the same boxes for the same seeds (SimCLR and BYOL samplers)."""
  for data in jpegs:
    header = tf.concat([tf.image.extract_jpeg_shape(data)[:2], [3]], axis=0)
    decoded = tf.shape(ip.decode_rgb(tf, tf.constant(data)))
    np.testing.assert_array_equal(header.numpy(), decoded.numpy())
    for mode in ("simclr", "byol"):
      spec = view_presets.ViewSpec(size=32, crop_mode=mode,
                                   crop_area=(0.05, 0.4))
      seed = tf.constant([1, 2], tf.int64)
      assert ([int(v) for v in crops.sample_box(tf, header, spec, seed)]
              == [int(v) for v in crops.sample_box(tf, decoded, spec, seed)])


# Output size → the DCT ratio of every crop of area 0.6–0.9 of a 400×300
# image (its shorter side is 232–329 px), and the mean absolute difference
# (grey levels of 255) allowed between reduced and full-decode crops: over a
# layout's 16 crops, and for any one crop. Measured on these images: r = 2,
# 1.00 (any crop ≤ 1.53); r = 4, 1.75 (≤ 2.20); r = 8, 2.92 (≤ 4.13). The
# full path's bicubic resize has no anti-aliasing, so it aliases more the
# more it downsamples, where the 1/r decode (a low-pass) does not: that,
# more than the rounding of the boxes, is the difference.
_REDUCED_CASES = {96: (2, 1.5, 2.5), 48: (4, 2.5, 3.5), 24: (8, 4.5, 7.0)}


@pytest.mark.parametrize("size", sorted(_REDUCED_CASES))
def test_reduced_crops_close_to_full_decode(tf, jpegs, size):
  ratio, mean_tol, crop_tol = _REDUCED_CASES[size]
  specs = (view_presets.ViewSpec(size=size, crop_area=(0.6, 0.9),
                                 crop_min_covered=0.0),) * 3 + (
      view_presets.ViewSpec(size=size, crop_area=(0.6, 0.9),
                            crop_mode="byol"),)
  diffs = []
  for k, data in enumerate(jpegs):
    assert _ratio_of_image(tf, data, specs, salt=k) == ratio
    full = _views(tf, data, specs, reduced=False, salt=k)
    reduced = _views(tf, data, specs, reduced=True, salt=k)
    for a, b in zip(full, reduced):
      assert a.shape == b.shape == (size, size, 3) and b.dtype == np.uint8
      diffs.append(np.abs(a.astype(np.int32) - b).mean())
  assert np.mean(diffs) < mean_tol, diffs
  assert np.max(diffs) < crop_tol, diffs
  assert np.mean(diffs) > 0.0  # the reduced path was taken


def test_full_resolution_crop_keeps_every_crop_bit_identical(tf, jpegs):
  """A 224 px crop of a 400×300 image is not downsampled by 2, so the image
  is decoded at r = 1 and all its crops (the 96 px ones too, which alone
  would allow r = 2) equal the plain path's bit for bit."""
  specs = (view_presets.ViewSpec(size=224, crop_area=(0.4, 1.0)),
           view_presets.ViewSpec(size=96, crop_area=(0.6, 0.9),
                                 crop_min_covered=0.0))
  for k, data in enumerate(jpegs):
    assert _ratio_of_image(tf, data, specs, salt=k) == 1
    assert _ratio_of_image(tf, data, specs[1:], salt=k) == 2
    for a, b in zip(_views(tf, data, specs, False, k),
                    _views(tf, data, specs, True, k)):
      np.testing.assert_array_equal(a, b)


def test_non_jpeg_takes_the_plain_path(tf):
  """PNGs (and gray JPEGs at r = 1) are decoded in full: bit-identical."""
  specs = (view_presets.ViewSpec(size=48, crop_area=(0.6, 0.9),
                                 crop_min_covered=0.0),) * 2
  png = _encode(_scene(5), "PNG")
  for a, b in zip(_views(tf, png, specs, False), _views(tf, png, specs, True)):
    np.testing.assert_array_equal(a, b)
  gray = _encode(_scene(6).convert("L"), "JPEG", quality=95)
  wide = (view_presets.ViewSpec(size=224, crop_area=(0.4, 1.0)),)
  for a, b in zip(_views(tf, gray, wide, False), _views(tf, gray, wide, True)):
    np.testing.assert_array_equal(a, b)


def test_pretrain_dataset_reduced_decode_option(tf, jpegs, tmp_path):
  """`pretrain_dataset(reduced_decode=...)`: same order, labels and shapes;
  crops close (r = 2 here) and identical where a crop needs r = 1."""
  for k, data in enumerate(jpegs):
    with open(os.path.join(tmp_path, f"{k}.jpg"), "wb") as f:
      f.write(data)
  source = hs.files_source(str(tmp_path), None, process_index=0,
                           process_count=1)
  local = view_presets.ViewSpec(size=96, crop_area=(0.6, 0.9),
                                crop_min_covered=0.0)
  wide = view_presets.ViewSpec(size=224, crop_area=(0.4, 1.0))
  for specs, exact in (((local, local), False), ((wide, local), True)):
    batches = {}
    for reduced in (False, True):
      ds = ip.pretrain_dataset(source, specs, batch_size=4, seed=3,
                               reduced_decode=reduced)
      batches[reduced] = next(iter(ds.as_numpy_iterator()))
    np.testing.assert_array_equal(batches[False]["index"],
                                  batches[True]["index"])
    for a, b in zip(batches[False]["views"], batches[True]["views"]):
      assert a.shape == b.shape
      if exact:
        np.testing.assert_array_equal(a, b)
      else:
        assert 0.0 < np.abs(a.astype(np.int32) - b).mean() < 1.5
