r"""SupCon, ResNet-50, ImageNet, batch 6144, 350 epochs (Khosla et al. 2020).

The paper's TensorFlow code (google-research/supcon,
`scripts/supcon_imagenet_resnet50.sh` with `configs.sh`): LARS (momentum
0.9, trust 1e-3, the rate inside the momentum as SimCLR's), learning rate
0.4·B/256 (9.6 at B = 6144), 12 warm-up epochs then cosine, weight decay
1e-3, τ 0.1 with the loss multiplied by τ (`scale_by_temperature`: τ_base
= 1 here), BatchNorm over the global batch, 2 views.

Deviations: SimCLR's augmentation (colour 1.0, blur) where the paper's best
ResNet-50 uses AutoAugment, which jaxssl does not implement; the PyTorch
reference's head (HobbitLong/SupContrast `SupConResNet(head='mlp')`:
2048 → 2048 → 128 with biases, no BN) where the TF script projects the
L2-normalised features with one linear layer to 128; biases are not
decayed here (the TF script decays them); the TF cosine spans the whole run
(the warm-up overrides its start), here the epochs after the warm-up.
Each residual block's last BatchNorm γ starts at 1, as the reference's
ResNet (`model.zero_init_residual=False`).
Linear evaluation: `configs/linear_eval.py:protocol=simclr` (SupContrast's
`main_linear.py` is not modelled).

COMMAND (TPU v3-64 / v4-64 VM, all hosts):
  python -m jaxssl.main --distributed --config=configs/supcon_resnet50.py \
      --workdir=gs://BUCKET/supcon_r50 \
      --config.data.data_dir=gs://BUCKET/tensorflow_datasets
Fewer devices keep the global batch with `--config.train.microbatches=K`
(exact loss; the encoder's BatchNorm per micro-batch). Variants: `epochs=N`
(default 350), `runlocal`.

EXPECTED (ImageNet top-1 of a linear classifier on the frozen encoder):
78.7 % for ResNet-50 in the paper (AutoAugment); 79.1 % in the PyTorch
reference's README (with a momentum encoder, not implemented here). Not
measured with jaxssl; with SimCLR's augmentation expect somewhat less.

`:runlocal` trains 20 steps (5 epochs of 4) on 256 synthetic labelled 32
px images with a ResNet-10/8 (a CPU smoke run).
"""

from jaxssl import config_utils


def get_config(arg=None):
  arg = config_utils.parse_arg(arg, runlocal=False, epochs=350)
  c = config_utils.use_imagenet(config_utils.base_config())
  c.method = "supcon"
  # The reference's ResNet starts each block's last BN γ at 1.
  c.model.zero_init_residual = False
  c.steps_rule = "floor"  # int(epochs·N/B), the TF script's
  c.batch_size = 6144
  c.epochs = arg.epochs
  c.log_every = 100
  c.augment.preset = "simclr_v2"
  c.augment.color_strength = 1.0
  c.augment.blur = True
  config_utils.set_head(c.head, num_layers=2, hidden_dim=0, out_dim=128,
                        last_bn="none", use_bn=False)
  c.loss.temperature = 0.1
  c.loss.base_temperature = 1.0
  c.optimizer.name = "lars"
  c.optimizer.base_lr = 0.4
  c.optimizer.lr_scaling = "linear"
  c.optimizer.momentum = 0.9
  c.optimizer.trust_coefficient = 1e-3
  c.optimizer.lr_in_momentum = True
  c.optimizer.weight_decay = 1e-3
  c.optimizer.decay_mask = "kernels"
  c.optimizer.warmup_epochs = 12.0
  if arg.runlocal:
    config_utils.shrink_for_cpu(c, keep=arg.given)
  return c
