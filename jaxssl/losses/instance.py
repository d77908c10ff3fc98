"""Instance discrimination: InstDisc's NCE and InvaSpread's batch criterion.

`instance_nce` and `nce_normalizer` are the noise-contrastive estimation of
Wu, Xiong, Yu & Lin, "Unsupervised Feature Learning via Non-Parametric
Instance Discrimination", CVPR 2018 (https://arxiv.org/abs/1805.01978;
zhirongw/lemniscate.pytorch, `NCEAverage` and `NCECriterion`), also CMC's
(Tian, Krishnan & Isola, https://arxiv.org/abs/1906.05849).
`invariance_spreading` is the batch criterion of Ye, Zhang, Yuen & Chang,
"Unsupervised Embedding Learning via Invariant and Spreading Instance
Feature", CVPR 2019 (https://arxiv.org/abs/1904.03436;
mangye16/Unsupervised_Embedding_Learning, `BatchCriterion`).
"""

from typing import Optional

import jax
from jax import lax
import jax.numpy as jnp

from jaxssl import precision
from jaxssl.losses import core

# NCECriterion's eps, added to both denominators.
NCE_EPS = 1e-7


def nce_normalizer(similarities: jax.Array, *, temperature: float,
                   num_examples: int,
                   axis_name: Optional[str] = None) -> jax.Array:
  """The NCE normaliser Z of InstDisc, estimated from one batch.

  `Z = mean(exp(s / τ)) · N` over every entry (positives and noise) of the
  global batch's `similarities`, as lemniscate's `NCEFunction` sets it on
  its first call (`out.mean() * outputSize`). The reference estimates it
  once, on the first step, uses it for that step's loss already and keeps
  it (a buffer saved with the model); the caller does the same.

  Args:
    similarities: `[n, 1 + K]` this device's rows (see `instance_nce`).
    temperature: τ (0.07 in the reference).
    num_examples: N, the memory bank's rows: the global dataset size.
    axis_name: the mapped data axis holding the rest of the global batch, or
      None.

  Returns:
    The scalar Z, without gradient, the same on every device.
  """
  s = lax.stop_gradient(precision.to_full(similarities))
  total = core.global_sum(jnp.sum(jnp.exp(s / temperature)), axis_name)
  count = core.global_sum(jnp.asarray(s.size, s.dtype), axis_name)
  return total / count * num_examples


def instance_nce(similarities: jax.Array, *, temperature: float,
                 num_examples: int, normalizer: jax.Array) -> jax.Array:
  """InstDisc's NCE loss of each example against its memory row and noise.

  With `P(i|v) = exp(s / τ) / Z` (lemniscate's `NCEAverage` output; Z a
  constant: no gradient flows through `normalizer`), K noise rows drawn
  uniformly (`P_n = 1 / N`) and `NCECriterion`'s ε = 1e-7:

      loss = −mean_rows[ log(P_0 / (P_0 + K·P_n + ε))
                         + Σ_k log(K·P_n / (P_k + K·P_n + ε)) ].

  Args:
    similarities: `[n, 1 + K]`: column 0 the dot product of each example's
      feature with its own memory row, columns 1..K with its K noise rows
      (the memory rows already stop-gradient: the reference never
      differentiates the bank).
    temperature: τ.
    num_examples: N, the global dataset size (the bank's rows), never a
      shard's.
    normalizer: Z (`nce_normalizer`).

  Returns:
    The mean over this device's rows (the mean over devices is the
    reference's loss over the global batch).
  """
  if similarities.ndim != 2 or similarities.shape[1] < 2:
    raise ValueError("instance_nce expects [n, 1 + K] similarities with "
                     f"K >= 1; got {similarities.shape}")
  s = precision.to_full(similarities)
  z = lax.stop_gradient(jnp.asarray(normalizer, s.dtype))
  p = jnp.exp(s / temperature) / z
  k = s.shape[1] - 1
  noise = k / num_examples
  log_model = jnp.log(p[:, 0] / (p[:, 0] + noise + NCE_EPS))
  log_noise = jnp.log(noise / (p[:, 1:] + noise + NCE_EPS))
  return -jnp.mean(log_model + jnp.sum(log_noise, axis=1))


