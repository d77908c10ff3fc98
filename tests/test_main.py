"""End to end: configs, the command line, and its errors."""

import json
import os
import subprocess
import sys

import numpy as np
import pytest

import config_files
import runlocal_configs
import subprocess_env
from jaxssl import sharding
from jaxssl import train
from jaxssl.config_utils import parse_arg

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
METHOD_CONFIGS = runlocal_configs.METHOD_CONFIGS
CONFIGS = runlocal_configs.CONFIGS
TRAINED_CONFIGS = runlocal_configs.TRAINED_CONFIGS


_load = config_files.load


@pytest.mark.parametrize("name", CONFIGS)
def test_config_has_command_expected_and_runlocal(name):
  module, config = _load(name)
  assert "COMMAND" in module.__doc__ and "EXPECTED" in module.__doc__
  _, local = _load(name, "runlocal")
  assert local.batch_size <= 64 and local.data.source in ("digits", "synthetic")
  assert local.batch_size % 8 == 0
  config.lock()
  with pytest.raises(AttributeError, match="nme"):
    config.optimizer.nme = 1


def test_simclr_resnet50_matches_paper_settings():
  _, c = _load("simclr_resnet50")
  assert (c.batch_size, c.epochs, c.model.depth, c.head.num_layers) == (
      4096, 100, 50, 2)
  assert (c.optimizer.name, c.optimizer.base_lr, c.optimizer.lr_scaling) == (
      "lars", 0.3, "linear")
  assert (c.optimizer.weight_decay, c.loss.temperature) == (1e-6, 0.1)
  _, c = _load("simclr_resnet50", "sqrt,epochs=1000")
  assert (c.optimizer.base_lr, c.optimizer.lr_scaling) == (0.075, "sqrt")
  assert (c.epochs, c.head.num_layers) == (1000, 2)
  # SimCLR v2 (Appendix B): 6.4 = 0.1·√4096, 5 % warm-up, wd 1e-4.
  _, c = _load("simclr_resnet50", "v2,epochs=800")
  assert (c.optimizer.base_lr, c.optimizer.lr_scaling) == (0.1, "sqrt")
  assert (c.optimizer.weight_decay, c.optimizer.warmup_epochs) == (1e-4, 40.0)
  assert (c.epochs, c.head.num_layers) == (800, 3)
  with pytest.raises(ValueError, match="unknown config variant 'epoch'"):
    _load("simclr_resnet50", "epoch=1000")


def test_simclr_cifar10_matches_reference_settings():
  _, c = _load("simclr_cifar10")
  assert (c.model.depth, c.model.cifar_stem, c.batch_size) == (18, True, 512)
  assert (c.optimizer.base_lr, c.optimizer.weight_decay) == (1.0, 1e-4)
  assert (c.loss.temperature, c.augment.color_strength, c.augment.blur) == (
      0.5, 0.5, False)


def test_byol_resnet50_matches_reference_presets():
  """The DeepMind reference's 300- and 1000-epoch settings."""
  for epochs, lr, wd, tau in [(300, 0.3, 1e-6, 0.99),
                              (1000, 0.2, 1.5e-6, 0.996)]:
    _, c = _load("byol_resnet50", f"epochs={epochs}")
    assert (c.method, c.batch_size, c.epochs, c.steps_rule) == (
        "byol", 4096, epochs, "floor")
    assert (c.optimizer.base_lr, c.optimizer.weight_decay,
            c.target.base_momentum) == (lr, wd, tau)
    assert (c.optimizer.name, c.optimizer.lr_in_momentum,
            c.optimizer.warmup_epochs, c.optimizer.lr_scaling) == (
                "lars", False, 10.0, "linear")
    assert (c.head.hidden_dim, c.head.out_dim, c.predictor.hidden_dim,
            c.predictor.out_dim) == (4096, 256, 4096, 256)
    assert (c.head.last_bn, c.predictor.last_bn, c.augment.preset) == (
        "none", "none", "byol")
  # 1281167 images, 300 epochs, B = 4096: E·N//B steps, 312 of warm-up.
  _, c = _load("byol_resnet50")
  assert train.total_steps(c, 1281167) == 1281167 * 300 // 4096 == 93835


