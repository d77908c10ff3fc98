"""DINO: self-distillation with no labels.

Caron, Touvron, Misra, Jégou, Mairal, Bojanowski & Joulin, "Emerging
Properties in Self-Supervised Vision Transformers", ICCV 2021
(https://arxiv.org/abs/2104.14294). As the reference
(facebookresearch/dino, `main_dino.py`):

* student = backbone + DINO head (`head.kind='dino'`: MLP 2048 → 256,
  L2-normalise, weight-normalised linear to K = 65,536); teacher = the
  same, starting as a copy of the student and moving as an EMA of it
  after each step (τ 0.996 → 1 on a cosine, `target.base_momentum`), built
  without drop-path (the reference's teacher has none);
* multi-crop: 2 global crops + `augment.local_crops` local ones; the
  student sees every crop (each resolution group encoded together, the
  heads once over all: `MultiCropWrapper`), the teacher the global crops
  only; both in training mode (the reference never puts the teacher in
  eval mode; BatchNorm, in a ResNet, synchronised over all devices);
* loss `losses.dino` with the teacher temperature of the step's epoch
  (`schedules.dino_teacher_temperature`: `loss.warmup_teacher_temperature`
  → `loss.teacher_temperature` over `loss.warmup_teacher_epochs`), the
  student temperature `loss.temperature` (0.1);
* the centre (`[1, K]`, method state, replicated) moves after the step
  with momentum `loss.center_momentum` towards the teacher outputs' mean
  over the global batch.

The optimizer side is config: the last layer frozen for the first epoch
(`optimizer.freeze_pattern='^projector/last_layer/'`, `freeze_epochs=1`,
the reference's `cancel_gradients_last_layer`), per-parameter gradient
clipping at 3.0 (`clip_per_parameter`), AdamW with a cosine weight decay
0.04 → 0.4 and a learning rate ending at `final_lr`.

Monitored: `teacher_temp`, `tau`, `teacher_entropy` (mean entropy of the
teacher's distributions, → 0 on collapse to one prototype, → ln K on
uniform collapse) and `kl` = loss − teacher entropy, the mean KL divergence
from teacher to student: what the student minimises (the loss itself also
moves with the teacher's entropy, which the temperature schedule and the
centring change).
"""

from __future__ import annotations

import functools
from typing import TYPE_CHECKING, Dict, Optional

import jax
import jax.numpy as jnp
from jax.sharding import PartitionSpec

from jaxssl import losses
from jaxssl import schedules
from jaxssl import views as views_lib
from jaxssl.methods import base

if TYPE_CHECKING:  # configs are only read here: no runtime dependency
  import ml_collections

GROUPS = ("global", "local")


def _student_teacher(online: base.GroupOutputs, target: base.GroupOutputs):
  """Student outputs of every crop, crop-major (global crops first), and
  the teacher's of the global crops."""
  student = jnp.concatenate([online[g]["z"] for g in GROUPS if g in online])
  return student, target["global"]["z"]


def loss(online, target, method_state, ctx, *, temperature: float,
         teacher_temperature, center_momentum: float):
  student, teacher = _student_teacher(online, target)
  tau_t = teacher_temperature(ctx.step)
  value, _ = losses.dino(student, teacher, method_state["center"],
                         teacher_temperature=tau_t,
                         student_temperature=temperature,
                         center_momentum=center_momentum,
                         axis_name=ctx.axis_name)
  probs = jax.nn.softmax((teacher - method_state["center"]) / tau_t)
  entropy = -jnp.mean(jnp.sum(probs * jnp.log(probs + 1e-30), axis=-1))
  # Every teacher crop is in as many pairs: loss = H(teacher) + mean KL.
  return value, {"teacher_temp": tau_t, "teacher_entropy": entropy,
                 "kl": jax.lax.stop_gradient(value) - entropy}


def update_center(method_state, online, target, ctx, *,
                  center_momentum: float):
  """The centre after the step (`losses.dino`'s; its loss is unused)."""
  student, teacher = _student_teacher(online, target)
  _, center = losses.dino(student, teacher, method_state["center"],
                          teacher_temperature=1.0,
                          center_momentum=center_momentum,
                          axis_name=ctx.axis_name)
  return {"center": center}


def _without_drop_path(config: ml_collections.ConfigDict):
  teacher = config.copy_and_resolve_references()
  with teacher.unlocked():
    teacher.model.drop_path = 0.0
  return teacher


def create(config: ml_collections.ConfigDict, *, axis_name: Optional[str],
           total_steps: int, num_examples: int) -> base.Method:
  """DINO of config sections `model`, `head` (kind 'dino'), `target`,
  `loss` (temperatures, `center_momentum`) and `augment` (local crops)."""
  del num_examples  # no per-example state
  if config.head.get("kind", "mlp") != "dino":
    raise ValueError("config.method='dino' needs config.head.kind='dino' "
                     f"(got {config.head.get('kind', 'mlp')!r})")
  counts = views_lib.group_counts(config)
  if counts.get("global") != 2:
    raise ValueError(f"DINO's teacher takes 2 global crops; "
                     f"config.augment.preset={config.augment.preset!r} makes "
                     f"{counts}")
  steps_per_epoch = max(total_steps // config.epochs, 1)
  loss_cfg = config.loss
  teacher_temperature = schedules.dino_teacher_temperature(
      loss_cfg.warmup_teacher_temperature, loss_cfg.teacher_temperature,
      min(loss_cfg.warmup_teacher_epochs, config.epochs), config.epochs,
      steps_per_epoch)
  return build(
      base.create_network(config, axis_name),
      base.create_network(_without_drop_path(config), axis_name),
      views=counts, out_dim=config.head.out_dim,
      momentum=schedules.target_momentum(config.target, total_steps),
      teacher_temperature=teacher_temperature,
      temperature=loss_cfg.temperature,
      center_momentum=loss_cfg.center_momentum,
      target_init=config.target.get("init") or "copy")


def build(student: base.Network, teacher: base.Network, *,
          views: Dict[str, int], out_dim: int,
          momentum: schedules.Schedule,
          teacher_temperature: schedules.Schedule, temperature: float = 0.1,
          center_momentum: float = 0.9,
          target_init: str = "copy") -> base.Method:
  """DINO of its parts (no config): student and teacher networks (the
  teacher's without drop-path), `views` `{'global': 2[, 'local': L]}`,
  the teacher's EMA `momentum(step)` and temperature(step)."""
  return base.Method(
      name="dino", views=views, network=student,
      forward=base.Forward(per_view=False),
      loss=functools.partial(
          loss, temperature=temperature,
          teacher_temperature=teacher_temperature,
          center_momentum=center_momentum),
      target=base.Target(
          network=teacher, momentum=momentum,
          tracks=base.subtrees("encoder", "projector"), init=target_init,
          forward=base.Forward(per_view=False, groups=("global",))),
      state=base.State(
          init=lambda num_shards: {"center": jnp.zeros((1, out_dim))},
          update=functools.partial(update_center,
                                   center_momentum=center_momentum),
          specs=PartitionSpec()),
      # The reference evaluates and releases the teacher (`eval_knn.py`,
      # `eval_linear.py`: --checkpoint_key teacher).
      evaluated="target")
