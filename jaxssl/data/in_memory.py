"""In-memory image sources, iterated as global batches on the device mesh.

Enough for small data (scikit-learn digits, synthetic images, arrays you
already hold); the tf.data pipeline for TFDS and image folders builds on the
same `global_batch` placement.
"""

import dataclasses
import functools
from typing import Iterator, Optional

import jax
from jax.sharding import Mesh
import numpy as np

from jaxssl import sharding


@dataclasses.dataclass(frozen=True)
class ArrayDataset:
  """uint8 images `[N, H, W, 3]` with optional integer labels `[N]`."""
  images: np.ndarray
  labels: Optional[np.ndarray] = None
  name: str = "arrays"

  def __post_init__(self):
    images = self.images
    if images.ndim != 4 or images.shape[-1] != 3:
      raise ValueError(f"{self.name}: images must be [N, H, W, 3]; got shape "
                       f"{images.shape}")
    if images.dtype != np.uint8:
      raise ValueError(f"{self.name}: images must be uint8; got {images.dtype}")
    if len(images) == 0:
      raise ValueError(f"{self.name}: no images")
    if self.labels is not None and len(self.labels) != len(images):
      raise ValueError(f"{self.name}: {len(self.labels)} labels for "
                       f"{len(images)} images")

  def __len__(self) -> int:
    return len(self.images)

  @property
  def num_classes(self) -> int:
    if self.labels is None:
      raise ValueError(f"{self.name} has no labels")
    return int(self.labels.max()) + 1


def epoch_permutation(num_examples: int, seed: int, epoch: int) -> np.ndarray:
  """The example order of `epoch`: a function of (seed, epoch) only."""
  return np.random.default_rng([seed, epoch]).permutation(num_examples)


def global_batches(
    dataset: ArrayDataset,
    *,
    batch_size: int,
    mesh: Mesh,
    seed: int,
    start_step: int = 0,
    process_index: Optional[int] = None,
    process_count: Optional[int] = None,
) -> Iterator[dict]:
  """Endless shuffled global batches `{'image', 'index'[, 'label']}` on the
  mesh (`index`: each example's position in `dataset`).

  The examples stream continuously (`jaxssl.epochs`): epoch e is
  `epoch_permutation(N, seed, e)`, and step s takes positions
  `[s·B, (s + 1)·B)` of the stream, so a batch may end one epoch and begin
  the next and nothing is dropped. Step s always gets the same examples, so
  a run can restart at `start_step` at no cost. Each process materialises
  only its contiguous slice of every global batch.

  Args:
    dataset: the examples.
    batch_size: global batch size (a multiple of the device count).
    mesh: the data mesh.
    seed: shuffling seed.
    start_step: the first step to produce.
    process_index, process_count: this process and the number of processes
      (default: from JAX).

  Yields:
    Dicts of global `jax.Array`s sharded over the data axis.
  """
  sharding.check_batch_size(batch_size, mesh)
  process_index = jax.process_index() if process_index is None else process_index
  process_count = jax.process_count() if process_count is None else process_count
  n = len(dataset)
  if n < batch_size:
    raise ValueError(f"{dataset.name}: {n} examples are fewer than one "
                     f"global batch of {batch_size}")
  per_process = batch_size // process_count
  orders = {}  # the permutations of the (at most two) epochs in use
  step = start_step
  while True:
    first = step * batch_size + process_index * per_process
    epoch, offset = np.divmod(np.arange(first, first + per_process), n)
    for e in set(epoch.tolist()) - set(orders):
      orders[e] = epoch_permutation(n, seed, e)
    for e in [e for e in orders if e < epoch[0]]:
      del orders[e]
    idx = np.concatenate([orders[e][offset[epoch == e]]
                          for e in sorted(orders) if e <= epoch[-1]])
    # 'index': each example's position in `dataset` (its memory-bank row),
    # not its position in the global batch.
    local = {"image": dataset.images[idx], "index": idx.astype(np.int32)}
    if dataset.labels is not None:
      local["label"] = dataset.labels[idx].astype(np.int32)
    yield sharding.global_batch(local, mesh)
    step += 1


def load_digits(split: str, image_size: int, seed: int = 0) -> ArrayDataset:
  """scikit-learn's bundled 8×8 digits (1,797 images, no download).

  Upsampled bilinearly to `image_size` and replicated to RGB; a fixed
  stratified 80/20 split gives 'train' (1,437) and 'test' (360).
  """
  from scipy import ndimage  # pylint: disable=g-import-not-at-top
  from sklearn import datasets, model_selection  # pylint: disable=g-import-not-at-top
  digits = datasets.load_digits()
  images = digits.images.astype(np.float64) / 16.0
  labels = digits.target.astype(np.int32)
  train_idx, test_idx = model_selection.train_test_split(
      np.arange(len(labels)), test_size=0.2, stratify=labels,
      random_state=seed)
  if split not in ("train", "test"):
    raise ValueError(f"digits: unknown split {split!r}; expected 'train' or "
                     "'test'")
  idx = np.sort(train_idx if split == "train" else test_idx)
  zoom = image_size / 8.0
  big = ndimage.zoom(images[idx], (1, zoom, zoom), order=1)
  big = np.clip(np.round(big * 255.0), 0, 255).astype(np.uint8)
  return ArrayDataset(np.repeat(big[..., None], 3, axis=-1), labels[idx],
                      name=f"digits[{split}]")


