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
    weight_decay: float,
    momentum: float = 0.9,
    trust_coefficient: float = 1e-3,
    nesterov: bool = False,
    mask: MaskOrFn = None,
    lr_in_momentum: bool = True,
    excluded_lr_scale: float = 1.0,
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

  Args:
    learning_rate: a float or a schedule of the update count (0 at the first
      update).
    weight_decay: L2 coefficient added to the gradient of masked-in leaves.
    momentum: momentum coefficient.
    trust_coefficient: η of the layer-wise trust ratio.
    nesterov: use Nesterov momentum.
    mask: pytree of bools (or function of the params returning one): True
      where weight decay and the trust ratio apply. Defaults to
      `default_lars_mask` (kernels only).
    lr_in_momentum: True for the SimCLR form (rate inside the buffer), False
      for the BYOL form (rate applied to the buffer).
    excluded_lr_scale: rate multiplier of the masked-out leaves.

  Returns:
    An optax transformation; its updates are to be *added* to the params.
  """
  def init_fn(params):
    return LarsState(count=jnp.zeros([], jnp.int32),
                     momentum=jax.tree.map(jnp.zeros_like, params))

  def update_fn(updates, state, params=None):
    if params is None:
      raise ValueError("lars needs the params: call tx.update(grads, state, "
                       "params)")
    lr = learning_rate(state.count) if callable(learning_rate) else learning_rate
    flags = _resolve_mask(mask, params)

    def one(g, p, v, adapt):
      lr_leaf = lr if adapt else excluded_lr_scale * lr
      g = precision.to_full(g)
      p32 = precision.to_full(p)
      if adapt:
        g = g + weight_decay * p32
        p_norm = jnp.linalg.norm(p32)
        g_norm = jnp.linalg.norm(g)
        trust = jnp.where(
            (p_norm > 0) & (g_norm > 0), trust_coefficient * p_norm / g_norm,
            1.0)
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


def _sgd(learning_rate, *, weight_decay, momentum, nesterov=False, mask=None):
  return optax.chain(
      optax.add_decayed_weights(weight_decay, mask=mask or default_lars_mask),
      optax.sgd(learning_rate, momentum=momentum, nesterov=nesterov))


def _lars(learning_rate, *, weight_decay, momentum, nesterov=False,
          trust_coefficient=1e-3, mask=None, lr_in_momentum=True,
          excluded_lr_scale=1.0):
  return lars(learning_rate, weight_decay=weight_decay, momentum=momentum,
              trust_coefficient=trust_coefficient, nesterov=nesterov, mask=mask,
              lr_in_momentum=lr_in_momentum,
              excluded_lr_scale=excluded_lr_scale)


def _adamw(learning_rate, *, weight_decay, momentum, b2=0.999, eps=1e-8,
           mask=None):
  return optax.adamw(learning_rate, b1=momentum, b2=b2, eps=eps,
                     weight_decay=weight_decay, mask=mask or default_lars_mask)


def _lamb(learning_rate, *, weight_decay, momentum, b2=0.999, eps=1e-6,
          mask=None):
  return optax.lamb(learning_rate, b1=momentum, b2=b2, eps=eps,
                    weight_decay=weight_decay, mask=mask or default_lars_mask)


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
      `lr_in_momentum`, `excluded_lr_scale`, `b2`, `eps`, `mask`).

  Returns:
    The optax transformation.
  """
  if name not in OPTIMIZERS:
    raise ValueError(f"unknown optimizer {name!r}; expected one of "
                     f"{sorted(OPTIMIZERS)}")
  return OPTIMIZERS[name](learning_rate, weight_decay=weight_decay,
                          momentum=momentum, **kwargs)


def from_config(opt, learning_rate: ScalarOrSchedule
                ) -> optax.GradientTransformation:
  """The optimizer of a config section `optimizer` at this rate/schedule."""
  extra = {}
  if opt.name in ("lars", "sgd"):
    extra["nesterov"] = opt.nesterov
  if opt.name == "lars":
    extra.update(trust_coefficient=opt.trust_coefficient,
                 lr_in_momentum=opt.lr_in_momentum,
                 excluded_lr_scale=opt.excluded_lr_scale)
  return create_optimizer(opt.name, learning_rate,
                          weight_decay=opt.weight_decay,
                          momentum=opt.momentum, **extra)
