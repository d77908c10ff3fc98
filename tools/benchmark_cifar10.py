r"""CIFAR-10 benchmark: pretrain, then kNN and linear evaluation; one row.

Pretrains `configs/<method>_cifar10.py` (`--method=mocov2`: MoCo v2) on the
CIFAR-10 JPEG zip decoded into memory (PIL; no TensorFlow needed, so it runs
on the bare GPU image), evaluates weighted kNN (k = 20, 200) every few epochs
and at the end (with the random-init baseline), then runs linear evaluation
on the frozen encoder (crop + flip, SGD Nesterov, centre-crop test). Appends a row to
BENCHMARKS.md and writes `curves.png` (loss and kNN per epoch) in the workdir.

GPU (ResNet-18, the lightly benchmark's setting):
  python tools/benchmark_cifar10.py --method=simclr --epochs=200 \
      --zip=../shared/datasets/cifar10-jpeg.zip --workdir=/tmp/bench_simclr
CPU (a small ResNet on 10k images, a few epochs):
  python tools/benchmark_cifar10.py --method=simclr --epochs=3 --width=0.25 \
      --train_fraction=0.2 --batch_size=256 --linear_epochs=3 \
      --zip=../shared/datasets/cifar10-jpeg.zip --workdir=/tmp/bench_cpu
"""

import ast
import datetime
import importlib.util
import json
import os
import platform
import sys
import time

from absl import app
from absl import flags

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
import bench_table  # pylint: disable=g-import-not-at-top,wrong-import-position

METHODS = ("simclr", "byol", "simsiam", "barlow_twins", "mocov2",
           "mocov3", "dino", "swav", "wcl", "supcon", "instdisc",
           "invaspread", "cmc", "cpc")
FLAGS = flags.FLAGS
flags.DEFINE_enum("method", "simclr", METHODS, "Pretraining method.")
flags.DEFINE_string("zip", "../shared/datasets/cifar10-jpeg.zip",
                    "CIFAR-10 as train/<class>/*.jpg and test/<class>/*.jpg.")
flags.DEFINE_string("workdir", None, "Output directory.")
flags.DEFINE_integer("epochs", 200, "Pretraining epochs.")
flags.DEFINE_integer("batch_size", 512, "Pretraining batch size.")
flags.DEFINE_integer("depth", 18, "ResNet depth.")
flags.DEFINE_float("width", 1.0, "ResNet width multiplier.")
flags.DEFINE_float("train_fraction", 0.0,
                   "Class-balanced fraction of the 50k training images "
                   "(0: all); also the kNN bank and the linear-eval set.")
flags.DEFINE_integer("eval_every", 0, "kNN every N epochs (0: ~10 points).")
flags.DEFINE_integer("linear_epochs", 90, "Linear-evaluation epochs.")
flags.DEFINE_enum("eval_network", "auto", ["auto", "online", "target"],
                  "The network evaluated and exported (config.eval.network; "
                  "auto: the method's, DINO's teacher).")
flags.DEFINE_multi_string(
    "set", [], "Pretraining config override `section.key=value` (the value "
    "parsed as the key's type), repeatable: an A/B row, e.g. "
    "`--set=model.zero_init_residual=True`.")
flags.DEFINE_string("benchmarks", "BENCHMARKS.md",
                    "Markdown file the row is appended to ('' : none).")
flags.mark_flags_as_required(["workdir"])

_TABLE = "## CIFAR-10 harness (`tools/benchmark_cifar10.py`)"
_HEADER = ("| date | device | method | backbone | epochs | batch | train "
           "images | kNN k=20 | kNN k=200 | kNN random init (k=20) | linear "
           "top-1 | pretrain time | img/s | command |\n"
           "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | "
           "--- | --- | --- | --- |\n")


def load_config(name: str, arg: str):
  """`configs/<name>.py:<arg>`."""
  path = os.path.join(os.path.dirname(os.path.dirname(
      os.path.abspath(__file__))), "configs", f"{name}.py")
  spec = importlib.util.spec_from_file_location(name, path)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module.get_config(arg)


