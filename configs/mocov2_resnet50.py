r"""MoCo v2, ResNet-50, ImageNet, batch 256, 200 epochs.

The reference's MoCo v2 settings (Chen, Fan, Girshick & He 2020,
https://arxiv.org/abs/2003.04297; facebookresearch/moco `main_moco.py
--mlp --moco-t 0.2 --aug-plus --cos`): SGD, rate 0.03·B/256, momentum 0.9,
weight decay 1e-4 on every parameter (`decay_mask='all'`), cosine set per
epoch without warm-up (`epoch_cosine`); a 2-layer MLP head 2048 → 128
without BatchNorm; τ 0.2; a queue of 65,536 keys; key-encoder momentum
0.999 (constant); MoCo v2 augmentation = SimCLR's with colour strength 0.5
(jitter 0.4, 0.4, 0.4, 0.1), blur with p 0.5 and crop area 0.2–1.
BatchNorm here is global (SyncBN, as solo-learn's MoCo v2+; see
`jaxssl.methods.moco` on why the reference shuffles); the reference's
per-GPU BatchNorm with its shuffle is
`--config.model.bn_group_size=1 --config.target.shuffle_bn=True`.
Each residual block's last BatchNorm γ starts at one (torchvision's
default, used by the reference) and the views are ImageNet
mean/std-normalised (`augment.normalize='imagenet'`), as the reference's
`transforms.Normalize`. Known deviation: the v1 variant jitters with p 0.8
at strength 0.5 (v1: always, hue 0.4).
Linear evaluation: `configs/linear_eval.py:protocol=moco`,
the reference's script behind the EXPECTED figures.

COMMAND (a TPU VM or GPU host; TFDS imagenet2012 prepared in data_dir):
  python -m jaxssl.main --config=configs/mocov2_resnet50.py \
      --workdir=gs://BUCKET/mocov2_r50 --config.data.data_dir=gs://BUCKET/tfds
Variants: `epochs=N` (default 200; the paper's 800 with `epochs=800`),
`v1` (MoCo v1: linear head to 128, τ 0.07, no blur; v1's step schedule and
hue 0.4 are not reproduced), `runlocal`.

EXPECTED (paper, linear top-1 on ImageNet): 67.5 % after 200 epochs, 71.1 %
after 800 (MoCo v1, 200 epochs: 60.6 %).

`:runlocal` trains 48 steps (12 epochs of 4) on 256 synthetic 32 px images
with a ResNet-10/8, a 128-wide head, a queue of 256 keys and key momentum
0.99.
"""

from jaxssl import config_utils


def get_config(arg=None):
  arg = config_utils.parse_arg(arg, runlocal=False, epochs=200, v1=False)
  c = config_utils.use_imagenet(config_utils.base_config())
  c.method = "moco"
  # The reference's ResNet starts each block's last BN γ at 1.
  c.model.zero_init_residual = False
  c.steps_rule = "floor"  # the reference's loader drops the last batch
  c.batch_size = 256
  c.epochs = arg.epochs
  c.log_every = 100
  c.augment.preset = "simclr_v2"
  c.augment.normalize = "imagenet"  # the reference's transforms.Normalize
  c.augment.color_strength = 0.5
  c.augment.blur = not arg.v1
  c.augment.min_crop_area = 0.2
  config_utils.set_head(c.head, num_layers=1 if arg.v1 else 2, hidden_dim=0,
                        out_dim=128, last_bn="none", use_bn=False)
  c.loss.temperature = 0.07 if arg.v1 else 0.2
  config_utils.set_moco_v2(c, runlocal=arg.runlocal, keep=arg.given)
  return c
