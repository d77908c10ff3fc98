"""The Vision Transformer: timm's parameter counts and features, position
embeddings, the frozen patch projection, drop-path, the timm export."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import config_files
import mesh_runs
from jaxssl import epochs
from jaxssl import export
from jaxssl import methods
from jaxssl import freezing
from jaxssl.models import vit


def _count(tree) -> int:
  return sum(int(np.prod(x.shape)) for x in jax.tree.leaves(tree))


def _shapes(model, size):
  return jax.eval_shape(lambda: model.init(
      jax.random.key(0), jnp.zeros((1, size, size, 3)), train=False))


def _formula_count(width, depth, patch, size):
  """Parameters of a timm ViT without its classifier, counted by hand:
  patch projection, class token, learned position table, per block two
  LayerNorms, qkv, proj, fc1 (4×), fc2, and the final LayerNorm."""
  tokens = (size // patch) ** 2 + 1
  block = (4 * width + 3 * width * width + 3 * width + width * width + width
           + 4 * width * width + 4 * width + 4 * width * width + width)
  return (width * 3 * patch * patch + width + width + tokens * width
          + depth * block + 2 * width)


@pytest.mark.parametrize("variant,published", [
    # timm `vit_small_patch16_224` / `vit_base_patch16_224` with
    # num_classes=0 (22,050,664 and 86,567,656 with the 1000-class head).
    ("small", 21_665_664), ("base", 85_798_656)])
def test_parameter_counts_equal_timms(variant, published):
  model = vit.create(variant, patch_size=16, pos_embed="learned")
  count = _count(_shapes(model, 224)["params"])
  width, depth, _ = vit.VARIANTS[variant]
  assert count == published == _formula_count(width, depth, 16, 224)
  # The fixed sin-cos table is no parameter (timm stores it as a frozen one).
  sincos = vit.create(variant, patch_size=16, pos_embed="sincos")
  assert _count(_shapes(sincos, 224)["params"]) == published - 197 * width


def test_sincos_table_is_moco_v3s():
  """Row r·g + c is [sin(r·ω), cos(r·ω), sin(c·ω), cos(c·ω)], ω_i = 10⁴^(−i/q)
  (MoCo v3 `build_2d_sincos_position_embedding`), checked entry by entry."""
  g, d = 3, 8
  table = vit.sincos_2d(g, d)
  assert table.shape == (9, 8)
  q = d // 4
  for r in range(g):
    for c in range(g):
      for i in range(q):
        w = 10000.0 ** (-i / q)
        np.testing.assert_allclose(
            table[r * g + c, [i, q + i, 2 * q + i, 3 * q + i]],
            [np.sin(r * w), np.cos(r * w), np.sin(c * w), np.cos(c * w)],
            rtol=1e-15, atol=1e-15)


def _tiny(**kwargs):
  kwargs.setdefault("patch_size", 8)
  return vit.VisionTransformer(width=16, depth=2, heads=2, image_size=32,
                               **kwargs)


@mesh_runs.float64()
def test_frozen_patch_projection_gets_no_gradient():
  x = jax.random.uniform(jax.random.key(1), (2, 32, 32, 3))
  grads = {}
  for frozen in (False, True):
    model = _tiny(frozen_patch_embed=frozen)
    params = model.init(jax.random.key(0), x, train=False)["params"]
    grads[frozen] = jax.grad(lambda p, m=model: jnp.sum(
        m.apply({"params": p}, x, train=False) ** 2))(params)
  assert np.abs(grads[False]["patch_embed"]["kernel"]).max() > 1e-6
  np.testing.assert_array_equal(grads[True]["patch_embed"]["kernel"], 0.0)
  assert np.abs(grads[True]["blocks_0"]["mlp"]["fc1"]["kernel"]).max() > 1e-6


@mesh_runs.float64()
def test_drop_path_and_resampled_positions():
  """Drop-path changes training outputs only, per example; a learned table
  made for 32 px (16 patches) is resampled for 48 px images (36)."""
  x = jax.random.uniform(jax.random.key(1), (8, 32, 32, 3))
  model = _tiny(drop_path=0.5, pos_embed="learned")
  variables = model.init(jax.random.key(0), x, train=False)
  assert variables["params"]["pos_embed"].shape == (1, 17, 16)
  plain = model.apply(variables, x, train=False)
  a, b = (model.apply(variables, x, train=True,
                      rngs={"dropout": jax.random.key(k)}) for k in (2, 3))
  assert not np.any(np.all(np.isclose(a, plain, rtol=1e-12), axis=1))
  # Masks are drawn per example: two keys agree on some examples only.
  same = np.all(np.isclose(a, b, rtol=1e-12), axis=1)
  assert 0 < same.sum() < 8, same
  no_drop = _tiny(pos_embed="learned")
  np.testing.assert_array_equal(no_drop.apply(variables, x, train=True),
                                plain)
  bigger = model.apply(variables, jnp.ones((2, 48, 48, 3)), train=False)
  assert bigger.shape == (2, 16) and np.all(np.isfinite(bigger))
  with pytest.raises(ValueError, match="patch_size"):
    model.apply(variables, jnp.ones((1, 30, 30, 3)), train=False)


# DINO's resampling of a 4- and a 14-patch grid to 2 and 6 patches, from
# PyTorch 2.13's `F.interpolate(t, scale_factor=(n + 0.1) / m,
# mode='bicubic')` on unit tables in float64 (the reference's call).
_TORCH_4_TO_2 = [
    [0.5535174387215206, 0.5305346344887163, -0.08405207321023593, 0.0],
    [0.0, -0.11069606413994132, 0.7699526239067063, 0.34074344023323494]]
_TORCH_14_TO_6_NONZERO = [  # (row, first column, values)
    (0, 0, [0.335622254726167, 0.7752197595834016, -0.11084201430956811]),
    (1, 1, [-0.00232742498270833, 0.04773485996625194, 0.9928288325895123,
            -0.0382362675730561]),
    (2, 4, [-0.10359663914600817, 0.889655824716606, 0.24624514276525428,
            -0.03230432833585129]),
    (3, 6, [-0.08722577550543821, 0.5503581522241933, 0.636335612892711,
            -0.09946798961146544]),
    (4, 8, [-0.01839677660244688, 0.1671669379815918, 0.9397095737088137,
            -0.08847973508795849]),
    (5, 11, [-0.07093173547565713, 0.9683102605504422, 0.10262147492521526])]


@mesh_runs.float64()
def test_resampled_positions_are_dinos():
  """The learned table of a 4×4 grid, resampled for a 2×2 grid, is DINO's
  `interpolate_pos_encoding` (bicubic A = −0.75 at scale (2 + 0.1)/4,
  values from PyTorch); 224 → 96 px (14 → 6 patches) likewise. A plain
  2/4 resize or jax.image's cubic would differ by > 1e-2."""
  np.testing.assert_allclose(vit.dino_interpolation(4, 2), _TORCH_4_TO_2,
                             rtol=0, atol=1e-14)
  want = np.zeros((6, 14))
  for row, col, values in _TORCH_14_TO_6_NONZERO:
    want[row, col:col + len(values)] = values
  np.testing.assert_allclose(vit.dino_interpolation(14, 6), want, rtol=0,
                             atol=1e-14)
  model = _tiny(pos_embed="learned")
  variables = model.init(jax.random.key(0), jnp.ones((1, 32, 32, 3)),
                         train=False)
  table = variables["params"]["pos_embed"][0]
  m = np.asarray(_TORCH_4_TO_2)
  patches = np.einsum("hi,wj,ijd->hwd", m, m,
                      np.asarray(table[1:]).reshape(4, 4, 16))
  resampled = np.concatenate([table[:1], patches.reshape(4, 16)])[None]
  # The same weights in a model made for 16 px with that table: no resampling.
  small = vit.VisionTransformer(width=16, depth=2, heads=2, image_size=16,
                                patch_size=8, pos_embed="learned")
  params = {**variables["params"], "pos_embed": jnp.asarray(resampled)}
  x = jax.random.uniform(jax.random.key(1), (2, 16, 16, 3))
  np.testing.assert_allclose(model.apply(variables, x, train=False),
                             small.apply({"params": params}, x, train=False),
                             rtol=1e-12, atol=1e-12)


