"""DINO: self-distillation with a centred, sharpened teacher.

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
