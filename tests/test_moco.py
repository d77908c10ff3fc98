"""MoCo v1/v2 and v3: InfoNCE, the queue, the momentum encoder, shuffling BN.

`info_nce` is checked against an independent float64 numpy formula (value
and analytic gradient) and across devices; the methods run as in training
(`train.create_learner` from a config), in float64, where 1 and 8 devices
agree to ~1e-14 (`mesh_runs.RTOL` = 1e-10 holds on any processor).
"""

import flax.linen as nn
import jax
from jax import lax
import jax.numpy as jnp
from jax.sharding import PartitionSpec as P
import numpy as np
import pytest

import mesh_runs
from jaxssl import config_utils
from jaxssl import losses
from jaxssl import sharding
from jaxssl import train
from jaxssl.methods import base
from jaxssl.methods import moco
from jaxssl.methods import mocov3
from jaxssl.methods import simclr

DATA = sharding.DATA_AXIS
GLOBAL_BATCH = 16
IMAGE_SIZE = 8
NUM_EXAMPLES = 64  # 4 steps per epoch
QUEUE = 32  # 2 global batches: the third step wraps around
TAU = 0.9  # MoCo v2's (constant) key momentum in these runs


def _config(method, **overrides):
  c = mesh_runs.tiny_config(method, batch_size=GLOBAL_BATCH,
                            image_size=IMAGE_SIZE)
  c.augment.preset = "byol"
  c.optimizer.warmup_epochs = 0.0
  if method == "moco":
    config_utils.set_head(c.head, num_layers=2, hidden_dim=16, out_dim=8,
                          last_bn="none", use_bn=False)
    c.loss.queue_size = QUEUE
    c.loss.temperature = 0.2
    c.target.base_momentum = TAU
    c.target.momentum_schedule = "constant"
    c.optimizer.name = "sgd"
    c.optimizer.base_lr = 0.5
    c.optimizer.schedule = "epoch_cosine"
    c.optimizer.decay_mask = "all"
    c.optimizer.weight_decay = 1e-4
  else:
    config_utils.set_head(c.head, num_layers=2, hidden_dim=16, out_dim=8,
                          last_bn="plain", bias=False)
    config_utils.set_head(c.predictor, num_layers=2, hidden_dim=16,
                          out_dim=8, last_bn="none", bias=False)
    c.loss.temperature = 0.5
    c.target.base_momentum = 0.9
    c.optimizer.name = "lars"
    c.optimizer.lr_in_momentum = False
    c.optimizer.base_lr = 0.5
  return mesh_runs.finish_config(c, overrides)


def _batches(steps):
  return mesh_runs.random_batches(steps, GLOBAL_BATCH, IMAGE_SIZE, seed=7)


# ----------------------------------------------------------------------------
# info_nce
# ----------------------------------------------------------------------------


def _info_nce_float64(q, k, tau, queue=None):
  """Loss and analytic gradients (q, k, queue) in numpy float64."""
  q, k = np.asarray(q, np.float64), np.asarray(k, np.float64)
  q_norm = np.linalg.norm(q, axis=1, keepdims=True)
  k_norm = np.linalg.norm(k, axis=1, keepdims=True)
  qn, kn = q / q_norm, k / k_norm
  n = len(q)
  if queue is None:
    logits = qn @ kn.T / tau
    labels = np.arange(n)
  else:
    queue = np.asarray(queue, np.float64)
    logits = np.concatenate([np.sum(qn * kn, 1, keepdims=True),
                             qn @ queue.T], axis=1) / tau
    labels = np.zeros(n, int)
  shifted = logits - logits.max(1, keepdims=True)
  p = np.exp(shifted) / np.exp(shifted).sum(1, keepdims=True)
  loss = -np.mean(np.log(p[np.arange(n), labels]))
  g = p.copy()
  g[np.arange(n), labels] -= 1.0
  g /= n  # ∂loss/∂logits
  if queue is None:
    d_qn, d_kn, d_queue = g @ kn / tau, g.T @ qn / tau, None
  else:
    d_qn = g[:, :1] * kn / tau + g[:, 1:] @ queue / tau
    d_kn = g[:, :1] * qn / tau
    d_queue = g[:, 1:].T @ qn / tau

  def through_norm(d, xn, norm):
    return (d - xn * np.sum(xn * d, 1, keepdims=True)) / norm

  return (loss, through_norm(d_qn, qn, q_norm), through_norm(d_kn, kn, k_norm),
          d_queue)


