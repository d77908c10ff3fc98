"""Tests for `jaxssl.augment` against independent float64 numpy references.

The deterministic colour and blur ops are compared with references written
from the tf.image / SimCLR / BYOL semantics in plain numpy float64 (HSV through
Python's `colorsys`, elementwise), so nothing here reuses library helpers. Every
op is called through `jax.jit` with its scalar parameter traced (kernel sizes
are static); the randomized view functions are tested for invariants only.

Compilations are kept few: all colour tests share one image shape, all blur
tests one 16x16 shape, and jitted wrappers are cached per function.
"""

import colorsys
import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import mesh_runs
from jaxssl import augment
from jaxssl import view_presets

_ATOL = 1e-5
_ATOL_HS = 1e-4  # hue / saturation paths
_RANGE_SLACK = 1e-6  # float32 rounding allowed around [0, 1]
_H, _W = 9, 11
_B = 3

# Edge-case pixels: black (V = 0), whites and grays (S = 0, hue undefined),
# saturated primaries and secondaries, ties of the max channel, hues close to
# the 0/1 wrap, very dark and nearly gray colours.
_EDGE_PIXELS = np.array([
    [0.0, 0.0, 0.0],
    [1.0, 1.0, 1.0],
    [0.5, 0.5, 0.5],
    [0.2, 0.2, 0.2],
    [1.0, 0.0, 0.0],
    [0.0, 1.0, 0.0],
    [0.0, 0.0, 1.0],
    [1.0, 1.0, 0.0],
    [0.0, 1.0, 1.0],
    [1.0, 0.0, 1.0],
    [1.0, 0.0, 0.5],
    [0.5, 0.0, 1.0],
    [1.0, 1.0, 0.5],
    [0.3, 0.7, 0.7],
    [0.7, 0.3, 0.7],
    [1.0, 0.0, 0.001],
    [0.9, 0.1, 0.2],
    [0.01, 0.0, 0.02],
    [0.6, 0.6, 0.59],
    [0.25, 0.75, 0.5],
], np.float32)


# ----------------------------------------------------------------------------
# Helpers
# ----------------------------------------------------------------------------


def _random_image(seed, shape=(_H, _W, 3), edge=True):
  """Uniform float32 image; with `edge`, the first pixels are `_EDGE_PIXELS`."""
  img = np.random.default_rng(seed).uniform(size=shape).astype(np.float32)
  if edge:
    flat = img.reshape(-1, 3)
    flat[:len(_EDGE_PIXELS)] = _EDGE_PIXELS
  return img


def _batch(seed):
  """`[B, H, W, 3]` batch, each image with the edge pixels."""
  return np.stack([_random_image(seed + i) for i in range(_B)])


@functools.lru_cache(maxsize=None)
def _jit(name, static_argnums=()):
  """Jitted `augment.<name>`, cached so each op compiles once per shape."""
  return jax.jit(getattr(augment, name), static_argnums=static_argnums)


def _f32(x):
  """A float32 device scalar or array (traced when passed to a jit)."""
  return jnp.asarray(x, jnp.float32)


def _check_out(out, shape):
  """Asserts shape and float32 dtype; returns the output as float64 numpy."""
  assert out.shape == tuple(shape)
  assert out.dtype == jnp.float32
  return np.asarray(out, np.float64)


def _assert_in_unit_range(x):
  assert np.all(np.isfinite(x))
  assert x.min() >= -_RANGE_SLACK, x.min()
  assert x.max() <= 1.0 + _RANGE_SLACK, x.max()


def _hue_dist(a, b):
  """Circular distance of hues in [0, 1)."""
  d = np.abs(np.asarray(a, np.float64) - np.asarray(b, np.float64)) % 1.0
  return np.minimum(d, 1.0 - d)


# ----------------------------------------------------------------------------
# float64 numpy references
# ----------------------------------------------------------------------------


def _np_rgb_to_hsv(img):
  flat = np.asarray(img, np.float64).reshape(-1, 3)
  out = np.array([colorsys.rgb_to_hsv(*p) for p in flat])
  return out.reshape(np.shape(img))


