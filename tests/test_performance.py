"""Mixed precision, rematerialisation, micro-batching, one compilation."""

import dataclasses
import functools

import flax.linen as nn
import jax
from jax.sharding import PartitionSpec as P
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import mesh_runs
from jaxssl import view_presets
from jaxssl import config_utils
from jaxssl import models
from jaxssl import precision
from jaxssl import schedules
from jaxssl import sharding
from jaxssl import train
from jaxssl.methods import base
from jaxssl.methods import byol
from jaxssl.methods import moco
from jaxssl.methods import simclr
from jaxssl.models.heads import ProjectionHead


def _learner(microbatches=1, **model):
  c = config_utils.base_config()
  c.train.microbatches = microbatches
  c.batch_size = 16
  c.epochs = 1
  c.data.image_size = 16
  c.augment.preset = "simclr_cifar"
  c.model.depth = 10
  c.model.width = 1 / 8
  c.model.cifar_stem = True
  c.probe.enabled = False
  c.optimizer.warmup_epochs = 0.0
  for key, value in model.items():
    c.model[key] = value
  # Crop-and-flip views: the dtypes, remat, compile counts and micro-batches
  # under test do not depend on the colour ops, which double the compile.
  return mesh_runs.cropped_learner(train.create_learner(c, 64))


# Views that reach the network unchanged (no flip, jitter, gray, blur): the
# tests below feed float64 "crops" in [0, 1] and compare gradients.
IDENTITY = {"global": (view_presets.ViewSpec(
    size=16, flip_prob=0.0, jitter_prob=0.0, grayscale_prob=0.0,
    blur_prob=0.0),) * 2}


def _first_step(learner):
  batches = mesh_runs.random_batches(1, 16, 16, seed=3)
  return mesh_runs.run(learner, 8, batches)


@functools.lru_cache(maxsize=None)
def _plain_first_step():
  """The float32, no-remat step the bf16 and remat tests compare with."""
  return _first_step(_learner(dtype="float32"))


def test_bfloat16_step_is_finite_and_close_to_float32():
  """bf16 encoder activations/matmuls; float32 params, BN statistics, heads
  and loss: the loss of the same batch within 1e-2 (relative: NT-Xent's
  scale grows with log batch) of float32, and not equal to it (bf16 is in
  effect); the parameters stay float32."""
  _, s32, m32 = _plain_first_step()
  init, s16, m16 = _first_step(_learner(dtype="bfloat16"))
  loss32, loss16 = float(m32[0]["loss"]), float(m16[0]["loss"])
  assert np.isfinite(loss16) and np.isfinite(float(m16[0]["grad_norm"]))
  assert abs(loss16 - loss32) <= 1e-2 * abs(loss32), (loss16, loss32)
  assert loss16 != loss32
  for leaf in jax.tree.leaves((s16.params, s16.batch_stats, s16.opt_state)):
    assert leaf.dtype in (np.float32, np.int32), leaf.dtype
  net = _learner(dtype="bfloat16").network
  x = np.zeros((2, 16, 16, 3), np.float32)
  out = net.apply({"params": init.params, "batch_stats": init.batch_stats}, x,
                  train=False)
  assert out["h"].dtype == np.float32 and out["z"].dtype == np.float32


def test_auto_dtype_is_float32_on_cpu_and_names_are_checked():
  assert models.compute_dtype("auto") == np.float32  # tests run on CPU
  with pytest.raises(ValueError, match="config.model.dtype='fp8'"):
    models.compute_dtype("fp8")


def _float_dtypes(state, metrics) -> set:
  return {leaf.dtype for leaf in jax.tree.leaves(
      (state.params, state.batch_stats, state.opt_state, metrics))
          if np.issubdtype(leaf.dtype, np.floating)}


