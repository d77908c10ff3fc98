r"""Train-step throughput: images/s, step time, peak memory, MFU.

Synthetic uint8 images live on the devices (crops and colour augmentation
run inside the step, as in training), so neither TensorFlow nor
ml-collections is needed: it runs on a bare GPU image with jax, flax, optax.

  python tools/bench_step.py --method=simclr --depth=50 --image_size=224 \
      --batch_size=256 --dtype=bfloat16
  python tools/bench_step.py --method=byol --depth=18 --cifar --image_size=32 \
      --batch_size=512 --dtype=float32 --remat=block

MFU = (XLA cost-analysis FLOPs of one step / step time) / the device's peak
dense bf16 (or fp32) FLOP/s from the table below; 'n/a' where unknown.
"""

import functools
import json
import os
import sys
import time

from absl import app
from absl import flags

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

FLAGS = flags.FLAGS
flags.DEFINE_enum("method", "simclr", ["simclr", "byol"], "Method.")
flags.DEFINE_integer("depth", 50, "ResNet depth.")
flags.DEFINE_bool("cifar", False, "CIFAR stem.")
flags.DEFINE_integer("image_size", 224, "Crop size.")
flags.DEFINE_integer("batch_size", 256, "Global batch size.")
flags.DEFINE_enum("dtype", "bfloat16", ["bfloat16", "float32"],
                  "Encoder compute dtype.")
flags.DEFINE_enum("remat", "none", ["none", "block", "dots"], "Remat policy.")
flags.DEFINE_integer("steps", 20, "Timed steps (after 3 warm-up steps).")
flags.DEFINE_string("json", "", "Append the result as a JSON line here.")

# Peak dense FLOP/s per device: (bf16, fp32) from the vendors' data sheets.
PEAK_FLOPS = {
    "NVIDIA H100 80GB HBM3": (989e12, 67e12),
    "NVIDIA H100": (989e12, 67e12),
    "NVIDIA H200": (989e12, 67e12),
    "NVIDIA A100-SXM4-80GB": (312e12, 19.5e12),
    "NVIDIA A100-SXM4-40GB": (312e12, 19.5e12),
    "TPU v4": (275e12, 275e12 / 2),
    "TPU v5 lite": (197e12, 197e12 / 2),
}


def make_learner(method: str, *, depth: int, cifar: bool, image_size: int,
                 dtype, remat: str, total_steps: int = 1000):
  """A Learner built from modules directly (no config files)."""
  import jax.numpy as jnp  # pylint: disable=g-import-not-at-top
  from jaxssl import augment, optim, schedules, sharding, train  # pylint: disable=g-import-not-at-top
  from jaxssl.methods import base, byol, simclr  # pylint: disable=g-import-not-at-top
  from jaxssl.models.heads import ProjectionHead  # pylint: disable=g-import-not-at-top
  from jaxssl.models.resnet import ResNet  # pylint: disable=g-import-not-at-top
  axis = sharding.DATA_AXIS

  def encoder():
    return ResNet(depth=depth, cifar_stem=cifar, axis_name=axis,
                  dtype=dtype, remat=remat)

  schedule = lambda step: 0.1 * jnp.ones([])
  if method == "simclr":
    head = lambda: ProjectionHead(num_layers=2, out_dim=128, axis_name=axis)
    m = base.Method(name="simclr", network=base.Network(encoder(), head()),
                    loss=functools.partial(simclr.loss, temperature=0.1))
    tx = optim.lars(schedule, weight_decay=1e-6)
    preset = "simclr_v2"
  else:
    head = lambda: ProjectionHead(num_layers=2, hidden_dim=4096, out_dim=256,
                                  last_bn="none", kernel_init="fan_in",
                                  axis_name=axis)
    m = base.Method(
        name="byol", network=base.Network(encoder(), head(), head()),
        loss=byol.loss, target_network=base.Network(encoder(), head()),
        target_momentum=schedules.ema_momentum(0.99, total_steps))
    tx = optim.lars(schedule, weight_decay=1e-6, lr_in_momentum=False)
    preset = "byol"
  specs = augment.view_specs(preset, image_size=image_size,
                             color_strength=1.0, blur=not cifar)
  return train.Learner(method=m, tx=tx, schedule=schedule, view_specs=specs)


