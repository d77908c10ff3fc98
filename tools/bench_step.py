r"""Train-step throughput: images/s, step time, peak memory, MFU.

Synthetic uint8 images live on the devices (crops and colour augmentation
run inside the step, as in training), so neither TensorFlow nor
ml-collections is needed: it runs on a bare GPU image with jax, flax, optax.

  python tools/bench_step.py --method=simclr --depth=50 --image_size=224 \
      --batch_size=256 --dtype=bfloat16
  python tools/bench_step.py --method=byol --depth=18 --cifar --image_size=32 \
      --batch_size=512 --dtype=float32 --remat=block

  python tools/bench_step.py --method=simclr --batch_size=4096 \
      --microbatches=16 --steps=3                    # 4096 on one device
  python tools/bench_step.py --find_max_batch --remat=block
  python tools/bench_step.py --find_max_batch --microbatch_size=256
  python tools/bench_step.py --method=dino --arch=vit --vit=small \
      --local_crops=10 --batch_size=128            # DINO ViT-S/16, 2+10 crops
  python tools/bench_step.py --method=swav --batch_size=256   # R50 2+6 crops
  JAX_PLATFORMS=cpu python tools/bench_step.py --memory_only --depth=152 \
      --width=3 --sk_ratio=0.0625 --head_layers=3 --augment=false \
      --batch_size=512 --microbatches=8 --microbatch_loop=scan --remat=block
                       # SimCLR v2 R152 (3×+SK): XLA's estimate, nothing run

`--augment=false` feeds ready uint8 views (no crop, flip or colour work in
the step), the same work as `tools/bench_torch.py`.

MFU = (model FLOPs of one step / step time) / (devices × one device's peak
dense bf16 or float32 FLOP/s from tools/device_peaks.py); 'n/a' where
unknown. Model FLOPs come from XLA's cost analysis of the PLAIN step (no
remat, one micro-batch) over the whole global batch, lowered for one CPU
device (nothing is compiled or run there), so recomputation is not counted
as useful work and XLA's count of a loop body once does not matter.

`--find_max_batch` searches the largest global batch whose compiled step fits
the device memory (XLA's buffer assignment: arguments + outputs − donated +
temporaries), from a secant on that size vs batch, rounded down to a multiple
of `--granularity`; then runs two steps at that batch to prove it (on an
accelerator). With `--microbatch_size`, each candidate batch B runs with
B / microbatch_size micro-batches. `--memory_only` compiles the step at
`--batch_size` and prints the same estimate, with no step run (models too
large for the machine at hand, e.g. on the CPU; one CPU device holds one
accelerator's share of the batch).
"""

import json
import math
import os
import sys
import time

from absl import app
from absl import flags

_TOOLS = os.path.dirname(os.path.abspath(__file__))
sys.path[:0] = [os.path.dirname(_TOOLS), _TOOLS]  # jaxssl, device_peaks
import bench_learners  # pylint: disable=g-import-not-at-top,wrong-import-position
from batch_search import search_max_batch  # pylint: disable=g-import-not-at-top,wrong-import-position
import device_peaks  # pylint: disable=g-import-not-at-top,wrong-import-position

FLAGS = flags.FLAGS
flags.DEFINE_enum("method", "simclr", list(bench_learners.METHODS),
                  "Method (tools/bench_learners.py).")
flags.DEFINE_enum("arch", "resnet", list(bench_learners.ARCHS), "Encoder.")
flags.DEFINE_integer("depth", 50, "ResNet depth.")
flags.DEFINE_float("width", 1.0, "ResNet width multiplier.")
flags.DEFINE_float("sk_ratio", 0.0,
                   "> 0: SimCLR v2's SK ResNet (selective kernels, ResNet-D).")
