"""2 processes × 4 CPU devices (gloo collectives over 127.0.0.1) train like
1 process × 8 devices: each process feeds its slice of every global batch,
the step runs over the global mesh, checkpoints are written together. Both
runs are in float64 (`JAX_ENABLE_X64=1`, `mesh_runs.float64`), where gloo's
order of summation moves results by ~1e-14 instead of float32's ~1e-5."""

import socket
import subprocess
import sys

import jax
import numpy as np

import config_files
import mesh_runs
import subprocess_env
from jaxssl import train

# 192 synthetic images, batch 64, `floor` steps: 3 steps. (Evaluation on
# several processes needs globally gathered features: off here.)
SETTINGS = {"eval.knn_ks": (), "probe.enabled": False, "steps_rule": "floor",
            "epochs": 1, "data.synthetic_examples": 192,
            "data.image_size": 16, "model.width": 0.0625,
            "checkpoint.asynchronous": False}
OVERRIDES = [f"--config.{k}={v if isinstance(v, str) else repr(v)}"
             for k, v in SETTINGS.items()]


def _free_port():
  with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    return s.getsockname()[1]


def _config():
  _, c = config_files.load("simclr_cifar10", "runlocal")
  for key, value in SETTINGS.items():
    section, _, name = key.rpartition(".")
    (c[section] if section else c)[name] = value
  return c


def _state(workdir):
  with mesh_runs.float64():
    return mesh_runs.latest_checkpoint(_config(), 192, 10, workdir)


def test_two_processes_match_one_process(tmp_path):
  port = _free_port()
  env = subprocess_env.cpu_env(4, JAX_ENABLE_X64="1")
  workdir = tmp_path / "two"
  procs = [subprocess.Popen(
      [sys.executable, "-m", "jaxssl.main", "--distributed",
       f"--coordinator_address=127.0.0.1:{port}", "--num_processes=2",
       f"--process_id={i}", "--config=configs/simclr_cifar10.py:runlocal",
       f"--workdir={workdir}", *OVERRIDES],
      cwd=config_files.REPO, env=env, stdout=subprocess.PIPE,
      stderr=subprocess.STDOUT, text=True) for i in range(2)]
  outputs = [p.communicate(timeout=400)[0] for p in procs]
  for p, out in zip(procs, outputs):
    assert p.returncode == 0, out[-3000:]
  assert "2 process(es), 8 device(s)" in outputs[0]
  one = tmp_path / "one"
  with mesh_runs.float64():
    results = train.train_and_evaluate(_config(), str(one))
  assert results["steps"] == 3
  two_state, one_state = _state(str(workdir)), _state(str(one))
  assert int(two_state.step) == int(one_state.step) == 3
  assert jax.tree.leaves(two_state.params)[0].dtype == np.float64
  # gloo sums in another order than the in-process all-reduce.
  for part in ("params", "opt_state", "batch_stats"):
    mesh_runs.assert_trees_close(getattr(two_state, part),
                                 getattr(one_state, part), rtol=mesh_runs.RTOL)


