r"""MoCo v3, ViT-S/16, ImageNet, batch 4096, 300 epochs.

The reference's ViT-Small settings (Chen, Xie & He 2021,
https://arxiv.org/abs/2104.02057; facebookresearch/moco-v3 CONFIG.md:
`-a vit_small --optimizer=adamw --lr=1.5e-4 --weight-decay=.1
--epochs=300 --warmup-epochs=40 --stop-grad-conv1 --moco-m-cos
--moco-t=.2`): ViT-S/16 with 12 heads (MoCo v3's, DeiT's has 6), fixed
2-D sin-cos position embedding, the frozen random patch projection; AdamW
(β 0.9, 0.999) at 1.5e-4·B/256 with weight decay 0.1 on every parameter
(`torch.optim.AdamW(model.parameters())`), 40 warm-up epochs, cosine per
step; τ 0.2; projector 3 layers and predictor 2 layers, 4096 hidden, 256
out, no biases, last BatchNorm without affine on both; momentum 0.99 → 1
on a cosine; BYOL's asymmetric augmentation, crop area 0.08–1.
Linear evaluation: `configs/linear_eval.py:protocol=mocov3_vit`,
the reference's script behind the EXPECTED figures.

COMMAND (a TPU pod; TFDS imagenet2012 in data_dir):
  python -m jaxssl.main --config=configs/mocov3_vit_small.py \
      --workdir=gs://BUCKET/mocov3_vits --config.data.data_dir=gs://BUCKET/tfds
Variants: `epochs=N` (default 300), `runlocal`.

Known deviation: the `byol` preset's brightness is additive (BYOL's), the
reference's torchvision jitter multiplies by a factor in [0.6, 1.4].

EXPECTED (reference, batch 4096, 300 epochs): 73.2 % linear top-1 on
ImageNet, 81.4 % after end-to-end fine-tuning (DeiT recipe).

`:runlocal` trains 20 steps (5 epochs of 4) on 256 synthetic 32 px images
with a 4-block ViT-Tiny at 8×8 patches (16 tokens) and 128-wide heads.
"""

from jaxssl import config_utils


def get_config(arg=None):
  arg = config_utils.parse_arg(arg, runlocal=False, epochs=300)
  c = config_utils.use_imagenet(config_utils.base_config())
  c.method = "mocov3"
  c.steps_rule = "floor"
  c.batch_size = 4096
  c.epochs = arg.epochs
  c.log_every = 100
  c.augment.preset = "byol"
  # MoCo v3's ViT heads: projector 3 layers, predictor 2, no biases, the
  # last BatchNorm of each without affine.
  config_utils.set_head(c.head, num_layers=3, hidden_dim=4096, out_dim=256,
                        last_bn="plain", bias=False)
  config_utils.set_head(c.predictor, num_layers=2, hidden_dim=4096,
                        out_dim=256, last_bn="plain", bias=False)
  c.loss.temperature = 0.2
  c.target.base_momentum = 0.99
  c.target.init = "copy"
  c.optimizer.name = "adamw"
  c.optimizer.base_lr = 1.5e-4
  c.optimizer.lr_scaling = "linear"
  c.optimizer.momentum = 0.9
  c.optimizer.weight_decay = 0.1
  c.optimizer.decay_mask = "all"
  c.optimizer.warmup_epochs = 40.0
  if arg.runlocal:
    config_utils.shrink_for_cpu(c, keep=arg.given)
    config_utils.use_vit(c, variant="tiny", patch_size=8)
  else:
    config_utils.use_vit(c, variant="small", patch_size=16, num_heads=12)
  return c

