"""A run's config, pinned beside its checkpoints.

The first start of a run writes its config to
`workdir/checkpoints/run_config.json`. A restart compares its own config
with it before anything is restored: keys that cannot change what is
trained or reported (`CHANGEABLE`: logging, checkpoint and evaluation
cadence) may differ and are logged; any other difference stops the start
with `ConfigChanged`, which lists every differing key. `--allow_config_change`
(`allow_change=True`) accepts a deliberate change: the old pinned config is
kept as `run_config.step<S>.json` and the new one pinned.
"""

from __future__ import annotations

import json
from typing import TYPE_CHECKING, Any, Callable, Dict, Optional

from jaxssl import paths

if TYPE_CHECKING:  # configs are only read here: no runtime dependency
  import ml_collections

PINNED_FILE = "run_config.json"
# Keys (or sections, ending in '.') whose value cannot change the trained
# state or the reported results.
CHANGEABLE = ("log_every", "checkpoint.", "eval.every_epochs",
              "eval.batch_size", "train.microbatch_loop")


class ConfigChanged(ValueError):
  """A restart's config differs from the run's pinned config."""


def flatten(config: Any) -> Dict[str, Any]:
  """`{'a.b': value}` of a ConfigDict or dict, values as JSON reads them."""
  tree = config.to_dict() if hasattr(config, "to_dict") else config
  tree = json.loads(json.dumps(tree, default=str))
  out = {}

  def walk(prefix, node):
    if isinstance(node, dict):
      for k, v in node.items():
        walk(f"{prefix}{k}.", v)
    else:
      out[prefix[:-1]] = node
  walk("", tree)
  return out


def changeable(key: str) -> bool:
  return any(key == c or (c.endswith(".") and key.startswith(c))
             for c in CHANGEABLE)


def differences(pinned: Dict[str, Any], current: Dict[str, Any],
                defaults: Optional[Dict[str, Any]] = None
                ) -> Dict[str, tuple]:
  """`{key: (pinned value, current value)}` of flattened configs (a key
  missing on one side has the value '<absent>').

  A key missing from the pinned config whose current value is its
  `defaults` value (the base config's: a later jaxssl added it, with the
  behaviour the run already had) is not a difference."""
  absent = "<absent>"
  defaults = defaults or {}
  return {k: (pinned.get(k, absent), current.get(k, absent))
          for k in sorted(set(pinned) | set(current))
          if pinned.get(k, absent) != current.get(k, absent)
          and not (k not in pinned and k in defaults
                   and current.get(k, absent) == defaults[k])}


def _describe(diffs: Dict[str, tuple]) -> str:
  return "; ".join(f"{k}: {a!r} → {b!r}" for k, (a, b) in diffs.items())


def pin(config: ml_collections.ConfigDict, directory: paths.PathLike, *,
        resumed_step: Optional[int], allow_change: bool = False,
        is_writer: bool = True,
        print_fn: Callable[..., None] = print,
        defaults: Optional[Dict[str, Any]] = None) -> None:
  """Pins `config` in `directory`, or checks a restart against the pin.

  Args:
    config: this start's config.
    directory: the checkpoint directory.
    resumed_step: the step of the checkpoint this start resumes from (None:
      a fresh start, which (re)writes the pin).
    allow_change: accept (log and re-pin) differences in keys outside
      `CHANGEABLE`.
    is_writer: whether this process writes (process 0).
    print_fn: for the one-line notes.
    defaults: flattened defaults of keys a newer jaxssl may have added
      (None: `config_utils.base_config()`'s); a key absent from the pin
      that still has its default is not a change.

  Raises:
    ConfigChanged: `config` differs from the pinned one in keys outside
      `CHANGEABLE` and `allow_change` is False.
  """
  directory = paths.path(directory)
  file = directory / PINNED_FILE
  current = flatten(config)
  text = json.dumps(config.to_dict(), indent=1, default=str)
  if resumed_step is None or not file.exists():
    if is_writer:
      paths.makedirs(directory)
      paths.write_text(file, text)
    if resumed_step is not None:
      print_fn(f"{file}: no pinned config in this run (older jaxssl); "
               "pinned this start's")
    return
  try:
    pinned = flatten(json.loads(file.read_text()))
  except ValueError as e:
    raise ConfigChanged(f"{file} is not readable JSON ({e}); restore it or "
                        "pass --allow_config_change to pin this start's "
                        "config") from e
  if defaults is None:
    from jaxssl import config_utils  # pylint: disable=g-import-not-at-top
    defaults = flatten(config_utils.base_config())
  diffs = differences(pinned, current, defaults)
  fixed = {k: v for k, v in diffs.items() if not changeable(k)}
  free = {k: v for k, v in diffs.items() if changeable(k)}
  if free:
    print_fn(f"config changed since the run began (allowed: cannot change "
             f"results): {_describe(free)}")
  if fixed and not allow_change:
    raise ConfigChanged(
        f"this run (pinned config {file}) was started with a different "
        f"config; refusing to resume at step {resumed_step} with: "
        f"{_describe(fixed)}. Start a new --workdir, restore the flags, or "
        "pass --allow_config_change to change them deliberately")
  if fixed:
    print_fn(f"WARNING: config changed at step {resumed_step} "
             f"(--allow_config_change): {_describe(fixed)}")
  if diffs and is_writer:
    paths.write_text(directory / f"run_config.step{resumed_step}.json",
                     file.read_text())
    paths.write_text(file, text)
