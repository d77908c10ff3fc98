"""The micro-batched forward/backward pass (GradCache) of a train step.

Gao et al. 2021, "Scaling Deep Contrastive Learning Batch Size under Memory
Limited Setup" (https://arxiv.org/abs/2101.06983), with the cache at the
encoder output: exact loss and gradients of the heads and the loss over the
global batch, with the encoder's activation memory of one micro-batch.
"""

from __future__ import annotations

import dataclasses
from typing import TYPE_CHECKING, Any, Callable

import jax
from jax import lax
import jax.numpy as jnp

from jaxssl import gradients
from jaxssl.learner import MICROBATCH_LOOPS
from jaxssl.methods import base
from jaxssl.train_state import TrainState

if TYPE_CHECKING:
  from jaxssl.learner import Learner

PyTree = Any


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


def _rows(batch: dict, m: int) -> dict:
  """The image arrays of `batch` (n rows) as `[m, n/m, ...]` micro-batches."""
  def split(x):
    return x.reshape(m, x.shape[0] // m, *x.shape[1:])
  if "views" in batch:
    return {"views": [split(v) for v in batch["views"]]}
  return {"image": split(batch["image"])}


def _to_micro(x: jax.Array, views: int, m: int) -> jax.Array:
  """`[V·n, ...]` (view-major) → `[m, V·n/m, ...]`, micro-batch i holding
  rows i·n/m … (i+1)·n/m of every view."""
  n = x.shape[0] // views
  x = x.reshape(views, m, n // m, *x.shape[1:])
  return jnp.swapaxes(x, 0, 1).reshape(m, views * (n // m), *x.shape[3:])


def _from_micro(x: jax.Array, views: int) -> jax.Array:
  """Inverse of `_to_micro`."""
  m, rows = x.shape[:2]
  x = x.reshape(m, views, rows // views, *x.shape[2:])
  return jnp.swapaxes(x, 0, 1).reshape(m * rows, *x.shape[3:])


def _with_encoder_stats(head_stats: PyTree, encoder_stats: PyTree) -> PyTree:
  """The heads' statistics (whole batch) with the encoder's (micro-batch
  averages)."""
  if "encoder" not in encoder_stats:
    return head_stats
  return {**head_stats, "encoder": encoder_stats["encoder"]}


def microbatched_gradients(state: TrainState, batch: dict,
                           view_rng: jax.Array, ctx: base.StepContext, *,
                           learner: Learner) -> gradients.Gradients:
  """The cached-gradient pass; same contract as
  `gradients.compute_gradients`.

  1. For each of the `M = learner.microbatches` micro-batches in turn
     (`lax.map`, no activations kept), make its views from its uint8 rows
     (`views.make_views`: each image's key depends on its global index, so
     they equal the full step's) and encode them (`Forward.encode`: per
     group, or per view for a per-view method).
  2. Run the heads (`Forward.heads`), the target's heads and the loss over
     the WHOLE global batch and differentiate w.r.t. the head parameters
     and the features `h`. The heads' BatchNorm sees the whole batch.
  3. Remake each micro-batch's views, re-encode them and pull `∂L/∂h` of
     its rows back through the encoder (`jax.vjp`); encoder gradients are
     summed over micro-batches locally and reduced over devices once.

  Activation memory is that of one micro-batch through the encoder, and
  float views exist for one micro-batch at a time; the price is a second
  encoder forward pass (~1.3× the step's FLOPs) and making the views twice.

  What differs from the full step: the ENCODER's BatchNorm normalises each
  micro-batch with its own statistics (over its `B/M` images on all
  devices, instead of all `B`), and its running statistics move by the
  average of the micro-batch updates (the running mean by exactly the full
  batch's mean; the variance by the mean within-micro-batch variance). The
  same holds for the target's encoder. With an encoder whose outputs are
  per-example (no BatchNorm, or frozen statistics) the gradients equal the
  full step's to rounding (tested in float64).
  """
  method = learner.method
  m = learner.microbatches
  counts = method.views
  first = batch["views"][0] if "views" in batch else batch["image"]
  n = first.shape[0]
  if n % m:
    raise ValueError(f"config.train.microbatches={m} does not divide the "
                     f"{n} images per device (batch_size / devices)")
  nets = [("network", method.network, method.forward)]
  if method.target is not None:
    nets.append(("target", method.target.network, method.target.forward))
  for name, network, forward in nets:
    if not isinstance(network, base.Network) or not isinstance(
        forward, base.Forward):
      raise TypeError(f"method {method.name!r}: micro-batching needs the "
                      f"{name}'s module to be a jaxssl.methods.base.Network "
                      "and its forward a base.Forward (encode + heads), got "
                      f"{type(network).__name__}, {type(forward).__name__}")
  micro = _rows(batch, m)

  def views_of(i, rows):
    return learner.make_views(rows, view_rng, ctx.step,
                              axis_name=ctx.axis_name, first_row=i * (n // m),
                              rows_per_device=n)

  online_rng, target_rng = gradients.network_rngs(ctx)

  def encode_all(network, forward, variables, rng):
    def one(args):
      i, rows = args
      return forward.encode(network, variables, views_of(i, rows), counts,
                            rng=jax.random.fold_in(rng, i))
    hs, stats = lax.map(one, (jnp.arange(m), micro))
    chosen = forward.counts(counts)  # views per group after `select`
    h = {g: _from_micro(x, chosen[g]) for g, x in hs.items()}
    return h, jax.tree.map(lambda s: jnp.mean(s, axis=0), stats)

  online_vars = {"params": state.params, "batch_stats": state.batch_stats}
  h, encoder_stats = encode_all(method.network, method.forward, online_vars,
                                online_rng)
  target_out = target_stats = None
  if method.target is not None:
    target = method.target
    target_h, target_encoder_stats = encode_all(
        target.network, target.forward, state.target, target_rng)
    target_out, target_head_stats = target.forward.heads(
        target.network, state.target, target_h, counts, rng=target_rng)
    target_out = lax.stop_gradient(target_out)
    target_stats = _with_encoder_stats(target_head_stats,
                                       target_encoder_stats)

  def loss_fn(params, h):
    out, head_stats = method.forward.heads(
        method.network, {"params": params, "batch_stats": state.batch_stats},
        h, counts, rng=online_rng)
    local_loss, aux = method.loss(out, target_out, state.method_state,
                                  dataclasses.replace(ctx, params=params))
    return lax.pmean(local_loss, ctx.axis_name), (head_stats, out, aux)

  (loss, (head_stats, out, aux)), (grads, grad_h) = jax.value_and_grad(
      loss_fn, argnums=(0, 1), has_aux=True)(state.params, h)

  # Local (device-varying) encoder parameters: the per-micro-batch vjps then
  # give this device's contributions, summed here and psum-ed once below,
  # instead of one all-reduce per micro-batch.
  local_params = lax.pcast(state.params["encoder"], ctx.axis_name,
                           to="varying")

  def accumulate(total, args):
    i, rows, grad_h = args
    views = views_of(i, rows)

    def encode(encoder_params):
      variables = {"params": {**state.params, "encoder": encoder_params},
                   "batch_stats": state.batch_stats}
      return method.forward.encode(method.network, variables, views, counts,
                                   rng=jax.random.fold_in(online_rng, i))[0]

    _, vjp = jax.vjp(encode, local_params)
    return jax.tree.map(jnp.add, total, vjp(grad_h)[0])

  chosen = method.forward.counts(counts)
  grad_h_micro = {g: _to_micro(x, chosen[g], m) for g, x in grad_h.items()}
  encoder_grads = _sum_microbatches(
      accumulate, jax.tree.map(jnp.zeros_like, local_params),
      (jnp.arange(m), micro, grad_h_micro),
      unroll=unroll_microbatches(learner.microbatch_loop))
  grads = {**grads, "encoder": lax.psum(encoder_grads, ctx.axis_name)}
  return gradients.Gradients(
      loss, grads, _with_encoder_stats(head_stats, encoder_stats), out, aux,
      target_out, target_stats)
