"""The method interface shared by all self-supervised methods.

A method is one file whose `create(config, *, axis_name, total_steps,
num_examples)` (`num_examples`: the training set's size, a memory bank's
rows; 0 where only the views are read) returns a `Method`: which view
groups it needs, its online network, how views go through it (`Forward`),
its loss, and optionally a target network (`Target`), method state
(`State`) and a post-update hook. The train step
(`jaxssl.step.train_step`) runs every method the same way:

    views   = {group: [V_g·n, S_g, S_g, 3]}        (`Method.views`, augmented)
    target  = Target.forward(target vars, views)    (no gradient)
    online  = Method.forward(online vars, views)    (differentiated)
    loss    = Method.loss(online, target, state, ctx)
    params  = optimizer update, then Method.post_update(params, ctx)
    state   = State.update(state, online, target, ctx)   (outside the grad)
    target  = EMA towards Target.tracks(params)

Outputs are per group: `{group: {'h', 'z'[, 'p']}}`, each `[V_g·n, d]` with
the views of the group stacked view-major (`split_views` undoes it). See
`jaxssl/methods/README.md` for how to write a new method.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable, Mapping, Optional, Protocol

import flax.linen as nn
import jax
import jax.numpy as jnp
from jax.sharding import PartitionSpec

from jaxssl.methods import network as network_lib

PyTree = Any
Outputs = dict  # {'h': encoder features, 'z': projection, 'p': prediction}
GroupOutputs = dict  # {group name: Outputs}
Schedule = Callable[[jax.Array], jax.Array]


@dataclasses.dataclass(frozen=True)
class StepContext:
  """What a step knows besides the views, for losses, state and hooks.

  Attributes:
    step: optimizer steps taken before this one (int32 scalar).
    epoch: `step · batch_size / num_examples` (float scalar): DINO's teacher
      temperature, SwAV's queue start.
    rng: this step's method key, the same on every device: per-example
      draws fold in a global index (`index`, or the position in the
      global batch, `lax.axis_index · n + row`), never the device index
      alone, so they do not depend on the device count.
    axis_name: the mapped data axis (None on one device, unmapped).
    index: `[n]` int32 DATASET index of each local example (its position
      in the training set, `0 ≤ index < num_examples`: a memory bank's
      row), distinct from its position in the global batch (device ·
      n + row, which seeds its views); None only for hand-made batches.
    label: `[n]` class labels of the local examples, or None (SupCon).
    params: in the loss, the online parameters being differentiated (SwAV
      scores its queue with the current prototypes); None elsewhere.
  """
  step: jax.Array
  epoch: jax.Array
  rng: jax.Array
  axis_name: Optional[str] = None
  index: Optional[jax.Array] = None
  label: Optional[jax.Array] = None
  params: Optional[Any] = None


def split_views(x: jax.Array, num_views: int) -> list:
  """`[view_1; ...; view_V]` (rows) → list of V arrays of n rows each."""
  return jnp.split(x, num_views, axis=0)


@dataclasses.dataclass(frozen=True)
class Forward:
  """How the views of some groups go through a `Network`.

  Attributes:
    per_view: False: the views of a group are concatenated along the batch
      and encoded together (one set of BatchNorm statistics per group; the
      SimCLR reference), and the heads run once over every group's
      features. True: each view goes through encoder and heads alone, with
      its own batch statistics and its own running-statistics update, in
      order (the BYOL, SimSiam and Barlow Twins references).
    groups: the view groups this forward sees, in order; None: all.
    select: `{group: view indices}`: only these views of a group go through
      the network, in this order (MoCo v1/v2: the query encoder sees view 0,
      the key encoder view 1); groups not named pass whole. The outputs of
      such a group hold the selected views only.

  Running BatchNorm statistics are threaded from call to call, so a
  per-view forward of two views moves them twice (two EMA updates).
  """
  per_view: bool = False
  groups: Optional[tuple] = None
  select: Optional[Mapping[str, tuple]] = None

  def counts(self, counts: Mapping[str, int]) -> dict:
    """Views per group in this forward's outputs, from the method's
    `counts` (`Method.views`)."""
    select = self.select or {}
    for g, chosen in select.items():
      if g not in counts or not chosen or any(
          not 0 <= i < counts[g] for i in chosen):
        raise ValueError(f"forward selects views {tuple(chosen)} of group "
                         f"{g!r}; the method's groups are {dict(counts)}")
    return {g: len(select[g]) if g in select else c
            for g, c in counts.items()}

  def _selected(self, x: jax.Array, group: str,
                counts: Mapping[str, int]) -> jax.Array:
    if not self.select or group not in self.select:
      return x
    views = split_views(x, counts[group])
    return jnp.concatenate([views[i] for i in self.select[group]])

  def group_names(self, views: Mapping[str, jax.Array]) -> tuple:
    if self.groups is None:
      return tuple(views)
    missing = [g for g in self.groups if g not in views]
    if missing:
      raise ValueError(f"forward needs view groups {missing}; the batch has "
                       f"{list(views)}")
    return tuple(self.groups)

  def __call__(self, network: nn.Module, variables: PyTree,
               views: Mapping[str, jax.Array], counts: Mapping[str, int], *,
               train: bool = True,
               rng: Optional[jax.Array] = None) -> tuple[GroupOutputs, PyTree]:
    """`({group: Outputs}, new batch_stats)` of `network` on `views`.

    `rng` feeds the modules' 'dropout' streams (a ViT's drop-path), one key
    per network call (`fold_in(rng, call)`); None: no such stream."""
    h, stats = self.encode(network, variables, views, counts, train=train,
                           rng=rng)
    return self.heads(network, {**variables, "batch_stats": stats}, h, counts,
                      train=train, rng=rng)

  def encode(self, network: nn.Module, variables: PyTree,
             views: Mapping[str, jax.Array], counts: Mapping[str, int], *,
             train: bool = True,
             rng: Optional[jax.Array] = None) -> tuple[dict, PyTree]:
    """The encoder stage alone: `({group: h}, new batch_stats)`; `counts`
    are the method's views per group (before `select`)."""
    stats = variables.get("batch_stats", {})
    out = {}
    call = 0
    chosen = self.counts(counts)
    for g in self.group_names(views):
      x = self._selected(views[g], g, counts)
      chunks = split_views(x, chosen[g]) if self.per_view else [x]
      hs = []
      for x in chunks:
        h, stats = _apply(network, {**variables, "batch_stats": stats}, x,
                          train, "encode", _call_rng(rng, call))
        call += 1
        hs.append(h)
      out[g] = jnp.concatenate(hs) if len(hs) > 1 else hs[0]
    return out, stats

  def heads(self, network: nn.Module, variables: PyTree, h: Mapping[str, Any],
            counts: Mapping[str, int], *, train: bool = True,
            rng: Optional[jax.Array] = None) -> tuple[GroupOutputs, PyTree]:
    """The head stage on encoder features `{group: h}` of `encode`
    (`counts` as there: the method's)."""
    stats = variables.get("batch_stats", {})
    names = tuple(h)
    counts = self.counts(counts)
    rng = None if rng is None else jax.random.fold_in(rng, 1 << 16)
    if self.per_view:
      out = {}
      call = 0
      for g in names:
        parts = []
        for hv in split_views(h[g], counts[g]):
          o, stats = _apply(network, {**variables, "batch_stats": stats}, hv,
                            train, "heads", _call_rng(rng, call))
          call += 1
          parts.append(o)
        out[g] = jax.tree.map(lambda *a: jnp.concatenate(a), *parts)
      return out, stats
    rows = [h[g].shape[0] for g in names]
    both, stats = _apply(network, {**variables, "batch_stats": stats},
                         jnp.concatenate([h[g] for g in names]), train,
                         "heads", rng)
    cuts = [sum(rows[:i + 1]) for i in range(len(rows) - 1)]
    parts = {k: jnp.split(v, cuts) for k, v in both.items()}
    return ({g: {k: parts[k][i] for k in parts} for i, g in enumerate(names)},
            stats)