def _inputs(n=12, d=6, size=20, seed=0):
  rng = np.random.default_rng(seed)
  q = rng.normal(size=(n, d)) * rng.uniform(0.5, 3.0, (n, 1))
  k = q + rng.normal(size=(n, d))  # positives correlated with their queries
  queue = rng.normal(size=(size, d))
  return q, k, queue / np.linalg.norm(queue, axis=1, keepdims=True)


@pytest.mark.parametrize("with_queue", [False, True])
def test_info_nce_value_and_gradient_match_float64_formula(with_queue):
  q, k, queue = _inputs()
  tau = 0.3
  with mesh_runs.float64():
    if with_queue:
      fn = lambda q, k, queue: losses.info_nce(q, k, tau, queue=queue)
      args = (q, k, queue)
    else:
      fn = lambda q, k: losses.info_nce(q, k, tau)
      args = (q, k)
    value, grads = jax.value_and_grad(fn, argnums=tuple(range(len(args))))(
        *map(jnp.asarray, args))
  want = _info_nce_float64(q, k, tau, queue if with_queue else None)
  assert value.dtype == jnp.float64
  np.testing.assert_allclose(value, want[0], rtol=1e-12)
  for got, expected in zip(grads, want[1:]):
    np.testing.assert_allclose(got, expected, rtol=1e-10, atol=1e-13)


def test_info_nce_accuracy_and_shape_errors():
  q, k, queue = _inputs()
  _, accuracy = losses.info_nce_and_accuracy(q, q, 0.1, queue=queue)
  assert float(accuracy) == 1.0
  with pytest.raises(ValueError, match=r"queue must be \[K, 6\]"):
    losses.info_nce(q, k, 0.1, queue=queue[:, :5])
  with pytest.raises(ValueError, match="one \\[n, d\\] shape"):
    losses.info_nce(q, k[:5], 0.1)


@pytest.mark.parametrize("with_queue", [False, True])
def test_info_nce_on_4_devices_equals_one_device(with_queue):
  """pmean of the per-device losses (local queries, keys gathered over the
  axis) and its gradients = the one-device loss of the concatenated batch."""
  q, k, queue = _inputs(n=16, seed=1)
  tau = 0.2
  mesh = sharding.data_mesh(jax.devices()[:4])
  queue_arg = queue if with_queue else None

  def one_device(q, k, queue):
    return losses.info_nce(q, k, tau, queue=queue if with_queue else None)

  def per_device(q, k, queue):
    local = losses.info_nce(q, k, tau, queue=queue if with_queue else None,
                            axis_name=DATA)
    return lax.pmean(local, DATA)

  four = jax.shard_map(per_device, mesh=mesh, in_specs=(P(DATA), P(DATA), P()),
                       out_specs=P())
  with mesh_runs.float64():
    args = tuple(map(jnp.asarray, (q, k, queue)))
    argnums = (0, 1, 2) if with_queue else (0, 1)
    v1, g1 = jax.value_and_grad(one_device, argnums)(*args)
    v4, g4 = jax.jit(jax.value_and_grad(four, argnums))(*args)
  np.testing.assert_allclose(v4, v1, rtol=1e-12)
  np.testing.assert_allclose(v1, _info_nce_float64(q, k, tau, queue_arg)[0],
                             rtol=1e-12)
  for a, b in zip(g4, g1):
    np.testing.assert_allclose(a, b, rtol=1e-10, atol=1e-14)


def test_mocov3_loss_is_2tau_times_symmetric_info_nce():
  rng = np.random.default_rng(2)
  p, z = rng.normal(size=(2, 16, 6))
  tau = 0.2
  value, metrics = mocov3.loss({"global": {"p": jnp.asarray(p)}},
                               {"global": {"z": jnp.asarray(z)}}, None,
                               mesh_runs.context(), temperature=tau)
  want = 2 * tau * (_info_nce_float64(p[:8], z[8:], tau)[0]
                    + _info_nce_float64(p[8:], z[:8], tau)[0])
  np.testing.assert_allclose(value, want, rtol=1e-5)
  assert 0.0 <= float(metrics["contrast_acc"]) <= 1.0


