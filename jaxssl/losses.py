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
  z1 = z1.astype(jnp.float32)
  z2 = z2.astype(jnp.float32)
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

  def cross_entropy(logits):
    log_p = jax.nn.log_softmax(logits, axis=-1)
    return -jnp.mean(jnp.take_along_axis(log_p, positives[:, None], axis=-1))

  loss_a = cross_entropy(jnp.concatenate([logits_ab, logits_aa], axis=1))
  loss_b = cross_entropy(jnp.concatenate([logits_ba, logits_bb], axis=1))
  accuracy = jnp.mean(
      (jnp.argmax(logits_ab, axis=1) == positives).astype(jnp.float32))
  return loss_a + loss_b, lax.stop_gradient(accuracy)


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
  p = l2_normalize(p.astype(jnp.float32))
  z = l2_normalize(z.astype(jnp.float32))
  return jnp.sum(jnp.square(p - z), axis=-1)
