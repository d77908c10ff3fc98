"""WCL and SupCon as methods: their losses recomputed from the heads' outputs
in float64 NumPy (the weak labels with scipy's connected components), the
graph monitors, kNN multi-crop, and the train step on 1 vs 8 devices
(float64, `mesh_runs`), SupCon's refusal of unlabelled data.

The losses themselves (`losses.supcon`, `losses.nearest_neighbour_components`)
are tested in test_supcon.py.
"""

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
from jaxssl import config_utils
from jaxssl import losses
from jaxssl import sharding
from jaxssl import train
from jaxssl.methods import base
from jaxssl.methods import supcon
from jaxssl.methods import wcl

DATA = sharding.DATA_AXIS
TAU = 0.1
B = 32  # global batch of the loss tests: 4 rows per device on 8
D = 6


def _unit(x):
  return x / np.linalg.norm(x, axis=-1, keepdims=True)


def _neighbours_float64(x):
  sims = _unit(x) @ _unit(x).T
  np.fill_diagonal(sims, -np.inf)
  return np.argmax(sims, axis=1)


def _components_float64(x):
  """scipy's components of the undirected 1-NN graph, labelled by their
  smallest row (the labels the method compares; any labelling with the
  same partition gives the same loss)."""
  n = len(x)
  graph = csr_matrix((np.ones(n), (np.arange(n), _neighbours_float64(x))),
                     shape=(n, n))
  _, comp = csgraph.connected_components(graph, directed=False)
  smallest = np.full(comp.max() + 1, n)
  np.minimum.at(smallest, comp, np.arange(n))
  return smallest[comp]


def _supcon_one_view(anchors, contrast, labels, tau=TAU):
  """The reference's `sup_contra`: anchor i against every other row of
  `contrast`, positives the other rows with its label."""
  logits = _unit(anchors) @ _unit(contrast).T / tau
  n = len(labels)
  off = ~np.eye(n, dtype=bool)
  log_z = np.log(np.sum(np.exp(logits) * off, axis=1, keepdims=True))
  positive = (labels[:, None] == labels[None, :]) & off
  return -np.mean(np.sum(positive * (logits - log_z), 1) / positive.sum(1))


def _graph_loss_float64(g1, g2, anchors1=None, anchors2=None):
  """(sup(g1 | labels of g2's graph) + sup(g2 | labels of g1's)) / 2; the
  anchors may be moved with the contrast and the labels held fixed."""
  a1 = g1 if anchors1 is None else anchors1
  a2 = g2 if anchors2 is None else anchors2
  labels1, labels2 = _components_float64(g1), _components_float64(g2)
  return 0.5 * (_supcon_one_view(a1, g1, labels2)
                + _supcon_one_view(a2, g2, labels1))


def _reference_instance_loss(z1, z2, tau=TAU):
  """The reference's head-1 loss on one GPU: the 2B rows against every
  other row, its label columns (B − 1 + i, then i), mean cross-entropy."""
  f = _unit(np.concatenate([z1, z2]))
  prob = f @ f.T / tau
  rows = len(f)
  logits = prob[~np.eye(rows, dtype=bool)].reshape(rows, rows - 1)
  n = len(z1)
  labels = np.concatenate([np.arange(n - 1, 2 * n - 1), np.arange(n)])
  log_p = logits - np.log(np.exp(logits).sum(1, keepdims=True))
  return -np.mean(log_p[np.arange(rows), labels])


def _clustered(seed, classes, noise=0.05):
  """Rows near their class's centre: each row's nearest neighbour is of its
  class."""
  rng = np.random.default_rng(seed)
  centres = rng.normal(size=(classes.max() + 1, D))
  return centres[classes] + noise * rng.normal(size=(len(classes), D))


def _per_device(x, num_devices):
  """`[V·B, d]` view-major global rows → device-major blocks, each
  view-major (what a device's step sees)."""
  v = x.shape[0] // B
  return x.reshape(v, num_devices, -1, x.shape[-1]).transpose(
      1, 0, 2, 3).reshape(x.shape)


def _view_major(x, num_devices):
  """The inverse of `_per_device`."""
  v = x.shape[0] // B
  return x.reshape(num_devices, v, -1, x.shape[-1]).transpose(
      1, 0, 2, 3).reshape(x.shape)


