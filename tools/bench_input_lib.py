"""Pieces of `tools/bench_input.py`: what is measured, how it is timed, and
the SimCLR reference design's host colour ops (`data_util.py`), in
TensorFlow with stateless RNG.
"""

import dataclasses
import os
import platform
import sys
import time
from typing import Any, Callable, Dict, Optional, Sequence, Tuple

from jaxssl import view_presets


def log(message: str) -> None:
  """Progress line on stderr (stdout carries only the results)."""
  print(message, file=sys.stderr, flush=True)


def _system_cpu_jiffies() -> Optional[Tuple[int, int]]:
  """(busy, total) jiffies of all CPUs from /proc/stat, or None."""
  try:
    with open("/proc/stat") as f:
      # user nice system idle iowait irq softirq steal (guest is in user).
      fields = [int(v) for v in f.readline().split()[1:9]]
  except (OSError, ValueError):
    return None
  idle = fields[3] + (fields[4] if len(fields) > 4 else 0)  # idle + iowait
  return sum(fields) - idle, sum(fields)


def _system_busy_cores(start: Optional[Tuple[int, int]],
                       end: Optional[Tuple[int, int]]) -> Optional[float]:
  """Cores busy machine-wide between two `_system_cpu_jiffies` readings."""
  if start is None or end is None or end[1] <= start[1]:
    return None
  return (end[0] - start[0]) / (end[1] - start[1]) * (os.cpu_count() or 1)


def cpu_model() -> str:
  """The CPU model from /proc/cpuinfo, or what `platform` knows."""
  try:
    with open("/proc/cpuinfo") as f:
      for line in f:
        if line.startswith("model name"):
          return line.split(":", 1)[1].strip()
  except OSError:
    pass
  return platform.processor() or "unknown CPU"


# --------------------------------------------------------------------------
# The reference's host colour ops (SimCLR `data_util.py`), stateless RNG.
# --------------------------------------------------------------------------


def _maybe(tf, seed, prob: float, fn: Callable[[Any], Any], image):
  """`fn(image)` with probability `prob` (a `tf.cond`, as `random_apply`)."""
  if prob <= 0.0:
    return image
  if prob >= 1.0:
    return fn(image)
  draw = tf.random.stateless_uniform([], seed=seed)
  return tf.cond(draw < prob, lambda: fn(image), lambda: image)


def _color_jitter(tf, image, seed, spec: view_presets.ViewSpec):
  """Brightness, contrast, saturation, hue in random order, clipped after each.

  As SimCLR's `color_jitter_rand`: each strength drawn uniformly, the order a
  random permutation (here `argsort` of stateless uniforms, dispatched with
  `tf.switch_case`).
  """
  seeds = tf.random.experimental.stateless_split(seed, num=5)

  def uniform(i, lo, hi):
    return tf.random.stateless_uniform([], seed=seeds[i], minval=lo, maxval=hi)

  b = spec.brightness
  if spec.multiplicative_brightness:  # SimCLR v2
    factor = uniform(0, max(1.0 - b, 0.0), 1.0 + b)
    brightness = lambda x: x * factor
  else:  # SimCLR v1: tf.image.random_brightness
    delta = uniform(0, -b, b)
    brightness = lambda x: tf.image.adjust_brightness(x, delta)
  contrast = uniform(1, 1.0 - spec.contrast, 1.0 + spec.contrast)
  saturation = uniform(2, 1.0 - spec.saturation, 1.0 + spec.saturation)
  hue = uniform(3, -spec.hue, spec.hue)
  ops = [
      brightness,
      lambda x: tf.image.adjust_contrast(x, contrast),
      lambda x: tf.image.adjust_saturation(x, saturation),
      lambda x: tf.image.adjust_hue(x, hue),
  ]
  order = tf.argsort(tf.random.stateless_uniform([4], seed=seeds[4]))
  for i in range(4):
    image = tf.switch_case(
        order[i], [lambda op=op, x=image: op(x) for op in ops])
    image = tf.clip_by_value(image, 0.0, 1.0)
  return image


def _gaussian_blur(tf, image, sigma, kernel_size: int):
  """Separable Gaussian blur, depthwise convolutions with 'SAME' padding."""
  radius = int(kernel_size / 2)
  taps = 2 * radius + 1
  t = tf.range(-radius, radius + 1, dtype=tf.float32)
  weights = tf.exp(-tf.square(t) / (2.0 * tf.square(sigma)))
  weights /= tf.reduce_sum(weights)
  blur_h = tf.tile(tf.reshape(weights, [1, taps, 1, 1]), [1, 1, 3, 1])
  blur_v = tf.tile(tf.reshape(weights, [taps, 1, 1, 1]), [1, 1, 3, 1])
  x = image[tf.newaxis]
  x = tf.nn.depthwise_conv2d(x, blur_h, strides=[1, 1, 1, 1], padding="SAME")
  x = tf.nn.depthwise_conv2d(x, blur_v, strides=[1, 1, 1, 1], padding="SAME")
  return x[0]


