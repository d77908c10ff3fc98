"""Tests for SimCLR v2's SK ResNets (`ResNet(sk_ratio > 0)`,
`jaxssl.models.selective_kernel`).

Expectations are independent of the code under test: the encoder sizes of
the SimCLR v2 README table (google-research/simclr, "Param (M)" of Table 1
of Chen et al. 2020, arXiv 2006.10029) and a layer-by-layer count written
here; the selective-kernel convolution and the ResNet-D shortcut against
numpy float64 formulas (convolution by its definition, sums over each output
pixel's window). Large models are only traced (`jax.eval_shape`).
"""

import functools
import importlib.util
import json
import os
import subprocess
import sys

from flax import traverse_util
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import config_files
import mesh_runs
from jaxssl import config_utils
from jaxssl import export
from jaxssl import models
from jaxssl import sharding
from jaxssl import train
from jaxssl.models import selective_kernel as sk
from jaxssl.models.normalization import batch_norm_factory
from jaxssl.models.resnet import ResNet

_EPS = 1e-5
_SK_RATIO = 0.0625

# SimCLR v2 README table (= paper Table 1): (depth, width, SK) → Param (M).
_SIMCLR_V2_MILLIONS = {
    (50, 1, False): 24, (50, 1, True): 35, (50, 2, False): 94,
    (50, 2, True): 140, (101, 1, False): 43, (101, 1, True): 65,
    (101, 2, False): 170, (101, 2, True): 257, (152, 1, False): 58,
    (152, 1, True): 89, (152, 2, False): 233, (152, 2, True): 354,
    (152, 3, True): 795,
}
_STAGES = {10: (1, 1, 1, 1), 18: (2, 2, 2, 2), 50: (3, 4, 6, 3),
           101: (3, 4, 23, 3), 152: (3, 8, 36, 3)}


def _count(tree):
  return sum(int(np.prod(leaf.shape)) for leaf in jax.tree.leaves(tree))


