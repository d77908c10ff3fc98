"""Config variants: `configs/x.py:runlocal,epochs=400` parsed and checked.

The text after `:` in `--config=configs/x.py:...` reaches `get_config(arg)`;
`parse_arg` turns it into typed values with one-line errors that list the
config's variants.
"""

from typing import Any, Dict, Optional

import ml_collections

from jaxssl.config_errors import did_you_mean


def parse_arg(arg: Optional[str], **defaults) -> ml_collections.ConfigDict:
  """Parses a config variant string such as `"runlocal,epochs=1000"`.

  Bare words set boolean flags to True; `key=value` pairs are converted to the
  type of the default. Unknown words, values that do not convert and bare
  words of non-boolean variants are errors naming the allowed variants.

  The keys written in `arg` are listed in the result's `given`, so that
  `:runlocal` keeps them: `shrink_for_cpu(c, keep=arg.given)` leaves the
  epochs of `:runlocal,epochs=400` at 400.

  Args:
    arg: the text after `:` in `--config=configs/x.py:arg`, or None.
    **defaults: the allowed keys and their default values.

  Returns:
    A ConfigDict of the parsed values, plus `given`: the sorted tuple of the
    keys that `arg` sets.

  Raises:
    ValueError: with a one-line message, for any word that does not parse.
  """
  if "given" in defaults:
    raise ValueError("'given' cannot be a config variant (it lists the "
                     "variants given)")
  result = ml_collections.ConfigDict(defaults)
  given = set()
  for token in filter(None, (arg or "").split(",")):
    key, sep, value = (part.strip() for part in token.partition("="))
    if key not in defaults:
      raise ValueError(f"unknown config variant {key!r} in {arg!r}"
                       f"{did_you_mean(key, defaults)}; variants: "
                       f"{_describe_variants(defaults)}")
    if sep or not isinstance(defaults[key], bool):
      result[key] = _parse_variant_value(key, value if sep else None,
                                         defaults[key])
    else:
      result[key] = True
    given.add(key)
  result.given = tuple(sorted(given))
  return result


_TRUE, _FALSE = ("1", "true", "yes"), ("0", "false", "no")


def _parse_variant_value(key: str, value: Optional[str], default: Any) -> Any:
  """`value` as the type of `default`; ValueError naming the variant."""
  kind = type(default).__name__
  if value is None:
    raise ValueError(f"config variant {key!r} needs a value ({key}=<{kind}>)")
  if isinstance(default, bool):
    if value.lower() not in _TRUE + _FALSE:
      raise ValueError(f"config variant {key}={value!r} is not a bool "
                       f"(true/false)")
    return value.lower() in _TRUE
  try:
    return type(default)(value)
  except ValueError:
    raise ValueError(f"config variant {key}={value!r} is not "
                     f"{'an' if kind[0] in 'aeiou' else 'a'} {kind}") from None


def _describe_variants(defaults: Dict[str, Any]) -> str:
  """E.g. `epochs=<int, default 100>, runlocal`."""
  return ", ".join(
      key if isinstance(value, bool)
      else f"{key}=<{type(value).__name__}, default {value!r}>"
      for key, value in sorted(defaults.items()))
