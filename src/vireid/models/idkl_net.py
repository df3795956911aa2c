"""IDKL's dual-stream network (method-idkl.md sections 2, 3 and 7.1-7.2), built on one ResNet.

    images, modality -> stem(s) -> layer1 -> layer2 -+-> branch_sh (layer3, layer4) -> F_sh -> GeM -> f_sh
                                                    |      -> BN_sh -> bn_sh -> C_sh -> logits
                                                    |                        -> D_sh -> modality_logits_sh
                                                    +-> branch_sp (layer3, layer4) -> F -> purifier -> X_sp
                                                           -> GeM -> f_sp -> BN_sp -> C_sp -> logits_sp
                                                                                   -> D_sp -> modality_logits_sp

The shared branch (``branch_sh``) is the retrieval path; the specific branch (``branch_sp``) and the
purifier exist only for training: they hold the modality-specific knowledge that the losses transfer into
the shared feature. :meth:`IDKLNet.extract` therefore runs stem -> layer1-2 -> branch_sh -> GeM -> BN_sh and
nothing else.

Differences from the public release, all deliberate [reconstruction]:

* The release builds three ImageNet ResNet-50s and uses the front of one and the back of the two others
  (74.97 M parameters, 25.48 M of which never receive a gradient). Here one ResNet is built; layer3 and
  layer4 are deep-copied so both branches start from the same pretrained weights. No unused layer exists.
* The release computes the specific branch at test time and throws it away; ``extract`` never runs it.
* ``flatten(1)`` instead of ``squeeze()``: the release returns logits for a batch of one image.
* The purifier's InstanceNorm keeps no running statistics (the branch never runs in eval mode), and the
  release's unused ``special_att`` gate is not built.
* Options the release does not have: ``model.specific_branch: per_modality`` (one specific branch per
  modality, routed by the ``modality`` field) and ``model.stems: per_modality`` (AGW's two stems).
* Heads reuse vireid's AGW-family blocks (BNNeck with gamma ~ N(1, 0.01) and a frozen zero bias; identity
  classifiers C_sh and C_sp with weights ~ N(0, 0.001)); the release keeps PyTorch's default initialisation
  for them. C_ent (the entropy-margin classifier) keeps PyTorch's default, as the release: the AGW
  initialisation makes L_ent inert at the start.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass
from typing import Literal

import torch
from torch import nn

from vireid.config import ModelConfig, bounded
from vireid.errors import ConfigError
from vireid.models.heads import BNNeck, IdentityClassifier
from vireid.models.pooling import AvgPool, build_pooling
from vireid.models.resnet import WeightLoadReport, build_backbone
from vireid.models.stems import ModalityStems

FeatureKind = Literal["bn", "pooled"]


@dataclass
class IDKLModelConfig(ModelConfig):
    """The ``model`` section of an IDKL run: the ResNet options plus IDKL's branch and head options.

    Defaults follow the release: one shared stem, no non-local blocks, one specific branch for both
    modalities, GeM with p = 3, last stride 1.
    """

    stems: Literal["per_modality", "shared"] = "shared"
    """``shared`` (release): one stem for both modalities; ``per_modality``: AGW's two stems."""
    non_local: bool = False
    specific_branch: Literal["shared_weights", "per_modality"] = "shared_weights"
    """``shared_weights`` (release): one specific layer3-4 for both modalities, specificity comes only from
    the losses; ``per_modality``: one specific layer3-4 per modality, rows routed by their modality."""
    discriminator_hidden: int = bounded(100, ge=1)
    discriminator_dropout: float = bounded(0.5, ge=0.0, lt=1.0)


class DeepBranch(nn.Module):
    """layer3 followed by layer4 of a ResNet: (B, C2, H/8, W/8) -> (B, C4, H/16, W/16) with last stride 1."""

    def __init__(self, layer3: nn.Module, layer4: nn.Module):
        super().__init__()
        self.layer3 = layer3
        self.layer4 = layer4

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.layer4(self.layer3(x))


