"""Host input pipeline (tf.data): per-process shards, decode, crops, uint8 out.

Each process reads its own slice of the data, decodes each image once and
cuts every view's random-resized crop at that view's static size (so multi-
crop groups batch cleanly); photometric augmentation happens later on the
device (`jaxssl.augment`). Crops are drawn with stateless RNG seeded by
(seed, epoch, example, view), so a run sees the same views whatever the
number of parallel calls, and can reproduce them after a restart.

Unreadable images (corrupt or truncated files, unsupported formats) are
skipped, never a crash mid-run: the decode error drops the element, and the
consumer (`HostIterator`) counts, per epoch, the examples that never arrived
and logs them. Grayscale, CMYK and RGBA images are decoded to RGB.

TensorFlow only ever runs on the host CPU: `hide_accelerators()` is called
before the first pipeline is built.
"""

import dataclasses
import queue
import threading
from typing import Any, Callable, Iterator, Optional, Sequence

from absl import logging
import numpy as np

from jaxssl import augment
from jaxssl import paths
from jaxssl.data import files as files_lib


def tf_module():
  """TensorFlow, imported lazily with accelerators hidden from it."""
  import tensorflow as tf  # pylint: disable=g-import-not-at-top
  hide_accelerators(tf)
  return tf


def hide_accelerators(tf=None) -> None:
  """Keeps TensorFlow off GPUs/TPUs so JAX owns all accelerator memory."""
  if tf is None:
    try:
      import tensorflow as tf  # pylint: disable=g-import-not-at-top
    except ImportError:
      return
  try:
    tf.config.set_visible_devices([], "GPU")
  except RuntimeError:
    pass  # already initialised with GPUs hidden


def process_indices(num_examples: int, *, process_index: int,
                    process_count: int, seed: int = 0) -> np.ndarray:
  """This process's examples: a fixed permutation cut in near-equal parts.

  The permutation (the same on every process) mixes classes before the cut,
  so a sorted `root/<class>/` listing does not give each host a few classes.
  Parts differ in size by at most one; together they cover every example
  exactly once.
  """
  if not 0 <= process_index < process_count:
    raise ValueError(f"process_index {process_index} not in "
                     f"[0, {process_count})")
  order = np.random.default_rng([seed, 7919]).permutation(num_examples)
  part = np.array_split(order, process_count)[process_index]
  if len(part) == 0:
    raise ValueError(f"process {process_index} of {process_count} has no "
                     f"examples ({num_examples} in all)")
  return np.sort(part)


# --------------------------------------------------------------------------
# Decoding and crops (TensorFlow ops).
# --------------------------------------------------------------------------


def decode_rgb(tf, image_bytes):
  """JPEG/PNG/GIF/BMP bytes → uint8 `[H, W, 3]` (gray, CMYK, alpha → RGB)."""
  image = tf.io.decode_image(image_bytes, channels=3, expand_animations=False)
  image.set_shape([None, None, 3])
  return image


def _stateless_seed(tf, seed, epoch, index, view):
  """A stateless-RNG seed for one (epoch, example, view)."""
  a = tf.cast(seed, tf.int64) * 1_000_003 + tf.cast(epoch, tf.int64)
  b = tf.cast(index, tf.int64) * 131 + view
  return tf.stack([a % 2_147_483_647, b % 2_147_483_647])


def sample_crop_simclr(tf, shape, seed, area_range=(0.08, 1.0),
                       aspect_range=(3 / 4, 4 / 3), min_covered=0.1):
  """SimCLR reference crop: up to 100 attempts, the whole image as fallback.

  `tf.image.sample_distorted_bounding_box` with `min_object_covered=0.1`
  (so areas below 10 % are rejected too), as in `data_util.py`; multi-crop
  local views pass `min_covered=0` to reach areas below 10 %.
  """
  begin, size, _ = tf.image.stateless_sample_distorted_bounding_box(
      shape, bounding_boxes=tf.constant([[[0.0, 0.0, 1.0, 1.0]]]), seed=seed,
      min_object_covered=min_covered,
      aspect_ratio_range=aspect_range,
      area_range=area_range, max_attempts=100,
      use_image_if_no_bounding_boxes=True)
  return begin[0], begin[1], size[0], size[1]


