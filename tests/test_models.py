"""Tests for `jaxssl.models`: ResNet v1.5 encoders, global BatchNorm, heads.

Every expectation is independent of the code under test: parameter counts
are torchvision's published totals minus the classifier, or a layer-by-layer
count written here from the ResNet paper; BatchNorm and head outputs come from
numpy float64 formulas. Large models are only traced (`jax.eval_shape`), and
conv/dense kernels of the models that do run are drawn from numpy, because
XLA:CPU compiles the truncated-normal initialisers slowly.
"""

import functools

from flax import traverse_util
import jax
import jax.numpy as jnp
from jax.sharding import Mesh
from jax.sharding import PartitionSpec as P
import ml_collections
import numpy as np
import pytest

import mesh_runs
from jaxssl import config_utils
from jaxssl import models
from jaxssl.models.heads import ProjectionHead
from jaxssl.models.normalization import BatchNorm
from jaxssl.models.resnet import ResNet
from jaxssl.models.resnet import STAGE_SIZES

_EPS = 1e-5
_MOMENTUM = 0.9

# Blocks per stage from He et al. 2016 (Table 1) and, for ResNet-200,
# He et al. 2016b "Identity Mappings in Deep Residual Networks".
_PAPER_STAGES = {
    18: (2, 2, 2, 2),
    34: (3, 4, 6, 3),
    50: (3, 4, 6, 3),
    101: (3, 4, 23, 3),
    152: (3, 8, 36, 3),
    200: (3, 24, 36, 3),
}

# torchvision's published totals (resnetXX weights metadata `num_params`)
# minus the 1000-way classifier (C·1000 + 1000).
_TORCHVISION_NO_FC = {
    18: 11_689_512 - (512 * 1000 + 1000),
    34: 21_797_672 - (512 * 1000 + 1000),
    50: 25_557_032 - (2048 * 1000 + 1000),
    101: 44_549_160 - (2048 * 1000 + 1000),
    152: 60_192_808 - (2048 * 1000 + 1000),
}


# ----------------------------------------------------------------------------
# Helpers
# ----------------------------------------------------------------------------


def _count(tree):
  return sum(int(np.prod(leaf.shape)) for leaf in jax.tree.leaves(tree))


def _ref_resnet_params(depth, width=1, cifar_stem=False):
  """Layer-by-layer parameter count: bias-free convs, BN with γ and β.

  Every convolution's channel count is multiplied by `width`; a projection
  shortcut (1×1 conv + BN) wherever the shape changes.
  """
  w = int(64 * width)
  k = 3 if cifar_stem else 7
  total = k * k * 3 * w + 2 * w
  c_in = w
  for stage, num_blocks in enumerate(_PAPER_STAGES[depth]):
    f = w * 2**stage
    for block in range(num_blocks):
      stride = 2 if stage > 0 and block == 0 else 1
      if depth >= 50:
        c_out = 4 * f
        total += ((c_in * f + 2 * f) + (9 * f * f + 2 * f)
                  + (f * c_out + 2 * c_out))
      else:
        c_out = f
        total += (9 * c_in * f + 2 * f) + (9 * f * f + 2 * f)
      if c_in != c_out or stride != 1:
        total += c_in * c_out + 2 * c_out
      c_in = c_out
  return total


@functools.lru_cache(maxsize=None)
def _abstract_resnet(depth, width=1.0, cifar_stem=False, size=224):
  """Shapes of the variables and of the captured intermediates (no compute)."""
  model = ResNet(depth=depth, width_multiplier=width, cifar_stem=cifar_stem)
  x = jax.ShapeDtypeStruct((2, size, size, 3), jnp.float32)
  variables = jax.eval_shape(model.init, jax.random.key(0), x)

  def forward(v, x):
    return model.apply(v, x, capture_intermediates=True,
                       mutable=["batch_stats", "intermediates"])

  out, state = jax.eval_shape(forward, variables, x)
  return variables, out, state["intermediates"]


def _shape(intermediates, *path):
  node = intermediates
  for name in path:
    node = node[name]
  (out,) = node["__call__"]
  return tuple(out.shape)


def _init_fast(module, *args, seed=0):
  """Variables with the module's own init except kernels (numpy, He-scaled).

  The real init runs under `jit` returning every non-kernel variable, so XLA
  drops the (slow to compile) kernel initialisers as dead code.
  """
  key = jax.random.key(seed)
  abstract = jax.eval_shape(module.init, key, *args)

  def non_kernels(k, *a):
    flat = traverse_util.flatten_dict(module.init(k, *a))
    return {"/".join(p): v for p, v in flat.items() if p[-1] != "kernel"}

  real = jax.jit(non_kernels)(key, *args)
  rng = np.random.default_rng(seed)
  flat = {}
  for path, s in traverse_util.flatten_dict(abstract).items():
    if path[-1] == "kernel":
      fan_in = int(np.prod(s.shape[:-1]))
      flat[path] = jnp.asarray(rng.normal(size=s.shape) / np.sqrt(fan_in),
                               s.dtype)
    else:
      flat[path] = real["/".join(path)]
  return traverse_util.unflatten_dict(flat)


