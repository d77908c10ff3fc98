r"""MoCo v3, ResNet-50, ImageNet, batch 4096 (100, 300 or 1000 epochs).

The reference's ResNet-50 settings (Chen, Xie & He 2021,
https://arxiv.org/abs/2104.02057; facebookresearch/moco-v3 `main_moco.py`
defaults and CONFIG.md): LARS (trust coefficient 0.001, rate applied
outside the momentum buffer, biases and BatchNorm excluded from decay and
adaptation), momentum 0.9, rate base·B/256 with 10 warm-up epochs and a
cosine per step; τ 1.0; projector 2 layers and predictor 2 layers, 4096
hidden, 256 out, no biases, the projector's last BatchNorm without affine,
none after the predictor; BYOL's asymmetric augmentation with crop area
0.2–1; momentum m → 1 on a cosine. Per epoch budget (CONFIG.md):

  epochs   base rate   weight decay   m
  100      0.6         1e-6           0.99
  300      0.3         1e-6           0.99
  1000     0.3         1.5e-6         0.996
Linear evaluation: `configs/linear_eval.py:protocol=mocov3`,
the reference's script behind the EXPECTED figures.

COMMAND (a TPU pod or 2 nodes of 8 GPUs; TFDS imagenet2012 in data_dir):
  python -m jaxssl.main --config=configs/mocov3_resnet50.py:epochs=300 \
      --workdir=gs://BUCKET/mocov3_r50 --config.data.data_dir=gs://BUCKET/tfds
Variants: `epochs=N` (default 100; other budgets take the settings of the
longest listed budget ≤ N, 100's below it), `runlocal`.

Known deviation: the `byol` preset's brightness is additive (BYOL's), the
reference's torchvision jitter multiplies by a factor in [0.6, 1.4].

EXPECTED (reference, linear top-1 on ImageNet): 68.9 % (100 epochs),
72.8 % (300), 74.6 % (1000).

`:runlocal` trains 20 steps (5 epochs of 4) on 256 synthetic 32 px images
with a ResNet-10/8 and 128-wide heads.
"""

from jaxssl import config_utils

# epochs: (base learning rate, weight decay, base momentum), CONFIG.md.
PRESETS = {100: (0.6, 1e-6, 0.99), 300: (0.3, 1e-6, 0.99),
           1000: (0.3, 1.5e-6, 0.996)}


def get_config(arg=None):
  arg = config_utils.parse_arg(arg, runlocal=False, epochs=100)
  # Other budgets take the settings of the longest listed one they reach.
  budget = max((b for b in PRESETS if b <= arg.epochs), default=100)
  lr, wd, momentum = PRESETS[budget]
  c = config_utils.use_imagenet(config_utils.base_config())
  c.method = "mocov3"
  c.steps_rule = "floor"
  c.batch_size = 4096
  c.epochs = arg.epochs
  c.log_every = 100
  c.augment.preset = "byol"
  c.augment.min_crop_area = 0.2
  config_utils.set_head(c.head, num_layers=2, hidden_dim=4096, out_dim=256,
                        last_bn="plain", bias=False)
  config_utils.set_head(c.predictor, num_layers=2, hidden_dim=4096,
                        out_dim=256, last_bn="none", bias=False)
  c.loss.temperature = 1.0
  c.target.base_momentum = momentum
  c.target.init = "copy"
  c.optimizer.name = "lars"
  c.optimizer.base_lr = lr
  c.optimizer.weight_decay = wd
  c.optimizer.momentum = 0.9
  c.optimizer.trust_coefficient = 1e-3
  c.optimizer.lr_in_momentum = False
  c.optimizer.warmup_epochs = 10.0
  if arg.runlocal:
    config_utils.shrink_for_cpu(c, keep=arg.given)
  return c
