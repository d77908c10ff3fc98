"""SimCLR (Chen et al. 2020, https://arxiv.org/abs/2002.05709).

Two views of every image go through one encoder and a projection head; the
NT-Xent loss contrasts each view against all views of the global batch.
Both views are encoded in one batch, so BatchNorm statistics cover both (as in
the reference, which concatenates the views along the batch).
"""

from typing import Optional

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections

from jaxssl import losses
from jaxssl import models


class Network(nn.Module):
  """Encoder f(·) followed by projection head g(·); returns `(h, z)`."""
  encoder: nn.Module
  projector: nn.Module

  def __call__(self, x: jax.Array, train: bool = True):
    h = self.encoder(x, train=train)
    return h, self.projector(h, train=train)


def create_network(config: ml_collections.ConfigDict,
                   axis_name: Optional[str]) -> Network:
  """Network of config sections `model` and `head`."""
  return Network(models.create_encoder(config.model, axis_name),
                 models.create_projector(config.head, config.model, axis_name))


def loss(z: jax.Array, *, temperature: float,
         axis_name: Optional[str]) -> tuple[jax.Array, dict]:
  """NT-Xent on `z = [z_view1; z_view2]` (local batch); returns loss, metrics."""
  z1, z2 = jnp.split(z, 2, axis=0)
  value, accuracy = losses.nt_xent_and_accuracy(
      z1, z2, temperature, axis_name=axis_name)
  return value, {"contrast_acc": accuracy}
