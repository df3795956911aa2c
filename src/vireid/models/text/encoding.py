"""The output every text encoder returns (tiny Transformer, CLIP text tower, MiniLM)."""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass
class TextEncoding:
    """A batch of encoded texts.

    Shapes (B texts, L tokens, d embedding width):

    Attributes:
        feature: (B, d) the caption feature (the EOS/EOT token; MiniLM: the masked mean of its tokens).
        tokens: (B, L, d) every token, projected to d (cross-attention heads read them).
        mask: (B, L) bool, True on real tokens.
    """

    feature: torch.Tensor
    tokens: torch.Tensor
    mask: torch.Tensor
