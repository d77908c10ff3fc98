r"""Exports a pretrained encoder: flax msgpack, PyTorch weights (torchvision
ResNet or timm ViT key names) and a JSON sidecar naming the exact
constructor that rebuilds the trained architecture.

  python tools/export_encoder.py --checkpoint=/tmp/byol_r50 --out=/tmp/byol_r50

(`--checkpoint` and `--out` may be `gs://` paths) writes
`/tmp/byol_r50.msgpack` (encoder `params` + `batch_stats`),
`/tmp/byol_r50.pt` (a PyTorch state_dict, when torch is installed; else
`/tmp/byol_r50.npz` with the same keys) and `/tmp/byol_r50.json`, the
sidecar (`jaxssl.export_target`): the model name, every keyword that
differs from that name's defaults, which network was exported and how the
position table was written. It prints the call; load with it, never with a
name alone (timm's `vit_small_patch16_224` has 6 heads, MoCo v3's ViT-S 12:
the shapes agree, the features do not):

  import json, timm, torch, torchvision
  spec = json.load(open("/tmp/byol_r50.json"))
  if spec["library"] == "timm":      # ViT
    model = timm.create_model(spec["name"], **spec["kwargs"])
  else:                              # ResNet (name None: no torchvision
    model = torchvision.models.get_model(spec["name"], **spec["kwargs"])
  model.load_state_dict(torch.load("/tmp/byol_r50.pt"))  # ResNet fc: zeros
  # from .npz: {k: torch.from_numpy(v) for k, v in np.load(path).items()}

  # e.g. MoCo v3 ViT-S/16: timm.create_model('vit_small_patch16_224',
  #   num_classes=0, num_heads=12); a standard ResNet-50:
  #   torchvision.models.get_model('resnet50')

A ResNet torchvision cannot build (CIFAR stem, width multiplier, ResNet-10,
SK ResNet) gets `"name": null` and a `reason` (with the CIFAR stem's patch
of torchvision's model); its weights keep the same key names and their own
shapes. The exported network is the one the method evaluates (DINO's
teacher), named in the sidecar; `--network=online|target` exports the other
from the run's latest checkpoint. A ViT's position table is written for
`--image_size` (default: the trained `data.image_size`; a learned table is
resampled with DINO's interpolation).
"""

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
flags.DEFINE_enum("network", "auto", ["auto", "online", "target"],
                  "The network exported (auto: the one the method evaluates, "
                  "DINO's teacher; the other is read from the checkpoint).")
flags.DEFINE_integer("image_size", 0,
                     "ViT input size the position table is written for "
                     "(0: the trained data.image_size).")
flags.mark_flags_as_required(["checkpoint", "out"])


def main(argv):
  del argv
  from jaxssl import export_target  # pylint: disable=g-import-not-at-top
  try:
    spec = export_target.export_files(
        FLAGS.checkpoint, FLAGS.out, network=FLAGS.network,
        image_size=FLAGS.image_size, torch_format=FLAGS.torch_format,
        num_classes=FLAGS.num_classes)
  except (ValueError, FileNotFoundError, ImportError) as e:
    raise app.UsageError(str(e)) from e
  for line in spec.pop("written"):
    print(f"wrote {line}")
  if "call" in spec:
    print(f"build it with: {spec['call']}")


if __name__ == "__main__":
  app.run(main)