def _objective(num_devices, z, g, labels, **kwargs):
  """`wcl.loss` on `num_devices` (None: unmapped) over global rows:
  the global loss, its gradient w.r.t. (z, g) and the metrics."""
  def fn(z, g, labels, axis):
    ctx = mesh_runs.context(axis_name=axis, label=labels)
    value, metrics = wcl.loss({"global": {"z": z, "p": g}}, None, None, ctx,
                              temperature=TAU, **kwargs)
    if axis is not None:
      value, metrics = jax.tree.map(lambda m: lax.pmean(m, axis),
                                    (value, metrics))
    return value, metrics

  if num_devices is None:
    run = functools.partial(fn, axis=None)
  else:
    mesh = sharding.data_mesh(jax.devices()[:num_devices])
    run = jax.shard_map(functools.partial(fn, axis=DATA), mesh=mesh,
                        in_specs=(P(DATA), P(DATA), P(DATA)),
                        out_specs=(P(), P()))
    z, g = _per_device(z, num_devices), _per_device(g, num_devices)
  (value, metrics), grads = jax.jit(jax.value_and_grad(
      run, argnums=(0, 1), has_aux=True))(jnp.asarray(z), jnp.asarray(g),
                                          labels)
  if num_devices is not None:
    grads = tuple(_view_major(np.asarray(x), num_devices) for x in grads)
  return value, grads, jax.device_get(metrics)


def _numerical_gradient(fn, x, h=1e-4):
  grad = np.zeros_like(x)
  for idx in np.ndindex(x.shape):
    e = np.zeros_like(x)
    e[idx] = h
    grad[idx] = (fn(x + e) - fn(x - e)) / (2 * h)
  return grad


@pytest.fixture(scope="module")
def loss_runs():
  """Head outputs of 32 images (4 classes, clustered head-2 outputs so the
  graphs have several components of one class) and the objective on 1
  device (unmapped) and on 8."""
  rng = np.random.default_rng(0)
  classes = rng.integers(0, 4, B)
  z = rng.normal(size=(2 * B, D))
  g = np.concatenate([_clustered(1, classes), _clustered(2, classes)])
  with mesh_runs.float64():
    runs = {n: _objective(n, z, g, jnp.asarray(classes)) for n in (None, 8)}
  return z, g, classes, runs


def test_instance_loss_is_half_nt_xent_and_the_reference_ce(loss_runs):
  z, _, _, runs = loss_runs
  want = _reference_instance_loss(z[:B], z[B:])
  with mesh_runs.float64():
    nt_xent = float(losses.nt_xent(jnp.asarray(z[:B]), jnp.asarray(z[B:]),
                                   TAU))
  np.testing.assert_allclose(0.5 * nt_xent, want, rtol=1e-12)
  for value, _, metrics in runs.values():
    np.testing.assert_allclose(metrics["instance_loss"], want, rtol=1e-12)
    np.testing.assert_allclose(
        value, metrics["instance_loss"] + metrics["graph_loss"], rtol=1e-14)


def test_graph_loss_and_gradient_match_float64_scipy_formula(loss_runs):
  """The graph loss of scipy's weak labels (each view's anchors with the
  OTHER view's components), and its gradient with the contrast rows and
  the labels held fixed (stop-gradient), on 1 and on 8 devices."""
  _, g, _, runs = loss_runs
  g1, g2 = g[:B], g[B:]
  want = _graph_loss_float64(g1, g2)
  want_grad = np.concatenate([
      _numerical_gradient(lambda a: _graph_loss_float64(g1, g2, anchors1=a),
                          g1),
      _numerical_gradient(lambda a: _graph_loss_float64(g1, g2, anchors2=a),
                          g2)])
  for _, (_, grad_g), metrics in runs.values():
    np.testing.assert_allclose(metrics["graph_loss"], want, rtol=1e-12)
    np.testing.assert_allclose(grad_g, want_grad, rtol=1e-6, atol=1e-9)
  # Not trivial: several components, and swapping the views' labels (each
  # view with its own graph) changes the loss.
  assert 2 < len(np.unique(_components_float64(g1))) < B // 2
  own = 0.5 * (_supcon_one_view(g1, g1, _components_float64(g1))
               + _supcon_one_view(g2, g2, _components_float64(g2)))
  assert abs(own - want) > 1e-3


def test_graph_monitors_count_components_and_purity(loss_runs):
  """Components = rows labelled with their own index (scipy's count), size
  = B / components; purity 1 when every edge joins one class, the
  fraction of same-class edges otherwise; no purity without labels; the
  class labels change no loss or gradient."""
  z, g, classes, runs = loss_runs
  for v, rows in ((1, g[:B]), (2, g[B:])):
    count = len(np.unique(_components_float64(rows)))
    for _, _, metrics in runs.values():
      assert metrics[f"components_{v}"] == count
      np.testing.assert_allclose(metrics[f"component_size_{v}"], B / count,
                                 rtol=1e-14)
      assert metrics[f"purity_{v}"] == 1.0  # clustered by class
  mixed = np.random.default_rng(9).permutation(classes)
  with mesh_runs.float64():
    value, grads, metrics = _objective(8, z, g, jnp.asarray(mixed))
    _, _, unlabelled = _objective(None, z, g, None)
  for v, rows in ((1, g[:B]), (2, g[B:])):
    want = np.mean(mixed == mixed[_neighbours_float64(rows)])
    assert 0.0 < want < 1.0
    np.testing.assert_allclose(metrics[f"purity_{v}"], want, rtol=1e-14)
    assert f"purity_{v}" not in unlabelled
  value8, grads8, _ = runs[8]
  assert float(value) == float(value8)
  for a, b in zip(grads, grads8):
    np.testing.assert_array_equal(a, b)


