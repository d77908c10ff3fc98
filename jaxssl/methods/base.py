"""The method interface shared by all self-supervised methods.

Every method follows one skeleton: the views of a batch go through an online
network (encoder → projector → optional predictor); an optional target network
(an exponential moving average of part of the online network, BYOL/MoCo/DINO)
embeds the same views without gradient; a loss compares the two; optional
method state (queues, centres) is read and written by the loss. A method file
provides a `create(config, *, axis_name, total_steps) -> Method`, and
`jaxssl.train.train_step` does the rest for every method.
"""

import dataclasses
from typing import Any, Callable, Optional, Protocol

import flax.linen as nn
import jax

from jaxssl import models

PyTree = Any
Outputs = dict  # {'h': encoder features, 'z': projection, 'p': prediction}
Schedule = Callable[[jax.Array], jax.Array]


class LossFn(Protocol):

  def __call__(self, online: Outputs, target: Optional[Outputs],
               method_state: Optional[PyTree], *,
               axis_name: Optional[str]) -> tuple[jax.Array, dict, Any]:
    """Loss of one device's share of the batch.

    Args:
      online: outputs of `Method.network` on the concatenated views
        `[view_1; view_2; ...]` of the local batch (`n` rows per view).
      target: outputs of `Method.target_network` on the same views, already
        stop-gradient; None for methods without a target.
      method_state: the current method state (None if the method has none).
      axis_name: the mapped data axis (None on one device, unmapped).

    Returns:
      `(local_loss, metrics, new_method_state)`. The global-batch loss is the
      mean of `local_loss` over devices; `metrics` are scalars, averaged
      over devices by the caller.
    """


@dataclasses.dataclass(frozen=True)
class Method:
  """A self-supervised method, as the train step sees it.

  Attributes:
    name: the method's config name.
    network: online flax module, `network(views, train) -> Outputs`, whose
      `'h'` output is the representation evaluated downstream.
    loss: see `LossFn`.
    num_views: views per image the loss expects.
    target_network: module applied with the target's variables, or None. Its
      top-level submodules must carry the names of the online submodules
      they track (e.g. 'encoder', 'projector'); the target starts as a copy
      of those and moves as `τ·target + (1 − τ)·online` after each step.
    target_momentum: τ as a function of the step (before the update).
    init_method_state: returns the initial method state, or None.
  """
  name: str
  network: nn.Module
  loss: LossFn
  num_views: int = 2
  target_network: Optional[nn.Module] = None
  target_momentum: Optional[Schedule] = None
  init_method_state: Optional[Callable[[], PyTree]] = None

  def __post_init__(self):
    if (self.target_network is None) != (self.target_momentum is None):
      raise ValueError(f"method {self.name!r}: target_network and "
                       "target_momentum go together")


class Network(nn.Module):
  """Encoder → projector → optional predictor; returns `{'h', 'z'[, 'p']}`.

  Attributes:
    encoder: backbone f(·) producing the representation `h`.
    projector: head g(·) producing the embedding `z`.
    predictor: head q(·) producing the prediction `p` (BYOL, SimSiam), or
      None.
  """
  encoder: nn.Module
  projector: nn.Module
  predictor: Optional[nn.Module] = None

  def __call__(self, x: jax.Array, train: bool = True) -> Outputs:
    return self.heads(self.encoder(x, train=train), train=train)

  def heads(self, h: jax.Array, train: bool = True) -> Outputs:
    """Projector (and predictor) on given representations `h`."""
    out = {"h": h, "z": self.projector(h, train=train)}
    if self.predictor is not None:
      out["p"] = self.predictor(out["z"], train=train)
    return out

  def encode(self, x: jax.Array, train: bool = False) -> jax.Array:
    """The representation `h` alone (evaluation)."""
    return self.encoder(x, train=train)


def create_network(config, axis_name: Optional[str], *,
                   predictor: bool = False) -> Network:
  """Encoder (`config.model`) → projector (`config.head`) [→ predictor
  (`config.predictor`, output width defaulting to the projector's)]."""
  pred = None
  if predictor:
    pred = models.create_head(config.predictor, config.model, axis_name,
                              default_out_dim=config.head.out_dim)
  return Network(models.create_encoder(config.model, axis_name),
                 models.create_head(config.head, config.model, axis_name),
                 pred)


def split_views(x: jax.Array, num_views: int) -> list:
  """`[view_1; ...; view_V]` (rows) → list of V arrays of n rows each."""
  return jax.numpy.split(x, num_views, axis=0)
