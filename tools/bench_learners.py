"""The learners `tools/bench_step.py` times, built from modules directly.

No config files and no ml-collections (a bare GPU image has neither): each
method is put together from its module's config-free pieces
(`methods.dino.build`, `methods.swav.build`, `simclr.loss`, ...) with
the per-step work of its reference ImageNet config (the schedules are
constants and the frozen parts move after `FROZEN_STEPS`, which changes
nothing a step costs; DINO is `dino_vit_small`'s whatever the encoder, so
a ResNet row keeps AdamW, not `dino_resnet50`'s SGD):

* simclr: ResNet, 2-layer head to 128 (`head_layers=3`: SimCLR v2's),
  τ 0.1, LARS; 2 × SimCLR v2 views.
* byol: ResNet, 4096 → 256 head and predictor, EMA target from its own
  key, per-view forward, LARS (rate outside the buffer); BYOL's views.
* dino: ResNet or ViT, DINO head (2048 → 256 → K = 65,536, last layer's
  norm fixed), teacher (EMA, no drop-path) on the 2 global crops, AdamW
  with per-parameter clipping at 3.0 and the last layer frozen for the
  first steps; 2 × 224 + `local_crops` × 96 DINO views (drop-path 0.1 on
  a ViT, as `configs/dino_vit_small.py`).
* swav: ResNet or ViT, 2048 → 128 head, 3000 prototypes normalised after
  each step, Sinkhorn 3 × ε 0.05 over the global batch, LARS with apex
  LARC's trust ratio on every parameter, prototypes frozen for the first
  steps; 2 × 224 + `local_crops` × 96 views (crop areas 0.14–1 / 0.05–0.14).

`setup_step` puts one configuration's state, synthetic batch and compiled
step on the devices (what every measurement of bench_step starts from).
"""

import dataclasses
import functools

ARCHS = ("resnet", "vit")
METHODS = ("simclr", "byol", "dino", "swav")
# The first updates keep the frozen parts still (an epoch in training).
FROZEN_STEPS = 10


def _encoder(arch: str, *, depth: int, cifar: bool, vit_variant: str,
             patch_size: int, image_size: int, dtype, remat: str,
             width: float = 1.0, sk_ratio: float = 0.0,
             drop_path: float = 0.0):
  from jaxssl import sharding  # pylint: disable=g-import-not-at-top
  from jaxssl.models import vit  # pylint: disable=g-import-not-at-top
  from jaxssl.models.resnet import ResNet  # pylint: disable=g-import-not-at-top
  if arch == "vit":
    return vit.create(vit_variant, patch_size=patch_size, pos_embed="learned",
                      image_size=image_size, drop_path=drop_path, dtype=dtype,
                      init_scheme="dino", remat=remat)
  if arch != "resnet":
    raise ValueError(f"arch={arch!r} is not one of {list(ARCHS)}")
  return ResNet(depth=depth, width_multiplier=width, cifar_stem=cifar,
                axis_name=sharding.DATA_AXIS, dtype=dtype, remat=remat,
                sk_ratio=sk_ratio)


def _multicrop(groups, *, local_crops: int, local_size: int):
  """`groups` with `local_crops` local views (0: none, -1: the preset's) of
  `local_size` px (0: the preset's)."""
  from jaxssl import view_presets  # pylint: disable=g-import-not-at-top
  groups = dict(groups)
  local = groups.pop(view_presets.LOCAL)
  if local_size:
    local = tuple(dataclasses.replace(s, size=local_size) for s in local)
  if local_crops < 0:
    groups[view_presets.LOCAL] = local
  elif local_crops:
    groups[view_presets.LOCAL] = local[:1] * local_crops
  return groups


