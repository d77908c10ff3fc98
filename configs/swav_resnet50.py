r"""SwAV, ResNet-50, ImageNet, multi-crop 2 × 224 + 6 × 96.

The reference's scripts (Caron et al. 2020, https://arxiv.org/abs/2006.09882;
facebookresearch/swav `scripts/swav_*ep_pretrain.sh`): batch 4096, LARS
(SGD momentum 0.9 under apex LARC: `optimizer.trust_ratio='larc'`, trust
coefficient 0.001, every parameter, rate applied outside the momentum
buffer) at 4.8 with a 10-epoch warm-up
from 0.3 and a cosine to 0.0048, weight decay 1e-6 on every parameter;
projection 2048 → 128, 3000 prototypes frozen for the first epoch
(`freeze_prototypes_niters` = one epoch); τ 0.1, Sinkhorn ε 0.05 with 3
iterations over the global batch, codes for crops 0 and 1; no queue at
this batch; crop areas 0.14–1 and 0.05–0.14, SimCLR's colour distortion
and blur (p 0.5) on every crop; BatchNorm statistics over groups of 512
images (`model.bn_num_groups` = batch / 512: the scripts' `--sync_bn apex`
groups of 8 GPUs × 64 images); each block's last BN γ starts at 1.
`bs256`: the batch-256 scripts, rate 0.6 → 0.0006 without warm-up and a
queue of 3840 embeddings from epoch 15, BatchNorm over the whole batch.
Views are ImageNet mean/std-normalised (`augment.normalize='imagenet'`), as
the reference's `transforms.Normalize` (whose std 0.228 for 0.229, a
quirk, is not copied).
Linear evaluation: `configs/linear_eval.py:protocol=swav`,
the reference's script behind the EXPECTED figures.

COMMAND (a TPU pod; TFDS imagenet2012 in data_dir):
  python -m jaxssl.main --config=configs/swav_resnet50.py:epochs=400 \
      --workdir=gs://BUCKET/swav_r50 --config.data.data_dir=gs://BUCKET/tfds
Variants: `epochs=N` (default 400), `bs256`, `runlocal`.

EXPECTED (reference, linear top-1 on ImageNet): batch 4096: 72.1 % (100
epochs), 73.9 % (200), 74.6 % (400), 75.3 % (800); batch 256: 72.7 % (200),
74.3 % (400).

`:runlocal` trains 20 steps (5 epochs of 4) on 256 synthetic 32 px images
with a ResNet-10/8, 2 local crops of 16 px, a 128-wide head, 64
prototypes and a queue of 4 batches from epoch 2.
"""

from jaxssl import config_utils


def get_config(arg=None):
  arg = config_utils.parse_arg(arg, runlocal=False, epochs=400, bs256=False)
  c = config_utils.use_imagenet(config_utils.base_config())
  c.method = "swav"
  # The reference's ResNet starts each block's last BN γ at 1.
  c.model.zero_init_residual = False
  c.steps_rule = "floor"
  c.batch_size = 256 if arg.bs256 else 4096
  if not arg.bs256:
    # `--sync_bn apex` with its default process groups of 8 GPUs of 64
    # images: BatchNorm statistics over groups of 512 images (a reference
    # to batch_size: an overridden batch keeps 512 per group; a batch
    # below 512 is one group). The batch-256 scripts synchronise globally.
    c.model.bn_num_groups = c.get_ref("batch_size") // 512
  c.epochs = arg.epochs
  c.log_every = 100
  c.augment.preset = "multicrop"
  c.augment.normalize = "imagenet"  # the reference's transforms.Normalize
  config_utils.set_head(c.head, num_layers=2, hidden_dim=2048, out_dim=128,
                        last_bn="none")
  c.loss.temperature = 0.1
  c.loss.num_prototypes = 3000
  c.loss.sinkhorn_epsilon = 0.05
  c.loss.sinkhorn_iters = 3
  c.loss.queue_size = 3840 if arg.bs256 else 0
  c.loss.queue_start_epoch = 15
  c.optimizer.name = "lars"
  c.optimizer.trust_coefficient = 1e-3
  c.optimizer.trust_ratio = "larc"
  c.optimizer.lr_in_momentum = False
  c.optimizer.decay_mask = "all"
  c.optimizer.momentum = 0.9
  c.optimizer.weight_decay = 1e-6
  c.optimizer.lr_scaling = "linear"
  if arg.bs256:  # peak 0.6 at batch 256, no warm-up
    c.optimizer.base_lr = 0.6
    c.optimizer.warmup_epochs = 0.0
  else:  # peak 4.8 at batch 4096, warm-up from 0.3
    c.optimizer.base_lr = 0.3
    c.optimizer.warmup_epochs = 10.0
    c.optimizer.warmup_start_lr = 0.3
  c.optimizer.final_lr = c.optimizer.base_lr * c.batch_size / 256 / 1000
  c.optimizer.freeze_pattern = "^predictor/"
  c.optimizer.freeze_epochs = 1.0
  if arg.runlocal:
    config_utils.shrink_for_cpu(c, keep=arg.given)
    c.augment.local_crops = 2
    c.augment.local_size = 16
    c.loss.num_prototypes = 64
    c.loss.queue_size = 4 * c.batch_size  # the queue's code path, on a CPU
    c.loss.queue_start_epoch = 2
    c.optimizer.warmup_start_lr = 0.0
  return c
