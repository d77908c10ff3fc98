"""Recipe setters the config files share: datasets (`use_imagenet`,
`use_cifar10`), a ViT encoder (`use_vit`), heads (`set_head`,
`set_dino_head`), optimizers (`set_sgd`, `set_adamw`) and MoCo v2's recipe
around the loss (`set_moco_v2`). Each sets keys of `config_utils.
base_config()`'s schema and is re-exported there (`config_utils.set_head`,
...), the name configs use.
"""

from typing import Iterable

import ml_collections

from jaxssl import config_variants

shrink_for_cpu = config_variants.shrink_for_cpu


def _use_tfds(c: ml_collections.ConfigDict, *, name: str, eval_split: str,
              image_size: int, depth: int,
              cifar_stem: bool) -> ml_collections.ConfigDict:
  c.data.source = "tfds"
  c.data.name = name
  c.data.train_split = "train"
  c.data.eval_split = eval_split
  c.data.image_size = image_size
  c.model.depth = depth
  c.model.width = 1.0
  c.model.cifar_stem = cifar_stem
  return c


def use_imagenet(c: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
  """TFDS imagenet2012 at 224 px with a ResNet-50 (standard stem)."""
  return _use_tfds(c, name="imagenet2012", eval_split="validation",
                   image_size=224, depth=50, cifar_stem=False)


def use_cifar10(c: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
  """TFDS cifar10 (or the JPEG zip via data.source/path) at 32 px with a
  ResNet-18 whose stem is a 3×3 stride-1 conv without max-pooling."""
  return _use_tfds(c, name="cifar10", eval_split="test", image_size=32,
                   depth=18, cifar_stem=True)


def use_vit(c: ml_collections.ConfigDict, *, variant: str, patch_size: int,
            num_heads: int = 0) -> ml_collections.ConfigDict:
  """A ViT encoder as MoCo v3 trains it: fixed 2-D sin-cos position
  embedding and a frozen random patch projection (no gradient, and no
  update for the whole run, decay included)."""
  c.model.name = "vit"
  c.model.variant = variant
  c.model.num_heads = num_heads
  c.model.patch_size = patch_size
  c.model.pos_embed = "sincos"
  c.model.frozen_patch_embed = True
  c.optimizer.freeze_pattern = "^encoder/patch_embed/"
  c.optimizer.freeze_epochs = -1.0  # the whole run
  return c


def set_head(section: ml_collections.ConfigDict, *, num_layers: int,
             hidden_dim: int, out_dim: int, last_bn: str,
             kernel_init: str = "fan_in", use_bn: bool = True,
             bias: bool = True) -> None:
  """Sets an MLP head section (`head` or `predictor`) in one statement."""
  section.num_layers = num_layers
  section.hidden_dim = hidden_dim
  section.out_dim = out_dim
  section.use_bn = use_bn
  section.last_bn = last_bn
  section.kernel_init = kernel_init
  section.bias = bias


def set_sgd(opt: ml_collections.ConfigDict, *, base_lr: float,
            weight_decay: float, schedule: str,
            decay_epochs: tuple = (), decay_values: tuple = ()) -> None:
  """PyTorch's SGD as the MoCo, InstDisc and InvaSpread references use it:
  momentum 0.9 (not Nesterov), the rate `base_lr·B/256`, weight decay on
  every parameter, no warm-up; `schedule` 'epoch_cosine' or 'multistep'
  (×0.1 at each of `decay_epochs`, or the given `decay_values`)."""
  opt.name = "sgd"
  opt.base_lr = base_lr
  opt.lr_scaling = "linear"
  opt.momentum = 0.9
  opt.nesterov = False
  opt.weight_decay = weight_decay
  opt.decay_mask = "all"
  opt.schedule = schedule
  opt.decay_epochs = tuple(decay_epochs)
  opt.decay_factor = 0.1
  opt.decay_values = tuple(decay_values)
  opt.warmup_epochs = 0.0


def set_adamw(opt: ml_collections.ConfigDict, *, base_lr: float,
              weight_decay: float, warmup_epochs: float) -> None:
  """AdamW (β 0.9, 0.999) at `base_lr·B/256`, linear warm-up then the
  per-step cosine, decay on kernels only."""
  opt.name = "adamw"
  opt.base_lr = base_lr
  opt.lr_scaling = "linear"
  opt.momentum = 0.9
  opt.weight_decay = weight_decay
  opt.decay_mask = "kernels"
  opt.schedule = "warmup_cosine"
  opt.warmup_epochs = warmup_epochs


def set_moco_v2(c: ml_collections.ConfigDict, *, runlocal: bool,
                keep: Iterable[str] = ()) -> None:
  """MoCo v2's ImageNet recipe around the loss (facebookresearch/moco
  `main_moco.py`): a queue of 65,536 keys, key-encoder momentum 0.999
  (constant, starting as a copy), PyTorch SGD 0.03·B/256 with weight decay
  1e-4 on every parameter and the per-epoch cosine; `runlocal`: the CPU
  shrink over 12 epochs (the first 4 steps fill the queue) with momentum
  0.99 (0.999 would barely move the key encoder in a smoke run)."""
  c.loss.queue_size = 65536
  c.target.base_momentum = 0.999
  c.target.momentum_schedule = "constant"
  c.target.init = "copy"
  set_sgd(c.optimizer, base_lr=0.03, weight_decay=1e-4,
          schedule="epoch_cosine")
  if runlocal:
    shrink_for_cpu(c, keep=keep, epochs=12)
    c.target.base_momentum = 0.99


def set_dino_head(section: ml_collections.ConfigDict, *, out_dim: int,
                  norm_last_layer: bool, use_bn: bool = False) -> None:
  """DINO's head (`head.kind='dino'`): 3 layers, 2048 hidden, bottleneck
  256, then K = `out_dim` prototypes."""
  section.kind = "dino"
  section.num_layers = 3
  section.hidden_dim = 2048
  section.bottleneck_dim = 256
  section.out_dim = out_dim
  section.use_bn = use_bn
  section.norm_last_layer = norm_last_layer
