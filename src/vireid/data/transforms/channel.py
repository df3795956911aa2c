"""CAJ channel augmentations (Ye et al., ICCV 2021; method-baseline.md section 3).

They act on a *normalised* C x H x W tensor (after ToTensor + Normalize), exactly where the CAJ release
applies them, and reproduce its probabilities draw for draw:

- :class:`ChannelExchange` replicates one colour channel (or, with ``gray=3``, the luminance) into all
  three, so the visible stream sees infrared-like single-channel images.
- :class:`ChannelAdapGray` does the same for the infrared stream, leaving some images unchanged.
- :class:`ChannelRandomErasing` erases a random rectangle with per-channel constants.

Deliberate difference from the release: the release modifies the caller's tensor in place; these classes
write only into a clone (and return the input object itself when they leave it unchanged, as torchvision
does), because in-place changes to a caller's tensor silently broke flip test-time augmentation in one
public toolkit. Random draws come from torch's default CPU generator (see
:mod:`vireid.data.transforms.seeding`); the release uses Python's ``random`` module, so the distributions
are identical but the streams are not.
"""

from __future__ import annotations

import math
from typing import Literal

import torch

GRAY_WEIGHTS = (0.2989, 0.5870, 0.1140)
"""Luminance weights of the CAJ release, applied to the normalised R, G, B values."""

RELEASE_ERASING_FILL = (0.4914, 0.4822, 0.4465)
"""CAJ's erasing constants (CIFAR channel means). The release writes them into the *normalised* tensor,
so they are not the image mean there; kept for parity (``fill="release"``)."""


def _check_image(img: torch.Tensor, who: str, channels: tuple[int, ...] = (3,)) -> None:
    if not isinstance(img, torch.Tensor) or img.dim() != 3 or img.shape[0] not in channels:
        shape = tuple(img.shape) if isinstance(img, torch.Tensor) else type(img).__name__
        raise ValueError(f"{who} expects a normalised tensor of shape (C, H, W) with C in {channels}, got {shape}")


def _randint(low: int, high_inclusive: int) -> int:
    """Uniform integer in ``[low, high_inclusive]`` from torch's default generator."""
    return int(torch.randint(low, high_inclusive + 1, ()).item())


def _uniform(low: float, high: float) -> float:
    """Uniform float in ``[low, high)`` from torch's default generator."""
    return low + (high - low) * float(torch.rand(()).item())


def grayscale(img: torch.Tensor) -> torch.Tensor:
    """``0.2989 R + 0.5870 G + 0.1140 B`` replicated to 3 channels (computed on normalised values).

    Shapes: (3, H, W) -> (3, H, W); returns a new tensor.
    """
    w = GRAY_WEIGHTS
    gray = w[0] * img[0] + w[1] * img[1] + w[2] * img[2]
    return gray.unsqueeze(0).expand(3, -1, -1).clone()


def replicate_channel(img: torch.Tensor, channel: int) -> torch.Tensor:
    """Channel ``channel`` copied into all three channels. Shapes: (3, H, W) -> (3, H, W); new tensor."""
    return img[channel : channel + 1].expand(3, -1, -1).clone()


class ChannelExchange:
    """Replace the image by one of its channels replicated three times (always applied).

    ``k ~ U{0..gray}`` (inclusive): ``k`` in {0, 1, 2} copies channel R, G or B into all channels; with
    ``gray=3`` the extra outcome ``k = 3`` replaces every channel with the luminance (:func:`grayscale`).
    With the default ``gray=2`` each of R, G, B has probability 1/3. (The release's comments call index 1
    "B"; index 1 is G.)

    Input/output: normalised (3, H, W) tensor; the input is not modified.
    """

    def __init__(self, gray: int = 2):
        if gray not in (2, 3):
            raise ValueError(f"ChannelExchange gray must be 2 (channels only) or 3 (channels + grayscale), got {gray}")
        self.gray = gray

    def __call__(self, img: torch.Tensor) -> torch.Tensor:
        _check_image(img, "ChannelExchange")
        k = _randint(0, self.gray)
        if k == 3:
            return grayscale(img)
        return replicate_channel(img, k)

    def __repr__(self) -> str:
        return f"ChannelExchange(gray={self.gray})"


