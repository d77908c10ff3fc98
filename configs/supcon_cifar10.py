r"""SupCon, ResNet-18 (CIFAR stem), CIFAR-10, batch 1024, 1000 epochs.

The reference's CIFAR command (HobbitLong/SupContrast README, "Supervised
Contrastive Learning", `main_supcon.py --batch_size 1024 --learning_rate 0.5
--temp 0.1 --cosine`): SGD, momentum 0.9, weight decay 1e-4 on every
parameter, rate 0.5 at batch 1024 (0.125·B/256), warmed up from 0.01 over
10 epochs (the script does so for batches above 256), cosine to
0.5·0.1³ = 5e-4; τ 0.1 with the default τ_base 0.07 (the loss is scaled
by 0.1/0.07); head 2 linear layers (d → d → 128, ReLU, biases, no BN);
views: random-resized crop 32 px of area 0.2–1, flip, colour jitter
(0.4, 0.4, 0.4, 0.1) with p 0.8, grayscale 0.2, no blur.

Deviations: ResNet-18 with the CIFAR stem (3×3 stride 1, no max-pool) like
the other CIFAR configs, where the reference's README row is a ResNet-50;
BatchNorm over the global batch (the reference's `DataParallel` splits it
per GPU); the reference sets its cosine per epoch over the whole run (the
warm-up ends at that curve's epoch-10 value), here per step over the
epochs after the warm-up; full batches only (`steps_rule='floor'`).
Each residual block's last BatchNorm γ starts at 1, as the reference's
ResNet (`model.zero_init_residual=False`).

COMMAND (one GPU; TFDS cifar10, or the JPEG zip with the two last flags):
  python -m jaxssl.main --config=configs/supcon_cifar10.py \
      --workdir=/tmp/supcon_cifar10 \
      --config.data.source=files \
      --config.data.path=../shared/datasets/cifar10-jpeg.zip
Variants: `epochs=N` (default 1000), `runlocal`.

EXPECTED: the reference README reports 96.0 % linear top-1 on CIFAR-10 with
a ResNet-50 (SupCon; cross-entropy 95.0 %, SimCLR 93.6 %). Not measured
with jaxssl; a ResNet-18 is expected to land lower.

`:runlocal` trains 20 steps (5 epochs of 4) on 256 synthetic 32 px
labelled images with a ResNet-10/8 (a CPU smoke run).
"""

from jaxssl import config_utils


def get_config(arg=None):
  arg = config_utils.parse_arg(arg, runlocal=False, epochs=1000)
  c = config_utils.use_cifar10(config_utils.base_config())
  c.method = "supcon"
  # The reference's ResNet starts each block's last BN γ at 1.
  c.model.zero_init_residual = False
  c.steps_rule = "floor"
  c.batch_size = 1024
  c.epochs = arg.epochs
  c.log_every = 50
  c.augment.preset = "simclr_v2"
  c.augment.color_strength = 0.5
  c.augment.blur = False
  c.augment.min_crop_area = 0.2
  config_utils.set_head(c.head, num_layers=2, hidden_dim=0, out_dim=128,
                        last_bn="none", use_bn=False)
  c.loss.temperature = 0.1
  c.loss.base_temperature = 0.07
  c.optimizer.name = "sgd"
  c.optimizer.base_lr = 0.125  # 0.5 at batch 1024
  c.optimizer.lr_scaling = "linear"
  c.optimizer.momentum = 0.9
  c.optimizer.nesterov = False
  c.optimizer.weight_decay = 1e-4
  c.optimizer.decay_mask = "all"
  c.optimizer.schedule = "warmup_cosine"
  c.optimizer.warmup_epochs = 10.0
  c.optimizer.warmup_start_lr = 0.01
  c.optimizer.final_lr = 5e-4
  if arg.runlocal:
    config_utils.shrink_for_cpu(c, keep=arg.given)
  return c
