r"""CPC v2, ResNet-18 patches (CIFAR stem, LayerNorm), CIFAR-10, batch 256,
200 epochs (Hénaff et al. 2019, https://arxiv.org/abs/1905.09272).

The paper has no CIFAR run; this is its recipe at CIFAR scale
(`jaxssl/methods/cpc.py`): each 32 px view (crop area 0.5–1, flip) cut
into a 7 × 7 grid of 8 px patches every 4 px; per patch two colour
channels dropped and a random flip; each patch through a ResNet-18 with
the CIFAR stem and LayerNorm (`model.norm='layer'`), mean-pooled; targets
a 1×1 convolution to 64; for each of the four directions a masked context
network (5 blocks of 256) predicting the patches 2 and 3 rows ahead (one
row ahead overlaps the context's patches by half; the ImageNet recipe
skips the overlapping rows the same way), scaled by 0.1, scored against
every patch of the global batch (`losses.cpc_infonce`), the losses summed.
AdamW (β 0.9, 0.999), rate 2e-4·B/256 after 5 warm-up epochs, cosine,
weight decay 1e-5 (the paper's optimizer settings are not in its text;
these are ours).

COMMAND (one GPU; TFDS cifar10, or the JPEG zip with the two last flags):
  python -m jaxssl.main --config=configs/cpc_cifar10.py \
      --workdir=/tmp/cpc_cifar10 \
      --config.data.source=files \
      --config.data.path=../shared/datasets/cifar10-jpeg.zip
Variants: `epochs=N` (default 200), `runlocal`.

EXPECTED: no published CIFAR-10 figure; the CPU quality proxy row in
BENCHMARKS.md places it against the other methods. The paper's ImageNet
figures are in `configs/cpc_resnet50.py`.

`:runlocal` trains 21 steps (5 epochs of 4) on 256 synthetic 32 px images
(a 4 × 4 grid of 8 px patches, offsets 1 and 2) with ResNet-10/8 patch
encoders and a context network of 2 blocks of 32, at rate 4e-3·B/256.
"""

from jaxssl import config_utils


def get_config(arg=None):
  arg = config_utils.parse_arg(arg, runlocal=False, epochs=200)
  c = config_utils.use_cifar10(config_utils.base_config())
  c.method = "cpc"
  c.model.norm = "layer"
  c.model.zero_init_residual = False  # no released code: γ = 1
  c.batch_size = 256
  c.epochs = arg.epochs
  c.log_every = 50
  c.augment.preset = "cpc"
  # No online probe: it would learn from the colour-dropped patches'
  # features and be scored on whole-colour ones (kNN and linear
  # evaluation see whole-colour patches on both sides).
  c.probe.enabled = False
  # The ImageNet grid scaled to 32 px; directions, heads and context are
  # the base config's (the paper's).
  c.loss.patch_size = 8
  c.loss.patch_stride = 4
  c.loss.offsets = (2, 3)
  config_utils.set_adamw(c.optimizer, base_lr=2e-4, weight_decay=1e-5,
                         warmup_epochs=5.0)
  if arg.runlocal:
    config_utils.shrink_for_cpu(c, keep=arg.given)
    c.loss.patch_stride = 8  # a 4 × 4 grid: a third of the patches
    c.loss.offsets = (1, 2)
    c.loss.context_hidden = 32
    c.loss.context_blocks = 2
    c.optimizer.base_lr = 4e-3  # a smoke run of 20 steps that moves
  return c
