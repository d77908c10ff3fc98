r"""The PyTorch side of the JAX-vs-PyTorch step benchmark.

The same work as `tools/bench_step.py --augment=false`: two ready uint8 views
per image on the device → float, ImageNet normalisation → ResNet → heads →
SimCLR NT-Xent or BYOL regression loss → backward → LARS with momentum (BYOL:
plus the EMA target's forward pass and update). A tuned PyTorch step:
torchvision ResNet (`zero_init_residual`, fc removed), channels_last, bfloat16
autocast, `torch.compile` of forward + loss, and the fused SGD kernel for the
momentum update after multi-tensor (`torch._foreach_*`) LARS trust ratios.

Needs only torch, torchvision and numpy (no JAX, TensorFlow or
ml-collections); runs on the GPU image:

  python tools/bench_torch.py --method=simclr --depth=50 --image_size=224 \
      --batch_size=256 --dtype=bfloat16 --json=/tmp/bench.jsonl

`--device=cpu --nocompile` runs a smoke test on a CPU.

Differences from the JAX step, all in PyTorch's favour: the heads also run
in bfloat16 under autocast (jaxssl keeps them in float32); BatchNorm
statistics are per device (one device here, so the same); no online probe.
MFU = (FLOPs of forward + backward from `torch.utils.flop_counter`, counted
once in eager mode) / step time / the device's peak dense FLOP/s.
"""

import argparse
import copy
import json
import math
import os
import sys
import time

import torch
from torch import nn
import torch.nn.functional as F
import torchvision
from torch.utils import flop_counter as torch_flop_counter

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import device_peaks  # pylint: disable=g-import-not-at-top,wrong-import-position

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def encoder(depth: int, cifar: bool) -> nn.Module:
  """torchvision ResNet-`depth` without its classifier; the CIFAR stem (3×3
  stride-1 convolution, no max-pool) for small images."""
  make = {18: torchvision.models.resnet18,
          50: torchvision.models.resnet50}[depth]
  net = make(weights=None, zero_init_residual=True)
  if cifar:
    net.conv1 = nn.Conv2d(3, 64, 3, 1, 1, bias=False)
    net.maxpool = nn.Identity()
  net.fc = nn.Identity()
  return net


def mlp(in_dim: int, hidden: int, out: int, last_bn: bool) -> nn.Module:
  """Linear → BN → ReLU → Linear [→ BN without affine β]: the 2-layer heads
  of tools/bench_step.py (SimCLR: last BN; BYOL: none)."""
  layers = [nn.Linear(in_dim, hidden, bias=False), nn.BatchNorm1d(hidden),
            nn.ReLU(inplace=True), nn.Linear(hidden, out, bias=not last_bn)]
  if last_bn:
    layers.append(nn.BatchNorm1d(out, affine=False))
  return nn.Sequential(*layers)


class SimCLR(nn.Module):
  """ResNet → projector (2 layers, width of the features, 128 out) →
  NT-Xent (temperature 0.1) over both views of the batch."""

  def __init__(self, depth, cifar, temperature=0.1):
    super().__init__()
    self.encoder = encoder(depth, cifar)
    dim = self.encoder.inplanes
    self.projector = mlp(dim, dim, 128, last_bn=True)
    self.temperature = temperature

  def forward(self, views):
    n = views.shape[0] // 2
    z = F.normalize(self.projector(self.encoder(views)).float(), dim=1)
    logits = z @ z.T / self.temperature
    logits = logits.masked_fill(
        torch.eye(2 * n, dtype=torch.bool, device=z.device), float("-inf"))
    labels = torch.arange(2 * n, device=z.device).roll(n)
    return F.cross_entropy(logits, labels)


