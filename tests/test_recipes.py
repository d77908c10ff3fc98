"""The recipe around each method's loss, against its reference's code.

What the loss tests cannot see: how each reference initialises its ResNet
and its heads. The configs are built, not trained (`jax.eval_shape` and
small initialisations only).
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import config_files
import runlocal_configs
from jaxssl import models
from jaxssl.models.resnet import ResNet

# Each residual block's last BatchNorm γ at initialisation, by reference:
# 0 in SimCLR (`init_zero=True`), BYOL (Haiku's `scale_init=jnp.zeros`),
# MoCo v3, SimSiam and Barlow Twins (torchvision `zero_init_residual=True`);
# 1 in MoCo v1/v2, DINO (torchvision's default), SwAV, WCL and SupContrast
# (their own ResNets, `zero_init_residual=False`), InstDisc and InvaSpread
# (lemniscate's and their own copies of torchvision's ResNet, without it),
# InfoMin (PyContrast's torchvision-style ResNet); CPC v2 has no released
# code: its configs keep the γ = 1 of a plain residual block (LayerNorm).
ZERO_INIT_RESIDUAL = {"simclr": True, "byol": True, "mocov3": True,
                      "simsiam": True, "barlow_twins": True, "mocov2": False,
                      "dino": False, "swav": False, "wcl": False,
                      "supcon": False, "instdisc": False,
                      "invaspread": False, "cmc": False, "infomin": False,
                      "cpc": False}
RESNET_CONFIGS = [n for n in runlocal_configs.CONFIGS if n != "quickstart"
                  and not n.endswith(("_vit_small", "_vit_cifar10"))]


def _reference(name):
  return next(m for m in ZERO_INIT_RESIDUAL if name.startswith(m + "_"))


@pytest.mark.parametrize("name", RESNET_CONFIGS)
def test_residual_bn_scale_starts_as_the_reference(name):
  """The config's ResNet starts its residual branches' last BN γ at 0 or 1
  as its reference does."""
  _, c = config_files.load(name)
  assert c.model.name == "resnet"
  encoder = models.create_encoder(c.model, None)
  assert encoder.zero_init_residual is ZERO_INIT_RESIDUAL[_reference(name)]


@pytest.mark.parametrize("depth,last", [(10, "bn2"), (50, "bn3")])
def test_zero_init_residual_sets_the_last_bn_scale_of_every_block(depth,
                                                                  last):
  """`zero_init_residual`: γ of each block's last BN is 0 (True) or 1
  (False); every other BN γ is 1."""
  x = jnp.zeros((1, 16, 16, 3))
  for zero in (True, False):
    model = ResNet(depth=depth, width_multiplier=1 / 16, cifar_stem=True,
                   zero_init_residual=zero)
    params = model.init(jax.random.key(0), x, train=False)["params"]
    blocks = [k for k in params if k.startswith("stage")]
    assert len(blocks) == (4 if depth == 10 else 16)
    for block in blocks:
      for bn, p in params[block].items():
        if "bn" in bn:
          want = 0.0 if zero and bn == last else 1.0
          np.testing.assert_array_equal(p["scale"], want, err_msg=block + bn)


@pytest.mark.parametrize("name", ["byol_resnet50", "byol_cifar10"])
def test_byol_heads_end_without_bias(name):
  """The BYOL reference's MLP (`byol/utils/networks.py`): Linear → BN →
  ReLU → Linear(with_bias=False), for projector and predictor."""
  _, c = config_files.load(name, "runlocal")
  for section in (c.head, c.predictor):
    head = models.create_head(section, c.model, None)
    params = jax.eval_shape(head.init, jax.random.key(0),
                            jnp.zeros((2, 16)))["params"]
    dense = sorted(k for k in params if "bn" not in k)
    assert len(dense) == 2, params.keys()
    for layer in dense:
      assert set(params[layer]) == {"kernel"}, (layer, params[layer].keys())


def test_swav_batchnorm_groups_of_512_images():
  """The batch-4096 scripts' `--sync_bn apex` (groups of 8 GPUs × 64
  images): `bn_num_groups` = batch / 512, following an overridden batch;
  the batch-256 scripts and batches under 512 synchronise globally. A mesh
  the groups cannot split is refused before anything compiles."""
  from jaxssl import sharding  # pylint: disable=import-outside-toplevel
  from jaxssl import train  # pylint: disable=import-outside-toplevel
  _, c = config_files.load("swav_resnet50")
  assert c.model.bn_num_groups == 8
  assert models.create_encoder(c.model, "data").bn_num_groups == 8
  assert models.create_head(c.head, c.model, "data").bn_num_groups == 8
  with c.unlocked():
    c.batch_size = 2048
  assert c.model.bn_num_groups == 4
  for variant in ("bs256", "runlocal"):
    assert config_files.load("swav_resnet50", variant)[1].model.bn_num_groups \
        == 0, variant
  with pytest.raises(ValueError, match="bn_num_groups=4 BatchNorm groups "
                     "need a multiple of 4 devices; the mesh has 2"):
    train.check_config(c, sharding.data_mesh(jax.devices()[:2]))


# ImageNet mean/std normalisation of the pretraining views, by reference:
# every torchvision reference (`transforms.Normalize`) and BYOL (after the
# augmentation, `dataset.normalize_images`); not SimCLR (pixels in [0, 1])
# nor SupContrast (no ImageNet recipe; CIFAR statistics on CIFAR), nor CMC
# (its views are Lab, normalised by its encoder); InfoMin normalises
# (PyContrast's `transforms.Normalize`), CPC v2 (no released code) too.
NORMALISED = {"simclr": False, "supcon": False, "byol": True, "mocov2": True,
              "mocov3": True, "simsiam": True, "barlow_twins": True,
              "dino": True, "swav": True, "wcl": True, "instdisc": True,
              "invaspread": True, "cmc": False, "infomin": True,
              "cpc": True}
IMAGENET_CONFIGS = [n for n in runlocal_configs.CONFIGS
                    if n.endswith(("_resnet50", "_vit_small"))]


@pytest.mark.parametrize("name", IMAGENET_CONFIGS)
def test_imagenet_views_are_normalised_as_the_reference(name):
  """Every view of the ImageNet config is ImageNet-normalised exactly when
  its reference's are (so are its evaluation images: they follow the
  first view's spec)."""
  from jaxssl import train  # pylint: disable=import-outside-toplevel
  _, c = config_files.load(name)
  want = NORMALISED[next(m for m in NORMALISED if name.startswith(m + "_"))]
  specs = train.config_view_specs(c)
  assert [s.normalize for s in specs] == [want] * len(specs), name