def test_features_equal_timms_on_the_same_weights():
  """Our ViT-Tiny/8 (32 px) with random weights, exported to timm keys and
  loaded `strict=True` into `vit_tiny_patch16_224(patch_size=8,
  img_size=32, num_classes=0)`: the features of the same images agree in
  float64. Skips where torch and timm are not installed."""
  torch = pytest.importorskip("torch")
  timm = pytest.importorskip("timm")
  with mesh_runs.float64():
    model = vit.create("tiny", patch_size=8, pos_embed="learned",
                       image_size=32)
    x = np.random.default_rng(0).uniform(size=(3, 32, 32, 3))
    params = model.init(jax.random.key(0), jnp.asarray(x),
                        train=False)["params"]
    ours = np.asarray(model.apply({"params": params}, jnp.asarray(x),
                                  train=False))
  state = export.timm_vit_state_dict(params, image_size=32)
  net = timm.create_model("vit_tiny_patch16_224", pretrained=False,
                          num_classes=0, patch_size=8, img_size=32).double()
  assert set(state) == set(net.state_dict())
  net.load_state_dict({k: torch.from_numpy(np.array(v))
                       for k, v in state.items()}, strict=True)
  net.eval()
  with torch.no_grad():
    theirs = net(torch.from_numpy(x.transpose(0, 3, 1, 2))).numpy()
  np.testing.assert_allclose(ours, theirs, rtol=1e-9, atol=1e-10)


