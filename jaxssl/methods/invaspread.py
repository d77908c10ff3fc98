"""InvaSpread: invariant and spreading instance features, in-batch only.

Ye, Zhang, Yuen & Chang, "Unsupervised Embedding Learning via Invariant
and Spreading Instance Feature", CVPR 2019
(https://arxiv.org/abs/1904.03436). As the reference
(mangye16/Unsupervised_Embedding_Learning, `demo_seen.py` and
`BatchAverage.BatchCriterion`):

* two augmented views of each image go through one encoder together (the
  reference's `model(torch.cat((inputs1, inputs2), 0))`: BatchNorm over
  both views, `Forward(per_view=False)`), then one linear layer to 128 and
  L2 normalisation;
* `losses.invariance_spreading` over the GLOBAL batch (gathered over the
  data axis): every one of the 2B features is an anchor; its positive is
  its image's other view, its denominator all 2B − 1 other features, and
  each other feature but the positive adds a spreading term
  log(1 − P_ij); only the anchor carries gradient (the reference's
  `.data` on the partner and on the batch); τ 0.1, `negM` = 1.

How it differs from SimCLR's NT-Xent (`losses.nt_xent`), which has the
same in-batch softmax: NT-Xent's loss is the softmax cross-entropy of the
positive alone, and its gradient flows into the negatives and the
positive as well as the anchor (SimCLR's gathered batch is
differentiable); InvaSpread adds the "spreading" terms −Σ_j log(1 − P_ij)
(each other instance classified as not-i, the NCE-style binary term of
InstDisc's criterion) and stops the gradient of everything but the anchor.
No memory bank, no momentum encoder: the negatives are the batch's.

Monitored: `positive_sim`, the mean cosine similarity of the two views.
"""

from __future__ import annotations

import functools
from typing import TYPE_CHECKING, Optional

from jax import lax
import jax.numpy as jnp

from jaxssl import losses
from jaxssl.methods import base

if TYPE_CHECKING:  # configs are only read here: no runtime dependency
  import ml_collections


def loss(online, target, method_state, ctx, *, temperature: float,
         negative_weight: float):
  """`invariance_spreading` of the local `[view 1; view 2]` features."""
  del target, method_state
  z = online["global"]["z"]
  value = losses.invariance_spreading(z, temperature,
                                      negative_weight=negative_weight,
                                      axis_name=ctx.axis_name)
  z1, z2 = base.split_views(losses.l2_normalize(z), 2)
  return value, {"positive_sim": lax.stop_gradient(
      jnp.mean(jnp.sum(z1 * z2, axis=1)))}


def create(config: ml_collections.ConfigDict, *, axis_name: Optional[str],
           total_steps: int, num_examples: int) -> base.Method:
  """InvaSpread of config sections `model`, `head` (one linear layer to
  128), `loss` (`temperature`, `negative_weight`)."""
  del total_steps, num_examples
  return base.Method(
      name="invaspread", views={"global": 2},
      network=base.create_network(config, axis_name),
      forward=base.Forward(per_view=False),
      loss=functools.partial(loss, temperature=config.loss.temperature,
                             negative_weight=config.loss.negative_weight))
