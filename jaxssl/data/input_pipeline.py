"""Host input pipeline (tf.data): per-process shards, decode, crops, uint8 out.

Each process reads its own slice of the data, decodes each image once and
cuts every view's random-resized crop at that view's static size (so multi-
crop groups batch cleanly; `crops.crop_views`, which can also decode JPEGs
at reduced resolution when every crop allows it); photometric augmentation
happens later on the device (`jaxssl.augment`). Crops are drawn with
stateless RNG seeded by (seed, epoch, example, view), so a run sees the same
views whatever the number of parallel calls, and can reproduce them after a
restart.

A restart resumes at a position of this process's endless stream (step ×
per-process batch). Indexable sources (`host_sources`: files, arrays, TFDS
in ArrayRecord format) compute the example at each position from (seed,
epoch) alone and start there directly, whatever the epoch; stream sources
(TFDS in TFRecord format) rebuild the epoch of that position and read
through its start, at most one epoch.

Unreadable images (corrupt or truncated files, unsupported formats) are
skipped, never a crash mid-run: the decode error drops the element, and the
consumer (`HostIterator`) counts, per epoch, the examples that never arrived
and logs them. Grayscale, CMYK and RGBA images are decoded to RGB.

TensorFlow only ever runs on the host CPU: `hide_accelerators()` is called
before the first pipeline is built.
"""

import queue
import threading
from typing import Any, Callable, Iterator, Optional, Sequence

from absl import logging
import numpy as np

from jaxssl import view_presets
from jaxssl.data import crops
from jaxssl.data import host_sources

# Sources live in `host_sources`; these names stay importable from here.
HostSource = host_sources.HostSource
files_source = host_sources.files_source
arrays_source = host_sources.arrays_source
tfds_source = host_sources.tfds_source
tf_module = host_sources.tf_module
hide_accelerators = host_sources.hide_accelerators
process_indices = host_sources.process_indices
# Decoding and crops live in `crops`.
decode_rgb = crops.decode_rgb
sample_crop_simclr = crops.sample_crop_simclr
sample_crop_byol = crops.sample_crop_byol
CROP_SAMPLERS = crops.CROP_SAMPLERS
resize_uint8 = crops.resize_uint8
random_crop_resize = crops.random_crop_resize
center_crop_resize = crops.center_crop_resize
crop_views = crops.crop_views

# Stream positions end here: past any run (2**62 examples).
_END_POSITION = 2**62


# --------------------------------------------------------------------------
# Epochs: which example comes at each position of this process's stream,
# and the seeds of its crops.
# --------------------------------------------------------------------------


def _epoch_seed(tf, seed, epoch):
  """The `[2]` int64 stateless seed that fixes one epoch's order."""
  return tf.stack([tf.cast(seed, tf.int64), tf.cast(epoch, tf.int64)])


def _stateless_seed(tf, seed, epoch, index, view):
  """A stateless-RNG seed for one (epoch, example, view)."""
  a = tf.cast(seed, tf.int64) * 1_000_003 + tf.cast(epoch, tf.int64)
  b = tf.cast(index, tf.int64) * 131 + view
  return tf.stack([a % 2_147_483_647, b % 2_147_483_647])


def _indexed_stream(source: HostSource, seed: int, start: int):
  """Positions `start, start + 1, ...` → examples, by index: O(1) to start.

  Position p is example k = p mod n of epoch e = p // n, and epoch e visits
  this process's examples in a permutation that depends on (seed, e) only
  (`index_shuffle`, computed per element), so no earlier example is read.
  """
  tf = tf_module()
  n = source.num_examples
  last = tf.constant(n - 1, tf.int64)

  def read(position):
    epoch = position // n
    i = tf.random.experimental.index_shuffle(
        position % n, _epoch_seed(tf, seed, epoch), last)
    return position, source.read(i)
  return tf.data.Dataset.range(start, _END_POSITION).map(
      read, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)


