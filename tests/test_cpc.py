"""CPC v2: the patch grid, the context network's mask (gradients), the
patch InfoNCE against a float64 formula on 4 devices, the per-patch
augmentation, the encoder protocol, and 1 vs 8 devices over 2 steps."""

import jax
from jax import lax
import jax.numpy as jnp
from jax.sharding import PartitionSpec as P
import numpy as np
import pytest

import mesh_runs
import numeric
from jaxssl import augment
from jaxssl import losses
from jaxssl import sharding
from jaxssl import train
from jaxssl.methods import cpc
from jaxssl.models import patches


def test_patchify_cuts_the_overlapping_grid():
  """Patch (i, j) is rows i·s … i·s + p − 1, columns j·s … j·s + p − 1;
  a grid that does not tile the image names the keys."""
  x = np.arange(2 * 10 * 10 * 3).reshape(2, 10, 10, 3)
  grid = np.asarray(patches.patchify(jnp.asarray(x), 4, 3))
  assert grid.shape == (2, 3, 3, 4, 4, 3)
  for i in range(3):
    for j in range(3):
      np.testing.assert_array_equal(grid[:, i, j],
                                    x[:, 3 * i:3 * i + 4, 3 * j:3 * j + 4])
  assert patches.grid_size(260, 80, 36) == 6
  assert patches.grid_size(224, 80, 36) == 5
  with pytest.raises(ValueError, match="patches of 80 px every 36 px do not "
                     "tile a 256 px image"):
    patches.grid_size(256, 80, 36)


@mesh_runs.float64()
def test_context_never_sees_the_rows_it_predicts():
  """The gradient of the context (so of every prediction) at row r with
  respect to the feature grid is zero on every row below r, in every
  direction's turned grid, and non-zero exactly on rows r − 3 … r (each
  of the 3 blocks reaches one row further up: the mask is not trivially
  empty)."""
  rng = np.random.default_rng(0)
  grid = jnp.asarray(rng.normal(size=(1, 5, 4, 6)))
  net = patches.MaskedContext(hidden=8, num_blocks=3)
  variables = net.init(jax.random.key(0), grid)
  # Random biases too, so no ReLU is dead everywhere.
  variables = jax.tree.map(lambda p: jnp.asarray(rng.normal(size=p.shape)),
                           variables)
  for direction in patches.DIRECTIONS:
    def context_row(g, r, direction=direction):
      turned = patches.direction_view(g, direction)
      return jnp.sum(net.apply(variables, turned)[:, r])
    for r in range(5 if direction in ("down", "up") else 4):
      grad = np.asarray(jax.grad(context_row)(grid, r))
      turned = np.asarray(patches.direction_view(jnp.asarray(grad), direction))
      assert np.all(turned[:, r + 1:] == 0.0), (direction, r)
      assert np.all(turned[:, :max(r - 3, 0)] == 0.0), (direction, r)
      seen = np.abs(turned[:, max(r - 3, 0):r + 1]).sum(axis=(0, 2, 3))
      assert np.all(seen > 0), (direction, r)


def _infonce_float64(preds, targets, offset):
  """Per prediction: −log softmax of its positive among all B·H·W
  targets, written as loops."""
  b, h, w, _ = targets.shape
  flat = targets.reshape(-1, targets.shape[-1])
  total, count = 0.0, 0
  for i in range(b):
    for r in range(h - offset):
      for c in range(w):
        logits = flat @ preds[i, r, c]
        positive = (i * h + r + offset) * w + c
        top = logits.max()
        total += np.log(np.exp(logits - top).sum()) + top - logits[positive]
        count += 1
  return total / count


@mesh_runs.float64()
def test_patch_infonce_against_the_formula_on_4_devices():
  """`cpc_infonce` over 4 devices (2 images each, negatives gathered):
  the value equals the float64 loop formula, its gradient with respect to
  predictions and targets the central differences (targets also receive
  the gradient of serving as other predictions' negatives)."""
  rng = np.random.default_rng(1)
  preds = rng.normal(size=(8, 4, 3, 5)) * 0.5
  targets = rng.normal(size=(8, 4, 3, 5))
  offset = 2
  mesh = sharding.data_mesh(jax.devices()[:4])
  sharded = jax.jit(jax.shard_map(
      jax.value_and_grad(lambda p, t: lax.pmean(losses.cpc_infonce(
          p, t, offset=offset, axis_name="data"), "data"), argnums=(0, 1)),
      mesh=mesh, in_specs=(P("data"), P("data")),
      out_specs=(P(), (P("data"), P("data")))))
  value, (grad_p, grad_t) = sharded(jnp.asarray(preds), jnp.asarray(targets))
  want = _infonce_float64(preds, targets, offset)
  np.testing.assert_allclose(float(value), want, rtol=1e-12)
  np.testing.assert_allclose(
      np.asarray(grad_p), numeric.central_difference(
          lambda p: _infonce_float64(p, targets, offset), preds, 1e-5),
      rtol=1e-6, atol=1e-9)
  np.testing.assert_allclose(
      np.asarray(grad_t), numeric.central_difference(
          lambda t: _infonce_float64(preds, t, offset), targets, 1e-5),
      rtol=1e-6, atol=1e-9)
  # The bottom `offset` rows predict nothing.
  assert np.all(np.asarray(grad_p)[:, 4 - offset:] == 0.0)
  with pytest.raises(ValueError, match="offset 4 must be in"):
    losses.cpc_infonce(jnp.asarray(preds), jnp.asarray(targets), offset=4)


