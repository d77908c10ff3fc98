r"""InfoMin: MoCo v2 with InfoMin's augmentation, ResNet-50, ImageNet,
batch 256, 200 epochs (Tian et al. 2020, https://arxiv.org/abs/2005.10243).

The reference (HobbitLong/PyContrast, `main_contrast.py --method InfoMin
--cosine`): MoCo v2 (`jaxssl/methods/moco.py`: a queue of 65,536 keys,
key-encoder momentum 0.999, a 2-layer MLP head 2048 → 2048 → 128) with
τ 0.15; SGD, rate 0.03·B/256, momentum 0.9, weight decay 1e-4 on every
parameter, cosine set per epoch; InfoMin's augmentation for both views
(`augment.preset='infomin'`: crop area 0.2–1, flip, jitter (0.8, 0.8,
0.8, 0.2) with p 0.8, blur with p 0.5, RandAugment of 2 ops at magnitude
N(10, 0.5) each with p 0.5 (`jaxssl.randaugment`, the 15 ops of timm's
`rand-n2-m10-mstd0.5`), grayscale 0.2 after it, ImageNet normalisation).
Deviations: the JigSaw branch of PyContrast's `InfoMin` method is off (its
published figures include it: a second query from a 3 × 3 jigsaw of the
image, half the loss); RandAugment's geometric ops interpolate bilinearly
(timm draws bilinear or bicubic); global BatchNorm (the reference shuffles
per-GPU BatchNorm, as `configs/mocov2_resnet50.py` explains); the colour
jitter's contrast blends with each channel's mean (torchvision: the grey
mean).
Linear evaluation: `configs/linear_eval.py:protocol=moco`.

COMMAND (a TPU VM or GPU host; TFDS imagenet2012 prepared in data_dir):
  python -m jaxssl.main --config=configs/infomin_resnet50.py \
      --workdir=gs://BUCKET/infomin_r50 --config.data.data_dir=gs://BUCKET/tfds
Variants: `epochs=N` (default 200; the paper's 800 with `epochs=800`),
`runlocal`.

EXPECTED (PyContrast README / paper, ImageNet linear top-1, ResNet-50,
with JigSaw): 70.1 % after 200 epochs, 73.0 % after 800 (MoCo v2 in the
same README: 67.5 % after 200).

`:runlocal` trains 48 steps (12 epochs of 4) on 256 synthetic 32 px images
with a ResNet-10/8, a 128-wide head, a queue of 256 keys and key momentum
0.99.
"""

from jaxssl import config_utils


def get_config(arg=None):
  arg = config_utils.parse_arg(arg, runlocal=False, epochs=200)
  c = config_utils.use_imagenet(config_utils.base_config())
  c.method = "moco"
  c.model.zero_init_residual = False  # torchvision's ResNet
  c.steps_rule = "floor"
  c.batch_size = 256
  c.epochs = arg.epochs
  c.log_every = 100
  c.augment.preset = "infomin"
  config_utils.set_head(c.head, num_layers=2, hidden_dim=2048, out_dim=128,
                        last_bn="none", use_bn=False)
  c.loss.temperature = 0.15
  config_utils.set_moco_v2(c, runlocal=arg.runlocal, keep=arg.given)
  return c
