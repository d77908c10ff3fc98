"""The streamed held-out evaluation (`evaluators.representation`) against an
independent float64 numpy computation on the whole arrays: kNN top-1 (bank
sharded over 8 devices, padded batches), probe top-1/top-5, and the collapse
monitors (moments and Gram matrix vs the SVD of all embeddings)."""

import jax
import jax.numpy as jnp
from jax.sharding import NamedSharding, PartitionSpec as P
import numpy as np
import pytest

import config_files
import mesh_runs
from jaxssl import augment
from jaxssl import sharding
from jaxssl import train
from jaxssl.data import sources
from jaxssl.evaluators import monitors


def _config():
  _, c = config_files.load("simclr_cifar10", "runlocal")
  c.data.image_size, c.model.width = 16, 0.0625
  c.data.synthetic_examples = 120
  # 48 rows per global batch: 3 batches, the last with 24 real rows.
  c.eval.batch_size = 48
  c.eval.knn_ks = (1, 20, 500)  # 500 > the bank: clamped to 120
  return c


def _normalize(x):
  return x / np.linalg.norm(x, axis=1, keepdims=True)


def _knn_reference(bank, bank_labels, queries, k, temperature, num_classes):
  """Wu et al.'s weighted kNN, written out in numpy."""
  sims = _normalize(queries) @ _normalize(bank).T
  top = np.argsort(-sims, axis=1, kind="stable")[:, :k]
  weights = np.exp(np.take_along_axis(sims, top, 1) / temperature)
  votes = np.zeros((len(queries), num_classes))
  for c in range(num_classes):
    votes[:, c] = np.sum(weights * (bank_labels[top] == c), axis=1)
  return np.argmax(votes, axis=1)


def test_streamed_evaluation_equals_whole_array_formulas():
  with mesh_runs.float64():
    config = _config()
    mesh = sharding.data_mesh()
    learner = train.create_learner(config, 120, 10)
    state = train.create_train_state(jax.random.key(3), learner, mesh)
    variables = {"params": state.params, "batch_stats": state.batch_stats}
    rng = np.random.default_rng(0)
    probe = jax.tree.map(lambda p: rng.normal(size=p.shape),
                         jax.device_get(state.probe.params))
    evaluator = train.create_evaluator(config, learner, mesh)
    got = evaluator(variables, probe)

    def features(split):
      data = sources.load_in_memory(config.data, split)
      x = augment.center_resize(jnp.asarray(data.images), 16, False)
      out = learner.network.apply(variables, x, train=False)
      return np.asarray(out["h"]), np.asarray(out["z"]), data.labels

    bank, bank_z, bank_labels = features(config.data.train_split)
    h, z, labels = features(config.data.eval_split)
    # eval.knn_feature='z': the same kNN on the projections.
    config.eval.knn_feature = "z"
    got_z = train.create_evaluator(config, learner, mesh)(variables)
  assert h.dtype == np.float64 and len(h) == 120
  for k in (1, 20, 500):
    want = np.mean(_knn_reference(bank, bank_labels, h, min(k, 120), 0.07,
                                  10) == labels)
    assert got[f"knn_top1_k{k}"] == want, (k, got[f"knn_top1_k{k}"], want)
  for k in (1, 20):
    want = np.mean(_knn_reference(bank_z, bank_labels, z, k, 0.07, 10)
                   == labels)
    assert got_z[f"knn_top1_k{k}"] == want, (k, got_z, want)
  assert got_z["knn_top1_k1"] != got["knn_top1_k1"]  # h and z differ
  logits = h @ probe["head"]["kernel"] + probe["head"]["bias"]
  top = np.argsort(-logits, axis=1, kind="stable")[:, :5]
  assert got["probe_top1"] == np.mean(top[:, 0] == labels)
  assert got["probe_top5"] == np.mean(np.any(top == labels[:, None], axis=1))
  for name, x in (("h", h), ("z", z)):
    np.testing.assert_allclose(got[f"std_{name}"], monitors.embedding_std(x),
                               rtol=1e-10)
    # Gram eigenvalues vs singular values: the smallest are rounding.
    np.testing.assert_allclose(got[f"erank_{name}"],
                               monitors.effective_rank(x), rtol=1e-6)
  # Numbers that can tell right from wrong: neither 0 nor 1, and distinct.
  assert 0.1 < got["knn_top1_k1"] < 1.0 and 0 < got["probe_top1"] < 1
  assert got["probe_top1"] < got["probe_top5"]


def test_memory_bank_knn_equals_the_formula_on_the_bank():
  """InstDisc's kNN on its own bank (`eval.bank_knn_ks`), 8 devices: the
  held-out images' normalised `z` against the bank's rows (116 of them, 4
  padding rows), only rows with a recorded label voting — the unvisited
  (−1) and the padding, which a restore onto another device count fills
  with 0, never do — equals the numpy kNN on the labelled rows."""
  with mesh_runs.float64():
    _, config = config_files.load("instdisc_cifar10", "runlocal")
    config.data.image_size, config.model.width = 16, 0.0625
    config.data.synthetic_examples = 116
    config.eval.batch_size = 48
    config.eval.knn_ks = ()
    config.eval.bank_knn_ks = (3, 500)  # 500: clamped to the labelled rows
    config.eval.bank_knn_temperature = 0.1
    mesh = sharding.data_mesh()
    learner = train.create_learner(config, 116, 10)
    state = train.create_train_state(jax.random.key(3), learner, mesh)
    variables = {"params": state.params, "batch_stats": state.batch_stats}
    rng = np.random.default_rng(1)
    bank = rng.normal(size=(120, 128))
    labels = rng.integers(0, 10, 120)
    labels[rng.choice(116, 30, replace=False)] = -1  # not visited yet
    labels[116:] = 0  # padding as a restore leaves it
    rows = NamedSharding(mesh, P(sharding.DATA_AXIS))
    method_state = dict(state.method_state,
                        bank=jax.device_put(bank, rows),
                        labels=jax.device_put(labels.astype(np.int32), rows))
    got = train.create_evaluator(config, learner, mesh)(
        variables, None, method_state)
    data = sources.load_in_memory(config.data, config.data.eval_split)
    x = augment.center_resize(jnp.asarray(data.images), 16, True)
    z = np.asarray(learner.network.apply(variables, x, train=False)["z"])
  voting = labels[:116] >= 0
  for k in (3, 500):
    want = np.mean(_knn_reference(
        bank[:116][voting], labels[:116][voting], z, min(k, voting.sum()),
        0.1, 10) == data.labels)
    assert got[f"bank_knn_top1_k{k}"] == want, (k, got, want)
  assert 0.0 < got["bank_knn_top1_k3"] < 1.0
  assert "knn_top1_k3" not in got
  # Without method state (the random-init baseline) there is no bank kNN;
  # a method without a bank refuses the key.
  assert "bank_knn_top1_k3" not in train.create_evaluator(
      config, learner, mesh)(variables)
  _, simclr = config_files.load("simclr_cifar10", "runlocal")
  simclr.eval.bank_knn_ks = (200,)
  with pytest.raises(ValueError, match=r"config.eval.bank_knn_ks=\(200,\): "
                     "simclr has no memory bank"):
    train.create_evaluator(simclr, train.create_learner(simclr, 116, 10),
                           mesh)
