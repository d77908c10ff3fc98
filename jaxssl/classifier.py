"""The classifier of supervised training on a pretrained network.

`Classifier`: encoder → the first `head_layers` projection-head layers → a
linear layer named `classifier` (zero-initialised by default: SimCLR v2's
`head_supervised` on `ft_proj_selector` hidden layers). Linear evaluation,
fine-tuning and distillation (`jaxssl.downstream`) train it; `jaxssl.export`
saves and reads it.
"""

from typing import Optional

import flax.linen as nn
import jax

from jaxssl.evaluators import linear_probe

CLASSIFIER = "classifier"


class Classifier(nn.Module):
  """Encoder → first `head_layers` projection-head layers → linear logits."""
  encoder: nn.Module
  projector: Optional[nn.Module]
  head_layers: int
  num_classes: int
  classifier_init: str = "zeros"

  @nn.compact
  def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:
    h = self.encoder(x, train=train)
    if self.head_layers:
      h = self.projector(h, train=train, layers=self.head_layers)
    return linear_probe.Linear(self.num_classes, self.classifier_init,
                               name=CLASSIFIER)(h)
