"""CutSwap (DAKD, method-dakd.md sections 2.3 and 3.9): paste a channel-replicated copy into a rectangle.

The visible image keeps its colours except inside one random rectangle, which shows a single colour
channel replicated three times, i.e. an infrared-like patch. It acts on the normalised visible tensor,
after Normalize and before ChannelRandomErasing, and can be added to any preset (``cutswap.p > 0``).

Release difference: the DAKD release replicates the channel *in place* and then pastes a rectangle of the
same tensor into itself, so its effective behaviour is whole-image channel replication with probability
``p``. ``mode="region"`` (default) implements the intended rectangle; ``mode="full_image"`` reproduces the
release's effective behaviour for parity runs.
"""

from __future__ import annotations

from typing import Literal

import torch

from vireid.data.transforms.channel import _check_image, _randint, _uniform, replicate_channel


class CutSwap:
    """With probability ``p``, replace a rectangle of the image by the same rectangle of one channel x3.

    Draws (from torch's default generator, in this order): ``u ~ U(0,1)`` (apply when ``u < p``);
    channel ``c ~ U{0,1,2}``; then, in ``region`` mode, independent ratios ``rh, rw ~ U(ratio)``,
    ``h = min(int(H*rh), H)``, ``w = min(int(W*rw), W)`` and, when both are positive, ``top ~ U{0..H-h}``,
    ``left ~ U{0..W-w}``. Pixels outside the rectangle are untouched. In ``full_image`` mode the whole
    image becomes channel ``c`` replicated (the DAKD release's effective behaviour).

    Input/output: normalised (3, H, W) tensor; the input is never modified (a clone is written).
    """

    def __init__(
        self,
        p: float = 0.5,
        ratio: tuple[float, float] = (0.3, 0.6),
        mode: Literal["region", "full_image"] = "region",
    ):
        if not 0.0 <= p <= 1.0:
            raise ValueError(f"CutSwap p must be in [0, 1], got {p}")
        lo, hi = float(ratio[0]), float(ratio[1])
        if not 0.0 <= lo <= hi <= 1.0:
            raise ValueError(f"CutSwap ratio must satisfy 0 <= min <= max <= 1, got {ratio}")
        if mode not in ("region", "full_image"):
            raise ValueError(f"CutSwap mode must be 'region' or 'full_image', got {mode!r}")
        self.p, self.ratio, self.mode = p, (lo, hi), mode

    def draw(self, height: int, width: int) -> tuple[int, int, int, int, int] | None:
        """Draw ``(channel, top, left, h, w)``; ``None`` when the image stays unchanged.

        In ``full_image`` mode the rectangle is the whole image.
        """
        if float(torch.rand(()).item()) >= self.p:
            return None
        channel = _randint(0, 2)
        if self.mode == "full_image":
            return channel, 0, 0, height, width
        h = min(int(height * _uniform(*self.ratio)), height)
        w = min(int(width * _uniform(*self.ratio)), width)
        if h <= 0 or w <= 0:
            return None
        return channel, _randint(0, height - h), _randint(0, width - w), h, w

    def __call__(self, img: torch.Tensor) -> torch.Tensor:
        _check_image(img, "CutSwap")
        box = self.draw(img.shape[1], img.shape[2])
        if box is None:
            return img
        channel, top, left, h, w = box
        if self.mode == "full_image":
            return replicate_channel(img, channel)
        out = img.clone()
        out[:, top : top + h, left : left + w] = img[channel, top : top + h, left : left + w]
        return out

    def __repr__(self) -> str:
        return f"CutSwap(p={self.p}, ratio={self.ratio}, mode={self.mode!r})"
