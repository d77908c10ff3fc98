"""Weighted k-nearest-neighbour classification on frozen features.

The protocol of Wu et al., "Unsupervised Feature Learning via Non-Parametric
Instance Discrimination", CVPR 2018 (https://arxiv.org/abs/1805.01978), used
by most SSL libraries as a cheap proxy of linear evaluation: features are
L2-normalised, each query takes its k most cosine-similar training examples,
and each neighbour votes for its class with weight `exp(similarity / T)`.

The training features (the "bank") are split over the devices of the mesh.
For each chunk of queries, every device scores the queries against its rows
and keeps its own top k; the candidates of all devices are gathered and the
global top k is taken from them. No device ever holds more than
`[chunk, N / devices]` similarities, and one pass serves several k.

Two entry points: `knn_classify`/`knn_accuracy` take host arrays (offline
evaluation on one process); `StreamedBank` is filled batch by batch from
features that stay on the devices that computed them (several processes,
`evaluators.representation`): its rows are never gathered onto one host.
"""

import functools
import math
from typing import Callable, Sequence

import jax
from jax import lax
import jax.numpy as jnp
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P
import numpy as np

from jaxssl import losses
from jaxssl import precision
from jaxssl import sharding

_PAD_SIMILARITY = -2.0  # below any cosine similarity: padded rows never win


def _local_top_k(bank, bank_labels, queries, *, k_local, k, axis_name):
  """Top-`k_local` of this device's bank rows, then top-`k` of all devices'.

  Ties go to the lower global bank index: `lax.top_k` prefers lower
  positions, rows are laid out in index order over the devices, and the
  gathered candidates keep device order.
  """
  sims = jnp.matmul(queries, bank.T, precision=lax.Precision.HIGHEST)
  sims = jnp.where(bank_labels[None, :] >= 0, sims, _PAD_SIMILARITY)
  top_sims, top_idx = lax.top_k(sims, k_local)
  top_labels = bank_labels[top_idx]
  if axis_name is not None:
    # [q, k_local] per device → [q, devices·k_local], device-major, the same
    # on every device.
    gather = functools.partial(lax.all_gather, axis_name=axis_name, axis=1,
                               tiled=True, to="invarying")
    top_sims, top_labels = gather(top_sims), gather(top_labels)
    top_sims, pos = lax.top_k(top_sims, k)
    top_labels = jnp.take_along_axis(top_labels, pos, axis=1)
  return top_sims, top_labels


def _votes(top_sims, top_labels, *, ks, num_classes, temperature):
  weights = jnp.exp(top_sims / temperature)
  onehot = jax.nn.one_hot(top_labels, num_classes) * weights[..., None]
  # top_k is sorted, so the k best of the max-k list are its first k.
  return jnp.stack([jnp.argmax(onehot[:, :k].sum(axis=1), axis=-1)
                    for k in ks])


@functools.lru_cache(maxsize=16)
def _compiled(mesh: Mesh, k_local: int, ks: tuple, num_classes: int,
              temperature: float) -> Callable:
  def per_device(bank, bank_labels, queries):
    sims, labels = _local_top_k(bank, bank_labels, queries, k_local=k_local,
                                k=max(ks), axis_name=sharding.DATA_AXIS)
    return _votes(sims, labels, ks=ks, num_classes=num_classes,
                  temperature=temperature)

  return jax.jit(jax.shard_map(
      per_device, mesh=mesh,
      in_specs=(P(sharding.DATA_AXIS), P(sharding.DATA_AXIS), P()),
      out_specs=P()))


