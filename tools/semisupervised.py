r"""SimCLR v2's semi-supervised pipeline in one command.

  python tools/semisupervised.py --pretrain=configs/simclr_resnet50.py:v2 \
      --fractions=1,10 --workdir=gs://BUCKET/semisup_r50

Chen et al. 2020b (https://arxiv.org/abs/2006.10029): (1) self-supervised
pretraining, (2) fine-tuning from the projection head's first layer on each
label fraction, (3) distillation of each fine-tuned teacher into a student
on the unlabelled images. Each stage has its own folder in `--workdir`:

  pretrain/           `--pretrain` (or `--pretrained=WORKDIR`: any method's
                      finished pretraining run, which is then only read)
  finetune_<F>pct/    `--finetune` (configs/finetune.py) with `fraction=F`
  distill_<F>pct/     `--distill` (configs/distill.py), teacher finetune_<F>pct

A stage whose `results.json` exists is done; any other resumes from its own
checkpoints, so a killed pipeline re-run continues where it stopped. At the
end, `semisupervised.json` and `semisupervised.md` (top-1/top-5 of every
stage and fraction, the pretraining kNN) are written to `--workdir` and a
row is appended to `--benchmarks`.

`--set=STAGE.key=value` (repeatable; STAGE is pretrain, finetune or distill)
overrides a config key, e.g. `--set=pretrain.model.width=0.125`; values are
Python literals, else strings. The fine-tuning and distillation data
sections default to the pretraining run's.

The CPU run of README "Semi-supervised learning" (digits, 7 minutes):
  python tools/semisupervised.py \
      --flagfile=configs/semisupervised_digits_cpu.flags \
      --workdir=/tmp/semisup_digits
"""

import ast
import datetime
import json
import os
import platform
import sys

from absl import app
from absl import flags
from absl import logging

_CHECKOUT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, _CHECKOUT)
import bench_table  # pylint: disable=g-import-not-at-top,wrong-import-position

STAGES = ("pretrain", "finetune", "distill")
FLAGS = flags.FLAGS
flags.DEFINE_string("pretrain", None, "Pretraining config, configs/X.py[:v].")
flags.DEFINE_string("pretrained", None,
                    "A finished pretraining workdir to start from instead.")
flags.DEFINE_list("fractions", ["1", "10"], "Label fractions in percent.")
flags.DEFINE_string("finetune", "configs/finetune.py",
                    "Fine-tuning config (`fraction=F` is added).")
flags.DEFINE_string("distill", "configs/distill.py", "Distillation config.")
flags.DEFINE_list("distill_fractions", None,
                  "Fractions to distil (default: all of --fractions).")
flags.DEFINE_multi_string("set", [], "STAGE.key=value config overrides.")
flags.DEFINE_string("workdir", None, "Output directory (local or gs://).")
flags.DEFINE_string("benchmarks", "BENCHMARKS.md",
                    "Markdown file the row is appended to ('': none).")
flags.mark_flags_as_required(["workdir"])

_TABLE = "## Semi-supervised pipeline (`tools/semisupervised.py`)"
_HEADER = ("| date | device | pretraining | kNN | fine-tuned top-1 | "
           "distilled top-1 | training time | command |\n"
           "| --- | --- | --- | --- | --- | --- | --- | --- |\n")


def parse_overrides(items):
  """`['pretrain.model.width=0.125', ...]` → `{stage: [(key, value)]}`."""
  out = {stage: [] for stage in STAGES}
  for item in items:
    key, sep, text = item.partition("=")
    stage, _, name = key.partition(".")
    if not sep or stage not in STAGES or not name:
      raise app.UsageError(f"--set={item}: expected STAGE.key=value with "
                           f"STAGE one of {STAGES}")
    try:
      value = ast.literal_eval(text)
    except (ValueError, SyntaxError):
      value = text
    out[stage].append((name, value))
  return out


def load(spec: str, overrides, stage: str, extra: str = ""):
  """The config `spec` (with the variant `extra` appended) and overrides."""
  from jaxssl import config_errors  # pylint: disable=g-import-not-at-top
  if extra:
    spec = f"{spec},{extra}" if ":" in spec else f"{spec}:{extra}"
  path, sep, variant = spec.partition(":")
  if not os.path.exists(path) and os.path.exists(os.path.join(_CHECKOUT,
                                                              path)):
    spec = os.path.join(_CHECKOUT, path) + sep + variant
  try:
    config = config_errors.load_config_file(spec)
  except config_errors.ConfigError as e:
    raise app.UsageError(f"--{stage}: {e}") from e
  for key, value in overrides:
    *parents, last = key.split(".")
    node = config
    for part in parents:
      if part not in node:
        raise app.UsageError(f"--set={stage}.{key}: no key {part!r}")
      node = node[part]
    if last not in node:
      raise app.UsageError(f"--set={stage}.{key}: {last!r} is not one of "
                           f"{sorted(node.keys())}")
    try:  # ConfigDict checks the type (an int may become a float)
      node[last] = value
    except TypeError as e:
      raise app.UsageError(f"--set={stage}.{key}: {e}") from e
  return config


def _done(workdir):
  """The results of a finished stage, or None."""
  from jaxssl import paths  # pylint: disable=g-import-not-at-top
  path = paths.path(workdir) / "results.json"
  return json.loads(path.read_text())["results"] if path.exists() else None


