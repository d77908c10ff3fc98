"""The constructor that rebuilds an exported encoder in PyTorch, as a sidecar.

`tools/export_encoder.py` writes the encoder's weights under torchvision
(ResNet) or timm (ViT) key names; a strict `load_state_dict` only checks
names and shapes, so a model of another architecture with the same shapes
(timm's 6-head ViT-S for MoCo v3's 12-head one) loads silently and computes
other features. `sidecar(config, ...)` therefore names the exact
constructor of the trained architecture — the model name and every keyword
that differs from that name's defaults — with which network was exported
and how its position table was written; the export writes it as JSON next
to the weights and prints `call(spec)`.

ViTs (timm ≥ 0.9, `timm.create_model(name, **kwargs)`): the name is
`vit_{variant}_patch16_224`, whose defaults are `VIT_DEFAULTS`; `depth`,
`num_heads`, `patch_size` and `img_size` follow when they differ, and
`num_classes=0` (features, no head). timm's class token, `global_pool=
'token'` (the final-normed class token: `encode`'s representation), LayerNorm
ε 1e-6 and 4× MLP are ours. The position table is written at `img_size`:
a fixed sin-cos table (MoCo v3) computed there, a learned one (DINO)
resampled from its trained grid with DINO's own interpolation
(`vit.dino_interpolation`), which is what our forward does at that size, so
timm needs no `dynamic_img_size` (its resampling differs from DINO's).

ResNets (`torchvision.models.get_model(name, **kwargs)`): `resnet{depth}`
for torchvision's depths with the standard stem, width 1, BatchNorm ε 1e-5
and no selective kernels; any other ResNet has no torchvision constructor:
`name` is None and `reason` says what differs (and how to patch torchvision
for a CIFAR stem).
"""

from __future__ import annotations

import io
import json
import os
from typing import TYPE_CHECKING, Optional

from jaxssl import checkpointing
from jaxssl import export
from jaxssl import paths
from jaxssl.models import vit

if TYPE_CHECKING:  # configs are only read here: no runtime dependency
  import ml_collections

# timm's architecture defaults of the names used (timm/models/
# vision_transformer.py: `vit_{tiny,small,base}_patch16_224`).
VIT_DEFAULTS = {
    "vit_tiny_patch16_224": dict(patch_size=16, embed_dim=192, depth=12,
                                 num_heads=3, img_size=224),
    "vit_small_patch16_224": dict(patch_size=16, embed_dim=384, depth=12,
                                  num_heads=6, img_size=224),
    "vit_base_patch16_224": dict(patch_size=16, embed_dim=768, depth=12,
                                 num_heads=12, img_size=224),
}
TORCHVISION_DEPTHS = (18, 34, 50, 101, 152)
NETWORKS = ("online", "target")


def evaluated_network(config: ml_collections.ConfigDict) -> str:
  """The network a run evaluates and exports: `config.eval.network`, or
  the method's reference choice ('target' for DINO's teacher)."""
  chosen = config.eval.get("network", "auto")
  if chosen != "auto":
    return chosen
  from jaxssl import methods  # pylint: disable=g-import-not-at-top
  return methods.METHODS[config.method](
      config, axis_name=None, total_steps=1, num_examples=0).evaluated


def vit_architecture(model: ml_collections.ConfigDict) -> dict:
  """`{patch_size, embed_dim, depth, num_heads}` of a ViT config."""
  width, depth, heads = vit.VARIANTS[model.variant]
  return dict(patch_size=model.patch_size, embed_dim=width,
              depth=model.get("vit_depth", 0) or depth,
              num_heads=model.get("num_heads", 0) or heads)


def export_size(config: ml_collections.ConfigDict,
                image_size: Optional[int] = None) -> int:
  """The input size the export is made for: `image_size`, or the size the
  network was trained and evaluated at (`data.image_size`)."""
  return int(image_size or config.data.image_size)


