r"""Semi-supervised fine-tuning on 1 % or 10 % of the labels (SimCLR v2).

Chen et al. 2020b (https://arxiv.org/abs/2006.10029, §B.3): fine-tune the
encoder and the first layer of the projection head (`head_layers=1`) with a
new linear classifier, LARS at 0.005·√B, no weight decay, batch 1024, 60
epochs for 1 % and 30 for 10 %, random crop + flip, global BatchNorm.
ImageNet uses TFDS `imagenet2012_subset/1pct` and `/10pct`; other datasets
a deterministic class-balanced subset of the given fraction.

COMMAND (after pretraining into gs://BUCKET/simclr_r50_v2):
  python -m jaxssl.linear_eval --config=configs/finetune.py:fraction=1 \
      --config.checkpoint=gs://BUCKET/simclr_r50_v2 \
      --workdir=gs://BUCKET/simclr_r50_v2_ft1
Variants: `fraction=1` (default) or `fraction=10`, `head_layers=N`,
`runlocal`.

EXPECTED (SimCLR v2 Table 1, ResNet-50 1×, 3-layer head): 57.9 % top-1 with
1 % of the labels, 68.4 % with 10 %.

`:runlocal` trains 2 epochs at batch 16 on the fraction of the pretraining
data (a CPU smoke run).
"""

from jaxssl import config_utils
from jaxssl import downstream_config

EPOCHS = {1: 60, 10: 30}


def get_config(arg=None):
  arg = config_utils.parse_arg(arg, runlocal=False, fraction=1, head_layers=1)
  if arg.fraction not in EPOCHS:
    raise ValueError(f"fraction={arg.fraction} is not one of {sorted(EPOCHS)}")
  c = downstream_config.downstream_config(
      mode="finetune", epochs=EPOCHS[arg.fraction], batch_size=1024,
      optimizer="lars", base_lr=0.005, lr_scaling="sqrt",
      runlocal=arg.runlocal, keep=arg.given)
  c.head_layers = arg.head_layers
  c.data.train_fraction = arg.fraction / 100
  if arg.runlocal:
    c.batch_size = 16  # the labelled fraction of 256 images
  return c
