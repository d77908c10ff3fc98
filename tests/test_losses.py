"""Tests for `jaxssl.losses.nt_xent` against an independent float64 reference.

The reference below is written from the SimCLR TF2 semantics
(`objective.add_contrastive_loss`) in plain numpy float64; gradients come from
central finite differences of that reference, so nothing here reuses library
helpers.
"""

import jax
from jax import lax
import jax.numpy as jnp
from jax.sharding import PartitionSpec as P
import numpy as np
import pytest

import mesh_runs
import numeric
from jaxssl import losses

_LARGE_NUM = 1e9
_NUM_DEVICES = 4


# ----------------------------------------------------------------------------
# float64 numpy reference
# ----------------------------------------------------------------------------


def _np_normalize(x):
  """Row-wise `x * rsqrt(max(sum(x**2), 1e-12))` in float64."""
  sq = np.sum(x * x, axis=1, keepdims=True)
  return x / np.sqrt(np.maximum(sq, 1e-12))


def _np_log_softmax(x):
  m = np.max(x, axis=1, keepdims=True)
  return x - m - np.log(np.sum(np.exp(x - m), axis=1, keepdims=True))


def _np_nt_xent(z1, z2, temperature, normalize=True, start=0, stop=None):
  """Reference (loss, accuracy) of the global-batch anchors `start:stop`.

  `z1`, `z2` are the views of the *global* batch; the anchors are the global
  rows `start..stop-1` (one device's local batch), each scored against every
  row of the global batch.
  """
  z1 = np.asarray(z1, np.float64)
  z2 = np.asarray(z2, np.float64)
  if normalize:
    z1, z2 = _np_normalize(z1), _np_normalize(z2)
  num_global = z1.shape[0]
  stop = num_global if stop is None else stop
  pos = np.arange(start, stop)
  rows = np.arange(len(pos))
  mask = np.zeros((len(pos), num_global))
  mask[rows, pos] = _LARGE_NUM
  logits_ab = z1[pos] @ z2.T / temperature
  logits_aa = z1[pos] @ z1.T / temperature - mask
  logits_ba = z2[pos] @ z1.T / temperature
  logits_bb = z2[pos] @ z2.T / temperature - mask

  def xent(logits):
    return -np.mean(_np_log_softmax(logits)[rows, pos])

  loss = (xent(np.concatenate([logits_ab, logits_aa], axis=1)) +
          xent(np.concatenate([logits_ba, logits_bb], axis=1)))
  accuracy = np.mean(np.argmax(logits_ab, axis=1) == pos)
  return loss, accuracy


_np_fd_grad = numeric.central_difference


def _np_grads(z1, z2, temperature, normalize, step=1e-6):
  z1 = np.asarray(z1, np.float64)
  z2 = np.asarray(z2, np.float64)
  g1 = _np_fd_grad(
      lambda a: _np_nt_xent(a, z2, temperature, normalize)[0], z1, step)
  g2 = _np_fd_grad(
      lambda b: _np_nt_xent(z1, b, temperature, normalize)[0], z2, step)
  return g1, g2


def _assert_grad_close(got, want):
  """Gradient check with an atol scaled to the gradient's size."""
  got = np.asarray(got, np.float64)
  atol = 1e-5 * np.max(np.abs(want)) + 1e-7
  np.testing.assert_allclose(got, want, rtol=1e-5, atol=atol)


def _inputs(n, d, normalize, seed=0):
  """float32 views; scaled down without normalisation to keep logits sane."""
  rng = np.random.default_rng(seed)
  scale = 1.0 if normalize else 0.3
  z1 = (scale * rng.standard_normal((n, d))).astype(np.float32)
  z2 = (scale * rng.standard_normal((n, d))).astype(np.float32)
  return z1, z2