# ----------------------------------------------------------------------------
# MoCo v2: queue, key encoder, 1 vs 8 devices
# ----------------------------------------------------------------------------


@pytest.fixture(scope="module")
def moco_runs():
  """MoCo v2 for 3 steps on 1 and on 8 devices (float64): states after each
  step and the metrics, and the learner."""
  with mesh_runs.float64():
    learner = mesh_runs.cropped_learner(
        train.create_learner(_config("moco"), NUM_EXAMPLES))
    runs = {n: mesh_runs.run_steps(learner, n, _batches(3)) for n in (1, 8)}
  return learner, runs


def test_moco_v2_matches_on_1_and_8_devices(moco_runs):
  """Loss, parameters, optimizer state, BN statistics, key encoder and the
  queue (same keys, same order) over 3 steps."""
  _, runs = moco_runs
  (states1, m1), (states8, m8) = runs[1], runs[8]
  mesh_runs.assert_metrics_close(
      m1, m8, ("loss", "grad_norm", "embed_std", "contrast_acc", "queue_sim"))
  for part in ("params", "opt_state", "batch_stats", "target", "method_state"):
    mesh_runs.assert_trees_close(getattr(states1[-1], part),
                                 getattr(states8[-1], part),
                                 rtol=mesh_runs.RTOL)
  assert [int(s.method_state["ptr"]) for s in states8] == [0, 16, 0, 16]
  # The first loss: 15 random unit vectors in the queue are easy negatives.
  assert 0.0 < m1[0]["loss"] < np.log(QUEUE + 1)


def test_queue_and_loss_recomputed_from_the_views(moco_runs):
  """Each step, recomputed on one device from the step's views: the keys
  are the key encoder (as before the step) on view 2, the queries the
  query encoder on view 1; the logged loss is `info_nce` of those against
  the queue before the step; afterwards the keys fill rows
  [ptr, ptr + B) of the ring buffer in batch order (the third step wraps
  to row 0) and no other row changes."""
  learner, runs = moco_runs
  states, metrics = runs[8]
  assert moco.QUERY != moco.KEY
  plain = base.Forward()
  with mesh_runs.float64():  # the same networks, outside any mapped axis
    method = moco.create(_config("moco"), axis_name=None, total_steps=4,
                         num_examples=NUM_EXAMPLES)
    for t, images in enumerate(_batches(3)):
      state = states[t]
      views, _ = mesh_runs.step_views(state, images, learner)
      view1, view2 = base.split_views(views["global"], 2)
      keys, _ = plain(method.target.network, state.target,
                      {"global": view2}, {"global": 1})
      keys = losses.l2_normalize(keys["global"]["z"])
      queries, _ = plain(method.network, {"params": state.params,
                                          "batch_stats": state.batch_stats},
                         {"global": view1}, {"global": 1})
      before = state.method_state["queue"]
      loss = losses.info_nce(queries["global"]["z"], keys, 0.2, queue=before)
      np.testing.assert_allclose(metrics[t]["loss"], loss, rtol=1e-9)
      # queue_sim: the mean cosine of every query to every queued key.
      q = np.asarray(losses.l2_normalize(queries["global"]["z"]))
      np.testing.assert_allclose(metrics[t]["queue_sim"],
                                 np.mean(q @ np.asarray(before).T),
                                 rtol=1e-9, atol=1e-12)
      start = int(state.method_state["ptr"])
      rows = slice(start, start + GLOBAL_BATCH)
      after = states[t + 1].method_state["queue"]
      np.testing.assert_allclose(after[rows], keys, rtol=1e-9, atol=1e-12)
      others = np.ones(QUEUE, bool)
      others[rows] = False
      np.testing.assert_array_equal(after[others], before[others])
  np.testing.assert_allclose(
      np.linalg.norm(states[0].method_state["queue"], axis=1), 1.0,
      rtol=1e-12)


