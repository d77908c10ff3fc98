"""RandAugment (InfoMin's augmentation): every op against PIL, the library
timm's RandAugment (and PyContrast through it) calls, on 8-bit images;
the composition's draws (ops per image, firing probability, magnitude
distribution, signs); the 'infomin' preset."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import mesh_runs
from jaxssl import augment
from jaxssl import randaugment as ra
from jaxssl import view_presets

Image = pytest.importorskip("PIL.Image")
ImageEnhance = pytest.importorskip("PIL.ImageEnhance")
ImageOps = pytest.importorskip("PIL.ImageOps")

FILL = (124, 116, 104)


@pytest.fixture(scope="module")
def image():
  """A 19 × 23 RGB image with smooth regions and edges (bytes)."""
  rng = np.random.default_rng(0)
  small = rng.integers(0, 256, (6, 7, 3)).astype(np.uint8)
  return np.asarray(Image.fromarray(small).resize((23, 19), Image.BILINEAR))


def _close_to_pil(ours, theirs):
  """Within one 8-bit step of PIL everywhere (PIL rounds or truncates its
  bytes; ours stays in floats)."""
  diff = np.abs(np.asarray(ours, np.float64) * 255 -
                np.asarray(theirs, np.float64))
  assert diff.max() <= 1.0 + 1e-9, diff.max()


@mesh_runs.float64()
@pytest.mark.parametrize("matrix", [(1, 0.25, 0, 0, 1, 0),
                                    (1, 0, 0, -0.2, 1, 0),
                                    (1, 0, 5.3, 0, 1, 0),
                                    (1, 0, 0, 0, 1, -4.7),
                                    (0.9, -0.3, 4.0, 0.2, 1.1, -2.0)])
def test_affine_equals_pil_transform(image, matrix):
  pil = Image.fromarray(image)
  theirs = pil.transform(pil.size, Image.AFFINE, matrix, Image.BILINEAR,
                         fillcolor=FILL)
  _close_to_pil(ra.affine(jnp.asarray(image / 255.0), jnp.asarray(matrix)),
                theirs)


@mesh_runs.float64()
def test_geometric_ops_equal_pil(image):
  """Rotate (±30° at level 1, about the centre), ShearX/Y (±0.3),
  TranslateX/YRel (±0.45 of the side) as timm calls PIL."""
  pil, x = Image.fromarray(image), jnp.asarray(image / 255.0)
  h, w = image.shape[:2]
  for level in (0.9, -0.55):
    cases = {
        "Rotate": pil.rotate(30 * level, Image.BILINEAR, fillcolor=FILL),
        "ShearX": pil.transform(pil.size, Image.AFFINE,
                                (1, 0.3 * level, 0, 0, 1, 0), Image.BILINEAR,
                                fillcolor=FILL),
        "ShearY": pil.transform(pil.size, Image.AFFINE,
                                (1, 0, 0, 0.3 * level, 1, 0), Image.BILINEAR,
                                fillcolor=FILL),
        "TranslateXRel": pil.transform(
            pil.size, Image.AFFINE, (1, 0, 0.45 * level * w, 0, 1, 0),
            Image.BILINEAR, fillcolor=FILL),
        "TranslateYRel": pil.transform(
            pil.size, Image.AFFINE, (1, 0, 0, 0, 1, 0.45 * level * h),
            Image.BILINEAR, fillcolor=FILL)}
    for op, theirs in cases.items():
      _close_to_pil(ra.apply_op(op, x, jnp.float64(level)), theirs)


@mesh_runs.float64()
def test_photometric_ops_equal_pil(image):
  """AutoContrast, Equalize, Invert, Posterize (level → 4·level bits),
  Solarize (threshold 256·level), SolarizeAdd (+110·level below 128),
  Color/Contrast/Brightness/Sharpness (factor 1.8·level + 0.1)."""
  pil, x = Image.fromarray(image), jnp.asarray(image / 255.0)
  level = 0.8
  factor = 1.8 * level + 0.1
  add = int(110 * level)
  added = np.where(image < 128, np.minimum(image.astype(int) + add, 255),
                   image)
  cases = {
      "AutoContrast": ImageOps.autocontrast(pil),
      "Equalize": ImageOps.equalize(pil),
      "Invert": ImageOps.invert(pil),
      "Posterize": ImageOps.posterize(pil, int(4 * level)),
      "Solarize": ImageOps.solarize(pil, int(256 * level)),
      "SolarizeAdd": added,
      "Color": ImageEnhance.Color(pil).enhance(factor),
      "Contrast": ImageEnhance.Contrast(pil).enhance(factor),
      "Brightness": ImageEnhance.Brightness(pil).enhance(factor),
      "Sharpness": ImageEnhance.Sharpness(pil).enhance(factor)}
  assert set(cases) | set(ra.GEOMETRIC) == set(ra.OPS)
  for op, theirs in cases.items():
    _close_to_pil(ra.apply_op(op, x, jnp.float64(level)), theirs)
  for factor in (0.3, 1.9):  # below and above 1 (blend both ways)
    lvl = jnp.float64((factor - 0.1) / 1.8)
    for op, enhance in (("Color", ImageEnhance.Color),
                        ("Contrast", ImageEnhance.Contrast),
                        ("Sharpness", ImageEnhance.Sharpness)):
      _close_to_pil(ra.apply_op(op, x, lvl), enhance(pil).enhance(factor))
  # Exact where PIL works on bytes.
  for op in ("Equalize", "Posterize", "Solarize", "Invert"):
    np.testing.assert_allclose(
        np.asarray(ra.apply_op(op, x, jnp.float64(level))) * 255,
        np.asarray(cases[op], np.float64), atol=1e-9)


def test_rand_augment_draws():
  """One Brightness op that always fires: the factor 1.8·level + 0.1 with
  level = clip(N(10, 0.5), 0, 10)/10 is at most 1.9 and exactly 1.9 about
  half the time (mean level ≈ 0.980); with p 0.5 about half the images
  change; a translation goes either way; two Inverts cancel."""
  grey = jnp.full((4, 4, 3), 0.25)
  keys = jax.random.split(jax.random.key(0), 600)
  bright = jax.vmap(lambda k: ra.rand_augment(
      k, grey, num_ops=1, prob=1.0, ops=("Brightness",)))(keys)
  factor = np.asarray(bright[:, 0, 0, 0]) / 0.25
  assert factor.max() <= 1.9 + 1e-6 and factor.min() > 1.3
  assert 0.42 < np.mean(factor > 1.9 - 1e-6) < 0.58
  assert abs(np.mean((factor - 0.1) / 1.8) - 0.980) < 0.01
  half = jax.vmap(lambda k: ra.rand_augment(
      k, grey, num_ops=1, prob=0.5, ops=("Brightness",)))(keys)
  assert 0.42 < np.mean(np.asarray(half[:, 0, 0, 0]) != 0.25) < 0.58
  ramp = jnp.broadcast_to(jnp.linspace(0, 1, 8)[None, :, None], (8, 8, 3))
  moved = jax.vmap(lambda k: ra.rand_augment(
      k, ramp, num_ops=1, prob=1.0, ops=("TranslateXRel",)))(keys[:200])
  right = np.asarray(moved[:, 4, 0, 0]) > 0.49  # the fill's red is 0.486
  assert 0.35 < np.mean(right) < 0.65
  twice = ra.rand_augment(keys[0], ramp, num_ops=2, prob=1.0,
                          ops=("Invert",))
  np.testing.assert_allclose(np.asarray(twice), np.asarray(ramp), atol=1e-6)


def test_infomin_preset_and_view():
  """Two views of InfoMin's settings. In a view, RandAugment changes some
  images and the grayscale still follows it (with the other ops off and
  grayscale always on, every output is grey, and in [0, 1])."""
  groups = view_presets.view_groups("infomin", image_size=32,
                                    color_strength=1.0, blur=True)
  (spec, spec2), = groups.values()
  assert spec == spec2 and spec.randaugment_ops == 2 and spec.size == 32
  assert (spec.crop_area, spec.jitter_prob, spec.brightness, spec.hue,
          spec.blur_prob, spec.grayscale_prob, spec.normalize) == (
              (0.2, 1.0), 0.8, 0.8, 0.2, 0.5, 0.2, True)
  only = view_presets.dataclasses.replace(
      spec, flip_prob=0.0, jitter_prob=0.0, blur_prob=0.0,
      grayscale_prob=1.0, normalize=False)
  img = np.random.default_rng(1).integers(0, 256, (32, 32, 3))
  keys = jax.random.split(jax.random.key(2), 8)
  out = np.asarray(jax.vmap(lambda k: augment.augment_view(
      k, jnp.asarray(img, jnp.uint8), only))(keys))
  grey = np.asarray(augment.to_grayscale(jnp.asarray(img / 255.0)))
  changed = np.abs(out - grey[None]).max(axis=(1, 2, 3)) > 1e-3
  assert 0 < changed.sum() < 8
  np.testing.assert_allclose(out[..., 0], out[..., 2], atol=1e-6)
  assert out.min() >= 0.0 and out.max() <= 1.0


@mesh_runs.float64()
def test_one_drawn_op_equals_that_op(image):
  """At magnitude 10 (σ 0), one op that always fires turns the image into
  exactly one op's output at level ±1 (the single warp plus photometric
  switch routes each draw to its op), and different keys reach different
  ops."""
  x = jnp.asarray(image / 255.0)
  candidates = {}
  for op in ra.OPS:
    for sign in ((1.0, -1.0) if op in ra.GEOMETRIC else (1.0,)):
      candidates[(op, sign)] = np.asarray(ra.apply_op(op, x,
                                                      jnp.float64(sign)))
  seen = set()
  for k in range(12):
    out = np.asarray(ra.rand_augment(jax.random.key(k), x, num_ops=1,
                                     prob=1.0, magnitude_std=0.0))
    hits = [name for name, c in candidates.items()
            if np.allclose(out, c, rtol=0, atol=1e-12)]
    assert hits, k
    seen.update(op for op, _ in hits)
  assert len(seen) >= 5, seen


def test_randaugment_ops_key_overrides_any_preset():
  """`augment.randaugment_ops` takes RandAugment out of 'infomin' (0) or
  adds it to another preset; −1 keeps the preset's."""
  from jaxssl import config_utils  # pylint: disable=g-import-not-at-top
  from jaxssl import views  # pylint: disable=g-import-not-at-top
  c = config_utils.base_config()
  c.data.image_size = 32
  for preset, ops, want in (("infomin", -1, 2), ("infomin", 0, 0),
                            ("simclr_v2", -1, 0), ("simclr_v2", 3, 3)):
    c.augment.preset, c.augment.randaugment_ops = preset, ops
    specs = view_presets.flatten(views.config_views(c))
    assert [s.randaugment_ops for s in specs] == [want, want], (preset, ops)