def test_export_keys_and_shapes_are_timms():
  """Without timm: the exported keys and shapes of ViT-S/16 (sin-cos table
  written out) are timm's `vit_small_patch16_224` state_dict's (listed from
  its definition: 4 + 12 blocks × 12 + 2 keys)."""
  model = vit.create("small", patch_size=16, pos_embed="sincos")
  params = jax.tree.map(lambda s: np.zeros(s.shape, s.dtype),
                        _shapes(model, 224)["params"])
  state = export.timm_vit_state_dict(params, image_size=224)
  d = 384
  want = {"cls_token": (1, 1, d), "pos_embed": (1, 197, d),
          "patch_embed.proj.weight": (d, 3, 16, 16),
          "patch_embed.proj.bias": (d,), "norm.weight": (d,),
          "norm.bias": (d,)}
  for i in range(12):
    b = f"blocks.{i}"
    want.update({f"{b}.norm1.weight": (d,), f"{b}.norm1.bias": (d,),
                 f"{b}.attn.qkv.weight": (3 * d, d),
                 f"{b}.attn.qkv.bias": (3 * d,),
                 f"{b}.attn.proj.weight": (d, d), f"{b}.attn.proj.bias": (d,),
                 f"{b}.norm2.weight": (d,), f"{b}.norm2.bias": (d,),
                 f"{b}.mlp.fc1.weight": (4 * d, d),
                 f"{b}.mlp.fc1.bias": (4 * d,),
                 f"{b}.mlp.fc2.weight": (d, 4 * d),
                 f"{b}.mlp.fc2.bias": (d,)})
  assert {k: v.shape for k, v in state.items()} == want
  np.testing.assert_allclose(state["pos_embed"][0, 1:], vit.sincos_2d(14, d),
                             rtol=1e-6)
  np.testing.assert_array_equal(state["pos_embed"][0, 0], 0.0)


@pytest.mark.parametrize("name,variant", [
    ("simclr_vit_cifar10", "runlocal"), ("mocov3_vit_small", "runlocal"),
    ("mocov3_cifar10", "runlocal,vit")])
