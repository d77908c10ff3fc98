"""Selective-kernel convolution and ResNet-D parts of SimCLR v2's SK ResNets.

SimCLR v2 (Chen, Kornblith, Swersky, Norouzi, Hinton, "Big Self-Supervised
Models are Strong Semi-Supervised Learners", NeurIPS 2020,
https://arxiv.org/abs/2006.10029, §3 and Table 1) widens and deepens the
ResNet and, with `sk_ratio > 0` (0.0625 in its released models), changes it
in three places, following its reference code (google-research/simclr,
`resnet.py` / `tf2/resnet.py`):

* the bottleneck's 3×3 convolution becomes a *selective-kernel* convolution
  (Li, Wang, Hu, Yang, "Selective Kernel Networks", CVPR 2019,
  https://arxiv.org/abs/1903.06586): two streams of `filters` channels are
  mixed per channel with softmax weights computed from their global average
  (`SelectiveKernelConv`);
* the 7×7 stem becomes three 3×3 convolutions (`deep_stem`) and
* a projection shortcut first averages 2×2 windows, then applies a stride-1
  1×1 convolution (`avg_pool_shortcut`), so that it reads every input pixel,
  not one in four: "ResNet-D" of He, Zhang, Zhang, Zhang, Xie, Li, "Bag of
  Tricks for Image Classification with Convolutional Neural Networks", CVPR
  2019 (https://arxiv.org/abs/1812.01187, §4.1, Figure 2).

SKNet's two streams are a 3×3 and a dilated 3×3 convolution; the SimCLR
reference instead splits ONE 3×3 convolution with 2·`filters` outputs in two
(`branches='split'`, the default, whose parameters match its checkpoints'
counts). `branches='dilated'` gives SKNet's form: a 3×3 and a 3×3 with
dilation 2, `filters` channels each, the same parameter count.
"""

import functools
from typing import Any, Callable

import flax.linen as nn
import jax
import jax.numpy as jnp

from jaxssl import precision
from jaxssl.models import convolution

# Same initialiser as the reference's VarianceScaling(): scale 1, fan-in,
# truncated normal.
conv_init = nn.initializers.variance_scaling(1.0, "fan_in", "truncated_normal")
SK_BRANCHES = ("split", "dilated")
# The reference's floor on the width of the mixing weights' hidden layer.
SK_MIN_DIM = 32


def conv_factory(dtype: Any) -> Callable[..., nn.Conv]:
  """Bias-free, He-initialised `nn.Conv` computing in `dtype`, parameters in
  full precision (and XLA:CPU's fast form of tiny convolutions)."""
  return functools.partial(
      nn.Conv, use_bias=False, dtype=dtype,
      param_dtype=precision.full_dtype(), kernel_init=conv_init,
      conv_general_dilated=convolution.conv_general_dilated)


def sk_mid_dim(filters: int, sk_ratio: float) -> int:
  """Width of the hidden layer of the mixing weights:
  `max(int(filters · sk_ratio), 32)` (reference `sk_conv2d`)."""
  return max(int(filters * sk_ratio), SK_MIN_DIM)


