r"""SimCLR, ResNet-18 (CIFAR stem), CIFAR-10, batch 512 (Chen et al. 2020, §B.9).

The SimCLR TF2 reference's CIFAR-10 settings: LARS, learning rate 1.0·B/256,
weight decay 1e-4, temperature 0.5, colour-jitter strength 0.5, no blur,
32 px crops, 3×3 stride-1 stem without max-pooling.

COMMAND (one GPU; TFDS cifar10, or the JPEG zip with the two last flags):
  python -m jaxssl.main --config=configs/simclr_cifar10.py \
      --workdir=/tmp/simclr_cifar10 \
      --config.data.source=files \
      --config.data.path=../shared/datasets/cifar10-jpeg.zip
Variants: `epochs=N` (default 1000), `runlocal`.

EXPECTED: SimCLR paper Fig. B.7 reports ≈ 94 % linear evaluation with a
ResNet-50 at batch 1024 and 1000 epochs; for ResNet-18 at batch 512, lightly's
benchmark reports kNN top-1 0.848 after 200 epochs.

`:runlocal` trains 21 steps (5 epochs of 4) on 256 synthetic 32 px images
with a ResNet-10/8 (a CPU smoke run); `:runlocal,epochs=N` trains N epochs
of 4 steps.
"""

from jaxssl import config_utils


def get_config(arg=None):
  arg = config_utils.parse_arg(arg, runlocal=False, epochs=1000)
  c = config_utils.use_cifar10(config_utils.base_config())
  c.batch_size = 512
  c.epochs = arg.epochs
  c.log_every = 50
  c.augment.preset = "simclr_cifar"
  c.augment.color_strength = 0.5
  c.augment.blur = False
  c.head.num_layers = 2
  c.loss.temperature = 0.5
  c.optimizer.name = "lars"
  c.optimizer.base_lr = 1.0
  c.optimizer.lr_scaling = "linear"
  c.optimizer.weight_decay = 1e-4
  c.optimizer.warmup_epochs = 10.0
  if arg.runlocal:
    config_utils.shrink_for_cpu(c, keep=arg.given)
  return c
