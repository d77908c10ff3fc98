"""Mixed precision, rematerialisation, one compilation per run."""

import jax
import numpy as np
import pytest

import mesh_runs
from jaxssl import config_utils
from jaxssl import models
from jaxssl import sharding
from jaxssl import train


def _learner(**model):
  c = config_utils.base_config()
  c.batch_size = 16
  c.epochs = 1
  c.data.image_size = 16
  c.augment.preset = "simclr_cifar"
  c.model.depth = 18
  c.model.width = 1 / 8
  c.model.cifar_stem = True
  c.probe.enabled = False
  c.optimizer.warmup_epochs = 0.0
  for key, value in model.items():
    c.model[key] = value
  return train.create_learner(c, 64)


def _first_step(learner):
  batches = mesh_runs.random_batches(1, 16, 16, seed=3)
  return mesh_runs.run(learner, 8, batches)


def test_bfloat16_step_is_finite_and_close_to_float32():
  """bf16 encoder activations/matmuls; float32 params, BN statistics, heads
  and loss: the loss of the same batch within 1e-2 (relative: NT-Xent's
  scale grows with log batch) of float32, and not equal to it (bf16 is in
  effect); the parameters stay float32."""
  _, s32, m32 = _first_step(_learner(dtype="float32"))
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


@pytest.mark.parametrize("remat", ["block", "dots"])
def test_remat_gives_the_same_step(remat):
  """jax.checkpoint per block changes memory, not results."""
  _, plain, m_plain = _first_step(_learner())
  _, remat_state, m_remat = _first_step(_learner(remat=remat))
  np.testing.assert_allclose(m_remat[0]["loss"], m_plain[0]["loss"],
                             rtol=1e-6)
  np.testing.assert_allclose(m_remat[0]["grad_norm"], m_plain[0]["grad_norm"],
                             rtol=1e-5)
  mesh_runs.assert_trees_close(remat_state.params, plain.params, rtol=1e-5)


def test_one_compilation_for_five_steps():
  """XLA compiles the step once over 5 steps: the state's shapes, dtypes and
  shardings do not change from step to step (donated, replicated), nor do
  the batches'. (Counted from JAX's backend-compile events; pjit's
  `_cache_size` can hold two entries for one executable.)"""
  learner = _learner()
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
