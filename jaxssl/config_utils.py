"""Helpers for experiment configs: one schema, parsed variant arguments.

Every file in `configs/` builds on `base_config()`, so all experiments share
one set of keys and `--config.some.key=value` fails on a typo (configs are
locked by `config_flags`). Durations are in epochs and learning rates per 256
examples: steps and peak rates are derived at run time from the batch size
and the dataset, so overriding `batch_size` never leaves stale values.

Variants (`configs/x.py:runlocal,epochs=400`) compose: `:runlocal` shrinks
the run for a CPU, but a value given explicitly in the variant wins over the
shrink (400 epochs here).
"""

import ml_collections

from jaxssl import config_setters
from jaxssl import config_variants

# The variant parser and the `:runlocal` shrink every config calls as
# `config_utils.parse_arg` / `config_utils.shrink_for_cpu`.
parse_arg = config_variants.parse_arg
shrink_for_cpu = config_variants.shrink_for_cpu
values_of = config_variants.values_of
# The recipe setters configs call as `config_utils.set_head`, ...
use_imagenet = config_setters.use_imagenet
use_cifar10 = config_setters.use_cifar10
use_vit = config_setters.use_vit
set_head = config_setters.set_head
set_sgd = config_setters.set_sgd
set_adamw = config_setters.set_adamw
set_moco_v2 = config_setters.set_moco_v2
set_dino_head = config_setters.set_dino_head