class BYOL(nn.Module):
  """Online ResNet → projector (4096, 256) → predictor (4096, 256); target
  ResNet → projector, an EMA without gradient; symmetric regression loss."""

  def __init__(self, depth, cifar):
    super().__init__()
    self.encoder = encoder(depth, cifar)
    dim = self.encoder.inplanes
    self.projector = mlp(dim, 4096, 256, last_bn=False)
    self.predictor = mlp(256, 4096, 256, last_bn=False)
    self.target = nn.ModuleList([copy.deepcopy(self.encoder),
                                 copy.deepcopy(self.projector)])
    for p in self.target.parameters():
      p.requires_grad_(False)

  def online_parameters(self):
    return [p for n, p in self.named_parameters()
            if not n.startswith("target.")]

  def forward(self, views):
    p1, p2 = self.predictor(self.projector(self.encoder(views))).float().chunk(2)
    with torch.no_grad():
      z1, z2 = self.target[1](self.target[0](views)).float().chunk(2)

    def regression(p, z):
      return 2 - 2 * F.cosine_similarity(p, z, dim=-1)

    return (regression(p1, z2) + regression(p2, z1)).mean()

  @torch.no_grad()
  def update_target(self, tau: float):
    online = list(self.encoder.parameters()) + list(self.projector.parameters())
    torch._foreach_lerp_(list(self.target.parameters()), online, 1.0 - tau)


class LARS:
  """LARS (You et al. 2017, https://arxiv.org/abs/1708.03888) as in SimCLR:
  weight decay and trust ratio η‖w‖/‖g + λw‖ on weights, not on biases and
  BN parameters (1-D tensors), computed with multi-tensor ops; then the
  fused SGD kernel for the momentum update."""

  def __init__(self, params, lr, weight_decay=1e-6, momentum=0.9, eta=1e-3,
               fused=True):
    params = [p for p in params if p.requires_grad]
    self.adapted = [p for p in params if p.ndim > 1]
    self.weight_decay, self.eta = weight_decay, eta
    self.sgd = torch.optim.SGD(params, lr=lr, momentum=momentum,
                               fused=fused)

  @torch.no_grad()
  def step(self):
    grads = [p.grad for p in self.adapted]
    torch._foreach_add_(grads, self.adapted, alpha=self.weight_decay)
    w_norm = torch.stack(torch._foreach_norm(self.adapted))
    g_norm = torch.stack(torch._foreach_norm(grads))
    ratio = torch.where((w_norm > 0) & (g_norm > 0),
                        self.eta * w_norm / g_norm, torch.ones_like(w_norm))
    torch._foreach_mul_(grads, list(ratio.unbind()))
    self.sgd.step()

  def zero_grad(self):
    self.sgd.zero_grad(set_to_none=True)


