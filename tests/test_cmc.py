"""CMC: Lab views on the device, two encoders, a bank per view; 1 vs 8
devices in float64 (loss, both banks and Z's, parameters, BN statistics),
the objective against numpy (NCE and softmax), and the exported encoder."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import mesh_runs
from jaxssl import augment
from jaxssl import config_utils
from jaxssl import export
from jaxssl import train
from jaxssl.methods import cmc
from jaxssl.methods import instdisc

N, BATCH, K, TAU, SIZE = 48, 16, 6, 0.1, 8


def _config(**overrides):
  c = mesh_runs.tiny_config("cmc", batch_size=BATCH, image_size=SIZE)
  c.augment.preset = "cmc"
  config_utils.set_head(c.head, num_layers=1, hidden_dim=0, out_dim=8,
                        last_bn="none", use_bn=False)
  c.loss.temperature = TAU
  c.loss.nce_k = K
  config_utils.set_sgd(c.optimizer, base_lr=0.5, weight_decay=1e-4,
                       schedule="epoch_cosine")
  return mesh_runs.finish_config(c, overrides)


def _batches(steps):
  images = mesh_runs.random_batches(1, N, SIZE, seed=6)[0]
  order = np.random.default_rng(1).permutation(N)
  return [{"image": images[order[t * BATCH:(t + 1) * BATCH]],
           "index": order[t * BATCH:(t + 1) * BATCH].astype(np.int32)}
          for t in range(steps)]


@pytest.fixture(scope="module")
def runs():
  with mesh_runs.float64():
    learner = train.create_learner(_config(), N)
    out = {devices: mesh_runs.run_steps(learner, devices, _batches(2))
           for devices in (1, 8)}
  return learner, out


def test_cmc_matches_on_1_and_8_devices(runs):
  """2 steps: loss (each view's), Z_l and Z_ab, parameters of both
  encoders and heads, optimizer state, BN statistics and both banks."""
  _, out = runs
  (s1, m1), (s8, m8) = out[1], out[8]
  mesh_runs.assert_metrics_close(m1, m8, ("loss", "loss_l", "loss_ab",
                                          "nce_z_l", "nce_z_ab", "grad_norm"))
  for part in ("params", "opt_state", "batch_stats"):
    mesh_runs.assert_trees_close(getattr(s1[-1], part), getattr(s8[-1], part),
                                 rtol=mesh_runs.RTOL)
  for key in ("bank_l", "bank_ab"):
    np.testing.assert_allclose(s8[-1].method_state[key][:N],
                               s1[-1].method_state[key], rtol=1e-12,
                               atol=1e-15)
  assert set(s1[0].params["encoder"]) == {"l_encoder", "ab_encoder"}
  # Both banks moved, and differently (each view writes its own features).
  for key in ("bank_l", "bank_ab"):
    assert np.abs(s1[1].method_state[key] - s1[0].method_state[key]).max() > 0
  assert np.abs(s1[1].method_state["bank_l"] -
                s1[1].method_state["bank_ab"]).max() > 0.1


def _np_objective(f, banks, index, noise, softmax, z=None):
  """float64 numpy: L against the ab bank, ab against the L bank."""
  total, zs = 0.0, {}
  wanted = np.concatenate([index[:, None], noise], axis=1)
  for view, other in (("l", "ab"), ("ab", "l")):
    s = np.einsum("nd,nkd->nk", f[view], banks[other][wanted])
    if softmax:
      logits = s / TAU
      top = logits.max(1, keepdims=True)
      total += np.mean(top[:, 0] + np.log(np.exp(logits - top).sum(1)) -
                       logits[:, 0])
      continue
    p = np.exp(s / TAU)
    zs[view] = p.mean() * N if z is None else z[view]
    p /= zs[view]
    c = K / N + 1e-7
    total += -np.mean(np.log(p[:, 0] / (p[:, 0] + c)) +
                      np.sum(np.log((K / N) / (p[:, 1:] + c)), axis=1))
  return total, zs


@pytest.mark.parametrize("softmax", [False, True])
@mesh_runs.float64()
def test_objective_against_numpy(softmax):
  """The objective on given features and banks (one device): each view's
  feature scored against the OTHER view's bank at the same K + 1 rows,
  NCE with each view's Z estimated (first step) or the softmax
  cross-entropy of column 0; the sum of the two."""
  rng = np.random.default_rng(3)
  z = rng.normal(size=(10, 16))
  banks = {v: rng.normal(size=(N, 8)) for v in ("l", "ab")}
  index = rng.permutation(N)[:10].astype(np.int32)
  state = {"bank_l": jnp.asarray(banks["l"]),
           "bank_ab": jnp.asarray(banks["ab"]),
           "normalizer_l": jnp.asarray(-1.0),
           "normalizer_ab": jnp.asarray(-1.0)}
  ctx = mesh_runs.context(rng=jax.random.key(4), index=jnp.asarray(index))
  value, metrics = cmc.loss({"global": {"z": jnp.asarray(z)}}, None, state,
                            ctx, temperature=TAU, k=K, num_examples=N,
                            softmax=softmax)
  f = {k: np.asarray(v) for k, v in cmc.view_features(jnp.asarray(z)).items()}
  noise = np.asarray(instdisc.noise_indices(ctx.rng, ctx.index, k=K,
                                            num_examples=N, shared=False))
  want, zs = _np_objective(f, banks, index, noise, softmax)
  np.testing.assert_allclose(float(value), want, rtol=1e-12)
  if not softmax:
    np.testing.assert_allclose(metrics["nce_z_l"], zs["l"], rtol=1e-12)
    np.testing.assert_allclose(metrics["nce_z_ab"], zs["ab"], rtol=1e-12)


@mesh_runs.float64()
def test_encoders_see_normalised_l_and_ab(runs):
  """`h` = [L encoder on (L − 50)/50; ab encoder on the normalised ab],
  the Lab of the RGB input as `rgb_to_lab` computes it."""
  learner, out = runs
  state = out[1][0][-1]
  network = learner.method.network
  images = np.random.default_rng(2).uniform(size=(3, SIZE, SIZE, 3))
  variables = {"params": state.params, "batch_stats": state.batch_stats}
  h = network.apply(variables, jnp.asarray(images), method="encode")
  lab = np.asarray(augment.rgb_to_lab(jnp.asarray(images)))
  lab = (lab - np.asarray(cmc.LAB_MEAN)) / np.asarray(cmc.LAB_STD)
  enc = network.encoder
  parts = [module.apply(
      {"params": state.params["encoder"][name],
       "batch_stats": state.batch_stats["encoder"][name]},
      jnp.asarray(x), train=False) for name, module, x in
           (("l_encoder", enc.l_encoder, lab[..., :1]),
            ("ab_encoder", enc.ab_encoder, lab[..., 1:]))]
  np.testing.assert_allclose(np.asarray(h), np.concatenate(parts, -1),
                             rtol=1e-12, atol=1e-14)


def test_exported_cmc_encoder_loads_with_both_views(runs, tmp_path):
  """`export.load_encoder` rebuilds CMC's two encoders from the run's
  config (the method's own network) and encodes as the trained one."""
  learner, out = runs
  state = out[1][0][-1]
  variables = {"params": state.params, "batch_stats": state.batch_stats}
  export.save_encoder(tmp_path, variables, _config())
  network, loaded, config = export.load_encoder(tmp_path)
  assert config.method == "cmc"
  images = jnp.asarray(np.random.default_rng(4).uniform(size=(2, SIZE, SIZE,
                                                             3)),
                       jnp.float32)
  want = learner.method.network.apply(
      jax.tree.map(lambda x: jnp.asarray(x, jnp.float32), variables),
      images, method="encode")
  got = network.apply(loaded, images, method="encode")
  np.testing.assert_allclose(np.asarray(got), np.asarray(want), rtol=1e-5,
                             atol=1e-6)
