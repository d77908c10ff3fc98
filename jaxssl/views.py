"""The views of a step: which the config asks for, and how they are made.

A method declares view groups (`Method.views`, e.g. `{'global': 2}`);
`config.augment.preset` says how each view of each group is cropped and
augmented (`jaxssl.view_presets.VIEW_PRESETS`); `make_views` makes them on the
device from the host's crops or from whole in-memory images.
"""

from __future__ import annotations

import dataclasses
from typing import TYPE_CHECKING, Mapping, Optional

import jax
from jax import lax
import jax.numpy as jnp

from jaxssl import augment
from jaxssl import view_presets
from jaxssl import sharding

if TYPE_CHECKING:  # configs are only read here: no runtime dependency
  import ml_collections

DATA_AXIS = sharding.DATA_AXIS


def config_views(config: ml_collections.ConfigDict) -> view_presets.ViewGroups:
  """The views of config section `augment` at `data.image_size`:
  `augment.preset`, with its local crops' number and size, each group's
  crop area, its RandAugment ops and the normalisation overridden where
  the config says so."""
  aug = config.augment
  groups = view_presets.view_groups(
      aug.preset, image_size=config.data.image_size,
      color_strength=aug.color_strength, blur=aug.blur)
  min_area = aug.min_crop_area
  if min_area:
    if not 0.0 < min_area <= 1.0:
      raise ValueError(f"config.augment.min_crop_area={min_area} must be in "
                       "(0, 1]")
    groups = {g: tuple(dataclasses.replace(s, crop_area=(min_area, 1.0))
                       for s in specs) for g, specs in groups.items()}
  for group, key in ((view_presets.GLOBAL, "global_crop_area"),
                     (view_presets.LOCAL, "local_crop_area")):
    area = tuple(aug.get(key, (0.0, 0.0)))
    if area[1] > 0:
      if not 0.0 < area[0] <= area[1] <= 1.0:
        raise ValueError(f"config.augment.{key}={area} must be (low, high) "
                         "with 0 < low <= high <= 1")
      _needs(groups, group, aug.preset, key)
      groups[group] = tuple(dataclasses.replace(s, crop_area=area)
                            for s in groups[group])
  local_size = aug.get("local_size", 0)
  if local_size:
    _needs(groups, view_presets.LOCAL, aug.preset, "local_size")
    groups[view_presets.LOCAL] = tuple(
        dataclasses.replace(s, size=local_size)
        for s in groups[view_presets.LOCAL])
  local_crops = aug.get("local_crops", -1)
  if local_crops >= 0:
    _needs(groups, view_presets.LOCAL, aug.preset, "local_crops")
    specs = groups.pop(view_presets.LOCAL)
    if local_crops:
      groups[view_presets.LOCAL] = specs[:1] * local_crops
  ops = aug.get("randaugment_ops", -1)
  if ops >= 0:
    groups = {g: tuple(dataclasses.replace(s, randaugment_ops=ops)
                       for s in specs) for g, specs in groups.items()}
  normalize = aug.get("normalize", "preset")
  if normalize not in NORMALIZE:
    raise ValueError(f"config.augment.normalize={normalize!r} is not one of "
                     f"{list(NORMALIZE)}")
  if NORMALIZE[normalize] is not None:
    groups = {g: tuple(dataclasses.replace(s, normalize=NORMALIZE[normalize])
                       for s in specs) for g, specs in groups.items()}
  return groups


# config.augment.normalize → ViewSpec.normalize (None: the preset's).
NORMALIZE = {"preset": None, "imagenet": True, "none": False}


