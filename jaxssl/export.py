"""The pretrained network as a file: flax msgpack plus the run's config.

`save_encoder` writes `encoder.msgpack` (the `params` and `batch_stats` of
the encoder and projector of the evaluated network, the online one or
DINO's teacher; no predictor or optimizer state)
next to `config.json` in the workdir; `load_encoder` reads them back with
the modules they belong to, for linear evaluation, fine-tuning from a
projection-head layer (SimCLR v2) and export to other frameworks.
`save_classifier` / `load_classifier` do the same for a fine-tuned
classifier, the teacher of `jaxssl.distill`.
"""

from __future__ import annotations

import json
from typing import TYPE_CHECKING, Any, Optional

import flax.serialization
import jax

from jaxssl import classifier
from jaxssl import methods
from jaxssl import paths
from jaxssl.methods import base

if TYPE_CHECKING:  # configs are only read here: no runtime dependency
  import ml_collections

PyTree = Any
ENCODER_FILE = "encoder.msgpack"
CONFIG_FILE = "config.json"


EXPORTED = ("encoder", "projector")


def encoder_variables(variables: dict) -> dict:
  """`{'params', 'batch_stats'}` of the encoder and projector of a
  network's `variables` (the online network's or the target's)."""
  return {"params": {k: variables["params"][k] for k in EXPORTED},
          "batch_stats": {k: variables["batch_stats"].get(k, {})
                          for k in EXPORTED}}


def save_encoder(workdir: paths.PathLike, variables: dict,
                 config: ml_collections.ConfigDict) -> paths.Path:
  """Writes the encoder and projector of `variables` (the evaluated
  network's, `jaxssl.step.evaluated_variables`: DINO's teacher) to
  `workdir/encoder.msgpack` (and `config.json`) on process 0, whole (never
  a half-written file), locally or on `gs://`."""
  workdir = paths.path(workdir)
  path = workdir / ENCODER_FILE
  if jax.process_index() != 0:
    return path
  data = flax.serialization.to_bytes(
      jax.device_get(encoder_variables(variables)))
  paths.write_bytes(path, data)
  if not (workdir / CONFIG_FILE).exists():
    paths.write_text(workdir / CONFIG_FILE,
                     config.to_json_best_effort(indent=1))
  return path


def load_encoder(path: paths.PathLike, axis_name: Optional[str] = None
                 ) -> tuple[Any, dict, ml_collections.ConfigDict]:
  """Reads an exported encoder and projector.

  Args:
    path: a pretraining workdir, or the `encoder.msgpack` inside one (its
      `config.json` must sit next to it); local or `gs://`.
    axis_name: data axis for the module's BatchNorm (fine-tuning), or None.

  Returns:
    `(network, variables, the pretraining config)`: `network` is a
    `methods.base.Network(encoder, projector)`, `variables` its
    `{'params', 'batch_stats'}`.
  """
  path = paths.path(path)
  if path.name != ENCODER_FILE and path.is_dir():
    path = path / ENCODER_FILE
  config_path = path.parent / CONFIG_FILE
  for p in (path, config_path):
    if not p.exists():
      raise FileNotFoundError(f"{p} does not exist (expected a pretraining "
                              f"workdir with {ENCODER_FILE} and {CONFIG_FILE})")
  import ml_collections  # pylint: disable=g-import-not-at-top,redefined-outer-name
  config = ml_collections.ConfigDict(json.loads(config_path.read_text()))
  network = method_network(config, axis_name)
  image_size = config.data.image_size
  shapes = jax.eval_shape(
      lambda: network.init(jax.random.key(0),
                           jax.numpy.zeros((1, image_size, image_size, 3)),
                           train=False))
  template = {"params": shapes["params"],
              "batch_stats": {k: shapes.get("batch_stats", {}).get(k, {})
                              for k in EXPORTED}}
  variables = _read_variables(path, template,
                              f"the encoder described in {config_path}")
  return network, variables, config


def _read_variables(path: paths.Path, template: PyTree, what: str) -> PyTree:
  """The msgpack variables of `path` in the structure of `template`."""
  try:
    return flax.serialization.from_bytes(template, path.read_bytes())
  except (ValueError, KeyError) as e:
    raise ValueError(f"{path} does not hold the variables of {what}: "
                     f"{e}") from e


CLASSIFIER_FILE = "classifier.msgpack"
CLASSIFIER_INFO = "classifier.json"