class ChannelAdapGray:
    """Infrared-stream channel augmentation of CAJ.

    ``k ~ U{0..3}``: ``k`` in {0, 1, 2} replicates channel ``k`` (1/4 each); ``k = 3`` applies
    :func:`grayscale` with probability ``p`` and otherwise leaves the image unchanged. With ``p = 0.5``:
    each channel 1/4, grayscale 1/8, unchanged 1/8.

    Input/output: normalised (3, H, W) tensor; the input is never modified.
    """

    def __init__(self, p: float = 0.5):
        if not 0.0 <= p <= 1.0:
            raise ValueError(f"ChannelAdapGray p must be in [0, 1], got {p}")
        self.p = p

    def __call__(self, img: torch.Tensor) -> torch.Tensor:
        _check_image(img, "ChannelAdapGray")
        k = _randint(0, 3)
        if k < 3:
            return replicate_channel(img, k)
        if float(torch.rand(()).item()) < self.p:
            return grayscale(img)
        return img

    def __repr__(self) -> str:
        return f"ChannelAdapGray(p={self.p})"


class ChannelRandomErasing:
    """CAJ random erasing: with probability ``p`` fill one random rectangle with per-channel constants.

    Up to 100 attempts: area ``U(sl, sh) * H * W``, aspect ``a ~ U(r1, 1/r1)``,
    ``h = round(sqrt(area * a))``, ``w = round(sqrt(area / a))`` (Python's round, as the release);
    accepted when ``h < H`` and ``w < W``, then ``top ~ U{0..H-h}``, ``left ~ U{0..W-w}`` and channel ``c`` of
    the rectangle is set to ``fill[c]``. If no attempt fits, the image is returned unchanged.

    ``fill="release"`` writes :data:`RELEASE_ERASING_FILL` into the normalised tensor (the release's quirk,
    kept for parity); ``fill="zero"`` writes 0 (the normalised image mean), a vireid option. A
    single-channel input gets ``fill[0]``, as in the release.

    Input/output: normalised (C, H, W) tensor with C in {1, 3}; the input is never modified.
    """

    def __init__(
        self,
        p: float = 0.5,
        sl: float = 0.02,
        sh: float = 0.4,
        r1: float = 0.3,
        fill: Literal["release", "zero"] | tuple[float, float, float] = "release",
    ):
        if not 0.0 <= p <= 1.0:
            raise ValueError(f"ChannelRandomErasing p must be in [0, 1], got {p}")
        if not 0.0 < sl <= sh <= 1.0:
            raise ValueError(f"ChannelRandomErasing needs 0 < sl <= sh <= 1, got sl={sl}, sh={sh}")
        if not 0.0 < r1 <= 1.0:
            raise ValueError(f"ChannelRandomErasing r1 must be in (0, 1], got {r1}")
        if fill == "release":
            values = RELEASE_ERASING_FILL
        elif fill == "zero":
            values = (0.0, 0.0, 0.0)
        elif isinstance(fill, tuple | list) and len(fill) == 3:
            values = tuple(float(v) for v in fill)
        else:
            raise ValueError(f"ChannelRandomErasing fill must be 'release', 'zero' or 3 numbers, got {fill!r}")
        self.p, self.sl, self.sh, self.r1 = p, sl, sh, r1
        self.fill_name = fill if isinstance(fill, str) else "custom"
        self.fill = values

    def draw(self, height: int, width: int) -> tuple[int, int, int, int] | None:
        """Draw the rectangle ``(top, left, h, w)``, or ``None`` when no erasing happens."""
        if float(torch.rand(()).item()) >= self.p:
            return None
        area = height * width
        for _ in range(100):
            target = _uniform(self.sl, self.sh) * area
            aspect = _uniform(self.r1, 1.0 / self.r1)
            h = round(math.sqrt(target * aspect))  # Python's round, as the release
            w = round(math.sqrt(target / aspect))
            if h < height and w < width:
                return _randint(0, height - h), _randint(0, width - w), h, w
        return None

    def __call__(self, img: torch.Tensor) -> torch.Tensor:
        _check_image(img, "ChannelRandomErasing", channels=(1, 3))
        box = self.draw(img.shape[1], img.shape[2])
        if box is None:
            return img
        top, left, h, w = box
        out = img.clone()
        for c in range(out.shape[0]):
            out[c, top : top + h, left : left + w] = self.fill[c]
        return out

    def __repr__(self) -> str:
        return f"ChannelRandomErasing(p={self.p}, sl={self.sl}, sh={self.sh}, r1={self.r1}, fill={self.fill_name!r})"
