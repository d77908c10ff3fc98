"""Self-supervised losses: pure functions of embeddings.

Every loss takes the embeddings of the *local* batch (the examples on this
device). When `axis_name` names a mapped device axis (inside `jax.shard_map`),
the negatives come from the *global* batch through `lax.all_gather`, so the
value computed on N devices is the same as on one device holding the whole
batch: the per-device losses are means over local anchors, and their mean over
devices (`lax.pmean`) is the single-device loss on the concatenated batch.
"""

from typing import Optional

import jax
from jax import lax
import jax.numpy as jnp

from jaxssl import precision

# The SimCLR reference masks self-similarities by subtracting this constant.
_LARGE_NUM = 1e9


def l2_normalize(x: jax.Array, axis: int = -1, eps: float = 1e-12) -> jax.Array:
  """`x / ||x||` as `tf.math.l2_normalize`: `x * rsqrt(max(sum(x**2), eps))`.

  `eps` bounds the *squared* norm, so zero rows map to zero with a finite
  gradient.
  """
  sq = jnp.sum(jnp.square(x), axis=axis, keepdims=True)
  return x * lax.rsqrt(jnp.maximum(sq, eps))


def _gather(x: jax.Array, axis_name: Optional[str]) -> jax.Array:
  """All views of the global batch, in device order; identity without axis."""
  if axis_name is None:
    return x
  # The result differs per device only through `x`'s own rows, and it is
  # combined with local (device-varying) anchors anyway, so the default
  # `to='varying'` is what we want; its transpose is a reduce-scatter, which
  # carries the gradient of the negatives back to the device that owns them.
  return lax.all_gather(x, axis_name, axis=0, tiled=True)


def nt_xent_and_accuracy(
    z1: jax.Array,
    z2: jax.Array,
    temperature: float,
    *,
    normalize: bool = True,
    axis_name: Optional[str] = None,
) -> tuple[jax.Array, jax.Array]:
  """NT-Xent loss and the contrastive top-1 accuracy of the positive.

  See `nt_xent`. The accuracy is that of the reference's `contrast_acc`: the
  fraction of local view-1 anchors whose most similar view-2 embedding in the
  global batch is their own positive.

  Args:
    z1: `[n, d]` embeddings of the first view of the local batch.
    z2: `[n, d]` embeddings of the second view, row-aligned with `z1`.
    temperature: softmax temperature τ.
    normalize: L2-normalise the embeddings first (cosine similarity).
    axis_name: mapped device axis over which the global batch is spread, or
      None for a single device.

  Returns:
    `(loss, accuracy)`, scalars for this device.
  """
  if z1.shape != z2.shape or z1.ndim != 2:
    raise ValueError(
        f"nt_xent expects two [n, d] arrays of the same shape; got {z1.shape} "
        f"and {z2.shape}")
  z1 = precision.to_full(z1)
  z2 = precision.to_full(z2)
  if normalize:
    z1, z2 = l2_normalize(z1), l2_normalize(z2)
  n = z1.shape[0]
  z1_all = _gather(z1, axis_name)
  z2_all = _gather(z2, axis_name)
  offset = 0 if axis_name is None else lax.axis_index(axis_name) * n
  positives = offset + jnp.arange(n)  # column of each anchor's positive
  num_global = z1_all.shape[0]
  self_mask = jax.nn.one_hot(positives, num_global) * _LARGE_NUM

  logits_ab = z1 @ z2_all.T / temperature
  logits_ba = z2 @ z1_all.T / temperature
  logits_aa = z1 @ z1_all.T / temperature - self_mask
  logits_bb = z2 @ z2_all.T / temperature - self_mask

  loss_a = _cross_entropy(jnp.concatenate([logits_ab, logits_aa], axis=1),
                          positives)
  loss_b = _cross_entropy(jnp.concatenate([logits_ba, logits_bb], axis=1),
                          positives)
  return loss_a + loss_b, _top1(logits_ab, positives)


