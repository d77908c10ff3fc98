"""The train step: 1 device and 8 devices agree on the same global batch.

Global BatchNorm, cross-device negatives and the gradient reduction under
`shard_map` each change the result if done wrong (per-device BN statistics,
local negatives, a pmap-style extra `psum` making gradients N× too large);
all show up here as a mismatch between a 1-device and an 8-device mesh. The
runs are in float64 (`mesh_runs.float64`), where the two meshes agree to
~1e-14 on any processor and a fault is off by > 1e-3.
"""

import dataclasses
import functools

import flax.linen as nn
import jax
import jax.numpy as jnp
from jax.sharding import PartitionSpec as P
import numpy as np
import optax
import pytest

import mesh_runs
from jaxssl import checkpointing
from jaxssl import losses
from jaxssl import optim
from jaxssl import sharding
from jaxssl import train
from jaxssl import view_presets
from jaxssl.methods import base
from jaxssl.methods import simclr
from jaxssl.models.heads import ProjectionHead
from jaxssl.models.resnet import ResNet

GLOBAL_BATCH = 16
IMAGE_SIZE = 8
GROUPS = view_presets.view_groups("simclr_cifar", image_size=IMAGE_SIZE,
                             color_strength=0.5, blur=True)

# The step tests' views (`mesh_runs.crop_and_flip`).
STEP_GROUPS = mesh_runs.crop_and_flip(GROUPS)


def _learner(tx, bn_axis=sharding.DATA_AXIS):
  network = base.Network(
      ResNet(depth=10, width_multiplier=1 / 16, cifar_stem=True,
             axis_name=bn_axis),
      ProjectionHead(num_layers=2, out_dim=16, axis_name=bn_axis))
  method = base.Method(name="simclr", views={"global": 2}, network=network,
                       loss=functools.partial(simclr.loss,
                                              temperature=0.2))
  return train.Learner(method=method, tx=tx,
                       schedule=lambda step: 0.1 + 0.05 * step,
                       views=STEP_GROUPS)


def _batches():
  return mesh_runs.random_batches(2, GLOBAL_BATCH, IMAGE_SIZE)


def _run(learner, num_devices, steps=2):
  init, state, metrics = mesh_runs.run(learner, num_devices,
                                       _batches()[:steps])
  return init.params, state, metrics


_assert_trees_close = mesh_runs.assert_trees_close


@pytest.fixture(scope="module")
def lars_runs():
  with mesh_runs.float64():
    learner = _learner(_lars())
    return _run(learner, 1), _run(learner, 8)


def _lars():
  # A changing learning rate of the size the reference uses for biases and BN
  # parameters (which get no trust ratio) in a short run.
  return optim.lars(lambda c: 0.1 + 0.05 * c, weight_decay=1e-4)


def test_lars_two_steps_match_on_1_and_8_devices(lars_runs):
  """Loss, gradient norm, parameters, LARS momenta and BN statistics after
  2 steps, to `mesh_runs.RTOL` (1e-10) of each leaf's scale in float64."""
  (init1, state1, metrics1), (init8, state8, metrics8) = lars_runs
  _assert_trees_close(init1, init8, rtol=0)
  assert jax.tree.leaves(init1)[0].dtype == np.float64
  mesh_runs.assert_metrics_close(
      metrics1, metrics8,
      ("loss", "contrast_acc", "grad_norm", "embed_std", "lr"))
  _assert_trees_close(state1.params, state8.params, rtol=mesh_runs.RTOL)
  _assert_trees_close(state1.opt_state, state8.opt_state, rtol=mesh_runs.RTOL)
  _assert_trees_close(state1.batch_stats, state8.batch_stats,
                      rtol=mesh_runs.RTOL)
  assert int(state1.step) == int(state8.step) == 2


def test_per_device_batchnorm_cannot_silently_happen():
  """Per-device BN statistics would differ between devices, so shard_map's
  replication check (check_vma) refuses the replicated state at trace time."""
  with pytest.raises(ValueError, match="replicated"):
    _run(_learner(_lars(), bn_axis=None), 8, steps=1)


