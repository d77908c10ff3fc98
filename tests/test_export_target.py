"""The export sidecar names exactly the model that loads the weights.

Without torch or timm: for every ViT and ResNet config in configs/ (default
and `:runlocal`), the sidecar's constructor — timm's defaults for the name
(written out here from timm's model definitions) with the sidecar's
keywords on top — is the trained architecture (width, depth, heads, patch,
image size, position table), and the exported network is the evaluated
one. With torch and timm (skipped otherwise): MoCo v3's 12-head ViT-S and a
DINO ViT whose learned table is resampled load strictly into the sidecar's
model and give our features.
"""

import glob
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import config_files
from jaxssl import export
from jaxssl import export_target
from jaxssl import methods

# timm/models/vision_transformer.py: the names' model_args (img_size 224).
TIMM = {"vit_tiny_patch16_224": (192, 12, 3),
        "vit_small_patch16_224": (384, 12, 6),
        "vit_base_patch16_224": (768, 12, 12)}
WIDTHS = {"tiny": 192, "small": 384, "base": 768}
DEFAULT_HEADS = {"tiny": 3, "small": 6, "base": 12}


def _pretraining_configs():
  out = []
  for path in sorted(glob.glob(os.path.join(config_files.REPO, "configs",
                                            "*.py"))):
    name = os.path.basename(path)[:-3]
    for variant in (None, "runlocal"):
      _, c = config_files.load(name, variant)
      if "method" in c and c.model.name in ("vit", "resnet"):
        out.append((name, variant, c))
  _, c = config_files.load("mocov3_cifar10", "runlocal,vit")
  out.append(("mocov3_cifar10", "runlocal,vit", c))
  return out


def _timm_model(spec):
  """What timm builds: the name's defaults with the keywords on top."""
  width, depth, heads = TIMM[spec["name"]]
  made = dict(embed_dim=width, depth=depth, num_heads=heads, patch_size=16,
              img_size=224, class_token=True, global_pool="token",
              dynamic_img_size=False)
  made.update(spec["kwargs"])
  return made


def test_sidecar_names_the_trained_architecture_of_every_config():
  configs = _pretraining_configs()
  assert {n for n, _, c in configs if c.model.name == "vit"} >= {
      "mocov3_vit_small", "dino_vit_small", "simclr_vit_cifar10"}
  for name, variant, c in configs:
    where = f"{name}:{variant}"
    spec = export_target.sidecar(c, network="online")
    evaluated = methods.METHODS[c.method](
        c, axis_name=None, total_steps=1, num_examples=0).evaluated
    want_network = (evaluated if c.eval.get("network", "auto") == "auto"
                    else c.eval.network)
    assert spec["evaluated"] == want_network, where
    if c.model.name == "resnet":
      standard = (c.model.depth in (18, 34, 50, 101, 152)
                  and c.model.width == 1 and not c.model.cifar_stem
                  and not c.model.get("sk_ratio", 0)
                  and c.model.get("norm", "batch") == "batch")
      assert spec["name"] == (f"resnet{c.model.depth}" if standard
                              else None), where
      assert standard or spec["reason"], where
      assert spec["architecture"] == {
          "depth": c.model.depth, "width": c.model.width,
          "cifar_stem": bool(c.model.cifar_stem),
          "img_size": c.data.image_size}, where
      continue
    made = _timm_model(spec)
    assert made["num_classes"] == 0, where
    assert made["embed_dim"] == WIDTHS[c.model.variant], where
    assert made["depth"] == (c.model.vit_depth or 12), where
    assert made["num_heads"] == (c.model.num_heads
                                 or DEFAULT_HEADS[c.model.variant]), where
    assert made["patch_size"] == c.model.patch_size, where
    assert made["img_size"] == c.data.image_size, where
    assert (made["class_token"], made["global_pool"],
            made["dynamic_img_size"]) == (True, "token", False), where
    table = spec["pos_embed"]
    assert table["kind"] == c.model.pos_embed, where
    assert table["grid"] == c.data.image_size // c.model.patch_size, where
    if table["kind"] == "learned":
      trained = c.model.vit_image_size // c.model.patch_size
      assert table["trained_grid"] == trained, where
      assert table["resampled"] == (trained != table["grid"]), where
  mocov3 = export_target.sidecar(
      config_files.load("mocov3_vit_small")[1], network="online")
  assert mocov3["call"] == ("timm.create_model('vit_small_patch16_224', "
                            "num_classes=0, num_heads=12)")


def test_resnet_sidecars_name_torchvision_or_say_why_not():
  _, c = config_files.load("simclr_resnet50")
  spec = export_target.sidecar(c, network="online")
  assert spec["call"] == "torchvision.models.get_model('resnet50')"
  _, c = config_files.load("simclr_cifar10")
  spec = export_target.sidecar(c, network="online")
  assert spec["name"] is None and "CIFAR stem" in spec["reason"]
  assert spec["call"].startswith("# no torchvision constructor")
  with pytest.raises(ValueError, match="--network='teacher'"):
    export_target.sidecar(c, network="teacher")


def _timm_features(spec, state, x):
  torch = pytest.importorskip("torch")
  timm = pytest.importorskip("timm")
  net = timm.create_model(spec["name"], pretrained=False, **spec["kwargs"])
  net.load_state_dict({k: torch.from_numpy(np.array(v, np.float32))
                       for k, v in state.items()}, strict=True)
  net.eval()
  with torch.no_grad():
    return net(torch.from_numpy(x.transpose(0, 3, 1, 2))).numpy()


@pytest.mark.parametrize("name,overrides", [
    ("mocov3_vit_small", {"data.image_size": 32}),
    # DINO's table trained for 224 px, the network run (and exported) at
    # 32 px: the table is resampled with DINO's interpolation.
    ("dino_vit_small", {"data.image_size": 32, "model.vit_image_size": 224,
                        "model.vit_depth": 2})])
def test_timm_builds_the_sidecars_model_with_our_features(name, overrides):
  pytest.importorskip("torch")
  pytest.importorskip("timm")
  _, c = config_files.load(name)
  for key, value in overrides.items():
    section, field = key.split(".")
    c[section][field] = value
  network = export.method_network(c, axis_name=None)
  x = np.random.default_rng(0).uniform(size=(4, 32, 32, 3)).astype(
      np.float32)
  variables = network.init(jax.random.key(0), jnp.asarray(x), train=False)
  ours = np.asarray(network.apply(variables, jnp.asarray(x), train=False,
                                  method="encode"))
  spec = export_target.sidecar(c, network="online")
  if name == "dino_vit_small":
    assert spec["pos_embed"]["resampled"]
  state = export.timm_vit_state_dict(variables["params"]["encoder"],
                                     image_size=32)
  theirs = _timm_features(spec, state, x)
  np.testing.assert_allclose(theirs, ours, rtol=1e-4,
                             atol=1e-4 * np.abs(ours).max())
