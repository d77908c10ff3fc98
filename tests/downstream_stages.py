"""The downstream stages of a pretrained encoder, on one process or several.

`run_stages` runs, as the documented commands do: linear evaluation,
fine-tuning (on a class-balanced half of the labels) and distillation of
the fine-tuned teacher, each on a JPEG folder read by the in-memory source
(`files_in_memory`, the same global batches on any number of processes),
then linear evaluation with the same folder as a host source (`files`: the
tf.data pipeline, each process reading its slice). test_multihost.py runs
it in 2 processes × 4 devices and in its own process × 8 devices.

  python tests/downstream_stages.py --coordinator=127.0.0.1:PORT \
      --num_processes=2 --process_id=I PRETRAINED IMAGES ROOT
"""

import argparse
import os
import sys
import time

import jax

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import config_files  # pylint: disable=g-import-not-at-top,wrong-import-position

STAGES = ("linear", "finetune", "distill", "linear_files")


def _data(config, images: str, source: str) -> None:
  config.data.source = source
  config.data.path = images
  config.data.image_size = 16
  config.data.train_split = "train"
  config.data.eval_split = "test"


def stage_config(stage: str, pretrained: str, images: str, root: str):
  """The config of `stage` (a `:runlocal` config at batch 32, 16 px)."""
  name = {"linear": "linear_eval", "linear_files": "linear_eval",
          "finetune": "finetune", "distill": "distill"}[stage]
  _, config = config_files.load(name, "runlocal")
  _data(config, images,
        "files" if stage == "linear_files" else "files_in_memory")
  config.batch_size = 32
  config.eval_batch_size = 16
  config.log_every = 1
  if stage.startswith("linear"):
    config.optimizer.base_lr = 4.0
  if stage == "finetune":
    config.data.train_fraction = 0.5
    config.batch_size = 16
  if stage == "distill":
    config.teacher = os.path.join(root, "finetune")
  else:
    config.checkpoint = pretrained
  return config


def run_stages(pretrained: str, images: str, root: str,
               stages=STAGES) -> dict:
  """`{stage: results}` of `stages`, in order (workdirs under `root`)."""
  from jaxssl import distill  # pylint: disable=g-import-not-at-top
  from jaxssl import linear_eval  # pylint: disable=g-import-not-at-top
  out = {}
  for stage in stages:
    config = stage_config(stage, pretrained, images, root)
    run = distill.run if stage == "distill" else linear_eval.run
    out[stage] = run(config, os.path.join(root, stage))
    print(f"[{time.strftime('%X')}] {stage} done", file=sys.stderr,
          flush=True)
  return out


def main() -> None:
  parser = argparse.ArgumentParser()
  parser.add_argument("--coordinator", required=True)
  parser.add_argument("--num_processes", type=int, required=True)
  parser.add_argument("--process_id", type=int, required=True)
  parser.add_argument("pretrained")
  parser.add_argument("images")
  parser.add_argument("root")
  args = parser.parse_args()
  from jaxssl.data import input_pipeline  # pylint: disable=g-import-not-at-top
  input_pipeline.hide_accelerators()
  jax.config.update("jax_cpu_collectives_implementation", "gloo")
  jax.distributed.initialize(coordinator_address=args.coordinator,
                             num_processes=args.num_processes,
                             process_id=args.process_id)
  run_stages(args.pretrained, args.images, args.root)
  # Leave together, before the interpreter's teardown: a process reaching
  # JAX's shutdown barrier (an exit handler) long after the other, as a
  # starved process 0 can on a loaded machine, times it out.
  from jax.experimental import multihost_utils  # pylint: disable=g-import-not-at-top
  multihost_utils.sync_global_devices("downstream stages done")
  jax.distributed.shutdown()
  print(f"[{time.strftime('%X')}] process {args.process_id}: done",
        file=sys.stderr, flush=True)


if __name__ == "__main__":
  main()
