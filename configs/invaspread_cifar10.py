r"""InvaSpread, ResNet-18 (CIFAR stem), CIFAR-10, batch 128 (Ye et al. 2019,
https://arxiv.org/abs/1904.03436).

The reference's CIFAR-10 script (mangye16/Unsupervised_Embedding_Learning
`demo_seen.py`): SGD, rate 0.03 at batch 128 (0.06·B/256), momentum 0.9,
weight decay 5e-4 on every parameter, ×0.1 from epoch 120, ×0.05 from 160,
×0.01 from 200 (`multistep` with `decay_values`), epochs 0–300; a linear
layer 512 → 128 then L2 normalisation; `BatchCriterion` with τ 0.1 and
negM 1 over the batch's 2 × 128 features (`jaxssl/methods/invaspread.py`);
two views, each a crop of area 0.2–1 at 32 px, jitter (0.4, 0.4, 0.4, 0.4)
always, grayscale 0.2, flip (`augment.preset='invaspread'`).
Deviation: ImageNet's normalisation statistics (CIFAR's in the script).

COMMAND (one GPU; TFDS cifar10, or the JPEG zip with the two last flags):
  python -m jaxssl.main --config=configs/invaspread_cifar10.py \
      --workdir=/tmp/invaspread_cifar10 \
      --config.data.source=files \
      --config.data.path=../shared/datasets/cifar10-jpeg.zip
Variants: `epochs=N` (default 300), `runlocal`.

EXPECTED: the paper's CIFAR-10 weighted kNN (k = 200, on the 128-d
features) with ResNet-18 is 83.6 % (Table 1; InstDisc 80.8 % there).

`:runlocal` trains 21 steps (5 epochs of 4) on 256 synthetic 32 px images
with a ResNet-10/8.
"""

from jaxssl import config_utils


def get_config(arg=None):
  arg = config_utils.parse_arg(arg, runlocal=False, epochs=300)
  c = config_utils.use_cifar10(config_utils.base_config())
  c.method = "invaspread"
  c.model.zero_init_residual = False  # the reference's ResNet-18
  c.steps_rule = "floor"  # the reference's loader drops the last batch
  c.batch_size = 128
  c.epochs = arg.epochs
  c.log_every = 50
  c.augment.preset = "invaspread"
  config_utils.set_head(c.head, num_layers=1, hidden_dim=0, out_dim=128,
                        last_bn="none", use_bn=False)
  c.loss.temperature = 0.1
  c.loss.negative_weight = 1.0
  config_utils.set_sgd(c.optimizer, base_lr=0.06, weight_decay=5e-4,
                       schedule="multistep",
                       decay_epochs=(120.0, 160.0, 200.0),
                       decay_values=(0.1, 0.05, 0.01))
  c.eval.knn_temperature = 0.1
  if arg.runlocal:
    config_utils.shrink_for_cpu(c, keep=arg.given)
  return c
