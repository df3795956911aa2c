"""Global pooling of a feature map into one vector per image: generalised-mean (GeM) and average pooling.

GeM computes, per channel, ``f_c = (mean_{h,w} clamp(x, eps)^p)^(1/p)``. p = 1 is average pooling and
p -> inf tends to max pooling; AGW and IDKL use a fixed p = 3, MCE and DAKD learn p starting from 3.
"""

from __future__ import annotations

import torch
from torch import nn

from vireid.errors import ConfigError


class GeM(nn.Module):
    """Generalised-mean pooling, (B, C, H, W) -> (B, C).

    Args:
        p: the exponent (3.0 in every method vireid implements).
        learnable: make ``p`` a trainable scalar parameter (MCE / DAKD) instead of a constant (AGW / IDKL).
        eps: inputs are clamped to at least ``eps`` before the power. The inputs are post-ReLU, so the clamp
            only touches (near-)zeros; it keeps the gradient of ``x^p`` and ``(.)^(1/p)`` finite.

    The AGW release adds 1e-12 inside the root instead of clamping. On a channel that is zero everywhere
    AGW returns (1e-12)^(1/3) = 1e-4 and vireid returns eps = 1e-6, a difference of about 1e-4; on other
    channels only entries below eps differ. The gap is far below any effect on retrieval, and one formula
    then serves every method. [reconstruction]

    The pooling runs in float32 even under autocast: ``x^3`` of post-ReLU activations can overflow float16.
    """

    def __init__(self, p: float = 3.0, learnable: bool = False, eps: float = 1e-6):
        super().__init__()
        if p <= 0:
            raise ConfigError(f"GeM exponent p must be positive, got {p}.", fix="set model.gem_p to e.g. 3.0.")
        self.eps = float(eps)
        self.learnable = bool(learnable)
        if learnable:
            self.p = nn.Parameter(torch.full((1,), float(p)))
        else:
            self.p = float(p)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x.float().clamp(min=self.eps)
        p = self.p
        # A learnable p is a (1,) tensor: broadcast it over (B, C, H, W) and (B, C).
        pooled = x.pow(p).mean(dim=(-2, -1))
        return pooled.pow(1.0 / p)

    def extra_repr(self) -> str:
        p = float(self.p.detach()) if isinstance(self.p, torch.Tensor) else self.p
        return f"p={p:.4g}, learnable={self.learnable}, eps={self.eps:g}"


class AvgPool(nn.Module):
    """Global average pooling, (B, C, H, W) -> (B, C) (AGW's ``base`` variant)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.mean(dim=(-2, -1))


def build_pooling(kind: str, p: float = 3.0, learnable: bool = False, eps: float = 1e-6) -> nn.Module:
    """Pooling layer named by ``model.pooling``: ``gem`` (with ``model.gem_p`` / ``gem_learnable``) or ``avg``."""
    if kind == "gem":
        return GeM(p=p, learnable=learnable, eps=eps)
    if kind == "avg":
        if learnable:
            raise ConfigError(
                "model.gem_learnable=true has no effect with model.pooling=avg.",
                fix="set model.pooling=gem, or model.gem_learnable=false.",
            )
        return AvgPool()
    raise ConfigError(f"unknown model.pooling '{kind}'.", fix="use 'gem' or 'avg'.")
