"""jaxssl.models.convolution: the CPU matmul form of small convolutions
equals the convolution (float64 loops, and lax's gradients); it is used on
the CPU only where the output is at most 2×2 px, and never in GPU programs."""

import itertools

import jax
from jax import export
from jax import lax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxssl.models import convolution
from jaxssl.models.resnet import ResNet

NHWC = ("NHWC", "HWIO", "NHWC")

# (input px, kernel, stride, padding): all give outputs of at most 2×2 px.
SMALL = [(2, 3, 1, (1, 1)), (4, 3, 2, (1, 1)), (3, 3, 2, (1, 1)),
         (2, 1, 2, (0, 0)), (2, 1, 1, (0, 0)), (1, 3, 1, (1, 1)),
         (5, 3, 2, (0, 1))]


def _numpy_conv(x, w, stride, pad):
  """Direct float64 convolution, NHWC ⊛ HWIO."""
  x = np.pad(x.astype(np.float64), ((0, 0), pad, pad, (0, 0)))
  kh, kw = w.shape[:2]
  oh = (x.shape[1] - kh) // stride + 1
  ow = (x.shape[2] - kw) // stride + 1
  y = np.zeros((x.shape[0], oh, ow, w.shape[3]))
  for i, j, di, dj in itertools.product(range(oh), range(ow), range(kh),
                                        range(kw)):
    y[:, i, j] += x[:, i * stride + di, j * stride + dj] @ w[di, dj]
  return y


def _conv(fn, stride, pad):
  def f(x, w):
    dn = lax.conv_dimension_numbers(x.shape, w.shape, NHWC)
    return fn(x, w, (stride, stride), (pad, pad), dimension_numbers=dn)
  return f


@pytest.mark.parametrize("size,k,stride,pad", SMALL)
def test_small_outputs_equal_the_convolution(size, k, stride, pad):
  rng = np.random.default_rng(size * 10 + k)
  x = rng.normal(size=(3, size, size, 5)).astype(np.float32)
  w = rng.normal(size=(k, k, 5, 7)).astype(np.float32)
  ours = jax.jit(_conv(convolution.conv_general_dilated, stride, pad))
  ref = _conv(lax.conv_general_dilated, stride, pad)
  np.testing.assert_allclose(ours(x, w), _numpy_conv(x, w, stride, pad),
                             rtol=1e-5, atol=1e-5)
  cot = rng.normal(size=ours(x, w).shape).astype(np.float32)
  loss = lambda f: lambda x, w: (f(x, w) * cot).sum()
  for a, b in zip(jax.grad(loss(ours), (0, 1))(x, w),
                  jax.grad(loss(ref), (0, 1))(x, w)):
    np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-5)


def _hlo(f, *args):
  return jax.jit(f).lower(*args).as_text()


def test_cpu_uses_the_matmul_form_only_for_small_outputs():
  x2, x8 = jnp.ones((2, 2, 2, 4)), jnp.ones((2, 8, 8, 4))
  w = jnp.ones((3, 3, 4, 4))
  small = _hlo(_conv(convolution.conv_general_dilated, 1, (1, 1)), x2, w)
  large = _hlo(_conv(convolution.conv_general_dilated, 1, (1, 1)), x8, w)
  assert "convolution" not in small and "dot_general" in small
  assert "convolution" in large and "dot_general" not in large


def test_resnet_blocks_use_it_on_the_cpu():
  """ResNet-18, CIFAR stem, 8 px: stages at 8, 4, 2 and 1 px. Convolutions
  stay for the stem + stage 1 (1 + 4), stage 2 (4 + projection) and the two
  strided 1×1 projections of stages 3 and 4 (flax pads them with 'SAME',
  which stays with lax); the 8 3×3 convolutions of stages 3 and 4 (2×2 and
  1×1 outputs) become matmuls."""
  model = ResNet(depth=18, cifar_stem=True, width_multiplier=0.0625)
  x = jnp.ones((2, 8, 8, 3))
  variables = model.init(jax.random.key(0), x, train=False)
  text = _hlo(lambda v, x: model.apply(v, x, train=False), variables, x)
  assert text.count("stablehlo.convolution") == 12


@pytest.mark.parametrize("platform", ["cuda", "tpu"])
def test_accelerator_programs_keep_the_convolution(platform):
  f = _conv(convolution.conv_general_dilated, 1, (1, 1))
  exported = export.export(jax.jit(f), platforms=[platform])(
      jax.ShapeDtypeStruct((2, 2, 2, 4), jnp.float32),
      jax.ShapeDtypeStruct((3, 3, 4, 4), jnp.float32))
  text = exported.mlir_module()
  assert "stablehlo.convolution" in text and "dot_general" not in text


def test_other_convolutions_go_to_lax_unchanged():
  """Groups, dilation or string padding: lax's convolution, same HLO."""
  x, w = jnp.ones((2, 2, 2, 4)), jnp.ones((3, 3, 2, 4))
  dn = lax.conv_dimension_numbers(x.shape, w.shape, NHWC)
  for kwargs in [dict(feature_group_count=2, padding=((1, 1), (1, 1))),
                 dict(padding="SAME", rhs_dilation=(1, 1))]:
    wk = w if "feature_group_count" in kwargs else jnp.ones((3, 3, 4, 4))
    ours = lambda x, w: convolution.conv_general_dilated(
        x, w, (1, 1), dimension_numbers=dn, **kwargs)
    ref = lambda x, w: lax.conv_general_dilated(
        x, w, (1, 1), dimension_numbers=dn, **kwargs)
    assert "convolution" in _hlo(ours, x, wk)
    np.testing.assert_array_equal(jax.jit(ours)(x, wk), jax.jit(ref)(x, wk))
