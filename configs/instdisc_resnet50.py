r"""InstDisc, ResNet-50, ImageNet, batch 256, 200 epochs (Wu et al. 2018,
https://arxiv.org/abs/1805.01978).

The reference's settings (zhirongw/lemniscate.pytorch `main.py`): SGD,
rate 0.03 at batch 256 (0.03·B/256), momentum 0.9, weight decay 1e-4 on
every parameter, ×0.1 at epochs 120 and 160 (`multistep`, set per
epoch); one linear layer 2048 → 128 (with bias) then L2 normalisation;
a memory bank of one row per image, sharded over the devices; NCE with
K = 4096 noise rows per example, τ 0.07, bank momentum 0.5, Z fixed on
the first step (`jaxssl/methods/instdisc.py`); one view: crop area 0.2–1,
grayscale 0.2, colour jitter (0.4, 0.4, 0.4, 0.4) always, flip, ImageNet
normalisation (`augment.preset='instdisc'`). The ResNet's last BN γ of
each block starts at 1 (torchvision's ResNet, `zero_init_residual=False`).
Deviations: the jitter comes before the grayscale (this script greys
first); the reference's loader keeps the last partial batch
(`steps_rule='floor'` drops it).
Linear evaluation: `configs/linear_eval.py:protocol=moco` (the paper
trains linear SVMs; MoCo's protocol is the one later papers quote
InstDisc's 54.0 % under).

COMMAND (a TPU VM or GPU host; TFDS imagenet2012 prepared in data_dir):
  python -m jaxssl.main --config=configs/instdisc_resnet50.py \
      --workdir=gs://BUCKET/instdisc_r50 --config.data.data_dir=gs://BUCKET/tfds
Variants: `epochs=N` (default 200), `softmax` (the full softmax over the
bank instead of NCE, `loss.nce_k=0`), `runlocal`.

EXPECTED (paper, Table 2 and §4.1): ResNet-50 top-1 54.0 % (linear
classifier on the pooled features), 46.5 % weighted kNN (k = 200) on the
memory bank (`eval/bank_knn_top1_k200` here, `config.eval.bank_knn_ks`).

`:runlocal` trains 21 steps (5 epochs of 4) on 256 synthetic 32 px images
with a ResNet-10/8, K = 64 noise rows and τ 0.5.
"""

from jaxssl import config_utils


def get_config(arg=None):
  arg = config_utils.parse_arg(arg, runlocal=False, epochs=200,
                               softmax=False)
  c = config_utils.use_imagenet(config_utils.base_config())
  c.method = "instdisc"
  c.model.zero_init_residual = False  # torchvision's ResNet
  c.steps_rule = "floor"
  c.batch_size = 256
  c.epochs = arg.epochs
  c.log_every = 100
  c.augment.preset = "instdisc"
  config_utils.set_head(c.head, num_layers=1, hidden_dim=0, out_dim=128,
                        last_bn="none", use_bn=False)
  c.loss.temperature = 0.07
  c.loss.nce_k = 0 if arg.softmax else 4096
  c.loss.bank_momentum = 0.5
  config_utils.set_sgd(c.optimizer, base_lr=0.03, weight_decay=1e-4,
                       schedule="multistep", decay_epochs=(120.0, 160.0))
  c.eval.knn_temperature = 0.07
  # The paper's kNN on the memory bank (k = 200, τ = the loss's).
  c.eval.bank_knn_ks = (200,)
  if arg.runlocal:
    config_utils.shrink_for_cpu(c, keep=arg.given)
    if not arg.softmax:
      c.loss.nce_k = 64
    # The synthetic images of one class are near-duplicates: at a low τ the
    # loss climbs as their rows meet as noise; τ 0.5 keeps a smoke run's
    # loss falling.
    c.loss.temperature = 0.5
  c.eval.bank_knn_temperature = c.loss.temperature
  return c