def pretrain_config(method: str):
  """The method's CIFAR-10 config with the harness's overrides."""
  c = load_config(f"{method}_cifar10", f"epochs={FLAGS.epochs}")
  c.batch_size = FLAGS.batch_size
  c.data.source = "files_in_memory"
  c.data.path = FLAGS.zip
  c.data.train_fraction = FLAGS.train_fraction
  c.model.depth = FLAGS.depth
  c.model.width = FLAGS.width
  c.eval.knn_ks = (20, 200)
  c.eval.every_epochs = FLAGS.eval_every or max(FLAGS.epochs // 10, 1)
  c.eval.random_init_baseline = True
  c.eval.batch_size = 1024
  c.eval.network = FLAGS.eval_network
  c.log_every = 20
  for item in FLAGS.set:
    apply_override(c, item)
  return c


def apply_override(c, item: str) -> None:
  """Sets `section.key=value` in config `c`, `value` of the key's type."""
  key, sep, text = item.partition("=")
  section, _, name = key.partition(".")
  if not sep or section not in c or name not in c[section]:
    raise app.UsageError(f"--set={item!r}: expected section.key=value with "
                         "an existing config key")
  old = c[section][name]
  if isinstance(old, bool):
    if text not in ("True", "False"):
      raise app.UsageError(f"--set={item!r}: {key} is a bool (True|False)")
    value = text == "True"
  elif isinstance(old, (tuple, list)):
    try:
      value = tuple(ast.literal_eval(text))
    except (ValueError, SyntaxError, TypeError) as e:
      raise app.UsageError(f"--set={item!r}: {key} is a tuple, e.g. "
                           "'(1, 2)'") from e
  else:
    try:
      value = type(old)(text)
    except ValueError as e:
      raise app.UsageError(f"--set={item!r}: {key} is a "
                           f"{type(old).__name__}") from e
  c[section][name] = value


def plot_curves(workdir: str, pretrain: dict) -> str:
  """`curves.png`: loss per report and kNN top-1 per evaluated epoch."""
  import matplotlib  # pylint: disable=g-import-not-at-top
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt  # pylint: disable=g-import-not-at-top
  fig, (ax_loss, ax_knn) = plt.subplots(1, 2, figsize=(10, 3.5))
  history = pretrain["history"]
  ax_loss.plot([h["step"] for h in history], [h["loss"] for h in history])
  ax_loss.set(xlabel="step", ylabel="loss", title="pretraining loss")
  for k in (20, 200):
    points = [(e["epoch"], e[f"knn_top1_k{k}"]) for e in pretrain["epochs"]
              if f"knn_top1_k{k}" in e]
    points.append((pretrain["epochs"][-1]["epoch"],
                   pretrain["results"][f"knn_top1_k{k}"]))
    ax_knn.plot(*zip(*points), marker="o", label=f"k={k}")
  ax_knn.set(xlabel="epoch", ylabel="top-1", title="kNN on CIFAR-10 test")
  ax_knn.legend()
  fig.tight_layout()
  path = os.path.join(workdir, "curves.png")
  fig.savefig(path, dpi=100)
  return path


def main(argv):
  del argv
  import jax  # pylint: disable=g-import-not-at-top
  from jaxssl import linear_eval  # pylint: disable=g-import-not-at-top
  from jaxssl import train  # pylint: disable=g-import-not-at-top
  from jaxssl.data import input_pipeline  # pylint: disable=g-import-not-at-top
  input_pipeline.hide_accelerators()
  if not os.path.exists(FLAGS.zip):
    raise app.UsageError(f"--zip={FLAGS.zip} does not exist")
  workdir = FLAGS.workdir
  pre_dir, lin_dir = (os.path.join(workdir, d) for d in ("pretrain", "linear"))
  config = pretrain_config(FLAGS.method)
  start = time.perf_counter()
  results = train.train_and_evaluate(config, pre_dir)
  pretrain_seconds = time.perf_counter() - start
  with open(os.path.join(pre_dir, "results.json")) as f:
    pretrain = json.load(f)

  lin_config = linear_eval_config()
  lin_config.checkpoint = pre_dir
  linear = linear_eval.run(lin_config, lin_dir)
  curves = plot_curves(workdir, pretrain)

  device = jax.devices()[0]
  device_name = (f"{jax.device_count()}× {device.device_kind}"
                 if device.platform != "cpu"
                 else f"CPU ({os.cpu_count()} cores, {platform.machine()})")
  n_train = (int(50000 * FLAGS.train_fraction) if FLAGS.train_fraction
             else 50000)
  command = "python tools/benchmark_cifar10.py " + " ".join(sys.argv[1:])
  row = (f"| {datetime.date.today().isoformat()} | {device_name} | "
         f"{FLAGS.method}{_network_note()} | "
         f"ResNet-{FLAGS.depth}×{FLAGS.width:g} | "
         f"{FLAGS.epochs} | {FLAGS.batch_size} | {n_train} | "
         f"{results['knn_top1_k20']:.4f} | {results['knn_top1_k200']:.4f} | "
         f"{results['random_init_knn_top1_k20']:.4f} | "
         f"{linear['top1']:.4f} | {pretrain_seconds / 60:.1f} min | "
         f"{results['images_per_second']:.0f} | `{command}` |")
  summary = {"pretrain": results, "linear": linear, "row": row,
             "curves": curves}
  with open(os.path.join(workdir, "benchmark.json"), "w") as f:
    json.dump(summary, f, indent=1)
  print(row)
  if FLAGS.benchmarks:
    bench_table.append_row(FLAGS.benchmarks, row, title=_TABLE,
                           header=_HEADER)
    print(f"appended to {FLAGS.benchmarks}; curves in {curves}")


def _network_note() -> str:
  """' (online)' / ' (target)' where the evaluated network is overridden,
  and the `--set` overrides."""
  notes = [] if FLAGS.eval_network == "auto" else [FLAGS.eval_network]
  notes += FLAGS.set
  return f" ({', '.join(notes)})" if notes else ""


def linear_eval_config():
  """configs/linear_eval.py (SimCLR protocol) at the harness's length."""
  c = load_config("linear_eval", f"epochs={FLAGS.linear_epochs}")
  c.batch_size = FLAGS.batch_size
  c.data.train_fraction = FLAGS.train_fraction
  c.log_every = 50
  return c


if __name__ == "__main__":
  app.run(main)
