"""IDKL: Implicit Discriminative Knowledge Learning for VI-ReID (Ren & Zhang, CVPR 2024).

See ``../shared/specs/method-idkl.md`` (section 7 is what vireid builds) and ``docs/methods/idkl.md``. The
network is :class:`vireid.models.idkl_net.IDKLNet`; this module owns IDKL's config, its losses and the
objective that the engine optimises:

    L = w_tri (Tri(f_sh) + Tri(f_sp)) + CE(z, y) + CE(z_sp, y) + CE(D_sp, m)       supervision
      + w_ip (L_ent + L_cen)                                                      purifier (IP)
      + L_TGSA + L_CSA1 + L_CSA2                                                  transfer + alignment
      + L_conf                                                                    modality confusion

Every loss reads visible/infrared pairing and identity grouping from the batch's index fields
(:func:`pair_identities`), never from row positions, so the objective is invariant to any permutation of
the batch applied together with its fields, and no weight switches on the batch size: the release's two
regimes (batch 120 and anything else) are the presets ``configs/idkl/presets/idkl_release_120.yaml`` and
``idkl_release_other.yaml``, and the loader refuses a config whose regime does not match its batch
(:func:`check_release_regime`, ``tgsa.regime``).

The defaults and the reproduction configs are the release's behaviour (issue 14); vireid's alternatives
[reconstruction] are one switch away and collected in ``configs/idkl/*_vireid.yaml``: ``transfer.mode``
(mutual | distill), ``tgsa.logits`` (release | neg_distance), ``tgsa.cross`` (release | aligned),
``confusion.mode`` (release_pattern | uniform | grl). Every run prints and records its choices.
"""

from __future__ import annotations

import dataclasses
import functools
from dataclasses import dataclass, field
from typing import Any, Literal

import torch
import torch.nn.functional as F

from vireid.config import (
    AugConfig,
    DataConfig,
    OptimConfig,
    RunConfig,
    SamplerConfig,
    SchedConfig,
    TrainConfig,
    bounded,
)
from vireid.data.batch import CrossModalBatch
from vireid.errors import ConfigError, DataError
from vireid.losses import batch_hard_triplet, cross_entropy_ls, kl_div_temperature, pairwise_euclidean, symmetric_kl
from vireid.losses._precision import at_least_float32
from vireid.methods.base import ImageMethodBase, LossOutput, StepContext
from vireid.models.idkl_net import IDKLModelConfig, IDKLNet, IDKLOutput

# --------------------------------------------------------------------------------------------------------
# Configuration (method-idkl.md section 8)
# --------------------------------------------------------------------------------------------------------


@dataclass
class IDKLIdLossConfig:
    weight: float = bounded(1.0, ge=0.0)
    """Weight of CE(C_sh(BN_sh f_sh), y)."""
    label_smoothing: float = bounded(0.0, ge=0.0, lt=1.0)
    """Label smoothing of both identity CEs (shared and specific); 0 in the release."""


@dataclass
class IDKLTripletConfig:
    margin: float = bounded(1.3, ge=0.0)
    """Batch-hard triplet margin on the pre-BN features f_sh and f_sp (release: 1.3)."""
    weight_sh: float = bounded(1.0, ge=0.0)
    weight_sp: float = bounded(1.0, ge=0.0)


@dataclass
class SpecificSupervisionConfig:
    """L_sp = id_weight * CE(C_sp(BN_sp f_sp), y) + modality_weight * CE(D_sp(BN_sp f_sp), m)."""

    id_weight: float = bounded(1.0, ge=0.0)
    modality_weight: float = bounded(1.0, ge=0.0)


@dataclass
class IDKLLossConfig:
    id: IDKLIdLossConfig = field(default_factory=IDKLIdLossConfig)
    triplet: IDKLTripletConfig = field(default_factory=IDKLTripletConfig)
    specific: SpecificSupervisionConfig = field(default_factory=SpecificSupervisionConfig)


@dataclass
class PurifierConfig:
    """IN-guided information purifier (method-idkl.md sections 3 and 7.8)."""

    enabled: bool = True
    """Add w * (L_ent + L_cen). The purifier itself always shapes f_sp (it is part of the network)."""
    weight: float = bounded(0.1, ge=0.0)
    margin_entropy: float = bounded(0.0)
    """m_e of L_ent = mean exp(max(0, H(p') - H(p) + m_e)) - 1 (release: 0). Any finite value is allowed: a
    negative margin is a meaningful slack (gating may raise the entropy by up to -m_e before it costs
    anything), a positive one asks gating to lower it."""
    margin_centroid: float = bounded(0.0)
    """m_c of L_cen = mean max(0, gap(F_in') - gap(F_in) + m_c) (release: 0); any finite value, as m_e."""
    gate_reduction: int = bounded(16, ge=1)
    """Channel reduction of the two gates (2048 -> 128 for ResNet-50)."""
    centroid_pool: Literal["gem", "avg"] = "gem"
    """Pooling of F_in / F_in' for the centroid gap: ``gem`` (release; clamps the negative half) or ``avg``."""


