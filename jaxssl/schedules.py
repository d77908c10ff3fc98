"""Learning-rate (and later momentum/temperature) schedules: plain functions of the step."""

import math
from typing import Callable, Optional, Sequence, Union

import jax
import jax.numpy as jnp
import numpy as np

from jaxssl import precision
# Steps of epochs, as the references count them (`jaxssl.epochs`).
from jaxssl.epochs import simclr_total_steps, warmup_steps  # pylint: disable=unused-import

Schedule = Callable[[Union[int, jax.Array]], jax.Array]

_SCALINGS = ("linear", "sqrt")


def scale_learning_rate(base_lr: float, batch_size: int, scaling: str) -> float:
  """Peak learning rate: `base·B/256` (linear) or `base·√B` (sqrt)."""
  if scaling == "linear":
    return base_lr * batch_size / 256.0
  if scaling == "sqrt":
    return base_lr * math.sqrt(batch_size)
  raise ValueError(f"unknown learning-rate scaling {scaling!r}; expected one "
                   f"of {_SCALINGS}")


def warmup_cosine(
    base_lr: float,
    *,
    batch_size: int,
    num_examples: int,
    epochs: float,
    warmup_epochs: float,
    scaling: str = "linear",
    total_steps: Optional[int] = None,
    start_lr: float = 0.0,
    end_lr: float = 0.0,
) -> Schedule:
  """Linear warm-up then cosine decay to zero, as the SimCLR reference.

  `WarmUpAndCosineDecay` of the SimCLR TF2 code (Chen et al. 2020,
  https://arxiv.org/abs/2002.05709, appendix B.1): the rate grows linearly from
  0 to the peak over `round(warmup_epochs·N // B)` steps, then follows
  `peak·(1 + cos(π·t/T))/2` over the remaining `T = total - warmup` steps and
  stays at 0 after them.

  Args:
    base_lr: learning rate per 256 examples (linear) or per example (sqrt).
    batch_size: global batch size B.
    num_examples: examples per epoch N.
    epochs: training length in epochs.
    warmup_epochs: warm-up length in epochs.
    scaling: 'linear' (peak = base·B/256) or 'sqrt' (peak = base·√B).
    total_steps: overrides the reference's `N·epochs // B + 1` (BYOL uses
      `epochs·N // B`).
    start_lr: the rate the warm-up starts from (SwAV's `start_warmup`).
    end_lr: the rate the cosine ends at (DINO's `min_lr`, SwAV's
      `final_lr`): `end + (peak − end)·(1 + cos(π·t/T))/2`.

  Returns:
    A function of the (integer, possibly traced) step giving the rate.
  """
  peak = scale_learning_rate(base_lr, batch_size, scaling)
  warmup = warmup_steps(num_examples, warmup_epochs, batch_size)
  total = (simclr_total_steps(num_examples, epochs, batch_size)
           if total_steps is None else int(total_steps))
  decay_steps = max(total - warmup, 1)

  def schedule(step):
    step = precision.to_full(step)
    if warmup > 0:
      warm = start_lr + step / warmup * (peak - start_lr)
    else:
      warm = precision.to_full(peak)
    t = jnp.clip(step - warmup, 0.0, decay_steps)
    cosine = end_lr + (peak - end_lr) * 0.5 * (
        1.0 + jnp.cos(jnp.pi * t / decay_steps))
    return jnp.where(step < warmup, warm, cosine)

  return schedule


def ema_momentum(base_tau: float, total_steps: int) -> Schedule:
  """BYOL's target decay: `τ_k = 1 − (1 − τ_base)·(cos(πk/K) + 1)/2`.

  Grill et al. 2020 (https://arxiv.org/abs/2006.07733), §3.2: τ rises from
  `base_tau` at step 0 to 1 at step `K = total_steps`; steps past K keep
  τ = 1 (the step is clamped).

  Args:
    base_tau: τ at step 0 (0.99 for 300 epochs, 0.996 for 1000).
    total_steps: K, the length of training.

  Returns:
    A function of the (possibly traced) step giving τ.
  """
  if total_steps <= 0:
    raise ValueError(f"ema_momentum: total_steps={total_steps} must be > 0")

  def schedule(step):
    k = jnp.clip(precision.to_full(step), 0.0, total_steps)
    return 1.0 - (1.0 - base_tau) * (jnp.cos(jnp.pi * k / total_steps) + 1.0) / 2.0

  return schedule