def test_reference_sanity():
  """The numpy reference itself: n=1 gives 0, identical views beat random."""
  z = np.array([[1.0, 2.0, 3.0]])
  assert _np_nt_xent(z, -z, 0.5)[0] == pytest.approx(0.0, abs=1e-12)
  # Two orthogonal anchors with their positives equal to themselves: every
  # logit is either 1/T (positive) or 0, so loss_a = loss_b = log(1 + 2 e^-1/T)
  # up to the masked entry.
  e = np.eye(2)
  t = 0.5
  want = 2 * np.log(1 + 2 * np.exp(-1 / t))
  assert _np_nt_xent(e, e, t)[0] == pytest.approx(want, rel=1e-12)


# ----------------------------------------------------------------------------
# single device: value and gradient
# ----------------------------------------------------------------------------


@pytest.mark.parametrize("normalize", [True, False])
@pytest.mark.parametrize("temperature", [0.1, 0.5, 1.0])
@pytest.mark.parametrize("n,d", [(1, 3), (4, 8), (7, 16)])
def test_nt_xent_value_and_grad_match_numpy(n, d, temperature, normalize):
  """Loss value and d/dz1, d/dz2 equal the float64 reference (FD gradients)."""
  z1, z2 = _inputs(n, d, normalize, seed=n * 100 + d)
  loss_fn = lambda a, b: losses.nt_xent(a, b, temperature, normalize=normalize)
  loss, (g1, g2) = jax.value_and_grad(loss_fn, argnums=(0, 1))(
      jnp.asarray(z1), jnp.asarray(z2))
  assert loss.shape == ()
  want, _ = _np_nt_xent(z1, z2, temperature, normalize)
  np.testing.assert_allclose(float(loss), want, rtol=1e-5, atol=1e-6)
  want_g1, want_g2 = _np_grads(z1, z2, temperature, normalize)
  assert g1.shape == z1.shape and g2.shape == z2.shape
  _assert_grad_close(g1, want_g1)
  _assert_grad_close(g2, want_g2)


def test_nt_xent_single_anchor_is_zero():
  """With n=1 the only negative is the masked self-similarity: loss = 0."""
  z1, z2 = _inputs(1, 5, True, seed=3)
  loss = losses.nt_xent(jnp.asarray(z1), jnp.asarray(z2), 0.1)
  np.testing.assert_allclose(float(loss), 0.0, atol=1e-6)


def test_nt_xent_is_symmetric_in_views():
  """loss_a + loss_b is invariant under swapping the two views."""
  z1, z2 = _inputs(5, 6, True, seed=11)
  a = losses.nt_xent(jnp.asarray(z1), jnp.asarray(z2), 0.2)
  b = losses.nt_xent(jnp.asarray(z2), jnp.asarray(z1), 0.2)
  np.testing.assert_allclose(float(a), float(b), rtol=1e-5)


def test_nt_xent_normalize_is_scale_invariant():
  """With normalize=True rescaling rows leaves the loss unchanged, but not with
  normalize=False."""
  z1, z2 = _inputs(4, 6, True, seed=12)
  scales = np.array([[0.5], [2.0], [3.0], [0.25]], np.float32)
  base = losses.nt_xent(jnp.asarray(z1), jnp.asarray(z2), 0.5)
  scaled = losses.nt_xent(jnp.asarray(z1 * scales), jnp.asarray(z2), 0.5)
  np.testing.assert_allclose(float(scaled), float(base), rtol=1e-5)
  raw = losses.nt_xent(
      jnp.asarray(z1), jnp.asarray(z2), 0.5, normalize=False)
  raw_scaled = losses.nt_xent(
      jnp.asarray(z1 * scales), jnp.asarray(z2), 0.5, normalize=False)
  assert abs(float(raw) - float(raw_scaled)) > 1e-3


