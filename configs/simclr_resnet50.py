r"""SimCLR, ResNet-50 (and SimCLR v2's deeper, wider, SK ResNets), ImageNet,
batch 4096 (Chen et al. 2020, §B.1; SimCLR v2, Chen et al. 2020b,
arXiv 2006.10029).

LARS (momentum 0.9, trust 1e-3), learning rate 0.3·B/256 ("linear") or
0.075·√B ("sqrt"; both give 4.8 at B = 4096), 10 warm-up epochs then cosine,
weight decay 1e-6, temperature 0.1, global BatchNorm, 2-layer projection head
with output 128. `v2` is SimCLR v2's recipe (Appendix B of the paper): the
3-layer head, 0.1·√B (6.4 at B = 4096) after a warm-up of 5 % of the
epochs, weight decay 1e-4, and SimCLR v2's MoCo-style memory (§2, "≈ 1 %"
in linear evaluation, Appendix D): 65,536 negatives from a momentum copy of
encoder and projector (τ 0.999 constant, MoCo's; the paper gives no other),
`loss.memory=True`, `loss.queue_size=65536`, `jaxssl/methods/simclr.py`;
`--config.loss.memory=False` trains v2 without it (what the released TF2
code does: it has no memory).
Linear evaluation: `configs/linear_eval.py:protocol=simclr`,
the reference's script behind the EXPECTED figures.

COMMAND (TPU v3-32 / v4-32 VM, all hosts):
  python -m jaxssl.main --distributed --config=configs/simclr_resnet50.py \
      --workdir=gs://BUCKET/simclr_r50_100ep \
      --config.data.data_dir=gs://BUCKET/tensorflow_datasets
Variants (comma-separated after `:`): `epochs=1000`, `sqrt` (SimCLR v1's
√B rate; `v2` has its own), `v2`,
`depth=50|101|152`, `width=1|2|3`, `sk` (selective kernels + ResNet-D,
`model.sk_ratio=0.0625`), `runlocal`, e.g.
`--config=configs/simclr_resnet50.py:epochs=1000,v2`.

SimCLR v2's largest model, R152 (3×+SK), 795M variables, 800 epochs, on 32
80 GB GPUs (4 hosts × 8, every host): 128 images per device in GradCache
micro-batches of 16 with remat per block, 47.7 GiB per device by XLA:CPU's
estimate (micro-batch size per device memory: BENCHMARKS.md, "SimCLR v2
R152 (3×+SK) at batch 4096"; 141 GB H200s take micro-batches of 32). That
estimate is without the memory (`--config.loss.memory=False`); the memory
adds the momentum encoder (another 795M variables) and its forward pass,
not yet measured:
  python -m jaxssl.main --distributed \
      --config=configs/simclr_resnet50.py:v2,depth=152,width=3,sk,epochs=800 \
      --workdir=gs://BUCKET/simclr_v2_r152_3x_sk \
      --config.data.data_dir=gs://BUCKET/tensorflow_datasets \
      --config.model.remat=block --config.train.microbatches=8

The same global batch of 4096 on ONE GPU (exact loss over all 4096 images;
the encoder's BatchNorm per micro-batch of 256, see README "Performance"):
  python -m jaxssl.main --config=configs/simclr_resnet50.py --workdir=... \
      --config.train.microbatches=16

EXPECTED (paper, linear evaluation top-1 on ImageNet): 100 epochs ≈ 64–65 %
(Fig. 9, batch 4096), 1000 epochs 69.3 % (Table 6); `v2,epochs=800`
71.7 % (SimCLR v2, Table 1 row R50 1×).
SimCLR v2 (google-research/simclr README, = Table 1 of SimCLR v2): ImageNet
top-1 (%) fine-tuned on 1 % / 10 % / 100 % of the labels, linear evaluation,
and the same network trained supervised; Param (M) = the encoder's
variables without classifier, BatchNorm moving statistics included (what
tests/test_sk_resnet.py checks against `depth`, `width`, `sk`):
  depth width SK  Param(M)  FT 1%  FT 10%  FT 100%  linear  supervised
   50    1×   -      24     57.9    68.4    76.3    71.7     76.6
   50    1×   SK     35     64.5    72.1    78.7    74.6     78.5
   50    2×   -      94     66.3    73.9    79.1    75.6     77.8
   50    2×   SK    140     70.6    77.0    81.3    77.7     79.3
  101    1×   -      43     62.1    71.4    78.2    73.6     78.0
  101    1×   SK     65     68.3    75.1    80.6    76.3     79.6
  101    2×   -     170     69.1    75.8    80.7    77.0     78.9
  101    2×   SK    257     73.2    78.8    82.4    79.0     80.1
  152    1×   -      58     64.0    73.0    79.3    74.5     78.3
  152    1×   SK     89     70.0    76.5    81.3    77.2     79.9
  152    2×   -     233     70.2    76.6    81.1    77.4     79.1
  152    2×   SK    354     74.2    79.4    82.9    79.4     80.4
  152    3×   SK    795     74.9    80.1    83.1    79.8     80.5
(`v2` sets SimCLR v2's pretraining recipe; fine-tuning from the head's
first layer is configs/finetune.py, distillation configs/distill.py, all
three in one command tools/semisupervised.py.)

`:runlocal` trains 21 steps (5 epochs of 4) on 256 synthetic 32 px images
with a ResNet-10/8 (a CPU smoke run), whatever `depth` and `width`;
`:runlocal,epochs=N` trains N epochs of 4 steps; `:runlocal,sk` keeps
`sk_ratio` on the ResNet-10/8, whose projection shortcuts become ResNet-D's
(a ResNet-18 has no bottleneck to select kernels in: add
`--config.model.depth=50` to run the selective kernels too).
"""

