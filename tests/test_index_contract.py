"""The `batch['index']` contract (`methods.base.StepContext.index`): every
training source delivers each example's DATASET index, the same for the
same example whichever source reads it, through the whole input path
(`sources.train_input` → global batches on 8 devices); a method that
needs it refuses a batch without it."""

import os

import jax
import numpy as np
from PIL import Image
import pytest

import image_bytes
import mesh_runs
from jaxssl import config_utils
from jaxssl import sharding
from jaxssl import train
from jaxssl import view_presets
from jaxssl.data import sources

_SIZE = 8
_CLASSES = {"ant": 5, "bee": 6}  # 11 images


def _colour(k: int) -> tuple:
  """Example k's solid colour (the example, readable from any crop)."""
  return (20 + 9 * k, 200 - 7 * k, 60)


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
  """`train/<class>/<k>.png` solid images; returns (root, colours in the
  listing's order: sorted relative paths)."""
  root = str(tmp_path_factory.mktemp("index_folder"))
  k, order = 0, []
  for name, count in sorted(_CLASSES.items()):
    os.makedirs(os.path.join(root, "train", name))
    for j in range(count):
      with open(os.path.join(root, "train", name, f"{j:02d}.png"), "wb") as f:
        f.write(image_bytes.encode(Image.new("RGB", (_SIZE, _SIZE),
                                             _colour(k)), "PNG"))
      order.append(_colour(k))
      k += 1
  return root, order


def _config(source, **data):
  c = config_utils.base_config()
  c.data.source = source
  c.data.image_size = _SIZE
  c.batch_size = 8
  for key, value in data.items():
    c.data[key] = value
  return c


def _indices_and_colours(config, steps=3):
  """`(index, colour)` of every example of the first `steps` global
  batches of `sources.train_input`, on 8 devices."""
  mesh = sharding.data_mesh()
  spec = view_presets.ViewSpec(size=4, crop_area=(0.5, 1.0))
  inp = sources.train_input(config, mesh, (spec,))
  pairs = []
  for _, batch in zip(range(steps), inp.batches(start_step=1)):
    batch = jax.device_get(batch)
    images = batch["image"] if "image" in batch else batch["views"][0]
    assert batch["index"].dtype == np.int32
    assert batch["index"].shape == (config.batch_size,)
    for i, image in zip(batch["index"], images):
      pairs.append((int(i), tuple(int(v) for v in image[0, 0])))
  return inp.num_examples, pairs


@pytest.mark.parametrize("source", ["files", "files_in_memory"])
def test_folder_sources_index_the_listing(folder, source):
  """A folder read by the host pipeline or decoded into memory: each
  example's index is its position in the sorted listing."""
  root, order = folder
  n, pairs = _indices_and_colours(_config(source, path=root))
  assert n == len(order)
  for i, colour in pairs:
    np.testing.assert_allclose(colour, order[i], atol=2)
  assert len({i for i, _ in pairs}) == len(order)  # 24 draws: all seen


def test_tfds_source_indexes_the_split_in_order(tmp_path):
  """TFDS: the index is the example's position in the prepared split read
  in order (`as_dataset(shuffle_files=False)`)."""
  tfds = pytest.importorskip("tensorflow_datasets")
  from jaxssl.data import host_sources  # pylint: disable=g-import-not-at-top
  tf = host_sources.tf_module()
  tfds.disable_progress_bar()
  images = np.stack([np.full((_SIZE, _SIZE, 3), _colour(k), np.uint8)
                     for k in range(11)])
  features = tfds.features.FeaturesDict({
      "image": tfds.features.Image(shape=(_SIZE, _SIZE, 3),
                                   encoding_format="png"),
      "label": tfds.features.ClassLabel(num_classes=2)})
  builder = tfds.dataset_builders.TfDataBuilder(
      name="index_colours", config="default", version="1.0.0",
      data_dir=str(tmp_path), features=features,
      split_datasets={"train": tf.data.Dataset.from_tensor_slices(
          {"image": images, "label": np.arange(11) % 2})})
  builder.download_and_prepare()
  in_order = [tuple(int(v) for v in ex["image"][0, 0]) for ex in
              tfds.as_numpy(builder.as_dataset("train", shuffle_files=False))]
  n, pairs = _indices_and_colours(_config(
      "tfds", name="index_colours", data_dir=str(tmp_path)))
  assert n == 11
  for i, colour in pairs:
    np.testing.assert_allclose(colour, in_order[i], atol=2)


def test_synthetic_batches_carry_the_dataset_index():
  """In-memory arrays: `index` points at the batch's own images, also from
  a resumed step."""
  from jaxssl.data import in_memory  # pylint: disable=g-import-not-at-top
  dataset = in_memory.synthetic(20, _SIZE, seed=3)
  mesh = sharding.data_mesh()
  for start in (0, 3):
    batches = in_memory.global_batches(dataset, batch_size=8, mesh=mesh,
                                       seed=1, start_step=start)
    for _, batch in zip(range(3), batches):
      batch = jax.device_get(batch)
      np.testing.assert_array_equal(batch["image"],
                                    dataset.images[batch["index"]])
      np.testing.assert_array_equal(batch["label"],
                                    dataset.labels[batch["index"]])


def test_a_method_that_needs_the_index_refuses_a_batch_without_it():
  """`Method.needs_index`: tracing the step on a batch without 'index'
  names the method and the batch's keys."""
  import dataclasses  # pylint: disable=g-import-not-at-top
  c = mesh_runs.tiny_config("simclr", batch_size=8, image_size=_SIZE)
  c.lock()
  learner = train.create_learner(c, 64)
  learner = dataclasses.replace(learner, method=dataclasses.replace(
      learner.method, needs_index=True))
  mesh = sharding.data_mesh()
  state = train.create_train_state(jax.random.key(0), learner, mesh)
  step = train.compile_train_step(learner, mesh)
  images = np.zeros((8, _SIZE, _SIZE, 3), np.uint8)
  with pytest.raises(ValueError, match=r"method 'simclr' reads each "
                     r"example's dataset index.*keys: \['image'\]"):
    step(state, sharding.global_batch({"image": images}, mesh))
