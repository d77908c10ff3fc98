"""Optimizers with the weight-decay / trust-ratio exclusions SSL papers use.

Biases and BatchNorm parameters get neither weight decay nor the LARS trust
ratio (SimCLR, BYOL, MoCo v3 references). We identify them by rank: every
parameter of rank <= 1 is a bias or a normalisation scale/offset; kernels are
rank >= 2. Note that `optax.lars` applies both to *every* parameter unless
given masks, which is why we pass them explicitly everywhere.
"""

from typing import Any, Callable, NamedTuple, Union

import jax
import jax.numpy as jnp
import optax

from jaxssl import freezing
from jaxssl import precision

PyTree = Any
MaskOrFn = Union[PyTree, Callable[[PyTree], PyTree], None]
ScalarOrSchedule = Union[float, Callable[[jax.Array], jax.Array]]


def default_lars_mask(params: PyTree) -> PyTree:
  """True for kernels (rank > 1); False for biases and BatchNorm scale/bias."""
  return jax.tree.map(lambda p: jnp.ndim(p) > 1, params)


def _resolve_mask(mask: MaskOrFn, params: PyTree) -> PyTree:
  if mask is None:
    return default_lars_mask(params)
  if callable(mask):
    return mask(params)
  return mask


class LarsState(NamedTuple):
  """State of `lars`: the update count and the momentum buffer."""
  count: jax.Array
  momentum: PyTree


def lars(
    learning_rate: ScalarOrSchedule,
    *,
    weight_decay: ScalarOrSchedule,
    momentum: float = 0.9,
    trust_coefficient: float = 1e-3,
    nesterov: bool = False,
    mask: MaskOrFn = None,
    lr_in_momentum: bool = True,
    excluded_lr_scale: float = 1.0,
    trust_ratio: str = "lars",
) -> optax.GradientTransformation:
  """LARS, in the SimCLR (default) or the BYOL reference's form.

  You, Gitman, Ginsburg, "Large Batch Training of Convolutional Networks"
  (https://arxiv.org/abs/1708.03888), in the "classic momentum" form of the
  SimCLR reference `LARSOptimizer`. For each parameter `p` with gradient `g`:

      g  <- g + weight_decay·p                        (masked-in only)
      r  <- trust_coefficient·‖p‖/‖g‖ if ‖p‖ > 0 and ‖g‖ > 0 else 1
                                                      (masked-in only, else 1)
      v  <- momentum·v + lr_t·r·g
      p  <- p - v            (Nesterov: p - (momentum·v + lr_t·r·g))

  With `lr_in_momentum=False` (the BYOL reference, optax-style: decay, trust
  ratio, momentum trace, then the learning rate), the buffer holds unscaled
  steps and the current rate multiplies all of it:

      v  <- momentum·v + r·g
      p  <- p - lr_t·v       (Nesterov: p - lr_t·(momentum·v + r·g))

  The two agree at the first step and differ once the rate changes (warm-up,
  cosine decay). Masked-out leaves use `excluded_lr_scale·lr_t` (Barlow
  Twins trains biases and BN parameters at 0.0048/0.2 = 0.024 of the rate).

  `trust_ratio='larc'` is NVIDIA apex's `LARC(clip=False)` as SwAV uses
  it: `r = trust_coefficient·‖p‖/(‖g‖ + weight_decay·‖p‖ + 1e-8)` with
  the norm of the gradient BEFORE the decay is added; where ‖p‖ or that
  ‖g‖ is 0, r = 1 and no decay is added (apex skips the parameter); 'lars'
  divides by ‖g + weight_decay·p‖.

  Args:
    learning_rate: a float or a schedule of the update count (0 at the first
      update).
    weight_decay: L2 coefficient added to the gradient of masked-in leaves
      (a float, or a schedule of the update count).
    momentum: momentum coefficient.
    trust_coefficient: η of the layer-wise trust ratio.
    nesterov: use Nesterov momentum.
    mask: pytree of bools (or function of the params returning one): True
      where weight decay and the trust ratio apply. Defaults to
      `default_lars_mask` (kernels only).
    lr_in_momentum: True for the SimCLR form (rate inside the buffer), False
      for the BYOL form (rate applied to the buffer).
    excluded_lr_scale: rate multiplier of the masked-out leaves.
    trust_ratio: 'lars' or 'larc' (see above).

  Returns:
    An optax transformation; its updates are to be *added* to the params.
  """
  if trust_ratio not in ("lars", "larc"):
    raise ValueError(f"trust_ratio={trust_ratio!r} is not one of ['lars', "
                     "'larc']")

  def init_fn(params):
    return LarsState(count=jnp.zeros([], jnp.int32),
                     momentum=jax.tree.map(jnp.zeros_like, params))

  def update_fn(updates, state, params=None):
    if params is None:
      raise ValueError("lars needs the params: call tx.update(grads, state, "
                       "params)")
    lr = learning_rate(state.count) if callable(learning_rate) else learning_rate
    wd = weight_decay(state.count) if callable(weight_decay) else weight_decay
    flags = _resolve_mask(mask, params)

    def one(g, p, v, adapt):
      lr_leaf = lr if adapt else excluded_lr_scale * lr
      g = precision.to_full(g)
      p32 = precision.to_full(p)
      if adapt:
        p_norm = jnp.linalg.norm(p32)
        if trust_ratio == "larc":
          g_norm = jnp.linalg.norm(g)
          denominator = g_norm + wd * p_norm + 1e-8
          # apex adds the decay only where it scales (‖p‖, ‖g‖ > 0).
          g = jnp.where((p_norm > 0) & (g_norm > 0), g + wd * p32, g)
        else:
          g = g + wd * p32
        if trust_ratio == "lars":
          g_norm = denominator = jnp.linalg.norm(g)
        trust = jnp.where(
            (p_norm > 0) & (g_norm > 0),
            trust_coefficient * p_norm / denominator, 1.0)
      else:
        trust = 1.0
      if lr_in_momentum:
        scaled_lr = lr_leaf * trust
        new_v = momentum * v + scaled_lr * g
        step = momentum * new_v + scaled_lr * g if nesterov else new_v
      else:
        u = trust * g
        new_v = momentum * v + u
        step = lr_leaf * (momentum * new_v + u if nesterov else new_v)
      return (-step).astype(p.dtype), new_v

    out = jax.tree.map(one, updates, params, state.momentum, flags)
    treedef = jax.tree.structure(updates)
    leaves = treedef.flatten_up_to(out)
    new_updates = treedef.unflatten([l[0] for l in leaves])
    new_momentum = treedef.unflatten([l[1] for l in leaves])
    return new_updates, LarsState(count=state.count + 1, momentum=new_momentum)

  return optax.GradientTransformation(init_fn, update_fn)


