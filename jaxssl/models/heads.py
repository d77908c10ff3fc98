"""MLP heads: SimCLR/BYOL/SimSiam/Barlow Twins/MoCo projectors and
predictors, and DINO's head with its weight-normalised last layer."""

from typing import Any, Optional

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from jaxssl import precision
from jaxssl.models.normalization import batch_norm_factory

# The SimCLR reference initialises its head's dense layers with N(0, 0.01²);
# the BYOL (haiku) and PyTorch references use a fan-in scaled init.
KERNEL_INITS = {
    "simclr": nn.initializers.normal(stddev=0.01),
    "fan_in": nn.initializers.lecun_normal(),
}
LAST_BN = ("scale", "affine", "plain", "none")


class ProjectionHead(nn.Module):
  """MLP head; by default the projection head of the SimCLR TF2 reference.

  Each of `num_layers` layers is a dense layer followed by BatchNorm and ReLU,
  except the last, whose normalisation is `last_bn` and which has no ReLU.
  A dense layer has a bias exactly when no BatchNorm follows it (a bias
  before BatchNorm is removed by the mean subtraction and never trained).

  * SimCLR (Chen et al. 2020, https://arxiv.org/abs/2006.10029, §2): 2 (v1) or
    3 (v2) layers, `last_bn='scale'` (BN with γ, no β: the reference's
    `LinearLayer(use_bias=False, use_bn=True)`), N(0, 0.01²) kernels. With
    `use_bn=False` every layer is dense with bias (the v1 paper's text).
  * BYOL (Grill et al. 2020, https://arxiv.org/abs/2006.07733, §3.3):
    projector and predictor are 2 layers, 4096 hidden, 256 out,
    `last_bn='none'`.
  * SimSiam (Chen & He 2021, https://arxiv.org/abs/2011.10566, §4.1):
    projector 3 layers of 2048 with `last_bn='plain'` (BN without affine);
    predictor 2048 → 512 → 2048, `last_bn='none'`.
  * Barlow Twins (Zbontar et al. 2021, https://arxiv.org/abs/2103.03230):
    3 layers of 8192, `last_bn='none'` (the loss standardises).
  * MoCo v2 (Chen et al. 2020, https://arxiv.org/abs/2003.04297): 2048 →
    128 with `use_bn=False` (v1: one linear layer).
  * MoCo v3 (Chen, Xie & He 2021, https://arxiv.org/abs/2104.02057):
    4096 hidden, 256 out, `last_bn='plain'`, `bias=False` (the reference's
    layers have no bias at all); its ResNet predictor has `last_bn='none'`.

  `num_layers=0` is the identity.

  Attributes:
    num_layers: number of dense layers.
    hidden_dim: width of the hidden layers; 0 means the input width.
    out_dim: output width (128).
    use_bn: BatchNorm after each hidden dense layer (and `last_bn` after the
      last); False: plain dense layers with bias.
    last_bn: normalisation of the last layer: 'scale' (γ only), 'affine'
      (γ and β), 'plain' (neither), 'none' (no BatchNorm).
    kernel_init: 'simclr' (N(0, 0.01²)) or 'fan_in' (LeCun normal).
    bias: dense layers not followed by BatchNorm have a bias (False: no
      layer has one, MoCo v3).
    bn_momentum, bn_epsilon, axis_name, bn_group_size, bn_num_groups: as
      in `ResNet`.
    dtype: computation dtype; None: full precision (`jaxssl.precision`),
      which is also the dtype of the parameters and of the output.
  """
  num_layers: int = 2
  hidden_dim: int = 0
  out_dim: int = 128
  use_bn: bool = True
  last_bn: str = "scale"
  kernel_init: str = "simclr"
  bias: bool = True
  bn_momentum: float = 0.9
  bn_epsilon: float = 1e-5
  axis_name: Optional[str] = None
  bn_group_size: Optional[int] = None
  bn_num_groups: Optional[int] = None
  dtype: Any = None

  @nn.compact
  def __call__(self, x: jax.Array, train: bool = True,
               layers: Optional[int] = None) -> jax.Array:
    """Applies the head; `layers=L` stops after the first L layers (each a
    hidden layer's dense → BN → ReLU unless L is all of them), the input of
    SimCLR v2's fine-tuning from a projection-head layer."""
    if self.last_bn not in LAST_BN:
      raise ValueError(f"last_bn={self.last_bn!r} is not one of {LAST_BN}")
    if self.kernel_init not in KERNEL_INITS:
      raise ValueError(f"kernel_init={self.kernel_init!r} is not one of "
                       f"{sorted(KERNEL_INITS)}")
    hidden = self.hidden_dim or x.shape[-1]
    full = precision.full_dtype()
    dtype = full if self.dtype is None else self.dtype
    norm = batch_norm_factory(
        train=train, momentum=self.bn_momentum, epsilon=self.bn_epsilon,
        axis_name=self.axis_name, group_size=self.bn_group_size, dtype=dtype,
        num_groups=self.bn_num_groups)
    layers = self.num_layers if layers is None else layers
    if not 0 <= layers <= self.num_layers:
      raise ValueError(f"layers={layers} is not in [0, {self.num_layers}]")
    for i in range(layers):
      last = i == self.num_layers - 1
      bn = self.use_bn and not (last and self.last_bn == "none")
      x = nn.Dense(self.out_dim if last else hidden,
                   use_bias=self.bias and not bn,
                   kernel_init=KERNEL_INITS[self.kernel_init],
                   dtype=dtype, param_dtype=full, name=f"dense{i + 1}")(x)
      if bn:
        if last:
          x = norm(use_scale=self.last_bn != "plain",
                   use_bias=self.last_bn == "affine", name=f"bn{i + 1}")(x)
        else:
          x = norm(name=f"bn{i + 1}")(x)
      if not last:
        x = nn.relu(x)
    return x.astype(full)


