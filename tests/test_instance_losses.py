"""InstDisc's NCE, InvaSpread's batch criterion and CMC's Lab conversion
against float64 numpy transcriptions of the references' arithmetic
(lemniscate.pytorch `NCEAverage`/`NCECriterion`, Unsupervised_Embedding_
Learning `BatchCriterion`, `skimage.color.rgb2lab`), and across devices."""

import functools

import jax
from jax import lax
import jax.numpy as jnp
from jax.sharding import PartitionSpec as P
import numpy as np
import pytest

import mesh_runs
import numeric
from jaxssl import augment
from jaxssl import losses

_DEVICES = 4


def _mesh():
  return jax.sharding.Mesh(np.array(jax.devices()[:_DEVICES]), ("data",))


# ----------------------------------------------------------------------------
# InstDisc: NCE
# ----------------------------------------------------------------------------


def _np_nce(s, t, n_data, z=None):
  """(loss, Z) as NCEFunction.forward then NCECriterion.forward compute
  them, step by step, in float64 (Z estimated from `s` when None)."""
  out = np.exp(np.asarray(s, np.float64) / t)
  if z is None:
    z = out.mean() * n_data
  out = out / z
  batch, k = out.shape[0], out.shape[1] - 1
  pn = 1.0 / n_data
  eps = 1e-7
  ln_pmt = np.log(out[:, 0] / (out[:, 0] + k * pn + eps))
  ln_pon = np.log(np.full_like(out[:, 1:], k * pn) /
                  (out[:, 1:] + k * pn + eps))
  return -(ln_pmt.sum() + ln_pon.sum()) / batch, z


def _similarities(n, k, seed=0, scale=0.6):
  rng = np.random.default_rng(seed)
  return np.clip(rng.normal(scale=scale, size=(n, 1 + k)), -1, 1)


@mesh_runs.float64()
def test_instance_nce_matches_the_reference_and_its_gradient():
  """Value (Z estimated from the batch, then a given Z) equals the
  reference's; the gradient w.r.t. the similarities is NCEFunction's
  backward (dL/dP · P / τ) and none reaches Z."""
  t, n_data = 0.07, 1000
  s = _similarities(6, 9)
  z = losses.nce_normalizer(jnp.asarray(s), temperature=t,
                            num_examples=n_data)
  want, want_z = _np_nce(s, t, n_data)
  np.testing.assert_allclose(float(z), want_z, rtol=1e-13)
  fn = functools.partial(losses.instance_nce, temperature=t,
                         num_examples=n_data)
  loss, (g_s, g_z) = jax.value_and_grad(
      lambda a, b: fn(a, normalizer=b), argnums=(0, 1))(jnp.asarray(s), z)
  np.testing.assert_allclose(float(loss), want, rtol=1e-13)
  assert float(g_z) == 0.0
  # NCEFunction.backward: gradOutput · out / T, with NCECriterion's
  # dL/dout: −(1/P0 − 1/(P0 + c))/n for the positive, 1/(Pk + c)/n else.
  p = np.exp(s / t) / want_z
  c = 9 / n_data + 1e-7
  d_out = np.concatenate([-(1 / p[:, :1] - 1 / (p[:, :1] + c)),
                          1 / (p[:, 1:] + c)], axis=1) / len(s)
  np.testing.assert_allclose(np.asarray(g_s), d_out * p / t, rtol=1e-11)
  fixed, _ = _np_nce(s, t, n_data, z=3.5 * want_z)
  np.testing.assert_allclose(float(fn(jnp.asarray(s), normalizer=3.5 * z)),
                             fixed, rtol=1e-13)
  with pytest.raises(ValueError, match=r"\[n, 1 \+ K\]"):
    fn(jnp.zeros((4, 1)), normalizer=z)


@mesh_runs.float64()
def test_nce_normalizer_and_loss_over_4_devices_are_the_global_batch():
  """Z over 4 devices is the global batch's mean times N (the same on
  every device); the mean of the per-device losses is the global loss."""
  t, n_data = 0.1, 50000
  s = _similarities(4 * _DEVICES, 7, seed=1)

  def per_device(x):
    z = losses.nce_normalizer(x, temperature=t, num_examples=n_data,
                              axis_name="data")
    loss = losses.instance_nce(x, temperature=t, num_examples=n_data,
                               normalizer=z)
    return z[None], lax.pmean(loss, "data")

  z, loss = jax.jit(jax.shard_map(per_device, mesh=_mesh(),
                                  in_specs=P("data"),
                                  out_specs=(P("data"), P())))(jnp.asarray(s))
  want, want_z = _np_nce(s, t, n_data)
  np.testing.assert_allclose(np.asarray(z), want_z, rtol=1e-13)
  np.testing.assert_allclose(float(loss), want, rtol=1e-13)