def run_benchmark(method, *, depth, cifar, image_size, batch_size, dtype,
                  remat, steps) -> dict:
  import jax  # pylint: disable=g-import-not-at-top
  import jax.numpy as jnp  # pylint: disable=g-import-not-at-top
  import numpy as np  # pylint: disable=g-import-not-at-top
  from jaxssl import sharding, train  # pylint: disable=g-import-not-at-top
  compute = {"bfloat16": jnp.bfloat16, "float32": jnp.float32}[dtype]
  learner = make_learner(method, depth=depth, cifar=cifar,
                         image_size=image_size, dtype=compute, remat=remat)
  mesh = sharding.data_mesh()
  state = train.create_train_state(jax.random.key(0), learner, mesh)
  source = image_size if cifar else int(image_size * 1.15)
  images = np.random.default_rng(0).integers(
      0, 256, (batch_size, source, source, 3), dtype=np.uint8)
  batch = sharding.global_batch({"image": images}, mesh)
  step_fn = train.compile_train_step(learner, mesh)
  compiled = step_fn.lower(state, batch).compile()
  cost = compiled.cost_analysis()
  cost = cost[0] if isinstance(cost, (list, tuple)) else cost
  flops = float(cost.get("flops", 0.0)) if cost else 0.0
  for _ in range(3):
    state, metrics = step_fn(state, batch)
  jax.block_until_ready(metrics)
  start = time.perf_counter()
  for _ in range(steps):
    state, metrics = step_fn(state, batch)
  jax.block_until_ready(metrics)
  step_time = (time.perf_counter() - start) / steps
  device = jax.devices()[0]
  stats = device.memory_stats() or {}
  peak = stats.get("peak_bytes_in_use")
  kind = device.device_kind
  peak_flops = PEAK_FLOPS.get(kind)
  mfu = None
  if peak_flops and flops:
    per_device = peak_flops[0 if dtype == "bfloat16" else 1]
    mfu = flops / step_time / (per_device * jax.device_count())
  return {"method": method, "depth": depth, "image_size": image_size,
          "batch_size": batch_size, "dtype": dtype, "remat": remat,
          "device": f"{jax.device_count()}× {kind}",
          "images_per_second": batch_size / step_time,
          "step_ms": 1000 * step_time,
          "peak_memory_gib": None if peak is None else peak / 2**30,
          "flops_per_step": flops, "mfu": mfu,
          "loss": float(metrics["loss"])}


def main(argv):
  del argv
  result = run_benchmark(FLAGS.method, depth=FLAGS.depth, cifar=FLAGS.cifar,
                         image_size=FLAGS.image_size,
                         batch_size=FLAGS.batch_size, dtype=FLAGS.dtype,
                         remat=FLAGS.remat, steps=FLAGS.steps)
  mem = result["peak_memory_gib"]
  mfu = result["mfu"]
  print(f"{result['method']} R{result['depth']} {result['image_size']}px "
        f"B{result['batch_size']} {result['dtype']} remat={result['remat']} "
        f"on {result['device']}: {result['images_per_second']:.0f} img/s, "
        f"{result['step_ms']:.1f} ms/step, peak "
        f"{'n/a' if mem is None else f'{mem:.2f} GiB'}, MFU "
        f"{'n/a' if mfu is None else f'{100 * mfu:.1f} %'}")
  if FLAGS.json:
    with open(FLAGS.json, "a") as f:
      f.write(json.dumps(result) + "\n")


if __name__ == "__main__":
  app.run(main)
