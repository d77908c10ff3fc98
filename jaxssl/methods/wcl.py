"""WCL: weakly supervised contrastive learning.

Zheng, Wang, You, Qian, Zhang, Wang & Xu, "Weakly Supervised Contrastive
Learning", ICCV 2021 (https://arxiv.org/abs/2110.04770). As the reference
(mingkai-zheng/WCL, `network/wcl.py`, `network/head.py`, `wcl.py`):

* one encoder, two heads, each Linear → BN → ReLU → Linear → BN → ReLU →
  Linear with bias (no output BN), 2048 → 4096 → 4096 → 256 (the reference;
  the paper's 2048/128 through `config.head`). Head 1 is the network's
  projector (`z`), head 2 its `predictor` slot reading the representation
  (`base.Network(predictor_input='h')`, output `p`). Both outputs are
  L2-normalised in the losses. The reference's biases before BatchNorm are
  left out: the mean subtraction removes them and they never train;
* each view through encoder and heads alone (`Forward(per_view=True)`: the
  reference calls `self.net(x1)`, `self.net(x2)`), BatchNorm synchronised
  over all devices (its `SyncBatchNorm`);
* head 1, instance discrimination: `0.5·nt_xent(z1, z2, τ)`. The reference's
  cross-entropy over its 2b local anchors, each scored against the 2B − 1
  other rows of both views of the global batch, is (loss_a + loss_b)/2 of
  NT-Xent. Its gradient differs: the reference gathers the OTHER devices'
  rows without gradient (`concat_other_gather` under `no_grad`) and DDP
  averages, so a row receives the gradient of being a negative only from
  the anchors on its own device; `nt_xent` carries it back through the
  all-gather from every anchor. Ours is the gradient of the global-batch
  loss, the same for any number of devices, and equals the reference's on
  one GPU; on the reference's 32 GPUs the gradient a row gets as a
  negative is about 1/32 of ours (its positive is on its own device, so
  that part is the same);
* weak labels: for each view, the connected components of the 1-nearest-
  neighbour graph of head 2's normalised outputs over the global batch
  (`losses.nearest_neighbours`, `losses.neighbour_components`; the
  reference builds them on rank 0 with scipy and scatters the masks), no
  gradient;
* head 2, the graph loss: `(supcon(g1, labels2) + supcon(g2, labels1)) / 2`
  with one view per call, τ and no τ/τ_base factor, each local anchor scored
  against the whole global batch of its view without gradient
  (`contrast_gradient=False`: the reference's `concat_all_gather` runs
  under `no_grad`, its own rows included), itself excluded, its positives
  the other members of its component in the OTHER view's graph;
* total `instance + graph`.

The recipe (configs): batch 4096, LARS with rate 0.075·√B outside the
momentum (`lr_in_momentum=False`), trust 0.001 on ‖g + wd·p‖ without ε,
weight decay 1e-6, biases and BatchNorm parameters excluded from both
(the reference excludes names containing 'bn' or 'bias', which misses the
downsampling BatchNorm's scale, `downsample.1.weight`; here every
BatchNorm parameter is excluded), 10 warm-up epochs from 0 then cosine to
0, MoCo v2's augmentation for the first 10 epochs and SimCLR's after.

Monitored, for each view v (from the weak labels; labels never enter the
loss): `components_v` (components of the global batch: rows whose label is
their own index), `component_size_v` (B / components), and with class
labels in the input `purity_v`, the fraction of graph edges (row → its
nearest neighbour) joining two images of one class. Also `instance_loss`,
`graph_loss` and `contrast_acc` (NT-Xent's positive top-1).

kNN multi-crop (`loss.knn_multicrop`, off by default) has NO reference
implementation: the reference trains two 224 px views only. The paper adds
low-resolution crops and lets k-nearest-neighbour similarity choose their
positives ("to expand the number of positive samples"); this is our
reading of it, not a reproduction. With `augment.preset='multicrop'` each
local crop's head-1 embedding is an extra anchor, scored against the
head-1 embeddings of both global views of the global batch (2B rows,
gradient through the gather as in `nt_xent`); its positives are the
`loss.knn_positives` rows most similar to it (no gradient through the
choice), its term the mean log-probability of those positives, averaged
over anchors and added to the loss (`multicrop_loss`; `knn_own_rate` logs
how often a crop's own image is among its positives). Local crops do not
enter the graph.
"""

from __future__ import annotations

import functools
from typing import TYPE_CHECKING, Optional

import jax
from jax import lax
import jax.numpy as jnp

from jaxssl import losses
from jaxssl import models
from jaxssl import precision
from jaxssl import views as views_lib
from jaxssl.methods import base

if TYPE_CHECKING:  # configs are only read here: no runtime dependency
  import ml_collections


def graph_monitors(neighbour: jax.Array, components: jax.Array,
                   labels: Optional[jax.Array] = None) -> dict:
  """Statistics of a weak-label graph of M rows (stop-gradient scalars).

  Args:
    neighbour: `[M]` each row's nearest neighbour (`losses.nearest_neighbours`).
    components: `[M]` each row's component, labelled by its smallest row
      (`losses.neighbour_components`).
    labels: `[M]` class labels of the rows, or None.

  Returns:
    `{'components', 'component_size'[, 'purity']}`: the number of
    components, the mean rows per component, and the fraction of edges
    `u → neighbour[u]` whose two rows share a class.
  """
  num_rows = neighbour.shape[0]
  roots = jnp.sum(components == jnp.arange(num_rows, dtype=components.dtype))
  count = precision.to_full(roots)
  out = {"components": count, "component_size": num_rows / count}
  if labels is not None:
    out["purity"] = jnp.mean(precision.to_full(labels == labels[neighbour]))
  return jax.tree.map(lax.stop_gradient, out)


