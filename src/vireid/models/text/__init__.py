"""Text encoders and tokenisers for text -> RGB+thermal retrieval.

- :mod:`~vireid.models.text.tokenizer`: :class:`WordTokenizer` (vocabulary from the training captions,
  stored in checkpoint sidecars), :class:`TokenBatch`, MLM corruption (:func:`mask_for_mlm`).
- :mod:`~vireid.models.text.tiny`: :class:`TinyTextEncoder`, a small Transformer trained from scratch.
- :mod:`~vireid.models.text.minilm`: :class:`MiniLMTextEncoder` and :class:`MiniLMTokenizer`, pretrained
  all-MiniLM-L6-v2 with masked mean pooling (extra ``[minilm]``; ``transformers`` is imported lazily).
- CLIP's text tower lives with its image tower in :mod:`vireid.models.clip` (extra ``[text]``).

Every encoder maps a :class:`TokenBatch` to a :class:`TextEncoding` (feature (B, d), tokens (B, L, d)).
"""

from vireid.models.text.encoding import TextEncoding
from vireid.models.text.minilm import MiniLMTextEncoder, MiniLMTokenizer
from vireid.models.text.tiny import TinyTextEncoder
from vireid.models.text.tokenizer import TokenBatch, Tokenizer, WordTokenizer, mask_for_mlm, split_words

__all__ = [
    "MiniLMTextEncoder",
    "MiniLMTokenizer",
    "TextEncoding",
    "TinyTextEncoder",
    "TokenBatch",
    "Tokenizer",
    "WordTokenizer",
    "mask_for_mlm",
    "split_words",
]
