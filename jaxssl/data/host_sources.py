"""Host sources: this process's examples, as encoded bytes and labels.

A `HostSource` is what the tf.data pipeline (`input_pipeline`) reads from.
Two kinds:

* indexable (files, in-memory encoded arrays, TFDS in ArrayRecord format):
  `read(i)` fetches this process's i-th example directly, so the pipeline
  can sample by index and a resumed run starts where it stopped without
  touching any earlier example;
* streams (TFDS in TFRecord format, which has no random access):
  `records(order_seed)` is one epoch of records, in an order fixed by the
  seed; a resume rebuilds the epoch it stopped in and reads through it.

Every example carries an `index`, its position in the whole split (not just
this process's part), so crops seeded by (seed, epoch, index, view) do not
depend on the number of processes.

TensorFlow only ever runs on the host CPU: `hide_accelerators()` is called
before the first source is built.
"""

import dataclasses
import sys
from typing import Any, Callable, Optional, Sequence

import numpy as np

from jaxssl import paths
from jaxssl.data import files as files_lib


def tf_module():
  """TensorFlow, imported lazily with accelerators hidden from it."""
  import tensorflow as tf  # pylint: disable=g-import-not-at-top
  hide_accelerators(tf)
  return tf


def hide_accelerators(tf=None) -> None:
  """Keeps TensorFlow off GPUs/TPUs so JAX owns all accelerator memory.

  Without `tf`: TensorFlow if it is already imported, else nothing (it is
  not imported for this: a run on in-memory or synthetic data never loads
  it, and `tf_module`, the only way jaxssl imports it, hides it on import).
  """
  if tf is None:
    tf = sys.modules.get("tensorflow")
    if tf is None:
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


@dataclasses.dataclass
class HostSource:
  """This process's examples and how to read them.

  Exactly one of `read` and `records` is set. Both give examples as dicts
  `{'image': encoded bytes, 'label': int32 (-1 unlabelled), 'index': int64
  position of the example in the whole split}`.

  Attributes:
    num_examples: examples held by this process (one epoch).
    description: for messages.
    num_classes: number of classes (0 if unlabelled).
    total_examples: examples over all processes.
    read: indexable sources: TF function of a local index in
      `[0, num_examples)` (int64 scalar tensor) → the example.
    records: stream sources: function of `order_seed` → a `tf.data.Dataset`
      of this process's examples, one epoch. `order_seed` None reads them in
      storage order; an int64 `[2]` tensor fixes another order (the same for
      the same seed), so an epoch can be rebuilt after a restart.
    labels: `[num_examples]` int32 labels where known up front (files,
      arrays), else None.
    global_index: `[num_examples]` index of each example in the whole set
      where known up front (files, arrays), else None.
  """
  num_examples: int
  description: str
  num_classes: int
  total_examples: int
  read: Optional[Callable[[Any], dict]] = None
  records: Optional[Callable[[Optional[Any]], Any]] = None
  labels: Optional[np.ndarray] = None
  global_index: Optional[np.ndarray] = None

  def __post_init__(self):
    if (self.read is None) == (self.records is None):
      raise ValueError(f"{self.description}: a HostSource needs exactly one "
                       "of read (indexable) and records (stream)")


def _indexed(tf, read_bytes: Callable[[Any], Any], labels: np.ndarray,
             global_index: np.ndarray) -> Callable[[Any], dict]:
  """`read(i)` from a bytes reader and per-example labels and indices."""
  labels_t = tf.constant(labels.astype(np.int32))
  index_t = tf.constant(global_index.astype(np.int64))

  def read(i):
    return {"image": read_bytes(i), "label": tf.gather(labels_t, i),
            "index": tf.gather(index_t, i)}
  return read


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

    def read_bytes(i):
      return tf.io.read_file(tf.gather(names_t, i))
  else:
    # Zip members, and files on GCS: TensorFlow's own GCS filesystem is not
    # the file layer's (`jaxssl.paths`), so Python reads them.
    reader = files_lib.reader(listing)

    def read_member(i):
      return reader(names[int(i)])

    def read_bytes(i):
      data = tf.numpy_function(read_member, [i], tf.string, stateful=False)
      data.set_shape([])
      return data
  return HostSource(
      len(idx), listing.description, len(listing.class_names), len(listing),
      read=_indexed(tf, read_bytes, labels, idx),
      labels=labels.astype(np.int32), global_index=idx.astype(np.int64))


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
  return HostSource(
      len(idx), "in-memory encoded images", num_classes, len(images),
      read=_indexed(tf, lambda i: tf.gather(data, i), labels, idx),
      labels=labels.astype(np.int32), global_index=idx.astype(np.int64))


# --------------------------------------------------------------------------
# TFDS: ArrayRecord (random access) or TFRecord (stream).
# --------------------------------------------------------------------------


