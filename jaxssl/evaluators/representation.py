"""Evaluation of a representation during and after pretraining.

One object, called with a set of network variables, computes on held-out
data: weighted kNN top-1 for each k, the online probe's top-1/top-5 on
centre crops, and the collapse monitors (std and effective rank of `h` and
`z`). It works the same on one process and on a pod: each process streams
its part of the data (`data.eval_input`), features are computed on the
devices that hold the rows and stay there (the kNN bank is sharded over all
devices of all processes), and only sums leave the devices — correct counts,
and the moments and Gram matrices of the monitors — so no host ever holds
the features of a split.
"""

import functools
from typing import Any, Optional, Sequence

import flax.linen as nn
import jax
from jax import lax
import jax.numpy as jnp
from jax.sharding import Mesh

from jaxssl import augment
from jaxssl import losses
from jaxssl import precision
from jaxssl.data import eval_input
from jaxssl.evaluators import knn
from jaxssl.evaluators import linear_probe
from jaxssl.evaluators import monitors

PyTree = Any


class RepresentationEvaluator:
  """kNN, online-probe accuracy and collapse monitors on held-out data.

  Args:
    network: the method's online network (its call gives `{'h', 'z', ...}`).
    image_size: side the images are centre-resized to.
    normalize: ImageNet-normalise them (as the training views were).
    bank_input: labelled examples forming the kNN bank (None: no kNN).
    eval_input: labelled examples evaluated.
    mesh: the data mesh.
    ks: kNN neighbour counts (empty: no kNN).
    temperature: kNN vote temperature.
    num_classes: classes of the online probe (0: no probe).
    memory_bank: the method's memory-bank kNN (`methods.base.BankKnn`:
      its rows and labels from method state, the held-out features), or
      None.
    memory_bank_ks: its neighbour counts (empty: none).
    memory_bank_temperature: its vote temperature.
    knn_feature: the output the kNN compares: 'h' (the representation) or
      'z' (the projection: InstDisc's f, the reference's kNN on a memory
      recomputed from test-time features).
  """

  def __init__(self, network: nn.Module, *, image_size: int,
               normalize: bool,
               bank_input: Optional[eval_input.EvalInput],
               eval_input: eval_input.EvalInput,  # pylint: disable=redefined-outer-name
               mesh: Mesh, ks: Sequence[int], temperature: float,
               num_classes: int = 0, memory_bank: Any = None,
               memory_bank_ks: Sequence[int] = (),
               memory_bank_temperature: float = 0.07,
               knn_feature: str = "h"):
    self.ks = tuple(ks)
    if knn_feature not in ("h", "z"):
      raise ValueError(f"config.eval.knn_feature={knn_feature!r} is not one "
                       "of ['h', 'z']")
    self.knn_feature = knn_feature
    if self.ks and bank_input is None:
      raise ValueError("kNN evaluation needs a bank input")
    self.memory_bank_ks = tuple(memory_bank_ks)
    if self.memory_bank_ks and memory_bank is None:
      raise ValueError("memory-bank kNN needs a method with a memory bank")
    self.memory_bank = memory_bank if self.memory_bank_ks else None
    self.memory_bank_temperature = memory_bank_temperature
    self.bank_input, self.eval_input = bank_input, eval_input
    self.mesh = mesh
    self.temperature = temperature
    self.num_classes = num_classes
    self.name = eval_input.name
    query = None if self.memory_bank is None else self.memory_bank.query

    # One compiled forward pass serves the bank (`h`) and the eval split.
    @jax.jit
    def embed(variables, images):
      x = augment.center_resize(images, image_size, normalize)
      out = network.apply(variables, x, train=False)
      embedded = {"h": out["h"], "z": out["z"]}
      if query is not None:
        embedded["query"] = query(out)
      return embedded

    self._embed = embed

  def _fill_bank(self, variables: PyTree) -> tuple:
    """The bank of the train split's features, and its labelled rows."""
    bank, count = None, 0
    for i, batch in enumerate(self.bank_input.batches(self.mesh)):
      h = self._embed(variables, batch["image"])[self.knn_feature]
      if bank is None:
        bank = knn.StreamedBank(self.mesh, self.bank_input.num_batches,
                                h.shape[0], h.shape[-1])
      bank.put(i, h, batch["label"], batch["mask"])
      count += _count(batch["mask"])
    return bank, int(count)

  def _memory_bank(self, method_state: Optional[PyTree]) -> tuple:
    """The method's bank rows (normalised) and labels, and how many rows
    carry a label; `(None, None, 0)` without method state or bank."""
    if self.memory_bank is None or method_state is None:
      return None, None, 0
    rows, labels = _bank_rows(self.memory_bank.rows, method_state)
    return rows, labels, int(jax.device_get(jnp.sum(labels >= 0)))

  def __call__(self, variables: PyTree,
               probe_params: Optional[PyTree] = None,
               method_state: Optional[PyTree] = None) -> dict:
    """Evaluates `variables` (`{'params', 'batch_stats'}` of the network).

    `method_state` (the trained state's) adds the memory-bank kNN where
    the evaluator has one.

    Returns:
      `{'knn_top1_k{k}', 'bank_knn_top1_k{k}', 'probe_top1', 'probe_top5',
      'std_h', 'std_z', 'erank_h', 'erank_z'}` (those that apply); the
      monitors are over the whole eval split.
    """
    memory, memory_labels, memory_size = self._memory_bank(method_state)
    if memory is not None and not memory_size:
      raise ValueError("memory-bank kNN: no bank row has a label (the "
                       "training data has none, or no step ran); set "
                       "--config.eval.bank_knn_ks=()")
    bank, bank_size = self._fill_bank(variables) if self.ks else (None, 0)
    num_classes = max(self.eval_input.num_classes,
                      self.bank_input.num_classes if self.ks else 0)
    sums = None
    for batch in self.eval_input.batches(self.mesh):
      out = self._embed(variables, batch["image"])
      new = _sums(out, probe_params, batch["label"], batch["mask"],
                  num_classes=self.num_classes)
      if bank is not None:
        new["knn"] = bank.correct(out[self.knn_feature], batch["label"],
                                  ks=self.ks,
                                  num_classes=num_classes,
                                  temperature=self.temperature,
                                  num_labelled=bank_size)
      if memory is not None:
        new["bank_knn"] = knn.count_correct(
            memory, memory_labels, out["query"], batch["label"],
            mesh=self.mesh, ks=self.memory_bank_ks, num_classes=num_classes,
            temperature=self.memory_bank_temperature,
            num_labelled=memory_size)
      sums = new if sums is None else jax.tree.map(jnp.add, sums, new)
    sums = jax.device_get(sums)
    count = max(float(sums["count"]), 1.0)
    results = {}
    if bank is not None:
      results.update(_per_k("knn", sums["knn"], self.ks, bank_size, count))
    if memory is not None:
      results.update(_per_k("bank_knn", sums["bank_knn"],
                            self.memory_bank_ks, memory_size, count))
    if probe_params is not None:
      results.update(probe_top1=float(sums["probe"][0]) / count,
                     probe_top5=float(sums["probe"][1]) / count)
    for name in ("h", "z"):
      total, squares, gram = sums[name]
      results[f"std_{name}"] = monitors.embedding_std_from_sums(
          count, total, squares)
      results[f"erank_{name}"] = monitors.effective_rank_from_gram(gram,
                                                                    count)
    return results


