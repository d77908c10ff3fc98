"""Tests for `jaxssl.optim` against a hand-written float64 LARS reference.

The reference follows the SimCLR TF2 "classic" LARS (`lars_optimizer.py`):
weight decay is added to the gradient and the trust ratio
`eta * ||p|| / ||g||` scales the learning rate, both only for masked-in
parameters; the momentum buffer accumulates `lr_t * trust * g`. The
optimizers run in float64 (JAX's 64-bit mode, `mesh_runs.float64`), so the
comparisons hold to ~1e-12 on any processor.
"""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import lars_trees
import mesh_runs
from jaxssl import freezing
from jaxssl import optim

_SHAPES = lars_trees.SHAPES
_LEAVES = lars_trees.LEAVES
_get = lars_trees.get
_random_tree = lars_trees.random_tree
_to_jnp = lars_trees.to_jnp


@pytest.fixture(autouse=True)
def _float64():
  with mesh_runs.float64():
    yield


def _np_lars(params, grads_seq, lr_fn, *, weight_decay, momentum,
             trust_coefficient, nesterov, mask):
  """float64 LARS: returns the list of per-step update dicts and final params.

  `mask` maps leaf path -> bool. Updates are returned with optax's sign
  convention (`new_p = p + update`).
  """
  params = {path: np.asarray(_get(params, path), np.float64)
            for path, _ in _LEAVES}
  velocity = {path: np.zeros_like(p) for path, p in params.items()}
  all_updates = []
  for step, grads in enumerate(grads_seq):
    lr = float(lr_fn(step))
    updates = {}
    for path, _ in _LEAVES:
      p = params[path]
      g = np.asarray(_get(grads, path), np.float64)
      trust = 1.0
      if mask[path]:
        g = g + weight_decay * p
        p_norm = np.linalg.norm(p)
        g_norm = np.linalg.norm(g)
        if p_norm > 0 and g_norm > 0:
          trust = trust_coefficient * p_norm / g_norm
      scaled_lr = lr * trust
      velocity[path] = momentum * velocity[path] + scaled_lr * g
      if nesterov:
        update = momentum * velocity[path] + scaled_lr * g
      else:
        update = velocity[path]
      updates[path] = -update
      params[path] = p - update
    all_updates.append(updates)
  return all_updates, params


def _run(tx, params, grads_seq):
  """Applies `tx` for len(grads_seq) steps; returns updates and params."""
  params = _to_jnp(params)
  state = tx.init(params)
  all_updates = []
  for grads in grads_seq:
    updates, state = tx.update(_to_jnp(grads), state, params)
    params = optax.apply_updates(params, updates)
    all_updates.append(updates)
  return all_updates, params


def _lr_schedule(count):
  return 0.5 + 0.25 * count


def _assert_matches(got_updates, got_params, want_updates, want_params):
  for step, (got, want) in enumerate(zip(got_updates, want_updates)):
    for path, _ in _LEAVES:
      got_leaf = np.asarray(_get(got, path))
      assert got_leaf.dtype == np.float64
      np.testing.assert_allclose(
          # Rounding is relative to the leaf's scale, not to each element.
          got_leaf, want[path], rtol=1e-12,
          atol=1e-13 * np.abs(want[path]).max(),
          err_msg=f"update of {path} at step {step}")
  for path, _ in _LEAVES:
    np.testing.assert_allclose(
        np.asarray(_get(got_params, path)), want_params[path], rtol=1e-12,
        atol=1e-14, err_msg=f"param {path}")