@dataclass
class TGSAConfig:
    """Triplet graph-structure alignment (method-idkl.md sections 4 and 7.4-7.5)."""

    enabled: bool = True
    form: Literal["full", "reduced"] = "full"
    """``full``: intra = SKL(V,I) + SKL(V,X) + SKL(X,I); ``reduced``: intra = SKL(V,I) only."""
    inter_weight: float = bounded(0.6, ge=0.0)
    scale: float = bounded(1.0, ge=0.0)
    """L_TGSA = scale * (intra + inter_weight * inter)."""
    logits: Literal["neg_distance", "release"] = "release"
    """Row softmax over ``+D/tau`` (the release, the reproduction default) or over ``-D/tau``
    (``neg_distance``: near neighbours carry the mass; vireid's alternative, ``idkl/*_vireid.yaml``)."""
    tau: float = bounded(1.0, gt=0.0)
    cross: Literal["release", "aligned"] = "release"
    """TGSA's cross set X. ``release``: the visible rows of slots < P/2, then the infrared rows of slots < P/2,
    so row j >= n/2 of X (infrared, slot s - P/2) is compared with row j of V and I (slot s): another
    identity. ``aligned``: the visible rows of slots < P/2, then the infrared rows of slots >= P/2, so row j of
    X has the identity of row j of V and I (see :meth:`IdentityPairs.cross_rows`)."""
    regime: Literal["match_batch", "force"] = "match_batch"
    """``match_batch``: a config whose TGSA/CSA weights are one of the release's two regimes (the presets
    ``idkl_release_120`` / ``idkl_release_other``) must carry the one the release uses at its batch size, or it
    fails to load (:func:`check_release_regime`). ``force``: keep the weights at any batch size, deliberately."""


@dataclass
class CSAConfig:
    """Class-semantic alignment on identity logits (method-idkl.md section 4)."""

    per_sample: bool = True
    """CSA1: SKL over per-sample logit rows."""
    per_identity: bool = True
    """CSA2: SKL over (k, P*C) rows that concatenate the logits of the P identities of one instance index."""
    inter_weight: float = bounded(0.8, ge=0.0)
    """Weight of the specific-to-shared (inter) terms of CSA1 and CSA2; the intra term has weight 1."""


@dataclass
class TransferConfig:
    """How the inter (specific-to-shared) terms of TGSA, CSA1 and CSA2 move knowledge (section 7.6)."""

    mode: Literal["distill", "mutual"] = "mutual"
    """``mutual`` (release, the reproduction default): symmetric KL with gradients into both branches;
    ``distill`` (vireid's alternative): KL(sg(softmax(b_sp)) || softmax(a_sh)), only the shared side learns."""
    temperature: float = bounded(1.0, gt=0.0)
    """Inter-term logits are divided by T and the loss multiplied by T^2."""


@dataclass
class ConfusionConfig:
    """Modality confusion on the shared BNNeck feature through D_sh (section 7.7)."""

    mode: Literal["uniform", "release_pattern", "grl"] = "release_pattern"
    """``release_pattern`` (release, the reproduction default): the release's targets (true modality when the
    draw number slot * k + inst is even, the other one otherwise; :func:`release_confusion_targets`);
    ``uniform`` (vireid's alternative): CE against (1/2, 1/2); ``grl``: true modality through a gradient
    reversal."""
    weight: float = bounded(1.0, ge=0.0)
    grl_lambda: float = bounded(1.0, ge=0.0)
    """Gradient-reversal strength of ``mode: grl`` (1 in the spec); 0 passes no gradient to the encoder."""