def run_benchmark(method: str, *, depth: int, cifar: bool, image_size: int,
                  batch_size: int, dtype: str, steps: int, warmup: int,
                  compile_model: bool, device: str) -> dict:
  """Times `steps` training steps after `warmup` (and compilation)."""
  torch.backends.cudnn.benchmark = True
  torch.backends.cuda.matmul.allow_tf32 = True
  torch.backends.cudnn.allow_tf32 = True
  dev = torch.device(device)
  model = (SimCLR(depth, cifar) if method == "simclr"
           else BYOL(depth, cifar)).to(dev).to(memory_format=torch.channels_last)
  params = (model.online_parameters() if method == "byol"
            else list(model.parameters()))
  opt = LARS(params, lr=0.1, fused=dev.type == "cuda")
  views = torch.randint(0, 256, (2 * batch_size, 3, image_size, image_size),
                        dtype=torch.uint8, device=dev)
  mean = torch.tensor(IMAGENET_MEAN, device=dev).view(1, 3, 1, 1)
  std = torch.tensor(IMAGENET_STD, device=dev).view(1, 3, 1, 1)
  bf16 = dtype == "bfloat16"

  def loss_fn(views):
    x = ((views.float() / 255 - mean) / std).contiguous(
        memory_format=torch.channels_last)
    # Built inside the compiled function, so Dynamo traces it in one graph.
    with torch.autocast(dev.type, dtype=torch.bfloat16, enabled=bf16):
      return model(x)

  counter = torch_flop_counter.FlopCounterMode(display=False)
  with counter:
    loss_fn(views).backward()
  flops = counter.get_total_flops()
  opt.zero_grad()
  forward = torch.compile(loss_fn) if compile_model else loss_fn

  def step():
    loss = forward(views)
    loss.backward()
    opt.step()
    opt.zero_grad()
    if method == "byol":
      model.update_target(0.99)
    return loss

  sync = torch.cuda.synchronize if dev.type == "cuda" else lambda: None
  compile_start = time.perf_counter()
  for _ in range(warmup):
    loss = step()
  sync()
  warmup_s = time.perf_counter() - compile_start
  if dev.type == "cuda":
    torch.cuda.reset_peak_memory_stats()
  start = time.perf_counter()
  for _ in range(steps):
    loss = step()
  sync()
  step_time = (time.perf_counter() - start) / steps
  loss = float(loss.detach())
  if not math.isfinite(loss):
    raise FloatingPointError(f"loss is {loss}")
  kind = (torch.cuda.get_device_name(dev) if dev.type == "cuda" else "cpu")
  peak = device_peaks.peak_flops(kind, dtype)
  mfu = None if peak is None else flops / step_time / peak
  return {"framework": f"torch {torch.__version__}", "method": method,
          "depth": depth, "image_size": image_size, "batch_size": batch_size,
          "dtype": dtype, "remat": "none", "microbatches": 1,
          "compiled": compile_model, "device": f"1× {kind}",
          "images_per_second": batch_size / step_time,
          "step_ms": 1000 * step_time,
          "peak_memory_gib": (torch.cuda.max_memory_allocated(dev) / 2**30
                              if dev.type == "cuda" else None),
          "model_flops_per_step": flops, "mfu": mfu,
          "warmup_s": warmup_s, "loss": loss}


def main():
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--method", choices=["simclr", "byol"], default="simclr")
  parser.add_argument("--depth", type=int, choices=[18, 50], default=50)
  parser.add_argument("--cifar", action="store_true", help="CIFAR stem.")
  parser.add_argument("--image_size", type=int, default=224)
  parser.add_argument("--batch_size", type=int, default=256)
  parser.add_argument("--dtype", choices=["bfloat16", "float32"],
                      default="bfloat16")
  parser.add_argument("--steps", type=int, default=20)
  parser.add_argument("--warmup", type=int, default=5,
                      help="Untimed steps (torch.compile runs in the first).")
  parser.add_argument("--nocompile", action="store_true",
                      help="Eager mode instead of torch.compile.")
  parser.add_argument("--device", default="cuda")
  parser.add_argument("--json", default="",
                      help="Append the result as a JSON line here.")
  args = parser.parse_args()
  if args.device == "cuda" and not torch.cuda.is_available():
    raise SystemExit("no CUDA device: pass --device=cpu for a smoke run")
  result = run_benchmark(
      args.method, depth=args.depth, cifar=args.cifar,
      image_size=args.image_size, batch_size=args.batch_size,
      dtype=args.dtype, steps=args.steps, warmup=args.warmup,
      compile_model=not args.nocompile, device=args.device)
  mem, mfu = result["peak_memory_gib"], result["mfu"]
  print(f"[{result['framework']}] {result['method']} R{result['depth']} "
        f"{result['image_size']}px B{result['batch_size']} {result['dtype']} "
        f"{'compiled' if result['compiled'] else 'eager'} on "
        f"{result['device']}: {result['images_per_second']:.0f} img/s, "
        f"{result['step_ms']:.1f} ms/step, peak "
        f"{'n/a' if mem is None else f'{mem:.2f} GiB'}, MFU "
        f"{'n/a' if mfu is None else f'{100 * mfu:.1f} %'}", flush=True)
  if args.json:
    with open(args.json, "a") as f:
      f.write(json.dumps(result) + "\n")


if __name__ == "__main__":
  main()