def epoch_cosine(base_lr: float, *, batch_size: int, num_examples: int,
                 epochs: float, scaling: str = "linear") -> Schedule:
  """Cosine decay set once per epoch, no warm-up: MoCo v1/v2's
  `adjust_learning_rate` (He et al. 2020, https://arxiv.org/abs/1911.05722;
  Chen et al. 2020, https://arxiv.org/abs/2003.04297, `--cos`).

  Epochs are counted as the reference's loader does (the last partial
  batch dropped): step `t` is in epoch `e = t // ⌊N/B⌋` and gets
  `peak·(1 + cos(π·min(e, E)/E))/2` (E = `epochs`, peak = base·B/256 or
  base·√B as `scale_learning_rate`).
  """
  peak = scale_learning_rate(base_lr, batch_size, scaling)
  if epochs <= 0:
    raise ValueError(f"epoch_cosine: epochs={epochs} must be positive")
  steps_per_epoch = max(num_examples // batch_size, 1)

  def schedule(step):
    epoch = jnp.asarray(step) // steps_per_epoch  # integer division
    e = jnp.minimum(precision.to_full(epoch), epochs)
    return peak * 0.5 * (1.0 + jnp.cos(jnp.pi * e / epochs))

  return schedule


def multistep(base_lr: float, *, batch_size: int, num_examples: int,
              decay_epochs: Sequence[float], factor: float = 0.1,
              scaling: str = "linear",
              values: Sequence[float] = ()) -> Schedule:
  """The rate times `factor` at each of `decay_epochs`, set once per epoch:
  MoCo v1/v2's linear classification (`main_lincls.py`, `--schedule 60 80`,
  ×0.1). Epochs are counted as `epoch_cosine` does: step `t` is in epoch
  `e = t // ⌊N/B⌋` and gets `peak·factor^#{d in decay_epochs: e ≥ d}`.
  `values` (one per decay epoch) replaces the powers of `factor` by
  given multipliers of the peak: InvaSpread's ×0.1 at 120, ×0.05 at 160,
  ×0.01 at 200.
  """
  peak = scale_learning_rate(base_lr, batch_size, scaling)
  steps_per_epoch = max(num_examples // batch_size, 1)
  bounds = tuple(float(d) for d in decay_epochs)
  if values and len(values) != len(bounds):
    raise ValueError(f"config.optimizer.decay_values={tuple(values)} needs "
                     f"one value per decay epoch {bounds}")
  table = jnp.asarray((1.0, *values) if values else
                      [factor ** i for i in range(len(bounds) + 1)],
                      precision.full_dtype())

  def schedule(step):
    epoch = jnp.asarray(step) // steps_per_epoch
    passed = sum((epoch >= d).astype(jnp.int32) for d in bounds)
    return peak * table[passed]

  return schedule


LR_SCHEDULES = ("warmup_cosine", "epoch_cosine", "multistep")


def from_config(opt, *, batch_size: int, num_examples: int, epochs: float,
                total_steps: int) -> Schedule:
  """The learning rate of config section `optimizer` (`opt.schedule`)."""
  kind = opt.get("schedule", "warmup_cosine")
  if kind == "warmup_cosine":
    return warmup_cosine(opt.base_lr, batch_size=batch_size,
                         num_examples=num_examples, epochs=epochs,
                         warmup_epochs=opt.warmup_epochs,
                         scaling=opt.lr_scaling, total_steps=total_steps,
                         start_lr=opt.get("warmup_start_lr", 0.0),
                         end_lr=opt.get("final_lr", 0.0))
  if kind in ("epoch_cosine", "multistep") and opt.warmup_epochs:
    raise ValueError(f"config.optimizer.schedule={kind!r} has no warm-up; "
                     "set config.optimizer.warmup_epochs=0 (got "
                     f"{opt.warmup_epochs})")
  if kind == "epoch_cosine":
    return epoch_cosine(opt.base_lr, batch_size=batch_size,
                        num_examples=num_examples, epochs=epochs,
                        scaling=opt.lr_scaling)
  if kind == "multistep":
    return multistep(opt.base_lr, batch_size=batch_size,
                     num_examples=num_examples,
                     decay_epochs=tuple(opt.get("decay_epochs", ())),
                     factor=opt.get("decay_factor", 0.1),
                     scaling=opt.lr_scaling,
                     values=tuple(opt.get("decay_values", ())))
  raise ValueError(f"config.optimizer.schedule={kind!r} is not one of "
                   f"{list(LR_SCHEDULES)}")


def target_momentum(target, total_steps: int, *, shift: int = 0) -> Schedule:
  """τ of config section `target`: `ema_momentum(base_momentum)` for
  `momentum_schedule='cosine'`, else the constant `base_momentum`.

  `shift` evaluates the cosine `shift` steps later: MoCo v3 sets the
  momentum of iteration t+1 before it updates the momentum encoder towards
  the weights after step t, which the train step applies at the end of
  step t (`shift=1`).
  """
  kind = target.get("momentum_schedule", "cosine")
  base_tau = target.base_momentum
  if not 0.0 <= base_tau <= 1.0:
    raise ValueError(f"config.target.base_momentum={base_tau} is not in "
                     "[0, 1]")
  if kind == "constant":
    return lambda step: jnp.full([], base_tau, precision.full_dtype())
  if kind != "cosine":
    raise ValueError(f"config.target.momentum_schedule={kind!r} is not one "
                     "of ['cosine', 'constant']")
  cosine = ema_momentum(base_tau, total_steps)
  return lambda step: cosine(step + shift)


def dino_teacher_temperature(warmup_temperature: float, temperature: float,
                             warmup_epochs: int, epochs: int,
                             steps_per_epoch: int) -> Schedule:
  """DINO's teacher temperature (Caron et al. 2021,
  https://arxiv.org/abs/2104.14294, §4 and `DINOLoss`): the reference's
  per-epoch array, `linspace(warmup_temperature, temperature,
  warmup_epochs)` then `temperature` to `epochs`, indexed by
  `step // steps_per_epoch` (clamped to the last epoch).
  """
  if not 0 <= warmup_epochs <= epochs or steps_per_epoch <= 0:
    raise ValueError(f"dino_teacher_temperature: need 0 <= warmup_epochs="
                     f"{warmup_epochs} <= epochs={epochs} and steps_per_epoch"
                     f"={steps_per_epoch} > 0")
  table = np.concatenate([
      np.linspace(warmup_temperature, temperature, int(warmup_epochs)),
      np.full(int(epochs) - int(warmup_epochs), temperature)])

  def schedule(step):
    epoch = jnp.minimum(jnp.asarray(step) // steps_per_epoch, len(table) - 1)
    return jnp.asarray(table, precision.full_dtype())[epoch]

  return schedule
