"""SupCon's loss and WCL's nearest-neighbour components: against independent
float64 formulas (a loop over anchors with finite-difference gradients;
scipy's connected components) and across devices (N devices = 1 device on
the concatenated batch)."""

import functools

import jax
from jax import lax
import jax.numpy as jnp
from jax.sharding import PartitionSpec as P
import numpy as np
import pytest
from scipy.sparse import csgraph
from scipy.sparse import csr_matrix

import mesh_runs
from jaxssl import losses
from jaxssl import sharding

DATA = sharding.DATA_AXIS


def _on_devices(fn, num_devices, in_specs, out_specs):
  mesh = sharding.data_mesh(jax.devices()[:num_devices])
  return jax.jit(jax.shard_map(fn, mesh=mesh, in_specs=in_specs,
                               out_specs=out_specs))


# ----------------------------------------------------------------------------
# SupCon
# ----------------------------------------------------------------------------


def _unit(x):
  return x / np.linalg.norm(x, axis=1, keepdims=True)


def _supcon_float64(anchors, contrast, labels, tau, base_tau=None):
  """The loss, one anchor at a time: rows are view-major, row r has label
  `labels[r % n]`; an anchor without positives adds 0 but counts."""
  a, c = _unit(anchors), _unit(contrast)
  n = len(labels)
  row_labels = np.tile(labels, len(a) // n)
  terms = []
  for r in range(len(a)):
    others = [k for k in range(len(c)) if k != r]
    logits = c[others] @ a[r] / tau
    log_z = np.log(np.sum(np.exp(logits - logits.max()))) + logits.max()
    positives = row_labels[others] == row_labels[r]
    terms.append(np.sum(logits[positives] - log_z) / max(positives.sum(), 1))
  return -(tau / (base_tau or tau)) * np.mean(terms)


def _numerical_gradient(fn, x, h=1e-3):
  """Central differences with one Richardson step (error O(h⁴))."""
  grad = np.zeros_like(x)
  for idx in np.ndindex(x.shape):
    def diff(step):
      e = np.zeros_like(x)
      e[idx] = step
      return (fn(x + e) - fn(x - e)) / (2 * step)
    grad[idx] = (4 * diff(h / 2) - diff(h)) / 3
  return grad


def _supcon_inputs(num_views, n, d=4, seed=0):
  return np.random.default_rng(seed).normal(size=(num_views * n, d))


# One compiled function per (num_views, contrast_gradient) and shape.
_SUPCON = jax.jit(jax.value_and_grad(losses.supcon),
                  static_argnames=("num_views", "contrast_gradient"))


# Labels of 6 images: a singleton (0), a pair (1) and a triple (2).
_LABELS = np.array([2, 0, 1, 2, 1, 2])


@pytest.mark.parametrize("num_views", [1, 2, 3])
@pytest.mark.parametrize("contrast_gradient", [True, False])
def test_supcon_value_and_gradient_match_float64_formula(num_views,
                                                         contrast_gradient):
  z = _supcon_inputs(num_views, 6, seed=num_views)
  tau, base_tau = 0.2, 0.07
  with mesh_runs.float64():
    value, grad = _SUPCON(jnp.asarray(z), jnp.asarray(_LABELS), tau,
                          base_temperature=base_tau, num_views=num_views,
                          contrast_gradient=contrast_gradient)
  want = _supcon_float64(z, z, _LABELS, tau, base_tau)
  if contrast_gradient:
    want_grad = _numerical_gradient(
        lambda x: _supcon_float64(x, x, _LABELS, tau, base_tau), z)
  else:  # the contrast copy held constant
    want_grad = _numerical_gradient(
        lambda x: _supcon_float64(x, z, _LABELS, tau, base_tau), z)
  np.testing.assert_allclose(value, want, rtol=1e-12)
  np.testing.assert_allclose(grad, want_grad, rtol=1e-7, atol=1e-10)
  # The two gradients differ by far more than the tolerance.
  other = _numerical_gradient(
      lambda x: _supcon_float64(x, z if contrast_gradient else x, _LABELS,
                                tau, base_tau), z)
  assert np.abs(other - want_grad).max() > 1e-2


def test_supcon_edge_labels_and_temperatures():
  """Singleton labels (with one view every anchor lacks positives: 0, and
  with two views it is NT-Xent's mean), all-equal labels, τ_base."""
  z2, z1 = _supcon_inputs(2, 8, seed=5), _supcon_inputs(1, 8, seed=6)
  distinct, same = np.arange(8), np.zeros(8, np.int64)
  with mesh_runs.float64():
    value, grad = _SUPCON(jnp.asarray(z1), jnp.asarray(distinct), 0.1,
                          num_views=1)
    assert float(value) == 0.0
    np.testing.assert_array_equal(grad, 0.0)

    value, _ = _SUPCON(jnp.asarray(z2), jnp.asarray(distinct), 0.3)
    np.testing.assert_allclose(value, _supcon_float64(z2, z2, distinct, 0.3),
                               rtol=1e-12)
    simclr = jax.jit(losses.nt_xent)(jnp.asarray(z2[:8]),
                                     jnp.asarray(z2[8:]), 0.3)
    np.testing.assert_allclose(2 * value, simclr, rtol=1e-12)

    for num_views, z in ((1, z1), (2, z2)):
      for base_tau in (None, 0.5):
        value, _ = _SUPCON(jnp.asarray(z), jnp.asarray(same), 0.1,
                           base_temperature=base_tau, num_views=num_views)
        want = _supcon_float64(z, z, same, 0.1, base_tau)
        np.testing.assert_allclose(value, want, rtol=1e-12)
    # The last one: τ/τ_base = 0.1/0.5 scales the unscaled loss by 0.2.
    assert abs(want / _supcon_float64(z2, z2, same, 0.1) - 0.2) < 1e-12
  with pytest.raises(ValueError, match="num_views=3"):
    losses.supcon(jnp.asarray(z2), jnp.asarray(distinct), 0.1, num_views=3)


@pytest.mark.parametrize("num_views", [1, 2, 3])
@pytest.mark.parametrize("contrast_gradient", [True, False])
def test_supcon_on_4_devices_equals_one_device(num_views, contrast_gradient):
  """View-major rows per device: device k holds images 4k..4k+3 of every
  view; the pmean of the local losses and its gradient = one device's."""
  n, d = 16, 5
  z = _supcon_inputs(num_views, n, d, seed=10 + num_views)
  labels = np.random.default_rng(num_views).integers(0, 4, n)
  kwargs = dict(temperature=0.1, base_temperature=0.07, num_views=num_views,
                contrast_gradient=contrast_gradient)

  def per_device(rows):
    return rows.reshape(num_views, 4, n // 4, d).transpose(1, 0, 2, 3).reshape(
        -1, d)

  def local(x, y):
    return lax.pmean(losses.supcon(x, y, axis_name=DATA, **kwargs), DATA)

  with mesh_runs.float64():
    v1, g1 = _SUPCON(jnp.asarray(z), jnp.asarray(labels), **kwargs)
    four = _on_devices(local, 4, (P(DATA), P(DATA)), P())
    v4, g4 = jax.value_and_grad(four)(jnp.asarray(per_device(z)),
                                      jnp.asarray(labels))
  np.testing.assert_allclose(v1, _supcon_float64(z, z, labels, 0.1, 0.07),
                             rtol=1e-12)
  np.testing.assert_allclose(v4, v1, rtol=1e-10)
  np.testing.assert_allclose(g4, per_device(np.asarray(g1)), rtol=1e-10,
                             atol=1e-14)
  assert np.abs(np.asarray(g1)).max() > 1e-2


# ----------------------------------------------------------------------------
# Nearest-neighbour components
# ----------------------------------------------------------------------------


def _components_float64(x):
  """scipy's components of the undirected 1-NN graph (cosine, self
  excluded, ties to the smallest index), labelled by their smallest row."""
  x = _unit(np.asarray(x, np.float64))
  sims = x @ x.T
  np.fill_diagonal(sims, -np.inf)
  n = len(x)
  graph = csr_matrix((np.ones(n), (np.arange(n), np.argmax(sims, axis=1))),
                     shape=(n, n))
  _, comp = csgraph.connected_components(graph, directed=False)
  smallest = np.full(comp.max() + 1, n)
  np.minimum.at(smallest, comp, np.arange(n))
  return smallest[comp]


def _gaussian(n, seed):
  return np.random.default_rng(seed).normal(size=(n, 8))


def _clustered(n, seed, num_clusters=4):
  rng = np.random.default_rng(seed)
  centres = rng.normal(size=(num_clusters, 8))
  return centres[rng.integers(0, num_clusters, n)] + 0.05 * rng.normal(
      size=(n, 8))


def _with_ties(n, seed):
  """Exact ties that decide components: row a is as similar to b as to c
  (mirror images), whose own neighbours b', c' differ; and duplicated
  rows. Gaussian rows live in the other 6 dimensions (similarity 0)."""
  rng = np.random.default_rng(seed)
  x = np.zeros((n, 8))
  x[:, 2:] = rng.normal(size=(n, 6))
  x[n // 2 + 1] = x[n - 1] = x[n // 2]
  angles = np.array([0.0, 0.5, -0.5, 0.6, -0.6])  # a, b, c, b', c'
  rows = rng.permutation(n)[:5]
  x[rows] = 0.0
  x[rows, 0], x[rows, 1] = np.cos(angles), np.sin(angles)
  return x


def _chain(n, seed):
  """Points on an arc whose gaps shrink, so each one's neighbour is the
  next: one path through all rows (diameter n − 1), rows shuffled."""
  gaps = 0.2 ** (np.arange(n - 1) / (n - 2))  # from 1 down to 0.2
  # A 3-radian arc: 64 rows' neighbour similarities differ by > 1e-5, so
  # float32 resolves them too.
  angles = np.concatenate([[0.0], np.cumsum(gaps * 3 / gaps.sum())])
  x = np.zeros((n, 8))
  x[:, 0], x[:, 1] = np.cos(angles), np.sin(angles)
  return x[np.random.default_rng(seed).permutation(n)]


_ONE = jax.jit(losses.nearest_neighbour_components)
_EIGHT = _on_devices(
    functools.partial(losses.nearest_neighbour_components, axis_name=DATA),
    8, P(DATA), P(DATA))


@pytest.mark.parametrize("n", [8, 64, 512])
def test_nearest_neighbour_components_match_scipy(n):
  inputs = [_gaussian(n, n), _clustered(n, n + 1), _with_ties(n, n + 2),
            _chain(n, n + 3)]
  with mesh_runs.float64():
    for x in inputs:
      want = _components_float64(x)
      for fn in (_ONE, _EIGHT):
        got = fn(jnp.asarray(x))
        assert got.dtype == jnp.int32
        np.testing.assert_array_equal(got, want)
  sizes = [np.bincount(_components_float64(x)) for x in inputs]
  assert all(s[s > 0].min() >= 2 for s in sizes)
  # Not trivial: many components for Gaussian rows, one for the chain.
  assert np.count_nonzero(sizes[0]) > n // 8
  assert np.count_nonzero(sizes[3]) == 1
  # Full precision float32 finds the same components of separated data.
  np.testing.assert_array_equal(_EIGHT(jnp.asarray(inputs[1], jnp.float32)),
                                _components_float64(inputs[1]))


def test_nearest_neighbour_components_compile_once():
  traces = []

  @jax.jit
  def components(x):
    traces.append(x.shape)
    return losses.nearest_neighbour_components(x)

  for seed in range(3):
    for make in (_gaussian, _clustered, _chain):
      x = make(64, seed)
      np.testing.assert_array_equal(components(jnp.asarray(x, jnp.float32)),
                                    _components_float64(x))
  assert traces == [(64, 8)], traces