def _vit_sidecar(config: ml_collections.ConfigDict, size: int) -> dict:
  model = config.model
  arch = vit_architecture(model)
  name = f"vit_{model.variant}_patch16_224"
  wanted = dict(arch, img_size=size)
  if size % arch["patch_size"]:
    raise ValueError(f"--image_size={size} is not a multiple of the patch "
                     f"size {arch['patch_size']}")
  kwargs = {"num_classes": 0}
  kwargs.update({k: v for k, v in wanted.items()
                 if VIT_DEFAULTS[name][k] != v})
  grid = size // arch["patch_size"]
  if model.pos_embed == "sincos":
    table = {"kind": "sincos", "grid": grid,
             "how": f"the fixed 2-D sin-cos table computed for a {grid} × "
                    f"{grid} grid ({size} px)"}
  else:
    trained = model.vit_image_size // arch["patch_size"]
    how = (f"the learned table as trained ({trained} × {trained} grid, "
           f"{model.vit_image_size} px)")
    if trained != grid:
      how = (f"the learned table trained for a {trained} × {trained} grid "
             f"({model.vit_image_size} px), resampled to {grid} × {grid} "
             f"({size} px) with DINO's interpolate_pos_encoding (bicubic at "
             "scale (grid + 0.1) / trained grid), as the network itself does "
             "at that size")
    table = {"kind": "learned", "grid": grid, "trained_grid": trained,
             "resampled": trained != grid, "how": how}
  return {"library": "timm", "name": name, "kwargs": kwargs,
          "architecture": wanted, "pos_embed": table}


def _resnet_problems(model: ml_collections.ConfigDict) -> list:
  problems = []
  if model.depth not in TORCHVISION_DEPTHS:
    problems.append(f"depth {model.depth} (torchvision: "
                    f"{list(TORCHVISION_DEPTHS)})")
  if model.width != 1:
    problems.append(f"width multiplier {model.width} (torchvision widens "
                    "no stem or stage)")
  if model.get("sk_ratio", 0.0):
    problems.append("selective kernels (SimCLR v2's SK ResNet)")
  if model.get("norm", "batch") != "batch":
    problems.append(f"{model.norm} normalisation")
  if model.get("bn_epsilon", 1e-5) != 1e-5:
    problems.append(f"BatchNorm ε {model.bn_epsilon} (torchvision: 1e-5)")
  if model.cifar_stem:
    problems.append(
        "the CIFAR stem (a 3×3 stride-1 conv without max-pool: torchvision's "
        f"model with conv1 = Conv2d(3, {int(64 * model.width)}, 3, 1, 1, "
        "bias=False) and maxpool = Identity())")
  return problems


def _resnet_sidecar(config: ml_collections.ConfigDict, size: int,
                    num_classes: int) -> dict:
  model = config.model
  problems = _resnet_problems(model)
  out = {"library": "torchvision", "architecture": {
      "depth": model.depth, "width": model.width,
      "cifar_stem": bool(model.cifar_stem), "img_size": size}}
  if problems:
    out.update(name=None, kwargs={}, reason=(
        "no torchvision constructor builds this ResNet: "
        + "; ".join(problems)))
  else:
    out.update(name=f"resnet{model.depth}",
               kwargs={} if num_classes == 1000 else
               {"num_classes": num_classes})
  return out


def sidecar(config: ml_collections.ConfigDict, *, network: str,
            image_size: Optional[int] = None, num_classes: int = 1000,
            weights: str = "") -> dict:
  """The JSON sidecar of an encoder of pretraining `config` exported for
  `image_size` px (default: the trained size).

  Args:
    config: the pretraining config (`config.json` of the workdir).
    network: 'online' or 'target': which network's weights were exported.
    image_size: the input size the weights are for (ViT position table).
    num_classes: rows of a ResNet's (zero) `fc`.
    weights: the weights file's name, recorded for the loading snippet.

  Returns:
    `{library, name, kwargs, architecture, network, evaluated, method,
    weights, call[, pos_embed][, reason]}`.
  """
  if network not in NETWORKS:
    raise ValueError(f"--network={network!r} is not one of {list(NETWORKS)}")
  size = export_size(config, image_size)
  if config.model.name == "vit":
    out = _vit_sidecar(config, size)
  elif config.model.name == "resnet":
    out = _resnet_sidecar(config, size, num_classes)
  else:
    raise ValueError(f"no PyTorch export for config.model.name="
                     f"{config.model.name!r}")
  out.update(network=network, evaluated=evaluated_network(config),
             method=config.method, weights=weights)
  out["call"] = call(out)
  return out


