"""Encoder export under torchvision ResNet key names."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import config_files
from jaxssl import export
from jaxssl import export_target
from jaxssl.models.resnet import ResNet


def _torchvision_resnet50_shapes(num_classes=1000):
  """torchvision.models.resnet50's state_dict keys and shapes, written out
  from its definition (Bottleneck, layers [3, 4, 6, 3], expansion 4)."""
  shapes = {"conv1.weight": (64, 3, 7, 7)}

  def bn(prefix, c):
    for name in ("weight", "bias", "running_mean", "running_var"):
      shapes[f"{prefix}.{name}"] = (c,)
    shapes[f"{prefix}.num_batches_tracked"] = ()

  bn("bn1", 64)
  inplanes = 64
  for layer, (blocks, planes) in enumerate(zip([3, 4, 6, 3],
                                               [64, 128, 256, 512]), 1):
    for b in range(blocks):
      p = f"layer{layer}.{b}"
      shapes[f"{p}.conv1.weight"] = (planes, inplanes, 1, 1)
      bn(f"{p}.bn1", planes)
      shapes[f"{p}.conv2.weight"] = (planes, planes, 3, 3)
      bn(f"{p}.bn2", planes)
      shapes[f"{p}.conv3.weight"] = (planes * 4, planes, 1, 1)
      bn(f"{p}.bn3", planes * 4)
      if b == 0:
        shapes[f"{p}.downsample.0.weight"] = (planes * 4, inplanes, 1, 1)
        bn(f"{p}.downsample.1", planes * 4)
      inplanes = planes * 4
  shapes["fc.weight"] = (num_classes, 2048)
  shapes["fc.bias"] = (num_classes,)
  return shapes


@pytest.fixture(scope="module")
def resnet50():
  model = ResNet(depth=50)
  variables = jax.jit(lambda: model.init(jax.random.key(0),
                                         jnp.zeros((1, 64, 64, 3)),
                                         train=False))()
  rng = np.random.default_rng(0)
  stats = jax.tree.map(lambda s: np.abs(rng.normal(size=s.shape)) + 0.5,
                       variables["batch_stats"])
  return model, {"params": variables["params"], "batch_stats": stats}


def test_every_torchvision_resnet50_key_with_its_shape(resnet50):
  _, variables = resnet50
  state = export.torchvision_state_dict(variables, 50)
  want = _torchvision_resnet50_shapes()
  assert len(want) == 320
  assert {k: tuple(v.shape) for k, v in state.items()} == want
  # torchvision's published parameter count of resnet50 (weights and fc).
  trainable = sum(v.size for k, v in state.items()
                  if not k.endswith(("running_mean", "running_var",
                                     "num_batches_tracked")))
  assert trainable == 25_557_032


def test_values_are_transposed_and_renamed(resnet50):
  _, variables = resnet50
  state = export.torchvision_state_dict(variables, 50)
  p, s = variables["params"], variables["batch_stats"]
  kernel = np.asarray(p["stage2_block1"]["conv2"]["kernel"])  # HWIO
  np.testing.assert_array_equal(state["layer2.0.conv2.weight"][5, 7, 0, 2],
                                kernel[0, 2, 7, 5])
  np.testing.assert_array_equal(state["layer3.0.downsample.0.weight"][:, :, 0,
                                                                      0],
                                np.asarray(p["stage3_block1"]["proj_conv"]
                                           ["kernel"])[0, 0].T)
  np.testing.assert_array_equal(state["layer4.2.bn3.running_var"],
                                s["stage4_block3"]["bn3"]["var"])
  np.testing.assert_array_equal(state["bn1.weight"], p["stem_bn"]["scale"])
  assert not state["fc.weight"].any()


def test_torchvision_gives_the_same_features(resnet50):
  """Where torch and torchvision are installed (the GPU image): the exported
  weights in the model the sidecar of configs/simclr_resnet50.py builds
  (torchvision's resnet50) give the Flax model's pooled features."""
  torch = pytest.importorskip("torch")
  torchvision = pytest.importorskip("torchvision")
  model, variables = resnet50
  state = export.torchvision_state_dict(variables, 50)
  spec = export_target.sidecar(config_files.load("simclr_resnet50")[1],
                               network="online")
  net = torchvision.models.get_model(spec["name"], **spec["kwargs"])
  net.load_state_dict({k: torch.from_numpy(np.array(v))
                       for k, v in state.items()}, strict=True)
  net.fc = torch.nn.Identity()
  net.eval()
  x = np.random.default_rng(1).uniform(size=(2, 64, 64, 3)).astype(np.float32)
  want = np.asarray(model.apply(variables, x, train=False))
  with torch.no_grad():
    got = net(torch.from_numpy(x.transpose(0, 3, 1, 2))).numpy()
  np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-4)
