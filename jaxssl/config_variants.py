"""Config variants: `configs/x.py:runlocal,epochs=400` parsed and checked.

The text after `:` in `--config=configs/x.py:...` reaches `get_config(arg)`;
`parse_arg` turns it into typed values with one-line errors that list the
config's variants; `shrink_for_cpu` is what `:runlocal` does.
"""

from typing import Any, Dict, Iterable, Optional

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


def values_of(c: ml_collections.ConfigDict, keys: Iterable[str]
            ) -> Dict[str, Any]:
  """The values of those `keys` that are top-level keys of `c`."""
  return {key: c[key] for key in keys if key in c}


# `:runlocal` caps MLP widths (Barlow Twins' 8192) so CPU steps stay fast.
_RUNLOCAL_HEAD_WIDTH = 128


def shrink_for_cpu(c: ml_collections.ConfigDict, keep: Iterable[str] = (),
                   *, epochs: int = 5) -> ml_collections.ConfigDict:
  """The `:runlocal` shrink: 256 synthetic 32 px images, ResNet-10/8 (a
  ViT keeps its variant's width with 4 blocks).

  ResNet-10 is ResNet-18's code path (basic blocks, a projection shortcut
  entering each stage) with one block per stage instead of two: a smoke run
  that compiles and runs in about two thirds of the time.

  Keeps the method, loss and optimizer of `c` (heads capped at 128 wide) so
  that the whole code path of the experiment runs on a CPU in about a
  minute: 5 epochs of 4 steps at batch 64 (20 steps, 21 with the SimCLR
  `steps_rule`); a queue (MoCo's, SwAV's) holds 4 batches.

  Args:
    c: the experiment's config, changed in place.
    keep: top-level keys of `c` that keep their value: the variants given
      explicitly (`parse_arg(...).given`), so that `:runlocal,epochs=400`
      trains 400 epochs. Other names are ignored.
    epochs: epochs of 4 steps.

  Returns:
    `c`.
  """
  kept = values_of(c, keep)
  c.batch_size = 64
  c.epochs = epochs
  c.log_every = 2
  c.checkpoint.every_steps = 8
  for section in (c.head, c.predictor):
    if section.hidden_dim:  # 0 (the input width) stays
      section.hidden_dim = min(section.hidden_dim, _RUNLOCAL_HEAD_WIDTH)
    section.out_dim = min(section.out_dim, _RUNLOCAL_HEAD_WIDTH)
  c.head.bottleneck_dim = min(c.head.bottleneck_dim, _RUNLOCAL_HEAD_WIDTH)
  if c.loss.queue_size:  # 0 (no queue) stays
    c.loss.queue_size = 4 * c.batch_size
  c.data.source = "synthetic"
  c.data.synthetic_examples = 256
  c.data.image_size = 32
  c.augment.blur = False
  c.model.depth = 10
  c.model.width = 0.125
  c.model.cifar_stem = True
  c.model.vit_depth = 4  # a ViT variant's width and heads, 4 blocks
  if c.optimizer.schedule == "warmup_cosine":  # 'epoch_cosine' has none
    c.optimizer.warmup_epochs = 1.0
  c.eval.knn_ks = (20,)
  c.eval.batch_size = 256
  c.update(kept)
  return c
