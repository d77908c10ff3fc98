"""The method configs whose `:runlocal` the suite checks, and the training
check itself (shared by test_main.py and the two test_runlocal_*.py files,
which pytest-xdist runs in parallel: one file per worker)."""

import json

import jax
import numpy as np

import config_files
from jaxssl import train

METHOD_CONFIGS = ["byol_resnet50", "byol_cifar10", "simsiam_resnet50",
                  "simsiam_cifar10", "barlow_twins_resnet50",
                  "barlow_twins_cifar10", "simclr_vit_cifar10",
                  "mocov2_resnet50", "mocov2_cifar10", "mocov3_resnet50",
                  "mocov3_vit_small", "mocov3_cifar10", "dino_vit_small",
                  "dino_resnet50", "dino_cifar10", "swav_resnet50",
                  "swav_cifar10", "supcon_resnet50", "supcon_cifar10",
                  "wcl_resnet50", "wcl_cifar10", "instdisc_resnet50",
                  "instdisc_cifar10", "invaspread_resnet50",
                  "invaspread_cifar10", "cmc_resnet50", "cmc_cifar10",
                  "cpc_resnet50", "cpc_cifar10", "infomin_resnet50"]
CONFIGS = ["quickstart", "simclr_resnet50", "simclr_cifar10", *METHOD_CONFIGS]

# Trained: one config per method. The ImageNet configs' `:runlocal` differ
# from these only in hyperparameters; they are built (not trained) in
# test_main.py, and byol_resnet50 / simclr_resnet50 `:runlocal` train in
# test_multihost.py (at ResNet-10/16 on 16 px). MoCo's, DINO's, SwAV's, SupCon's and WCL's (issues
# 17–19) all train, with the ViT variants of their CIFAR configs, and
# InfoMin (MoCo v2 with its augmentation).
TRAINED_CONFIGS = [n for n in METHOD_CONFIGS if n.endswith("_cifar10")
                   or n.startswith(("moco", "dino", "swav", "supcon", "wcl",
                                    "infomin"))]
TRAINED_VARIANTS = [(n, "runlocal") for n in TRAINED_CONFIGS] + [
    ("mocov3_cifar10", "runlocal,vit"), ("dino_cifar10", "runlocal,vit")]


# Epochs of 4 steps the check trains: `:runlocal`'s own 5 (MoCo's 12) make
# a minute-long smoke run for a user; 3 (MoCo 6: 4 steps fill the queue) are
# the fewest in which every trained variant's loss falls (measured
# 2026-12-06, mean of the last third of the steps against the first third;
# the schedules are spread over these epochs).
CHECK_EPOCHS = 3
CHECK_EPOCHS_MOCO = 6
# Methods that need CHECK_EPOCHS_MOCO: MoCo's queue fills in 4 steps;
# InstDisc's (and CMC's) memory bank starts random and each epoch rewrites
# every row,
# and within an epoch the loss rises as the rows turn into (still similar)
# features: per-epoch mean NCE loss 5.8, 6.1, 5.9, 5.4, 5.2, 5.2 (8
# devices, measured 2026-12-07).
SLOW_STARTERS = ("moco", "instdisc", "cmc")


def check_runlocal_trains(name: str, variant: str, tmp_path) -> None:
  """`configs/<name>.py:<variant>` trains 12 steps (MoCo v1/v2 24) on 8 CPU
  devices: finite losses that go down (mean of the last third below the
  first third, after the steps that fill a MoCo queue: the random initial
  queue makes the first losses low), parameters that changed. For DINO the
  quantity is `kl`, the loss minus the teacher's entropy, which the
  teacher-temperature warm-up and the centring raise on their own."""
  _, config = config_files.load(name, variant)
  config.log_every = 1
  config.eval.knn_ks = ()
  config.probe.enabled = False
  config.epochs = (CHECK_EPOCHS_MOCO if config.method in SLOW_STARTERS
                   else CHECK_EPOCHS)
  results = train.train_and_evaluate(config, str(tmp_path / "wd"))
  history = json.load(open(tmp_path / "wd" / "results.json"))["history"]
  assert results["steps"] >= 4 * config.epochs
  assert len(history) == results["steps"]
  key = "kl" if config.method == "dino" else "loss"
  losses = np.array([h[key] for h in history])
  assert np.all(np.isfinite(losses))
  if config.method == "moco":
    losses = losses[config.loss.queue_size // config.batch_size:]
  third = len(losses) // 3
  assert losses[-third:].mean() < losses[:third].mean(), losses
  # The state changes: the parameters' norm moved.
  norms = np.array([h["param_norm"] for h in history])
  assert np.all(np.isfinite(norms)) and norms[-1] != norms[0], norms
  # A memory-bank method evaluates its own bank (InstDisc's kNN): every
  # row was visited, so every held-out image gets a vote.
  for k in config.eval.bank_knn_ks:
    assert 0.0 < results[f"bank_knn_top1_k{k}"] <= 1.0, results
  if config.method == "dino":
    check_export_follows_the_evaluated_network(tmp_path / "wd", tmp_path)


def check_export_follows_the_evaluated_network(workdir, out_dir) -> None:
  """DINO's export (tools/export_encoder.py's `export_target.export_files`)
  writes the teacher by default and says so; `network='online'` writes the
  student, read from the latest checkpoint."""
  import flax.serialization  # pylint: disable=g-import-not-at-top
  from jaxssl import checkpointing  # pylint: disable=g-import-not-at-top
  from jaxssl import export_target  # pylint: disable=g-import-not-at-top
  _, state = checkpointing.read_latest(workdir / "checkpoints")
  for network, part in (("auto", state["target"]), ("online", state)):
    spec = export_target.export_files(str(workdir), str(out_dir / network),
                                      network=network, torch_format="npz")
    assert spec["network"] == ("target" if network == "auto" else "online")
    assert spec["evaluated"] == "target"
    saved = json.loads((out_dir / f"{network}.json").read_text())
    assert saved["network"] == spec["network"] and saved["call"]
    exported = flax.serialization.msgpack_restore(
        (out_dir / f"{network}.msgpack").read_bytes())
    for got, want in zip(jax.tree.leaves(exported["params"]),
                         jax.tree.leaves(part["params"]["encoder"])):
      np.testing.assert_array_equal(got, want)
  teacher = jax.tree.leaves(state["target"]["params"]["encoder"])
  student = jax.tree.leaves(state["params"]["encoder"])
  assert any(np.any(a != b) for a, b in zip(teacher, student))