def make_learner(method: str, *, depth: int = 50, cifar: bool = False,
                 image_size: int = 224, dtype=None, remat: str = "none",
                 microbatches: int = 1, augment: bool = True,
                 total_steps: int = 1000, arch: str = "resnet",
                 vit_variant: str = "small", patch_size: int = 16,
                 local_crops: int = -1, local_size: int = 0,
                 width: float = 1.0, sk_ratio: float = 0.0,
                 head_layers: int = 2, microbatch_loop: str = "auto"):
  """A `train.Learner` of `method` (see the module docstring).

  `local_crops` (-1: the preset's, 6 for SwAV and 8 for DINO) and
  `local_size` (0: 96 px at 224, proportional otherwise) shape the
  multi-crop methods' local group. A ResNet is `width` wide, SimCLR v2's SK
  ResNet with `sk_ratio > 0`; `head_layers` are SimCLR's projection head
  layers (v2: 3); `microbatch_loop` is `config.train.microbatch_loop`.
  """
  import jax  # pylint: disable=g-import-not-at-top
  import jax.numpy as jnp  # pylint: disable=g-import-not-at-top
  import optax  # pylint: disable=g-import-not-at-top
  from jaxssl import freezing, optim, schedules, sharding, train, view_presets  # pylint: disable=g-import-not-at-top
  from jaxssl.methods import base, byol, dino, simclr, swav  # pylint: disable=g-import-not-at-top
  from jaxssl.models.heads import DINOHead, ProjectionHead  # pylint: disable=g-import-not-at-top
  if method not in METHODS:
    raise ValueError(f"method={method!r} is not one of {list(METHODS)}")
  axis = sharding.DATA_AXIS
  encoder = functools.partial(
      _encoder, arch, depth=depth, cifar=cifar, vit_variant=vit_variant,
      patch_size=patch_size, image_size=image_size,
      dtype=dtype or jnp.float32, remat=remat, width=width,
      sk_ratio=sk_ratio)
  preset = {"simclr": "simclr_v2", "byol": "byol", "dino": "dino",
            "swav": "multicrop"}[method]
  groups = view_presets.view_groups(preset, image_size=image_size,
                                    color_strength=1.0, blur=not cifar)
  if view_presets.LOCAL in groups:
    groups = _multicrop(groups, local_crops=local_crops, local_size=local_size)
  if method == "swav":  # the reference's transforms.Normalize, as the config
    groups = {g: tuple(dataclasses.replace(spec, normalize=True)
                       for spec in specs) for g, specs in groups.items()}
  if not augment:
    groups = {g: tuple(dataclasses.replace(
        spec, flip_prob=0.0, jitter_prob=0.0, grayscale_prob=0.0,
        blur_prob=0.0, solarize_prob=0.0, normalize=True) for spec in specs)
              for g, specs in groups.items()}
  counts = {g: len(specs) for g, specs in groups.items()}
  schedule = lambda step: 0.1 * jnp.ones([])
  if method == "simclr":
    head = ProjectionHead(num_layers=head_layers, out_dim=128, axis_name=axis)
    m = base.Method(name="simclr", views=counts,
                    network=base.Network(encoder(), head),
                    loss=functools.partial(simclr.loss, temperature=0.1))
    tx = optim.lars(schedule, weight_decay=1e-6)
  elif method == "byol":
    head = lambda: ProjectionHead(num_layers=2, hidden_dim=4096, out_dim=256,
                                  last_bn="none", kernel_init="fan_in",
                                  axis_name=axis)
    per_view = base.Forward(per_view=True)
    m = base.Method(
        name="byol", views=counts,
        network=base.Network(encoder(), head(), head()),
        loss=byol.loss, forward=per_view,
        target=base.Target(
            network=base.Network(encoder(), head()),
            momentum=schedules.ema_momentum(0.99, total_steps),
            tracks=base.subtrees("encoder", "projector"),
            init="independent", forward=per_view))
    tx = optim.lars(schedule, weight_decay=1e-6, lr_in_momentum=False)
  elif method == "dino":
    head = lambda: DINOHead(out_dim=65536, axis_name=axis)
    m = dino.build(
        base.Network(encoder(drop_path=0.1 * (arch == "vit")), head()),
        base.Network(encoder(), head()), views=counts, out_dim=65536,
        momentum=schedules.ema_momentum(0.996, total_steps),
        teacher_temperature=lambda step: 0.04 * jnp.ones([]))
    tx = optax.chain(optim.clip_per_parameter(3.0), freezing.freeze(
        lambda offset: optim.create_optimizer(
            "adamw", freezing.shifted(schedule, offset), weight_decay=0.04),
        freezing.path_mask("^projector/last_layer/"), FROZEN_STEPS))
  else:
    network = base.Network(
        encoder(), ProjectionHead(num_layers=2, hidden_dim=2048, out_dim=128,
                                  last_bn="none", axis_name=axis),
        swav.Prototypes(3000))
    m = swav.build(network, views=counts, axis_name=axis)
    every = lambda params: jax.tree.map(lambda _: True, params)
    tx = freezing.freeze(
        lambda offset: optim.lars(
            freezing.shifted(schedule, offset), weight_decay=1e-6,
            lr_in_momentum=False, mask=every, trust_ratio="larc"),
        freezing.path_mask("^predictor/"), FROZEN_STEPS)
  return train.Learner(method=m, tx=tx, schedule=schedule, views=groups,
                       microbatches=microbatches,
                       microbatch_loop=microbatch_loop)


