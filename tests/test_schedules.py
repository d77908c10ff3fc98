"""Tests for `jaxssl.schedules` (SimCLR `WarmUpAndCosineDecay`)."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxssl import schedules

# ImageNet, batch 4096, 100 epochs, 10 warm-up epochs (SimCLR defaults).
_N = 1_281_167
_BATCH = 4096
_EPOCHS = 100
_WARMUP_EPOCHS = 10
_STEPS = [0, 1, 1000, 3126, 3127, 10000, 20000, 31278, 31279, 40000]


def _ref_lr(step, peak, warmup, total):
  """Independent math-module formula of the warm-up + cosine schedule."""
  if step < warmup:
    return step / warmup * peak
  progress = min(step - warmup, total - warmup) / (total - warmup)
  return peak * 0.5 * (1.0 + math.cos(math.pi * progress))


def _imagenet(base_lr, scaling):
  return schedules.warmup_cosine(
      base_lr, batch_size=_BATCH, num_examples=_N, epochs=_EPOCHS,
      warmup_epochs=_WARMUP_EPOCHS, scaling=scaling)


def test_step_counts_imagenet():
  """Hard-coded SimCLR step counts: 3127 warm-up steps, 31279 in total."""
  assert schedules.warmup_steps(_N, _WARMUP_EPOCHS, _BATCH) == 3127
  assert schedules.simclr_total_steps(_N, _EPOCHS, _BATCH) == 31279


@pytest.mark.parametrize("num_examples,epochs,warmup_epochs,batch_size", [
    (50_000, 1000, 10, 512),
    (50_000, 800, 0.5, 1024),
    (1_281_167, 90, 0, 256),
    (10, 3, 1, 4),
])
def test_step_counts_formula(num_examples, epochs, warmup_epochs, batch_size):
  """Step counts follow the reference's integer arithmetic."""
  want_warmup = int(round(warmup_epochs * num_examples // batch_size))
  want_total = num_examples * epochs // batch_size + 1
  assert schedules.warmup_steps(
      num_examples, warmup_epochs, batch_size) == want_warmup
  assert schedules.simclr_total_steps(
      num_examples, epochs, batch_size) == want_total


@pytest.mark.parametrize("base_lr,scaling", [(0.3, "linear"), (0.075, "sqrt")])
def test_warmup_cosine_values(base_lr, scaling):
  """Values at key steps equal the float64 formula; peak 4.8 at step 3127 and
  zero from the last step on, for both scalings."""
  sched = _imagenet(base_lr, scaling)
  peak = (base_lr * _BATCH / 256 if scaling == "linear"
          else base_lr * math.sqrt(_BATCH))
  assert peak == pytest.approx(4.8, rel=1e-12)
  for step in _STEPS:
    want = _ref_lr(step, peak, 3127, 31279)
    np.testing.assert_allclose(float(sched(step)), want, rtol=1e-5, atol=1e-6,
                               err_msg=f"step {step}")
  # Hard-coded facts.
  assert float(sched(0)) == 0.0
  np.testing.assert_allclose(float(sched(1)), 4.8 / 3127, rtol=1e-5)
  np.testing.assert_allclose(float(sched(3127)), 4.8, rtol=1e-5)
  assert float(sched(3126)) < float(sched(3127))
  np.testing.assert_allclose(float(sched(31279)), 0.0, atol=1e-6)
  np.testing.assert_allclose(float(sched(40000)), 0.0, atol=1e-6)
  # Half-way through the decay the rate is half the peak.
  mid = 3127 + (31279 - 3127) // 2
  np.testing.assert_allclose(float(sched(mid)), 2.4, rtol=1e-5)


def test_warmup_cosine_under_jit_with_traced_int32_step():
  """The schedule accepts a traced int32 step inside jit (and vmap)."""
  sched = _imagenet(0.3, "linear")
  steps = jnp.asarray(_STEPS, dtype=jnp.int32)
  got = jax.jit(jax.vmap(sched))(steps)
  want = [_ref_lr(s, 4.8, 3127, 31279) for s in _STEPS]
  np.testing.assert_allclose(np.asarray(got), want, rtol=1e-5, atol=1e-6)
  one = jax.jit(sched)(jnp.int32(10000))
  np.testing.assert_allclose(float(one), _ref_lr(10000, 4.8, 3127, 31279),
                             rtol=1e-5)


def test_warmup_cosine_total_steps_override():
  """An explicit total_steps replaces the epoch-derived length."""
  sched = schedules.warmup_cosine(
      1.0, batch_size=512, num_examples=50_000, epochs=100, warmup_epochs=1,
      total_steps=500)
  peak = 1.0 * 512 / 256
  warmup = int(round(1 * 50_000 // 512))  # 97
  for step in [0, 50, 96, 97, 200, 300, 499, 500, 700]:
    np.testing.assert_allclose(float(sched(step)),
                               _ref_lr(step, peak, warmup, 500),
                               rtol=1e-5, atol=1e-6, err_msg=f"step {step}")
  np.testing.assert_allclose(float(sched(500)), 0.0, atol=1e-6)


def test_warmup_cosine_no_warmup_starts_at_peak():
  """With zero warm-up epochs the first step already uses the peak rate."""
  sched = schedules.warmup_cosine(
      0.1, batch_size=1024, num_examples=10_000, epochs=10, warmup_epochs=0)
  total = 10_000 * 10 // 1024 + 1  # 98
  peak = 0.1 * 1024 / 256
  np.testing.assert_allclose(float(sched(0)), peak, rtol=1e-5)
  for step in [0, 1, 40, 97, 98, 150]:
    np.testing.assert_allclose(float(sched(step)), _ref_lr(step, peak, 0, total),
                               rtol=1e-5, atol=1e-6, err_msg=f"step {step}")


def test_warmup_cosine_unknown_scaling():
  """An unknown learning-rate scaling raises ValueError."""
  with pytest.raises(ValueError):
    schedules.warmup_cosine(
        0.3, batch_size=_BATCH, num_examples=_N, epochs=_EPOCHS,
        warmup_epochs=_WARMUP_EPOCHS, scaling="quadratic")


def test_epoch_cosine_is_set_once_per_epoch():
  """MoCo v1/v2's `adjust_learning_rate(--cos)`: base·B/256·(1 + cos(π·e/E))/2
  with e the epoch of the step as the reference's loader (last partial
  batch dropped: 10 steps per epoch here) counts it, no warm-up."""
  n, batch, epochs = 1000, 96, 5  # 10.42 batches, 10 steps per epoch
  fn = schedules.epoch_cosine(0.03, batch_size=batch, num_examples=n,
                              epochs=epochs)
  peak = 0.03 * batch / 256
  for step in range(0, 60):
    epoch = min(step // 10, epochs)
    want = peak * 0.5 * (1 + math.cos(math.pi * epoch / epochs))
    assert float(fn(jnp.int32(step))) == pytest.approx(want, rel=1e-6), step
  assert float(fn(9)) == float(fn(0)) == pytest.approx(peak)
  assert float(fn(10)) < peak
  assert float(fn(50)) == float(fn(10**9)) == 0.0  # past E: clamped


def test_schedule_from_config_and_target_momentum():
  from jaxssl import config_utils  # pylint: disable=import-outside-toplevel
  c = config_utils.base_config()
  c.optimizer.schedule = "epoch_cosine"
  c.optimizer.warmup_epochs = 10.0
  with pytest.raises(ValueError, match="has no warm-up"):
    schedules.from_config(c.optimizer, batch_size=256, num_examples=1000,
                          epochs=10, total_steps=39)
  c.optimizer.schedule = "linear"
  with pytest.raises(ValueError, match="schedule='linear' is not one of"):
    schedules.from_config(c.optimizer, batch_size=256, num_examples=1000,
                          epochs=10, total_steps=39)
  c.target.base_momentum = 0.99
  cosine = schedules.ema_momentum(0.99, 100)
  shifted = schedules.target_momentum(c.target, 100, shift=1)
  for step in (0, 1, 50, 99, 100):
    assert float(shifted(step)) == pytest.approx(float(cosine(step + 1)))
  c.target.momentum_schedule = "constant"
  c.target.base_momentum = 0.999
  assert float(schedules.target_momentum(c.target, 100)(70)) == pytest.approx(
      0.999)
  c.target.momentum_schedule = "step"
  with pytest.raises(ValueError, match="momentum_schedule='step'"):
    schedules.target_momentum(c.target, 100)


def test_warmup_cosine_from_a_start_to_a_final_rate():
  """SwAV's `start_warmup` and `final_lr`, DINO's `min_lr`: linear from
  start to the peak, then `end + (peak − end)(1 + cos(π·t/T))/2`."""
  fn = schedules.warmup_cosine(0.6, batch_size=256, num_examples=2560,
                               epochs=10, warmup_epochs=2, total_steps=100,
                               start_lr=0.1, end_lr=6e-4)
  peak, warmup, decay = 0.6, 20, 80
  for step in (0, 5, 19, 20, 50, 99, 100, 150):
    if step < warmup:
      want = 0.1 + step / warmup * (peak - 0.1)
    else:
      t = min(step - warmup, decay)
      want = 6e-4 + (peak - 6e-4) * 0.5 * (1 + math.cos(math.pi * t / decay))
    assert float(fn(step)) == pytest.approx(want, rel=1e-5, abs=1e-7), step