def _np_bn_train(x, scale, bias, eps=_EPS):
  """float64 training-mode BN over all but the last axis (biased variance)."""
  x = np.asarray(x, np.float64)
  axes = tuple(range(x.ndim - 1))
  mean = x.mean(axes)
  var = x.var(axes)
  y = (x - mean) / np.sqrt(var + eps)
  if scale is not None:
    y = y * scale
  if bias is not None:
    y = y + bias
  return y, mean, var


def _bn_input(rng, shape):
  """Channels with different means/scales; channel 3 has variance ~1e-6, so
  ε = 1e-5 dominates its normalisation (a wrong ε shows up). float64: the
  BatchNorm tests run in JAX's 64-bit mode (`mesh_runs.float64`)."""
  c = shape[-1]
  loc = np.array([0.0, 1.0, -2.0, 0.0, 0.5, 3.0])[:c]
  std = np.array([1.0, 3.0, 0.5, 1e-3, 2.0, 0.2])[:c]
  return loc + std * rng.normal(size=shape)


# ----------------------------------------------------------------------------
# ResNet: sizes and structure
# ----------------------------------------------------------------------------


@pytest.mark.parametrize("depth", sorted(_TORCHVISION_NO_FC))
def test_param_count_matches_torchvision(depth):
  """Params (no classifier) equal torchvision's count minus its fc layer, and
  the layer-by-layer formula here agrees; batch_stats hold 2 per BN channel."""
  variables, out, _ = _abstract_resnet(depth)
  assert _ref_resnet_params(depth) == _TORCHVISION_NO_FC[depth]
  assert _count(variables["params"]) == _TORCHVISION_NO_FC[depth]
  assert set(variables) == {"params", "batch_stats"}
  bn_params = sum(int(np.prod(v.shape)) for p, v in traverse_util.flatten_dict(
      variables["params"]).items() if p[-1] in ("scale", "bias"))
  assert _count(variables["batch_stats"]) == bn_params
  width = 2048 if depth >= 50 else 512
  assert out.shape == (2, width)
  assert ResNet(depth=depth).num_features == width


def test_resnet200_stage_sizes_and_count():
  """ResNet-200 has stages (3, 24, 36, 3), 2048 output features, and the
  layer-by-layer count (62.6M; 64.7M with the 1000-way fc)."""
  assert STAGE_SIZES[200] == (3, 24, 36, 3)
  variables, out, _ = _abstract_resnet(200)
  blocks = {}
  for name in variables["params"]:
    if name.startswith("stage"):
      stage, block = name[len("stage"):].split("_block")
      blocks[int(stage)] = max(blocks.get(int(stage), 0), int(block))
  assert tuple(blocks[s] for s in (1, 2, 3, 4)) == (3, 24, 36, 3)
  assert out.shape == (2, 2048)
  assert _count(variables["params"]) == _ref_resnet_params(200) == 62_624_832
  assert round((62_624_832 + 2048 * 1000 + 1000) / 1e5) == 647


@pytest.mark.parametrize("width,simclr_millions", [(2, 94), (4, 375)])
def test_wide_resnet50_count(width, simclr_millions):
  """R50 (2×)/(4×): every conv ×width, output 2048·width features, the exact
  layer-by-layer count, and SimCLR's rounded encoder sizes (94M / 375M)."""
  variables, out, _ = _abstract_resnet(50, float(width))
  count = _count(variables["params"])
  assert out.shape == (2, 2048 * width)
  assert ResNet(depth=50, width_multiplier=width).num_features == 2048 * width
  assert count == _ref_resnet_params(50, width)
  assert round(count / 1e6) == simclr_millions
  stem = variables["params"]["stem_conv"]["kernel"]
  assert stem.shape == (7, 7, 3, 64 * width)


def test_standard_stem_downsamples_224_to_56():
  """7×7 stride-2 conv (224 → 112) then 3×3 stride-2 max-pool (→ 56) before
  stage 1; the last feature map is 7×7 before global pooling."""
  variables, out, inter = _abstract_resnet(50)
  assert variables["params"]["stem_conv"]["kernel"].shape == (7, 7, 3, 64)
  assert _shape(inter, "stem_conv") == (2, 112, 112, 64)
  assert _shape(inter, "stem_bn") == (2, 112, 112, 64)
  # conv1 of the first block is 1×1 stride 1: its output size is its input's.
  assert _shape(inter, "stage1_block1", "conv1") == (2, 56, 56, 64)
  assert _shape(inter, "stage1_block1") == (2, 56, 56, 256)
  assert _shape(inter, "stage2_block1") == (2, 28, 28, 512)
  assert _shape(inter, "stage3_block1") == (2, 14, 14, 1024)
  assert _shape(inter, "stage4_block3") == (2, 7, 7, 2048)
  assert out.shape == (2, 2048)


def test_cifar_stem_keeps_resolution():
  """CIFAR stem: one 3×3 stride-1 conv, no max-pool: 32 px reach stage 1 and
  the last feature map is 4×4; parameters follow the 3×3-stem count."""
  variables, out, inter = _abstract_resnet(18, cifar_stem=True, size=32)
  assert variables["params"]["stem_conv"]["kernel"].shape == (3, 3, 3, 64)
  assert _shape(inter, "stem_conv") == (2, 32, 32, 64)
  assert _shape(inter, "stage1_block1", "conv1") == (2, 32, 32, 64)
  assert _shape(inter, "stage1_block2") == (2, 32, 32, 64)
  assert _shape(inter, "stage4_block2") == (2, 4, 4, 512)
  assert out.shape == (2, 512)
  assert _count(variables["params"]) == _ref_resnet_params(18, cifar_stem=True)