def test_full_precision_is_float64_in_64_bit_mode():
  """Parameters, BN statistics, optimizer state, views, outputs and loss are
  JAX's default float: float64 under `jax.enable_x64` (the mode of the
  equivalence tests), with nothing left in float32 there; float32 otherwise
  (the float32 step the bf16 and remat tests share)."""
  with jax.enable_x64(True):
    assert models.compute_dtype("auto") == np.float64
    _, state, metrics = mesh_runs.run(_learner(), 1,
                                      mesh_runs.random_batches(1, 16, 16))
  assert _float_dtypes(state, metrics) == {np.dtype(np.float64)}
  assert models.compute_dtype("auto") == np.float32
  _, state, metrics = _plain_first_step()
  assert _float_dtypes(state, metrics) == {np.dtype(np.float32)}


@pytest.mark.parametrize("remat", ["block", "dots"])
def test_remat_gives_the_same_step(remat):
  """jax.checkpoint per block changes memory, not results."""
  _, plain, m_plain = _plain_first_step()
  _, remat_state, m_remat = _first_step(_learner(remat=remat))
  np.testing.assert_allclose(m_remat[0]["loss"], m_plain[0]["loss"],
                             rtol=1e-6)
  np.testing.assert_allclose(m_remat[0]["grad_norm"], m_plain[0]["grad_norm"],
                             rtol=1e-5)
  mesh_runs.assert_trees_close(remat_state.params, plain.params, rtol=1e-5)


@pytest.mark.parametrize("microbatches", [1, 2])
def test_one_compilation_for_five_steps(microbatches):
  """XLA compiles the step once over 5 steps: the state's shapes, dtypes and
  shardings do not change from step to step (donated, replicated), nor do
  the batches'. (Counted from JAX's backend-compile events; pjit's
  `_cache_size` can hold two entries for one executable.)"""
  learner = _learner(microbatches)
  mesh = sharding.data_mesh()
  state = train.create_train_state(jax.random.key(0), learner, mesh)
  step_fn = train.compile_train_step(learner, mesh)
  batches = [sharding.global_batch({"image": images}, mesh)
             for images in mesh_runs.random_batches(5, 16, 16)]
  compiles = []

  def listener(event, duration, **kwargs):
    del duration, kwargs
    if event == "/jax/core/compile/backend_compile_duration":
      compiles.append(event)

  jax.monitoring.register_event_duration_secs_listener(listener)
  try:
    for batch in batches:
      state, metrics = step_fn(state, batch)
    jax.block_until_ready(metrics)
  finally:
    jax.monitoring.unregister_event_duration_listener(listener)
  assert len(compiles) == 1


class PerExampleEncoder(nn.Module):
  """Convolutions without normalisation: each example's features depend on
  that example alone, so micro-batching cannot change them."""

  @nn.compact
  def __call__(self, x, train=True):
    del train
    conv = functools.partial(nn.Conv, param_dtype=precision.full_dtype())
    x = nn.gelu(conv(8, (3, 3), (2, 2))(x))
    x = nn.gelu(conv(16, (3, 3), (2, 2))(x))
    return jnp.mean(x, axis=(1, 2))


