"""Tests for the BYOL building blocks against independent float64 references.

* `losses.regression_loss`: the BYOL (Grill et al. 2020,
  https://arxiv.org/abs/2006.07733) per-example loss `||p^ - z^||^2` with
  `x^ = x * rsqrt(max(sum(x^2), 1e-12))`, value and gradients.
* `schedules.ema_momentum`: the cosine increase of the target decay
  `tau_k = 1 - (1 - tau_base) * (cos(pi k / K) + 1) / 2`.
* `optim.lars(..., lr_in_momentum=False)`: the BYOL reference's optax-style
  LARS (decay -> trust ratio -> momentum trace -> scale by -lr_t), where the
  learning rate multiplies the whole momentum buffer at every step.

They run in float64 (JAX's 64-bit mode, `mesh_runs.float64`): the
comparisons hold to ~1e-12 on any processor.
"""

import math

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import lars_trees
import mesh_runs
from jaxssl import losses
from jaxssl import optim
from jaxssl import schedules

_EPS = 1e-12


@pytest.fixture(autouse=True)
def _float64():
  with mesh_runs.float64():
    yield


# ----------------------------------------------------------------------------
# regression_loss
# ----------------------------------------------------------------------------


def _np_normalize(x):
  """float64 `x * rsqrt(max(sum(x^2), eps))` over the last axis."""
  x = np.asarray(x, np.float64)
  sq = np.sum(x * x, axis=-1, keepdims=True)
  return x / np.sqrt(np.maximum(sq, _EPS))


def _np_loss(p, z):
  """float64 per-row `||p^ - z^||^2`."""
  return np.sum((_np_normalize(p) - _np_normalize(z))**2, axis=-1)


def _np_grad_wrt_first(a, b):
  """Analytic float64 d/da of `||a^ - b^||^2`, row by row.

  Where `||a||^2 > eps`, `a^ = a/||a||` and the gradient is
  `-(2/||a||) (b^ - (a^.b^) a^)`; where `||a||^2 < eps`, `a^ = a/sqrt(eps)`
  is linear and the gradient is `(2/sqrt(eps)) (a^ - b^)`.
  """
  a = np.asarray(a, np.float64)
  a_hat, b_hat = _np_normalize(a), _np_normalize(b)
  sq = np.sum(a * a, axis=-1, keepdims=True)
  big = -(2.0 / np.sqrt(np.maximum(sq, _EPS))) * (
      b_hat - np.sum(a_hat * b_hat, axis=-1, keepdims=True) * a_hat)
  small = (2.0 / math.sqrt(_EPS)) * (a_hat - b_hat)
  return np.where(sq > _EPS, big, small)


def _row_with_sq_norm(direction, sq_norm):
  """`direction` rescaled to squared norm `sq_norm`."""
  direction = np.asarray(direction, np.float64)
  return direction * math.sqrt(sq_norm) / np.linalg.norm(direction)


def _edge_case_batch():
  """Random rows plus zero, tiny-norm, parallel and antiparallel rows."""
  rng = np.random.default_rng(0)
  d = 16
  p = rng.standard_normal((14, d))
  z = rng.standard_normal((14, d))
  p[1] *= 1e-3  # small but far above the eps floor
  z[2] *= 50.0  # large
  p[3] = 0.0  # p = 0: p^ = 0, loss = ||z^||^2 = 1
  z[4] = 0.0  # z = 0: loss = 1
  p[5] = 0.0  # both zero: loss 0, gradient 0
  z[5] = 0.0
  p[6] = _row_with_sq_norm(p[6], 0.5e-12)  # below the eps floor
  p[7] = _row_with_sq_norm(p[7], 0.9e-12)  # just below
  p[8] = _row_with_sq_norm(p[8], 1.1e-12)  # just above
  z[9] = _row_with_sq_norm(z[9], 0.9e-12)
  z[10] = _row_with_sq_norm(z[10], 1.1e-12)
  p[11] = 3.0 * z[11]  # parallel: loss 0
  p[12] = -0.25 * z[12]  # antiparallel: loss 4
  p[13] = _row_with_sq_norm(z[13], 0.5e-12)  # tiny and parallel to z
  return p, z