@dataclass
class IDKLConfig(RunConfig):
    """An IDKL run. Defaults are the release's SYSU-MM01 recipe and switches (method-idkl.md sections 6 and 8;
    vireid's alternatives are the ``idkl/*_vireid.yaml`` variants)."""

    method: str = "idkl"
    data: DataConfig = field(default_factory=lambda: DataConfig(height=384, width=144))
    sampler: SamplerConfig = field(default_factory=lambda: SamplerConfig(P=12, K=5, epoch_length="idkl", mode="idkl"))
    aug: AugConfig = field(default_factory=lambda: AugConfig(preset="idkl", pad_fill=127))
    optim: OptimConfig = field(
        default_factory=lambda: OptimConfig(name="adam", lr=3.5e-4, weight_decay=5e-3, backbone_lr_mult=1.0)
    )
    sched: SchedConfig = field(
        default_factory=lambda: SchedConfig(name="multistep", warmup_epochs=0, milestones=[55, 95], gamma=0.1)
    )
    train: TrainConfig = field(default_factory=lambda: TrainConfig(epochs=160, seed=1))
    model: IDKLModelConfig = field(default_factory=IDKLModelConfig)
    loss: IDKLLossConfig = field(default_factory=IDKLLossConfig)
    purifier: PurifierConfig = field(default_factory=PurifierConfig)
    tgsa: TGSAConfig = field(default_factory=TGSAConfig)
    csa: CSAConfig = field(default_factory=CSAConfig)
    transfer: TransferConfig = field(default_factory=TransferConfig)
    confusion: ConfusionConfig = field(default_factory=ConfusionConfig)

    def check_loaded(self, source: str) -> None:
        """Called by :func:`vireid.config.load_config`: the release regime must match the batch size."""
        check_release_regime(self, source)


RELEASE_BATCH = 120
"""The one batch size at which the release uses its full weights (``bb = 120`` in its ``train_forward``)."""
RELEASE_REGIME_PRESETS = {True: "idkl_release_120", False: "idkl_release_other"}
"""The preset (``configs/idkl/presets/NAME.yaml``) of the release's regime, keyed by ``batch == 120``."""


def images_per_batch(cfg: IDKLConfig) -> int:
    """P identities x K draws x 2 modalities: what the release's ``feat.size(0)`` counts."""
    return 2 * cfg.sampler.P * cfg.sampler.K


def _regime_keys(cfg: IDKLConfig) -> list[str]:
    """The weight keys that the release's batch-size switch sets and that this config actually uses."""
    keys = ["tgsa.form", "tgsa.inter_weight", "tgsa.scale"] if cfg.tgsa.enabled else []
    if cfg.csa.per_sample or cfg.csa.per_identity:
        keys.append("csa.inter_weight")
    return keys


@functools.cache
def _preset_values(name: str) -> dict[str, Any]:
    """The dotted ``tgsa.*`` / ``csa.*`` values of a regime preset, read from its YAML (one source of truth)."""
    from vireid.config import packaged_configs, read_yaml

    data = read_yaml(packaged_configs() / "idkl" / "presets" / f"{name}.yaml")
    return {f"{section}.{key}": value for section in ("tgsa", "csa") for key, value in data[section].items()}


def release_regime(cfg: IDKLConfig) -> str | None:
    """The name of the release regime preset whose weights ``cfg`` carries, or ``None`` for weights of its own.

    Only the keys the config uses count (with TGSA off, the CSA weight alone decides, as for RegDB).
    """
    keys = _regime_keys(cfg)
    if not keys:
        return None
    for name in RELEASE_REGIME_PRESETS.values():
        preset = _preset_values(name)
        if all(_dotted(cfg, key) == preset[key] for key in keys):
            return name
    return None


def _dotted(cfg: Any, key: str) -> Any:
    for part in key.split("."):
        cfg = getattr(cfg, part)
    return cfg


def check_release_regime(cfg: IDKLConfig, source: str = "config") -> None:
    """Refuse a config that carries one release regime at the batch size where the release uses the other.

    The release switches its TGSA/CSA weights on ``batch == 120`` (method-idkl.md section 4); vireid makes them
    config values (the two presets) and checks at load time that a config which claims a release regime claims
    the right one, so that e.g. the batch-64 demo cannot silently run the batch-120 weights. Custom weights
    (neither preset) and ``tgsa.regime=force`` are not checked.
    """
    carried = release_regime(cfg)
    if carried is None or cfg.tgsa.regime == "force":
        return
    batch = images_per_batch(cfg)
    expected = RELEASE_REGIME_PRESETS[batch == RELEASE_BATCH]
    if carried == expected:
        return
    wanted = _preset_values(expected)
    overrides = " ".join(f"{key}={wanted[key]}" for key in _regime_keys(cfg))
    where = "exactly" if batch == RELEASE_BATCH else "any batch other than"
    raise ConfigError(
        f"{source}: sampler.P={cfg.sampler.P} x sampler.K={cfg.sampler.K} x 2 modalities = {batch} images per "
        f"batch, but the TGSA/CSA weights are the release's {carried} regime; at {where} {RELEASE_BATCH} images "
        f"the release uses {expected} (configs/idkl/presets/{expected}.yaml).",
        fix=f"set {overrides}, or tgsa.regime=force to keep these weights on purpose.",
    )