@pytest.mark.parametrize("nesterov", [False, True])
# 2.0 > weight_decay makes the trust ratio exceed 1 (no clipping to 1).
@pytest.mark.parametrize("trust_coefficient", [1e-3, 0.05, 2.0])
def test_lars_matches_reference(nesterov, trust_coefficient):
  """Two steps with a schedule and weight decay 0.1 equal the float64 LARS;
  kernels get decay + trust ratio, biases/BN scales plain momentum SGD."""
  params = _random_tree(0)
  grads_seq = [_random_tree(1, 0.5), _random_tree(2, 2.0)]
  tx = optim.lars(_lr_schedule, weight_decay=0.1, momentum=0.9,
                  trust_coefficient=trust_coefficient, nesterov=nesterov)
  got_updates, got_params = _run(tx, params, grads_seq)
  want_updates, want_params = _np_lars(
      params, grads_seq, _lr_schedule, weight_decay=0.1, momentum=0.9,
      trust_coefficient=trust_coefficient, nesterov=nesterov,
      mask=dict(_LEAVES))
  _assert_matches(got_updates, got_params, want_updates, want_params)

  # Masked-out leaves: exactly momentum SGD with lr_0 = 0.5, lr_1 = 0.75.
  m = 0.9
  for path, adapted in _LEAVES:
    if adapted:
      continue
    g0 = np.asarray(_get(grads_seq[0], path), np.float64)
    g1 = np.asarray(_get(grads_seq[1], path), np.float64)
    v0 = 0.5 * g0
    v1 = m * v0 + 0.75 * g1
    u0 = m * v0 + 0.5 * g0 if nesterov else v0
    u1 = m * v1 + 0.75 * g1 if nesterov else v1
    np.testing.assert_allclose(
        np.asarray(_get(got_updates[0], path)), -u0, rtol=1e-12, atol=1e-15)
    np.testing.assert_allclose(
        np.asarray(_get(got_updates[1], path)), -u1, rtol=1e-12, atol=1e-15)

  # Adapted kernels: step 0 is -lr_0 * trust * (g + wd p), not plain SGD.
  for path, adapted in _LEAVES:
    if not adapted:
      continue
    p = np.asarray(_get(params, path), np.float64)
    g = np.asarray(_get(grads_seq[0], path), np.float64) + 0.1 * p
    trust = trust_coefficient * np.linalg.norm(p) / np.linalg.norm(g)
    u0 = 0.5 * trust * g * ((1 + m) if nesterov else 1.0)
    np.testing.assert_allclose(
        np.asarray(_get(got_updates[0], path)), -u0, rtol=1e-12, atol=1e-15)
    plain = -0.5 * np.asarray(_get(grads_seq[0], path), np.float64)
    assert not np.allclose(np.asarray(_get(got_updates[0], path)), plain,
                           rtol=1e-2)


def test_lars_constant_learning_rate_float():
  """A float learning rate works and equals the reference with that constant."""
  params = _random_tree(3)
  grads_seq = [_random_tree(4), _random_tree(5)]
  tx = optim.lars(0.3, weight_decay=1e-2, momentum=0.8)
  got_updates, got_params = _run(tx, params, grads_seq)
  want_updates, want_params = _np_lars(
      params, grads_seq, lambda _: 0.3, weight_decay=1e-2, momentum=0.8,
      trust_coefficient=1e-3, nesterov=False, mask=dict(_LEAVES))
  _assert_matches(got_updates, got_params, want_updates, want_params)


def test_default_lars_mask():
  """The default mask is True exactly for leaves with ndim > 1."""
  params = _to_jnp(_random_tree(6))
  params["scalar"] = jnp.asarray(2.0)
  mask = optim.default_lars_mask(params)
  assert bool(mask["conv"]["kernel"]) is True
  assert bool(mask["dense"]["kernel"]) is True
  assert bool(mask["dense"]["bias"]) is False
  assert bool(mask["bn"]["scale"]) is False
  assert bool(mask["bn"]["bias"]) is False
  assert bool(mask["scalar"]) is False
  assert (jax.tree.structure(mask) ==
          jax.tree.structure(jax.tree.map(lambda _: True, params)))