def test_simsiam_and_barlow_twins_configs_match_papers():
  _, c = _load("simsiam_resnet50")
  assert (c.method, c.batch_size, c.optimizer.name, c.optimizer.base_lr,
          c.optimizer.weight_decay, c.optimizer.warmup_epochs) == (
              "simsiam", 512, "sgd", 0.05, 1e-4, 0.0)
  assert (c.head.num_layers, c.head.out_dim, c.head.last_bn) == (
      3, 2048, "plain")
  assert (c.predictor.hidden_dim, c.predictor.out_dim) == (512, 2048)
  assert c.augment.min_crop_area == 0.2
  _, c = _load("barlow_twins_resnet50")
  assert (c.method, c.batch_size, c.epochs, c.loss.barlow_lambda) == (
      "barlow_twins", 2048, 1000, 5e-3)
  assert (c.head.num_layers, c.head.hidden_dim, c.head.out_dim) == (
      3, 8192, 8192)
  assert (c.optimizer.name, c.optimizer.base_lr, c.optimizer.weight_decay,
          c.optimizer.lr_in_momentum) == ("lars", 0.2, 1.5e-6, False)
  # Biases and BN at 0.0048·B/256.
  assert c.optimizer.base_lr * c.optimizer.excluded_lr_scale == pytest.approx(
      0.0048)


def test_moco_configs_match_the_references():
  """MoCo v2 (`main_moco.py --mlp --moco-t 0.2 --aug-plus --cos`) and MoCo
  v3 (CONFIG.md per epoch budget, the ViT-S command)."""
  _, c = _load("mocov2_resnet50")
  assert (c.method, c.batch_size, c.epochs, c.loss.queue_size,
          c.loss.temperature) == ("moco", 256, 200, 65536, 0.2)
  assert (c.optimizer.name, c.optimizer.base_lr, c.optimizer.weight_decay,
          c.optimizer.decay_mask, c.optimizer.schedule) == (
              "sgd", 0.03, 1e-4, "all", "epoch_cosine")
  assert (c.head.num_layers, c.head.use_bn, c.head.out_dim) == (2, False, 128)
  assert (c.target.base_momentum, c.target.momentum_schedule) == (
      0.999, "constant")
  assert (c.augment.color_strength, c.augment.blur,
          c.augment.min_crop_area) == (0.5, True, 0.2)
  _, c = _load("mocov2_resnet50", "v1")
  assert (c.head.num_layers, c.loss.temperature, c.augment.blur) == (
      1, 0.07, False)
  for epochs, lr, wd, m in [(100, 0.6, 1e-6, 0.99), (300, 0.3, 1e-6, 0.99),
                            (1000, 0.3, 1.5e-6, 0.996)]:
    _, c = _load("mocov3_resnet50", f"epochs={epochs}")
    assert (c.optimizer.base_lr, c.optimizer.weight_decay,
            c.target.base_momentum) == (lr, wd, m)
    assert (c.batch_size, c.loss.temperature, c.optimizer.name,
            c.optimizer.lr_in_momentum, c.augment.min_crop_area) == (
                4096, 1.0, "lars", False, 0.2)
    assert (c.head.num_layers, c.head.last_bn, c.predictor.last_bn,
            c.head.bias, c.predictor.bias) == (2, "plain", "none", False,
                                               False)
  _, c = _load("mocov3_resnet50", "epochs=600")  # the 300-epoch settings
  assert (c.epochs, c.optimizer.base_lr, c.target.base_momentum) == (
      600, 0.3, 0.99)
  _, c = _load("mocov3_vit_small")
  assert (c.model.name, c.model.variant, c.model.num_heads,
          c.model.patch_size, c.model.frozen_patch_embed) == (
              "vit", "small", 12, 16, True)
  assert (c.optimizer.name, c.optimizer.base_lr, c.optimizer.weight_decay,
          c.optimizer.decay_mask, c.optimizer.warmup_epochs) == (
              "adamw", 1.5e-4, 0.1, "all", 40.0)
  assert (c.batch_size, c.epochs, c.loss.temperature, c.head.num_layers,
          c.predictor.last_bn) == (4096, 300, 0.2, 3, "plain")


