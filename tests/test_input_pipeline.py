"""Tests for the host input pipeline (`jaxssl.data.files`, `host_sources`,
`input_pipeline`); resuming is tested in `test_input_resume.py`.

Every image is generated here with numpy + PIL into pytest's `tmp_path`, tiny
(at most 64 px) so the whole module runs in a few seconds on 2 cores. Images
that must be recognisable after a random crop are solid colours saved as PNG
(lossless, and a bicubic resize of a constant is that constant), so the colour
of any view names the file it came from; images whose crops must differ are
random noise saved as JPEG.
"""

import io
import os
import zipfile

import numpy as np
from PIL import Image
import pytest

import image_bytes
from jaxssl import view_presets
from jaxssl.data import files as files_lib
from jaxssl.data import host_sources as hs
from jaxssl.data import input_pipeline as ip

_CIFAR_ZIP = "/work/shared/datasets/cifar10-jpeg.zip"
_CLASSES = ("cat", "ant", "bee")  # sorted: ant=0, bee=1, cat=2
_PER_CLASS = {"ant": 12, "bee": 12, "cat": 13}  # 37 in all
_H, _W = 20, 24


@pytest.fixture(scope="module")
def tf():
  return hs.tf_module()


_encode = image_bytes.encode


def _write(path, data: bytes) -> None:
  os.makedirs(os.path.dirname(path), exist_ok=True)
  with open(path, "wb") as f:
    f.write(data)


def _noise_jpeg(rng, h=_H, w=_W) -> bytes:
  return _encode(Image.fromarray(rng.integers(0, 256, (h, w, 3), np.uint8)),
                 "JPEG", quality=90)


def _solid_colour(class_index: int, k: int) -> tuple:
  """A unique colour per (class, k): red names the class, green the file."""
  return (40 + 80 * class_index, 10 + 6 * k, 128)


@pytest.fixture(scope="module")
def solid_folder(tmp_path_factory):
  """37 solid-colour PNGs in 3 classes; returns (root, {relative: colour})."""
  root = str(tmp_path_factory.mktemp("solid"))
  colours = {}
  for c, name in enumerate(sorted(_CLASSES)):
    for k in range(_PER_CLASS[name]):
      colour = _solid_colour(c, k)
      rel = f"{name}/{k:03d}.png"
      _write(os.path.join(root, rel),
             _encode(Image.new("RGB", (_W, _H), colour), "PNG"))
      colours[rel] = colour
  return root, colours


@pytest.fixture(scope="module")
def noise_folder(tmp_path_factory):
  """A split folder `root/train/<class>/*.jpg`: 10 noise JPEGs, 2 classes."""
  root = str(tmp_path_factory.mktemp("noise"))
  rng = np.random.default_rng(0)
  for name in ("dog", "cow"):
    for k in range(5):
      _write(os.path.join(root, "train", name, f"{k}.jpg"), _noise_jpeg(rng))
  return root


def _elements(ds, count: int) -> list:
  """The first `count` batches of `ds` as numpy dicts."""
  return list(ds.take(count).as_numpy_iterator())


def _relative(name: str, root: str) -> str:
  return os.path.relpath(name, root).replace(os.sep, "/")


# --------------------------------------------------------------------------
# 1. Process shards and epochs.
# --------------------------------------------------------------------------


def test_process_indices_partition():
  """Parts differ in size by <= 1, are sorted, disjoint and cover everything."""
  for num_examples in (2, 7, 37, 100):
    for count in (1, 2, 3, 8):
      if count > num_examples:
        continue
      parts = [hs.process_indices(num_examples, process_index=p,
                                  process_count=count, seed=3)
               for p in range(count)]
      sizes = [len(p) for p in parts]
      assert max(sizes) - min(sizes) <= 1, (num_examples, count, sizes)
      for p in parts:
        np.testing.assert_array_equal(p, np.sort(p))
      np.testing.assert_array_equal(np.sort(np.concatenate(parts)),
                                    np.arange(num_examples))
  a = hs.process_indices(100, process_index=0, process_count=2, seed=0)
  b = hs.process_indices(100, process_index=0, process_count=2, seed=0)
  c = hs.process_indices(100, process_index=0, process_count=2, seed=1)
  np.testing.assert_array_equal(a, b)
  assert not np.array_equal(a, c)


@pytest.mark.parametrize("process_index", [-1, 2, 5])
def test_process_indices_invalid_index(process_index):
  """A process index outside [0, process_count) raises ValueError."""
  with pytest.raises(ValueError, match="process_index"):
    hs.process_indices(10, process_index=process_index, process_count=2)


def test_process_indices_more_processes_than_examples():
  """A process left with no examples raises ValueError."""
  with pytest.raises(ValueError, match="no examples"):
    hs.process_indices(1, process_index=1, process_count=2)


