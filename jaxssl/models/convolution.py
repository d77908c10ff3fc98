"""Convolution for `nn.Conv(conv_general_dilated=...)`: XLA's everywhere,
except where XLA:CPU is pathologically slow.

XLA:CPU computes convolutions whose output is at most 2×2 px with many
channels 20–70× slower than the same product written as patches @ kernel
(measured with jax 0.10.2 and 0.11.2, batch 32, 3×3 kernels: 2×2 px × 512
channels 284 ms vs 4 ms forward, 581 vs 13 ms forward + backward; 4×4 px and
larger are on par). Such outputs are the last ResNet stage of the small CIFAR
images used on CPUs (tests, `make quickstart`). There, and only on the CPU
(`lax.platform_dependent`), the convolution is computed as im2col (shifted
strided slices of the padded input) and one matmul: the same sums in another
order. GPU and TPU programs keep `lax.conv_general_dilated` unchanged.
"""

from typing import Optional, Sequence, Tuple

import jax
from jax import lax
import jax.numpy as jnp

# Outputs this small (height and width) take the matmul form on the CPU.
MAX_MATMUL_OUTPUT = 2


def _im2col_conv(lhs: jax.Array, rhs: jax.Array, strides: Sequence[int],
                 padding: Sequence[Tuple[int, int]],
                 precision) -> jax.Array:
  """NHWC ⊛ HWIO as (patches of the padded input) @ (flattened kernel)."""
  kh, kw, cin, cout = rhs.shape
  x = jnp.pad(lhs, ((0, 0), tuple(padding[0]), tuple(padding[1]), (0, 0)))
  n, h, w, _ = x.shape
  sh, sw = strides
  oh, ow = (h - kh) // sh + 1, (w - kw) // sw + 1
  cols = [x[:, i:i + sh * (oh - 1) + 1:sh, j:j + sw * (ow - 1) + 1:sw, :]
          for i in range(kh) for j in range(kw)]
  patches = jnp.concatenate(cols, axis=-1) if len(cols) > 1 else cols[0]
  y = jnp.dot(patches.reshape(n * oh * ow, kh * kw * cin),
              rhs.reshape(kh * kw * cin, cout), precision=precision)
  return y.reshape(n, oh, ow, cout)


def conv_general_dilated(lhs: jax.Array, rhs: jax.Array,
                         window_strides: Sequence[int], padding,
                         lhs_dilation: Optional[Sequence[int]] = None,
                         rhs_dilation: Optional[Sequence[int]] = None,
                         dimension_numbers=None, feature_group_count: int = 1,
                         precision=None, **kwargs) -> jax.Array:
  """`lax.conv_general_dilated`; on the CPU, small 2-D NHWC/HWIO outputs
  without dilation or groups are computed as one matmul (module docstring).
  """
  xla = lambda lhs, rhs: lax.conv_general_dilated(
      lhs, rhs, window_strides, padding, lhs_dilation=lhs_dilation,
      rhs_dilation=rhs_dilation, dimension_numbers=dimension_numbers,
      feature_group_count=feature_group_count, precision=precision, **kwargs)
  plain = (lhs.ndim == 4 and not kwargs and feature_group_count == 1
           and not isinstance(padding, str)
           and all(d == 1 for d in (lhs_dilation or (1, 1)))
           and all(d == 1 for d in (rhs_dilation or (1, 1)))
           and lax.conv_dimension_numbers(lhs.shape, rhs.shape,
                                          dimension_numbers)
           == lax.conv_dimension_numbers(lhs.shape, rhs.shape,
                                         ("NHWC", "HWIO", "NHWC")))
  if not plain:
    return xla(lhs, rhs)
  out_hw = [(size + lo + hi - k) // s + 1 for size, (lo, hi), k, s in zip(
      lhs.shape[1:3], padding, rhs.shape[:2], window_strides)]
  if max(out_hw) > MAX_MATMUL_OUTPUT:
    return xla(lhs, rhs)
  matmul = lambda lhs, rhs: _im2col_conv(lhs, rhs, window_strides, padding,
                                         precision)
  return lax.platform_dependent(lhs, rhs, cpu=matmul, default=xla)
