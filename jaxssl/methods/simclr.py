"""SimCLR (Chen et al. 2020, https://arxiv.org/abs/2002.05709).

Two views of every image go through one encoder and a projection head; the
NT-Xent loss contrasts each view against all views of the global batch.
Both views are encoded in one batch, so BatchNorm statistics cover both (as in
the reference, which concatenates the views along the batch:
`Forward(per_view=False)`).
"""

from __future__ import annotations

import functools
from typing import TYPE_CHECKING, Optional


from jaxssl import losses
from jaxssl.methods import base

if TYPE_CHECKING:  # configs are only read here: no runtime dependency
  import ml_collections


def loss(online: base.Outputs, target: Optional[base.Outputs], method_state,
         *, temperature: float, axis_name: Optional[str]):
  """NT-Xent on `z = [z_view1; z_view2]` of the local batch."""
  del target
  z1, z2 = base.split_views(online["z"], 2)
  value, accuracy = losses.nt_xent_and_accuracy(
      z1, z2, temperature, axis_name=axis_name)
  return value, {"contrast_acc": accuracy}, method_state


def objective(online, target, method_state, ctx, *, temperature: float):
  value, metrics, _ = loss(online["global"], target, method_state,
                           temperature=temperature, axis_name=ctx.axis_name)
  return value, metrics


def create(config: ml_collections.ConfigDict, *, axis_name: Optional[str],
           total_steps: int) -> base.Method:
  """SimCLR of config sections `model`, `head`, `loss.temperature`."""
  del total_steps
  return base.Method(
      name="simclr", views={"global": 2},
      network=base.create_network(config, axis_name),
      forward=base.Forward(per_view=False),
      loss=functools.partial(objective,
                             temperature=config.loss.temperature))

