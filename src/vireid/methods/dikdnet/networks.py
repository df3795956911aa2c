"""DIKDNet networks: one side (teacher or student) with text, RGB and TIR encoders, fusion and training
heads; the online two-side model; their typed training outputs (method-dikdnet.md 5.1-5.2)."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from vireid.data.text_pairs import TextPairBatch
from vireid.errors import TrainingError
from vireid.losses.feature_kd import (
    cosine_distance,
)
from vireid.models.fusion import build_fusion
from vireid.models.mlm_head import CrossModalMLMHead
from vireid.models.text.tokenizer import TokenBatch


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
