r"""Time to the first batch of a resumed training input, per TFDS file format.

COMMAND (from the repository root):

  .venv/bin/python tools/bench_resume.py --data_dir=/tmp/bench_resume

  Options: --examples=4000 (JPEGs in the dataset), --image_size=48,
  --formats=array_record,tfrecord, --resume_epoch=20.5 (0-based, fractional:
  20.5 is the middle of the 21st epoch), --batch_size=64,
  --shuffle_buffer=50000 (the config default), --repeats=3.

What is measured: a TFDS dataset 'bench_resume' of --examples random JPEGs
(3 classes) is prepared once per file format under --data_dir (reused if
there). For each format, `input_pipeline.pretrain_dataset` is built as
`sources.train_input` builds it on a resume (two 32 px views, position
`resume_epoch × examples`) and timed from building the source to the first
batch; the same from position 0 is the baseline. ArrayRecord is indexable,
so a resume should cost what a fresh start costs; TFRecord is a stream that
rebuilds the resumed epoch and reads through its start (at most one epoch,
plus the shuffle buffer's fill, which a fresh start pays too).

Output: progress on stderr; on stdout a markdown table with the median and
the spread of --repeats runs (each in a fresh pipeline; files stay in the
page cache, so this measures reading and parsing, not disk).
"""

import os
import statistics
import sys
import time
from typing import Callable, List, Sequence

from absl import app
from absl import flags
import numpy as np

# Before TensorFlow loads (lazily, in `host_sources.tf_module`).
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")  # fewer TF C++ logs

_REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if _REPO_ROOT not in sys.path:  # run as a script: tools/ is sys.path[0]
  sys.path.insert(0, _REPO_ROOT)

# pylint: disable=g-import-not-at-top,wrong-import-position
from jaxssl import view_presets
from jaxssl.data import host_sources
from jaxssl.data import input_pipeline
# pylint: enable=g-import-not-at-top,wrong-import-position

NAME = "bench_resume"
SPECS = (view_presets.ViewSpec(size=32), view_presets.ViewSpec(size=32))

FLAGS = flags.FLAGS
flags.DEFINE_string("data_dir", "/tmp/bench_resume",
                    "where the datasets are prepared (one subfolder per "
                    "file format)")
flags.DEFINE_integer("examples", 4000, "JPEGs in the dataset")
flags.DEFINE_integer("image_size", 48, "side of the JPEGs")
flags.DEFINE_list("formats", ["array_record", "tfrecord"],
                  "TFDS file formats to measure")
flags.DEFINE_float("resume_epoch", 20.5, "where the resumed run starts, in "
                   "epochs (0-based)")
flags.DEFINE_integer("batch_size", 64, "per-process batch size")
flags.DEFINE_integer("shuffle_buffer", 50_000, "record shuffle buffer "
                     "(TFRecord streams)")
flags.DEFINE_integer("repeats", 3, "timed runs per measurement")


def _log(message: str) -> None:
  print(message, file=sys.stderr, flush=True)


def prepare(data_dir: str, file_format: str, *, examples: int,
            image_size: int) -> str:
  """Prepares `NAME` in `file_format` under `data_dir/<format>` (once).

  Returns the TFDS data_dir to read it from.
  """
  tf = host_sources.tf_module()
  import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top
  tfds.disable_progress_bar()
  out = os.path.join(data_dir, file_format)
  rng = np.random.default_rng(0)
  # Smooth random images (a coarse grid upsampled): JPEG sizes like photos'.
  coarse = rng.integers(0, 256, (examples, 6, 6, 3), np.uint8)
  images = tf.cast(tf.image.resize(coarse, [image_size, image_size]),
                   tf.uint8)
  features = tfds.features.FeaturesDict({
      "image": tfds.features.Image(shape=(image_size, image_size, 3),
                                   encoding_format="jpeg"),
      "label": tfds.features.ClassLabel(num_classes=3)})
  tfds.dataset_builders.TfDataBuilder(
      name=NAME, config="default", version="1.0.0", data_dir=out,
      features=features, file_format=file_format,
      split_datasets={"train": tf.data.Dataset.from_tensor_slices(
          {"image": images, "label": np.arange(examples) % 3})},
  ).download_and_prepare()  # a no-op once prepared
  return out


def first_batch_seconds(make_dataset: Callable[[], object]) -> float:
  """Seconds from calling `make_dataset` to the first element of it."""
  start = time.perf_counter()
  next(iter(make_dataset()))
  return time.perf_counter() - start


def measure(data_dir: str, start_position: int, *, batch_size: int,
            shuffle_buffer: int) -> float:
  """Source + pipeline at `start_position` → first batch, in seconds."""
  def make():
    source = host_sources.tfds_source(NAME, "train", data_dir=data_dir,
                                      process_index=0, process_count=1)
    return input_pipeline.pretrain_dataset(
        source, SPECS, batch_size=batch_size, seed=0,
        shuffle_buffer=shuffle_buffer, start_position=start_position)
  return first_batch_seconds(make)


def summary(seconds: Sequence[float]) -> str:
  """`median s (min–max)`."""
  return (f"{statistics.median(seconds):.2f} s "
          f"({min(seconds):.2f}–{max(seconds):.2f})")


def main(argv: Sequence[str]) -> None:
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {argv[1:]}")
  position = int(FLAGS.resume_epoch * FLAGS.examples)
  rows: List[str] = []
  for file_format in FLAGS.formats:
    _log(f"{file_format}: preparing {FLAGS.examples} JPEGs")
    data_dir = prepare(FLAGS.data_dir, file_format, examples=FLAGS.examples,
                       image_size=FLAGS.image_size)
    for start in (0, position):
      times = []
      for _ in range(FLAGS.repeats):
        times.append(measure(data_dir, start, batch_size=FLAGS.batch_size,
                             shuffle_buffer=FLAGS.shuffle_buffer))
        _log(f"  {file_format} start {start}: {times[-1]:.2f} s")
      rows.append(f"| {file_format} | {start} ({start / FLAGS.examples:g} "
                  f"epochs) | {summary(times)} |")
  print(f"{FLAGS.examples} JPEGs of {FLAGS.image_size} px, batch "
        f"{FLAGS.batch_size}, shuffle buffer {FLAGS.shuffle_buffer}, "
        f"{FLAGS.repeats} runs each\n")
  print("| format | start position | time to first batch, median (range) |")
  print("|---|---|---|")
  print("\n".join(rows))


if __name__ == "__main__":
  app.run(main)
