r"""CPC v2, ResNet-50 patches (LayerNorm), ImageNet, batch 512, 200 epochs
(Hénaff et al. 2019, https://arxiv.org/abs/1905.09272).

The paper's recipe as its text and appendix pseudo-code give it
(`jaxssl/methods/cpc.py`): a 260 px view (crop area 0.5–1, flip) cut into
a 6 × 6 grid of 80 px patches every 36 px; per patch two of the three
colour channels dropped and a random flip; every patch through the
encoder with LayerNorm instead of BatchNorm, mean-pooled; targets a 1×1
convolution to 64; for each of the four directions a masked context
network (5 residual blocks of 256) whose 1×1 convolution predicts the
patch 3 rows ahead (`steps_to_ignore=2, steps_to_predict=3`: rows 1 and 2
ahead overlap the context's own patches), scaled by 0.1, scored against
every patch of the global batch, the losses summed. Batch 512 and about
200 epochs (SimCLR's Table C.1 on CPC v2).
Reductions: the encoder is a ResNet-50 (the paper's headline is its
ResNet-161: ResNet-101 with a third stage of 46 blocks, 4096-d maps and
512-d bottlenecks, 305 M parameters); the per-patch augmentation has the
colour dropping and flips but not the paper's further primitives
(shearing, rotation, elastic deformation, colour transforms); the crop
(the paper's exact pre-processing is in its appendix, not reproduced
here) and the optimizer (AdamW 4e-4·B/512, cosine; ours) are documented
choices.
Linear evaluation: `configs/linear_eval.py` on the pooled grid of the
evaluated image (`h`: 5 × 5 patches of a 224 px centre crop, or 6 × 6 of
260 px; the context network is not used).

COMMAND (a TPU VM or GPU host; TFDS imagenet2012 prepared in data_dir):
  python -m jaxssl.main --config=configs/cpc_resnet50.py \
      --workdir=gs://BUCKET/cpc_r50 --config.data.data_dir=gs://BUCKET/tfds
Variants: `epochs=N` (default 200), `runlocal`.

EXPECTED (paper, Table 1 / §4.2, linear classification on ImageNet):
ResNet-161 top-1 71.5 % (top-5 90.1 %); ResNet-50 top-1 63.8 % (85.3 %).

`:runlocal` trains 21 steps (5 epochs of 4) on 256 synthetic 32 px images
(a 4 × 4 grid of 8 px patches, offsets 1 and 2) with ResNet-10/8 patch
encoders and a context network of 2 blocks of 32, at rate 4e-3·B/256.
"""

from jaxssl import config_utils


def get_config(arg=None):
  arg = config_utils.parse_arg(arg, runlocal=False, epochs=200)
  c = config_utils.use_imagenet(config_utils.base_config())
  c.method = "cpc"
  c.model.norm = "layer"
  c.model.zero_init_residual = False  # no released code: γ = 1
  c.data.image_size = 260
  c.batch_size = 512
  c.epochs = arg.epochs
  c.log_every = 100
  c.augment.preset = "cpc"
  # No online probe: it would learn from the colour-dropped patches'
  # features and be scored on whole-colour ones (kNN and linear
  # evaluation see whole-colour patches on both sides).
  c.probe.enabled = False
  # The paper's grid, tasks and heads are the base config's loss defaults:
  # 80 px patches every 36 px, offset 3, four directions, targets of 64,
  # scale 0.1, context of 5 blocks of 256, per-patch augmentation.
  config_utils.set_adamw(c.optimizer, base_lr=2e-4, weight_decay=1e-5,
                         warmup_epochs=5.0)
  if arg.runlocal:
    config_utils.shrink_for_cpu(c, keep=arg.given)
    c.loss.patch_size = 8
    c.loss.patch_stride = 8  # a 4 × 4 grid
    c.loss.offsets = (1, 2)
    c.loss.context_hidden = 32
    c.loss.context_blocks = 2
    c.optimizer.base_lr = 4e-3  # a smoke run of 20 steps that moves
  return c
