"""CMC: contrastive multiview coding of an image's L and ab channels.

Tian, Krishnan & Isola, "Contrastive Multiview Coding", ECCV 2020
(https://arxiv.org/abs/1906.05849). As the reference (HobbitLong/CMC,
`train_CMC.py`, `NCE/NCEAverage.py`, `models/resnet.py`):

* one augmented crop per image (crop area 0.2–1, flip), converted to Lab
  ON THE DEVICE (`augment.rgb_to_lab`, skimage's) and normalised with the
  reference's Lab ranges (mean and half-range of L ∈ [0, 100],
  a ∈ [−86.183, 98.233], b ∈ [−107.857, 94.478]);
* two encoders, one on L (1 channel), one on ab (2 channels), each a
  ResNet of `model.width` (the paper's ResNet-50 "v1": half width each),
  each followed by one linear layer to 128 and L2 normalisation;
* a memory bank per view (N rows each, sharded by dataset index like
  InstDisc's, `jaxssl.methods.rows`), K noise rows per example drawn once
  for both views; L's feature is scored against the ab bank and ab's
  against the L bank (`out_l = bmm(memory_ab[idx], l)`), with NCE
  (`losses.instance_nce`, Z_l and Z_ab each from the first step) or, with
  `loss.cmc_softmax=True` (CMC's later version, `NCESoftmaxLoss`), the
  softmax cross-entropy of the positive among the K + 1 logits s/τ;
  the loss is the sum of the two views' losses;
* after the gradient each view's row of each example becomes
  normalise(m·row + (1 − m)·f_view), m = 0.5.

Evaluation: the encoder protocol's `h` is the concatenation of both
encoders' pooled features (the reference's linear classifier reads both),
so kNN, the online probe, linear evaluation, export and GradCache see one
encoder module holding the two ResNets. The bank kNN
(`config.eval.bank_knn_ks`, as InstDisc's; CMC's paper reports linear
accuracy only) scores `[f_L, f_ab]` against both banks' rows side by side.

Deviation: our ResNet's width also scales its stem (CMC's keeps 64
channels there).
"""

from __future__ import annotations

import functools
from typing import TYPE_CHECKING, Optional

import flax.linen as nn
import jax
from jax import lax
import jax.numpy as jnp
from jax.sharding import PartitionSpec

from jaxssl import augment
from jaxssl import losses
from jaxssl import models
from jaxssl.losses import core
from jaxssl.methods import base
from jaxssl.methods import instdisc
from jaxssl.sharding import DATA_AXIS

if TYPE_CHECKING:  # configs are only read here: no runtime dependency
  import ml_collections

# The reference's Lab normalisation: the middle and half-width of each
# channel's range (`train_CMC.py`, `get_train_loader`).
LAB_MEAN = (50.0, (-86.183 + 98.233) / 2, (-107.857 + 94.478) / 2)
LAB_STD = (50.0, (86.183 + 98.233) / 2, (107.857 + 94.478) / 2)
VIEWS = ("l", "ab")


class LabEncoders(nn.Module):
  """RGB in [0, 1] → normalised Lab → (L encoder, ab encoder) → their
  features concatenated, `[n, d_L + d_ab]`."""
  l_encoder: nn.Module
  ab_encoder: nn.Module

  def __call__(self, x: jax.Array, train: bool = True) -> jax.Array:
    lab = augment.rgb_to_lab(x)
    lab = (lab - jnp.asarray(LAB_MEAN, lab.dtype)) / jnp.asarray(
        LAB_STD, lab.dtype)
    h_l = self.l_encoder(lab[..., :1], train=train)
    h_ab = self.ab_encoder(lab[..., 1:], train=train)
    return jnp.concatenate([h_l, h_ab], axis=-1)


class ViewHeads(nn.Module):
  """One head per view on its half of `h`: `[z_L; z_ab]` side by side."""
  l_head: nn.Module
  ab_head: nn.Module

  def __call__(self, h: jax.Array, train: bool = True) -> jax.Array:
    h_l, h_ab = jnp.split(h, 2, axis=-1)
    return jnp.concatenate([self.l_head(h_l, train=train),
                            self.ab_head(h_ab, train=train)], axis=-1)


def create_network(config: ml_collections.ConfigDict,
                   axis_name: Optional[str]) -> base.Network:
  """Two ResNets of `config.model` (L and ab) and two heads of
  `config.head`."""
  return base.Network(
      LabEncoders(models.create_encoder(config.model, axis_name),
                  models.create_encoder(config.model, axis_name)),
      ViewHeads(models.create_head(config.head, config.model, axis_name),
                models.create_head(config.head, config.model, axis_name)))


def view_features(z: jax.Array) -> dict:
  """`{'l', 'ab'}` L2-normalised halves of the heads' output."""
  z_l, z_ab = jnp.split(z, 2, axis=-1)
  return {"l": losses.l2_normalize(z_l), "ab": losses.l2_normalize(z_ab)}