def _call_rng(rng: Optional[jax.Array], call: int) -> Optional[jax.Array]:
  return None if rng is None else jax.random.fold_in(rng, call)


def _apply(network, variables, x, train, method, rng=None):
  rngs = {} if rng is None else {"dropout": rng}
  if not train:
    return (network.apply(variables, x, train=False, method=method, rngs=rngs),
            variables.get("batch_stats", {}))
  out, new = network.apply(variables, x, train=True, mutable=["batch_stats"],
                           method=method, rngs=rngs)
  return out, new.get("batch_stats", {})


def subtrees(*names: str) -> Callable[[PyTree], PyTree]:
  """The online → target mapping of a target that tracks the online
  submodules `names` (e.g. 'encoder', 'projector'; BYOL's target has no
  predictor)."""
  def tracked(online: PyTree) -> PyTree:
    missing = [n for n in names if n not in online]
    if missing:
      raise ValueError(f"the target tracks online submodules {missing}, "
                       f"which the online network lacks ({sorted(online)})")
    return {n: online[n] for n in names}
  return tracked


TARGET_INITS = ("copy", "independent")


@dataclasses.dataclass(frozen=True)
class Target:
  """A target network that moves as an EMA of the online one (BYOL, MoCo,
  DINO's teacher).

  Attributes:
    network: the target's module.
    momentum: τ as a function of the step (before the update); after each
      step `target ← τ·target + (1 − τ)·tracks(online)`, towards the
      UPDATED online parameters.
    tracks: online params (or batch_stats) → the target's structure.
    init: 'copy' (the target starts as `tracks(online)`, MoCo, DINO) or
      'independent' (initialised from its own key, the BYOL reference).
    forward: how the views reach the target (training-mode BatchNorm, its
      own running statistics; e.g. global crops only for DINO).
  """
  network: nn.Module
  momentum: Schedule
  tracks: Callable[[PyTree], PyTree]
  init: str = "copy"
  forward: Forward = Forward()

  def __post_init__(self):
    if self.init not in TARGET_INITS:
      raise ValueError(f"config.target.init={self.init!r} is not one of "
                       f"{list(TARGET_INITS)}")