def config_early_views(
    config: ml_collections.ConfigDict,
    method_views: Mapping[str, int]) -> Optional[view_presets.ViewGroups]:
  """The views of the first `augment.early_epochs` (None when 0):
  `config_view_groups` with `augment.early_color_strength` and
  `augment.early_min_crop_area` in place of the colour strength and the
  minimum crop area."""
  aug = config.augment
  if aug.get("early_epochs", 0.0) <= 0:
    return None
  early = config.copy_and_resolve_references()
  with early.unlocked():
    early.augment.color_strength = aug.early_color_strength
    early.augment.min_crop_area = aug.early_min_crop_area
  groups = config_view_groups(early, method_views)
  if groups == config_view_groups(config, method_views):
    raise ValueError(
        f"config.augment.early_epochs={aug.early_epochs} changes nothing: "
        f"preset {aug.preset!r} with early_color_strength="
        f"{aug.early_color_strength} and early_min_crop_area="
        f"{aug.early_min_crop_area} makes the same views (the colour strength "
        "applies to the SimCLR and multicrop presets; global/local_crop_area "
        "override the minimum area)")
  return groups


def _needs(groups, group: str, preset: str, key: str) -> None:
  if group not in groups:
    raise ValueError(f"config.augment.{key} is set but "
                     f"config.augment.preset={preset!r} makes no {group!r} "
                     "crops")


def group_counts(config: ml_collections.ConfigDict) -> dict:
  """`{group: views}` that `config_views` makes (a multi-crop method's
  `Method.views`)."""
  return {g: len(specs) for g, specs in config_views(config).items()}


def config_view_groups(config: ml_collections.ConfigDict,
                       method_views: Mapping[str, int]) -> view_presets.ViewGroups:
  """`config_views`, checked against the method's view groups
  (`Method.views`)."""
  preset = config.augment.preset
  groups = config_views(config)
  made = {g: len(specs) for g, specs in groups.items()}
  if made != dict(method_views):
    raise ValueError(f"config.augment.preset={preset!r} makes view groups "
                     f"{made}; config.method={config.method!r} takes "
                     f"{dict(method_views)}")
  return groups


def make_views(batch: dict, rng: jax.Array, *, groups: view_presets.ViewGroups,
               axis_name: Optional[str] = DATA_AXIS, first_row: int = 0,
               rows_per_device: Optional[int] = None) -> dict:
  """The augmented views of the local rows, `{group: [V_g·n, S_g, S_g, 3]}`
  (view-major: the n rows of the group's first view, then its second...).

  Host pipelines deliver the crops (`batch['views']`, one array per view in
  group order); in-memory data delivers whole images (`batch['image']`),
  which are cropped here with `augment.random_resized_crop` (10 vectorised
  attempts at the spec's area range, bilinear; the host's SimCLR/BYOL
  samplers need TensorFlow). Each image's key is `fold_in(rng, i)` with `i`
  the example's index in the global batch: the views depend on the step and
  the example, not on how many devices share the batch, nor on which
  micro-batch makes them (`batch` may hold local rows `first_row, ...` of
  the device's `rows_per_device`).
  """
  specs = view_presets.flatten(groups)
  host_crops = "views" in batch
  if host_crops and len(batch["views"]) != len(specs):
    raise ValueError(f"batch has {len(batch['views'])} views, the method "
                     f"expects {len(specs)}")
  n = (batch["views"][0] if host_crops else batch["image"]).shape[0]
  first = first_row
  if axis_name is not None:
    first = first + lax.axis_index(axis_name) * (rows_per_device or n)
  keys = jax.vmap(lambda i: jax.random.fold_in(rng, i))(first + jnp.arange(n))
  keys = jax.vmap(lambda k: jax.random.split(k, 2 * len(specs)))(keys)
  views = []
  for v, spec in enumerate(specs):
    if host_crops:
      crops = batch["views"][v]
    else:
      crops = jax.vmap(lambda k, im, spec=spec: augment.random_resized_crop(
          k, im, spec.size, spec.crop_area))(keys[:, len(specs) + v],
                                             batch["image"])
    views.append(augment.augment_batch(keys[:, v], crops, spec))
  out, v = {}, 0
  for name, group in groups.items():
    out[name] = jnp.concatenate(views[v:v + len(group)])
    v += len(group)
  return out