def test_graph_monitors_direct():
  neighbour = jnp.array([1, 0, 3, 2, 2], jnp.int32)  # {0, 1}, {2, 3, 4}
  components = losses.neighbour_components(neighbour)
  np.testing.assert_array_equal(components, [0, 0, 2, 2, 2])
  m = wcl.graph_monitors(neighbour, components,
                         jnp.array([7, 7, 5, 5, 6]))
  assert (m["components"], m["component_size"]) == (2.0, 2.5)
  np.testing.assert_allclose(m["purity"], 0.8)  # 4 → 2 joins 6 with 5


# ----------------------------------------------------------------------------
# kNN multi-crop
# ----------------------------------------------------------------------------


def _knn_multicrop_float64(local, z1, z2, k, tau=TAU):
  contrast = _unit(np.concatenate([z1, z2]))
  logits = _unit(local) @ contrast.T / tau
  log_p = logits - np.log(np.exp(logits).sum(1, keepdims=True))
  top = np.argsort(-logits, axis=1)[:, :k]
  return -np.mean(np.take_along_axis(log_p, top, axis=1))


def test_knn_multicrop_loss_matches_float64_on_1_and_8_devices():
  rng = np.random.default_rng(3)
  z = rng.normal(size=(2 * B, D))
  # 3 local crops per image: noisy copies of the image's first view, so
  # their nearest global crops are their own image's.
  local = np.concatenate([z[:B] + 0.1 * rng.normal(size=(B, D))] * 3)
  want = _knn_multicrop_float64(local, z[:B], z[B:], 2)

  def fn(local, z, axis):
    z1, z2 = base.split_views(z, 2)
    value, own = wcl.knn_multicrop_loss(local, z1, z2, temperature=TAU,
                                        num_positives=2, axis_name=axis)
    return (value, own) if axis is None else (lax.pmean(value, axis),
                                              lax.pmean(own, axis))

  mesh = sharding.data_mesh(jax.devices()[:8])
  eight = jax.shard_map(functools.partial(fn, axis=DATA), mesh=mesh,
                        in_specs=(P(DATA), P(DATA)), out_specs=(P(), P()))
  with mesh_runs.float64():
    v1, own1 = jax.jit(functools.partial(fn, axis=None))(local, z)
    g1 = jax.grad(lambda *a: fn(*a, axis=None)[0], argnums=(0, 1))(local, z)
    v8, own8 = jax.jit(eight)(_per_device(local, 8), _per_device(z, 8))
    g8 = jax.grad(lambda *a: eight(*a)[0], argnums=(0, 1))(
        _per_device(local, 8), _per_device(z, 8))
  np.testing.assert_allclose(v1, want, rtol=1e-12)
  np.testing.assert_allclose(v8, want, rtol=1e-12)
  assert float(own1) == float(own8) == 1.0
  for a, b in zip(g8, g1):
    np.testing.assert_allclose(_view_major(np.asarray(a), 8), b, rtol=1e-10,
                               atol=1e-14)


# ----------------------------------------------------------------------------
# Methods on the train step
# ----------------------------------------------------------------------------

GLOBAL_BATCH = 16
IMAGE_SIZE = 8
NUM_EXAMPLES = 64
STEPS = 2


def _config(method, **overrides):
  c = mesh_runs.tiny_config(method, batch_size=GLOBAL_BATCH,
                            image_size=IMAGE_SIZE)
  c.augment.preset = "simclr_v2"
  c.augment.blur = False
  c.loss.temperature = TAU
  c.optimizer.warmup_epochs = 0.0
  c.optimizer.base_lr = 0.5
  if method == "wcl":
    config_utils.set_head(c.head, num_layers=3, hidden_dim=16, out_dim=8,
                          last_bn="none")
    c.optimizer.name = "lars"
    c.optimizer.lr_in_momentum = False
  else:
    config_utils.set_head(c.head, num_layers=2, hidden_dim=16, out_dim=8,
                          last_bn="none", use_bn=False)
    c.loss.base_temperature = 0.07
    c.optimizer.name = "sgd"
    c.optimizer.decay_mask = "all"
    c.optimizer.weight_decay = 1e-4
  return mesh_runs.finish_config(c, overrides)