def tfds_source(name: str, split: str, *, data_dir: Optional[str],
                process_index: int, process_count: int) -> HostSource:
  """A TFDS dataset with an 'image' feature (and optionally 'label').

  Each process reads `tfds.split_for_jax_process(split)` (an even,
  contiguous slice); images stay encoded until the crop, so a JPEG is
  decoded once per view set. `data_dir` points at a prepared copy (TPU VMs:
  a GCS bucket).

  A dataset prepared in ArrayRecord format (`tfds build
  --file_format=array_record`, or `tfds convert_format`) is indexable:
  `read(i)` fetches record i. One in TFRecord format (TFDS's default) is a
  stream whose file order is shuffled per epoch by `records(order_seed)`.
  Other formats raise ValueError.
  """
  tf = tf_module()
  import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top
  builder = tfds.builder(name, data_dir=data_dir or None)

  def part(p):
    return tfds.split_for_jax_process(split, process_index=p,
                                      process_count=process_count)
  try:
    num_examples = builder.info.splits[part(process_index)].num_examples
    total = builder.info.splits[split].num_examples
    # Even splits are contiguous: this part starts after the earlier ones.
    offset = sum(builder.info.splits[part(p)].num_examples
                 for p in range(process_index))
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
  description = (f"TFDS {name}[{split}]" if process_count == 1 else
                 f"TFDS {name}[{split}] part {process_index + 1} of "
                 f"{process_count}")
  source = dict(num_examples=num_examples, description=description,
                num_classes=features["label"].num_classes if has_label else 0,
                total_examples=total)

  def parse(serialized, index):
    example = features.deserialize_example(
        serialized, decoders={"image": tfds.decode.SkipDecoding()})
    label = (tf.cast(example["label"], tf.int32) if has_label
             else tf.constant(-1, tf.int32))
    return {"image": example["image"], "label": label, "index": index}

  formats = (builder.info.available_file_formats()
             or {builder.info.file_format or tfds.core.FileFormat.TFRECORD})
  array_record = tfds.core.FileFormat.ARRAY_RECORD
  if array_record in formats:
    data = builder.as_data_source(
        split=part(process_index), file_format=array_record,
        deserialize_method=tfds.decode.DeserializeMethod.RAW_BYTES)
    return HostSource(**source,
                      read=_array_record_read(tf, data, parse, offset))
  if tfds.core.FileFormat.TFRECORD in formats:
    instructions = builder.info.splits[part(process_index)].file_instructions
    return HostSource(**source, records=_tfrecord_records(
        tf, instructions, parse, offset))
  raise ValueError(
      f"TFDS {name!r} is stored as {sorted(f.value for f in formats)}; the "
      "input pipeline reads 'array_record' (random access) or 'tfrecord'")


def _array_record_read(tf, data: Sequence[bytes], parse: Callable,
                       offset: int) -> Callable[[Any], dict]:
  """`read(i)`: record i of a TFDS data source, parsed by TensorFlow.

  Python only fetches the serialized record (ArrayRecord readers are
  thread-safe, so a parallel map fetches several at once); the proto is
  parsed by TF ops, outside the GIL.
  """
  def fetch(i):
    return data[int(i)]

  def read(i):
    serialized = tf.numpy_function(fetch, [i], tf.string, stateful=False)
    serialized.set_shape([])
    return parse(serialized, tf.cast(i, tf.int64) + offset)
  return read


def _tfrecord_records(tf, instructions: Sequence[Any], parse: Callable,
                      offset: int) -> Callable[[Optional[Any]], Any]:
  """`records(order_seed)` over TFDS file instructions (TFRecord shards).

  Reads as `tfds.as_dataset` would (each instruction is a shard's
  `skip().take()`, several shards interleaved), but the shard order is a
  stateless permutation of `order_seed`, a tensor, so the pipeline can build
  any epoch's stream inside `flat_map` without reading the ones before it.
  """
  count = len(instructions)
  takes = np.array([ins.take for ins in instructions], np.int64)
  columns = (
      tf.constant([ins.filename for ins in instructions]),
      tf.constant([ins.skip for ins in instructions], tf.int64),
      tf.constant(takes),
      # Index of each shard's first record in the whole split.
      tf.constant(offset + np.concatenate([[0], np.cumsum(takes)[:-1]])))

  def read_shard(filename, skip, take, first_index):
    shard = tf.data.TFRecordDataset(filename).skip(skip).take(take)
    return shard.enumerate(first_index)

  def records(order_seed=None):
    order = tf.range(count, dtype=tf.int64)
    if order_seed is not None:
      order = tf.random.experimental.index_shuffle(
          order, order_seed, tf.constant(count - 1, tf.int64))
    ds = tf.data.Dataset.from_tensor_slices(
        tuple(tf.gather(c, order) for c in columns))
    ds = ds.interleave(read_shard, cycle_length=min(16, count),
                       num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
    return ds.map(lambda index, serialized: parse(serialized, index),
                  num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
  return records