def _per_example_learner(method, microbatches, loop="auto"):
  """A per-example encoder with BatchNorm HEADS (which see the whole batch
  in the micro-batched step too)."""
  axis = train.DATA_AXIS
  head = functools.partial(ProjectionHead, num_layers=2, hidden_dim=32,
                           out_dim=16, axis_name=axis)
  if method == "simclr":
    m = base.Method(name="simclr", views={"global": 2},
                    network=base.Network(PerExampleEncoder(), head()),
                    loss=functools.partial(simclr.loss, temperature=0.2))
  elif method == "moco":  # each network sees one selected view
    m = base.Method(
        name="moco", views={"global": 2},
        network=base.Network(PerExampleEncoder(), head()),
        loss=functools.partial(moco.loss, temperature=0.2),
        forward=base.Forward(select=moco.QUERY),
        target=base.Target(
            network=base.Network(PerExampleEncoder(), head()),
            momentum=lambda step: 0.99,
            tracks=base.subtrees("encoder", "projector"),
            forward=base.Forward(select=moco.KEY)),
        state=base.State(
            init=lambda num_shards: moco.init_queue(jax.random.key(5), 64, 16),
            update=moco.update_queue))
  else:
    m = base.Method(
        name="byol", views={"global": 2},
        network=base.Network(PerExampleEncoder(), head(), head()),
        loss=byol.loss, forward=base.Forward(per_view=True),
        target=base.Target(
            network=base.Network(PerExampleEncoder(), head()),
            momentum=schedules.ema_momentum(0.99, 100),
            tracks=base.subtrees("encoder", "projector"),
            forward=base.Forward(per_view=True)))
  return train.Learner(method=m, tx=optax.sgd(0.1), schedule=lambda s: 0.1,
                       views=IDENTITY, microbatches=microbatches,
                       microbatch_loop=loop)


def _gradients(learner, num_devices, views, state=None):
  """The step's loss, gradients and BN statistics for the global views
  `[V, B, S, S, 3]` given as host crops (each device gets its rows of every
  view), and the initial state."""
  mesh = sharding.data_mesh(jax.devices()[:num_devices])
  if state is None:
    state = train.create_train_state(jax.random.key(0), learner, mesh)

  def per_device(state, views):
    ctx = base.StepContext(step=state.step, epoch=0.0, rng=jax.random.key(1),
                           axis_name=train.DATA_AXIS)
    result = train.forward_backward(state, {"views": list(views)},
                                    jax.random.key(2), ctx, learner=learner)
    return result.loss, result.grads, result.batch_stats, result.target_stats

  fn = jax.jit(jax.shard_map(per_device, mesh=mesh,
                             in_specs=(P(), P(None, train.DATA_AXIS)),
                             out_specs=P()))
  views = jax.device_put(views, jax.sharding.NamedSharding(
      mesh, P(None, train.DATA_AXIS)))
  return jax.device_get(fn(jax.device_put(state, sharding.replicated(mesh)),
                           views))


def _random_views(batch_size, seed=0):
  """float64 views `[2, B, 16, 16, 3]` in [0, 1] (the tests below run in
  float64)."""
  return np.random.default_rng(seed).uniform(size=(2, batch_size, 16, 16, 3))


@functools.lru_cache(maxsize=None)
@mesh_runs.float64()
def _full_step_gradients(method):
  return _gradients(_per_example_learner(method, 1), 8, _random_views(32))


@pytest.mark.parametrize("method", ["simclr", "byol", "moco"])
@pytest.mark.parametrize("num_devices,microbatches,loop", [
    (8, 4, "scan"), (8, 4, "unrolled"), (1, 4, "auto"), (2, 8, "auto")])
def test_microbatched_gradients_equal_the_full_step(method, num_devices,
                                                    microbatches, loop):
  """GradCache with a per-example encoder: the loss, every gradient (encoder
  summed over micro-batches; heads over the whole batch), the heads' BN
  statistics and the target's equal the full step on 8 devices (float64,
  `mesh_runs.RTOL`), with the micro-batches in a `lax.scan` or unrolled;
  also for MoCo, whose query and key networks each see one view of two."""
  views = _random_views(32)
  loss, grads, stats, target_stats = _full_step_gradients(method)
  with mesh_runs.float64():
    m_loss, m_grads, m_stats, m_target_stats = _gradients(
        _per_example_learner(method, microbatches, loop), num_devices, views)
  assert m_loss.dtype == np.float64
  assert {leaf.dtype for leaf in jax.tree.leaves(m_grads)} == {np.dtype(float)}
  np.testing.assert_allclose(m_loss, loss, rtol=mesh_runs.RTOL)
  assert set(m_grads) == set(grads) == set(
      ["encoder", "projector"] + (["predictor"] if method == "byol" else []))
  mesh_runs.assert_trees_close(m_grads, grads, rtol=mesh_runs.RTOL)
  mesh_runs.assert_trees_close(m_stats, stats, rtol=mesh_runs.RTOL)
  if method != "simclr":
    mesh_runs.assert_trees_close(m_target_stats, target_stats,
                                 rtol=mesh_runs.RTOL)
  # Not vacuous: every gradient leaf is non-zero.
  for leaf in jax.tree.leaves(grads["encoder"]):
    assert np.abs(leaf).max() > 1e-6


