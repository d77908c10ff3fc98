"""Helpers for experiment configs: one schema, parsed variant arguments.

Every file in `configs/` builds on `base_config()`, so all experiments share
one set of keys and `--config.some.key=value` fails on a typo (configs are
locked by `config_flags`). Durations are in epochs and learning rates per 256
examples: steps and peak rates are derived at run time from the batch size
and the dataset, so overriding `batch_size` never leaves stale values.
"""

from typing import Optional

import ml_collections


def parse_arg(arg: Optional[str], **defaults) -> ml_collections.ConfigDict:
  """Parses a config variant string such as `"runlocal,epochs=1000"`.

  Bare words set boolean flags to True; `key=value` pairs are converted to the
  type of the default. Unknown words are an error naming the allowed ones.

  Args:
    arg: the text after `:` in `--config=configs/x.py:arg`, or None.
    **defaults: the allowed keys and their default values.

  Returns:
    A ConfigDict of the parsed values.
  """
  result = ml_collections.ConfigDict(defaults)
  for token in filter(None, (arg or "").split(",")):
    key, sep, value = token.partition("=")
    key = key.strip()
    if key not in defaults:
      raise ValueError(f"unknown config variant {key!r} in {arg!r}; expected "
                       f"one of {sorted(defaults)}")
    default = defaults[key]
    if not sep:
      if not isinstance(default, bool):
        raise ValueError(f"config variant {key!r} needs a value ({key}=...)")
      result[key] = True
    elif isinstance(default, bool):
      result[key] = value.lower() in ("1", "true", "yes")
    else:
      result[key] = type(default)(value)
  return result


def base_config() -> ml_collections.ConfigDict:
  """All keys of an experiment, with SimCLR ImageNet defaults."""
  c = ml_collections.ConfigDict()
  c.method = "simclr"
  c.seed = 0
  c.batch_size = 4096
  c.epochs = 100
  c.log_every = 100

  c.data = ml_collections.ConfigDict()
  # 'digits', 'synthetic' (in memory, cropped on device); 'files' (folder or
  # .zip of <class>/<image>), 'tfds' (tf.data on the host).
  c.data.source = "tfds"
  c.data.name = "imagenet2012"  # TFDS name.
  c.data.data_dir = ""  # TFDS data_dir ("" = default).
  c.data.path = ""  # folder or .zip for source='files'.
  c.data.shuffle_buffer = 50_000  # encoded records (TFDS).
  c.data.train_split = "train"
  c.data.eval_split = "validation"
  c.data.image_size = 224
  c.data.synthetic_examples = 512

  c.augment = ml_collections.ConfigDict()
  # Views: jaxssl.augment.VIEW_PRESETS. For the SimCLR presets the colour
  # strength and blur below override the preset's own (simclr_cifar's 0.5 and
  # no blur are what configs/simclr_cifar10.py sets explicitly).
  c.augment.preset = "simclr_v2"
  c.augment.color_strength = 1.0
  c.augment.blur = True

  c.model = ml_collections.ConfigDict()
  c.model.name = "resnet"
  c.model.depth = 50
  c.model.width = 1.0
  c.model.cifar_stem = False
  c.model.bn_momentum = 0.9
  c.model.bn_epsilon = 1e-5
  c.model.bn_group_size = 0  # 0: statistics over all devices.

  c.head = ml_collections.ConfigDict()
  c.head.num_layers = 2
  c.head.hidden_dim = 0  # 0: the encoder's width.
  c.head.out_dim = 128
  c.head.use_bn = True

  c.loss = ml_collections.ConfigDict()
  c.loss.temperature = 0.1

  c.optimizer = ml_collections.ConfigDict()
  c.optimizer.name = "lars"
  c.optimizer.base_lr = 0.3  # per 256 examples ('linear') or per √B ('sqrt').
  c.optimizer.lr_scaling = "linear"
  c.optimizer.warmup_epochs = 10.0
  c.optimizer.weight_decay = 1e-6
  c.optimizer.momentum = 0.9
  c.optimizer.nesterov = False
  c.optimizer.trust_coefficient = 1e-3

  c.eval = ml_collections.ConfigDict()
  c.eval.knn_k = 200
  c.eval.knn_temperature = 0.07
  c.eval.batch_size = 1024
  c.eval.random_init_baseline = False
  return c


def shrink_for_cpu(c: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
  """The `:runlocal` shrink: 256 synthetic 32 px images, ResNet-18/8, 2 epochs.

  Keeps the method, loss and optimizer of `c` so that the whole code path of
  the experiment runs on a CPU in well under a minute.
  """
  c.batch_size = 64
  c.epochs = 2
  c.log_every = 2
  c.data.source = "synthetic"
  c.data.synthetic_examples = 256
  c.data.image_size = 32
  c.augment.blur = False
  c.model.depth = 18
  c.model.width = 0.125
  c.model.cifar_stem = True
  c.optimizer.warmup_epochs = 1.0
  c.eval.knn_k = 20
  c.eval.batch_size = 256
  return c
