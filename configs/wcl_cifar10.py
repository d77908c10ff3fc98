r"""WCL, ResNet-18 (CIFAR stem), CIFAR-10, batch 512, 200 epochs.

The WCL reference trains ImageNet only, so this recipe is assembled: the
optimisation and views of `configs/simclr_cifar10.py` (SimCLR's CIFAR-10
settings, Chen et al. 2020 §B.9: batch 512, LARS 1.0·B/256, weight decay
1e-4, 10 warm-up epochs then cosine, colour strength 0.5, no blur, 32 px)
with WCL's method and LARS form (`jaxssl/methods/wcl.py`): two heads with
the paper's widths, 512 → 2048 → 2048 → 128, τ 0.1 for both losses, the
rate outside the momentum, trust 0.001, biases and BatchNorm excluded. No
augmentation schedule (`augment.early_epochs=0`): at colour strength 0.5
MoCo v2's augmentation differs from these views only in its 0.2 minimum
crop area and its blur (p 0.5, which 32 px images do without).
Each residual block's last BatchNorm γ starts at 1, as the reference's
ResNet (`model.zero_init_residual=False`).

COMMAND (one GPU; TFDS cifar10, or the JPEG zip with the two last flags):
  python -m jaxssl.main --config=configs/wcl_cifar10.py \
      --workdir=/tmp/wcl_cifar10 \
      --config.data.source=files \
      --config.data.path=../shared/datasets/cifar10-jpeg.zip
Variants: `epochs=N` (default 200), `runlocal`.

EXPECTED: no published CIFAR-10 figure for this recipe (the reference and
its README are ImageNet-only). What to compare with: SimCLR at the same
recipe, kNN top-1 ≈ 0.848 after 200 epochs (lightly's benchmark,
ResNet-18); WCL's weak labels should raise it (`purity_1`/`purity_2` in the
logs show how often the graph joins images of one class).

`:runlocal` trains 20 steps (5 epochs of 4) on 256 synthetic 32 px images
with a ResNet-10/8 and 128-wide heads (a CPU smoke run).
"""

from jaxssl import config_utils


def get_config(arg=None):
  arg = config_utils.parse_arg(arg, runlocal=False, epochs=200)
  c = config_utils.use_cifar10(config_utils.base_config())
  c.method = "wcl"
  # The reference's ResNet starts each block's last BN γ at 1.
  c.model.zero_init_residual = False
  c.steps_rule = "floor"
  c.batch_size = 512
  c.epochs = arg.epochs
  c.log_every = 50
  c.augment.preset = "simclr_v2"
  c.augment.color_strength = 0.5
  c.augment.blur = False
  c.augment.early_epochs = 0.0
  config_utils.set_head(c.head, num_layers=3, hidden_dim=2048, out_dim=128,
                        last_bn="none")
  c.loss.temperature = 0.1
  c.optimizer.name = "lars"
  c.optimizer.base_lr = 1.0
  c.optimizer.lr_scaling = "linear"
  c.optimizer.momentum = 0.9
  c.optimizer.trust_coefficient = 1e-3
  c.optimizer.lr_in_momentum = False
  c.optimizer.weight_decay = 1e-4
  c.optimizer.decay_mask = "kernels"
  c.optimizer.warmup_epochs = 10.0
  if arg.runlocal:
    config_utils.shrink_for_cpu(c, keep=arg.given)
  return c
