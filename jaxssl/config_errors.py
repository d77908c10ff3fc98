"""One-line errors for config files and `--config.key=value` overrides.

`config_flags` reports a misspelt override, a value of the wrong type or a
config file that does not load with chained tracebacks (or not at all until
the config is first read). The entry points check the command line with these
functions before `config_flags` parses it, so that each such mistake is one
line naming the file or the key, what is wrong and what would be right
(`jaxssl.main.parse_flags`).
"""

import difflib
import importlib.machinery
import importlib.util
import os
import traceback
from typing import Iterable, List, Optional, Sequence, Tuple

from absl import flags
import ml_collections

# How `config_flags` parses an override of a field of each type, and the type
# as the error message names it. Other types (str, tuple, None) accept any
# text or are left to `config_flags`.
_VALUE_PARSERS = {
    bool: (flags.BooleanParser(), "a bool (true/false)"),
    int: (flags.IntegerParser(), "an int"),
    float: (flags.FloatParser(), "a float"),
}


class ConfigError(ValueError):
  """A config file or override that cannot be used; its text is one line."""


def did_you_mean(word: str, choices: Iterable[str]) -> str:
  """`" (did you mean 'x'?)"` for the choice closest to `word`, else `""`."""
  close = difflib.get_close_matches(word, list(choices), n=1)
  return f" (did you mean {close[0]!r}?)" if close else ""


def _one_line(text: str) -> str:
  return " ".join(str(text).split())


def _raised_at(error: BaseException) -> str:
  """`" (at file:line)"` of the innermost frame that raised `error`; `""` if
  that is here (e.g. `get_config` called with the wrong arguments)."""
  frames = traceback.extract_tb(error.__traceback__)
  if not frames or frames[-1].filename == __file__:
    return ""
  return f" (at {frames[-1].filename}:{frames[-1].lineno})"


def load_config_file(spec: str) -> ml_collections.ConfigDict:
  """Loads `path[:arg]` as `config_flags.DEFINE_config_file` does.

  The module is executed under its own name, so that `config_flags` loading
  it again afterwards starts afresh. `get_config()` is called without an
  argument when `spec` has no `:`, as `config_flags` calls it.

  Args:
    spec: the value of `--config`, e.g. `configs/x.py:runlocal,epochs=3`.

  Returns:
    The result of the file's `get_config`.

  Raises:
    ConfigError: naming the file and why it did not give a config (missing,
      a syntax error, an exception while importing it or in `get_config`,
      e.g. an unknown variant).
  """
  path, sep, arg = spec.partition(":")
  if not path:
    raise ConfigError(f"--config={spec}: no config file given")
  if not os.path.exists(path):
    raise ConfigError(f"config file {path!r} does not exist")
  if not os.path.isfile(path):
    raise ConfigError(f"config file {path!r} is not a file")
  loader = importlib.machinery.SourceFileLoader("jaxssl_config_check", path)
  module = importlib.util.module_from_spec(
      importlib.util.spec_from_loader(loader.name, loader))
  try:
    loader.exec_module(module)
  except SyntaxError as e:
    failure = ("does not compile:" if e.filename == path else
               f"fails to import: {e.filename}")
    text = f": {e.text.strip()!r}" if e.text and e.text.strip() else ""
    raise ConfigError(
        f"config file {path!r} {failure} line {e.lineno}: "
        f"{type(e).__name__}: {e.msg}{text}") from e
  except Exception as e:  # pylint: disable=broad-except
    # Any failure of the file's own code is reported, not only ImportError.
    raise ConfigError(
        f"config file {path!r} fails to import: {type(e).__name__}: "
        f"{_one_line(e)}{_raised_at(e)}") from e
  if not callable(getattr(module, "get_config", None)):
    raise ConfigError(f"config file {path!r} has no get_config() function")
  try:
    config = module.get_config(*([arg] if sep else []))
  except ValueError as e:
    # The way config files reject a variant (`config_utils.parse_arg`):
    # the message is for the user, where it was raised is not.
    raise ConfigError(f"--config={spec}: {_one_line(e)}") from e
  except Exception as e:  # pylint: disable=broad-except
    raise ConfigError(
        f"--config={spec}: get_config() raised {type(e).__name__}: "
        f"{_one_line(e)}{_raised_at(e)}") from e
  if config is None:
    raise ConfigError(f"--config={spec}: get_config() returned None")
  return config


