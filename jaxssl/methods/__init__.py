"""Self-supervised methods: a network, a loss, optional target and state.

`METHODS` maps `config.method` to the method's `create(config, *, axis_name,
total_steps, num_examples) -> base.Method`; adding a method is one file
plus this entry.
"""

from jaxssl.methods import barlow_twins
from jaxssl.methods import byol
from jaxssl.methods import cmc
from jaxssl.methods import cpc
from jaxssl.methods import dino
from jaxssl.methods import instdisc
from jaxssl.methods import invaspread
from jaxssl.methods import moco
from jaxssl.methods import mocov3
from jaxssl.methods import simclr
from jaxssl.methods import simsiam
from jaxssl.methods import supcon
from jaxssl.methods import swav
from jaxssl.methods import wcl

METHODS = {
    "simclr": simclr.create,
    "byol": byol.create,
    "simsiam": simsiam.create,
    "barlow_twins": barlow_twins.create,
    "moco": moco.create,
    "mocov3": mocov3.create,
    "dino": dino.create,
    "swav": swav.create,
    "supcon": supcon.create,
    "wcl": wcl.create,
    "instdisc": instdisc.create,
    "invaspread": invaspread.create,
    "cmc": cmc.create,
    "cpc": cpc.create,
}