class DecayState(NamedTuple):
  """State of `add_decayed_weights`: the update count."""
  count: jax.Array


def add_decayed_weights(weight_decay: ScalarOrSchedule,
                        mask: MaskOrFn = None) -> optax.GradientTransformation:
  """`g + wd_t·p` on masked-in leaves (kernels by default), with `wd_t` a
  float or a schedule of the update count (DINO: a cosine from 0.04 to 0.4;
  `optax.add_decayed_weights` takes a constant only)."""
  def init_fn(params):
    del params
    return DecayState(count=jnp.zeros([], jnp.int32))

  def update_fn(updates, state, params=None):
    if params is None:
      raise ValueError("weight decay needs the params")
    wd = weight_decay(state.count) if callable(weight_decay) else weight_decay
    flags = _resolve_mask(mask, params)
    updates = jax.tree.map(
        lambda g, p, m: g + wd * p.astype(g.dtype) if m else g, updates,
        params, flags)
    return updates, DecayState(count=state.count + 1)

  return optax.GradientTransformation(init_fn, update_fn)


def _sgd(learning_rate, *, weight_decay, momentum, nesterov=False, mask=None):
  return optax.chain(
      add_decayed_weights(weight_decay, mask),
      optax.sgd(learning_rate, momentum=momentum, nesterov=nesterov))


def _lars(learning_rate, *, weight_decay, momentum, nesterov=False,
          trust_coefficient=1e-3, mask=None, lr_in_momentum=True,
          excluded_lr_scale=1.0, trust_ratio="lars"):
  return lars(learning_rate, weight_decay=weight_decay, momentum=momentum,
              trust_coefficient=trust_coefficient, nesterov=nesterov, mask=mask,
              lr_in_momentum=lr_in_momentum,
              excluded_lr_scale=excluded_lr_scale, trust_ratio=trust_ratio)


def _adamw(learning_rate, *, weight_decay, momentum, b2=0.999, eps=1e-8,
           mask=None):
  # optax.adamw's chain, with a weight decay that may be a schedule.
  return optax.chain(
      optax.scale_by_adam(b1=momentum, b2=b2, eps=eps),
      add_decayed_weights(weight_decay, mask),
      optax.scale_by_learning_rate(learning_rate))


def _lamb(learning_rate, *, weight_decay, momentum, b2=0.999, eps=1e-6,
          mask=None):
  # optax.lamb's chain, with a weight decay that may be a schedule.
  return optax.chain(
      optax.scale_by_adam(b1=momentum, b2=b2, eps=eps),
      add_decayed_weights(weight_decay, mask),
      optax.scale_by_trust_ratio(),
      optax.scale_by_learning_rate(learning_rate))


OPTIMIZERS = {
    "lars": _lars,
    "sgd": _sgd,
    "adamw": _adamw,
    "lamb": _lamb,
}


def create_optimizer(
    name: str,
    learning_rate: ScalarOrSchedule,
    *,
    weight_decay: float,
    momentum: float = 0.9,
    **kwargs,
) -> optax.GradientTransformation:
  """Builds optimizer `name` with biases and BatchNorm params excluded from decay.

  Args:
    name: one of 'lars', 'sgd' (momentum SGD, L2 added to the gradient),
      'adamw', 'lamb'.
    learning_rate: float or schedule of the step.
    weight_decay: decay coefficient, applied to kernels only.
    momentum: momentum (SGD/LARS) or β1 (AdamW/LAMB).
    **kwargs: optimizer-specific options (`nesterov`, `trust_coefficient`,
      `lr_in_momentum`, `excluded_lr_scale`, `trust_ratio`, `b2`, `eps`,
      `mask`).

  Returns:
    The optax transformation.
  """
  if name not in OPTIMIZERS:
    raise ValueError(f"unknown optimizer {name!r}; expected one of "
                     f"{sorted(OPTIMIZERS)}")
  return OPTIMIZERS[name](learning_rate, weight_decay=weight_decay,
                          momentum=momentum, **kwargs)


