r"""Host input-pipeline throughput: our tf.data design vs. the SimCLR one.

COMMAND (from the repository root):

  .venv/bin/python tools/bench_input.py

  Options: --which=imagenet|cifar|both, --threads=N (default: all cores),
  --batch_size=64, --warmup_batches=3, --batches=N (default: as many whole
  batches as fit in --seconds=15 per measurement), --imagenet_zip=...,
  --cifar_zip=... (default: ../shared/datasets/ next to the repository).

What is measured, per dataset:

  ours       `input_pipeline.pretrain_dataset` exactly as training builds it:
             read the JPEG, decode, cut one random-resized crop per view
             (`random_crop_resize`, bicubic), uint8 out. Flip, colour jitter,
             grayscale, blur and solarisation run later on the accelerator
             (`jaxssl.augment`), so they cost the host nothing.
  reference  the SimCLR reference design (`data_util.preprocess_for_train`):
             the same read, decode and crops (our `pretrain_dataset`, unbatched)
             followed, per view, by everything on the host in tf.data:
             float32 in [0, 1], random flip, colour jitter with p 0.8
             (brightness, contrast, saturation, hue in random order, clipped
             after each, as `color_jitter_rand`), grayscale with p 0.2,
             Gaussian blur with p 0.5 (σ ~ U(0.1, 2), kernel size = side // 10,
             i.e. 23 taps at 224 px, separable depthwise convolution with
             'SAME' zero padding), float32 out (4× the bytes of uint8).
             Strengths come from the same view specs, so CIFAR-10 gets the
             reference's CIFAR settings (strength 0.5, no blur). Note that the
             SimCLR code itself blurs on the accelerator (`batch_random_blur`);
             `--noreference_host_blur` leaves the blur out of the host work.

Datasets:

  imagenet   `imagenet-sample-jpeg.zip`: 250 full-size ImageNet JPEGs
             (mean 467×395), no labels, no split; two 224 px views
             (`view_specs('simclr_v2', image_size=224, color_strength=1.0,
             blur=True)`). The pipeline repeats the 250 images: every image is
             decoded from its bytes again on every pass (the zip's bytes sit in
             the page cache, so this measures decode + crop, not disk).
  cifar      `cifar10-jpeg.zip`, split 'train' (50,000 32×32 JPEGs); two 32 px
             views (`view_specs('simclr_cifar', image_size=32,
             color_strength=0.5, blur=False)`, as configs/simclr_cifar10.py).

Cores: tf.data runs on a private thread pool of `--threads` threads
(`options.threading.private_threadpool_size`, and `autotune.cpu_budget` to
match); images/s per core divides by that number. Images/s counts source
images; each yields two views.

Output: progress on stderr; on stdout a header and one markdown table row per
measurement, then the ours/reference ratio per dataset. The progress lines
also give the CPU this process kept busy and, from /proc/stat, what other
processes used meanwhile; a WARNING line marks measurements during which other
processes held more than a quarter of a core (rerun those on an idle machine).
"""

import dataclasses
import datetime
import os
import platform
import sys
import time
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

from absl import app
from absl import flags

# Before TensorFlow loads (lazily, in `input_pipeline.tf_module`).
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")  # fewer TF C++ logs

_REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if _REPO_ROOT not in sys.path:  # run as a script: tools/ is sys.path[0]
  sys.path.insert(0, _REPO_ROOT)

# pylint: disable=g-import-not-at-top,wrong-import-position
from jaxssl import view_presets
from jaxssl.data import input_pipeline
# pylint: enable=g-import-not-at-top,wrong-import-position

_DATASETS_DIR = os.path.normpath(os.path.join(_REPO_ROOT, "..", "shared",
                                              "datasets"))

FLAGS = flags.FLAGS
flags.DEFINE_string(
    "imagenet_zip", os.path.join(_DATASETS_DIR, "imagenet-sample-jpeg.zip"),
    "Zip of ImageNet JPEGs (no split, unlabelled is fine).")
flags.DEFINE_string(
    "cifar_zip", os.path.join(_DATASETS_DIR, "cifar10-jpeg.zip"),
    "Zip of CIFAR-10 JPEGs laid out train/<class>/<file>.")
flags.DEFINE_enum("which", "both", ["imagenet", "cifar", "both"],
                  "Which dataset(s) to measure.")
flags.DEFINE_integer("batch_size", 64, "Images per batch.")
flags.DEFINE_integer("warmup_batches", 3,
                     "Batches read (and not timed) before each measurement.")
