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
  z = np.asarray(z, np.float64)
  s = np.linalg.svd(z, compute_uv=False)
  p = s / max(np.sum(s), 1e-12) + eps
  return float(np.exp(-np.sum(p * np.log(p))))
