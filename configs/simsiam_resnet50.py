r"""SimSiam, ResNet-50, ImageNet, batch 512 (Chen & He 2021, §4 and app. A).

SGD (momentum 0.9, weight decay 1e-4 on kernels), rate 0.05·B/256 on a cosine
without warm-up, projector 3 × 2048 ending in BN without affine, predictor
2048 → 512 → 2048, stop-gradient on the projections, MoCo v2 augmentations
(crop area 0.2–1, jitter 0.4/0.4/0.4/0.1, blur, grayscale).
Views are ImageNet mean/std-normalised (`augment.normalize='imagenet'`), as
the reference's `transforms.Normalize`.
Linear evaluation: `configs/linear_eval.py:protocol=simsiam`,
the reference's script behind the EXPECTED figures.

COMMAND (TPU v3-8 VM or 8 GPUs):
  python -m jaxssl.main --config=configs/simsiam_resnet50.py \
      --workdir=gs://BUCKET/simsiam_r50_100ep \
      --config.data.data_dir=gs://BUCKET/tensorflow_datasets
Variants: `epochs=N` (default 100), `runlocal`.

EXPECTED (paper Table 4, linear evaluation top-1 on ImageNet): 100 epochs
68.1 %, 200 epochs 70.0 %, 400 epochs 70.8 %, 800 epochs 71.3 %. Not
reproduced here: the paper's fixed (undecayed) predictor rate.

`:runlocal` trains 21 steps (5 epochs of 4) on 256 synthetic 32 px images
with a ResNet-10/8 and 128-wide heads (a CPU smoke run); `:runlocal,epochs=N`
trains N epochs of 4 steps.
"""

from jaxssl import config_utils


def get_config(arg=None):
  arg = config_utils.parse_arg(arg, runlocal=False, epochs=100)
  c = config_utils.use_imagenet(config_utils.base_config())
  c.method = "simsiam"
  c.batch_size = 512
  c.epochs = arg.epochs
  c.log_every = 100
  c.augment.preset = "simclr_v1"
  c.augment.normalize = "imagenet"  # the reference's transforms.Normalize
  c.augment.color_strength = 0.5
  c.augment.min_crop_area = 0.2
  config_utils.set_head(c.head, num_layers=3, hidden_dim=2048, out_dim=2048,
                        last_bn="plain")
  config_utils.set_head(c.predictor, num_layers=2, hidden_dim=512,
                        out_dim=2048, last_bn="none")
  c.optimizer.name = "sgd"
  c.optimizer.base_lr = 0.05
  c.optimizer.weight_decay = 1e-4
  c.optimizer.warmup_epochs = 0.0
  if arg.runlocal:
    config_utils.shrink_for_cpu(c, keep=arg.given)
  return c
