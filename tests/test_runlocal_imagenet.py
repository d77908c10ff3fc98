"""The ImageNet configs' `:runlocal` of MoCo, DINO and SwAV train on 8 CPU
devices with a falling loss (`runlocal_configs.check_runlocal_trains`)."""

import pytest

import runlocal_configs

VARIANTS = [(n, v) for n, v in runlocal_configs.TRAINED_VARIANTS
            if not n.endswith("_cifar10")]


@pytest.mark.parametrize("name,variant", VARIANTS)
def test_imagenet_runlocal_trains(name, variant, tmp_path):
  runlocal_configs.check_runlocal_trains(name, variant, tmp_path)