def test_nt_xent_zero_rows_are_finite():
  """Zero rows with normalize=True give a finite loss and gradient matching
  the reference (the 1e-12 floor on the squared norm)."""
  z1, z2 = _inputs(4, 5, True, seed=21)
  z1[2] = 0.0
  z2[0] = 0.0
  t = 0.5
  loss, (g1, g2) = jax.value_and_grad(
      lambda a, b: losses.nt_xent(a, b, t), argnums=(0, 1))(
          jnp.asarray(z1), jnp.asarray(z2))
  assert np.isfinite(float(loss))
  assert np.all(np.isfinite(np.asarray(g1)))
  assert np.all(np.isfinite(np.asarray(g2)))
  want, _ = _np_nt_xent(z1, z2, t)
  np.testing.assert_allclose(float(loss), want, rtol=1e-5)
  # Around a zero row the normalisation is x * 1e6 for |x| < 1e-6, so the
  # finite-difference step must stay inside that linear region there.
  step1 = np.where(np.all(z1 == 0, axis=1, keepdims=True), 1e-12, 1e-6)
  step2 = np.where(np.all(z2 == 0, axis=1, keepdims=True), 1e-12, 1e-6)
  z1d = z1.astype(np.float64)
  z2d = z2.astype(np.float64)
  want_g1 = _np_fd_grad(lambda a: _np_nt_xent(a, z2d, t)[0], z1d, step1)
  want_g2 = _np_fd_grad(lambda b: _np_nt_xent(z1d, b, t)[0], z2d, step2)
  # The zero rows' gradients are ~1e6 larger; compare them separately.
  for got, want, zero_row in ((g1, want_g1, 2), (g2, want_g2, 0)):
    got = np.asarray(got)
    rest = np.arange(got.shape[0]) != zero_row
    _assert_grad_close(got[zero_row], want[zero_row])
    _assert_grad_close(got[rest], want[rest])


# ----------------------------------------------------------------------------
# accuracy
# ----------------------------------------------------------------------------


@mesh_runs.float64()
def test_accuracy_is_one_for_near_identical_views():
  """z2 = z1 + tiny noise: every anchor's best view-2 match is its positive.
  (float64: the small loss is a difference of logits of ~10, where float32
  keeps ~1e-5 of it.)"""
  rng = np.random.default_rng(31)
  z1 = rng.standard_normal((8, 16))
  z2 = z1 + 1e-3 * rng.standard_normal(z1.shape)
  loss, acc = losses.nt_xent_and_accuracy(jnp.asarray(z1), jnp.asarray(z2), 0.1)
  assert float(acc) == 1.0 and loss.dtype == np.float64
  want_loss, _ = _np_nt_xent(z1, z2, 0.1)
  np.testing.assert_allclose(float(loss), want_loss, rtol=1e-12)


def _permuted_views(seed=32):
  """Global batch of 12 whose view 2 swaps (0,5), (2,9), (7,11): accuracy 1/2.

  Per block of 3 rows (4 devices) the fixed points are {1}, {3,4}, {6,8},
  {10}: local accuracies 1/3, 2/3, 2/3, 1/3.
  """
  rng = np.random.default_rng(seed)
  z1 = rng.standard_normal((12, 16)).astype(np.float32)
  perm = np.arange(12)
  for i, j in ((0, 5), (2, 9), (7, 11)):
    perm[i], perm[j] = j, i
  z2 = (z1[perm] + 1e-3 * rng.standard_normal(z1.shape)).astype(np.float32)
  return z1, z2


def test_accuracy_known_permutation():
  """Half the anchors have their positive swapped away: accuracy 0.5."""
  z1, z2 = _permuted_views()
  _, acc = losses.nt_xent_and_accuracy(jnp.asarray(z1), jnp.asarray(z2), 0.5)
  np.testing.assert_allclose(float(acc), 0.5, atol=1e-7)
  assert _np_nt_xent(z1, z2, 0.5)[1] == 0.5


@pytest.mark.parametrize("normalize", [True, False])
def test_accuracy_random_matches_numpy_argmax(normalize):
  """Random views: accuracy equals the numpy argmax over the ab block only."""
  rng = np.random.default_rng(33)
  z1 = rng.standard_normal((16, 4)).astype(np.float32)
  # Correlated but noisy views, so the accuracy is strictly between 0 and 1.
  z2 = (z1 + 0.8 * rng.standard_normal(z1.shape)).astype(np.float32)
  loss, acc = losses.nt_xent_and_accuracy(
      jnp.asarray(z1), jnp.asarray(z2), 0.5, normalize=normalize)
  want_loss, want_acc = _np_nt_xent(z1, z2, 0.5, normalize)
  assert 0.0 < want_acc < 1.0
  np.testing.assert_allclose(float(acc), want_acc, atol=1e-7)
  np.testing.assert_allclose(float(loss), want_loss, rtol=1e-5)
  # nt_xent returns the same loss as nt_xent_and_accuracy.
  np.testing.assert_allclose(
      float(losses.nt_xent(jnp.asarray(z1), jnp.asarray(z2), 0.5,
                           normalize=normalize)),
      float(loss), rtol=1e-6)