def invariance_spreading(z: jax.Array, temperature: float, *,
                         negative_weight: float = 1.0,
                         axis_name: Optional[str] = None,
                         normalize: bool = True) -> jax.Array:
  """InvaSpread's loss: invariance to the other view, spreading from the
  rest of the batch (`BatchCriterion(negM, T)`).

  Every one of the global batch's 2B rows is an anchor i with partner p
  (the same image's other view). With `e_ij = exp(z_i·z_j / τ)` and
  w = `negative_weight`:

      D_i = w·Σ_{j∉{i,p}} e_ij + e_ip,     P_ij = e_ij / D_i,
      loss = −mean_i[ log P_ip + w·Σ_{j∉{i,p}} log(1 − P_ij) ].

  Unlike NT-Xent, the negatives also enter through the spreading terms
  log(1 − P_ij) (the "binary" classification of every other instance as
  not-i), and only the anchor carries gradient (the reference multiplies
  by `.data` of the partner and of the batch). The reference adds the
  positive's log(1 − P_ip) to the row sum and subtracts it again; here it
  is never added (exact cancellation where the reference's float rounding
  leaves ~1e-16 relative).

  With w < 1 one negative can outweigh `D_i` (e_ij > D_i) and log(1 − P_ij)
  has a negative argument: the loss is then NaN, as the reference's (the
  step's non-finite-loss check stops training there); with w = 1 the
  arguments are always positive.

  Args:
    z: `[2n, d]` this device's rows, view-major: rows 0..n−1 view 1,
      n..2n−1 view 2 of the same n images. Over `axis_name` the global
      batch is all devices' view-1 rows, then all view-2 rows.
    temperature: τ (0.1 in the reference).
    negative_weight: the reference's `negM`.
    axis_name: the mapped data axis, or None.
    normalize: L2-normalise the rows first (the reference's network ends
      with a `Normalize` layer).

  Returns:
    The mean over this device's 2n anchors; the mean over devices is the
    reference's loss.
  """
  if z.ndim != 2 or z.shape[0] % 2:
    raise ValueError("invariance_spreading expects [2n, d] rows (view 1 "
                     f"then view 2); got {z.shape}")
  z = precision.to_full(z)
  if normalize:
    z = core.l2_normalize(z)
  n = z.shape[0] // 2
  z1, z2 = z[:n], z[n:]
  # The global batch, no gradient: the reference's `.data` side.
  all1 = lax.stop_gradient(core.gather(z1, axis_name))
  all2 = lax.stop_gradient(core.gather(z2, axis_name))
  batch = jnp.concatenate([all1, all2])  # [2B, d]: view 1, then view 2
  b = all1.shape[0]
  offset = 0 if axis_name is None else lax.axis_index(axis_name) * n
  local = offset + jnp.arange(n)
  rows = jnp.concatenate([local, b + local])  # each anchor's global row
  partners = jnp.concatenate([b + local, local])
  e = jnp.exp(z @ batch.T / temperature)  # [2n, 2B]
  columns = jnp.arange(2 * b)
  is_self = columns[None, :] == rows[:, None]
  is_partner = columns[None, :] == partners[:, None]
  negative = ~(is_self | is_partner)
  positive = jnp.sum(jnp.where(is_partner, e, 0.0), axis=1)
  denominator = (negative_weight *
                 jnp.sum(jnp.where(negative, e, 0.0), axis=1) + positive)
  p = e / denominator[:, None]
  spreading = jnp.sum(jnp.where(negative, jnp.log(1.0 - jnp.where(
      negative, p, 0.0)), 0.0), axis=1)
  return -jnp.mean(jnp.log(positive / denominator) +
                   negative_weight * spreading)
