"""BYOL (Grill et al. 2020, https://arxiv.org/abs/2006.07733).

The online network (encoder → projector → predictor) predicts the target
network's projection of the other view. The target (encoder → projector) is
an exponential moving average of the online weights, updated after each
optimizer step towards the UPDATED online weights with τ rising from
`base_momentum` to 1 on a cosine (`jaxssl.schedules.ema_momentum`). It runs
in training mode (batch statistics) and keeps its own BatchNorm statistics.
As in the DeepMind JAX reference (`byol_experiment.py`): each view goes
through each network alone (own batch statistics, two running-statistics
updates per step); the target is initialised from its own key
(`config.target.init='independent'`; 'copy' starts it as the online
encoder and projector); the loss is the SUM of the two directions of
`regression_loss` (averaging halves the gradient), averaged over the batch.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Optional

import jax
import jax.numpy as jnp

from jaxssl import losses
from jaxssl import schedules
from jaxssl.methods import base

if TYPE_CHECKING:  # configs are only read here: no runtime dependency
  import ml_collections


def loss(online: base.GroupOutputs, target: base.GroupOutputs,
         method_state: None, ctx: base.StepContext) -> tuple[jax.Array, dict]:
  """`mean_b [ℓ(p1, sg z2') + ℓ(p2, sg z1')]` over the local batch
  (`base.LossFn`)."""
  del method_state, ctx
  p1, p2 = base.split_views(online["global"]["p"], 2)
  z1, z2 = base.split_views(jax.lax.stop_gradient(target["global"]["z"]), 2)
  value = jnp.mean(losses.regression_loss(p1, z2)
                   + losses.regression_loss(p2, z1))
  return value, {}


def create(config: ml_collections.ConfigDict, *, axis_name: Optional[str],
           total_steps: int, num_examples: int) -> base.Method:
  """BYOL of config sections `model`, `head`, `predictor`, `target`."""
  del num_examples  # no per-example state
  per_view = base.Forward(per_view=True)
  return base.Method(
      name="byol", views={"global": 2},
      network=base.create_network(config, axis_name, predictor=True),
      forward=per_view, loss=loss,
      target=base.Target(
          network=base.create_network(config, axis_name),
          momentum=schedules.target_momentum(config.target, total_steps),
          tracks=base.subtrees("encoder", "projector"),
          init=config.target.get("init") or "independent", forward=per_view))