# ----------------------------------------------------------------------------
# 4 devices: shard_map with the global batch gathered over 'data'
# ----------------------------------------------------------------------------


def _sharded_fn(temperature, normalize):
  mesh = jax.sharding.Mesh(np.array(jax.devices()[:_NUM_DEVICES]), ("data",))

  def f(z1, z2):
    def global_loss(a, b):
      local = losses.nt_xent(
          a, b, temperature, normalize=normalize, axis_name="data")
      return lax.pmean(local, "data")

    loss, (g1, g2) = jax.value_and_grad(global_loss, argnums=(0, 1))(z1, z2)
    local_loss, local_acc = losses.nt_xent_and_accuracy(
        z1, z2, temperature, normalize=normalize, axis_name="data")
    return loss, g1, g2, local_loss[None], local_acc[None]

  return jax.jit(
      jax.shard_map(
          f,
          mesh=mesh,
          in_specs=(P("data"), P("data")),
          out_specs=(P(), P("data"), P("data"), P("data"), P("data"))))


@pytest.mark.parametrize("normalize", [True, False])
@mesh_runs.float64()
def test_nt_xent_sharded_equals_single_device(normalize):
  """pmean of per-device losses (and its gradient) over 4 devices equals the
  single-device loss on the concatenated batch and the numpy reference;
  each device's own loss is the mean over its own anchors (float64)."""
  t = 0.2
  n_local, d = 3, 8
  n = n_local * _NUM_DEVICES
  z1, z2 = (z.astype(np.float64) for z in _inputs(n, d, normalize, seed=41))
  loss, g1, g2, local_loss, local_acc = _sharded_fn(t, normalize)(
      jnp.asarray(z1), jnp.asarray(z2))
  assert loss.dtype == g1.dtype == np.float64

  single_loss, (s1, s2) = jax.value_and_grad(
      lambda a, b: losses.nt_xent(a, b, t, normalize=normalize),
      argnums=(0, 1))(jnp.asarray(z1), jnp.asarray(z2))
  np.testing.assert_allclose(float(loss), float(single_loss),
                             rtol=mesh_runs.RTOL)
  for got, want in ((g1, s1), (g2, s2)):
    mesh_runs.assert_trees_close(np.asarray(got), np.asarray(want),
                                 rtol=mesh_runs.RTOL)

  want_loss, want_acc = _np_nt_xent(z1, z2, t, normalize)
  np.testing.assert_allclose(float(loss), want_loss, rtol=1e-12)
  # Central differences (_np_grads): truncation ~1e-9 of the gradient.
  for got, want in zip((g1, g2), _np_grads(z1, z2, t, normalize)):
    np.testing.assert_allclose(np.asarray(got), want, rtol=1e-7,
                               atol=1e-7 * np.abs(want).max())

  per_device = [
      _np_nt_xent(z1, z2, t, normalize, k * n_local, (k + 1) * n_local)
      for k in range(_NUM_DEVICES)
  ]
  np.testing.assert_allclose(
      np.asarray(local_loss), [p[0] for p in per_device], rtol=1e-12)
  np.testing.assert_allclose(
      np.asarray(local_acc), [p[1] for p in per_device], atol=1e-15)
  np.testing.assert_allclose(np.mean(np.asarray(local_acc)), want_acc,
                             atol=1e-15)