def _cross_entropy(logits: jax.Array, labels: jax.Array) -> jax.Array:
  """Mean over rows of the softmax cross-entropy of column `labels[i]`."""
  log_p = jax.nn.log_softmax(logits, axis=-1)
  return -jnp.mean(jnp.take_along_axis(log_p, labels[:, None], axis=-1))


def _top1(logits: jax.Array, labels: jax.Array) -> jax.Array:
  """Fraction of rows whose largest logit is column `labels[i]` (no
  gradient)."""
  hits = precision.to_full(jnp.argmax(logits, axis=1) == labels)
  return lax.stop_gradient(jnp.mean(hits))


def nt_xent(
    z1: jax.Array,
    z2: jax.Array,
    temperature: float,
    *,
    normalize: bool = True,
    axis_name: Optional[str] = None,
) -> jax.Array:
  """Normalised temperature-scaled cross entropy (NT-Xent).

  Chen, Kornblith, Norouzi, Hinton, "A Simple Framework for Contrastive
  Learning of Visual Representations", ICML 2020 (https://arxiv.org/abs/2002.05709),
  with the semantics of the TF2 reference `objective.add_contrastive_loss`:

  * embeddings are L2-normalised with 1e-12 on the squared norm;
  * each local anchor of view 1 is scored against every view-2 embedding
    (`logits_ab`) and every other view-1 embedding (`logits_aa`, the
    self-similarity masked) of the *global* batch, gathered over
    `axis_name`; the positive is its own view-2 embedding;
  * `loss_a` is the softmax cross-entropy over `[logits_ab, logits_aa]`,
    averaged over the local anchors; `loss_b` is the same with the views
    swapped; the result is `loss_a + loss_b`.

  Gradients flow through the gathered embeddings (the transpose of
  `all_gather` is a reduce-scatter), as in the reference, whose
  `cross_replica_concat` is differentiable.

  Args:
    z1: `[n, d]` embeddings of the first view of the local batch.
    z2: `[n, d]` embeddings of the second view, row-aligned with `z1`.
    temperature: softmax temperature τ (0.1 ImageNet, 0.5 CIFAR-10 in the
      paper).
    normalize: L2-normalise first (the reference's `hidden_norm`).
    axis_name: mapped device axis holding the rest of the global batch.

  Returns:
    The scalar loss of this device's anchors. Under `shard_map`, take
    `lax.pmean` over `axis_name` to get the global-batch loss.
  """
  loss, _ = nt_xent_and_accuracy(
      z1, z2, temperature, normalize=normalize, axis_name=axis_name)
  return loss


def info_nce_and_accuracy(
    q: jax.Array,
    k: jax.Array,
    temperature: float,
    *,
    queue: Optional[jax.Array] = None,
    axis_name: Optional[str] = None,
    normalize: bool = True,
) -> tuple[jax.Array, jax.Array]:
  """`info_nce` and the top-1 accuracy of the positive among the logits
  (the MoCo references' `acc1`), a stop-gradient scalar. See `info_nce`."""
  if q.ndim != 2 or q.shape != k.shape:
    raise ValueError(f"info_nce expects queries and keys of one [n, d] shape; "
                     f"got {q.shape} and {k.shape}")
  if queue is not None and (queue.ndim != 2 or queue.shape[1] != q.shape[1]):
    raise ValueError(f"info_nce: the queue must be [K, {q.shape[1]}]; got "
                     f"{queue.shape}")
  q = precision.to_full(q)
  k = precision.to_full(k)
  if normalize:
    q, k = l2_normalize(q), l2_normalize(k)
  n = q.shape[0]
  if queue is None:
    keys = _gather(k, axis_name)
    offset = 0 if axis_name is None else lax.axis_index(axis_name) * n
    positives = offset + jnp.arange(n)
    logits = q @ keys.T / temperature
  else:
    positive = jnp.sum(q * k, axis=1, keepdims=True)
    negatives = q @ precision.to_full(queue).T
    logits = jnp.concatenate([positive, negatives], axis=1) / temperature
    positives = jnp.zeros([n], jnp.int32)
  return _cross_entropy(logits, positives), _top1(logits, positives)


