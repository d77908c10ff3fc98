"""tools/tpu_vm.sh: the gcloud commands it would run (dry run)."""

import os
import subprocess

import config_files

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