def _np_hsv_to_rgb(hsv):
  flat = np.asarray(hsv, np.float64).reshape(-1, 3)
  out = np.array([colorsys.hsv_to_rgb(*p) for p in flat])
  return out.reshape(np.shape(hsv))


def _np_grayscale(img):
  img = np.asarray(img, np.float64)
  gray = img @ np.array([0.2989, 0.5870, 0.1140])
  return np.repeat(gray[..., None], 3, axis=-1)


def _np_brightness(img, delta):
  return np.asarray(img, np.float64) + delta


def _np_contrast(img, factor):
  img = np.asarray(img, np.float64)
  mean = img.mean(axis=(0, 1), keepdims=True)
  return (img - mean) * factor + mean


def _np_saturation(img, factor):
  hsv = _np_rgb_to_hsv(img)
  hsv[..., 1] = np.clip(hsv[..., 1] * factor, 0.0, 1.0)
  return _np_hsv_to_rgb(hsv)


def _np_hue(img, delta):
  hsv = _np_rgb_to_hsv(img)
  hsv[..., 0] = np.mod(hsv[..., 0] + delta, 1.0)
  return _np_hsv_to_rgb(hsv)


def _np_solarize(img, threshold=0.5):
  # The op sees the threshold as float32, so compare against that value.
  threshold = np.float64(np.float32(threshold))
  img = np.asarray(img, np.float64)
  return np.where(img < threshold, img, 1.0 - img)


def _np_gaussian_blur(img, sigma, kernel_size):
  """Separable Gaussian blur with zero ('SAME') padding, as SimCLR / BYOL."""
  img = np.asarray(img, np.float64)
  radius = int(kernel_size / 2)
  t = np.arange(-radius, radius + 1, dtype=np.float64)
  w = np.exp(-t**2 / (2.0 * float(sigma)**2))
  w /= w.sum()
  h, wd, _ = img.shape
  pad = np.pad(img, ((0, 0), (radius, radius), (0, 0)))
  out = sum(w[i] * pad[:, i:i + wd] for i in range(2 * radius + 1))
  pad = np.pad(out, ((radius, radius), (0, 0), (0, 0)))
  return sum(w[i] * pad[i:i + h] for i in range(2 * radius + 1))


# name -> (reference, tolerance, parameters used in the comparison tests)
_PARAM_OPS = {
    "adjust_brightness": (_np_brightness, _ATOL, (-0.4, -0.1, 0.0, 0.25, 0.6)),
    "adjust_contrast": (_np_contrast, _ATOL, (0.0, 0.5, 1.0, 1.7, 2.0)),
    "adjust_saturation": (_np_saturation, _ATOL_HS, (0.0, 0.3, 1.0, 1.6, 2.0)),
    "adjust_hue": (_np_hue, _ATOL_HS,
                   (-0.5, -0.3, -0.05, 0.0, 0.1, 0.37, 0.5)),
    "solarize": (_np_solarize, _ATOL, (0.0, 0.25, 0.5, 0.8, 1.0)),
}

_PARAM_CASES = [(name, p) for name, (_, _, ps) in _PARAM_OPS.items()
                for p in ps]


# ----------------------------------------------------------------------------
# Colour space
# ----------------------------------------------------------------------------


@pytest.mark.parametrize("seed", [0, 1])
def test_rgb_to_hsv_matches_colorsys(seed):
  """rgb_to_hsv equals colorsys (hue circularly), incl. gray/black/primaries."""
  img = _random_image(seed)
  got = _check_out(_jit("rgb_to_hsv")(img), img.shape)
  want = _np_rgb_to_hsv(img)
  np.testing.assert_array_less(_hue_dist(got[..., 0], want[..., 0]), _ATOL_HS)
  np.testing.assert_allclose(got[..., 1], want[..., 1], atol=_ATOL_HS, rtol=0)
  np.testing.assert_allclose(got[..., 2], want[..., 2], atol=_ATOL, rtol=0)


