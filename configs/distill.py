r"""Distillation of a fine-tuned teacher on unlabelled images (SimCLR v2).

Chen et al. 2020b (https://arxiv.org/abs/2006.10029), §2 eq. 2–3 and
Appendix B: after fine-tuning on 1 % or 10 % of the labels, a student is
trained on ALL the training images without their labels to match the
teacher's class distribution at temperature τ, `−Σ_y P_T log P_S`; the
teacher runs in inference mode on the student's augmented view (random
crop + flip, as in fine-tuning). Self-distillation: the student has the
teacher's architecture without the projection head (`student.model=''`);
big-to-small: e.g. `student.model='resnet50x1'` from an R152 (3×+SK)
teacher. τ = 1 by default (the paper finds 0.1–1 nearly the same; 1 is its
choice for big-to-small); `alpha` < 1 mixes in the cross-entropy of the
labelled fraction (`α·distill + (1 − α)·CE`; in-memory data only).
Optimisation as the paper's pretraining (LARS 0.1·√B, weight decay 1e-4,
batch 4096, cosine after a warm-up of 5 % of the epochs) for 400 epochs: the
paper's stated settings as we read them; the reference repository's
distillation colab trains a toy student and fixes none of them. The
classifier stays out of LARS's trust ratio and decay as in fine-tuning (the
colab's LARS excludes only BatchNorm and biases: our choice, one optimizer
rule for every supervised stage).

COMMAND (after `configs/finetune.py` into gs://BUCKET/r152x3sk_ft1):
  python -m jaxssl.distill --config=configs/distill.py:student=resnet50x1 \
      --config.teacher=gs://BUCKET/r152x3sk_ft1 \
      --workdir=gs://BUCKET/r50_distilled_1pct
Variants: `student=same` (default) or `student=resnet<depth>x<width>[sk]`,
`init=teacher` (start from the teacher's weights), `temperature=T`,
`alpha=A`, `epochs=N`, `runlocal`. The data section defaults to the
pretraining run's (`config.data.source=''`).

EXPECTED (SimCLR v2, ImageNet top-1 with 1 % / 10 % of the labels): R50
(1×) distilled from R152 (3×+SK): 73.9 % / 77.5 % (abstract and Table 3);
the R152 (3×+SK) teacher fine-tuned: 74.9 % / 80.1 % (reference README);
self-distilled R152 (3×+SK): 76.6 % / 80.9 % (Table 3, as we read it).

`:runlocal` distils for 2 epochs at batch 32 (a CPU smoke run of a
`configs/finetune.py:runlocal` teacher).
"""

import ml_collections

from jaxssl import config_utils
from jaxssl import downstream_config


def get_config(arg=None):
  arg = config_utils.parse_arg(arg, runlocal=False, student="same",
                               init="random", temperature=1.0, alpha=1.0,
                               epochs=400)
  c = downstream_config.downstream_config(
      mode="distill", epochs=arg.epochs, batch_size=4096, optimizer="lars",
      base_lr=0.1, lr_scaling="sqrt", runlocal=arg.runlocal, keep=arg.given)
  del c.mode, c.checkpoint, c.head_layers
  c.teacher = ""  # fine-tuning workdir (classifier.msgpack, classifier.json)
  c.temperature = float(arg.temperature)
  c.alpha = float(arg.alpha)  # weight of the distillation term
  c.student = ml_collections.ConfigDict()
  c.student.model = "" if arg.student == "same" else arg.student
  c.student.init = arg.init  # 'random' | 'teacher'
  c.student.head_layers = 0  # projection-head layers of a random student
  c.optimizer.weight_decay = 1e-4
  c.optimizer.warmup_epochs = 0.05 * arg.epochs
  if arg.runlocal:
    c.batch_size = 32
    c.optimizer.warmup_epochs = 0.0
  return c