@pytest.mark.parametrize("name", [n for n in METHOD_CONFIGS
                                  if n not in TRAINED_CONFIGS])
def test_method_config_runlocal_builds(name):
  """The ImageNet configs' `:runlocal` pass `check_config` on 8 devices and
  give a learner with the config's optimizer and step count."""
  _, config = _load(name, "runlocal")
  train.check_config(config, sharding.data_mesh())
  learner = train.create_learner(config, config.data.synthetic_examples, 10)
  assert learner.method.name == config.method
  assert train.total_steps(config, config.data.synthetic_examples) >= 20


def test_parse_arg_types_and_errors():
  arg = parse_arg("runlocal,epochs=7", runlocal=False, epochs=100)
  assert arg.runlocal is True and arg.epochs == 7
  with pytest.raises(ValueError, match="needs a value"):
    parse_arg("epochs", epochs=100)


def test_quickstart_runlocal_end_to_end(tmp_path):
  """The whole path on 8 devices: data, views, step, loop, kNN, results."""
  _, config = _load("quickstart", "runlocal")
  results = train.train_and_evaluate(config, str(tmp_path / "wd"))
  saved = json.load(open(tmp_path / "wd" / "results.json"))
  assert saved["results"] == pytest.approx(results)
  history = saved["history"]
  assert history[-1]["step"] == results["steps"] == 1437 // 64 + 1
  losses = [h["loss"] for h in history]
  assert np.all(np.isfinite(losses)) and losses[-1] < losses[0]
  for key in ("knn_pretrained", "knn_random_init"):
    assert 0.1 < results[key] <= 1.0  # 10 classes: above chance
  assert results["knn_pretrained"] == results["knn_top1_k20"]
  # 23 steps of a probe still in warm-up: near chance (seen 0.097 to 0.11
  # across processors), so only its consistency is checked here.
  assert 0.0 < results["probe_top1"] <= results["probe_top5"] <= 1.0
  for key in ("erank_h", "erank_z", "random_init_erank_h"):
    assert results[key] >= 1.0
  assert os.path.exists(tmp_path / "wd" / "encoder.msgpack")


def _small(config):
  """`config` at ResNet-10/16 on 16 px: for the tests of the data sources
  and the logging, not of the encoder (compiles in half the time)."""
  config.model.depth = 10
  config.model.width = 0.0625
  config.data.image_size = 16
  return config


def test_online_probe_and_evaluations_reach_tensorboard(tmp_path):
  """A `:runlocal` run evaluating every 2 epochs: the online probe's train
  metrics every epoch and its held-out accuracy at epochs 2, 4 and the end
  are in the TensorBoard event files (and metrics.jsonl)."""
  pytest.importorskip("tensorboard")
  from jaxssl import metric_writers  # pylint: disable=g-import-not-at-top
  config = _small(_load("simclr_cifar10", "runlocal")[1])
  config.eval.every_epochs = 2
  train.train_and_evaluate(config, str(tmp_path))
  events = metric_writers.read_scalars(str(tmp_path))
  steps_with = lambda tag: [s for s, v in events if tag in v]
  # 256 examples, batch 64, 5 epochs, 21 steps: epochs end at steps 4, 8,
  # 12, 16 and (the 5th, with SimCLR's extra step) 21.
  assert steps_with("epoch/probe_acc") == [4, 8, 12, 16, 21]
  assert steps_with("train/probe_loss")[-1] == 21
  assert steps_with("epoch/probe_top1") == [8, 16]
  assert steps_with("eval/probe_top1") == [21]
  assert steps_with("eval/knn_top1_k20") == [21]
  final = [v for s, v in events if "eval/probe_top1" in v][0]
  assert 0.0 <= final["eval/probe_top1"] <= final["eval/probe_top5"] <= 1.0
  lines = [json.loads(l) for l in open(tmp_path / "metrics.jsonl")]
  assert [l["step"] for l in lines if "epoch/probe_top1" in l] == [8, 16]