def test_rgb_to_hsv_edge_pixels_exact_values():
  """Gray and black pixels have H = S = 0; primaries have hues k/6."""
  img = _EDGE_PIXELS.reshape(4, 5, 3)
  got = _check_out(_jit("rgb_to_hsv")(img), img.shape).reshape(-1, 3)
  # black, white, two grays: hue 0 and saturation 0, value = level.
  np.testing.assert_allclose(got[:4, :2], 0.0, atol=1e-7)
  np.testing.assert_allclose(got[:4, 2], [0.0, 1.0, 0.5, 0.2], atol=1e-7)
  # red, green, blue, yellow, cyan, magenta.
  np.testing.assert_allclose(got[4:10, 0], [0, 2 / 6, 4 / 6, 1 / 6, 3 / 6,
                                            5 / 6], atol=1e-6)
  np.testing.assert_allclose(got[4:10, 1:], 1.0, atol=1e-7)


def test_rgb_to_hsv_range():
  """Hue, saturation and value lie in [0, 1] for images in [0, 1]."""
  got = _check_out(_jit("rgb_to_hsv")(_random_image(3)), (_H, _W, 3))
  _assert_in_unit_range(got)


@pytest.mark.parametrize("seed", [0, 1])
def test_hsv_to_rgb_matches_colorsys(seed):
  """hsv_to_rgb equals colorsys on random HSV, S = 0, V = 0, H = k/6 and 1."""
  hsv = _random_image(seed, edge=False)
  flat = hsv.reshape(-1, 3)
  flat[:7, 0] = np.arange(7) / 6.0 * (6 / 7)  # sectors
  flat[7:13, 0] = np.arange(6) / 6.0  # sector boundaries exactly
  flat[13:16, 1] = 0.0  # gray
  flat[16:19, 2] = 0.0  # black
  flat[19, :] = [0.999999, 1.0, 1.0]  # just below the wrap
  flat[20, :] = [1.0, 0.7, 0.9]  # H = 1 is the same colour as H = 0
  hsv = hsv.astype(np.float32)
  got = _check_out(_jit("hsv_to_rgb")(hsv), hsv.shape)
  np.testing.assert_allclose(got, _np_hsv_to_rgb(hsv), atol=_ATOL, rtol=0)


@pytest.mark.parametrize("seed", [0, 1])
def test_hsv_round_trip(seed):
  """hsv_to_rgb(rgb_to_hsv(x)) == x, incl. gray, black and primary pixels."""
  img = _random_image(seed)
  rt = jax.jit(lambda x: augment.hsv_to_rgb(augment.rgb_to_hsv(x)))(img)
  got = _check_out(rt, img.shape)
  np.testing.assert_allclose(got, img, atol=_ATOL, rtol=0)


# ----------------------------------------------------------------------------
# Colour ops
# ----------------------------------------------------------------------------


@pytest.mark.parametrize("seed", [0, 1])
def test_to_grayscale_matches_reference(seed):
  """Grayscale is the tf luma replicated on 3 channels and stays in [0, 1]."""
  img = _random_image(seed)
  got = _check_out(_jit("to_grayscale")(img), img.shape)
  np.testing.assert_allclose(got, _np_grayscale(img), atol=_ATOL, rtol=0)
  np.testing.assert_array_equal(got[..., 0], got[..., 1])
  np.testing.assert_array_equal(got[..., 0], got[..., 2])
  _assert_in_unit_range(got)


@pytest.mark.parametrize("name,param", _PARAM_CASES)
def test_param_op_matches_reference(name, param):
  """Each colour op, jitted with a traced parameter, equals its reference."""
  ref, atol, _ = _PARAM_OPS[name]
  img = _random_image(7)
  if name == "solarize":
    # values exactly at the thresholds used (x == threshold -> 1 - x).
    img.reshape(-1, 3)[-1] = [0.25, 0.5, 0.8]
  got = _check_out(_jit(name)(img, _f32(param)), img.shape)
  np.testing.assert_allclose(got, ref(img, param), atol=atol, rtol=0)


