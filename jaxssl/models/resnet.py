"""ResNet v1.5 backbones as used by SimCLR/BYOL, with a CIFAR stem option.

He, Zhang, Ren, Sun, "Deep Residual Learning for Image Recognition", CVPR 2016
(https://arxiv.org/abs/1512.03385), in the "v1.5" form (stride in the 3×3
convolution of the bottleneck) of the TF official and SimCLR reference models:

* convolutions without bias, He/variance-scaling initialised (fan-in,
  truncated normal: `tf.keras.initializers.VarianceScaling()`);
* BatchNorm momentum 0.9, epsilon 1e-5, statistics over the device axis;
* the last BatchNorm of every residual block starts with γ = 0, so each block
  starts as the identity (Goyal et al. 2017);
* a width multiplier on every convolution (SimCLR's R50 (2×), (4×));
* for images of 32 px or less, the CIFAR stem: one 3×3 stride-1 convolution
  and no max-pooling (SimCLR appendix B.9).

With `sk_ratio > 0`, the SK ResNet of SimCLR v2 (Chen et al. 2020,
https://arxiv.org/abs/2006.10029): selective-kernel 3×3 convolutions in the
bottlenecks, the ResNet-D deep stem and average-pool projection shortcuts
(`jaxssl.models.selective_kernel`); the CIFAR stem stays one 3×3 conv, and
basic blocks (ResNet-10/18/34) only get the ResNet-D shortcuts, as in the
reference's `tf2/resnet.py`.

The network returns the globally average-pooled features (the representation
`h` of SimCLR), without a classifier.
"""

from typing import Any, Optional

import flax.linen as nn
import jax
import jax.numpy as jnp

from jaxssl import precision
from jaxssl.models import selective_kernel as sk
from jaxssl.models.normalization import NORMS
from jaxssl.models.normalization import batch_norm_factory
from jaxssl.models.normalization import layer_norm_factory

STAGE_SIZES = {
    # ResNet-10: one basic block per stage (timm's resnet10t without its deep
    # stem). Small-scale work, and the tests, where it halves XLA compile
    # times against a ResNet-18.
    10: (1, 1, 1, 1),
    18: (2, 2, 2, 2),
    34: (3, 4, 6, 3),
    50: (3, 4, 6, 3),
    101: (3, 4, 23, 3),
    152: (3, 8, 36, 3),
    200: (3, 24, 36, 3),
}

REMAT_POLICIES = {
    "none": None,
    "block": jax.checkpoint_policies.nothing_saveable,
    "dots": jax.checkpoint_policies.dots_saveable,
}
# Same initialiser as the reference's VarianceScaling(): scale 1, fan-in,
# truncated normal (flax's lecun_normal).
conv_init = sk.conv_init


def _shortcut(x, features, strides, conv, norm, resnet_d=False):
  """Identity, or where the shape changes a strided 1×1 projection + BN
  (ResNet-D: 2×2 average pool, 1×1 projection, BN)."""
  if x.shape[-1] == features and strides == 1:
    return x
  if resnet_d:
    return sk.avg_pool_shortcut(x, features, strides, conv, norm)
  x = conv(features, (1, 1), (strides, strides), name="proj_conv")(x)
  return norm(name="proj_bn")(x)


def _residual_scale_init(zero: bool):
  """The last BatchNorm γ of a residual branch: 0 (each block starts as the
  identity; Goyal et al. 2017, https://arxiv.org/abs/1706.02677) or 1."""
  return nn.initializers.zeros if zero else nn.initializers.ones


