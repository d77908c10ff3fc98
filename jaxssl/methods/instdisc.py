"""InstDisc: non-parametric instance discrimination with a memory bank.

Wu, Xiong, Yu & Lin, "Unsupervised Feature Learning via Non-Parametric
Instance Discrimination", CVPR 2018 (https://arxiv.org/abs/1805.01978).
As the reference (zhirongw/lemniscate.pytorch: `NCEAverage`,
`NCECriterion`, `LinearAverage`):

* one augmented view per image; the encoder's features go through one
  linear layer to 128 dimensions and are L2-normalised (`f`);
* the memory bank holds one 128-d row per training image (N rows),
  initialised uniformly in [−σ, σ], σ = 1/√(d/3) (not normalised), and
  lives in method state SHARDED by dataset index over the data axis
  (`jaxssl.methods.rows`: 1.28 M × 128 float32 is 650 MB, never
  replicated);
* each step reads each example's own row (the positive) and K = 4096
  noise rows drawn uniformly from the whole bank PER EXAMPLE (the
  reference's `AliasMethod` draws `[batch, K + 1]`; here each example's
  draws fold in its dataset index, so they do not depend on the device
  count; `loss.shared_noise=True` draws one set of K rows per step for
  the whole batch), and scores `f·row` with `losses.instance_nce`, τ 0.07;
* the NCE normaliser Z is estimated on the first step
  (`losses.nce_normalizer`: the mean of exp(s/τ) over the global batch
  times N), already used for that step's loss, then kept in method state
  (so in the checkpoint) and never re-estimated;
* after the gradient each example's row becomes
  `normalise(m·row + (1 − m)·f)`, m = `loss.bank_momentum` = 0.5, written
  on the device that owns it (the row as read before the step; a row
  twice in one batch keeps the later example's write);
* `loss.nce_k=0` is the full-softmax variant (`LinearAverage` + cross
  entropy over all N rows): each device scores the global batch's
  features against its own block of the bank, and one `pmax`/`psum` of
  per-row maxima and sums gives the log-normaliser.

What a step communicates (float32, d = 128, K = 4096, per device): the
n·(K + 1) requested rows come from their owners through two
`lax.all_to_all` (`rows.read_rows`), n·(K + 1)·d·4 bytes each way:
  batch 256 on 8 devices: 32·4097 rows, 67 MB per device;
  batch 4096 on 8 devices: 512·4097 rows, 1.07 GB per device;
  batch 4096 on 256 devices: 16·4097 rows, 34 MB per device;
  batch 256 on 256 devices: one example per device, 2.1 MB.
(An all-gather of the requests with a reduce-scatter of the rows would
move the GLOBAL batch's: 537 MB and 8.6 GB per device at 256 and 4096.)
The bank update moves n rows to their owners; Z one all-reduce on the
first step. The batch's indices are checked against N on the host once a
step (by the bank update's `rows.write_rows`).

Evaluated: the encoder (kNN, probe, linear evaluation as every method)
and, as the paper (§3.4, the figures it quotes), the kNN on the memory
bank itself (`config.eval.bank_knn_ks`, k = 200, τ = the loss's): the
test images' `f` against the bank's rows, each row voting for the label
recorded with it (`record_labels`: the step writes `ctx.label` at each
example's index beside its row, so every source and process delivers
them; a row not yet visited has none and does not vote, where the
reference's random row votes with its dataset label).
"""

from __future__ import annotations

import functools
import math
from typing import TYPE_CHECKING, Callable, Optional

import jax
from jax import lax
import jax.numpy as jnp
from jax.sharding import PartitionSpec

from jaxssl import losses
from jaxssl import precision
from jaxssl.losses import core
from jaxssl.methods import base
from jaxssl.methods import rows
from jaxssl.sharding import DATA_AXIS

if TYPE_CHECKING:  # configs are only read here: no runtime dependency
  import ml_collections


def init_bank(rng: jax.Array, num_examples: int, dim: int,
              num_shards: int) -> dict:
  """`{'bank': [N_pad, d] U(−σ, σ), σ = 1/√(d/3); 'labels': [N_pad] −1;
  'normalizer': −1}` (Z not yet estimated). Row i is the same for any
  device count."""
  bound = 1.0 / math.sqrt(dim / 3)
  bank = jax.random.uniform(rng, (num_examples, dim), minval=-bound,
                            maxval=bound)
  return {"bank": rows.pad(bank, num_shards),
          "labels": unknown_labels(num_examples, num_shards),
          "normalizer": jnp.full([], -1.0, precision.full_dtype())}


def unknown_labels(num_examples: int, num_shards: int) -> jax.Array:
  """`[N_pad]` int32 −1: the bank kNN's labels before any step saw them."""
  return jnp.full((rows.padded_rows(num_examples, num_shards),), -1,
                  jnp.int32)


