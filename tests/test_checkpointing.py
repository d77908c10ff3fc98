"""Checkpoints: exact resume, SIGTERM, NaN, partial checkpoints, 8 → 4 devices."""

import json
import os
import shutil
import signal
import subprocess
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import config_files
import gcs_emulator
import mesh_runs
import subprocess_env
from jaxssl import checkpointing
from jaxssl import export
from jaxssl import preemption
from jaxssl import run_config
from jaxssl import sharding
from jaxssl import train


# A smaller network than :runlocal's (ResNet-10/16 on 16 px): these tests
# are about the state, not the model. The same as command-line flags:
SMALL = ["--config.data.image_size=16", "--config.model.width=0.0625",
         "--config.model.depth=10", "--config.eval.knn_ks=()"]


def _config():
  """21 steps, checkpoints every 4, the online probe on, no kNN."""
  _, c = config_files.load("simclr_cifar10", "runlocal")
  c.checkpoint.every_steps = 4
  c.checkpoint.asynchronous = False
  c.data.image_size = 16
  c.model.width = 0.0625
  c.model.depth = 10
  c.eval.knn_ks = ()
  return c


def _final_state(workdir):
  """The state of the latest checkpoint, on the host."""
  return mesh_runs.latest_checkpoint(_config(), 256, 10, workdir)


def _assert_identical(a, b):
  leaves_a, leaves_b = jax.tree.leaves(a), jax.tree.leaves(b)
  assert len(leaves_a) == len(leaves_b)
  for x, y in zip(leaves_a, leaves_b):
    np.testing.assert_array_equal(np.asarray(x), np.asarray(y))


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory):
  workdir = str(tmp_path_factory.mktemp("whole"))
  results = train.train_and_evaluate(_config(), workdir)
  assert results["steps"] == 21 and results["start_step"] == 0
  return workdir


def test_stop_and_resume_equals_uninterrupted(uninterrupted, tmp_path,
                                              monkeypatch):
  """Stopped (as on SIGTERM) after step 10 and resumed: the final params,
  BN statistics, optimizer and probe state are bit-identical."""
  workdir = str(tmp_path)
  calls = []

  def requested(self):  # SIGTERM seen while step 9 is fed: stop after 10
    del self
    calls.append(None)
    return len(calls) >= 9

  with monkeypatch.context() as m:
    m.setattr(preemption.PreemptionFlag, "requested", requested)
    out = train.train_and_evaluate(_config(), workdir)
  assert out == {"preempted_at_step": 10}
  steps = sorted(int(d) for d in os.listdir(os.path.join(workdir,
                                                         "checkpoints"))
                 if d.isdigit())
  assert steps[-1] == 10
  results = train.train_and_evaluate(_config(), workdir)
  assert results["start_step"] == 10 and results["steps"] == 21
  # metrics.jsonl: one value per (tag, step), and the same values as the
  # uninterrupted run's, including epoch 3's summary (steps 9-12, cut at 10:
  # its first two steps' sums came from the checkpoint).
  resumed_metrics = _tag_values(workdir)
  assert resumed_metrics == _tag_values(uninterrupted)
  assert ("epoch/loss", 12) in resumed_metrics
  whole, resumed = _final_state(uninterrupted), _final_state(workdir)
  assert int(whole.step) == int(resumed.step) == 21
  _assert_identical(whole.params, resumed.params)
  _assert_identical(whole.batch_stats, resumed.batch_stats)
  _assert_identical(whole.opt_state, resumed.opt_state)
  _assert_identical(whole.probe, resumed.probe)
  _assert_identical(jax.random.key_data(whole.rng),
                    jax.random.key_data(resumed.rng))


def _tag_values(workdir):
  """{(tag, step): value} of `metrics.jsonl`; fails on a (tag, step) with
  two different values."""
  out = {}
  with open(os.path.join(workdir, "metrics.jsonl")) as f:
    for line in f:
      record = json.loads(line)
      for tag, value in record.items():
        if tag == "step":
          continue
        key = (tag, record["step"])
        assert out.get(key, value) == value, (key, out[key], value)
        out[key] = value
  return out


