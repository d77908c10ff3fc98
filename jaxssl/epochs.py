"""Steps ↔ epochs, in one place (big_vision's `u.steps` style).

Every input source streams examples continuously: epoch e is a permutation
of the N training examples, and a global batch of B examples may take its
last examples from epoch e and its first from epoch e + 1 (nothing is
dropped). After step s the run has therefore seen s·B examples, i.e.
s·B/N epochs, whatever the source.

The run's length in steps follows `config.steps_rule`:

* 'simclr' (SimCLR reference): `N·E // B + 1` steps;
* 'floor' (BYOL reference): `N·E // B` steps.

Epoch k (an integer below E) ends at the first step whose batch completes
it, `ceil(k·N / B)`; the last step of the run ends epoch E, and absorbs what
follows the last integer boundary (the SimCLR rule's extra step is not an
epoch of its own). Epoch summaries and `eval.every_epochs` evaluations
happen at those steps, and logged epochs never exceed `config.epochs`.
"""

from __future__ import annotations

import dataclasses
import math
from typing import TYPE_CHECKING, Optional, Union

if TYPE_CHECKING:  # configs are only read here: no runtime dependency
  import ml_collections

STEPS_RULES = ("floor", "simclr")
Epoch = Union[int, float]


def check_steps_rule(rule: str) -> None:
  """Fails on a `config.steps_rule` that is not one of `STEPS_RULES`."""
  if rule not in STEPS_RULES:
    raise ValueError(f"config.steps_rule={rule!r} is not one of "
                     f"{list(STEPS_RULES)}")


def total_steps(config: ml_collections.ConfigDict, num_examples: int) -> int:
  """Steps of the run (and of its lr and τ schedules), per `steps_rule`."""
  return RunLength.from_config(config, num_examples).total_steps


def warmup_steps(num_examples: int, warmup_epochs: float,
                 batch_size: int) -> int:
  """Warm-up length of the SimCLR reference: `round(warmup_epochs·N // B)`."""
  return int(round(warmup_epochs * num_examples // batch_size))


def simclr_total_steps(num_examples: int, epochs: float,
                       batch_size: int) -> int:
  """Training length of the SimCLR reference: `N·epochs // B + 1`."""
  return int(num_examples * epochs // batch_size + 1)


def _integral(value: float) -> Epoch:
  return int(value) if float(value).is_integer() else float(value)


@dataclasses.dataclass(frozen=True)
class RunLength:
  """The steps and epochs of one run.

  Attributes:
    num_examples: N, training examples per epoch (all processes).
    batch_size: B, the global batch size.
    epochs: E, the configured length in epochs (may be fractional).
    total_steps: the run's steps.
  """
  num_examples: int
  batch_size: int
  epochs: float
  total_steps: int

  @classmethod
  def create(cls, num_examples: int, batch_size: int, epochs: float,
             steps_rule: str = "simclr") -> "RunLength":
    """The length of E epochs of N examples at batch B under `steps_rule`."""
    check_steps_rule(steps_rule)
    if num_examples <= 0 or batch_size <= 0 or epochs <= 0:
      raise ValueError(f"a run needs examples ({num_examples}), a batch size "
                       f"({batch_size}) and epochs ({epochs}) above 0")
    steps = (simclr_total_steps(num_examples, epochs, batch_size)
             if steps_rule == "simclr"
             else int(num_examples * epochs // batch_size))
    if steps <= 0:
      raise ValueError(f"{num_examples} examples × config.epochs={epochs} // "
                       f"config.batch_size={batch_size} is 0 steps")
    return cls(num_examples, batch_size, _integral(epochs), steps)

  @classmethod
  def from_config(cls, config: ml_collections.ConfigDict,
                  num_examples: int) -> "RunLength":
    """`create` with `config.batch_size`, `config.epochs`, `steps_rule`."""
    check_steps_rule(config.steps_rule)
    return cls.create(num_examples, config.batch_size, config.epochs,
                      config.steps_rule)

  def epoch(self, step: int) -> float:
    """Epochs of data seen after `step` steps, at most `epochs`."""
    return min(step * self.batch_size / self.num_examples, self.epochs)

  def epoch_end(self, step: int) -> Optional[Epoch]:
    """The epoch that `step` completes (an int, or `epochs` at the last
    step), or None."""
    if step == self.total_steps:
      return self.epochs
    if not 0 < step < self.total_steps:
      return None
    done = step * self.batch_size // self.num_examples
    before = (step - 1) * self.batch_size // self.num_examples
    return done if done > before and done < self.epochs else None

  def end_step(self, epoch: int) -> int:
    """The step that completes integer `epoch` (the last step for `epochs`
    and beyond)."""
    if epoch >= self.epochs:
      return self.total_steps
    return min(-(-epoch * self.num_examples // self.batch_size),
               self.total_steps)

  def steps_until(self, epochs: float) -> int:
    """Steps that have seen less than `epochs` (float) epochs of data,
    `ceil(epochs·N / B)`, at most the run; a negative value is the whole
    run (`optimizer.freeze_epochs=-1`)."""
    if epochs < 0:
      return self.total_steps
    return min(math.ceil(epochs * self.num_examples / self.batch_size),
               self.total_steps)

  def eval_due(self, step: int, every_epochs: int) -> bool:
    """Whether `eval.every_epochs=every_epochs` evaluates after `step`: at
    the end of every `every_epochs`-th epoch, not at the last step (the
    final evaluation is separate)."""
    epoch = self.epoch_end(step)
    return bool(every_epochs) and step < self.total_steps and (
        epoch is not None and epoch % every_epochs == 0)

  def warmup_warning(self, warmup_epochs: float) -> Optional[str]:
    """A message when a warm-up of `warmup_epochs` covers the whole run."""
    if warmup_epochs < self.epochs:
      return None
    return (f"config.optimizer.warmup_epochs={warmup_epochs} is not below "
            f"config.epochs={self.epochs}: the learning rate never leaves "
            "warm-up and never reaches its peak (set "
            "--config.optimizer.warmup_epochs to a fraction of the run, e.g. "
            f"{max(self.epochs / 10, 0.1):.3g})")


def describe(length: RunLength) -> str:
  """E.g. '225 steps (40 epochs of 1437 examples at batch 256)'."""
  per_epoch = length.num_examples / length.batch_size
  return (f"{length.total_steps} steps ({length.epochs} epochs of "
          f"{length.num_examples} examples at batch {length.batch_size}, "
          f"{per_epoch:.4g} steps per epoch)")