def record_labels(labels: jax.Array, index: jax.Array,
                  label: Optional[jax.Array], *, num_examples: int,
                  axis_name: Optional[str]) -> jax.Array:
  """Each example's class at its dataset index, for the bank kNN (the
  reference reads the dataset's labels in index order); unchanged where
  the data has no labels. Nothing in the loss reads them."""
  if label is None:
    return labels
  return rows.write_rows(labels, index, label.astype(jnp.int32),
                         num_rows=num_examples, axis_name=axis_name,
                         check=False)


def bank_knn(rows_fn: Callable[[dict], jax.Array],
             query: Callable[[dict], jax.Array], num_examples: int
             ) -> base.BankKnn:
  """The paper's kNN on the rows `rows_fn(method_state)` with the labels
  `record_labels` kept, for held-out features `query(outputs)`."""
  def rows_and_labels(state):
    return rows_fn(state), known_labels(state["labels"], num_examples)
  return base.BankKnn(rows=rows_and_labels, query=query)


def known_labels(labels: jax.Array, num_examples: int) -> jax.Array:
  """`labels` with the padding rows [N, N_pad) at −1 (a checkpoint
  restored onto another device count pads them with zeros)."""
  return jnp.where(jnp.arange(labels.shape[0]) < num_examples, labels, -1)


def query_feature(outputs: dict) -> jax.Array:
  """The held-out image's f: its L2-normalised 128-d projection."""
  return losses.l2_normalize(outputs["z"])


def noise_indices(rng: jax.Array, index: jax.Array, *, k: int,
                  num_examples: int, shared: bool) -> jax.Array:
  """`[n, K]` noise rows, uniform over the bank: per example from
  `fold_in(rng, dataset index)` (device-count independent), or one set for
  the whole step (`shared`)."""
  if shared:
    draw = jax.random.randint(rng, (k,), 0, num_examples, jnp.int32)
    return jnp.broadcast_to(draw, index.shape + (k,))
  return jax.vmap(lambda i: jax.random.randint(
      jax.random.fold_in(rng, i), (k,), 0, num_examples, jnp.int32))(index)


def similarities(f: jax.Array, bank: jax.Array, index: jax.Array,
                 noise: jax.Array, *, num_examples: int,
                 axis_name: Optional[str]) -> jax.Array:
  """`[n, 1 + K]`: f·bank[index] then f·bank[noise] (rows read from their
  owners, no gradient into the bank)."""
  n, k = noise.shape
  wanted = jnp.concatenate([index[:, None], noise], axis=1).reshape(-1)
  got = rows.read_rows(bank, wanted, num_rows=num_examples,
                       axis_name=axis_name, check=False)
  got = lax.stop_gradient(got).reshape(n, k + 1, -1)
  return jnp.einsum("nd,nkd->nk", f, got.astype(f.dtype))


def full_softmax(f: jax.Array, bank: jax.Array, index: jax.Array, *,
                 temperature: float, num_examples: int,
                 axis_name: Optional[str]) -> jax.Array:
  """Cross entropy of each example against all N rows (`LinearAverage`),
  the bank split over devices: the mean over this device's rows."""
  bank = lax.stop_gradient(bank).astype(f.dtype)
  block = bank.shape[0]
  everyone = core.gather(f, axis_name)  # [B, d]
  logits = everyone @ bank.T / temperature  # [B, R]: my rows of the bank
  first = 0 if axis_name is None else lax.axis_index(axis_name) * block
  real = (first + jnp.arange(block)) < num_examples  # not padding
  logits = jnp.where(real[None, :], logits, -jnp.inf)
  top = lax.stop_gradient(jnp.max(logits, axis=1))
  if axis_name is not None:
    top = lax.pmax(top, axis_name)
  total = core.global_sum(jnp.sum(jnp.exp(logits - top[:, None]),
                                         axis=1), axis_name)
  log_z = top + jnp.log(total)  # [B]
  n = f.shape[0]
  mine = lax.dynamic_slice_in_dim(
      log_z, 0 if axis_name is None else lax.axis_index(axis_name) * n, n)
  positive = rows.read_rows(bank, index, num_rows=num_examples,
                            axis_name=axis_name, check=False)
  return jnp.mean(mine - jnp.sum(f * positive, axis=1) / temperature)


def loss(online, target, method_state, ctx, *, temperature: float,
         k: int, num_examples: int, shared_noise: bool):
  """NCE (or full softmax) of the local features against the bank."""
  del target
  f = losses.l2_normalize(online["global"]["z"])
  bank, index = method_state["bank"], ctx.index
  if k == 0:
    value = full_softmax(f, bank, index, temperature=temperature,
                         num_examples=num_examples, axis_name=ctx.axis_name)
    return value, {}
  noise = noise_indices(ctx.rng, index, k=k, num_examples=num_examples,
                        shared=shared_noise)
  s = similarities(f, bank, index, noise, num_examples=num_examples,
                   axis_name=ctx.axis_name)
  z = normalizer(method_state["normalizer"], s, temperature=temperature,
                 num_examples=num_examples, axis_name=ctx.axis_name)
  value = losses.instance_nce(s, temperature=temperature,
                              num_examples=num_examples, normalizer=z)
  return value, {"nce_z": lax.stop_gradient(z),
                 "positive_p": lax.stop_gradient(
                     jnp.mean(jnp.exp(s[:, 0] / temperature) / z))}


