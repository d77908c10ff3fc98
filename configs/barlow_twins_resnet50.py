r"""Barlow Twins, ResNet-50, ImageNet, batch 2048 (Zbontar et al. 2021, §4).

Projector 8192-8192-8192, λ = 5e-3, cross-correlation over the global batch,
LARS (rate outside the buffer, biases and BN excluded from decay and trust
ratio) at 0.2·B/256 for kernels and 0.0048·B/256 for biases and BN, weight
decay 1.5e-6, 10 warm-up epochs then cosine, BYOL augmentations.
Linear evaluation: `configs/linear_eval.py:protocol=barlow_twins`,
the reference's script behind the EXPECTED figures.

COMMAND (TPU v3-32 / v4-32 VM, all hosts):
  python -m jaxssl.main --distributed --config=configs/barlow_twins_resnet50.py \
      --workdir=gs://BUCKET/barlow_twins_r50 \
      --config.data.data_dir=gs://BUCKET/tensorflow_datasets
Variants: `epochs=N` (default 1000), `runlocal`.

EXPECTED (paper Table 1, linear evaluation top-1 on ImageNet): 73.2 % after
1000 epochs. Differs from the reference: the cosine decays to 0, not to
1/1000 of the peak.

`:runlocal` trains 21 steps (5 epochs of 4) on 256 synthetic 32 px images
with a ResNet-10/8 and 128-wide heads (a CPU smoke run); `:runlocal,epochs=N`
trains N epochs of 4 steps.
"""

from jaxssl import config_utils


def get_config(arg=None):
  arg = config_utils.parse_arg(arg, runlocal=False, epochs=1000)
  c = config_utils.use_imagenet(config_utils.base_config())
  c.method = "barlow_twins"
  c.batch_size = 2048
  c.epochs = arg.epochs
  c.log_every = 100
  c.augment.preset = "byol"
  config_utils.set_head(c.head, num_layers=3, hidden_dim=8192, out_dim=8192,
                        last_bn="none")
  c.loss.barlow_lambda = 5e-3
  c.optimizer.name = "lars"
  c.optimizer.lr_in_momentum = False
  c.optimizer.base_lr = 0.2
  c.optimizer.excluded_lr_scale = 0.0048 / 0.2
  c.optimizer.weight_decay = 1.5e-6
  c.optimizer.warmup_epochs = 10.0
  if arg.runlocal:
    config_utils.shrink_for_cpu(c, keep=arg.given)
  return c