def test_np_reference_gradient_matches_finite_differences():
  """The analytic float64 reference gradient equals central differences."""
  rng = np.random.default_rng(1)
  p = rng.standard_normal((3, 5))
  z = rng.standard_normal((3, 5))
  p[2] *= 1e-7  # below the eps floor (linear branch)
  h_rel = 1e-6
  for a, b, grad in ((p, z, _np_grad_wrt_first(p, z)),
                     (z, p, _np_grad_wrt_first(z, p))):
    for i in range(a.shape[0]):
      h = h_rel * np.linalg.norm(a[i])
      for j in range(a.shape[1]):
        plus, minus = a.copy(), a.copy()
        plus[i, j] += h
        minus[i, j] -= h
        fd = (_np_loss(plus, b)[i] - _np_loss(minus, b)[i]) / (2 * h)
        np.testing.assert_allclose(grad[i, j], fd, rtol=1e-5,
                                   atol=1e-6 * np.abs(grad[i]).max())


def test_regression_loss_value_and_shape():
  """Value is full precision (float64 here) of shape [n] and equals the
  numpy `||p^ - z^||^2`."""
  p, z = _edge_case_batch()
  got = losses.regression_loss(jnp.asarray(p), jnp.asarray(z))
  assert got.shape == (p.shape[0],)
  assert got.dtype == jnp.float64
  want = _np_loss(p, z)
  np.testing.assert_allclose(np.asarray(got), want, rtol=1e-13, atol=1e-14)
  jitted = jax.jit(losses.regression_loss)(jnp.asarray(p), jnp.asarray(z))
  np.testing.assert_allclose(np.asarray(jitted), want, rtol=1e-13,
                             atol=1e-14)


def test_regression_loss_special_values():
  """Zero row -> 1, both zero -> 0, parallel -> 0, antiparallel -> 4."""
  p, z = _edge_case_batch()
  got = np.asarray(losses.regression_loss(jnp.asarray(p), jnp.asarray(z)))
  np.testing.assert_allclose(got[[3, 4]], 1.0, rtol=1e-14)
  assert got[5] == 0.0
  np.testing.assert_allclose(got[11], 0.0, atol=1e-15)
  np.testing.assert_allclose(got[12], 4.0, rtol=1e-15)
  # Below the floor p^ = 1e6 p, of norm sqrt(0.5) < 1, so the loss is not 0.
  want_13 = (1.0 - math.sqrt(0.5))**2
  np.testing.assert_allclose(got[13], want_13, rtol=1e-12)


def test_regression_loss_is_two_minus_two_cosine():
  """For non-degenerate rows the loss is `2 - 2 cos(p, z)`."""
  rng = np.random.default_rng(2)
  p = rng.standard_normal((64, 32))
  z = rng.standard_normal((64, 32)) * 0.1
  cos = np.sum(p * z, -1) / (
      np.linalg.norm(p, axis=-1) * np.linalg.norm(z, axis=-1))
  got = losses.regression_loss(jnp.asarray(p), jnp.asarray(z))
  np.testing.assert_allclose(np.asarray(got), 2.0 - 2.0 * cos, rtol=1e-13,
                             atol=1e-14)


def test_regression_loss_gradients():
  """d/dp and d/dz of a weighted sum equal the float64 analytic gradients."""
  # Row by row, zero and tiny-norm rows included; all entries finite.
  p, z = _edge_case_batch()
  n = p.shape[0]
  w = np.linspace(0.5, 2.0, n)

  def weighted(p_, z_):
    return jnp.sum(jnp.asarray(w) * losses.regression_loss(p_, z_))

  gp, gz = jax.jit(jax.grad(weighted, argnums=(0, 1)))(
      jnp.asarray(p), jnp.asarray(z))
  gp, gz = np.asarray(gp), np.asarray(gz)
  assert np.all(np.isfinite(gp)) and np.all(np.isfinite(gz))
  w64 = w.astype(np.float64)[:, None]
  want_p = w64 * _np_grad_wrt_first(p, z)
  want_z = w64 * _np_grad_wrt_first(z, p)
  for name, a, got, want in (("p", p, gp, want_p), ("z", z, gz, want_z)):
    for i in range(n):
      # The natural scale of row i's gradient is w_i * 2/max(||a_i||, 1e-6);
      # rounding error is relative to it (rows with exact zeros included).
      norm = max(np.linalg.norm(a[i]), math.sqrt(_EPS))
      scale = w64[i, 0] * 2.0 / norm
      np.testing.assert_allclose(got[i], want[i], rtol=1e-12,
                                 atol=1e-13 * scale,
                                 err_msg=f"d/d{name} of row {i}")


