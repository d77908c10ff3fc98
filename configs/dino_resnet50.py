r"""DINO, ResNet-50, ImageNet, batch 512, 100 epochs.

The reference's ResNet-50 command (Caron et al. 2021,
https://arxiv.org/abs/2104.14294; facebookresearch/dino README: `--arch
resnet50 --optimizer sgd --lr 0.03 --weight_decay 1e-4 --weight_decay_end
1e-4 --global_crops_scale 0.14 1 --local_crops_scale 0.05 0.14`, the other
arguments at their defaults): SGD (momentum 0.9) at 0.03·B/256, 10 warm-up
epochs, cosine to 1e-6; weight decay 1e-4 (biases and BatchNorm excluded);
per-parameter clipping at 3.0; last layer frozen for the first epoch; DINO
head without BatchNorm, 2048 → 256 → 65,536, last layer normalised; teacher
momentum 0.996 → 1, temperatures 0.04 (teacher) and 0.1 (student);
multi-crop 2 × 224 (area 0.14–1) + 8 × 96 (0.05–0.14); BatchNorm synchronised
over all devices (the reference converts it to SyncBatchNorm).
Each residual block's last BatchNorm γ starts at 1, as the reference's
ResNet (`model.zero_init_residual=False`).
Linear evaluation: `configs/linear_eval.py:protocol=dino`,
the reference's script behind the EXPECTED figures.

COMMAND (a TPU VM or GPU host; TFDS imagenet2012 in data_dir):
  python -m jaxssl.main --config=configs/dino_resnet50.py \
      --workdir=gs://BUCKET/dino_r50 --config.data.data_dir=gs://BUCKET/tfds
Variants: `epochs=N` (default 100), `runlocal`.

EXPECTED: the released DINO ResNet-50 reaches 75.3 % linear and 67.5 % kNN
top-1 on ImageNet (README table; a longer run than this command's 100
epochs).
These figures are the teacher's (the reference evaluates and releases it:
`--checkpoint_key teacher`): kNN, the online probe and the exported
encoder here use the teacher too (`eval.network=online`: the student).

`:runlocal` trains 20 steps (5 epochs of 4) on 256 synthetic 32 px images
with a ResNet-10/8, 2 local crops of 16 px and a 128-wide head.
"""

from jaxssl import config_utils


def get_config(arg=None):
  arg = config_utils.parse_arg(arg, runlocal=False, epochs=100)
  c = config_utils.use_imagenet(config_utils.base_config())
  c.method = "dino"
  # The reference's ResNet starts each block's last BN γ at 1.
  c.model.zero_init_residual = False
  c.steps_rule = "floor"
  c.batch_size = 512
  c.epochs = arg.epochs
  c.log_every = 100
  c.augment.preset = "dino"
  c.augment.global_crop_area = (0.14, 1.0)
  c.augment.local_crop_area = (0.05, 0.14)
  config_utils.set_dino_head(c.head, out_dim=65536, norm_last_layer=True)
  c.loss.temperature = 0.1
  c.loss.warmup_teacher_temperature = 0.04
  c.loss.teacher_temperature = 0.04
  c.target.base_momentum = 0.996
  c.optimizer.name = "sgd"
  c.optimizer.base_lr = 0.03
  c.optimizer.momentum = 0.9
  c.optimizer.nesterov = False
  c.optimizer.warmup_epochs = 10.0
  c.optimizer.final_lr = 1e-6
  c.optimizer.weight_decay = 1e-4
  c.optimizer.clip_per_parameter = 3.0
  c.optimizer.freeze_pattern = "^projector/last_layer/"
  c.optimizer.freeze_epochs = 1.0
  if arg.runlocal:
    config_utils.shrink_for_cpu(c, keep=arg.given)
    c.augment.local_crops = 2
    c.augment.local_size = 16
  return c
