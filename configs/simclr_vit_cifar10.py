r"""SimCLR with a ViT-Tiny/4 encoder on CIFAR-10, batch 512.

The ViT settings of MoCo v3 (Chen, Xie & He 2021, §4 and Table 3, which also
trains SimCLR with ViTs): AdamW, learning rate 1.5e-4·B/256 scaled here to
5e-4·B/512 for the small model, weight decay 0.05 (kernels only), fixed 2-D
sin-cos position embedding, a frozen random patch projection (their
stability trick: stop-gradient at the projection and no update, see
`jaxssl.models.vit`), temperature 0.2; CIFAR-10's SimCLR augmentation at
32 px, 4×4 patches (64 tokens and a class token).

COMMAND (one GPU; TFDS cifar10, or the JPEG zip with the two last flags):
  python -m jaxssl.main --config=configs/simclr_vit_cifar10.py \
      --workdir=/tmp/simclr_vit_cifar10 \
      --config.data.source=files \
      --config.data.path=../shared/datasets/cifar10-jpeg.zip
Variants: `epochs=N` (default 300), `runlocal`.

EXPECTED: not measured yet in this repository; small ViTs trained
contrastively on CIFAR-10 from scratch reach roughly 80-85 % kNN top-1 in
the literature at a few hundred epochs, below a ResNet-18.

`:runlocal` trains 21 steps (5 epochs of 4) on 256 synthetic 32 px images
with the same ViT-Tiny at 8×8 patches (16 tokens), a CPU smoke run.
"""

from jaxssl import config_utils


def get_config(arg=None):
  arg = config_utils.parse_arg(arg, runlocal=False, epochs=300)
  c = config_utils.use_cifar10(config_utils.base_config())
  c.batch_size = 512
  c.epochs = arg.epochs
  c.log_every = 50
  c.augment.preset = "simclr_cifar"
  c.augment.color_strength = 0.5
  c.augment.blur = False
  c.head.num_layers = 2
  c.head.hidden_dim = 1024
  c.head.out_dim = 256
  c.loss.temperature = 0.2
  c.optimizer.name = "adamw"
  c.optimizer.base_lr = 2.5e-4  # per 256 images: 5e-4 at batch 512.
  c.optimizer.lr_scaling = "linear"
  c.optimizer.momentum = 0.9
  c.optimizer.weight_decay = 0.05
  c.optimizer.warmup_epochs = 20.0
  if arg.runlocal:
    config_utils.shrink_for_cpu(c, keep=arg.given)
  config_utils.use_vit(c, variant="tiny", patch_size=8 if arg.runlocal else 4)
  return c