def test_key_encoder_is_ema_of_the_updated_query_encoder(moco_runs):
  """key_{t+1} = τ·key_t + (1 − τ)·query_{t+1} (encoder and projector),
  after each step; it starts as a copy and keeps its own BN statistics."""
  _, runs = moco_runs
  states, metrics = runs[8]
  tracked = base.subtrees("encoder", "projector")
  mesh_runs.assert_trees_close(states[0].target["params"],
                               tracked(states[0].params), rtol=0)
  for t in range(3):
    assert metrics[t]["tau"] == pytest.approx(TAU, abs=1e-15)
    want = jax.tree.map(lambda k, q: TAU * k + (1 - TAU) * q,
                        states[t].target["params"],
                        tracked(states[t + 1].params))
    mesh_runs.assert_trees_close(states[t + 1].target["params"], want,
                                 rtol=1e-12)
  key_mean = states[-1].target["batch_stats"]["encoder"]["stem_bn"]["mean"]
  query_mean = states[-1].batch_stats["encoder"]["stem_bn"]["mean"]
  assert np.abs(key_mean - query_mean).max() > 1e-6


def test_moco_config_errors_name_the_keys():
  with pytest.raises(ValueError, match="queue_size=60 must be a positive "
                     "multiple of config.batch_size=16"):
    train.create_learner(_config("moco", **{"loss.queue_size": 60}),
                         NUM_EXAMPLES)
  with pytest.raises(ValueError, match="shuffle_bn=True is MoCo v1/v2's"):
    train.check_config(_config("mocov3", **{"target.shuffle_bn": True}),
                       sharding.data_mesh())
  with pytest.raises(ValueError, match="shuffle_bn needs config.train."
                     "microbatches=1"):
    train.create_learner(_config("moco", **{"target.shuffle_bn": True,
                                            "train.microbatches": 2}),
                         NUM_EXAMPLES)


# ----------------------------------------------------------------------------
# MoCo v3
# ----------------------------------------------------------------------------


def test_moco_v3_matches_on_1_and_8_devices_and_tau_is_shifted():
  """Loss, parameters, optimizer state, BN statistics and the momentum
  encoder over 2 steps; τ(t) = m(t + 1) of the reference's cosine."""
  with mesh_runs.float64():
    learner = mesh_runs.cropped_learner(
        train.create_learner(_config("mocov3"), NUM_EXAMPLES))
    (states1, m1), (states8, m8) = (
        mesh_runs.run_steps(learner, n, _batches(2)) for n in (1, 8))
  mesh_runs.assert_metrics_close(
      m1, m8, ("loss", "grad_norm", "embed_std", "contrast_acc", "tau"))
  for part in ("params", "opt_state", "batch_stats", "target"):
    mesh_runs.assert_trees_close(getattr(states1[-1], part),
                                 getattr(states8[-1], part),
                                 rtol=mesh_runs.RTOL)
  total = NUM_EXAMPLES // GLOBAL_BATCH  # 1 epoch
  for t, m in enumerate(m8):
    want = 1 - (1 - 0.9) * (np.cos(np.pi * (t + 1) / total) + 1) / 2
    assert m["tau"] == pytest.approx(want, abs=1e-14)
    tracked = base.subtrees("encoder", "projector")(states8[t + 1].params)
    want_target = jax.tree.map(lambda k, q: want * k + (1 - want) * q,
                               states8[t].target["params"], tracked)
    mesh_runs.assert_trees_close(states8[t + 1].target["params"], want_target,
                                 rtol=1e-12)
  # At chance each direction is ln(16): 2τ·2·ln(16) with τ = 0.5.
  chance = 2 * 0.5 * 2 * np.log(GLOBAL_BATCH)
  assert 0.5 * chance < m1[0]["loss"] < 1.5 * chance, m1[0]["loss"]


# ----------------------------------------------------------------------------
# Shuffling BN
# ----------------------------------------------------------------------------


def test_shuffle_rows_permutes_across_devices_and_unshuffle_inverts():
  mesh = sharding.data_mesh()
  x = np.arange(32 * 3, dtype=np.float32).reshape(32, 3)
  perm = jnp.asarray(np.random.default_rng(0).permutation(32))
  run = lambda fn: jax.jit(jax.shard_map(  # pylint: disable=g-long-lambda
      fn, mesh=mesh, in_specs=P(DATA), out_specs=P(DATA)))(x)
  shuffled = run(lambda v: moco.shuffle_rows(v, perm, DATA))
  np.testing.assert_array_equal(shuffled, x[np.asarray(perm)])
  restored = run(lambda v: moco.unshuffle_rows(
      moco.shuffle_rows(v, perm, DATA), perm, DATA))
  np.testing.assert_array_equal(restored, x)


