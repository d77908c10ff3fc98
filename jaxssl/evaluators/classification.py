"""Top-1/top-5 of classifiers on a held-out split streamed per process.

The evaluator of the downstream stages (linear evaluation, fine-tuning,
distillation), built as pretraining's `RepresentationEvaluator`: each
process reads its own part of the split (`data.eval_input.EvalInput`: a
host pipeline's slice or its rows of an in-memory array, padded rows
masked), the logits are computed on the devices that hold the rows, and only
counts leave the devices. No host ever holds a split's images or logits, so
host memory does not grow with the split, and the same code runs on one
process or a pod.
"""

from __future__ import annotations

import functools
from typing import Any, Optional

import flax.linen as nn
import jax
from jax import lax
import jax.numpy as jnp
from jax.sharding import Mesh

from jaxssl import augment
from jaxssl.data import eval_input as eval_input_lib

PyTree = Any


@functools.partial(jax.jit, static_argnames=("model", "size", "normalize"))
def _logits(variables: PyTree, images: jax.Array, *, model: nn.Module,
            size: int, normalize: bool) -> jax.Array:
  """Eval-mode logits of centre-resized `images`; the weights are an
  argument, so every evaluation of a run reuses one compilation."""
  x = augment.center_resize(images, size, normalize)
  return model.apply(variables, x, train=False)


@jax.jit
def _counts(logits: jax.Array, labels: jax.Array,
            mask: jax.Array) -> jax.Array:
  """`[top-1, top-5]` correct rows of `mask` (ties: the lower class first,
  `lax.top_k`'s order)."""
  _, top = lax.top_k(logits, min(5, logits.shape[-1]))
  hit = (top == labels[:, None]) & mask[:, None]
  return jnp.stack([jnp.sum(hit[:, 0]), jnp.sum(hit)]).astype(jnp.int32)


@jax.jit
def _agreement(a: jax.Array, b: jax.Array, mask: jax.Array) -> jax.Array:
  """Rows of `mask` where the two classifiers' top classes agree."""
  same = jnp.argmax(a, -1) == jnp.argmax(b, -1)
  return jnp.sum(same & mask).astype(jnp.int32)


class ClassificationEvaluator:
  """Top-1/top-5 of a classifier on a streamed labelled split.

  Args:
    split: the held-out input (`data.eval_input.split_input`).
    mesh: the data mesh its global batches live on.
    image_size: side the images are centre-resized to.
    normalize: ImageNet-normalise them (as the training views were).
  """

  def __init__(self, split: eval_input_lib.EvalInput, *, mesh: Mesh,
               image_size: int, normalize: bool):
    self.split = split
    self.mesh = mesh
    self.name = split.name
    self._logits = functools.partial(_logits, size=image_size,
                                     normalize=normalize)

  def __call__(self, model: nn.Module, variables: PyTree, *,
               reference: Optional[tuple] = None) -> dict:
    """`{'top1', 'top5', 'eval_images'}` of `model` with `variables`
    (eval-mode BatchNorm; `eval_images`: the images counted, the split's
    size whatever the number of processes); with `reference=(model, variables)` (distillation's
    teacher) also `'agreement'`: the fraction of images on which both
    predict the same class."""
    sums = None
    for batch in self.split.batches(self.mesh):
      logits = self._logits(variables, batch["image"], model=model)
      new = {"correct": _counts(logits, batch["label"], batch["mask"]),
             "count": jnp.sum(batch["mask"].astype(jnp.int32))}
      if reference is not None:
        other = self._logits(reference[1], batch["image"], model=reference[0])
        new["agree"] = _agreement(logits, other, batch["mask"])
      sums = new if sums is None else jax.tree.map(jnp.add, sums, new)
    if sums is None:
      raise ValueError(f"{self.name} has no images to evaluate")
    sums = jax.device_get(sums)
    count = max(int(sums["count"]), 1)
    out = {"top1": int(sums["correct"][0]) / count,
           "top5": int(sums["correct"][1]) / count,
           "eval_images": int(sums["count"])}
    if reference is not None:
      out["agreement"] = int(sums["agree"]) / count
    return out
