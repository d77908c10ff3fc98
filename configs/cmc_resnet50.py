r"""CMC (L and ab), two half-width ResNet-50s, ImageNet (Tian et al. 2019,
https://arxiv.org/abs/1906.05849).

The reference's ResNet settings (HobbitLong/CMC `train_CMC.py --model
resnet50v1`): one ResNet-50 of half width per view (L: 1 channel, ab: 2),
each with a linear layer to 128 and L2 normalisation; batch 128 (its
README's 4-GPU command), SGD 0.03 (0.06·B/256), momentum 0.9, weight decay
1e-4 on every parameter, 240 epochs, ×0.1 at 120, 160 and 200; a memory
bank per view, NCE with 16,384 noise rows per example (`nce_k`'s default),
τ 0.07, bank momentum 0.5 (`jaxssl/methods/cmc.py`); one crop of area
0.2–1 with flip, converted to Lab on the device and normalised with the
reference's Lab ranges (`augment.preset='cmc'`). Each block's last BN γ
starts at 1 (the reference's ResNet). Variant `softmax`: CMC's later
softmax cross-entropy (`loss.cmc_softmax=True`).
Linear evaluation: `configs/linear_eval.py:protocol=moco` (the README
asks for a rate of 30 on the concatenated features, as MoCo's script).

COMMAND (a TPU VM or GPU host; TFDS imagenet2012 prepared in data_dir):
  python -m jaxssl.main --config=configs/cmc_resnet50.py \
      --workdir=gs://BUCKET/cmc_r50 --config.data.data_dir=gs://BUCKET/tfds
Variants: `epochs=N` (default 240), `softmax`, `runlocal`.

EXPECTED: the paper's ImageNet linear top-1 for ResNets, as MoCo's
comparison table (He et al. 2020, Table 6) quotes its updated version:
64.1 % for two full-width ResNet-50s on L and ab (47 M parameters, the
reference's `resnet50v2`: `--config.model.width=1.0` here), 68.4 % for
two double-width ones (188 M, `resnet50v3`: `--config.model.width=2.0`).
For this config's half-width pair (`resnet50v1`) the reference README
gives ImageNet-100 only: 75.8 % (softmax-CE, 4096 negatives, YCbCr views).
(The paper's own tables could not be consulted where this was written.)

`:runlocal` trains 21 steps (5 epochs of 4) on 256 synthetic 32 px images
with two ResNet-10/8s, K = 64 and τ 0.5.
"""

from jaxssl import config_utils


def get_config(arg=None):
  arg = config_utils.parse_arg(arg, runlocal=False, epochs=240,
                               softmax=False)
  c = config_utils.use_imagenet(config_utils.base_config())
  c.method = "cmc"
  c.model.width = 0.5  # each view's ResNet-50 ("resnet50v1")
  c.model.zero_init_residual = False
  c.steps_rule = "floor"
  c.batch_size = 128
  c.epochs = arg.epochs
  c.log_every = 100
  c.augment.preset = "cmc"
  config_utils.set_head(c.head, num_layers=1, hidden_dim=0, out_dim=128,
                        last_bn="none", use_bn=False)
  c.loss.temperature = 0.07
  c.loss.nce_k = 16384
  c.loss.bank_momentum = 0.5
  c.loss.cmc_softmax = arg.softmax
  config_utils.set_sgd(c.optimizer, base_lr=0.06, weight_decay=1e-4,
                       schedule="multistep",
                       decay_epochs=(120.0, 160.0, 200.0))
  c.eval.knn_temperature = 0.07
  if arg.runlocal:
    config_utils.shrink_for_cpu(c, keep=arg.given)
    c.loss.nce_k = 64
    c.loss.temperature = 0.5  # see configs/instdisc_cifar10.py
  return c