def test_training_changed_params_and_bn_statistics(lars_runs):
  """Guards the test above against comparing two untouched states."""
  (init1, state1, metrics1), _ = lars_runs
  deltas = jax.tree.map(lambda a, b: np.abs(a - b).max(), init1, state1.params)
  assert min(jax.tree.leaves(deltas)) > 0
  means = jax.tree.leaves(state1.batch_stats)
  assert max(np.abs(m).max() for m in means) > 0
  assert np.isfinite(metrics1[-1]["loss"])
  # lr is the schedule at the step before the update.
  np.testing.assert_allclose([m["lr"] for m in metrics1], [0.1, 0.15])


def test_sgd_update_equals_global_gradient_on_1_and_8_devices():
  """Plain SGD exposes the gradient's scale: an extra psum would make it 8×."""
  with mesh_runs.float64():
    learner = _learner(optax.sgd(0.1))
    (init1, state1, m1), (init8, state8, m8) = (_run(learner, 1, steps=1),
                                                _run(learner, 8, steps=1))
  delta1 = jax.tree.map(lambda a, b: a - b, state1.params, init1)
  delta8 = jax.tree.map(lambda a, b: a - b, state8.params, init8)
  _assert_trees_close(delta1, delta8, rtol=mesh_runs.RTOL)
  mesh_runs.assert_metrics_close(m1, m8, ("loss", "grad_norm"))
  # SGD: ||Δθ|| = lr·||g|| (float64 rounding of θ + Δθ − θ: ~1e-16 of |θ|).
  norm = np.sqrt(sum(np.sum(np.square(d)) for d in jax.tree.leaves(delta1)))
  np.testing.assert_allclose(norm, 0.1 * m1[0]["grad_norm"], rtol=1e-12)


@mesh_runs.float64()
def test_views_depend_on_example_not_on_device_count():
  """The views of one batch on 8 devices equal those made on one (float64:
  the same per-image arithmetic, vectorised over 2 or 16 images)."""
  images = jnp.asarray(_batches()[0])
  rng = jax.random.key(3)
  whole = train.make_views({"image": images}, rng, groups=GROUPS,
                           axis_name=None)["global"]
  mesh = sharding.data_mesh()
  views = jax.jit(jax.shard_map(
      lambda x: train.make_views({"image": x}, rng, groups=GROUPS)["global"],
      mesh=mesh, in_specs=jax.sharding.PartitionSpec("data"),
      out_specs=jax.sharding.PartitionSpec("data")))(images)
  # Per device the local output is [view1; view2] of its 2 images.
  assert views.dtype == whole.dtype == np.float64
  views = np.asarray(views).reshape(8, 2, 2, IMAGE_SIZE, IMAGE_SIZE, 3)
  whole = np.asarray(whole).reshape(2, 8, 2, IMAGE_SIZE, IMAGE_SIZE, 3)
  np.testing.assert_allclose(views, whole.transpose(1, 0, 2, 3, 4, 5),
                             rtol=0, atol=1e-13)
  v1, v2 = np.split(np.asarray(whole).reshape(32, -1), 2)
  assert np.abs(v1 - v2).max() > 0.1  # the two views differ
  other = train.make_views({"image": images}, jax.random.key(4),
                           groups=GROUPS, axis_name=None)["global"]
  assert np.abs(np.asarray(other) - np.asarray(whole).reshape(other.shape)).max() > 0.1


def test_batch_not_divisible_by_devices_is_a_clear_error():
  mesh = sharding.data_mesh()
  with pytest.raises(ValueError, match=r"batch_size=12 .*8"):
    sharding.check_batch_size(12, mesh)


