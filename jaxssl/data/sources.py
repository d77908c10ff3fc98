"""Config section `data` → training batches and evaluation arrays.

Two kinds of source:
* in memory (`digits`, `synthetic`, `files_in_memory`: a folder or zip
  decoded with PIL): uint8 arrays of one size; the random-resized crops are
  cut on the device, so no TensorFlow is needed (GPU images without TF,
  benchmarks);
* host pipelines (`files`: a folder or zip of `<class>/<image>`; `tfds`): a
  tf.data pipeline per process reads (`host_sources`), decodes and crops on
  the host (`input_pipeline`), and the device does the photometric
  augmentation.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Callable, Iterator, Optional, Sequence

import jax
from jax.sharding import Mesh

from jaxssl import view_presets
from jaxssl import sharding
from jaxssl.data import in_memory

if TYPE_CHECKING:  # configs are only read here: no runtime dependency
  import ml_collections

IN_MEMORY_SOURCES = ("digits", "synthetic", "files_in_memory")
HOST_SOURCES = ("files", "tfds")
SOURCES = IN_MEMORY_SOURCES + HOST_SOURCES


def check(data: ml_collections.ConfigDict) -> None:
  """Fails early on a source that cannot be read, naming the key."""
  if data.source not in SOURCES:
    raise ValueError(f"config.data.source={data.source!r} is not one of "
                     f"{list(SOURCES)}")
  if data.source in ("files", "files_in_memory") and not data.path:
    raise ValueError(f"config.data.source={data.source!r} needs "
                     "config.data.path (a folder or .zip of <class>/<image> "
                     "files)")
  if not 0.0 <= data.train_fraction <= 1.0:
    raise ValueError(f"config.data.train_fraction={data.train_fraction} must "
                     "be in [0, 1] (0: all labels)")


def load_in_memory(data: ml_collections.ConfigDict,
                   split: str) -> in_memory.ArrayDataset:
  """The in-memory dataset of config section `data` for `split`."""
  if data.source == "digits":
    return in_memory.load_digits(split, data.image_size)
  if data.source == "synthetic":
    return in_memory.synthetic(data.synthetic_examples, data.image_size,
                               seed=0 if split == data.train_split else 1)
  if data.source == "files_in_memory":
    return in_memory.load_image_files(data.path, split or None,
                                      data.image_size)
  raise ValueError(f"config.data.source={data.source!r} is not in memory")


def host_source(data: ml_collections.ConfigDict, split: str, *, seed: int,
                process_index: Optional[int] = None,
                process_count: Optional[int] = None):
  """This process's `host_sources.HostSource` for `split`."""
  from jaxssl.data import host_sources  # pylint: disable=g-import-not-at-top
  process_index = jax.process_index() if process_index is None else process_index
  process_count = jax.process_count() if process_count is None else process_count
  if data.source == "files":
    return host_sources.files_source(
        data.path, split or None, process_index=process_index,
        process_count=process_count, seed=seed)
  if data.source == "tfds":
    return host_sources.tfds_source(
        data.name, split, data_dir=data.data_dir or None,
        process_index=process_index, process_count=process_count)
  raise ValueError(f"config.data.source={data.source!r} has no host pipeline")


class TrainInput:
  """Global training batches on the mesh, and what the schedule needs.

  Attributes:
    num_examples: examples per epoch over all processes.
    description: for logs.
    num_classes: classes of the labels (0: unlabelled).
    skip_counter: `input_pipeline.SkipCounter` of unreadable images (host
      pipelines, once `batches` has been called), or None.
  """

  def __init__(self, make_batches: Callable[[int], Iterator[Any]],
               num_examples: int, description: str, num_classes: int = 0):
    self._make_batches = make_batches
    self.num_examples = num_examples
    self.description = description
    self.num_classes = num_classes
    self.skip_counter = None

  def batches(self, start_step: int = 0) -> Iterator[Any]:
    """Iterator of dicts of global `jax.Array`s from step `start_step` on (a
    resumed run sees the batches an uninterrupted one would): `{'image'}`
    (in memory, cropped on device) or `{'views': (...)}` (host crops), with
    `'label'` where known."""
    iterator = self._make_batches(start_step)
    self.skip_counter = getattr(iterator, "counter", None)
    return iterator