flags.DEFINE_integer(
    "batches", 0,
    "Timed batches per measurement; 0: as many as fit in --seconds.")
flags.DEFINE_float("seconds", 15.0,
                   "Time per measurement when --batches=0 (whole batches, so "
                   "a measurement runs at least this long).")
flags.DEFINE_integer("threads", os.cpu_count() or 1,
                     "tf.data private thread pool size (host cores used).")
flags.DEFINE_integer("seed", 0, "Shuffle and augmentation seed.")
flags.DEFINE_bool(
    "reference_host_blur", True,
    "Include the Gaussian blur in the reference's host work (SimCLR's own "
    "code applies it on the accelerator).")

OURS = "ours: decode+crops uint8"
REFERENCE = "reference: +host colour ops float32"


def _log(message: str) -> None:
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


def _cpu_model() -> str:
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
# Pipelines.
# --------------------------------------------------------------------------


def _thread_options(tf, threads: int):
  """tf.data options pinning the pipeline to `threads` host threads."""
  options = tf.data.Options()
  options.threading.private_threadpool_size = threads
  options.autotune.cpu_budget = threads
  return options


def ours_dataset(source: input_pipeline.HostSource,
                 specs: Sequence[view_presets.ViewSpec], *, batch_size: int,
                 seed: int, threads: int):
  """Our training pipeline as is, on `threads` threads."""
  tf = input_pipeline.tf_module()
  ds = input_pipeline.pretrain_dataset(source, specs, batch_size=batch_size,
                                       seed=seed)
  return ds.with_options(_thread_options(tf, threads))


def reference_dataset(source: input_pipeline.HostSource,
                      specs: Sequence[view_presets.ViewSpec], *, batch_size: int,
                      seed: int, threads: int, host_blur: bool):
  """Our pipeline's crops, then the reference's colour ops per view, float32.

  The colour ops are seeded per (seed, epoch, example, view) with
  `input_pipeline._stateless_seed`, like the crops. Unbatching and
  rebatching copies the uint8 crops once more (a memcpy, small next to the
  float colour ops).
  """
  tf = input_pipeline.tf_module()
  crops = input_pipeline.pretrain_dataset(source, specs, batch_size=batch_size,
                                          seed=seed)

  def augment_views(example: Dict[str, Any]) -> Dict[str, Any]:
    views = tuple(
        reference_view(
            tf, crop,
            input_pipeline._stateless_seed(  # pylint: disable=protected-access
                tf, seed, example["epoch"], example["index"], v),
            spec, host_blur)
        for v, (crop, spec) in enumerate(zip(example["views"], specs)))
    return dict(example, views=views)

  ds = crops.unbatch().map(augment_views, num_parallel_calls=tf.data.AUTOTUNE,
                           deterministic=True)
  ds = ds.batch(batch_size, drop_remainder=True).prefetch(tf.data.AUTOTUNE)
  return ds.with_options(_thread_options(tf, threads))


