"""Building DIKDNet sides from a config: tokenisers, encoders, optional parts, student initialisation
(method-dikdnet.md 5.1, 5.6, 5.8)."""

from __future__ import annotations

import copy
from typing import Any

from torch import nn

from vireid.errors import CheckpointError, ConfigError
from vireid.methods.dikdnet.config import DIKDNetConfig
from vireid.methods.dikdnet.networks import DIKDNetSide, SideOptions


def training_captions(cfg: DIKDNetConfig) -> list[str]:
    """The captions of the training split exactly as the trainer builds it (same holdout and seed)."""
    from vireid.data.catalog import get_dataset

    ds = get_dataset(cfg.data.dataset, cfg.data.root, strict_counts=cfg.data.strict_counts)
    holdout = "val" if cfg.eval.selection == "val" else "none"
    split = ds.train_split(holdout=holdout, val_ids=cfg.data.val_ids, seed=cfg.train.seed)
    return caption_texts(split.captions)


def caption_texts(captions) -> list[str]:
    """Texts a word vocabulary is built from: every caption and its colour-free variant."""
    return [c.text for c in captions] + [c.no_color_text for c in captions if c.no_color_text]


def build_tokenizer(cfg: DIKDNetConfig, texts: list[str] | None):
    """The tokeniser of ``model.text``: a word vocabulary from ``texts`` (tiny), CLIP's BPE or MiniLM's WordPiece."""
    tc = cfg.model.text
    if tc.name == "tiny":
        from vireid.models.text.tokenizer import WordTokenizer

        if texts is None:
            raise ValueError("the tiny text encoder needs the training captions to build its vocabulary")
        return WordTokenizer.from_captions(texts, context_length=tc.context_length, min_count=tc.min_count)
    if tc.name == "minilm":
        from vireid.models.text.minilm import MiniLMTokenizer

        return MiniLMTokenizer(tc.path, tc.context_length)
    from vireid.models.clip import ClipTokenizer

    return ClipTokenizer(tc.context_length)


def tokenizer_from_state(state: dict[str, Any]):
    """Rebuild a tokeniser from its ``state_dict()`` (stored in the checkpoint sidecar's ``extra``)."""
    kind = state.get("kind") if isinstance(state, dict) else None
    if kind == "word":
        from vireid.models.text.tokenizer import WordTokenizer

        return WordTokenizer.from_state_dict(state)
    if kind == "clip_bpe":
        from vireid.models.clip import ClipTokenizer

        return ClipTokenizer(int(state["context_length"]))
    if kind == "minilm":
        from vireid.models.text.minilm import MiniLMTokenizer

        return MiniLMTokenizer.from_state_dict(state)
    raise CheckpointError(
        f"the checkpoint sidecar's tokenizer entry is missing or unknown ({kind!r}).",
        fix="use a checkpoint written by vireid's dikdnet method (meta.json extra.tokenizer).",
    )


def _encoders(cfg: DIKDNetConfig, tokenizer) -> tuple[nn.Module, nn.Module, nn.Module | None]:
    """Text, RGB and TIR encoders of ``cfg.model`` (TIR ``None`` when shared). RGB and TIR start equal."""
    m = cfg.model
    clip_model = None
    if m.text.name == "clip" or m.image.name == "clip":
        from vireid.models.clip import clip_embed_dim, load_clip

        width = clip_embed_dim(m.clip.arch)
        if m.embed_dim != width:
            raise ConfigError(
                f"model.embed_dim={m.embed_dim}, but the CLIP {m.clip.arch} towers produce {width}-d features.",
                fix=f"set model.embed_dim={width} with model.clip.arch={m.clip.arch}.",
            )
        clip_model = load_clip(m.clip.weights, pretrained=m.clip.load, arch=m.clip.arch)
    if m.text.name == "tiny":
        from vireid.models.text.tiny import TinyTextEncoder

        text = TinyTextEncoder(tokenizer, m.embed_dim, m.text.width, m.text.layers, m.text.heads, m.text.dropout)
    elif m.text.name == "minilm":
        from vireid.models.text.minilm import MiniLMTextEncoder, MiniLMTokenizer, load_minilm

        if not isinstance(tokenizer, MiniLMTokenizer):
            raise ConfigError(
                f"model.text.name=minilm needs MiniLM's WordPiece tokeniser, got {type(tokenizer).__name__}.",
                fix="build the model with the tokeniser of its own config (or of its checkpoint sidecar).",
            )
        text = MiniLMTextEncoder(load_minilm(tokenizer.path, pretrained=m.text.load), tokenizer, m.embed_dim)
    else:
        from vireid.models.clip import ClipTextEncoder

        text = ClipTextEncoder(clip_model, tokenizer)
    if m.image.name == "resnet":
        from vireid.models.image_encoders import ResNetTokenEncoder

        rgb = ResNetTokenEncoder(
            m.embed_dim, m.image.backbone, m.image.width, m.image.last_stride, pretrained=m.image.pretrained
        )
    else:
        from vireid.models.clip import ClipImageEncoder

        rgb = ClipImageEncoder(copy.deepcopy(clip_model), cfg.data.height, cfg.data.width)
    # The two image encoders do not share weights but start from the same (pretrained or random) weights.
    tir = None if m.shared_visual else copy.deepcopy(rgb)
    return text, rgb, tir


def side_options(cfg: DIKDNetConfig, role: str) -> SideOptions:
    """The optional parts of a ``teacher`` or ``student`` side under ``cfg``."""
    lc, ik = cfg.loss, cfg.ikdm
    ikdm_on = (ik.weight > 0) if role == "teacher" else (ik.student_weight > 0)
    return SideOptions(
        no_color_text=lc.w_tir > 0,
        identity=lc.w_id > 0,
        mlm=lc.w_mlm > 0,
        ikdm_feature=ikdm_on and ik.form == "feature",
        ikdm_adaptor=ik.adaptor,
        ikdm_reverse=ikdm_on and ik.form == "feature" and ik.reverse_weight > 0,
        ikdm_tokens=ikdm_on and ik.form == "feature" and ik.tokens,
        ikdm_margin=ik.margin,
        token_projector=role == "student" and cfg.ckdm.token_mse > 0 and cfg.schedule != "student_only",
    )


def build_side(cfg: DIKDNetConfig, role: str, num_classes: int, tokenizer) -> DIKDNetSide:
    text, rgb, tir = _encoders(cfg, tokenizer)
    m = cfg.model
    return DIKDNetSide(
        text,
        rgb,
        tir,
        embed_dim=m.embed_dim,
        num_classes=num_classes,
        options=side_options(cfg, role),
        fusion=m.fusion,
        fusion_dropout=m.fusion_dropout,
        mlm_heads=m.mlm_heads,
        mlm_layers=m.mlm_layers,
    )


def initialise_from(student: nn.Module, teacher: nn.Module) -> int:
    """Copy every teacher tensor whose name and shape the student shares (``student.init: teacher``, VKD).

    Returns the number of tensors copied; raises :class:`CheckpointError` if nothing matches.
    """
    own = student.state_dict()
    source = {k: v for k, v in teacher.state_dict().items() if k in own and own[k].shape == v.shape}
    if not source:
        raise CheckpointError("the teacher shares no weights with the student; their encoders differ.")
    student.load_state_dict(source, strict=False)
    return len(source)