def test_accuracy_sharded_uses_global_positive_column():
  """Per-device accuracy locates the positive at column device*n + i."""
  z1, z2 = _permuted_views()
  *_, local_loss, local_acc = _sharded_fn(0.5, True)(
      jnp.asarray(z1), jnp.asarray(z2))
  np.testing.assert_allclose(
      np.asarray(local_acc), [1 / 3, 2 / 3, 2 / 3, 1 / 3], atol=1e-6)
  want = [_np_nt_xent(z1, z2, 0.5, True, 3 * k, 3 * k + 3)[0]
          for k in range(_NUM_DEVICES)]
  np.testing.assert_allclose(np.asarray(local_loss), want, rtol=1e-5)


# ----------------------------------------------------------------------------
# SimCLR v2's memory: the buffered rows are extra negatives of every anchor
# ----------------------------------------------------------------------------


def _np_nt_xent_with_memory(z1, z2, memory, temperature):
  """float64, written per anchor: each of the 2B embeddings of the global
  batch is an anchor whose positive is its partner view and whose
  negatives are the 2B − 2 other in-batch embeddings and the K memory
  rows; the loss is the mean over view-1 anchors plus the mean over view-2
  anchors."""
  z = _np_normalize(np.concatenate([z1, z2]).astype(np.float64))
  b = len(z1)
  memory = np.asarray(memory, np.float64)
  per_anchor = []
  for i in range(2 * b):
    partner = (i + b) % (2 * b)
    others = [j for j in range(2 * b) if j != i]
    logits = np.concatenate([z[others] @ z[i], memory @ z[i]]) / temperature
    positive = logits[others.index(partner)]
    top = logits.max()
    per_anchor.append(top + np.log(np.sum(np.exp(logits - top))) - positive)
  return np.mean(per_anchor[:b]) + np.mean(per_anchor[b:])


@mesh_runs.float64()
def test_nt_xent_with_memory_on_4_devices_matches_per_anchor_formula():
  """`nt_xent(..., queue=M)` over 4 devices (pmean of the local losses):
  value and gradients equal the float64 per-anchor formula with M's rows as
  extra negatives (central differences); M receives no gradient; without
  the memory the loss is lower (the rows only add negatives)."""
  t, n_local, d, k = 0.3, 2, 5, 6
  n = n_local * _NUM_DEVICES
  rng = np.random.default_rng(3)
  z1, z2 = rng.normal(size=(n, d)), rng.normal(size=(n, d))
  memory = _np_normalize(rng.normal(size=(k, d)))
  mesh = jax.sharding.Mesh(np.array(jax.devices()[:_NUM_DEVICES]), ("data",))

  def global_loss(a, b, m):
    return lax.pmean(losses.nt_xent(a, b, t, axis_name="data", queue=m),
                     "data")

  fn = jax.jit(jax.shard_map(
      jax.value_and_grad(global_loss, argnums=(0, 1, 2)), mesh=mesh,
      in_specs=(P("data"), P("data"), P()),
      out_specs=(P(), (P("data"), P("data"), P()))))
  loss, (g1, g2, gm) = fn(jnp.asarray(z1), jnp.asarray(z2),
                          jnp.asarray(memory))
  want = _np_nt_xent_with_memory(z1, z2, memory, t)
  np.testing.assert_allclose(float(loss), want, rtol=1e-12)
  for got, wrt in ((g1, 0), (g2, 1)):
    args = [z1, z2]

    def of(x, wrt=wrt, args=args):
      moved = list(args)
      moved[wrt] = x
      return _np_nt_xent_with_memory(*moved, memory, t)

    want_g = _np_fd_grad(of, args[wrt], 1e-6)
    np.testing.assert_allclose(np.asarray(got), want_g, rtol=1e-7,
                               atol=1e-7 * np.abs(want_g).max())
  np.testing.assert_array_equal(np.asarray(gm), 0.0)
  assert float(loss) > _np_nt_xent(z1, z2, t)[0] + 0.1
  with pytest.raises(ValueError, match=r"the memory must be \[K, 5\]"):
    losses.nt_xent(jnp.asarray(z1), jnp.asarray(z2), t,
                   queue=jnp.zeros((4, 3)))
