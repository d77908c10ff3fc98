"""Loss and gradients of one device's views: the plain and the micro-batched pass.

`compute_gradients` is the forward/backward pass of the per-device train
step (`jaxssl.step`): one pass over all local views, or, with
`learner.microbatches > 1`, the cached-gradient pass of
`microbatched_gradients`, which keeps the loss exact over the global batch
with the encoder activations of one micro-batch.
"""

from __future__ import annotations

import dataclasses
from typing import TYPE_CHECKING, Any, Callable, Optional

import flax.linen as nn
import jax
from jax import lax
import jax.numpy as jnp

from jaxssl import sharding
from jaxssl.methods import base
from jaxssl.train_state import TrainState

if TYPE_CHECKING:
  from jaxssl.step import Learner

DATA_AXIS = sharding.DATA_AXIS
PyTree = Any


@dataclasses.dataclass
class Gradients:
  """What the forward/backward pass of a step hands to the update.

  Attributes:
    loss: the global-batch loss (the same on every device).
    grads: its gradient w.r.t. the online parameters (replicated).
    batch_stats: the online network's new BatchNorm statistics.
    outputs: the online outputs `{'h', 'z'[, 'p']}` of the local views.
    aux: the method's metrics (local).
    method_state: the method's new state.
    target_stats: the target network's new BatchNorm statistics, or None.
  """
  loss: jax.Array
  grads: PyTree
  batch_stats: PyTree
  outputs: dict
  aux: dict
  method_state: Any
  target_stats: Optional[PyTree]


def compute_gradients(state: TrainState, views: jax.Array, *,
                      learner: Learner,
                      axis_name: str = DATA_AXIS) -> Gradients:
  """Loss and gradients of one device's views `[view_1; ...; view_V]`.

  With `learner.microbatches == 1` one forward/backward over all local views;
  otherwise the cached-gradient step of `microbatched_gradients`.
  """
  if learner.microbatches > 1:
    return microbatched_gradients(state, views, learner=learner,
                                  axis_name=axis_name)
  method = learner.method
  target_out = target_stats = None
  if method.target_network is not None:
    # Training mode (batch statistics), as the BYOL reference; the target's
    # own running statistics are updated by this pass.
    target_out, target_vars = method.target_network.apply(
        state.target, views, train=True, mutable=["batch_stats"])
    target_out = lax.stop_gradient(target_out)
    target_stats = target_vars.get("batch_stats", {})

  def loss_fn(params):
    out, new_vars = method.network.apply(
        {"params": params, "batch_stats": state.batch_stats}, views,
        train=True, mutable=["batch_stats"])
    local_loss, aux, method_state = method.loss(
        out, target_out, state.method_state, axis_name=axis_name)
    # The mean over devices of per-device means over local anchors is the
    # loss of the global batch; its gradient needs no further reduction.
    return lax.pmean(local_loss, axis_name), (new_vars.get("batch_stats", {}),
                                              out, aux, method_state)

  (loss, (batch_stats, out, aux, method_state)), grads = jax.value_and_grad(
      loss_fn, has_aux=True)(state.params)
  return Gradients(loss, grads, batch_stats, out, aux, method_state,
                   target_stats)