def save_classifier(workdir: paths.PathLike, model: Any, variables: dict,
                    info: dict) -> paths.Path:
  """Writes a fine-tuned classifier (`jaxssl.classifier.Classifier`):
  `classifier.msgpack` (its `params` and `batch_stats`) and
  `classifier.json` (`info`: the pretraining config, `head_layers`,
  `num_classes`, the fine-tuning data section and seed), on process 0."""
  del model  # rebuilt from `info` by `load_classifier`
  workdir = paths.path(workdir)
  path = workdir / CLASSIFIER_FILE
  if jax.process_index() == 0:
    paths.write_bytes(path, flax.serialization.to_bytes(variables))
    paths.write_text(workdir / CLASSIFIER_INFO, json.dumps(info, indent=1))
  return path


def method_network(config: ml_collections.ConfigDict,
                   axis_name: Optional[str]) -> base.Network:
  """The pretrained method's own encoder and projector (CMC's two Lab
  encoders, CPC's patch encoder), without predictor or other heads."""
  method = methods.METHODS[config.method](
      config, axis_name=axis_name, total_steps=1, num_examples=0)
  return base.Network(method.network.encoder, method.network.projector)


def load_classifier(workdir: paths.PathLike, axis_name: Optional[str] = None
                    ) -> tuple[Any, dict, dict]:
  """Reads `save_classifier`'s files from a fine-tuning workdir.

  Returns:
    `(model, variables, info)`: a `jaxssl.classifier.Classifier`, its
    `{'params', 'batch_stats'}` and the saved `info` (with
    `pretrain_config` as an `ml_collections.ConfigDict`).
  """
  import ml_collections  # pylint: disable=g-import-not-at-top,redefined-outer-name
  workdir = paths.path(workdir)
  path, info_path = workdir / CLASSIFIER_FILE, workdir / CLASSIFIER_INFO
  for p in (path, info_path):
    if not p.exists():
      raise FileNotFoundError(
          f"{p} does not exist (expected a finished fine-tuning workdir of "
          f"`python -m jaxssl.linear_eval --config=configs/finetune.py`, with "
          f"{CLASSIFIER_FILE} and {CLASSIFIER_INFO})")
  info = json.loads(info_path.read_text())
  info["pretrain_config"] = ml_collections.ConfigDict(info["pretrain_config"])
  network = method_network(info["pretrain_config"], axis_name)
  model = classifier.Classifier(network.encoder, network.projector,
                                info["head_layers"], info["num_classes"])
  size = info["pretrain_config"].data.image_size
  template = jax.eval_shape(lambda: model.init(
      jax.random.key(0), jax.numpy.zeros((1, size, size, 3)), train=False))
  template = {"params": template["params"],
              "batch_stats": template.get("batch_stats", {})}
  variables = _read_variables(path, template,
                              f"the classifier described in {info_path}")
  return model, variables, info


def torchvision_state_dict(variables: dict, depth: int,
                           num_classes: int = 1000) -> dict:
  """The encoder's variables under torchvision ResNet key names (numpy).

  Flax `stem_conv`/`stem_bn` → `conv1`/`bn1`; `stage{s}_block{b}` →
  `layer{s}.{b-1}` with `conv{i}`/`bn{i}`; `proj_conv`/`proj_bn` →
  `downsample.0`/`downsample.1`. Kernels go from HWIO to OIHW; BatchNorm
  scale/bias/mean/var to weight/bias/running_mean/running_var (and
  `num_batches_tracked` 0). torchvision's `fc` is included as a zero
  `num_classes` classifier so that every key of `torchvision.models.resnet{depth}`
  is present (`load_state_dict(strict=True)` works); replace it for a task.

  Args:
    variables: `{'params', 'batch_stats'}` of a `ResNet` (the `encoder`
      subtree of a pretraining run).
    depth: the ResNet depth (its torchvision model).
    num_classes: rows of the zero `fc`.

  Returns:
    `{key: np.ndarray}` in torchvision's layout.

  Raises:
    ValueError: for SimCLR v2's SK ResNets (`model.sk_ratio > 0`: selective
      kernels, ResNet-D stem and shortcuts), which torchvision has no model
      for.
  """
  import numpy as np  # pylint: disable=g-import-not-at-top
  params = jax.device_get(variables["params"])
  stats = jax.device_get(variables["batch_stats"])
  plain = {"conv1", "conv2", "conv3", "bn1", "bn2", "bn3", "proj_conv",
           "proj_bn"}
  other = sorted({f"{block}/{layer}" for block in params
                  if block.startswith("stage")
                  for layer in params[block] if layer not in plain})
  if "stem_conv" not in params or other:
    raise ValueError(
        "torchvision has no SK ResNet (SimCLR v2, model.sk_ratio > 0: "
        "selective-kernel convolutions, ResNet-D stem and average-pool "
        f"shortcuts): {(other or sorted(params))[:3]} have no torchvision "
        "key; export the flax variables (encoder.msgpack) instead")
  out = {}

  def conv(prefix, kernel):
    out[f"{prefix}.weight"] = np.transpose(np.asarray(kernel), (3, 2, 0, 1))

  def bn(prefix, p, s):
    out[f"{prefix}.weight"] = np.asarray(p["scale"])
    out[f"{prefix}.bias"] = np.asarray(p["bias"])
    out[f"{prefix}.running_mean"] = np.asarray(s["mean"])
    out[f"{prefix}.running_var"] = np.asarray(s["var"])
    out[f"{prefix}.num_batches_tracked"] = np.zeros((), np.int64)

  conv("conv1", params["stem_conv"]["kernel"])
  bn("bn1", params["stem_bn"], stats["stem_bn"])
  names = {"proj_conv": "downsample.0", "proj_bn": "downsample.1"}
  for block_name in sorted(k for k in params if k.startswith("stage")):
    stage, block = block_name[len("stage"):].split("_block")
    prefix = f"layer{stage}.{int(block) - 1}"
    for layer, p in params[block_name].items():
      name = f"{prefix}.{names.get(layer, layer)}"
      if "kernel" in p:
        conv(name, p["kernel"])
      else:
        bn(name, p, stats[block_name][layer])
  features = out[f"layer4.0.{'conv3' if depth >= 50 else 'conv2'}.weight"]
  out["fc.weight"] = np.zeros((num_classes, features.shape[0]), np.float32)
  out["fc.bias"] = np.zeros((num_classes,), np.float32)
  return out


