"""The pinned run config (`jaxssl.run_config`)."""

import json

import ml_collections
import pytest

from jaxssl import run_config


def _config(**changes):
  c = ml_collections.ConfigDict({
      "seed": 0, "log_every": 100, "eval": {"knn_ks": (20, 200),
                                            "every_epochs": 0},
      "optimizer": {"base_lr": 0.3, "warmup_epochs": 10.0},
      "checkpoint": {"every_steps": 1000}})
  for key, value in changes.items():
    section, _, name = key.rpartition(".")
    (c[section] if section else c)[name] = value
  return c


def test_first_start_pins_and_same_config_resumes(tmp_path):
  notes = []
  run_config.pin(_config(), tmp_path, resumed_step=None, print_fn=notes.append)
  pinned = json.loads((tmp_path / run_config.PINNED_FILE).read_text())
  assert pinned["optimizer"]["base_lr"] == 0.3
  run_config.pin(_config(), tmp_path, resumed_step=40, print_fn=notes.append)
  assert notes == []
  assert sorted(p.name for p in tmp_path.iterdir()) == [
      run_config.PINNED_FILE]


def test_changes_that_cannot_change_results_are_logged(tmp_path):
  notes = []
  run_config.pin(_config(), tmp_path, resumed_step=None)
  run_config.pin(_config(**{"log_every": 10, "checkpoint.every_steps": 50,
                            "eval.every_epochs": 5}),
                 tmp_path, resumed_step=40, print_fn=notes.append)
  assert len(notes) == 1 and "allowed" in notes[0]
  for part in ("log_every: 100 → 10", "checkpoint.every_steps: 1000 → 50",
               "eval.every_epochs: 0 → 5"):
    assert part in notes[0]
  # The new values are pinned; the old pin is kept.
  assert json.loads((tmp_path / run_config.PINNED_FILE).read_text())[
      "log_every"] == 10
  assert (tmp_path / "run_config.step40.json").exists()


def test_other_changes_are_refused_unless_allowed(tmp_path):
  run_config.pin(_config(), tmp_path, resumed_step=None)
  changed = _config(**{"optimizer.base_lr": 0.5, "eval.knn_ks": (10,),
                       "log_every": 7})
  with pytest.raises(run_config.ConfigChanged) as e:
    run_config.pin(changed, tmp_path, resumed_step=40)
  message = str(e.value)
  assert "refusing to resume at step 40" in message
  assert "eval.knn_ks: [20, 200] → [10]" in message
  assert "optimizer.base_lr: 0.3 → 0.5" in message
  assert "log_every" not in message  # allowed: not listed as refused
  assert json.loads((tmp_path / run_config.PINNED_FILE).read_text())[
      "optimizer"]["base_lr"] == 0.3  # untouched
  notes = []
  run_config.pin(changed, tmp_path, resumed_step=40, allow_change=True,
                 print_fn=notes.append)
  assert notes[-1].startswith("WARNING: config changed at step 40")
  assert json.loads((tmp_path / run_config.PINNED_FILE).read_text())[
      "optimizer"]["base_lr"] == 0.5


def test_a_new_key_or_a_removed_key_is_a_difference(tmp_path):
  run_config.pin(_config(), tmp_path, resumed_step=None)
  grown = _config()
  grown.optimizer.clip = 3.0
  with pytest.raises(run_config.ConfigChanged,
                     match="optimizer.clip: '<absent>' → 3.0"):
    run_config.pin(grown, tmp_path, resumed_step=1)


def test_a_key_added_later_with_its_default_is_not_a_change(tmp_path):
  """A run pinned before jaxssl grew a key (say `model.norm`) resumes when
  the key holds its default; set to anything else it is a change."""
  run_config.pin(_config(), tmp_path, resumed_step=None)
  grown = _config()
  grown.model = ml_collections.ConfigDict({"norm": "batch"})
  defaults = {"model.norm": "batch"}
  notes = []
  run_config.pin(grown, tmp_path, resumed_step=3, print_fn=notes.append,
                 defaults=defaults)
  assert notes == []
  grown.model.norm = "layer"
  with pytest.raises(run_config.ConfigChanged,
                     match="model.norm: '<absent>' → 'layer'"):
    run_config.pin(grown, tmp_path, resumed_step=4, defaults=defaults)
