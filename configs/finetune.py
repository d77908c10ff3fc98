r"""Semi-supervised fine-tuning on 1 % or 10 % of the labels (SimCLR v2).

Chen et al. 2020b (https://arxiv.org/abs/2006.10029, §B.3), with the
reference's fine-tuning command (google-research/simclr README:
`--fine_tune_after_block=-1 --zero_init_logits_layer=True
--ft_proj_selector=1 --optimizer=lars --learning_rate=0.005
--learning_rate_scaling=sqrt --weight_decay=0 --train_batch_size=1024
--warmup_epochs=0 --global_bn=True`): fine-tune the encoder and the first
layer of the projection head (`head_layers=1`, its output after BN + ReLU)
with a new zero-initialised linear classifier, LARS at 0.005·√B (0.16 at
B = 1024) on a cosine without warm-up, the classifier outside LARS's trust
ratio (as `head_supervised` there), no weight decay, batch 1024, 60 epochs
for 1 % and 30 for 10 %, random crop + flip, global BatchNorm. The run
checkpoints (`config.checkpointing`) and resumes; it ends by writing
`classifier.msgpack` for `jaxssl.distill`.
ImageNet uses TFDS `imagenet2012_subset/1pct` and `/10pct`; other datasets
a deterministic class-balanced subset of the given fraction.

COMMAND (after pretraining into gs://BUCKET/simclr_r50_v2):
  python -m jaxssl.linear_eval --config=configs/finetune.py:fraction=1 \
      --config.checkpoint=gs://BUCKET/simclr_r50_v2 \
      --workdir=gs://BUCKET/simclr_r50_v2_ft1
Variants: `fraction=1` (default) or `fraction=10`, `head_layers=N`,
`runlocal`.

EXPECTED (SimCLR v2 Table 1 as in the reference README, 3-layer head,
ImageNet top-1 with 1 % / 10 % of the labels): R50 (1×) 57.9 / 68.4,
R50 (1×+SK) 64.5 / 72.1, R50 (2×+SK) 70.6 / 77.0, R152 (2×+SK) 74.2 / 79.4,
R152 (3×+SK) 74.9 / 80.1 (pretrain with `configs/simclr_resnet50.py:v2`
and its `depth=`, `width=`, `sk` variants).

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