def _ref_bottleneck_variables(depth, width, sk_on, bn_vars=4):
  """Variables of a bottleneck ResNet (no fc) layer by layer: bias-free
  convs, `bn_vars` per BN channel (γ, β, moving mean and variance).

  SK (SimCLR v2 reference): stem 3×3 convs 3 → w/2 → w/2 → w; the 3×3 of
  each block one conv to 2f, BN(2f), 1×1 f → m = max(f/16, 32), BN(m), 1×1
  m → 2f; projections 1×1 (after the average pool) as without SK.
  """
  w = 64 * width
  if sk_on:
    total = (9 * 3 * w // 2 + 9 * (w // 2) ** 2 + 9 * (w // 2) * w
             + bn_vars * (w // 2 + w // 2 + w))
  else:
    total = 49 * 3 * w + bn_vars * w
  c_in = w
  for stage, blocks in enumerate(_STAGES[depth]):
    f = w * 2**stage
    for block in range(blocks):
      total += c_in * f + f * 4 * f + bn_vars * (f + 4 * f)
      if sk_on:
        m = max(int(f * _SK_RATIO), 32)
        total += 9 * f * 2 * f + bn_vars * 2 * f + f * m + bn_vars * m + m * 2 * f
      else:
        total += 9 * f * f + bn_vars * f
      if block == 0:
        total += c_in * 4 * f + bn_vars * 4 * f
      c_in = 4 * f
  return total


@functools.lru_cache(maxsize=None)
def _abstract(depth, width, sk_on, size=64):
  model = ResNet(depth=depth, width_multiplier=width,
                 sk_ratio=_SK_RATIO if sk_on else 0.0)
  x = jax.ShapeDtypeStruct((1, size, size, 3), jnp.float32)
  return jax.eval_shape(model.init, jax.random.key(0), x)


# ----------------------------------------------------------------------------
# Sizes: the SimCLR v2 table
# ----------------------------------------------------------------------------


@pytest.mark.parametrize("depth,width,sk_on", sorted(_SIMCLR_V2_MILLIONS))
def test_encoder_size_matches_simclr_v2_table(depth, width, sk_on):
  """All 13 rows of "Param (M)" are the encoder's variables WITHOUT the
  1000-way classifier and WITH every BatchNorm variable: γ, β and the moving
  mean and variance (what the released TF checkpoints hold), rounded to the
  nearest million. Counting γ and β only matches 11 rows (R152 2×: 232.25M
  for 233, R152 2×+SK: 353.40M for 354, `test_...reading_is_all_variables`);
  with the classifier no row matches (R50 1×: 25.6M for 24). The exact count
  also equals the layer-by-layer formula."""
  variables = _abstract(depth, width, sk_on)
  total = _count(variables["params"]) + _count(variables["batch_stats"])
  assert total == _ref_bottleneck_variables(depth, width, sk_on)
  assert _count(variables["params"]) == _ref_bottleneck_variables(
      depth, width, sk_on, bn_vars=2)
  assert round(total / 1e6) == _SIMCLR_V2_MILLIONS[depth, width, sk_on], (
      total / 1e6)


def test_simclr_v2_table_reading_is_all_variables():
  """γ/β-only counts (trainable parameters) miss exactly two rows."""
  missed = sorted(key for key, millions in _SIMCLR_V2_MILLIONS.items()
                  if round(_count(_abstract(*key)["params"]) / 1e6)
                  != millions)
  assert missed == [(152, 2, False), (152, 2, True)]


def test_sk_layer_shapes_r152_3x():
  """R152 3×+SK: deep stem 3 → 96 → 96 → 192; stage 4's SK conv 1536 →
  2 × 1536, mixing layer 96 = 1536/16 wide; stage 1's stays at the floor
  of 32 (192/16 = 12); ResNet-D projections are stride-free 1×1s."""
  p = _abstract(152, 3, True)["params"]
  assert p["stem_conv1"]["kernel"].shape == (3, 3, 3, 96)
  assert p["stem_conv2"]["kernel"].shape == (3, 3, 96, 96)
  assert p["stem_conv3"]["kernel"].shape == (3, 3, 96, 192)
  assert "stem_conv" not in p
  s4 = p["stage4_block1"]["sk_conv"]
  assert s4["conv"]["kernel"].shape == (3, 3, 1536, 3072)
  assert s4["reduce_conv"]["kernel"].shape == (1, 1, 1536, 96)
  assert s4["expand_conv"]["kernel"].shape == (1, 1, 96, 3072)
  assert p["stage1_block1"]["sk_conv"]["reduce_conv"]["kernel"].shape == (
      1, 1, 192, 32)
  assert p["stage4_block1"]["pool_proj_conv"]["kernel"].shape == (
      1, 1, 3072, 6144)
  assert set(p["stage4_block2"]) == {"conv1", "bn1", "sk_conv", "conv3",
                                     "bn3"}
  assert sk.sk_mid_dim(64, _SK_RATIO) == 32
  assert sk.sk_mid_dim(2048, _SK_RATIO) == 128


def test_sk_resnet_shapes_224():
  """Deep stem halves 224 once (112), the max-pool again (56); the SK conv
  carries the v1.5 stride (stage 2: 56 → 28); 2048 features."""
  model = ResNet(depth=50, sk_ratio=_SK_RATIO)
  x = jax.ShapeDtypeStruct((2, 224, 224, 3), jnp.float32)
  variables = jax.eval_shape(model.init, jax.random.key(0), x)
  _, state = jax.eval_shape(
      lambda v, x: model.apply(v, x, capture_intermediates=True,
                               mutable=["batch_stats", "intermediates"]),
      variables, x)
  inter = state["intermediates"]
  out = lambda *path: functools.reduce(
      lambda n, k: n[k], path, inter)["__call__"][0].shape
  assert out("stem_conv1") == (2, 112, 112, 32)
  assert out("stem_conv3") == (2, 112, 112, 64)
  assert out("stage1_block1", "conv1") == (2, 56, 56, 64)
  assert out("stage2_block1", "sk_conv") == (2, 28, 28, 128)
  assert out("stage2_block1", "pool_proj_conv") == (2, 28, 28, 512)
  assert out("stage4_block3") == (2, 7, 7, 2048)


def test_basic_blocks_get_resnet_d_shortcuts_only():
  """ResNet-18 + SK (the reference's tf2 residual block): no selective
  kernel; projecting blocks average-pool; the CIFAR stem stays one 3×3.
  (One difference from the reference: its first block of stage 1 projects
  even where the shape does not change; ours keeps the identity there, as
  our plain ResNet-18 does. No SimCLR v2 table row has basic blocks.)"""
  model = ResNet(depth=18, cifar_stem=True, sk_ratio=_SK_RATIO)
  x = jax.ShapeDtypeStruct((1, 32, 32, 3), jnp.float32)
  p = jax.eval_shape(model.init, jax.random.key(0), x)["params"]
  plain = jax.eval_shape(ResNet(depth=18, cifar_stem=True).init,
                         jax.random.key(0), x)["params"]
  assert p["stem_conv"]["kernel"].shape == (3, 3, 3, 64)
  assert set(p["stage1_block1"]) == {"conv1", "bn1", "conv2", "bn2"}
  assert set(p["stage2_block1"]) == {"conv1", "bn1", "conv2", "bn2",
                                     "pool_proj_conv", "pool_proj_bn"}
  assert _count(p) == _count(plain)


# ----------------------------------------------------------------------------
# sk_ratio = 0: the ResNet of before
# ----------------------------------------------------------------------------


def test_sk_ratio_zero_keeps_the_plain_resnet50():
  """Names and sizes of ResNet-50's parameters are those without SK (and
  torchvision's 23,508,032 without fc)."""
  variables = _abstract(50, 1, False)
  assert _count(variables["params"]) == 23_508_032
  p = variables["params"]
  assert sorted(p)[:3] == ["stage1_block1", "stage1_block2", "stage1_block3"]
  assert {"stem_conv", "stem_bn"} <= set(p) and len(p) == 18
  assert set(p["stage1_block1"]) == {"conv1", "bn1", "conv2", "bn2", "conv3",
                                     "bn3", "proj_conv", "proj_bn"}
  assert p["stage2_block1"]["proj_conv"]["kernel"].shape == (1, 1, 256, 512)


def _numpy_variables(abstract, seed):
  """Every variable drawn from numpy (float64): He-scaled kernels, γ and
  running variances in [0.5, 1.5], β and running means ~ 0.1·N(0, 1)."""
  rng = np.random.default_rng(seed)
  flat = {}
  for path, s in sorted(traverse_util.flatten_dict(abstract).items()):
    if path[-1] == "kernel":
      v = rng.normal(size=s.shape) / np.sqrt(np.prod(s.shape[:-1]))
    elif path[-1] in ("scale", "var"):
      v = rng.uniform(0.5, 1.5, s.shape)
    else:
      v = rng.normal(size=s.shape) * 0.1
    flat[path] = jnp.asarray(v, jnp.float64)
  return traverse_util.unflatten_dict(flat)


@mesh_runs.float64()
def test_sk_ratio_zero_outputs_are_unchanged():
  """A tiny ResNet-50 (width 1/16, 32 px, ImageNet stem) with numpy
  variables gives the features recorded from the code before SK ResNets
  (commit f0c295a), in eval and train mode."""
  model = ResNet(depth=50, width_multiplier=1 / 16, sk_ratio=0.0)
  x = np.random.default_rng(0).normal(size=(2, 32, 32, 3))
  variables = _numpy_variables(
      jax.eval_shape(model.init, jax.random.key(0), x), seed=1)
  ev = np.asarray(jax.jit(lambda v, x: model.apply(v, x, train=False))(
      variables, x))
  tr = np.asarray(jax.jit(lambda v, x: model.apply(
      v, x, train=True, mutable=["batch_stats"])[0])(variables, x))
  got = [ev.sum(), (ev**2).sum(), tr.sum(), (tr**2).sum()]
  np.testing.assert_allclose(got, [109.83591217669883, 149.1934538210926,
                                   292.21331447389207, 697.4945431658778],
                             rtol=1e-10)
  np.testing.assert_allclose(ev[0, 1:4], [0.14271128714872328,
                                          0.44208712387121063,
                                          0.46950708723989587], rtol=1e-10)


# ----------------------------------------------------------------------------
# Selective kernel and ResNet-D shortcut against numpy (float64)
# ----------------------------------------------------------------------------


def _np_conv(x, kernel, stride, pad, dilation=1):
  """NHWC ⊛ HWIO by definition: each output pixel sums its (dilated)
  window of the zero-padded input times the kernel."""
  kh, kw = kernel.shape[:2]
  xp = np.pad(x, ((0, 0), (pad, pad), (pad, pad), (0, 0)))
  oh = (xp.shape[1] - dilation * (kh - 1) - 1) // stride + 1
  ow = (xp.shape[2] - dilation * (kw - 1) - 1) // stride + 1
  out = np.zeros((x.shape[0], oh, ow, kernel.shape[-1]))
  for i in range(oh):
    for j in range(ow):
      window = xp[:, i * stride:i * stride + dilation * (kh - 1) + 1:dilation,
                  j * stride:j * stride + dilation * (kw - 1) + 1:dilation]
      out[:, i, j] = np.einsum("nabc,abco->no", window, kernel)
  return out


def _np_bn(x, p, s, train):
  """BN over all but the channel axis: batch statistics (biased variance)
  in train mode, the running ones `s` in eval mode."""
  axes = tuple(range(x.ndim - 1))
  mean, var = ((x.mean(axes), x.var(axes)) if train
               else (np.asarray(s["mean"]), np.asarray(s["var"])))
  return (x - mean) / np.sqrt(var + _EPS) * np.asarray(p["scale"]) + np.asarray(
      p["bias"])


def _np_sk_conv(x, p, s, *, filters, stride, branches, train):
  """Selective kernel (SimCLR v2 `sk_conv2d`; SKNet's two kernels)."""
  k = lambda name: np.asarray(p[name]["kernel"])
  if branches == "split":
    u = _np_conv(x, k("conv"), stride, 1)
  else:
    u = np.concatenate([_np_conv(x, k("conv"), stride, 1),
                        _np_conv(x, k("conv_dilated"), stride, 2, 2)], -1)
  u = np.maximum(_np_bn(u, p["bn"], s["bn"], train), 0)
  u1, u2 = u[..., :filters], u[..., filters:]
  z = (u1 + u2).mean(axis=(1, 2)) @ k("reduce_conv")[0, 0]
  z = np.maximum(_np_bn(z, p["reduce_bn"], s["reduce_bn"], train), 0)
  logits = z @ k("expand_conv")[0, 0]
  l1, l2 = logits[:, :filters], logits[:, filters:]
  a1 = (1 / (1 + np.exp(l2 - l1)))[:, None, None]  # softmax over 2 streams
  return a1 * u1 + (1 - a1) * u2


def _norm(train):
  return batch_norm_factory(train=train, momentum=0.9, epsilon=_EPS,
                            axis_name=None, group_size=None)


@pytest.mark.parametrize("branches", sk.SK_BRANCHES)
@pytest.mark.parametrize("stride", [1, 2])
@pytest.mark.parametrize("train", [True, False])
@mesh_runs.float64()
def test_sk_conv_matches_numpy(branches, stride, train):
  """7×7 input (odd: stride 2 → 4×4), 5 → 3 channels, mid 32 (the floor);
  random kernels, γ, β and running statistics."""
  x = np.random.default_rng(0).normal(size=(4, 7, 7, 5))
  module = sk.SelectiveKernelConv(3, stride, _SK_RATIO, _norm(train),
                                  branches=branches)
  variables = _numpy_variables(
      jax.eval_shape(module.init, jax.random.key(0), x), seed=stride)
  p, s = variables["params"], variables["batch_stats"]
  assert p["reduce_conv"]["kernel"].shape == (1, 1, 3, 32)
  got = jax.jit(lambda v, x: module.apply(v, x, mutable=["batch_stats"])[0])(
      variables, x)
  want = _np_sk_conv(x, p, s, filters=3, stride=stride, branches=branches,
                     train=train)
  assert got.shape == want.shape == (4, 4 if stride == 2 else 7,
                                     4 if stride == 2 else 7, 3)
  np.testing.assert_allclose(np.asarray(got), want, rtol=1e-12, atol=1e-12)


def test_dilated_branches_have_the_split_parameter_count():
  x = jax.ShapeDtypeStruct((2, 8, 8, 16), jnp.float32)
  counts = [_count(jax.eval_shape(
      sk.SelectiveKernelConv(24, 1, _SK_RATIO, _norm(True),
                             branches=b).init, jax.random.key(0), x))
            for b in sk.SK_BRANCHES]
  assert counts[0] == counts[1] == (9 * 16 * 48 + 4 * 48 + 24 * 32 + 4 * 32
                                    + 32 * 48)


class _Shortcut(nn.Module):
  strides: int

  @nn.compact
  def __call__(self, x):
    return sk.avg_pool_shortcut(x, 4, self.strides, sk.conv_factory(None),
                                _norm(False))


def _np_avg_pool_shortcut(x, p, s, stride):
  """2×2 means: stride 2 over the input padded with one zero row/column at
  the end (zeros counted); stride 1 over the in-bounds pixels of each
  window (TF 'SAME': padding not counted). Then 1×1 conv, BN (eval)."""
  n, h, w, c = x.shape
  if stride == 2:
    xp = np.pad(x, ((0, 0), (0, 1), (0, 1), (0, 0)))
    pooled = np.stack([np.stack([
        xp[:, 2 * i:2 * i + 2, 2 * j:2 * j + 2].mean(axis=(1, 2))
        for j in range((w + 1) // 2)], 1) for i in range((h + 1) // 2)], 1)
  else:
    pooled = np.stack([np.stack([
        x[:, i:i + 2, j:j + 2].mean(axis=(1, 2))  # clipped at the edge
        for j in range(w)], 1) for i in range(h)], 1)
  y = pooled @ np.asarray(p["pool_proj_conv"]["kernel"])[0, 0]
  return _np_bn(y, p["pool_proj_bn"], s["pool_proj_bn"], train=False)


@pytest.mark.parametrize("stride", [1, 2])
@pytest.mark.parametrize("hw", [(5, 5), (6, 7)])
@mesh_runs.float64()
def test_resnet_d_shortcut_matches_numpy(stride, hw):
  x = np.random.default_rng(1).normal(size=(2, *hw, 3))
  module = _Shortcut(stride)
  variables = _numpy_variables(
      jax.eval_shape(module.init, jax.random.key(0), x), seed=2)
  got = np.asarray(jax.jit(module.apply)(variables, x))
  want = _np_avg_pool_shortcut(x, variables["params"],
                               variables["batch_stats"], stride)
  assert got.shape == want.shape
  np.testing.assert_allclose(got, want, rtol=1e-12, atol=1e-12)


# ----------------------------------------------------------------------------
# Tiny SK ResNets: init, train-mode forward/backward, remat
# ----------------------------------------------------------------------------


@pytest.mark.parametrize("depth", [18, 50])
def test_last_bn_gamma_starts_at_zero(depth):
  """γ = 0 for the last BN of each residual block (bn2 / bn3), 1 for every
  other BN (SK conv's two, ResNet-D shortcut's, deep stem's)."""
  model = ResNet(depth=depth, width_multiplier=1 / 16, sk_ratio=_SK_RATIO)
  x = jnp.zeros((2, 32, 32, 3))

  def scales(key, x):  # no kernels: XLA drops their slow initialisers
    flat = traverse_util.flatten_dict(model.init(key, x)["params"])
    return {"/".join(k): v for k, v in flat.items() if k[-1] == "scale"}

  found = jax.jit(scales)(jax.random.key(0), x)
  last = "bn3" if depth >= 50 else "bn2"
  zero = {k for k in found if k.startswith("stage") and f"/{last}/" in k}
  assert len(zero) == sum(_STAGES[depth])
  for k, v in found.items():
    np.testing.assert_array_equal(np.asarray(v), 0.0 if k in zero else 1.0,
                                  err_msg=k)
  if depth >= 50:
    assert "stage3_block2/sk_conv/reduce_bn/scale" in found
  assert "stem_bn1/scale" in found and "stage2_block1/pool_proj_bn/scale" in (
      found)


@pytest.mark.parametrize("depth,cifar_stem", [(10, False), (50, True)])
@mesh_runs.float64()
def test_train_step_with_and_without_remat_agree(depth, cifar_stem):
  """Train-mode forward and backward (loss = Σ features · r) of a tiny SK
  ResNet: finite, non-zero gradients for every kernel (the zero-γ blocks
  made non-trivial), and remat='block' gives the same features, gradients
  and BN statistics as no remat (float64)."""
  x = np.random.default_rng(3).normal(size=(4, 16, 16, 3))
  outs = []
  for remat in ("none", "block"):
    model = ResNet(depth=depth, width_multiplier=1 / 16,
                   cifar_stem=cifar_stem, sk_ratio=_SK_RATIO, remat=remat)
    variables = _numpy_variables(
        jax.eval_shape(model.init, jax.random.key(0), x), seed=4)
    r = np.random.default_rng(5).normal(size=(4, model.num_features))

    def loss(params, stats, x):
      feats, new = model.apply({"params": params, "batch_stats": stats}, x,
                               train=True, mutable=["batch_stats"])
      return jnp.sum(feats * r), (feats, new["batch_stats"])

    (_, (feats, stats)), grads = jax.jit(jax.value_and_grad(
        loss, has_aux=True))(variables["params"], variables["batch_stats"], x)
    outs.append((feats, grads, stats))
  (feats, grads, _), other = outs
  assert feats.shape == (4, 128 if depth >= 50 else 32)
  for path, g in traverse_util.flatten_dict(grads).items():
    assert np.all(np.isfinite(g)), path
    if path[-1] == "kernel":
      assert np.abs(g).max() > 0, path
  jax.tree.map(lambda a, b: np.testing.assert_allclose(
      np.asarray(a), np.asarray(b), rtol=1e-10, atol=1e-13), outs[0], other)


# ----------------------------------------------------------------------------
# Config and export
# ----------------------------------------------------------------------------


def test_config_sk_ratio_reaches_the_encoder():
  """`model.sk_ratio` (default 0: the plain ResNet) and `model.sk_branches`
  are passed to `ResNet`; configs without the keys build a plain ResNet."""
  cfg = config_utils.base_config().model
  assert (cfg.sk_ratio, cfg.sk_branches) == (0.0, "split")
  enc = models.create_encoder(cfg, None)
  assert (enc.sk_ratio, enc.sk_branches) == (0.0, "split")
  cfg.update(dict(sk_ratio=_SK_RATIO, sk_branches="dilated"))
  enc = models.create_encoder(cfg, "data")
  assert (enc.sk_ratio, enc.sk_branches) == (_SK_RATIO, "dilated")
  del cfg["sk_ratio"], cfg["sk_branches"]
  assert models.create_encoder(cfg, None).sk_ratio == 0.0


def test_bad_sk_options_are_errors():
  x = jax.ShapeDtypeStruct((1, 32, 32, 3), jnp.float32)
  for kwargs, match in [(dict(sk_ratio=-0.1), "sk_ratio=-0.1"),
                        (dict(sk_ratio=0.1, sk_branches="3x3"),
                         "sk_branches='3x3'")]:
    with pytest.raises(ValueError, match=match):
      jax.eval_shape(ResNet(depth=18, **kwargs).init, jax.random.key(0), x)


@pytest.mark.parametrize("depth,cifar_stem", [(50, False), (18, True)])
def test_torchvision_export_refuses_sk_resnets(depth, cifar_stem):
  """torchvision has no SK ResNet: a clear ValueError, also for a ResNet-18
  with the CIFAR stem, whose only change is the ResNet-D shortcuts."""
  variables = jax.eval_shape(
      ResNet(depth=depth, cifar_stem=cifar_stem, sk_ratio=_SK_RATIO).init,
      jax.random.key(0), jax.ShapeDtypeStruct((1, 32, 32, 3), jnp.float32))
  variables = jax.tree.map(lambda s: np.zeros(s.shape, s.dtype), variables)
  with pytest.raises(ValueError, match="torchvision has no SK ResNet"):
    export.torchvision_state_dict(variables, depth)


def test_simclr_config_depth_width_sk_variants():
  """`configs/simclr_resnet50.py:v2,depth=152,width=3,sk` is SimCLR v2's
  R152 (3×+SK) with the 3-layer head; other depths and widths are errors
  naming the variant; `:runlocal` keeps shrinking to the ResNet-10/8 and
  keeps `sk`."""
  _, c = config_files.load("simclr_resnet50", "v2,depth=152,width=3,sk")
  assert (c.model.depth, c.model.width, c.model.sk_ratio, c.model.cifar_stem,
          c.head.num_layers, c.batch_size) == (152, 3.0, _SK_RATIO, False, 3,
                                               4096)
  _, c = config_files.load("simclr_resnet50")
  assert (c.model.depth, c.model.width, c.model.sk_ratio) == (50, 1.0, 0.0)
  for variant in ("depth=34", "width=4"):
    with pytest.raises(ValueError, match=f"config variant {variant} "):
      config_files.load("simclr_resnet50", variant)
  _, c = config_files.load("simclr_resnet50", "runlocal,sk,depth=152,width=3")
  assert (c.model.depth, c.model.width, c.model.cifar_stem,
          c.model.sk_ratio, c.batch_size) == (10, 0.125, True, _SK_RATIO, 64)
  train.check_config(c, sharding.data_mesh())
  encoder = models.create_encoder(c.model, None)
  params = jax.eval_shape(encoder.init, jax.random.key(0), jax.ShapeDtypeStruct(
      (1, 32, 32, 3), jnp.float32))["params"]
  assert "pool_proj_conv" in params["stage2_block1"]


# ----------------------------------------------------------------------------
# Benchmark tools (tools/bench_learners.py, tools/bench_step.py)
# ----------------------------------------------------------------------------


def _bench_learners():
  spec = importlib.util.spec_from_file_location(
      "bench_learners", os.path.join(config_files.REPO, "tools",
                                     "bench_learners.py"))
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module


def test_bench_learner_is_the_simclr_v2_sk_config():
  """`make_learner('simclr', width=, sk_ratio=, head_layers=3)` has the
  train state of `configs/simclr_resnet50.py:v2,sk,width=2` without the
  memory (`loss.memory=False`: the benchmarks measure the online
  network's step), shape for shape."""
  _, config = config_files.load("simclr_resnet50", "v2,sk,width=2")
  config.probe.enabled = False  # the online probe is not benchmarked
  config.loss.memory = False
  built = train.create_learner(config, num_examples=1_281_167)
  bench = _bench_learners().make_learner(
      "simclr", depth=50, width=2.0, sk_ratio=_SK_RATIO, head_layers=3,
      image_size=224, microbatches=4, microbatch_loop="scan")
  assert (bench.microbatches, bench.microbatch_loop) == (4, "scan")
  assert (mesh_runs.train_state_shapes(bench)
          == mesh_runs.train_state_shapes(built))


def test_bench_step_memory_only_compiles_without_running(tmp_path):
  """`--memory_only` prints and writes XLA's estimate of a micro-batched
  SK step (tiny: ResNet-10/8, 8 px, on the 8 CPU devices)."""
  out = tmp_path / "rows.jsonl"
  run = subprocess.run(
      [sys.executable, os.path.join(config_files.REPO, "tools",
                                    "bench_step.py"),
       "--memory_only", "--depth=10", "--width=0.125", "--sk_ratio=0.0625",
       "--head_layers=3", "--cifar", "--image_size=8", "--augment=false",
       "--dtype=float32", "--batch_size=32", "--microbatches=2",
       "--microbatch_loop=scan", "--remat=block", f"--json={out}"],
      check=True, timeout=600, capture_output=True, text=True)
  (row,) = [json.loads(line) for line in out.read_text().splitlines()]
  assert row["model"] == "R10 (0.125×+SK)" and row["device"].startswith("8× ")
  assert (row["batch_size"], row["microbatches"], row["remat"]) == (32, 2,
                                                                    "block")
  assert 0 < row["argument_gib"] <= row["xla_memory_gib"]
  assert "GiB per device" in run.stdout
