"""The augmentation schedule by epoch (`augment.early_epochs`, WCL's MoCo v2
augmentation for its first epochs): which views each step makes."""

import dataclasses
import json

import jax
import numpy as np
import pytest

import config_files
import mesh_runs
from jaxssl import epochs
from jaxssl import train
from jaxssl import view_presets
from jaxssl import views as views_lib


def _config(early_epochs):
  _, config = config_files.load("simclr_cifar10", "runlocal")
  config.augment.early_epochs = early_epochs
  config.augment.color_strength = 1.0  # SimCLR's, after MoCo v2's 0.5
  config.probe.enabled = False
  return config


def test_config_early_views_are_the_weak_augmentation():
  """Early views: the same groups and sizes, MoCo v2's colour strength and
  minimum crop area; the switch at the step where early_epochs end."""
  config = _config(2.5)
  n = config.data.synthetic_examples
  learner = train.create_learner(config, n)
  late = view_presets.flatten(learner.views)
  early = view_presets.flatten(learner.early_views)
  assert [s.size for s in early] == [s.size for s in late]
  for e, l in zip(early, late):
    assert e.crop_area == (0.2, 1.0) != l.crop_area
    assert e.brightness == pytest.approx(0.5 * l.brightness)
    assert e.hue == pytest.approx(0.5 * l.hue)
    assert dataclasses.replace(e, crop_area=l.crop_area, brightness=0,
                               contrast=0, saturation=0, hue=0) == (
                                   dataclasses.replace(l, brightness=0,
                                                       contrast=0,
                                                       saturation=0, hue=0))
  length = epochs.RunLength.from_config(config, n)
  assert learner.early_steps == length.steps_until(2.5) == 10  # 64/256 per step
  assert train.create_learner(_config(0.0), n).early_steps == 0


@mesh_runs.float64()
def test_steps_before_the_switch_make_the_early_views():
  """In a jitted call, `Learner.make_views` at steps 0 and early_steps − 1
  gives `make_views` of the early specs, at early_steps the late ones
  (different arrays: the crops and jitter differ)."""
  config = _config(1.0)
  learner = train.create_learner(config, config.data.synthetic_examples)
  rng = np.random.default_rng(0)
  batch = {"image": rng.integers(0, 256, (4, 32, 32, 3), dtype=np.uint8)}
  key = jax.random.key(3)
  made = jax.jit(lambda step: learner.make_views(batch, key, step,
                                                 axis_name=None))
  want = {name: views_lib.make_views(batch, key, groups=groups,
                                     axis_name=None)["global"]
          for name, groups in (("early", learner.early_views),
                               ("late", learner.views))}
  assert np.abs(want["early"] - want["late"]).max() > 0.1
  for step, name in ((0, "early"), (learner.early_steps - 1, "early"),
                     (learner.early_steps, "late")):
    np.testing.assert_allclose(made(step)["global"], want[name], atol=1e-12)


def test_early_views_must_have_the_same_shapes():
  config = _config(1.0)
  learner = train.create_learner(config, config.data.synthetic_examples)
  smaller = {g: tuple(dataclasses.replace(s, size=16) for s in specs)
             for g, specs in learner.views.items()}
  with pytest.raises(ValueError, match="early views need the groups and sizes"):
    dataclasses.replace(learner, early_views=smaller)


def test_early_epochs_that_change_nothing_are_refused():
  """BYOL's preset ignores the colour strength; with the early minimum crop
  area equal to the late one, an early phase would be a silent no-op."""
  _, config = config_files.load("byol_cifar10", "runlocal")
  config.augment.early_epochs = 1.0
  config.augment.min_crop_area = 0.2
  config.augment.early_min_crop_area = 0.2
  config.probe.enabled = False
  with pytest.raises(ValueError, match="early_epochs=1.0 changes nothing"):
    train.create_learner(config, config.data.synthetic_examples)


def test_micro_batched_step_trains_across_the_switch(tmp_path):
  """The GradCache pass on 8 devices with the schedule: 8 steps, the
  switch after step 4, finite losses on both sides."""
  config = _config(1.0)
  config.epochs = 2
  config.train.microbatches = 2
  # A ResNet-10/16 on 16 px: the pass and the switch, not the encoder, are
  # under test.
  config.model.depth = 10
  config.model.width = 0.0625
  config.data.image_size = 16
  config.log_every = 1
  config.eval.knn_ks = ()
  assert train.create_learner(config, 256).early_steps == 4
  results = train.train_and_evaluate(config, str(tmp_path / "wd"))
  history = json.load(open(tmp_path / "wd" / "results.json"))["history"]
  assert results["steps"] == len(history) >= 8
  assert np.all(np.isfinite([h["loss"] for h in history]))
