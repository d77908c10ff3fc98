"""tools/semisupervised.py end to end: pretrain → fine-tune → distil, its
table and BENCHMARKS row, and a killed distillation resumed by a re-run."""

import json
import os
import shutil
import subprocess
import sys

import pytest

import subprocess_env

_REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
_TOOL = os.path.join(_REPO, "tools", "semisupervised.py")


def _run(workdir, *extra):
  args = [sys.executable, _TOOL, "--pretrain=configs/simclr_cifar10.py:runlocal",
          "--finetune=configs/finetune.py:runlocal",
          "--distill=configs/distill.py:runlocal",
          "--fractions=10", f"--workdir={workdir}",
          f"--benchmarks={workdir}/BENCH.md",
          "--set=pretrain.probe.enabled=False",
          # 16 px at width 1/16: the pipeline's plumbing, not the encoder,
          # is under test.
          "--set=pretrain.data.image_size=16",
          "--set=pretrain.model.width=0.0625",
          "--set=distill.checkpointing.every_steps=4", *extra]
  out = subprocess.run(args, cwd=str(workdir), capture_output=True, text=True,
                       env=subprocess_env.cpu_env(8), timeout=900)
  assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
  return out.stdout


def _train_records(text_or_path):
  """The `train/*` records of a metrics.jsonl (text or file)."""
  text = (text_or_path.read_text() if hasattr(text_or_path, "read_text")
          else text_or_path)
  records = [json.loads(line) for line in text.splitlines() if line.strip()]
  return [{k: v for k, v in r.items() if k.startswith("train/")}
          | {"step": r["step"]} for r in records
          if any(k.startswith("train/loss") for k in r)]


def _results(path):
  with open(path) as f:
    return json.load(f)["results"]


@pytest.fixture(scope="module")
def pipeline(tmp_path_factory):
  workdir = tmp_path_factory.mktemp("semisup")
  return workdir, _run(workdir)


def test_pipeline_writes_every_stage_the_table_and_a_row(pipeline):
  workdir, stdout = pipeline
  for stage in ("pretrain", "finetune_10pct", "distill_10pct"):
    assert os.path.exists(workdir / stage / "results.json"), stage
  assert os.path.exists(workdir / "finetune_10pct" / "classifier.msgpack")
  distilled = _results(workdir / "distill_10pct" / "results.json")
  finetuned = _results(workdir / "finetune_10pct" / "results.json")
  table = (workdir / "semisupervised.md").read_text()
  assert f"| distill | 10 % | {distilled['top1']:.4f} |" in table
  assert f"| finetune | 10 % | {finetuned['top1']:.4f} |" in table
  assert "pretrained (kNN)" in table and "== distil the 10 % teacher" in stdout
  bench = (workdir / "BENCH.md").read_text()
  assert "## Semi-supervised pipeline" in bench
  assert f"10 %: {distilled['top1']:.4f}" in bench.splitlines()[-1]


def test_rerun_resumes_a_killed_distillation(pipeline):
  """A distillation killed after its step-16 checkpoint: the re-run skips
  the finished stages, resumes at step 16 and ends with the uninterrupted
  run's results."""
  workdir, _ = pipeline
  stage = workdir / "distill_10pct"
  before = _results(stage / "results.json")
  steps = sorted(int(d) for d in os.listdir(stage / "checkpoints")
                 if d.isdigit())
  assert steps[-1] == before["steps"] and 16 in steps
  metrics = (stage / "metrics.jsonl").read_text()
  with open(stage / "results.json") as f:
    whole = json.load(f)
  os.remove(stage / "results.json")
  for step in steps:
    if step > 16:
      shutil.rmtree(stage / "checkpoints" / str(step))
  stdout = _run(workdir, "--benchmarks=")
  assert "== pretrain: done" in stdout
  assert "== fine-tune on 10 % of the labels: done" in stdout
  assert "resumed from" in stdout and "at step 16" in stdout
  after = _results(stage / "results.json")
  assert after["start_step"] == 16
  # Steps 17.. of the resumed run logged the same metrics (the same
  # batches, random crops and state) as the uninterrupted run's.
  assert _train_records(stage / "metrics.jsonl") == _train_records(metrics)
  assert len(_train_records(metrics)) > 0
  for key in ("top1", "top5", "steps", "num_examples"):
    assert after[key] == before[key], key
  # results.json covers the whole run: the history and epoch summaries of
  # both segments equal the uninterrupted run's (the resumed steps made the
  # same metrics), and each segment's steps and time are listed.
  with open(stage / "results.json") as f:
    resumed = json.load(f)
  assert resumed["history"][0]["step"] <= 4
  for part in ("history", "epochs"):
    assert _without_evaluations(resumed[part]) == _without_evaluations(
        whole[part]), part
  assert [(s["start_step"], s["end_step"]) for s in resumed["segments"]] == [
      (0, 16), (16, before["steps"])]
  assert all(s["seconds"] > 0 for s in resumed["segments"])
  assert after["run_seconds"] == pytest.approx(
      sum(s["seconds"] for s in resumed["segments"]))


def _without_evaluations(records):
  """Train metrics of history or epoch records: evaluation results (the
  same model, but evaluated once more at the end) aside."""
  return [{k: v for k, v in r.items() if not k.startswith(("top", "test_"))}
          for r in records]


def test_bad_override_names_the_key(tmp_path):
  out = subprocess.run(
      [sys.executable, _TOOL, "--pretrain=configs/simclr_cifar10.py:runlocal",
       f"--workdir={tmp_path}", "--set=finetune.optimizer.bse_lr=1"],
      cwd=_REPO, capture_output=True, text=True,
      env=subprocess_env.cpu_env(1), timeout=300)
  assert out.returncode != 0
  assert "'bse_lr' is not one of" in out.stderr


def test_overrides_keep_the_key_type_and_pretrained_runs_are_read_only(
    tmp_path):
  """`--set` values go through ConfigDict's type check (an int may become a
  float; a string for a float is a usage error naming the key), and
  `--set=pretrain.*` with `--pretrained` is refused before any stage."""
  code = (
      "import sys; sys.path.insert(0, 'tools'); import semisupervised as s\n"
      "from absl import app\n"
      "c = s.load('configs/finetune.py:runlocal', "
      "[('optimizer.base_lr', 1), ('head_layers', 0)], 'finetune')\n"
      "print(repr(c.optimizer.base_lr), repr(c.head_layers))\n"
      "for key, value in [('optimizer.base_lr', 'x'), ('batch_size', 2.5)]:\n"
      "  try:\n"
      "    s.load('configs/finetune.py:runlocal', [(key, value)], 'finetune')\n"
      "  except app.UsageError as e:\n"
      "    print('refused', e)\n")
  out = subprocess.run([sys.executable, "-c", code], cwd=_REPO,
                       capture_output=True, text=True,
                       env=subprocess_env.cpu_env(1), timeout=300)
  assert out.returncode == 0, out.stderr[-3000:]
  lines = out.stdout.splitlines()
  assert lines[0] == "1.0 0"
  assert lines[1].startswith("refused --set=finetune.optimizer.base_lr: ")
  assert lines[2].startswith("refused --set=finetune.batch_size: ")
  assert len(lines) == 3
  out = subprocess.run(
      [sys.executable, _TOOL, f"--pretrained={tmp_path}/run",
       f"--workdir={tmp_path}/w", "--set=pretrain.epochs=3"],
      cwd=_REPO, capture_output=True, text=True,
      env=subprocess_env.cpu_env(1), timeout=300)
  assert out.returncode != 0
  assert "--set=pretrain.* with --pretrained" in out.stderr
