"""The pretrained network as a file: flax msgpack plus the run's config.

`save_encoder` writes `encoder.msgpack` (the `params` and `batch_stats` of
the online encoder and projector; no predictor, target or optimizer state)
next to `config.json` in the workdir; `load_encoder` reads them back with
the modules they belong to, for linear evaluation, fine-tuning from a
projection-head layer (SimCLR v2) and export to other frameworks.
"""

import json
import os
from typing import Any, Optional

import flax.serialization
import jax
import ml_collections

from jaxssl.methods import base

PyTree = Any
ENCODER_FILE = "encoder.msgpack"
CONFIG_FILE = "config.json"


EXPORTED = ("encoder", "projector")


def encoder_variables(state) -> dict:
  """`{'params', 'batch_stats'}` of the online encoder and projector."""
  return {"params": {k: state.params[k] for k in EXPORTED},
          "batch_stats": {k: state.batch_stats.get(k, {}) for k in EXPORTED}}


def save_encoder(workdir: str, state, config: ml_collections.ConfigDict,
                 variables: Optional[dict] = None) -> str:
  """Writes `workdir/encoder.msgpack` (and `config.json`) on process 0."""
  path = os.path.join(workdir, ENCODER_FILE)
  if jax.process_index() != 0:
    return path
  variables = encoder_variables(state) if variables is None else variables
  data = flax.serialization.to_bytes(jax.device_get(variables))
  tmp = path + ".tmp"
  with open(tmp, "wb") as f:
    f.write(data)
  os.replace(tmp, path)  # atomic: never a half-written file
  config_path = os.path.join(workdir, CONFIG_FILE)
  if not os.path.exists(config_path):
    with open(config_path, "w") as f:
      f.write(config.to_json_best_effort(indent=1))
  return path


def load_encoder(path: str, axis_name: Optional[str] = None
                 ) -> tuple[Any, dict, ml_collections.ConfigDict]:
  """Reads an exported encoder and projector.

  Args:
    path: a pretraining workdir, or the `encoder.msgpack` inside one (its
      `config.json` must sit next to it).
    axis_name: data axis for the module's BatchNorm (fine-tuning), or None.

  Returns:
    `(network, variables, the pretraining config)`: `network` is a
    `methods.base.Network(encoder, projector)`, `variables` its
    `{'params', 'batch_stats'}`.
  """
  if os.path.isdir(path):
    path = os.path.join(path, ENCODER_FILE)
  config_path = os.path.join(os.path.dirname(path), CONFIG_FILE)
  for p in (path, config_path):
    if not os.path.exists(p):
      raise FileNotFoundError(f"{p} does not exist (expected a pretraining "
                              f"workdir with {ENCODER_FILE} and {CONFIG_FILE})")
  with open(config_path) as f:
    config = ml_collections.ConfigDict(json.load(f))
  network = base.create_network(config, axis_name)
  image_size = config.data.image_size
  shapes = jax.eval_shape(
      lambda: network.init(jax.random.key(0),
                           jax.numpy.zeros((1, image_size, image_size, 3)),
                           train=False))
  template = {"params": shapes["params"],
              "batch_stats": {k: shapes.get("batch_stats", {}).get(k, {})
                              for k in EXPORTED}}
  with open(path, "rb") as f:
    try:
      variables = flax.serialization.from_bytes(template, f.read())
    except (ValueError, KeyError) as e:
      raise ValueError(f"{path} does not hold the variables of the encoder "
                       f"described in {config_path}: {e}") from e
  return network, variables, config
