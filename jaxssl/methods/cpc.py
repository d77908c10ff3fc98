"""CPC v2: contrastive predictive coding across an image's patches.

Hénaff, Srinivas, De Fauw, Razavi, Doersch, Eslami & van den Oord,
"Data-Efficient Image Recognition with Contrastive Predictive Coding",
ICML 2020 (https://arxiv.org/abs/1905.09272). No official code was
released; this follows the paper's text and its appendix pseudo-code
(`pixelCNN`, `CPC(latents, target_dim=64, emb_scale=0.1,
steps_to_ignore=2, steps_to_predict=3)`):

* one view per image (`augment.preset='cpc'`: crop and flip), cut into a
  grid of overlapping patches (`loss.patch_size`, `loss.patch_stride`:
  80 px every 36 px, a 6 × 6 grid of a 260 px crop on ImageNet);
* per-patch augmentation (`augment.patch_augment`): two of the three
  colour channels dropped, a random flip;
* every patch encoded by one ResNet with LayerNorm instead of BatchNorm
  (`model.norm='layer'`: BatchNorm would let patches of a batch share
  information around the context's receptive field) and mean-pooled to a
  vector: a grid of features `[n, G, G, D]`;
* targets: a 1×1 convolution of the features to `loss.target_dim` = 64;
* per direction (`loss.directions`: context from above predicts below —
  'down', the paper's first task — and, as CPC v2, from below, the left
  and the right: the grid turned so that context comes from above), a
  masked context network (`models.patches.MaskedContext`, 5 residual
  blocks of width 256: row r sees rows ≤ r only) and, for each offset k
  of `loss.offsets`, a 1×1 convolution predicting the target k rows
  ahead, scaled by `loss.emb_scale` = 0.1;
* `losses.cpc_infonce`: each prediction against the targets of EVERY
  patch of the global batch (all positions of all images, its own image's
  other positions included: the paper's "other locations in the image and
  other images in the mini-batch"), summed over offsets and directions
  (the pseudo-code sums over offsets).
  The pseudo-code's defaults predict k = 3 only (steps 0 and 1 ignored: a
  patch 36 or 72 px below overlaps the context's own patches).

Evaluation: the encoder protocol's `h` is the patch features' mean over
the grid of the evaluated image (the paper's linear classifier reads the
encoder's pooled grid, the context network is discarded); `z` the pooled
targets.

Per-patch augmentation draws from the step's device key: unlike the
views, its draws depend on the device count (as a ViT's drop-path).
Micro-batching (`train.microbatches > 1`) is not supported.
"""

from __future__ import annotations

import dataclasses
import functools
from typing import TYPE_CHECKING, Optional

import flax.linen as nn
import jax
from jax import lax
import jax.numpy as jnp

from jaxssl import augment
from jaxssl import losses
from jaxssl import models
from jaxssl import precision
from jaxssl.methods import base
from jaxssl.models import patches as patches_lib

if TYPE_CHECKING:  # configs are only read here: no runtime dependency
  import ml_collections


class CPCNetwork(nn.Module):
  """Patch encoder, target projection, context networks and predictors.

  Attributes:
    encoder: `patches.PatchEncoder` (images → pooled `h`; patches → grid).
    projector: the targets' 1×1 convolution (a dense layer).
    directions: the directions predicted (`patches.DIRECTIONS`).
    offsets: the rows ahead predicted.
    context_hidden, context_blocks: each `MaskedContext`'s width and
      depth.
    target_dim: the predictions' width (the targets').
    emb_scale: the predictions' scale.
  """
  encoder: nn.Module
  projector: nn.Module
  directions: tuple = ("down",)
  offsets: tuple = (3,)
  context_hidden: int = 256
  context_blocks: int = 5
  target_dim: int = 64
  emb_scale: float = 0.1

  def setup(self):
    self.contexts = [patches_lib.MaskedContext(
        self.context_hidden, self.context_blocks, name=f"context_{d}")
                     for d in self.directions]
    self.predictors = [[patches_lib.dense(self.target_dim,
                                          name=f"predict_{d}_k{k}")
                        for k in self.offsets] for d in self.directions]

  def __call__(self, x: jax.Array, train: bool = False) -> base.Outputs:
    """Images → `{'h', 'z'}` pooled over each image's grid (evaluation)."""
    if self.is_initializing():  # the context and prediction parameters too
      self.grid_outputs(patches_lib.patchify(
          x, self.encoder.patch_size, self.encoder.stride), train=train)
    return self.heads(self.encode(x, train=train), train=train)

  def encode(self, x: jax.Array, train: bool = False) -> jax.Array:
    return self.encoder(x, train=train)

  def heads(self, h: jax.Array, train: bool = True) -> base.Outputs:
    return {"h": h, "z": self.projector(h, train=train)}

  def grid_outputs(self, grid: jax.Array, train: bool = True
                   ) -> base.Outputs:
    """Cut (and augmented) patches `[n, G, G, p, p, 3]` → `{'h', 'z'`
    (pooled), `'targets'` `[n, G, G, d]`, `'predictions_{direction}'`
    `[n, G, G, K, d]` (in that direction's turned grid)}`."""
    latents = self.encoder.encode_patches(grid, train=train)
    targets = self.projector(latents, train=train)
    out = {"h": jnp.mean(precision.to_full(latents), axis=(1, 2)),
           "z": jnp.mean(targets, axis=(1, 2)), "targets": targets}
    for d, context, heads in zip(self.directions, self.contexts,
                                 self.predictors):
      c = context(patches_lib.direction_view(latents, d))
      out[f"predictions_{d}"] = patches_lib.stack_offsets(c, heads,
                                                          self.emb_scale)
    return out


