r"""MoCo v2, ResNet-18 (CIFAR stem), CIFAR-10, batch 512, 200 epochs.

The official CIFAR-10 demo of MoCo (facebookresearch/moco, branch
`colab-notebook`, `moco_cifar10_demo.ipynb`, with `--cos`): SGD, rate
0.06 at batch 512 (0.03·B/256), momentum 0.9, weight decay 5e-4 (every
parameter), cosine per epoch; a queue of 4096 keys (the demo found it
saturates there; lightly's benchmark uses 4096 too), key-encoder momentum
0.99, τ 0.1, asymmetric loss. MoCo v2's MLP head (512 → 512 → 128, no
BatchNorm) where the demo has a linear one; the demo's augmentation
(jitter 0.4, 0.4, 0.4, 0.1 with p 0.8, grayscale 0.2, crop area 0.08–1,
flip, no blur) at 32 px. BatchNorm is global here (the demo splits it in 8
and shuffles: `--config.model.bn_group_size=1
--config.target.shuffle_bn=True` on 8 devices).
Each residual block's last BatchNorm γ starts at 1, as the reference's
ResNet (`model.zero_init_residual=False`).

COMMAND (one GPU; TFDS cifar10, or the JPEG zip with the two last flags):
  python -m jaxssl.main --config=configs/mocov2_cifar10.py \
      --workdir=/tmp/mocov2_cifar10 \
      --config.data.source=files \
      --config.data.path=../shared/datasets/cifar10-jpeg.zip
Variants: `epochs=N` (default 200), `runlocal`.

EXPECTED: the demo reports kNN top-1 (k = 200) of 82.6 % after 200
epochs, 86.3 % after 400 and 88.7 % after 800 (asymmetric loss, linear
head; its kNN uses the 128-d output of the query encoder, ours the
encoder's features); solo-learn's MoCo V2+ (symmetric, 1000 epochs) ≈ 93 % linear top-1.

`:runlocal` trains 48 steps (12 epochs of 4) on 256 synthetic 32 px images
with a ResNet-10/8, a 128-wide head, a queue of 256 keys and key momentum
0.99.
"""

from jaxssl import config_utils


def get_config(arg=None):
  arg = config_utils.parse_arg(arg, runlocal=False, epochs=200)
  c = config_utils.use_cifar10(config_utils.base_config())
  c.method = "moco"
  # The reference's ResNet starts each block's last BN γ at 1.
  c.model.zero_init_residual = False
  c.steps_rule = "floor"
  c.batch_size = 512
  c.epochs = arg.epochs
  c.log_every = 50
  c.augment.preset = "simclr_v2"
  c.augment.color_strength = 0.5
  c.augment.blur = False
  config_utils.set_head(c.head, num_layers=2, hidden_dim=0, out_dim=128,
                        last_bn="none", use_bn=False)
  c.loss.temperature = 0.1
  c.loss.queue_size = 4096
  c.target.base_momentum = 0.99
  c.target.momentum_schedule = "constant"
  c.target.init = "copy"
  config_utils.set_sgd(c.optimizer, base_lr=0.03, weight_decay=5e-4,
                       schedule="epoch_cosine")
  c.eval.knn_temperature = 0.1  # the demo's kNN monitor
  if arg.runlocal:
    # 48 steps: the first 4 fill the queue, learning shows after them; 0.999
    # would barely move the key encoder in a smoke run.
    config_utils.shrink_for_cpu(c, keep=arg.given, epochs=12)
    c.target.base_momentum = 0.99
  return c
