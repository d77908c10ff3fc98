"""Methods on the shared train step: BYOL's target, Barlow Twins, SimSiam.

Each learner is built from a config through `train.create_learner`, so the
methods' `create` functions and config keys are exercised as in a real run.
The whole-model runs are in float64 (`mesh_runs.float64`): 1 and 8 devices
agree to ~1e-14, so `mesh_runs.RTOL` (1e-10) holds on any processor.
"""

import jax
from jax import lax
import jax.numpy as jnp
from jax.sharding import PartitionSpec as P
import numpy as np
import pytest

import mesh_runs
from jaxssl import config_utils
from jaxssl import losses
from jaxssl import schedules
from jaxssl import sharding
from jaxssl import train
from jaxssl.methods import byol
from jaxssl.methods import simsiam

GLOBAL_BATCH = 16
IMAGE_SIZE = 8
NUM_EXAMPLES = 64  # 4 steps per epoch: the τ and lr schedules' length.
BASE_TAU = 0.9


def _config(method):
  c = config_utils.base_config()
  c.method = method
  c.batch_size = GLOBAL_BATCH
  c.epochs = 1
  c.steps_rule = "floor"
  c.data.image_size = IMAGE_SIZE
  c.augment.preset = "byol"
  c.model.depth = 10
  c.model.width = 1 / 16
  c.model.cifar_stem = True
  config_utils.set_head(c.head, num_layers=2, hidden_dim=16, out_dim=8,
                        last_bn="none")
  if method in ("byol", "simsiam"):
    config_utils.set_head(c.predictor, num_layers=2, hidden_dim=16,
                          out_dim=0, last_bn="none")
  c.target.base_momentum = BASE_TAU
  c.optimizer.name = "lars"
  c.optimizer.lr_in_momentum = False
  c.optimizer.base_lr = 0.5
  c.optimizer.warmup_epochs = 0.0
  c.optimizer.excluded_lr_scale = 0.5
  c.probe.enabled = False
  c.lock()
  return c


def _learner(method, **overrides):
  c = _config(method)
  with c.unlocked():
    for key, value in overrides.items():
      section, name = key.split(".")
      c[section][name] = value
  return train.create_learner(c, NUM_EXAMPLES)


def _batches(steps=2):
  return mesh_runs.random_batches(steps, GLOBAL_BATCH, IMAGE_SIZE, seed=5)


@pytest.fixture(scope="module")
def byol_steps():
  """States after 0, 1, 2 steps on 8 devices, and the metrics of each step
  (float64)."""
  with mesh_runs.float64():
    learner = _learner("byol")
    mesh = sharding.data_mesh()
    step_fn = train.compile_train_step(learner, mesh)
    state = train.create_train_state(jax.random.key(0), learner, mesh)
    states, metrics = [jax.device_get(state)], []
    for images in _batches():
      state, m = step_fn(state, sharding.global_batch({"image": images}, mesh))
      states.append(jax.device_get(state))
      metrics.append(jax.device_get(m))
  return states, metrics


# ----------------------------------------------------------------------------
# BYOL target
# ----------------------------------------------------------------------------


def test_byol_target_starts_independent_or_as_a_copy(byol_steps):
  """The reference initialises the target from its own key: same structure
  as the online encoder and projector (no predictor copy), other values.
  `config.target.init='copy'` starts it as their copy."""
  init = byol_steps[0][0]
  assert set(init.target["params"]) == {"encoder", "projector"}
  assert set(init.params) == {"encoder", "projector", "predictor"}
  for name in ("encoder", "projector"):
    online = {"/".join(str(k) for k in path): np.asarray(leaf)
              for path, leaf in jax.tree_util.tree_leaves_with_path(
                  init.params[name]) if np.asarray(leaf).ndim > 1}
    target = {"/".join(str(k) for k in path): np.asarray(leaf)
              for path, leaf in jax.tree_util.tree_leaves_with_path(
                  init.target["params"][name]) if np.asarray(leaf).ndim > 1}
    assert online.keys() == target.keys()
    for key in online:  # every kernel drawn anew
      assert online[key].shape == target[key].shape
      assert np.abs(online[key] - target[key]).max() > 1e-3, key
    mesh_runs.assert_trees_close(init.target["batch_stats"][name],
                                 init.batch_stats[name], rtol=0)
  with mesh_runs.float64():
    copy = train.create_train_state(jax.random.key(0),
                                    _learner("byol", **{"target.init": "copy"}),
                                    sharding.data_mesh())
  for name in ("encoder", "projector"):
    mesh_runs.assert_trees_close(jax.device_get(copy.target["params"][name]),
                                 init.params[name], rtol=0)