class BasicBlock(nn.Module):
  """Two 3×3 convolutions (ResNet-18/34); `sk_ratio > 0`: ResNet-D shortcut
  (the reference's basic block has no selective kernel, so `sk_branches` is
  unused)."""
  filters: int
  strides: int
  norm: Any
  dtype: Any = None
  sk_ratio: float = 0.0
  sk_branches: str = "split"
  zero_init_residual: bool = True

  @nn.compact
  def __call__(self, x):
    conv = sk.conv_factory(self.dtype)
    y = conv(self.filters, (3, 3), (self.strides, self.strides),
             padding=((1, 1), (1, 1)), name="conv1")(x)
    y = nn.relu(self.norm(name="bn1")(y))
    y = conv(self.filters, (3, 3), padding=((1, 1), (1, 1)), name="conv2")(y)
    y = self.norm(scale_init=_residual_scale_init(self.zero_init_residual),
                  name="bn2")(y)
    shortcut = _shortcut(x, self.filters, self.strides, conv, self.norm,
                         resnet_d=self.sk_ratio > 0)
    return nn.relu(shortcut + y)


class BottleneckBlock(nn.Module):
  """1×1 → 3×3 (strided, v1.5) → 1×1 with 4× expansion (ResNet-50+);
  `sk_ratio > 0`: the 3×3 is a selective-kernel convolution (`sk_conv`,
  with its BN and ReLU inside) and the shortcut ResNet-D's."""
  filters: int
  strides: int
  norm: Any
  dtype: Any = None
  sk_ratio: float = 0.0
  sk_branches: str = "split"
  zero_init_residual: bool = True

  @nn.compact
  def __call__(self, x):
    conv = sk.conv_factory(self.dtype)
    y = conv(self.filters, (1, 1), name="conv1")(x)
    y = nn.relu(self.norm(name="bn1")(y))
    if self.sk_ratio > 0:
      y = sk.SelectiveKernelConv(self.filters, self.strides, self.sk_ratio,
                                 self.norm, branches=self.sk_branches,
                                 dtype=self.dtype, name="sk_conv")(y)
    else:
      y = conv(self.filters, (3, 3), (self.strides, self.strides),
               padding=((1, 1), (1, 1)), name="conv2")(y)
      y = nn.relu(self.norm(name="bn2")(y))
    y = conv(self.filters * 4, (1, 1), name="conv3")(y)
    y = self.norm(scale_init=_residual_scale_init(self.zero_init_residual),
                  name="bn3")(y)
    shortcut = _shortcut(x, self.filters * 4, self.strides, conv, self.norm,
                         resnet_d=self.sk_ratio > 0)
    return nn.relu(shortcut + y)