def info_nce(
    q: jax.Array,
    k: jax.Array,
    temperature: float,
    *,
    queue: Optional[jax.Array] = None,
    axis_name: Optional[str] = None,
    normalize: bool = True,
) -> jax.Array:
  """InfoNCE of queries against keys: MoCo's contrastive loss.

  The mean over the local queries of the softmax cross-entropy of their
  positive key:

  * `queue=None` (MoCo v3: Chen, Xie & He, "An Empirical Study of Training
    Self-Supervised Vision Transformers", ICCV 2021,
    https://arxiv.org/abs/2104.02057, `contrastive_loss`): each local query
    is scored against the keys of the whole global batch, gathered over
    `axis_name` in device order; the positive of local row i is global row
    `offset + i` (`offset` = device index · n). The reference multiplies
    this by `2τ`; the caller does (`jaxssl.methods.mocov3`).
  * `queue` `[K, d]` (MoCo v1: He, Fan, Wu, Xie & Girshick, "Momentum
    Contrast for Unsupervised Visual Representation Learning", CVPR 2020,
    https://arxiv.org/abs/1911.05722; v2: Chen, Fan, Girshick & He,
    https://arxiv.org/abs/2003.04297): logits `[q·k, q·queueᵀ] / τ` with the
    positive at column 0; the queue rows are used as given (stored keys,
    already normalised); nothing is gathered.

  The keys are differentiated like the queries (the gathered ones through
  the all-gather's transpose); MoCo's keys come from the momentum encoder,
  so the caller stops their gradient.

  Args:
    q: `[n, d]` queries of the local batch.
    k: `[n, d]` keys, row-aligned with `q` (row i is the positive of q_i).
    temperature: softmax temperature τ (MoCo v1 0.07, v2 0.2; v3 0.2 for
      ViT, 1.0 for ResNet).
    queue: `[K, d]` negative keys, or None for the in-batch form.
    axis_name: mapped device axis over which the global batch is spread
      (in-batch form), or None.
    normalize: L2-normalise `q` and `k` first (1e-12 bounding the squared
      norm, as `l2_normalize`).

  Returns:
    The scalar loss of this device's queries; under `shard_map`, its
    `lax.pmean` over `axis_name` is the loss of the global batch.
  """
  loss, _ = info_nce_and_accuracy(q, k, temperature, queue=queue,
                                  axis_name=axis_name, normalize=normalize)
  return loss


def regression_loss(p: jax.Array, z: jax.Array) -> jax.Array:
  """BYOL's normalised regression loss, per example: `‖p̂ − ẑ‖² = 2 − 2·cos`.

  Grill et al., "Bootstrap Your Own Latent", NeurIPS 2020
  (https://arxiv.org/abs/2006.07733), eq. 2, as the DeepMind JAX reference's
  `regression_loss`: both vectors are L2-normalised with 1e-12 bounding the
  squared norm (so zero rows stay finite). No stop-gradient is applied here:
  the caller stops the gradient of the target `z`. BYOL symmetrises by
  *summing* the two directions (the reference's scale; averaging them halves
  the gradient, a known reproduction bug).

  Args:
    p: `[n, d]` online predictions.
    z: `[n, d]` target projections.

  Returns:
    `[n]` per-example losses in [0, 4].
  """
  if p.shape != z.shape:
    raise ValueError(f"regression_loss: shapes {p.shape} and {z.shape} differ")
  p = l2_normalize(precision.to_full(p))
  z = l2_normalize(precision.to_full(z))
  return jnp.sum(jnp.square(p - z), axis=-1)


