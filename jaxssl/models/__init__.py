"""Backbones and heads (flax.linen), built from config sections."""

from __future__ import annotations

from typing import TYPE_CHECKING, Optional

import jax
import jax.numpy as jnp

from jaxssl import precision
from jaxssl.models.heads import DINOHead
from jaxssl.models.heads import ProjectionHead
from jaxssl.models import vit
from jaxssl.models.resnet import ResNet

if TYPE_CHECKING:  # configs are only read here: no runtime dependency
  import ml_collections


DTYPES = {"float32": jnp.float32, "bfloat16": jnp.bfloat16}


def compute_dtype(name: str):
  """'auto' → bfloat16 on GPU/TPU, full precision (`jaxssl.precision`:
  float32, float64 in 64-bit mode) on CPU; else the named dtype."""
  if name == "auto":
    if jax.default_backend() == "cpu":
      return precision.full_dtype()
    return jnp.bfloat16
  if name not in DTYPES:
    raise ValueError(f"config.model.dtype={name!r} is not one of "
                     f"{['auto', *DTYPES]}")
  return DTYPES[name]


def _resnet(cfg: ml_collections.ConfigDict, axis_name: Optional[str]) -> ResNet:
  return ResNet(depth=cfg.depth, width_multiplier=cfg.width,
                cifar_stem=cfg.cifar_stem, bn_momentum=cfg.bn_momentum,
                bn_epsilon=cfg.bn_epsilon, axis_name=axis_name,
                bn_group_size=cfg.bn_group_size or None,
                bn_num_groups=cfg.get("bn_num_groups", 0) or None,
                dtype=compute_dtype(cfg.dtype), remat=cfg.remat,
                # Absent from configs written before SK ResNets: plain ResNet.
                sk_ratio=cfg.get("sk_ratio", 0.0),
                sk_branches=cfg.get("sk_branches", "split"),
                zero_init_residual=cfg.get("zero_init_residual", True),
                norm=cfg.get("norm", "batch"))


def _vit(cfg: ml_collections.ConfigDict,
         axis_name: Optional[str]) -> vit.VisionTransformer:
  del axis_name  # LayerNorm: nothing is reduced across devices
  heads = cfg.get("num_heads", 0)
  return vit.create(cfg.variant, heads=heads or None,
                    depth=cfg.get("vit_depth", 0) or None,
                    patch_size=cfg.patch_size,
                    pos_embed=cfg.pos_embed, image_size=cfg.vit_image_size,
                    frozen_patch_embed=cfg.frozen_patch_embed,
                    drop_path=cfg.drop_path, dtype=compute_dtype(cfg.dtype),
                    init_scheme=cfg.get("vit_init", "mocov3"),
                    remat=cfg.remat)


ENCODERS = {"resnet": _resnet, "vit": _vit}


def create_encoder(cfg: ml_collections.ConfigDict, axis_name: Optional[str]):
  """The encoder named by `cfg.name` (config section `model`)."""
  if cfg.name not in ENCODERS:
    raise ValueError(f"config.model.name={cfg.name!r} is not one of "
                     f"{sorted(ENCODERS)}")
  return ENCODERS[cfg.name](cfg, axis_name)


def create_head(head: ml_collections.ConfigDict,
                model: ml_collections.ConfigDict,
                axis_name: Optional[str], *,
                default_out_dim: int = 0):
  """The head of config section `head` (or `predictor`), normalised like
  `model`: `kind='mlp'` a `ProjectionHead`, `kind='dino'` a `DINOHead`.
  `out_dim=0` means `default_out_dim` (a predictor's output matches the
  projector's)."""
  out_dim = head.out_dim or default_out_dim
  if out_dim <= 0:
    raise ValueError(f"head out_dim={head.out_dim} must be positive")
  kind = head.get("kind", "mlp")
  if kind == "dino":
    return DINOHead(out_dim=out_dim, hidden_dim=head.hidden_dim,
                    bottleneck_dim=head.bottleneck_dim,
                    num_layers=head.num_layers, use_bn=head.use_bn,
                    norm_last_layer=head.norm_last_layer,
                    bn_momentum=model.bn_momentum,
                    bn_epsilon=model.bn_epsilon, axis_name=axis_name,
                    bn_group_size=model.bn_group_size or None,
                    bn_num_groups=model.get("bn_num_groups", 0) or None)
  if kind != "mlp":
    raise ValueError(f"head kind={kind!r} is not one of ['mlp', 'dino']")
  return ProjectionHead(num_layers=head.num_layers, hidden_dim=head.hidden_dim,
                        out_dim=out_dim, use_bn=head.use_bn,
                        last_bn=head.last_bn, kernel_init=head.kernel_init,
                        bias=head.get("bias", True),
                        bn_momentum=model.bn_momentum,
                        bn_epsilon=model.bn_epsilon, axis_name=axis_name,
                        bn_group_size=model.bn_group_size or None,
                    bn_num_groups=model.get("bn_num_groups", 0) or None)