def _labels():
  rng = np.random.default_rng(5)
  return [rng.integers(0, 3, GLOBAL_BATCH).astype(np.int32)
          for _ in range(STEPS)]


@pytest.mark.parametrize("method,keys", [
    ("wcl", ("loss", "grad_norm", "instance_loss", "graph_loss",
             "contrast_acc", "components_1", "components_2",
             "component_size_1", "component_size_2", "purity_1",
             "purity_2")),
    ("supcon", ("loss", "grad_norm", "label_acc"))])
def test_method_matches_on_1_and_8_devices(method, keys):
  """Loss, monitors, parameters, optimizer state and BN statistics after 2
  steps on labelled batches (WCL: per-view BN in both heads)."""
  with mesh_runs.float64():
    learner = mesh_runs.cropped_learner(
        train.create_learner(_config(method), NUM_EXAMPLES, 3))
    batches = mesh_runs.random_batches(STEPS, GLOBAL_BATCH, IMAGE_SIZE,
                                       seed=11)
    runs = {n: mesh_runs.run_steps(learner, n, batches, _labels())
            for n in (1, 8)}
  (states1, m1), (states8, m8) = runs[1], runs[8]
  mesh_runs.assert_metrics_close(m1, m8, keys)
  for part in ("params", "opt_state", "batch_stats"):
    mesh_runs.assert_trees_close(getattr(states1[-1], part),
                                 getattr(states8[-1], part),
                                 rtol=mesh_runs.RTOL)
  if method == "wcl":
    for m in m8:
      np.testing.assert_allclose(m["loss"],
                                 m["instance_loss"] + m["graph_loss"],
                                 rtol=1e-12)
      assert 2 <= m["components_1"] <= GLOBAL_BATCH // 2
    # Two heads of the same shape; the graph head reads the representation.
    params = states8[-1].params
    assert set(params) == {"encoder", "projector", "predictor"}
    assert (params["predictor"]["dense1"]["kernel"].shape
            == params["projector"]["dense1"]["kernel"].shape)


def test_supcon_refuses_unlabelled_data():
  with pytest.raises(ValueError, match="config.method='supcon' trains on "
                     "class labels; tfds data has no labels"):
    train.create_learner(_config("supcon"), NUM_EXAMPLES)
  with pytest.raises(ValueError, match="SupCon needs the batch's class "
                     "labels"):
    supcon.loss({"global": {"z": jnp.ones((4, 3))}}, None, None,
                mesh_runs.context(), temperature=TAU, base_temperature=None)


def test_wcl_multicrop_views_and_errors():
  """`loss.knn_multicrop` takes the preset's local crops as a view group;
  without local crops it names the keys."""
  c = _config("wcl", **{"augment.preset": "multicrop",
                        "augment.local_crops": 3, "augment.local_size": 4,
                        "loss.knn_multicrop": True})
  learner = train.create_learner(c, NUM_EXAMPLES, 3)
  assert dict(learner.method.views) == {"global": 2, "local": 3}
  assert dict(train.create_learner(_config("wcl"), NUM_EXAMPLES,
                                   3).method.views) == {"global": 2}
  with pytest.raises(ValueError, match="knn_multicrop=True needs 2 global "
                     "and some local crops"):
    train.create_learner(_config("wcl", **{"loss.knn_multicrop": True}),
                         NUM_EXAMPLES, 3)


def test_supcon_label_accuracy_matches_float64():
  """`label_acc`: the fraction of anchors (both views) whose most similar
  other row has their class, on 1 device and on 8."""
  rng = np.random.default_rng(4)
  classes = rng.integers(0, 4, B)
  z = rng.normal(size=(2 * B, D))
  rows = np.tile(classes, 2)
  want = np.mean(rows == rows[_neighbours_float64(z)])
  assert 0.0 < want < 1.0
  fn = functools.partial(supcon.label_accuracy, num_views=2)
  mesh = sharding.data_mesh(jax.devices()[:8])
  eight = jax.shard_map(
      lambda z, y: lax.pmean(fn(z, y, axis_name=DATA), DATA), mesh=mesh,
      in_specs=(P(DATA), P(DATA)), out_specs=P())
  with mesh_runs.float64():
    one = fn(jnp.asarray(z), jnp.asarray(classes), axis_name=None)
    got = jax.jit(eight)(_per_device(z, 8), jnp.asarray(classes))
  np.testing.assert_allclose([one, got], want, rtol=1e-14)