def test_byol_bn_statistics_are_per_view(byol_steps):
  """As the reference, each view goes through online and target networks
  alone: after one step the first BatchNorm's running statistics (online
  and target) are two EMA updates, view 1's then view 2's batch statistics
  of the whole global batch, against float64 numpy statistics of the stem
  convolution of the same views (8 devices; `test_byol_matches_on_1_and_8_
  devices` holds them equal on 1). Pooling the views would move the mean by
  (1 − m)·(μ1 + μ2)/2 instead."""
  (init, one_step, _), _ = byol_steps
  c = _config("byol")
  m = c.model.bn_momentum
  with mesh_runs.float64():
    learner = _learner("byol")
    # The step's keys: fold_in(rng, step) → (views, method).
    view_rng = jax.random.split(jax.random.fold_in(
        jax.device_put(init.rng), 0))[0]
    views = train.make_views({"image": _batches()[0]}, view_rng,
                             groups=learner.views, axis_name=None)["global"]
  views = np.asarray(views).reshape(2, GLOBAL_BATCH, IMAGE_SIZE, IMAGE_SIZE, 3)
  for name, params, stats in (
      ("online", init.params, one_step.batch_stats),
      ("target", init.target["params"], one_step.target["batch_stats"])):
    y = mesh_runs.stem_conv_float64(
        views, params["encoder"]["stem_conv"]["kernel"])
    y = y.reshape(2, -1, y.shape[-1])
    mean1, mean2 = y[0].mean(0), y[1].mean(0)
    var1, var2 = y[0].var(0), y[1].var(0)
    got = stats["encoder"]["stem_bn"]
    np.testing.assert_allclose(got["mean"], m * (1 - m) * mean1
                               + (1 - m) * mean2, rtol=1e-12, atol=1e-14,
                               err_msg=name)
    np.testing.assert_allclose(got["var"], m * (m + (1 - m) * var1)
                               + (1 - m) * var2, rtol=1e-12, err_msg=name)
    pooled = (1 - m) * (mean1 + mean2) / 2
    assert np.abs(got["mean"] - pooled).max() > 1e-3 * np.abs(pooled).max()