def run_stage(name: str, workdir, fn, config):
  results = _done(workdir)
  if results is not None:
    print(f"== {name}: done ({workdir}/results.json)", flush=True)
    return results
  print(f"== {name} → {workdir}", flush=True)
  return fn(config, str(workdir))


def table(summary: dict) -> str:
  """The Markdown table of the stages' top-1/top-5."""
  lines = ["| stage | labels | top-1 | top-5 |", "| --- | --- | --- | --- |"]
  if summary.get("knn") is not None:
    lines.append(f"| pretrained (kNN) | 0 | {summary['knn']:.4f} | |")
  for stage in ("finetune", "distill"):
    for fraction, r in summary[stage].items():
      lines.append(f"| {stage} | {fraction} % | {r['top1']:.4f} | "
                   f"{r['top5']:.4f} |")
  return "\n".join(lines) + "\n"


def main(argv):
  del argv
  if not FLAGS["verbosity"].present:
    logging.set_verbosity(logging.WARNING)  # orbax's INFO lines
  os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
  import jax  # pylint: disable=g-import-not-at-top
  from jaxssl import distill  # pylint: disable=g-import-not-at-top
  from jaxssl import linear_eval  # pylint: disable=g-import-not-at-top
  from jaxssl import paths  # pylint: disable=g-import-not-at-top
  from jaxssl import train  # pylint: disable=g-import-not-at-top
  from jaxssl.data import input_pipeline  # pylint: disable=g-import-not-at-top
  input_pipeline.hide_accelerators()
  paths.configure()
  if bool(FLAGS.pretrain) == bool(FLAGS.pretrained):
    raise app.UsageError("give exactly one of --pretrain and --pretrained")
  overrides = parse_overrides(FLAGS.set)
  if FLAGS.pretrained and overrides["pretrain"]:
    raise app.UsageError("--set=pretrain.* with --pretrained: a finished "
                         "pretraining run is only read")
  fractions = [int(f) for f in FLAGS.fractions]
  distil = [int(f) for f in (FLAGS.distill_fractions or FLAGS.fractions)]
  if not set(distil) <= set(fractions):
    raise app.UsageError(f"--distill_fractions={distil} must be among "
                         f"--fractions={fractions}")
  root = paths.path(FLAGS.workdir)
  pre_dir = paths.path(FLAGS.pretrained) if FLAGS.pretrained else (
      root / "pretrain")
  # Every config is loaded (and every override checked) before any stage.
  finetune_configs, distill_configs = {}, {}
  for fraction in fractions:
    config = load(FLAGS.finetune, overrides["finetune"], "finetune",
                  f"fraction={fraction}")
    config.checkpoint = str(pre_dir)
    finetune_configs[fraction] = config
  for fraction in distil:
    config = load(FLAGS.distill, overrides["distill"], "distill")
    config.teacher = str(root / f"finetune_{fraction}pct")
    distill_configs[fraction] = config
  if FLAGS.pretrain:
    pretrain = run_stage("pretrain", pre_dir, train.train_and_evaluate,
                         load(FLAGS.pretrain, overrides["pretrain"],
                              "pretrain"))
  else:
    pretrain = _done(pre_dir)
    if pretrain is None:
      raise app.UsageError(f"--pretrained={pre_dir} has no results.json "
                           "(not a finished pretraining run)")
  summary = {"pretrained": str(pre_dir), "knn": pretrain.get("knn_pretrained"),
             "finetune": {}, "distill": {}}
  for fraction, config in finetune_configs.items():
    summary["finetune"][fraction] = run_stage(
        f"fine-tune on {fraction} % of the labels",
        root / f"finetune_{fraction}pct", linear_eval.run, config)
  for fraction, config in distill_configs.items():
    summary["distill"][fraction] = run_stage(
        f"distil the {fraction} % teacher", root / f"distill_{fraction}pct",
        distill.run, config)
  seconds = sum(r.get("train_seconds", 0.0) for r in [
      pretrain, *summary["finetune"].values(), *summary["distill"].values()])
  text = table(summary)
  print(text)
  if jax.process_index() != 0:
    return
  paths.write_text(root / "semisupervised.md", text)
  paths.write_text(root / "semisupervised.json", json.dumps(summary, indent=1))
  if FLAGS.benchmarks:
    device = jax.devices()[0]
    device_name = (f"{jax.device_count()}× {device.device_kind}"
                   if device.platform != "cpu"
                   else f"CPU ({os.cpu_count()} cores, {platform.machine()})")
    knn = "n/a" if summary["knn"] is None else f"{summary['knn']:.4f}"
    row = (f"| {datetime.date.today().isoformat()} | {device_name} | "
           f"{FLAGS.pretrain or FLAGS.pretrained} | {knn} | " + ", ".join(
               f"{f} %: {r['top1']:.4f}"
               for f, r in summary["finetune"].items()) + " | " + ", ".join(
                   f"{f} %: {r['top1']:.4f}"
                   for f, r in summary["distill"].items()) +
           f" | {seconds / 60:.1f} min | "
           f"`python tools/semisupervised.py {' '.join(sys.argv[1:])}` |")
    bench_table.append_row(FLAGS.benchmarks, row, title=_TABLE,
                           header=_HEADER)
    print(f"appended to {FLAGS.benchmarks}")


if __name__ == "__main__":
  app.run(main)