flags.DEFINE_integer("head_layers", 2, "SimCLR projection head layers (v2: 3).")
flags.DEFINE_string("vit", "small", "ViT variant (tiny, small, base).")
flags.DEFINE_integer("patch_size", 16, "ViT patch size.")
flags.DEFINE_integer("local_crops", -1,
                     "DINO/SwAV local crops (-1: the preset's, 8 / 6).")
flags.DEFINE_integer("local_size", 0,
                     "Local crop size (0: 96 px at 224, proportional).")
flags.DEFINE_bool("cifar", False, "CIFAR stem.")
flags.DEFINE_integer("image_size", 224, "Crop size.")
flags.DEFINE_integer("batch_size", 256, "Global batch size.")
flags.DEFINE_enum("dtype", "bfloat16", ["bfloat16", "float32"],
                  "Encoder compute dtype.")
flags.DEFINE_enum("remat", "none", ["none", "block", "dots"], "Remat policy.")
flags.DEFINE_integer("microbatches", 1,
                     "Encoder micro-batches per device (GradCache step).")
flags.DEFINE_enum("microbatch_loop", "auto", ["auto", "scan", "unrolled"],
                  "config.train.microbatch_loop ('auto': unrolled on CPU).")
flags.DEFINE_integer("microbatch_size", 0,
                     "With --find_max_batch: micro-batches of this many "
                     "images (0: --microbatches as given).")
flags.DEFINE_bool("augment", True,
                  "Crop, flip and colour-augment inside the step (as in "
                  "training); false: ready views, as tools/bench_torch.py.")
flags.DEFINE_integer("steps", 20, "Timed steps (after 3 warm-up steps).")
flags.DEFINE_bool("find_max_batch", False,
                  "Search the largest batch that fits instead of timing.")
flags.DEFINE_bool("memory_only", False,
                  "Compile the step at --batch_size and print XLA's memory "
                  "estimate; run nothing.")
flags.DEFINE_integer("granularity", 128, "Batch sizes tried are multiples.")
flags.DEFINE_integer("max_batch", 0,
                     "With --find_max_batch: try no batch above this (0: no "
                     "bound).")
flags.DEFINE_float("time_limit_s", 0.0,
                   "With --find_max_batch: no new compilation that would "
                   "end after this many seconds (0: no limit).")
flags.DEFINE_float("memory_gib", 0.0,
                   "Memory of ONE device for --find_max_batch (0: the "
                   "allocator's limit, which needs an accelerator).")
flags.DEFINE_string("json", "", "Append the result as a JSON line here.")



# A configuration's state, batch and step (`bench_learners.setup_step`).
_setup = bench_learners.setup_step


def model_flops(method, *, depth, cifar, image_size, batch_size, dtype,
                augment, model=None) -> float:
  """XLA's FLOP count of one plain step (no remat, one micro-batch) over the
  whole global batch.

  The step is lowered (not compiled or run) for ONE CPU device holding the
  whole batch: the shard_map body then has the global shapes, and XLA's
  pre-optimisation cost analysis is available there (`Lowered.cost_analysis`
  is not implemented for plugin backends such as CUDA, and counts only one
  device's shard on a multi-device mesh).
  """
  import jax  # pylint: disable=g-import-not-at-top
  try:
    cpu = jax.devices("cpu")[:1]
  except RuntimeError as e:
    raise RuntimeError("the FLOP count lowers the step for the CPU backend: "
                       "leave JAX_PLATFORMS unset or include 'cpu' in it"
                       ) from e
  state, batch, step_fn = _setup(
      method, depth=depth, cifar=cifar, image_size=image_size,
      batch_size=batch_size, dtype=dtype, remat="none", microbatches=1,
      augment=augment, devices=cpu, abstract=True, model=model)
  cost = step_fn.lower(state, batch).cost_analysis()
  cost = cost[0] if isinstance(cost, (list, tuple)) else cost
  flops = float((cost or {}).get("flops", 0.0))
  if flops <= 0:
    raise RuntimeError("XLA's cost analysis gave no FLOP count for the step")
  return flops


