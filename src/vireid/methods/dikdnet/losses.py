"""DIKDNet losses over side outputs: the task loss, IKDM and its diagnostics, CKDM (method-dikdnet.md
5.3-5.5)."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from vireid.losses.feature_kd import (
    boundary_constrained_distill,
    relation_hinge_kl,
    representation_distill,
    similarity_relation_kl,
)
from vireid.losses.text_matching import info_nce, similarity_distribution_matching
from vireid.methods.dikdnet.config import CKDMConfig, IKDMConfig, TaskLossConfig
from vireid.methods.dikdnet.networks import SideOutput


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
