"""Linear evaluation and fine-tuning from an exported encoder, end to end."""

import json
import os

import jax
import numpy as np
import pytest

import config_files
from jaxssl import export
from jaxssl import linear_eval
from jaxssl import view_presets
from jaxssl import train
from jaxssl.data import eval_input
from jaxssl.data import in_memory
from jaxssl.evaluators import classification
from jaxssl.evaluators import linear_probe


@pytest.fixture(scope="module")
def pretrained(tmp_path_factory):
  """A 2-epoch BYOL `:runlocal` run (ImageNet-normalised views)."""
  workdir = str(tmp_path_factory.mktemp("pretrain"))
  _, config = config_files.load("byol_cifar10", "runlocal")
  config.epochs = 2
  config.eval.knn_ks = ()
  config.probe.enabled = False
  train.train_and_evaluate(config, workdir)
  return workdir


def test_export_round_trip(pretrained):
  network, variables, config = export.load_encoder(pretrained)
  assert config.method == "byol"
  assert set(variables["params"]) == {"encoder", "projector"}
  with open(os.path.join(pretrained, "config.json")) as f:
    assert json.load(f)["model"]["depth"] == 10
  x = np.zeros((2, 32, 32, 3), np.float32)
  out = network.apply(variables, x, train=False)
  assert out["h"].shape == (2, 64) and out["z"].shape == (2, 128)


def test_linear_eval_trains_only_the_classifier(pretrained, tmp_path):
  """Frozen encoder and BN statistics; the classifier learns the synthetic
  colour classes well above chance (10 classes)."""
  _, config = config_files.load("linear_eval", "runlocal")
  config.checkpoint = pretrained
  config.epochs = 4
  config.optimizer.base_lr = 1.0
  results = linear_eval.run(config, str(tmp_path))
  assert results["mode"] == "linear"
  assert 0.3 < results["top1"] <= results["top5"] <= 1.0
  saved = json.load(open(tmp_path / "results.json"))
  assert saved["results"]["top1"] == results["top1"]


def test_linear_eval_state_keeps_pretrained_weights(pretrained):
  """After steps, `frozen` and the BN statistics equal the exported ones."""
  _, variables, _ = export.load_encoder(pretrained)
  network, _, _ = export.load_encoder(pretrained, axis_name="data")
  spec = view_presets.ViewSpec(size=32, jitter_prob=0.0,
                                      grayscale_prob=0.0, blur_prob=0.0,
                                      solarize_prob=0.0)
  task = linear_eval.Task(
      model=linear_eval.Classifier(network.encoder, network.projector, 0, 10),
      tx=linear_eval.optax.sgd(0.5), schedule=lambda s: 0.5, spec=spec,
      finetune=False)
  mesh = linear_eval.sharding.data_mesh()
  state = linear_eval.create_state(task, variables, 0, mesh)
  assert set(state.params) == {"classifier"}
  step = linear_eval.compile_step(task, mesh)
  data = in_memory.synthetic(64, 32)
  batch = linear_eval.sharding.global_batch(
      {"image": data.images[:32], "label": data.labels[:32]}, mesh)
  for _ in range(2):
    state, metrics = step(state, batch)
  state = jax.device_get(state)
  for got, want in zip(jax.tree.leaves(state.frozen["encoder"]),
                       jax.tree.leaves(variables["params"]["encoder"])):
    np.testing.assert_array_equal(got, want)
  for got, want in zip(jax.tree.leaves(state.batch_stats["encoder"]),
                       jax.tree.leaves(variables["batch_stats"]["encoder"])):
    np.testing.assert_array_equal(got, want)
  assert np.abs(state.params["classifier"]["head"]["kernel"]).max() > 0
  assert np.isfinite(metrics["loss"])
  # Evaluations reuse the first one's compilations (the weights are an
  # argument).
  evaluator = classification.ClassificationEvaluator(
      eval_input.from_arrays(data, mesh, batch_size=24), mesh=mesh,
      image_size=32, normalize=False)
  first = linear_eval.evaluate(task, state, evaluator)
  compiles = []
  listener = lambda event, *_, **__: compiles.append(event) if (
      event == "/jax/core/compile/backend_compile_duration") else None
  jax.monitoring.register_event_duration_secs_listener(listener)
  try:
    state = state.replace(params=jax.tree.map(lambda p: p * 2, state.params))
    second = linear_eval.evaluate(task, state, evaluator)
  finally:
    jax.monitoring.unregister_event_duration_listener(listener)
  assert not compiles
  assert 0 <= first["top1"] <= first["top5"] <= 1
  assert first["eval_images"] == len(data) == 64  # 3 batches, one padded
  # Doubling the linear layer keeps the argmax: the same predictions.
  assert first == second
  # The streamed counts equal top-k of the whole split's logits on the host.
  logits = task.model.apply(
      {"params": {**state.frozen, **state.params},
       "batch_stats": state.batch_stats},
      np.asarray(data.images, np.float32) / 255.0, train=False)
  want = linear_probe.top_k_accuracy(np.asarray(logits), data.labels)
  assert first == {**want, "eval_images": 64}


