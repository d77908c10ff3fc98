"""Weighted k-nearest-neighbour classification on frozen features.

The protocol of Wu et al., "Unsupervised Feature Learning via Non-Parametric
Instance Discrimination", CVPR 2018 (https://arxiv.org/abs/1805.01978), used
by most SSL libraries as a cheap proxy of linear evaluation: features are
L2-normalised, each query takes its k most cosine-similar training examples,
and each neighbour votes for its class with weight `exp(similarity / T)`.
"""

from typing import Callable

import jax
import jax.numpy as jnp
from jax.sharding import Mesh
import numpy as np

from jaxssl import losses
from jaxssl import sharding


@jax.jit(static_argnames=("num_classes", "k", "temperature"))
def _knn_chunk(train_features, train_labels, queries, *, num_classes, k,
               temperature):
  sims = queries @ train_features.T
  top_sims, top_idx = jax.lax.top_k(sims, k)
  weights = jnp.exp(top_sims / temperature)
  votes = jax.nn.one_hot(train_labels[top_idx], num_classes) * weights[..., None]
  return jnp.argmax(votes.sum(axis=1), axis=-1)


def knn_classify(train_features, train_labels, query_features, *,
                 num_classes: int, k: int = 20, temperature: float = 0.07,
                 chunk_size: int = 1024) -> np.ndarray:
  """Predicted labels of `query_features` by weighted kNN over the train set.

  Args:
    train_features: `[N, D]` features of the labelled (training) examples.
    train_labels: `[N]` integer labels.
    query_features: `[M, D]` features to classify.
    num_classes: number of classes.
    k: neighbours per query (20 and 200 are customary).
    temperature: vote weighting `exp(sim / T)`.
    chunk_size: queries per device computation (bounds the `[chunk, N]`
      similarity matrix).

  Returns:
    `[M]` predicted labels (ties go to the lower class index).
  """
  k = min(k, len(train_labels))
  train_features = losses.l2_normalize(jnp.asarray(train_features, jnp.float32))
  query_features = losses.l2_normalize(jnp.asarray(query_features, jnp.float32))
  train_labels = jnp.asarray(train_labels, jnp.int32)
  preds = []
  for start in range(0, len(query_features), chunk_size):
    preds.append(_knn_chunk(train_features, train_labels,
                            query_features[start:start + chunk_size],
                            num_classes=num_classes, k=k,
                            temperature=temperature))
  return np.asarray(jnp.concatenate(preds))


def extract_features(embed: Callable[[jax.Array], jax.Array], images: np.ndarray,
                     *, batch_size: int, mesh: Mesh) -> np.ndarray:
  """`embed` over `images` in global batches on the mesh (last batch padded)."""
  batch_size = max(batch_size // mesh.devices.size, 1) * mesh.devices.size
  out = []
  for start in range(0, len(images), batch_size):
    chunk = images[start:start + batch_size]
    pad = batch_size - len(chunk)
    if pad:
      chunk = np.concatenate([chunk, np.repeat(chunk[-1:], pad, axis=0)])
    x = jax.device_put(chunk, sharding.batch_sharded(mesh))
    feats = np.asarray(embed(x))
    out.append(feats[:len(feats) - pad])
  return np.concatenate(out)


def knn_accuracy(train_features, train_labels, test_features, test_labels, *,
                 num_classes: int, k: int = 20,
                 temperature: float = 0.07) -> float:
  """Top-1 accuracy of `knn_classify` on labelled test features."""
  preds = knn_classify(train_features, train_labels, test_features,
                       num_classes=num_classes, k=k, temperature=temperature)
  return float(np.mean(preds == np.asarray(test_labels)))