from jaxssl import config_utils

DEPTHS = (50, 101, 152)
WIDTHS = (1, 2, 3)
# SimCLR v2's selective-kernel ratio (`sk` variant).
SK_RATIO = 0.0625


def get_config(arg=None):
  arg = config_utils.parse_arg(arg, runlocal=False, epochs=100, sqrt=False,
                               v2=False, depth=50, width=1, sk=False)
  if arg.depth not in DEPTHS:
    raise ValueError(f"config variant depth={arg.depth} is not one of "
                     f"{list(DEPTHS)}")
  if arg.width not in WIDTHS:
    raise ValueError(f"config variant width={arg.width} is not one of "
                     f"{list(WIDTHS)}")
  c = config_utils.use_imagenet(config_utils.base_config())
  c.model.depth = arg.depth
  c.model.width = float(arg.width)
  c.model.sk_ratio = SK_RATIO if arg.sk else 0.0
  c.batch_size = 4096
  c.epochs = arg.epochs
  c.log_every = 100
  c.augment.color_strength = 1.0
  c.augment.blur = True
  c.head.num_layers = 3 if arg.v2 else 2
  c.loss.temperature = 0.1
  c.optimizer.name = "lars"
  c.optimizer.base_lr = 0.075 if arg.sqrt else 0.3
  c.optimizer.lr_scaling = "sqrt" if arg.sqrt else "linear"
  c.optimizer.weight_decay = 1e-6
  c.optimizer.warmup_epochs = 10.0
  if arg.v2:
    c.optimizer.base_lr = 0.1
    c.optimizer.lr_scaling = "sqrt"
    c.optimizer.weight_decay = 1e-4
    c.optimizer.warmup_epochs = 0.05 * arg.epochs
    c.loss.memory = True
    c.loss.queue_size = 65536
    c.target.base_momentum = 0.999
    c.target.momentum_schedule = "constant"
    c.target.init = "copy"
  if arg.runlocal:
    config_utils.shrink_for_cpu(c, keep=arg.given)
  return c
