r"""CMC (L and ab), two half-width ResNet-18s (CIFAR stem), CIFAR-10,
batch 128 (Tian et al. 2019, https://arxiv.org/abs/1906.05849).

The reference has no CIFAR script; this carries its ResNet recipe
(`configs/cmc_resnet50.py`) to CIFAR-10 with InstDisc's CIFAR settings:
one half-width ResNet-18 per view (L; ab) with a linear layer to 128 and
L2 normalisation, SGD 0.03 at batch 128, weight decay 5e-4, 200 epochs,
×0.1 at 80, 120 and 160; NCE with K = 4096 per example against each
view's bank, τ 0.07, bank momentum 0.5; one 32 px crop (area 0.2–1) with
flip, in Lab on the device.

COMMAND (one GPU; TFDS cifar10, or the JPEG zip with the two last flags):
  python -m jaxssl.main --config=configs/cmc_cifar10.py \
      --workdir=/tmp/cmc_cifar10 \
      --config.data.source=files \
      --config.data.path=../shared/datasets/cifar10-jpeg.zip
Variants: `epochs=N` (default 200), `softmax`, `runlocal`.

EXPECTED: no published CIFAR-10 figure for CMC with Lab views; compare
with `configs/instdisc_cifar10.py` in BENCHMARKS.md.

`:runlocal` trains 21 steps (5 epochs of 4) on 256 synthetic 32 px images
with two ResNet-10/8s, K = 64 and τ 0.5.
"""

from jaxssl import config_utils


def get_config(arg=None):
  arg = config_utils.parse_arg(arg, runlocal=False, epochs=200,
                               softmax=False)
  c = config_utils.use_cifar10(config_utils.base_config())
  c.method = "cmc"
  c.model.width = 0.5
  c.model.zero_init_residual = False
  c.steps_rule = "floor"
  c.batch_size = 128
  c.epochs = arg.epochs
  c.log_every = 50
  c.augment.preset = "cmc"
  config_utils.set_head(c.head, num_layers=1, hidden_dim=0, out_dim=128,
                        last_bn="none", use_bn=False)
  c.loss.temperature = 0.07
  c.loss.nce_k = 4096
  c.loss.bank_momentum = 0.5
  c.loss.cmc_softmax = arg.softmax
  config_utils.set_sgd(c.optimizer, base_lr=0.06, weight_decay=5e-4,
                       schedule="multistep",
                       decay_epochs=(80.0, 120.0, 160.0))
  c.eval.knn_temperature = 0.07
  if arg.runlocal:
    config_utils.shrink_for_cpu(c, keep=arg.given)
    c.loss.nce_k = 64
    c.loss.temperature = 0.5  # see configs/instdisc_cifar10.py
  return c
