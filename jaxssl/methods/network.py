"""`Network`: encoder → projector → optional predictor, the online module of
most methods (`base.Method.network`), and `create_network`, its builder
from `config.model`, `config.head` and `config.predictor`. Re-exported as
`base.Network` and `base.create_network`.
"""

from __future__ import annotations

from typing import Optional

import flax.linen as nn
import jax

from jaxssl import models

Outputs = dict  # {'h': encoder features, 'z': projection, 'p': prediction}


class Network(nn.Module):
  """Encoder → projector → optional predictor; returns `{'h', 'z'[, 'p']}`.

  Attributes:
    encoder: backbone f(·) producing the representation `h`.
    projector: head g(·) producing the embedding `z`.
    predictor: head q(·) producing the prediction `p` (BYOL, SimSiam), or
      None.
    predictor_input: what the predictor reads: 'z' (BYOL, SimSiam: the
      projection) or 'h' (WCL: a second head beside the projector, on the
      representation).
  """
  encoder: nn.Module
  projector: nn.Module
  predictor: Optional[nn.Module] = None
  predictor_input: str = "z"

  def __call__(self, x: jax.Array, train: bool = True) -> Outputs:
    return self.heads(self.encoder(x, train=train), train=train)

  def heads(self, h: jax.Array, train: bool = True) -> Outputs:
    """Projector (and predictor) on given representations `h`."""
    out = {"h": h, "z": self.projector(h, train=train)}
    if self.predictor is not None:
      if self.predictor_input not in ("z", "h"):
        raise ValueError(f"predictor_input={self.predictor_input!r} is not "
                         "one of ['z', 'h']")
      out["p"] = self.predictor(out[self.predictor_input], train=train)
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