def test_files_source_two_processes_cover_all(solid_folder):
  """Two processes' `global_index` sets are disjoint and cover all 37 files."""
  root, _ = solid_folder
  listing = files_lib.list_images(root)
  sources = [hs.files_source(root, None, process_index=p, process_count=2,
                             seed=3) for p in range(2)]
  sets = [set(s.global_index.tolist()) for s in sources]
  assert not sets[0] & sets[1]
  assert sets[0] | sets[1] == set(range(37))
  assert abs(sources[0].num_examples - sources[1].num_examples) <= 1
  for s in sources:
    assert s.total_examples == 37
    assert s.num_classes == 3
    assert s.num_examples == len(s.global_index) == len(s.labels)
    np.testing.assert_array_equal(s.labels, listing.labels[s.global_index])


@pytest.mark.parametrize("process_index", [0, 1])
def test_pretrain_epochs_each_example_once(tf, solid_folder, process_index):
  """Each epoch yields this process's examples once each, reshuffled.

  The view's colour names the file, so this also checks that 'index', 'label'
  and the pixels belong to the same example.
  """
  del tf
  root, colours = solid_folder
  listing = files_lib.list_images(root)
  source = hs.files_source(root, None, process_index=process_index,
                           process_count=2, seed=3)
  n = source.num_examples
  spec = view_presets.ViewSpec(size=8)
  ds = ip.pretrain_dataset(source, (spec,), batch_size=1, seed=5)
  batches = _elements(ds, 2 * n)
  epochs = np.array([b["epoch"][0] for b in batches])
  index = np.array([b["index"][0] for b in batches])
  np.testing.assert_array_equal(epochs, [0] * n + [1] * n)
  mine = sorted(source.global_index.tolist())
  assert sorted(index[:n].tolist()) == mine
  assert sorted(index[n:].tolist()) == mine
  assert not np.array_equal(index[:n], index[n:]), "epoch 1 not reshuffled"
  for b in batches:
    i = int(b["index"][0])
    rel = _relative(listing.names[i], root)
    view = b["views"][0][0]
    assert view.shape == (8, 8, 3) and view.dtype == np.uint8
    np.testing.assert_array_equal(view,
                                  np.broadcast_to(colours[rel], view.shape))
    assert b["label"][0] == sorted(_CLASSES).index(rel.split("/")[0])


# --------------------------------------------------------------------------
# 2. Labels.
# --------------------------------------------------------------------------


def test_labels_are_sorted_class_folder_index(tf, solid_folder):
  """Label == index of the class folder in sorted order (checked by colour)."""
  del tf
  root, _ = solid_folder
  listing = files_lib.list_images(root)
  assert listing.class_names == ("ant", "bee", "cat")
  assert list(listing.names) == sorted(listing.names)
  source = hs.files_source(root, None, process_index=0, process_count=1)
  ds = ip.pretrain_dataset(source, (view_presets.ViewSpec(size=6),),
                           batch_size=37, seed=0)
  (batch,) = _elements(ds, 1)
  red = batch["views"][0].reshape(37, -1, 3).mean(axis=1)[:, 0]
  np.testing.assert_array_equal(batch["label"], (red - 40) / 80)
  np.testing.assert_array_equal(np.bincount(batch["label"]), [12, 12, 13])


def test_unlabelled_folder(tf, tmp_path):
  """Images directly in the root: label -1 everywhere, num_classes 0."""
  del tf
  rng = np.random.default_rng(1)
  for k in range(5):
    _write(str(tmp_path / f"img{k}.jpg"), _noise_jpeg(rng))
  listing = files_lib.list_images(str(tmp_path))
  assert listing.labels is None and listing.class_names == ()
  source = hs.files_source(str(tmp_path), None, process_index=0,
                           process_count=1)
  assert source.num_classes == 0
  np.testing.assert_array_equal(source.labels, [-1] * 5)
  ds = ip.pretrain_dataset(source, (view_presets.ViewSpec(size=8),), batch_size=5,
                           seed=0)
  (batch,) = _elements(ds, 1)
  np.testing.assert_array_equal(batch["label"], [-1] * 5)


def test_mixed_depths_rejected(tmp_path):
  """Images both in the root and in class folders raise, naming the path."""
  png = _encode(Image.new("RGB", (4, 4)), "PNG")
  _write(str(tmp_path / "a.png"), png)
  _write(str(tmp_path / "cls" / "b.png"), png)
  with pytest.raises(ValueError, match="depths") as e:
    files_lib.list_images(str(tmp_path))
  assert str(tmp_path) in str(e.value)


def test_arrays_source_num_classes_is_global(tf):
  """num_classes counts all classes, not only those in this process's part."""
  del tf
  images = [_encode(Image.new("RGB", (4, 4)), "PNG")] * 9
  labels = np.array([0] * 8 + [3])
  counts = [hs.arrays_source(images, labels, process_index=p, process_count=2)
            .num_classes for p in range(2)]
  assert counts == [4, 4]


# --------------------------------------------------------------------------
# 3. Zip read in place.
# --------------------------------------------------------------------------