def regime_label(cfg: IDKLConfig) -> str:
    """How a run reports its weights: a preset name, ``custom``, or ``PRESET (forced at batch B)``."""
    carried = release_regime(cfg)
    if carried is None:
        return "custom"
    batch = images_per_batch(cfg)
    if RELEASE_REGIME_PRESETS[batch == RELEASE_BATCH] != carried:
        return f"{carried} (forced at batch {batch})"
    return carried


def check_config(cfg: IDKLConfig) -> None:
    """Reject IDKL settings that cannot work, naming the key and the fix."""
    if cfg.tgsa.enabled and cfg.tgsa.form == "full" and cfg.sampler.P % 2:
        raise ConfigError(
            f"tgsa.form=full builds its cross set from the first P/2 identity slots, but sampler.P={cfg.sampler.P} "
            "is odd.",
            fix="set sampler.P to an even number, or tgsa.form=reduced, or tgsa.enabled=false.",
        )
    if cfg.sampler.P < 2:
        raise ConfigError(f"IDKL needs at least 2 identities per batch, got sampler.P={cfg.sampler.P}.")
    for key, value in (("tgsa.tau", cfg.tgsa.tau), ("transfer.temperature", cfg.transfer.temperature)):
        if value <= 0:
            raise ConfigError(f"{key}={value} must be positive.")


def switches(cfg: IDKLConfig) -> dict[str, Any]:
    """The choices where vireid and the release differ, as every run prints and records them."""
    return {
        "transfer": cfg.transfer.mode,
        "transfer_temperature": cfg.transfer.temperature,
        "tgsa": f"{cfg.tgsa.form}" if cfg.tgsa.enabled else "off",
        "tgsa_logits": cfg.tgsa.logits,
        "tgsa_cross": cfg.tgsa.cross,
        "tgsa_regime": regime_label(cfg),
        "tgsa_tau": cfg.tgsa.tau,
        "tgsa_inter_weight": cfg.tgsa.inter_weight,
        "tgsa_scale": cfg.tgsa.scale,
        "csa_inter_weight": cfg.csa.inter_weight,
        "confusion": cfg.confusion.mode,
        "specific_branch": cfg.model.specific_branch,
        "stems": cfg.model.stems,
        "centroid_pool": cfg.purifier.centroid_pool,
    }


# --------------------------------------------------------------------------------------------------------
# Pairing and grouping from the batch's index fields (method-idkl.md section 7.3)
# --------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class IdentityPairs:
    """Visible/infrared pairing and identity grouping of a batch, read from its index fields.

    Attributes:
        vis, ir: (n,) row indices of the visible (view 0) and infrared rows, n = P * k, both in the order of
            (identity slot, instance): ``vis[j]`` and ``ir[j]`` come from the same sampler draw, and rows
            ``j*k .. j*k+k-1`` of each belong to slot j.
        num_slots: P, identities in the batch. per_slot: k, draws per identity (images per modality).
        row_slot, row_inst: (B,) slot and instance of every row of the batch (extra views included).
        slot_labels: (P,) identity label of each slot.
    """

    vis: torch.Tensor
    ir: torch.Tensor
    num_slots: int
    per_slot: int
    row_slot: torch.Tensor
    row_inst: torch.Tensor
    slot_labels: torch.Tensor

    def grouped(self, x: torch.Tensor, rows: torch.Tensor) -> torch.Tensor:
        """``x[rows]`` as (P, k, ...): slot-major, instance-minor."""
        return x[rows].reshape(self.num_slots, self.per_slot, *x.shape[1:])

    def cross_rows(self, cross: str = "release") -> torch.Tensor:
        """TGSA's cross set X, n = P * k rows, half visible and half infrared (``tgsa.cross``).

        ``release``: the visible rows of slots < P/2, then the infrared rows of slots < P/2 (the release's
        ``[first half of V; first half of I]``). Row j >= n/2 of X is then an infrared image of slot
        s - P/2 where row j of V and I belongs to slot s: TGSA compares the neighbourhoods of two different
        identities there. ``aligned``: the visible rows of slots < P/2, then the infrared rows of slots >= P/2,
        so row j of X has the slot (identity) and instance of row j of V and of I, and the row-by-row
        comparison of D(V), D(X), D(I) compares one identity's neighbourhoods across modalities.
        """
        if self.num_slots % 2:
            raise ConfigError(
                f"TGSA's cross set takes the first P/2 identity slots, but the batch has P={self.num_slots}.",
                fix="use an even sampler.P, or tgsa.form=reduced.",
            )
        first = self.row_slot[self.vis] < self.num_slots // 2
        if cross == "release":
            return torch.cat([self.vis[first], self.ir[first]])
        if cross == "aligned":
            return torch.cat([self.vis[first], self.ir[~first]])
        raise ConfigError(f"tgsa.cross='{cross}' is unknown.", fix="use release or aligned.")