@pytest.mark.parametrize("kind", ["tree_all", "callable_none"])
def test_lars_explicit_mask(kind):
  """An explicit mask (pytree or callable) replaces the ndim-based default."""
  params = _random_tree(7)
  grads_seq = [_random_tree(8), _random_tree(9)]
  if kind == "tree_all":
    mask_arg = jax.tree.map(lambda _: True, params)
    want_mask = {path: True for path, _ in _LEAVES}
  else:
    mask_arg = lambda p: jax.tree.map(lambda _: False, p)
    want_mask = {path: False for path, _ in _LEAVES}
  tx = optim.lars(_lr_schedule, weight_decay=0.1, momentum=0.9,
                  trust_coefficient=0.02, mask=mask_arg)
  got_updates, got_params = _run(tx, params, grads_seq)
  want_updates, want_params = _np_lars(
      params, grads_seq, _lr_schedule, weight_decay=0.1, momentum=0.9,
      trust_coefficient=0.02, nesterov=False, mask=want_mask)
  _assert_matches(got_updates, got_params, want_updates, want_params)


def test_lars_zero_norm_param_has_unit_trust():
  """A zero kernel (||p|| = 0) uses trust 1: update = -lr * g, no NaN; a zero
  kernel with a zero gradient gets a zero update."""
  params = _random_tree(10)
  params["conv"]["kernel"][...] = 0.0
  params["dense"]["kernel"][...] = 0.0
  grads = _random_tree(11)
  grads["dense"]["kernel"][...] = 0.0
  tx = optim.lars(0.5, weight_decay=0.1, momentum=0.9)
  (updates,), new_params = _run(tx, params, [grads])
  for leaf in jax.tree.leaves(updates) + jax.tree.leaves(new_params):
    assert np.all(np.isfinite(np.asarray(leaf)))
  np.testing.assert_allclose(
      np.asarray(updates["conv"]["kernel"]),
      -0.5 * grads["conv"]["kernel"], rtol=1e-15)
  np.testing.assert_array_equal(np.asarray(updates["dense"]["kernel"]), 0.0)


def test_lars_zero_grad_without_decay_is_finite():
  """||g|| = 0 after (zero) weight decay: trust 1 and a zero update."""
  params = _random_tree(12)
  grads = jax.tree.map(np.zeros_like, params)
  tx = optim.lars(0.5, weight_decay=0.0)
  (updates,), new_params = _run(tx, params, [grads])
  for leaf in jax.tree.leaves(updates):
    np.testing.assert_array_equal(np.asarray(leaf), 0.0)
  for path, _ in _LEAVES:
    np.testing.assert_array_equal(np.asarray(_get(new_params, path)),
                                  _get(params, path))


def test_lars_under_jit():
  """The update is traceable under jit and gives the same result."""
  params = _random_tree(13)
  grads_seq = [_random_tree(14), _random_tree(15)]
  tx = optim.lars(_lr_schedule, weight_decay=0.1, trust_coefficient=0.02)
  state = tx.init(_to_jnp(params))
  step = jax.jit(tx.update)
  p = _to_jnp(params)
  got_updates = []
  for grads in grads_seq:
    updates, state = step(_to_jnp(grads), state, p)
    p = optax.apply_updates(p, updates)
    got_updates.append(updates)
  want_updates, want_params = _np_lars(
      params, grads_seq, _lr_schedule, weight_decay=0.1, momentum=0.9,
      trust_coefficient=0.02, nesterov=False, mask=dict(_LEAVES))
  _assert_matches(got_updates, p, want_updates, want_params)