def test_regression_loss_gradient_of_zero_rows():
  """At p = 0 the gradient is 2e6 (1e6 p - z^) = -2e6 z^; 0 at p = z = 0."""
  p, z = _edge_case_batch()
  gp, gz = jax.grad(lambda a, b: jnp.sum(losses.regression_loss(a, b)),
                    argnums=(0, 1))(jnp.asarray(p), jnp.asarray(z))
  gp, gz = np.asarray(gp), np.asarray(gz)
  np.testing.assert_allclose(gp[3], -2e6 * _np_normalize(z[3]), rtol=1e-13,
                             atol=1e-14 * 2e6)
  np.testing.assert_allclose(gz[4], -2e6 * _np_normalize(p[4]), rtol=1e-13,
                             atol=1e-14 * 2e6)
  # The zero-row side gets zero gradient from the other one being constant.
  np.testing.assert_allclose(gz[3], 0.0, atol=1e-15)
  np.testing.assert_allclose(gp[4], 0.0, atol=1e-15)
  np.testing.assert_array_equal(gp[5], 0.0)
  np.testing.assert_array_equal(gz[5], 0.0)


def test_regression_loss_rows_are_independent():
  """Row i of the loss depends only on row i of p and z (per-example loss)."""
  p, z = _edge_case_batch()
  full = np.asarray(losses.regression_loss(jnp.asarray(p), jnp.asarray(z)))
  for i in (0, 3, 8, 12):
    one = losses.regression_loss(jnp.asarray(p[i:i + 1]),
                                 jnp.asarray(z[i:i + 1]))
    np.testing.assert_allclose(np.asarray(one), full[i:i + 1], rtol=1e-15,
                               atol=1e-16)


# ----------------------------------------------------------------------------
# ema_momentum
# ----------------------------------------------------------------------------


def _ref_tau(k, base, total):
  return 1.0 - (1.0 - base) * (math.cos(math.pi * k / total) + 1.0) / 2.0


