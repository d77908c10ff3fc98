r"""BYOL, ResNet-18 (CIFAR stem), CIFAR-10, batch 256.

The CIFAR-10 settings of solo-learn's BYOL (da Costa et al. 2022): LARS
(η 0.02, rate outside the buffer, biases and BN excluded), rate 1.0·B/256,
weight decay 1e-5, 10 warm-up epochs, τ 0.99 → 1, projector and predictor
4096 → 256, BYOL augmentations at 32 px without blur.

COMMAND (one GPU; TFDS cifar10, or the JPEG zip with the two last flags):
  python -m jaxssl.main --config=configs/byol_cifar10.py \
      --workdir=/tmp/byol_cifar10 \
      --config.data.source=files \
      --config.data.path=../shared/datasets/cifar10-jpeg.zip
Variants: `epochs=N` (default 1000), `runlocal`.

EXPECTED: solo-learn reports ≈ 92.6 % linear top-1 after 1000 epochs; lightly's
benchmark (ResNet-18, batch 512) kNN top-1 0.868 after 200 epochs.

`:runlocal` trains 20 steps (5 epochs of 4) on 256 synthetic 32 px images
with a ResNet-10/8 and 128-wide heads (a CPU smoke run); `:runlocal,epochs=N`
trains N epochs of 4 steps.
"""

from jaxssl import config_utils


def get_config(arg=None):
  arg = config_utils.parse_arg(arg, runlocal=False, epochs=1000)
  c = config_utils.use_cifar10(config_utils.base_config())
  c.method = "byol"
  c.steps_rule = "floor"
  c.batch_size = 256
  c.epochs = arg.epochs
  c.log_every = 50
  c.augment.preset = "byol"
  c.augment.blur = False
  # The reference's MLP: Linear → BN → ReLU → Linear without bias.
  config_utils.set_head(c.head, num_layers=2, hidden_dim=4096, out_dim=256,
                        last_bn="none", bias=False)
  config_utils.set_head(c.predictor, num_layers=2, hidden_dim=4096,
                        out_dim=256, last_bn="none", bias=False)
  c.target.base_momentum = 0.99
  c.optimizer.name = "lars"
  c.optimizer.lr_in_momentum = False
  c.optimizer.trust_coefficient = 0.02
  c.optimizer.base_lr = 1.0
  c.optimizer.weight_decay = 1e-5
  c.optimizer.warmup_epochs = 10.0
  if arg.runlocal:
    config_utils.shrink_for_cpu(c, keep=arg.given)
  return c