@pytest.mark.parametrize("name", ["lars", "sgd", "adamw", "lamb"])
def test_create_optimizer_decays_only_kernels(name):
  """Zero gradients, weight decay > 0: kernels shrink, biases/BN untouched."""
  params = _random_tree(16)
  grads = jax.tree.map(np.zeros_like, params)
  lr, wd = 0.1, 0.5
  tx = optim.create_optimizer(name, lr, weight_decay=wd, momentum=0.9)
  (updates,), new_params = _run(tx, params, [grads])
  for path, adapted in _LEAVES:
    old = _get(params, path)
    new = np.asarray(_get(new_params, path))
    upd = np.asarray(_get(updates, path))
    assert np.all(np.isfinite(upd)), path
    if adapted:
      assert np.max(np.abs(new - old)) > 1e-6, (name, path)
      # Decay pulls every entry towards zero.
      assert np.all(np.abs(new) <= np.abs(old)), (name, path)
      assert np.any(np.abs(new) < np.abs(old)), (name, path)
    else:
      np.testing.assert_array_equal(upd, 0.0, err_msg=f"{name} {path}")
      np.testing.assert_array_equal(new, old, err_msg=f"{name} {path}")
  kernel = _get(params, ("conv", "kernel"))
  got = np.asarray(updates["conv"]["kernel"])
  if name == "sgd":
    # optax.sgd on g + wd * p: the first momentum step is -lr * wd * p.
    np.testing.assert_allclose(got, -lr * wd * kernel, rtol=1e-14)
  elif name == "lars":
    # g = wd * p, trust = 1e-3 / wd: update = -lr * 1e-3 * p.
    np.testing.assert_allclose(got, -lr * 1e-3 * kernel, rtol=1e-14)


def test_create_optimizer_unknown_name():
  """An unknown optimizer name raises ValueError listing the valid names."""
  with pytest.raises(ValueError) as err:
    optim.create_optimizer("rmsprop", 0.1, weight_decay=1e-4)
  for valid in ("lars", "sgd", "adamw", "lamb"):
    assert valid in str(err.value)


# ----------------------------------------------------------------------------
# The chain around the optimizer: clipping, weight-decay schedule, freezing.
# ----------------------------------------------------------------------------


def _chain_config(**values):
  from jaxssl import config_utils  # pylint: disable=import-outside-toplevel
  opt = config_utils.base_config().optimizer
  opt.name = "adamw"
  opt.weight_decay = 0.04
  for key, value in values.items():
    opt[key] = value
  return opt


def test_adamw_and_lamb_chains_equal_optax():
  """The rebuilt chains (for a scheduled decay) equal optax's own, three
  steps on random gradients (float64)."""
  params = _to_jnp(_random_tree(0))
  mask = optim.default_lars_mask
  for ours, theirs in (
      (optim.create_optimizer("adamw", 1e-2, weight_decay=0.1),
       optax.adamw(1e-2, b1=0.9, weight_decay=0.1, mask=mask)),
      (optim.create_optimizer("lamb", 1e-2, weight_decay=0.1),
       optax.lamb(1e-2, b1=0.9, weight_decay=0.1, mask=mask))):
    s1, s2 = ours.init(params), theirs.init(params)
    p1 = p2 = params
    for k in range(3):
      g = _to_jnp(_random_tree(k + 1))
      u1, s1 = ours.update(g, s1, p1)
      u2, s2 = theirs.update(g, s2, p2)
      p1, p2 = optax.apply_updates(p1, u1), optax.apply_updates(p2, u2)
    mesh_runs.assert_trees_close(jax.device_get(p1), jax.device_get(p2),
                                 rtol=1e-14)


def test_clip_per_parameter_is_dinos_formula():
  """Each leaf scaled by min(1, c / (‖g‖ + 1e-6)) on its own."""
  grads = {"small": jnp.full((3,), 0.1), "big": jnp.arange(12.0).reshape(3, 4)}
  out, _ = optim.clip_per_parameter(3.0).update(grads, optax.EmptyState())
  np.testing.assert_array_equal(np.asarray(out["small"]), 0.1)
  big = np.arange(12.0).reshape(3, 4)
  np.testing.assert_allclose(np.asarray(out["big"]),
                             big * 3.0 / (np.linalg.norm(big) + 1e-6),
                             rtol=1e-14)