def compiled_bytes(compiled) -> int:
  """Device memory of a compiled step from XLA's buffer assignment."""
  m = compiled.memory_analysis()
  return (m.argument_size_in_bytes + m.output_size_in_bytes
          - m.alias_size_in_bytes + m.temp_size_in_bytes)


def describe(method: str, *, depth: int, image_size: int,
             model=None) -> dict:
  """The row's `model` (R50, ViT-S/16) and `views` (2×224+10×96) fields."""
  model = model or {}
  name = f"R{depth}"
  sk = "+SK" if model.get("sk_ratio", 0) > 0 else ""
  if model.get("width", 1) != 1 or sk:
    name += f" ({model.get('width', 1):g}×{sk})"
  if model.get("arch") == "vit":
    name = (f"ViT-{model.get('vit_variant', 'small')[0].upper()}/"
            f"{model.get('patch_size', 16)}")
  learner = bench_learners.make_learner(method, depth=depth,
                                        image_size=image_size, **model)
  sizes = [spec.size for spec in learner.view_specs]
  views = "+".join(f"{sizes.count(s)}×{s}" for s in dict.fromkeys(sizes))
  return {"model": name, "views": views}


def run_benchmark(method, *, depth, cifar, image_size, batch_size, dtype,
                  remat, steps, microbatches=1, augment=True,
                  model=None) -> dict:
  """Times `steps` steps after 3 warm-up steps; returns one result row."""
  import jax  # pylint: disable=g-import-not-at-top
  flops = model_flops(method, depth=depth, cifar=cifar, image_size=image_size,
                      batch_size=batch_size, dtype=dtype, augment=augment,
                      model=model)
  state, batch, step_fn = _setup(
      method, depth=depth, cifar=cifar, image_size=image_size,
      batch_size=batch_size, dtype=dtype, remat=remat,
      microbatches=microbatches, augment=augment, model=model)
  compiled = step_fn.lower(state, batch).compile()
  predicted = compiled_bytes(compiled)
  for _ in range(3):
    state, metrics = compiled(state, batch)
  jax.block_until_ready(metrics)
  start = time.perf_counter()
  for _ in range(steps):
    state, metrics = compiled(state, batch)
  jax.block_until_ready(metrics)
  step_time = (time.perf_counter() - start) / steps
  loss = float(metrics["loss"])
  if not math.isfinite(loss):
    raise FloatingPointError(f"loss is {loss}")
  device = jax.devices()[0]
  stats = device.memory_stats() or {}
  peak_bytes = stats.get("peak_bytes_in_use")
  kind = device.device_kind
  peak = device_peaks.peak_flops(kind, dtype)
  mfu = None
  if peak and flops:
    mfu = flops / step_time / (peak * jax.device_count())
  return {"framework": f"jax {jax.__version__}", "method": method,
          **describe(method, depth=depth, image_size=image_size, model=model),
          "depth": depth, "image_size": image_size,
          "batch_size": batch_size, "dtype": dtype, "remat": remat,
          "microbatches": microbatches, "augment": augment,
          "device": f"{jax.device_count()}× {kind}",
          "images_per_second": batch_size / step_time,
          "step_ms": 1000 * step_time,
          "peak_memory_gib": (None if peak_bytes is None
                              else peak_bytes / 2**30),
          "xla_memory_gib": predicted / 2**30,
          "model_flops_per_step": flops, "mfu": mfu, "loss": loss}


