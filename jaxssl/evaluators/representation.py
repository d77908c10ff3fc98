"""Evaluation of a representation during and after pretraining.

One object, called with a set of network variables, computes on held-out
data: weighted kNN top-1 for each k (features on the devices, bank split
over them), the online probe's top-1/top-5 on centre crops, and the collapse
monitors (std and effective rank of `h` and `z`).
"""

import functools
from typing import Any, Optional, Sequence

import flax.linen as nn
import jax
from jax.sharding import Mesh

from jaxssl import augment
from jaxssl.data import in_memory
from jaxssl.evaluators import knn
from jaxssl.evaluators import linear_probe
from jaxssl.evaluators import monitors

PyTree = Any


class RepresentationEvaluator:
  """kNN, online-probe accuracy and collapse monitors on held-out data.

  Args:
    network: the method's online network (`encode` gives `h`; the call gives
      `{'h', 'z', ...}`).
    image_size: side the images are centre-resized to.
    normalize: ImageNet-normalise them (as the training views were).
    train_ds: labelled examples forming the kNN bank.
    eval_ds: labelled examples evaluated.
    mesh: the data mesh.
    ks: kNN neighbour counts (empty: no kNN).
    temperature: kNN vote temperature.
    batch_size: images per feature-extraction call.
    num_classes: classes of the online probe (0: no probe).
    monitor_examples: eval examples used for the collapse monitors.
  """

  def __init__(self, network: nn.Module, *, image_size: int,
               normalize: bool,
               train_ds: in_memory.ArrayDataset,
               eval_ds: in_memory.ArrayDataset, mesh: Mesh,
               ks: Sequence[int], temperature: float, batch_size: int,
               num_classes: int = 0, monitor_examples: int = 2048):
    self.train_ds, self.eval_ds = train_ds, eval_ds
    self.mesh = mesh
    self.ks = tuple(ks)
    self.temperature = temperature
    self.batch_size = batch_size
    self.num_classes = num_classes
    self.monitor_examples = monitor_examples
    self.name = eval_ds.name

    @jax.jit
    def encode(variables, images):
      x = augment.center_resize(images, image_size, normalize)
      return network.apply(variables, x, method="encode")

    @jax.jit
    def embed(variables, images):
      x = augment.center_resize(images, image_size, normalize)
      out = network.apply(variables, x, train=False)
      return {"h": out["h"], "z": out["z"]}

    self._encode, self._embed = encode, embed

  def __call__(self, variables: PyTree,
               probe_params: Optional[PyTree] = None) -> dict:
    """Evaluates `variables` (`{'params', 'batch_stats'}` of the network).

    Returns:
      `{'knn_top1_k{k}', 'probe_top1', 'probe_top5', 'std_h', 'std_z',
      'erank_h', 'erank_z'}` (those that apply).
    """
    extract = functools.partial(knn.extract_features,
                                batch_size=self.batch_size, mesh=self.mesh)
    test = extract(functools.partial(self._embed, variables),
                   self.eval_ds.images)
    results = {}
    if self.ks:
      bank = extract(functools.partial(self._encode, variables),
                     self.train_ds.images)
      accuracy = knn.knn_accuracy(
          bank, self.train_ds.labels, test["h"], self.eval_ds.labels,
          num_classes=max(self.train_ds.num_classes,
                          self.eval_ds.num_classes),
          ks=self.ks, temperature=self.temperature, mesh=self.mesh)
      # Keys of the requested ks (a k above the bank size is clamped).
      n = len(self.train_ds)
      results.update({f"knn_top1_k{k}": accuracy[min(k, n)] for k in self.ks})
    if probe_params is not None:
      probe = linear_probe.accuracy(probe_params, test["h"],
                                    self.eval_ds.labels,
                                    num_classes=self.num_classes)
      results.update(probe_top1=probe["top1"], probe_top5=probe["top5"])
    for name in ("h", "z"):
      sample = test[name][:self.monitor_examples]
      results[f"std_{name}"] = monitors.embedding_std(sample)
      results[f"erank_{name}"] = monitors.effective_rank(sample)
    return results