def sample_crop_byol(tf, shape, seed, area_range=(0.08, 1.0),
                     aspect_range=(3 / 4, 4 / 3), min_covered=None):
  """BYOL-style crop: one draw of area and log-aspect, clamped to the image.

  (`min_covered` is accepted for a common signature and unused.)
  """
  del min_covered
  height = tf.cast(shape[0], tf.float32)
  width = tf.cast(shape[1], tf.float32)
  u = tf.random.stateless_uniform([4], seed=seed)
  area = (area_range[0] + u[0] * (area_range[1] - area_range[0])) * height * width
  log_lo, log_hi = np.log(aspect_range[0]), np.log(aspect_range[1])
  ratio = tf.exp(log_lo + u[1] * (log_hi - log_lo))
  w = tf.clip_by_value(tf.round(tf.sqrt(area * ratio)), 1.0, width)
  h = tf.clip_by_value(tf.round(tf.sqrt(area / ratio)), 1.0, height)
  y = tf.floor(u[2] * (height - h + 1.0))
  x = tf.floor(u[3] * (width - w + 1.0))
  return tuple(tf.cast(v, tf.int32) for v in (y, x, h, w))


CROP_SAMPLERS = {"simclr": sample_crop_simclr, "byol": sample_crop_byol}


def resize_uint8(tf, image, size: int):
  """Bicubic resize (TF2 `tf.image.resize`: half-pixel centres), uint8 out."""
  out = tf.image.resize(image, [size, size], method="bicubic")
  return tf.cast(tf.clip_by_value(tf.round(out), 0.0, 255.0), tf.uint8)


def random_crop_resize(tf, image, spec: augment.ViewSpec, seed):
  """One view's random-resized crop of a decoded image, `[size, size, 3]`."""
  if spec.crop_mode not in CROP_SAMPLERS:
    raise ValueError(f"crop_mode {spec.crop_mode!r} is not one of "
                     f"{sorted(CROP_SAMPLERS)}")
  y, x, h, w = CROP_SAMPLERS[spec.crop_mode](
      tf, tf.shape(image), seed, area_range=spec.crop_area,
      min_covered=spec.crop_min_covered)
  crop = tf.image.crop_to_bounding_box(image, y, x, h, w)
  return resize_uint8(tf, crop, spec.size)


def center_crop_resize(tf, image, size: int, proportion: float = 0.875):
  """Eval view: centre crop of `proportion` of the shorter side, resized.

  Skipped (plain resize) for images of 32 px or less, as SimCLR does on
  CIFAR-10.
  """
  if size > 32:
    shape = tf.shape(image)
    side = tf.cast(tf.round(proportion * tf.cast(tf.minimum(shape[0], shape[1]),
                                                 tf.float32)), tf.int32)
    y = (shape[0] - side) // 2
    x = (shape[1] - side) // 2
    image = tf.image.crop_to_bounding_box(image, y, x, side, side)
  shape = tf.shape(image)
  return tf.cond(
      tf.logical_and(tf.equal(shape[0], size), tf.equal(shape[1], size)),
      lambda: image, lambda: resize_uint8(tf, image, size))


# --------------------------------------------------------------------------
# Sources: how to get (bytes, label) for this process's i-th example.
# --------------------------------------------------------------------------