def test_bottleneck_stride_is_on_the_3x3_conv():
  """v1.5: in stage2_block1 the 1×1 conv1 keeps 56 px and the 3×3 conv2
  halves it; the projection shortcut is a strided 1×1 conv."""
  variables, _, inter = _abstract_resnet(50)
  params = variables["params"]["stage2_block1"]
  assert params["conv1"]["kernel"].shape == (1, 1, 256, 128)
  assert params["conv2"]["kernel"].shape == (3, 3, 128, 128)
  assert params["conv3"]["kernel"].shape == (1, 1, 128, 512)
  assert params["proj_conv"]["kernel"].shape == (1, 1, 256, 512)
  assert _shape(inter, "stage2_block1", "conv1") == (2, 56, 56, 128)
  assert _shape(inter, "stage2_block1", "conv2") == (2, 28, 28, 128)
  assert _shape(inter, "stage2_block1", "conv3") == (2, 28, 28, 512)
  assert _shape(inter, "stage2_block1", "proj_conv") == (2, 28, 28, 512)
  # Identity blocks have no projection.
  assert "proj_conv" not in variables["params"]["stage2_block2"]


def test_unsupported_depth_is_an_error():
  """A depth without a stage table raises ValueError naming it."""
  x = jax.ShapeDtypeStruct((1, 32, 32, 3), jnp.float32)
  with pytest.raises(ValueError, match="depth 42"):
    jax.eval_shape(ResNet(depth=42).init, jax.random.key(0), x)


# ----------------------------------------------------------------------------
# ResNet: initialisation (zero-γ residual branches)
# ----------------------------------------------------------------------------


@functools.lru_cache(maxsize=None)
def _tiny_resnet(depth):
  model = ResNet(depth=depth, width_multiplier=1 / 16, cifar_stem=True)
  x = jnp.asarray(np.random.default_rng(depth).normal(size=(4, 16, 16, 3)),
                  jnp.float32)
  return model, x, _init_fast(model, x, seed=depth)


@pytest.mark.parametrize("depth,last_bn", [(18, "bn2"), (50, "bn3")])
def test_last_bn_of_every_block_starts_at_zero(depth, last_bn):
  """γ = 0 for the last BN of each residual block (Goyal et al.), γ = 1 for
  every other BN; β = 0, running mean 0 and running var 1 everywhere."""
  _, _, variables = _tiny_resnet(depth)
  flat = traverse_util.flatten_dict(variables["params"])
  zero_scales = 0
  for path, value in flat.items():
    value = np.asarray(value)
    if path[-1] == "scale":
      if path[-2] == last_bn and path[0].startswith("stage"):
        np.testing.assert_array_equal(value, 0.0, err_msg=str(path))
        zero_scales += 1
      else:
        np.testing.assert_array_equal(value, 1.0, err_msg=str(path))
    elif path[-1] == "bias":
      np.testing.assert_array_equal(value, 0.0, err_msg=str(path))
  assert zero_scales == sum(_PAPER_STAGES[depth])
  for path, value in traverse_util.flatten_dict(
      variables["batch_stats"]).items():
    np.testing.assert_array_equal(np.asarray(value),
                                  0.0 if path[-1] == "mean" else 1.0)


@pytest.mark.parametrize("depth", [18, 50])
def test_residual_branches_are_zero_at_init(depth):
  """With the initial γ = 0 and random conv kernels, every block outputs
  relu(shortcut): relu(input) or relu(proj_bn(proj_conv(input)))."""
  model, x, variables = _tiny_resnet(depth)

  @jax.jit
  def forward(v, x):
    return model.apply(v, x, capture_intermediates=True,
                       mutable=["batch_stats", "intermediates"])

  out, state = forward(variables, x)
  inter = state["intermediates"]
  prev = np.maximum(np.asarray(inter["stem_bn"]["__call__"][0]), 0.0)
  num_proj = 0
  for stage, num_blocks in enumerate(_PAPER_STAGES[depth]):
    for block in range(num_blocks):
      node = inter[f"stage{stage + 1}_block{block + 1}"]
      got = np.asarray(node["__call__"][0])
      if "proj_bn" in node:
        shortcut = np.asarray(node["proj_bn"]["__call__"][0])
        num_proj += 1
      else:
        shortcut = prev
      assert np.abs(shortcut).max() > 0.1
      np.testing.assert_array_equal(got, np.maximum(shortcut, 0.0))
      prev = got
  assert num_proj == (4 if depth >= 50 else 3)
  assert prev.shape[1:3] == (2, 2)  # global average pooling over 2×2.
  np.testing.assert_allclose(np.asarray(out), prev.mean(axis=(1, 2)),
                             rtol=1e-6, atol=1e-7)


# ----------------------------------------------------------------------------
# BatchNorm (single device)
# ----------------------------------------------------------------------------