def estimate_memory(method, *, depth, cifar, image_size, batch_size, dtype,
                    remat, microbatches=1, augment=True, model=None) -> dict:
  """`compiled_bytes` (per device) of the step compiled, not run, at
  `batch_size` on the devices, with its arguments and temporaries."""
  import jax  # pylint: disable=g-import-not-at-top
  start = time.perf_counter()
  state, batch, step_fn = _setup(
      method, depth=depth, cifar=cifar, image_size=image_size,
      batch_size=batch_size, dtype=dtype, remat=remat,
      microbatches=microbatches, augment=augment, abstract=True, model=model)
  compiled = step_fn.lower(state, batch).compile()
  m = compiled.memory_analysis()
  return {"method": method, **describe(method, depth=depth,
                                       image_size=image_size, model=model),
          "batch_size": batch_size, "dtype": dtype, "remat": remat,
          "microbatches": microbatches,
          "device": f"{jax.device_count()}× {jax.devices()[0].device_kind}",
          "xla_memory_gib": compiled_bytes(compiled) / 2**30,
          "argument_gib": m.argument_size_in_bytes / 2**30,
          "temp_gib": m.temp_size_in_bytes / 2**30,
          "compile_s": time.perf_counter() - start}


def find_max_batch(method, *, depth, cifar, image_size, dtype, remat,
                   microbatches=1, microbatch_size=0, augment=True,
                   granularity=128, memory_bytes=0, max_compiles=8,
                   time_limit_s=0.0, max_batch=0, log=print,
                   model=None) -> dict:
  """The largest multiple of `granularity` whose step fits `memory_bytes`.

  Memory(B) comes from compiling (not running) the step at B
  (`search_max_batch`; micro-batched, B is a multiple of `microbatch_size`
  × devices), until the largest fitting B and the smallest failing one are
  one granule apart, `max_compiles` are spent, or another compilation would
  pass `time_limit_s`. The answer is the largest B measured to fit; on an
  accelerator two steps of its compiled program are then run.
  """
  import jax  # pylint: disable=g-import-not-at-top
  start = time.perf_counter()
  devices = jax.device_count()
  granularity = math.lcm(granularity,
                         (microbatch_size or microbatches) * devices)
  if not memory_bytes:
    stats = jax.devices()[0].memory_stats() or {}
    if "bytes_limit" not in stats:
      raise ValueError("this device reports no memory limit: pass "
                       "--memory_gib")
    memory_bytes = stats["bytes_limit"]  # the compiled step's is per device
  cache = {}
  best = {}

  def micro(b):
    return b // (microbatch_size * devices) if microbatch_size else microbatches

  def setup(b):
    return _setup(method, depth=depth, cifar=cifar, image_size=image_size,
                  batch_size=b, dtype=dtype, remat=remat,
                  microbatches=micro(b), augment=augment, model=model)

  def measure(b):
    if b not in cache:
      state, batch, step_fn = setup(b)
      compiled = step_fn.lower(state, batch).compile()
      cache[b] = compiled_bytes(compiled)
      fits = cache[b] <= memory_bytes
      if fits and b >= best.get("batch", 0):
        best.update(batch=b, compiled=compiled)
      log(f"  B={b}: {cache[b] / 2**30:.2f} GiB "
          f"({'fits' if fits else 'too large'}), "
          f"{time.perf_counter() - start:.0f}s")
    return cache[b]

  def time_left():
    if not time_limit_s:
      return True
    elapsed = time.perf_counter() - start
    return elapsed + elapsed / max(len(cache), 1) < time_limit_s

  lo, hi = search_max_batch(measure, memory_bytes, granularity=granularity,
                            max_compiles=max_compiles, time_left=time_left,
                            upper=max_batch)
  result = {"framework": f"jax {jax.__version__}", "method": method,
            **describe(method, depth=depth, image_size=image_size,
                       model=model),
            "depth": depth, "image_size": image_size, "dtype": dtype,
            "remat": remat, "microbatch_size": microbatch_size,
            "microbatches": micro(lo), "augment": augment,
            "device": f"{devices}× {jax.devices()[0].device_kind}",
            "max_batch": lo, "xla_memory_gib": cache[lo] / 2**30,
            "memory_limit_gib": memory_bytes / 2**30,
            "first_too_large": hi, "compiles": len(cache),
            "search_s": time.perf_counter() - start}
  if jax.default_backend() != "cpu":
    try:
      state, batch, _ = setup(lo)
      for _ in range(2):
        state, metrics = best["compiled"](state, batch)
      result["verified_loss"] = float(metrics["loss"])
    except Exception as e:  # pylint: disable=broad-except
      # Kept in the row: the compile-time estimate, and that it did not run.
      result["verify_error"] = f"{type(e).__name__}: {str(e)[:300]}"
      log(f"  B={lo} did not run: {result['verify_error']}")
  return result


