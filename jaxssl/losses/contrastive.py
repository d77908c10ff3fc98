"""Contrastive losses: SimCLR's NT-Xent and MoCo's InfoNCE."""

from typing import Optional

import jax
from jax import lax
import jax.numpy as jnp

from jaxssl import precision
from jaxssl.losses import core


_LARGE_NUM = 1e9


def nt_xent_and_accuracy(
    z1: jax.Array,
    z2: jax.Array,
    temperature: float,
    *,
    normalize: bool = True,
    axis_name: Optional[str] = None,
    queue: Optional[jax.Array] = None,
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
    queue: `[K, d]` extra negatives (SimCLR v2's memory), or None.

  Returns:
    `(loss, accuracy)`, scalars for this device.
  """
  if z1.shape != z2.shape or z1.ndim != 2:
    raise ValueError(
        f"nt_xent expects two [n, d] arrays of the same shape; got {z1.shape} "
        f"and {z2.shape}")
  if queue is not None and (queue.ndim != 2 or queue.shape[1] != z1.shape[1]):
    raise ValueError(f"nt_xent: the memory must be [K, {z1.shape[1]}]; got "
                     f"{queue.shape}")
  z1 = precision.to_full(z1)
  z2 = precision.to_full(z2)
  if normalize:
    z1, z2 = core.l2_normalize(z1), core.l2_normalize(z2)
  n = z1.shape[0]
  z1_all = core.gather(z1, axis_name)
  z2_all = core.gather(z2, axis_name)
  offset = 0 if axis_name is None else lax.axis_index(axis_name) * n
  positives = offset + jnp.arange(n)  # column of each anchor's positive
  num_global = z1_all.shape[0]
  self_mask = jax.nn.one_hot(positives, num_global) * _LARGE_NUM

  logits_ab = z1 @ z2_all.T / temperature
  logits_ba = z2 @ z1_all.T / temperature
  logits_aa = z1 @ z1_all.T / temperature - self_mask
  logits_bb = z2 @ z2_all.T / temperature - self_mask

  memory_a, memory_b = [], []
  if queue is not None:
    queue = lax.stop_gradient(precision.to_full(queue))
    memory_a, memory_b = [z1 @ queue.T / temperature], [z2 @ queue.T /
                                                        temperature]
  loss_a = core.cross_entropy(
      jnp.concatenate([logits_ab, logits_aa, *memory_a], axis=1), positives)
  loss_b = core.cross_entropy(
      jnp.concatenate([logits_ba, logits_bb, *memory_b], axis=1), positives)
  return loss_a + loss_b, core.top1(logits_ab, positives)


def nt_xent(
    z1: jax.Array,
    z2: jax.Array,
    temperature: float,
    *,
    normalize: bool = True,
    axis_name: Optional[str] = None,
    queue: Optional[jax.Array] = None,
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
  * with a `queue` (SimCLR v2: Chen, Kornblith, Swersky, Norouzi & Hinton,
    "Big Self-Supervised Models are Strong Semi-Supervised Learners",
    NeurIPS 2020, https://arxiv.org/abs/2006.10029, §2: MoCo's memory of a
    momentum network's outputs, "buffered as negative examples"), each
    anchor's logits also hold its similarity to the K memory rows (already
    normalised, no gradient): `[logits_ab, logits_aa, z_a·queueᵀ/τ]`.

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
    queue: `[K, d]` memory of extra negatives (L2-normalised rows), or None.

  Returns:
    The scalar loss of this device's anchors. Under `shard_map`, take
    `lax.pmean` over `axis_name` to get the global-batch loss.
  """
  loss, _ = nt_xent_and_accuracy(
      z1, z2, temperature, normalize=normalize, axis_name=axis_name,
      queue=queue)
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
    q, k = core.l2_normalize(q), core.l2_normalize(k)
  n = q.shape[0]
  if queue is None:
    keys = core.gather(k, axis_name)
    offset = 0 if axis_name is None else lax.axis_index(axis_name) * n
    positives = offset + jnp.arange(n)
    logits = q @ keys.T / temperature
  else:
    positive = jnp.sum(q * k, axis=1, keepdims=True)
    negatives = q @ precision.to_full(queue).T
    logits = jnp.concatenate([positive, negatives], axis=1) / temperature
    positives = jnp.zeros([n], jnp.int32)
  return core.cross_entropy(logits, positives), core.top1(logits, positives)


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