# --------------------------------------------------------------------------
# Measurement.
# --------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Dataset:
  """One dataset to measure.

  Attributes:
    name: 'imagenet' or 'cifar'.
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
  others_busy: Optional[float] = None  # cores used by other processes

  @property
  def rate(self) -> float:
    return self.images / self.seconds

  @property
  def rate_per_core(self) -> float:
    return self.rate / self.threads


def _check_batch(batch: Dict[str, Any], specs: Sequence[view_presets.ViewSpec],
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


def measure(dataset: Dataset, pipeline: str, ds, *, batch_size: int,
            warmup_batches: int, batches: int, seconds: float,
            threads: int) -> Result:
  """Reads `ds` and times whole batches after a warm-up."""
  what = f"{dataset.name} / {pipeline}"
  dtype = "uint8" if pipeline == OURS else "float32"
  iterator = iter(ds)
  start = time.perf_counter()
  for i in range(max(warmup_batches, 1)):  # the first batch is checked
    batch = next(iterator)
    if i == 0:
      _check_batch(batch, dataset.specs, batch_size, dtype)
  _log(f"  {what}: warm-up {max(warmup_batches, 1)} batch(es) in "
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
      _log(f"    {done} batches, {elapsed:.1f} s, "
           f"{done * batch_size / elapsed:.1f} img/s")
  busy = (time.process_time() - cpu_start) / elapsed
  system = _system_busy_cores(system_start, _system_cpu_jiffies())
  others = None if system is None else max(system - busy, 0.0)
  result = Result(dataset, pipeline, done * batch_size, elapsed, threads,
                  others)
  _log(f"    done: {done} batches in {elapsed:.1f} s → "
       f"{result.rate:.1f} img/s ({result.rate_per_core:.1f} img/s/core); "
       "CPU busy: this process "
       f"{busy:.2f} cores"
       + ("" if others is None else f", other processes {others:.2f} cores"))
  return result


def _datasets(which: str) -> List[Dataset]:
  """The datasets selected by --which, after checking their files exist."""
  chosen = []
  if which in ("imagenet", "both"):
    chosen.append(Dataset(
        "imagenet", "ImageNet sample (250 JPEGs, repeated), 2×224 px",
        FLAGS.imagenet_zip, None,
        view_presets.view_specs("simclr_v2", image_size=224, color_strength=1.0,
                           blur=True)))
  if which in ("cifar", "both"):
    chosen.append(Dataset(
        "cifar", "CIFAR-10 train (50,000 JPEGs), 2×32 px", FLAGS.cifar_zip,
        "train",
        view_presets.view_specs("simclr_cifar", image_size=32, color_strength=0.5,
                           blur=False)))
  missing = [d for d in chosen if not os.path.isfile(d.path)]
  if missing:
    names = "; ".join(f"--{d.name}_zip={d.path!r}" for d in missing)
    raise SystemExit(f"bench_input: dataset file not found: {names}. Pass the "
                     "right path, or --which to skip that dataset.")
  return chosen


def main(argv: Sequence[str]) -> None:
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {argv[1:]}")
  if FLAGS.threads < 1 or FLAGS.batch_size < 1:
    raise app.UsageError("--threads and --batch_size must be positive")
  datasets = _datasets(FLAGS.which)
  tf = input_pipeline.tf_module()
  threads = FLAGS.threads
  header = [
      f"date: {datetime.datetime.now(datetime.timezone.utc):%Y-%m-%d %H:%M} "
      "UTC",
      f"host: {_cpu_model()}, os.cpu_count()={os.cpu_count()}, "
      f"tf.data threads={threads} (img/s/core = img/s / {threads})",
      f"tensorflow {tf.__version__}, python {platform.python_version()}, "
      f"batch {FLAGS.batch_size}, warm-up {FLAGS.warmup_batches} batches, "
      + (f"{FLAGS.batches} timed batches" if FLAGS.batches
         else f"≥ {FLAGS.seconds:g} s timed") + " per measurement",
      "reference host blur: " + ("on" if FLAGS.reference_host_blur else "off"),
  ]
  _log("\n".join(header))

  results: List[Result] = []
  for dataset in datasets:
    _log(f"{dataset.name}: listing {dataset.path}"
         + (f" (split {dataset.split!r})" if dataset.split else ""))
    source = input_pipeline.files_source(dataset.path, dataset.split,
                                         process_index=0, process_count=1,
                                         seed=FLAGS.seed)
    _log(f"  {source.num_examples} images")
    pipelines = [
        (OURS, ours_dataset(source, dataset.specs,
                            batch_size=FLAGS.batch_size, seed=FLAGS.seed,
                            threads=threads)),
        (REFERENCE, reference_dataset(
            source, dataset.specs, batch_size=FLAGS.batch_size,
            seed=FLAGS.seed, threads=threads,
            host_blur=FLAGS.reference_host_blur)),
    ]
    for name, ds in pipelines:  # each iterator ends with its measurement
      results.append(measure(
          dataset, name, ds, batch_size=FLAGS.batch_size,
          warmup_batches=FLAGS.warmup_batches, batches=FLAGS.batches,
          seconds=FLAGS.seconds, threads=threads))

  lines = ["", *header, "",
           "| dataset | pipeline | img/s | img/s/core |",
           "|---|---|---:|---:|"]
  for r in results:
    lines.append(f"| {r.dataset.label} | {r.pipeline} | {r.rate:.1f} | "
                 f"{r.rate_per_core:.1f} |")
  lines.append("")
  contended = [r for r in results
               if r.others_busy is not None and r.others_busy > 0.25]
  for r in contended:
    lines.append(f"WARNING: other processes kept {r.others_busy:.2f} cores "
                 f"busy during {r.dataset.name} / {r.pipeline}: its rate is "
                 "low; rerun on an idle machine.")
  for dataset in datasets:
    rates = {r.pipeline: r.rate for r in results if r.dataset is dataset}
    lines.append(f"ratio ours/reference ({dataset.name}): "
                 f"{rates[OURS] / rates[REFERENCE]:.2f}×")
  print("\n".join(lines), flush=True)


if __name__ == "__main__":
  app.run(main)