def test_cosine_weight_decay_schedule():
  """DINO's `cosine_scheduler(0.04, 0.4, ...)` without warm-up; a decay
  schedule reaches AdamW's update as wd_t·p."""
  fn = optim.cosine_between(0.04, 0.4, 10)
  t = np.arange(12)
  want = 0.4 + 0.5 * (0.04 - 0.4) * (1 + np.cos(np.pi * np.minimum(t, 10)
                                                 / 10))
  np.testing.assert_allclose([float(fn(k)) for k in t], want, rtol=1e-14)
  tx = optim.from_config(_chain_config(weight_decay_schedule="cosine",
                                       weight_decay_end=0.4), 0.0,
                         total_steps=10)
  params = {"kernel": jnp.ones((2, 2)), "bias": jnp.ones((2,))}
  zero = jax.tree.map(jnp.zeros_like, params)
  state = tx.init(params)
  # With lr 0 the update is 0; read the decay from a zero-gradient chain.
  decay = optim.add_decayed_weights(fn)
  dstate = decay.init(params)
  for k in range(3):
    out, dstate = decay.update(zero, dstate, params)
    np.testing.assert_allclose(np.asarray(out["kernel"]), want[k], rtol=1e-14)
    np.testing.assert_array_equal(np.asarray(out["bias"]), 0.0)
    _, state = tx.update(zero, state, params)
  with pytest.raises(ValueError, match="weight_decay_schedule='linear'"):
    optim.from_config(_chain_config(weight_decay_schedule="linear"), 0.1)


def test_freeze_keeps_matching_parameters_and_their_slots_still():
  """SGD with momentum, `projector/last` frozen for 2 updates: its values
  and momentum do not move while frozen (PyTorch skips a parameter whose
  grad is None), then it trains; the others train throughout. Global-norm
  clipping comes first."""
  opt = _chain_config(name="sgd", weight_decay=0.0, momentum=0.9,
                      freeze_pattern=r"^projector/last/", clip_global_norm=1.0)
  tx = optim.from_config(opt, 0.1, freeze_steps=2)
  params = {"projector": {"last": {"kernel": jnp.ones((2, 2))},
                          "first": {"kernel": jnp.ones((2, 2))}}}
  grads = jax.tree.map(lambda p: 10.0 * jnp.ones_like(p), params)
  state = tx.init(params)
  history = []
  for _ in range(3):
    updates, state = tx.update(grads, state, params)
    params = optax.apply_updates(params, updates)
    history.append(jax.device_get(params))
  last = [h["projector"]["last"]["kernel"] for h in history]
  first = [h["projector"]["first"]["kernel"] for h in history]
  np.testing.assert_array_equal(last[0], 1.0)
  np.testing.assert_array_equal(last[1], 1.0)
  # Clipped global norm 1 over 8 equal entries: each gradient is 1/√8.
  g = 1.0 / np.sqrt(8.0)
  np.testing.assert_allclose(first[0], 1.0 - 0.1 * g, rtol=1e-14)
  np.testing.assert_allclose(first[1], 1.0 - 0.1 * g * (1 + 1.9), rtol=1e-14)
  # First update after the freeze: a fresh momentum buffer (its slot was
  # held at zero), so a plain step.
  np.testing.assert_allclose(last[2], 1.0 - 0.1 * g, rtol=1e-14)
  assert freezing.path_mask("last")(params) == {
      "projector": {"last": {"kernel": True}, "first": {"kernel": False}}}


@pytest.mark.parametrize("name", ["sgd", "adamw"])
def test_decay_mask_all_decays_biases_and_norms_too(name):
  """`decay_mask='all'` (PyTorch's SGD/AdamW over model.parameters(): MoCo
  v2, MoCo v3's ViT): a zero gradient's SGD update is −lr·wd·p on every
  leaf; 'kernels' leaves rank ≤ 1 alone; any other name is an error."""
  params = {"kernel": jnp.full((2, 2), 2.0), "bias": jnp.full((2,), 3.0)}
  zero = jax.tree.map(jnp.zeros_like, params)
  lr, wd = 0.1, 0.5
  for mask, decays_bias in (("all", True), ("kernels", False)):
    tx = optim.from_config(_chain_config(name=name, weight_decay=wd,
                                         decay_mask=mask), lr)
    updates, _ = tx.update(zero, tx.init(params), params)
    assert np.all(np.asarray(updates["kernel"]) < 0)
    if name == "sgd":
      np.testing.assert_allclose(updates["kernel"], -lr * wd * 2.0,
                                 rtol=1e-6)
    bias = np.asarray(updates["bias"])
    if decays_bias:
      assert np.all(bias < 0), (name, mask, bias)
      if name == "sgd":
        np.testing.assert_allclose(bias, -lr * wd * 3.0, rtol=1e-6)
    else:
      np.testing.assert_array_equal(bias, 0.0)
  with pytest.raises(ValueError, match="decay_mask='bias'"):
    optim.from_config(_chain_config(decay_mask="bias"), lr)