def negative_cosine(p: jax.Array, z: jax.Array) -> jax.Array:
  """SimSiam's `D(p, z) = −cos(p, z)` per example.

  Chen & He, "Exploring Simple Siamese Representation Learning", CVPR 2021
  (https://arxiv.org/abs/2011.10566), eq. 1. Both vectors are L2-normalised
  with 1e-12 bounding the squared norm (PyTorch's `cosine_similarity` bounds
  each norm by 1e-8 instead; they differ only for near-zero rows). The caller
  stops the gradient of `z` and symmetrises as `D(p1, z2)/2 + D(p2, z1)/2`.

  Args:
    p: `[n, d]` predictions.
    z: `[n, d]` projections.

  Returns:
    `[n]` values in [−1, 1].
  """
  if p.shape != z.shape:
    raise ValueError(f"negative_cosine: shapes {p.shape} and {z.shape} differ")
  p = l2_normalize(precision.to_full(p))
  z = l2_normalize(precision.to_full(z))
  return -jnp.sum(p * z, axis=-1)


def _global_sum(x: jax.Array, axis_name: Optional[str]) -> jax.Array:
  return x if axis_name is None else lax.psum(x, axis_name)


def standardize(z: jax.Array, *, axis_name: Optional[str] = None,
                epsilon: float = 1e-5) -> jax.Array:
  """Per-dimension `(z − mean)/√(var + ε)` over the GLOBAL batch.

  The statistics (biased variance, as BatchNorm's normalisation) are sums over
  the local rows and then over `axis_name`, so N devices standardise with the
  statistics of the concatenated batch.
  """
  z = precision.to_full(z)
  count = _global_sum(precision.to_full(z.shape[0]), axis_name)
  mean = _global_sum(jnp.sum(z, axis=0), axis_name) / count
  var = _global_sum(jnp.sum(jnp.square(z - mean), axis=0), axis_name) / count
  return (z - mean) * lax.rsqrt(var + epsilon)


def cross_correlation(z1: jax.Array, z2: jax.Array, *,
                      axis_name: Optional[str] = None,
                      epsilon: float = 1e-5) -> jax.Array:
  """Barlow Twins' `C = Σ_b ẑ1_b ẑ2_bᵀ / N` over the global batch of N rows.

  `ẑ` are the embeddings standardised per dimension over the global batch
  (the reference's `BatchNorm1d(affine=False)`, synchronised across GPUs);
  the local products are summed over `axis_name`, as the reference's
  `all_reduce` of `C`. Every device ends with the same `[d, d]` matrix.
  """
  if z1.shape != z2.shape:
    raise ValueError(f"cross_correlation: shapes {z1.shape} and {z2.shape} "
                     "differ")
  z1 = standardize(z1, axis_name=axis_name, epsilon=epsilon)
  z2 = standardize(z2, axis_name=axis_name, epsilon=epsilon)
  count = _global_sum(precision.to_full(z1.shape[0]), axis_name)
  product = jnp.matmul(z1.T, z2, precision=lax.Precision.HIGHEST)
  return _global_sum(product, axis_name) / count


def barlow_twins(z1: jax.Array, z2: jax.Array, *, lambd: float = 5e-3,
                 axis_name: Optional[str] = None) -> tuple[jax.Array, jax.Array]:
  """Barlow Twins redundancy-reduction loss.

  Zbontar, Jing, Misra, LeCun, Deny, "Barlow Twins: Self-Supervised Learning
  via Redundancy Reduction", ICML 2021 (https://arxiv.org/abs/2103.03230),
  eq. 1: `Σ_i (1 − C_ii)² + λ Σ_{i≠j} C_ij²` with `C = cross_correlation`.
  The value is the loss of the whole global batch on every device (its mean
  over devices is itself).

  Args:
    z1: `[n, d]` embeddings of the first view of the local batch.
    z2: `[n, d]` embeddings of the second view.
    lambd: λ, the off-diagonal weight (5e-3 in the paper).
    axis_name: mapped device axis holding the rest of the global batch.

  Returns:
    `(loss, C)`.
  """
  c = cross_correlation(z1, z2, axis_name=axis_name)
  diagonal = jnp.diagonal(c)
  on_diag = jnp.sum(jnp.square(1.0 - diagonal))
  off_diag = jnp.sum(jnp.square(c)) - jnp.sum(jnp.square(diagonal))
  return on_diag + lambd * off_diag, c
