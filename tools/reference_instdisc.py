r"""InstDisc's reference code at the CPU quality proxy's settings.

Trains lemniscate.pytorch's own memory bank and loss (`lib/NCEAverage.py`,
`lib/NCECriterion.py`, `lib/LinearAverage.py`, imported from a checkout)
on the setting of `tools/benchmark_cifar10.py --method=instdisc`: 1,000
training images per CIFAR-10 class, a ResNet-18 (CIFAR stem) at
`--width`, batch 256, SGD 0.06 (momentum 0.9, weight decay 5e-4), K =
4096, τ 0.1, bank momentum 0.5. After each epoch it prints the loss and
weighted kNN top-1 on the encoder's pooled features (k = 20 and 200,
τ 0.1, as the proxy's kNN column), the paper's kNN on the bank (k = 200),
and the mean pairwise cosine of the test images' `f` and `h` (1.0: every
image has the same feature). It answers one question: does the
reference do in this short proxy what jaxssl does?

Needs torch, numpy and pillow only (no JAX, no torchvision):

  git clone https://github.com/zhirongw/lemniscate.pytorch /tmp/lemniscate
  python tools/reference_instdisc.py --lemniscate=/tmp/lemniscate \
      --zip=../shared/datasets/cifar10-jpeg.zip --epochs=4

Differences from the reference script, none in the method: `NCEFunction`'s
backward is restated for current torch (its `.data.resize_` aliasing no
longer reshapes the gradient; the arithmetic, and the bank update it
performs, are unchanged); the alias sampler stays on the CPU; the views
are made here (crop area 0.2–1, brightness, contrast and saturation 0.4
in random order, grayscale 0.2; no hue, as torchvision's `ColorJitter`
has), normalised with CIFAR's statistics, unflipped as the script.
"""

import argparse
import importlib
import io
import math
import sys
import time
import zipfile

import numpy as np
from PIL import Image
import torch
from torch import nn
import torch.nn.functional as F

MEAN = torch.tensor([0.4914, 0.4822, 0.4465]).view(1, 3, 1, 1)
STD = torch.tensor([0.2023, 0.1994, 0.2010]).view(1, 3, 1, 1)


def load(path: str, split: str, per_class: int) -> tuple:
  """The first `per_class` JPEGs (sorted names) of each class of `split`."""
  with zipfile.ZipFile(path) as z:
    names = sorted(n for n in z.namelist()
                   if n.startswith(split + "/") and n.endswith(".jpg"))
    classes = sorted({n.split("/")[1] for n in names})
    count = dict.fromkeys(classes, 0)
    images, labels = [], []
    for name in names:
      c = name.split("/")[1]
      if count[c] < per_class:
        count[c] += 1
        images.append(np.asarray(Image.open(io.BytesIO(z.read(name)))
                                 .convert("RGB")))
        labels.append(classes.index(c))
  x = torch.from_numpy(np.stack(images)).permute(0, 3, 1, 2).float() / 255
  return x, torch.tensor(labels)


def gray(x: torch.Tensor) -> torch.Tensor:
  return (0.299 * x[0] + 0.587 * x[1] + 0.114 * x[2])[None]


def view(img: torch.Tensor, rng: np.random.Generator) -> torch.Tensor:
  """One augmented 32 px view of a `[3, 32, 32]` image in [0, 1]."""
  w = h = 32
  for _ in range(10):
    area = rng.uniform(0.2, 1.0) * 32 * 32
    ratio = math.exp(rng.uniform(math.log(3 / 4), math.log(4 / 3)))
    cw, ch = round(math.sqrt(area * ratio)), round(math.sqrt(area / ratio))
    if 0 < cw <= 32 and 0 < ch <= 32:
      w, h = cw, ch
      break
  i, j = rng.integers(0, 33 - h), rng.integers(0, 33 - w)
  x = F.interpolate(img[None, :, i:i + h, j:j + w], size=(32, 32),
                    mode="bilinear", align_corners=False)[0]
  for op in rng.permutation(3):
    f = rng.uniform(0.6, 1.4)
    if op == 0:
      x = x * f
    elif op == 1:
      x = f * x + (1 - f) * gray(x).mean()
    else:
      x = f * x + (1 - f) * gray(x)
    x = x.clamp(0, 1)
  if rng.random() < 0.2:
    x = gray(x).repeat(3, 1, 1)
  return x


class Block(nn.Module):
  """A ResNet basic block."""

  def __init__(self, cin: int, cout: int, stride: int):
    super().__init__()
    self.c1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
    self.b1 = nn.BatchNorm2d(cout)
    self.c2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
    self.b2 = nn.BatchNorm2d(cout)
    self.short = nn.Sequential()
    if stride != 1 or cin != cout:
      self.short = nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False),
                                 nn.BatchNorm2d(cout))

  def forward(self, x):
    y = self.b2(self.c2(F.relu(self.b1(self.c1(x)))))
    return F.relu(y + self.short(x))


class ResNet18(nn.Module):
  """lemniscate's `resnet_cifar.ResNet18` with channels × `width`: pooled
  features `h`, then a linear layer to 128 and L2 normalisation (`f`)."""

  def __init__(self, width: float, low_dim: int = 128):
    super().__init__()
    widths = [max(1, int(c * width)) for c in (64, 128, 256, 512)]
    self.stem = nn.Sequential(nn.Conv2d(3, widths[0], 3, 1, 1, bias=False),
                              nn.BatchNorm2d(widths[0]), nn.ReLU())
    layers, cin = [], widths[0]
    for cout, stride in zip(widths, (1, 2, 2, 2)):
      layers += [Block(cin, cout, stride), Block(cout, cout, 1)]
      cin = cout
    self.layers = nn.Sequential(*layers)
    self.linear = nn.Linear(cin, low_dim)

  def forward(self, x):
    h = F.adaptive_avg_pool2d(self.layers(self.stem(x)), 1).flatten(1)
    return h, F.normalize(self.linear(h), dim=1)