def test_adjust_brightness_is_additive_without_clipping():
  """adjust_brightness adds delta and does not clip outside [0, 1]."""
  img = np.full((_H, _W, 3), 0.9, np.float32)
  got = _check_out(_jit("adjust_brightness")(img, _f32(0.3)), img.shape)
  np.testing.assert_allclose(got, 1.2, atol=_ATOL)
  got = _check_out(_jit("adjust_brightness")(1 - img, _f32(-0.3)), img.shape)
  np.testing.assert_allclose(got, -0.2, atol=_ATOL)


def test_adjust_contrast_extremes():
  """Contrast 0 gives the per-channel mean; contrast 2 is unclipped."""
  img = _random_image(11)
  got0 = _check_out(_jit("adjust_contrast")(img, _f32(0.0)), img.shape)
  mean = img.astype(np.float64).mean(axis=(0, 1))
  np.testing.assert_allclose(got0, np.broadcast_to(mean, img.shape),
                             atol=_ATOL)
  got2 = _check_out(_jit("adjust_contrast")(img, _f32(2.0)), img.shape)
  assert got2.min() < 0.0 and got2.max() > 1.0  # no clipping
  np.testing.assert_allclose(got2.mean(axis=(0, 1)), mean, atol=_ATOL)


def test_adjust_saturation_extremes():
  """Saturation 0 gives gray pixels R = G = B = V; gray pixels stay gray."""
  img = _random_image(12)
  got0 = _check_out(_jit("adjust_saturation")(img, _f32(0.0)), img.shape)
  np.testing.assert_allclose(got0, np.broadcast_to(img.max(-1, keepdims=True),
                                                   img.shape), atol=_ATOL)
  got2 = _check_out(_jit("adjust_saturation")(img, _f32(2.0)), img.shape)
  flat_in, flat_out = img.reshape(-1, 3), got2.reshape(-1, 3)
  np.testing.assert_allclose(flat_out[:4], flat_in[:4], atol=_ATOL)  # grays
  # saturated colours are unchanged by more saturation (S clipped at 1).
  np.testing.assert_allclose(flat_out[4:12], flat_in[4:12], atol=_ATOL)


@pytest.mark.parametrize("delta", [-0.5, -1 / 6, 1 / 3, 0.5])
def test_adjust_hue_rotates_primaries(delta):
  """Hue shifts wrap mod 1: primaries map to the primary k/6 further on."""
  img = _EDGE_PIXELS.reshape(4, 5, 3)
  got = _check_out(_jit("adjust_hue")(img, _f32(delta)), img.shape)
  got = got.reshape(-1, 3)
  np.testing.assert_allclose(got[:4], _EDGE_PIXELS[:4], atol=_ATOL)  # grays
  # red, yellow, green, cyan, blue, magenta in hue order (k/6).
  wheel = _EDGE_PIXELS[[4, 7, 5, 8, 6, 9]]
  idx = {4: 0, 7: 1, 5: 2, 8: 3, 6: 4, 9: 5}
  shift = int(round(delta * 6))
  for row, k in idx.items():
    np.testing.assert_allclose(got[row], wheel[(k + shift) % 6], atol=_ATOL_HS)


@pytest.mark.parametrize("name,param", [
    ("adjust_saturation", 0.0), ("adjust_saturation", 2.0),
    ("adjust_hue", -0.5), ("adjust_hue", 0.45),
    ("solarize", 0.5), ("solarize", 0.1),
])
def test_param_op_stays_in_unit_range(name, param):
  """Saturation, hue and solarize map [0, 1] images into [0, 1]."""
  img = _random_image(13)
  got = _check_out(_jit(name)(img, _f32(param)), img.shape)
  _assert_in_unit_range(got)


def test_solarize_default_threshold():
  """solarize(x) uses threshold 0.5 by default: x < 0.5 kept, else 1 - x."""
  img = _random_image(14)
  img.reshape(-1, 3)[-1] = [0.5, 0.49, 0.51]
  got = _check_out(jax.jit(augment.solarize)(img), img.shape)
  np.testing.assert_allclose(got, _np_solarize(img, 0.5), atol=_ATOL, rtol=0)


def test_solarize_at_threshold_inverts():
  """A value exactly at the threshold is inverted (x >= t -> 1 - x)."""
  img = np.full((_H, _W, 3), 0.25, np.float32)
  got = _check_out(_jit("solarize")(img, _f32(0.25)), img.shape)
  np.testing.assert_allclose(got, 0.75, atol=1e-7)


