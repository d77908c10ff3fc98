"""Config files and `--config.` overrides: one-line errors, composed variants.

In-process checks of `jaxssl.config_errors` and `config_utils.parse_arg`;
`tests/test_main.py` runs the command line (exit status 2, no traceback).
"""

import glob
import os

import pytest

import config_files
from jaxssl import config_errors
from jaxssl.config_utils import parse_arg

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
ALL_CONFIGS = sorted(os.path.basename(p)[:-3]
                     for p in glob.glob(os.path.join(REPO, "configs", "*.py")))
OPTIMIZER_KEYS = ("base_lr, clip_global_norm, clip_per_parameter, "
                  "decay_epochs, decay_factor, decay_mask, decay_values, "
                  "excluded_lr_scale, final_lr, freeze_epochs, "
                  "freeze_pattern, lr_in_momentum, lr_scaling, momentum, "
                  "name, nesterov, schedule, trust_coefficient, trust_ratio, "
                  "warmup_epochs, warmup_start_lr, weight_decay, "
                  "weight_decay_end, weight_decay_schedule")


@pytest.fixture(scope="module", name="config")
def _config():
  return config_errors.load_config_file(
      os.path.join(REPO, "configs", "quickstart.py:runlocal"))


def _error(config, *args):
  """The one-line message of the ConfigError that `args` raise."""
  with pytest.raises(config_errors.ConfigError) as info:
    config_errors.check_overrides(config, ["main.py", *args])
  message = str(info.value)
  assert "\n" not in message
  return message


def test_misspelt_nested_key_names_its_section_keys_and_the_closest(config):
  message = _error(config, "--workdir=/tmp/x", "--config.probe.lerning_rate=1")
  assert message.startswith("--config.probe.lerning_rate=1: config.probe has "
                            "no key 'lerning_rate'")
  assert "(did you mean 'learning_rate'?)" in message
  assert message.endswith("valid keys of config.probe: enabled, learning_rate")
  message = _error(config, "--config.optimizer.base_rl=1")
  assert "did you mean 'base_lr'" in message and OPTIMIZER_KEYS in message
  # Nothing close: the section's keys without a suggestion.
  message = _error(config, "--config.optimizer.lerning_rate=1")
  assert "did you mean" not in message and OPTIMIZER_KEYS in message


def test_unknown_top_level_key_and_section(config):
  message = _error(config, "--config.optimiser.base_lr=1")
  assert "config has no key 'optimiser' (did you mean 'optimizer'?)" in message
  assert "valid keys of config: augment, batch_size," in message
  assert "did you mean 'epochs'" in _error(config, "--config.epoch=3")
  assert "config.batch_size is 64, not a section with key 'x'" in _error(
      config, "--config.batch_size.x=1")


@pytest.mark.parametrize("override, expected", [
    ("batch_size=abc", "config.batch_size takes an int (it is 64), not 'abc'"),
    ("epochs=2.5", "config.epochs takes an int"),
    ("optimizer.base_lr=fast", "config.optimizer.base_lr takes a float"),
    ("deterministic=maybe", "config.deterministic takes a bool"),
])
def test_value_of_the_wrong_type_names_key_value_and_type(config, override,
                                                          expected):
  message = _error(config, f"--config.{override}")
  assert message.startswith(f"--config.{override}: ") and expected in message


def test_valid_overrides_pass(config):
  config_errors.check_overrides(config, [
      "main.py", "--config.batch_size=128", "--config.deterministic",
      "--noconfig.probe.enabled", "-config.optimizer.base_lr=0.5",
      "--config.eval.knn_ks=1,2", "--config.data.path=/x", "--config.epochs",
      "3", "--", "--config.not_a_flag=1"])


def _write(tmp_path, text):
  path = tmp_path / "broken.py"
  path.write_text(text)
  return str(path)


@pytest.mark.parametrize("source, arg, expected", [
    ("def get_config(:\n", "", "does not compile: line 1: SyntaxError"),
    ("import no_such_module\n", "", "fails to import: ModuleNotFoundError: No "
     "module named 'no_such_module'"),
    ("def get_config(arg=None):\n  raise KeyError('boom')\n", ":x",
     "get_config() raised KeyError: 'boom' (at "),
    ("def get_config(arg=None):\n  return None\n", "", "returned None"),
    ("x = 1\n", "", "has no get_config() function"),
])
def test_config_file_that_does_not_load_names_file_and_reason(
    tmp_path, source, arg, expected):
  path = _write(tmp_path, source)
  with pytest.raises(config_errors.ConfigError) as info:
    config_errors.load_config_file(path + arg)
  message = str(info.value)
  assert path in message and expected in message and "\n" not in message


def test_missing_config_file_and_bad_variant():
  with pytest.raises(config_errors.ConfigError,
                     match="config file 'configs/nowhere.py' does not exist"):
    config_errors.load_config_file("configs/nowhere.py")
  spec = os.path.join(REPO, "configs", "simclr_cifar10.py:runlocal,epoch=3")
  with pytest.raises(config_errors.ConfigError) as info:
    config_errors.load_config_file(spec)
  assert str(info.value) == (
      f"--config={spec}: unknown config variant 'epoch' in 'runlocal,epoch=3' "
      "(did you mean 'epochs'?); variants: epochs=<int, default 1000>, "
      "runlocal")


def test_parse_arg_rejects_bad_values_and_lists_given_keys():
  arg = parse_arg("epochs=7,runlocal", runlocal=False, epochs=100, v2=False)
  assert (arg.epochs, arg.runlocal, arg.v2) == (7, True, False)
  assert arg.given == ("epochs", "runlocal")
  assert parse_arg(None, epochs=100).given == ()
  with pytest.raises(ValueError, match="config variant epochs='x' is not an "
                     "int"):
    parse_arg("epochs=x", epochs=100)
  with pytest.raises(ValueError, match="runlocal='maybe' is not a bool"):
    parse_arg("runlocal=maybe", runlocal=False)
  assert parse_arg("runlocal=false", runlocal=False).runlocal is False


def _variants(name):
  """The variant names of `configs/<name>.py`, from its error message."""
  with pytest.raises(ValueError) as info:
    config_files.load(name, "no_such_variant")
  return str(info.value).split("variants: ")[1]


@pytest.mark.parametrize("name", ALL_CONFIGS)
def test_runlocal_keeps_explicit_epochs(name):
  """`:runlocal,epochs=7` trains 7 epochs, in either order, and still
  shrinks the rest; configs without an `epochs` variant refuse it."""
  _, local = config_files.load(name, "runlocal")
  if "epochs=" not in _variants(name):
    with pytest.raises(ValueError, match="unknown config variant 'epochs'"):
      config_files.load(name, "runlocal,epochs=7")
    return
  for arg in ("runlocal,epochs=7", "epochs=7,runlocal"):
    _, c = config_files.load(name, arg)
    assert c.epochs == 7
    assert c.batch_size == local.batch_size <= 64
    assert c.data == local.data
  _, c = config_files.load(name, "epochs=7")
  assert c.epochs == 7 and c.batch_size > 64
