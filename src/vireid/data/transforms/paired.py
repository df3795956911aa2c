"""Paired transforms for calibrated RGB + thermal image pairs (text -> RGB+T retrieval, DIKDNet).

The two images of a pair show the same person at the same instant from an aligned camera pair, so vireid
applies the *same* resize, flip, pad and crop to both (method-dikdnet.md section 2). Release difference:
the predecessor (RGBT-PEDE) flips, crops and erases the two images independently, which misaligns them.
Random erasing is independent per image by default (``pair_erase="independent"``) or one shared rectangle
(``"shared"``).

Train: Resize(H, W) -> HFlip -> Pad + RandomCrop -> ToTensor -> Normalize -> RandomErasing(scale 0.02-0.4,
ratio 0.3-3.3, value = the normalisation mean written into the normalised tensor, as IRRA does).
Test: Resize(H, W) -> ToTensor -> Normalize. Bicubic resizing and CLIP mean/std by default (IRRA).

Random draws come from torch's default CPU generator; seed them per sample with
:func:`vireid.data.transforms.seeding.seeded`.
"""

from __future__ import annotations

from typing import Literal

import torch
from PIL import Image
from torchvision import transforms as T
from torchvision.transforms import functional as F

from vireid.data.transforms.presets import IMAGENET_MEAN, IMAGENET_STD, INTERPOLATIONS

CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)

_NORMALISATIONS = {"clip": (CLIP_MEAN, CLIP_STD), "imagenet": (IMAGENET_MEAN, IMAGENET_STD)}


def _normalisation(name: str) -> tuple[tuple[float, ...], tuple[float, ...]]:
    if name not in _NORMALISATIONS:
        raise ValueError(f"unknown normalisation {name!r}; use one of {sorted(_NORMALISATIONS)}")
    return _NORMALISATIONS[name]


class PairedTestTransform:
    """Resize -> ToTensor -> Normalize on both images. Returns ``(rgb, thermal)``, each (3, H, W)."""

    def __init__(
        self, height: int, width: int, normalization: Literal["clip", "imagenet"] = "clip", interpolation="bicubic"
    ):
        if interpolation not in INTERPOLATIONS:
            raise ValueError(f"unknown interpolation {interpolation!r}; use one of {sorted(INTERPOLATIONS)}")
        self.size = (height, width)
        self.mean, self.std = _normalisation(normalization)
        self.interpolation = T.InterpolationMode(interpolation)

    def single(self, img: Image.Image) -> torch.Tensor:
        """The transform of one image (the same for RGB and thermal)."""
        img = F.resize(img, list(self.size), interpolation=self.interpolation)
        return F.normalize(F.to_tensor(img), self.mean, self.std)

    def __call__(self, rgb: Image.Image, thermal: Image.Image) -> tuple[torch.Tensor, torch.Tensor]:
        return self.single(rgb), self.single(thermal)


class PairedTrainTransform(PairedTestTransform):
    """Training transform of an RGB + thermal pair with shared geometry.

    Draw order (torch's default generator): flip ``u < flip``; crop offsets; then erasing: for
    ``shared``, one ``u < erasing_p`` and one rectangle applied to both; for ``independent``, the RGB
    image's decision and rectangle, then the thermal image's.

    Returns ``(rgb, thermal)``, each a normalised (3, H, W) tensor.
    """

    def __init__(
        self,
        height: int,
        width: int,
        *,
        flip: float = 0.5,
        pad: int = 10,
        pad_fill: int = 0,
        erasing_p: float = 0.5,
        erasing_scale: tuple[float, float] = (0.02, 0.4),
        erasing_ratio: tuple[float, float] = (0.3, 3.3),
        erasing_value: Literal["mean", "zero"] = "mean",
        pair_erase: Literal["independent", "shared"] = "independent",
        normalization: Literal["clip", "imagenet"] = "clip",
        interpolation: str = "bicubic",
    ):
        super().__init__(height, width, normalization, interpolation)
        if pair_erase not in ("independent", "shared"):
            raise ValueError(f"pair_erase must be 'independent' or 'shared', got {pair_erase!r}")
        if erasing_value not in ("mean", "zero"):
            raise ValueError(f"erasing_value must be 'mean' or 'zero', got {erasing_value!r}")
        for name, p in (("flip", flip), ("erasing_p", erasing_p)):
            if not 0.0 <= p <= 1.0:
                raise ValueError(f"{name} is a probability in [0, 1], got {p}")
        if pad < 0:
            raise ValueError(f"pad must be >= 0, got {pad}")
        self.flip, self.pad, self.pad_fill = flip, pad, pad_fill
        self.erasing_p, self.erasing_scale, self.erasing_ratio = erasing_p, erasing_scale, erasing_ratio
        self.erasing_fill = list(self.mean) if erasing_value == "mean" else [0.0, 0.0, 0.0]
        self.pair_erase = pair_erase

    def geometry(self, rgb: Image.Image, thermal: Image.Image) -> tuple[Image.Image, Image.Image]:
        """Resize, then one flip decision and one crop window applied to both images."""
        rgb = F.resize(rgb, list(self.size), interpolation=self.interpolation)
        thermal = F.resize(thermal, list(self.size), interpolation=self.interpolation)
        if float(torch.rand(()).item()) < self.flip:
            rgb, thermal = F.hflip(rgb), F.hflip(thermal)
        if self.pad > 0:
            rgb = F.pad(rgb, self.pad, fill=self.pad_fill)
            thermal = F.pad(thermal, self.pad, fill=self.pad_fill)
            top, left, h, w = T.RandomCrop.get_params(rgb, self.size)
            rgb, thermal = F.crop(rgb, top, left, h, w), F.crop(thermal, top, left, h, w)
        return rgb, thermal

    def _erase_box(self, img: torch.Tensor) -> tuple[int, int, int, int, torch.Tensor] | None:
        if float(torch.rand(()).item()) >= self.erasing_p:
            return None
        return T.RandomErasing.get_params(img, self.erasing_scale, self.erasing_ratio, value=self.erasing_fill)

    @staticmethod
    def _erase(img: torch.Tensor, box: tuple[int, int, int, int, torch.Tensor] | None) -> torch.Tensor:
        return img if box is None else F.erase(img, *box, inplace=False)

    def __call__(self, rgb: Image.Image, thermal: Image.Image) -> tuple[torch.Tensor, torch.Tensor]:
        rgb, thermal = self.geometry(rgb, thermal)
        x_rgb = F.normalize(F.to_tensor(rgb), self.mean, self.std)
        x_t = F.normalize(F.to_tensor(thermal), self.mean, self.std)
        if self.erasing_p > 0:
            box = self._erase_box(x_rgb)
            x_rgb = self._erase(x_rgb, box)
            if self.pair_erase == "independent":
                box = self._erase_box(x_t)
            x_t = self._erase(x_t, box)
        return x_rgb, x_t