def _record_stream(source: HostSource, seed: int, shuffle_buffer: int,
                   start: int):
  """Positions `start, ...` → examples of a stream source (no random access).

  Epoch e is the source's records in the shard order of (seed, e), through
  a shuffle buffer seeded by (seed, e): a function of (seed, e) only, so a
  resume rebuilds its epoch and skips the records before `start` in it,
  reading at most one epoch.
  """
  tf = tf_module()
  n = source.num_examples
  epoch, skip = divmod(start, n)
  if start:
    logging.warning(
        "%s is stored as TFRecord, which has no random access: resuming at "
        "example %d of epoch %d reads and discards the %d records of that "
        "epoch before it (a resume reads up to one epoch of this process's "
        "data before its first batch). Prepare the dataset as ArrayRecord "
        "(`tfds build --file_format=array_record`, or `tfds convert_format "
        "--out_file_format=array_record`) to resume in O(1).",
        source.description, skip, epoch, skip)

  def one_epoch(e):
    shuffle_seed = (tf.cast(seed, tf.int64) * 1_000_003 + e) % 2_147_483_647
    return source.records(_epoch_seed(tf, seed, e)).shuffle(
        min(shuffle_buffer, n), seed=shuffle_seed)
  ds = tf.data.Dataset.range(epoch, _END_POSITION).flat_map(one_epoch)
  return ds.skip(skip).enumerate(start)


def _in_order(source: HostSource):
  """One pass, in order: `{'image', 'label', 'index'}`."""
  tf = tf_module()
  if source.records is not None:
    return source.records(None)
  return tf.data.Dataset.range(source.num_examples).map(
      source.read, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)


# --------------------------------------------------------------------------
# Datasets.
# --------------------------------------------------------------------------


def check_readable(source: HostSource, *, max_examples: int = 64) -> int:
  """Decodes up to `max_examples` of `source`; an error if none is readable.

  Without this, a source whose images are all unreadable (wrong format, say)
  would make the training stream wait forever, since unreadable images are
  skipped. Returns the number of readable images among those tried.
  """
  tf = tf_module()
  ds = _in_order(source).take(max_examples)
  ds = ds.map(lambda ex: tf.shape(decode_rgb(tf, ex["image"])))
  readable = sum(1 for _ in ds.ignore_errors().as_numpy_iterator())
  if readable == 0:
    tried = min(max_examples, source.num_examples)
    raise ValueError(f"{source.description}: none of the first {tried} "
                     "images could be decoded (expected JPEG or PNG files)")
  return readable