def main(argv):
  del argv
  model = dict(arch=FLAGS.arch, vit_variant=FLAGS.vit,
               patch_size=FLAGS.patch_size, local_crops=FLAGS.local_crops,
               local_size=FLAGS.local_size, width=FLAGS.width,
               sk_ratio=FLAGS.sk_ratio, head_layers=FLAGS.head_layers,
               microbatch_loop=FLAGS.microbatch_loop)
  common = dict(depth=FLAGS.depth, cifar=FLAGS.cifar,
                image_size=FLAGS.image_size, dtype=FLAGS.dtype,
                remat=FLAGS.remat, augment=FLAGS.augment, model=model)
  shape = describe(FLAGS.method, depth=FLAGS.depth,
                   image_size=FLAGS.image_size, model=model)
  shape = f"{shape['model']} {shape['views']}"
  if FLAGS.memory_only:
    result = estimate_memory(FLAGS.method, batch_size=FLAGS.batch_size,
                             microbatches=FLAGS.microbatches, **common)
    print(f"{FLAGS.method} {shape} B{FLAGS.batch_size} {FLAGS.dtype} "
          f"remat={FLAGS.remat} microbatches={FLAGS.microbatches}: "
          f"{result['xla_memory_gib']:.2f} GiB per device (arguments "
          f"{result['argument_gib']:.2f}, temporaries {result['temp_gib']:.2f}"
          f"; compiled in {result['compile_s']:.0f} s)")
  elif FLAGS.find_max_batch:
    print(f"largest batch: {FLAGS.method} {shape} "
          f"{FLAGS.dtype} remat={FLAGS.remat} micro-batch size="
          f"{FLAGS.microbatch_size or 'whole batch'}", flush=True)
    result = find_max_batch(
        FLAGS.method, microbatches=FLAGS.microbatches,
        microbatch_size=FLAGS.microbatch_size, granularity=FLAGS.granularity,
        memory_bytes=int(FLAGS.memory_gib * 2**30),
        time_limit_s=FLAGS.time_limit_s, max_batch=FLAGS.max_batch,
        log=lambda line: print(line, flush=True), **common)
    print(f"max batch {result['max_batch']} "
          f"({result['xla_memory_gib']:.2f} of "
          f"{result['memory_limit_gib']:.2f} GiB; smallest too large: "
          f"{result['first_too_large'] or 'none tried'}) on "
          f"{result['device']}")
  else:
    result = run_benchmark(FLAGS.method, batch_size=FLAGS.batch_size,
                           steps=FLAGS.steps,
                           microbatches=FLAGS.microbatches, **common)
    mem = result["peak_memory_gib"]
    mfu = result["mfu"]
    print(f"[{result['framework']}] {result['method']} {shape} "
          f"B{result['batch_size']} "
          f"{result['dtype']} remat={result['remat']} "
          f"microbatches={result['microbatches']} "
          f"augment={result['augment']} on {result['device']}: "
          f"{result['images_per_second']:.0f} img/s, "
          f"{result['step_ms']:.1f} ms/step, peak "
          f"{'n/a' if mem is None else f'{mem:.2f} GiB'}, MFU "
          f"{'n/a' if mfu is None else f'{100 * mfu:.1f} %'}")
  if FLAGS.json:
    with open(FLAGS.json, "a") as f:
      f.write(json.dumps(result) + "\n")


if __name__ == "__main__":
  app.run(main)
