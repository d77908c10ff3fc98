"""tools/bench_step.py's batch search, tools/bench_table.py, and a CPU smoke
run of tools/bench_torch.py where torch and torchvision are installed."""

import importlib.util
import json
import math
import os
import subprocess
import sys

import pytest

import config_files
import mesh_runs


def _load(name):
  spec = importlib.util.spec_from_file_location(
      name, os.path.join(config_files.REPO, "tools", f"{name}.py"))
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module


bench_step = _load("bench_step")
bench_table = _load("bench_table")


@pytest.mark.parametrize("fixed,linear,quadratic,limit,granularity", [
    (1e9, 80e6, 0.0, 70e9, 128),      # activations linear in B
    (2e9, 2e6, 40.0, 70e9, 256),      # micro-batched: logits ~ B² dominate
    (5e8, 1e6, 0.0, 6e8, 64),         # only a few granules fit
])
def test_search_finds_the_largest_fitting_multiple(fixed, linear, quadratic,
                                                   limit, granularity):
  """Against brute force over all multiples of the granularity, in at most
  8 measurements; the bracket is one granule wide."""
  calls = []

  def memory(b):
    calls.append(b)
    return fixed + linear * b + quadratic * b * b

  lo, hi = bench_step.search_max_batch(
      memory, limit, granularity=granularity, max_compiles=8)
  best = max(b for b in range(granularity, 10**6, granularity)
             if fixed + linear * b + quadratic * b * b <= limit)
  assert lo == best
  assert hi == best + granularity
  assert len(set(calls)) <= 8


def test_search_reports_a_bracket_when_stopped_early():
  lo, hi = bench_step.search_max_batch(lambda b: 10 * b, 10_000,
                                       granularity=8, max_compiles=2)
  assert 10 * lo <= 10_000 and (hi is None or 10 * hi > 10_000)
  # An upper bound that fits ends the search there, with no failing batch.
  assert bench_step.search_max_batch(lambda b: 10 * b, 10_000, granularity=8,
                                     upper=100) == (96, None)
  assert bench_step.search_max_batch(lambda b: 10 * b, 10_000, granularity=8,
                                     upper=2000) == (1000, 1008)
  with pytest.raises(ValueError, match="even B=8 needs"):
    bench_step.search_max_batch(lambda b: 10 * b, 79, granularity=8)


def test_table_ratio_pairs_the_same_configuration():
  common = dict(method="simclr", depth=50, image_size=224, batch_size=256,
                dtype="bfloat16", device="1× H100", step_ms=1.0,
                peak_memory_gib=10.0, mfu=0.4)
  rows = [dict(common, framework="jax 0.11.2", images_per_second=2600.0,
               augment=False, microbatches=1, remat="none"),
          dict(common, framework="jax 0.11.2", images_per_second=1000.0,
               augment=True, microbatches=1, remat="none"),
          dict(common, framework="torch 2.9", images_per_second=2000.0),
          {"framework": "jax 0.11.2", "method": "simclr", "depth": 50,
           "image_size": 224, "dtype": "bfloat16", "remat": "block",
           "microbatch_size": 0, "max_batch": 1536, "xla_memory_gib": 70.1,
           "memory_limit_gib": 72.0, "first_too_large": 1792,
           "verified_loss": 9.0},
          {"framework": "jax 0.11.2", "method": "simclr", "depth": 50,
           "image_size": 224, "dtype": "bfloat16", "remat": "none",
           "microbatch_size": 256, "max_batch": 8192, "xla_memory_gib": 71.0,
           "memory_limit_gib": 72.0, "first_too_large": 8448,
           "verify_error": "XlaRuntimeError: RESOURCE_EXHAUSTED"}]
  text = bench_table.tables(rows)
  assert "JAX / PyTorch = **1.30×**" in text  # not the augmented row
  assert text.count("JAX / PyTorch") == 1
  assert "| simclr | R50 | 224 | bfloat16 | block | whole | 1536 | 70.1 | " \
         "72.0 | 1792 | ran 2 steps |" in text
  assert "| 256 | 8192 | 71.0 | 72.0 | 8448 | FAILED to run |" in text
  assert "| 40.0 % |" in text


