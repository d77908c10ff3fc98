r"""Command-line entry point: flags → `train.train_and_evaluate`.

  python -m jaxssl.main --config=configs/simclr_cifar10.py --workdir=/tmp/run \
      --config.batch_size=256

`--workdir` may be local or `gs://bucket/run` (`jaxssl.paths`). A relative
`--config=configs/...` that does not exist in the working directory is taken
from the jaxssl checkout (the folder holding `jaxssl/` and `configs/`).

Mistakes on the command line end the program with status 2 and one line on
stderr, before anything is imported or trained: a config file that does not
load (missing, broken, an unknown variant), a `--config.` key that is not in
the config (with its section's keys and the closest one), a value of the
wrong type, an unknown or missing flag.
"""

import os
import sys
from typing import List

from absl import app
from absl import flags
from absl import logging
from ml_collections import config_flags

from jaxssl import config_errors

FLAGS = flags.FLAGS
config_flags.DEFINE_config_file(
    "config", None, "Experiment config file (configs/*.py[:variant]).",
    lock_config=True)
flags.DEFINE_string("workdir", None, "Directory for logs, results, checkpoints.")
flags.DEFINE_bool(
    "distributed", False,
    "Call jax.distributed.initialize() first (multi-host: TPU pods detect "
    "their peers; GPU clusters also need the three flags below).")
flags.DEFINE_string("coordinator_address", None, "host:port of process 0.")
flags.DEFINE_integer("num_processes", None, "Number of processes.")
flags.DEFINE_integer("process_id", None, "Index of this process.")
flags.DEFINE_bool(
    "allow_config_change", False,
    "Resume a run whose pinned config (workdir/checkpoints/run_config.json) "
    "differs from this one in keys that change results; the differences "
    "are logged and the new config pinned. Without it such a restart is "
    "refused.")
flags.mark_flags_as_required(["config", "workdir"])


def initialize(argv) -> None:
  """Shared start of the entry points: no stray arguments, TensorFlow kept
  off the accelerators, `jax.distributed` if asked for."""
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {argv[1:]}")
  os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
  from jaxssl import paths  # pylint: disable=g-import-not-at-top
  paths.configure()  # gs:// through gcsfs (and an emulator if one is set)
  if not FLAGS["verbosity"].present:
    # Progress and results are printed; library INFO logs (orbax writes
    # several lines per checkpoint) only with --verbosity=0.
    logging.set_verbosity(logging.WARNING)
  if "deterministic" in FLAGS.config and FLAGS.config.deterministic:
    os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") +
                               " --xla_gpu_deterministic_ops=true").strip()
  # tf.data runs on the host; TensorFlow must not reserve GPU memory.
  from jaxssl.data import input_pipeline  # pylint: disable=g-import-not-at-top
  input_pipeline.hide_accelerators()
  if FLAGS.distributed:
    import jax  # pylint: disable=g-import-not-at-top
    # Cross-process collectives of the CPU backend (tests, CPU clusters); no
    # effect on TPU/GPU, whose collectives are their own.
    jax.config.update("jax_cpu_collectives_implementation", "gloo")
    jax.distributed.initialize(coordinator_address=FLAGS.coordinator_address,
                               num_processes=FLAGS.num_processes,
                               process_id=FLAGS.process_id)


def main(argv):
  initialize(argv)
  from jaxssl import train  # pylint: disable=g-import-not-at-top
  from jaxssl import sharding  # pylint: disable=g-import-not-at-top
  from jaxssl import run_config  # pylint: disable=g-import-not-at-top
  try:
    train.prepare_workdir(FLAGS.workdir)
    train.check_config(FLAGS.config, sharding.data_mesh())
  except (ValueError, NotImplementedError) as e:
    _exit_with_error(e)
  logging.info("config:\n%s", FLAGS.config)
  try:
    train.train_and_evaluate(FLAGS.config, FLAGS.workdir,
                             allow_config_change=FLAGS.allow_config_change)
  except run_config.ConfigChanged as e:
    _exit_with_error(e)


def _exit_with_error(error: Exception) -> None:
  """One line on stderr, exit status 2 (a usage mistake, not a crash)."""
  print(f"error: {' '.join(str(error).split())}", file=sys.stderr)
  sys.exit(2)


def parse_flags(argv: List[str]) -> List[str]:
  """Parses `argv` into FLAGS; any mistake is one line on stderr, exit 2.

  The `flags_parser` of `app.run`. The config file is loaded and the
  `--config.` overrides are checked against it first (`config_errors`), as
  `config_flags` reports these mistakes with chained tracebacks.

  Args:
    argv: the command line, program name first.

  Returns:
    The arguments left after the flags (the program name), as `FLAGS(argv)`.
  """
  try:
    # Flagfiles expanded as config_flags reads its overrides.
    expanded = FLAGS.read_flags_from_files(argv, force_gnu=False)
    spec = config_errors.config_flag_value(expanded)
    if spec is not None:
      config = config_errors.load_config_file(spec)
      config_errors.check_overrides(config, expanded)
    return FLAGS(argv)
  except (config_errors.ConfigError, flags.Error) as e:
    _exit_with_error(e)


def resolve_config_argv(argv: List[str]) -> List[str]:
  """`argv` with a relative `--config` path that does not exist in the
  working directory replaced by the same path in the jaxssl checkout, when
  it exists there (so `--config=configs/quickstart.py` runs from any
  directory). Anything else is left for the flag parser to report."""
  checkout = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
  out = list(argv)
  for i, arg in enumerate(out):
    if arg.startswith("--config="):
      prefix, value = "--config=", arg[len("--config="):]
    elif arg == "--config" and i + 1 < len(out):
      prefix, value, i = "", out[i + 1], i + 1
    else:
      continue
    file, sep, variant = value.partition(":")
    if (file and not os.path.isabs(file) and not os.path.exists(file)
        and os.path.exists(os.path.join(checkout, file))):
      out[i] = prefix + os.path.join(checkout, file) + sep + variant
  return out


if __name__ == "__main__":
  app.run(main, argv=resolve_config_argv(sys.argv), flags_parser=parse_flags)
