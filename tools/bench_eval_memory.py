r"""Peak host memory of a linear evaluation against the evaluation split's size.

  python tools/bench_eval_memory.py --workdir=/tmp/eval_memory \
      --sizes=1000,10000

Writes a JPEG folder per size (`train/`: 256 images, `test/`: SIZE images of
`--image_size` px, 10 classes), pretrains a `configs/simclr_cifar10.py:runlocal`
encoder once (synthetic images), then runs `jaxssl.linear_eval`
(`configs/linear_eval.py:runlocal`, one epoch) on each folder as a host
source (`data.source='files'`) in a fresh process, and prints its peak
resident memory (`ru_maxrss`). The downstream stages stream the evaluation
split per process (`evaluators.classification`), so the peak should not grow
with the split; a stage that gathered the split into host arrays grows by
about SIZE × image_size² × 3 bytes (plus decoding). `--benchmarks` appends
the figures to BENCHMARKS.md.
"""

import argparse
import datetime
import json
import os
import platform
import resource
import subprocess
import sys

import numpy as np

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def write_folder(root: str, sizes: dict, image_size: int) -> None:
  """`root/<split>/class<c>/<i>.jpg` for `sizes = {split: count}`."""
  from PIL import Image  # pylint: disable=g-import-not-at-top
  rng = np.random.default_rng(0)
  for split, count in sizes.items():
    for i in range(count):
      c = i % 10
      folder = os.path.join(root, split, f"class{c}")
      os.makedirs(folder, exist_ok=True)
      pixels = rng.integers(0, 256, (image_size, image_size, 3), np.uint8)
      pixels[..., c % 3] = 25 * c
      Image.fromarray(pixels).save(os.path.join(folder, f"{i}.jpg"),
                                   quality=90)


def _child(argv) -> None:
  """`pretrain WORKDIR` or `linear CHECKPOINT FOLDER WORKDIR IMAGE_SIZE`;
  prints `{'max_rss_mb': ...}` last."""
  sys.path.insert(0, REPO)
  sys.path.insert(0, os.path.join(REPO, "tests"))
  import config_files  # pylint: disable=g-import-not-at-top
  if argv[0] == "pretrain":
    from jaxssl import train  # pylint: disable=g-import-not-at-top
    _, config = config_files.load("simclr_cifar10", "runlocal")
    config.epochs = 1
    config.eval.knn_ks = ()
    config.probe.enabled = False
    train.train_and_evaluate(config, argv[1])
  else:
    from jaxssl import linear_eval  # pylint: disable=g-import-not-at-top
    checkpoint, folder, workdir, image_size = argv[1:]
    _, config = config_files.load("linear_eval", "runlocal")
    config.checkpoint = checkpoint
    config.epochs = 1
    config.data.source = "files"
    config.data.path = folder
    config.data.image_size = int(image_size)
    config.data.train_split = "train"
    config.data.eval_split = "test"
    config.eval_batch_size = 256
    results = linear_eval.run(config, workdir)
    print("eval images:", results.get("eval_images"))
  rss_kb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
  print(json.dumps({"max_rss_mb": rss_kb / 1024}))


def _run_child(*args) -> dict:
  env = dict(os.environ, JAX_PLATFORMS="cpu", CUDA_VISIBLE_DEVICES="",
             TF_CPP_MIN_LOG_LEVEL="2")
  out = subprocess.run([sys.executable, __file__, "--child", *args],
                       capture_output=True, text=True, env=env, check=False)
  if out.returncode != 0:
    raise RuntimeError(f"{args[0]} failed:\n{out.stdout[-2000:]}\n"
                       f"{out.stderr[-3000:]}")
  return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
  if len(sys.argv) > 1 and sys.argv[1] == "--child":
    _child(sys.argv[2:])
    return
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--workdir", required=True)
  parser.add_argument("--sizes", default="1000,10000",
                      help="evaluation split sizes, comma-separated")
  parser.add_argument("--image_size", type=int, default=64)
  parser.add_argument("--benchmarks", default="",
                      help="Markdown file the figures are appended to")
  args = parser.parse_args()
  sizes = [int(s) for s in args.sizes.split(",")]
  pretrained = os.path.join(args.workdir, "pretrain")
  if not os.path.exists(os.path.join(pretrained, "results.json")):
    print("pretraining the encoder ...", flush=True)
    _run_child("pretrain", pretrained)
  rows = []
  for size in sizes:
    folder = os.path.join(args.workdir, f"images_{size}")
    if not os.path.isdir(folder):
      print(f"writing {size} test images ({args.image_size} px) ...",
            flush=True)
      write_folder(folder, {"train": 256, "test": size}, args.image_size)
    workdir = os.path.join(args.workdir, f"linear_{size}")
    subprocess.run(["rm", "-rf", workdir], check=True)
    peak = _run_child("linear", pretrained, folder, workdir,
                      str(args.image_size))["max_rss_mb"]
    raw = size * args.image_size**2 * 3 / 2**20
    rows.append((size, peak, raw))
    print(f"eval split {size:6d} images: peak RSS {peak:7.1f} MB "
          f"(the split as uint8 arrays: {raw:.1f} MB)", flush=True)
  growth = rows[-1][1] - rows[0][1]
  print(f"peak growth {rows[0][0]} → {rows[-1][0]} images: {growth:+.1f} MB")
  if args.benchmarks:
    line = (f"| {datetime.date.today()} | {platform.processor() or 'cpu'}, "
            f"{os.cpu_count()} cores | `python tools/bench_eval_memory.py "
            f"--sizes={args.sizes} --image_size={args.image_size}` | "
            + ", ".join(f"{s} images: {p:.0f} MB" for s, p, _ in rows)
            + f" | {growth:+.0f} MB |\n")
    with open(args.benchmarks, "a") as f:
      f.write(line)


if __name__ == "__main__":
  main()