def test_vit_config_freezes_exactly_the_patch_projection_for_the_run(
    name, variant):
  """The ViT configs: the freeze pattern matches the patch projection's
  kernel and bias and nothing else, for every step of the run."""
  _, c = config_files.load(name, variant)
  network = methods.METHODS[c.method](c, axis_name=None, total_steps=1,
                                      num_examples=1).network
  params = _shapes(network, c.data.image_size)["params"]
  flags = freezing.path_mask(c.optimizer.freeze_pattern)(params)
  frozen = sorted("/".join(str(k.key) for k in path)
                  for path, flag in jax.tree_util.tree_leaves_with_path(flags)
                  if flag)
  assert frozen == ["encoder/patch_embed/bias", "encoder/patch_embed/kernel"]
  length = epochs.RunLength.from_config(c, c.data.synthetic_examples)
  assert length.steps_until(c.optimizer.freeze_epochs) == length.total_steps
  assert c.model.frozen_patch_embed


def test_initialisation_is_moco_v3s():
  """q, k and v each Xavier-uniform on their own fans, U(±√(6/2D)); the
  patch projection on its `[3p², D]` matrix, U(±√(6/(3p² + D))); zero
  biases; the heads override (MoCo v3's ViT-S has 12)."""
  model = vit.create("small", heads=12, patch_size=16)
  assert model.heads == 12
  params = model.init(jax.random.key(0), jnp.zeros((1, 32, 32, 3)),
                      train=False)["params"]
  d, p = 384, 16
  for kernel, bound in (
      (params["blocks_0"]["attn"]["qkv"]["kernel"], np.sqrt(6 / (2 * d))),
      (params["patch_embed"]["kernel"], np.sqrt(6 / (3 * p * p + d))),
      (params["blocks_0"]["mlp"]["fc1"]["kernel"], np.sqrt(6 / (5 * d)))):
    kernel = np.asarray(kernel)
    assert np.abs(kernel).max() <= bound
    # Uniform on ±bound: std bound/√3 (to 2 % with these sizes).
    np.testing.assert_allclose(kernel.std(), bound / np.sqrt(3), rtol=0.02)
  np.testing.assert_array_equal(params["blocks_0"]["attn"]["qkv"]["bias"], 0)
  with pytest.raises(ValueError, match="num_heads=7 does not divide"):
    vit.create("small", heads=7)


def test_dino_initialisation():
  """`init_scheme='dino'`: dense kernels and the class token N(0, 0.02²) (timm's
  trunc_normal_ at ±2 absolute is untruncated at this std), the patch
  projection PyTorch's Conv2d default U(±1/√(3p²)) with its bias."""
  model = vit.create("small", patch_size=16, pos_embed="learned",
                     init_scheme="dino")
  params = model.init(jax.random.key(0), jnp.zeros((1, 32, 32, 3)),
                      train=False)["params"]
  for kernel in (params["blocks_0"]["attn"]["qkv"]["kernel"],
                 params["blocks_0"]["mlp"]["fc1"]["kernel"]):
    np.testing.assert_allclose(np.std(kernel), 0.02, rtol=0.02)
    assert np.abs(kernel).max() > 3 * 0.02  # not truncated at 2σ
  bound = 1 / np.sqrt(3 * 16 * 16)
  for leaf in (params["patch_embed"]["kernel"], params["patch_embed"]["bias"]):
    assert np.abs(leaf).max() <= bound
  np.testing.assert_allclose(np.std(params["patch_embed"]["kernel"]),
                             bound / np.sqrt(3), rtol=0.02)
  np.testing.assert_allclose(np.std(params["cls_token"]), 0.02, rtol=0.3)
  with pytest.raises(ValueError, match="vit_init='timm'"):
    vit.create("tiny", init_scheme="timm").init(
        jax.random.key(0), jnp.zeros((1, 32, 32, 3)), train=False)
