"""Vision Transformer encoders (Dosovitskiy et al. 2021,
https://arxiv.org/abs/2010.11929), as MoCo v3 and DINO pretrain them.

Pre-norm blocks (`x + attn(LN(x))`, `x + mlp(LN(x))`, LayerNorm ε = 1e-6,
exact GELU), a class token, and the class token's features after the final
LayerNorm as the representation `h` (timm's `forward` with `num_classes=0`).
Position embeddings are either fixed 2-D sin-cos (MoCo v3,
`build_2d_sincos_position_embedding`) or learned (DINO, timm), the learned
ones resampled when the patch grid differs from the one they were made for
(DINO's local crops) exactly as DINO does (`dino_interpolation`). Parameter
names map one to one onto timm's state_dict keys
(`jaxssl.export.timm_state_dict`).

MoCo v3's stability trick, a frozen random patch projection, is
`frozen_patch_embed=True`: the projection's output carries no gradient. Its
parameters then get no gradient, but a decoupled weight decay still shrinks
them: freeze them in the optimizer as well (`optimizer.freeze_pattern =
'encoder/patch_embed/'`, `freeze_epochs` = the run), which together are
PyTorch's `requires_grad = False`. Initialisation is MoCo v3's
(`VisionTransformerMoCo`): Xavier-uniform kernels, q, k and v each on its
own fans, the patch projection on the fans of its `[3p², D]` matrix, zero
biases, a N(0, 1e-6²) class token.
"""

import functools
from typing import Any, Optional

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from jaxssl import precision

# name: (width, depth, heads); the MLP is 4× wide.
VARIANTS = {
    "tiny": (192, 12, 3),
    "small": (384, 12, 6),
    "base": (768, 12, 12),
}
POS_EMBEDS = ("sincos", "learned")
_LN_EPS = 1e-6


def sincos_2d(grid: int, dim: int, temperature: float = 10000.0) -> np.ndarray:
  """MoCo v3's fixed 2-D sin-cos position embedding, `[grid², dim]` (no
  class token; float64 numpy). Token `k = r·grid + c` (row r, column c)
  gets `[sin(r·ω), cos(r·ω), sin(c·ω), cos(c·ω)]`, ω_i = T^(−i/(dim/4))."""
  if dim % 4:
    raise ValueError(f"sin-cos position embedding needs a width divisible "
                     f"by 4, got {dim}")
  quarter = dim // 4
  omega = 1.0 / temperature ** (np.arange(quarter, dtype=np.float64) / quarter)
  rows, cols = np.meshgrid(np.arange(grid), np.arange(grid), indexing="ij")
  out_r = rows.reshape(-1, 1) * omega[None]
  out_c = cols.reshape(-1, 1) * omega[None]
  return np.concatenate([np.sin(out_r), np.cos(out_r), np.sin(out_c),
                         np.cos(out_c)], axis=1)


def _drop_path(module: nn.Module, x: jax.Array, rate: float,
               train: bool) -> jax.Array:
  """Stochastic depth: drops the residual branch per example with
  probability `rate`, scaling kept ones by 1/(1 − rate) (timm's DropPath)."""
  if not train or rate <= 0.0:
    return x
  keep = jax.random.bernoulli(module.make_rng("dropout"), 1.0 - rate,
                              (x.shape[0],) + (1,) * (x.ndim - 1))
  return jnp.where(keep, x / (1.0 - rate), jnp.zeros_like(x))


