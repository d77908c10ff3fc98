"""BatchNorm over a named device axis, globally or in groups of k devices."""

import functools
from typing import Any, Callable, Optional

import flax.linen as nn
from jax import lax
import jax.numpy as jnp

from jaxssl import precision

Initializer = Callable[..., Any]


class BatchNorm(nn.Module):
  """BatchNorm whose batch statistics span devices ("global BN").

  SimCLR (Chen et al. 2020, §2.2 "Global BN") and BYOL aggregate BatchNorm mean and
  variance over all devices, since with per-device statistics the model can
  "cheat" the contrastive task through information leaking within a device.
  `flax.linen.BatchNorm` does this with `lax.pmean`, but its
  `axis_index_groups` option is not implemented under `jax.shard_map`, so
  this module also offers groups: statistics of every device are gathered
  (two small `[C]` vectors each) and averaged within consecutive groups of
  `group_size` devices.

  The running averages are always updated with the mean and variance of the
  *whole* global batch (the moments E[x], E[x²] averaged over every device),
  also when normalising in groups, so they stay identical on every device and
  the model state remains replicated. Parameter and statistic names (`scale`, `bias`, `mean`, `var`)
  match `flax.linen.BatchNorm`.

  Attributes:
    use_running_average: normalise with the running statistics (eval mode).
    momentum: decay of the running averages, `ra = m·ra + (1 - m)·batch`.
    epsilon: added to the variance.
    axis_name: mapped device axis to aggregate over; None for local stats.
    group_size: aggregate within groups of this many consecutive devices
      along `axis_name`; None for all devices.
    num_groups: or split the devices into this many consecutive groups
      (a fixed share of the global batch per group whatever the device
      count: SwAV's 512 of 4096 images is 8 groups); None: `group_size`.
    use_bias, use_scale: learn β, γ.
    scale_init: initialiser of γ (zeros for the last BN of a residual block).
    dtype: output dtype; statistics, γ and β are in full precision
      (`jaxssl.precision`: float32, or float64 in JAX's 64-bit mode).
  """
  use_running_average: Optional[bool] = None
  momentum: float = 0.9
  epsilon: float = 1e-5
  axis_name: Optional[str] = None
  group_size: Optional[int] = None
  num_groups: Optional[int] = None
  use_bias: bool = True
  use_scale: bool = True
  scale_init: Initializer = nn.initializers.ones
  dtype: Any = None

  @nn.compact
  def __call__(self, x, use_running_average: Optional[bool] = None):
    use_running_average = nn.merge_param(
        "use_running_average", self.use_running_average, use_running_average)
    features = x.shape[-1]
    full = precision.full_dtype()
    ra_mean = self.variable("batch_stats", "mean", jnp.zeros, (features,),
                            full)
    ra_var = self.variable("batch_stats", "var", jnp.ones, (features,), full)
    if use_running_average:
      mean, var = ra_mean.value, ra_var.value
    else:
      xf = x.astype(full)
      axes = tuple(range(x.ndim - 1))
      stats = jnp.stack([jnp.mean(xf, axes), jnp.mean(jnp.square(xf), axes)])
      if self.axis_name is None or self.is_initializing():
        local = global_ = stats
      elif self.group_size is None and self.num_groups is None:
        local = global_ = lax.pmean(stats, self.axis_name)
      else:
        local, global_ = _group_and_global_mean(
            stats, self.axis_name, self.group_size, self.num_groups)
      mean = local[0]
      var = jnp.maximum(local[1] - jnp.square(local[0]), 0.0)
      if not self.is_initializing():
        g_mean = global_[0]
        g_var = jnp.maximum(global_[1] - jnp.square(global_[0]), 0.0)
        ra_mean.value = self.momentum * ra_mean.value + (1 - self.momentum) * g_mean
        ra_var.value = self.momentum * ra_var.value + (1 - self.momentum) * g_var
    y = (x.astype(full) - mean) * lax.rsqrt(var + self.epsilon)
    if self.use_scale:
      y = y * self.param("scale", self.scale_init, (features,), full)
    if self.use_bias:
      y = y + self.param("bias", nn.initializers.zeros, (features,), full)
    return y.astype(x.dtype if self.dtype is None else self.dtype)


def _group_and_global_mean(stats, axis_name, group_size, num_groups=None):
  """Mean of `stats` over this device's group, and over all devices."""
  gathered = lax.all_gather(stats, axis_name)  # [num_devices, 2, C]
  num_devices = gathered.shape[0]
  if num_groups is not None:
    if group_size is not None:
      raise ValueError(f"BatchNorm group_size={group_size} and num_groups="
                       f"{num_groups}: set one")
    if num_groups < 1 or num_devices % num_groups:
      raise ValueError(
          f"config.model.bn_num_groups={num_groups} BatchNorm groups need a "
          f"multiple of {num_groups} devices; axis {axis_name!r} has "
          f"{num_devices}")
    group_size = num_devices // num_groups
  if num_devices % group_size:
    raise ValueError(
        f"BatchNorm group_size={group_size} does not divide the "
        f"{num_devices} devices on axis {axis_name!r}")
  grouped = gathered.reshape(num_devices // group_size, group_size,
                             *stats.shape).mean(axis=1)
  group = lax.axis_index(axis_name) // group_size
  return grouped[group], lax.pmean(stats, axis_name)


def batch_norm_factory(*, train: bool, momentum: float, epsilon: float,
                       axis_name: Optional[str], group_size: Optional[int],
                       dtype: Any = None,
                       num_groups: Optional[int] = None
                       ) -> Callable[..., BatchNorm]:
  """`BatchNorm` with a model's shared settings; per-layer kwargs still apply."""
  return functools.partial(
      BatchNorm, use_running_average=not train, momentum=momentum,
      epsilon=epsilon, axis_name=axis_name, group_size=group_size,
      num_groups=num_groups, dtype=dtype)


NORMS = ("batch", "layer")


def layer_norm_factory(*, epsilon: float, dtype: Any = None
                       ) -> Callable[..., nn.LayerNorm]:
  """Layer normalisation in place of a ResNet's BatchNorm (CPC v2, Hénaff
  et al. 2019, §3: BatchNorm lets patches of one batch share information,
  a shortcut around the context network's receptive field): each example's
  whole feature map (height, width, channels) normalised to zero mean and
  unit variance (Ba et al. 2016's definition for a layer), then a
  per-channel scale and bias. Nothing is reduced across examples or
  devices; no running statistics. Per-layer kwargs (`scale_init`, `name`)
  still apply."""
  return functools.partial(nn.LayerNorm, epsilon=epsilon,
                           reduction_axes=(-3, -2, -1), feature_axes=-1,
                           dtype=dtype, param_dtype=precision.full_dtype())