def test_bench_torch_smoke_on_cpu(tmp_path):
  """One eager SimCLR and BYOL step each of the torchvision model on the CPU
  (skipped without torch/torchvision, as on the CI machine)."""
  pytest.importorskip("torch")
  pytest.importorskip("torchvision")
  out = tmp_path / "bench.jsonl"
  for method in ("simclr", "byol"):
    subprocess.run(
        [sys.executable, os.path.join(config_files.REPO, "tools",
                                      "bench_torch.py"),
         f"--method={method}", "--depth=18", "--cifar", "--image_size=16",
         "--batch_size=8", "--steps=1", "--warmup=1", "--device=cpu",
         "--nocompile", "--dtype=float32", f"--json={out}"],
        check=True, timeout=600)
  rows = [json.loads(line) for line in out.read_text().splitlines()]
  assert [r["method"] for r in rows] == ["simclr", "byol"]
  assert all(r["images_per_second"] > 0 and r["model_flops_per_step"] > 0
             for r in rows)


def test_model_flops_count_the_whole_global_batch():
  """The FLOP count (lowered for one CPU device holding the whole batch)
  grows with the batch as 8 × one device's share of the step on the
  8-device mesh does (the replicated optimizer update, counted once per
  device there, cancels in the difference)."""
  import jax  # pylint: disable=g-import-not-at-top
  assert jax.device_count() == 8
  config = dict(depth=10, cifar=True, image_size=8, dtype="float32",
                augment=False)

  def per_device(batch_size):
    state, batch, step_fn = bench_step._setup(
        "simclr", batch_size=batch_size, remat="none", microbatches=1,
        abstract=True, **config)
    return step_fn.lower(state, batch).cost_analysis()["flops"]

  small = bench_step.model_flops("simclr", batch_size=16, **config)
  large = bench_step.model_flops("simclr", batch_size=32, **config)
  assert large - small == pytest.approx(
      8 * (per_device(32) - per_device(16)), rel=0.02)
  assert large - small > 0.3 * small


def test_step_benchmark_row(monkeypatch):
  """A timed run on the 8 CPU devices: images/s is the global batch over the
  step time, MFU divides the global FLOPs by the peak of ALL devices."""
  monkeypatch.setattr(bench_step.device_peaks, "peak_flops",
                      lambda kind, dtype: 1e12)
  row = bench_step.run_benchmark(
      "simclr", depth=10, cifar=True, image_size=8, batch_size=16,
      dtype="float32", remat="none", steps=1, augment=False)
  assert row["images_per_second"] == pytest.approx(
      16 / (row["step_ms"] / 1000))
  assert row["model_flops_per_step"] == bench_step.model_flops(
      "simclr", depth=10, cifar=True, image_size=8, batch_size=16,
      dtype="float32", augment=False)
  assert row["mfu"] == pytest.approx(
      row["model_flops_per_step"] / (row["step_ms"] / 1000) / (8 * 1e12))
  assert row["device"].startswith("8× ") and row["xla_memory_gib"] > 0
  assert math.isfinite(row["loss"])


@pytest.mark.parametrize("config_name,method,model", [
    ("dino_vit_small", "dino", dict(arch="vit", vit_variant="small",
                                    patch_size=16)),
    ("swav_resnet50", "swav", dict(arch="resnet")),
])
def test_bench_learners_are_the_reference_configs(config_name, method, model):
  """The hand-built benchmark learners (no ml-collections) have the views
  and the whole train state (parameters, BN statistics, teacher, optimizer
  slots, method state) of the ImageNet configs, shape for shape."""
  from jaxssl import train  # pylint: disable=g-import-not-at-top
  _, config = config_files.load(config_name)
  config.probe.enabled = False  # the online probe is not benchmarked
  built = train.create_learner(config, num_examples=1_281_167)
  bench = bench_step.bench_learners.make_learner(
      method, depth=50, image_size=224, **model)
  assert bench.view_specs == built.view_specs
  assert bench.method.views == built.method.views
  assert (mesh_runs.train_state_shapes(bench)
          == mesh_runs.train_state_shapes(built))


def test_multicrop_rows_name_model_and_views():
  """Rows name the encoder and the crops (the learners have the configs'
  train state by the test above; tools/gpu_bench.sh SMOKE=1 runs them)."""
  vit = dict(arch="vit", vit_variant="small", patch_size=16)
  assert bench_step.describe("dino", depth=50, image_size=224,
                             model=dict(vit, local_crops=10)) == {
                                 "model": "ViT-S/16", "views": "2×224+10×96"}
  assert bench_step.describe("swav", depth=50, image_size=224) == {
      "model": "R50", "views": "2×224+6×96"}
  assert bench_step.describe("swav", depth=18, image_size=32, model=dict(
      local_crops=0)) == {"model": "R18", "views": "2×32"}
