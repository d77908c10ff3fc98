"""How each view is made: `ViewSpec`, the presets, and view groups.

A preset (`config.augment.preset`) gives, for each view group a method
takes (`Method.views`: e.g. 'global', 'local'), one `ViewSpec` per view:
crop size and area, and the photometric augmentations of the SimCLR
(https://github.com/google-research/simclr, `data_util.py`) and BYOL
(deepmind-research `byol/utils/augmentations.py`) references, which
`jaxssl.augment` applies on the device.
"""

import dataclasses
from typing import Dict, Tuple


@dataclasses.dataclass(frozen=True)
class ViewSpec:
  """How one view is made; hashable, so it can be static in a jitted step.

  Attributes:
    size: side of the crop (host crop, or device crop for in-memory data).
    crop_area: area fraction range of the random-resized crop.
    crop_min_covered: 'simclr' crops must cover this fraction of the image
      (the reference's `min_object_covered=0.1`; 0 for multi-crop locals).
    crop_mode: 'simclr' (up to 100 attempts, whole image as fallback) or
      'byol' (one attempt, clamped to the image) — used by the host crop.
    flip_prob: horizontal flip probability.
    jitter_prob: probability of colour jitter.
    brightness, contrast, saturation, hue: jitter ranges; brightness is a
      factor in [1 - b, 1 + b] if `multiplicative_brightness` (SimCLR v2),
      else an additive delta in [-b, b] (SimCLR v1, BYOL).
    multiplicative_brightness: see above.
    grayscale_prob: probability of grayscale.
    blur_prob: probability of Gaussian blur (σ ~ U(blur_sigma)).
    blur_sigma: σ range in pixels.
    solarize_prob: probability of solarisation.
    normalize: subtract the ImageNet mean and divide by its std (BYOL).
    randaugment_ops: RandAugment ops per view after the blur (0: none;
      InfoMin: 2; `jaxssl.randaugment`); grayscale then comes after them,
      as InfoMin's pipeline orders it.
    randaugment_magnitude, randaugment_std: each op's magnitude ~
      N(magnitude, std) clipped to [0, 10].
    randaugment_prob: each drawn op fires with this probability.
  """
  size: int = 224
  crop_area: Tuple[float, float] = (0.08, 1.0)
  crop_min_covered: float = 0.1
  crop_mode: str = "simclr"
  flip_prob: float = 0.5
  jitter_prob: float = 0.8
  brightness: float = 0.8
  contrast: float = 0.8
  saturation: float = 0.8
  hue: float = 0.2
  multiplicative_brightness: bool = True
  grayscale_prob: float = 0.2
  blur_prob: float = 0.5
  blur_sigma: Tuple[float, float] = (0.1, 2.0)
  solarize_prob: float = 0.0
  normalize: bool = False
  randaugment_ops: int = 0
  randaugment_magnitude: float = 10.0
  randaugment_std: float = 0.5
  randaugment_prob: float = 0.5

  @property
  def blur_kernel_size(self) -> int:
    """The references' kernel size: a tenth of the image side."""
    return max(self.size // 10, 1)


def simclr_view(size: int = 224, color_strength: float = 1.0, blur: bool = True,
                multiplicative_brightness: bool = True) -> ViewSpec:
  """SimCLR view: jitter 0.8·s (hue 0.2·s) with p 0.8, gray 0.2, blur 0.5."""
  s = color_strength
  return ViewSpec(size=size, brightness=0.8 * s, contrast=0.8 * s,
                  saturation=0.8 * s, hue=0.2 * s,
                  multiplicative_brightness=multiplicative_brightness,
                  blur_prob=0.5 if blur else 0.0)


def _byol_view(blur_prob: float, solarize_prob: float,
               size: int = 224) -> ViewSpec:
  return ViewSpec(size=size, crop_mode="byol", brightness=0.4, contrast=0.4,
                  saturation=0.2, hue=0.1, multiplicative_brightness=False,
                  blur_prob=blur_prob, solarize_prob=solarize_prob,
                  normalize=True)


def _dino_view(blur_prob: float, solarize_prob: float, size: int = 224,
               crop_area: Tuple[float, float] = (0.4, 1.0)) -> ViewSpec:
  """DINO's `DataAugmentationDINO`: torchvision's random-resized crop,
  flip, jitter (0.4, 0.4, 0.2, 0.1, multiplicative brightness) with p 0.8,
  grayscale 0.2, the crop's blur and solarisation, ImageNet normalisation."""
  return ViewSpec(size=size, crop_area=crop_area, crop_min_covered=0.0,
                  brightness=0.4, contrast=0.4, saturation=0.2, hue=0.1,
                  multiplicative_brightness=True, blur_prob=blur_prob,
                  solarize_prob=solarize_prob, normalize=True)


def _instdisc_view(size: int = 224) -> ViewSpec:
  """InstDisc's (and MoCo v1's, InvaSpread's) torchvision pipeline: crop
  area 0.2–1, jitter (0.4, 0.4, 0.4, 0.4) always, grayscale 0.2, flip,
  ImageNet normalisation; no blur. lemniscate's ImageNet script greys
  before the jitter (on a grey image only brightness and contrast act),
  its CIFAR script and InvaSpread's after it, as here."""
  return ViewSpec(size=size, crop_area=(0.2, 1.0), crop_min_covered=0.0,
                  jitter_prob=1.0, brightness=0.4, contrast=0.4,
                  saturation=0.4, hue=0.4, multiplicative_brightness=True,
                  blur_prob=0.0, normalize=True)


def _infomin_view(size: int = 224) -> ViewSpec:
  """InfoMin's augmentation (Tian et al. 2020, HobbitLong/PyContrast
  `build_transforms` aug 'D'): crop area 0.2–1, flip, jitter (0.8, 0.8,
  0.8, 0.2) with p 0.8, Gaussian blur σ ∈ [0.1, 2] with p 0.5, RandAugment
  (2 ops, magnitude N(10, 0.5), each with p 0.5), grayscale 0.2 after it,
  ImageNet normalisation. (JigSaw, a separate branch there, is not part of
  the views.)"""
  return ViewSpec(size=size, crop_area=(0.2, 1.0), crop_min_covered=0.0,
                  brightness=0.8, contrast=0.8, saturation=0.8, hue=0.2,
                  multiplicative_brightness=True, blur_prob=0.5,
                  normalize=True, randaugment_ops=2)


GLOBAL = "global"
LOCAL = "local"

# Preset → view groups → one spec per view. Global crops are at
# `data.image_size`; a local group keeps its size relative to it.
VIEW_PRESETS = {
    # SimCLR v2 code (multiplicative brightness), ImageNet.
    "simclr_v2": {GLOBAL: (simclr_view(),) * 2},
    # SimCLR v1 code (additive brightness).
    "simclr_v1": {GLOBAL: (simclr_view(multiplicative_brightness=False),) * 2},
    # SimCLR on CIFAR-10: strength 0.5, no blur, 32 px.
    "simclr_cifar": {GLOBAL: (simclr_view(32, 0.5, blur=False),) * 2},
    # BYOL: asymmetric blur and solarisation.
    "byol": {GLOBAL: (_byol_view(1.0, 0.0), _byol_view(0.1, 0.2))},
    # Multi-crop (SwAV/DINO): 2 global 224 px + 6 local 96 px crops.
    "multicrop": {
        GLOBAL: (dataclasses.replace(simclr_view(), crop_area=(0.14, 1.0)),) * 2,
        LOCAL: (dataclasses.replace(simclr_view(96), crop_area=(0.05, 0.14),
                                    crop_min_covered=0.0),) * 6},
    # InstDisc: one view (torchvision jitter 0.4 with hue 0.4).
    "instdisc": {GLOBAL: (_instdisc_view(),)},
    # CMC: one crop (area 0.2–1) and flip, no colour op: the views are the
    # crop's L and ab channels (converted on the device by the encoder).
    "cmc": {GLOBAL: (ViewSpec(crop_area=(0.2, 1.0), crop_min_covered=0.0,
                              jitter_prob=0.0, grayscale_prob=0.0,
                              blur_prob=0.0),)},
    # CPC v2: one crop (area 0.5–1) and flip, ImageNet normalisation; the
    # colour augmentation is per patch (`augment.patch_augment`, applied by
    # the method after cutting the grid).
    "cpc": {GLOBAL: (ViewSpec(crop_area=(0.5, 1.0), crop_min_covered=0.0,
                              jitter_prob=0.0, grayscale_prob=0.0,
                              blur_prob=0.0, normalize=True),)},
    # InfoMin: two views of its augmentation (RandAugment on top of
    # SimCLR's crop and colour).
    "infomin": {GLOBAL: (_infomin_view(),) * 2},
    # InvaSpread: two such views.
    "invaspread": {GLOBAL: (_instdisc_view(),) * 2},
    # DINO: 2 global crops (blur 1.0; blur 0.1 + solarise 0.2) + 8 local
    # 96 px crops (blur 0.5).
    "dino": {
        GLOBAL: (_dino_view(1.0, 0.0), _dino_view(0.1, 0.2)),
        LOCAL: (_dino_view(0.5, 0.0, 96, (0.05, 0.4)),) * 8},
}

ViewGroups = Dict[str, Tuple[ViewSpec, ...]]


def view_groups(preset: str, *, image_size: int, color_strength: float,
                blur: bool) -> ViewGroups:
  """The view groups of `preset`, `{group: (spec per view)}`, with global
  crops at `image_size`.

  `color_strength` rescales the SimCLR presets' jitter; `blur=False` turns
  blur off. Local multi-crop views keep their own size (96 px at 224,
  scaled proportionally otherwise).
  """
  if preset not in VIEW_PRESETS:
    raise ValueError(f"config.augment.preset={preset!r} is not one of "
                     f"{sorted(VIEW_PRESETS)}")
  groups = {}
  base_size = VIEW_PRESETS[preset][GLOBAL][0].size
  for name, specs in VIEW_PRESETS[preset].items():
    out = []
    for spec in specs:
      size = max(round(spec.size * image_size / base_size), 1)
      if preset.startswith("simclr") or preset == "multicrop":
        jittered = simclr_view(size, color_strength, blur,
                               spec.multiplicative_brightness)
        spec = dataclasses.replace(jittered, crop_area=spec.crop_area,
                                   crop_min_covered=spec.crop_min_covered)
      else:
        spec = dataclasses.replace(spec, size=size)
      if not blur:
        spec = dataclasses.replace(spec, blur_prob=0.0)
      out.append(spec)
    groups[name] = tuple(out)
  return groups


def view_specs(preset: str, *, image_size: int, color_strength: float,
               blur: bool) -> Tuple[ViewSpec, ...]:
  """Every view of `preset` in group order (`view_groups`, flattened)."""
  return flatten(view_groups(preset, image_size=image_size,
                             color_strength=color_strength, blur=blur))


def flatten(groups: ViewGroups) -> Tuple[ViewSpec, ...]:
  """`{group: specs}` → all specs, in group order."""
  return tuple(spec for specs in groups.values() for spec in specs)
