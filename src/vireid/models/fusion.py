"""Token-level fusion of calibrated RGB and thermal (TIR) image tokens into one pair representation.

Text -> RGB+T retrieval embeds a gallery pair as one vector: the fused token sequence's row 0 (the sum or
gated mix of the two CLS tokens). method-dikdnet.md 5.1:

- ``sum`` (default): F = V + T. The predecessor's release (Yifei-AHU/RGBT-PEDE) defines a gated module but a
  same-named method shadows it, so the code as run fuses by sum; vireid keeps that as the default.
- ``gated``: the gated module as written, per token: r' = drop(QuickGELU(A_r r)), t' = drop(QuickGELU(A_t t))
  (A: d -> 2d); u = [r'; t']; h = drop(QuickGELU(B u)) (B: 4d -> 4d); alpha = sigmoid(E2 drop(QuickGELU(E1 u)))
  (E1: 4d -> 4d, E2: 4d -> 1); out = O h + alpha r + (1 - alpha) t (O: 4d -> d); dropout 0.5.
"""

from __future__ import annotations

import torch
from torch import nn


class QuickGELU(nn.Module):
    """x * sigmoid(1.702 x), CLIP's activation."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * torch.sigmoid(1.702 * x)


class SumFusion(nn.Module):
    """F = rgb + thermal, token by token. (B, N, d) x 2 -> (B, N, d). No parameters."""

    def forward(self, rgb: torch.Tensor, thermal: torch.Tensor) -> torch.Tensor:
        return rgb + thermal


class GatedFusion(nn.Module):
    """Gated per-token mix of RGB and thermal tokens (see module docstring). (B, N, d) x 2 -> (B, N, d)."""

    def __init__(self, dim: int, dropout: float = 0.5):
        super().__init__()
        self.rgb_in = nn.Linear(dim, 2 * dim)
        self.thermal_in = nn.Linear(dim, 2 * dim)
        self.hidden = nn.Linear(4 * dim, 4 * dim)
        self.gate_hidden = nn.Linear(4 * dim, 4 * dim)
        self.gate_out = nn.Linear(4 * dim, 1)
        self.out = nn.Linear(4 * dim, dim)
        self.act = QuickGELU()
        self.drop = nn.Dropout(dropout)

    def forward(self, rgb: torch.Tensor, thermal: torch.Tensor) -> torch.Tensor:
        r = self.drop(self.act(self.rgb_in(rgb)))
        t = self.drop(self.act(self.thermal_in(thermal)))
        u = torch.cat([r, t], dim=-1)
        h = self.drop(self.act(self.hidden(u)))
        alpha = torch.sigmoid(self.gate_out(self.drop(self.act(self.gate_hidden(u)))))
        return self.out(h) + alpha * rgb + (1.0 - alpha) * thermal


def build_fusion(kind: str, dim: int, dropout: float = 0.5) -> nn.Module:
    """``sum`` or ``gated`` fusion of width ``dim``."""
    if kind == "sum":
        return SumFusion()
    if kind == "gated":
        return GatedFusion(dim, dropout)
    raise ValueError(f"unknown fusion {kind!r}; use 'sum' or 'gated'")