def _torch_linear_init(key: jax.Array, shape: tuple, dtype: Any = jnp.float32
                       ) -> jax.Array:
  """PyTorch's default `nn.Linear` weight init, U(±1/√fan_in)."""
  bound = 1.0 / np.sqrt(shape[0])
  return jax.random.uniform(key, shape, dtype, -bound, bound)


class DINOHead(nn.Module):
  """DINO's projection head (Caron et al. 2021,
  https://arxiv.org/abs/2104.14294; `vision_transformer.DINOHead`).

  An MLP of `num_layers` dense layers (hidden `hidden_dim`, GELU, optional
  BatchNorm, N(0, 0.02²) truncated kernels, zero biases, none before a
  BatchNorm) to
  a `bottleneck_dim` output, L2-normalised, then a weight-normalised linear
  layer without bias to `out_dim`: `W = g·v/‖v‖` per output unit, with
  `g = 1` fixed when `norm_last_layer` (the reference's `weight_g` without
  gradient), else a parameter `last_layer/scale` starting at 1, of shape
  `[1, K]` (the reference's `[K, 1]`, weight-decayed as there). Its
  parameters are `last_layer/kernel_v` (PyTorch's default init) and
  `scale`, so `^projector/last_layer/` freezes the last layer.

  Attributes:
    out_dim: K, the prototypes (65,536).
    hidden_dim: MLP width (2048).
    bottleneck_dim: width before normalisation (256).
    num_layers: MLP layers (3).
    use_bn: BatchNorm after the hidden layers (False; the ResNet option).
    norm_last_layer: fix `g = 1` (True; False for ViT-S/16 long runs).
    bn_momentum, bn_epsilon, axis_name, bn_group_size, bn_num_groups: as
      `ProjectionHead`.
  """
  out_dim: int = 65536
  hidden_dim: int = 2048
  bottleneck_dim: int = 256
  num_layers: int = 3
  use_bn: bool = False
  norm_last_layer: bool = True
  bn_momentum: float = 0.9
  bn_epsilon: float = 1e-5
  axis_name: Optional[str] = None
  bn_group_size: Optional[int] = None
  bn_num_groups: Optional[int] = None

  @nn.compact
  def __call__(self, x: jax.Array, train: bool = True) -> jax.Array:
    full = precision.full_dtype()
    x = precision.to_full(x)
    norm = batch_norm_factory(
        train=train, momentum=self.bn_momentum, epsilon=self.bn_epsilon,
        axis_name=self.axis_name, group_size=self.bn_group_size, dtype=full,
        num_groups=self.bn_num_groups)
    layers = max(self.num_layers, 1)
    for i in range(layers):
      last = i == layers - 1
      # A bias before BatchNorm gets no gradient (the reference keeps it).
      x = nn.Dense(self.bottleneck_dim if last else self.hidden_dim,
                   use_bias=last or not self.use_bn,
                   kernel_init=nn.initializers.truncated_normal(0.02),
                   dtype=full, param_dtype=full, name=f"dense{i + 1}")(x)
      if not last:
        if self.use_bn:
          x = norm(name=f"bn{i + 1}")(x)
        x = nn.gelu(x, approximate=False)
    # torch.nn.functional.normalize: x / max(‖x‖, 1e-12).
    x = x / jnp.maximum(jnp.linalg.norm(x, axis=-1, keepdims=True), 1e-12)
    return _WeightNormLinear(self.out_dim, self.norm_last_layer,
                             name="last_layer")(x)


class _WeightNormLinear(nn.Module):
  """`x @ (g·v/‖v‖)` with ‖v‖ per output column (PyTorch's `weight_norm`,
  dim 0 of its `[out, in]` weight)."""
  features: int
  fixed_scale: bool

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    full = precision.full_dtype()
    v = self.param("kernel_v", _torch_linear_init,
                   (x.shape[-1], self.features), full)
    w = v / jnp.linalg.norm(v, axis=0, keepdims=True)
    if not self.fixed_scale:
      # [1, K]: PyTorch's `weight_g` is [K, 1], a matrix, which the
      # reference's `get_params_groups` weight-decays (it exempts biases and
      # 1-D parameters only); the rank-based decay mask does the same here.
      w = w * self.param("scale", nn.initializers.ones, (1, self.features),
                         full)
    return x @ w