def clip_per_parameter(max_norm: float) -> optax.GradientTransformation:
  """Scales each parameter's gradient to norm at most `max_norm`
  (`g·min(1, max_norm / (‖g‖ + 1e-6))`, DINO's `clip_gradients`)."""
  def update_fn(updates, state, params=None):
    del params
    def one(g):
      coef = max_norm / (jnp.linalg.norm(g) + 1e-6)
      return g * jnp.minimum(coef, 1.0).astype(g.dtype)
    return jax.tree.map(one, updates), state
  return optax.GradientTransformation(lambda _: optax.EmptyState(), update_fn)


def cosine_between(start: float, end: float,
                   total_steps: int) -> Callable[[jax.Array], jax.Array]:
  """`end + (start − end)·(1 + cos(π·t/T))/2` (DINO's weight decay,
  `cosine_scheduler` without warm-up), constant `end` after T steps."""
  def schedule(count):
    t = precision.to_full(jnp.minimum(count, total_steps)) / max(total_steps,
                                                                  1)
    return end + (start - end) * 0.5 * (1.0 + jnp.cos(jnp.pi * t))
  return schedule


def config_options(opt) -> dict:
  """The options of `create_optimizer(opt.name, ...)` that config section
  `optimizer` sets besides the rate, the decay and the masks."""
  extra = {}
  if opt.name in ("lars", "sgd"):
    extra["nesterov"] = opt.nesterov
  if opt.name == "lars":
    extra.update(trust_coefficient=opt.trust_coefficient,
                 lr_in_momentum=opt.lr_in_momentum,
                 excluded_lr_scale=opt.excluded_lr_scale,
                 trust_ratio=opt.get("trust_ratio", "lars"))
  return extra


def from_config(opt, learning_rate: ScalarOrSchedule, *, total_steps: int = 0,
                freeze_steps: int = 0,
                mask: MaskOrFn = None) -> optax.GradientTransformation:
  """The optimizer of a config section `optimizer` at this rate/schedule.

  Weight decay (and LARS's trust ratio) applies to the leaves of
  `decay_mask`: 'kernels' or 'all'. Around it, in order: gradient clipping (`clip_global_norm`,
  `clip_per_parameter`; 0 = off), the optimizer with its weight decay
  (`weight_decay_schedule`: 'constant', or 'cosine' from `weight_decay` to
  `weight_decay_end` over `total_steps`), and the freezing of the
  parameters matching `freeze_pattern` for the first `freeze_steps` updates
  (the caller converts `freeze_epochs`). `mask` replaces the 'kernels'
  mask (e.g. a classifier kept out of LARS's trust ratio).
  """
  extra = config_options(opt)
  decay_mask = opt.get("decay_mask", "kernels")
  if mask is not None:
    if decay_mask != "kernels":
      raise ValueError(f"config.optimizer.decay_mask={decay_mask!r}: this "
                       "run sets its own mask; use 'kernels'")
    extra["mask"] = mask
  elif decay_mask == "all":
    extra["mask"] = lambda params: jax.tree.map(lambda _: True, params)
  elif decay_mask != "kernels":
    raise ValueError(f"config.optimizer.decay_mask={decay_mask!r} is not one "
                     "of ['kernels', 'all']")
  weight_decay = opt.weight_decay
  kind = opt.get("weight_decay_schedule", "constant")
  if kind == "cosine":
    if total_steps <= 0:
      raise ValueError("a cosine weight decay needs the run's total steps")
    weight_decay = cosine_between(opt.weight_decay, opt.weight_decay_end,
                                  total_steps)
  elif kind != "constant":
    raise ValueError(f"config.optimizer.weight_decay_schedule={kind!r} is "
                     "not one of ['constant', 'cosine']")

  def make(offset: int) -> optax.GradientTransformation:
    return create_optimizer(opt.name, freezing.shifted(learning_rate, offset),
                            weight_decay=freezing.shifted(weight_decay, offset),
                            momentum=opt.momentum, **extra)

  pattern = opt.get("freeze_pattern", "")
  if pattern and freeze_steps > 0:
    tx = freezing.freeze(make, freezing.path_mask(pattern), freeze_steps)
  else:
    tx = make(0)
  clips = []
  if opt.get("clip_global_norm", 0.0) > 0:
    clips.append(optax.clip_by_global_norm(opt.clip_global_norm))
  if opt.get("clip_per_parameter", 0.0) > 0:
    clips.append(clip_per_parameter(opt.clip_per_parameter))
  return optax.chain(*clips, tx) if clips else tx