def test_normalize_key_overrides_the_preset_and_names_itself():
  from jaxssl import train  # pylint: disable=import-outside-toplevel
  _, c = config_files.load("simclr_resnet50")
  with c.unlocked():
    c.augment.normalize = "imagenet"
  assert all(s.normalize for s in train.config_view_specs(c))
  with c.unlocked():
    c.augment.normalize = "mean"
  with pytest.raises(ValueError, match="config.augment.normalize='mean' is "
                     "not one of"):
    train.config_view_specs(c)


# The linear-classification scripts behind each method's quoted figures:
# (optimizer, rate at the script's batch, batch, epochs, schedule, weight
# decay, Nesterov, classifier init). moco `main_lincls.py` (lr 30, schedule
# 60 80); moco-v3 `main_lincls.py` (lr 0.1·B/256, ViT `--lr=3`, cosine by
# epoch); swav `eval_linear.py` (lr 0.3, wd 1e-6, CosineAnnealingLR);
# dino `eval_linear.py` (lr 0.001·B/256, 128 × 8); simsiam `main_lincls.py
# --lars` (LARC 0.001, lr 0.1·B/256, 4096); barlowtwins `evaluate.py`
# (lr-classifier 0.3, wd 1e-6); WCL `linear_eval.py` (0.2·4096/256,
# Nesterov, 80 epochs, cosine by iteration).
LINEAR_SCRIPTS = {
    "simclr": ("sgd", 0.1 * 4096 / 256, 4096, 90, "warmup_cosine", 0.0,
               True, "zeros"),
    "byol": ("sgd", 0.2 * 1024 / 256, 1024, 80, "warmup_cosine", 0.0, True,
             "zeros"),
    "moco": ("sgd", 30.0, 256, 100, "multistep", 0.0, False, "normal"),
    "mocov3": ("sgd", 0.4, 1024, 90, "epoch_cosine", 0.0, False, "normal"),
    "mocov3_vit": ("sgd", 12.0, 1024, 90, "epoch_cosine", 0.0, False,
                   "normal"),
    "swav": ("sgd", 0.3, 256, 100, "epoch_cosine", 1e-6, False, "normal"),
    "dino": ("sgd", 0.004, 1024, 100, "epoch_cosine", 0.0, False, "normal"),
    "simsiam": ("lars", 1.6, 4096, 90, "epoch_cosine", 0.0, False, "normal"),
    "barlow_twins": ("sgd", 0.3, 256, 100, "epoch_cosine", 1e-6, False,
                     "normal"),
    "wcl": ("sgd", 3.2, 4096, 80, "warmup_cosine", 0.0, True, "normal"),
}


