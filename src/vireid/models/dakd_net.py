"""The DAKD / MCE network: a single-stream AGW ResNet with learnable GeM (method-dakd.md sections 2.1 and 3.1).

    images -> one shared stem -> layer1..layer4 (non-local blocks in layer2/3) -> GeM (learnable p)
           -> pooled -> BNNeck -> bn [-> bias-free classifier -> logits, only when a CE loss is used]

It is :class:`~vireid.models.agw.AGWNet` with DAKD's defaults (``model.stems: shared``,
``model.gem_learnable: true``; see :class:`DAKDModelConfig`) plus two options:

* *per-modality BatchNorm passes* (training). The DAKD release runs the student once on the visible images
  and once on the infrared images, so every BatchNorm layer normalises each modality with its own batch
  statistics; MCE (the teacher recipe) runs all views in one pass. :meth:`DAKDNet.forward` does either
  inside one module call. Doing both passes inside one call matters under DDP: calling a DDP-wrapped module
  twice before one backward is not supported, while one call that uses each parameter twice is.
* *per-modality running statistics* (``modality_running_stats``, DAKD's ``student.bn: per_modality``). In
  the release both passes update the same running buffers, so evaluation normalises each modality with
  statistics mixed across the two, unlike training. [reconstruction] With this option each modality keeps
  its own running mean and variance (the affine parameters stay shared) and :meth:`DAKDNet.extract`
  normalises each modality with its own.

Retrieval (:meth:`DAKDNet.extract`) is the BNNeck feature in eval mode; the evaluator (and the DAKD teacher
wrapper) apply the ℓ2 normalisation that the release's eval-mode forward applies.
"""

from __future__ import annotations

import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Literal

import torch
from torch import nn
from torch.nn.modules.batchnorm import _BatchNorm

from vireid.config import ModelConfig
from vireid.errors import ConfigError, DataError
from vireid.models.agw import AGWNet, FeatureKind
from vireid.models.outputs import ReIDOutput
from vireid.models.stems import INFRARED, VISIBLE


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


class ModalityRunningStatistics(nn.Module):
    """The running mean, variance and batch count of one BatchNorm layer, kept for one modality."""

    def __init__(self, bn: _BatchNorm):
        super().__init__()
        self.register_buffer("running_mean", bn.running_mean.detach().clone())
        self.register_buffer("running_var", bn.running_var.detach().clone())
        self.register_buffer("num_batches_tracked", bn.num_batches_tracked.detach().clone())