def base_config() -> ml_collections.ConfigDict:
  """All keys of an experiment, with SimCLR ImageNet defaults."""
  c = ml_collections.ConfigDict()
  c.method = "simclr"  # jaxssl.methods.METHODS
  c.seed = 0
  # Bit-reproducible runs: deterministic GPU kernels (XLA flag, set before
  # the backend starts) and synchronous checkpoints. CPU runs and the input
  # pipelines are deterministic anyway (a test resumes bit-identically).
  c.deterministic = False
  c.batch_size = 4096
  c.epochs = 100
  # Training length: 'simclr' = N·epochs//B + 1 steps (SimCLR reference),
  # 'floor' = N·epochs//B (BYOL reference). Also the length of the lr and τ
  # schedules.
  c.steps_rule = "simclr"
  c.log_every = 100

  c.data = ml_collections.ConfigDict()
  # 'digits', 'synthetic' (in memory, cropped on device); 'files' (folder or
  # .zip of <class>/<image>), 'tfds' (tf.data on the host).
  c.data.source = "tfds"
  c.data.name = "imagenet2012"  # TFDS name.
  c.data.data_dir = ""  # TFDS data_dir ("" = default).
  c.data.path = ""  # folder or .zip for source='files'.
  c.data.shuffle_buffer = 50_000  # encoded records (TFDS).
  # Host pipelines: decode each JPEG at libjpeg's reduced resolution (DCT
  # scale 1/2, 1/4, 1/8) when all its crops are shrunk at least that much;
  # it does not pay on ImageNet-size photos (BENCHMARKS.md).
  c.data.reduced_decode = False
  c.data.train_split = "train"
  c.data.eval_split = "validation"
  c.data.image_size = 224
  c.data.synthetic_examples = 512
  # Class-balanced fraction of the training split used (0: all) for
  # training and as the kNN bank: the labelled subset of semi-supervised
  # fine-tuning, or a smaller pretraining set. ImageNet 0.01 and 0.1 use
  # TFDS imagenet2012_subset; elsewhere in-memory sources only.
  c.data.train_fraction = 0.0

  c.augment = ml_collections.ConfigDict()
  # Views: jaxssl.view_presets.VIEW_PRESETS. For the SimCLR presets the colour
  # strength and blur below override the preset's own (simclr_cifar's 0.5 and
  # no blur are what configs/simclr_cifar10.py sets explicitly).
  c.augment.preset = "simclr_v2"
  c.augment.color_strength = 1.0
  c.augment.blur = True
  # Lower bound of the random-resized-crop area of every view (0: the
  # preset's; MoCo v2 / SimSiam use 0.2).
  c.augment.min_crop_area = 0.0
  # An augmentation schedule (WCL): the first early_epochs (0: none) use
  # these colour strength and minimum crop area instead (MoCo v2's 0.5 and
  # 0.2), then the settings above.
  c.augment.early_epochs = 0.0
  c.augment.early_color_strength = 0.5
  c.augment.early_min_crop_area = 0.2
  # Multi-crop (SwAV, DINO): local crops per image (-1: the preset's),
  # their side (0: the preset's relative to data.image_size: 96 at 224),
  # and the crop-area range of the global and local crops ((0, 0): the
  # preset's).
  c.augment.local_crops = -1
  c.augment.local_size = 0
  c.augment.global_crop_area = (0.0, 0.0)
  c.augment.local_crop_area = (0.0, 0.0)
  # The views' ImageNet mean/std normalisation: 'preset' (the preset's:
  # BYOL's and DINO's normalise, SimCLR's do not), 'imagenet' (the
  # torchvision references': MoCo v2, SwAV, WCL, SimSiam) or 'none'.
  c.augment.normalize = "preset"
  # RandAugment ops per view after the blur (jaxssl.randaugment; -1: the
  # preset's, 2 for 'infomin', 0 for the others): adds InfoMin's
  # RandAugment to any preset, or takes it out of 'infomin'.
  c.augment.randaugment_ops = -1

  c.model = ml_collections.ConfigDict()
  c.model.name = "resnet"
  c.model.depth = 50
  c.model.width = 1.0
  c.model.cifar_stem = False
  c.model.bn_momentum = 0.9
  c.model.bn_epsilon = 1e-5
  c.model.bn_group_size = 0  # 0: statistics over all devices.
  # Or over this many consecutive groups of devices, a fixed share of the
  # global batch whatever the device count (0: all devices). SwAV's 4096
  # batch in BN groups of 512 images: batch_size // 512, a reference to
  # batch_size (`get_ref`), so that an overridden batch keeps the groups.
  c.model.bn_num_groups = 0
  # Mixed precision of the encoder: 'auto' = bfloat16 activations and
  # matmuls on GPU/TPU, float32 on CPU. Parameters, optimizer state, BN
  # statistics, the (small) heads, logits and losses are float32 always.
  c.model.dtype = "auto"
  c.model.remat = "none"  # 'none' | 'block' | 'dots' (jax.checkpoint per block)
  # SimCLR v2's SK ResNet (jaxssl.models.selective_kernel): 0 the plain
  # ResNet; > 0 selective-kernel bottlenecks (mixing layer
  # max(int(filters · sk_ratio), 32) wide; SimCLR v2: 0.0625), the ResNet-D
  # stem and average-pool shortcuts. sk_branches: 'split' (the reference's
  # one 3×3 conv split in two streams) or 'dilated' (SKNet's 3×3 + dilated).
  c.model.sk_ratio = 0.0
  c.model.sk_branches = "split"
  # Each residual block's last BatchNorm γ starts at 0 (SimCLR, BYOL, MoCo
  # v3, SimSiam, Barlow Twins) or 1 (torchvision's default: MoCo v1/v2,
  # SwAV, DINO, WCL, SupCon).
  c.model.zero_init_residual = True
  # 'batch' | 'layer': LayerNorm over each example's feature map instead of
  # BatchNorm (CPC v2; no statistics shared between examples).
  c.model.norm = "batch"
  # ViT (model.name='vit', jaxssl.models.vit): size 'tiny' | 'small' |
  # 'base', patch side, position embedding 'sincos' (MoCo v3) | 'learned'
  # (DINO; made for vit_image_size px, resampled for other sizes), MoCo v3's
  # frozen random patch projection, stochastic depth of the last block.
  c.model.variant = "small"
  c.model.num_heads = 0  # 0: the variant's (MoCo v3's ViT-S uses 12)
  c.model.vit_depth = 0  # blocks; 0: the variant's (`:runlocal` uses 4)
  c.model.patch_size = 16
  c.model.pos_embed = "sincos"
  c.model.vit_image_size = 224
  c.model.frozen_patch_embed = False
  c.model.drop_path = 0.0
  # ViT initialisation: 'mocov3' or 'dino' (jaxssl.models.vit).
  c.model.vit_init = "mocov3"

  c.train = ml_collections.ConfigDict()
  # Micro-batches per device and step (GradCache, Gao et al. 2021): > 1
  # computes the exact global-batch loss and gradients with the encoder's
  # activation memory of one micro-batch, at the cost of a second encoder
  # forward pass. The encoder's BatchNorm then normalises per micro-batch
  # (jaxssl.train.microbatched_gradients); the heads see the whole batch.
  c.train.microbatches = 1
  # 'auto' (unrolled on CPU, whose convolution gradients are slow inside
  # XLA loops; lax.scan on GPU/TPU), 'scan' or 'unrolled'.
  c.train.microbatch_loop = "auto"

  c.head = ml_collections.ConfigDict()
  # 'mlp' (ProjectionHead) or 'dino' (DINOHead: MLP → bottleneck_dim →
  # L2-normalise → weight-normalised linear to out_dim, its scale fixed at
  # 1 when norm_last_layer).
  c.head.kind = "mlp"
  c.head.bottleneck_dim = 256
  c.head.norm_last_layer = True
  c.head.num_layers = 2
  c.head.hidden_dim = 0  # 0: the encoder's width.
  c.head.out_dim = 128
  c.head.use_bn = True
  c.head.last_bn = "scale"  # 'scale' | 'affine' | 'plain' | 'none'.
  c.head.kernel_init = "simclr"  # 'simclr' N(0, 0.01²) | 'fan_in'.
  # Dense layers without a BatchNorm after them have a bias (False: none,
  # MoCo v3).
  c.head.bias = True

  # Predictor (BYOL, SimSiam); num_layers=0: none.
  c.predictor = ml_collections.ConfigDict()
  c.predictor.num_layers = 0
  c.predictor.hidden_dim = 0
  c.predictor.out_dim = 0  # 0: the projector's out_dim.
  c.predictor.use_bn = True
  c.predictor.last_bn = "none"
  c.predictor.kernel_init = "fan_in"
  c.predictor.bias = True

  # EMA target network (BYOL, MoCo): τ from base_momentum to 1 on a cosine
  # over the run, or constant (MoCo v1/v2's 0.999).
  c.target = ml_collections.ConfigDict()
  c.target.base_momentum = 0.99
  c.target.momentum_schedule = "cosine"  # 'cosine' | 'constant'
  # MoCo v1/v2's shuffling BN: the key encoder sees the batch permuted
  # across devices (needs per-device BN, model.bn_group_size=1, to matter).
  c.target.shuffle_bn = False
  # How the target starts: 'copy' of the online network it tracks, or
  # 'independent' (its own random key); '' = the method's reference choice
  # (BYOL: independent).
  c.target.init = ""

  c.loss = ml_collections.ConfigDict()
  c.loss.temperature = 0.1  # SimCLR.
  c.loss.barlow_lambda = 5e-3  # Barlow Twins' λ.
  # MoCo v1/v2: keys in the queue of negatives (a multiple of batch_size).
  c.loss.queue_size = 65536
  # SimCLR: SimCLR v2's memory of loss.queue_size negatives from a momentum
  # network (config.target; K a multiple of batch_size).
  c.loss.memory = False
  # DINO: loss.temperature is the student's; the teacher's rises from
  # warmup_teacher_temperature over warmup_teacher_epochs; the centre's
  # momentum.
  c.loss.teacher_temperature = 0.04
  c.loss.warmup_teacher_temperature = 0.04
  c.loss.warmup_teacher_epochs = 0
  c.loss.center_momentum = 0.9
  # SwAV: prototypes, Sinkhorn's ε and iterations, the epoch its queue
  # (loss.queue_size embeddings, 0 = none) starts filling.
  c.loss.num_prototypes = 3000
  c.loss.sinkhorn_epsilon = 0.05
  c.loss.sinkhorn_iters = 3
  c.loss.queue_start_epoch = 15
  # SupCon: τ_base of the loss's τ/τ_base factor (0: none, the factor is 1;
  # the reference's main_supcon.py keeps its default 0.07).
  c.loss.base_temperature = 0.0
  # WCL's kNN multi-crop (no reference implementation): local crops
  # (augment.preset='multicrop') as extra instance-head anchors whose
  # positives are their knn_positives most similar global crops.
  c.loss.knn_multicrop = False
  c.loss.knn_positives = 2
  # InstDisc: noise rows per example (0: the full softmax over the bank),
  # the bank's momentum m, one set of noise rows per step for the batch.
  c.loss.nce_k = 4096
  c.loss.bank_momentum = 0.5
  c.loss.shared_noise = False
  # CMC: the softmax cross-entropy over the K + 1 logits instead of NCE.
  c.loss.cmc_softmax = False
  # InvaSpread: the reference's negM, the weight of the negatives in the
  # denominator and the spreading sum.
  c.loss.negative_weight = 1.0
  # CPC v2: the patch grid (patch side and spacing in pixels), the rows
  # ahead each context predicts (offsets k), the directions predicted
  # ('down', 'up', 'right', 'left'), the targets' width, the predictions'
  # scale, the context network's width and blocks, per-patch augmentation.
  c.loss.patch_size = 80
  c.loss.patch_stride = 36
  c.loss.offsets = (3,)
  c.loss.directions = ("down", "up", "right", "left")
  c.loss.target_dim = 64
  c.loss.emb_scale = 0.1
  c.loss.context_hidden = 256
  c.loss.context_blocks = 5
  c.loss.patch_augment = True

  c.optimizer = ml_collections.ConfigDict()
  c.optimizer.name = "lars"
  c.optimizer.base_lr = 0.3  # per 256 examples ('linear') or per √B ('sqrt').
  c.optimizer.lr_scaling = "linear"
  c.optimizer.warmup_epochs = 10.0
  # Learning rate: 'warmup_cosine' (per step, the SimCLR/BYOL/MoCo v3
  # references), 'epoch_cosine' (set at the start of each epoch, no
  # warm-up: MoCo v1/v2's `adjust_learning_rate`) or 'multistep' (×
  # decay_factor at each of decay_epochs: MoCo's linear classification).
  c.optimizer.schedule = "warmup_cosine"
  c.optimizer.decay_epochs = ()
  c.optimizer.decay_factor = 0.1
  # 'multistep' with given multipliers of the peak, one per decay epoch
  # (instead of decay_factor's powers).
  c.optimizer.decay_values = ()
  # 'warmup_cosine' from warmup_start_lr to the peak, then to final_lr
  # (absolute rates; DINO's min_lr, SwAV's start_warmup and final_lr).
  c.optimizer.warmup_start_lr = 0.0
  c.optimizer.final_lr = 0.0
  c.optimizer.weight_decay = 1e-6
  # Leaves that get weight decay (and LARS's trust ratio): 'kernels' (rank
  # >= 2; biases and normalisation excluded) or 'all' (PyTorch's SGD/AdamW
  # on model.parameters(): MoCo v2, MoCo v3's ViT).
  c.optimizer.decay_mask = "kernels"
  c.optimizer.momentum = 0.9
  c.optimizer.nesterov = False
  c.optimizer.trust_coefficient = 1e-3
  # LARS: True = rate inside the momentum buffer (SimCLR), False = rate
  # applied to the buffer (BYOL, Barlow Twins).
  c.optimizer.lr_in_momentum = True
  # LARS: rate multiplier of the excluded leaves (biases, BN): Barlow Twins
  # uses 0.0048/0.2 = 0.024.
  c.optimizer.excluded_lr_scale = 1.0
  # LARS trust ratio: 'lars' (η‖p‖/‖g + wd·p‖) or 'larc' (apex LARC as
  # SwAV: η‖p‖/(‖g‖ + wd‖p‖)).
  c.optimizer.trust_ratio = "lars"
  # Weight decay: 'constant', or 'cosine' from weight_decay to
  # weight_decay_end over the run (DINO: 0.04 → 0.4).
  c.optimizer.weight_decay_schedule = "constant"
  c.optimizer.weight_decay_end = 0.0
  # Gradient clipping before the optimizer; 0 = off. DINO clips each
  # parameter's gradient norm at 3.0 (clip_per_parameter).
  c.optimizer.clip_global_norm = 0.0
  c.optimizer.clip_per_parameter = 0.0
  # Parameters whose path ('projector/last/kernel') matches this regular
  # expression get no update for the first freeze_epochs (DINO's last
  # layer, SwAV's prototypes; -1 = the whole run, MoCo v3's frozen patch
  # projection); '' = none.
  c.optimizer.freeze_pattern = ""
  c.optimizer.freeze_epochs = 0.0

  # Checkpoints in workdir/checkpoints (orbax); a run resumes from the latest.
  c.checkpoint = ml_collections.ConfigDict()
  c.checkpoint.every_steps = 1000
  c.checkpoint.every_minutes = 30.0  # also by time (0: off)
  c.checkpoint.keep = 3
  c.checkpoint.asynchronous = True

  # Online linear probe on stop-gradient encoder features (its own Adam).
  c.probe = ml_collections.ConfigDict()
  c.probe.enabled = True
  c.probe.learning_rate = 1e-3

  c.eval = ml_collections.ConfigDict()
  c.eval.knn_ks = (20, 200)  # () disables kNN.
  # Evaluate after epochs N, 2N, ... (at the step completing each,
  # ceil(k·examples/batch_size): jaxssl.epochs) and at the end (0: the end
  # only).
  c.eval.every_epochs = 0
  c.eval.knn_temperature = 0.07
  # The output kNN compares: 'h' (the representation) or 'z' (the
  # projection, e.g. InstDisc's f as its reference's final kNN).
  c.eval.knn_feature = "h"
  c.eval.batch_size = 1024
  c.eval.random_init_baseline = False
  # The network kNN, the online probe and the export use: 'auto' (the
  # method's reference: DINO's teacher, the online network elsewhere),
  # 'online' or 'target' (an EMA target: BYOL's, MoCo's key encoder).
  c.eval.network = "auto"
  # kNN on the method's own memory bank (InstDisc, CMC: Wu et al. 2018's
  # protocol, the trained bank's rows against held-out features); () off.
  c.eval.bank_knn_ks = ()
  c.eval.bank_knn_temperature = 0.07
  return c
