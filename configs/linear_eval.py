r"""Linear evaluation of a pretrained encoder, with each reference's protocol.

A linear classifier on the frozen encoder's features (BatchNorm statistics
frozen), trained on random-resized crops (area 0.08–1) with flips and
evaluated on centre crops. `protocol=<name>` is the linear-classification
script behind the figures a method's paper and README quote (each method's
config docstring names its protocol):

* `simclr` (SimCLR §B.5): SGD Nesterov 0.9, 0.1·B/256, batch 4096, 90
  epochs, cosine; `byol` (BYOL §C.1): the same at 0.2·B/256, 1024, 80.
* `moco` (moco `main_lincls.py`): SGD 0.9, 30, batch 256, 100 epochs, ×0.1
  at epochs 60 and 80.
* `mocov3` (moco-v3 `main_lincls.py`): SGD 0.9, 0.1·B/256, batch 1024, 90
  epochs, cosine by epoch; `mocov3_vit`: its ViT rate, 3·B/256.
* `swav` (swav `eval_linear.py`): SGD 0.9, 0.3, batch 256, 100 epochs,
  cosine by epoch, weight decay 1e-6.
* `dino` (dino `eval_linear.py`): SGD 0.9, 0.001·B/256, batch 1024, 100
  epochs, cosine by epoch.
* `simsiam` (simsiam `main_lincls.py --lars`): LARC (η 0.001) over SGD 0.9,
  0.1·B/256, batch 4096, 90 epochs, cosine by epoch.
* `barlow_twins` (barlowtwins `evaluate.py`): SGD 0.9, 0.3, batch 256, 100
  epochs, cosine by epoch, weight decay 1e-6.
* `wcl` (WCL `linear_eval.py`): SGD Nesterov 0.9, 0.2·B/256, batch 4096,
  80 epochs, cosine by step.

No weight decay where none is named, no warm-up. Rates without `·B/256`
are the scripts' fixed rates at their batch (base per 256 images here,
the same at that batch). The SimCLR and BYOL
classifiers start at zero, the PyTorch scripts' at N(0, 0.01²)
(`classifier_init='normal'`). SimSiam's LARC covers the classifier
(`optimizer.adapt_classifier`, every leaf).

Deviations: the PyTorch scripts report the best epoch's validation
accuracy; this reports the last epoch's (and `eval_every_epochs` the rest).
`protocol=dino` reads DINO's features of a ViT (`representation='dino'`:
ViT-S and smaller the class tokens of the last 4 blocks, `n_last_blocks=4`;
ViT-B the class token with the averaged patch tokens, its README's ViT-B
command). DINO's paper sweeps the rate (values not published); the rate
here is the script's default. SwAV's normalisation std 0.228 is not
copied.

COMMAND (after pretraining into /tmp/simclr_cifar10):
  python -m jaxssl.linear_eval --config=configs/linear_eval.py \
      --config.checkpoint=/tmp/simclr_cifar10 --workdir=/tmp/simclr_linear
Variants: `protocol=NAME` (default simclr; the list above), `epochs=N`,
`runlocal`. The data section defaults to the pretraining run's
(`config.data.source=''`); set it to evaluate on another dataset.

EXPECTED: the paper numbers of the pretraining config (README, Methods);
top-1 and top-5 of the evaluation split in `workdir/results.json`.

`:runlocal` trains 2 epochs at batch 64 (a CPU smoke run of any checkpoint);
`:runlocal,epochs=N` trains N epochs at batch 64.
"""

from jaxssl import config_utils
from jaxssl import downstream_config

# protocol: (epochs, base rate per 256, batch, optimiser, schedule, weight
# decay, Nesterov, classifier init, {other optimizer keys}).
PROTOCOLS = {
    "simclr": (90, 0.1, 4096, "sgd", "warmup_cosine", 0.0, True, "zeros", {}),
    "byol": (80, 0.2, 1024, "sgd", "warmup_cosine", 0.0, True, "zeros", {}),
    "moco": (100, 30.0, 256, "sgd", "multistep", 0.0, False, "normal",
             {"decay_epochs": (60, 80), "decay_factor": 0.1}),
    "mocov3": (90, 0.1, 1024, "sgd", "epoch_cosine", 0.0, False, "normal",
               {}),
    "mocov3_vit": (90, 3.0, 1024, "sgd", "epoch_cosine", 0.0, False,
                   "normal", {}),
    "swav": (100, 0.3, 256, "sgd", "epoch_cosine", 1e-6, False, "normal", {}),
    "dino": (100, 0.001, 1024, "sgd", "epoch_cosine", 0.0, False, "normal",
             {}),
    "simsiam": (90, 0.1, 4096, "lars", "epoch_cosine", 0.0, False, "normal",
                {"trust_ratio": "larc", "trust_coefficient": 1e-3,
                 "lr_in_momentum": False, "adapt_classifier": True,
                 "decay_mask": "all"}),
    "barlow_twins": (100, 0.3, 256, "sgd", "epoch_cosine", 1e-6, False,
                     "normal", {}),
    "wcl": (80, 0.2, 4096, "sgd", "warmup_cosine", 0.0, True, "normal", {}),
}


def get_config(arg=None):
  arg = config_utils.parse_arg(arg, runlocal=False, protocol="simclr",
                               epochs=0)
  if arg.protocol not in PROTOCOLS:
    raise ValueError(f"protocol={arg.protocol!r} is not one of "
                     f"{sorted(PROTOCOLS)}")
  (epochs, base_lr, batch_size, optimizer, schedule, weight_decay, nesterov,
   init, extra) = PROTOCOLS[arg.protocol]
  c = downstream_config.downstream_config(
      mode="linear", epochs=arg.epochs or epochs, batch_size=batch_size,
      optimizer=optimizer, base_lr=base_lr, lr_scaling="linear",
      runlocal=arg.runlocal, keep=arg.given)
  c.protocol = arg.protocol
  c.classifier_init = init
  # DINO's features of a ViT (the last 4 class tokens of ViT-S); others:
  # the encoder's output.
  c.representation = "dino" if arg.protocol == "dino" else "encoder"
  c.optimizer.schedule = schedule
  c.optimizer.weight_decay = weight_decay
  c.optimizer.nesterov = nesterov
  for key, value in extra.items():
    c.optimizer[key] = value
  return c