class _WhereEncoded(nn.Module):
  """Encoder protocol: `h` = the rows, `z` = the device each row was
  encoded on (a network that shows where it ran)."""

  def encode(self, x, train=True):
    del train
    return x.reshape(x.shape[0], -1)

  def heads(self, h, train=True):
    del train
    device = jnp.full((h.shape[0], 1), lax.axis_index(DATA), h.dtype)
    return {"h": h, "z": device}


def test_shuffled_forward_restores_the_order_of_every_output():
  """Outputs come back row-aligned with the inputs (identity order), while
  the network saw most rows on another device."""
  mesh = sharding.data_mesh()
  views = np.random.default_rng(1).normal(size=(64, 2, 2, 3)).astype(np.float32)
  forward = moco.ShuffledForward(select={"global": (1,)}, axis_name=DATA)

  def per_device(x, rng):  # x: [view 1 of 4 images; view 2 of them]
    # A different key on every device, as in training: device 0's
    # permutation must reach all of them.
    rng = jax.random.fold_in(rng, lax.axis_index(DATA))
    out, _ = forward(_WhereEncoded(), {}, {"global": x}, {"global": 2},
                     rng=rng)
    return out["global"]["h"], out["global"]["z"]

  # Device-major, view-major inside each device's 8 rows.
  local_views = views.reshape(8, 2, 4, 2, 2, 3)
  h, where = jax.jit(jax.shard_map(
      per_device, mesh=mesh, in_specs=(P(DATA), P()),
      out_specs=(P(DATA), P(DATA))))(local_views.reshape(-1, 2, 2, 3),
                                     jax.random.key(3))
  second_views = local_views[:, 1].reshape(32, -1)
  np.testing.assert_array_equal(h, second_views)
  home = np.repeat(np.arange(8), 4)
  assert np.mean(np.asarray(where)[:, 0] != home) > 0.5


def test_shuffle_bn_matters_only_with_per_device_bn():
  """One step on 8 devices: with per-device BN (bn_group_size=1, the
  reference's) shuffling the keys changes the loss; with global BN it
  changes nothing (so the keys came back in order)."""
  losses_by = {}
  with mesh_runs.float64():
    for group in (1, 0):
      for shuffle in (False, True):
        learner = mesh_runs.cropped_learner(train.create_learner(
            _config("moco", **{"model.bn_group_size": group,
                               "target.shuffle_bn": shuffle}), NUM_EXAMPLES))
        _, _, metrics = mesh_runs.run(learner, 8, _batches(1))
        losses_by[group, shuffle] = metrics[0]["loss"]
  assert abs(losses_by[1, True] - losses_by[1, False]) > 1e-4, losses_by
  np.testing.assert_allclose(losses_by[0, True], losses_by[0, False],
                             rtol=1e-12)


# ----------------------------------------------------------------------------
# SimCLR v2's memory: MoCo's queue and momentum network inside SimCLR
# ----------------------------------------------------------------------------

MEMORY = 48  # 3 global batches: two views a step, the second step wraps


def _simclr_memory_config(**overrides):
  c = mesh_runs.tiny_config("simclr", batch_size=GLOBAL_BATCH,
                            image_size=IMAGE_SIZE)
  c.augment.preset = "byol"
  c.optimizer.warmup_epochs = 0.0
  config_utils.set_head(c.head, num_layers=2, hidden_dim=16, out_dim=8,
                        last_bn="plain")
  c.loss.temperature = 0.2
  c.loss.memory = True
  c.loss.queue_size = MEMORY
  c.target.base_momentum = TAU
  c.target.momentum_schedule = "constant"
  c.target.init = "copy"
  return mesh_runs.finish_config(c, overrides)


@pytest.fixture(scope="module")
def simclr_memory_runs():
  """SimCLR with the memory for 2 steps on 1 and on 8 devices (float64)."""
  with mesh_runs.float64():
    learner = mesh_runs.cropped_learner(
        train.create_learner(_simclr_memory_config(), NUM_EXAMPLES))
    runs = {n: mesh_runs.run_steps(learner, n, _batches(2)) for n in (1, 8)}
  return learner, runs


