"""Freezing parameters for the first updates of a run, as PyTorch does.

A PyTorch optimizer skips a parameter whose `.grad` is None: DINO cancels
its last layer's gradients in the first epoch (`cancel_gradients_last_layer`),
SwAV its prototypes' in the first iterations, MoCo v3 its ViT's patch
projection for the whole run. Such a parameter neither moves nor advances
its optimizer state (AdamW's step count included) until it first gets a
gradient. `freeze` gives the frozen parameters an optimizer state of their
own that behaves the same way.
"""

import re
from typing import Any, Callable, NamedTuple, Union

import jax
import jax.numpy as jnp
import optax

PyTree = Any


class FreezeState(NamedTuple):
  """State of `freeze`: the update count and each partition's state."""
  count: jax.Array
  inner: optax.OptState


def freeze(make_inner: Callable[[int], optax.GradientTransformation],
           mask: Union[PyTree, Callable[[PyTree], PyTree]],
           until_step: int) -> optax.GradientTransformation:
  """`make_inner(0)`, with the masked-in parameters frozen for the first
  `until_step` updates, as PyTorch's optimizers skip a parameter whose
  `.grad` is None (DINO's last layer in epoch 1, SwAV's prototypes).

  The frozen parameters are a partition with an optimizer state of its own
  (`optax.multi_transform`): while frozen their updates are zero and that
  state does not move at all, update counts included, so at the unfreezing
  step it is a fresh optimizer, as the reference's (AdamW's bias correction
  starts again at step 1 for them). The schedules (learning rate, weight
  decay) stay those of the global step: the partition's transformation is
  `make_inner(until_step)`, whose schedules read its own count plus
  `until_step`. The other parameters are `make_inner(0)` throughout.

  Args:
    make_inner: `offset -> transformation` whose schedules are evaluated at
      its update count + `offset` (`from_config` builds it from a config).
    mask: True for the frozen parameters (pytree, or function of the
      params, e.g. `path_mask`).
    until_step: updates during which they stay frozen.

  Returns:
    The optax transformation (an `optax.multi_transform` over the labels
    'free' and 'frozen'; the frozen partition's state is a `FreezeState`).
  """
  frozen_tx = make_inner(until_step)

  def frozen_update(updates, state, params=None):
    new_updates, new_state = frozen_tx.update(updates, state.inner, params)
    hold = state.count < until_step
    new_updates = jax.tree.map(
        lambda u: jnp.where(hold, jnp.zeros_like(u), u), new_updates)
    new_state = jax.tree.map(lambda new, old: jnp.where(hold, old, new),
                             new_state, state.inner)
    return new_updates, FreezeState(count=state.count + 1, inner=new_state)

  frozen = optax.GradientTransformation(
      lambda params: FreezeState(count=jnp.zeros([], jnp.int32),
                                 inner=frozen_tx.init(params)),
      frozen_update)

  def labels(params):
    flags = mask(params) if callable(mask) else mask
    return jax.tree.map(lambda m: "frozen" if m else "free", flags)

  return optax.multi_transform({"free": make_inner(0), "frozen": frozen},
                               labels)


def shifted(value: Any, offset: int) -> Any:
  """A schedule (a function of the update count) read `offset` updates
  later, for `make_inner`; a constant as it is."""
  if not callable(value) or not offset:
    return value
  return lambda count: value(count + offset)


def path_mask(pattern: str) -> Callable[[PyTree], PyTree]:
  """True for the parameters whose '/'-joined path (e.g.
  'projector/last/kernel') matches the regular expression `pattern`
  (`re.search`)."""
  regex = re.compile(pattern)

  def mask(params):
    def one(path, _):
      return bool(regex.search("/".join(_key_name(k) for k in path)))
    return jax.tree_util.tree_map_with_path(one, params)
  return mask


def _key_name(key) -> str:
  for attr in ("key", "name", "idx"):
    if hasattr(key, attr):
      return str(getattr(key, attr))
  return str(key)