def pair_identities(batch: CrossModalBatch) -> IdentityPairs:
    """Pair visible and infrared rows by sampler draw and group them by identity slot.

    Rows are ordered by ``pair_index``, which the sampler defines as the global position of a draw,
    ``(batch * P + slot) * K + inst``. On one process this is exactly the (slot, inst) order of
    :meth:`CrossModalBatch.pair_rows`; under DDP the engine's gathered batch carries each rank's *local*
    ``slot``, so ordering by ``pair_index`` is what keeps identities contiguous across ranks.

    Raises:
        DataError: the two modalities do not hold the same draws (the message names the identity), an
            identity has a different number of draws than the others, or one identity fills two slots.
    """
    label, modality, view, pair_index = batch.label, batch.modality, batch.view, batch.pair_index
    vis = torch.nonzero((modality == 0) & (view == 0)).flatten()
    ir = torch.nonzero((modality == 1) & (view == 0)).flatten()
    vis = vis[torch.argsort(pair_index[vis])]
    ir = ir[torch.argsort(pair_index[ir])]
    if vis.numel() != ir.numel() or not torch.equal(pair_index[vis], pair_index[ir]):
        _raise_unequal_modalities(label[vis], label[ir])
    if not torch.equal(label[vis], label[ir]):
        j = int(torch.nonzero(label[vis] != label[ir])[0])
        raise DataError(
            f"draw {int(pair_index[vis[j]])} pairs a visible row of identity {int(label[vis[j]])} with an infrared "
            f"row of identity {int(label[ir[j]])}.",
            fix="build batches with vireid's CrossModalityIdentitySampler, which pairs rows of one identity.",
        )
    runs, counts = torch.unique_consecutive(label[vis], return_counts=True)
    if runs.numel() == 0:
        raise DataError("the batch has no visible/infrared pair; IDKL needs both modalities of every identity.")
    if torch.unique(runs).numel() != runs.numel():
        raise DataError(
            "an identity fills more than one slot of the batch; IDKL groups rows by identity.",
            fix="sample P distinct identities per batch (vireid's samplers do).",
        )
    k = int(counts[0])
    if not bool((counts == k).all()):
        j = int(torch.nonzero(counts != k)[0])
        raise DataError(
            f"identity {int(runs[j])} has {int(counts[j])} visible/infrared pairs in the batch but identity "
            f"{int(runs[0])} has {k}; IDKL's per-identity groups need the same number for every identity.",
            fix="use vireid's CrossModalityIdentitySampler (K draws per identity).",
        )
    sorted_index = pair_index[vis]
    position = torch.searchsorted(sorted_index, pair_index).clamp(max=sorted_index.numel() - 1)
    if not torch.equal(sorted_index[position], pair_index):
        raise DataError("a row's pair_index matches no visible/infrared draw of the batch.")
    return IdentityPairs(
        vis=vis,
        ir=ir,
        num_slots=int(runs.numel()),
        per_slot=k,
        row_slot=torch.div(position, k, rounding_mode="floor"),
        row_inst=position % k,
        slot_labels=runs,
    )


def _raise_unequal_modalities(vis_labels: torch.Tensor, ir_labels: torch.Tensor) -> None:
    ids = sorted(set(vis_labels.tolist()) | set(ir_labels.tolist()))
    for ident in ids:
        n_vis, n_ir = int((vis_labels == ident).sum()), int((ir_labels == ident).sum())
        if n_vis != n_ir:
            raise DataError(
                f"identity {ident} has {n_vis} visible and {n_ir} infrared rows in the batch; IDKL pairs every "
                "visible row with an infrared row of the same draw.",
                fix="build batches with vireid's CrossModalityIdentitySampler (equal draws per modality).",
            )
    raise DataError(
        "the visible and infrared rows of the batch come from different sampler draws (pair_index differs).",
        fix="build batches with vireid's CrossModalityIdentitySampler.",
    )


# --------------------------------------------------------------------------------------------------------
# Losses
# --------------------------------------------------------------------------------------------------------


def transfer_term(shared: torch.Tensor, specific: torch.Tensor, cfg: TransferConfig) -> torch.Tensor:
    """One inter (specific -> shared) term on (n, C) logit rows.

    ``distill``: T^2 KL(sg(softmax(specific/T)) || softmax(shared/T)): only ``shared`` receives gradient.
    ``mutual`` (release): T^2 [KL(s(specific) || s(shared)) + KL(s(shared) || s(specific))], both sides learn.
    """
    if cfg.mode == "mutual":
        return symmetric_kl(shared, specific, cfg.temperature)
    if cfg.mode == "distill":
        return kl_div_temperature(shared, specific.detach(), cfg.temperature)
    raise ConfigError(f"transfer.mode='{cfg.mode}' is unknown.", fix="use distill or mutual.")