def _cli(*args, devices=8):
  env = subprocess_env.cpu_env(devices)
  return subprocess.run(
      [sys.executable, "-m", "jaxssl.main", *args], cwd=REPO, env=env,
      capture_output=True, text=True, timeout=300, check=False)


@pytest.mark.parametrize("config, override, expected", [
    ("quickstart.py", "--config.optimizer.nme=sgd",
     ["config.optimizer has no key 'nme' (did you mean 'name'?)",
      "valid keys of config.optimizer: base_lr, "]),
    ("quickstart.py", "--config.optimiser.base_lr=1",
     ["config has no key 'optimiser' (did you mean 'optimizer'?)"]),
    ("quickstart.py", "--config.batch_size=abc",
     ["--config.batch_size=abc: config.batch_size takes an int"]),
    ("simclr_cifar10.py:runlocal,epoch=3", "--config.epochs=3",
     ["simclr_cifar10.py:runlocal,epoch=3: unknown config variant 'epoch'",
      "did you mean 'epochs'"]),
    ("broken.py", "--config.epochs=3",
     ["broken.py' does not compile: line 1: SyntaxError"]),
])
def test_cli_config_mistake_is_one_line_and_exit_2(tmp_path, config, override,
                                                   expected):
  """Unknown keys, wrong types and config files that do not load: status 2,
  one line on stderr, no traceback, nothing trained (`config_errors`)."""
  (tmp_path / "broken.py").write_text("def get_config(:\n")
  path = tmp_path / config if config.startswith("broken") else (
      f"configs/{config}")
  out = _cli(f"--config={path}", f"--workdir={tmp_path}/wd", override)
  assert out.returncode == 2, out.stderr
  assert len(out.stderr.strip().splitlines()) == 1, out.stderr
  assert out.stderr.startswith("error: ") and "Traceback" not in out.stderr
  for text in expected:
    assert text in out.stderr
  assert out.stdout == "" and not os.path.exists(tmp_path / "wd")


def test_cli_rejects_batch_not_divisible_by_devices(tmp_path):
  out = _cli("--config=configs/quickstart.py", f"--workdir={tmp_path}",
             "--config.batch_size=100")
  assert out.returncode != 0
  assert "config.batch_size=100 must be a positive multiple" in out.stderr
  assert "step " not in out.stdout  # nothing trained


def test_cli_rejects_workdir_that_cannot_be_created(tmp_path):
  blocker = tmp_path / "a_file"
  blocker.write_text("")
  out = _cli("--config=configs/quickstart.py", f"--workdir={blocker}/sub")
  assert out.returncode != 0
  assert f"cannot create workdir '{blocker}/sub'" in out.stderr


def _write_jpeg_folder(root, per_class=24, size=20, corrupt=0):
  """Class folders of noisy solid-colour JPEGs (+ `corrupt` bad files)."""
  import tensorflow as tf  # pylint: disable=g-import-not-at-top
  rng = np.random.default_rng(0)
  colours = [(230, 30, 30), (30, 230, 30), (30, 30, 230), (230, 230, 30)]
  for c, colour in enumerate(colours):
    folder = root / f"class{c}"
    folder.mkdir(parents=True)
    for i in range(per_class):
      pixels = np.clip(np.asarray(colour) + rng.normal(0, 25, (size, size, 3)),
                       0, 255).astype(np.uint8)
      (folder / f"{i:03d}.jpg").write_bytes(
          tf.io.encode_jpeg(pixels, quality=90).numpy())
  for i in range(corrupt):
    (root / "class0" / f"corrupt{i}.jpg").write_bytes(b"not a jpeg" * 10)