def test_microbatched_encoder_batchnorm_is_per_microbatch():
  """With BatchNorm in the encoder, micro-batching changes the step through
  BN alone: against float64 statistics of the stem convolution's output,
  the first BN's running statistics move by the full batch's mean and by
  the MEAN WITHIN-MICRO-BATCH variance (not the full batch's), and the
  gradients differ from the full step's (float64)."""
  views = 0.2 * _random_views(32, seed=1)
  # Brightness that depends on the micro-batch (image 4·d + i is in
  # micro-batch i), so that micro-batch statistics clearly differ.
  views += 0.25 * (np.arange(32) % 4)[None, :, None, None, None]
  with mesh_runs.float64():
    learner = dataclasses.replace(_learner(), views=IDENTITY)
    state = train.create_train_state(jax.random.key(0), learner,
                                     sharding.data_mesh())
    _, grads, stats, _ = _gradients(learner, 8, views, state)
    _, m_grads, m_stats, _ = _gradients(
        dataclasses.replace(learner, microbatches=4), 8, views, state)
  y = mesh_runs.stem_conv_float64(
      views, np.asarray(state.params["encoder"]["stem_conv"]["kernel"]))
  # 8 devices × 4 images: micro-batch i holds image 4·d + i of every device
  # and both of its views.
  micro = y.reshape(2, 8, 4, *y.shape[2:]).swapaxes(0, 2).reshape(
      4, -1, y.shape[-1])
  momentum = 0.9
  moved = lambda s, init: (s - momentum * init) / (1 - momentum)
  first = lambda s: s["encoder"]["stem_bn"]
  full_var = y.reshape(-1, y.shape[-1]).var(0)
  within_var = micro.var(1).mean(0)
  # Not vacuous: the between-micro-batch variance is a large part of it.
  assert np.sum(full_var - within_var) > 0.2 * np.sum(full_var)
  # (1 − momentum) = 0.1 divides the rounding of the running average: ~1e-15.
  np.testing.assert_allclose(moved(first(stats)["var"], 1.0), full_var,
                             rtol=1e-12)
  np.testing.assert_allclose(moved(first(m_stats)["var"], 1.0), within_var,
                             rtol=1e-12)
  for s in (stats, m_stats):
    np.testing.assert_allclose(moved(first(s)["mean"], 0.0),
                               y.reshape(-1, y.shape[-1]).mean(0),
                               rtol=1e-12, atol=1e-12)
  assert np.all(np.isfinite(m_grads["encoder"]["stem_conv"]["kernel"]))
  assert not np.allclose(m_grads["encoder"]["stem_conv"]["kernel"],
                         grads["encoder"]["stem_conv"]["kernel"], rtol=1e-2)


def test_microbatches_must_divide_the_per_device_batch():
  c = config_utils.base_config()
  c.batch_size = 48
  c.train.microbatches = 4  # 48 / 8 devices = 6 images per device
  with pytest.raises(ValueError, match="config.train.microbatches=4 must be "
                     "a positive divisor of the 6 images per device"):
    train.check_config(c, sharding.data_mesh())
  with pytest.raises(ValueError, match="microbatches=0 must be at least 1"):
    dataclasses.replace(_learner(), microbatches=0)
  with pytest.raises(ValueError, match="microbatch_loop='while' is not one"):
    dataclasses.replace(_learner(), microbatch_loop="while")
