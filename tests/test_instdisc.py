"""InstDisc: the sharded memory bank on 1, 8 and 3 devices (float64), the
first step recomputed in numpy, Z fixed after step 0, resume onto another
device count, and the full-softmax variant across devices."""

import functools

import jax
from jax import lax
import jax.numpy as jnp
from jax.sharding import PartitionSpec as P
import numpy as np
import pytest

import mesh_runs
import numeric
from jaxssl import checkpointing
from jaxssl import config_utils
from jaxssl import sharding
from jaxssl import train
from jaxssl.methods import base
from jaxssl.methods import instdisc
from jaxssl.methods import rows

N = 60  # not a multiple of 8: the bank has 4 rows of padding there
BATCH = 24  # 3 images per device on 8 devices, 8 on 3
K = 8
TAU = 0.1
SIZE = 8
LABELS = (np.arange(N) * 7) % 5  # each example's class (the bank kNN's)


def _config(**overrides):
  c = mesh_runs.tiny_config("instdisc", batch_size=BATCH, image_size=SIZE)
  c.augment.preset = "instdisc"
  config_utils.set_head(c.head, num_layers=1, hidden_dim=0, out_dim=8,
                        last_bn="none", use_bn=False)
  c.loss.temperature = TAU
  c.loss.nce_k = K
  c.optimizer.name = "sgd"
  c.optimizer.base_lr = 0.5
  c.optimizer.schedule = "epoch_cosine"
  c.optimizer.warmup_epochs = 0.0
  return mesh_runs.finish_config(c, overrides)


def _batches(steps):
  """Images and dataset indices: a permutation of the 60 examples per
  epoch (2.5 batches), so the third batch spans two epochs and holds an
  index twice."""
  images = mesh_runs.random_batches(1, N, SIZE, seed=4)[0]
  order = np.concatenate([np.random.default_rng(e).permutation(N)
                          for e in range(2)])
  out = []
  for t in range(steps):
    idx = order[t * BATCH:(t + 1) * BATCH].astype(np.int32)
    out.append({"image": images[idx], "index": idx,
                "label": LABELS[idx].astype(np.int32)})
  return out


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
  """3 steps on 1 and on 8 devices; the 8-device state after 2 steps is
  checkpointed, restored on 3 devices and trained one more step."""
  ckpt_dir = tmp_path_factory.mktemp("instdisc_ckpt")
  with mesh_runs.float64():
    learner = mesh_runs.cropped_learner(
        train.create_learner(_config(), N))
    batches = _batches(3)
    out = {}
    for devices in (1, 8):
      mesh = sharding.data_mesh(jax.devices()[:devices])
      state = train.create_train_state(jax.random.key(0), learner, mesh)
      state, states, metrics = mesh_runs.train_steps(learner, mesh, state,
                                                     batches[:2])
      if devices == 8:
        ckpt = checkpointing.Checkpointer(ckpt_dir, every_steps=1,
                                          asynchronous=False)
        ckpt.save(state, force=True)
        ckpt.wait()
      _, more, m = mesh_runs.train_steps(learner, mesh, state, batches[2:])
      out[devices] = (states + more[1:], metrics + m)
    mesh3 = sharding.data_mesh(jax.devices()[:3])
    template = train.create_train_state(jax.random.key(9), learner, mesh3)
    restored = checkpointing.Checkpointer(ckpt_dir, every_steps=1).restore(
        template)
    out["restored"] = jax.device_get(restored)
    _, resumed, m = mesh_runs.train_steps(learner, mesh3, restored,
                                          batches[2:])
    out["resumed"] = (resumed[-1], m[0])
  return learner, batches, out


