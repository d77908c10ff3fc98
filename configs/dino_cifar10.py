r"""DINO on CIFAR-10: ResNet-18 (CIFAR stem) or ViT-Tiny/4, batch 256.

A CIFAR adaptation of the reference's recipes (Caron et al. 2021,
https://arxiv.org/abs/2104.14294), as solo-learn and lightly shrink them:
2 global crops of 32 px (area 0.14–1) + 6 local crops of 16 px (area
0.05–0.14), no blur at 32 px; K = 4096 prototypes; teacher momentum 0.99 → 1;
teacher temperature 0.04 → 0.07 over 30 epochs, student 0.1; the last layer
frozen for the first epoch, per-parameter clipping at 3.0.

ResNet-18 (default): the reference's ResNet recipe, SGD (momentum 0.9) at
0.03·B/256 with 10 warm-up epochs, cosine to 0, weight decay 1e-4.
`:vit` — ViT-Tiny/4 (64 tokens, learned positions, resampled for the 16 px
local crops), the reference's ViT recipe: AdamW at 5e-4·B/256, weight decay
0.04 → 0.4, drop-path 0.1.
Each residual block's last BatchNorm γ starts at 1, as the reference's
ResNet (`model.zero_init_residual=False`).

COMMAND (one GPU; TFDS cifar10, or the JPEG zip with the two last flags):
  python -m jaxssl.main --config=configs/dino_cifar10.py \
      --workdir=/tmp/dino_cifar10 \
      --config.data.source=files \
      --config.data.path=../shared/datasets/cifar10-jpeg.zip
Variants: `epochs=N` (default 200), `vit`, `runlocal`.

EXPECTED: not measured in this repository yet; solo-learn reports ≈ 89 %
linear top-1 for DINO with a ResNet-18 after 1000 epochs (its own CIFAR
recipe). The ViT-Tiny variant has no published anchor.
kNN, the online probe and the exported encoder use the teacher, as the
reference evaluates it (`eval.network=online`: the student).

`:runlocal` trains 20 steps (5 epochs of 4) on 256 synthetic 32 px images
with a ResNet-10/8 (or a 4-block ViT-Tiny at 8×8 patches,
`:runlocal,vit`), 2 local crops of 16 px and a 128-wide head.
"""

from jaxssl import config_utils


def get_config(arg=None):
  arg = config_utils.parse_arg(arg, runlocal=False, epochs=200, vit=False)
  c = config_utils.use_cifar10(config_utils.base_config())
  c.method = "dino"
  # The reference's ResNet starts each block's last BN γ at 1.
  c.model.zero_init_residual = False
  c.steps_rule = "floor"
  c.batch_size = 256
  c.epochs = arg.epochs
  c.log_every = 50
  c.augment.preset = "dino"
  c.augment.blur = False
  c.augment.local_crops = 6
  c.augment.local_size = 16
  c.augment.global_crop_area = (0.14, 1.0)
  c.augment.local_crop_area = (0.05, 0.14)
  config_utils.set_dino_head(c.head, out_dim=4096, norm_last_layer=True)
  c.loss.temperature = 0.1
  c.loss.warmup_teacher_temperature = 0.04
  c.loss.teacher_temperature = 0.07
  c.loss.warmup_teacher_epochs = 30
  c.target.base_momentum = 0.99
  c.optimizer.warmup_epochs = 10.0
  c.optimizer.clip_per_parameter = 3.0
  c.optimizer.freeze_pattern = "^projector/last_layer/"
  c.optimizer.freeze_epochs = 1.0
  if arg.vit:
    c.model.name = "vit"
    c.model.variant = "tiny"
    c.model.patch_size = 4
    c.model.pos_embed = "learned"
    c.model.vit_image_size = 32
    c.model.drop_path = 0.1
    c.model.vit_init = "dino"
    c.optimizer.name = "adamw"
    c.optimizer.base_lr = 5e-4
    c.optimizer.momentum = 0.9
    c.optimizer.weight_decay = 0.04
    c.optimizer.weight_decay_schedule = "cosine"
    c.optimizer.weight_decay_end = 0.4
  else:
    c.optimizer.name = "sgd"
    c.optimizer.base_lr = 0.03
    c.optimizer.momentum = 0.9
    c.optimizer.nesterov = False
    c.optimizer.weight_decay = 1e-4
  if arg.runlocal:
    config_utils.shrink_for_cpu(c, keep=arg.given)
    c.augment.local_crops = 2
    if arg.vit:
      c.model.patch_size = 8
  return c
