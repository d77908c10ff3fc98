"""SwAV's Sinkhorn codes and loss, DINO's loss, centre and teacher
temperature: against independent float64 numpy formulas and across devices
(4 devices = 1 device on the concatenated batch)."""

import jax
from jax import lax
import jax.numpy as jnp
from jax.sharding import PartitionSpec as P
import numpy as np
import pytest

import mesh_runs
from jaxssl import losses
from jaxssl import schedules
from jaxssl import sharding

DATA = sharding.DATA_AXIS


def _sinkhorn_float64(scores, epsilon=0.05, num_iters=3):
  """The reference's algorithm on one device, numpy float64."""
  q = np.exp(np.asarray(scores, np.float64) / epsilon).T
  k, b = q.shape
  q /= q.sum()
  for _ in range(num_iters):
    q /= q.sum(axis=1, keepdims=True)
    q /= k
    q /= q.sum(axis=0, keepdims=True)
    q /= b
  return (q * b).T


def _scores(n, k, seed=0):
  """Cosine-like scores in [-1, 1] of n rows and k prototypes."""
  rng = np.random.default_rng(seed)
  z = rng.normal(size=(n, 8))
  c = rng.normal(size=(k, 8))
  z /= np.linalg.norm(z, axis=1, keepdims=True)
  c /= np.linalg.norm(c, axis=1, keepdims=True)
  return z @ c.T


def _on_devices(fn, num_devices, in_specs, out_specs):
  mesh = sharding.data_mesh(jax.devices()[:num_devices])
  return jax.jit(jax.shard_map(fn, mesh=mesh, in_specs=in_specs,
                               out_specs=out_specs))


# ----------------------------------------------------------------------------
# Sinkhorn
# ----------------------------------------------------------------------------


def test_sinkhorn_matches_float64_formula_and_equipartitions():
  scores = _scores(32, 10)
  with mesh_runs.float64():
    codes = losses.sinkhorn(jnp.asarray(scores))
    np.testing.assert_allclose(codes, _sinkhorn_float64(scores), rtol=1e-12)
    np.testing.assert_allclose(np.sum(codes, axis=1), 1.0, rtol=1e-12)
    # Prototype marginals over the batch approach B/K with more iterations.
    gaps = [np.abs(np.sum(losses.sinkhorn(jnp.asarray(scores), num_iters=it),
                          axis=0) - 32 / 10).max() for it in (1, 3, 10, 50, 200)]
  assert all(a > b for a, b in zip(gaps, gaps[1:])), gaps
  assert gaps[-1] < 1e-6 < gaps[0], gaps  # 3e-9 after 200


def test_sinkhorn_on_4_devices_equals_one_device():
  scores = _scores(32, 10, seed=1)
  with mesh_runs.float64():
    one = losses.sinkhorn(jnp.asarray(scores), epsilon=0.1, num_iters=5)
    four = _on_devices(
        lambda s: losses.sinkhorn(s, epsilon=0.1, num_iters=5,
                                  axis_name=DATA),
        4, P(DATA), P(DATA))(jnp.asarray(scores))
  np.testing.assert_allclose(four, one, rtol=1e-12)
  np.testing.assert_allclose(one, _sinkhorn_float64(scores, 0.1, 5),
                             rtol=1e-12)


# ----------------------------------------------------------------------------
# SwAV loss
# ----------------------------------------------------------------------------


def _log_softmax(x):
  x = x - x.max(axis=1, keepdims=True)
  return x - np.log(np.exp(x).sum(axis=1, keepdims=True))


def _swav_float64(scores, num_crops, crops_for_assign, tau, queue=None):
  """Loss and its gradient w.r.t. the scores (codes held constant)."""
  scores = np.asarray(scores, np.float64)
  n = len(scores) // num_crops
  crops = np.split(scores, num_crops)
  loss, grad = 0.0, np.zeros_like(scores)
  for i, c in enumerate(crops_for_assign):
    out = crops[c] if queue is None else np.concatenate([queue[i], crops[c]])
    codes = _sinkhorn_float64(out)[-n:]
    for v in range(num_crops):
      if v == c:
        continue
      x = crops[v] / tau
      weight = 1.0 / (num_crops - 1) / len(crops_for_assign)
      loss -= weight * np.mean(np.sum(codes * _log_softmax(x), axis=1))
      p = np.exp(_log_softmax(x))
      grad[v * n:(v + 1) * n] += weight * (p - codes) / (tau * n)
  return loss, grad