def _to_microbatches(x: jax.Array, num_views: int, m: int) -> jax.Array:
  """`[view_1; ...; view_V]` (n rows each) → `[m, V·n/m, ...]`: micro-batch
  i holds rows i·n/m … (i+1)·n/m of every view (both views of its images)."""
  n = x.shape[0] // num_views
  x = x.reshape(num_views, m, n // m, *x.shape[1:])
  return jnp.swapaxes(x, 0, 1).reshape(m, num_views * (n // m), *x.shape[3:])


def _from_microbatches(x: jax.Array, num_views: int) -> jax.Array:
  """Inverse of `_to_microbatches`."""
  m, rows = x.shape[:2]
  x = x.reshape(m, num_views, rows // num_views, *x.shape[2:])
  return jnp.swapaxes(x, 0, 1).reshape(m * rows, *x.shape[3:])


def _encode_microbatches(network: nn.Module, variables: PyTree,
                         xs: jax.Array, num_views: int):
  """Encoder features of every micro-batch, one at a time, without keeping
  activations; BN statistics of each micro-batch start from `variables` and
  are averaged over micro-batches."""
  def encode(x):
    h, new_vars = network.apply(variables, x, train=True,
                                mutable=["batch_stats"], method="encode")
    return h, new_vars.get("batch_stats", {})

  hs, stats = lax.map(encode, xs)
  return (_from_microbatches(hs, num_views),
          jax.tree.map(lambda s: jnp.mean(s, axis=0), stats))


def _with_encoder_stats(head_stats: PyTree, encoder_stats: PyTree) -> PyTree:
  """The heads' statistics (whole batch) with the encoder's (micro-batch
  averages)."""
  if "encoder" not in encoder_stats:
    return head_stats
  return {**head_stats, "encoder": encoder_stats["encoder"]}


MICROBATCH_LOOPS = ("auto", "scan", "unrolled")


def unroll_microbatches(loop: str) -> bool:
  """Whether micro-batches are unrolled (True) or a `lax.scan` (False) for
  `config.train.microbatch_loop`; 'auto': unrolled on CPU, a scan elsewhere.

  XLA:CPU leaves convolution gradients inside a loop body in a form its fast
  (Eigen) convolution does not take; measured on a 2-core CPU, a kernel
  gradient in a `fori_loop` ran 30× slower than outside it (forward
  convolutions are unaffected). GPU and TPU keep the loop: one copy of the
  encoder in the program, activations of one micro-batch at a time.
  """
  if loop not in MICROBATCH_LOOPS:
    raise ValueError(f"config.train.microbatch_loop={loop!r} is not one of "
                     f"{list(MICROBATCH_LOOPS)}")
  if loop == "auto":
    return jax.default_backend() == "cpu"
  return loop == "unrolled"


def _sum_microbatches(fn: Callable[[PyTree, Any], PyTree], init: PyTree,
                      xs: Any, *, unroll: bool) -> PyTree:
  """`fn(fn(init, xs[0]), xs[1]) ...` over the leading axis of `xs`.

  Unrolled, an optimisation barrier makes micro-batch i+1's inputs wait for
  micro-batch i's result, so that their activations are never live together.
  """
  if not unroll:
    return lax.scan(lambda total, x: (fn(total, x), None), init, xs)[0]
  total = init
  for i in range(jax.tree.leaves(xs)[0].shape[0]):
    x = jax.tree.map(lambda a, i=i: a[i], xs)
    if i:
      total, x = lax.optimization_barrier((total, x))
    total = fn(total, x)
  return total


def microbatched_gradients(state: TrainState, views: jax.Array, *,
                           learner: Learner,
                           axis_name: str = DATA_AXIS) -> Gradients:
  """The cached-gradient step of Gao et al. 2021, "Scaling Deep Contrastive
  Learning Batch Size under Memory Limited Setup" (GradCache,
  https://arxiv.org/abs/2101.06983), with the cache at the encoder output.

  1. Encode the `M = learner.microbatches` micro-batches one after another
     without storing activations (`lax.map`), giving `h` for all local views.
  2. Run the heads (projector, predictor), the target's heads and the loss
     over the WHOLE global batch (negatives gathered across devices as
     usual) and differentiate w.r.t. the head parameters and `h`. The heads
     are small, so their BatchNorm sees the whole batch, as in the full step.
  3. Re-encode each micro-batch (`lax.scan`) and pull `∂L/∂h` of its rows
     back through the encoder (`jax.vjp`); the encoder gradients are summed
     over micro-batches locally and reduced over devices once.

  Activation memory is that of one micro-batch through the encoder; the
  price is a second encoder forward pass (~1.3× the step's FLOPs). The views
  of the whole local batch are made once, before step 1 (float32: B·V·S²·3·4
  bytes, 4.9 GB for 4096 × 2 views at 224 px on one device).

  What differs from the full step: the ENCODER's BatchNorm normalises each
  micro-batch with its own statistics (over its `B/M` images × views on all
  devices, instead of over all `B`), and its running statistics move by the
  average of the micro-batch updates (the running mean by exactly the full
  batch's mean; the variance by the mean within-micro-batch variance, which
  misses the variance between micro-batch means). The same holds for the
  target's encoder. With an encoder whose outputs are per-example (no
  BatchNorm, or frozen statistics) the gradients equal the full step's to
  rounding (tested in float64).
  """
  method = learner.method
  m = learner.microbatches
  num_views = len(learner.view_specs)
  n = views.shape[0] // num_views
  if n % m:
    raise ValueError(f"config.train.microbatches={m} does not divide the "
                     f"{n} images per device (batch_size / devices)")
  for name, network in (("network", method.network),
                        ("target_network", method.target_network)):
    if network is not None and not isinstance(network, base.Network):
      raise TypeError(f"method {method.name!r}: micro-batching needs "
                      f"`{name}` to be a jaxssl.methods.base.Network "
                      f"(encode + heads), got {type(network).__name__}")
  xs = _to_microbatches(views, num_views, m)
  online_vars = {"params": state.params, "batch_stats": state.batch_stats}
  h, encoder_stats = _encode_microbatches(method.network, online_vars, xs,
                                          num_views)
  target_out = target_stats = None
  if method.target_network is not None:
    target_h, target_encoder_stats = _encode_microbatches(
        method.target_network, state.target, xs, num_views)
    target_out, target_vars = method.target_network.apply(
        state.target, target_h, train=True, mutable=["batch_stats"],
        method="heads")
    target_out = lax.stop_gradient(target_out)
    target_stats = _with_encoder_stats(target_vars.get("batch_stats", {}),
                                       target_encoder_stats)

  def loss_fn(params, h):
    out, new_vars = method.network.apply(
        {"params": params, "batch_stats": state.batch_stats}, h,
        train=True, mutable=["batch_stats"], method="heads")
    local_loss, aux, method_state = method.loss(
        out, target_out, state.method_state, axis_name=axis_name)
    return lax.pmean(local_loss, axis_name), (new_vars.get("batch_stats", {}),
                                              out, aux, method_state)

  (loss, (head_stats, out, aux, method_state)), (grads, grad_h) = (
      jax.value_and_grad(loss_fn, argnums=(0, 1), has_aux=True)(
          state.params, h))

  # Local (device-varying) encoder parameters: the per-micro-batch vjps then
  # give this device's contributions, summed here and psum-ed once below,
  # instead of one all-reduce per micro-batch.
  local_params = lax.pcast(state.params["encoder"], axis_name, to="varying")

  def accumulate(total, micro):
    x, grad_h = micro

    def encode(encoder_params):
      h, _ = method.network.apply(
          {"params": {**state.params, "encoder": encoder_params},
           "batch_stats": state.batch_stats}, x, train=True,
          mutable=["batch_stats"], method="encode")
      return h

    _, vjp = jax.vjp(encode, local_params)
    return jax.tree.map(jnp.add, total, vjp(grad_h)[0])

  encoder_grads = _sum_microbatches(
      accumulate, jax.tree.map(jnp.zeros_like, local_params),
      (xs, _to_microbatches(grad_h, num_views, m)),
      unroll=unroll_microbatches(learner.microbatch_loop))
  grads = {**grads, "encoder": lax.psum(encoder_grads, axis_name)}
  return Gradients(loss, grads, _with_encoder_stats(head_stats, encoder_stats),
                   out, aux, method_state, target_stats)