def test_byol_target_is_ema_of_updated_online_params(byol_steps):
  """After each step: target = τ·old_target + (1 − τ)·new_online, to float64
  rounding (the same expression as optax.incremental_update; XLA may fuse
  it into an FMA: a few 1e-16), with τ_k from `ema_momentum(base, K)` at the
  step before the update. A gradient step on the target, or an update
  towards the OLD online weights, would be off by orders of magnitude more."""
  states, metrics = byol_steps
  tau_fn = schedules.ema_momentum(BASE_TAU, NUM_EXAMPLES // GLOBAL_BATCH)
  for k, m in enumerate(metrics):
    old_target = states[k].target["params"]
    new = states[k + 1]
    tau = np.asarray(m["tau"])
    assert tau.dtype == np.float64
    with mesh_runs.float64():
      np.testing.assert_allclose(tau, float(tau_fn(k)), rtol=1e-15)
    step_size = 1.0 - tau
    want = jax.tree.map(
        lambda o, t: step_size * np.asarray(o) + (1.0 - step_size)
        * np.asarray(t),
        {n: new.params[n] for n in old_target}, old_target)
    for (path, got), w in zip(
        jax.tree_util.tree_leaves_with_path(new.target["params"]),
        jax.tree.leaves(want)):
      np.testing.assert_allclose(np.asarray(got), w, rtol=1e-14,
                                 atol=1e-14 * np.abs(w).max(),
                                 err_msg=jax.tree_util.keystr(path))
    moved = jax.tree.map(lambda a, b: np.abs(a - b).max(),
                         new.params["encoder"], states[k].params["encoder"])
    assert max(jax.tree.leaves(moved)) > 1e-4  # the online weights moved
  # τ rises: 0.9 at step 0, 1 − 0.1·(cos(π/4) + 1)/2 at step 1.
  np.testing.assert_allclose([m["tau"] for m in metrics],
                             [0.9, 1 - 0.1 * (np.cos(np.pi / 4) + 1) / 2],
                             rtol=1e-6)


def test_byol_loss_has_no_gradient_through_the_target():
  """The train step never differentiates the target's variables (the EMA
  test above shows they change by the EMA alone); the loss itself also
  stops the gradient of the target's outputs."""
  rng = np.random.default_rng(0)
  online = {"p": jnp.asarray(rng.normal(size=(8, 5)), jnp.float32)}
  target = {"z": jnp.asarray(rng.normal(size=(8, 5)), jnp.float32)}
  grad_target, grad_online = jax.grad(
      lambda t, o: byol.loss({"global": o}, {"global": t}, None,
                             mesh_runs.context())[0],
      argnums=(0, 1))(target, online)
  np.testing.assert_array_equal(np.asarray(grad_target["z"]), 0.0)
  assert np.abs(np.asarray(grad_online["p"])).max() > 1e-3
  # The value: mean over the 4 examples of ℓ(p1, z2) + ℓ(p2, z1).
  p, z = np.asarray(online["p"], np.float64), np.asarray(target["z"],
                                                         np.float64)
  p /= np.linalg.norm(p, axis=1, keepdims=True)
  z /= np.linalg.norm(z, axis=1, keepdims=True)
  want = np.mean(np.sum((p[:4] - z[4:])**2, 1) + np.sum((p[4:] - z[:4])**2, 1))
  value, _ = byol.loss({"global": online}, {"global": target}, None,
                      mesh_runs.context())
  np.testing.assert_allclose(float(value), want, rtol=1e-6)


def test_byol_matches_on_1_and_8_devices(byol_steps):
  """Loss, parameters, optimizer state, target and BN statistics over 2
  steps (float64, `mesh_runs.RTOL`)."""
  with mesh_runs.float64():
    init1, state1, m1 = mesh_runs.run(_learner("byol"), 1, _batches())
  (init8, _, state8), m8 = byol_steps
  mesh_runs.assert_trees_close(init1.params, init8.params, rtol=0)
  mesh_runs.assert_metrics_close(
      m1, m8, ("loss", "grad_norm", "tau", "lr", "embed_std"))
  assert m1[0]["loss"] > 0.1
  for part in ("params", "opt_state", "batch_stats", "target"):
    mesh_runs.assert_trees_close(getattr(state1, part), getattr(state8, part),
                                 rtol=mesh_runs.RTOL)


# ----------------------------------------------------------------------------
# Barlow Twins
# ----------------------------------------------------------------------------


def _np_cross_correlation(z1, z2, eps=1e-5):
  z1, z2 = (np.asarray(z, np.float64) for z in (z1, z2))
  n1 = (z1 - z1.mean(0)) / np.sqrt(z1.var(0) + eps)
  n2 = (z2 - z2.mean(0)) / np.sqrt(z2.var(0) + eps)
  return n1.T @ n2 / z1.shape[0]


def _np_barlow_twins(z1, z2, lambd):
  c = _np_cross_correlation(z1, z2)
  off = c - np.diag(np.diag(c))
  return np.sum((1 - np.diag(c))**2) + lambd * np.sum(off**2)


def _embeddings(seed, n=GLOBAL_BATCH, d=6):
  """Correlated float64 embeddings (the tests below run in float64)."""
  rng = np.random.default_rng(seed)
  mix = rng.normal(size=(d, d))
  z1 = rng.normal(size=(n, d)) @ mix + rng.normal(size=d)
  z2 = z1 + 0.5 * rng.normal(size=(n, d)) * rng.uniform(0.1, 3, size=d)
  return z1, z2


def _on_8_devices(fn, *args):
  """`fn(*local_args, axis_name)` under shard_map; args sharded by rows."""
  mesh = sharding.data_mesh()
  return jax.jit(jax.shard_map(
      lambda *a: fn(*a, axis_name=sharding.DATA_AXIS), mesh=mesh,
      in_specs=tuple(P(sharding.DATA_AXIS) for _ in args),
      out_specs=P()))(*args)


@mesh_runs.float64()
def test_cross_correlation_over_8_devices_equals_concatenated_batch():
  z1, z2 = _embeddings(0)
  whole = losses.cross_correlation(z1, z2)
  sharded = _on_8_devices(
      lambda a, b, axis_name: losses.cross_correlation(a, b,
                                                       axis_name=axis_name),
      z1, z2)
  want = _np_cross_correlation(z1, z2)
  assert whole.dtype == sharded.dtype == np.float64
  np.testing.assert_allclose(np.asarray(whole), want, atol=1e-13)
  np.testing.assert_allclose(np.asarray(sharded), want, atol=1e-13)
  # A per-device standardisation (2 rows) would be far off.
  local = np.mean([_np_cross_correlation(z1[i:i + 2], z2[i:i + 2])
                   for i in range(0, 16, 2)], axis=0)
  assert np.abs(local - want).max() > 0.1


@pytest.mark.parametrize("lambd", [5e-3, 0.5])
@mesh_runs.float64()
def test_barlow_twins_loss_and_gradient_on_1_and_8_devices(lambd):
  """Value against numpy; the gradient w.r.t. each device's embeddings,
  taken through the psum of the statistics and of C, equals the gradient of
  the single-device loss on the concatenated batch (float64)."""
  z1, z2 = _embeddings(1)
  value, _ = losses.barlow_twins(z1, z2, lambd=lambd)
  np.testing.assert_allclose(float(value), _np_barlow_twins(z1, z2, lambd),
                             rtol=1e-12)

  def mean_loss(a, b, axis_name=None):
    v = losses.barlow_twins(a, b, lambd=lambd, axis_name=axis_name)[0]
    return v if axis_name is None else lax.pmean(v, axis_name)

  g1 = jax.grad(mean_loss, argnums=(0, 1))(z1, z2)
  mesh = sharding.data_mesh()
  g8 = jax.jit(jax.shard_map(
      lambda a, b: jax.grad(mean_loss, argnums=(0, 1))(
          a, b, sharding.DATA_AXIS),
      mesh=mesh, in_specs=(P("data"), P("data")),
      out_specs=(P("data"), P("data"))))(z1, z2)
  v8 = _on_8_devices(mean_loss, z1, z2)
  np.testing.assert_allclose(float(v8), float(value), rtol=mesh_runs.RTOL)
  for a, b in zip(g1, g8):
    mesh_runs.assert_trees_close(np.asarray(b), np.asarray(a),
                                 rtol=mesh_runs.RTOL)
  # Against central differences of the numpy loss on a few coordinates
  # (truncation error ~h² = 1e-8 of the gradient's scale).
  for i, j in [(0, 0), (5, 3), (15, 5)]:
    e = np.zeros_like(z1)
    e[i, j] = 1e-4
    fd = (_np_barlow_twins(z1 + e, z2, lambd)
          - _np_barlow_twins(z1 - e, z2, lambd)) / 2e-4
    np.testing.assert_allclose(float(g1[0][i, j]), fd, rtol=1e-6, atol=1e-9)


def test_barlow_twins_identical_whitened_views_give_zero_loss():
  """C = I exactly when both views are the same decorrelated embedding."""
  rng = np.random.default_rng(2)
  q, _ = np.linalg.qr(rng.normal(size=(16, 4)))  # orthonormal columns
  z = (q - q.mean(0)) * 4.0
  z = z / z.std(0)
  z = z.astype(np.float32)
  value, c = losses.barlow_twins(z, z)
  # Centring keeps the columns nearly orthogonal; C ≈ I up to ε = 1e-5.
  np.testing.assert_allclose(np.diag(np.asarray(c)), 1.0, atol=1e-4)
  assert float(value) < 0.05


@pytest.mark.parametrize("method,metric_keys,loss_range", [
    # Barlow Twins: the off-diagonal term alone keeps the loss above 1 at
    # init; SimSiam: -cos of two views of noise through a fresh network is
    # strictly inside (-1, 0) (exactly -1 would mean a collapsed projector).
    ("barlow_twins", ("bt_diag",), (1.0, np.inf)),
    ("simsiam", (), (-0.999, 0.0)),
    # InvaSpread: −log P_ip plus the spreading sum over 30 other rows, both
    # positive; at τ 0.1 a fresh network's crops of noise put some
    # negatives nearer than the positive (10.9 measured).
    ("invaspread", ("positive_sim",), (1.0, 30.0))])
def test_method_matches_on_1_and_8_devices(method, metric_keys, loss_range):
  """Loss, parameters, optimizer state and BN statistics over 2 steps of the
  whole model (float64, `mesh_runs.RTOL`)."""
  with mesh_runs.float64():
    learner = _learner(method)
    (init1, state1, m1), (init8, state8, m8) = (
        mesh_runs.run(learner, 1, _batches()),
        mesh_runs.run(learner, 8, _batches()))
  mesh_runs.assert_trees_close(init1.params, init8.params, rtol=0)
  assert state1.target is None and state1.method_state is None
  mesh_runs.assert_metrics_close(
      m1, m8, ("loss", "grad_norm", "embed_std", *metric_keys))
  assert loss_range[0] < m1[0]["loss"] < loss_range[1], m1[0]["loss"]
  for part in ("params", "opt_state", "batch_stats"):
    mesh_runs.assert_trees_close(getattr(state1, part), getattr(state8, part),
                                 rtol=mesh_runs.RTOL)
  moved = jax.tree.map(lambda a, b: np.abs(a - b).max(), init1.params,
                       state1.params)
  assert np.median(jax.tree.leaves(moved)) > 0


# ----------------------------------------------------------------------------
# SimSiam
# ----------------------------------------------------------------------------


def test_simsiam_loss_value_and_stop_gradient():
  """−(cos(p1, z2) + cos(p2, z1))/2 averaged; no gradient through z."""
  rng = np.random.default_rng(3)
  p = rng.normal(size=(8, 5)).astype(np.float32)
  z = rng.normal(size=(8, 5)).astype(np.float32)

  def cos(a, b):
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    return np.sum(a * b, 1) / np.linalg.norm(a, axis=1) / np.linalg.norm(b,
                                                                         axis=1)

  want = np.mean(-0.5 * cos(p[:4], z[4:]) - 0.5 * cos(p[4:], z[:4]))
  ctx = mesh_runs.context()
  value, _ = simsiam.loss({"global": {"p": p, "z": z}}, None, None, ctx)
  np.testing.assert_allclose(float(value), want, rtol=1e-6)
  grads = jax.grad(
      lambda o: simsiam.loss({"global": o}, None, None, ctx)[0])(
          {"p": jnp.asarray(p), "z": jnp.asarray(z)})
  np.testing.assert_array_equal(np.asarray(grads["z"]), 0.0)
  assert np.abs(np.asarray(grads["p"])).max() > 1e-3
  # Identical directions: the minimum, −1.
  value, _ = simsiam.loss(
      {"global": {"p": np.concatenate([z[4:], z[:4]]) * 3, "z": z}}, None,
      None, ctx)
  np.testing.assert_allclose(float(value), -1.0, rtol=1e-6)


def test_negative_cosine_zero_rows_are_finite():
  p = jnp.zeros((2, 3))
  z = jnp.ones((2, 3))
  value = losses.negative_cosine(p, z)
  grad = jax.grad(lambda p: jnp.sum(losses.negative_cosine(p, z)))(p)
  np.testing.assert_array_equal(np.asarray(value), 0.0)
  assert np.all(np.isfinite(np.asarray(grad)))


# ----------------------------------------------------------------------------
# Configuration errors
# ----------------------------------------------------------------------------


def test_method_config_errors_are_clear():
  mesh = sharding.data_mesh()
  c = _config("byol")
  with c.unlocked():
    c.predictor.num_layers = 0
  with pytest.raises(ValueError, match="needs a predictor"):
    train.check_config(c, mesh)
  c = _config("mocov4")
  with pytest.raises(ValueError, match=r"config.method='mocov4' is not one "
                     r"of \['barlow_twins', 'byol', 'cmc', 'cpc', 'dino', "
                     r"'instdisc', 'invaspread', 'moco', 'mocov3', 'simclr', "
                     r"'simsiam', 'supcon', 'swav', 'wcl'\]"):
    train.check_config(c, mesh)
  c = _config("byol")
  with c.unlocked():
    c.steps_rule = "ceil"
  with pytest.raises(ValueError, match="steps_rule='ceil'"):
    train.check_config(c, mesh)
  with pytest.raises(ValueError, match="is 0 steps"):
    train.total_steps(_config("byol"), 8)


def test_total_steps_rules():
  c = _config("byol")
  assert train.total_steps(c, 1281167) == 1281167 // GLOBAL_BATCH
  with c.unlocked():
    c.steps_rule = "simclr"
  assert train.total_steps(c, 1281167) == 1281167 // GLOBAL_BATCH + 1


def test_min_crop_area_applies_to_every_view():
  c = _config("simsiam")
  with c.unlocked():
    c.augment.min_crop_area = 0.2
  specs = train.config_view_specs(c)
  assert [s.crop_area for s in specs] == [(0.2, 1.0)] * 2
  with c.unlocked():
    c.augment.min_crop_area = 1.5
  with pytest.raises(ValueError, match="min_crop_area=1.5"):
    train.config_view_specs(c)