# ----------------------------------------------------------------------------
# Batched colour ops
# ----------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["rgb_to_hsv", "hsv_to_rgb", "to_grayscale"])
def test_unary_op_batched_equals_per_image(name):
  """A batched unary op equals the op applied to each image."""
  images = _batch(20)
  got = _check_out(_jit(name)(images), images.shape)
  for i in range(_B):
    want = np.asarray(_jit(name)(images[i]), np.float64)
    np.testing.assert_allclose(got[i], want, atol=_ATOL, rtol=0)


_BATCH_PARAMS = {
    "adjust_brightness": [-0.3, 0.0, 0.2],
    "adjust_contrast": [0.0, 0.6, 2.0],
    "adjust_saturation": [0.0, 0.7, 2.0],
    "adjust_hue": [-0.45, 0.1, 0.5],
    "solarize": [0.2, 0.5, 0.9],
}


@pytest.mark.parametrize("name", sorted(_BATCH_PARAMS))
def test_param_op_batched_per_image_params(name):
  """With `[B]` parameters, a batched op equals the per-image reference."""
  ref, atol, _ = _PARAM_OPS[name]
  images = _batch(30)
  params = _BATCH_PARAMS[name]
  got = _check_out(_jit(name)(images, _f32(params)), images.shape)
  for i in range(_B):
    np.testing.assert_allclose(got[i], ref(images[i], params[i]), atol=atol,
                               rtol=0)


@pytest.mark.parametrize("name", sorted(_BATCH_PARAMS))
def test_param_op_batched_scalar_param(name):
  """With a scalar parameter, a batched op equals the per-image reference."""
  ref, atol, _ = _PARAM_OPS[name]
  images = _batch(40)
  param = _BATCH_PARAMS[name][-1]
  got = _check_out(_jit(name)(images, _f32(param)), images.shape)
  for i in range(_B):
    np.testing.assert_allclose(got[i], ref(images[i], param), atol=atol,
                               rtol=0)


# ----------------------------------------------------------------------------
# Gaussian blur
# ----------------------------------------------------------------------------

_BLUR_SHAPE = (16, 16, 3)


def _blur(image, sigma, kernel_size):
  """Jitted blur: sigma traced, kernel_size static."""
  return _jit("gaussian_blur", static_argnums=(2,))(image, _f32(sigma),
                                                     kernel_size)


@pytest.mark.parametrize("kernel_size,sigma", [
    (3, 0.7), (4, 1.3), (5, 1.3), (9, 2.0), (22, 1.5), (22, 5.0),
])
def test_gaussian_blur_matches_reference(kernel_size, sigma):
  """Blur equals the separable zero-padded reference, radius int(k/2)."""
  img = _random_image(50, _BLUR_SHAPE, edge=False)
  got = _check_out(_blur(img, sigma, kernel_size), img.shape)
  np.testing.assert_allclose(got, _np_gaussian_blur(img, sigma, kernel_size),
                             atol=_ATOL, rtol=0)
  _assert_in_unit_range(got)


def test_gaussian_blur_even_kernel_uses_odd_taps():
  """kernel_size 4 has radius 2 (5 taps), the same as kernel_size 5."""
  img = _random_image(51, _BLUR_SHAPE, edge=False)
  np.testing.assert_allclose(np.asarray(_blur(img, 1.3, 4)),
                             np.asarray(_blur(img, 1.3, 5)), atol=1e-6, rtol=0)


def test_gaussian_blur_small_sigma_is_identity():
  """sigma = 0.1 leaves the image unchanged (interior, and in fact all)."""
  img = _random_image(52, _BLUR_SHAPE, edge=False)
  got = _check_out(_blur(img, 0.1, 3), img.shape)
  np.testing.assert_allclose(got[1:-1, 1:-1], img[1:-1, 1:-1], atol=1e-6)
  np.testing.assert_allclose(got, img, atol=1e-6)


