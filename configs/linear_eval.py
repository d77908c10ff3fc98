r"""Linear evaluation of a pretrained encoder (SimCLR or BYOL protocol).

SimCLR protocol (Chen et al. 2020, §B.5): SGD with Nesterov momentum 0.9,
rate 0.1·B/256 on a cosine, no weight decay, 90 epochs, batch 4096, random
crop + flip, centre-crop evaluation, frozen BatchNorm statistics. BYOL
protocol (Grill et al. 2020, §C.1): the same with rate 0.2·B/256, 80 epochs,
batch 1024.

COMMAND (after pretraining into /tmp/simclr_cifar10):
  python -m jaxssl.linear_eval --config=configs/linear_eval.py \
      --config.checkpoint=/tmp/simclr_cifar10 --workdir=/tmp/simclr_linear
Variants: `protocol=simclr` (default) or `protocol=byol`, `epochs=N`,
`runlocal`. The data section defaults to the pretraining run's
(`config.data.source=''`); set it to evaluate on another dataset.

EXPECTED: the paper numbers of the pretraining config (README, Methods);
top-1 and top-5 of the evaluation split in `workdir/results.json`.

`:runlocal` trains 2 epochs at batch 64 (a CPU smoke run of any checkpoint);
`:runlocal,epochs=N` trains N epochs at batch 64.
"""

from jaxssl import config_utils
from jaxssl import downstream_config

PROTOCOLS = {"simclr": (90, 0.1, 4096), "byol": (80, 0.2, 1024)}


def get_config(arg=None):
  arg = config_utils.parse_arg(arg, runlocal=False, protocol="simclr",
                               epochs=0)
  if arg.protocol not in PROTOCOLS:
    raise ValueError(f"protocol={arg.protocol!r} is not one of "
                     f"{sorted(PROTOCOLS)}")
  epochs, base_lr, batch_size = PROTOCOLS[arg.protocol]
  return downstream_config.downstream_config(
      mode="linear", epochs=arg.epochs or epochs, batch_size=batch_size,
      optimizer="sgd", base_lr=base_lr, lr_scaling="linear",
      runlocal=arg.runlocal, keep=arg.given)
