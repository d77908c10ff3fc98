"""SupCon: supervised contrastive learning.

Khosla, Teterwak, Wang, Sarna, Tian, Isola, Maschinot, Liu & Krishnan,
"Supervised Contrastive Learning", NeurIPS 2020
(https://arxiv.org/abs/2004.11362). As the reference
(HobbitLong/SupContrast, `main_supcon.py`, `networks/resnet_big.py`,
`losses.py`):

* two views of every image, concatenated along the batch and encoded
  together (`Forward(per_view=False)`; BatchNorm over both views, global
  over the devices here where the reference's `DataParallel` splits it per
  GPU);
* `SupConResNet(head='mlp')`: encoder → Linear(d, d) → ReLU → Linear(d, 128)
  with biases and no BatchNorm (`config.head`: 2 layers, `use_bn=False`,
  hidden width 0 = the encoder's), L2-normalised in the loss;
* loss `losses.supcon` (`contrast_mode='all'`): every view of every image is
  an anchor against every other row of the global batch, its positives all
  rows with its class label (`ctx.label`), scaled by τ/τ_base. The
  reference's commands set τ (`--temp 0.1`) but leave `base_temperature`
  at its default 0.07, so their loss is 0.1/0.07 times the unscaled one:
  `loss.base_temperature=0.07` in the configs (0 = no factor). With SGD
  the factor is a 1.43× larger learning rate; the gradient's direction is
  the same.

The method trains on labels (`Method.needs_labels`): `train.create_learner`
refuses data without them. Logged: `label_acc`, the fraction of anchors
whose most similar other row has their label (no gradient).
"""

from __future__ import annotations

import functools
from typing import TYPE_CHECKING, Optional

import jax
from jax import lax
import jax.numpy as jnp

from jaxssl import losses
from jaxssl import precision
from jaxssl.methods import base

if TYPE_CHECKING:  # configs are only read here: no runtime dependency
  import ml_collections


def label_accuracy(z: jax.Array, labels: jax.Array, *, num_views: int,
                   axis_name: Optional[str]) -> jax.Array:
  """Fraction of the local rows whose most cosine-similar other row of the
  global batch (all views) has the same label; a stop-gradient scalar."""
  z = losses.l2_normalize(lax.stop_gradient(precision.to_full(z)))
  n, d = labels.shape[0], z.shape[1]
  contrast = z
  if axis_name is not None:  # view-major over the global batch
    contrast = lax.all_gather(z.reshape(num_views, n, d), axis_name, axis=1,
                              tiled=True).reshape(-1, d)
  all_labels = jnp.tile(
      labels if axis_name is None
      else lax.all_gather(labels, axis_name, axis=0, tiled=True), num_views)
  global_n = contrast.shape[0] // num_views
  offset = 0 if axis_name is None else lax.axis_index(axis_name) * n
  own = (jnp.arange(num_views)[:, None] * global_n
         + offset + jnp.arange(n)[None, :]).reshape(-1)
  sims = jnp.where(jnp.arange(contrast.shape[0])[None, :] == own[:, None],
                   -jnp.inf, z @ contrast.T)
  hits = all_labels[jnp.argmax(sims, axis=1)] == jnp.tile(labels, num_views)
  return jnp.mean(precision.to_full(hits))


def loss(online: base.GroupOutputs, target, method_state,
         ctx: base.StepContext, *, temperature: float,
         base_temperature: Optional[float]) -> tuple[jax.Array, dict]:
  """`losses.supcon` of the two views' projections with the class labels."""
  del target, method_state
  if ctx.label is None:
    raise ValueError("SupCon needs the batch's class labels ('label'); this "
                     "input has none")
  z = online["global"]["z"]
  value = losses.supcon(z, ctx.label, temperature,
                        base_temperature=base_temperature, num_views=2,
                        axis_name=ctx.axis_name)
  accuracy = label_accuracy(z, ctx.label, num_views=2,
                            axis_name=ctx.axis_name)
  return value, {"label_acc": accuracy}


def create(config: ml_collections.ConfigDict, *, axis_name: Optional[str],
           total_steps: int, num_examples: int) -> base.Method:
  """SupCon of config sections `model`, `head`, `loss.temperature` and
  `loss.base_temperature` (0: no τ/τ_base factor)."""
  del total_steps, num_examples
  return base.Method(
      name="supcon", views={"global": 2},
      network=base.create_network(config, axis_name),
      forward=base.Forward(per_view=False),
      loss=functools.partial(
          loss, temperature=config.loss.temperature,
          base_temperature=config.loss.base_temperature or None),
      needs_labels=True)