def test_gaussian_blur_constant_image_zero_padding():
  """A constant image stays constant inside; borders darken (zero padding)."""
  c, r = 0.7, 2
  img = np.full(_BLUR_SHAPE, c, np.float32)
  got = _check_out(_blur(img, 1.0, 5), img.shape)
  np.testing.assert_allclose(got[r:-r, r:-r], c, atol=_ATOL)
  border = np.ones(_BLUR_SHAPE[:2], bool)
  border[r:-r, r:-r] = False
  assert np.all(got[border] < c - 1e-3)
  # corners are darker than edge midpoints, which are darker than the centre.
  assert got[0, 0, 0] < got[0, 8, 0] < got[8, 8, 0]
  np.testing.assert_allclose(got, _np_gaussian_blur(img, 1.0, 5), atol=_ATOL)
  _assert_in_unit_range(got)


def test_gaussian_blur_constant_white_stays_in_range():
  """Blurring an all-ones image never exceeds 1."""
  img = np.ones(_BLUR_SHAPE, np.float32)
  got = _check_out(_blur(img, 1.3, 5), img.shape)
  _assert_in_unit_range(got)


def test_gaussian_blur_impulse_preserves_mass():
  """An impulse far from the borders keeps its sum, spreads symmetrically."""
  img = np.zeros(_BLUR_SHAPE, np.float32)
  img[8, 8, :] = 1.0
  got = _check_out(_blur(img, 1.5, 5), img.shape)
  r = 2
  np.testing.assert_allclose(got[r:-r, r:-r].sum(axis=(0, 1)),
                             img[r:-r, r:-r].sum(axis=(0, 1)), atol=_ATOL)
  patch = got[6:11, 6:11, 0]
  np.testing.assert_allclose(patch, patch.T, atol=1e-7)
  np.testing.assert_allclose(patch, patch[::-1, ::-1], atol=1e-7)
  assert got[8, 8, 0] == got.max()
  # the kernel is the outer product of the 1-D normalised Gaussian.
  np.testing.assert_allclose(got, _np_gaussian_blur(img, 1.5, 5), atol=_ATOL)


def test_gaussian_blur_channels_independent():
  """Each channel is blurred on its own: an impulse stays in its channel."""
  img = np.zeros(_BLUR_SHAPE, np.float32)
  img[8, 8, 1] = 1.0
  got = _check_out(_blur(img, 1.5, 5), img.shape)
  np.testing.assert_array_equal(got[..., 0], 0.0)
  np.testing.assert_array_equal(got[..., 2], 0.0)
  np.testing.assert_allclose(got[..., 1].sum(), 1.0, atol=_ATOL)


@pytest.mark.parametrize("sigma", [[0.5, 1.0, 2.5], 1.2])
def test_gaussian_blur_batched(sigma):
  """Batched blur with `[B]` or scalar sigma equals the per-image reference."""
  images = np.stack([_random_image(60 + i, _BLUR_SHAPE, edge=False)
                     for i in range(_B)])
  got = _check_out(_blur(images, sigma, 5), images.shape)
  sigmas = np.broadcast_to(np.asarray(sigma, np.float64), (_B,))
  for i in range(_B):
    np.testing.assert_allclose(got[i], _np_gaussian_blur(images[i], sigmas[i],
                                                         5), atol=_ATOL, rtol=0)


# ----------------------------------------------------------------------------
# Colour jitter: the four ops in the drawn order
# ----------------------------------------------------------------------------


