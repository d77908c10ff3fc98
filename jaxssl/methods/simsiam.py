"""SimSiam (Chen & He 2021, https://arxiv.org/abs/2011.10566).

One encoder and projector embed both views; a predictor bottleneck maps each
projection to a prediction of the other view's projection, whose gradient is
stopped (the stop-gradient is what prevents collapse, §4.1). No target
network, no negatives; trained with SGD. As in the reference, each view goes
through the network alone (`Forward(per_view=True)`).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Optional

import jax
import jax.numpy as jnp

from jaxssl import losses
from jaxssl.methods import base

if TYPE_CHECKING:  # configs are only read here: no runtime dependency
  import ml_collections


def loss(online: base.GroupOutputs, target: None, method_state: None,
         ctx: base.StepContext) -> tuple[jax.Array, dict]:
  """`mean_b [D(p1, sg z2)/2 + D(p2, sg z1)/2]`, D = negative cosine (eq. 2),
  of the local batch (`base.LossFn`)."""
  del target, method_state, ctx
  p1, p2 = base.split_views(online["global"]["p"], 2)
  z1, z2 = base.split_views(jax.lax.stop_gradient(online["global"]["z"]), 2)
  value = jnp.mean(0.5 * losses.negative_cosine(p1, z2)
                   + 0.5 * losses.negative_cosine(p2, z1))
  return value, {}


def create(config: ml_collections.ConfigDict, *, axis_name: Optional[str],
           total_steps: int, num_examples: int) -> base.Method:
  """SimSiam of config sections `model`, `head`, `predictor`."""
  del total_steps, num_examples
  return base.Method(
      name="simsiam", views={"global": 2},
      network=base.create_network(config, axis_name, predictor=True),
      forward=base.Forward(per_view=True), loss=loss)