def test_identical_images_get_different_views_per_position_and_step():
  """Keys come from (step, global example index): copies of one image at
  different positions (devices) or steps are augmented differently."""
  image = _batches()[0][:1]
  images = jnp.asarray(np.repeat(image, 16, axis=0))
  mesh = sharding.data_mesh()
  fn = jax.jit(jax.shard_map(
      lambda x, k: train.make_views({"image": x}, k, groups=GROUPS)["global"],
      mesh=mesh, in_specs=(jax.sharding.PartitionSpec("data"),
                           jax.sharding.PartitionSpec()),
      out_specs=jax.sharding.PartitionSpec("data")))
  step0 = np.asarray(fn(images, jax.random.fold_in(jax.random.key(0), 0)))
  step1 = np.asarray(fn(images, jax.random.fold_in(jax.random.key(0), 1)))
  view1 = step0.reshape(8, 2, 2, -1)[:, 0]  # first view, [device, example]
  flat = view1.reshape(16, -1)
  distinct = {flat[i].tobytes() for i in range(16)}
  assert len(distinct) == 16
  assert np.abs(step0 - step1).max() > 0.1


def _multicrop_objective(online, target, method_state, ctx):
  """A toy multi-crop loss: NT-Xent of the two global views plus each local
  view's negative cosine to global view 1 (stop-gradient)."""
  del target, method_state
  z1, z2 = base.split_views(online["global"]["z"], 2)
  value = losses.nt_xent(z1, z2, 0.2, axis_name=ctx.axis_name)
  local = sum(jnp.mean(losses.negative_cosine(zl, jax.lax.stop_gradient(z1)))
              for zl in base.split_views(online["local"]["z"], 6))
  return value + local, {"local": local}


class _ConvBN(nn.Module):
  """A convolution, global BatchNorm and pooling: the least encoder whose
  BN statistics span the devices (a ResNet's blocks repeat this and add
  minutes of float64 compilation, not coverage)."""

  @nn.compact
  def __call__(self, x, train=True):
    full = jnp.result_type(float)
    x = nn.Conv(8, (3, 3), use_bias=False, param_dtype=full,
                name="stem_conv")(x)
    x = nn.BatchNorm(use_running_average=not train, momentum=0.9,
                     axis_name=sharding.DATA_AXIS, param_dtype=full,
                     name="stem_bn")(x)
    return jnp.mean(nn.relu(x), axis=(1, 2))


def test_multicrop_views_of_two_sizes_on_1_and_8_devices():
  """The 'multicrop' preset (2 global crops at 16 px, 6 local at 7 px) through
  the one step: each group encoded at its own size, the heads over all
  views; loss, parameters and BN statistics agree on 1 and 8 devices
  (float64), and the local views' term is in the loss."""
  groups = view_presets.view_groups("multicrop", image_size=16,
                                    color_strength=0.5, blur=False)
  assert {g: (len(s), s[0].size) for g, s in groups.items()} == {
      "global": (2, 16), "local": (6, 7)}
  network = base.Network(
      _ConvBN(),
      ProjectionHead(num_layers=2, out_dim=16, axis_name=sharding.DATA_AXIS))
  method = base.Method(name="toy_multicrop", views={"global": 2, "local": 6},
                       network=network, loss=_multicrop_objective)
  learner = train.Learner(method=method, tx=optax.sgd(0.1),
                          schedule=lambda step: 0.1,
                          views=mesh_runs.crop_and_flip(groups))
  batches = mesh_runs.random_batches(1, GLOBAL_BATCH, 16, seed=4)
  with mesh_runs.float64():
    init1, state1, m1 = mesh_runs.run(learner, 1, batches)
    _, state8, m8 = mesh_runs.run(learner, 8, batches)
  mesh_runs.assert_metrics_close(m1, m8, ("loss", "grad_norm", "embed_std"))
  assert np.isfinite(m1[0]["loss"])
  _assert_trees_close(state1.params, state8.params, rtol=mesh_runs.RTOL)
  _assert_trees_close(state1.batch_stats, state8.batch_stats,
                      rtol=mesh_runs.RTOL)
  kernel = lambda s: np.asarray(s.params["encoder"]["stem_conv"]["kernel"])
  assert np.abs(kernel(state1) - kernel(init1)).max() > 1e-6
  # The local views' term is part of the loss (6 cosines in [-1, 1]).
  assert 0 < abs(m1[0]["local"]) <= 6 and m1[0]["loss"] != m1[0]["local"]