def test_bank_and_model_match_on_1_and_8_devices(runs):
  """Loss, parameters, optimizer state, BN statistics, the bank's 60 rows
  and Z agree after each of 3 steps; the 8-device bank is 64 rows, 8 on
  each device, and each batch's rows were spread over most devices."""
  _, batches, out = runs
  (states1, m1), (states8, m8) = out[1], out[8]
  mesh_runs.assert_metrics_close(m1, m8, ("loss", "grad_norm", "nce_z",
                                          "positive_p"))
  for t in range(1, 4):
    for part in ("params", "opt_state", "batch_stats"):
      mesh_runs.assert_trees_close(getattr(states1[t], part),
                                   getattr(states8[t], part),
                                   rtol=mesh_runs.RTOL)
    bank1, bank8 = (s[t].method_state["bank"] for s in (states1, states8))
    assert bank1.shape == (N, 8) and bank8.shape == (64, 8)
    np.testing.assert_allclose(bank8[:N], bank1, rtol=1e-12, atol=1e-15)
    np.testing.assert_array_equal(bank8[N:], 0.0)
  for batch in batches:
    assert len(set(batch["index"] // 8)) >= 6  # owners among 8 devices
  # The bank kNN's labels: each visited row holds its example's class, the
  # others (and the padding) −1, on any device count.
  for t in range(4):
    seen = np.unique(np.concatenate([b["index"] for b in batches[:t]]
                                    + [np.zeros(0, np.int64)]))
    want = np.full(N, -1)
    want[seen] = LABELS[seen]
    np.testing.assert_array_equal(states1[t].method_state["labels"], want)
    np.testing.assert_array_equal(states8[t].method_state["labels"],
                                  np.concatenate([want, [-1] * 4]))


def test_first_step_recomputed_and_z_fixed_after_it(runs):
  """Step 0 in numpy float64: Z = mean(exp(s/τ))·N over the batch's
  [24, 1 + K] similarities (own row, then each example's K draws) is the
  logged `nce_z` and the stored normaliser, already used by the logged
  loss (NCECriterion); the batch's rows become normalise(0.5·row +
  0.5·f); Z never changes afterwards. In the third batch an example
  appears twice (the batch spans the epoch boundary)."""
  learner, batches, out = runs
  states, metrics = out[1]
  with mesh_runs.float64():
    method = instdisc.create(_config(), axis_name=None, total_steps=6,
                             num_examples=N)
    state, batch = states[0], batches[0]

    @jax.jit
    def features(state, images):
      views, method_rng = mesh_runs.step_views(state, images, learner)
      online, _ = base.Forward()(method.network, {
          "params": state.params, "batch_stats": state.batch_stats}, views,
                                 {"global": 1})
      return online["global"]["z"], method_rng

    z, method_rng = features(state, batch["image"])
    z = np.asarray(z, np.float64)
    noise = np.asarray(instdisc.noise_indices(
        method_rng, jnp.asarray(batch["index"]), k=K, num_examples=N,
        shared=False))
  f = z / np.linalg.norm(z, axis=1, keepdims=True)
  bank = state.method_state["bank"]
  assert state.method_state["normalizer"] == -1.0
  bound = 1 / np.sqrt(8 / 3)
  assert np.abs(bank).max() <= bound and np.abs(bank).max() > 0.9 * bound
  wanted = np.concatenate([batch["index"][:, None], noise], axis=1)
  s = np.einsum("nd,nkd->nk", f, bank[wanted])
  p = np.exp(s / TAU)
  z_norm = p.mean() * N
  p /= z_norm
  c = K / N + 1e-7
  loss = -np.mean(np.log(p[:, 0] / (p[:, 0] + c)) +
                  np.sum(np.log((K / N) / (p[:, 1:] + c)), axis=1))
  np.testing.assert_allclose(metrics[0]["nce_z"], z_norm, rtol=1e-12)
  np.testing.assert_allclose(metrics[0]["loss"], loss, rtol=1e-12)
  assert [float(s.method_state["normalizer"]) for s in states[1:]] == [
      pytest.approx(z_norm, rel=1e-12)] * 3
  new = 0.5 * bank[batch["index"]] + 0.5 * f
  new /= np.linalg.norm(new, axis=1, keepdims=True)
  after = states[1].method_state["bank"]
  np.testing.assert_allclose(after[batch["index"]], new, rtol=1e-12)
  untouched = np.setdiff1d(np.arange(N), batch["index"])
  np.testing.assert_array_equal(after[untouched], bank[untouched])
  third = batches[2]["index"]
  twice = [i for i in set(third.tolist()) if (third == i).sum() == 2]
  assert twice  # the batch spans the epoch boundary


def test_resume_on_3_devices_restores_bank_and_z_and_continues(runs):
  """The 8-device checkpoint after 2 steps restores on 3 devices (the
  bank's 4 padding rows cut: 60 rows, 20 per device) with everything
  exact, and its third step equals the uninterrupted 8-device one."""
  _, _, out = runs
  states8, metrics8 = out[8]
  restored = out["restored"]
  assert restored.method_state["bank"].shape == (N, 8)
  np.testing.assert_array_equal(restored.method_state["bank"],
                                states8[2].method_state["bank"][:N])
  np.testing.assert_array_equal(restored.method_state["labels"],
                                states8[2].method_state["labels"][:N])
  assert (float(restored.method_state["normalizer"]) ==
          float(states8[2].method_state["normalizer"]))
  mesh_runs.assert_trees_close(restored.params, states8[2].params, rtol=0)
  resumed, m = out["resumed"]
  mesh_runs.assert_metrics_close([metrics8[2]], [m], ("loss", "grad_norm"))
  np.testing.assert_allclose(resumed.method_state["bank"],
                             states8[3].method_state["bank"][:N],
                             rtol=1e-12, atol=1e-15)
  mesh_runs.assert_trees_close(resumed.params, states8[3].params,
                               rtol=mesh_runs.RTOL)


@mesh_runs.float64()
def test_full_softmax_over_a_sharded_bank():
  """`nce_k=0`: cross entropy of each example against all N rows; on 4
  devices (each holding 16 of 64 padded rows) value and gradient equal
  the float64 formula on the whole bank; padding rows never count."""
  rng = np.random.default_rng(5)
  n_rows, d, t = 61, 6, 0.2
  bank = rng.normal(size=(n_rows, d))
  f = rng.normal(size=(8, d))
  f /= np.linalg.norm(f, axis=1, keepdims=True)
  index = rng.integers(0, n_rows, 8).astype(np.int32)

  def want_fn(f):
    logits = f @ bank.T / t
    top = logits.max(1, keepdims=True)
    log_z = top[:, 0] + np.log(np.exp(logits - top).sum(1))
    return np.mean(log_z - logits[np.arange(len(f)), index])

  mesh = sharding.data_mesh(jax.devices()[:4])
  fn = functools.partial(instdisc.full_softmax, temperature=t,
                         num_examples=n_rows, axis_name="data")
  sharded = jax.jit(jax.shard_map(
      jax.value_and_grad(lambda a, b, i: lax.pmean(fn(a, b, i), "data")),
      mesh=mesh, in_specs=(P("data"), P("data"), P("data")),
      out_specs=(P(), P("data"))))
  padded = rows.pad(jnp.asarray(bank), 4)
  value, grad = sharded(jnp.asarray(f), padded, jnp.asarray(index))
  np.testing.assert_allclose(float(value), want_fn(f), rtol=1e-12)
  want_grad = numeric.central_difference(want_fn, f, 1e-6)
  np.testing.assert_allclose(np.asarray(grad), want_grad, rtol=1e-6,
                             atol=1e-8)
  one = jax.value_and_grad(functools.partial(
      instdisc.full_softmax, temperature=t, num_examples=n_rows,
      axis_name=None))(jnp.asarray(f), jnp.asarray(bank), jnp.asarray(index))
  np.testing.assert_allclose(float(one[0]), want_fn(f), rtol=1e-12)


def test_instdisc_refuses_bad_settings_and_needs_the_index():
  method = train.create_learner(_config(), N).method
  assert method.needs_index and method.views == {"global": 1}
  assert method.state.specs["bank"] == P(sharding.DATA_AXIS)
  with pytest.raises(ValueError, match=r"config.loss.nce_k=-1 must be >= 0"):
    train.create_learner(_config(**{"loss.nce_k": -1}), N)
