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
# (their own ResNets, `zero_init_residual=False`).
ZERO_INIT_RESIDUAL = {"simclr": True, "byol": True, "mocov3": True,
                      "simsiam": True, "barlow_twins": True, "mocov2": False,
                      "dino": False, "swav": False, "wcl": False,
                      "supcon": False}
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
# nor SupContrast (no ImageNet recipe; CIFAR statistics on CIFAR).
NORMALISED = {"simclr": False, "supcon": False, "byol": True, "mocov2": True,
              "mocov3": True, "simsiam": True, "barlow_twins": True,
              "dino": True, "swav": True, "wcl": True}
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