def nce_backward(ctx, grad_output):
  """`NCEFunction.backward` for current torch: the same arithmetic."""
  x, memory, y, weight, out, params = ctx.saved_tensors
  k, t, momentum = int(params[0].item()), params[1].item(), params[3].item()
  n = grad_output.size(0)
  grad = (grad_output * out / t).view(n, 1, k + 1)
  grad_input = torch.bmm(grad, weight).view_as(x)
  pos = weight.select(1, 0).clone().mul_(momentum).add_(x * (1 - momentum))
  memory.index_copy_(0, y, pos / pos.pow(2).sum(1, keepdim=True).pow(0.5))
  return grad_input, None, None, None, None


def knn(bank, bank_labels, queries, labels, k: int, t: float) -> float:
  """Weighted kNN top-1 (Wu et al.), cosine similarity, 10 classes."""
  sims = F.normalize(queries, dim=1) @ F.normalize(bank, dim=1).T
  top, idx = sims.topk(k, dim=1)
  votes = torch.zeros(len(queries), 10).scatter_add_(
      1, bank_labels[idx], (top / t).exp())
  return (votes.argmax(1) == labels).float().mean().item()


def mean_cosine(x: torch.Tensor) -> float:
  x = F.normalize(x, dim=1)
  n = len(x)
  return ((x.sum(0).norm() ** 2 - n) / (n * (n - 1))).item()


@torch.no_grad()
def evaluate(net, memory, train, test, temperature: float) -> dict:
  net.eval()
  (xtr, ytr), (xte, yte) = train, test
  htr = torch.cat([net((xtr[s:s + 500] - MEAN) / STD)[0]
                   for s in range(0, len(xtr), 500)])
  hte, fte = (torch.cat(t) for t in zip(*[
      net((xte[s:s + 500] - MEAN) / STD) for s in range(0, len(xte), 500)]))
  net.train()
  return {"knn_h_k20": knn(htr, ytr, hte, yte, 20, 0.1),
          "knn_h_k200": knn(htr, ytr, hte, yte, 200, 0.1),
          "bank_knn_k200": knn(memory, ytr, fte, yte, 200, temperature),
          "mean_cos_f": mean_cosine(fte), "mean_cos_h": mean_cosine(hte)}


def main():
  p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  p.add_argument("--lemniscate", required=True,
                 help="a checkout of zhirongw/lemniscate.pytorch")
  p.add_argument("--zip", required=True, help="cifar10-jpeg.zip")
  p.add_argument("--epochs", type=int, default=4)
  p.add_argument("--width", type=float, default=0.125)
  p.add_argument("--nce_k", type=int, default=4096, help="0: full softmax")
  p.add_argument("--temperature", type=float, default=0.1)
  p.add_argument("--batch_size", type=int, default=256)
  p.add_argument("--lr", type=float, default=0.06)
  p.add_argument("--per_class", type=int, default=1000)
  p.add_argument("--seed", type=int, default=0)
  args = p.parse_args()
  sys.path.insert(0, args.lemniscate)
  ref = {name: importlib.import_module(f"lib.{name}") for name in (
      "alias_multinomial", "NCEAverage", "NCECriterion", "LinearAverage")}
  ref["alias_multinomial"].AliasMethod.cuda = lambda self: None  # CPU
  ref["NCEAverage"].NCEFunction.backward = staticmethod(nce_backward)

  torch.manual_seed(args.seed)
  rng = np.random.default_rng(args.seed)
  train = load(args.zip, "train", args.per_class)
  test = load(args.zip, "test", args.per_class)
  n = len(train[0])
  net = ResNet18(args.width)
  if args.nce_k:
    bank = ref["NCEAverage"].NCEAverage(128, n, args.nce_k,
                                        args.temperature, 0.5)
    criterion = ref["NCECriterion"].NCECriterion(n)
  else:
    bank = ref["LinearAverage"].LinearAverage(128, n, args.temperature, 0.5)
    criterion = nn.CrossEntropyLoss()
  opt = torch.optim.SGD(net.parameters(), lr=args.lr, momentum=0.9,
                        weight_decay=5e-4)
  result = evaluate(net, bank.memory, train, test, args.temperature)
  print("random init:", {k: round(v, 4) for k, v in result.items()},
        flush=True)
  start = time.time()
  for epoch in range(args.epochs):
    order, losses = rng.permutation(n), []
    for s in range(0, n - args.batch_size + 1, args.batch_size):
      idx = torch.from_numpy(order[s:s + args.batch_size])
      x = torch.stack([view(img, rng) for img in train[0][idx]])
      _, f = net((x - MEAN) / STD)
      loss = criterion(bank(f, idx), idx)
      opt.zero_grad()
      loss.backward()
      opt.step()
      losses.append(loss.item())
    result = evaluate(net, bank.memory, train, test, args.temperature)
    print(f"epoch {epoch + 1}: loss first {losses[0]:.2f} mean "
          f"{np.mean(losses):.2f} last {losses[-1]:.2f} "
          f"({time.time() - start:.0f} s)",
          {k: round(v, 4) for k, v in result.items()}, flush=True)


if __name__ == "__main__":
  main()
