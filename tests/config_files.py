"""Loads `configs/<name>.py` the way `config_flags` does (tests only)."""

import importlib.util
import os

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def load(name, arg=None):
  """`(module, module.get_config(arg))` of `configs/<name>.py`."""
  spec = importlib.util.spec_from_file_location(
      name, os.path.join(REPO, "configs", f"{name}.py"))
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module, module.get_config(arg)