def reference_view(tf, crop, seed, spec: view_presets.ViewSpec, host_blur: bool):
  """One uint8 crop → the reference's augmented float32 view in [0, 1]."""
  seeds = tf.random.experimental.stateless_split(seed, num=6)
  image = tf.image.convert_image_dtype(crop, tf.float32)
  image = _maybe(tf, seeds[0], spec.flip_prob,
                 tf.image.flip_left_right, image)
  image = _maybe(tf, seeds[1], spec.jitter_prob,
                 lambda x: _color_jitter(tf, x, seeds[2], spec), image)
  image = _maybe(
      tf, seeds[3], spec.grayscale_prob,
      lambda x: tf.tile(tf.image.rgb_to_grayscale(x), [1, 1, 3]), image)
  if host_blur:
    sigma = tf.random.stateless_uniform([], seed=seeds[5],
                                        minval=spec.blur_sigma[0],
                                        maxval=spec.blur_sigma[1])
    image = _maybe(
        tf, seeds[4], spec.blur_prob,
        lambda x: _gaussian_blur(tf, x, sigma, spec.blur_kernel_size), image)
  return tf.clip_by_value(image, 0.0, 1.0)


# --------------------------------------------------------------------------
# Measurement.
# --------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Dataset:
  """One dataset to measure.

  Attributes:
    name: its short name in progress lines ('imagenet', 'cifar', or a
      multi-crop layout's 'imagenet 2×224+6×96').
    label: its name in the table.
    path: the zip file.
    split: folder inside the zip, or None.
    specs: the views' crop (and, for the reference, colour) settings.
  """
  name: str
  label: str
  path: str
  split: Optional[str]
  specs: Tuple[view_presets.ViewSpec, ...]


@dataclasses.dataclass(frozen=True)
class Result:
  """One measurement."""
  dataset: Dataset
  pipeline: str
  images: int
  seconds: float
  threads: int
  busy: float  # cores this process kept busy (CPU seconds / wall seconds)
  others_busy: Optional[float] = None  # cores used by other processes

  @property
  def rate(self) -> float:
    return self.images / self.seconds

  @property
  def rate_per_core(self) -> float:
    return self.rate / self.threads

  @property
  def rate_per_busy_core(self) -> float:
    """Images per CPU second of this process: less sensitive than
    `rate_per_core` to other processes taking cores away."""
    return self.rate / self.busy


def check_batch(batch: Dict[str, Any], specs: Sequence[view_presets.ViewSpec],
                batch_size: int, dtype: str) -> None:
  """Fails loudly if a pipeline does not produce what it should."""
  views = batch["views"]
  if len(views) != len(specs):
    raise AssertionError(f"{len(views)} views, expected {len(specs)}")
  for view, spec in zip(views, specs):
    expected = (batch_size, spec.size, spec.size, 3)
    if tuple(view.shape) != expected or view.dtype.name != dtype:
      raise AssertionError(f"view {view.dtype.name}{list(view.shape)}, "
                           f"expected {dtype}{list(expected)}")
  if dtype == "float32":
    lo = min(float(v.numpy().min()) for v in views)
    hi = max(float(v.numpy().max()) for v in views)
    if lo < 0.0 or hi > 1.0:
      raise AssertionError(f"float views outside [0, 1]: [{lo}, {hi}]")


def measure(dataset: Dataset, pipeline: str, ds, *, dtype: str,
            batch_size: int, warmup_batches: int, batches: int,
            seconds: float, threads: int) -> Result:
  """Reads `ds` (views of `dtype`) and times whole batches after a warm-up."""
  what = f"{dataset.name} / {pipeline}"
  iterator = iter(ds)
  start = time.perf_counter()
  for i in range(max(warmup_batches, 1)):  # the first batch is checked
    batch = next(iterator)
    if i == 0:
      check_batch(batch, dataset.specs, batch_size, dtype)
  log(f"  {what}: warm-up {max(warmup_batches, 1)} batch(es) in "
      f"{time.perf_counter() - start:.1f} s; timing "
      + (f"{batches} batches" if batches else f"≥ {seconds:g} s"))
  done = 0
  cpu_start = time.process_time()  # all threads of this process
  system_start = _system_cpu_jiffies()
  start = last_report = time.perf_counter()
  while True:
    next(iterator)
    done += 1
    now = time.perf_counter()
    elapsed = now - start
    if (batches and done >= batches) or (not batches and elapsed >= seconds):
      break
    if now - last_report >= 3.0:
      last_report = now
      log(f"    {done} batches, {elapsed:.1f} s, "
          f"{done * batch_size / elapsed:.1f} img/s")
  busy = (time.process_time() - cpu_start) / elapsed
  system = _system_busy_cores(system_start, _system_cpu_jiffies())
  others = None if system is None else max(system - busy, 0.0)
  result = Result(dataset, pipeline, done * batch_size, elapsed, threads,
                  busy, others)
  log(f"    done: {done} batches in {elapsed:.1f} s → "
      f"{result.rate:.1f} img/s ({result.rate_per_core:.1f} img/s/core, "
      f"{result.rate_per_busy_core:.1f} img/s/busy core); "
      "CPU busy: this process "
      f"{busy:.2f} cores"
      + ("" if others is None else f", other processes {others:.2f} cores"))
  return result