def loss(online, target, method_state, ctx, *, temperature: float,
         k: int, num_examples: int, softmax: bool):
  """L against the ab bank plus ab against the L bank (NCE or softmax)."""
  del target
  f = view_features(online["global"]["z"])
  index = ctx.index
  noise = instdisc.noise_indices(ctx.rng, index, k=k,
                                 num_examples=num_examples, shared=False)
  total, metrics = 0.0, {}
  for view, other in (("l", "ab"), ("ab", "l")):
    s = instdisc.similarities(f[view], method_state[f"bank_{other}"], index,
                              noise, num_examples=num_examples,
                              axis_name=ctx.axis_name)
    if softmax:
      labels = jnp.zeros(s.shape[:1], jnp.int32)
      value = core.cross_entropy(s / temperature, labels)
    else:
      z = instdisc.normalizer(method_state[f"normalizer_{view}"], s,
                              temperature=temperature,
                              num_examples=num_examples,
                              axis_name=ctx.axis_name)
      value = losses.instance_nce(s, temperature=temperature,
                                  num_examples=num_examples, normalizer=z)
      metrics[f"nce_z_{view}"] = lax.stop_gradient(z)
    metrics[f"loss_{view}"] = lax.stop_gradient(value)
    total = total + value
  return total, metrics


def update_banks(method_state, online, target, ctx, *, temperature: float,
                 k: int, momentum: float, num_examples: int, softmax: bool):
  """Z_l and Z_ab on the first step (NCE), then both banks' rows."""
  del target
  f = view_features(online["global"]["z"])
  index = ctx.index
  new = dict(method_state)
  if not softmax:
    for view, other in (("l", "ab"), ("ab", "l")):
      new[f"normalizer_{view}"] = instdisc.first_step_normalizer(
          method_state[f"normalizer_{view}"], f[view],
          method_state[f"bank_{other}"], index, rng=ctx.rng, k=k,
          temperature=temperature, num_examples=num_examples, shared=False,
          axis_name=ctx.axis_name)
  for view in VIEWS:
    new[f"bank_{view}"] = instdisc.momentum_update(
        method_state[f"bank_{view}"], index, f[view], momentum=momentum,
        num_examples=num_examples, axis_name=ctx.axis_name)
  new["labels"] = instdisc.record_labels(
      method_state["labels"], index, ctx.label, num_examples=num_examples,
      axis_name=ctx.axis_name)
  return new


def init_banks(rng: jax.Array, num_examples: int, dim: int,
               num_shards: int) -> dict:
  """Two InstDisc banks (`instdisc.init_bank`, own keys) and their Z's."""
  state = {}
  for i, view in enumerate(VIEWS):
    one = instdisc.init_bank(jax.random.fold_in(rng, i), num_examples, dim,
                             num_shards)
    state[f"bank_{view}"] = one["bank"]
    state[f"normalizer_{view}"] = one["normalizer"]
  state["labels"] = instdisc.unknown_labels(num_examples, num_shards)
  return state


def bank_rows(state: dict) -> jax.Array:
  """The bank kNN's rows: each example's L and ab rows side by side (a
  query's similarity is the mean of its two views' cosines)."""
  return jnp.concatenate([state["bank_l"], state["bank_ab"]], axis=-1)


def query_features(outputs: dict) -> jax.Array:
  """A held-out image's `[f_L, f_ab]`, each L2-normalised."""
  f = view_features(outputs["z"])
  return jnp.concatenate([f["l"], f["ab"]], axis=-1)


def create(config: ml_collections.ConfigDict, *, axis_name: Optional[str],
           total_steps: int, num_examples: int) -> base.Method:
  """CMC of config sections `model` (each view's ResNet), `head` (each
  view's linear layer to 128), `loss` (`temperature`, `nce_k`,
  `bank_momentum`, `cmc_softmax`)."""
  del total_steps
  loss_cfg = config.loss
  if loss_cfg.nce_k <= 0:
    raise ValueError(f"config.loss.nce_k={loss_cfg.nce_k} must be > 0 (CMC "
                     "draws K negatives per example)")
  settings = dict(temperature=loss_cfg.temperature, k=loss_cfg.nce_k,
                  num_examples=num_examples, softmax=loss_cfg.cmc_softmax)
  state = None
  if num_examples > 0:  # 0: only the views are asked for
    bank_rng = jax.random.fold_in(jax.random.key(config.seed), 0x636d63)
    specs = {f"bank_{v}": PartitionSpec(DATA_AXIS) for v in VIEWS}
    specs.update({f"normalizer_{v}": PartitionSpec() for v in VIEWS})
    specs["labels"] = PartitionSpec(DATA_AXIS)
    state = base.State(
        init=functools.partial(init_banks, bank_rng, num_examples,
                               config.head.out_dim),
        update=functools.partial(update_banks, momentum=loss_cfg.bank_momentum,
                                 **settings),
        specs=specs)
  return base.Method(
      name="cmc", views={"global": 1},
      network=create_network(config, axis_name),
      loss=functools.partial(loss, **settings),
      state=state, needs_index=True,
      bank_knn=instdisc.bank_knn(bank_rows, query_features, num_examples))