def _np_color_jitter(key, img, spec, order=None):
  """SimCLR's `color_jitter_rand` in numpy float64: strengths drawn from the
  key as `augment.color_jitter` documents (split into order, brightness,
  contrast, saturation, hue keys; uniform draws), the ops applied in the
  order of the drawn permutation (or `order`), clipped after each. Returns
  the image and the order."""
  k_order, k_b, k_c, k_s, k_h = jax.random.split(key, 5)
  draw = lambda k, lo, hi: float(jax.random.uniform(k, (), minval=lo,
                                                    maxval=hi))
  b = spec.brightness
  if spec.multiplicative_brightness:
    factor = draw(k_b, max(1.0 - b, 0.0), 1.0 + b)
    brightness = lambda x: x * factor
  else:
    delta = draw(k_b, -b, b)
    brightness = lambda x: _np_brightness(x, delta)
  c = draw(k_c, max(1.0 - spec.contrast, 0.0), 1.0 + spec.contrast)
  s = draw(k_s, max(1.0 - spec.saturation, 0.0), 1.0 + spec.saturation)
  h = draw(k_h, -spec.hue, spec.hue)
  ops = (brightness, lambda x: _np_contrast(x, c),
         lambda x: _np_saturation(x, s), lambda x: _np_hue(x, h))
  if order is None:
    order = [int(i) for i in jax.random.permutation(k_order, 4)]
  img = np.asarray(img, np.float64)
  for i in order:
    img = np.clip(ops[i](img), 0.0, 1.0)
  return img, order


@pytest.mark.parametrize("preset", ["simclr_v2", "byol"])
@mesh_runs.float64()
def test_color_jitter_applies_the_ops_in_the_drawn_order(preset):
  """`color_jitter` over a batch (vmapped, one key per image) equals the
  float64 composition of brightness (multiplicative in SimCLR v2, additive
  in BYOL), contrast, saturation and hue in each image's drawn order; the
  orders differ between images, and a fixed order would not match."""
  spec = _specs(preset)[0]
  images = np.stack([_random_image(40 + i) for i in range(6)]).astype(
      np.float64)
  keys = jax.random.split(jax.random.key(11), len(images))
  got = np.asarray(jax.jit(jax.vmap(
      lambda k, im: augment.color_jitter(k, im, spec)))(keys, images))
  assert got.dtype == np.float64
  orders = []
  for i, image in enumerate(images):
    want, order = _np_color_jitter(keys[i], image, spec)
    orders.append(order)
    np.testing.assert_allclose(got[i], want, atol=1e-9, rtol=0,
                               err_msg=f"image {i}, order {order}")
  assert len({tuple(o) for o in orders}) > 1, orders
  moved = [i for i, o in enumerate(orders) if o != sorted(o)]
  fixed = [np.abs(got[i] - _np_color_jitter(keys[i], images[i], spec,
                                              order=[0, 1, 2, 3])[0]).max()
           for i in moved]
  assert max(fixed) > 1e-3, fixed


# ----------------------------------------------------------------------------
# jit compatibility
# ----------------------------------------------------------------------------


@pytest.mark.parametrize("name,param", [
    ("adjust_brightness", 0.2), ("adjust_contrast", 1.5),
    ("adjust_saturation", 1.5), ("adjust_hue", -0.2), ("solarize", 0.4),
    ("gaussian_blur", 1.1),
])
@mesh_runs.float64()
def test_jit_traced_param_matches_eager(name, param):
  """Under jit with a traced parameter each op equals its eager result.
  (float64: op-by-op and fused code round differently, by a few float32
  ulps on some processors.)"""
  img = _random_image(70, _BLUR_SHAPE).astype(np.float64)
  fn = getattr(augment, name)
  if name == "gaussian_blur":
    eager = fn(img, param, 5)
    jitted = jax.jit(lambda x, p: fn(x, p, 5))(img, jnp.asarray(param))
  else:
    eager = fn(img, param)
    jitted = jax.jit(fn)(img, jnp.asarray(param))
  assert eager.shape == img.shape and eager.dtype == jitted.dtype == np.float64
  np.testing.assert_allclose(np.asarray(jitted), np.asarray(eager), atol=1e-14,
                             rtol=0)


# ----------------------------------------------------------------------------
# Randomized views (invariants only)
# ----------------------------------------------------------------------------

_PRESETS = ("simclr_v2", "simclr_v1", "simclr_cifar", "byol", "multicrop")
_VIEW_SHAPE = (16, 16, 3)


def _view_image(seed=80):
  """Random uint8-valued image as float32 in [0, 1]."""
  rng = np.random.default_rng(seed)
  return (rng.integers(0, 256, _VIEW_SHAPE).astype(np.float32) / 255.0)


def _specs(preset):
  """Every view spec of `preset`, in group order."""
  return view_presets.flatten(view_presets.VIEW_PRESETS[preset])


