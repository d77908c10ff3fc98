"""Held-out evaluation input: labelled images streamed per process.

Every process reads its own part of a split (a host pipeline's slice, or its
rows of an in-memory array) and contributes `batch_size / process_count`
rows to each global batch; the rows are centre crops (host pipelines) or
whole images (in memory, resized on the device). All processes yield the
same number of batches: a process whose part is exhausted pads with masked
rows (`mask` False, label −1), so evaluators sum over `mask` and nothing is
ever gathered onto one host. The batches are global `jax.Array`s sharded
over the data mesh (`sharding.global_batch`).
"""

from __future__ import annotations

import dataclasses
from typing import TYPE_CHECKING, Callable, Iterator, Optional

import jax
from jax.sharding import Mesh
import numpy as np

from jaxssl import sharding
from jaxssl.data import in_memory
from jaxssl.data import sources

if TYPE_CHECKING:  # configs are only read here: no runtime dependency
  import ml_collections


@dataclasses.dataclass
class EvalInput:
  """One labelled split, streamed in padded global batches.

  Attributes:
    name: for logs and error messages.
    num_classes: classes of the labels.
    num_batches: global batches per pass (the same on every process).
    local_batches: function of nothing → iterator of this process's
      `{'image', 'label'}` numpy rows, at most `per_process` rows each.
    per_process: rows each process contributes to a global batch.
    image_shape: `(H, W, 3)` of the rows.
  """
  name: str
  num_classes: int
  num_batches: int
  local_batches: Callable[[], Iterator[dict]]
  per_process: int
  image_shape: tuple

  def batches(self, mesh: Mesh) -> Iterator[dict]:
    """One pass: `{'image', 'label', 'mask'}` global arrays on `mesh`.

    Raises:
      ValueError: an example of the split has no label (−1).
    """
    local = self.local_batches()
    for _ in range(self.num_batches):
      rows = next(local, None)
      yield sharding.global_batch(self._padded(rows), mesh)

  def _padded(self, rows: Optional[dict]) -> dict:
    if rows is None:  # this process's part is done; others may not be
      rows = {"image": np.zeros((0, *self.image_shape), np.uint8),
              "label": np.zeros((0,), np.int32)}
    images, labels = np.asarray(rows["image"]), np.asarray(rows["label"])
    if labels.size and labels.min() < 0:
      raise ValueError(f"{self.name} has unlabelled images; kNN and probe "
                       "evaluation need labels (or set "
                       "--config.eval.knn_ks=() --config.probe.enabled=False)")
    pad = self.per_process - len(images)
    mask = np.arange(self.per_process) < len(images)
    return {
        "image": np.concatenate(
            [images, np.zeros((pad, *images.shape[1:]), np.uint8)]),
        "label": np.concatenate([labels.astype(np.int32),
                                 np.full(pad, -1, np.int32)]),
        "mask": mask}


def per_process_batch(batch_size: int, mesh: Mesh) -> int:
  """Rows each process contributes: `batch_size` rounded up to a multiple of
  the devices, split over the processes."""
  devices = mesh.devices.size
  batch_size = -(-max(batch_size, 1) // devices) * devices
  return batch_size // jax.process_count()


def _max_over_processes(value: int) -> int:
  if jax.process_count() == 1:
    return value
  from jax.experimental import multihost_utils  # pylint: disable=g-import-not-at-top
  return int(np.max(multihost_utils.process_allgather(np.int64(value))))


def _array_input(dataset: in_memory.ArrayDataset, per_process: int
                 ) -> EvalInput:
  """This process's contiguous rows of an in-memory dataset."""
  if dataset.labels is None:
    raise ValueError(f"{dataset.name} has no labels; kNN and probe "
                     "evaluation need labels")
  rows = np.array_split(np.arange(len(dataset)),
                        jax.process_count())[jax.process_index()]
  longest = -(-len(dataset) // jax.process_count())

  def local_batches():
    for start in range(0, len(rows), per_process):
      idx = rows[start:start + per_process]
      yield {"image": dataset.images[idx], "label": dataset.labels[idx]}

  return EvalInput(dataset.name, dataset.num_classes,
                   -(-longest // per_process), local_batches, per_process,
                   dataset.images.shape[1:])


def _host_input(data: ml_collections.ConfigDict, split: str, *,
                image_size: int, per_process: int) -> EvalInput:
  """This process's slice of a host-pipeline split, centre-cropped."""
  from jaxssl.data import input_pipeline  # pylint: disable=g-import-not-at-top
  source = sources.host_source(data, split, seed=0)
  longest = _max_over_processes(source.num_examples)

  def local_batches():
    dataset = input_pipeline.eval_dataset(source, image_size=image_size,
                                          batch_size=per_process)
    for batch in dataset.as_numpy_iterator():
      yield {"image": batch["image"], "label": batch["label"]}

  return EvalInput(source.description, source.num_classes,
                   -(-longest // per_process), local_batches, per_process,
                   (image_size, image_size, 3))


def from_arrays(dataset: in_memory.ArrayDataset, mesh: Mesh, *,
                batch_size: int) -> EvalInput:
  """A labelled in-memory dataset streamed as an `EvalInput` (this
  process's rows, global batches of `batch_size` rounded up to the
  devices)."""
  return _array_input(dataset, per_process_batch(batch_size, mesh))


def split_input(data: ml_collections.ConfigDict, split: str, mesh: Mesh, *,
                image_size: int, batch_size: int) -> EvalInput:
  """The labelled images of `split` of data section `data`, streamed per
  process in global batches of `batch_size` rows (rounded up to the
  devices): in-memory sources as they are (this process's rows), host
  sources (TFDS, folders, zips) centre-cropped to `image_size` by the eval
  pipeline (this process's slice)."""
  per_process = per_process_batch(batch_size, mesh)
  if data.source in sources.IN_MEMORY_SOURCES:
    return _array_input(sources.load_in_memory(data, split), per_process)
  return _host_input(data, split, image_size=image_size,
                     per_process=per_process)


def eval_input(config: ml_collections.ConfigDict, split: str, mesh: Mesh, *,
               image_size: int, trained_subset: bool = False) -> EvalInput:
  """The held-out input of `split` for config `config`.

  Args:
    config: the experiment config (sections `data`, `eval`; `seed`).
    split: the split to read.
    mesh: the data mesh (fixes the per-process batch).
    image_size: side of the centre crops of host pipelines.
    trained_subset: read the examples pretraining used when
      `data.train_fraction` is set (the kNN bank): the class-balanced subset
      of in-memory data, TFDS's `imagenet2012_subset` of ImageNet.
  """
  data = config.data
  if not (trained_subset and data.train_fraction):
    return split_input(data, split, mesh, image_size=image_size,
                       batch_size=config.eval.batch_size)
  if data.source in sources.IN_MEMORY_SOURCES:
    dataset = in_memory.label_subset(sources.load_in_memory(data, split),
                                     data.train_fraction, seed=config.seed)
    return _array_input(dataset,
                        per_process_batch(config.eval.batch_size, mesh))
  return split_input(sources.imagenet_subset(data), split, mesh,
                     image_size=image_size, batch_size=config.eval.batch_size)