def distance_logits(x: torch.Tensor, sign: float = -1.0, tau: float = 1.0) -> torch.Tensor:
    """(n, D) features -> (n, n-1) logits ``sign * d_ij / tau`` over j != i, columns in row order.

    d_ij = sqrt(max(|x_i - x_j|^2, 1e-6)) as in the release. ``sign = -1`` makes near neighbours carry the
    softmax mass; the release uses ``+1``.
    """
    n = x.shape[0]
    dist = pairwise_euclidean(x, eps=1e-6)
    off_diagonal = ~torch.eye(n, dtype=torch.bool, device=x.device)
    return dist[off_diagonal].reshape(n, n - 1) * (sign / tau)


def tgsa_loss(
    f_sh: torch.Tensor, f_sp: torch.Tensor, pairs: IdentityPairs, cfg: TGSAConfig, transfer: TransferConfig
) -> torch.Tensor:
    """Triplet graph-structure alignment on pre-BN features f_sh, f_sp (B, C).

    With D(S) the distance logits of a row set S (:func:`distance_logits`), V / I the visible / infrared rows
    in pairing order and X the cross set of ``cfg.cross`` (:meth:`IdentityPairs.cross_rows`):
    inter = T(D(V_sh), D(V_sp)) + T(D(I_sh), D(I_sp)) (:func:`transfer_term`);
    intra = SKL(D(V_sh), D(I_sh)) [+ SKL(D(V_sh), D(X_sh)) + SKL(D(X_sh), D(I_sh)) for ``full``];
    L = scale * (intra + inter_weight * inter). Rows of different sets are matched by position, which the
    pairing makes meaningful (row j of V and of I are one draw).
    """
    sign = -1.0 if cfg.logits == "neg_distance" else 1.0

    def logits(x: torch.Tensor, rows: torch.Tensor) -> torch.Tensor:
        return distance_logits(x[rows], sign, cfg.tau)

    v_sh, i_sh = logits(f_sh, pairs.vis), logits(f_sh, pairs.ir)
    inter = transfer_term(v_sh, logits(f_sp, pairs.vis), transfer) + transfer_term(
        i_sh, logits(f_sp, pairs.ir), transfer
    )
    intra = symmetric_kl(v_sh, i_sh)
    if cfg.form == "full":
        x_sh = logits(f_sh, pairs.cross_rows(cfg.cross))
        intra = intra + symmetric_kl(v_sh, x_sh) + symmetric_kl(x_sh, i_sh)
    elif cfg.form != "reduced":
        raise ConfigError(f"tgsa.form='{cfg.form}' is unknown.", fix="use full or reduced.")
    return cfg.scale * (intra + cfg.inter_weight * inter)


def csa_sample_loss(
    logits: torch.Tensor, logits_sp: torch.Tensor, pairs: IdentityPairs, inter_weight: float, transfer: TransferConfig
) -> torch.Tensor:
    """CSA1 on (B, N) identity logits: SKL(z[V], z[I]) + inter_weight * (T(z[V], z_sp[V]) + T(z[I], z_sp[I]))."""
    zv, zi = logits[pairs.vis], logits[pairs.ir]
    inter = transfer_term(zv, logits_sp[pairs.vis], transfer) + transfer_term(zi, logits_sp[pairs.ir], transfer)
    return symmetric_kl(zv, zi) + inter_weight * inter


def identity_group_logits(logits: torch.Tensor, rows: torch.Tensor, pairs: IdentityPairs) -> torch.Tensor:
    """(B, N) logits -> (k, P*N): row j concatenates the logits of instance j of every identity slot.

    A softmax over such a row compares identities *against each other* (which slot's images look most like
    which class), the per-identity-group semantics of CSA2.
    """
    grouped = pairs.grouped(logits, rows)  # (P, k, N)
    return grouped.permute(1, 0, 2).reshape(pairs.per_slot, -1)


def csa_identity_loss(
    logits: torch.Tensor, logits_sp: torch.Tensor, pairs: IdentityPairs, inter_weight: float, transfer: TransferConfig
) -> torch.Tensor:
    """CSA2: CSA1's formula on :func:`identity_group_logits` rows instead of per-sample rows."""
    zv, zi = identity_group_logits(logits, pairs.vis, pairs), identity_group_logits(logits, pairs.ir, pairs)
    sv, si = identity_group_logits(logits_sp, pairs.vis, pairs), identity_group_logits(logits_sp, pairs.ir, pairs)
    return symmetric_kl(zv, zi) + inter_weight * (transfer_term(zv, sv, transfer) + transfer_term(zi, si, transfer))