def test_epochs_end_where_the_data_does(uninterrupted):
  """256 examples at batch 64 for 5 epochs (21 steps, SimCLR's rule):
  epoch summaries at steps 4, 8, 12, 16 and at the last step, labelled 1-5
  (the 21st step belongs to epoch 5, not to an epoch 6)."""
  with open(os.path.join(uninterrupted, "results.json")) as f:
    summaries = json.load(f)["epochs"]
  assert [(e["epoch"], e["step"]) for e in summaries] == [
      (1, 4), (2, 8), (3, 12), (4, 16), (5, 21)]


def _corrupt(step_dir, how):
  if how == "truncate":  # a disk that filled up: every file cut in half
    for root, _, files in os.walk(step_dir):
      for name in files:
        with open(os.path.join(root, name), "r+b") as f:
          f.truncate(os.path.getsize(f.name) // 2)
  else:  # files deleted
    shutil.rmtree(os.path.join(step_dir, "state"))


def test_unreadable_newest_checkpoints_fall_back_bit_identical(
    uninterrupted, tmp_path, capsys):
  """Steps 21 (truncated) and 20 (its state deleted) cannot be read: the
  run says so in one line each, moves them to checkpoints_unreadable/,
  resumes from step 16 and ends bit-identical to the uninterrupted run."""
  workdir = str(tmp_path / "copy")
  shutil.copytree(uninterrupted, workdir)
  ckpt_dir = os.path.join(workdir, "checkpoints")
  assert sorted(int(d) for d in os.listdir(ckpt_dir) if d.isdigit()) == [
      16, 20, 21]
  _corrupt(os.path.join(ckpt_dir, "21"), "truncate")
  _corrupt(os.path.join(ckpt_dir, "20"), "delete")
  capsys.readouterr()
  results = train.train_and_evaluate(_config(), workdir)
  out = capsys.readouterr().out
  assert results["start_step"] == 16
  for step in (20, 21):
    lines = [l for l in out.splitlines()
             if f"checkpoint {ckpt_dir}/{step} is unreadable (" in l]
    assert len(lines) == 1, out
    assert f"moved to {ckpt_dir}_unreadable/{step}-" in lines[0]
  assert sorted(n.split("-")[0] for n in os.listdir(
      ckpt_dir + "_unreadable")) == ["20", "21"]
  whole, resumed = _final_state(uninterrupted), _final_state(workdir)
  assert int(resumed.step) == 21
  _assert_identical(whole.params, resumed.params)
  _assert_identical(whole.opt_state, resumed.opt_state)
  _assert_identical(whole.batch_stats, resumed.batch_stats)


def test_no_readable_checkpoint_names_the_directory(uninterrupted, tmp_path):
  """Every checkpoint unreadable: an error naming the directory and each
  step's failure; nothing is moved."""
  workdir = str(tmp_path / "copy")
  shutil.copytree(uninterrupted, workdir)
  ckpt_dir = os.path.join(workdir, "checkpoints")
  for step in (16, 20, 21):
    _corrupt(os.path.join(ckpt_dir, str(step)), "delete")
  with pytest.raises(ValueError, match=(
      f"no readable checkpoint in {ckpt_dir}: step 21: .*step 20: .*"
      "step 16: ")):
    _final_state(workdir)
  assert sorted(d for d in os.listdir(ckpt_dir) if d.isdigit()) == [
      "16", "20", "21"]
  assert not os.path.exists(ckpt_dir + "_unreadable")


def test_restart_with_a_changed_config_is_refused(uninterrupted, tmp_path):
  """The first start pinned its config beside the checkpoints; a restart
  that changes a key that changes results is refused before anything is
  restored, naming every such key."""
  workdir = str(tmp_path / "copy")
  shutil.copytree(uninterrupted, workdir)
  assert os.path.exists(os.path.join(workdir, "checkpoints",
                                     run_config.PINNED_FILE))
  config = _config()
  config.optimizer.base_lr = 0.5
  config.model.width = 0.125
  config.log_every = 3  # allowed
  with pytest.raises(run_config.ConfigChanged) as e:
    train.train_and_evaluate(config, workdir)
  message = str(e.value)
  assert "model.width: 0.0625 → 0.125" in message
  assert "optimizer.base_lr: 1.0 → 0.5" in message
  assert "log_every" not in message and "--allow_config_change" in message


def test_nan_stops_the_run_and_no_nan_state_is_saved(tmp_path, monkeypatch):
  """A NaN loss at step 7: FloatingPointError at the next check (step 8,
  before its save); the latest checkpoint is step 4, finite."""
  real = train.compile_train_step

  def poisoned(learner, mesh):
    step_fn = real(learner, mesh)

    def step(state, batch):
      state, metrics = step_fn(state, batch)
      if int(state.step) == 7:
        metrics = dict(metrics, loss=jnp.float32(np.nan))
        state = state.replace(params=jax.tree.map(lambda p: p * np.nan,
                                                  state.params))
      return state, metrics
    return step

  monkeypatch.setattr(train, "compile_train_step", poisoned)
  with pytest.raises(FloatingPointError, match="loss is nan around step 8"):
    train.train_and_evaluate(_config(), str(tmp_path))
  state = _final_state(str(tmp_path))
  assert int(state.step) == 4
  assert all(np.all(np.isfinite(x)) for x in jax.tree.leaves(state.params))


def test_partial_checkpoint_directory_is_ignored(uninterrupted, tmp_path):
  """A checkpoint cut short (orbax's temporary directory of a later step)
  is not listed; the latest complete one is restored."""
  workdir = str(tmp_path / "copy")
  shutil.copytree(uninterrupted, workdir)
  ckpt_dir = os.path.join(workdir, "checkpoints")
  latest = max(int(d) for d in os.listdir(ckpt_dir) if d.isdigit())
  partial = os.path.join(ckpt_dir, f"{latest + 4}.orbax-checkpoint-tmp-1")
  shutil.copytree(os.path.join(ckpt_dir, str(latest)), partial)
  for root, _, files in os.walk(partial):  # truncate every file
    for name in files:
      with open(os.path.join(root, name), "r+b") as f:
        f.truncate(os.path.getsize(f.name) // 2)
  state = _final_state(workdir)
  assert int(state.step) == latest == 21


def test_restore_onto_4_devices_and_continue(uninterrupted):
  """A checkpoint written on 8 devices restores onto a 4-device mesh (the
  state is replicated) and training continues there."""
  config = _config()
  learner = train.create_learner(config, 256, 10)
  mesh4 = sharding.data_mesh(jax.devices()[:4])
  template = train.create_train_state(jax.random.key(0), learner, mesh4)
  ckpt = checkpointing.Checkpointer(
      os.path.join(uninterrupted, "checkpoints"), every_steps=0,
      asynchronous=False)
  state = ckpt.restore(template)
  ckpt.close()
  assert state.params["encoder"]["stem_conv"]["kernel"].sharding.mesh == mesh4
  _assert_identical(jax.device_get(state.params),
                    _final_state(uninterrupted).params)
  step_fn = train.compile_train_step(learner, mesh4)
  images = mesh_runs.random_batches(1, 64, 16)[0]
  batch = sharding.global_batch(
      {"image": images, "label": np.zeros(64, np.int32)}, mesh4)
  state, metrics = step_fn(state, batch)
  assert int(state.step) == 22 and np.isfinite(float(metrics["loss"]))


def test_sigterm_saves_and_exits_0(tmp_path):
  """`kill -TERM` during training: the step finishes, a checkpoint is
  saved, the process exits 0; a restart with a changed config is refused.
  (`:runlocal,epochs=400` really is 400 epochs: 1601 steps.)"""
  env = subprocess_env.cpu_env(8)
  cmd = [sys.executable, "-m", "jaxssl.main",
         "--config=configs/simclr_cifar10.py:runlocal,epochs=400",
         f"--workdir={tmp_path}", *SMALL,
         "--config.checkpoint.every_steps=100000"]
  proc = subprocess.Popen(cmd, cwd=config_files.REPO, env=env,
                          stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                          text=True)
  seen = []
  deadline = time.time() + 240
  for line in proc.stdout:
    seen.append(line)
    if "step 6/" in line or time.time() > deadline:
      break
  proc.send_signal(signal.SIGTERM)
  out, _ = proc.communicate(timeout=120)
  text = "".join(seen) + out
  assert proc.returncode == 0, text[-2000:]
  assert "preempted: stopped at step" in text
  steps = [int(d) for d in os.listdir(tmp_path / "checkpoints") if d.isdigit()]
  assert len(steps) == 1 and 6 <= steps[0] < 1601
  # The same run restarted with a changed learning rate: refused in one
  # line, status 2, nothing trained.
  changed = subprocess.run(cmd + ["--config.optimizer.base_lr=0.5"],
                           cwd=config_files.REPO, env=env, text=True,
                           capture_output=True, timeout=300, check=False)
  assert changed.returncode == 2, changed.stderr[-2000:]
  errors = [l for l in changed.stderr.splitlines() if l.startswith("error:")]
  assert len(errors) == 1 and "Traceback" not in changed.stderr
  assert "optimizer.base_lr: 1.0 → 0.5" in errors[0]
  assert "--allow_config_change" in errors[0]
  assert [int(d) for d in os.listdir(tmp_path / "checkpoints")
          if d.isdigit()] == steps


def test_kill_9_at_random_points_then_resume_is_bit_identical(uninterrupted,
                                                              tmp_path):
  """`kill -9` twice at random steps (asynchronous saves may be cut short),
  re-run the same command each time: the final checkpoint equals the
  uninterrupted run's bit for bit."""
  env = subprocess_env.cpu_env(8)
  cmd = [sys.executable, "-m", "jaxssl.main",
         "--config=configs/simclr_cifar10.py:runlocal", f"--workdir={tmp_path}",
         *SMALL, "--config.checkpoint.every_steps=4",
         "--config.checkpoint.asynchronous=True"]
  rng = np.random.default_rng(int(time.time()))
  checkpoints = tmp_path / "checkpoints"

  def some_checkpoint_finalized():
    return checkpoints.exists() and any(
        name.isdigit() for name in os.listdir(checkpoints))

  kills = sorted(rng.choice([6, 8, 10, 12, 14, 16], 2, replace=False))
  for i, kill_after in enumerate(kills):
    proc = subprocess.Popen(cmd, cwd=config_files.REPO, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            text=True)
    reached = False
    for line in proc.stdout:
      reached = reached or f"step {kill_after}/" in line or (
          "resumed from" in line
          and int(line.rsplit(" ", 1)[1]) >= kill_after)
      # The first kill may cut any save short; the last waits (on a loaded
      # machine) until some save has completed, so the re-run must resume.
      if reached and (i == 0 or some_checkpoint_finalized()):
        break
    proc.kill()  # SIGKILL: no handler, no final save
    proc.wait(timeout=60)
  out = subprocess.run(cmd, cwd=config_files.REPO, env=env,
                       capture_output=True, text=True, timeout=300,
                       check=False)
  assert out.returncode == 0, out.stdout[-2000:] + out.stderr[-2000:]
  assert "resumed from" in out.stdout
  whole, resumed = _final_state(uninterrupted), _final_state(str(tmp_path))
  assert int(resumed.step) == 21
  _assert_identical(whole.params, resumed.params)
  _assert_identical(whole.opt_state, resumed.opt_state)
  _assert_identical(whole.batch_stats, resumed.batch_stats)
  _assert_identical(whole.probe, resumed.probe)


@pytest.fixture(scope="module")
def gcs():
  with gcs_emulator.running() as url:
    yield url


def test_gcs_workdir_is_killed_resumes_and_exports(uninterrupted, gcs,
                                                   tmp_path, monkeypatch):
  """`--workdir=gs://…` against a GCS emulator (only STORAGE_EMULATOR_HOST
  set): `kill -9` once a checkpoint is committed in the bucket, re-run: it
  resumes from the bucket to the uninterrupted local run's final state bit
  for bit; the outputs are objects in the bucket, the encoder loads from
  there, and nothing is written locally (the run's working directory, with
  its relative `--config=configs/…`, stays empty)."""
  env = subprocess_env.cpu_env(8, STORAGE_EMULATOR_HOST=gcs)
  workdir = f"gs://{gcs_emulator.BUCKET}/run"
  cmd = [sys.executable, "-m", "jaxssl.main",
         "--config=configs/simclr_cifar10.py:runlocal", f"--workdir={workdir}",
         *SMALL, "--config.checkpoint.every_steps=4",
         "--config.checkpoint.asynchronous=True"]

  def committed_steps():
    # The step's own commit file (`run/checkpoints/<step>/commit_success.txt`),
    # written last; each item's (`<step>/default/commit_success.txt`) comes
    # earlier, before the step is complete.
    parts = [name.split("/") for name in
             gcs_emulator.list_objects(gcs, "run/checkpoints/")]
    return {int(p[2]) for p in parts
            if len(p) == 4 and p[3] == "commit_success.txt" and p[2].isdigit()}

  proc = subprocess.Popen(cmd, cwd=tmp_path, env=env, stdout=subprocess.PIPE,
                          stderr=subprocess.STDOUT, text=True)
  seen = []
  for line in proc.stdout:
    seen.append(line)
    if "step " in line and committed_steps():
      break
  proc.kill()
  proc.wait(timeout=60)
  assert committed_steps(), "".join(seen)[-2000:]
  assert max(committed_steps()) < 21
  out = subprocess.run(cmd, cwd=tmp_path, env=env, capture_output=True,
                       text=True, timeout=300, check=False)
  assert out.returncode == 0, out.stdout[-2000:] + out.stderr[-2000:]
  assert f"resumed from {workdir}/checkpoints" in out.stdout
  assert os.listdir(tmp_path) == []  # no ./gs:, nothing local
  objects = set(gcs_emulator.list_objects(gcs, "run/"))
  for name in ("metrics.jsonl", "results.json", "config.json",
               "encoder.msgpack", "checkpoints/21/commit_success.txt"):
    assert f"run/{name}" in objects, sorted(objects)
  assert any("tfevents" in name for name in objects)

  gcs_emulator.emulator_env(monkeypatch, gcs)
  whole, resumed = _final_state(uninterrupted), _final_state(workdir)
  assert int(resumed.step) == 21
  for part in ("params", "opt_state", "batch_stats", "probe"):
    _assert_identical(getattr(whole, part), getattr(resumed, part))
  _, variables, config = export.load_encoder(workdir)
  assert config.model.width == 0.0625
  _assert_identical(variables["params"]["encoder"], whole.params["encoder"])


def test_gcs_inputs_folder_and_zip_read_like_local(gcs, tmp_path, monkeypatch):
  """`files` inputs on `gs://` (listed and read by the file layer; zip
  members by ranged reads) decode to the same arrays as their local copy."""
  import io  # pylint: disable=g-import-not-at-top
  import zipfile  # pylint: disable=g-import-not-at-top
  from PIL import Image  # pylint: disable=g-import-not-at-top
  from jaxssl import paths  # pylint: disable=g-import-not-at-top
  from jaxssl.data import in_memory  # pylint: disable=g-import-not-at-top
  gcs_emulator.emulator_env(monkeypatch, gcs)
  rng = np.random.default_rng(0)
  local = tmp_path / "local"
  zip_path = tmp_path / "images.zip"
  with zipfile.ZipFile(zip_path, "w") as zf:
    for name in ("cat", "dog"):
      for k in range(3):
        buf = io.BytesIO()
        Image.fromarray(rng.integers(0, 256, (12, 10, 3), np.uint8)).save(
            buf, "PNG")
        rel = f"train/{name}/{k}.png"
        (local / rel).parent.mkdir(parents=True, exist_ok=True)
        (local / rel).write_bytes(buf.getvalue())
        zf.writestr(rel, buf.getvalue())
        paths.write_bytes(f"gs://{gcs_emulator.BUCKET}/inputs/{rel}",
                          buf.getvalue())
  paths.write_bytes(f"gs://{gcs_emulator.BUCKET}/images.zip",
                    zip_path.read_bytes())
  want = in_memory.load_image_files(str(local), "train", 8)
  for url in (f"gs://{gcs_emulator.BUCKET}/inputs",
              f"gs://{gcs_emulator.BUCKET}/images.zip"):
    got = in_memory.load_image_files(url, "train", 8)
    np.testing.assert_array_equal(got.images, want.images)
    np.testing.assert_array_equal(got.labels, [0, 0, 0, 1, 1, 1])
    np.testing.assert_array_equal(got.labels, want.labels)
  assert not os.path.exists("gs:")


def test_time_based_saves_are_due_after_every_minutes(tmp_path):
  ckpt = checkpointing.Checkpointer(str(tmp_path), every_steps=0,
                                    every_minutes=0.002, asynchronous=False)
  assert not ckpt.should_save(1000) and not ckpt.time_due()
  time.sleep(0.15)  # > 0.12 s
  assert ckpt.time_due()
  off = checkpointing.Checkpointer(str(tmp_path / "off"), every_steps=5)
  assert off.should_save(10) and not off.should_save(11)
  assert not off.time_due()
  ckpt.close()
  off.close()
