"""Cross-modal masked-language-model head (IRRA's implicit relation reasoning, method-dikdnet.md 3).

The corrupted caption's tokens query the image tokens through one cross-attention layer; a small
Transformer and an MLP predict the original token at every position:

    x = CrossAttn(LN_t(text), LN_i(image), LN_i(image)) -> Transformer (layers, width d) -> LN
    logits = Linear(LN(QuickGELU(Linear(x))), vocab)

IRRA uses 8 heads and 4 layers at d = 512; the small configuration uses fewer.
"""

from __future__ import annotations

import torch
from torch import nn

from vireid.models.fusion import QuickGELU


class CrossModalMLMHead(nn.Module):
    """(B, L, d) text tokens x (B, N, d) image tokens -> (B, L, vocab) token logits.

    ``forward(..., positions=mask)`` returns logits only at the True positions of a (B, L) mask, as (M, vocab):
    the 49408-way CLIP vocabulary makes full (B, L, vocab) logits needlessly large.
    """

    def __init__(self, dim: int, vocab_size: int, heads: int = 8, layers: int = 4):
        super().__init__()
        if dim % heads:
            raise ValueError(f"MLM width {dim} must be divisible by the number of heads {heads}")
        self.ln_text = nn.LayerNorm(dim)
        self.ln_image = nn.LayerNorm(dim)
        self.cross_attn = nn.MultiheadAttention(dim, heads, batch_first=True)
        layer = nn.TransformerEncoderLayer(
            dim, heads, dim_feedforward=4 * dim, dropout=0.0, activation="gelu", batch_first=True, norm_first=True
        )
        self.transformer = nn.TransformerEncoder(layer, layers, enable_nested_tensor=False)
        self.ln_post = nn.LayerNorm(dim)
        self.head = nn.Sequential(nn.Linear(dim, dim), QuickGELU(), nn.LayerNorm(dim), nn.Linear(dim, vocab_size))

    def forward(
        self, text_tokens: torch.Tensor, image_tokens: torch.Tensor, positions: torch.Tensor | None = None
    ) -> torch.Tensor:
        kv = self.ln_image(image_tokens)
        x, _ = self.cross_attn(self.ln_text(text_tokens), kv, kv, need_weights=False)
        x = self.ln_post(self.transformer(x))
        if positions is not None:
            x = x[positions]
        return self.head(x)