@pytest.mark.parametrize("protocol", sorted(LINEAR_SCRIPTS))
def test_linear_protocol_is_the_reference_script(protocol):
  """`configs/linear_eval.py:protocol=P`: the script's optimiser, rate at
  its batch, batch, epochs, schedule, decay, momentum and classifier init;
  no warm-up; MoCo's steps at epochs 60 and 80, SimSiam's LARC (η 0.001)
  over the classifier."""
  from jaxssl import schedules  # pylint: disable=import-outside-toplevel
  _, c = config_files.load("linear_eval", f"protocol={protocol}")
  name, rate, batch, epochs, schedule, wd, nesterov, init = (
      LINEAR_SCRIPTS[protocol])
  opt = c.optimizer
  assert (opt.name, c.batch_size, c.epochs, opt.schedule, opt.weight_decay,
          opt.nesterov, c.classifier_init, opt.momentum, opt.warmup_epochs
          ) == (name, batch, epochs, schedule, wd, nesterov, init, 0.9, 0.0)
  assert schedules.scale_learning_rate(
      opt.base_lr, c.batch_size, opt.lr_scaling) == pytest.approx(rate)
  if protocol == "moco":
    assert (tuple(opt.decay_epochs), opt.decay_factor) == ((60, 80), 0.1)
  if protocol == "simsiam":
    assert (opt.trust_ratio, opt.trust_coefficient, opt.adapt_classifier,
            opt.lr_in_momentum) == ("larc", 1e-3, True, False)


@pytest.mark.parametrize("name,protocol", [
    ("simclr_resnet50", "simclr"), ("byol_resnet50", "byol"),
    ("mocov2_resnet50", "moco"), ("mocov3_resnet50", "mocov3"),
    ("mocov3_vit_small", "mocov3_vit"), ("swav_resnet50", "swav"),
    ("dino_resnet50", "dino"), ("dino_vit_small", "dino"),
    ("simsiam_resnet50", "simsiam"),
    ("barlow_twins_resnet50", "barlow_twins"), ("wcl_resnet50", "wcl"),
    ("instdisc_resnet50", "moco"), ("invaspread_resnet50", "moco"),
    ("cmc_resnet50", "moco")])
def test_method_config_names_its_linear_protocol(name, protocol):
  doc = config_files.load(name)[0].__doc__
  assert f"configs/linear_eval.py:protocol={protocol}`" in doc, name


def test_multistep_schedule_steps_down_at_the_epochs():
  """'multistep' (MoCo's `adjust_learning_rate` with `--schedule 60 80`):
  peak·0.1^k with k the decay epochs reached, epochs of ⌊N/B⌋ steps."""
  from jaxssl import config_utils  # pylint: disable=import-outside-toplevel
  from jaxssl import schedules  # pylint: disable=import-outside-toplevel
  opt = config_utils.base_config().optimizer
  opt.schedule, opt.warmup_epochs, opt.base_lr = "multistep", 0.0, 30.0
  opt.decay_epochs, opt.decay_factor = (2, 3), 0.1
  fn = schedules.from_config(opt, batch_size=256, num_examples=1000,
                             epochs=4, total_steps=12)  # 3 steps per epoch
  got = [float(fn(t)) for t in range(12)]
  want = [30.0] * 6 + [3.0] * 3 + [0.3] * 3
  np.testing.assert_allclose(got, want, rtol=1e-6)
  # Given multipliers (InvaSpread's 0.1, then 0.05): not powers of 0.1.
  opt.decay_values = (0.1, 0.05)
  fn = schedules.from_config(opt, batch_size=256, num_examples=1000,
                             epochs=4, total_steps=12)
  np.testing.assert_allclose([float(fn(t)) for t in range(12)],
                             [30.0] * 6 + [3.0] * 3 + [1.5] * 3, rtol=1e-6)
  opt.decay_values = (0.1,)
  with pytest.raises(ValueError, match="needs one value per decay epoch"):
    schedules.from_config(opt, batch_size=256, num_examples=1000, epochs=4,
                          total_steps=12)
  opt.decay_values = ()
  opt.warmup_epochs = 1.0
  with pytest.raises(ValueError, match="'multistep' has no warm-up"):
    schedules.from_config(opt, batch_size=256, num_examples=1000, epochs=4,
                          total_steps=12)