# ----------------------------------------------------------------------------
# InvaSpread: BatchCriterion
# ----------------------------------------------------------------------------


def _np_batch_criterion(x, t, neg_m, x_data=None):
  """BatchCriterion.forward on `x` `[2B, d]` (view 1 rows then view 2), in
  float64, with the reference's order of operations: the right factors are
  `x_data` (the reference's `.data`; `x` when None)."""
  x = np.asarray(x, np.float64)
  x_data = x if x_data is None else np.asarray(x_data, np.float64)
  rows = x.shape[0]
  reordered = np.concatenate([x_data[rows // 2:], x_data[:rows // 2]])
  pos = np.exp((x * reordered).sum(1) / t)
  all_prob = np.exp(x @ x_data.T / t) * (1 - np.eye(rows))
  if neg_m == 1:
    all_div = all_prob.sum(1)
  else:
    all_div = (all_prob.sum(1) - pos) * neg_m + pos
  ln_pmt = pos / all_div
  with np.errstate(invalid="ignore"):
    ln_pon = np.log(1 - all_prob / all_div[:, None])
    ln_pon = ln_pon.sum(1) - np.log(1 - ln_pmt)
  return -(np.log(ln_pmt).sum() + ln_pon.sum() * neg_m) / rows


def _views(b, d, seed, noise=0.3):
  rng = np.random.default_rng(seed)
  v1 = rng.normal(size=(b, d))
  v2 = v1 + noise * rng.normal(size=(b, d))
  x = np.concatenate([v1, v2])
  return x / np.linalg.norm(x, axis=1, keepdims=True)


def _device_major(x, devices):
  """Global `[view 1; view 2]` rows → the per-device `[v1_d; v2_d]`
  stacking that `shard_map` splits (device d gets rows of its images)."""
  v1, v2 = np.split(x, 2)
  return np.concatenate([np.concatenate([a, b]) for a, b in
                         zip(np.split(v1, devices), np.split(v2, devices))])


@pytest.mark.parametrize("neg_m", [1.0, 0.5])
@mesh_runs.float64()
def test_invariance_spreading_matches_batch_criterion(neg_m):
  """Value on one and on 4 devices equals BatchCriterion's; the gradient
  is the reference's: only the anchor (left) factors are differentiated
  (central differences of the reference with its `.data` side held)."""
  t = 0.1
  x = _views(8, 5, seed=2)
  loss, grad = jax.value_and_grad(functools.partial(
      losses.invariance_spreading, temperature=t, negative_weight=neg_m,
      normalize=False))(jnp.asarray(x))
  want = _np_batch_criterion(x, t, neg_m)
  np.testing.assert_allclose(float(loss), want, rtol=1e-13)
  want_grad = numeric.central_difference(
      lambda a: _np_batch_criterion(a, t, neg_m, x_data=x), x, 1e-6)
  # Central differences: rounding ~1e-16·loss/step ≈ 1e-9 absolute.
  np.testing.assert_allclose(np.asarray(grad), want_grad, rtol=1e-6,
                             atol=3e-8 * np.abs(want_grad).max())

  def per_device(z):
    return lax.pmean(losses.invariance_spreading(
        z, t, negative_weight=neg_m, axis_name="data", normalize=False),
                     "data")

  sharded = jax.jit(jax.shard_map(
      jax.value_and_grad(per_device), mesh=_mesh(), in_specs=P("data"),
      out_specs=(P(), P("data"))))
  value, g = sharded(jnp.asarray(_device_major(x, _DEVICES)))
  np.testing.assert_allclose(float(value), want, rtol=1e-13)
  np.testing.assert_allclose(np.asarray(g),
                             _device_major(np.asarray(grad), _DEVICES),
                             rtol=1e-12, atol=1e-15)


@mesh_runs.float64()
def _np_spreading_log1p(x, t):
  """The loss (negative_weight 1) with log1p where the reference loses
  digits: −log P_ip = log1p(Σ_neg e_ij / e_ip), log(1 − P_ij) =
  log1p(−P_ij); float64 accurate near saturation."""
  rows = len(x)
  e = np.exp(x @ x.T / t)
  total = 0.0
  for i in range(rows):
    p = (i + rows // 2) % rows
    negatives = [j for j in range(rows) if j not in (i, p)]
    denominator = e[i, negatives].sum() + e[i, p]
    total += np.log1p(e[i, negatives].sum() / e[i, p])
    total -= np.sum(np.log1p(-e[i, negatives] / denominator))
  return total / rows


@mesh_runs.float64()
def test_invariance_spreading_near_saturation_and_normalisation():
  """Near-saturated: orthogonal images with near-identical views at τ 0.05
  (1 − P_ip ≈ 1e-8). The positive's spreading term, which the reference
  adds (from `mm`) and removes (from the elementwise positive), is left
  out: the value equals the log1p formula to 1e-7, where the reference's
  own float64 transcription is off by its rounding (~1e-9 absolute per
  row, here up to tens of per cent of the loss); `normalize`
  L2-normalises the rows."""
  rng = np.random.default_rng(3)
  basis = np.linalg.qr(rng.normal(size=(8, 8)))[0][:6]
  x = np.concatenate([basis, basis + 1e-2 * rng.normal(size=basis.shape)])
  x /= np.linalg.norm(x, axis=1, keepdims=True)
  t = 0.05
  exact = _np_spreading_log1p(x, t)
  got = float(losses.invariance_spreading(jnp.asarray(x), t))
  assert 0 < exact < 1e-6
  np.testing.assert_allclose(got, exact, rtol=1e-7)
  np.testing.assert_allclose(_np_batch_criterion(x, t, 1.0), exact,
                             atol=1e-7)
  x_mild = _views(8, 5, seed=6)
  np.testing.assert_allclose(_np_spreading_log1p(x_mild, 0.1),
                             _np_batch_criterion(x_mild, 0.1, 1.0),
                             rtol=1e-9)
  scaled = x_mild * np.linspace(0.5, 3.0, len(x_mild))[:, None]
  np.testing.assert_allclose(
      float(losses.invariance_spreading(jnp.asarray(scaled), 0.1)),
      _np_spreading_log1p(x_mild, 0.1), rtol=1e-12)
  with pytest.raises(ValueError, match=r"\[2n, d\]"):
    losses.invariance_spreading(jnp.zeros((5, 3)), 0.1)


@mesh_runs.float64()
def test_invariance_spreading_is_nan_where_the_reference_is():
  """With negative_weight < 1 a negative can outweigh the denominator
  (e_ij > D_i): log of a negative number, NaN in both."""
  x = _views(4, 3, seed=4, noise=2.0)
  x[4] = -x[0]  # anchor 0's partner points away: its positive is tiny
  x[1] = x[0]  # ... and one negative equals the anchor
  t, neg_m = 0.1, 0.05
  assert np.isnan(_np_batch_criterion(x, t, neg_m))
  assert np.isnan(float(losses.invariance_spreading(
      jnp.asarray(x), t, negative_weight=neg_m)))
  assert np.isfinite(float(losses.invariance_spreading(jnp.asarray(x), t)))


# ----------------------------------------------------------------------------
# CMC: RGB → Lab
# ----------------------------------------------------------------------------


def _np_lab(rgb):
  """One pixel, float64, from the sRGB and CIE 1976 L*a*b* definitions with
  skimage's constants (D65 2° white (0.95047, 1, 1.08883), 0.008856 and
  7.787 in f)."""
  def expand(c):
    return ((c + 0.055) / 1.055) ** 2.4 if c > 0.04045 else c / 12.92

  r, g, b = (expand(c) for c in rgb)
  x = (0.412453 * r + 0.357580 * g + 0.180423 * b) / 0.95047
  y = 0.212671 * r + 0.715160 * g + 0.072169 * b
  z = (0.019334 * r + 0.119193 * g + 0.950227 * b) / 1.08883

  def f(v):
    return v ** (1 / 3) if v > 0.008856 else 7.787 * v + 16 / 116

  return np.array([116 * f(y) - 16, 500 * (f(x) - f(y)),
                   200 * (f(y) - f(z))])


@mesh_runs.float64()
def test_rgb_to_lab_matches_the_formula_and_cmc_ranges():
  """Random pixels (dark ones in the linear branches too) equal the
  per-pixel float64 formula; over the RGB cube's corners a and b reach the
  extremes CMC normalises with (−86.183 green, 98.233 magenta, −107.857
  blue, 94.478 yellow); white is L = 100."""
  rng = np.random.default_rng(5)
  pixels = np.concatenate([rng.uniform(size=(64, 3)),
                           rng.uniform(0, 0.05, size=(16, 3))])
  got = np.asarray(augment.rgb_to_lab(jnp.asarray(pixels.reshape(8, 10, 3))))
  want = np.stack([_np_lab(p) for p in pixels]).reshape(8, 10, 3)
  np.testing.assert_allclose(got, want, rtol=1e-12, atol=1e-11)
  corners = np.array([[i >> 2 & 1, i >> 1 & 1, i & 1] for i in range(8)],
                     np.float64)
  lab = np.asarray(augment.rgb_to_lab(jnp.asarray(corners)))
  np.testing.assert_allclose(
      [lab[:, 1].min(), lab[:, 1].max(), lab[:, 2].min(), lab[:, 2].max()],
      [-86.183, 98.233, -107.857, 94.478], atol=5e-4)
  np.testing.assert_allclose(lab[7, 0], 100.0, atol=1e-3)
  assert lab[0].tolist() == [0.0, 0.0, 0.0]