def synthetic(num_examples: int, image_size: int, num_classes: int = 10,
              seed: int = 0) -> ArrayDataset:
  """Noisy images with a class-dependent colour, for smoke runs.

  The class colours are the same for every `seed`, so differently seeded
  sets (train/test) share their classes.
  """
  colours = np.random.default_rng(1234).uniform(0, 255, (num_classes, 1, 1, 3))
  rng = np.random.default_rng(seed)
  labels = rng.integers(0, num_classes, num_examples).astype(np.int32)
  noise = rng.normal(0, 40, (num_examples, image_size, image_size, 3))
  images = np.clip(colours[labels] + noise, 0, 255).astype(np.uint8)
  return ArrayDataset(images, labels, name="synthetic")


def class_balanced_subset(labels: np.ndarray, fraction: float,
                          seed: int = 0) -> np.ndarray:
  """Sorted indices of `round(fraction·n_c)` (at least 1) examples per class.

  Deterministic in (labels, fraction, seed): each class draws from its own
  seeded permutation, so the subset of a class does not depend on the
  others, and a smaller fraction's subset is contained in a larger one's.
  """
  if not 0.0 < fraction <= 1.0:
    raise ValueError(f"label fraction {fraction} must be in (0, 1]")
  labels = np.asarray(labels)
  chosen = []
  for c in np.unique(labels[labels >= 0]):
    members = np.flatnonzero(labels == c)
    order = np.random.default_rng([seed, int(c)]).permutation(len(members))
    count = max(1, int(round(fraction * len(members))))
    chosen.append(members[order[:count]])
  return np.sort(np.concatenate(chosen))


def label_subset(dataset: ArrayDataset, fraction: float,
                 seed: int = 0) -> ArrayDataset:
  """The class-balanced `fraction` of a labelled dataset."""
  if dataset.labels is None:
    raise ValueError(f"{dataset.name}: a label fraction needs labels")
  idx = class_balanced_subset(dataset.labels, fraction, seed)
  return ArrayDataset(dataset.images[idx], dataset.labels[idx],
                      name=f"{dataset.name} (class-balanced {fraction:.0%}, "
                      f"{len(idx)} images)")


def partially_labelled(dataset: ArrayDataset, fraction: float,
                       labelled_fraction: float, seed: int = 0,
                       labelled_seed: Optional[int] = None) -> ArrayDataset:
  """The class-balanced `fraction` (0: all, drawn with `seed`) of a labelled
  dataset with the labels of all but the class-balanced `labelled_fraction`
  (drawn with `labelled_seed`, default `seed`) replaced by −1
  (semi-supervised distillation: the fine-tuning subset keeps its labels;
  with the same seed it lies inside any larger fraction's subset)."""
  if dataset.labels is None:
    raise ValueError(f"{dataset.name}: a labelled fraction needs labels")
  idx = (class_balanced_subset(dataset.labels, fraction, seed) if fraction
         else np.arange(len(dataset.labels)))
  labelled = class_balanced_subset(
      dataset.labels, labelled_fraction,
      seed if labelled_seed is None else labelled_seed)
  labels = np.where(np.isin(idx, labelled), dataset.labels[idx], -1)
  return ArrayDataset(dataset.images[idx], labels.astype(np.int32),
                      name=f"{dataset.name} ({len(idx)} images, "
                      f"{int(np.sum(labels >= 0))} labelled)")


@functools.lru_cache(maxsize=4)
def load_image_files(path: str, split: Optional[str],
                     image_size: int) -> ArrayDataset:
  """A folder or zip of `<class>/<image>` decoded into memory with PIL.

  For small sets (CIFAR-10: 60k images in about 15 s) on machines without
  TensorFlow: each image is centre-cropped to a square and resized to
  `image_size` (bicubic) when it is not already that size. Cached: the
  training input and the kNN bank share one decode.
  """
  from PIL import Image  # pylint: disable=g-import-not-at-top
  import io  # pylint: disable=g-import-not-at-top
  from jaxssl.data import files  # pylint: disable=g-import-not-at-top
  listing = files.list_images(path, split)
  read = files.reader(listing)
  images = np.empty((len(listing), image_size, image_size, 3), np.uint8)
  for i, name in enumerate(listing.names):
    data = read(name)
    try:
      image = Image.open(io.BytesIO(data)).convert("RGB")
    except Exception as e:  # pylint: disable=broad-except
      raise ValueError(f"{name} in {listing.description} cannot be decoded: "
                       f"{e}") from e
    if image.size != (image_size, image_size):
      w, h = image.size
      side = min(w, h)
      image = image.crop(((w - side) // 2, (h - side) // 2,
                          (w - side) // 2 + side, (h - side) // 2 + side))
      image = image.resize((image_size, image_size), Image.BICUBIC)
    images[i] = np.asarray(image)
  return ArrayDataset(images, listing.labels, name=listing.description)
