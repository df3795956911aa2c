"""Tokenisers for the text encoders: a word vocabulary built from training captions, and the token batch.

Every text encoder in vireid reads a :class:`TokenBatch` (ids and attention mask, padded to a fixed context
length) produced by its tokeniser. The small configuration (tests, CPU demo) needs no download: its
:class:`WordTokenizer` is built from the training captions (method-dikdnet.md 5.8): lower-cased words, split
on non-letters, with five special tokens ``PAD = 0, SOS = 1, EOS = 2, MASK = 3, UNK = 4``. Its state (the word
list) is plain JSON, stored in the checkpoint sidecar, so inference rebuilds exactly the vocabulary the
model was trained with.

Masked-language-model corruption (IRRA's IRR, :func:`mask_for_mlm`) lives here too because it only needs
token ids and the tokeniser's special ids.
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

import torch

from vireid.errors import CheckpointError, ConfigError

_WORD = re.compile(r"[a-z]+")


def split_words(text: str) -> list[str]:
    """Lower-case ``text`` and split it on everything that is not a letter (``"T-shirt, red"`` -> 3 words)."""
    return _WORD.findall(text.lower())


@dataclass
class TokenBatch:
    """Tokenised texts, padded to one context length.

    Shapes: ``ids`` (N, L) int64; ``mask`` (N, L) bool, True on real tokens (special tokens included).
    """

    ids: torch.Tensor
    mask: torch.Tensor

    def __len__(self) -> int:
        return int(self.ids.shape[0])

    def to(self, device: torch.device | str) -> TokenBatch:
        return TokenBatch(self.ids.to(device), self.mask.to(device))


class Tokenizer(Protocol):
    """What the datasets, the MLM corruption and the embedders need from any tokeniser."""

    context_length: int
    vocab_size: int
    pad_id: int
    mask_id: int | None

    def encode(self, texts: Sequence[str]) -> TokenBatch: ...

    def special_mask(self, ids: torch.Tensor) -> torch.Tensor: ...

    def random_token_range(self) -> tuple[int, int]: ...


class WordTokenizer:
    """Word-level tokeniser with a vocabulary taken from training captions.

    A caption becomes ``[SOS] w_1 ... w_n [EOS] [PAD] ...`` of length ``context_length``; words beyond
    ``context_length - 2`` are cut (EOS is always kept, as IRRA keeps EOT when truncating); unknown words map
    to ``UNK``. Word ids follow the sorted word list, so the vocabulary is a pure function of the captions.

    Args:
        words: the vocabulary (special tokens excluded), sorted and unique.
        context_length: L, the padded length (default 32).
    """

    PAD, SOS, EOS, MASK, UNK = 0, 1, 2, 3, 4
    SPECIALS = ("<pad>", "<sos>", "<eos>", "<mask>", "<unk>")
    kind = "word"

    def __init__(self, words: Sequence[str], context_length: int = 32):
        if context_length < 3:
            raise ConfigError(f"model.text.context_length={context_length} is too short; use at least 3 (SOS w EOS).")
        words = list(words)
        if words != sorted(set(words)):
            raise ValueError("WordTokenizer words must be sorted and unique (use WordTokenizer.from_captions)")
        clash = [w for w in words if w in self.SPECIALS]
        if clash:
            raise ValueError(f"vocabulary words collide with special tokens: {clash}")
        self.words = words
        self.context_length = int(context_length)
        self._index = {w: i + len(self.SPECIALS) for i, w in enumerate(words)}

    # -- construction ---------------------------------------------------------------------------------
    @classmethod
    def from_captions(cls, captions: Iterable[str], context_length: int = 32, min_count: int = 1) -> WordTokenizer:
        """The vocabulary of ``captions``: every word seen at least ``min_count`` times."""
        if min_count < 1:
            raise ConfigError(f"model.text.min_count={min_count} must be >= 1.")
        counts: Counter[str] = Counter()
        for text in captions:
            counts.update(split_words(text))
        words = sorted(w for w, n in counts.items() if n >= min_count)
        if not words:
            raise ConfigError(
                "the training captions contain no words, so no text vocabulary can be built.",
                fix="check the captions of the training split (data.root, annotation file).",
            )
        return cls(words, context_length)

    def state_dict(self) -> dict[str, Any]:
        """JSON-serialisable state (kind, context length, words) for the checkpoint sidecar."""
        return {"kind": self.kind, "context_length": self.context_length, "words": list(self.words)}

    @classmethod
    def from_state_dict(cls, state: dict[str, Any]) -> WordTokenizer:
        """Rebuild from :meth:`state_dict`; raises :class:`CheckpointError` for anything else."""
        if not isinstance(state, dict) or state.get("kind") != cls.kind or "words" not in state:
            raise CheckpointError(
                "the checkpoint sidecar holds no word vocabulary (meta.json extra.vocabulary), so the text encoder "
                "cannot be rebuilt.",
                fix="use a checkpoint written by vireid's dikdnet method with model.text.name=tiny.",
            )
        return cls(state["words"], int(state.get("context_length", 32)))

    def __eq__(self, other: object) -> bool:
        return (
            isinstance(other, WordTokenizer)
            and other.words == self.words
            and other.context_length == self.context_length
        )

    def __hash__(self) -> int:
        return hash((tuple(self.words), self.context_length))

    def __repr__(self) -> str:
        return f"WordTokenizer({len(self.words)} words, context_length={self.context_length})"

    # -- encoding -------------------------------------------------------------------------------------
    @property
    def vocab_size(self) -> int:
        return len(self.SPECIALS) + len(self.words)

    @property
    def pad_id(self) -> int:
        return self.PAD

    @property
    def mask_id(self) -> int:
        return self.MASK

    def token_ids(self, text: str) -> list[int]:
        """Unpadded ids of one text: SOS, word ids (truncated), EOS."""
        ids = [self._index.get(w, self.UNK) for w in split_words(text)][: self.context_length - 2]
        return [self.SOS, *ids, self.EOS]

    def encode(self, texts: Sequence[str]) -> TokenBatch:
        """Tokenise ``texts`` into a (N, L) :class:`TokenBatch`."""
        if isinstance(texts, str):
            raise TypeError("encode takes a list of texts; wrap a single text in a list")
        ids = torch.zeros(len(texts), self.context_length, dtype=torch.int64)
        for row, text in enumerate(texts):
            seq = self.token_ids(text)
            ids[row, : len(seq)] = torch.tensor(seq, dtype=torch.int64)
        return TokenBatch(ids, ids != self.PAD)

    def decode(self, ids: Sequence[int] | torch.Tensor) -> str:
        """Words of ``ids`` joined by spaces; special tokens other than MASK/UNK are dropped."""
        out = []
        for i in [int(v) for v in ids]:
            if i in (self.PAD, self.SOS, self.EOS):
                continue
            out.append(self.SPECIALS[i] if i < len(self.SPECIALS) else self.words[i - len(self.SPECIALS)])
        return " ".join(out)

    def special_mask(self, ids: torch.Tensor) -> torch.Tensor:
        """True where ``ids`` holds a special token (PAD/SOS/EOS/MASK/UNK), which MLM never corrupts."""
        return ids < len(self.SPECIALS)

    def random_token_range(self) -> tuple[int, int]:
        """[low, high) of the ids MLM may substitute at random (the real words)."""
        return len(self.SPECIALS), self.vocab_size


def mask_for_mlm(
    ids: torch.Tensor,
    tokenizer: Tokenizer,
    probability: float = 0.15,
    generator: torch.Generator | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """IRRA's masked-language-model corruption of one tokenised caption (or a batch of them).

    Every non-special token is chosen with ``probability``; a chosen token becomes MASK with probability
    0.8, a random word with 0.1 and stays itself with 0.1. When nothing is chosen, position 1 (the first
    word) is masked, so every caption trains the head. Labels hold the original id at chosen positions
    and 0 (``ignore_index``) elsewhere.

    Shapes: ``ids`` (L,) or (N, L) int64 -> ``(corrupted ids, labels)`` of the same shape.
    """
    if tokenizer.mask_id is None:
        raise ConfigError(
            "masked-language modelling needs a tokeniser with a mask token; this one has none.",
            fix="set loss.w_mlm=0.",
        )
    squeeze = ids.dim() == 1
    ids2 = ids.unsqueeze(0) if squeeze else ids
    candidates = ~tokenizer.special_mask(ids2)
    draw = torch.rand(ids2.shape, generator=generator)
    chosen = candidates & (draw < probability)
    for row in range(ids2.shape[0]):
        if not bool(chosen[row].any()) and bool(candidates[row].any()):
            chosen[row, int(torch.nonzero(candidates[row])[0])] = True
    action = torch.rand(ids2.shape, generator=generator)
    low, high = tokenizer.random_token_range()
    random_ids = torch.randint(low, max(high, low + 1), ids2.shape, generator=generator)
    corrupted = ids2.clone()
    corrupted[chosen & (action < 0.8)] = int(tokenizer.mask_id)
    replace = chosen & (action >= 0.8) & (action < 0.9)
    corrupted[replace] = random_ids[replace]
    labels = torch.where(chosen, ids2, torch.zeros_like(ids2))
    if squeeze:
        return corrupted[0], labels[0]
    return corrupted, labels