def knn_multicrop_loss(local_z: jax.Array, z1: jax.Array, z2: jax.Array, *,
                       temperature: float, num_positives: int,
                       axis_name: Optional[str]) -> tuple[jax.Array,
                                                          jax.Array]:
  """Local crops as anchors whose positives are their `num_positives`
  nearest global crops (see the module docstring; no reference code).

  Args:
    local_z: `[L·n, d]` head-1 outputs of the local crops, view-major.
    z1, z2: `[n, d]` head-1 outputs of the two global views.
    temperature: τ.
    num_positives: k, the positives of each anchor.
    axis_name: mapped device axis holding the rest of the global batch.

  Returns:
    `(loss, own_rate)`: this device's loss and the fraction of its anchors
    whose positives include a global view of their own image.
  """
  n = z1.shape[0]
  anchors = losses.l2_normalize(precision.to_full(local_z))
  g1, g2 = (losses.l2_normalize(precision.to_full(z)) for z in (z1, z2))
  if axis_name is not None:  # gradient through the gather, as nt_xent
    g1, g2 = (lax.all_gather(g, axis_name, axis=0, tiled=True)
              for g in (g1, g2))
  contrast = jnp.concatenate([g1, g2])  # [2B, d]: view 1, then view 2
  if not 1 <= num_positives <= contrast.shape[0]:
    raise ValueError(f"config.loss.knn_positives={num_positives} must be in "
                     f"[1, {contrast.shape[0]}] (global crops of the batch)")
  logits = anchors @ contrast.T / temperature
  _, positives = lax.top_k(lax.stop_gradient(logits), num_positives)
  log_p = jax.nn.log_softmax(logits, axis=1)
  value = -jnp.mean(jnp.take_along_axis(log_p, positives, axis=1))
  offset = 0 if axis_name is None else lax.axis_index(axis_name) * n
  image = offset + jnp.arange(local_z.shape[0]) % n
  own = ((positives == image[:, None])
         | (positives == image[:, None] + g1.shape[0]))
  own_rate = jnp.mean(precision.to_full(jnp.any(own, axis=1)))
  return value, lax.stop_gradient(own_rate)


def loss(online: base.GroupOutputs, target, method_state,
         ctx: base.StepContext, *, temperature: float,
         knn_positives: int = 0) -> tuple[jax.Array, dict]:
  """WCL's loss: instance discrimination on head 1 plus the graph loss on
  head 2 (plus the kNN multi-crop term when `knn_positives` > 0)."""
  del target, method_state
  axis = ctx.axis_name
  out = online["global"]
  z1, z2 = base.split_views(out["z"], 2)
  g1, g2 = base.split_views(out["p"], 2)
  n = g1.shape[0]
  instance, accuracy = losses.nt_xent_and_accuracy(z1, z2, temperature,
                                                   axis_name=axis)
  instance = 0.5 * instance
  metrics = {"instance_loss": instance, "contrast_acc": accuracy}
  classes = ctx.label
  if classes is not None and axis is not None:
    classes = lax.all_gather(classes, axis, axis=0, tiled=True)
  weak = []
  for v, g in enumerate((g1, g2), start=1):
    neighbour = losses.nearest_neighbours(g, axis_name=axis)
    components = losses.neighbour_components(neighbour)
    weak.append(losses.local_rows(components, n, axis))
    for key, value in graph_monitors(neighbour, components, classes).items():
      metrics[f"{key}_{v}"] = value
  supcon = functools.partial(losses.supcon, temperature=temperature,
                             num_views=1, contrast_gradient=False,
                             axis_name=axis)
  graph = 0.5 * (supcon(g1, weak[1]) + supcon(g2, weak[0]))
  metrics["graph_loss"] = graph
  total = instance + graph
  if knn_positives:
    local, own_rate = knn_multicrop_loss(
        online["local"]["z"], z1, z2, temperature=temperature,
        num_positives=knn_positives, axis_name=axis)
    metrics.update(multicrop_loss=local, knn_own_rate=own_rate)
    total = total + local
  return total, metrics


def create_network(config: ml_collections.ConfigDict,
                   axis_name: Optional[str]) -> base.Network:
  """Encoder (`config.model`) with two heads of config section `head`: the
  instance head (projector) and the graph head (predictor slot, on `h`)."""
  def head():
    return models.create_head(config.head, config.model, axis_name)
  return base.Network(models.create_encoder(config.model, axis_name),
                      head(), head(), predictor_input="h")


def create(config: ml_collections.ConfigDict, *, axis_name: Optional[str],
           total_steps: int, num_examples: int) -> base.Method:
  """WCL of config sections `model`, `head` (both heads), `loss`
  (`temperature`, `knn_multicrop`, `knn_positives`) and `augment`."""
  del total_steps, num_examples
  views = {"global": 2}
  knn_positives = 0
  if config.loss.knn_multicrop:
    views = views_lib.group_counts(config)
    if views.get("global") != 2 or not views.get("local"):
      raise ValueError(
          "config.loss.knn_multicrop=True needs 2 global and some local "
          f"crops (e.g. config.augment.preset='multicrop'); "
          f"config.augment.preset={config.augment.preset!r} makes {views}")
    knn_positives = config.loss.knn_positives
    if knn_positives < 1:
      raise ValueError(f"config.loss.knn_positives={knn_positives} must be "
                       ">= 1")
  return base.Method(
      name="wcl", views=views, network=create_network(config, axis_name),
      forward=base.Forward(per_view=True),
      loss=functools.partial(loss, temperature=config.loss.temperature,
                             knn_positives=knn_positives))