def test_clipping_bounds_the_update():
  """SGD without momentum or decay, lr 0.1: with `clip_global_norm=1` a
  gradient of global norm 50 becomes an update of global norm 0.1 in the
  same direction, one of norm 0.5 passes unchanged; with
  `clip_per_parameter=1` (DINO's) each leaf's update is bounded alone."""
  grads = {"a": jnp.full((3, 4), 10.0), "b": jnp.full((4,), 10.0)}
  params = jax.tree.map(jnp.zeros_like, grads)
  lr = 0.1
  base = dict(name="sgd", momentum=0.0, weight_decay=0.0)
  tx = optim.from_config(_chain_config(clip_global_norm=1.0, **base), lr)
  for scale in (1.0, 0.01):
    g = jax.tree.map(lambda x, s=scale: s * x, grads)
    norm = float(optax.tree.norm(g))
    updates, _ = tx.update(g, tx.init(params), params)
    want = jax.tree.map(lambda x, n=norm: -lr * x * min(1.0, 1.0 / n), g)
    for got, expected in zip(jax.tree.leaves(updates), jax.tree.leaves(want)):
      np.testing.assert_allclose(got, expected, rtol=1e-6)
    assert float(optax.tree.norm(updates)) <= lr * 1.0 + 1e-7
  tx = optim.from_config(_chain_config(clip_per_parameter=1.0, **base), lr)
  updates, _ = tx.update(grads, tx.init(params), params)
  for leaf in jax.tree.leaves(updates):
    assert float(jnp.linalg.norm(leaf)) == pytest.approx(lr, rel=1e-5)


def test_larc_trust_ratio_is_apexs():
  """`trust_ratio='larc'` (SwAV's apex LARC, clip off): per masked-in leaf
  r = η‖p‖/(‖g‖ + wd‖p‖ + 1e-8) with the raw gradient's norm, then the
  decayed gradient scaled by r; the BYOL-form buffer (lr outside). With a
  large decay the two trust ratios differ, so the test tells them apart."""
  params, grads = _random_tree(20), _random_tree(21)
  lr, wd, eta = 0.3, 0.5, 1e-3
  tx = optim.lars(lr, weight_decay=wd, trust_coefficient=eta,
                  lr_in_momentum=False, mask=lambda p: jax.tree.map(
                      lambda _: True, p), trust_ratio="larc")
  (updates,), _ = _run(tx, params, [grads])
  differ = 0.0
  for path, _ in _LEAVES:
    p, g = _get(params, path), _get(grads, path)
    p_norm = np.linalg.norm(p)
    trust = eta * p_norm / (np.linalg.norm(g) + wd * p_norm + 1e-8)
    np.testing.assert_allclose(np.asarray(_get(updates, path)),
                               -lr * trust * (g + wd * p), rtol=1e-12)
    lars = eta * p_norm / np.linalg.norm(g + wd * p)
    differ = max(differ, abs(trust / lars - 1))
  assert differ > 1e-2
  with pytest.raises(ValueError, match="trust_ratio"):
    optim.lars(lr, weight_decay=wd, trust_ratio="clip")