def test_patch_augment_drops_two_channels_and_flips():
  """Every patch keeps exactly one channel (the others 0), unchanged or
  mirrored; the kept channel and the flip vary over patches."""
  rng = np.random.default_rng(2)
  grid = rng.uniform(0.5, 1.0, size=(4, 3, 3, 5, 5, 3)).astype(np.float32)
  out = np.asarray(augment.patch_augment(jax.random.key(3), jnp.asarray(grid)))
  kept = (out != 0).any(axis=(-3, -2))  # [4, 3, 3, channels]
  assert np.all(kept.sum(-1) == 1)
  flips = []
  for idx in np.ndindex(grid.shape[:3]):
    c = int(np.argmax(kept[idx]))
    same = np.array_equal(out[idx][..., c], grid[idx][..., c])
    mirrored = np.array_equal(out[idx][..., c], grid[idx][:, ::-1, c])
    assert same or mirrored
    flips.append(mirrored)
  assert 0 < np.mean(flips) < 1 and len(set(kept.reshape(-1, 3).argmax(1))) == 3


def _config(**overrides):
  c = mesh_runs.tiny_config("cpc", batch_size=16, image_size=8)
  c.model.norm = "layer"
  c.augment.preset = "cpc"
  c.loss.patch_size = 4
  c.loss.patch_stride = 2
  c.loss.offsets = (1, 2)
  c.loss.target_dim = 6
  c.loss.context_hidden = 8
  c.loss.context_blocks = 2
  c.optimizer.name = "adamw"
  c.optimizer.base_lr = 0.01
  c.optimizer.warmup_epochs = 0.0
  return mesh_runs.finish_config(c, overrides)


def test_cpc_matches_on_1_and_8_devices():
  """Two steps of the whole model (3 × 3 grids, a row and a column
  direction, offsets 1 and 2) in float64: loss and each task's loss,
  parameters and optimizer state agree; no batch statistics (LayerNorm).
  Per-patch augmentation off: its draws follow the device key (module
  docstring)."""
  with mesh_runs.float64():
    learner = mesh_runs.cropped_learner(train.create_learner(
        _config(**{"loss.patch_augment": False,
                   "loss.directions": ("up", "left")}), 64))
    batches = mesh_runs.random_batches(2, 16, 8, seed=7)
    (init1, state1, m1), (_, state8, m8) = (
        mesh_runs.run(learner, 1, batches), mesh_runs.run(learner, 8, batches))
  keys = [k for k in m1[0] if k.startswith("loss_")]
  assert len(keys) == 4
  mesh_runs.assert_metrics_close(m1, m8, ("loss", "grad_norm", *keys))
  # log(16 images · 9 patches) per task at a fresh network, 4 tasks.
  assert abs(m1[0]["loss"] - 4 * np.log(144)) < 0.3, m1[0]["loss"]
  assert state1.batch_stats == {} and set(state1.params) == {
      "encoder", "projector", "context_up", "context_left",
      *(f"predict_{d}_k{k}" for d in ("up", "left") for k in (1, 2))}
  for part in ("params", "opt_state"):
    mesh_runs.assert_trees_close(getattr(state1, part), getattr(state8, part),
                                 rtol=mesh_runs.RTOL)
  assert m1[1]["loss"] < m1[0]["loss"]
  moved = jax.tree.map(lambda a, b: np.abs(a - b).max(), init1.params,
                       state1.params)
  assert min(jax.tree.leaves(moved)) > 0


def test_encoder_protocol_pools_the_grid_and_errors():
  """`h` of an image is the mean over its grid of the patch features, as
  `encode`; `z` the targets' projection of it. The config errors name the
  keys."""
  learner = train.create_learner(
      _config(**{"loss.directions": ("left",)}), 64)
  net = learner.method.network
  images = jnp.asarray(np.random.default_rng(4).uniform(size=(2, 8, 8, 3)))
  variables = net.init(jax.random.key(0), images)
  out = net.apply(variables, images)
  grid = net.apply(variables, patches.patchify(images, 4, 2), train=False,
                   method="grid_outputs")
  np.testing.assert_allclose(out["h"], grid["h"], rtol=1e-6)
  np.testing.assert_allclose(
      out["h"], net.apply(variables, images, method="encode"), rtol=0)
  assert grid["targets"].shape == (2, 3, 3, 6)
  assert grid["predictions_left"].shape == (2, 3, 3, 2, 6)
  for key, value, match in (
      ("loss.offsets", (3,), r"config.loss.offsets=\(3,\) must be in "
       r"\[1, 2\] for a 3 × 3 patch grid"),
      ("loss.directions", ("diagonal",), "config.loss.directions"),
      ("model.norm", "batch", "set config.model.norm='layer'"),
      ("loss.patch_stride", 3, "do not tile a 8 px image")):
    with pytest.raises(ValueError, match=match):
      train.create_learner(_config(**{key: value}), 64)