def row_entropy(logits: torch.Tensor) -> torch.Tensor:
    """(B, N) logits -> (B,) entropy of softmax(logits) in nats."""
    log_p = F.log_softmax(at_least_float32(logits), dim=1)
    return -(log_p.exp() * log_p).sum(dim=1)


def entropy_margin_loss(logits: torch.Tensor, logits_gated: torch.Tensor, margin: float = 0.0) -> torch.Tensor:
    """mean_i exp(max(0, H(p'_i) - H(p_i) + margin)) - 1: gating F into F' must not lose identity certainty.

    ``logits`` = C_ent(g(F)), ``logits_gated`` = C_ent(g(F')), both (B, N).
    """
    return (torch.exp(F.relu(row_entropy(logits_gated) - row_entropy(logits) + margin)) - 1.0).mean()


def modality_centroid_gaps(features: torch.Tensor, batch: CrossModalBatch, pairs: IdentityPairs) -> torch.Tensor:
    """(B, C) features -> (P,) distances between each identity's visible and infrared centroids.

    Centroids average every row of the identity and modality (extra visible views included).
    """
    member = batch.label.unsqueeze(0) == pairs.slot_labels.unsqueeze(1)  # (P, B)
    centroids = []
    for m in (0, 1):
        weights = (member & (batch.modality == m).unsqueeze(0)).to(features.dtype)
        centroids.append(weights @ features / weights.sum(dim=1, keepdim=True))
    return torch.linalg.vector_norm(centroids[0] - centroids[1], dim=1)


def centroid_gap_loss(
    pooled_in: torch.Tensor,
    pooled_in_gated: torch.Tensor,
    batch: CrossModalBatch,
    pairs: IdentityPairs,
    margin: float = 0.0,
) -> torch.Tensor:
    """mean_y max(0, gap_y(F_in') - gap_y(F_in) + margin): gating must not widen any identity's modality gap."""
    gated = modality_centroid_gaps(pooled_in_gated, batch, pairs)
    plain = modality_centroid_gaps(pooled_in, batch, pairs)
    return F.relu(gated - plain + margin).mean()


def release_confusion_targets(batch: CrossModalBatch, pairs: IdentityPairs) -> torch.Tensor:
    """(B,) the modality targets the release gives D_sh, computed from the index fields.

    The release orders a batch per draw as (infrared, visible), draw g = slot * k + inst at rows 2g and 2g+1,
    and takes t = roll(repeat_interleave(m[:B/2], 2), -1) of its modality vector m. Row 2g+b (b = 0 infrared,
    1 visible) then gets m[((2g+b+1) mod B) // 2]: the true modality when the draw number g is even, the other
    one when g is odd; the roll wraps the last row (the visible image of draw P*k-1) onto m[0] = infrared, which
    breaks the parity rule only when P*k is odd. (slot + inst has the parity of g only for odd k; that was
    vireid's first version of this rule.)
    """
    modality = batch.modality
    draw = pairs.row_slot * pairs.per_slot + pairs.row_inst
    targets = torch.where(draw % 2 == 0, modality, 1 - modality)
    last = pairs.num_slots * pairs.per_slot - 1
    if last % 2 == 0:  # P*k odd: the wrapped row
        targets = torch.where((draw == last) & (modality == 0), torch.ones_like(targets), targets)
    return targets


def modality_confusion_loss(
    modality_logits: torch.Tensor, batch: CrossModalBatch, pairs: IdentityPairs, mode: str
) -> torch.Tensor:
    """CE of D_sh's (B, 2) logits against the confusion target of ``mode`` (see :class:`ConfusionConfig`).

    ``release_pattern`` reproduces the release's targets (:func:`release_confusion_targets`), computed from the
    index fields, so they survive any batch order.
    """
    logits = at_least_float32(modality_logits)
    modality = batch.modality
    if mode == "uniform":
        return F.cross_entropy(logits, torch.full_like(logits, 0.5))
    if mode == "release_pattern":
        return F.cross_entropy(logits, release_confusion_targets(batch, pairs))
    if mode == "grl":  # the gradient reversal sits in front of D_sh inside the network
        return F.cross_entropy(logits, modality)
    raise ConfigError(f"confusion.mode='{mode}' is unknown.", fix="use uniform, release_pattern or grl.")