def test_larc_skips_a_zero_gradient_entirely():
  """apex LARC leaves a parameter whose gradient is 0 alone: no decay."""
  params = _random_tree(22)
  grads = jax.tree.map(np.zeros_like, params)
  tx = optim.lars(0.3, weight_decay=0.5, lr_in_momentum=False,
                  mask=lambda p: jax.tree.map(lambda _: True, p),
                  trust_ratio="larc")
  (updates,), _ = _run(tx, params, [grads])
  for leaf in jax.tree.leaves(updates):
    np.testing.assert_array_equal(np.asarray(leaf), 0.0)


_FROZEN_STEPS = 3


def _freeze_case(name):
  """Optimizer config `name` (with its LARS/LARC variant), and the keyword
  arguments of `create_optimizer` that build the same optimizer."""
  values = {"adamw": dict(name="adamw", weight_decay=0.04),
            "sgd": dict(name="sgd", weight_decay=1e-4, momentum=0.9),
            "lars": dict(name="lars", weight_decay=1e-4, momentum=0.9,
                         trust_coefficient=0.02, lr_in_momentum=False),
            "larc": dict(name="lars", weight_decay=1e-4, momentum=0.9,
                         trust_coefficient=0.02, trust_ratio="larc")}[name]
  opt = _chain_config(freeze_pattern="^frozen/", **values)
  return opt, {"momentum": opt.momentum, **optim.config_options(opt)}


@pytest.mark.parametrize("name", ["adamw", "sgd", "lars", "larc"])
def test_unfrozen_parameters_start_a_fresh_optimizer(name):
  """PyTorch skips a parameter without gradient: its AdamW step count,
  moments and momentum start when it first gets one (DINO's last layer
  after epoch 1). With `freeze_pattern`, the frozen leaves do not move for
  `freeze_steps` updates; from then on their updates equal those of a fresh
  optimizer created at the unfreezing step on them alone, with the
  learning rate and weight decay of the global step (float64). The other
  leaves' updates equal one optimizer's on them alone from step 0. A
  shared AdamW count (bias correction 1 − β^t with t from step 0) would
  make the first unfrozen AdamW updates 2–5× too large here."""
  opt, kwargs = _freeze_case(name)
  lr = lambda t: 0.05 * (1.0 + t) / (2.0 + t)  # changes every step
  tx = optim.from_config(opt, lr, freeze_steps=_FROZEN_STEPS)
  rng = np.random.default_rng(7)
  tree = lambda: {"free": {"kernel": jnp.asarray(rng.normal(size=(3, 2))),
                           "bias": jnp.asarray(rng.normal(size=(2,)))},
                  "frozen": {"kernel": jnp.asarray(rng.normal(size=(2, 4))),
                             "bias": jnp.asarray(rng.normal(size=(4,)))}}
  params = tree()
  state = tx.init(params)
  free_tx = optim.create_optimizer(opt.name, lr, weight_decay=opt.weight_decay,
                                   **kwargs)
  free_state = free_tx.init(params["free"])
  fresh_tx = optim.create_optimizer(
      opt.name, lambda t: lr(t + _FROZEN_STEPS),
      weight_decay=opt.weight_decay, **kwargs)
  fresh_state = None
  start = params["frozen"]
  for step in range(_FROZEN_STEPS + 4):
    grads = tree()
    updates, state = tx.update(grads, state, params)
    want, free_state = free_tx.update(grads["free"], free_state,
                                      params["free"])
    mesh_runs.assert_trees_close(updates["free"], want, rtol=1e-12)
    if step < _FROZEN_STEPS:
      for leaf in jax.tree.leaves(updates["frozen"]):
        np.testing.assert_array_equal(leaf, 0.0)
    else:
      if fresh_state is None:
        fresh_state = fresh_tx.init(params["frozen"])
      want, fresh_state = fresh_tx.update(grads["frozen"], fresh_state,
                                          params["frozen"])
      mesh_runs.assert_trees_close(updates["frozen"], want, rtol=1e-12)
    params = optax.apply_updates(params, updates)
    if step < _FROZEN_STEPS:
      mesh_runs.assert_trees_close(params["frozen"], start, rtol=0)