@dataclasses.dataclass(frozen=True)
class State:
  """Method state beside the parameters: queues, centres, memory banks.

  Attributes:
    init: `(num_shards) -> state`, the initial state as global arrays;
      `num_shards` is the data axis's size (a row-sharded table pads its
      rows to a multiple of it, `jaxssl.methods.rows`).
    update: `(state, online, target, ctx) -> state`, run after the gradient
      (outside `value_and_grad`) with the step's stop-gradient outputs.
    specs: `PartitionSpec` pytree (a prefix of the state) over the data
      axis: `P()` replicated (a queue, a centre), `P('data')` sharded by
      rows (a per-example memory bank; each device sees its rows).
  """
  init: Callable[[int], PyTree]
  update: Callable[..., PyTree]
  specs: PyTree = PartitionSpec()


@dataclasses.dataclass(frozen=True)
class BankKnn:
  """kNN evaluation on the method's own memory bank (Wu et al. 2018 §3.4:
  each held-out image's feature against the training images' bank rows,
  weighted votes of the k nearest; `evaluators.representation`).

  Attributes:
    rows: method state → `(rows [N_pad, d], labels [N_pad])`, both sharded
      by rows (`P('data')`); labels are the class of each row's example as
      the step recorded it (`ctx.label`), −1 where none was seen yet. Rows
      need not be normalised (the evaluator does it).
    query: the evaluated network's outputs (eval mode, `{'h', 'z', ...}`)
      → `[n, d]` features scored against the rows.
  """
  rows: Callable[[PyTree], tuple]
  query: Callable[[Outputs], jax.Array]


class LossFn(Protocol):
  """Every method's module-level `loss(online, target, method_state, ctx,
  *, hyper-parameters)`, bound with `functools.partial` in `create`."""

  def __call__(self, online: GroupOutputs, target: Optional[GroupOutputs],
               method_state: Optional[PyTree],
               ctx: StepContext) -> tuple[jax.Array, dict]:
    """`(local_loss, metrics)` of one device's views.

    `online`/`target` are `{group: Outputs}` of the local views (target
    already stop-gradient, None without a target); `method_state` the
    state before this step's `State.update` (the loss never returns it).
    The global-batch loss is the mean of `local_loss` over devices;
    `metrics` are scalars, averaged over devices by the step. Collectives
    use `ctx.axis_name` (None outside a mapped axis).
    """


@dataclasses.dataclass(frozen=True)
class Method:
  """A self-supervised method, as the train step sees it.

  Attributes:
    name: the method's config name.
    views: view groups and their number of views, e.g. `{'global': 2}` or
      `{'global': 2, 'local': 6}`; `config.augment` says how each is made.
    network: the online module; its `encode(x, train)` gives the
      representation `h` evaluated downstream (the encoder protocol), its
      `heads(h, train)` the other outputs.
    loss: see `LossFn`.
    forward: how the views go through the online network.
    target: the EMA target network, or None.
    state: method state and its update, or None.
    post_update: `(params, ctx) -> params` after the optimizer update
      (SwAV's prototype normalisation), or None.
    embedding: the output monitored for collapse (`embed_std`).
    needs_labels: the loss reads `ctx.label` (SupCon): training data without
      labels is an error before anything compiles
      (`jaxssl.train.create_learner`).
    needs_index: the method reads `ctx.index` (a memory bank's rows,
      InstDisc, CMC): a batch without `'index'` is an error when the step
      is traced (`jaxssl.step.train_step`). Every input source delivers it.
    bank_knn: the paper's kNN on its memory bank (InstDisc, CMC), or None;
      `config.eval.bank_knn_ks` asks for it.
    evaluated: the network the reference evaluates and releases: 'online'
      (SimCLR, BYOL, MoCo's query encoder, ...) or 'target' (DINO's
      teacher, whose kNN and linear figures the paper reports). kNN, the
      online probe and the exported encoder (so linear evaluation,
      fine-tuning and distillation) use it; `config.eval.network`
      overrides it. The checkpoint keeps both.
  """
  name: str
  views: Mapping[str, int]
  network: nn.Module
  loss: LossFn
  forward: Forward = Forward()
  target: Optional[Target] = None
  state: Optional[State] = None
  post_update: Optional[Callable[[PyTree, StepContext], PyTree]] = None
  embedding: str = "z"
  needs_labels: bool = False
  needs_index: bool = False
  bank_knn: Optional[BankKnn] = None
  evaluated: str = "online"


EVALUATED = ("online", "target")


# The encoder → projector → predictor module most methods use, and its
# builder from the config (`jaxssl.methods.network`).
Network = network_lib.Network
create_network = network_lib.create_network