def idkl_objective(out: IDKLOutput, batch: CrossModalBatch, cfg: IDKLConfig) -> LossOutput:
    """IDKL's full objective on a (global) batch; parts are already weighted and sum to ``total``."""
    pairs = pair_identities(batch)
    label = batch.label
    lc = cfg.loss
    parts: dict[str, torch.Tensor] = {}
    parts["id"] = lc.id.weight * cross_entropy_ls(out.logits, label, lc.id.label_smoothing)
    parts["tri_sh"] = lc.triplet.weight_sh * batch_hard_triplet(out.f_sh, label, lc.triplet.margin)
    parts["tri_sp"] = lc.triplet.weight_sp * batch_hard_triplet(out.f_sp, label, lc.triplet.margin)
    parts["id_sp"] = lc.specific.id_weight * cross_entropy_ls(out.logits_sp, label, lc.id.label_smoothing)
    parts["modality_sp"] = lc.specific.modality_weight * F.cross_entropy(
        at_least_float32(out.modality_logits_sp), batch.modality
    )
    if cfg.purifier.enabled:
        pc = cfg.purifier
        parts["entropy"] = pc.weight * entropy_margin_loss(
            out.entropy_logits, out.entropy_logits_gated, pc.margin_entropy
        )
        parts["centroid"] = pc.weight * centroid_gap_loss(
            out.centroid_in, out.centroid_in_gated, batch, pairs, pc.margin_centroid
        )
    if cfg.tgsa.enabled:
        parts["tgsa"] = tgsa_loss(out.f_sh, out.f_sp, pairs, cfg.tgsa, cfg.transfer)
    if cfg.csa.per_sample:
        parts["csa_sample"] = csa_sample_loss(out.logits, out.logits_sp, pairs, cfg.csa.inter_weight, cfg.transfer)
    if cfg.csa.per_identity:
        parts["csa_identity"] = csa_identity_loss(out.logits, out.logits_sp, pairs, cfg.csa.inter_weight, cfg.transfer)
    if cfg.confusion.weight:
        parts["confusion"] = cfg.confusion.weight * modality_confusion_loss(
            out.modality_logits_sh, batch, pairs, cfg.confusion.mode
        )
    total = torch.stack(list(parts.values())).sum()
    # Every output joins the graph, with weight 0 where an ablation switches its term off: each parameter
    # then receives a (possibly zero) gradient in every step, which DDP needs (outputs that reach
    # parameters without reaching the loss stall its gradient reduction), and no ``find_unused_parameters``
    # graph walk is ever needed.
    total = total + 0.0 * sum(getattr(out, f.name).sum() for f in dataclasses.fields(out))
    return LossOutput(total=total, parts={k: v.detach() for k, v in parts.items()}, terms=parts)


# --------------------------------------------------------------------------------------------------------
# Method
# --------------------------------------------------------------------------------------------------------


def build_idkl_net(cfg: IDKLConfig, num_classes: int) -> IDKLNet:
    """The :class:`IDKLNet` of ``cfg`` (after :func:`check_config`)."""
    check_config(cfg)
    grl = cfg.confusion.grl_lambda if cfg.confusion.mode == "grl" else 0.0
    return IDKLNet(
        cfg.model,
        num_classes,
        gate_reduction=cfg.purifier.gate_reduction,
        centroid_pool=cfg.purifier.centroid_pool,
        shared_discriminator_grl=grl,
    )


class IDKLMethod(ImageMethodBase):
    """IDKL on vireid's engine: :class:`IDKLNet` + :func:`idkl_objective`."""

    name = "idkl"
    config_class = IDKLConfig
    find_unused_parameters = False
    """Every output enters the objective (see :func:`idkl_objective`), so DDP never needs the graph walk."""

    def build_model(self, cfg: IDKLConfig, num_classes: int) -> IDKLNet:
        return build_idkl_net(cfg, num_classes)

    def forward(self, model, batch: CrossModalBatch, ctx: StepContext) -> IDKLOutput:
        return model(batch.images, batch.modality)

    def loss(self, out: IDKLOutput, batch: CrossModalBatch, ctx: StepContext) -> LossOutput:
        return idkl_objective(out, batch, ctx.cfg)

    def on_train_start(self, trainer) -> None:
        chosen = switches(trainer.cfg)
        trainer.logger.print("idkl switches: " + ", ".join(f"{k}={v}" for k, v in chosen.items()))
        trainer.logger.log("idkl", trainer.global_step, chosen)

    def checkpoint_extra(self, trainer) -> dict[str, Any]:
        return {"idkl_switches": switches(trainer.cfg)}

    def inference_config(self, cfg: IDKLConfig) -> IDKLConfig:
        """Build without the ImageNet file (the checkpoint holds every weight)."""
        return dataclasses.replace(cfg, model=dataclasses.replace(cfg.model, pretrained="none"))


METHOD = IDKLMethod()