def _per_k(name: str, correct, ks: Sequence[int], bank_size: int,
           count: float) -> dict:
  """`{'{name}_top1_k{k}'}` for the requested ks from the counts of the
  clamped ones (a k above the bank size is clamped)."""
  clamped = sorted({min(k, bank_size) for k in ks})
  return {f"{name}_top1_k{k}": float(correct[clamped.index(min(k, bank_size))])
          / count for k in ks}


@functools.partial(jax.jit, static_argnums=0)
def _bank_rows(rows_fn, method_state: PyTree) -> tuple:
  """`rows_fn(method_state)` with the rows L2-normalised (sharding kept)."""
  rows, labels = rows_fn(method_state)
  return losses.l2_normalize(precision.to_full(rows)), labels


def _count(mask: jax.Array) -> jax.Array:
  return jnp.sum(mask.astype(jnp.int32))


@jax.jit
def _moments(x: jax.Array, mask: jax.Array) -> tuple:
  """`(Σ x̂, Σ x̂², Σ x xᵀ)` over the rows of `mask`, `x̂ = x / ‖x‖`."""
  x = precision.to_full(x) * precision.to_full(mask)[:, None]
  unit = losses.l2_normalize(x)
  return (jnp.sum(unit, 0), jnp.sum(unit**2, 0),
          jnp.matmul(x.T, x, precision=lax.Precision.HIGHEST))


def _sums(out: dict, probe_params: Optional[PyTree], labels: jax.Array,
          mask: jax.Array, *, num_classes: int) -> dict:
  """Sums over one global batch (reductions over the sharded rows)."""
  sums = {"count": _count(mask),
          "h": _moments(out["h"], mask), "z": _moments(out["z"], mask)}
  if probe_params is not None:
    sums["probe"] = _probe_correct(probe_params, out["h"], labels, mask,
                                   num_classes=num_classes)
  return sums


@functools.partial(jax.jit, static_argnames="num_classes")
def _probe_correct(params: PyTree, h: jax.Array, labels: jax.Array,
                   mask: jax.Array, *, num_classes: int) -> jax.Array:
  """`[top-1, top-5]` correct rows of the probe (ties: the lower class)."""
  logits = linear_probe.Linear(num_classes).apply({"params": params}, h)
  _, top = lax.top_k(logits, min(5, num_classes))
  hit = (top == labels[:, None]) & mask[:, None]
  return jnp.stack([jnp.sum(hit[:, 0]), jnp.sum(hit)]).astype(jnp.int32)
