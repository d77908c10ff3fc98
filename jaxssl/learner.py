"""The static parts of a train step: `Learner` (method, optimizer, views).

Below the step and its passes (`jaxssl.step`, `jaxssl.gradients`,
`jaxssl.gradcache`, `jaxssl.state`), which all read a `Learner`; it imports
none of them.
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Callable, Optional, Tuple

import flax.linen as nn
import jax
from jax import lax
import optax

from jaxssl import view_presets
from jaxssl import views as views_lib
from jaxssl.methods import base

# How the micro-batches' encoder passes are sequenced
# (`gradcache.unroll_microbatches`).
MICROBATCH_LOOPS = ("auto", "scan", "unrolled")


@dataclasses.dataclass(frozen=True)
class Learner:
  """The static parts of a train step: method, optimizer and view settings.

  Attributes:
    method: views, networks, loss, optional target and state
      (`jaxssl.methods`), built with `axis_name=DATA_AXIS`.
    tx: optax transformation.
    schedule: learning rate as a function of the step (for logging).
    views: `{group: (ViewSpec per view)}`, how each view of each of the
      method's view groups is cropped and augmented.
    probe: the online linear probe's settings, or None.
    microbatches: encoder micro-batches per device and step (1: the plain
      step; > 1: `gradcache.microbatched_gradients`, exact-batch losses
      with the activation memory of one micro-batch).
    microbatch_loop: how the encoder backward passes of the micro-batches
      are sequenced: 'scan', 'unrolled' or 'auto'
      (`gradcache.unroll_microbatches`; `MICROBATCH_LOOPS`).
    epochs_per_step: `batch_size / num_examples` (the float epoch of
      `StepContext`).
    early_views: views of the steps before `early_steps` (same groups and
      sizes as `views`, other crop areas and strengths: WCL's MoCo-v2
      augmentation for its first epochs), or None.
    early_steps: the first step that uses `views` (0: `views` throughout).
    evaluated: 'online' or 'target': the network that kNN, the online probe
      and the export use (`base.Method.evaluated`, `config.eval.network`).
  """
  method: base.Method
  tx: optax.GradientTransformation
  schedule: Callable[[jax.Array], jax.Array]
  views: view_presets.ViewGroups
  probe: Optional["OnlineProbe"] = None
  microbatches: int = 1
  microbatch_loop: str = "auto"
  epochs_per_step: float = 0.0
  early_views: Optional[view_presets.ViewGroups] = None
  early_steps: int = 0
  evaluated: str = "online"

  def __post_init__(self):
    if self.evaluated not in base.EVALUATED:
      raise ValueError(f"config.eval.network={self.evaluated!r} is not one "
                       f"of {['auto', *base.EVALUATED]}")
    if self.evaluated == "target" and self.method.target is None:
      raise ValueError(f"config.eval.network='target': method "
                       f"{self.method.name!r} has no target network")
    if self.microbatches < 1:
      raise ValueError(f"config.train.microbatches={self.microbatches} must "
                       "be at least 1")
    if self.microbatch_loop not in MICROBATCH_LOOPS:
      raise ValueError(f"config.train.microbatch_loop="
                       f"{self.microbatch_loop!r} is not one of "
                       f"{list(MICROBATCH_LOOPS)}")
    want = dict(self.method.views)
    got = {g: len(specs) for g, specs in self.views.items()}
    if got != want:
      raise ValueError(f"method {self.method.name!r} takes view groups "
                       f"{want}; the views made are {got}")
    if self.early_steps and (self.early_views is None or (
        view_sizes(self.early_views) != view_sizes(self.views))):
      raise ValueError("early views need the groups and sizes of the views; "
                       f"got {self.early_views} before step "
                       f"{self.early_steps}, then {self.views}")

  def make_views(self, batch: dict, rng: jax.Array, step: jax.Array,
                 **kwargs) -> dict:
    """`views.make_views` with the views of `step` (the early ones before
    `early_steps`, chosen in the compiled step)."""
    late = functools.partial(views_lib.make_views, batch, rng,
                             groups=self.views, **kwargs)
    if not self.early_steps:
      return late()
    early = functools.partial(views_lib.make_views, batch, rng,
                              groups=self.early_views, **kwargs)
    return lax.cond(step < self.early_steps, early, late)

  @property
  def network(self) -> nn.Module:
    return self.method.network

  @property
  def evaluated_network(self) -> nn.Module:
    """The module of the evaluated network (`evaluated`)."""
    if self.evaluated == "target":
      return self.method.target.network
    return self.method.network

  @property
  def view_specs(self) -> Tuple[view_presets.ViewSpec, ...]:
    """Every view's spec, in group order (as host pipelines crop them)."""
    return view_presets.flatten(self.views)

  @property
  def image_size(self) -> int:
    return self.view_specs[0].size


def view_sizes(groups: view_presets.ViewGroups) -> dict:
  """`{group: (size of each view)}`: what two view settings must share to
  make arrays of the same shapes."""
  return {g: tuple(spec.size for spec in specs) for g, specs in groups.items()}


@dataclasses.dataclass(frozen=True)
class OnlineProbe:
  """A linear classifier trained during pretraining on stop-gradient
  encoder features of every augmented view, with its own optimizer."""
  num_classes: int
  tx: optax.GradientTransformation