def call(spec: dict) -> str:
  """The Python call that builds `spec`'s model (or says why none does)."""
  if spec["name"] is None:
    return f"# {spec['reason']}"
  args = "".join(f", {k}={v!r}" for k, v in spec["kwargs"].items())
  if spec["library"] == "timm":
    return f"timm.create_model({spec['name']!r}{args})"
  return f"torchvision.models.get_model({spec['name']!r}{args})"


def network_variables(checkpoint: paths.PathLike, network: str
                      ) -> tuple[dict, ml_collections.ConfigDict, str]:
  """`(encoder + projector variables, config, network name)` of a
  pretraining workdir (or its `encoder.msgpack`): `network` 'auto' (the
  evaluated one, as exported at the end of the run) or 'online'/'target'
  (the other read from the run's latest checkpoint)."""
  _, variables, config = export.load_encoder(checkpoint)
  evaluated = evaluated_network(config)
  network = evaluated if network == "auto" else network
  if network not in NETWORKS:
    raise ValueError(f"--network={network!r} is not one of "
                     f"{['auto', *NETWORKS]}")
  if network == evaluated:
    return variables, config, network
  root = paths.path(checkpoint)
  if root.name == export.ENCODER_FILE:
    root = root.parent
  _, state = checkpointing.read_latest(root / "checkpoints")
  part = state if network == "online" else state.get("target")
  if not part:
    raise ValueError(f"--network={network}: method {config.method!r} has "
                     "no target network")
  return export.encoder_variables(part), config, network


def export_files(checkpoint: paths.PathLike, out: str, *,
                 network: str = "auto", image_size: int = 0,
                 torch_format: str = "auto", num_classes: int = 1000) -> dict:
  """Writes `out.msgpack` (the encoder's flax variables), `out.pt` or
  `out.npz` (torchvision/timm key names) and the sidecar `out.json`
  (`tools/export_encoder.py`).

  Returns:
    The sidecar (`{}` with `torch_format='none'`) with `'written'`, the
    files written.
  """
  import flax.serialization  # pylint: disable=g-import-not-at-top
  import numpy as np  # pylint: disable=g-import-not-at-top
  variables, config, network = network_variables(checkpoint, network)
  encoder = {"params": variables["params"]["encoder"],
             "batch_stats": variables["batch_stats"]["encoder"]}
  written = [f"{out}.msgpack ({network} network)"]
  paths.path(out).parent.mkdir(parents=True, exist_ok=True)
  paths.write_bytes(f"{out}.msgpack", flax.serialization.to_bytes(encoder))
  if torch_format == "none":
    return {"written": written}
  spec = sidecar(config, network=network, image_size=image_size or None,
                 num_classes=num_classes)
  if config.model.name == "vit":
    state = export.timm_vit_state_dict(
        encoder["params"], image_size=spec["architecture"]["img_size"])
  else:
    state = export.torchvision_state_dict(encoder, config.model.depth,
                                          num_classes)
  torch = None
  if torch_format in ("auto", "pt"):
    try:
      import torch  # pylint: disable=g-import-not-at-top
    except ImportError:
      if torch_format == "pt":
        raise ImportError("--torch_format=pt needs torch; use npz") from None
  fmt = "npz" if torch is None else "pt"
  buffer = io.BytesIO()
  if fmt == "pt":
    torch.save({k: torch.from_numpy(np.array(v)) for k, v in state.items()},
               buffer)
  else:
    np.savez(buffer, **state)
  paths.write_bytes(f"{out}.{fmt}", buffer.getvalue())
  spec["weights"] = os.path.basename(f"{out}.{fmt}")
  paths.write_text(f"{out}.json", json.dumps(spec, indent=1))
  written += [f"{out}.{fmt} ({len(state)} keys)", f"{out}.json"]
  return {**spec, "written": written}
