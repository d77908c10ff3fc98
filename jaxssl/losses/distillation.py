"""Distillation losses: DINO's centred, sharpened teacher; SimCLR v2's soft
labels of a fine-tuned teacher (`soft_label_cross_entropy`).

Caron, Touvron, Misra, Jégou, Mairal, Bojanowski & Joulin, "Emerging
Properties in Self-Supervised Vision Transformers", ICCV 2021
(https://arxiv.org/abs/2104.14294), with the semantics of the reference
(facebookresearch/dino, `main_dino.py`, `DINOLoss`).
"""

from typing import Optional

import jax
from jax import lax
import jax.numpy as jnp

from jaxssl import precision
from jaxssl.losses import core


def dino(student: jax.Array, teacher: jax.Array, center: jax.Array, *,
         teacher_temperature: float, student_temperature: float = 0.1,
         num_teacher_crops: int = 2, center_momentum: float = 0.9,
         axis_name: Optional[str] = None) -> tuple[jax.Array, jax.Array]:
  """DINO's cross-entropy between teacher and student crops, and the centre.

  Teacher probabilities `softmax((t − c)/τ_t)` (no gradient), student
  log-probabilities `log softmax(s/τ_s)`; the loss is the cross-entropy
  `−Σ_k p_t·log p_s`, averaged over the local rows, for every pair of a
  teacher crop and a student crop except a crop with itself, averaged
  over the pairs. The new centre is `m·c + (1 − m)·mean(t)` with the mean
  of the teacher outputs over the GLOBAL batch (summed over `axis_name`:
  the reference's `all_reduce`).

  Args:
    student: `[S·n, K]` student outputs, crop-major; its first
      `num_teacher_crops` crops are the global crops the teacher saw.
    teacher: `[num_teacher_crops·n, K]` teacher outputs, crop-major.
    center: `[K]` or `[1, K]` centre (returned in the same shape).
    teacher_temperature: τ_t (0.04 → 0.07 over the first 30 epochs:
      `jaxssl.schedules.dino_teacher_temperature`).
    student_temperature: τ_s (0.1).
    num_teacher_crops: crops the teacher saw (2).
    center_momentum: m (0.9).
    axis_name: mapped device axis holding the rest of the batch, or None.

  Returns:
    `(loss, new_center)`: this device's loss (its `lax.pmean` over
    `axis_name` is the global batch's) and the centre after the update
    (no gradient; the same on every device).
  """
  student = precision.to_full(student)
  teacher = lax.stop_gradient(precision.to_full(teacher))
  center = precision.to_full(center)
  if teacher.shape[0] % num_teacher_crops:
    raise ValueError(f"dino: teacher rows {teacher.shape[0]} are not "
                     f"num_teacher_crops={num_teacher_crops} crops")
  n = teacher.shape[0] // num_teacher_crops
  if student.shape[0] % n or student.shape[1:] != teacher.shape[1:]:
    raise ValueError(f"dino: student {student.shape} is not crops of the "
                     f"teacher's {n} rows × {teacher.shape[1]}")
  num_student = student.shape[0] // n
  flat_center = center.reshape(-1)
  probs = jax.nn.softmax((teacher - flat_center) / teacher_temperature, axis=-1)
  log_p = jax.nn.log_softmax(student / student_temperature, axis=-1)
  t_crops = jnp.split(probs, num_teacher_crops)
  s_crops = jnp.split(log_p, num_student)
  terms = [jnp.mean(jnp.sum(-t * s_crops[v], axis=-1))
           for i, t in enumerate(t_crops) for v in range(num_student)
           if v != i]
  loss = sum(terms) / len(terms)
  rows = core.global_sum(precision.to_full(teacher.shape[0]), axis_name)
  batch_center = core.global_sum(jnp.sum(teacher, axis=0), axis_name) / rows
  new_center = (flat_center * center_momentum
                + batch_center * (1.0 - center_momentum))
  return loss, lax.stop_gradient(new_center.reshape(center.shape))


def soft_label_cross_entropy(student_logits: jax.Array,
                             teacher_logits: jax.Array, *,
                             temperature: float = 1.0,
                             weights: Optional[jax.Array] = None,
                             axis_name: Optional[str] = None) -> jax.Array:
  """SimCLR v2's distillation loss on the GLOBAL batch.

  Chen, Kornblith, Swersky, Norouzi & Hinton, "Big Self-Supervised Models
  are Strong Semi-Supervised Learners", NeurIPS 2020
  (https://arxiv.org/abs/2006.10029), eq. 2 (after Hinton et al. 2015,
  https://arxiv.org/abs/1503.02531):

      L = −(1/n) Σ_x Σ_y P_T(y|x; τ) log P_S(y|x; τ),
      P(y|x; τ) = softmax(logits/τ)_y,

  the teacher's side without gradient. No τ² factor (the paper's form; the
  reference's distillation colab multiplies by τ², the same at its default
  τ = 1). Its gradient w.r.t. the student logits is
  `(P_S − P_T)/(τ·n)`: zero where the student equals the teacher.

  Args:
    student_logits: `[n, C]` this device's student logits.
    teacher_logits: `[n, C]` the teacher's logits of the same views.
    temperature: τ (1: the paper's best for big-to-small distillation).
    weights: `[n]` optional per-row weights (0 leaves a row out); the mean
      is over their global sum.
    axis_name: mapped device axis holding the rest of the batch, or None.

  Returns:
    The mean over the global batch (the same on every device).
  """
  if student_logits.shape != teacher_logits.shape:
    raise ValueError(f"student logits {student_logits.shape} and teacher "
                     f"logits {teacher_logits.shape} differ in shape")
  student = precision.to_full(student_logits) / temperature
  teacher = lax.stop_gradient(precision.to_full(teacher_logits)) / temperature
  per_row = -jnp.sum(jax.nn.softmax(teacher, axis=-1)
                     * jax.nn.log_softmax(student, axis=-1), axis=-1)
  if weights is None:
    weights = jnp.ones_like(per_row)
  weights = precision.to_full(weights)
  sums = jnp.stack([jnp.sum(per_row * weights), jnp.sum(weights)])
  if axis_name is not None:
    sums = lax.psum(sums, axis_name)
  return sums[0] / jnp.maximum(sums[1], 1e-12)