@dataclasses.dataclass
class HostSource:
  """This process's examples and how to read them.

  Attributes:
    num_examples: examples held by this process (one epoch).
    labels: `[num_examples]` int32 labels (-1 where unlabelled), or None when
      only the stream knows them (TFDS).
    global_index: `[num_examples]` index of each example in the whole set, or
      None (TFDS: the index is the position within this process's epoch).
    read: TF function of a local index (int64 tensor) → encoded image bytes,
      for indexable sources (files, arrays); None for streams.
    description: for messages.
    num_classes: number of classes (0 if unlabelled).
    total_examples: examples over all processes.
    records: for stream sources (TFDS), a function `(shuffle_seed or None)
      -> tf.data.Dataset` of `{'image': bytes, 'label': int}` over this
      process's slice, one epoch.
  """
  num_examples: int
  labels: Optional[np.ndarray]
  global_index: Optional[np.ndarray]
  read: Optional[Callable[[Any], Any]]
  description: str
  num_classes: int
  total_examples: int
  records: Optional[Callable[[Optional[int]], Any]] = None


def files_source(path: str, split: Optional[str], *, process_index: int,
                 process_count: int, seed: int = 0) -> HostSource:
  """A folder or zip of images, `root/[split/]<class>/<file>`."""
  tf = tf_module()
  listing = files_lib.list_images(path, split)
  idx = process_indices(len(listing), process_index=process_index,
                        process_count=process_count, seed=seed)
  names = [listing.names[i] for i in idx]
  labels = (listing.labels[idx] if listing.labels is not None
            else np.full(len(idx), -1, np.int32))
  if listing.archive is None and not paths.is_url(path):
    names_t = tf.constant(names)

    def read(i):
      return tf.io.read_file(tf.gather(names_t, i))
  else:
    # Zip members, and files on GCS: TensorFlow's own GCS filesystem is not
    # the file layer's (`jaxssl.paths`), so Python reads them.
    reader = files_lib.reader(listing)

    def read_member(i):
      return reader(names[int(i)])

    def read(i):
      data = tf.numpy_function(read_member, [i], tf.string, stateful=False)
      data.set_shape([])
      return data
  return HostSource(len(idx), labels.astype(np.int32), idx.astype(np.int64),
                    read, listing.description, len(listing.class_names),
                    len(listing))


def arrays_source(images: Sequence[bytes], labels: Optional[np.ndarray], *,
                  process_index: int, process_count: int,
                  seed: int = 0) -> HostSource:
  """Encoded images held in memory (tests, small sets)."""
  tf = tf_module()
  idx = process_indices(len(images), process_index=process_index,
                        process_count=process_count, seed=seed)
  data = tf.constant([images[i] for i in idx])
  num_classes = int(np.max(labels)) + 1 if labels is not None else 0
  labels = (np.asarray(labels)[idx] if labels is not None
            else np.full(len(idx), -1))
  return HostSource(len(idx), labels.astype(np.int32), idx.astype(np.int64),
                    lambda i: tf.gather(data, i), "in-memory encoded images",
                    num_classes, len(images))


def tfds_source(name: str, split: str, *, data_dir: Optional[str],
                process_index: int, process_count: int) -> HostSource:
  """A TFDS dataset with an 'image' feature (and optionally 'label').

  Each process reads `tfds.split_for_jax_process(split)` (an even slice);
  images stay encoded until the crop, so a JPEG is decoded once per view set.
  `data_dir` points at a prepared copy (TPU VMs: a GCS bucket).
  """
  tf = tf_module()
  import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top
  builder = tfds.builder(name, data_dir=data_dir or None)
  process_split = tfds.split_for_jax_process(
      split, process_index=process_index, process_count=process_count)
  try:
    num_examples = builder.info.splits[process_split].num_examples
    total = builder.info.splits[split].num_examples
  except (KeyError, ValueError) as e:
    raise ValueError(f"TFDS {name!r} has no split {split!r} (data_dir="
                     f"{data_dir!r}): {e}") from e
  if num_examples == 0:
    raise ValueError(f"TFDS {name}[{split}]: no examples for process "
                     f"{process_index} of {process_count}")
  features = builder.info.features
  if "image" not in features:
    raise ValueError(f"TFDS {name!r} has no 'image' feature "
                     f"({list(features)})")
  has_label = "label" in features
  num_classes = features["label"].num_classes if has_label else 0

  def records(shuffle_seed):
    read_config = tfds.ReadConfig(
        shuffle_seed=shuffle_seed, interleave_cycle_length=16,
        try_autocache=False)
    ds = builder.as_dataset(
        split=process_split, shuffle_files=shuffle_seed is not None,
        read_config=read_config,
        decoders={"image": tfds.decode.SkipDecoding()})

    def pick(ex):
      label = (tf.cast(ex["label"], tf.int32) if has_label
               else tf.constant(-1, tf.int32))
      return {"image": ex["image"], "label": label}
    return ds.map(pick, num_parallel_calls=tf.data.AUTOTUNE)

  return HostSource(num_examples, None, None, None,
                    f"TFDS {name}[{process_split}]", num_classes, total,
                    records=records)


