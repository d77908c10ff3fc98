"""SwAV: online clustering with equipartitioned codes (Sinkhorn-Knopp).

Caron, Misra, Mairal, Goyal, Bojanowski & Joulin, "Unsupervised Learning of
Visual Features by Contrasting Cluster Assignments", NeurIPS 2020
(https://arxiv.org/abs/2006.09882), with the semantics of the reference
(facebookresearch/swav, `main_swav.py`: `distributed_sinkhorn` and the
loss of `train`).
"""

from typing import Optional, Sequence

import jax
from jax import lax
import jax.numpy as jnp

from jaxssl import precision
from jaxssl.losses import core


def sinkhorn(scores: jax.Array, *, epsilon: float = 0.05, num_iters: int = 3,
             axis_name: Optional[str] = None) -> jax.Array:
  """Soft codes of the local rows, equipartitioned over the GLOBAL batch.

  The reference's `distributed_sinkhorn`: `Q = exp(scores/ε)ᵀ` (`[K, B]`),
  divided by its total, then `num_iters` times: each prototype's row
  divided by its sum and by K, each example's column by its sum and by B;
  finally ×B so that every example's codes sum to 1. The total and the
  row sums are summed over `axis_name` (the reference's `all_reduce`) and
  B counts the rows of all devices, so N devices compute the codes of the
  concatenated batch. (The exponent is shifted by the global maximum, which
  cancels in the first normalisation and keeps `exp` finite for any ε.)

  Args:
    scores: `[n, K]` prototype scores of the local rows (SwAV: normalised
      embeddings times normalised prototypes).
    epsilon: ε, the entropy regularisation (0.05 in the paper).
    num_iters: Sinkhorn iterations (3).
    axis_name: mapped device axis holding the rest of the batch, or None.

  Returns:
    `[n, K]` codes, each row summing to 1 (no gradient flows: the reference
    computes them under `no_grad`).
  """
  scores = lax.stop_gradient(precision.to_full(scores))
  n, k = scores.shape
  top = jnp.max(scores)
  if axis_name is not None:
    top = lax.pmax(top, axis_name)
  q = jnp.exp((scores - top) / epsilon).T  # [K, n]
  rows_global = core.global_sum(precision.to_full(n), axis_name)
  q = q / core.global_sum(jnp.sum(q), axis_name)
  for _ in range(num_iters):
    q = q / core.global_sum(jnp.sum(q, axis=1, keepdims=True), axis_name)
    q = q / k
    q = q / jnp.sum(q, axis=0, keepdims=True)
    q = q / rows_global
  return (q * rows_global).T


def swav(scores: jax.Array, *, num_crops: int,
         crops_for_assign: Sequence[int] = (0, 1), temperature: float = 0.1,
         epsilon: float = 0.05, num_iters: int = 3,
         queue_scores: Optional[Sequence[jax.Array]] = None,
         axis_name: Optional[str] = None) -> jax.Array:
  """SwAV's swapped prediction loss of the local batch.

  For each crop c of `crops_for_assign`, the codes of its n rows come from
  `sinkhorn` on its scores without gradient, with `queue_scores[i]` (the
  scores of the local queue for the i-th assigned crop, `[L, K]`)
  prepended and only the last n codes kept; every other crop v predicts
  them: `−mean_rows Σ_k q·log softmax(scores_v/τ)`, averaged over the
  `num_crops − 1` predicting crops, then over the assigned crops (the
  reference's averaging).

  Args:
    scores: `[num_crops·n, K]`, crop-major (crop 0's n rows first), the
      global crops first.
    num_crops: crops per image (2 + the local crops).
    crops_for_assign: the crops whose codes are predicted (0, 1).
    temperature: τ of the predictions (0.1).
    epsilon, num_iters: Sinkhorn's ε and iterations.
    queue_scores: per assigned crop, `[L, K]` scores of the queued
      embeddings (no gradient), or None (no queue).
    axis_name: mapped device axis holding the rest of the batch, or None.

  Returns:
    The scalar loss of this device's rows; its `lax.pmean` over
    `axis_name` is the loss of the global batch.
  """
  if scores.ndim != 2 or scores.shape[0] % num_crops:
    raise ValueError(f"swav: scores {scores.shape} are not [num_crops·n, K] "
                     f"with num_crops={num_crops}")
  if queue_scores is not None and len(queue_scores) != len(crops_for_assign):
    raise ValueError(f"swav: {len(queue_scores)} queue scores for "
                     f"{len(crops_for_assign)} assigned crops")
  scores = precision.to_full(scores)
  n = scores.shape[0] // num_crops
  crops = jnp.split(scores, num_crops)
  log_p = [jax.nn.log_softmax(x / temperature, axis=-1) for x in crops]
  loss = 0.0
  for i, c in enumerate(crops_for_assign):
    out = crops[c]
    if queue_scores is not None:
      out = jnp.concatenate([precision.to_full(queue_scores[i]), out])
    codes = sinkhorn(out, epsilon=epsilon, num_iters=num_iters,
                     axis_name=axis_name)[-n:]
    predicted = [-jnp.mean(jnp.sum(codes * log_p[v], axis=-1))
                 for v in range(num_crops) if v != c]
    loss = loss + sum(predicted) / (num_crops - 1)
  return loss / len(crops_for_assign)
