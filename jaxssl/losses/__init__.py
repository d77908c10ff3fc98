"""Self-supervised losses: pure functions of embeddings.

Every loss takes the embeddings of the *local* batch (the examples on this
device). When `axis_name` names a mapped device axis (inside `jax.shard_map`),
the negatives come from the *global* batch through `lax.all_gather`, so the
value computed on N devices is the same as on one device holding the whole
batch: the per-device losses are means over local anchors, and their mean over
devices (`lax.pmean`) is the single-device loss on the concatenated batch.

Families: `contrastive` (SimCLR's NT-Xent, MoCo's InfoNCE), `instance`
(InstDisc's NCE against a memory bank, InvaSpread's batch criterion),
`predictive` (CPC v2's InfoNCE across a patch grid),
`regression` (BYOL, SimSiam), `redundancy` (Barlow Twins), `clustering`
(SwAV's Sinkhorn codes), `distillation` (DINO, SimCLR v2's soft labels),
`supervised` (SupCon, WCL's nearest-neighbour components); `core` holds
their building blocks.
"""

# The public losses, one module per family.
from jaxssl.losses.clustering import sinkhorn
from jaxssl.losses.clustering import swav
from jaxssl.losses.contrastive import info_nce
from jaxssl.losses.contrastive import info_nce_and_accuracy
from jaxssl.losses.contrastive import nt_xent
from jaxssl.losses.contrastive import nt_xent_and_accuracy
from jaxssl.losses.core import l2_normalize
from jaxssl.losses.distillation import dino
from jaxssl.losses.distillation import soft_label_cross_entropy
from jaxssl.losses.instance import instance_nce
from jaxssl.losses.instance import invariance_spreading
from jaxssl.losses.instance import nce_normalizer
from jaxssl.losses.predictive import cpc_infonce
from jaxssl.losses.redundancy import barlow_twins
from jaxssl.losses.redundancy import cross_correlation
from jaxssl.losses.redundancy import standardize
from jaxssl.losses.regression import negative_cosine
from jaxssl.losses.regression import regression_loss
from jaxssl.losses.supervised import local_rows
from jaxssl.losses.supervised import nearest_neighbour_components
from jaxssl.losses.supervised import nearest_neighbours
from jaxssl.losses.supervised import neighbour_components
from jaxssl.losses.supervised import supcon

__all__ = [
    "barlow_twins", "cpc_infonce", "cross_correlation", "dino", "info_nce",
    "info_nce_and_accuracy", "instance_nce", "invariance_spreading",
    "l2_normalize", "local_rows", "nce_normalizer",
    "nearest_neighbour_components", "nearest_neighbours",
    "neighbour_components", "negative_cosine", "nt_xent",
    "nt_xent_and_accuracy", "regression_loss", "sinkhorn",
    "soft_label_cross_entropy", "standardize",
    "supcon", "swav",
]