class PositionGate(nn.Module):
    """G(X) = sigmoid(W2 ReLU(W1 X)) at every position: 1x1 convolutions without bias, (B, C, H, W) -> same.

    ``W1``: C -> C/reduction, ``W2``: C/reduction -> C. Unlike a squeeze-excitation gate there is no pooling:
    the gate is a per-position, per-channel mask in (0, 1), as in the release's ``Mask``.
    """

    def __init__(self, channels: int, reduction: int = 16):
        super().__init__()
        if reduction < 1 or channels // reduction < 1:
            raise ConfigError(
                f"purifier.gate_reduction={reduction} leaves no hidden channel for {channels} channels.",
                fix=f"use a reduction between 1 and {channels}.",
            )
        hidden = channels // reduction
        self.reduce = nn.Conv2d(channels, hidden, kernel_size=1, bias=False)
        self.relu = nn.ReLU(inplace=True)
        self.expand = nn.Conv2d(hidden, channels, kernel_size=1, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.sigmoid(self.expand(self.relu(self.reduce(x))))


@dataclass
class PurifiedMaps:
    """The maps of the IN-guided information purifier (method-idkl.md section 3), all (B, C, H, W).

    Attributes:
        feature: F, the specific branch's layer4 map.
        normalized: F_in = IN(F).
        feature_gated: F' = M_f * F with M_f = G_f(F).
        normalized_gated: F_in' = M_in * F_in with M_in = G_in(F_in).
        purified: X_sp = M_in * F' + M_f * F_in' = M_in * M_f * (F + F_in).
    """

    feature: torch.Tensor
    normalized: torch.Tensor
    feature_gated: torch.Tensor
    normalized_gated: torch.Tensor
    purified: torch.Tensor


class InformationPurifier(nn.Module):
    """IN-guided information purifier: removes modality style from the specific map while gating it.

    Instance normalisation strips per-image channel statistics (largely modality style); two position gates
    decide, per position and channel, how much of the normalised and of the raw map to keep. The entropy
    margin and centroid gap losses (in ``vireid.methods.idkl``) train the gates to keep identity
    information (F' must not be less certain about the identity than F) while reducing the modality gap
    (F_in' must not have a larger visible/infrared centroid gap than F_in).

    The InstanceNorm is affine and keeps no running statistics: this branch only runs in training.
    """

    def __init__(self, channels: int, reduction: int = 16):
        super().__init__()
        self.instance_norm = nn.InstanceNorm2d(channels, affine=True, track_running_stats=False)
        self.gate_in = PositionGate(channels, reduction)
        self.gate_f = PositionGate(channels, reduction)

    def forward(self, feature: torch.Tensor) -> PurifiedMaps:
        normalized = self.instance_norm(feature)
        mask_in = self.gate_in(normalized)
        mask_f = self.gate_f(feature)
        feature_gated = mask_f * feature
        normalized_gated = mask_in * normalized
        purified = mask_in * feature_gated + mask_f * normalized_gated
        return PurifiedMaps(feature, normalized, feature_gated, normalized_gated, purified)


class ModalityDiscriminator(nn.Sequential):
    """Visible/infrared classifier on a (B, C) feature: Linear -> BN -> ReLU -> Dropout, twice, -> Linear(2).

    (B, C) -> (B, 2) logits, class 0 visible and 1 infrared (the release's ``Discrimination``).
    """

    def __init__(self, in_features: int, hidden: int = 100, dropout: float = 0.5):
        if hidden < 1 or not 0.0 <= dropout < 1.0:
            raise ConfigError(
                f"model.discriminator_hidden={hidden} / discriminator_dropout={dropout} are invalid.",
                fix="use a positive hidden width and a dropout in [0, 1).",
            )
        super().__init__(
            nn.Linear(in_features, hidden),
            nn.BatchNorm1d(hidden),
            nn.ReLU(inplace=True),
            nn.Dropout(dropout),
            nn.Linear(hidden, hidden),
            nn.BatchNorm1d(hidden),
            nn.ReLU(inplace=True),
            nn.Dropout(dropout),
            nn.Linear(hidden, 2),
        )


class _ReverseGradient(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x: torch.Tensor, strength: float) -> torch.Tensor:
        ctx.strength = strength
        return x.view_as(x)

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        return -ctx.strength * grad, None


def reverse_gradient(x: torch.Tensor, strength: float = 1.0) -> torch.Tensor:
    """Identity in the forward pass; multiplies the gradient by ``-strength`` in the backward pass (GRL)."""
    return _ReverseGradient.apply(x, float(strength))


@dataclass
class IDKLOutput:
    """Everything IDKL's losses need from one training forward. Every field is per row (B, ...).

    Shapes: C = ``feature_dim`` (2048 for ResNet-50), N = training identities.

    Attributes:
        f_sh: (B, C) GeM of the shared map, before BN_sh (triplet, TGSA).
        f_sp: (B, C) GeM of the purified specific map X_sp, before BN_sp (triplet, TGSA).
        bn_sh: (B, C) BN_sh(f_sh), the retrieval embedding.
        bn_sp: (B, C) BN_sp(f_sp).
        logits: (B, N) C_sh(bn_sh), the shared identity logits z.
        logits_sp: (B, N) C_sp(bn_sp), the specific identity logits z_sp.
        modality_logits_sh: (B, 2) D_sh(bn_sh) (through a gradient reversal when ``confusion.mode=grl``).
        modality_logits_sp: (B, 2) D_sp(bn_sp).
        entropy_logits: (B, N) C_ent(g(F)), identity logits of the raw specific map.
        entropy_logits_gated: (B, N) C_ent(g(F')), identity logits of the gated specific map.
        centroid_in: (B, C) pooled F_in (``purifier.centroid_pool``).
        centroid_in_gated: (B, C) pooled F_in'.
    """

    f_sh: torch.Tensor
    f_sp: torch.Tensor
    bn_sh: torch.Tensor
    bn_sp: torch.Tensor
    logits: torch.Tensor
    logits_sp: torch.Tensor
    modality_logits_sh: torch.Tensor
    modality_logits_sp: torch.Tensor
    entropy_logits: torch.Tensor
    entropy_logits_gated: torch.Tensor
    centroid_in: torch.Tensor
    centroid_in_gated: torch.Tensor

    @property
    def embedding(self) -> torch.Tensor:
        """The retrieval embedding BN_sh(f_sh) (what :meth:`IDKLNet.extract` returns in eval mode)."""
        return self.bn_sh


class IDKLNet(nn.Module):
    """IDKL's dual-stream network: shared stem and layers 1-2, a shared and a specific layer3-4 branch.

    Args:
        cfg: the ``model`` section (:class:`IDKLModelConfig`).
        num_classes: number of training identities (N >= 1; IDKL's losses need the classifiers).
        gate_reduction: channel reduction of the purifier's gates (``purifier.gate_reduction``, 16).
        centroid_pool: pooling of F_in / F_in' for the centroid gap: ``gem`` (release; the clamp drops the
            negative half of the zero-mean IN output) or ``avg``.
        shared_discriminator_grl: gradient-reversal strength in front of D_sh (``confusion.mode=grl``);
            0 feeds D_sh directly (``uniform`` and ``release_pattern`` confusion).

    Attributes:
        feature_dim: C. load_report: what loading the pretrained weights did (``None`` for random init).

    Shapes: ``images`` (B, 3, H, W); ``modality`` (B,) int64, 0 visible and 1 infrared, or one int.
    """

    def __init__(
        self,
        cfg: IDKLModelConfig,
        num_classes: int,
        *,
        gate_reduction: int = 16,
        centroid_pool: Literal["gem", "avg"] = "gem",
        shared_discriminator_grl: float = 0.0,
    ):
        super().__init__()
        if num_classes < 1:
            raise ConfigError(f"IDKL needs identity classifiers, but num_classes={num_classes}.")
        if cfg.specific_branch not in ("shared_weights", "per_modality"):
            raise ConfigError(
                f"model.specific_branch='{cfg.specific_branch}' is unknown.", fix="use shared_weights or per_modality."
            )
        if centroid_pool not in ("gem", "avg"):
            raise ConfigError(f"purifier.centroid_pool='{centroid_pool}' is unknown.", fix="use gem or avg.")
        backbone = build_backbone(cfg)
        self.stems = ModalityStems(backbone.stem, per_modality=cfg.stems == "per_modality")
        self.layer1 = backbone.layer1
        self.layer2 = backbone.layer2
        # Both branches start from the same (pretrained) layer3-4; the backbone object itself is dropped so
        # that no module is registered twice and nothing unused survives.
        self.branch_sh = DeepBranch(backbone.layer3, backbone.layer4)
        specific = DeepBranch(copy.deepcopy(backbone.layer3), copy.deepcopy(backbone.layer4))
        # ModalityStems is a generic per-row router: one module for both modalities, or one per modality.
        self.branch_sp = ModalityStems(specific, per_modality=cfg.specific_branch == "per_modality")
        self.feature_dim = channels = backbone.out_channels
        self.pool = build_pooling(cfg.pooling, p=cfg.gem_p, learnable=cfg.gem_learnable)
        self.centroid_pool = self.pool if centroid_pool == "gem" else AvgPool()
        self.purifier = InformationPurifier(channels, gate_reduction)
        self.bn_sh = BNNeck(channels, bias_frozen=cfg.bnneck_bias_frozen)
        self.bn_sp = BNNeck(channels, bias_frozen=cfg.bnneck_bias_frozen)
        self.classifier_sh = IdentityClassifier(channels, num_classes)
        self.classifier_sp = IdentityClassifier(channels, num_classes)
        # C_ent keeps PyTorch's default Linear initialisation, as the release does (review fix, issue 14.4):
        # under N(0, 0.001) its logits are ~0, both softmaxes are near uniform where the entropy is at its
        # maximum, so L_ent and its gradient start at ~0 (W = 0 is a stationary point) and the entropy
        # margin never engages. C_sh and C_sp keep vireid's AGW initialisation (their CE drives them anyway).
        self.classifier_ent = nn.Linear(channels, num_classes, bias=False)
        self.discriminator_sh = ModalityDiscriminator(channels, cfg.discriminator_hidden, cfg.discriminator_dropout)
        self.discriminator_sp = ModalityDiscriminator(channels, cfg.discriminator_hidden, cfg.discriminator_dropout)
        self.shared_discriminator_grl = float(shared_discriminator_grl)
        self.load_report: WeightLoadReport | None = backbone.load_report

    @property
    def num_classes(self) -> int:
        return self.classifier_sh.out_features

    def forward_trunk(self, images: torch.Tensor, modality: torch.Tensor | int | None) -> torch.Tensor:
        """Stem(s), layer1, layer2: (B, 3, H, W) -> (B, C2, H/8, W/8), the input of both branches."""
        return self.layer2(self.layer1(self.stems(images, modality)))

    def forward(self, images: torch.Tensor, modality: torch.Tensor | int | None) -> IDKLOutput:
        """Training forward: both branches, the purifier and every head, whatever the module's mode."""
        if modality is None and self.branch_sp.per_modality:
            raise ConfigError(
                "model.specific_branch=per_modality routes rows by modality, but no modality was given.",
                fix="pass the batch's modality tensor (0 visible, 1 infrared).",
            )
        trunk = self.forward_trunk(images, modality)
        f_sh = self.pool(self.branch_sh(trunk)).flatten(1)
        maps = self.purifier(self.branch_sp(trunk, modality))
        f_sp = self.pool(maps.purified).flatten(1)
        bn_sh = self.bn_sh(f_sh)
        bn_sp = self.bn_sp(f_sp)
        to_discriminator = bn_sh
        if self.shared_discriminator_grl:
            to_discriminator = reverse_gradient(bn_sh, self.shared_discriminator_grl)
        return IDKLOutput(
            f_sh=f_sh,
            f_sp=f_sp,
            bn_sh=bn_sh,
            bn_sp=bn_sp,
            logits=self.classifier_sh(bn_sh),
            logits_sp=self.classifier_sp(bn_sp),
            modality_logits_sh=self.discriminator_sh(to_discriminator),
            modality_logits_sp=self.discriminator_sp(bn_sp),
            entropy_logits=self.classifier_ent(self.pool(maps.feature).flatten(1)),
            entropy_logits_gated=self.classifier_ent(self.pool(maps.feature_gated).flatten(1)),
            centroid_in=self.centroid_pool(maps.normalized).flatten(1),
            centroid_in_gated=self.centroid_pool(maps.normalized_gated).flatten(1),
        )

    def extract(
        self, images: torch.Tensor, modality: torch.Tensor | int | None, feature: FeatureKind = "bn"
    ) -> torch.Tensor:
        """Retrieval embedding (B, C): ``bn`` = BN_sh(f_sh) (default) or ``pooled`` = f_sh.

        Runs only the shared path (stem -> layer1-2 -> branch_sh -> GeM -> BN_sh): the specific branch, the
        purifier and every head stay idle. No normalisation (the evaluator L2-normalises). Call in eval mode.
        """
        if feature not in ("bn", "pooled"):
            raise ConfigError(f"eval.feature='{feature}' is not 'bn' or 'pooled'.")
        pooled = self.pool(self.branch_sh(self.forward_trunk(images, modality))).flatten(1)
        return self.bn_sh(pooled) if feature == "bn" else pooled

    def inference_modules(self) -> list[nn.Module]:
        """The modules :meth:`extract` runs (the rest is training-only)."""
        return [self.stems, self.layer1, self.layer2, self.branch_sh, self.pool, self.bn_sh]

    def param_groups(self) -> dict[str, list[nn.Parameter]]:
        """``backbone``: stems, layer1-2 and both branches (pretrained; ``optim.backbone_lr_mult``); ``head``:
        BNNecks, classifiers, discriminators and the purifier (new). IDKL's configs use one rate for both
        (``backbone_lr_mult: 1``, as the release). Frozen parameters are left out.
        """
        backbone = (self.stems, self.layer1, self.layer2, self.branch_sh, self.branch_sp, self.pool)
        backbone_ids = {id(p) for m in backbone for p in m.parameters()}
        groups: dict[str, list[nn.Parameter]] = {"backbone": [], "head": []}
        for param in self.parameters():
            if param.requires_grad:
                groups["backbone" if id(param) in backbone_ids else "head"].append(param)
        return groups
