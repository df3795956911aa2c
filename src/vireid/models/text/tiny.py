"""A small text transformer trained from scratch on the training captions (tests and CPU demos).

method-dikdnet.md 5.8 (small configuration): a word vocabulary from the training captions, context 32,
2 bidirectional Transformer layers of width 128 with 4 heads and learned positions; the caption feature is
LN(token at EOS) -> Linear(128, d). Every token goes through the same LN and projection (as CLIP/IRRA
project all text tokens), so cross-attention heads (MLM) read d-dimensional tokens like the image side.
"""

from __future__ import annotations

import torch
from torch import nn

from vireid.models.text.encoding import TextEncoding
from vireid.models.text.tokenizer import TokenBatch, WordTokenizer


class TinyTextEncoder(nn.Module):
    """Bidirectional Transformer text encoder over a :class:`WordTokenizer` vocabulary.

    Args:
        tokenizer: the vocabulary (kept as a plain attribute: it is configuration, not weights; the method
            stores it in the checkpoint sidecar).
        embed_dim: d, the joint embedding width.
        width, layers, heads: Transformer size (128, 2, 4).
        dropout: dropout inside the Transformer layers.

    ``forward(tokens)`` maps a (B, L) :class:`TokenBatch` to a :class:`TextEncoding` with ``feature``
    (B, d) at the EOS position and ``tokens`` (B, L, d).
    """

    def __init__(
        self, tokenizer: WordTokenizer, embed_dim: int, width: int = 128, layers: int = 2, heads: int = 4, dropout=0.0
    ):
        super().__init__()
        if width % heads:
            raise ValueError(f"text width {width} must be divisible by the number of heads {heads}")
        self.tokenizer = tokenizer
        self.embed_dim = embed_dim
        self.token_embedding = nn.Embedding(tokenizer.vocab_size, width, padding_idx=tokenizer.pad_id)
        self.positional_embedding = nn.Parameter(torch.empty(tokenizer.context_length, width))
        layer = nn.TransformerEncoderLayer(
            width,
            heads,
            dim_feedforward=4 * width,
            dropout=dropout,
            activation="gelu",
            batch_first=True,
            norm_first=True,
        )
        self.transformer = nn.TransformerEncoder(layer, layers, enable_nested_tensor=False)
        self.ln_final = nn.LayerNorm(width)
        self.projection = nn.Linear(width, embed_dim)
        nn.init.normal_(self.token_embedding.weight, std=0.02)
        nn.init.normal_(self.positional_embedding, std=0.01)

    def forward(self, tokens: TokenBatch) -> TextEncoding:
        ids, mask = tokens.ids, tokens.mask
        x = self.token_embedding(ids) + self.positional_embedding[: ids.shape[1]]
        x = self.transformer(x, src_key_padding_mask=~mask)
        x = self.projection(self.ln_final(x))
        # EOS is the last real token of every row (captions are SOS ... EOS then padding).
        eos = mask.long().sum(dim=1).clamp(min=1) - 1
        feature = x[torch.arange(ids.shape[0], device=ids.device), eos]
        return TextEncoding(feature=feature, tokens=x, mask=mask)