def _random_bn_variables(variables, rng, c):
  """Replaces γ, β and the running statistics by non-trivial values."""
  assert _shapes(variables) == {"params/scale": (c,), "params/bias": (c,),
                                "batch_stats/mean": (c,),
                                "batch_stats/var": (c,)}
  return {
      "params": {"scale": jnp.asarray(rng.uniform(0.5, 2.0, c)),
                 "bias": jnp.asarray(rng.normal(size=c))},
      "batch_stats": {
          "mean": jnp.asarray(rng.normal(size=c)),
          "var": jnp.asarray(rng.uniform(0.5, 2.0, c))},
  }


@pytest.mark.parametrize("shape", [(24, 5), (3, 4, 2, 6)])
@mesh_runs.float64()
def test_batchnorm_train_matches_numpy(shape):
  """Defaults momentum 0.9, ε 1e-5: output (x - μ)/√(σ² + ε)·γ + β with the
  biased batch variance, running stats ra ← 0.9·ra + 0.1·batch."""
  rng = np.random.default_rng(1)
  x = _bn_input(rng, shape)
  c = shape[-1]
  bn = BatchNorm(use_running_average=False)
  variables = bn.init(jax.random.key(0), x)
  assert set(variables["params"]) == {"scale", "bias"}
  assert set(variables["batch_stats"]) == {"mean", "var"}
  variables = _random_bn_variables(variables, rng, c)
  y, state = bn.apply(variables, x, mutable=["batch_stats"])

  scale = np.asarray(variables["params"]["scale"], np.float64)
  bias = np.asarray(variables["params"]["bias"], np.float64)
  want, mean, var = _np_bn_train(x, scale, bias)
  assert y.dtype == np.float64
  # One-pass variance E[x²] − E[x]² (as flax) loses ~1e-16·E[x²]/var of
  # relative accuracy: ~1e-10 on the low-variance channel.
  np.testing.assert_allclose(np.asarray(y), want, rtol=1e-9, atol=1e-9)
  ra_mean = np.asarray(variables["batch_stats"]["mean"], np.float64)
  ra_var = np.asarray(variables["batch_stats"]["var"], np.float64)
  np.testing.assert_allclose(np.asarray(state["batch_stats"]["mean"]),
                             _MOMENTUM * ra_mean + (1 - _MOMENTUM) * mean,
                             rtol=1e-13, atol=1e-14)
  np.testing.assert_allclose(np.asarray(state["batch_stats"]["var"]),
                             _MOMENTUM * ra_var + (1 - _MOMENTUM) * var,
                             rtol=1e-13, atol=1e-14)


@mesh_runs.float64()
def test_batchnorm_eval_uses_running_statistics():
  """Eval mode: at init (μ 0, σ² 1) the output is x/√(1 + ε)·γ + β; with other
  running stats (x - μ)/√(σ² + ε)·γ + β; running stats are left unchanged."""
  rng = np.random.default_rng(2)
  x = _bn_input(rng, (6, 5))
  bn = BatchNorm(use_running_average=True)
  init = bn.init(jax.random.key(0), x)
  np.testing.assert_array_equal(np.asarray(init["batch_stats"]["mean"]), 0.0)
  np.testing.assert_array_equal(np.asarray(init["batch_stats"]["var"]), 1.0)
  custom = _random_bn_variables(init, rng, 5)
  scale = np.asarray(custom["params"]["scale"], np.float64)
  bias = np.asarray(custom["params"]["bias"], np.float64)
  x64 = x.astype(np.float64)

  at_init = {"params": custom["params"], "batch_stats": init["batch_stats"]}
  y, state = bn.apply(at_init, x, mutable=["batch_stats"])
  np.testing.assert_allclose(np.asarray(y), x64 / np.sqrt(1 + _EPS) * scale
                             + bias, rtol=1e-14, atol=1e-14)
  np.testing.assert_array_equal(np.asarray(state["batch_stats"]["var"]), 1.0)

  y, state = bn.apply(custom, x, mutable=["batch_stats"])
  mean = np.asarray(custom["batch_stats"]["mean"], np.float64)
  var = np.asarray(custom["batch_stats"]["var"], np.float64)
  np.testing.assert_allclose(np.asarray(y), (x64 - mean) / np.sqrt(var + _EPS)
                             * scale + bias, rtol=1e-14, atol=1e-14)
  np.testing.assert_array_equal(np.asarray(state["batch_stats"]["mean"]),
                                np.asarray(custom["batch_stats"]["mean"]))
  # The batch statistics are not used: one example gives the same rows.
  y1 = bn.apply(custom, x[:1])
  np.testing.assert_allclose(np.asarray(y1), np.asarray(y)[:1], rtol=1e-15)


# ----------------------------------------------------------------------------
# BatchNorm across 8 devices (global and grouped statistics)
# ----------------------------------------------------------------------------

_PER_DEVICE = 3