@pytest.mark.parametrize("with_queue", [False, True])
def test_swav_value_and_gradient_match_float64_formula(with_queue):
  scores = _scores(4 * 8, 12, seed=2)  # 4 crops of 8 images
  queue = [_scores(16, 12, seed=3), _scores(16, 12, seed=4)]
  kwargs = dict(num_crops=4, crops_for_assign=(0, 1), temperature=0.1)
  with mesh_runs.float64():
    fn = lambda s: losses.swav(  # pylint: disable=g-long-lambda
        s, queue_scores=[jnp.asarray(q) for q in queue] if with_queue
        else None, **kwargs)
    value, grad = jax.value_and_grad(fn)(jnp.asarray(scores))
  want, want_grad = _swav_float64(scores, 4, (0, 1), 0.1,
                                  queue if with_queue else None)
  np.testing.assert_allclose(value, want, rtol=1e-12)
  np.testing.assert_allclose(grad, want_grad, rtol=1e-9, atol=1e-15)
  # The assigned crops' own scores get gradient only as predictors.
  assert np.abs(np.asarray(grad)).min() > 0


def test_swav_on_4_devices_equals_one_device():
  """Crop-major rows per device: device d holds rows d of every crop; the
  pmean of the local losses and its gradient = one device's."""
  num_crops, n, k = 3, 16, 10
  scores = _scores(num_crops * n, k, seed=5)
  kwargs = dict(num_crops=num_crops, crops_for_assign=(0, 1),
                temperature=0.1)
  # Global crop-major → per device crop-major (4 images each).
  per_device = scores.reshape(num_crops, 4, n // 4, k).transpose(1, 0, 2, 3)
  flat = per_device.reshape(-1, k)

  def local(s):
    return lax.pmean(losses.swav(s, axis_name=DATA, **kwargs), DATA)

  with mesh_runs.float64():
    v1, g1 = jax.value_and_grad(lambda s: losses.swav(s, **kwargs))(
        jnp.asarray(scores))
    v4, g4 = jax.value_and_grad(_on_devices(local, 4, P(DATA), P()))(
        jnp.asarray(flat))
  np.testing.assert_allclose(v4, v1, rtol=1e-12)
  g1_per_device = np.asarray(g1).reshape(num_crops, 4, n // 4, k).transpose(
      1, 0, 2, 3).reshape(-1, k)
  np.testing.assert_allclose(g4, g1_per_device, rtol=1e-9, atol=1e-15)


# ----------------------------------------------------------------------------
# DINO loss, centre, teacher temperature
# ----------------------------------------------------------------------------


def _dino_float64(student, teacher, center, tau_t, tau_s, crops_t, m):
  student = np.asarray(student, np.float64)
  teacher = np.asarray(teacher, np.float64)
  n = len(teacher) // crops_t
  s = np.split(student, len(student) // n)
  t = teacher - np.reshape(center, -1)
  t = np.exp(_log_softmax(t / tau_t))
  t = np.split(t, crops_t)
  pairs = [(i, v) for i in range(crops_t) for v in range(len(s)) if v != i]
  loss, grad = 0.0, np.zeros_like(student)
  for i, v in pairs:
    log_p = _log_softmax(s[v] / tau_s)
    loss += np.mean(np.sum(-t[i] * log_p, axis=1)) / len(pairs)
    grad[v * n:(v + 1) * n] += (np.exp(log_p) - t[i]) / (tau_s * n) / len(
        pairs)
  new_center = (np.reshape(center, -1) * m
                + teacher.mean(axis=0) * (1 - m)).reshape(np.shape(center))
  return loss, grad, new_center


def _dino_inputs(seed=0, n=8, k=16, crops=5):
  rng = np.random.default_rng(seed)
  student = rng.normal(size=(crops * n, k))
  teacher = rng.normal(size=(2 * n, k)) * 2
  center = rng.normal(size=(1, k)) * 0.1
  return student, teacher, center


@pytest.mark.parametrize("center_shape", ["1K", "K"])
def test_dino_value_gradient_and_centre_match_float64_formula(center_shape):
  student, teacher, center = _dino_inputs()
  if center_shape == "K":
    center = center[0]
  kwargs = dict(teacher_temperature=0.04, student_temperature=0.1,
                num_teacher_crops=2, center_momentum=0.9)
  with mesh_runs.float64():
    def fn(s, t):
      return losses.dino(s, t, jnp.asarray(center), **kwargs)
    (value, new_center), (g_student, g_teacher) = jax.value_and_grad(
        fn, argnums=(0, 1), has_aux=True)(jnp.asarray(student),
                                          jnp.asarray(teacher))
  want, want_grad, want_center = _dino_float64(student, teacher, center,
                                               0.04, 0.1, 2, 0.9)
  np.testing.assert_allclose(value, want, rtol=1e-12)
  np.testing.assert_allclose(g_student, want_grad, rtol=1e-9, atol=1e-15)
  np.testing.assert_array_equal(g_teacher, 0.0)  # the teacher gets none
  assert new_center.shape == center.shape
  np.testing.assert_allclose(new_center, want_center, rtol=1e-12)


def test_dino_centre_after_three_chained_updates_and_on_4_devices():
  """Three steps of teacher outputs through the centre (float64), and the
  loss, gradient and centre of 4 devices = one device."""
  k = 16
  rng = np.random.default_rng(1)
  center = np.zeros((1, k))
  want = center.copy()
  outputs = [rng.normal(size=(2 * 8, k)) for _ in range(3)]
  student = rng.normal(size=(4 * 8, k))
  with mesh_runs.float64():
    got = jnp.asarray(center)
    for t in outputs:
      _, got = losses.dino(jnp.asarray(student), jnp.asarray(t), got,
                           teacher_temperature=0.05)
      want = 0.9 * want + 0.1 * t.mean(axis=0, keepdims=True)
    np.testing.assert_allclose(got, want, rtol=1e-12)

    # 4 devices: crop-major rows per device (2 images of each crop).
    def per_device(rows, crops):
      return rows.reshape(crops, 4, 2, k).transpose(1, 0, 2, 3).reshape(-1, k)

    def local(s, t, c):
      loss, new = losses.dino(s, t, c, teacher_temperature=0.05,
                              axis_name=DATA)
      return lax.pmean(loss, DATA), new

    four = _on_devices(local, 4, (P(DATA), P(DATA), P()), (P(), P()))
    (v4, c4), g4 = jax.value_and_grad(
        lambda s: four(s, jnp.asarray(per_device(outputs[0], 2)),
                       jnp.asarray(center)), has_aux=True)(
                           jnp.asarray(per_device(student, 4)))
    (v1, c1), g1 = jax.value_and_grad(
        lambda s: losses.dino(s, jnp.asarray(outputs[0]), jnp.asarray(center),
                              teacher_temperature=0.05), has_aux=True)(
                                  jnp.asarray(student))
  np.testing.assert_allclose(v4, v1, rtol=1e-12)
  np.testing.assert_allclose(c4, c1, rtol=1e-12)
  np.testing.assert_allclose(g4, per_device(np.asarray(g1), 4), rtol=1e-9,
                             atol=1e-15)


def test_dino_teacher_temperature_is_the_references_per_epoch_array():
  fn = schedules.dino_teacher_temperature(0.04, 0.07, 30, 100,
                                          steps_per_epoch=10)
  table = np.concatenate([np.linspace(0.04, 0.07, 30), np.full(70, 0.07)])
  for step in (0, 9, 10, 155, 299, 300, 999, 5000):
    want = table[min(step // 10, 99)]
    assert float(fn(step)) == pytest.approx(want, abs=1e-7), step
  with pytest.raises(ValueError, match="warmup_epochs=30 <= epochs=20"):
    schedules.dino_teacher_temperature(0.04, 0.07, 30, 20, 10)