def inputs(learner, mesh, batch_size: int, source_size: int, *,
            abstract: bool = False):
  """Train state and a synthetic uint8 batch, placed on `mesh`: images of
  `source_size` px for the in-step augmentation, or ready views if 0.
  `abstract`: their shapes and shardings only (nothing computed or stored)."""
  import jax  # pylint: disable=g-import-not-at-top
  import numpy as np  # pylint: disable=g-import-not-at-top
  from jaxssl import sharding, train  # pylint: disable=g-import-not-at-top
  if source_size:
    shapes = {"image": (batch_size, source_size, source_size, 3)}
  else:
    shapes = {"views": [(batch_size, spec.size, spec.size, 3)
                        for spec in learner.view_specs]}
  init = lambda: train.create_train_state(jax.random.key(0), learner, mesh)
  if abstract:
    place = lambda sharding_, s: jax.ShapeDtypeStruct(s.shape, s.dtype,
                                                      sharding=sharding_)
    state = jax.tree.map(functools.partial(place, sharding.replicated(mesh)),
                         jax.eval_shape(init))
    batch = jax.tree.map(
        lambda shape: jax.ShapeDtypeStruct(
            shape, np.uint8, sharding=sharding.batch_sharded(mesh)),
        shapes, is_leaf=lambda x: isinstance(x, tuple))
    return state, batch
  rng = np.random.default_rng(0)
  local = jax.tree.map(
      lambda shape: rng.integers(0, 256, shape, dtype=np.uint8), shapes,
      is_leaf=lambda x: isinstance(x, tuple))
  return init(), sharding.global_batch(local, mesh)


def setup_step(method, *, depth, cifar, image_size, batch_size, dtype, remat,
           microbatches, augment, devices=None, abstract=False, model=None):
  """State, batch and the jitted step of one configuration on `devices`
  (default: all); `model`: `bench_learners.make_learner`'s architecture and
  multi-crop arguments."""
  import jax.numpy as jnp  # pylint: disable=g-import-not-at-top
  from jaxssl import sharding, train  # pylint: disable=g-import-not-at-top
  compute = {"bfloat16": jnp.bfloat16, "float32": jnp.float32}[dtype]
  learner = make_learner(
      method, depth=depth, cifar=cifar, image_size=image_size, dtype=compute,
      remat=remat, microbatches=microbatches, augment=augment,
      **(model or {}))
  mesh = sharding.data_mesh(devices)
  source_size = (image_size if cifar else int(image_size * 1.15)) * augment
  state, batch = inputs(learner, mesh, batch_size, source_size,
                         abstract=abstract)
  return state, batch, train.compile_train_step(learner, mesh)