def test_files_source_end_to_end_with_a_corrupt_jpeg(tmp_path):
  """A folder source trains on host crops, skips and counts a bad file."""
  _write_jpeg_folder(tmp_path / "data" / "train", corrupt=1)
  _write_jpeg_folder(tmp_path / "data" / "test", per_class=8)
  config = _small(_load("simclr_cifar10", "runlocal")[1])
  config.data.source = "files"
  config.data.path = str(tmp_path / "data")
  config.batch_size = 32
  config.epochs = 3
  config.log_every = 3
  results = train.train_and_evaluate(config, str(tmp_path / "wd"))
  assert results["steps"] == 97 * 3 // 32 + 1
  # 97 files, 1 unreadable: each completed epoch is missing exactly one.
  # 10 steps of 32 read 320 examples (3.3 epochs of 96), so at least epochs
  # 0-2 are complete (prefetching may have finished more).
  per_epoch = results["skipped_per_epoch"]
  assert len(per_epoch) >= 3 and set(per_epoch.values()) == {1}
  assert results["skipped_images"] == len(per_epoch)
  assert 0.25 < results["knn_pretrained"] <= 1.0  # 4 colour classes


def test_cli_names_a_missing_image_folder(tmp_path):
  out = _cli("--config=configs/simclr_cifar10.py:runlocal",
             f"--workdir={tmp_path}/wd", "--config.data.source=files",
             f"--config.data.path={tmp_path}/nowhere")
  assert out.returncode != 0
  assert f"{tmp_path}/nowhere" in out.stderr and "does not exist" in out.stderr


def test_tfds_source_end_to_end(tmp_path):
  """A prepared TFDS dataset (built here, no download) trains per process
  with host crops and is evaluated with kNN on its test split."""
  tfds = pytest.importorskip("tensorflow_datasets")
  from jaxssl.data import input_pipeline  # pylint: disable=g-import-not-at-top
  tf = input_pipeline.tf_module()
  tfds.disable_progress_bar()
  rng = np.random.default_rng(1)
  colours = np.array([(230, 30, 30), (30, 230, 30), (30, 30, 230),
                      (230, 230, 30)])

  def split(n):
    labels = np.arange(n) % 4
    images = np.clip(colours[labels][:, None, None] +
                     rng.normal(0, 25, (n, 20, 20, 3)), 0, 255).astype(np.uint8)
    return tf.data.Dataset.from_tensor_slices({"image": images,
                                               "label": labels})

  features = tfds.features.FeaturesDict({
      "image": tfds.features.Image(shape=(20, 20, 3), encoding_format="jpeg"),
      "label": tfds.features.ClassLabel(num_classes=4)})
  tfds.dataset_builders.TfDataBuilder(
      name="jaxssl_colours", config="default", version="1.0.0",
      data_dir=str(tmp_path / "tfds"), features=features,
      split_datasets={"train": split(96), "test": split(32)},
  ).download_and_prepare()
  config = _small(_load("simclr_cifar10", "runlocal")[1])
  config.data.source = "tfds"
  config.data.name = "jaxssl_colours"
  config.data.data_dir = str(tmp_path / "tfds")
  config.data.shuffle_buffer = 64
  config.batch_size = 32
  config.epochs = 2
  config.log_every = 3
  results = train.train_and_evaluate(config, str(tmp_path / "wd"))
  assert results["steps"] == 96 * 2 // 32 + 1
  assert results["skipped_images"] == 0
  assert 0.25 < results["knn_pretrained"] <= 1.0