class ResNet(nn.Module):
  """ResNet v1.5 encoder returning pooled features `[batch, channels]`.

  Attributes:
    depth: 10, 18, 34, 50, 101, 152 or 200.
    width_multiplier: multiplies every convolution's channels.
    cifar_stem: 3×3 stride-1 stem without max-pool (small images).
    bn_momentum: BatchNorm running-average decay (reference: 0.9).
    bn_epsilon: BatchNorm epsilon (reference: 1e-5).
    axis_name: device axis for global BatchNorm statistics, None for local.
    bn_group_size: aggregate BatchNorm statistics over groups of this many
      devices (None: all devices).
    bn_num_groups: or over this many consecutive groups of devices (a
      share of the global batch whatever the device count).
    dtype: computation dtype; None: full precision (`jaxssl.precision`).
      With bfloat16 (mixed precision) the parameters, BN statistics and the
      pooled output stay in full precision.
    remat: rematerialisation of each block: 'none', 'block' (store only the
      block inputs), 'dots' (also keep convolution outputs).
    sk_ratio: 0: the plain ResNet. > 0: SimCLR v2's SK ResNet (module
      docstring), the selective kernels' mixing layer
      `max(int(filters · sk_ratio), 32)` wide (SimCLR v2: 0.0625).
    sk_branches: the selective kernel's two streams: 'split' (one 3×3 conv
      split in two, SimCLR v2's reference) or 'dilated' (a 3×3 and a
      dilated 3×3, SKNet's).
    zero_init_residual: each block's last BatchNorm γ starts at 0 (SimCLR,
      BYOL, MoCo v3, SimSiam, Barlow Twins references) instead of 1
      (torchvision's default, kept by MoCo v1/v2, SwAV, DINO, WCL, SupCon).
    norm: 'batch' (BatchNorm, the bn_* settings) or 'layer' (each
      example's feature map layer-normalised, CPC v2:
      `normalization.layer_norm_factory`; `bn_epsilon` is its epsilon,
      nothing else of BatchNorm applies).
  """
  depth: int = 50
  width_multiplier: float = 1.0
  cifar_stem: bool = False
  bn_momentum: float = 0.9
  bn_epsilon: float = 1e-5
  axis_name: Optional[str] = None
  bn_group_size: Optional[int] = None
  bn_num_groups: Optional[int] = None
  dtype: Any = None
  remat: str = "none"
  sk_ratio: float = 0.0
  sk_branches: str = "split"
  zero_init_residual: bool = True
  norm: str = "batch"

  @property
  def num_features(self) -> int:
    widest = int(64 * self.width_multiplier * 8)
    return widest * (4 if self.depth >= 50 else 1)

  @nn.compact
  def __call__(self, x: jax.Array, train: bool = True) -> jax.Array:
    if self.depth not in STAGE_SIZES:
      raise ValueError(f"unsupported ResNet depth {self.depth}; expected one "
                       f"of {sorted(STAGE_SIZES)}")
    full = precision.full_dtype()
    dtype = full if self.dtype is None else self.dtype
    if self.norm not in NORMS:
      raise ValueError(f"config.model.norm={self.norm!r} is not one of "
                       f"{list(NORMS)}")
    if self.norm == "layer":
      norm = layer_norm_factory(epsilon=self.bn_epsilon, dtype=dtype)
    else:
      norm = batch_norm_factory(
          train=train, momentum=self.bn_momentum, epsilon=self.bn_epsilon,
          axis_name=self.axis_name, group_size=self.bn_group_size,
          dtype=dtype, num_groups=self.bn_num_groups)
    if self.sk_ratio < 0 or self.sk_branches not in sk.SK_BRANCHES:
      raise ValueError(f"sk_ratio={self.sk_ratio} must be >= 0 and "
                       f"sk_branches={self.sk_branches!r} one of "
                       f"{list(sk.SK_BRANCHES)}")
    block_cls = BottleneckBlock if self.depth >= 50 else BasicBlock
    if self.remat not in REMAT_POLICIES:
      raise ValueError(f"remat={self.remat!r} is not one of "
                       f"{sorted(REMAT_POLICIES)}")
    if self.remat != "none":
      # Recompute each block's activations in the backward pass instead of
      # storing them ('dots': keep the convolution outputs, recompute the
      # cheap element-wise ops).
      block_cls = nn.remat(block_cls, policy=REMAT_POLICIES[self.remat])
    width = int(64 * self.width_multiplier)
    x = x.astype(dtype)
    if self.cifar_stem:
      x = nn.Conv(width, (3, 3), padding=((1, 1), (1, 1)), use_bias=False,
                  kernel_init=conv_init, dtype=dtype, param_dtype=full,
                  name="stem_conv")(x)
      x = nn.relu(norm(name="stem_bn")(x))
    else:
      if self.sk_ratio > 0:
        x = sk.deep_stem(x, width, sk.conv_factory(dtype), norm)
      else:
        x = nn.Conv(width, (7, 7), (2, 2), padding=((3, 3), (3, 3)),
                    use_bias=False, kernel_init=conv_init, dtype=dtype,
                    param_dtype=full, name="stem_conv")(x)
        x = nn.relu(norm(name="stem_bn")(x))
      # Explicit 1-pixel padding (with −inf), as torchvision's MaxPool2d:
      # "SAME" would pad only after the last row/column.
      x = nn.max_pool(x, (3, 3), (2, 2), padding=((1, 1), (1, 1)))
    for stage, num_blocks in enumerate(STAGE_SIZES[self.depth]):
      for block in range(num_blocks):
        strides = 2 if stage > 0 and block == 0 else 1
        x = block_cls(width * 2**stage, strides, norm, dtype=dtype,
                      sk_ratio=self.sk_ratio, sk_branches=self.sk_branches,
                      zero_init_residual=self.zero_init_residual,
                      name=f"stage{stage + 1}_block{block + 1}")(x)
    return jnp.mean(x.astype(full), axis=(1, 2))
