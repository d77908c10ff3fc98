"""Collapse monitors: how spread out a set of embeddings is.

Complete collapse (every input mapped to one point) and dimensional collapse
(embeddings confined to a low-dimensional subspace) are the failure modes of
non-contrastive methods. Two cheap numbers catch both:

* `embedding_std`: mean per-dimension std of the L2-normalised embeddings,
  ≈ 1/√d when they are spread over the sphere, → 0 on collapse (Chen & He
  2021, https://arxiv.org/abs/2011.10566, §4.1).
* `effective_rank`: exp of the entropy of the normalised singular values
  (Roy & Vetterli 2007; RankMe, Garrido et al. 2023,
  https://arxiv.org/abs/2210.02885), between 1 and min(n, d).
"""

import numpy as np


def embedding_std(z: np.ndarray) -> float:
  """Mean over dimensions of the std over examples of `z / ‖z‖`."""
  z = np.asarray(z, np.float64)
  z = z / np.maximum(np.linalg.norm(z, axis=1, keepdims=True), 1e-12)
  return float(np.mean(np.std(z, axis=0)))


def effective_rank(z: np.ndarray, eps: float = 1e-7) -> float:
  """RankMe: `exp(−Σ p_i log p_i)`, `p = σ / ‖σ‖₁ + eps`, σ of `z` `[n, d]`."""
  return _entropy_rank(np.linalg.svd(np.asarray(z, np.float64),
                                     compute_uv=False), eps)


def _entropy_rank(s: np.ndarray, eps: float) -> float:
  p = s / max(np.sum(s), 1e-12) + eps
  return float(np.exp(-np.sum(p * np.log(p))))


def embedding_std_from_sums(count: float, total: np.ndarray,
                            squares: np.ndarray) -> float:
  """`embedding_std` of a set given by its sums over examples: `count`,
  `total = Σ z/‖z‖` and `squares = Σ (z/‖z‖)²` (streamed evaluation)."""
  count = max(float(count), 1.0)
  mean = np.asarray(total, np.float64) / count
  var = np.asarray(squares, np.float64) / count - mean**2
  return float(np.mean(np.sqrt(np.maximum(var, 0.0))))


def effective_rank_from_gram(gram: np.ndarray, count: int,
                             eps: float = 1e-7) -> float:
  """`effective_rank` of the `count` rows of `z` given `zᵀz` `[d, d]`
  (streamed evaluation).

  The singular values of `z` are the square roots of the largest
  `min(count, d)` eigenvalues of the Gram matrix. Rounding in the Gram
  matrix (at its dtype's precision) moves every eigenvalue by about
  `d·ε·λ_max`, and the square root would turn that noise into singular
  values of `√(d·ε)·σ_max` in every direction — a collapsed representation
  would look full-rank. Eigenvalues below that level are taken as zero.
  """
  gram = np.asarray(gram)
  rounding = np.finfo(gram.dtype).eps if gram.dtype.kind == "f" else 0.0
  eigenvalues = np.linalg.eigvalsh(gram.astype(np.float64))
  eigenvalues = eigenvalues[::-1][:max(min(int(count), len(gram)), 1)]
  floor = eigenvalues[0] * len(gram) * rounding
  eigenvalues = np.where(eigenvalues > floor, eigenvalues, 0.0)
  return _entropy_rank(np.sqrt(eigenvalues), eps)
