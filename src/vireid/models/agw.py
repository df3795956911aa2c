"""The AGW two-stream network (method-baseline.md section 1), shared by the AGW and CAJ baselines.

    images, modality -> modality stems -> layer1..layer4 (shared, non-local blocks in layer2/3)
                     -> pooling (GeM or average) -> pooled -> BNNeck -> bn -> classifier -> logits

Differences from the release, all deliberate [reconstruction]:

* one torchvision ResNet is built and its stem deep-copied for the second modality (the release builds
  three ResNet-50s and uses parts of each); no unused layer exists;
* rows are routed to stems by a ``modality`` tensor, not by their position in the batch;
* training (:meth:`AGWNet.forward`, a :class:`ReIDOutput`) and retrieval (:meth:`AGWNet.extract`, one
  tensor, no classifier, no normalisation) are separate methods instead of one ``forward`` whose outputs
  change with ``self.training``; ℓ2 normalisation belongs to the evaluator.
"""

from __future__ import annotations

from typing import Literal

import torch
from torch import nn

from vireid.config import ModelConfig
from vireid.errors import ConfigError
from vireid.models.heads import BNNeck, IdentityClassifier
from vireid.models.outputs import ReIDOutput
from vireid.models.pooling import build_pooling
from vireid.models.resnet import STAGE_NAMES, WeightLoadReport, build_backbone
from vireid.models.stems import ModalityStems

FeatureKind = Literal["bn", "pooled"]


class AGWNet(nn.Module):
    """AGW: modality stems, a shared ResNet body with non-local blocks, GeM, BNNeck and an identity classifier.

    Args:
        cfg: the ``model`` section (backbone, pretrained, width, last_stride, stems, non-local, pooling,
            GeM p, BNNeck bias).
        num_classes: number of training identities; 0 builds no classifier (``logits`` is then ``None``).

    Attributes:
        feature_dim: C, the dimension of ``pooled``, ``bn`` and of the retrieval embedding.
        load_report: what loading the pretrained weights did (``None`` for random init).

    Shapes: ``images`` (B, 3, H, W); ``modality`` (B,) int64 with 0 visible and 1 infrared (or one int).
    """

    def __init__(self, cfg: ModelConfig, num_classes: int):
        super().__init__()
        if num_classes < 0:
            raise ConfigError(f"num_classes={num_classes} must be >= 0 (0 = no classifier).")
        backbone = build_backbone(cfg)
        self.stems = ModalityStems(backbone.stem, per_modality=cfg.stems == "per_modality")
        # The stages are taken over from the backbone; the backbone object itself is dropped so that its
        # stem is not registered twice.
        self.layer1 = backbone.layer1
        self.layer2 = backbone.layer2
        self.layer3 = backbone.layer3
        self.layer4 = backbone.layer4
        self.feature_dim = backbone.out_channels
        self.pool = build_pooling(cfg.pooling, p=cfg.gem_p, learnable=cfg.gem_learnable)
        self.bnneck = BNNeck(self.feature_dim, bias_frozen=cfg.bnneck_bias_frozen)
        self.classifier: IdentityClassifier | None = None
        self.reset_classifier(num_classes)
        self.load_report: WeightLoadReport | None = backbone.load_report

    # ---- timm-like contract ------------------------------------------------------------------------------

    @property
    def num_classes(self) -> int:
        return 0 if self.classifier is None else self.classifier.out_features

    def reset_classifier(self, num_classes: int) -> None:
        """Replace the identity classifier by a freshly initialised one (0 removes it)."""
        self.classifier = IdentityClassifier(self.feature_dim, num_classes) if num_classes > 0 else None

    def forward_features(self, images: torch.Tensor, modality: torch.Tensor | int | None) -> torch.Tensor:
        """(B, 3, H, W) -> the last feature map (B, C, H/16, W/16) with last stride 1 (H/32 with 2)."""
        x = self.stems(images, modality)
        for name in STAGE_NAMES:
            x = getattr(self, name)(x)
        return x

    def forward_head(self, feature_map: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        """Feature map -> logits (B, N); with ``pre_logits`` the BNNeck feature (B, C) instead."""
        bn = self.bnneck(self.pool(feature_map).flatten(1))
        if pre_logits:
            return bn
        if self.classifier is None:
            raise ConfigError("this network has no classifier (num_classes=0).", fix="call reset_classifier(n).")
        return self.classifier(bn)

    # ---- training and retrieval ------------------------------------------------------------------------

    def forward(self, images: torch.Tensor, modality: torch.Tensor | int | None) -> ReIDOutput:
        """Training forward: every tensor the losses need, whatever the module's mode."""
        pooled = self.pool(self.forward_features(images, modality)).flatten(1)
        bn = self.bnneck(pooled)
        logits = self.classifier(bn) if self.classifier is not None else None
        return ReIDOutput(pooled=pooled, bn=bn, logits=logits)

    def extract(
        self, images: torch.Tensor, modality: torch.Tensor | int | None, feature: FeatureKind = "bn"
    ) -> torch.Tensor:
        """Retrieval embedding (B, C): ``bn`` (BNNeck output, AGW's "fc") or ``pooled`` (AGW's "pool").

        Computes only what the embedding needs (no classifier) and does not normalise. Call it in eval mode
        (BatchNorm running statistics); the module's mode is the caller's business, as with any nn.Module.
        """
        if feature not in ("bn", "pooled"):
            raise ConfigError(f"eval.feature='{feature}' is not 'bn' or 'pooled'.")
        pooled = self.pool(self.forward_features(images, modality)).flatten(1)
        return self.bnneck(pooled) if feature == "bn" else pooled

    def param_groups(self) -> dict[str, list[nn.Parameter]]:
        """Trainable parameters split for the optimiser (method-baseline.md section 5).

        ``head``: BNNeck and classifier, trained at the base learning rate. ``backbone``: everything else
        (stems, layer1-4, non-local blocks, and GeM's p when learnable), trained at ``optim.backbone_lr_mult``
        times the base rate. AGW has no learnable p; vireid puts it with the backbone, following the release
        rule that only the BNNeck and classifier run at the base rate. Frozen parameters are left out.
        """
        head_ids = {id(p) for m in (self.bnneck, self.classifier) if m is not None for p in m.parameters()}
        groups: dict[str, list[nn.Parameter]] = {"backbone": [], "head": []}
        for param in self.parameters():
            if param.requires_grad:
                groups["head" if id(param) in head_ids else "backbone"].append(param)
        return groups


class ExtractWrapper(nn.Module):
    """``images -> model.extract(images, modality, feature)`` with the modality fixed: a single-input module
    for ``torch.jit.trace`` and ONNX export. Export one wrapper per modality for a two-stem network (the two
    graphs share every layer after the stem).
    """

    def __init__(self, model: nn.Module, modality: int, feature: FeatureKind = "bn"):
        super().__init__()
        self.model = model
        self.modality = int(modality)
        self.feature: FeatureKind = feature

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.model.extract(images, self.modality, self.feature)  # type: ignore[operator]
