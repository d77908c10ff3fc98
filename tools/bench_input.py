r"""Host input-pipeline throughput: our tf.data design vs. the SimCLR one.

COMMAND (from the repository root):

  .venv/bin/python tools/bench_input.py

  .venv/bin/python tools/bench_input.py --which=multicrop

  Options: --which=imagenet|cifar|both|multicrop, --threads=N (default:
  all cores), --batch_size=64, --warmup_batches=3, --batches=N (default: as
  many whole batches as fit in --seconds=15 per measurement), --rounds=1
  (more: each pipeline measured that many times, in turn, median reported),
  --imagenet_zip=..., --cifar_zip=... (default: ../shared/datasets/ next to
  the repository).

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
  multicrop  the ImageNet sample in three layouts, 2×224 (as `imagenet`),
             2×224+6×96 (SwAV's areas: `view_specs('multicrop')`, global
             0.14–1, local 0.05–0.14) and 2×224+10×96 (DINO's areas:
             `view_groups('dino')`, global 0.4–1, local 0.05–0.4), each with
             `pretrain_dataset(reduced_decode=False)` ("before": full decode)
             and `reduced_decode=True` ("after": each JPEG decoded once at the
             largest DCT scale all its crops allow, `crops.crop_views`).

Cores: tf.data runs on a private thread pool of `--threads` threads
(`options.threading.private_threadpool_size`, and `autotune.cpu_budget` to
match); images/s per core divides by that number, images/s per busy core by
the cores this process kept busy (its CPU seconds per second; what other
processes take away from it changes this figure less). Images/s counts
source images, whatever their number of views.

Output: progress on stderr; on stdout a header and one markdown table row per
measurement, then the ours/reference ratio per dataset (after/before per
multi-crop layout). The progress lines also give the CPU this process kept
busy and, from /proc/stat, what other processes used meanwhile; a WARNING
line marks measurements during which other processes held more than a
quarter of a core (rerun those on an idle machine).
"""

import datetime
import os
import platform
import sys
from typing import Any, Dict, List, Sequence, Tuple

from absl import app
from absl import flags

# Before TensorFlow loads (lazily, in `input_pipeline.tf_module`).
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")  # fewer TF C++ logs

_TOOLS = os.path.dirname(os.path.abspath(__file__))
_REPO_ROOT = os.path.dirname(_TOOLS)
sys.path[:0] = [p for p in (_REPO_ROOT, _TOOLS) if p not in sys.path]

# pylint: disable=g-import-not-at-top,wrong-import-position
import bench_input_lib as lib
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
flags.DEFINE_enum("which", "both", ["imagenet", "cifar", "both", "multicrop"],
                  "Which dataset(s) to measure; 'multicrop': the ImageNet "
                  "sample's multi-crop layouts, reduced decode off and on.")
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
flags.DEFINE_integer(
    "rounds", 1,
    "Measure each dataset's pipelines this many times, in turn, and report "
    "the median run of each: on a shared machine, pipelines compared then "
    "see the same interference.")
flags.DEFINE_integer("seed", 0, "Shuffle and augmentation seed.")
flags.DEFINE_bool(
    "reference_host_blur", True,
    "Include the Gaussian blur in the reference's host work (SimCLR's own "
    "code applies it on the accelerator).")

