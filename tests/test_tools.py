"""tools/tpu_vm.sh: the gcloud commands it would run (dry run), and the
README's pod commands run as written against a stand-in gcloud;
tools/compile_times.py: a line per test with its compile time."""

import json
import os
import re
import shlex
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


def _readme_pod_block():
  """The bash block of the README's "Training on a TPU pod" section."""
  with open(os.path.join(config_files.REPO, "README.md")) as f:
    text = f.read()
  section = text.split("## Training on a TPU pod", 1)[1]
  return section.split("```bash\n", 1)[1].split("```", 1)[0]


def _defined_flags(relative_path):
  """Flag names an absl program defines (`DEFINE_*("name", ...)`)."""
  with open(os.path.join(config_files.REPO, relative_path)) as f:
    return set(re.findall(r"DEFINE_\w+\(\s*\"(\w+)\"", f.read()))


def _check_flags(command):
  """The flags of one worker's python command exist: the program's own,
  and each `--config.KEY=` a key of the config file it names."""
  words = shlex.split(command.split("&&", 1)[1].split(">", 1)[0])
  words = words[words.index("python3") + 1:]
  if words[0] == "-m":
    program, flags = "jaxssl/main.py", words[2:]  # linear_eval: main's flags
  else:
    program, flags = words[0], words[1:]
  names = {f[2:].split("=", 1)[0] for f in flags}
  plain = {n for n in names if not n.startswith("config.")}
  assert plain <= _defined_flags(program), (plain, program)
  config = dict(f[2:].split("=", 1) for f in flags if "=" in f).get("config")
  if config:
    name, _, arg = config[len("configs/"):].partition(".py:")
    _, loaded = config_files.load(name.removesuffix(".py"), arg or None)
    for key in names - plain - {"config"}:
      node = loaded
      for part in key.split(".")[1:]:
        assert part in node, f"{key} is not a key of {config}"
        node = node[part]
  return words


def test_readme_pod_commands_run_as_written_against_a_stand_in_gcloud(
    tmp_path):
  """Pretraining → linear evaluation → export, as the README writes them:
  each of 4 workers runs the same pretraining and linear-evaluation
  command (the README's flags, on the pretrained workdir), worker 0 the
  export; flags and config keys exist."""
  bin_dir = tmp_path / "bin"
  bin_dir.mkdir()
  (bin_dir / "gcloud").write_text(
      f"#!/bin/sh\nexec {sys.executable} "
      f"{os.path.join(config_files.REPO, 'tests', 'fake_gcloud.py')} \"$@\"\n")
  (bin_dir / "gcloud").chmod(0o755)
  log = tmp_path / "gcloud.jsonl"
  env = dict(os.environ, PATH=f"{bin_dir}{os.pathsep}{os.environ['PATH']}",
             FAKE_GCLOUD_LOG=str(log), FAKE_TPU_WORKERS="4",
             TMPDIR=str(tmp_path))
  out = subprocess.run(["bash", "-euc", _readme_pod_block()],
                       cwd=config_files.REPO, env=env, capture_output=True,
                       text=True, timeout=120, check=False)
  assert out.returncode == 0, out.stdout + out.stderr
  records = [json.loads(line) for line in log.read_text().splitlines()]
  calls = [r["argv"][3] for r in records if "argv" in r]
  assert calls == ["create", "delete"]
  per_worker = {}
  for r in records:
    if "worker" in r:
      per_worker.setdefault(r["worker"], []).append(r["command"])
  assert sorted(per_worker) == [0, 1, 2, 3]
  # scp, install, pretraining, linear evaluation on every worker; the log
  # tail and the export on worker 0 only.
  for worker, commands in per_worker.items():
    steps = [c for c in commands if "python3 -m jaxssl" in c]
    assert len(steps) == 2 and steps == per_worker[0][2:3] + [
        c for c in per_worker[0] if "jaxssl.linear_eval" in c], worker
    assert commands[0].startswith("scp ") and "pip install" in commands[1]
  pretrain, linear = (c for c in per_worker[0] if "python3 -m jaxssl" in c)
  words = _check_flags(pretrain)
  assert words[:3] == ["-m", "jaxssl.main", "--distributed"]
  assert "--config=configs/byol_resnet50.py" in words
  assert "--workdir=gs://BUCKET/byol_r50" in words
  assert ("--config.data.data_dir=gs://BUCKET/tensorflow_datasets"
          in words)
  words = _check_flags(linear)
  assert words[:3] == ["-m", "jaxssl.linear_eval", "--distributed"]
  assert "--config=configs/linear_eval.py:protocol=byol" in words
  assert "--config.checkpoint=gs://BUCKET/byol_r50" in words
  assert "--workdir=gs://BUCKET/byol_r50/linear_eval" in words
  export = [c for c in per_worker[0] if "export_encoder" in c]
  assert len(export) == 1 and not any(
      "export_encoder" in c for w in (1, 2, 3) for c in per_worker[w])
  words = _check_flags(export[0])
  assert "--checkpoint=gs://BUCKET/byol_r50" in words
  assert any("tail" in c for c in per_worker[0])


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