def test_finetune_state_holds_only_what_the_classifier_uses(pretrained):
  """Fine-tuning from head layer 1: the state has exactly the classifier's
  variables (the head's later layers dropped, not carried through the
  optimizer), the kept ones equal to the pretrained."""
  from flax import traverse_util  # pylint: disable=g-import-not-at-top
  _, variables, _ = export.load_encoder(pretrained)
  network, _, _ = export.load_encoder(pretrained, axis_name="data")
  task = linear_eval.Task(
      model=linear_eval.Classifier(network.encoder, network.projector, 1, 10),
      tx=linear_eval.optax.sgd(0.5), schedule=lambda s: 0.5,
      spec=view_presets.ViewSpec(size=32), finetune=True)
  state = linear_eval.create_state(task, variables, 0,
                                   linear_eval.sharding.data_mesh())
  template = jax.eval_shape(task.model.init, jax.random.key(0),
                            np.zeros((1, 32, 32, 3), np.float32))
  flat = lambda tree: traverse_util.flatten_dict(jax.device_get(tree))
  for got, want, source in ((state.params, template["params"],
                             variables["params"]),
                            (state.batch_stats, template["batch_stats"],
                             variables["batch_stats"])):
    got, want, source = flat(got), flat(want), flat(source)
    assert set(got) == set(want)
    for path, value in got.items():
      if path[0] != "classifier":
        np.testing.assert_array_equal(value, source[path])
  # BYOL's 2-layer head: its second dense layer (no BN, no bias as the
  # reference's) is left out.
  dropped = set(flat(variables["params"])) - set(flat(state.params))
  assert dropped == {("projector", "dense2", "kernel")}


def test_finetune_on_a_class_balanced_tenth(pretrained, tmp_path):
  _, config = config_files.load("finetune", "runlocal,fraction=10")
  config.checkpoint = pretrained
  assert (config.mode, config.head_layers, config.data.train_fraction) == (
      "finetune", 1, 0.1)
  results = linear_eval.run(config, str(tmp_path))
  labels = in_memory.synthetic(256, 32).labels
  assert results["num_examples"] == len(
      in_memory.class_balanced_subset(labels, 0.1)) < 30
  assert 0.0 <= results["top1"] <= results["top5"] <= 1.0


def test_class_balanced_subset_is_deterministic_balanced_and_nested():
  labels = np.repeat(np.arange(4), [100, 50, 10, 3])
  small = in_memory.class_balanced_subset(labels, 0.1, seed=0)
  large = in_memory.class_balanced_subset(labels, 0.5, seed=0)
  np.testing.assert_array_equal(small,
                                in_memory.class_balanced_subset(labels, 0.1))
  assert np.bincount(labels[small]).tolist() == [10, 5, 1, 1]
  assert np.bincount(labels[large]).tolist() == [50, 25, 5, 2]
  assert set(small) <= set(large)
  other = in_memory.class_balanced_subset(labels, 0.1, seed=1)
  assert set(other) != set(small)
  with pytest.raises(ValueError, match="must be in"):
    in_memory.class_balanced_subset(labels, 1.5)