def train_input(config: ml_collections.ConfigDict, mesh: Mesh,
                specs: Sequence[view_presets.ViewSpec],
                early_specs: Optional[Sequence[view_presets.ViewSpec]] = None
                ) -> TrainInput:
  """The training input of `config` on `mesh`: host pipelines crop `specs`
  (`early_specs` during the first `config.augment.early_epochs`)."""
  data = config.data
  if data.source in IN_MEMORY_SOURCES:
    dataset = load_in_memory(data, data.train_split)
    subset_seed = data.get("subset_seed", config.seed)
    if data.get("labelled_fraction"):
      dataset = in_memory.partially_labelled(
          dataset, data.train_fraction, data.labelled_fraction,
          seed=subset_seed, labelled_seed=data.get("labelled_seed"))
    elif data.train_fraction:
      dataset = in_memory.label_subset(dataset, data.train_fraction,
                                       seed=subset_seed)
    num_classes = 0 if dataset.labels is None else dataset.num_classes
    return TrainInput(
        lambda start: in_memory.global_batches(
            dataset, batch_size=config.batch_size, mesh=mesh,
            seed=config.seed, start_step=start),
        len(dataset), dataset.name, num_classes=num_classes)
  from jaxssl.data import input_pipeline  # pylint: disable=g-import-not-at-top
  if data.get("labelled_fraction"):
    raise NotImplementedError(
        f"a labelled fraction inside unlabelled data (distillation with "
        f"alpha < 1) needs an in-memory source, not {data.source!r}")
  data = imagenet_subset(data)
  source = host_source(data, data.train_split, seed=config.seed)
  input_pipeline.check_readable(source)
  per_process = config.batch_size // jax.process_count()
  early_steps = 0
  if early_specs:
    from jaxssl import epochs  # pylint: disable=g-import-not-at-top
    early_steps = epochs.RunLength.from_config(
        config, source.total_examples).steps_until(
            config.augment.early_epochs)

  def make_batches(start):
    dataset = input_pipeline.pretrain_dataset(
        source, specs, batch_size=per_process, seed=config.seed,
        shuffle_buffer=data.shuffle_buffer,
        start_position=start * per_process,
        reduced_decode=data.get("reduced_decode", False),
        early_specs=early_specs, early_positions=early_steps * per_process)
    return input_pipeline.HostIterator(
        dataset, examples_per_epoch=source.num_examples,
        description=source.description,
        place=lambda b: sharding.global_batch(b, mesh),
        start_position=start * per_process)

  return TrainInput(make_batches, source.total_examples, source.description,
                    num_classes=source.num_classes)


# TFDS's published ImageNet label subsets (SimCLR v2).
_IMAGENET_SUBSETS = {0.01: "imagenet2012_subset/1pct",
                     0.1: "imagenet2012_subset/10pct"}


def imagenet_subset(data: ml_collections.ConfigDict
                     ) -> ml_collections.ConfigDict:
  """The data section reading `train_fraction` of the labels (host sources)."""
  if not data.train_fraction:
    return data
  if (data.source == "tfds" and data.name == "imagenet2012"
      and data.train_fraction in _IMAGENET_SUBSETS):
    import ml_collections  # pylint: disable=g-import-not-at-top,redefined-outer-name
    data = ml_collections.ConfigDict(data.to_dict())
    data.name = _IMAGENET_SUBSETS[data.train_fraction]
    return data
  raise NotImplementedError(
      f"config.data.train_fraction={data.train_fraction} with source "
      f"{data.source!r} ({data.name}): host pipelines support ImageNet's "
      "TFDS subsets (0.01, 0.1); for other data use an in-memory source "
      "(e.g. files_in_memory), which takes a class-balanced subset")