class DAKDNet(AGWNet):
    """Single-stream AGW network of DAKD and MCE; optional per-modality BatchNorm passes and statistics.

    Args:
        cfg: the ``model`` section (normally a :class:`DAKDModelConfig`).
        num_classes: training identities for the optional bias-free identity classifier; 0 (DAKD's default,
            no CE loss, and MCE, which classifies against memories) builds none and ``logits`` is ``None``.
        modality_running_stats: keep one set of BatchNorm running statistics per modality (DAKD's
            ``student.bn: per_modality``). Every BatchNorm layer's own buffers then hold the *visible*
            statistics and ``infrared_bn_stats.<layer path>`` the *infrared* ones (initialised as copies of
            the layer's buffers, e.g. the ImageNet statistics); both share the affine parameters. Training
            passes update only the statistics of their modality, and :meth:`extract` normalises each modality
            with its own. Off (MCE, ``student.bn: joint | per_modality_batch``): one set shared by both
            modalities, as any BatchNorm network.

    Shapes: ``images`` (B, 3, H, W); ``modality`` (B,) int64 (0 visible, 1 infrared) or one int; every
    output field has B rows in the input order.
    """

    def __init__(self, cfg: ModelConfig, num_classes: int, *, modality_running_stats: bool = False):
        super().__init__(cfg, num_classes)
        self.modality_running_stats = bool(modality_running_stats)
        self._bn_paths: tuple[str, ...] = ()
        if self.modality_running_stats:
            layers = [(name, m) for name, m in self.named_modules() if isinstance(m, _BatchNorm)]
            missing = [name for name, m in layers if not m.track_running_stats]
            if missing:
                raise ConfigError(f"per-modality running statistics need tracked BatchNorm statistics in {missing}.")
            self._bn_paths = tuple(name for name, _ in layers)
            self.infrared_bn_stats = nn.Module()
            for name, bn in layers:
                _attach(self.infrared_bn_stats, name, ModalityRunningStatistics(bn))
            self.register_load_state_dict_pre_hook(_shared_statistics_for_both_modalities)

    # ---- per-modality running statistics -----------------------------------------------------------------

    @contextmanager
    def modality_statistics(self, modality: int) -> Iterator[None]:
        """Within this block every BatchNorm layer uses (and, in training mode, updates) the running
        statistics of ``modality`` (0 visible, 1 infrared). A no-op without ``modality_running_stats``.

        The infrared statistics are swapped in by reference, not copied, so training-mode updates land in
        ``infrared_bn_stats`` directly and graphs built inside the block keep valid inputs. The layers are
        looked up by path on every call, so BatchNorm layers replaced after construction (SyncBatchNorm under
        DDP) are handled as well.
        """
        if not self.modality_running_stats or int(modality) == VISIBLE:
            yield
            return
        if int(modality) != INFRARED:
            raise DataError(f"modality {modality!r} is not 0 (visible) or 1 (infrared).")
        swapped = []
        try:
            for path in self._bn_paths:
                bn = self.get_submodule(path)
                own = self.infrared_bn_stats.get_submodule(path)
                swapped.append((bn, (bn.running_mean, bn.running_var, bn.num_batches_tracked)))
                bn.running_mean, bn.running_var = own.running_mean, own.running_var
                bn.num_batches_tracked = own.num_batches_tracked
            yield
        finally:
            for bn, (mean, var, count) in swapped:
                bn.running_mean, bn.running_var, bn.num_batches_tracked = mean, var, count

    def fill_infrared_statistics(self, state_dict: dict[str, torch.Tensor], prefix: str = "") -> int:
        """Add ``infrared_bn_stats`` entries to a state dict that holds one set of BatchNorm running
        statistics (a ``joint`` network, an MCE teacher), copied from that set; returns how many were added.

        Used by ``student.init: teacher`` and by the load hook for weights without per-modality statistics.
        Nothing is added when the state dict already has infrared statistics or this network keeps none.
        """
        bank = prefix + "infrared_bn_stats."
        if not self.modality_running_stats or any(key.startswith(bank) for key in state_dict):
            return 0
        added = 0
        for path in self._bn_paths:
            for stat in ("running_mean", "running_var", "num_batches_tracked"):
                shared = f"{prefix}{path}.{stat}"
                if shared in state_dict:
                    state_dict[f"{bank}{path}.{stat}"] = state_dict[shared]
                    added += 1
        return added

    def _one_modality(self, modality: torch.Tensor | int | None) -> int | None:
        """The single modality of a batch, or ``None`` when its rows mix both."""
        if isinstance(modality, torch.Tensor):
            values = modality.unique()
            return int(values[0]) if values.numel() == 1 else None
        if modality is None:
            if self.modality_running_stats:
                raise DataError(
                    "this network keeps BatchNorm running statistics per modality (student.bn=per_modality) "
                    "but no modality was given.",
                    fix="pass the batch's modality tensor (0 visible, 1 infrared), or an int for a one-modality batch.",
                )
            return VISIBLE
        return int(modality)

    def _per_modality_rows(self, images: torch.Tensor, modality: torch.Tensor, run) -> list:
        """Run ``run(images_of_m, m)`` per modality group; returns (rows, result) pairs."""
        modality = modality.to(images.device)
        groups = [(m, torch.nonzero(modality == m).flatten()) for m in (VISIBLE, INFRARED)]
        groups = [(m, g) for m, g in groups if g.numel() > 0]
        if sum(g.numel() for _, g in groups) != images.shape[0]:
            raise DataError("modality values must be 0 (visible) or 1 (infrared) for per-modality BatchNorm passes.")
        return [(g, run(images[g], m)) for m, g in groups]

    # ---- training and retrieval ------------------------------------------------------------------------

    def forward(
        self,
        images: torch.Tensor,
        modality: torch.Tensor | int | None,
        *,
        per_modality_bn: bool = False,
    ) -> ReIDOutput:
        """Training forward. With ``per_modality_bn`` (implied by ``modality_running_stats``) the rows of
        each modality go through the network in their own pass (BatchNorm batch statistics per modality, as
        the DAKD release's two student forwards); rows come back in the input order. Running statistics are
        updated per modality with ``modality_running_stats``, otherwise the two passes update one shared set.
        """
        if not (per_modality_bn or self.modality_running_stats):  # MCE, student.bn=joint: a plain AGW pass
            return super().forward(images, modality)
        single = self._one_modality(modality)
        if single is not None:
            with self.modality_statistics(single):
                return super().forward(images, modality)

        def run(rows: torch.Tensor, m: int) -> ReIDOutput:
            with self.modality_statistics(m):
                return super(DAKDNet, self).forward(rows, m)

        parts = self._per_modality_rows(images, modality, run)
        inverse = torch.argsort(torch.cat([rows for rows, _ in parts]))

        def merge(name: str) -> torch.Tensor | None:
            values = [getattr(out, name) for _, out in parts]
            if values[0] is None:
                return None
            return torch.cat(values)[inverse]

        return ReIDOutput(pooled=merge("pooled"), bn=merge("bn"), logits=merge("logits"))

    def extract(
        self, images: torch.Tensor, modality: torch.Tensor | int | None, feature: FeatureKind = "bn"
    ) -> torch.Tensor:
        """Retrieval embedding (:meth:`AGWNet.extract`); with ``modality_running_stats`` each modality's rows
        are normalised with that modality's running statistics (one pass per modality present)."""
        if not self.modality_running_stats:
            return super().extract(images, modality, feature)
        single = self._one_modality(modality)
        if single is not None:
            with self.modality_statistics(single):
                return super().extract(images, single, feature)

        def run(rows: torch.Tensor, m: int) -> torch.Tensor:
            with self.modality_statistics(m):
                return super(DAKDNet, self).extract(rows, m, feature)

        parts = self._per_modality_rows(images, modality, run)
        inverse = torch.argsort(torch.cat([rows for rows, _ in parts]))
        return torch.cat([out for _, out in parts])[inverse]


def _attach(root: nn.Module, path: str, leaf: nn.Module) -> None:
    """Register ``leaf`` under ``root`` at the dotted ``path``, creating empty container modules on the way
    (so that its state-dict keys read ``infrared_bn_stats.<layer path>.running_mean``)."""
    *parents, name = path.split(".")
    node = root
    for part in parents:
        child = node._modules.get(part)
        if child is None:
            child = nn.Module()
            node.add_module(part, child)
        node = child
    node.add_module(name, leaf)


def _shared_statistics_for_both_modalities(module: DAKDNet, state_dict, prefix: str, *_args) -> None:
    """Load hook: a state dict with one set of BatchNorm running statistics (written before vireid kept
    them per modality, or by a ``joint`` / ``per_modality_batch`` network) fills both modalities' sets.

    That set is what such a network evaluated both modalities with, so the loaded model computes the same
    features it did; a warning says so, since the infrared statistics are then not the infrared ones.
    """
    if module.fill_infrared_statistics(state_dict, prefix):
        warnings.warn(
            "these weights hold one set of BatchNorm running statistics; both modalities use it (as the network "
            "that wrote them did). Retrain with student.bn=per_modality for per-modality statistics.",
            stacklevel=2,
        )