OURS = "ours: decode+crops uint8"
REFERENCE = "reference: +host colour ops float32"
BEFORE = "ours, reduced decode off (before)"
AFTER = "ours, reduced decode on (after)"
# Pairs compared on the last lines of the output: (name, top, bottom).
RATIOS = (("ours/reference", OURS, REFERENCE), ("after/before", AFTER, BEFORE))


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
                 seed: int, threads: int, **options):
  """Our training pipeline (`options`: `pretrain_dataset`'s, default if
  none), on `threads` threads."""
  tf = input_pipeline.tf_module()
  ds = input_pipeline.pretrain_dataset(source, specs, batch_size=batch_size,
                                       seed=seed, **options)
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
                                          seed=seed, reduced_decode=False)

  def augment_views(example: Dict[str, Any]) -> Dict[str, Any]:
    views = tuple(
        lib.reference_view(
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


def _pipeline(name: str, source: input_pipeline.HostSource,
              specs: Sequence[view_presets.ViewSpec]) -> Tuple[Any, str]:
  """The pipeline `name` on `source`, and the dtype of its views."""
  common = dict(batch_size=FLAGS.batch_size, seed=FLAGS.seed,
                threads=FLAGS.threads)
  if name == REFERENCE:
    return reference_dataset(source, specs,
                             host_blur=FLAGS.reference_host_blur,
                             **common), "float32"
  options = {BEFORE: dict(reduced_decode=False),
             AFTER: dict(reduced_decode=True)}.get(name, {})
  return ours_dataset(source, specs, **common, **options), "uint8"


# --------------------------------------------------------------------------
# What is measured.
# --------------------------------------------------------------------------


def _specs(preset: str,
           locals_: int = -1) -> Tuple[view_presets.ViewSpec, ...]:
  """`preset`'s views at 224 px (SimCLR jitter, blur on; the host only
  reads the crop settings), with `locals_` local crops if not -1."""
  groups = view_presets.view_groups(preset, image_size=224,
                                    color_strength=1.0, blur=True)
  if locals_ >= 0:
    groups[view_presets.LOCAL] = groups[view_presets.LOCAL][:1] * locals_
  return view_presets.flatten(groups)


def _datasets(which: str) -> List[Tuple[lib.Dataset, Tuple[str, ...]]]:
  """The datasets selected by --which and their pipelines, after checking
  their files exist."""
  chosen = []
  if which in ("imagenet", "both"):
    chosen.append((lib.Dataset(
        "imagenet", "ImageNet sample (250 JPEGs, repeated), 2×224 px",
        FLAGS.imagenet_zip, None, _specs("simclr_v2")), (OURS, REFERENCE)))
  if which in ("cifar", "both"):
    chosen.append((lib.Dataset(
        "cifar", "CIFAR-10 train (50,000 JPEGs), 2×32 px", FLAGS.cifar_zip,
        "train",
        view_presets.view_specs("simclr_cifar", image_size=32,
                                color_strength=0.5, blur=False)),
                   (OURS, REFERENCE)))
  if which == "multicrop":
    for name, areas, specs in (
        ("2×224", "SimCLR areas", _specs("simclr_v2")),
        ("2×224+6×96", "SwAV areas", _specs("multicrop")),
        ("2×224+10×96", "DINO areas", _specs("dino", 10))):
      chosen.append((lib.Dataset(
          f"imagenet {name}", f"ImageNet sample, {name} px ({areas})",
          FLAGS.imagenet_zip, None, specs), (BEFORE, AFTER)))
  missing = sorted({d.path for d, _ in chosen if not os.path.isfile(d.path)})
  if missing:
    raise SystemExit(f"bench_input: dataset file(s) not found: {missing}. "
                     "Pass the right --imagenet_zip / --cifar_zip, or --which "
                     "to skip that dataset.")
  return chosen


def main(argv: Sequence[str]) -> None:
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {argv[1:]}")
  if FLAGS.threads < 1 or FLAGS.batch_size < 1 or FLAGS.rounds < 1:
    raise app.UsageError("--threads, --batch_size and --rounds must be "
                         "positive")
  datasets = _datasets(FLAGS.which)
  tf = input_pipeline.tf_module()
  threads = FLAGS.threads
  header = [
      f"date: {datetime.datetime.now(datetime.timezone.utc):%Y-%m-%d %H:%M} "
      "UTC",
      f"host: {lib.cpu_model()}, os.cpu_count()={os.cpu_count()}, "
      f"tf.data threads={threads} (img/s/core = img/s / {threads})",
      f"tensorflow {tf.__version__}, python {platform.python_version()}, "
      f"batch {FLAGS.batch_size}, warm-up {FLAGS.warmup_batches} batches, "
      + (f"{FLAGS.batches} timed batches" if FLAGS.batches
         else f"≥ {FLAGS.seconds:g} s timed") + " per measurement"
      + (f", median of {FLAGS.rounds} rounds" if FLAGS.rounds > 1 else ""),
      "reference host blur: " + ("on" if FLAGS.reference_host_blur else "off"),
  ]
  lib.log("\n".join(header))

  results: List[lib.Result] = []
  for dataset, pipelines in datasets:
    lib.log(f"{dataset.name}: listing {dataset.path}"
            + (f" (split {dataset.split!r})" if dataset.split else ""))
    source = input_pipeline.files_source(dataset.path, dataset.split,
                                         process_index=0, process_count=1,
                                         seed=FLAGS.seed)
    lib.log(f"  {source.num_examples} images")
    built = {name: _pipeline(name, source, dataset.specs)
             for name in pipelines}
    runs = {name: [] for name in pipelines}
    for _ in range(FLAGS.rounds):
      for name, (ds, dtype) in built.items():  # a new iterator per run
        runs[name].append(lib.measure(
            dataset, name, ds, dtype=dtype, batch_size=FLAGS.batch_size,
            warmup_batches=FLAGS.warmup_batches, batches=FLAGS.batches,
            seconds=FLAGS.seconds, threads=threads))
    for name in pipelines:  # the median run (the lower one of two)
      ordered = sorted(runs[name], key=lambda r: r.rate)
      results.append(ordered[(len(ordered) - 1) // 2])

  lines = ["", *header, "",
           "| dataset | pipeline | img/s | img/s/core | img/s/busy core |",
           "|---|---|---:|---:|---:|"]
  for r in results:
    lines.append(f"| {r.dataset.label} | {r.pipeline} | {r.rate:.1f} | "
                 f"{r.rate_per_core:.1f} | {r.rate_per_busy_core:.1f} |")
  lines.append("")
  for r in results:
    if r.others_busy is not None and r.others_busy > 0.25:
      lines.append(f"WARNING: other processes kept {r.others_busy:.2f} cores "
                   f"busy during {r.dataset.name} / {r.pipeline}: its rate "
                   "is low; rerun on an idle machine.")
  for dataset, _ in datasets:
    by_name = {r.pipeline: r for r in results if r.dataset is dataset}
    for ratio, top, bottom in RATIOS:
      if top in by_name and bottom in by_name:
        a, b = by_name[top], by_name[bottom]
        lines.append(f"ratio {ratio} ({dataset.name}): {a.rate / b.rate:.2f}× "
                     "img/s, "
                     f"{a.rate_per_busy_core / b.rate_per_busy_core:.2f}× "
                     "img/s/busy core")
  print("\n".join(lines), flush=True)


if __name__ == "__main__":
  app.run(main)
