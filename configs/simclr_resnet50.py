r"""SimCLR, ResNet-50, ImageNet, batch 4096 (Chen et al. 2020, §B.1).

LARS (momentum 0.9, trust 1e-3), learning rate 0.3·B/256 ("linear") or
0.075·√B ("sqrt"; both give 4.8 at B = 4096), 10 warm-up epochs then cosine,
weight decay 1e-6, temperature 0.1, global BatchNorm, 2-layer projection head
(v1) or 3-layer (v2) with output 128.

COMMAND (TPU v3-32 / v4-32 VM, all hosts):
  python -m jaxssl.main --distributed --config=configs/simclr_resnet50.py \
      --workdir=gs://BUCKET/simclr_r50_100ep \
      --config.data.data_dir=gs://BUCKET/tensorflow_datasets
Variants (comma-separated after `:`): `epochs=1000`, `sqrt`, `v2`, `runlocal`,
e.g. `--config=configs/simclr_resnet50.py:epochs=1000,v2`.

The same global batch of 4096 on ONE GPU (exact loss over all 4096 images;
the encoder's BatchNorm per micro-batch of 256, see README "Performance"):
  python -m jaxssl.main --config=configs/simclr_resnet50.py --workdir=... \
      --config.train.microbatches=16

EXPECTED (paper, linear evaluation top-1 on ImageNet): 100 epochs ≈ 64–65 %
(Fig. 9, batch 4096), 1000 epochs 69.3 % (Table 6); v2 head, 800 epochs
71.7 % (SimCLR v2, Table 1 row R50 1×).

`:runlocal` trains 21 steps (5 epochs of 4) on 256 synthetic 32 px images
with a ResNet-18/8 (a CPU smoke run); `:runlocal,epochs=N` trains N epochs
of 4 steps.
"""

from jaxssl import config_utils


def get_config(arg=None):
  arg = config_utils.parse_arg(arg, runlocal=False, epochs=100, sqrt=False,
                               v2=False)
  c = config_utils.use_imagenet(config_utils.base_config())
  c.batch_size = 4096
  c.epochs = arg.epochs
  c.log_every = 100
  c.augment.color_strength = 1.0
  c.augment.blur = True
  c.head.num_layers = 3 if arg.v2 else 2
  c.loss.temperature = 0.1
  c.optimizer.name = "lars"
  c.optimizer.base_lr = 0.075 if arg.sqrt else 0.3
  c.optimizer.lr_scaling = "sqrt" if arg.sqrt else "linear"
  c.optimizer.weight_decay = 1e-6
  c.optimizer.warmup_epochs = 10.0
  if arg.runlocal:
    config_utils.shrink_for_cpu(c, keep=arg.given)
  return c
