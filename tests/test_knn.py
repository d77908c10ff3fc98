"""Tests for `jaxssl.evaluators.knn` against a brute-force numpy reference.

The reference is the weighted kNN of Wu et al. 2018 (InstDisc) written here
in float64: L2-normalised features, cosine similarities, the k most similar
training examples each vote for their class with weight exp(sim / T), and the
prediction is the class with the largest summed vote (lowest index on ties).
"""

import jax
import jax.numpy as jnp
from jax.sharding import Mesh
from jax.sharding import PartitionSpec as P
import numpy as np
import pytest

import mesh_runs
from jaxssl.evaluators import knn


def _np_knn(train, labels, queries, num_classes, k, temperature):
  """Brute-force float64 weighted kNN predictions."""
  train = np.asarray(train, np.float64)
  queries = np.asarray(queries, np.float64)
  train = train / np.linalg.norm(train, axis=1, keepdims=True)
  queries = queries / np.linalg.norm(queries, axis=1, keepdims=True)
  k = min(k, len(train))
  preds = []
  for q in queries:
    sims = train @ q
    top = np.argsort(-sims, kind="stable")[:k]
    votes = np.zeros(num_classes)
    for i in top:
      votes[labels[i]] += np.exp(sims[i] / temperature)
    preds.append(int(np.argmax(votes)))  # first maximum: lowest class.
  return np.array(preds)


def _classify(train, labels, queries, *, num_classes, k, temperature=0.07,
              **kwargs):
  """knn_classify for one k (clamped to the train size)."""
  preds = knn.knn_classify(train, labels, queries, num_classes=num_classes,
                           ks=(k,), temperature=temperature, **kwargs)
  assert list(preds) == [min(k, len(labels))]
  return preds[min(k, len(labels))]


def _clusters(seed, n_train=200, n_query=61, num_classes=5, dim=16):
  """Overlapping Gaussian clusters, so kNN makes (k, T)-dependent errors."""
  rng = np.random.default_rng(seed)
  centers = rng.normal(size=(num_classes, dim))
  train_labels = rng.integers(0, num_classes, n_train)
  query_labels = rng.integers(0, num_classes, n_query)
  train = centers[train_labels] + 1.2 * rng.normal(size=(n_train, dim))
  queries = centers[query_labels] + 1.2 * rng.normal(size=(n_query, dim))
  return (train.astype(np.float32), train_labels, queries.astype(np.float32),
          query_labels)


@pytest.mark.parametrize("k", [1, 5, 20])
@pytest.mark.parametrize("temperature", [0.07, 0.5])
def test_knn_matches_numpy_on_clusters(k, temperature):
  """Predictions on 5 clusters in 16-D equal the float64 reference exactly
  (features are not unit-norm: the L2 normalisation matters)."""
  train, labels, queries, query_labels = _clusters(seed=0)
  scale = np.random.default_rng(1).uniform(0.1, 10.0, (len(train), 1))
  train = (train * scale).astype(np.float32)
  got = _classify(train, labels, queries, num_classes=5, k=k,
                         temperature=temperature)
  want = _np_knn(train, labels, queries, 5, k, temperature)
  assert got.shape == (len(queries),)
  np.testing.assert_array_equal(got, want)
  accuracy = np.mean(want == query_labels)
  assert accuracy > 0.4  # the clusters are learnable (not chance).


def test_reference_is_sensitive_to_k_and_temperature():
  """Sanity of the clustered data: the settings above do not all agree, so a
  k or T ignored by the implementation would be caught."""
  train, labels, queries, _ = _clusters(seed=0)
  scale = np.random.default_rng(1).uniform(0.1, 10.0, (len(train), 1))
  train = (train * scale).astype(np.float32)
  preds = {(k, t): tuple(_np_knn(train, labels, queries, 5, k, t))
           for k in (1, 5, 20) for t in (0.07, 0.5)}
  assert len(set(preds[k, 0.07] for k in (1, 5, 20))) == 3
  assert preds[20, 0.07] != preds[20, 0.5]


def _angle(deg):
  rad = np.deg2rad(deg)
  return [np.cos(rad), np.sin(rad)]