def test_zip_equals_folder(tf, noise_folder, tmp_path):
  """A zip with a 'train/' prefix gives the folder's names, labels, pixels."""
  del tf
  archive = str(tmp_path / "data.zip")
  train = os.path.join(noise_folder, "train")
  with zipfile.ZipFile(archive, "w") as zf:
    zf.writestr("train/", b"")
    zf.writestr("val/cow/extra.jpg", _noise_jpeg(np.random.default_rng(9)))
    for k, rel in enumerate(sorted(_relative(n, train) for n in
                                   files_lib.list_images(noise_folder,
                                                         "train").names)):
      # Alternate stored and deflated members: both are read in place.
      method = zipfile.ZIP_STORED if k % 2 else zipfile.ZIP_DEFLATED
      zf.write(os.path.join(train, rel), "train/" + rel, compress_type=method)
  folder = files_lib.list_images(noise_folder, "train")
  zipped = files_lib.list_images(archive, "train")
  assert zipped.archive == archive and folder.archive is None
  assert [_relative(n, train) for n in folder.names] == [
      n[len("train/"):] for n in zipped.names]
  np.testing.assert_array_equal(folder.labels, zipped.labels)
  assert folder.class_names == zipped.class_names == ("cow", "dog")

  out = {}
  for path in (noise_folder, archive):
    source = hs.files_source(path, "train", process_index=0, process_count=1)
    assert source.num_examples == 10
    (batch,) = _elements(ip.eval_dataset(source, image_size=16,
                                         batch_size=16), 1)
    out[path] = batch
  for key in ("image", "label", "index"):
    np.testing.assert_array_equal(out[noise_folder][key], out[archive][key])
  assert out[archive]["image"].shape == (10, 16, 16, 3)
  np.testing.assert_array_equal(out[archive]["index"], np.arange(10))


def test_zip_reader_missing_member(tmp_path):
  """ZipReader returns the member's bytes, and b'' for a missing member."""
  archive = str(tmp_path / "a.zip")
  with zipfile.ZipFile(archive, "w", zipfile.ZIP_DEFLATED) as zf:
    zf.writestr("x/y.bin", b"hello" * 100)
  reader = files_lib.ZipReader(archive)
  assert reader.read("x/y.bin") == b"hello" * 100
  assert reader.read("nope") == b""


# --------------------------------------------------------------------------
# 4. Determinism.
# --------------------------------------------------------------------------


def _views_by_index(batches) -> dict:
  """{(epoch, global index): tuple of views} from batches of any size."""
  out = {}
  for b in batches:
    for j, (e, i) in enumerate(zip(b["epoch"], b["index"])):
      out[(int(e), int(i))] = tuple(v[j] for v in b["views"])
  return out


def test_same_seed_same_views(tf, noise_folder):
  """Two fresh pipelines with one seed give bitwise-identical batches."""
  del tf
  specs = (view_presets.ViewSpec(size=12), view_presets.ViewSpec(size=12))
  runs = []
  for _ in range(2):
    source = hs.files_source(noise_folder, "train", process_index=0,
                             process_count=1)
    runs.append(_elements(
        ip.pretrain_dataset(source, specs, batch_size=2, seed=7), 10))
  for a, b in zip(*runs):
    for key in ("label", "epoch", "index"):
      np.testing.assert_array_equal(a[key], b[key])
    for va, vb in zip(a["views"], b["views"]):
      np.testing.assert_array_equal(va, vb)


def test_seed_epoch_and_view_change_crops(tf, noise_folder):
  """Another seed, another epoch or another view of an example: new crops."""
  del tf
  specs = (view_presets.ViewSpec(size=12), view_presets.ViewSpec(size=12))
  views = {}
  for seed in (7, 8):
    source = hs.files_source(noise_folder, "train", process_index=0,
                             process_count=1)
    views[seed] = _views_by_index(_elements(
        ip.pretrain_dataset(source, specs, batch_size=2, seed=seed), 10))
    assert len(views[seed]) == 20
  for i in range(10):
    a, b = views[7][(0, i)], views[8][(0, i)]
    assert not np.array_equal(a[0], b[0]), f"seed ignored, example {i}"
    assert not np.array_equal(a[0], a[1]), f"two views equal, example {i}"
    assert not np.array_equal(a[0], views[7][(1, i)][0]), (
        f"epochs 0 and 1 give one crop, example {i}")


def test_views_independent_of_process_count(tf, noise_folder):
  """An example's views depend on (seed, epoch, global index) only."""
  del tf
  specs = (view_presets.ViewSpec(size=12), view_presets.ViewSpec(size=10,
                                                       crop_mode="byol"))

  def run(p, count):
    source = hs.files_source(noise_folder, "train", process_index=p,
                             process_count=count)
    n = source.num_examples
    return _views_by_index(_elements(
        ip.pretrain_dataset(source, specs, batch_size=n, seed=4), 2))

  single = run(0, 1)
  split = {**run(0, 2), **run(1, 2)}
  assert single.keys() == split.keys() and len(single) == 20
  for key, views in single.items():
    for a, b in zip(views, split[key]):
      np.testing.assert_array_equal(a, b, err_msg=str(key))


