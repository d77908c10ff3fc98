"""Each method's CIFAR-10 `:runlocal` (and the ViT variants) trains on 8 CPU
devices with a falling loss (`runlocal_configs.check_runlocal_trains`)."""

import pytest

import runlocal_configs

VARIANTS = [(n, v) for n, v in runlocal_configs.TRAINED_VARIANTS
            if n.endswith("_cifar10")]


@pytest.mark.parametrize("name,variant", VARIANTS)
def test_cifar_runlocal_trains(name, variant, tmp_path):
  runlocal_configs.check_runlocal_trains(name, variant, tmp_path)