def test_temperature_weighting_beats_majority():
  """k=3: one very close class-0 neighbour vs two far class-1 neighbours.
  Small T: exp(0.999/T) outweighs 2·exp(0.5/T) → class 0; large T the two
  votes win → class 1 (plain majority would always say 1)."""
  train = np.array([_angle(2), _angle(60), _angle(-60), _angle(150)],
                   np.float32)
  labels = np.array([0, 1, 1, 2])
  query = np.array([_angle(0)], np.float32) * 3.0
  for temperature, want in [(0.07, 0), (0.1, 0), (1.0, 1), (10.0, 1)]:
    got = _classify(train, labels, query, num_classes=3, k=3,
                           temperature=temperature)
    assert got.tolist() == [want], temperature
    assert _np_knn(train, labels, query, 3, 3, temperature).tolist() == [want]


def test_exact_vote_tie_goes_to_lower_class():
  """Two neighbours at the same similarity with classes 3 and 1 (3 listed
  first): equal summed votes, the prediction is class 1."""
  train = np.array([[0.6, 0.8], [0.6, -0.8], [-1.0, 0.0]], np.float32)
  labels = np.array([3, 1, 0])
  query = np.array([[2.0, 0.0]], np.float32)
  for temperature in (0.07, 1.0):
    got = _classify(train, labels, query, num_classes=4, k=2,
                           temperature=temperature)
    assert got.tolist() == [1]
  # Mirror image: class 1 first, class 3 second, still class 1.
  got = _classify(train, labels[[1, 0, 2]], query, num_classes=4, k=2)
  assert got.tolist() == [1]


def test_chunking_does_not_change_predictions():
  """chunk_size 7 on 61 queries (not a divisor) equals one chunk and numpy."""
  train, labels, queries, _ = _clusters(seed=2)
  whole = _classify(train, labels, queries, num_classes=5, k=5)
  chunked = _classify(train, labels, queries, num_classes=5, k=5,
                             chunk_size=7)
  assert len(queries) % 7 != 0 and len(chunked) == len(queries)
  np.testing.assert_array_equal(chunked, whole)
  np.testing.assert_array_equal(chunked,
                                _np_knn(train, labels, queries, 5, 5, 0.07))


def test_k_larger_than_train_set_is_clamped():
  """k=20 with 6 training examples votes with all 6, like k=6."""
  rng = np.random.default_rng(3)
  train = rng.normal(size=(6, 4)).astype(np.float32)
  labels = np.array([0, 1, 1, 2, 2, 2])
  queries = rng.normal(size=(9, 4)).astype(np.float32)
  got = _classify(train, labels, queries, num_classes=3, k=20,
                         temperature=5.0)
  np.testing.assert_array_equal(got, _np_knn(train, labels, queries, 3, 6, 5.0))
  np.testing.assert_array_equal(
      got, _classify(train, labels, queries, num_classes=3, k=6,
                            temperature=5.0))
  # Voting with all 6 differs from voting with fewer.
  assert not np.array_equal(got, _np_knn(train, labels, queries, 3, 1, 5.0))
  assert not np.array_equal(got, _np_knn(train, labels, queries, 3, 5, 5.0))


def test_knn_accuracy_known_value():
  """Queries equal to training points of two separated clusters, 3 of 10
  test labels wrong: accuracy exactly 0.7."""
  rng = np.random.default_rng(4)
  train = np.concatenate([rng.normal(size=(8, 3)) * 0.1 + [5, 0, 0],
                          rng.normal(size=(8, 3)) * 0.1 + [0, 5, 0]])
  labels = np.repeat([0, 1], 8)
  test = train[[0, 1, 2, 3, 4, 8, 9, 10, 11, 12]]
  test_labels = np.array([0, 0, 1, 1, 0, 1, 1, 1, 0, 1])
  acc = knn.knn_accuracy(train.astype(np.float32), labels,
                         test.astype(np.float32), test_labels, num_classes=2,
                         ks=(5, 20))
  assert set(acc) == {5, 16}  # 20 clamped to the 16 training examples
  assert isinstance(acc[5], float)
  assert acc[5] == pytest.approx(0.7, abs=1e-12)