# --------------------------------------------------------------------------
# 5. Crops.
# --------------------------------------------------------------------------


def test_view_shapes_per_spec(tf, noise_folder):
  """Each view is uint8 [b, size, size, 3] at its own spec's size."""
  del tf
  source = hs.files_source(noise_folder, "train", process_index=0,
                           process_count=1)
  specs = (view_presets.ViewSpec(size=32, crop_area=(0.14, 1.0)),
           view_presets.ViewSpec(size=32, crop_area=(0.14, 1.0)),
           view_presets.ViewSpec(size=16, crop_area=(0.05, 0.14)),
           view_presets.ViewSpec(size=16, crop_area=(0.05, 0.14),
                            crop_mode="byol"))
  (batch,) = _elements(ip.pretrain_dataset(source, specs, batch_size=4,
                                           seed=0), 1)
  assert [v.shape for v in batch["views"]] == [(4, 32, 32, 3)] * 2 + [
      (4, 16, 16, 3)] * 2
  assert all(v.dtype == np.uint8 for v in batch["views"])
  for key in ("label", "epoch", "index"):
    assert batch[key].shape == (4,)

  preset = view_presets.view_specs("multicrop", image_size=32, color_strength=1.0,
                              blur=False)
  (batch,) = _elements(ip.pretrain_dataset(source, preset, batch_size=2,
                                           seed=0), 1)
  assert [v.shape[1] for v in batch["views"]] == [s.size for s in preset]
  assert [s.size for s in preset] == [32, 32] + [14] * 6


def test_unknown_crop_mode_raises(tf, noise_folder):
  """A ViewSpec crop_mode other than 'simclr'/'byol' raises ValueError."""
  del tf
  source = hs.files_source(noise_folder, "train", process_index=0,
                           process_count=1)
  with pytest.raises(ValueError, match="crop_mode"):
    ip.pretrain_dataset(
        source, (view_presets.ViewSpec(size=8, crop_mode="inception"),),
        batch_size=1, seed=0)


_CROP_SHAPES = [(48, 64), (64, 48), (32, 32), (10, 200), (200, 10)]


@pytest.mark.parametrize("shape", _CROP_SHAPES)
def test_simclr_crop_boxes(tf, shape):
  """SimCLR boxes: inside, area >= 10 %, aspect in [3/4, 4/3] up to rounding.

  `min_object_covered=0.1` makes 10 % the real lower bound of the area; the
  only other outcome allowed is the whole image (fallback after 100 tries).
  TF rounds the height, then width = round(height * aspect), hence the
  +-0.5 / height slack on the aspect.
  """
  height, width = shape
  shape_t = tf.constant([height, width, 3])
  sampled = 0
  for s in range(150):
    y, x, h, w = (int(v) for v in ip.sample_crop_simclr(
        tf, shape_t, tf.constant([s, 11])))
    assert 0 <= y and 0 <= x and h >= 1 and w >= 1
    assert y + h <= height and x + w <= width
    if (y, x, h, w) == (0, 0, height, width):
      continue  # fallback (or a full-image draw)
    sampled += 1
    assert 0.1 <= h * w / (height * width) <= 1.0
    assert 3 / 4 - 0.5 / h <= w / h <= 4 / 3 + 0.5 / h, (h, w)
  if max(shape) / min(shape) < 2:
    assert sampled >= 140  # the fallback is rare on ordinary shapes


@pytest.mark.parametrize("shape", _CROP_SHAPES)
def test_byol_crop_boxes(tf, shape):
  """BYOL boxes are clamped inside the image, at least 1 px per side."""
  height, width = shape
  shape_t = tf.constant([height, width, 3])
  boxes = set()
  for s in range(150):
    y, x, h, w = (int(v) for v in ip.sample_crop_byol(
        tf, shape_t, tf.constant([s, 11])))
    assert 0 <= y and 0 <= x and 1 <= h <= height and 1 <= w <= width
    assert y + h <= height and x + w <= width
    boxes.add((y, x, h, w))
  assert len(boxes) > 100


def test_center_crop_resize(tf):
  """Centre crop of round(0.875 * shorter side), then a bicubic resize."""
  rng = np.random.default_rng(2)
  image = rng.integers(0, 256, (48, 64, 3), np.uint8)
  # Side 42: y0 = (48 - 42) // 2 = 3, x0 = (64 - 42) // 2 = 11, no resize.
  out = ip.center_crop_resize(tf, tf.constant(image), 42).numpy()
  np.testing.assert_array_equal(out, image[3:45, 11:53])
  out = ip.center_crop_resize(tf, tf.constant(image), 40).numpy()
  crop = tf.constant(image[3:45, 11:53].astype(np.float32))
  expected = np.clip(np.round(
      tf.image.resize(crop, [40, 40], method="bicubic").numpy()), 0, 255)
  assert out.shape == (40, 40, 3) and out.dtype == np.uint8
  np.testing.assert_array_equal(out, expected.astype(np.uint8))
  # Transposed 64 x 48: the same crop of the transposed image.
  out_t = ip.center_crop_resize(tf, tf.constant(image.transpose(1, 0, 2)),
                                42).numpy()
  np.testing.assert_array_equal(out_t, image[3:45, 11:53].transpose(1, 0, 2))
  # An odd margin (SimCLR's `center_crop`: the extra pixel goes before the
  # crop): 48 x 63, side 42, y0 = 6 // 2 = 3, x0 = (21 + 1) // 2 = 11.
  odd = image[:, :63]
  out = ip.center_crop_resize(tf, tf.constant(odd), 42).numpy()
  np.testing.assert_array_equal(out, odd[3:45, 11:53])


