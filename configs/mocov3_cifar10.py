r"""MoCo v3, ResNet-18 (CIFAR stem) or ViT-Tiny/4, CIFAR-10.

ResNet-18 (default), batch 256: solo-learn's CIFAR recipe for MoCo v3
(da Costa et al. 2022, `scripts/pretrain/cifar/mocov3.yaml`): LARS (trust
coefficient 0.02, rate outside the buffer, biases and BatchNorm excluded),
rate 0.3·B/256, weight decay 1e-6, 10 warm-up epochs (solo-learn's LARS
also clips each layer's rate, `clip_lr`, which ours does not: its steps
are larger early on); τ 0.2; MoCo v3's ResNet heads (projector 2 layers,
predictor 2 layers, 4096 hidden, 256 out, no biases, the projector's last
BatchNorm without affine); momentum 0.99 → 1 on a cosine; BYOL's
augmentation at 32 px without blur.

`:vit` — ViT-Tiny/4 (64 tokens and a class token), batch 512: MoCo v3's
ViT recipe (AdamW with weight decay 0.1 on every parameter, τ 0.2, the
frozen random patch projection, fixed sin-cos positions, projector 3
layers, predictor 2, last BatchNorms without affine) at the rate 2.5e-4
per 256 images of `configs/simclr_vit_cifar10.py`, 20 warm-up epochs.

COMMAND (one GPU; TFDS cifar10, or the JPEG zip with the two last flags):
  python -m jaxssl.main --config=configs/mocov3_cifar10.py \
      --workdir=/tmp/mocov3_cifar10 \
      --config.data.source=files \
      --config.data.path=../shared/datasets/cifar10-jpeg.zip
Variants: `epochs=N` (default 1000 ResNet, 300 ViT), `vit`, `runlocal`.

EXPECTED: solo-learn reports ≈ 93 % linear top-1 for MoCo v3 with a
ResNet-18 after 1000 epochs; the ViT-Tiny variant is not measured yet
(small ViTs trained contrastively on CIFAR-10 from scratch stay below a
ResNet-18).

`:runlocal` trains 20 steps (5 epochs of 4) on 256 synthetic 32 px images
with a ResNet-10/8 (or a 4-block ViT-Tiny at 8×8 patches,
`:runlocal,vit`) and 128-wide heads.
"""

from jaxssl import config_utils


def get_config(arg=None):
  arg = config_utils.parse_arg(arg, runlocal=False, epochs=0, vit=False)
  c = config_utils.use_cifar10(config_utils.base_config())
  c.method = "mocov3"
  c.steps_rule = "floor"
  c.epochs = arg.epochs or (300 if arg.vit else 1000)
  c.log_every = 50
  c.augment.preset = "byol"
  c.augment.blur = False
  c.loss.temperature = 0.2
  c.target.base_momentum = 0.99
  c.target.init = "copy"
  if arg.vit:
    c.batch_size = 512
    config_utils.set_head(c.head, num_layers=3, hidden_dim=4096,
                          out_dim=256, last_bn="plain", bias=False)
    config_utils.set_head(c.predictor, num_layers=2, hidden_dim=4096,
                          out_dim=256, last_bn="plain", bias=False)
    c.optimizer.name = "adamw"
    c.optimizer.base_lr = 2.5e-4
    c.optimizer.momentum = 0.9
    c.optimizer.weight_decay = 0.1
    c.optimizer.decay_mask = "all"
    c.optimizer.warmup_epochs = 20.0
  else:
    c.batch_size = 256
    config_utils.set_head(c.head, num_layers=2, hidden_dim=4096,
                          out_dim=256, last_bn="plain", bias=False)
    config_utils.set_head(c.predictor, num_layers=2, hidden_dim=4096,
                          out_dim=256, last_bn="none", bias=False)
    c.optimizer.name = "lars"
    c.optimizer.base_lr = 0.3
    c.optimizer.weight_decay = 1e-6
    c.optimizer.trust_coefficient = 0.02
    c.optimizer.lr_in_momentum = False
    c.optimizer.warmup_epochs = 10.0
  if arg.runlocal:
    config_utils.shrink_for_cpu(c, keep=arg.given)
  if arg.vit:
    config_utils.use_vit(c, variant="tiny", patch_size=8 if arg.runlocal else 4)
  return c