def knn_classify(train_features, train_labels, query_features, *,
                 num_classes: int, ks: Sequence[int] = (20,),
                 temperature: float = 0.07, chunk_size: int = 1024,
                 mesh: Mesh = None) -> dict:
  """Predicted labels of `query_features` by weighted kNN over the train set.

  Args:
    train_features: `[N, D]` features of the labelled (training) examples.
    train_labels: `[N]` integer labels in `[0, num_classes)`.
    query_features: `[M, D]` features to classify.
    num_classes: number of classes.
    ks: neighbour counts (20 and 200 are customary); one pass serves all.
    temperature: vote weighting `exp(sim / T)`.
    chunk_size: queries per device computation (bounds the `[chunk, N/devices]`
      similarity block).
    mesh: devices holding the bank (default: all, `sharding.data_mesh()`).

  Returns:
    `{k: [M] predicted labels}`; neighbour ties go to the lower train index,
    vote ties to the lower class index.
  """
  mesh = sharding.data_mesh() if mesh is None else mesh
  num_devices = mesh.devices.size
  train_labels = np.asarray(train_labels, np.int32)
  if train_labels.min() < 0 or train_labels.max() >= num_classes:
    raise ValueError(f"kNN: train labels must be in [0, {num_classes}); got "
                     f"[{train_labels.min()}, {train_labels.max()}]")
  n = len(train_labels)
  ks = tuple(sorted({min(int(k), n) for k in ks}))
  if not ks or ks[0] <= 0:
    raise ValueError(f"kNN: ks={ks} must be positive")
  per_device = -(-n // num_devices)
  k_local = min(ks[-1], per_device)  # candidates per device, then merged
  pad = per_device * num_devices - n
  bank = np.asarray(losses.l2_normalize(jnp.asarray(train_features,
                                                    jnp.float32)))
  bank = np.concatenate([bank, np.zeros((pad, bank.shape[1]), np.float32)])
  labels = np.concatenate([train_labels, -np.ones(pad, np.int32)])
  rows = NamedSharding(mesh, P(sharding.DATA_AXIS))
  bank, labels = jax.device_put(bank, rows), jax.device_put(labels, rows)
  queries = losses.l2_normalize(jnp.asarray(query_features, jnp.float32))
  fn = _compiled(mesh, k_local, ks, num_classes, float(temperature))
  preds = []
  for start in range(0, len(queries), chunk_size):
    chunk = queries[start:start + chunk_size]
    short = chunk_size - len(chunk) if len(queries) > chunk_size else 0
    if short:  # keep one compiled shape
      chunk = jnp.concatenate([chunk, jnp.zeros((short, chunk.shape[1]))])
    out = np.asarray(fn(bank, labels, chunk))
    preds.append(out[:, :out.shape[1] - short])
  preds = np.concatenate(preds, axis=1)
  return dict(zip(ks, preds))


class StreamedBank:
  """A kNN bank of `num_batches` global batches, sharded like the batches.

  Row `j` of global batch `i` lives on the device that computed it: the
  bank is `[num_batches, batch, D]` with the batch axis over the mesh, so
  each device holds `[num_batches, batch / devices, D]` and filling it moves
  no data. Padded rows carry label −1 and never win a vote.

  Args:
    mesh: the data mesh.
    num_batches: global batches of the bank.
    batch_size: rows per global batch (a multiple of the devices).
    dim: feature dimension.
  """

  def __init__(self, mesh: Mesh, num_batches: int, batch_size: int,
               dim: int):
    self.mesh = mesh
    spec = NamedSharding(mesh, P(None, sharding.DATA_AXIS))
    dtype = precision.full_dtype()
    self.features = jax.jit(
        lambda: jnp.zeros((num_batches, batch_size, dim), dtype),
        out_shardings=spec)()
    self.labels = jax.jit(
        lambda: jnp.full((num_batches, batch_size), -1, jnp.int32),
        out_shardings=spec)()

  def put(self, index: int, features: jax.Array, labels: jax.Array,
          mask: jax.Array) -> None:
    """Stores global batch `index`: `[batch, D]` features (L2-normalised
    here), `[batch]` labels and `[batch]` mask, all sharded over the mesh."""
    self.features, self.labels = _put(self.mesh)(
        self.features, self.labels, jnp.int32(index), features, labels, mask)

  def correct(self, queries: jax.Array, labels: jax.Array, *,
              ks: Sequence[int], num_classes: int, temperature: float,
              num_labelled: int) -> jax.Array:
    """`[len(ks)]` correctly classified rows of one global batch of
    `queries` (`[batch, D]`, sharded; rows with label −1 do not count).
    `ks` are clamped to `num_labelled`, the bank's labelled rows."""
    return count_correct(self.features, self.labels, queries, labels,
                         mesh=self.mesh, ks=ks, num_classes=num_classes,
                         temperature=temperature, num_labelled=num_labelled,
                         bank_spec=P(None, sharding.DATA_AXIS))


def count_correct(bank: jax.Array, bank_labels: jax.Array, queries: jax.Array,
                  labels: jax.Array, *, mesh: Mesh, ks: Sequence[int],
                  num_classes: int, temperature: float, num_labelled: int,
                  bank_spec: P = P(sharding.DATA_AXIS)) -> jax.Array:
  """`[len(ks)]` correctly classified rows of a sharded query batch.

  Args:
    bank: L2-normalised rows `[..., D]`, sharded by `bank_spec` (e.g. a
      row-sharded memory bank `[N_pad, D]`, `P('data')`).
    bank_labels: their labels, `bank.shape[:-1]`, −1 where a row must not
      vote (padding, unknown).
    queries: `[batch, D]` features (normalised here), sharded by rows.
    labels: `[batch]` their labels (−1: not counted).
    mesh: the data mesh.
    ks: neighbour counts, clamped to `num_labelled`.
    num_classes: classes of the labels.
    temperature: vote weighting `exp(similarity / T)`.
    num_labelled: rows of the bank with a label.
    bank_spec: the bank's and its labels' sharding.
  """
  ks = tuple(sorted({min(int(k), num_labelled) for k in ks}))
  if not ks or ks[0] <= 0:
    raise ValueError(f"kNN: ks={ks} must be positive (labelled bank rows: "
                     f"{num_labelled})")
  rows = math.prod(bank.shape[:-1]) // mesh.devices.size
  fn = _streamed(mesh, min(ks[-1], rows), ks, num_classes,
                 float(temperature), bank_spec)
  return fn(bank, bank_labels, queries, labels)


@functools.lru_cache(maxsize=8)
def _put(mesh: Mesh) -> Callable:
  def per_device(bank, bank_labels, index, features, labels, mask):
    rows = losses.l2_normalize(precision.to_full(features))
    bank = lax.dynamic_update_index_in_dim(bank, rows.astype(bank.dtype),
                                           index, 0)
    bank_labels = lax.dynamic_update_index_in_dim(
        bank_labels, jnp.where(mask, labels, -1), index, 0)
    return bank, bank_labels

  bank_spec, rows = P(None, sharding.DATA_AXIS), P(sharding.DATA_AXIS)
  return jax.jit(jax.shard_map(
      per_device, mesh=mesh, in_specs=(bank_spec, bank_spec, P(), rows, rows,
                                       rows),
      out_specs=(bank_spec, bank_spec)), donate_argnums=(0, 1))


@functools.lru_cache(maxsize=16)
def _streamed(mesh: Mesh, k_local: int, ks: tuple, num_classes: int,
              temperature: float, bank_spec: P) -> Callable:
  """Correct-vote counts of a sharded query batch against a sharded bank.

  Every device gathers the batch's queries, then takes them one device's
  share at a time (`lax.map`: at most `[batch / devices, rows]`
  similarities), scoring them against its own bank rows; the top-k
  candidates of all devices are merged as in `knn_classify`.
  """
  axis = sharding.DATA_AXIS

  def per_device(bank, bank_labels, queries, labels):
    bank = bank.reshape(-1, bank.shape[-1])
    bank_labels = bank_labels.reshape(-1)
    queries = losses.l2_normalize(precision.to_full(queries))
    gather = functools.partial(lax.all_gather, axis_name=axis, tiled=False,
                               to="invarying")
    queries = gather(queries.astype(bank.dtype))  # [devices, b, D]
    labels = gather(labels)                       # [devices, b]

    def block(args):
      q, y = args
      sims, top_labels = _local_top_k(bank, bank_labels, q, k_local=k_local,
                                      k=max(ks), axis_name=axis)
      preds = _votes(sims, top_labels, ks=ks, num_classes=num_classes,
                     temperature=temperature)
      return jnp.sum((preds == y[None]) & (y[None] >= 0), axis=1)

    return jnp.sum(lax.map(block, (queries, labels)), axis=0)

  rows = P(axis)
  return jax.jit(jax.shard_map(
      per_device, mesh=mesh, in_specs=(bank_spec, bank_spec, rows, rows),
      out_specs=P()))


def extract_features(embed: Callable[[jax.Array], jax.Array], images: np.ndarray,
                     *, batch_size: int, mesh: Mesh) -> np.ndarray:
  """`embed` over `images` in global batches on the mesh (last batch padded).

  `embed` may return an array or a dict of arrays (e.g. `{'h', 'z'}`); the
  result has the same structure, on the host.
  """
  batch_size = max(batch_size // mesh.devices.size, 1) * mesh.devices.size
  out = []
  for start in range(0, len(images), batch_size):
    chunk = images[start:start + batch_size]
    pad = batch_size - len(chunk)
    if pad:
      chunk = np.concatenate([chunk, np.repeat(chunk[-1:], pad, axis=0)])
    x = jax.device_put(chunk, sharding.batch_sharded(mesh))
    feats = jax.device_get(embed(x))
    out.append(jax.tree.map(lambda f, pad=pad: f[:len(f) - pad], feats))
  return jax.tree.map(lambda *fs: np.concatenate(fs), *out)


def knn_accuracy(train_features, train_labels, test_features, test_labels, *,
                 num_classes: int, ks: Sequence[int] = (20,),
                 temperature: float = 0.07, mesh: Mesh = None,
                 chunk_size: int = 1024) -> dict:
  """Top-1 accuracy of `knn_classify` on labelled test features, per k."""
  preds = knn_classify(train_features, train_labels, test_features,
                       num_classes=num_classes, ks=ks, temperature=temperature,
                       mesh=mesh, chunk_size=chunk_size)
  test_labels = np.asarray(test_labels)
  return {k: float(np.mean(p == test_labels)) for k, p in preds.items()}