def _unique_specs():
  """`(preset, view index)` of every distinct ViewSpec, in preset order."""
  seen, out = [], []
  for preset in _PRESETS:
    for i, spec in enumerate(_specs(preset)):
      if spec not in seen:
        seen.append(spec)
        out.append((preset, i))
  return out


# Every distinct spec gets the invariant test (one compilation each); the
# vmapped batch test, the most expensive to compile, runs on two specs that
# between them use every branch: multiplicative brightness (SimCLR v2) and
# additive brightness with probabilistic blur, solarisation and normalisation
# (BYOL's second view).
_VIEW_CASES = _unique_specs()
_BATCH_CASES = [("simclr_v2", 0), ("byol", 1)]


@functools.lru_cache(maxsize=None)
def _jit_view(preset, index):
  spec = _specs(preset)[index]
  return jax.jit(lambda k, im: augment.augment_view(k, im, spec))


@functools.lru_cache(maxsize=None)
def _jit_batch(preset, index):
  spec = _specs(preset)[index]
  return jax.jit(lambda k, im: augment.augment_batch(k, im, spec))


def test_view_presets_present():
  """VIEW_PRESETS has the required presets, each view groups of ViewSpecs
  of one size per group, 'global' first."""
  for preset in _PRESETS:
    groups = view_presets.VIEW_PRESETS[preset]
    assert next(iter(groups)) == view_presets.GLOBAL, preset
    for specs in groups.values():
      assert isinstance(specs, tuple) and specs, preset
      assert len({s.size for s in specs}) == 1, preset
    for spec in _specs(preset):
      assert isinstance(spec, view_presets.ViewSpec), (preset, spec)
      assert isinstance(spec.normalize, bool), (preset, spec)


@pytest.mark.parametrize("preset,index", _VIEW_CASES)
def test_augment_view_invariants(preset, index):
  """Views: deterministic per key, key-dependent, finite, float32, in range."""
  spec = _specs(preset)[index]
  img = _view_image()
  fn = _jit_view(preset, index)
  k1, k2 = jax.random.split(jax.random.PRNGKey(index + 1))
  a = fn(k1, img)
  b = fn(k1, img)
  c = fn(k2, img)
  assert a.shape == _VIEW_SHAPE and a.dtype == jnp.float32
  a, b, c = (np.asarray(x) for x in (a, b, c))
  np.testing.assert_array_equal(a, b)
  assert not np.allclose(a, c), "different keys gave the same view"
  assert np.all(np.isfinite(a)) and np.all(np.isfinite(c))
  if not spec.normalize:
    for x in (a, c):
      assert x.min() >= -_RANGE_SLACK and x.max() <= 1.0 + _RANGE_SLACK, (
          x.min(), x.max())


@pytest.mark.parametrize("preset,index", _BATCH_CASES)
def test_augment_batch_equals_per_image(preset, index):
  """augment_batch equals augment_view applied image by image, key by key."""
  images = np.stack([_view_image(90 + i) for i in range(_B)])
  keys = jax.random.split(jax.random.PRNGKey(100 + index), _B)
  got = _jit_batch(preset, index)(keys, images)
  assert got.shape == images.shape and got.dtype == jnp.float32
  for i in range(_B):
    want = _jit_view(preset, index)(keys[i], images[i])
    np.testing.assert_allclose(np.asarray(got[i]), np.asarray(want),
                               atol=_ATOL, rtol=0)


def test_augment_view_uint8_equals_float():
  """A uint8 image gives the same view as the same image scaled to [0, 1]."""
  rng = np.random.default_rng(95)
  img_u8 = rng.integers(0, 256, _VIEW_SHAPE).astype(np.uint8)
  key = jax.random.PRNGKey(5)
  fn = _jit_view("simclr_v2", 0)
  got = fn(key, img_u8)
  assert got.shape == _VIEW_SHAPE and got.dtype == jnp.float32
  want = fn(key, img_u8.astype(np.float32) / 255.0)
  np.testing.assert_allclose(np.asarray(got), np.asarray(want), atol=_ATOL,
                             rtol=0)