def pretrain_dataset(source: HostSource, specs: Sequence[view_presets.ViewSpec], *,
                     batch_size: int, seed: int, shuffle_buffer: int = 50_000,
                     start_position: int = 0, reduced_decode: bool = False,
                     early_specs: Optional[Sequence[view_presets.ViewSpec]] = None,
                     early_positions: int = 0):
  """Endless batches `{'views': (uint8 [b, S_v, S_v, 3], ...), 'label',
  'epoch', 'index'}` of this process, reshuffled every epoch.

  Args:
    source: this process's examples.
    specs: one crop per view (size, area, sampler).
    batch_size: per-process batch size.
    seed: shuffling and crop seed.
    shuffle_buffer: shuffle buffer of encoded records for stream sources
      (indexable sources are shuffled exactly, as indices).
    start_position: position in this process's stream of the first example
      (a resumed run: step × batch_size): the batches are those an
      uninterrupted run yields from there on, unless unreadable images were
      skipped before it. Indexable sources read nothing before it; streams
      read the records of its epoch before it.
    reduced_decode: decode each JPEG at reduced resolution when all its
      crops allow it (`crops.crop_views`, which says why it is off by
      default); the same crop boxes either way.
    early_specs: the crops of the examples at stream positions below
      `early_positions` (an augmentation schedule's first epochs), or None.
    early_positions: see `early_specs`.

  Returns:
    A `tf.data.Dataset`.
  """
  tf = tf_module()
  n = source.num_examples

  def load(position, ex):
    epoch = position // n
    seeds = [_stateless_seed(tf, seed, epoch, ex["index"], v)
             for v in range(len(specs))]
    crop = lambda specs_: lambda: crop_views(
        tf, ex["image"], specs_, seeds, reduced_decode=reduced_decode)
    if early_specs and early_positions > 0:
      views = tf.cond(position < early_positions, crop(early_specs),
                      crop(specs))
    else:
      views = crop(specs)()
    return {"views": views, "label": ex["label"], "epoch": epoch,
            "index": ex["index"]}

  if source.read is not None:
    ds = _indexed_stream(source, seed, start_position)
  else:
    ds = _record_stream(source, seed, shuffle_buffer, start_position)
  ds = ds.map(load, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
  ds = ds.ignore_errors()
  ds = ds.batch(batch_size, drop_remainder=True)
  options = tf.data.Options()
  options.experimental_optimization.map_parallelization = True
  return ds.with_options(options).prefetch(tf.data.AUTOTUNE)


def eval_dataset(source: HostSource, *, image_size: int, batch_size: int):
  """One pass, in order: `{'image': uint8 centre crops, 'label', 'index'}`."""
  tf = tf_module()

  def load(ex):
    image = decode_rgb(tf, ex["image"])
    return {"image": center_crop_resize(tf, image, image_size),
            "label": ex["label"], "index": ex["index"]}

  ds = _in_order(source).map(load, num_parallel_calls=tf.data.AUTOTUNE,
                             deterministic=True)
  # A fixed two batches ahead: an evaluation pass needs no more, and host
  # memory stays bounded whatever the split's length.
  return ds.ignore_errors().batch(batch_size).prefetch(2)


class SkipCounter:
  """Counts examples that never arrived (unreadable), per completed epoch."""

  def __init__(self, examples_per_epoch: int, description: str):
    self.examples_per_epoch = examples_per_epoch
    self.description = description
    self.seen = {}
    self.skipped_per_epoch = {}

  @property
  def skipped(self) -> int:
    return sum(self.skipped_per_epoch.values())

  def update(self, epochs: np.ndarray) -> None:
    values, counts = np.unique(np.asarray(epochs), return_counts=True)
    for epoch, count in zip(values.tolist(), counts.tolist()):
      self.seen[epoch] = self.seen.get(epoch, 0) + count
    newest = max(self.seen)
    for epoch in sorted(e for e in self.seen if e < newest):
      # Order is deterministic, so an epoch is complete once a later one
      # has started.
      skipped = self.examples_per_epoch - self.seen.pop(epoch)
      self.skipped_per_epoch[epoch] = skipped
      if skipped:
        logging.warning("%s: skipped %d unreadable image(s) in epoch %d",
                        self.description, skipped, epoch)


class HostIterator:
  """numpy batches of a tf.data pipeline, with unreadable-image accounting.

  Yields the batches' `views`, `label` and `index` (int32: each example's
  position in the whole split, on every process); `counter` holds the skip
  counts.
  Iterating is done in a background thread (`prefetch` batches ahead) that
  also calls `place` (e.g. assembling global `jax.Array`s), so host work and
  transfers overlap the device step.
  """

  def __init__(self, dataset, *, examples_per_epoch: int, description: str,
               place: Callable[[dict], Any] = lambda b: b, prefetch: int = 2,
               start_position: int = 0):
    self.counter = SkipCounter(examples_per_epoch, description)
    if start_position % examples_per_epoch:  # resumed inside an epoch
      self.counter.seen[start_position // examples_per_epoch] = (
          start_position % examples_per_epoch)
    self._iterator = iter(dataset.as_numpy_iterator())
    self._place = place
    self._queue = queue.Queue(maxsize=prefetch)
    self._thread = threading.Thread(target=self._run, daemon=True)
    self._thread.start()

  def _run(self):
    try:
      for batch in self._iterator:
        self.counter.update(batch.pop("epoch"))
        # The example's position in the whole split (a memory bank's row).
        batch["index"] = batch["index"].astype(np.int32)
        self._queue.put(self._place(batch))
    except Exception as e:  # pylint: disable=broad-except
      self._queue.put(e)
    self._queue.put(StopIteration())

  def __iter__(self) -> Iterator[Any]:
    return self

  def __next__(self):
    item = self._queue.get()
    if isinstance(item, StopIteration):
      raise item
    if isinstance(item, Exception):
      raise RuntimeError(f"input pipeline failed: {item}") from item
    return item