@pytest.mark.parametrize("num_devices", [1, 3, 8])
def test_bank_split_over_devices_matches_numpy_for_20_and_200(num_devices):
  """The bank (203 rows: padded on 8 devices) is split over the devices,
  each keeps its top k, the merged candidates give the global top k: equal
  to brute force for k = 20 and 200 in one pass, in chunks of 16 queries."""
  train, labels, queries, _ = _clusters(seed=6, n_train=203, n_query=40)
  mesh = Mesh(np.array(jax.devices()[:num_devices]), ("data",))
  preds = knn.knn_classify(train, labels, queries, num_classes=5,
                           ks=(20, 200), mesh=mesh, chunk_size=16)
  for k in (20, 200):
    np.testing.assert_array_equal(preds[k],
                                  _np_knn(train, labels, queries, 5, k, 0.07))
  assert not np.array_equal(preds[20], preds[200])


def test_similarity_ties_go_to_the_lower_train_index_across_devices():
  """Rows 3, 7, 12 are the same vector (on devices 1, 3, 6 of 8) with labels
  2, 1, 0: the query equal to it takes row 3 for k=1 and rows 3, 7 for k=2
  (a vote tie between classes 2 and 1 → class 1), as the numpy reference
  with a stable sort."""
  rng = np.random.default_rng(7)
  train = rng.normal(size=(16, 4)).astype(np.float32)
  train[:, 0] = -5.0  # all others far from the query direction
  v = np.array([3.0, 0.5, 0.0, 0.0], np.float32)
  for i in (3, 7, 12):
    train[i] = v  # identical rows: exactly equal cosines
  labels = rng.integers(0, 3, 16)
  labels[[3, 7, 12]] = [2, 1, 0]
  query = v[None] * 0.5
  preds = knn.knn_classify(train, labels, query, num_classes=3, ks=(1, 2, 3))
  assert [int(preds[k][0]) for k in (1, 2, 3)] == [2, 1, 0]
  for k in (1, 2, 3):
    assert _np_knn(train, labels, query, 3, k, 0.07).tolist() == [
        int(preds[k][0])]


def test_knn_rejects_labels_out_of_range():
  train = np.ones((4, 2), np.float32)
  with pytest.raises(ValueError, match=r"train labels must be in \[0, 2\)"):
    knn.knn_classify(train, np.array([0, 1, 2, 0]), train, num_classes=2)


def test_extract_features_of_a_dict():
  mesh = Mesh(np.array(jax.devices()), ("data",))
  images = np.arange(20, dtype=np.float32).reshape(10, 2)
  out = knn.extract_features(jax.jit(lambda x: {"a": x, "b": 2 * x}), images,
                             batch_size=8, mesh=mesh)
  np.testing.assert_array_equal(out["a"], images)
  np.testing.assert_array_equal(out["b"], 2 * images)


@mesh_runs.float64()
def test_extract_features_removes_padding_and_keeps_order():
  """37 images, batch 20 on 8 devices (rounded to 16): three sharded calls of
  a fixed shape, and the result is embed of every image, in order (float64)."""
  mesh = Mesh(np.array(jax.devices()), ("data",))
  rng = np.random.default_rng(5)
  images = rng.normal(size=(37, 4, 4, 3))
  images += np.arange(37)[:, None, None, None]
  calls = []
  mean_pixels = jax.jit(lambda x: jnp.mean(x, axis=(1, 2)))

  def embed(x):
    calls.append((x.shape, x.sharding.spec))
    return mean_pixels(x)

  feats = knn.extract_features(embed, images, batch_size=20, mesh=mesh)
  assert calls == [((16, 4, 4, 3), P("data"))] * 3
  assert feats.shape == (37, 3)
  assert feats.dtype == np.float64
  np.testing.assert_allclose(feats, images.mean(axis=(1, 2)), rtol=1e-14,
                             atol=1e-14)
  np.testing.assert_array_equal(feats, np.asarray(mean_pixels(images)))
