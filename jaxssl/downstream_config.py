"""Schema of `jaxssl.linear_eval` configs: linear evaluation, fine-tuning."""

from typing import Iterable

import ml_collections

from jaxssl import config_utils


def downstream_config(*, mode: str, epochs: int, batch_size: int,
                      optimizer: str, base_lr: float, lr_scaling: str,
                      runlocal: bool, keep: Iterable[str] = ()
                      ) -> ml_collections.ConfigDict:
  """Schema of `jaxssl.linear_eval` configs (linear evaluation, fine-tuning).

  `data.source=''` means the pretraining run's data section. `runlocal`
  shrinks the run to 2 epochs at batch 64 except for the top-level keys
  named in `keep` (the variants given explicitly, `parse_arg(...).given`).
  """
  c = ml_collections.ConfigDict()
  c.mode = mode  # 'linear' | 'finetune'
  c.checkpoint = ""  # pretraining workdir or its encoder.msgpack
  c.seed = 0
  c.batch_size = batch_size
  c.epochs = epochs
  c.log_every = 100
  c.head_layers = 0  # fine-tuning: projection-head layers kept
  # The classifier's kernel at init: 'zeros' (SimCLR) or 'normal' (N(0,
  # 0.01²), the torchvision references' linear classification).
  c.classifier_init = "zeros"
  # The features the classifier reads: 'encoder' (its output) or 'dino'
  # (a ViT's features of DINO's eval_linear.py: `linear_eval.linear_encoder`).
  c.representation = "encoder"
  c.eval_every_epochs = 0
  c.eval_batch_size = 1024
  # Checkpoints in workdir/checkpoints: a re-run resumes from the newest.
  c.checkpointing = ml_collections.ConfigDict()
  c.checkpointing.every_steps = 0
  c.checkpointing.every_minutes = 10.0
  c.checkpointing.keep = 2
  c.data = config_utils.base_config().data
  c.data.source = ""
  c.optimizer = config_utils.base_config().optimizer
  c.optimizer.name = optimizer
  c.optimizer.base_lr = base_lr
  c.optimizer.lr_scaling = lr_scaling
  c.optimizer.weight_decay = 0.0
  c.optimizer.warmup_epochs = 0.0
  c.optimizer.momentum = 0.9
  c.optimizer.nesterov = optimizer == "sgd"
  # LARS: the classifier under the trust ratio and decay too (SimSiam's
  # LARC); False: excluded, its decay a loss term (SimCLR).
  c.optimizer.adapt_classifier = False
  if runlocal:
    kept = config_utils.values_of(c, keep)
    c.batch_size = 64
    c.epochs = 2
    c.log_every = 2
    c.eval_batch_size = 256
    c.update(kept)
  return c
