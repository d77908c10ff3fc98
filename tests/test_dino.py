"""DINO on the shared train step: 1 vs 8 devices, the centre, the teacher,
the frozen last layer, the DINO head.

The runs are float64 (`mesh_runs.float64`), where 1 and 8 devices agree to
~1e-14 (`mesh_runs.RTOL` = 1e-10 holds on any processor).
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import mesh_runs
from jaxssl import config_utils
from jaxssl import losses
from jaxssl import optim
from jaxssl import train
from jaxssl.methods import base
from jaxssl.methods import dino
from jaxssl.models import DINOHead

GLOBAL_BATCH = 16
IMAGE_SIZE = 16
NUM_EXAMPLES = 64  # 4 steps per epoch
STEPS = 6  # past the first epoch, when the last layer starts to move


def _config(**overrides):
  c = mesh_runs.tiny_config("dino", batch_size=GLOBAL_BATCH,
                            image_size=IMAGE_SIZE, epochs=2)
  c.augment.preset = "dino"
  c.augment.local_crops = 2
  c.augment.local_size = 8
  config_utils.set_dino_head(c.head, out_dim=32, norm_last_layer=False)
  c.head.hidden_dim = 16
  c.head.bottleneck_dim = 8
  c.loss.temperature = 0.1
  c.loss.warmup_teacher_temperature = 0.04
  c.loss.teacher_temperature = 0.07
  c.loss.warmup_teacher_epochs = 1
  c.target.base_momentum = 0.9
  c.optimizer.name = "adamw"
  c.optimizer.base_lr = 1e-2
  c.optimizer.momentum = 0.9
  c.optimizer.warmup_epochs = 1.0
  c.optimizer.final_lr = 1e-4
  c.optimizer.weight_decay = 0.04
  c.optimizer.weight_decay_schedule = "cosine"
  c.optimizer.weight_decay_end = 0.4
  c.optimizer.clip_per_parameter = 3.0
  c.optimizer.freeze_pattern = "^projector/last_layer/"
  c.optimizer.freeze_epochs = 1.0
  return mesh_runs.finish_config(c, overrides)


def _batches():
  return mesh_runs.random_batches(STEPS, GLOBAL_BATCH, IMAGE_SIZE, seed=11)


NUM_CLASSES = 4


def _labels():
  return np.random.default_rng(12).integers(0, NUM_CLASSES,
                                            (STEPS, GLOBAL_BATCH))


@pytest.fixture(scope="module")
def dino_runs():
  """The runs on 1 and 8 devices, with the online probe (on the teacher's
  features, DINO's evaluated network)."""
  with mesh_runs.float64():
    learner = mesh_runs.cropped_learner(train.create_learner(
        _config(**{"probe.enabled": True}), NUM_EXAMPLES, NUM_CLASSES))
    runs = {n: mesh_runs.run_steps(learner, n, _batches(), _labels())
            for n in (1, 8)}
  return learner, runs


def test_dino_matches_on_1_and_8_devices(dino_runs):
  """Loss, parameters, optimizer state, BN statistics, teacher and centre
  over 6 steps (2 global + 2 local crops, through the first epoch)."""
  learner, runs = dino_runs
  (states1, m1), (states8, m8) = runs[1], runs[8]
  assert dict(learner.method.views) == {"global": 2, "local": 2}
  mesh_runs.assert_metrics_close(
      m1, m8, ("loss", "kl", "grad_norm", "teacher_entropy", "teacher_temp",
               "tau"))
  for part in ("params", "opt_state", "batch_stats", "target",
               "method_state", "probe"):
    mesh_runs.assert_trees_close(getattr(states1[-1], part),
                                 getattr(states8[-1], part),
                                 rtol=mesh_runs.RTOL)
  # The teacher temperature of each step's epoch: 0.04 in epoch 0, 0.07 on.
  assert [m["teacher_temp"] for m in m8] == pytest.approx(
      [0.04] * 4 + [0.07] * 2)
  assert np.all(np.isfinite([m["loss"] for m in m8]))


def test_centre_and_teacher_recomputed(dino_runs):
  """After each step the centre is 0.9·c + 0.1·(mean of the teacher's
  outputs on the two GLOBAL crops of the step, computed here on one device
  from the views), and the teacher is τ·teacher + (1 − τ)·student."""
  learner, runs = dino_runs
  states, metrics = runs[8]
  tracked = base.subtrees("encoder", "projector")
  mesh_runs.assert_trees_close(states[0].target["params"],
                               tracked(states[0].params), rtol=0)
  with mesh_runs.float64():
    method = dino.create(_config(), axis_name=None, total_steps=8,
                         num_examples=64)
    for t, images in enumerate(_batches()):
      state = states[t]
      view_rng, _ = jax.random.split(jax.random.fold_in(state.rng,
                                                        state.step))
      views = train.make_views({"image": jnp.asarray(images)}, view_rng,
                               groups=learner.views, axis_name=None)
      teacher, _ = base.Forward()(method.target.network, state.target,
                                  {"global": views["global"]},
                                  {"global": 2})
      want = (0.9 * state.method_state["center"]
              + 0.1 * np.mean(teacher["global"]["z"], axis=0))
      np.testing.assert_allclose(states[t + 1].method_state["center"], want,
                                 rtol=1e-9, atol=1e-14)
      tau = metrics[t]["tau"]
      want_target = jax.tree.map(lambda k, q: tau * k + (1 - tau) * q,
                                 state.target["params"],
                                 tracked(states[t + 1].params))
      mesh_runs.assert_trees_close(states[t + 1].target["params"],
                                   want_target, rtol=1e-12)


def test_last_layer_is_frozen_for_the_first_epoch_then_moves(dino_runs):
  """`optimizer.freeze_pattern='^projector/last_layer/'`, 1 epoch (4
  steps): the weight-normalised last layer (kernel and scale) and its
  AdamW moments are bit-identical through step 4 and move at step 5; the
  rest of the head moves from the first step with a non-zero rate."""
  _, runs = dino_runs
  states, _ = runs[8]
  last = [s.params["projector"]["last_layer"] for s in states]
  for t in range(1, 5):
    for name in ("kernel_v", "scale"):
      np.testing.assert_array_equal(last[t][name], last[0][name])
  for name in ("kernel_v", "scale"):
    assert np.abs(last[5][name] - last[0][name]).max() > 1e-6, name
  dense = [s.params["projector"]["dense1"]["kernel"] for s in states]
  assert np.abs(dense[2] - dense[0]).max() > 1e-6


def test_dino_head_is_weight_normalised_and_l2_bottlenecked():
  """Output = normalise(MLP(x)) @ (g·v/‖v‖): with g fixed at 1 each
  prototype column has unit norm, so the outputs are cosines in [−1, 1];
  the free scale multiplies them."""
  head = DINOHead(out_dim=12, hidden_dim=16, bottleneck_dim=8)
  x = jax.random.normal(jax.random.key(0), (5, 4))
  variables = head.init(jax.random.key(1), x)
  assert "scale" not in variables["params"]["last_layer"]
  out = head.apply(variables, x)
  v = variables["params"]["last_layer"]["kernel_v"]
  y = x
  for i in (1, 2):
    p = variables["params"][f"dense{i}"]
    y = jax.nn.gelu(y @ p["kernel"] + p["bias"], approximate=False)
  p = variables["params"]["dense3"]
  y = losses.l2_normalize(y @ p["kernel"] + p["bias"])
  np.testing.assert_allclose(out, y @ (v / np.linalg.norm(v, axis=0)),
                             rtol=1e-5, atol=1e-6)
  assert np.abs(np.asarray(out)).max() <= 1.0 + 1e-6
  free = DINOHead(out_dim=12, hidden_dim=16, bottleneck_dim=8,
                  norm_last_layer=False)
  fv = free.init(jax.random.key(1), x)
  fv["params"]["last_layer"]["scale"] = 2.0 * jnp.ones((1, 12))
  np.testing.assert_allclose(free.apply(fv, x), 2.0 * out, rtol=1e-5)


def test_free_last_layer_scale_is_weight_decayed_as_the_reference():
  """With `norm_last_layer=False` the reference's `weight_g` is `[K, 1]`,
  2-D, so its `get_params_groups` puts it in the regularised group (only
  biases and 1-D parameters are exempt). Ours is `[1, K]`: under the
  config's AdamW a zero gradient updates it by −lr·wd·g (float64), while
  the biases stay put."""
  free = DINOHead(out_dim=12, hidden_dim=16, bottleneck_dim=8,
                  norm_last_layer=False)
  with mesh_runs.float64():
    params = free.init(jax.random.key(1), jnp.ones((5, 4)))["params"]
    assert params["last_layer"]["scale"].shape == (1, 12)
    c = _config()
    lr = 0.1
    tx = optim.from_config(c.optimizer, lr, total_steps=10)
    zero = jax.tree.map(jnp.zeros_like, params)
    updates, _ = tx.update(zero, tx.init(params), params)
  np.testing.assert_allclose(updates["last_layer"]["scale"],
                             -lr * c.optimizer.weight_decay, rtol=1e-12)
  np.testing.assert_array_equal(updates["dense1"]["bias"], 0.0)


def test_dino_config_errors_name_the_keys():
  with pytest.raises(ValueError, match="needs config.head.kind='dino'"):
    train.create_learner(_config(**{"head.kind": "mlp"}), NUM_EXAMPLES)
  with pytest.raises(ValueError, match="local_size is set but "
                     "config.augment.preset='byol' makes no 'local' crops"):
    train.create_learner(_config(**{"augment.preset": "byol"}), NUM_EXAMPLES)


def test_teacher_is_evaluated_probed_and_exported(dino_runs, tmp_path):
  """As the reference (`eval_knn.py`, `eval_linear.py`: --checkpoint_key
  teacher), DINO's evaluated network is the teacher: the online probe's
  update at step 2 is `linear_probe.update` on the teacher's features of
  the global crops (float64, recomputed on one device; at step 0 they are
  the student's), `evaluated_variables`
  are the teacher's, and the exported encoder is the teacher's (the
  student's differs). `eval.network='online'` picks the student; a method
  without a target refuses 'target'."""
  from jaxssl import export  # pylint: disable=import-outside-toplevel
  from jaxssl.evaluators import linear_probe  # pylint: disable=import-outside-toplevel
  learner, runs = dino_runs
  states, _ = runs[8]
  assert learner.evaluated == "target"
  assert learner.evaluated_network is learner.method.target.network
  t = 2  # at step 0 the teacher is the student's copy: same features
  state = states[t]
  with mesh_runs.float64():
    view_rng, _ = jax.random.split(jax.random.fold_in(
        jax.device_put(state.rng), t))
    views = train.make_views({"image": jnp.asarray(_batches()[t])}, view_rng,
                             groups=learner.views, axis_name=None)
    local = dino.create(_config(), axis_name=None, total_steps=8,
                         num_examples=64)
    teacher, _ = base.Forward()(local.target.network, state.target,
                                {"global": views["global"]}, {"global": 2})
    probe, _, _ = linear_probe.update(
        state.probe, teacher["global"]["h"], jnp.tile(_labels()[t], 2),
        tx=learner.probe.tx, num_classes=NUM_CLASSES)
  mesh_runs.assert_trees_close(states[t + 1].probe.params, probe.params,
                               rtol=1e-9)
  last = states[-1]
  variables = train.evaluated_variables(last, learner)
  assert variables["params"] is last.target["params"]
  export.save_encoder(tmp_path, variables, _config())
  _, exported, _ = export.load_encoder(tmp_path)
  mesh_runs.assert_trees_close(exported["params"]["encoder"],
                               last.target["params"]["encoder"], rtol=0)
  student = last.params["encoder"]["stem_conv"]["kernel"]
  assert np.abs(exported["params"]["encoder"]["stem_conv"]["kernel"]
                - student).max() > 1e-6
  online = train.create_learner(_config(**{"eval.network": "online"}),
                                NUM_EXAMPLES)
  assert online.evaluated == "online"
  assert online.evaluated_network is online.method.network
  c = mesh_runs.finish_config(mesh_runs.tiny_config(
      "simclr", batch_size=GLOBAL_BATCH, image_size=IMAGE_SIZE),
                              {"eval.network": "target"})
  with pytest.raises(ValueError, match="config.eval.network='target': "
                     "method 'simclr' has no target network"):
    train.create_learner(c, NUM_EXAMPLES)