@dataclasses.dataclass(frozen=True)
class PatchForward(base.Forward):
  """The view cut into its patch grid (augmented per patch in training),
  then one pass of `CPCNetwork.grid_outputs`."""
  patch_size: int = 80
  stride: int = 36
  augment: bool = True

  def __call__(self, network, variables, views, counts, *, train=True,
               rng=None):
    del counts
    grid = patches_lib.patchify(views[_group(views)], self.patch_size,
                                self.stride)
    if train and self.augment:
      if rng is None:
        raise ValueError("CPC's per-patch augmentation needs the step's "
                         "network key")
      grid = augment.patch_augment(jax.random.fold_in(rng, 0x70617463), grid)
    if not train:
      return {_group(views): network.apply(
          variables, grid, train=False, method="grid_outputs")}, variables.get(
              "batch_stats", {})
    out, new = network.apply(variables, grid, train=True,
                             mutable=["batch_stats"], method="grid_outputs")
    return {_group(views): out}, new.get("batch_stats", {})

  def encode(self, *args, **kwargs):
    raise ValueError("CPC v2 does not support config.train.microbatches > 1 "
                     "(its heads need the patch grid, not the pooled `h`)")

  heads = encode


def _group(views) -> str:
  if tuple(views) != ("global",):
    raise ValueError(f"CPC takes one view group 'global'; got {list(views)}")
  return "global"


def loss(online, target, method_state, ctx, *, directions: tuple,
         offsets: tuple):
  """`cpc_infonce` summed over directions and offsets."""
  del target, method_state
  out = online["global"]
  total, metrics = 0.0, {}
  for d in directions:
    targets = patches_lib.direction_view(out["targets"], d)
    predictions = out[f"predictions_{d}"]
    for i, k in enumerate(offsets):
      value = losses.cpc_infonce(predictions[..., i, :], targets, offset=k,
                                 axis_name=ctx.axis_name)
      metrics[f"loss_{d}_k{k}"] = lax.stop_gradient(value)
      total = total + value
  return total, metrics


def create_network(config: ml_collections.ConfigDict,
                   axis_name: Optional[str]) -> CPCNetwork:
  """The patch encoder of `config.model` (LayerNorm: `model.norm`) and the
  heads of `config.loss`."""
  loss_cfg = config.loss
  backbone = models.create_encoder(config.model, axis_name)
  return CPCNetwork(
      patches_lib.PatchEncoder(backbone, loss_cfg.patch_size,
                               loss_cfg.patch_stride),
      patches_lib.Projection(loss_cfg.target_dim),
      directions=tuple(loss_cfg.directions),
      offsets=tuple(loss_cfg.offsets), context_hidden=loss_cfg.context_hidden,
      context_blocks=loss_cfg.context_blocks, target_dim=loss_cfg.target_dim,
      emb_scale=loss_cfg.emb_scale)


def check_config(config: ml_collections.ConfigDict) -> None:
  """The grid tiles the view; offsets and directions make sense."""
  loss_cfg = config.loss
  g = patches_lib.grid_size(config.data.image_size, loss_cfg.patch_size,
                            loss_cfg.patch_stride)
  bad = [d for d in loss_cfg.directions if d not in patches_lib.DIRECTIONS]
  if not loss_cfg.directions or bad:
    raise ValueError(f"config.loss.directions={tuple(loss_cfg.directions)}: "
                     f"choose from {list(patches_lib.DIRECTIONS)}")
  if not loss_cfg.offsets or any(not 0 < k < g for k in loss_cfg.offsets):
    raise ValueError(f"config.loss.offsets={tuple(loss_cfg.offsets)} must be "
                     f"in [1, {g - 1}] for a {g} × {g} patch grid")
  if config.model.get("norm", "batch") != "layer":
    raise ValueError("CPC v2 encodes patches with LayerNorm: set "
                     "config.model.norm='layer' (BatchNorm shares statistics "
                     "between the patches it should keep apart)")
  if config.train.microbatches != 1:
    raise ValueError("CPC v2 does not support config.train.microbatches > 1")


def create(config: ml_collections.ConfigDict, *, axis_name: Optional[str],
           total_steps: int, num_examples: int) -> base.Method:
  """CPC v2 of config sections `model` (the patch ResNet, `norm='layer'`)
  and `loss` (`patch_size`, `patch_stride`, `offsets`, `directions`,
  `target_dim`, `emb_scale`, `context_hidden`, `context_blocks`,
  `patch_augment`)."""
  del total_steps, num_examples
  check_config(config)
  loss_cfg = config.loss
  return base.Method(
      name="cpc", views={"global": 1},
      network=create_network(config, axis_name),
      forward=PatchForward(patch_size=loss_cfg.patch_size,
                           stride=loss_cfg.patch_stride,
                           augment=loss_cfg.patch_augment),
      loss=functools.partial(loss, directions=tuple(loss_cfg.directions),
                             offsets=tuple(loss_cfg.offsets)))