def _sharded_bn(bn, variables, x):
  """`bn` in training mode inside shard_map over all 8 devices.

  Returns the global output and each device's updated running statistics
  (stacked `[8, C]`), so a device-dependent update would show.
  """
  mesh = Mesh(np.array(jax.devices()), ("data",))

  def f(v, x):
    y, state = bn.apply(v, x, mutable=["batch_stats"])
    return y, jax.tree.map(lambda a: a[None], state["batch_stats"])

  return jax.jit(jax.shard_map(f, mesh=mesh, in_specs=(P(), P("data")),
                               out_specs=(P("data"), P("data"))))(variables, x)


def _grouped_input(rng, c=4):
  """Global batch [8·3, C]; the second half of the devices gets shifted and
  scaled data, so per-group and global statistics differ. The ~1e-6-variance
  channel 3 is only scaled: a large mean would drown its variance in float32
  cancellation of E[x²] - E[x]² (one-pass variance, as in flax)."""
  x = _bn_input(rng, (8 * _PER_DEVICE, c))
  half = x[4 * _PER_DEVICE:]
  half *= 2.0
  half[:, [0, 1, 2]] += 3.0
  return x


@pytest.mark.parametrize("group_size,num_groups", [
    (None, None), (1, None), (2, None), (4, None), (8, None), (None, 4),
    (None, 1)])