def normalizer(stored: jax.Array, s: jax.Array, *, temperature: float,
               num_examples: int, axis_name: Optional[str]) -> jax.Array:
  """The stored Z, or (first step: −1) this batch's estimate."""
  return lax.cond(stored > 0, lambda: stored.astype(s.dtype),
                  lambda: losses.nce_normalizer(
                      s, temperature=temperature, num_examples=num_examples,
                      axis_name=axis_name))


def update_bank(method_state, online, target, ctx, *, temperature: float,
                k: int, momentum: float, num_examples: int,
                shared_noise: bool):
  """Z on the first step (the loss's estimate, recomputed from the same
  draws), then `normalise(m·row + (1 − m)·f)` on each row's owner."""
  del target
  f = losses.l2_normalize(online["global"]["z"])
  bank, index = method_state["bank"], ctx.index
  z = method_state["normalizer"]
  if k:
    z = first_step_normalizer(z, f, bank, index, rng=ctx.rng, k=k,
                              temperature=temperature,
                              num_examples=num_examples, shared=shared_noise,
                              axis_name=ctx.axis_name)
  bank = momentum_update(bank, index, f, momentum=momentum,
                         num_examples=num_examples, axis_name=ctx.axis_name)
  labels = record_labels(method_state["labels"], index, ctx.label,
                         num_examples=num_examples, axis_name=ctx.axis_name)
  return {"bank": bank, "labels": labels, "normalizer": z}


def first_step_normalizer(stored: jax.Array, f: jax.Array, bank: jax.Array,
                          index: jax.Array, *, rng: jax.Array, k: int,
                          temperature: float, num_examples: int,
                          shared: bool, axis_name: Optional[str]
                          ) -> jax.Array:
  """The Z to keep after a step: `stored`, or on the first step (stored
  −1) the estimate the loss used, recomputed from the same draws, rows and
  (stop-gradient) features; the recomputation runs on that step only."""
  def estimate():
    noise = noise_indices(rng, index, k=k, num_examples=num_examples,
                          shared=shared)
    s = similarities(f, bank, index, noise, num_examples=num_examples,
                     axis_name=axis_name)
    return losses.nce_normalizer(s, temperature=temperature,
                                 num_examples=num_examples,
                                 axis_name=axis_name).astype(stored.dtype)
  return lax.cond(stored > 0, lambda: stored, estimate)


def momentum_update(bank: jax.Array, index: jax.Array, f: jax.Array, *,
                    momentum: float, num_examples: int,
                    axis_name: Optional[str]) -> jax.Array:
  """Rows `index` ← normalise(m·row + (1 − m)·f), on their owners (the
  rows as before the step; a row twice in the batch keeps the later
  example's)."""
  old = rows.read_rows(bank, index, num_rows=num_examples,
                       axis_name=axis_name, check=False)
  new = losses.l2_normalize(momentum * old + (1.0 - momentum) *
                            f.astype(old.dtype))
  return rows.write_rows(bank, index, new, num_rows=num_examples,
                         axis_name=axis_name)


def create(config: ml_collections.ConfigDict, *, axis_name: Optional[str],
           total_steps: int, num_examples: int) -> base.Method:
  """InstDisc of config sections `model`, `head` (one linear layer to 128),
  `loss` (`temperature`, `nce_k`, `bank_momentum`, `shared_noise`)."""
  del total_steps
  loss_cfg = config.loss
  if loss_cfg.nce_k < 0:
    raise ValueError(f"config.loss.nce_k={loss_cfg.nce_k} must be >= 0 (0: "
                     "the full softmax over the bank)")
  dim = config.head.out_dim
  bank_rng = jax.random.fold_in(jax.random.key(config.seed), 0x62616e6b)
  settings = dict(temperature=loss_cfg.temperature, k=loss_cfg.nce_k,
                  num_examples=num_examples, shared_noise=loss_cfg.shared_noise)
  state = None
  if num_examples > 0:  # 0: only the views are asked for
    state = base.State(
        init=functools.partial(init_bank, bank_rng, num_examples, dim),
        update=functools.partial(update_bank, momentum=loss_cfg.bank_momentum,
                                 **settings),
        specs={"bank": PartitionSpec(DATA_AXIS),
               "labels": PartitionSpec(DATA_AXIS),
               "normalizer": PartitionSpec()})
  return base.Method(
      name="instdisc", views={"global": 1},
      network=base.create_network(config, axis_name),
      forward=base.Forward(per_view=False),
      loss=functools.partial(loss, **settings),
      state=state, needs_index=True,
      bank_knn=bank_knn(lambda s: s["bank"], query_feature, num_examples))