def timm_vit_state_dict(params: dict, *, image_size: int = 224) -> dict:
  """A `models.vit.VisionTransformer`'s parameters under timm ViT key names
  (numpy; `timm.create_model('vit_small_patch16_224', num_classes=0)` and
  the like load it with `strict=True`).

  `patch_embed` → `patch_embed.proj` (HWIO → OIHW); `blocks_{i}` →
  `blocks.{i}` with `norm1`, `attn.qkv`, `attn.proj`, `norm2`, `mlp.fc1`,
  `mlp.fc2` (Dense kernels transposed to `[out, in]`; LayerNorm scale →
  weight); `norm`; `cls_token`; `pos_embed` at `image_size`: the fixed
  sin-cos table (MoCo v3) computed there, or the learned one resampled from
  its trained grid with DINO's interpolation (`vit.dino_interpolation`, what
  the network does at that size; unchanged at the trained size). The timm
  model to load it names `img_size=image_size`
  (`export_target.sidecar`).
  """
  import numpy as np  # pylint: disable=g-import-not-at-top
  from jaxssl.models import vit  # pylint: disable=g-import-not-at-top
  params = jax.device_get(params)
  out = {}

  def dense(prefix, p):
    out[f"{prefix}.weight"] = np.asarray(p["kernel"]).T
    out[f"{prefix}.bias"] = np.asarray(p["bias"])

  def norm(prefix, p):
    out[f"{prefix}.weight"] = np.asarray(p["scale"])
    out[f"{prefix}.bias"] = np.asarray(p["bias"])

  kernel = np.asarray(params["patch_embed"]["kernel"])
  out["patch_embed.proj.weight"] = np.transpose(kernel, (3, 2, 0, 1))
  out["patch_embed.proj.bias"] = np.asarray(params["patch_embed"]["bias"])
  out["cls_token"] = np.asarray(params["cls_token"])
  width = kernel.shape[-1]
  grid = image_size // kernel.shape[0]
  if "pos_embed" in params:
    table = np.asarray(params["pos_embed"])
    trained = int(round((table.shape[1] - 1) ** 0.5))
    if trained != grid:
      resample = vit.dino_interpolation(trained, grid)
      patches = np.einsum("hi,wj,ijd->hwd", resample, resample,
                          table[0, 1:].reshape(trained, trained, width))
      table = np.concatenate([table[:, :1], patches.reshape(
          1, grid * grid, width).astype(table.dtype)], axis=1)
    out["pos_embed"] = table
  else:
    table = np.concatenate([np.zeros((1, width)), vit.sincos_2d(grid, width)])
    out["pos_embed"] = table[None].astype(kernel.dtype)
  blocks = sorted((k for k in params if k.startswith("blocks_")),
                  key=lambda k: int(k.split("_")[1]))
  for name in blocks:
    p = params[name]
    prefix = f"blocks.{int(name.split('_')[1])}"
    norm(f"{prefix}.norm1", p["norm1"])
    dense(f"{prefix}.attn.qkv", p["attn"]["qkv"])
    dense(f"{prefix}.attn.proj", p["attn"]["proj"])
    norm(f"{prefix}.norm2", p["norm2"])
    dense(f"{prefix}.mlp.fc1", p["mlp"]["fc1"])
    dense(f"{prefix}.mlp.fc2", p["mlp"]["fc2"])
  norm("norm", params["norm"])
  return out