class SelectiveKernelConv(nn.Module):
  """Two 3×3 streams, BN + ReLU, mixed by softmax attention over streams.

  With `x` the input and `s` the stride:

      u_1, u_2 = split(relu(bn(conv3×3_s(x, 2·filters))))   ('split')
      u_1, u_2 = relu(bn(concat(conv3×3_s(x), conv3×3_s,dil 2(x))))
                                                            ('dilated')
      z = relu(bn(conv1×1(mean_hw(u_1 + u_2), mid)))       (no bias)
      a_1, a_2 = softmax over the 2 streams of split(conv1×1(z, 2·filters))
      out = a_1 · u_1 + a_2 · u_2                           (per channel)

  BN, like the encoder's others, aggregates over devices with the model's
  settings (`norm`), also the one on the pooled `[N, 1, 1, mid]` features.

  Attributes:
    filters: channels of each stream and of the output.
    strides: stride of the 3×3 convolutions (v1.5: the bottleneck's stride).
    sk_ratio: mid width `max(int(filters · sk_ratio), 32)`.
    norm: BatchNorm factory (`normalization.batch_norm_factory`).
    branches: 'split' (SimCLR v2's reference) or 'dilated' (SKNet's).
    dtype: computation dtype; the softmax is computed in full precision.
  """
  filters: int
  strides: int
  sk_ratio: float
  norm: Any
  branches: str = "split"
  dtype: Any = None

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    if self.branches not in SK_BRANCHES:
      raise ValueError(f"sk_branches={self.branches!r} is not one of "
                       f"{list(SK_BRANCHES)}")
    conv = conv_factory(self.dtype)
    f, s = self.filters, (self.strides, self.strides)
    if self.branches == "split":
      u = conv(2 * f, (3, 3), s, padding=((1, 1), (1, 1)), name="conv")(x)
    else:
      u = jnp.concatenate([
          conv(f, (3, 3), s, padding=((1, 1), (1, 1)), name="conv")(x),
          conv(f, (3, 3), s, padding=((2, 2), (2, 2)), kernel_dilation=(2, 2),
               name="conv_dilated")(x)], axis=-1)
    u = nn.relu(self.norm(name="bn")(u))
    streams = jnp.stack(jnp.split(u, 2, axis=-1))  # [2, N, H, W, f]
    z = jnp.mean(streams.sum(axis=0), axis=(1, 2), keepdims=True)
    z = conv(sk_mid_dim(f, self.sk_ratio), (1, 1), name="reduce_conv")(z)
    z = nn.relu(self.norm(name="reduce_bn")(z))
    logits = conv(2 * f, (1, 1), name="expand_conv")(z)  # [N, 1, 1, 2f]
    logits = jnp.stack(jnp.split(logits, 2, axis=-1))
    weights = jax.nn.softmax(logits.astype(precision.full_dtype()), axis=0)
    return jnp.sum(streams * weights.astype(streams.dtype), axis=0)


def avg_pool_shortcut(x: jax.Array, features: int, strides: int,
                      conv: Callable[..., nn.Module],
                      norm: Callable[..., nn.Module]) -> jax.Array:
  """ResNet-D projection shortcut: 2×2 average pool, 1×1 conv, BN.

  As the reference: stride 2 pads one zero row and column at the END and
  pools VALID (the zeros count in the mean; they are only read for odd
  sizes, matching the ⌈H/2⌉ of the strided 3×3 branch); stride 1 pools
  2×2 windows 'SAME', i.e. padded at the end, the padding NOT counted
  (TensorFlow's average pool). Layer names `pool_proj_conv`/`pool_proj_bn`
  tell this shortcut from the plain strided `proj_conv`/`proj_bn`.
  """
  if strides > 1:
    x = jnp.pad(x, ((0, 0), (0, 1), (0, 1), (0, 0)))
    x = nn.avg_pool(x, (2, 2), (strides, strides), padding="VALID")
  else:
    x = nn.avg_pool(x, (2, 2), (1, 1), padding=((0, 1), (0, 1)),
                    count_include_pad=False)
  x = conv(features, (1, 1), name="pool_proj_conv")(x)
  return norm(name="pool_proj_bn")(x)


def deep_stem(x: jax.Array, width: int, conv: Callable[..., nn.Module],
              norm: Callable[..., nn.Module]) -> jax.Array:
  """ResNet-D stem before the max-pool: 3×3 stride-2 conv to width/2, BN,
  ReLU, 3×3 conv to width/2, BN, ReLU, 3×3 conv to width, BN, ReLU (the last
  BN is the stem's usual one)."""
  x = conv(width // 2, (3, 3), (2, 2), padding=((1, 1), (1, 1)),
           name="stem_conv1")(x)
  x = nn.relu(norm(name="stem_bn1")(x))
  x = conv(width // 2, (3, 3), padding=((1, 1), (1, 1)), name="stem_conv2")(x)
  x = nn.relu(norm(name="stem_bn2")(x))
  x = conv(width, (3, 3), padding=((1, 1), (1, 1)), name="stem_conv3")(x)
  return nn.relu(norm(name="stem_bn3")(x))
