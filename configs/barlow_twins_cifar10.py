r"""Barlow Twins, ResNet-18 (CIFAR stem), CIFAR-10, batch 256.

The CIFAR-10 settings of solo-learn's Barlow Twins (da Costa et al. 2022):
projector 2048-2048-2048, λ = 5.1e-3, LARS (η 0.02, rate outside the buffer,
biases and BN excluded) at 0.3·B/256, weight decay 1e-4, 10 warm-up epochs,
BYOL augmentations at 32 px without blur.

COMMAND (one GPU; TFDS cifar10, or the JPEG zip with the two last flags):
  python -m jaxssl.main --config=configs/barlow_twins_cifar10.py \
      --workdir=/tmp/barlow_twins_cifar10 \
      --config.data.source=files \
      --config.data.path=../shared/datasets/cifar10-jpeg.zip
Variants: `epochs=N` (default 1000), `runlocal`.

EXPECTED: solo-learn reports ≈ 92.1 % linear top-1 after 1000 epochs (with
its loss scaled by 0.1, which is not done here).

`:runlocal` trains 21 steps (5 epochs of 4) on 256 synthetic 32 px images
with a ResNet-10/8 and 128-wide heads (a CPU smoke run); `:runlocal,epochs=N`
trains N epochs of 4 steps.
"""

from jaxssl import config_utils


def get_config(arg=None):
  arg = config_utils.parse_arg(arg, runlocal=False, epochs=1000)
  c = config_utils.use_cifar10(config_utils.base_config())
  c.method = "barlow_twins"
  c.batch_size = 256
  c.epochs = arg.epochs
  c.log_every = 50
  c.augment.preset = "byol"
  c.augment.blur = False
  config_utils.set_head(c.head, num_layers=3, hidden_dim=2048, out_dim=2048,
                        last_bn="none")
  c.loss.barlow_lambda = 5.1e-3
  c.optimizer.name = "lars"
  c.optimizer.lr_in_momentum = False
  c.optimizer.trust_coefficient = 0.02
  c.optimizer.base_lr = 0.3
  c.optimizer.weight_decay = 1e-4
  c.optimizer.warmup_epochs = 10.0
  if arg.runlocal:
    config_utils.shrink_for_cpu(c, keep=arg.given)
  return c