def _qkv_init(key: jax.Array, shape: tuple, dtype: Any = jnp.float32
              ) -> jax.Array:
  """MoCo v3's init of the fused `[D, 3D]` q/k/v kernel: Xavier-uniform of
  each of q, k, v alone, U(±√(6/(D + D)))."""
  d_in, d_out = shape
  fans = nn.initializers.variance_scaling(
      1.0, "fan_avg", "uniform", in_axis=0, out_axis=-1, batch_axis=(1,))
  return fans(key, (d_in, 3, d_out // 3), dtype).reshape(shape)


# MoCo v3's patch projection init: Xavier-uniform of the kernel seen as a
# `[p·p·3, D]` matrix, U(±√(6/(3p² + D))) (flax's conv fans would multiply
# both fans by p²).
_patch_init = nn.initializers.variance_scaling(
    1.0, "fan_avg", "uniform", in_axis=(0, 1, 2), out_axis=-1)
# PyTorch's default Conv2d weight init (kaiming_uniform, a = √5):
# U(±1/√fan_in), fan_in = 3p².
_torch_conv_kernel = nn.initializers.variance_scaling(
    1.0 / 3.0, "fan_in", "uniform", in_axis=(0, 1, 2), out_axis=-1)


# timm's `trunc_normal_(std=.02)` truncates at ±2 absolute, i.e. ±100σ:
# a plain N(0, 0.02²).
_DINO_NORMAL = nn.initializers.normal(0.02)
INITS = ("mocov3", "dino")


def _dense_init(init: str, qkv: bool = False):
  """Dense kernels: MoCo v3's Xavier-uniform (q, k, v on their own fans) or
  DINO's N(0, 0.02²)."""
  if init == "dino":
    return _DINO_NORMAL
  return _qkv_init if qkv else nn.initializers.xavier_uniform()


def _torch_conv_bias(fan_in: int):
  """PyTorch's default `Conv2d` bias init, U(±1/√fan_in)."""
  def init(key, shape, dtype=jnp.float32):
    bound = 1.0 / np.sqrt(fan_in)
    return jax.random.uniform(key, shape, dtype, -bound, bound)
  return init


class Attention(nn.Module):
  """Multi-head self-attention; `qkv` holds q, k, v and heads in timm's
  order (output feature `s·D + h·D/H + d`)."""
  heads: int
  dtype: Any = None
  init_scheme: str = "mocov3"

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    b, n, d = x.shape
    dense = functools.partial(nn.Dense, dtype=self.dtype,
                              param_dtype=precision.full_dtype(),
                              kernel_init=_dense_init(self.init_scheme))
    qkv = dense(3 * d, kernel_init=_dense_init(self.init_scheme, qkv=True),
                name="qkv")(x)
    qkv = qkv.reshape(b, n, 3, self.heads, d // self.heads)
    q, k, v = qkv[:, :, 0], qkv[:, :, 1], qkv[:, :, 2]
    logits = jnp.einsum("bqhd,bkhd->bhqk", q, k) * (d // self.heads) ** -0.5
    weights = jax.nn.softmax(precision.to_full(logits), axis=-1)
    out = jnp.einsum("bhqk,bkhd->bqhd", weights.astype(v.dtype), v)
    return dense(d, name="proj")(out.reshape(b, n, d))


class Mlp(nn.Module):
  """`fc2(GELU(fc1(x)))`, hidden width `hidden`, output width `out`."""
  hidden: int
  out: int
  dtype: Any = None
  init_scheme: str = "mocov3"

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    dense = functools.partial(nn.Dense, dtype=self.dtype,
                              param_dtype=precision.full_dtype(),
                              kernel_init=_dense_init(self.init_scheme))
    x = nn.gelu(dense(self.hidden, name="fc1")(x), approximate=False)
    return dense(self.out, name="fc2")(x)


def _layer_norm(name: str) -> nn.LayerNorm:
  return nn.LayerNorm(epsilon=_LN_EPS, dtype=precision.full_dtype(),
                      param_dtype=precision.full_dtype(), name=name)


class Block(nn.Module):
  """Pre-norm transformer block: `x + attn(LN(x))`, `x + mlp(LN(x))`."""
  heads: int
  mlp_ratio: float = 4.0
  drop_path: float = 0.0
  dtype: Any = None
  init_scheme: str = "mocov3"

  @nn.compact
  def __call__(self, x: jax.Array, train: bool = True) -> jax.Array:
    d = x.shape[-1]
    y = Attention(self.heads, dtype=self.dtype, init_scheme=self.init_scheme,
                  name="attn")(
        _layer_norm("norm1")(x).astype(x.dtype))
    x = x + _drop_path(self, y, self.drop_path, train)
    y = Mlp(int(d * self.mlp_ratio), d, dtype=self.dtype,
            init_scheme=self.init_scheme, name="mlp")(
        _layer_norm("norm2")(x).astype(x.dtype))
    return x + _drop_path(self, y, self.drop_path, train)


class VisionTransformer(nn.Module):
  """ViT encoder: images `[B, S, S, 3]` → class-token features `[B, D]`.

  Attributes:
    width, depth, heads: D, blocks, attention heads (`VARIANTS`).
    patch_size: side of the square patches (16 or 8); S must be a multiple.
    pos_embed: 'sincos' (fixed, MoCo v3) or 'learned' (DINO, timm).
    image_size: the image side the learned position embedding is made for
      (other sides resample it).
    frozen_patch_embed: stop the gradient at the patch projection (MoCo v3).
    drop_path: stochastic-depth rate of the last block (linear from 0 over
      the blocks, as timm and DINO); needs a 'dropout' rng when > 0.
    mlp_ratio: MLP width over D.
    dtype: computation dtype of the projections and attention (None: full
      precision); LayerNorm, softmax and parameters stay full precision.
    remat: 'none', or 'block'/'dots': rematerialise each block
      (`jax.checkpoint`), like the ResNet's option.
    init_scheme: 'mocov3' (Xavier-uniform kernels, q/k/v on their own
      fans, the patch projection on its [3p², D] fans, class token
      N(0, 1e-6²)) or 'dino' (every dense kernel and the class token
      N(0, 0.02²), the patch projection PyTorch's default Conv2d init).
    representation: the features returned (`REPRESENTATIONS`): 'cls' the
      class token after the final LayerNorm; DINO's linear evaluation
      (`eval_linear.py`) 'last4_cls' (ViT-S: the class tokens of the last 4
      blocks, each through the final LayerNorm, concatenated) or
      'cls_avgpool' (ViT-B: the class token and the mean of the patch
      tokens, after the final LayerNorm).
  """
  width: int = 384
  depth: int = 12
  heads: int = 6
  patch_size: int = 16
  pos_embed: str = "sincos"
  image_size: int = 224
  frozen_patch_embed: bool = False
  drop_path: float = 0.0
  mlp_ratio: float = 4.0
  dtype: Any = None
  remat: str = "none"
  init_scheme: str = "mocov3"
  representation: str = "cls"

  @property
  def num_features(self) -> int:
    return self.width * REPRESENTATIONS[self.representation]

  @nn.compact
  def __call__(self, x: jax.Array, train: bool = True) -> jax.Array:
    if self.pos_embed not in POS_EMBEDS:
      raise ValueError(f"config.model.pos_embed={self.pos_embed!r} is not one "
                       f"of {list(POS_EMBEDS)}")
    p = self.patch_size
    if x.shape[1] % p or x.shape[2] % p:
      raise ValueError(f"images of {x.shape[1]}×{x.shape[2]} px do not split "
                       f"into {p}×{p} patches (config.model.patch_size)")
    if self.init_scheme not in INITS:
      raise ValueError(f"config.model.vit_init={self.init_scheme!r} is not "
                       f"one of {list(INITS)}")
    full = precision.full_dtype()
    dtype = self.dtype or full
    dino = self.init_scheme == "dino"
    fan_in = 3 * p * p
    x = nn.Conv(self.width, (p, p), strides=(p, p), padding="VALID",
                dtype=dtype, param_dtype=full,
                kernel_init=_torch_conv_kernel if dino else _patch_init,
                bias_init=(_torch_conv_bias(fan_in) if dino
                           else nn.initializers.zeros),
                name="patch_embed")(x.astype(dtype))
    if self.frozen_patch_embed:
      x = jax.lax.stop_gradient(x)
    b, gh, gw, d = x.shape
    x = x.reshape(b, gh * gw, d)
    cls = self.param("cls_token",
                     _DINO_NORMAL if dino else nn.initializers.normal(1e-6),
                     (1, 1, d), full)
    x = jnp.concatenate([jnp.broadcast_to(cls, (b, 1, d)).astype(dtype), x],
                        axis=1)
    x = x + self._position_embedding(gh, gw, d).astype(dtype)
    block = Block
    if self.remat != "none":
      block = nn.remat(Block, static_argnums=(2,))
    if self.representation not in REPRESENTATIONS:
      raise ValueError(f"ViT representation={self.representation!r} is not "
                       f"one of {list(REPRESENTATIONS)}")
    norm = _layer_norm("norm")
    outputs = []
    for i in range(self.depth):
      rate = self.drop_path * i / max(self.depth - 1, 1)
      x = block(self.heads, self.mlp_ratio, rate, dtype, self.init_scheme,
                name=f"blocks_{i}")(x, train)
      if self.representation == "last4_cls" and i >= self.depth - 4:
        outputs.append(norm(x)[:, 0])
    if self.representation == "last4_cls":
      return precision.to_full(jnp.concatenate(outputs, axis=-1))
    x = norm(x)
    if self.representation == "cls_avgpool":
      return precision.to_full(jnp.concatenate(
          [x[:, 0], jnp.mean(x[:, 1:], axis=1)], axis=-1))
    return precision.to_full(x[:, 0])

  def _position_embedding(self, gh: int, gw: int, d: int) -> jax.Array:
    """`[1, 1 + gh·gw, D]`; the class token's row is 0 for sin-cos."""
    if self.pos_embed == "sincos":
      if gh != gw:
        raise ValueError("sin-cos position embedding needs square images")
      table = np.concatenate([np.zeros((1, d)), sincos_2d(gh, d)])
      return jnp.asarray(table[None], precision.full_dtype())
    grid = self.image_size // self.patch_size
    table = self.param("pos_embed", _DINO_NORMAL,
                       (1, 1 + grid * grid, d), precision.full_dtype())
    if (gh, gw) == (grid, grid):
      return table
    rows, cols = (jnp.asarray(dino_interpolation(grid, g), table.dtype)
                  for g in (gh, gw))
    patches = jnp.einsum("hi,wj,ijd->hwd", rows, cols,
                         table[0, 1:].reshape(grid, grid, d))
    return jnp.concatenate([table[:, :1], patches.reshape(1, gh * gw, d)],
                           axis=1)


# representation → features in multiples of the width.
REPRESENTATIONS = {"cls": 1, "last4_cls": 4, "cls_avgpool": 2}


def dino_linear_representation(variant: str) -> str:
  """DINO's `eval_linear.py` representation for a ViT of `variant`: the
  last 4 class tokens for ViT-S (and smaller), the class token with the
  averaged patch tokens for ViT-B (its README's ViT-B command)."""
  return "cls_avgpool" if variant == "base" else "last4_cls"


def dino_interpolation(size_in: int, size_out: int) -> np.ndarray:
  """`[size_out, size_in]` matrix of DINO's position-table resampling along
  one axis (`vision_transformer.interpolate_pos_encoding`): PyTorch's
  bicubic `interpolate` (A = −0.75, `align_corners=False`, no
  anti-aliasing, edge samples repeated) at the scale factor
  `(size_out + 0.1) / size_in` — the reference's +0.1, so the sampling
  positions are `(i + 0.5)·size_in / (size_out + 0.1) − 0.5`, not those of
  an exact `size_out / size_in` resize."""
  a = -0.75

  def weights(t):  # cubic convolution at distances 1 + t, t, 1 − t, 2 − t
    near = lambda x: ((a + 2) * x - (a + 3)) * x * x + 1
    far = lambda x: ((a * x - 5 * a) * x + 8 * a) * x - 4 * a
    return far(1 + t), near(t), near(1 - t), far(2 - t)

  matrix = np.zeros((size_out, size_in))
  for i in range(size_out):
    src = (i + 0.5) * size_in / (size_out + 0.1) - 0.5
    base = int(np.floor(src))
    for k, w in enumerate(weights(src - base)):
      matrix[i, min(max(base - 1 + k, 0), size_in - 1)] += w
  return matrix


def create(variant: str, heads: Optional[int] = None,
           depth: Optional[int] = None, **kwargs) -> VisionTransformer:
  """ViT-`variant` ('tiny', 'small', 'base') with other attributes given;
  `heads` overrides the variant's (MoCo v3's ViT-S has 12, DeiT's 6),
  `depth` its number of blocks (CPU smoke runs)."""
  if variant not in VARIANTS:
    raise ValueError(f"config.model.variant={variant!r} is not one of "
                     f"{sorted(VARIANTS)}")
  width, default_depth, default_heads = VARIANTS[variant]
  heads = heads or default_heads
  depth = depth or default_depth
  if width % heads:
    raise ValueError(f"config.model.num_heads={heads} does not divide the "
                     f"width {width} of ViT-{variant}")
  return VisionTransformer(width=width, depth=depth, heads=heads, **kwargs)
