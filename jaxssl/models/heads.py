"""Projection heads (SimCLR g(·))."""

from typing import Any, Optional

import flax.linen as nn
import jax
import jax.numpy as jnp

from jaxssl.models.normalization import batch_norm_factory

# The SimCLR reference initialises its head's dense layers with N(0, 0.01²).
dense_init = nn.initializers.normal(stddev=0.01)


class ProjectionHead(nn.Module):
  """MLP projection head of the SimCLR TF2 reference.

  Each of `num_layers` layers is a dense layer without bias followed by
  BatchNorm; all but the last apply ReLU, and the last BatchNorm has no
  offset β (the reference's `LinearLayer(use_bias=False, use_bn=True)`).
  SimCLR v1 uses 2 layers, SimCLR v2 3 layers (Chen et al. 2020,
  https://arxiv.org/abs/2006.10029, §2). With `use_bn=False` the layers are
  dense with bias (the v1 paper's description). `num_layers=0` is the
  identity.

  Attributes:
    num_layers: number of dense layers.
    hidden_dim: width of the hidden layers; 0 means the input width.
    out_dim: output width (128).
    use_bn: BatchNorm after each dense layer.
    bn_momentum, bn_epsilon, axis_name, bn_group_size: as in `ResNet`.
    dtype: computation dtype.
  """
  num_layers: int = 2
  hidden_dim: int = 0
  out_dim: int = 128
  use_bn: bool = True
  bn_momentum: float = 0.9
  bn_epsilon: float = 1e-5
  axis_name: Optional[str] = None
  bn_group_size: Optional[int] = None
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array, train: bool = True) -> jax.Array:
    hidden = self.hidden_dim or x.shape[-1]
    norm = batch_norm_factory(
        train=train, momentum=self.bn_momentum, epsilon=self.bn_epsilon,
        axis_name=self.axis_name, group_size=self.bn_group_size,
        dtype=self.dtype)
    for i in range(self.num_layers):
      last = i == self.num_layers - 1
      x = nn.Dense(self.out_dim if last else hidden, use_bias=not self.use_bn,
                   kernel_init=dense_init, dtype=self.dtype,
                   name=f"dense{i + 1}")(x)
      if self.use_bn:
        x = norm(use_bias=not last, name=f"bn{i + 1}")(x)
      if not last:
        x = nn.relu(x)
    return x.astype(jnp.float32)