class _Rows(nn.Module):
  """A per-example encoder without normalisation (cheap to compile)."""

  @nn.compact
  def __call__(self, x, train=True):
    del train
    return nn.Dense(8, param_dtype=jnp.result_type(float))(
        jnp.mean(x, axis=(1, 2)))


def _bank_update(bank, online, target, ctx):
  """Writes each local example's first-view embedding into this device's
  rows of the row-sharded bank (local row i ↔ example i), and counts the
  steps in the replicated part."""
  del target
  z1 = base.split_views(online["global"]["z"], 2)[0]
  return {"rows": bank["rows"] + z1, "steps": bank["steps"] + 1}


def test_method_state_sharded_over_devices_is_updated_after_the_gradient(
    tmp_path):
  """A method state laid out `P('data')` (a per-example bank) holds N/D
  rows per device and is updated outside the gradient with the step's
  outputs: after two steps the global bank on 8 devices equals the one on 1
  device and the sum of the two steps' first-view embeddings (float64); the
  loss never reads it, so the parameters are those of the same method
  without state."""
  d = 4
  network = base.Network(_Rows(), ProjectionHead(
      num_layers=1, out_dim=d, use_bn=False, axis_name=sharding.DATA_AXIS))
  loss = functools.partial(simclr.loss, temperature=0.2)
  state = base.State(
      init=lambda num_shards: {"rows": jnp.zeros((GLOBAL_BATCH, d)),
                    "steps": jnp.zeros([], jnp.int32)},
      update=_bank_update,
      specs={"rows": P(sharding.DATA_AXIS), "steps": P()})
  method = base.Method(name="toy_bank", views={"global": 2}, network=network,
                       loss=loss, state=state)
  learner = train.Learner(method=method, tx=optax.sgd(0.1),
                          schedule=lambda step: 0.1, views=STEP_GROUPS)
  batches = _batches()
  with mesh_runs.float64():
    _, state1, _ = mesh_runs.run(learner, 1, batches)
    mesh = sharding.data_mesh()
    state8 = train.create_train_state(jax.random.key(0), learner, mesh)
    assert state8.method_state["rows"].sharding.spec == P(sharding.DATA_AXIS)
    assert state8.method_state["rows"].addressable_shards[0].data.shape == (
        GLOBAL_BATCH // 8, d)
    step_fn = train.compile_train_step(learner, mesh)
    zs = []
    for images in batches:
      # The step's first-view embeddings, from the parameters before it.
      view_rng = jax.random.split(jax.random.fold_in(state8.rng,
                                                     state8.step))[0]
      views = train.make_views({"image": images}, view_rng,
                               groups=STEP_GROUPS,
                               axis_name=None)["global"][:GLOBAL_BATCH]
      zs.append(network.apply({"params": jax.device_get(state8.params)},
                              views, train=False)["z"])
      state8, _ = step_fn(state8, sharding.global_batch({"image": images},
                                                        mesh))
    plain = dataclasses.replace(learner, method=dataclasses.replace(
        method, state=None))
    _, state_plain, _ = mesh_runs.run(plain, 8, batches)
  bank8 = jax.device_get(state8.method_state)
  assert int(bank8["steps"]) == int(state1.method_state["steps"]) == 2
  _assert_trees_close(bank8["rows"], state1.method_state["rows"],
                      rtol=mesh_runs.RTOL)
  np.testing.assert_allclose(bank8["rows"], zs[0] + zs[1], rtol=1e-12)
  _assert_trees_close(jax.device_get(state8.params), state_plain.params,
                      rtol=0)
  # A checkpoint keeps it, restored with its row sharding.
  ckpt = checkpointing.Checkpointer(tmp_path / "ckpt", every_steps=1,
                                    asynchronous=False)
  assert ckpt.save(state8, force=True)
  ckpt.wait()
  with mesh_runs.float64():
    template = train.create_train_state(jax.random.key(1), learner, mesh)
    restored = ckpt.restore(template)
  ckpt.close()
  assert restored.method_state["rows"].sharding.spec == P(sharding.DATA_AXIS)
  np.testing.assert_array_equal(jax.device_get(restored.method_state["rows"]),
                                bank8["rows"])
