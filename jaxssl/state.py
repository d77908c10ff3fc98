"""The initial train state of a learner, and how it is laid out on the mesh.

Everything is replicated over the data axis except the method state, which
each method lays out itself (`methods.base.State.specs`: a queue or a centre
replicated, a per-example memory bank sharded by rows).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import jax
import jax.numpy as jnp
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

from jaxssl.evaluators import linear_probe
from jaxssl.sharding import DATA_AXIS
from jaxssl.train_state import TrainState

if TYPE_CHECKING:
  from jaxssl.learner import Learner

PyTree = Any


def state_specs(learner: Learner) -> TrainState:
  """`PartitionSpec`s of the train state over the data axis (a prefix of
  the state's pytree): `P()` everywhere but the method state's own specs."""
  method = learner.method
  return TrainState(
      step=P(), params=P(), batch_stats=P(), opt_state=P(), rng=P(),
      target=None if method.target is None else P(),
      method_state=None if method.state is None else method.state.specs,
      probe=None if learner.probe is None else P())


def _shardings(specs: PyTree, mesh: Mesh) -> PyTree:
  return jax.tree.map(lambda s: NamedSharding(mesh, s), specs,
                      is_leaf=lambda x: isinstance(x, P))


def create_train_state(rng: jax.Array, learner: Learner,
                       mesh: Mesh) -> TrainState:
  """Initialises the state on `mesh` (`state_specs`).

  The online network from `fold_in(init key, 0)`; a target either copies
  the online variables it tracks (`Target.init='copy'`) or is initialised
  from its own key (`'independent'`, the BYOL reference); the method state;
  the online probe.
  """
  init_rng, state_rng = jax.random.split(rng)
  method = learner.method
  size = learner.image_size

  def init(init_rng, state_rng):
    dummy = jnp.zeros((2, size, size, 3))
    variables = method.network.init(init_rng, dummy, train=False)
    params = variables["params"]
    batch_stats = variables.get("batch_stats", {})
    target = None
    if method.target is not None:
      target = _init_target(method, variables,
                            jax.random.fold_in(init_rng, 1), dummy)
    method_state = (None if method.state is None else
                    method.state.init(mesh.shape[DATA_AXIS]))
    probe = None
    if learner.probe is not None:
      feature_dim = method.network.apply(variables, dummy,
                                         method="encode").shape[-1]
      probe = linear_probe.create(learner.probe.num_classes, feature_dim,
                                  learner.probe.tx)
    return TrainState(step=jnp.zeros([], jnp.int32), params=params,
                      batch_stats=batch_stats,
                      opt_state=learner.tx.init(params), rng=state_rng,
                      target=target, method_state=method_state, probe=probe)

  return jax.jit(init, out_shardings=_shardings(state_specs(learner), mesh))(
      init_rng, state_rng)


def _init_target(method, online: dict, rng: jax.Array,
                 dummy: jax.Array) -> dict:
  """The target's initial `{'params', 'batch_stats'}`.

  Running statistics start at BatchNorm's initial values either way (the
  online network's are those too at step 0)."""
  target = method.target
  variables = target.network.init(rng, dummy, train=False)
  params = variables["params"]
  if target.init == "copy":
    copy = target.tracks(online["params"])
    got = jax.tree.map(lambda x: (x.shape, x.dtype), copy)
    want = jax.tree.map(lambda x: (x.shape, x.dtype), params)
    if got != want:
      raise ValueError(f"method {method.name!r}: the target's parameters do "
                       "not mirror the online ones it tracks")
    params = jax.tree.map(jnp.copy, copy)
  return {"params": params, "batch_stats": variables.get("batch_stats", {})}