@mesh_runs.float64()
def test_sharded_batchnorm_matches_numpy(group_size, num_groups):
  """Global BN (group_size None) normalises with the statistics of the whole
  global batch; group_size=k with those of its k devices' rows;
  num_groups=g with those of 8/g devices' rows (SwAV's groups of 512
  images). The running stats are the momentum update with the global-batch
  mean and variance (= mean over groups of the groups' E[x] and E[x²]),
  identical on every device."""
  rng = np.random.default_rng(3)
  x = _grouped_input(rng)
  c = x.shape[-1]
  bn = BatchNorm(use_running_average=False, axis_name="data",
                 group_size=group_size, num_groups=num_groups)
  variables = _random_bn_variables(bn.init(jax.random.key(0), x[:3]), rng, c)
  y, stats = _sharded_bn(bn, variables, x)

  scale = np.asarray(variables["params"]["scale"], np.float64)
  bias = np.asarray(variables["params"]["bias"], np.float64)
  devices = group_size or (8 // num_groups if num_groups else 8)
  rows = devices * _PER_DEVICE
  want = np.concatenate([_np_bn_train(x[i:i + rows], scale, bias)[0]
                         for i in range(0, len(x), rows)])
  assert y.dtype == np.float64
  np.testing.assert_allclose(np.asarray(y), want, rtol=1e-9, atol=1e-9)

  _, mean, var = _np_bn_train(x, None, None)
  ra_mean = np.asarray(variables["batch_stats"]["mean"], np.float64)
  ra_var = np.asarray(variables["batch_stats"]["var"], np.float64)
  want_mean = _MOMENTUM * ra_mean + (1 - _MOMENTUM) * mean
  want_var = _MOMENTUM * ra_var + (1 - _MOMENTUM) * var
  assert stats["mean"].shape == stats["var"].shape == (8, c)
  for device in range(8):
    np.testing.assert_allclose(np.asarray(stats["mean"][device]), want_mean,
                               rtol=1e-13, atol=1e-14)
    np.testing.assert_allclose(np.asarray(stats["var"][device]), want_var,
                               rtol=1e-13, atol=1e-14)


@mesh_runs.float64()
def test_global_batchnorm_equals_single_device_on_concatenated_batch():
  """BatchNorm(axis_name='data') over 8 devices gives the output and running
  stats of the plain BatchNorm applied to the concatenated batch."""
  rng = np.random.default_rng(4)
  x = _grouped_input(rng)
  local = BatchNorm(use_running_average=False)
  variables = _random_bn_variables(local.init(jax.random.key(0), x), rng, 4)
  want_y, want_state = local.apply(variables, x, mutable=["batch_stats"])
  y, stats = _sharded_bn(BatchNorm(use_running_average=False, axis_name="data"),
                         variables, x)
  assert y.dtype == np.float64
  np.testing.assert_allclose(np.asarray(y), np.asarray(want_y),
                             rtol=mesh_runs.RTOL, atol=mesh_runs.RTOL)
  for name in ("mean", "var"):
    np.testing.assert_allclose(
        np.asarray(stats[name]),
        np.broadcast_to(np.asarray(want_state["batch_stats"][name]), (8, 4)),
        rtol=mesh_runs.RTOL, atol=mesh_runs.RTOL)


@mesh_runs.float64()
def test_group_size_not_dividing_devices_is_an_error():
  """group_size=3 cannot split 8 devices into groups: ValueError."""
  rng = np.random.default_rng(5)
  x = _grouped_input(rng)
  bn = BatchNorm(use_running_average=False, axis_name="data", group_size=3)
  variables = bn.init(jax.random.key(0), x[:3])
  with pytest.raises(ValueError, match="group_size=3"):
    _sharded_bn(bn, variables, x)
  bn = BatchNorm(use_running_average=False, axis_name="data", num_groups=3)
  with pytest.raises(ValueError, match="bn_num_groups=3 BatchNorm groups "
                     "need a multiple of 3 devices"):
    _sharded_bn(bn, variables, x)


# ----------------------------------------------------------------------------
# Projection heads
# ----------------------------------------------------------------------------


def _shapes(tree):
  return {"/".join(p): tuple(v.shape)
          for p, v in traverse_util.flatten_dict(tree).items()}


@pytest.mark.parametrize("num_layers", [2, 3])
def test_projection_head_param_shapes(num_layers):
  """SimCLR v1 (2 layers) / v2 (3 layers) on 2048-d features: bias-free dense
  layers 2048→2048…→128, BN γ and β on hidden layers, only γ on the last."""
  head = ProjectionHead(num_layers=num_layers, out_dim=128)
  x = jax.ShapeDtypeStruct((4, 2048), jnp.float32)
  variables = jax.eval_shape(head.init, jax.random.key(0), x)
  want_params, want_stats = {}, {}
  for i in range(1, num_layers + 1):
    out = 128 if i == num_layers else 2048
    want_params[f"dense{i}/kernel"] = (2048, out)
    want_params[f"bn{i}/scale"] = (out,)
    if i < num_layers:
      want_params[f"bn{i}/bias"] = (out,)
    want_stats[f"bn{i}/mean"] = want_stats[f"bn{i}/var"] = (out,)
  assert _shapes(variables["params"]) == want_params
  assert _shapes(variables["batch_stats"]) == want_stats
  out = jax.eval_shape(lambda v, x: head.apply(v, x, mutable=["batch_stats"]),
                       variables, x)[0]
  assert out.shape == (4, 128) and out.dtype == jnp.float32


def _np_head(x, params, num_layers, use_bn, train, eps=_EPS, last_bn="scale"):
  """float64 head: dense → BN (batch or running μ 0, σ² 1) → ReLU but last.

  The last layer's BN: 'scale' γ only, 'affine' γ and β, 'plain' neither,
  'none' no BN (and a dense bias instead)."""
  h = np.asarray(x, np.float64)
  p = {k: np.asarray(v, np.float64)
       for k, v in traverse_util.flatten_dict(params, sep="/").items()}
  for i in range(1, num_layers + 1):
    last = i == num_layers
    h = h @ p[f"dense{i}/kernel"]
    if use_bn and not (last and last_bn == "none"):
      mode = last_bn if last else "affine"
      scale = np.ones(h.shape[-1]) if mode == "plain" else p[f"bn{i}/scale"]
      bias = p[f"bn{i}/bias"] if mode == "affine" else None
      if train:
        h = _np_bn_train(h, scale, bias, eps)[0]
      else:
        h = h / np.sqrt(1 + eps) * scale + (0 if bias is None else bias)
    else:
      h = h + p[f"dense{i}/bias"]
    if not last:
      h = np.maximum(h, 0.0)
  return h


def _random_params(module, x, seed):
  """Random values (γ around 1) in the shapes of `module`'s variables."""
  variables = jax.eval_shape(module.init, jax.random.key(0), x)
  rng = np.random.default_rng(seed)
  flat = {}
  for path, s in traverse_util.flatten_dict(variables["params"]).items():
    if path[-1] == "scale":
      value = rng.uniform(0.5, 2.0, s.shape)
    elif path[-1] == "kernel":
      value = rng.normal(size=s.shape) / np.sqrt(s.shape[0])
    else:
      value = rng.normal(size=s.shape)
    flat[path] = jnp.asarray(value, jnp.float32)
  return traverse_util.unflatten_dict(flat)


@pytest.mark.parametrize("num_layers,hidden_dim,train", [
    (2, 0, True), (3, 10, True), (3, 10, False)])
def test_projection_head_matches_numpy(num_layers, hidden_dim, train):
  """Train mode: batch-statistics BN; eval: running stats at init (μ 0, σ² 1).
  ReLU after every layer but the last (outputs can be negative); the last BN
  has no β; hidden_dim=0 means the input width."""
  rng = np.random.default_rng(6)
  x = jnp.asarray(rng.normal(size=(16, 6)) + 0.5, jnp.float32)
  head = ProjectionHead(num_layers=num_layers, hidden_dim=hidden_dim,
                        out_dim=3)
  params = _random_params(head, x, seed=num_layers)
  hidden = hidden_dim or 6
  assert params["dense1"]["kernel"].shape == (6, hidden)
  assert params[f"dense{num_layers}"]["kernel"].shape == (hidden, 3)
  stats = jax.jit(lambda k, x: head.init(k, x)["batch_stats"])(
      jax.random.key(0), x)
  y, _ = head.apply({"params": params, "batch_stats": stats}, x, train=train,
                    mutable=["batch_stats"])
  want = _np_head(x, params, num_layers, use_bn=True, train=train)
  np.testing.assert_allclose(np.asarray(y), want, rtol=1e-4, atol=1e-4)
  assert np.asarray(y).min() < -0.1


@pytest.mark.parametrize("last_bn,last_params", [
    ("none", {"dense3/bias"}),
    ("plain", set()),
    ("affine", {"bn3/scale", "bn3/bias"}),
    ("scale", {"bn3/scale"}),
])
def test_projection_head_last_layer_variants(last_bn, last_params):
  """BYOL/BT heads end in a dense layer with bias ('none'), SimSiam's
  projector in BN without affine ('plain'); hidden layers keep BN(γ, β) and
  no dense bias. Values against the float64 head in train and eval mode."""
  rng = np.random.default_rng(9)
  x = jnp.asarray(rng.normal(size=(16, 6)) + 0.5, jnp.float32)
  head = ProjectionHead(num_layers=3, hidden_dim=10, out_dim=4,
                        last_bn=last_bn)
  params = _random_params(head, x, seed=9)
  names = {"/".join(k) for k in traverse_util.flatten_dict(params)}
  assert {n for n in names if n.startswith(("dense3/", "bn3/"))} == (
      {"dense3/kernel"} | last_params)
  assert "dense1/bias" not in names and "bn1/bias" in names
  stats = jax.jit(lambda k, x: head.init(k, x).get("batch_stats"))(
      jax.random.key(0), x)
  assert ("bn3" in stats) == (last_bn != "none")
  for train in (True, False):
    y, _ = head.apply({"params": params, "batch_stats": stats}, x,
                      train=train, mutable=["batch_stats"])
    want = _np_head(x, params, 3, use_bn=True, train=train, last_bn=last_bn)
    np.testing.assert_allclose(np.asarray(y), want, rtol=1e-4, atol=1e-4)
  if last_bn == "plain":  # standardised over the batch
    y, _ = head.apply({"params": params, "batch_stats": stats}, x,
                      mutable=["batch_stats"])
    np.testing.assert_allclose(np.asarray(y).mean(0), 0.0, atol=1e-5)
    np.testing.assert_allclose(np.asarray(y).std(0), 1.0, rtol=1e-3)


def test_projection_head_bad_options_are_clear_errors():
  x = jnp.zeros((2, 3))
  with pytest.raises(ValueError, match="last_bn='gamma'"):
    ProjectionHead(last_bn="gamma").init(jax.random.key(0), x)
  with pytest.raises(ValueError, match="kernel_init='xavier'"):
    ProjectionHead(kernel_init="xavier").init(jax.random.key(0), x)


def test_projection_head_fan_in_init():
  """kernel_init='fan_in' (BYOL/PyTorch-like): std ≈ 1/√fan_in."""
  head = ProjectionHead(num_layers=2, hidden_dim=512, out_dim=256,
                        last_bn="none", kernel_init="fan_in")
  params = head.init(jax.random.key(0), jnp.zeros((2, 1024)))["params"]
  np.testing.assert_allclose(np.asarray(params["dense1"]["kernel"]).std(),
                             1 / np.sqrt(1024), rtol=0.03)
  np.testing.assert_allclose(np.asarray(params["dense2"]["kernel"]).std(),
                             1 / np.sqrt(512), rtol=0.03)
  np.testing.assert_array_equal(np.asarray(params["dense2"]["bias"]), 0.0)


def test_projection_head_without_bn_uses_dense_bias():
  """use_bn=False: dense layers with bias, no batch_stats, ReLU between."""
  rng = np.random.default_rng(7)
  x = jnp.asarray(rng.normal(size=(5, 6)), jnp.float32)
  head = ProjectionHead(num_layers=2, hidden_dim=8, out_dim=3, use_bn=False)
  variables = jax.eval_shape(head.init, jax.random.key(0), x)
  assert set(variables) == {"params"}
  assert _shapes(variables["params"]) == {
      "dense1/kernel": (6, 8), "dense1/bias": (8,),
      "dense2/kernel": (8, 3), "dense2/bias": (3,)}
  params = _random_params(head, x, seed=7)
  y = head.apply({"params": params}, x)
  np.testing.assert_allclose(np.asarray(y),
                             _np_head(x, params, 2, use_bn=False, train=True),
                             rtol=1e-5, atol=1e-5)


def test_projection_head_zero_layers_is_identity():
  """num_layers=0: no variables, the output is the input."""
  x = jnp.asarray(np.random.default_rng(8).normal(size=(3, 7)), jnp.float32)
  head = ProjectionHead(num_layers=0)
  variables = head.init(jax.random.key(0), x)
  assert not jax.tree.leaves(variables)
  np.testing.assert_array_equal(np.asarray(head.apply(variables, x)),
                                np.asarray(x))


def test_projection_head_init_values():
  """Dense kernels ~ N(0, 0.01²) (SimCLR reference), BN γ 1 and β 0."""
  x = jnp.zeros((2, 256), jnp.float32)
  head = ProjectionHead(num_layers=2, out_dim=128)
  params = jax.jit(head.init)(jax.random.key(0), x)["params"]
  kernel = np.asarray(params["dense1"]["kernel"], np.float64)
  assert kernel.shape == (256, 256)
  assert abs(kernel.mean()) < 2e-4  # standard error 0.01/256
  np.testing.assert_allclose(kernel.std(), 0.01, rtol=0.02)
  np.testing.assert_allclose(np.asarray(params["dense2"]["kernel"]).std(),
                             0.01, rtol=0.03)
  np.testing.assert_array_equal(np.asarray(params["bn1"]["scale"]), 1.0)
  np.testing.assert_array_equal(np.asarray(params["bn1"]["bias"]), 0.0)
  np.testing.assert_array_equal(np.asarray(params["bn2"]["scale"]), 1.0)


# ----------------------------------------------------------------------------
# Builders
# ----------------------------------------------------------------------------


def _model_cfg(**overrides):
  cfg = ml_collections.ConfigDict(dict(
      name="resnet", depth=18, width=2.0, cifar_stem=True, bn_momentum=0.99,
      bn_epsilon=1e-3, bn_group_size=0, dtype="float32", remat="none"))
  cfg.update(overrides)
  return cfg


def test_builders_pass_config_through():
  """create_encoder/create_head copy the config; bn_group_size 0 means
  all devices (None); out_dim 0 takes the default; an unknown encoder name
  is a ValueError."""
  enc = models.create_encoder(_model_cfg(), "data")
  assert (enc.depth, enc.width_multiplier, enc.cifar_stem) == (18, 2.0, True)
  assert (enc.bn_momentum, enc.bn_epsilon) == (0.99, 1e-3)
  assert enc.axis_name == "data" and enc.bn_group_size is None
  assert models.create_encoder(_model_cfg(bn_group_size=4),
                               None).bn_group_size == 4
  head_cfg = ml_collections.ConfigDict(dict(
      num_layers=3, hidden_dim=0, out_dim=64, use_bn=True, last_bn="plain",
      kernel_init="fan_in"))
  head = models.create_head(head_cfg, _model_cfg(bn_group_size=2), "data")
  assert (head.num_layers, head.hidden_dim, head.out_dim, head.use_bn,
          head.last_bn, head.kernel_init) == (3, 0, 64, True, "plain",
                                              "fan_in")
  assert (head.bn_momentum, head.bn_epsilon) == (0.99, 1e-3)
  assert head.axis_name == "data" and head.bn_group_size == 2
  with pytest.raises(ValueError, match="config.model.name='vgg'"):
    models.create_encoder(_model_cfg(name="vgg"), None)
  vit_cfg = config_utils.base_config().model
  vit_cfg.update(dict(name="vit", variant="tiny", patch_size=8,
                      pos_embed="learned", vit_image_size=32,
                      frozen_patch_embed=True, drop_path=0.1, remat="block"))
  enc = models.create_encoder(vit_cfg, "data")
  assert (enc.width, enc.depth, enc.heads, enc.patch_size, enc.pos_embed,
          enc.image_size, enc.frozen_patch_embed, enc.drop_path,
          enc.remat) == (192, 12, 3, 8, "learned", 32, True, 0.1, "block")
  vit_cfg.variant = "huge"
  with pytest.raises(ValueError, match="config.model.variant='huge'"):
    models.create_encoder(vit_cfg, None)
  head_cfg.out_dim = 0
  assert models.create_head(head_cfg, _model_cfg(), None,
                            default_out_dim=32).out_dim == 32
  with pytest.raises(ValueError, match="out_dim=0"):
    models.create_head(head_cfg, _model_cfg(), None)


def test_resnet_defaults_match_reference():
  """ResNet defaults: depth 50, width 1, momentum 0.9, ε 1e-5, local BN."""
  model = ResNet()
  assert (model.depth, model.width_multiplier, model.cifar_stem) == (
      50, 1.0, False)
  assert (model.bn_momentum, model.bn_epsilon) == (_MOMENTUM, _EPS)
  assert model.axis_name is None and model.bn_group_size is None


@mesh_runs.float64()
def test_layer_norm_resnet_keeps_examples_apart():
  """`model.norm='layer'` (CPC v2): each LayerNorm normalises one example's
  whole feature map (numpy formula: mean and variance over H, W and C,
  per-channel γ and β); the ResNet has no batch statistics, and an
  example's features do not depend on the rest of its batch (BatchNorm's
  do)."""
  from jaxssl.models import normalization  # pylint: disable=g-import-not-at-top
  rng = np.random.default_rng(3)
  x = rng.normal(size=(3, 4, 5, 6)) * 2 + 1
  ln = normalization.layer_norm_factory(epsilon=1e-5)()
  variables = jax.tree.map(lambda p: jnp.asarray(rng.normal(size=p.shape)),
                           ln.init(jax.random.key(0), x))
  mean = x.mean(axis=(1, 2, 3), keepdims=True)
  var = x.var(axis=(1, 2, 3), keepdims=True)
  want = ((x - mean) / np.sqrt(var + 1e-5) * variables["params"]["scale"]
          + variables["params"]["bias"])
  np.testing.assert_allclose(np.asarray(ln.apply(variables, x)), want,
                             rtol=1e-9, atol=1e-9)
  images = jnp.asarray(rng.uniform(size=(4, 16, 16, 3)))
  for norm, independent in (("layer", True), ("batch", False)):
    net = ResNet(depth=10, width_multiplier=0.125, cifar_stem=True, norm=norm)
    v = net.init(jax.random.key(1), images, train=True)
    assert ("batch_stats" in v) == (norm == "batch")
    full = net.apply(v, images, train=True, mutable=["batch_stats"])[0]
    alone = net.apply(v, images[:2], train=True, mutable=["batch_stats"])[0]
    assert np.allclose(full[:2], alone, rtol=1e-10) == independent, norm
  with pytest.raises(ValueError, match="config.model.norm='group'"):
    ResNet(depth=10, norm="group").init(jax.random.key(0), images)
