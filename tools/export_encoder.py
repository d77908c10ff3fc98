r"""Exports a pretrained encoder: flax msgpack, and PyTorch weights
(torchvision ResNet or timm ViT key names).

  python tools/export_encoder.py --checkpoint=/tmp/byol_r50 --out=/tmp/byol_r50

(`--checkpoint` and `--out` may be `gs://` paths) writes
`/tmp/byol_r50.msgpack` (encoder `params` + `batch_stats`) and, for a
ResNet, `/tmp/byol_r50.pt` (a PyTorch state_dict with torchvision key names,
when torch is installed) or else `/tmp/byol_r50.npz` with the same keys:

  model = torchvision.models.resnet50()
  model.load_state_dict(torch.load("/tmp/byol_r50.pt"))   # fc: zeros
  # from .npz: {k: torch.from_numpy(v) for k, v in np.load(path).items()}

torchvision's architecture matches configs with the standard stem and width
1 (ImageNet configs); CIFAR-stem or width-multiplied encoders export the same
keys with their own shapes, for a correspondingly modified torchvision model.
A ViT encoder (`model.name='vit'`) is written under timm's keys:

  model = timm.create_model("vit_small_patch16_224", num_classes=0)
  model.load_state_dict(torch.load("/tmp/mocov3_vits.pt"))

(a fixed sin-cos position table is written out as timm's `pos_embed`; the
`--num_classes` flag applies to ResNets only.)
"""

import io
import os
import sys

from absl import app
from absl import flags

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

FLAGS = flags.FLAGS
flags.DEFINE_string("checkpoint", None,
                    "Pretraining workdir (or its encoder.msgpack).")
flags.DEFINE_string("out", None, "Output path without extension.")
flags.DEFINE_enum("torch_format", "auto", ["auto", "pt", "npz", "none"],
                  "torchvision weights: .pt (needs torch), .npz, or none.")
flags.DEFINE_integer("num_classes", 1000, "Rows of the (zero) fc layer.")
flags.mark_flags_as_required(["checkpoint", "out"])


def main(argv):
  del argv
  import flax.serialization  # pylint: disable=g-import-not-at-top
  import numpy as np  # pylint: disable=g-import-not-at-top
  from jaxssl import export  # pylint: disable=g-import-not-at-top
  from jaxssl import paths  # pylint: disable=g-import-not-at-top
  network, variables, config = export.load_encoder(FLAGS.checkpoint)
  del network
  encoder = {"params": variables["params"]["encoder"],
             "batch_stats": variables["batch_stats"]["encoder"]}
  path = f"{FLAGS.out}.msgpack"
  paths.write_bytes(path, flax.serialization.to_bytes(encoder))
  print(f"wrote {path}")
  if FLAGS.torch_format == "none":
    return
  if config.model.name == "vit":
    state = export.timm_vit_state_dict(encoder["params"],
                                       image_size=config.data.image_size)
    kind = (f"timm vit_{config.model.variant}_patch"
            f"{config.model.patch_size}_{config.data.image_size}")
  elif config.model.name == "resnet":
    state = export.torchvision_state_dict(encoder, config.model.depth,
                                          FLAGS.num_classes)
    kind = f"torchvision ResNet-{config.model.depth}"
  else:
    raise app.UsageError(f"no PyTorch export for config.model.name="
                         f"{config.model.name!r}")
  fmt = FLAGS.torch_format
  torch = None
  if fmt in ("auto", "pt"):
    try:
      import torch  # pylint: disable=g-import-not-at-top
    except ImportError:
      if fmt == "pt":
        raise app.UsageError("--torch_format=pt needs torch; use npz")
    fmt = "npz" if torch is None else "pt"
  buffer = io.BytesIO()
  if fmt == "pt":
    torch.save({k: torch.from_numpy(np.array(v)) for k, v in state.items()},
               buffer)
  else:
    np.savez(buffer, **state)
  paths.write_bytes(f"{FLAGS.out}.{fmt}", buffer.getvalue())
  print(f"wrote {FLAGS.out}.{fmt} ({len(state)} keys of {kind})")


if __name__ == "__main__":
  app.run(main)
