r"""SimSiam, ResNet-18 (CIFAR stem), CIFAR-10, batch 512 (Chen & He 2021, app. D).

SGD (momentum 0.9, weight decay 5e-4 on kernels), rate 0.03·B/256 on a cosine
without warm-up, projector 2 × 2048 ending in BN without affine, predictor
2048 → 512 → 2048, 32 px crops of area 0.2–1, jitter 0.4/0.4/0.4/0.1, no blur.

COMMAND (one GPU; TFDS cifar10, or the JPEG zip with the two last flags):
  python -m jaxssl.main --config=configs/simsiam_cifar10.py \
      --workdir=/tmp/simsiam_cifar10 \
      --config.data.source=files \
      --config.data.path=../shared/datasets/cifar10-jpeg.zip
Variants: `epochs=N` (default 800), `runlocal`.

EXPECTED: the paper (app. D) reports 91.8 % on CIFAR-10 after 800 epochs.

`:runlocal` trains 21 steps (5 epochs of 4) on 256 synthetic 32 px images
with a ResNet-10/8 and 128-wide heads (a CPU smoke run); `:runlocal,epochs=N`
trains N epochs of 4 steps.
"""

from jaxssl import config_utils


def get_config(arg=None):
  arg = config_utils.parse_arg(arg, runlocal=False, epochs=800)
  c = config_utils.use_cifar10(config_utils.base_config())
  c.method = "simsiam"
  c.batch_size = 512
  c.epochs = arg.epochs
  c.log_every = 50
  c.augment.preset = "simclr_cifar"
  c.augment.color_strength = 0.5
  c.augment.blur = False
  c.augment.min_crop_area = 0.2
  config_utils.set_head(c.head, num_layers=2, hidden_dim=2048, out_dim=2048,
                        last_bn="plain")
  config_utils.set_head(c.predictor, num_layers=2, hidden_dim=512,
                        out_dim=2048, last_bn="none")
  c.optimizer.name = "sgd"
  c.optimizer.base_lr = 0.03
  c.optimizer.weight_decay = 5e-4
  c.optimizer.warmup_epochs = 0.0
  if arg.runlocal:
    config_utils.shrink_for_cpu(c, keep=arg.given)
  return c
