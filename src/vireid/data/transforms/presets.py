"""Training view pipelines and the test transform, built from ``AugConfig`` / ``CutSwapConfig``.

Every training image is first *pre-resized* to the network input H x W (:func:`pre_resize`; the AGW/CAJ
release pre-resizes to 144 x 288 with antialiasing before pad/crop), either on the fly or once into the
memory-mapped cache (:mod:`vireid.data.cache`); the view pipelines below start from that image, so the
cached and uncached paths give identical tensors. Each view then draws its own randomness.

Presets (``aug.preset``; method-baseline.md section 3, method-idkl.md section 6, method-dakd.md 2.3):

======  ==========================================================================================
agw     visible / infrared: Pad -> RandomCrop -> HFlip -> ToTensor -> Normalize
caj     visible A: geometry -> ToTensor -> Normalize -> ChannelRandomErasing
        visible B: geometry -> ToTensor -> Normalize -> ChannelRandomErasing -> ChannelExchange(gray=2)
        infrared:  geometry -> ToTensor -> Normalize -> ChannelRandomErasing -> ChannelAdapGray
idkl    visible / infrared: HFlip -> Pad -> RandomCrop -> ToTensor -> Normalize -> RandomErasing
        (torchvision defaults: scale 0.02-0.33, ratio 0.3-3.3, value 0; probability ``aug.erasing_p``)
dakd    visible:  geometry -> ToTensor -> Normalize -> [CutSwap] -> ChannelRandomErasing
        infrared: geometry -> ToTensor -> Normalize -> ChannelRandomErasing -> ChannelAdapGray
none    ToTensor -> Normalize
======  ==========================================================================================

"geometry" is Pad(``aug.pad``, fill ``aug.pad_fill``) -> RandomCrop(H, W) -> HFlip(``aug.flip``); Pad and
RandomCrop are left out when ``aug.pad`` is 0. ``cutswap.p > 0`` inserts :class:`CutSwap` into every
visible view of any preset, after Normalize and before the erasing step (the DAKD configs set
``cutswap.p: 0.5``; the ``dakd`` preset alone does not switch it on). The visible views are numbered as
in :class:`~vireid.data.batch.CrossModalBatch`: view 0 plain, view 1 channel-augmented (CAJ's visible B).

Pre-resize interpolation: Lanczos (PIL's antialiasing filter, which the AGW/CAJ/DAKD releases use when
they pre-pack images) for every preset except ``idkl``, whose release resizes with torchvision's default
bilinear filter.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
from PIL import Image
from torchvision import transforms as T

from vireid.config import AugConfig, CutSwapConfig
from vireid.data.transforms.channel import ChannelAdapGray, ChannelExchange, ChannelRandomErasing
from vireid.data.transforms.cutswap import CutSwap
from vireid.errors import ConfigError

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)

INTERPOLATIONS: dict[str, Image.Resampling] = {
    "lanczos": Image.Resampling.LANCZOS,
    "bilinear": Image.Resampling.BILINEAR,
    "bicubic": Image.Resampling.BICUBIC,
    "nearest": Image.Resampling.NEAREST,
}

_PRESET_INTERPOLATION = {"agw": "lanczos", "caj": "lanczos", "dakd": "lanczos", "none": "lanczos", "idkl": "bilinear"}

Transform = Callable[[Image.Image], torch.Tensor]


def pre_resize(img: Image.Image, height: int, width: int, interpolation: str = "lanczos") -> Image.Image:
    """Resize a decoded RGB image to ``width x height`` (PIL, antialiased); a same-size image is copied.

    This is the single resize step of the training input path; :mod:`vireid.data.cache` stores its output.
    """
    if interpolation not in INTERPOLATIONS:
        raise ValueError(f"unknown interpolation {interpolation!r}; use one of {sorted(INTERPOLATIONS)}")
    if img.size == (width, height):
        return img
    return img.resize((width, height), INTERPOLATIONS[interpolation])


@dataclass(frozen=True)
class TrainViews:
    """The training views of one run: which exist and the pipeline of each.

    Attributes:
        preset: the ``aug.preset`` the views were built from.
        visible: one pipeline per visible view (index = ``view`` in the batch). PIL (H x W) -> (3, H, W).
        infrared: one pipeline per infrared view (normally one).
        height, width: network input size; images are pre-resized to it before the pipelines run.
        interpolation: filter of :func:`pre_resize` (part of the cache key).
    """

    preset: str
    visible: tuple[Transform, ...]
    infrared: tuple[Transform, ...]
    height: int
    width: int
    interpolation: str = "lanczos"

    @property
    def num_visible_views(self) -> int:
        return len(self.visible)

    @property
    def num_infrared_views(self) -> int:
        return len(self.infrared)

    def describe(self) -> str:
        """Human-readable listing of every view (logged at the start of a run)."""
        lines = [f"preset={self.preset} input={self.height}x{self.width} pre-resize={self.interpolation}"]
        for name, views in (("visible", self.visible), ("infrared", self.infrared)):
            for i, pipe in enumerate(views):
                steps = getattr(pipe, "transforms", [pipe])
                lines.append(f"  {name}[{i}]: " + " -> ".join(repr(s) for s in steps))
        return "\n".join(lines)


def _check_aug(aug: AugConfig, cutswap: CutSwapConfig, height: int, width: int) -> None:
    if height <= 0 or width <= 0:
        raise ConfigError(f"data.height and data.width must be positive, got {height}x{width}.")
    if aug.preset not in _PRESET_INTERPOLATION:
        raise ConfigError(f"aug.preset={aug.preset!r} is unknown; use one of {sorted(_PRESET_INTERPOLATION)}.")
    if aug.pad < 0:
        raise ConfigError(f"aug.pad must be >= 0, got {aug.pad}.")
    if not 0 <= aug.pad_fill <= 255:
        raise ConfigError(f"aug.pad_fill is a pixel value 0..255, got {aug.pad_fill}.")
    for key in ("flip", "erasing_p", "adaptive_gray_p"):
        value = getattr(aug, key)
        if not 0.0 <= value <= 1.0:
            raise ConfigError(f"aug.{key} is a probability in [0, 1], got {value}.")
    if aug.erasing_fill not in ("release", "zero"):
        raise ConfigError(f"aug.erasing_fill must be 'release' or 'zero', got {aug.erasing_fill!r}.")
    if not 0.0 <= cutswap.p <= 1.0:
        raise ConfigError(f"cutswap.p is a probability in [0, 1], got {cutswap.p}.")
    if not 0.0 <= cutswap.ratio_min <= cutswap.ratio_max <= 1.0:
        raise ConfigError(
            f"cutswap ratios need 0 <= ratio_min <= ratio_max <= 1, got {cutswap.ratio_min}, {cutswap.ratio_max}."
        )
    if cutswap.mode not in ("region", "full_image"):
        raise ConfigError(f"cutswap.mode must be 'region' or 'full_image', got {cutswap.mode!r}.")


def _geometry(aug: AugConfig, height: int, width: int, *, flip_first: bool) -> list:
    crop = [T.Pad(aug.pad, fill=aug.pad_fill), T.RandomCrop((height, width))] if aug.pad > 0 else []
    flip = [T.RandomHorizontalFlip(aug.flip)] if aug.flip > 0 else []
    return flip + crop if flip_first else crop + flip


def build_train_views(
    cfg_aug: AugConfig,
    cfg_cutswap: CutSwapConfig | None = None,
    height: int = 288,
    width: int = 144,
    *,
    mean: tuple[float, float, float] = IMAGENET_MEAN,
    std: tuple[float, float, float] = IMAGENET_STD,
) -> TrainViews:
    """Build the visible and infrared view pipelines of ``cfg_aug.preset`` (see the module table).

    Raises:
        ConfigError: a probability outside [0, 1], a negative pad, an unknown preset or CutSwap mode.
    """
    aug = cfg_aug
    cutswap = cfg_cutswap if cfg_cutswap is not None else CutSwapConfig()
    _check_aug(aug, cutswap, height, width)
    to_tensor = [T.ToTensor(), T.Normalize(mean, std)]
    cut = [CutSwap(cutswap.p, (cutswap.ratio_min, cutswap.ratio_max), cutswap.mode)] if cutswap.p > 0 else []
    geometry = _geometry(aug, height, width, flip_first=aug.preset == "idkl")

    def channel_erasing() -> list:
        return [ChannelRandomErasing(aug.erasing_p, fill=aug.erasing_fill)] if aug.erasing_p > 0 else []

    if aug.preset == "none":
        visible = [to_tensor + cut]
        infrared = [list(to_tensor)]
    elif aug.preset == "agw":
        visible = [geometry + to_tensor + cut]
        infrared = [geometry + to_tensor]
    elif aug.preset == "idkl":
        # torchvision's RandomErasing with its defaults (scale 0.02-0.33, ratio 0.3-3.3, value 0), as IDKL.
        erase = [T.RandomErasing(p=aug.erasing_p)] if aug.erasing_p > 0 else []
        visible = [geometry + to_tensor + cut + erase]
        infrared = [geometry + to_tensor + erase]
    elif aug.preset == "caj":
        visible = [
            geometry + to_tensor + cut + channel_erasing(),
            geometry + to_tensor + cut + channel_erasing() + [ChannelExchange(gray=2)],
        ]
        infrared = [geometry + to_tensor + channel_erasing() + [ChannelAdapGray(aug.adaptive_gray_p)]]
    else:  # dakd student (SYSU recipe); the unused third channel-exchanged view of the release is not built
        visible = [geometry + to_tensor + cut + channel_erasing()]
        infrared = [geometry + to_tensor + channel_erasing() + [ChannelAdapGray(aug.adaptive_gray_p)]]
    return TrainViews(
        preset=aug.preset,
        visible=tuple(T.Compose(v) for v in visible),
        infrared=tuple(T.Compose(v) for v in infrared),
        height=height,
        width=width,
        interpolation=_PRESET_INTERPOLATION[aug.preset],
    )


def build_test_transform(
    height: int,
    width: int,
    mean: tuple[float, float, float] = IMAGENET_MEAN,
    std: tuple[float, float, float] = IMAGENET_STD,
    interpolation: str = "lanczos",
) -> Transform:
    """Resize(H, W) -> ToTensor -> Normalize, the test transform of every method. PIL -> (3, H, W).

    Lanczos by default, as the AGW/CAJ test loaders (which pre-resize with PIL's antialiasing filter);
    pass ``interpolation="bilinear"`` for IDKL's torchvision default.
    """
    if interpolation not in INTERPOLATIONS:
        raise ValueError(f"unknown interpolation {interpolation!r}; use one of {sorted(INTERPOLATIONS)}")
    return T.Compose(
        [
            T.Resize((height, width), interpolation=T.InterpolationMode(interpolation)),
            T.ToTensor(),
            T.Normalize(mean, std),
        ]
    )
