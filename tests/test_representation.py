"""The streamed held-out evaluation (`evaluators.representation`) against an
independent float64 numpy computation on the whole arrays: kNN top-1 (bank
sharded over 8 devices, padded batches), probe top-1/top-5, and the collapse
monitors (moments and Gram matrix vs the SVD of all embeddings)."""

import jax
import jax.numpy as jnp
import numpy as np

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

    bank, _, bank_labels = features(config.data.train_split)
    h, z, labels = features(config.data.eval_split)
  assert h.dtype == np.float64 and len(h) == 120
  for k in (1, 20, 500):
    want = np.mean(_knn_reference(bank, bank_labels, h, min(k, 120), 0.07,
                                  10) == labels)
    assert got[f"knn_top1_k{k}"] == want, (k, got[f"knn_top1_k{k}"], want)
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