def test_center_crop_small_targets_only_resize(tf):
  """At <= 32 px there is no crop: 32x32 at 32 is unchanged, others resized."""
  rng = np.random.default_rng(3)
  square = rng.integers(0, 256, (32, 32, 3), np.uint8)
  np.testing.assert_array_equal(
      ip.center_crop_resize(tf, tf.constant(square), 32).numpy(), square)
  wide = rng.integers(0, 256, (30, 40, 3), np.uint8)
  out = ip.center_crop_resize(tf, tf.constant(wide), 32).numpy()
  expected = np.clip(np.round(tf.image.resize(
      wide.astype(np.float32), [32, 32], method="bicubic").numpy()), 0, 255)
  np.testing.assert_array_equal(out, expected.astype(np.uint8))


# --------------------------------------------------------------------------
# 6. Bad input and colour formats.
# --------------------------------------------------------------------------


@pytest.fixture(scope="module")
def bad_folder(tmp_path_factory):
  """6 valid JPEGs, one random-bytes .jpg, one truncated .jpg, one .txt."""
  root = str(tmp_path_factory.mktemp("bad"))
  rng = np.random.default_rng(4)
  for name in ("a", "b"):
    for k in range(3):
      _write(os.path.join(root, name, f"{k}.jpg"), _noise_jpeg(rng))
  _write(os.path.join(root, "a", "corrupt.jpg"), rng.bytes(700))
  valid = _noise_jpeg(rng, 32, 32)
  _write(os.path.join(root, "b", "truncated.JPG"), valid[:len(valid) // 2])
  _write(os.path.join(root, "b", "notes.txt"), b"not an image")
  return root


def test_truncated_jpeg_fails_to_decode(tf):
  """TF rejects a JPEG cut in half (no gray fill): it counts as unreadable."""
  valid = _noise_jpeg(np.random.default_rng(5), 32, 32)
  with pytest.raises(tf.errors.InvalidArgumentError):
    ip.decode_rgb(tf, tf.constant(valid[:len(valid) // 2]))


def test_bad_images_skipped(tf, bad_folder):
  """Unreadable files are dropped, never raised; each epoch has the 6 valid."""
  del tf
  listing = files_lib.list_images(bad_folder)
  assert len(listing) == 8  # .txt ignored, .JPG accepted
  valid = {i for i, n in enumerate(listing.names)
           if not n.endswith(("corrupt.jpg", "truncated.JPG"))}
  source = hs.files_source(bad_folder, None, process_index=0, process_count=1)
  batches = _elements(ip.pretrain_dataset(source, (view_presets.ViewSpec(size=8),),
                                          batch_size=1, seed=0), 18)
  index = [int(b["index"][0]) for b in batches]
  epochs = [int(b["epoch"][0]) for b in batches]
  assert epochs == [0] * 6 + [1] * 6 + [2] * 6
  for e in range(3):
    assert set(index[6 * e:6 * e + 6]) == valid
  (ev,) = _elements(ip.eval_dataset(source, image_size=8, batch_size=8), 1)
  assert set(ev["index"].tolist()) == valid


def test_host_iterator_counts_skipped(tf, bad_folder):
  """HostIterator counts 2 skipped images in each completed epoch."""
  del tf
  source = hs.files_source(bad_folder, None, process_index=0, process_count=1)
  ds = ip.pretrain_dataset(source, (view_presets.ViewSpec(size=8),), batch_size=2,
                           seed=0)
  it = ip.HostIterator(ds, examples_per_epoch=source.num_examples,
                       description=source.description)
  batches = [next(it) for _ in range(7)]  # 14 elements: 6 + 6 + 2
  assert set(batches[0]) == {"views", "label", "index"}
  assert batches[0]["views"][0].shape == (2, 8, 8, 3)
  # The good images' positions in the listing (the bad ones never arrive).
  assert batches[0]["index"].dtype == np.int32
  assert all(0 <= i < source.num_examples for b in batches for i in
             b["index"])
  assert it.counter.skipped_per_epoch[0] == 2
  assert it.counter.skipped_per_epoch[1] == 2


def test_unreadable_file_keeps_epoch_accounting(tf, tmp_path):
  """A file that fails to *read* (dangling link) is skipped like a bad decode.

  The read happens before the position is counted, so this checks that a
  failed read still advances it: epochs keep exactly the 6 readable files.
  """
  del tf
  rng = np.random.default_rng(6)
  for name in ("a", "b"):
    for k in range(3):
      _write(str(tmp_path / name / f"{k}.jpg"), _noise_jpeg(rng))
  os.symlink(str(tmp_path / "gone.jpg"), str(tmp_path / "a" / "dangling.jpg"))
  source = hs.files_source(str(tmp_path), None, process_index=0,
                           process_count=1)
  assert source.num_examples == 7
  ds = ip.pretrain_dataset(source, (view_presets.ViewSpec(size=8),), batch_size=1,
                           seed=0)
  it = ip.HostIterator(ds, examples_per_epoch=7, description="dangling")
  batches = [next(it) for _ in range(13)]  # 6 + 6 + 1
  assert len(batches) == 13
  assert it.counter.skipped_per_epoch == {0: 1, 1: 1}


def test_colour_formats_decode_to_rgb(tf, tmp_path):
  """Gray JPEG/PNG, RGBA PNG and CMYK JPEG decode to uint8 [H, W, 3] RGB.

  PIL writes CMYK JPEGs Adobe-inverted; libjpeg's conversion gives
  R = (255 - C)(255 - K) / 255 (likewise G from M, B from Y), truncated.
  Quality 95 on a flat colour moves each stored channel by <= 1 and the
  product then by <= 2; one more for TF's truncation: tolerance 3.
  """
  gray = Image.new("L", (10, 12), 77)
  rgba = Image.new("RGBA", (10, 12), (10, 200, 30, 100))
  cmyk_colours = [(0, 128, 255, 0), (50, 100, 150, 30), (0, 0, 0, 255)]
  cases = {
      "gray.jpg": (_encode(gray, "JPEG", quality=95), (77, 77, 77), 1),
      "gray.png": (_encode(gray, "PNG"), (77, 77, 77), 0),
      "rgba.png": (_encode(rgba, "PNG"), (10, 200, 30), 0),  # alpha dropped
  }
  for k, (c, m, y, kk) in enumerate(cmyk_colours):
    expected = tuple((255 - v) * (255 - kk) / 255 for v in (c, m, y))
    cases[f"cmyk{k}.jpg"] = (
        _encode(Image.new("CMYK", (10, 12), (c, m, y, kk)), "JPEG",
                quality=95), expected, 3)
  for name, (data, colour, atol) in cases.items():
    image = ip.decode_rgb(tf, tf.constant(data)).numpy()
    assert image.shape == (12, 10, 3) and image.dtype == np.uint8, name
    np.testing.assert_allclose(image.reshape(-1, 3).astype(float),
                               np.broadcast_to(colour, (120, 3)), atol=atol,
                               err_msg=name)
    _write(str(tmp_path / name), data)
  source = hs.files_source(str(tmp_path), None, process_index=0,
                           process_count=1)
  (batch,) = _elements(ip.eval_dataset(source, image_size=8, batch_size=16), 1)
  assert batch["image"].shape == (len(cases), 8, 8, 3)  # none skipped


def _zip_without_train(path):
  with zipfile.ZipFile(path, "w") as zf:
    zf.writestr("test/cls/a.jpg", _noise_jpeg(np.random.default_rng(0)))
    zf.writestr("train/cls/readme.txt", b"x")
  return path


@pytest.mark.parametrize("case", ["empty", "no_images", "missing", "zip"])
def test_no_images_raises_naming_path(tf, tmp_path, case):
  """Empty/imageless folder, missing path, imageless zip split: ValueError."""
  del tf
  split = None
  if case == "empty":
    path = str(tmp_path)
  elif case == "no_images":
    path = str(tmp_path)
    _write(str(tmp_path / "cls" / "a.txt"), b"text")
    _write(str(tmp_path / "b.csv"), b"1,2")
  elif case == "missing":
    path = str(tmp_path / "does_not_exist")
  else:
    path = _zip_without_train(str(tmp_path / "d.zip"))
    split = "train"
  with pytest.raises(ValueError) as e:
    hs.files_source(path, split, process_index=0, process_count=1)
  assert path in str(e.value)


# --------------------------------------------------------------------------
# 7. SkipCounter.
# --------------------------------------------------------------------------


def test_skip_counter_update():
  """An epoch is closed when a later one appears; skipped = expected - seen."""
  counter = ip.SkipCounter(5, "unit")
  counter.update(np.array([0, 0, 0]))
  assert counter.skipped_per_epoch == {} and counter.skipped == 0
  counter.update(np.array([0, 1, 1]))  # epoch 0: 4 of 5
  assert counter.skipped_per_epoch == {0: 1}
  counter.update(np.array([1, 1, 1, 2]))  # epoch 1: 5 of 5
  assert counter.skipped_per_epoch == {0: 1, 1: 0}
  counter.update(np.array([2, 2, 3, 3, 4]))  # epochs 2 (3 of 5) and 3 close
  assert counter.skipped_per_epoch == {0: 1, 1: 0, 2: 2, 3: 3}
  assert counter.skipped == 6
  assert set(counter.seen) == {4}


# --------------------------------------------------------------------------
# Real data (optional).
# --------------------------------------------------------------------------


@pytest.mark.skipif(not os.path.exists(_CIFAR_ZIP), reason="no CIFAR-10 zip")
def test_cifar10_zip(tf):
  """The CIFAR-10 zip's test split: 10 classes, members decoded as by TF.

  `tf.io.decode_image` uses libjpeg's fast integer IDCT, so pixels match
  `tf.io.decode_jpeg` exactly but PIL (accurate IDCT) only to a few levels.
  """
  source = hs.files_source(_CIFAR_ZIP, "test", process_index=1,
                           process_count=2)
  assert source.total_examples == 10000 and source.num_examples == 5000
  assert source.num_classes == 10
  (batch,) = _elements(ip.eval_dataset(source, image_size=32, batch_size=4), 1)
  assert batch["image"].shape == (4, 32, 32, 3)
  listing = files_lib.list_images(_CIFAR_ZIP, "test")
  assert listing.class_names[0] == "airplane"
  with zipfile.ZipFile(_CIFAR_ZIP) as zf:
    for image, label, i in zip(batch["image"], batch["label"], batch["index"]):
      name = listing.names[i]
      assert listing.class_names[label] == name.split("/")[1]
      data = zf.read(name)
      np.testing.assert_array_equal(
          image, tf.io.decode_jpeg(data, channels=3).numpy(), err_msg=name)
      reference = np.asarray(Image.open(io.BytesIO(data)).convert("RGB"))
      diff = np.abs(image.astype(int) - reference.astype(int))
      assert diff.max() <= 8 and diff.mean() < 2, (name, diff.max())


# --------------------------------------------------------------------------
# TFDS source (optional).
# --------------------------------------------------------------------------


@pytest.fixture(scope="module")
def tfds_dir(tmp_path_factory):
  """A prepared TFDS dataset 'tiny_colours': 11 solid PNGs, 3 classes."""
  tfds = pytest.importorskip("tensorflow_datasets")
  tf = hs.tf_module()
  tfds.disable_progress_bar()
  data_dir = str(tmp_path_factory.mktemp("tfds"))
  images = np.stack([np.full((_H, _W, 3), _solid_colour(k % 3, k), np.uint8)
                     for k in range(11)])
  labels = np.arange(11) % 3
  features = tfds.features.FeaturesDict({
      "image": tfds.features.Image(shape=(_H, _W, 3), encoding_format="png"),
      "label": tfds.features.ClassLabel(num_classes=3)})
  tfds.dataset_builders.TfDataBuilder(
      name="tiny_colours", config="default", version="1.0.0",
      data_dir=data_dir, features=features,
      split_datasets={"train": tf.data.Dataset.from_tensor_slices(
          {"image": images, "label": labels})}).download_and_prepare()
  return data_dir


def test_tfds_source_two_processes(tf, tfds_dir):
  """TFDS: 2 processes cover the 11 examples once; each epoch sees each once."""
  del tf
  seen, offset = [], 0
  for p in range(2):
    source = hs.tfds_source("tiny_colours", "train", data_dir=tfds_dir,
                            process_index=p, process_count=2)
    n = source.num_examples
    assert source.records is not None  # TFRecord: a stream
    assert source.total_examples == 11 and source.num_classes == 3
    batches = _elements(ip.pretrain_dataset(
        source, (view_presets.ViewSpec(size=6),), batch_size=1, seed=2), 2 * n)
    np.testing.assert_array_equal([b["epoch"][0] for b in batches],
                                  [0] * n + [1] * n)
    green = [int(b["views"][0][0, 0, 0, 1]) for b in batches]
    ks = [(g - 10) // 6 for g in green]  # the example, from its colour
    assert sorted(ks[:n]) == sorted(ks[n:]) and len(set(ks[:n])) == n
    assert [int(b["label"][0]) for b in batches] == [k % 3 for k in ks]
    (ev,) = _elements(ip.eval_dataset(source, image_size=8, batch_size=16), 1)
    # Indices count from this process's first example in the whole split.
    np.testing.assert_array_equal(ev["index"], offset + np.arange(n))
    offset += n
    assert sorted((ev["image"][:, 0, 0, 1].astype(int) - 10) // 6) == sorted(
        ks[:n])
    seen.append(set(ks[:n]))
  assert not seen[0] & seen[1] and seen[0] | seen[1] == set(range(11))


def test_tfds_missing_split_raises(tf, tfds_dir):
  """An unknown TFDS split raises ValueError naming the dataset and split."""
  del tf
  with pytest.raises(ValueError, match="tiny_colours.*validation"):
    hs.tfds_source("tiny_colours", "validation", data_dir=tfds_dir,
                   process_index=0, process_count=1)


# --------------------------------------------------------------------------
# Held-out evaluation input, streamed per process.
# --------------------------------------------------------------------------


def _eval_config(root):
  from jaxssl import config_utils  # pylint: disable=g-import-not-at-top
  c = config_utils.base_config()
  c.data.source, c.data.path = "files", root
  c.eval.batch_size = 16
  return c


def _colours_and_labels(rows):
  """`{colour: label}` of the masked-in rows of padded batches."""
  seen = {}
  for b in rows:
    assert b["image"].shape[1:] == (16, 16, 3)
    assert np.all(b["label"][~b["mask"]] == -1)
    assert np.all(b["image"][~b["mask"]] == 0)
    for image, label in zip(b["image"][b["mask"]], b["label"][b["mask"]]):
      colour = tuple(int(v) for v in image[0, 0])
      assert np.all(image == image[0, 0]) and colour not in seen
      seen[colour] = int(label)
  return seen


def test_eval_input_streams_every_example_once_per_process(solid_folder,
                                                           monkeypatch):
  """A `files` split on 2 (simulated) processes: the same number of padded
  batches on each, every image exactly once with its label; on 1 process
  the global batches hold the same, sharded over the 8 devices."""
  import jax  # pylint: disable=g-import-not-at-top
  from jaxssl import sharding  # pylint: disable=g-import-not-at-top
  from jaxssl.data import eval_input  # pylint: disable=g-import-not-at-top
  root, colours = solid_folder
  want = {colour: sorted(_CLASSES).index(rel.split("/")[0])
          for rel, colour in colours.items()}
  mesh = sharding.data_mesh()
  config = _eval_config(root)
  whole = eval_input.eval_input(config, "", mesh, image_size=16)
  assert whole.num_batches == 3 and whole.per_process == 16  # 37 of 48 rows
  batches = [jax.device_get(b) for b in whole.batches(mesh)]
  assert _colours_and_labels(batches) == want

  parts, counts = {}, set()
  for p in range(2):
    with monkeypatch.context() as m:
      m.setattr(jax, "process_index", lambda p=p: p)
      m.setattr(jax, "process_count", lambda: 2)
      m.setattr(eval_input, "_max_over_processes", lambda n: 19)
      inp = eval_input.eval_input(config, "", mesh, image_size=16)
      rows = [inp._padded(b) for b in inp.local_batches()]  # pylint: disable=protected-access
      counts.add((inp.num_batches, inp.per_process))
      assert len(rows) <= inp.num_batches
      part = _colours_and_labels(rows)
    assert not set(part) & set(parts)
    parts.update(part)
  assert counts == {(3, 8)} and parts == want


def test_early_crops_before_the_switch_position(noise_folder):
  """An augmentation schedule on the host: the examples at stream positions
  below `early_positions` are cropped with the early specs (as a pipeline
  of only those), the later ones with the late specs, same seeds."""
  source = hs.files_source(os.path.join(noise_folder, "train"), None,
                           process_index=0, process_count=1)
  early = (view_presets.ViewSpec(size=8, crop_area=(0.9, 1.0)),) * 2
  late = (view_presets.ViewSpec(size=8, crop_area=(0.08, 0.1)),) * 2
  views = {}
  for name, kwargs in (("early", dict(specs=early)),
                       ("late", dict(specs=late)),
                       ("both", dict(specs=late, early_specs=early,
                                     early_positions=4))):
    batches = _elements(ip.pretrain_dataset(source, batch_size=2, seed=3,
                                            **kwargs), 4)
    views[name] = np.concatenate([b["views"][1] for b in batches])
  assert np.abs(views["early"].astype(int) - views["late"]).max() > 20
  np.testing.assert_array_equal(views["both"][:4], views["early"][:4])
  np.testing.assert_array_equal(views["both"][4:], views["late"][4:])


def test_tensorflow_is_loaded_only_by_tf_module():
  """A run on synthetic or in-memory data never imports TensorFlow (3 s per
  process): importing the training modules and `hide_accelerators()` leave
  it unloaded; `tf_module()` loads it (a fresh interpreter, since this
  one's tests have imported it)."""
  import subprocess  # pylint: disable=g-import-not-at-top
  import sys  # pylint: disable=g-import-not-at-top
  import subprocess_env  # pylint: disable=g-import-not-at-top
  code = (
      "import sys\n"
      "from jaxssl import main, train\n"
      "from jaxssl.data import input_pipeline\n"
      "input_pipeline.hide_accelerators()\n"
      "print('tensorflow' in sys.modules)\n"
      "input_pipeline.tf_module()\n"
      "print('tensorflow' in sys.modules)\n")
  out = subprocess.run([sys.executable, "-c", code], capture_output=True,
                       text=True, env=subprocess_env.cpu_env(1), timeout=300,
                       check=False)
  assert out.returncode == 0, out.stderr[-3000:]
  assert out.stdout.split() == ["False", "True"], out.stdout
