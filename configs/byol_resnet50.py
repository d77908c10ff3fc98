r"""BYOL, ResNet-50, ImageNet, batch 4096 (Grill et al. 2020, §3.3, app. C).

As the DeepMind JAX reference: projector and predictor 4096 → BN → ReLU → 256,
target = EMA of the online encoder + projector with τ from `base` to 1 on a
cosine, LARS with the rate applied to the momentum buffer (biases and BN
excluded from decay and trust ratio), rate base·B/256 with 10 warm-up
epochs then cosine, E·N//B steps, the asymmetric BYOL augmentations.
Linear evaluation: `configs/linear_eval.py:protocol=byol`,
the reference's script behind the EXPECTED figures.

COMMAND (TPU v3-32 / v4-32 VM, all hosts):
  python -m jaxssl.main --distributed --config=configs/byol_resnet50.py \
      --workdir=gs://BUCKET/byol_r50_300ep \
      --config.data.data_dir=gs://BUCKET/tensorflow_datasets
Variants: `epochs=300` (default: lr 0.3, wd 1e-6, τ 0.99) or `epochs=1000`
(lr 0.2, wd 1.5e-6, τ 0.996; also used for any epochs ≥ 1000, the 300-epoch
values below), `runlocal`.

EXPECTED (paper and reference README, linear evaluation top-1 on ImageNet):
300 epochs 72.5 %, 1000 epochs 74.3 %.

`:runlocal` trains 20 steps (5 epochs of 4) on 256 synthetic 32 px images
with a ResNet-10/8 and 128-wide heads (a CPU smoke run); `:runlocal,epochs=N`
trains N epochs of 4 steps.
"""

from jaxssl import config_utils

# epochs: (base lr per 256, weight decay, base τ), from the reference.
PRESETS = {300: (0.3, 1e-6, 0.99), 1000: (0.2, 1.5e-6, 0.996)}


def get_config(arg=None):
  arg = config_utils.parse_arg(arg, runlocal=False, epochs=300)
  base_lr, weight_decay, base_tau = PRESETS[1000 if arg.epochs >= 1000
                                            else 300]
  c = config_utils.use_imagenet(config_utils.base_config())
  c.method = "byol"
  c.steps_rule = "floor"
  c.batch_size = 4096
  c.epochs = arg.epochs
  c.log_every = 100
  c.augment.preset = "byol"
  # The reference's MLP: Linear → BN → ReLU → Linear without bias.
  config_utils.set_head(c.head, num_layers=2, hidden_dim=4096, out_dim=256,
                        last_bn="none", bias=False)
  config_utils.set_head(c.predictor, num_layers=2, hidden_dim=4096,
                        out_dim=256, last_bn="none", bias=False)
  c.target.base_momentum = base_tau
  c.optimizer.name = "lars"
  c.optimizer.lr_in_momentum = False
  c.optimizer.base_lr = base_lr
  c.optimizer.weight_decay = weight_decay
  c.optimizer.warmup_epochs = 10.0
  if arg.runlocal:
    config_utils.shrink_for_cpu(c, keep=arg.given)
  return c