def config_flag_value(argv: Sequence[str], name: str = "config"
                      ) -> Optional[str]:
  """The value of the last `--<name>=...` (or `--<name> ...`) in `argv`."""
  value = None
  for i, arg in enumerate(argv[1:], 1):
    if arg == "--":
      break
    for prefix in (f"--{name}", f"-{name}"):
      if arg.startswith(prefix + "="):
        value = arg[len(prefix) + 1:]
      elif arg == prefix and i + 1 < len(argv):
        value = argv[i + 1]
  return value


def overrides(argv: Sequence[str], name: str = "config"
              ) -> List[Tuple[str, str, Optional[str]]]:
  """The `--<name>.key=value` overrides of `argv`.

  Args:
    argv: the command line, program name first.
    name: the name of the config flag.

  Returns:
    `(flag, key, value)` triples: the argument as written, the dotted key
    under the config and the value text after `=`; None without `=`
    (`--noconfig.key`, a boolean `--config.key`, or `--config.key value`,
    whose value `config_flags` checks).
  """
  found = []
  for arg in argv[1:]:
    if arg == "--":
      break
    body = arg[2:] if arg.startswith("--") else arg[1:]
    if arg.startswith("-") and body.startswith((f"{name}.", f"no{name}.")):
      flag, sep, value = body.partition("=")
      found.append((arg, flag.split(".", 1)[1], value if sep else None))
  return found


def check_override(config: ml_collections.ConfigDict, flag: str, key: str,
                   value: Optional[str]) -> None:
  """Checks that `key` names a field of `config` and `value` fits its type.

  Args:
    config: the loaded config.
    flag: the override as written (for the message).
    key: its dotted key, e.g. `optimizer.base_lr`.
    value: its value text, or None if it has none (a boolean switch).

  Raises:
    ConfigError: naming the override, the section's keys and the closest key
      to a misspelt one; or the key, the value and the type it needs.
  """
  parts = key.split(".")
  section, name = config, "config"
  for i, part in enumerate(parts):
    if "[" in part:
      return  # indexing into a sequence: left to config_flags
    if not isinstance(section, ml_collections.ConfigDict):
      raise ConfigError(f"{flag}: {name} is {section!r}, not a section with "
                        f"key {part!r}")
    keys = sorted(section.keys())
    if part not in keys:
      raise ConfigError(
          f"{flag}: {name} has no key {part!r}{did_you_mean(part, keys)}; "
          f"valid keys of {name}: {', '.join(keys)}")
    if i + 1 < len(parts):
      section, name = section[part], f"{name}.{part}"
  field_type = section.get_type(parts[-1])
  if value is None or field_type not in _VALUE_PARSERS:
    return
  parser, expected = _VALUE_PARSERS[field_type]
  try:
    parser.parse(value)
  except ValueError as e:
    raise ConfigError(
        f"{flag}: config.{key} takes {expected} (it is "
        f"{section[parts[-1]]!r}), not {value!r}") from e


def check_overrides(config: ml_collections.ConfigDict, argv: Sequence[str],
                    name: str = "config") -> None:
  """`check_override` of every `--<name>.key=value` in `argv`.

  Raises:
    ConfigError: for the first override that does not fit `config`.
  """
  if not isinstance(config, ml_collections.ConfigDict):
    return  # a dataclass or other config: config_flags checks it
  for flag, key, value in overrides(argv, name):
    check_override(config, flag, key, value)