def test_missing_checkpoint_is_a_clear_error(tmp_path):
  _, config = config_files.load("linear_eval", "runlocal")
  config.checkpoint = str(tmp_path / "nothing")
  with pytest.raises(FileNotFoundError, match="nothing does not exist"):
    linear_eval.run(config, str(tmp_path / "wd"))


def test_lars_leaves_the_classifier_out_of_the_trust_ratio():
  """SimCLR v2's fine-tuning LARS: kernels get the trust ratio
  η‖p‖/‖g‖, the classifier (`head_supervised` in the reference) plain
  momentum SGD, its weight decay a loss term wd/2·‖W‖²."""
  from jaxssl import downstream  # pylint: disable=g-import-not-at-top
  _, config = config_files.load("finetune", "")
  opt = config.optimizer
  assert (opt.name, opt.weight_decay) == ("lars", 0.0)
  rng = np.random.default_rng(0)
  params = {"encoder": {"conv": {"kernel": rng.normal(size=(3, 3, 2, 4))},
                        "bn": {"scale": rng.normal(size=4)}},
            "classifier": {"head": {"kernel": rng.normal(size=(4, 3)),
                                    "bias": rng.normal(size=3)}}}
  params = jax.tree.map(lambda p: p.astype(np.float32), params)
  grads = jax.tree.map(lambda p: rng.normal(size=p.shape).astype(np.float32),
                       params)
  tx = downstream.optimizer(opt, lambda step: 0.5)
  updates, _ = tx.update(grads, tx.init(params), params)
  for leaf in (("classifier", "head", "kernel"), ("classifier", "head", "bias"),
               ("encoder", "bn", "scale")):
    got = updates[leaf[0]][leaf[1]][leaf[2]]
    np.testing.assert_allclose(got, -0.5 * grads[leaf[0]][leaf[1]][leaf[2]],
                               rtol=1e-6)
  p, g = params["encoder"]["conv"]["kernel"], grads["encoder"]["conv"]["kernel"]
  trust = 1e-3 * np.linalg.norm(p) / np.linalg.norm(g)
  np.testing.assert_allclose(updates["encoder"]["conv"]["kernel"],
                             -0.5 * trust * g, rtol=1e-5)
  with opt.unlocked():
    opt.weight_decay = 1e-4
  # With weight decay, LARS still leaves the classifier alone (its decay is
  # the loss term below) and decays the other kernels.
  tx = downstream.optimizer(opt, lambda step: 0.5)
  updates, _ = tx.update(grads, tx.init(params), params)
  np.testing.assert_allclose(updates["classifier"]["head"]["kernel"],
                             -0.5 * grads["classifier"]["head"]["kernel"],
                             rtol=1e-6)
  g = g + 1e-4 * p
  trust = 1e-3 * np.linalg.norm(p) / np.linalg.norm(g)
  np.testing.assert_allclose(updates["encoder"]["conv"]["kernel"],
                             -0.5 * trust * g, rtol=1e-5)
  rate = downstream.classifier_decay_rate(opt)
  decay = jax.grad(lambda q: downstream.classifier_decay(q, rate))(params)
  np.testing.assert_allclose(decay["classifier"]["head"]["kernel"],
                             1e-4 * params["classifier"]["head"]["kernel"],
                             rtol=1e-6)
  assert not np.any(decay["classifier"]["head"]["bias"])


def test_finetuning_from_a_head_layer_needs_a_cuttable_head():
  from jaxssl.methods import base  # pylint: disable=g-import-not-at-top
  _, simclr = config_files.load("simclr_cifar10", "runlocal")
  linear_eval.check_head_layers(base.create_network(simclr, None).projector,
                                1, "simclr")
  _, dino = config_files.load("dino_cifar10", "runlocal")
  head = base.create_network(dino, None).projector
  linear_eval.check_head_layers(head, 0, "dino")
  with pytest.raises(ValueError, match="config.head_layers=1: the dino "
                     "projection head .DINOHead. cannot be cut"):
    linear_eval.check_head_layers(head, 1, "dino")
