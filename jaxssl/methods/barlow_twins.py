"""Barlow Twins (Zbontar et al. 2021, https://arxiv.org/abs/2103.03230).

The cross-correlation matrix of the two views' embeddings, each standardised
over the GLOBAL batch, is pushed towards the identity: invariance on the
diagonal, redundancy reduction (weight λ) off it. The statistics and the
matrix are sums over the device axis, so the loss on N devices is the loss
of the concatenated batch. As in the reference, each view goes through the
network alone (`Forward(per_view=True)`: its own BatchNorm statistics).
"""

from __future__ import annotations

import functools
from typing import TYPE_CHECKING, Optional

import jax.numpy as jnp

from jaxssl import losses
from jaxssl.methods import base

if TYPE_CHECKING:  # configs are only read here: no runtime dependency
  import ml_collections


def loss(online: base.GroupOutputs, target: None, method_state: None,
         ctx: base.StepContext, *, lambd: float) -> tuple[jax.Array, dict]:
  """`Σ_i (1 − C_ii)² + λ Σ_{i≠j} C_ij²` of the global batch (eq. 1;
  `base.LossFn`: C is reduced over `ctx.axis_name`)."""
  del target, method_state
  z1, z2 = base.split_views(online["global"]["z"], 2)
  value, c = losses.barlow_twins(z1, z2, lambd=lambd,
                                 axis_name=ctx.axis_name)
  return value, {"bt_diag": jnp.mean(jnp.diagonal(c))}


def create(config: ml_collections.ConfigDict, *, axis_name: Optional[str],
           total_steps: int, num_examples: int) -> base.Method:
  """Barlow Twins of config sections `model`, `head`, `loss.barlow_lambda`."""
  del total_steps, num_examples
  return base.Method(
      name="barlow_twins", views={"global": 2},
      network=base.create_network(config, axis_name),
      forward=base.Forward(per_view=True),
      loss=functools.partial(loss, lambd=config.loss.barlow_lambda))