@pytest.mark.parametrize("base", [0.99, 0.996])
@pytest.mark.parametrize("total", [1000, 312 * 300])
def test_ema_momentum_values(base, total):
  """tau_k equals the cosine formula at 0, 1, K/4, K/2, K-1, K (eager, jit)."""
  # Under jit the step is a traced int32; also tau_0 = base, tau_K = 1.
  fn = schedules.ema_momentum(base, total)
  jitted = jax.jit(fn)
  for k in (0, 1, total // 4, total // 2, total - 1, total):
    want = _ref_tau(k, base, total)
    eager = float(fn(k))
    traced = float(jitted(jnp.int32(k)))
    # float64 resolution near 1 is 1.1e-16.
    np.testing.assert_allclose(eager, want, rtol=0, atol=1e-15, err_msg=str(k))
    np.testing.assert_allclose(traced, want, rtol=0, atol=1e-15,
                               err_msg=str(k))
  np.testing.assert_allclose(float(fn(0)), base, rtol=0, atol=1e-15)
  np.testing.assert_allclose(float(fn(total)), 1.0, rtol=0, atol=1e-15)
  # Midpoint: exactly halfway between base and 1.
  np.testing.assert_allclose(float(fn(total // 2)), (1.0 + base) / 2,
                             rtol=0, atol=1e-15)


@pytest.mark.parametrize("base,total", [(0.99, 1000), (0.996, 312 * 300)])
def test_ema_momentum_in_range_and_monotone(base, total):
  """For k in [0, K], tau_k lies in [base, 1] and never decreases."""
  fn = jax.jit(jax.vmap(schedules.ema_momentum(base, total)))
  steps = np.unique(np.linspace(0, total, 2001).astype(np.int32))
  taus = np.asarray(fn(jnp.asarray(steps)), np.float64)
  assert np.all(taus >= base), taus.min()
  assert np.all(taus <= 1.0), taus.max()
  assert np.all(np.diff(taus) >= 0.0)
  want = np.array([_ref_tau(int(k), base, total) for k in steps])
  np.testing.assert_allclose(taus, want, rtol=0, atol=1e-14)


def test_ema_momentum_past_total_steps():
  """Past K the implementation clamps the step: tau stays exactly 1."""
  # The spec does not say; the unclamped formula would fall back towards base.
  base, total = 0.99, 1000
  fn = schedules.ema_momentum(base, total)
  jitted = jax.jit(fn)
  for k in (total + 1, total + total // 4, 3 * total // 2, 2 * total,
            10 * total):
    assert float(fn(k)) == 1.0, k
    assert float(jitted(jnp.int32(k))) == 1.0, k
  # The unclamped formula would fall back towards base: 0.99854 at 5K/4.
  assert _ref_tau(total + total // 4, base, total) < 0.999


# ----------------------------------------------------------------------------
# lars(lr_in_momentum=False)
# ----------------------------------------------------------------------------

# The tree of test_optim (conv/dense kernels, dense bias, BN scale and bias).
_SHAPES = lars_trees.SHAPES
_LEAVES = lars_trees.LEAVES
_WD = 0.1
_MOMENTUM = 0.9


_get = lars_trees.get
_random_tree = lars_trees.random_tree
_to_jnp = lars_trees.to_jnp


def _lr_schedule(count):
  return 0.5 + 0.25 * count


def _np_byol_lars(params, grads_seq, lr_fn, *, trust_coefficient, nesterov,
                  weight_decay=_WD, momentum=_MOMENTUM, mask=None):
  """float64 optax-style LARS; returns per-step updates (dicts) and params.

  Masked-in: `u = g + wd p`, `u *= eta ||p|| / ||u||` (1 if a norm is 0);
  masked-out: `u = g`. Then `m = momentum m + u` and the update is
  `-lr_t m` (Nesterov: `-lr_t (momentum m + u)`).
  """
  mask = dict(_LEAVES) if mask is None else mask
  params = {path: np.asarray(_get(params, path), np.float64)
            for path, _ in _LEAVES}
  trace = {path: np.zeros_like(p) for path, p in params.items()}
  all_updates = []
  for count, grads in enumerate(grads_seq):
    lr = float(lr_fn(count))
    updates = {}
    for path, _ in _LEAVES:
      p = params[path]
      u = np.asarray(_get(grads, path), np.float64)
      if mask[path]:
        u = u + weight_decay * p
        p_norm, u_norm = np.linalg.norm(p), np.linalg.norm(u)
        trust = (trust_coefficient * p_norm / u_norm
                 if p_norm > 0 and u_norm > 0 else 1.0)
        u = trust * u
      trace[path] = momentum * trace[path] + u
      step = momentum * trace[path] + u if nesterov else trace[path]
      updates[path] = -lr * step
      params[path] = p + updates[path]
    all_updates.append(updates)
  return all_updates, params


def _run(tx, params, grads_seq, jit=False):
  """Applies `tx` for len(grads_seq) steps; returns updates and params."""
  params = _to_jnp(params)
  state = tx.init(params)
  update = jax.jit(tx.update) if jit else tx.update
  all_updates = []
  for grads in grads_seq:
    updates, state = update(_to_jnp(grads), state, params)
    params = optax.apply_updates(params, updates)
    all_updates.append(updates)
  return all_updates, params


def _assert_close(got, want, what):
  got, want = np.asarray(got), np.asarray(want, np.float64)
  assert got.dtype == np.float64, what
  np.testing.assert_allclose(got, want, rtol=1e-12,
                             atol=1e-13 * np.abs(want).max(), err_msg=what)


def _assert_matches(got_updates, got_params, want_updates, want_params):
  for step, (got, want) in enumerate(zip(got_updates, want_updates)):
    for path, _ in _LEAVES:
      _assert_close(_get(got, path), want[path],
                    f"update of {path} at step {step}")
  for path, _ in _LEAVES:
    _assert_close(_get(got_params, path), want_params[path], f"param {path}")


def _grads_seq():
  return [_random_tree(11, 0.5), _random_tree(12, 2.0), _random_tree(13, 1.0)]


def _byol_lars(lr, trust_coefficient=1e-3, nesterov=False, **kwargs):
  return optim.lars(lr, weight_decay=_WD, momentum=_MOMENTUM,
                    trust_coefficient=trust_coefficient, nesterov=nesterov,
                    lr_in_momentum=False, **kwargs)


def _classic_lars(lr, trust_coefficient=1e-3, nesterov=False):
  return optim.lars(lr, weight_decay=_WD, momentum=_MOMENTUM,
                    trust_coefficient=trust_coefficient, nesterov=nesterov)


@pytest.mark.parametrize("nesterov", [False, True])
# 2.0 > weight_decay gives a trust ratio above 1 (no clipping).
@pytest.mark.parametrize("trust_coefficient", [1e-3, 2.0])
def test_byol_lars_matches_reference(nesterov, trust_coefficient):
  """Three steps equal the float64 optax-style LARS (lr outside the buffer)."""
  # lr_c = 0.5 + 0.25 c, weight decay 0.1, eagerly and under jit.
  params = _random_tree(10)
  grads_seq = _grads_seq()
  want_updates, want_params = _np_byol_lars(
      params, grads_seq, _lr_schedule, trust_coefficient=trust_coefficient,
      nesterov=nesterov)
  for jit in (False, True):
    tx = _byol_lars(_lr_schedule, trust_coefficient, nesterov)
    got_updates, got_params = _run(tx, params, grads_seq, jit=jit)
    _assert_matches(got_updates, got_params, want_updates, want_params)


@pytest.mark.parametrize("nesterov", [False, True])
def test_byol_lars_masked_out_leaves(nesterov):
  """Biases/BN scales: m = 0.9 m + g, update -lr_t m (no decay, no trust)."""
  # Nesterov: -lr_t (0.9 m + g). Written out by hand for three steps.
  params = _random_tree(10)
  grads_seq = _grads_seq()
  got_updates, _ = _run(_byol_lars(_lr_schedule, nesterov=nesterov), params,
                        grads_seq)
  m = _MOMENTUM
  for path, adapted in _LEAVES:
    if adapted:
      continue
    g0, g1, g2 = (np.asarray(_get(g, path), np.float64) for g in grads_seq)
    m0 = g0
    m1 = m * m0 + g1
    m2 = m * m1 + g2
    if nesterov:
      want = [-0.5 * (m * m0 + g0), -0.75 * (m * m1 + g1),
              -1.0 * (m * m2 + g2)]
    else:
      want = [-0.5 * m0, -0.75 * m1, -1.0 * m2]
    for step in range(3):
      _assert_close(_get(got_updates[step], path), want[step],
                    f"{path} step {step}")


def test_byol_lars_learning_rate_rescales_whole_buffer():
  """The current rate rescales the whole buffer: update_1 = -lr_1 0.9 g_0."""
  # Zero gradient at step 1 on masked-out leaves; classic gives -0.9 lr_0 g_0.
  params = _random_tree(10)
  g0 = _random_tree(11)
  grads_seq = [g0, jax.tree.map(np.zeros_like, g0)]
  new_updates, _ = _run(_byol_lars(_lr_schedule), params, grads_seq)
  classic_updates, _ = _run(_classic_lars(_lr_schedule), params, grads_seq)
  for path, adapted in _LEAVES:
    if adapted:
      continue
    g = np.asarray(_get(g0, path), np.float64)
    _assert_close(_get(new_updates[1], path), -0.75 * _MOMENTUM * g,
                  f"new {path}")
    _assert_close(_get(classic_updates[1], path), -0.5 * _MOMENTUM * g,
                  f"classic {path}")


@pytest.mark.parametrize("nesterov", [False, True])
def test_byol_lars_vs_classic(nesterov):
  """The forms agree at step 0 and differ by -m^(1+n) (lr_1 - lr_0) u_0 next."""
  # n = 1 for Nesterov; u_0 is the trust-scaled step-0 direction.
  params = _random_tree(10)
  grads_seq = _grads_seq()[:2]
  new_updates, _ = _run(_byol_lars(_lr_schedule, nesterov=nesterov), params,
                        grads_seq)
  classic_updates, _ = _run(_classic_lars(_lr_schedule, nesterov=nesterov),
                            params, grads_seq)
  m = _MOMENTUM
  for path, adapted in _LEAVES:
    new0 = np.asarray(_get(new_updates[0], path), np.float64)
    classic0 = np.asarray(_get(classic_updates[0], path), np.float64)
    _assert_close(new0, classic0, f"step 0 {path}")
    # u_0: the trust-scaled direction of step 0 (update_0 = -lr_0 (1+m n) u_0).
    u0 = -classic0 / (0.5 * ((1 + m) if nesterov else 1.0))
    new1 = np.asarray(_get(new_updates[1], path), np.float64)
    classic1 = np.asarray(_get(classic_updates[1], path), np.float64)
    diff = new1 - classic1
    want_diff = -(m**2 if nesterov else m) * (0.75 - 0.5) * u0
    _assert_close(diff, want_diff, f"step 1 difference {path}")
    # The difference is not negligible: the two forms really differ.
    assert np.abs(diff).max() > 1e-2 * np.abs(new1).max(), path


@pytest.mark.parametrize("nesterov", [False, True])
def test_byol_lars_constant_rate_equals_classic(nesterov):
  """With a constant float rate both forms agree at every step (and the ref)."""
  params = _random_tree(20)
  grads_seq = _grads_seq()
  new_updates, new_params = _run(_byol_lars(0.3, nesterov=nesterov), params,
                                 grads_seq)
  classic_updates, _ = _run(_classic_lars(0.3, nesterov=nesterov), params,
                            grads_seq)
  for step in range(len(grads_seq)):
    for path, _ in _LEAVES:
      _assert_close(_get(new_updates[step], path),
                    _get(classic_updates[step], path), f"{path} step {step}")
  want_updates, want_params = _np_byol_lars(
      params, grads_seq, lambda _: 0.3, trust_coefficient=1e-3,
      nesterov=nesterov)
  _assert_matches(new_updates, new_params, want_updates, want_params)


def test_byol_lars_zero_kernel_gets_trust_one():
  """||p|| = 0 gives trust 1 (update -lr g); ||p|| = ||u|| = 0 gives 0."""
  params = _random_tree(10)
  params["conv"]["kernel"] = np.zeros_like(params["conv"]["kernel"])
  grads = _random_tree(11)
  updates, _ = _run(_byol_lars(_lr_schedule), params, [grads])
  _assert_close(_get(updates[0], ("conv", "kernel")),
                -0.5 * grads["conv"]["kernel"],
                "zero kernel")
  grads["conv"]["kernel"] = np.zeros_like(grads["conv"]["kernel"])
  updates, _ = _run(_byol_lars(_lr_schedule), params, [grads])
  got = np.asarray(_get(updates[0], ("conv", "kernel")))
  assert np.all(np.isfinite(got))
  np.testing.assert_array_equal(got, 0.0)


def test_byol_lars_explicit_mask():
  """An all-True mask also decays and trust-scales biases and BN scales."""
  params = _random_tree(10)
  grads_seq = _grads_seq()[:2]
  all_true = jax.tree.map(lambda _: True, params)
  tx = _byol_lars(_lr_schedule, mask=all_true)
  got_updates, got_params = _run(tx, params, grads_seq)
  want_updates, want_params = _np_byol_lars(
      params, grads_seq, _lr_schedule, trust_coefficient=1e-3,
      nesterov=False, mask={path: True for path, _ in _LEAVES})
  _assert_matches(got_updates, got_params, want_updates, want_params)