def test_normal_classifier_init_and_larc_over_the_classifier():
  """`classifier_init='normal'`: kernel N(0, 0.01²), bias 0; a wrong name
  names the key. `adapt_classifier`: LARS/LARC scales the classifier's
  update by its trust ratio η‖W‖/‖g‖ (SimSiam's LARC over `fc`); without
  it the classifier is outside the ratio (SimCLR's fine-tuning)."""
  from jaxssl import downstream  # pylint: disable=import-outside-toplevel
  from jaxssl.evaluators import linear_probe  # pylint: disable=import-outside-toplevel
  params = linear_probe.Linear(1000, "normal").init(
      jax.random.key(0), jnp.zeros((1, 512)))["params"]["head"]
  assert abs(float(np.std(params["kernel"])) - 0.01) < 0.0003
  np.testing.assert_array_equal(params["bias"], 0.0)
  with pytest.raises(ValueError, match="config.classifier_init='xavier'"):
    linear_probe.Linear(10, "xavier").init(jax.random.key(0),
                                           jnp.zeros((1, 4)))
  _, c = config_files.load("linear_eval", "protocol=simsiam")
  tree = {"classifier": {"head": {"kernel": jnp.full((4, 3), 0.5),
                                  "bias": jnp.zeros((3,))}}}
  grads = jax.tree.map(lambda p: jnp.full(p.shape, 2.0), tree)
  steps = {}
  for adapt in (True, False):
    with c.unlocked():
      c.optimizer.adapt_classifier = adapt
      c.optimizer.decay_mask = "all" if adapt else "kernels"
    tx = downstream.optimizer(c.optimizer, 1.0)
    updates, _ = tx.update(grads, tx.init(tree), tree)
    steps[adapt] = np.asarray(updates["classifier"]["head"]["kernel"])
  p_norm, g_norm = np.sqrt(12 * 0.25), np.sqrt(12 * 4.0)
  np.testing.assert_allclose(steps[True], -1e-3 * p_norm / (g_norm + 1e-8)
                             * 2.0, rtol=1e-5)
  np.testing.assert_allclose(steps[False], -2.0, rtol=1e-6)


def test_dino_linear_features_of_a_vit():
  """DINO's `eval_linear.py` features: 'last4_cls' concatenates the class
  token after the final LayerNorm of each of the last 4 blocks (block i's
  equals the plain ViT of depth i + 1 on the same parameters),
  'cls_avgpool' the final class token and the mean of the final patch
  tokens; `linear_eval.linear_encoder` picks them for protocol=dino (ViT-S:
  last 4, ViT-B: avgpool), and leaves a ResNet alone."""
  from jaxssl import linear_eval  # pylint: disable=import-outside-toplevel
  from jaxssl.models import vit  # pylint: disable=import-outside-toplevel
  model = vit.create("tiny", depth=5, patch_size=4, pos_embed="learned",
                     image_size=16, init_scheme="dino")
  x = jax.random.uniform(jax.random.key(1), (2, 16, 16, 3))
  variables = model.init(jax.random.key(0), x, train=False)
  last4 = model.clone(representation="last4_cls").apply(variables, x,
                                                         train=False)
  width = model.width
  assert last4.shape == (2, 4 * width)
  for k, depth in enumerate(range(2, 6)):
    want = model.clone(depth=depth).apply(variables, x, train=False)
    np.testing.assert_allclose(last4[:, k * width:(k + 1) * width], want,
                               rtol=1e-5, atol=1e-6)
  both, inter = model.clone(representation="cls_avgpool").apply(
      variables, x, train=False, capture_intermediates=True)
  tokens = inter["intermediates"]["norm"]["__call__"][-1]
  np.testing.assert_allclose(both[:, :width], tokens[:, 0], rtol=1e-6)
  np.testing.assert_allclose(both[:, width:], tokens[:, 1:].mean(1),
                             rtol=1e-5, atol=1e-6)
  assert vit.dino_linear_representation("small") == "last4_cls"
  assert vit.dino_linear_representation("base") == "cls_avgpool"
  _, lin = config_files.load("linear_eval", "protocol=dino")
  _, pre = config_files.load("dino_vit_small")
  assert linear_eval.linear_encoder(model, lin, pre).representation == (
      "last4_cls")
  _, pre = config_files.load("dino_resnet50")
  resnet = models.create_encoder(pre.model, None)
  assert linear_eval.linear_encoder(resnet, lin, pre) is resnet
