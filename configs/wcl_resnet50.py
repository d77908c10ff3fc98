r"""WCL, ResNet-50, ImageNet, batch 4096 (Zheng et al. 2021).

The reference (mingkai-zheng/WCL, `wcl.py`, `network/wcl.py`,
`util/LARS.py`, `data/augmentation.py`; 32 GPUs × 128): two heads of
2048 → 4096 → 4096 → 256 (BN + ReLU after the hidden layers), τ 0.1 for both
losses; LARS with trust 0.001 on ‖g + wd·p‖ (no ε), the rate applied
outside the momentum 0.9, weight decay 1e-6, neither on biases and
BatchNorm parameters; rate 0.075·√B (4.8 at B = 4096), 10 warm-up epochs
from 0 then cosine to 0 over the rest; BatchNorm over the global batch
(`SyncBatchNorm`); MoCo v2's augmentation (colour 0.5, crop area 0.2–1,
blur) for the first 10 epochs, SimCLR's (colour 1.0, crop area 0.08–1,
blur) after; full batches only (`drop_last`: `steps_rule='floor'`).
Views are ImageNet mean/std-normalised (`augment.normalize='imagenet'`), as
the reference's `transforms.Normalize`.
Each residual block's last BatchNorm γ starts at 1, as the reference's
ResNet (`model.zero_init_residual=False`).
Linear evaluation: `configs/linear_eval.py:protocol=wcl`,
the reference's script behind the EXPECTED figures.

COMMAND (TPU v3-32 / v4-32 VM, all hosts):
  python -m jaxssl.main --distributed --config=configs/wcl_resnet50.py \
      --workdir=gs://BUCKET/wcl_r50_100ep \
      --config.data.data_dir=gs://BUCKET/tensorflow_datasets
Variants: `epochs=N` (100 default; the reference's scripts run 100, 200 and
800), `paper_head` (the paper's 2048 hidden / 128 out instead of the
reference's 4096 / 256), `multicrop` (the paper's kNN multi-crop: 2 × 224 +
6 × 96 px crops, SwAV's sizes and areas; no reference implementation, see
`jaxssl/methods/wcl.py`), `runlocal`.

EXPECTED (ImageNet top-1, ResNet-50): linear evaluation 68.5 % at 100
epochs and 70.5 % at 200 (the reference README; the paper's 2048/128 heads
68.1 % and 70.3 %); the 800-epoch script has no published number in the
README. Semi-supervised fine-tuning with 1 % / 10 % of the labels: 65.0 % /
72.0 % (the paper's abstract). Not measured with jaxssl.

`:runlocal` trains 20 steps (5 epochs of 4) on 256 synthetic 32 px images
with a ResNet-10/8 and 128-wide heads; the early augmentation covers its
first epoch.
"""

from jaxssl import config_utils


def get_config(arg=None):
  arg = config_utils.parse_arg(arg, runlocal=False, epochs=100,
                               paper_head=False, multicrop=False)
  c = config_utils.use_imagenet(config_utils.base_config())
  c.method = "wcl"
  # The reference's ResNet starts each block's last BN γ at 1.
  c.model.zero_init_residual = False
  c.steps_rule = "floor"
  c.batch_size = 4096
  c.epochs = arg.epochs
  c.log_every = 100
  c.augment.preset = "simclr_v2"
  c.augment.normalize = "imagenet"  # the reference's transforms.Normalize
  c.augment.color_strength = 1.0
  c.augment.blur = True
  c.augment.early_epochs = 10.0
  c.augment.early_color_strength = 0.5
  c.augment.early_min_crop_area = 0.2
  hidden, out = (2048, 128) if arg.paper_head else (4096, 256)
  config_utils.set_head(c.head, num_layers=3, hidden_dim=hidden, out_dim=out,
                        last_bn="none")
  c.loss.temperature = 0.1
  if arg.multicrop:
    c.augment.preset = "multicrop"
    # SwAV's local crop areas, explicit so that the early epochs' minimum
    # crop area (0.2) applies to the global crops only.
    c.augment.local_crop_area = (0.05, 0.14)
    c.loss.knn_multicrop = True
    c.loss.knn_positives = 2
  c.optimizer.name = "lars"
  c.optimizer.base_lr = 0.075
  c.optimizer.lr_scaling = "sqrt"
  c.optimizer.momentum = 0.9
  c.optimizer.trust_coefficient = 1e-3
  c.optimizer.trust_ratio = "lars"
  c.optimizer.lr_in_momentum = False
  c.optimizer.weight_decay = 1e-6
  c.optimizer.decay_mask = "kernels"
  c.optimizer.warmup_epochs = 10.0
  c.optimizer.warmup_start_lr = 0.0
  c.optimizer.final_lr = 0.0
  if arg.runlocal:
    config_utils.shrink_for_cpu(c, keep=arg.given)
    c.augment.early_epochs = 1.0
  return c
