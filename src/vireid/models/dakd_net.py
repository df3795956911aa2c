"""The DAKD / MCE network: a single-stream AGW ResNet with learnable GeM (method-dakd.md sections 2.1 and 3.1).

    images -> one shared stem -> layer1..layer4 (non-local blocks in layer2/3) -> GeM (learnable p)
           -> pooled -> BNNeck -> bn [-> bias-free classifier -> logits, only when a CE loss is used]

It is :class:`~vireid.models.agw.AGWNet` with DAKD's defaults (``model.stems: shared``,
``model.gem_learnable: true``; see :class:`DAKDModelConfig`) plus one training option: *per-modality
BatchNorm statistics*. The DAKD release runs the student once on the visible images and once on the
infrared images, so every BatchNorm layer normalises each modality with its own batch statistics; MCE
(the teacher recipe) runs all views in one pass. :meth:`DAKDNet.forward` does either inside one module
call. Doing both passes inside one call matters under DDP: calling a DDP-wrapped module twice before one
backward is not supported, while one call that uses each parameter twice is.

Retrieval (:meth:`~vireid.models.agw.AGWNet.extract`) is unchanged: the BNNeck feature in eval mode; the
evaluator (and the DAKD teacher wrapper) apply the ℓ2 normalisation that the release's eval-mode forward
applies.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

import torch

from vireid.config import ModelConfig
from vireid.errors import DataError
from vireid.models.agw import AGWNet
from vireid.models.outputs import ReIDOutput


@dataclass
class DAKDModelConfig(ModelConfig):
    """``model`` section of the DAKD and MCE configs: :class:`~vireid.config.ModelConfig` with DAKD's defaults.

    One ImageNet ResNet-50 shared by both modalities (no modality stems), last stride 1, AGW non-local
    blocks (layer2 blocks 2-3, layer3 blocks 3-5, C' = 1), GeM with a learnable p initialised at 3, and a
    BNNeck with a frozen zero bias (method-dakd.md section 2.1). [release code]
    """

    stems: Literal["per_modality", "shared"] = "shared"
    gem_learnable: bool = True
    nl_layer2: list[int] = field(default_factory=lambda: [2, 3])
    nl_layer3: list[int] = field(default_factory=lambda: [3, 4, 5])


class DAKDNet(AGWNet):
    """Single-stream AGW network of DAKD and MCE; optional per-modality BatchNorm passes in training.

    Args:
        cfg: the ``model`` section (normally a :class:`DAKDModelConfig`).
        num_classes: training identities for the optional bias-free identity classifier; 0 (DAKD's default,
            no CE loss, and MCE, which classifies against memories) builds none and ``logits`` is ``None``.

    Shapes: ``images`` (B, 3, H, W); ``modality`` (B,) int64 (0 visible, 1 infrared) or one int; every
    output field has B rows in the input order.
    """

    def forward(
        self,
        images: torch.Tensor,
        modality: torch.Tensor | int | None,
        *,
        per_modality_bn: bool = False,
    ) -> ReIDOutput:
        """Training forward. With ``per_modality_bn`` the rows of each modality go through the network in
        their own pass (BatchNorm batch statistics and running-statistic updates per modality, as the DAKD
        release's two student forwards); rows come back in the input order.
        """
        if not per_modality_bn or not isinstance(modality, torch.Tensor):
            return super().forward(images, modality)
        modality = modality.to(images.device)
        groups = [torch.nonzero(modality == m).flatten() for m in (0, 1)]
        groups = [g for g in groups if g.numel() > 0]
        if len(groups) == 1:
            return super().forward(images, modality)
        parts = [super(DAKDNet, self).forward(images[g], int(modality[g[0]])) for g in groups]
        order = torch.cat(groups)
        if order.numel() != images.shape[0]:
            raise DataError("modality values must be 0 (visible) or 1 (infrared) for per-modality BatchNorm passes.")
        inverse = torch.argsort(order)

        def merge(name: str) -> torch.Tensor | None:
            values = [getattr(p, name) for p in parts]
            if values[0] is None:
                return None
            return torch.cat(values)[inverse]

        return ReIDOutput(pooled=merge("pooled"), bn=merge("bn"), logits=merge("logits"))
