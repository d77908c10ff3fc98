"""MoCo v3: symmetric in-batch InfoNCE between a base and a momentum encoder.

Chen, Xie & He, "An Empirical Study of Training Self-Supervised Vision
Transformers", ICCV 2021 (https://arxiv.org/abs/2104.02057). As the
reference (facebookresearch/moco-v3, `moco/builder.py`, `main_moco.py`):

* base network = encoder → projector → predictor; momentum network =
  encoder → projector, starting as a copy of the base's and moving as
  `m·momentum + (1 − m)·base` after each step, m from `target.
  base_momentum` (0.99) to 1 on a cosine over the run (`--moco-m-cos`).
  The reference sets m of iteration t + 1 before it updates the momentum
  encoder towards the weights after step t; the train step updates at the
  end of step t, so τ(t) = m(t + 1) here (`schedules.target_momentum`,
  `shift=1`): the same sequence of momentum encoders.
* heads (the reference's `_build_mlp`: no biases; BatchNorm and ReLU after
  the hidden layers): ResNet projector 2 layers, ViT projector 3 layers,
  4096 hidden, 256 out, last BatchNorm without affine; predictor 2 layers
  4096 → 256, last BatchNorm without affine for ViT, none for ResNet. Set
  from the config (`head`, `predictor`; `bias=False`).
* each view goes through each network alone (own batch statistics, the
  reference's two calls per encoder); with BatchNorm synchronised over all
  devices (the reference's SyncBatchNorm, `model.bn_group_size=0`);
* the loss is `2τ·[info_nce(q1, k2) + info_nce(q2, k1)]`, the keys of the
  whole global batch gathered in device order, no gradient through them.

ViT training uses MoCo v3's frozen random patch projection
(`model.frozen_patch_embed`, `optimizer.freeze_pattern`), fixed 2-D sin-cos
position embeddings and AdamW with weight decay on every parameter
(`optimizer.decay_mask='all'`, `torch.optim.AdamW(model.parameters())`).

Monitored: `contrast_acc` (top-1 of the positive over the global batch,
view-1 queries) and `tau`.
"""

from __future__ import annotations

import functools
from typing import TYPE_CHECKING, Optional

import jax
from jax import lax

from jaxssl import losses
from jaxssl import schedules
from jaxssl.methods import base

if TYPE_CHECKING:  # configs are only read here: no runtime dependency
  import ml_collections


def loss(online: base.GroupOutputs, target: base.GroupOutputs,
         method_state: None, ctx: base.StepContext, *,
         temperature: float) -> tuple[jax.Array, dict]:
  """`2τ·[ctr(q1, k2) + ctr(q2, k1)]` of the local queries, keys gathered
  over `ctx.axis_name` (`base.LossFn`)."""
  del method_state
  q1, q2 = base.split_views(online["global"]["p"], 2)
  k1, k2 = base.split_views(lax.stop_gradient(target["global"]["z"]), 2)
  ctr = functools.partial(losses.info_nce_and_accuracy,
                          temperature=temperature, axis_name=ctx.axis_name)
  loss_12, accuracy = ctr(q1, k2)
  loss_21, _ = ctr(q2, k1)
  return 2.0 * temperature * (loss_12 + loss_21), {"contrast_acc": accuracy}


def create(config: ml_collections.ConfigDict, *, axis_name: Optional[str],
           total_steps: int, num_examples: int) -> base.Method:
  """MoCo v3 of config sections `model`, `head`, `predictor`, `target`,
  `loss.temperature`."""
  del num_examples  # no per-example state
  per_view = base.Forward(per_view=True)
  return base.Method(
      name="mocov3", views={"global": 2},
      network=base.create_network(config, axis_name, predictor=True),
      forward=per_view,
      loss=functools.partial(loss, temperature=config.loss.temperature),
      target=base.Target(
          network=base.create_network(config, axis_name),
          momentum=schedules.target_momentum(config.target, total_steps,
                                             shift=1),
          tracks=base.subtrees("encoder", "projector"),
          init=config.target.get("init") or "copy", forward=per_view))
