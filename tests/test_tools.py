"""tools/tpu_vm.sh: the gcloud commands it would run (dry run);
tools/compile_times.py: a line per test with its compile time."""

import os
import subprocess
import sys

import config_files
import subprocess_env

SCRIPT = os.path.join(config_files.REPO, "tools", "tpu_vm.sh")


def _dry_run(*args):
  return subprocess.run(["bash", SCRIPT, "--dry-run", *args],
                        capture_output=True, text=True, timeout=60,
                        check=False)


def test_tpu_vm_dry_run_prints_the_gcloud_commands():
  out = _dry_run("--project=proj", "--zone=us-central2-b", "--name=ssl",
                 "--accelerator=v4-64", "--workdir=gs://bucket/run",
                 "--config=configs/byol_resnet50.py:epochs=1000",
                 "--args=--config.data.data_dir=gs://bucket/tfds", "all",
                 "logs", "delete")
  assert out.returncode == 0, out.stderr
  lines = out.stdout.splitlines()
  assert lines[0].startswith("gcloud compute tpus tpu-vm create ssl")
  assert "--accelerator-type=v4-64" in lines[0]
  assert "--zone=us-central2-b --project=proj" in lines[0]
  assert lines[1].startswith("git -C ") and " archive " in lines[1]
  assert "tpu-vm scp" in lines[2] and "--worker=all" in lines[2]
  assert "pip\\ install" in lines[3] and "--worker=all" in lines[3]
  run = lines[4]
  assert "--worker=all" in run and "jaxssl.main\\ --distributed" in run
  assert "--workdir=gs://bucket/run" in run and "epochs=1000" in run
  assert "--config.data.data_dir=gs://bucket/tfds" in run
  assert "--worker=0" in lines[5] and "tail" in lines[5]
  assert lines[6].startswith("gcloud compute tpus tpu-vm delete ssl")
  assert len(lines) == 7


def test_tpu_vm_errors_name_what_is_missing():
  out = _dry_run("--project=p", "--zone=z", "create")
  assert out.returncode == 2 and "--name=... is required" in out.stderr
  out = _dry_run("--project=p", "--zone=z", "--name=n", "run")
  assert out.returncode == 2 and "run needs --workdir" in out.stderr
  out = _dry_run("--project=p", "--zone=z", "--name=n", "launch")
  assert out.returncode == 2 and "unknown argument 'launch'" in out.stderr


def test_compile_times_plugin_writes_one_line_per_test(tmp_path):
  """Two tests, one compiling a jitted function and one compiling nothing:
  a line each, the first with a compile time above 0, the second 0.0."""
  (tmp_path / "test_two.py").write_text(
      "import jax, jax.numpy as jnp\n"
      "def f(x):\n"
      "  for i in range(200):\n"
      "    x = jnp.sin(x) * 1.01 + i\n"
      "  return x\n"
      "def test_compiles():\n"
      "  assert jax.jit(f)(jnp.ones(3)).shape == (3,)\n"
      "def test_compiles_nothing():\n"
      "  assert 1 + 1 == 2\n")
  out_file = tmp_path / "times.txt"
  env = subprocess_env.cpu_env(1, COMPILE_TIMES=str(out_file),
                               JAX_ENABLE_COMPILATION_CACHE="false")
  env["PYTHONPATH"] = os.pathsep.join(
      [os.path.join(config_files.REPO, "tools"), env["PYTHONPATH"]])
  out = subprocess.run(
      [sys.executable, "-m", "pytest", "-q", "-p", "compile_times",
       "-p", "no:cacheprovider", str(tmp_path / "test_two.py")],
      cwd=tmp_path, capture_output=True, text=True, env=env, timeout=300,
      check=False)
  assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
  lines = out_file.read_text().splitlines()
  assert [line.rsplit("::", 1)[1] for line in lines] == [
      "test_compiles", "test_compiles_nothing"]
  compile_s = [float(line.split("compile")[1].split()[0]) for line in lines]
  assert compile_s[0] > 0 and compile_s[1] == 0.0, lines