def _epoch_stream(source: HostSource, seed: int, shuffle_buffer: int,
                  start: int = 0):
  """Endless `(position, {'image', 'label', 'index'})`, reshuffled per epoch,
  from stream position `start` on (indices are skipped before any read)."""
  tf = tf_module()
  n = source.num_examples
  if source.records is not None:
    ds = source.records(seed).enumerate()
    ds = ds.map(lambda pos, ex: dict(ex, index=pos))
    ds = ds.shuffle(min(shuffle_buffer, n), seed=seed,
                    reshuffle_each_iteration=True)
    return ds.repeat().enumerate().skip(start)
  global_index = tf.constant(source.global_index)
  labels = tf.constant(source.labels)
  ds = tf.data.Dataset.range(n)
  ds = ds.shuffle(n, seed=seed, reshuffle_each_iteration=True).repeat()
  ds = ds.enumerate().skip(start)

  def read(position, i):
    return position, {"image": source.read(i), "label": tf.gather(labels, i),
                      "index": tf.gather(global_index, i)}
  return ds.map(read, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)


def _in_order(source: HostSource):
  """One pass, in order: `{'image', 'label', 'index'}`."""
  tf = tf_module()
  if source.records is not None:
    return source.records(None).enumerate().map(
        lambda pos, ex: dict(ex, index=pos))
  global_index = tf.constant(source.global_index)
  labels = tf.constant(source.labels)
  return tf.data.Dataset.range(source.num_examples).map(
      lambda i: {"image": source.read(i), "label": tf.gather(labels, i),
                 "index": tf.gather(global_index, i)},
      num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)


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


def pretrain_dataset(source: HostSource, specs: Sequence[augment.ViewSpec], *,
                     batch_size: int, seed: int, shuffle_buffer: int = 50_000,
                     start_position: int = 0):
  """Endless batches `{'views': (uint8 [b, S_v, S_v, 3], ...), 'label',
  'epoch', 'index'}` of this process, reshuffled every epoch.

  Args:
    source: this process's examples.
    specs: one crop per view (size, area, sampler).
    batch_size: per-process batch size.
    seed: shuffling and crop seed.
    shuffle_buffer: shuffle buffer of encoded records for stream sources
      (indexable sources are shuffled exactly, as indices).
    start_position: examples of this process's stream to skip (a resumed
      run: step × batch_size; exact unless unreadable images were skipped
      before it).

  Returns:
    A `tf.data.Dataset`.
  """
  tf = tf_module()
  n = source.num_examples

  def load(position, ex):
    epoch = position // n
    image = decode_rgb(tf, ex["image"])
    views = tuple(
        random_crop_resize(tf, image, spec,
                           _stateless_seed(tf, seed, epoch, ex["index"], v))
        for v, spec in enumerate(specs))
    return {"views": views, "label": ex["label"], "epoch": epoch,
            "index": ex["index"]}

  ds = _epoch_stream(source, seed, shuffle_buffer, start_position)
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
  return ds.ignore_errors().batch(batch_size).prefetch(tf.data.AUTOTUNE)


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

  Yields the batches' `views` (and `label`); `counter` holds the skip counts.
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
        batch.pop("index", None)
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
