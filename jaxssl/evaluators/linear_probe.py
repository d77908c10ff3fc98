"""Linear classifiers on frozen (stop-gradient) features.

The online probe trains during pretraining on the encoder features of the
augmented views, with its own optimizer, as SimCLR TF2
(`lineareval_while_pretraining`) and solo-learn do: it never changes the
encoder (the features are stop-gradient) and reports how linearly separable
the representation is as training goes. `fit` trains the same classifier
offline on fixed features.
"""

import functools
from typing import Any, Optional

import flax.linen as nn
import flax.struct
import jax
from jax import lax
import jax.numpy as jnp
import numpy as np
import optax

from jaxssl import precision

PyTree = Any


# The classifier's kernel initialisers: 'zeros' (the SimCLR reference's
# logits layer), 'normal' (N(0, 0.01²), the torchvision references' linear
# classification: `fc.weight.data.normal_(mean=0.0, std=0.01)`). Biases 0.
KERNEL_INITS = {"zeros": nn.initializers.zeros,
                "normal": nn.initializers.normal(0.01)}


class Linear(nn.Module):
  """`h @ W + b`, `W` initialised as `kernel_init` says, `b` at 0."""
  num_classes: int
  kernel_init: str = "zeros"

  @nn.compact
  def __call__(self, h: jax.Array) -> jax.Array:
    if self.kernel_init not in KERNEL_INITS:
      raise ValueError(f"config.classifier_init={self.kernel_init!r} is not "
                       f"one of {list(KERNEL_INITS)}")
    return nn.Dense(self.num_classes,
                    kernel_init=KERNEL_INITS[self.kernel_init],
                    param_dtype=precision.full_dtype(),
                    name="head")(precision.to_full(h))


@flax.struct.dataclass
class ProbeState:
  """Parameters and optimizer state of a linear probe."""
  params: PyTree
  opt_state: optax.OptState


def create(num_classes: int, feature_dim: int,
           tx: optax.GradientTransformation) -> ProbeState:
  params = Linear(num_classes).init(jax.random.key(0),
                                    jnp.zeros((1, feature_dim)))["params"]
  return ProbeState(params=params, opt_state=tx.init(params))


def loss_and_accuracy(params: PyTree, features: jax.Array, labels: jax.Array,
                      *, num_classes: int,
                      axis_name: Optional[str] = None) -> tuple:
  """Mean cross-entropy and top-1 of the probe over the GLOBAL batch.

  Rows with label −1 (unlabelled) are left out. The features are
  stop-gradient: the probe never trains the encoder.

  Args:
    params: probe parameters.
    features: `[n, d]` local features.
    labels: `[n]` local integer labels (−1: none).
    num_classes: classes of the probe.
    axis_name: mapped device axis (sums over the global batch).

  Returns:
    `(loss, accuracy)`, the same on every device.
  """
  logits = Linear(num_classes).apply({"params": params},
                                     lax.stop_gradient(features))
  return classification_loss(logits, labels, axis_name=axis_name)


def classification_loss(logits: jax.Array, labels: jax.Array, *,
                        axis_name: Optional[str] = None) -> tuple:
  """Mean softmax cross-entropy and top-1 over the GLOBAL labelled rows.

  Sums over the local rows, then over `axis_name`, divided by the global
  count of rows whose label is not −1.
  """
  valid = precision.to_full(labels >= 0)
  ce = optax.softmax_cross_entropy_with_integer_labels(
      logits, jnp.maximum(labels, 0))
  correct = precision.to_full(jnp.argmax(logits, -1) == labels)
  sums = jnp.stack([jnp.sum(ce * valid), jnp.sum(correct * valid),
                    jnp.sum(valid)])
  if axis_name is not None:
    sums = lax.psum(sums, axis_name)
  count = jnp.maximum(sums[2], 1.0)
  return sums[0] / count, sums[1] / count


def update(state: ProbeState, features: jax.Array, labels: jax.Array, *,
           tx: optax.GradientTransformation, num_classes: int,
           axis_name: Optional[str] = None) -> tuple:
  """One optimizer step of the probe; returns `(state, loss, accuracy)`."""
  (loss, accuracy), grads = jax.value_and_grad(
      functools.partial(loss_and_accuracy, num_classes=num_classes,
                        axis_name=axis_name), has_aux=True)(
                            state.params, features, labels)
  updates, opt_state = tx.update(grads, state.opt_state, state.params)
  return (ProbeState(optax.apply_updates(state.params, updates), opt_state),
          loss, accuracy)


def top_k_accuracy(logits: np.ndarray, labels: np.ndarray) -> dict:
  """`{'top1', 'top5'}` of `[n, C]` logits (ties: the lower class first)."""
  top = np.argsort(-np.asarray(logits), axis=1, kind="stable")[:, :5]
  labels = np.asarray(labels)[:, None]
  return {"top1": float(np.mean(top[:, :1] == labels)),
          "top5": float(np.mean(np.any(top == labels, axis=1)))}


def accuracy(params: PyTree, features: np.ndarray, labels: np.ndarray, *,
             num_classes: int) -> dict:
  """`{'top1', 'top5'}` of the probe on labelled features."""
  logits = Linear(num_classes).apply({"params": params},
                                     precision.to_full(features))
  return top_k_accuracy(logits, labels)


def fit(features: np.ndarray, labels: np.ndarray, *, num_classes: int,
        epochs: int = 100, batch_size: int = 256, learning_rate: float = 1e-3,
        seed: int = 0) -> PyTree:
  """Trains a probe on fixed features with Adam (standardised inputs).

  Features are standardised with their own mean/std first (folded into the
  returned weights), so the rate does not depend on the feature scale.

  Returns:
    Probe parameters that apply to the raw features.
  """
  features = np.asarray(features, np.float32)
  mean, std = features.mean(0), features.std(0) + 1e-6
  x = (features - mean) / std
  tx = optax.adam(learning_rate)
  state = create(num_classes, x.shape[1], tx)
  step = jax.jit(functools.partial(update, tx=tx, num_classes=num_classes))
  rng = np.random.default_rng(seed)
  batch_size = min(batch_size, len(x))
  labels = np.asarray(labels, np.int32)
  for _ in range(epochs):
    order = rng.permutation(len(x))
    for start in range(0, len(x) - batch_size + 1, batch_size):
      idx = order[start:start + batch_size]
      state, _, _ = step(state, x[idx], labels[idx])
  kernel = np.asarray(state.params["head"]["kernel"]) / std[:, None]
  bias = np.asarray(state.params["head"]["bias"]) - mean @ kernel
  return {"head": {"kernel": jnp.asarray(kernel), "bias": jnp.asarray(bias)}}
