r"""SwAV, ResNet-18 (CIFAR stem), CIFAR-10, batch 256, 2 × 32 + 6 × 16 crops.

A CIFAR adaptation of the reference's batch-256 recipe (Caron et al.
2020, https://arxiv.org/abs/2006.09882), with local crops of 16 px as
solo-learn and lightly shrink multi-crop: LARS (apex LARC's trust ratio,
every parameter, trust 0.001) at 0.6·B/256, cosine to 1/1000 of it, weight decay 1e-6;
projection 2048 → 128, 3000 prototypes frozen for the first epoch; τ 0.1,
Sinkhorn ε 0.05 × 3 over the global batch; crop areas 0.14–1 and 0.05–0.14,
SimCLR's colour distortion at strength 0.5, no blur; no queue (50k images:
the queue is for small batches of large datasets; set loss.queue_size and
loss.queue_start_epoch to use one).
Each residual block's last BatchNorm γ starts at 1, as the reference's
ResNet (`model.zero_init_residual=False`).

COMMAND (one GPU; TFDS cifar10, or the JPEG zip with the two last flags):
  python -m jaxssl.main --config=configs/swav_cifar10.py \
      --workdir=/tmp/swav_cifar10 \
      --config.data.source=files \
      --config.data.path=../shared/datasets/cifar10-jpeg.zip
Variants: `epochs=N` (default 200), `runlocal`.

EXPECTED: not measured in this repository yet; solo-learn reports ≈ 89 %
linear top-1 for SwAV with a ResNet-18 after 1000 epochs (its own recipe).

`:runlocal` trains 20 steps (5 epochs of 4) on 256 synthetic 32 px images
with a ResNet-10/8, 2 local crops of 16 px, a 128-wide head and 64
prototypes.
"""

from jaxssl import config_utils


def get_config(arg=None):
  arg = config_utils.parse_arg(arg, runlocal=False, epochs=200)
  c = config_utils.use_cifar10(config_utils.base_config())
  c.method = "swav"
  # The reference's ResNet starts each block's last BN γ at 1.
  c.model.zero_init_residual = False
  c.steps_rule = "floor"
  c.batch_size = 256
  c.epochs = arg.epochs
  c.log_every = 50
  c.augment.preset = "multicrop"
  c.augment.color_strength = 0.5
  c.augment.blur = False
  c.augment.local_size = 16
  config_utils.set_head(c.head, num_layers=2, hidden_dim=2048, out_dim=128,
                        last_bn="none")
  c.loss.temperature = 0.1
  c.loss.num_prototypes = 3000
  c.loss.queue_size = 0
  c.optimizer.name = "lars"
  c.optimizer.trust_coefficient = 1e-3
  c.optimizer.trust_ratio = "larc"
  c.optimizer.lr_in_momentum = False
  c.optimizer.decay_mask = "all"
  c.optimizer.base_lr = 0.6
  c.optimizer.warmup_epochs = 0.0
  c.optimizer.final_lr = 0.6 * c.batch_size / 256 / 1000
  c.optimizer.weight_decay = 1e-6
  c.optimizer.freeze_pattern = "^predictor/"
  c.optimizer.freeze_epochs = 1.0
  if arg.runlocal:
    config_utils.shrink_for_cpu(c, keep=arg.given)
    c.augment.local_crops = 2
    c.loss.num_prototypes = 64
  return c
