"""MCE: Memory-based Contrastive Embedding, the recipe of DAKD's teacher (method-dakd.md section 2.2).

MCE ("Cross-modality person re-identification with memory-based contrastive embedding", AAAI 2023,
IDLNL/MCE) trains the single-stream :class:`~vireid.models.dakd_net.DAKDNet` against identity *memories*
instead of a classifier. vireid trains DAKD's default teacher with it (``teacher: mce``); it is also a
method in its own right (``vireid train configs/dakd/sysu_teacher.yaml``).

Per iteration three views of every sampler draw go through the network in one pass (joint BatchNorm
statistics): the visible image (view 0), its channel-exchanged copy ("CA", visible view 1) and the
infrared image, i.e. the ``caj`` augmentation preset. Every feature is f = ℓ2(BN(GeM(x))).

Memories (:class:`MCEMemory`), rebuilt at the start of every epoch with the network in eval mode over all
training images (test transform; CA images also get ChannelExchange), see
:mod:`vireid.methods.identity_means`:

- M_rgb, M_ir, M_ca: per-identity means of the features, ℓ2-normalised; M_g = (M_rgb + M_ir + M_ca) / 3,
  not renormalised;
- ``centres`` are snapshots taken at epoch start, ``features`` are updated after every step:
  M_g per identity towards the batch row *least* similar to it (m <- 0.1 m + 0.9 f_hard, renormalised),
  the modality memories towards the batch mean of that identity's rows (m <- 0.25 m + 0.75 mean).

Loss (τ = 0.05): L = L_gc + L_mem + L_sid + 1.2 L_kl with

- L_gc: triplet against global centres, d(f_i, C_{y_i}) vs min_{j: y_j != y_i} d(f_i, C_{y_j}), margin 0.3;
- L_mem = CE(f M_gᵀ / τ, y) over all rows;
- L_sid = CE(f_v M_rgbᵀ / τ) + CE(f_i M_irᵀ / τ) + 0.4 CE(f_ca M_caᵀ / τ);
- L_kl = KL(softmax(Q) || softmax(Z)), mean over rows, Z = [f_v C_rgbᵀ; f_i C_irᵀ; f_ca C_caᵀ] / τ and
  Q = [f_i C_rgbᵀ; f_v C_irᵀ; f_ca C_irᵀ] / τ without gradient, where f_v and f_i rows are the paired
  visible/infrared rows of one draw (read from the batch's pairing fields, never from row positions).

Deliberate differences from the release [reconstruction]:

* the memory updates are plain functions applied after the loss is formed (the release hides them in the
  backward of custom autograd functions); the values are the same: the logits use the memories as they
  were before the step;
* under DDP the loss (and so the update) sees the gathered global batch, so every rank holds identical
  memories and the objective does not change with the number of GPUs; the epoch-start rebuild is shared
  across ranks (:func:`~vireid.methods.identity_means.identity_mean_embeddings`);
* the memories are part of the resumable trainer state (``extra_state``), so a run resumed mid-epoch
  continues with the updated memories instead of rebuilding them;
* checkpoints are chosen on validation identities, not on the test set every 2 epochs.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F

from vireid.config import (
    AugConfig,
    DataConfig,
    EvalConfig,
    OptimConfig,
    RunConfig,
    SchedConfig,
    TrainConfig,
    bounded,
)
from vireid.data.batch import CrossModalBatch
from vireid.data.transforms import derive_seed
from vireid.errors import ConfigError, TrainingError
from vireid.losses import cross_entropy_ls, kl_div_temperature, pairwise_euclidean
from vireid.losses.distance import masked_mean, same_identity
from vireid.methods.base import ImageMethodBase, LossOutput, StepContext
from vireid.methods.identity_means import CA, IR, RGB, identity_mean_embeddings
from vireid.models.dakd_net import DAKDModelConfig, DAKDNet
from vireid.models.outputs import ReIDOutput


@dataclass
class MCELossConfig:
    """``mce`` section: loss weights, temperature and memory momenta of the MCE recipe (release defaults)."""

    temperature: float = bounded(0.05, gt=0.0)
    """τ of every memory logit."""
    gc: float = bounded(1.0, ge=0.0)
    """Weight of the global-centre triplet L_gc (``--gc``)."""
    gc_margin: float = bounded(0.3, ge=0.0)
    mem: float = bounded(1.0, ge=0.0)
    """Weight of L_mem, the CE against the global memory (``--mem``)."""
    sid: float = bounded(1.0, ge=0.0)
    """Weight of the modality-memory CEs (``--sid``)."""
    caid: float = bounded(0.4, ge=0.0)
    """Extra factor of the CA-memory CE (``--caid``)."""
    kl: float = bounded(1.2, ge=0.0)
    """Weight of the cross-modality KL (``--kl``)."""
    global_momentum: float = bounded(0.1, ge=0.0, lt=1.0)
    """m <- momentum m + (1 - momentum) f_hard for the global memory."""
    modality_momentum: float = bounded(0.25, ge=0.0, lt=1.0)
    """m <- momentum m + (1 - momentum) mean for the RGB / IR / CA memories (``--mem_up``)."""
    hard_global: bool = True
    """Update the global memory with the hardest row (release); false uses the batch mean (``--nhard``)."""
    memory_batch_size: int = bounded(128, ge=1)
    """Images per forward pass when the memories are rebuilt."""


@dataclass
class MCEConfig(RunConfig):
    """MCE run config; the defaults are the SYSU-MM01 recipe of IDLNL/MCE ``train.py``."""

    method: str = "mce"
    data: DataConfig = field(default_factory=lambda: DataConfig(height=384, width=128))
    model: DAKDModelConfig = field(default_factory=DAKDModelConfig)
    aug: AugConfig = field(default_factory=lambda: AugConfig(preset="caj"))
    optim: OptimConfig = field(
        default_factory=lambda: OptimConfig(name="adam", lr=3.5e-4, weight_decay=5e-4, backbone_lr_mult=1.0)
    )
    # lr (e+1)/10 for e < 10, x0.1 for e > 20 (milestone 21), x0.01 for e >= 40 (RegDB: 31 and 60).
    sched: SchedConfig = field(
        default_factory=lambda: SchedConfig(name="warmup_step", warmup_epochs=10, milestones=[21, 40], gamma=0.1)
    )
    train: TrainConfig = field(default_factory=lambda: TrainConfig(epochs=160))
    eval: EvalConfig = field(default_factory=EvalConfig)
    mce: MCELossConfig = field(default_factory=MCELossConfig)


# ----------------------------------------------------------------------------------------------- memories


@dataclass
class MCEMemory:
    """The identity memories of one epoch. Every tensor is (num_classes, D) float32.

    Attributes:
        epoch: the epoch whose start built them (a run resumed inside that epoch keeps them).
        global_features / global_centres: M_g, updated per step / snapshot at epoch start.
        features / centres: per group name (``rgb``, ``ir`` and, with three views, ``ca``).
    """

    epoch: int
    global_features: torch.Tensor
    global_centres: torch.Tensor
    features: dict[str, torch.Tensor]
    centres: dict[str, torch.Tensor]

    @classmethod
    def from_means(cls, means: torch.Tensor, names: list[str], epoch: int) -> MCEMemory:
        """Memories from (G, C, D) ℓ2-normalised per-identity means of the groups ``names``.

        M_g is the average of the group memories and is *not* renormalised (as in the release).
        """
        features = {name: means[g].clone() for g, name in enumerate(names)}
        global_features = means.mean(dim=0)
        return cls(
            epoch=epoch,
            global_features=global_features,
            global_centres=global_features.clone(),
            features=features,
            centres={k: v.clone() for k, v in features.items()},
        )

    def state(self) -> dict[str, Any]:
        """Tensors and primitives only (the trainer state is loaded with ``weights_only=True``)."""
        return {
            "epoch": int(self.epoch),
            "global_features": self.global_features.detach().cpu(),
            "global_centres": self.global_centres.detach().cpu(),
            "features": {k: v.detach().cpu() for k, v in self.features.items()},
            "centres": {k: v.detach().cpu() for k, v in self.centres.items()},
        }

    @classmethod
    def from_state(cls, state: dict[str, Any], device: torch.device | str = "cpu") -> MCEMemory:
        return cls(
            epoch=int(state["epoch"]),
            global_features=state["global_features"].to(device),
            global_centres=state["global_centres"].to(device),
            features={k: v.to(device) for k, v in state["features"].items()},
            centres={k: v.to(device) for k, v in state["centres"].items()},
        )


def hard_momentum_update(memory: torch.Tensor, feats: torch.Tensor, labels: torch.Tensor, momentum: float):
    """MCE's global-memory update: per identity in the batch, move towards its *least similar* row.

    For each label y present in ``labels``: h = the first row of y with the lowest dot product with m_y,
    m_y <- ℓ2(momentum m_y + (1 - momentum) f_h). Other rows of ``memory`` are unchanged.
    Shapes: memory (C, D), feats (B, D), labels (B,). Returns a new tensor (the input is not modified).
    """
    num_rows, num_classes = feats.shape[0], memory.shape[0]
    sims = (feats * memory[labels]).sum(dim=1)
    lowest = torch.full((num_classes,), float("inf"), device=feats.device, dtype=sims.dtype)
    lowest = lowest.scatter_reduce(0, labels, sims, reduce="amin")
    rows = torch.arange(num_rows, device=feats.device)
    candidate = torch.where(sims == lowest[labels], rows, torch.full_like(rows, num_rows))
    first = torch.full((num_classes,), num_rows, device=feats.device, dtype=rows.dtype)
    first = first.scatter_reduce(0, labels, candidate, reduce="amin")
    present = first < num_rows
    hard = feats[first.clamp(max=num_rows - 1)]
    moved = F.normalize(momentum * memory + (1.0 - momentum) * hard, dim=1)
    return torch.where(present.unsqueeze(1), moved, memory)


def mean_momentum_update(memory: torch.Tensor, feats: torch.Tensor, labels: torch.Tensor, momentum: float):
    """MCE's modality-memory update: m_y <- ℓ2(momentum m_y + (1 - momentum) mean of the rows of y).

    Identities absent from ``labels`` are unchanged. Shapes as :func:`hard_momentum_update`; returns a new
    tensor.
    """
    num_classes = memory.shape[0]
    sums = torch.zeros_like(memory).index_add_(0, labels, feats.to(memory.dtype))
    counts = torch.bincount(labels, minlength=num_classes).to(memory.dtype)
    mean = sums / counts.clamp(min=1).unsqueeze(1)
    moved = F.normalize(momentum * memory + (1.0 - momentum) * mean, dim=1)
    return torch.where((counts > 0).unsqueeze(1), moved, memory)


# ------------------------------------------------------------------------------------------------- losses


@dataclass
class MCERows:
    """Row indices of the three views in a (global) batch."""

    rgb: torch.Tensor
    ir: torch.Tensor
    ca: torch.Tensor
    pair_rgb: torch.Tensor
    """Visible view-0 rows sorted by draw; ``pair_ir[j]`` is the infrared row of the same draw."""
    pair_ir: torch.Tensor

    @classmethod
    def of(cls, batch: CrossModalBatch) -> MCERows:
        pair_rgb, pair_ir = batch.pair_rows(view=0)
        vis = batch.modality == 0
        return cls(
            rgb=torch.nonzero(vis & (batch.view == 0)).flatten(),
            ir=torch.nonzero(batch.modality == 1).flatten(),
            ca=torch.nonzero(vis & (batch.view == 1)).flatten(),
            pair_rgb=pair_rgb,
            pair_ir=pair_ir,
        )


def global_centre_triplet(
    feats: torch.Tensor, labels: torch.Tensor, centres: torch.Tensor, margin: float = 0.3
) -> torch.Tensor:
    """L_gc: mean_i max(0, d(f_i, C_{y_i}) - min_{j: y_j != y_i} d(f_i, C_{y_j}) + margin).

    The negatives are the centres of the *other identities present in the batch* (the release compares
    f_i with C_{y_j} for every batch row j). Rows without another identity in the batch are left out.
    Shapes: feats (B, D), labels (B,), centres (C, D).
    """
    dist = pairwise_euclidean(feats, centres[labels])
    same = same_identity(labels)
    positive = dist.diagonal()
    negative = dist.masked_fill(same, float("inf")).amin(dim=1)
    valid = (~same).any(dim=1)
    negative = torch.where(valid, negative, positive)
    return masked_mean(F.relu(positive - negative + margin), valid)


def mce_loss(
    feats: torch.Tensor, batch: CrossModalBatch, memory: MCEMemory, cfg: MCELossConfig
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """The MCE objective of one (global) batch; ``feats`` (B, D) are ℓ2(BN(f)) of every row.

    Uses the memories as they are (call :func:`update_memories` afterwards). Returns (total, parts).
    """
    rows = MCERows.of(batch)
    tau = cfg.temperature
    label = batch.label
    parts: dict[str, torch.Tensor] = {}
    if cfg.gc > 0:
        parts["gc"] = cfg.gc * global_centre_triplet(feats, label, memory.global_centres, cfg.gc_margin)
    if cfg.mem > 0:
        parts["mem"] = cfg.mem * cross_entropy_ls(feats @ memory.global_features.t() / tau, label)
    has_ca = rows.ca.numel() > 0 and "ca" in memory.features
    if cfg.sid > 0:
        sid = cross_entropy_ls(feats[rows.rgb] @ memory.features["rgb"].t() / tau, label[rows.rgb])
        sid = sid + cross_entropy_ls(feats[rows.ir] @ memory.features["ir"].t() / tau, label[rows.ir])
        if has_ca:
            ca = cross_entropy_ls(feats[rows.ca] @ memory.features["ca"].t() / tau, label[rows.ca])
            sid = sid + cfg.caid * ca
        parts["sid"] = cfg.sid * sid
    if cfg.kl > 0:
        f_v, f_i = feats[rows.pair_rgb], feats[rows.pair_ir]
        c_rgb, c_ir = memory.centres["rgb"], memory.centres["ir"]
        z = [f_v @ c_rgb.t(), f_i @ c_ir.t()]
        q = [f_i.detach() @ c_rgb.t(), f_v.detach() @ c_ir.t()]
        if has_ca:
            f_ca = feats[rows.ca]
            z.append(f_ca @ memory.centres["ca"].t())
            q.append(f_ca.detach() @ c_ir.t())
        parts["kl"] = cfg.kl * kl_div_temperature(torch.cat(z) / tau, torch.cat(q) / tau, 1.0)
    if not parts:
        raise ConfigError("every MCE loss weight is 0; set at least one of mce.gc, mem, sid, kl > 0.")
    total = torch.stack(list(parts.values())).sum()
    return total, parts


def update_memories(memory: MCEMemory, feats: torch.Tensor, batch: CrossModalBatch, cfg: MCELossConfig) -> None:
    """Apply one step's momentum updates to ``memory`` (its ``features``; centres stay at the snapshot).

    ``feats`` (B, D) are the step's ℓ2 features (detached here). The tensors are replaced, not modified in
    place, so logits already computed from the old memories keep valid autograd graphs.
    """
    feats = feats.detach().float()
    rows = MCERows.of(batch)
    label = batch.label
    update = hard_momentum_update if cfg.hard_global else mean_momentum_update
    memory.global_features = update(memory.global_features, feats, label, cfg.global_momentum)
    for name, index in (("rgb", rows.rgb), ("ir", rows.ir), ("ca", rows.ca)):
        if name in memory.features and index.numel() > 0:
            memory.features[name] = mean_momentum_update(
                memory.features[name], feats[index], label[index], cfg.modality_momentum
            )


# ------------------------------------------------------------------------------------------------- method


class MCEMethod(ImageMethodBase):
    """MCE training of :class:`DAKDNet` (no classifier): memories, global-centre triplet, cross-modal KL."""

    name = "mce"
    config_class = MCEConfig

    def build_model(self, cfg: MCEConfig, num_classes: int) -> DAKDNet:
        _check_config(cfg)
        return DAKDNet(cfg.model, 0)

    def forward(self, model, batch: CrossModalBatch, ctx: StepContext) -> ReIDOutput:
        # One pass over [visible; CA; infrared]: joint BatchNorm statistics, as the release.
        return model(batch.images, batch.modality)

    def loss(self, out: ReIDOutput, batch: CrossModalBatch, ctx: StepContext) -> LossOutput:
        memory: MCEMemory | None = ctx.extras.get("mce")
        if memory is None:
            raise TrainingError(
                "the MCE memories were not built before the first step.",
                fix="train MCE through vireid.engine.trainer (it calls MCEMethod.on_epoch_start).",
            )
        feats = F.normalize(out.bn, dim=1)
        total, parts = mce_loss(feats, batch, memory, ctx.cfg.mce)
        update_memories(memory, feats, batch, ctx.cfg.mce)
        return LossOutput(total=total, parts={k: v.detach() for k, v in parts.items()}, terms=parts)

    # ---- engine hooks ------------------------------------------------------------------------------------

    def on_epoch_start(self, trainer, epoch: int) -> None:
        """Rebuild the memories with the current network in eval mode, unless a resumed run restored the
        memories of this very epoch."""
        memory: MCEMemory | None = trainer.method_state.get("mce")
        if memory is not None and memory.epoch == epoch:
            return
        trainer.method_state["mce"] = build_memories(trainer, epoch)

    def extra_state(self, trainer) -> dict[str, Any]:
        memory: MCEMemory | None = trainer.method_state.get("mce")
        return {} if memory is None else {"memory": memory.state()}

    def load_extra_state(self, trainer, state: dict[str, Any]) -> None:
        if state.get("memory"):
            trainer.method_state["mce"] = MCEMemory.from_state(state["memory"], trainer.dist.device)


def build_memories(trainer, epoch: int) -> MCEMemory:
    """The epoch-start memories of a training run: the model in eval mode over every training image.

    Three groups (RGB, IR, CA) when the training views include the channel-exchanged visible view
    (``aug.preset: caj``), otherwise RGB and IR (MCE's two-channel variant).
    """
    cfg: MCEConfig = trainer.cfg
    source = trainer.train_loader.loader.dataset
    groups = [RGB, IR] + ([CA] if source.views.num_visible_views >= 2 else [])
    model = trainer.model
    was_training = model.training
    model.eval()
    try:
        means = identity_mean_embeddings(
            lambda images, modality: model.extract(images, modality, feature="bn"),
            source,
            groups,
            trainer.split.num_classes,
            device=trainer.dist.device,
            batch_size=cfg.mce.memory_batch_size,
            workers=cfg.data.workers,
            seed=derive_seed(cfg.train.seed, epoch),
            autocast_dtype=trainer.amp_dtype,
        )
    finally:
        model.train(was_training)
    return MCEMemory.from_means(means, [g.name for g in groups], epoch)


def _check_config(cfg: MCEConfig) -> None:
    c = cfg.mce
    if c.temperature <= 0:
        raise ConfigError(f"mce.temperature must be positive, got {c.temperature}.", fix="use 0.05 (release).")
    for key in ("global_momentum", "modality_momentum"):
        value = getattr(c, key)
        if not 0.0 <= value < 1.0:
            raise ConfigError(f"mce.{key} must be in [0, 1), got {value}.")
    for key in ("gc", "mem", "sid", "caid", "kl", "gc_margin"):
        if getattr(c, key) < 0:
            raise ConfigError(f"mce.{key} must be >= 0, got {getattr(c, key)}.")
    if c.memory_batch_size < 1:
        raise ConfigError(f"mce.memory_batch_size must be >= 1, got {c.memory_batch_size}.")


METHOD = MCEMethod()