def test_simclr_v2_memory_matches_on_1_and_8_devices(simclr_memory_runs):
  """Loss, parameters, optimizer state, BN statistics, the momentum network
  and the memory (same rows, same order) over 2 steps."""
  _, runs = simclr_memory_runs
  (states1, m1), (states8, m8) = runs[1], runs[8]
  mesh_runs.assert_metrics_close(
      m1, m8, ("loss", "grad_norm", "contrast_acc", "memory_sim"))
  for part in ("params", "opt_state", "batch_stats", "target", "method_state"):
    mesh_runs.assert_trees_close(getattr(states1[-1], part),
                                 getattr(states8[-1], part),
                                 rtol=mesh_runs.RTOL)
  assert [int(s.method_state["ptr"]) for s in states8] == [0, 32, 16]


def test_simclr_v2_memory_recomputed_from_the_views(simclr_memory_runs):
  """Each step, recomputed on one device: the logged loss is NT-Xent of the
  online projections of both views (concatenated) with the memory before
  the step as extra negatives; afterwards the momentum network's
  normalised projections (as before the step, both views in one batch) of
  view 1 then view 2 fill 2·B rows from the pointer (wrapping), and the
  momentum network moved to τ·old + (1 − τ)·updated online."""
  learner, runs = simclr_memory_runs
  states, metrics = runs[8]
  plain = base.Forward()
  tracked = base.subtrees("encoder", "projector")
  with mesh_runs.float64():
    method = simclr.create(_simclr_memory_config(), axis_name=None,
                           total_steps=4, num_examples=NUM_EXAMPLES)
    for t, images in enumerate(_batches(2)):
      state = states[t]
      views, _ = mesh_runs.step_views(state, images, learner)
      online, _ = plain(method.network, {"params": state.params,
                                         "batch_stats": state.batch_stats},
                        views, {"global": 2})
      z1, z2 = base.split_views(online["global"]["z"], 2)
      before = state.method_state["queue"]
      loss = losses.nt_xent(z1, z2, 0.2, queue=before)
      np.testing.assert_allclose(metrics[t]["loss"], loss, rtol=1e-9)
      target, _ = plain(method.target.network, state.target, views,
                        {"global": 2})
      written = losses.l2_normalize(target["global"]["z"])
      start = int(state.method_state["ptr"])
      rows = (start + np.arange(2 * GLOBAL_BATCH)) % MEMORY
      after = states[t + 1].method_state["queue"]
      np.testing.assert_allclose(after[rows], written, rtol=1e-9,
                                 atol=1e-12)
      others = np.ones(MEMORY, bool)
      others[rows] = False
      np.testing.assert_array_equal(after[others], before[others])
      want = jax.tree.map(lambda k, q: TAU * k + (1 - TAU) * q,
                          state.target["params"],
                          tracked(states[t + 1].params))
      mesh_runs.assert_trees_close(states[t + 1].target["params"], want,
                                   rtol=1e-12)
  mesh_runs.assert_trees_close(states[0].target["params"],
                               tracked(states[0].params), rtol=0)


def test_simclr_v2_config_turns_the_memory_on():
  """`simclr_resnet50:v2` trains with 65,536 memory rows from a momentum
  network (τ 0.999, a copy at the start); SimCLR v1 and
  `--config.loss.memory=False` have neither; a memory that does not take
  whole batches is an error naming the keys."""
  import config_files  # pylint: disable=g-import-not-at-top
  _, v2 = config_files.load("simclr_resnet50", "v2")
  assert (v2.loss.memory, v2.loss.queue_size) == (True, 65536)
  assert (v2.target.base_momentum, v2.target.momentum_schedule,
          v2.target.init) == (0.999, "constant", "copy")
  assert not config_files.load("simclr_resnet50", "")[1].loss.memory
  tiny = _simclr_memory_config()
  method = train.create_learner(tiny, NUM_EXAMPLES).method
  assert method.target is not None and method.state is not None
  assert method.evaluated == "online"
  off = train.create_learner(_simclr_memory_config(**{"loss.memory": False}),
                             NUM_EXAMPLES).method
  assert off.target is None and off.state is None
  with pytest.raises(ValueError, match=r"queue_size=40 must be a positive "
                     r"multiple of config.batch_size=16"):
    train.create_learner(_simclr_memory_config(**{"loss.queue_size": 40}),
                         NUM_EXAMPLES)
