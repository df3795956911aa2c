"""DAKD: dual-aligned knowledge self-distillation (Deng et al., Knowledge-Based Systems 2025).

See ``method-dakd.md`` (section 3 is what vireid builds) and ``docs/methods/dakd.md``. A frozen teacher of
the same architecture (:class:`~vireid.models.dakd_net.DAKDNet`) distils into a student trained from
ImageNet weights, at two levels and several temperatures, masked per sample towards confident teacher
predictions:

- **instance level**: the 2048-d embeddings themselves are the "logits": student s = BN(f) (unnormalised),
  teacher t = ℓ2(BN(f)) of the teacher in eval mode;
- **class level**: embeddings against the teacher's class prototypes C^m (per modality m and identity,
  ℓ2 of the mean teacher embedding over the training images, computed once): ã = s C^mᵀ / τ_c and
  b̃ = t C^mᵀ / τ_c, τ_c = 0.05;
- **logit standardisation** z(u) = (u - mean u) / (std u + eps) per row (unbiased std), on by default;
- **temperatures**: ℓ_i = Σ_T T² KL(softmax(z(b_i)/T) || softmax(z(a_i)/T)), T in ``kd.temperatures``
  (default 2..6 for both modalities and both levels);
- **confidence masking** per sample and per modality: c_i = max_k softmax(t_i C^mᵀ / τ_c)_k, keep the
  samples with c_i >= the batch median of their modality (ties kept), reduce Σ M_i ℓ_i / max(1, Σ M_i);
- L = 0.45 L_inst + 0.45 L_cls (+ optional CE and triplet terms, off by default).

The teacher (``teacher:``) is a recipe trained first as a nested run inside the student's run folder
(``mce``, the default, or ``baseline``), or a vireid run/checkpoint folder. It is frozen, in eval mode,
run under ``no_grad``, and kept outside the student model (``trainer.method_state["dakd"]``), so it is
never part of the student's state dict or checkpoint.

Release switches (``configs/dakd/dakd_release.yaml`` sets them all): ``mask.keep: low`` (the release keeps
the *less* confident half), ``mask.reduce: scalar`` (the release reduces the KL to a scalar before
masking, i.e. scales it by the kept fraction), ``mask.source: own_level_raw`` (raw T = 1 softmax of each
level's teacher logits), ``mask.modalities: [ir]`` and ``kd.release_temperature_sets: true`` (unmasked
RGB terms at T in {3, 4, 5} plus IR terms at T in {2, 6}, the MLKD RGB/IR mix-up, plus the masked IR terms
at every T). The release's duplicate student forward is a bug and is not reproduced: one forward per step.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import torch
import torch.nn.functional as F
from torch import nn

from vireid.config import (
    AugConfig,
    CutSwapConfig,
    DataConfig,
    OptimConfig,
    RunConfig,
    SchedConfig,
    TrainConfig,
    bounded,
    each_in_range,
    load_config,
    read_yaml,
    to_dict,
)
from vireid.data.batch import CrossModalBatch
from vireid.errors import CheckpointError, ConfigError, TrainingError
from vireid.losses import (
    batch_hard_triplet,
    cross_entropy_ls,
    kl_div_temperature,
    logit_standardize,
    weighted_regularized_triplet,
)
from vireid.methods.base import ImageMethodBase, LossOutput, StepContext
from vireid.methods.identity_means import IR, RGB, identity_mean_embeddings
from vireid.models.dakd_net import DAKDModelConfig, DAKDNet

MODALITY_NAMES = ("rgb", "ir")
"""Modality names used by ``mask.modalities``, indexed by the batch's ``modality`` value."""

RELEASE_PLAIN_TEMPERATURES = {"rgb": (3.0, 4.0, 5.0), "ir": (2.0, 6.0)}
"""Unmasked temperature sets of the release (``kd.release_temperature_sets``): its "strong" (RGB) sum
uses T = 4 (MLKD's configured temperature), 3 and 5 on the RGB logits and, by a slip inherited from the MLKD
code, T = 2 and 6 on the IR logits."""

# --------------------------------------------------------------------------------------------------- config


@dataclass
class StudentConfig:
    init: Literal["imagenet", "teacher"] = "imagenet"
    """``imagenet``: ``model.pretrained`` weights (release); ``teacher``: start from the teacher's weights
    (needs the same architecture)."""
    bn: Literal["per_modality", "per_modality_batch", "joint"] = "per_modality"
    """``per_modality``: RGB and IR rows go through the student in separate passes (BatchNorm batch
    statistics per modality, as the release's two forwards) *and* each modality keeps running statistics of
    its own, which evaluation uses (:class:`~vireid.models.dakd_net.DAKDNet` ``modality_running_stats``);
    ``per_modality_batch`` (release): separate passes, but one set of running statistics that both passes
    update, so evaluation normalises both modalities with statistics mixed across them; ``joint``: one pass
    over all rows. Whether ``joint`` should become the default is left to the method ladder."""


@dataclass
class PrototypeConfig:
    refresh_every: int = bounded(0, ge=0, le=0)
    """0 = computed once at train start (the only meaningful value: the teacher is frozen, so recomputing
    would give the same prototypes)."""
    batch_size: int = bounded(128, ge=1)
    """Images per teacher forward while computing the prototypes."""


@dataclass
class KDConfig:
    standardize: bool = True
    """Logit standardisation z(u) = (u - mean) / (std + eps) per row before the temperature."""
    eps: float = bounded(1e-7, gt=0.0)
    temperatures: list[float] = field(default_factory=lambda: [2.0, 3.0, 4.0, 5.0, 6.0], metadata=each_in_range(gt=0.0))
    """Temperatures of every KL term, both modalities and both levels; each term is scaled by T²."""
    class_tau: float = bounded(0.05, gt=0.0)
    """τ_c of the class-level logits (embedding · prototypes / τ_c)."""
    release_temperature_sets: bool = False
    """Reproduce the release's asymmetric sets: unmasked RGB terms at {3, 4, 5}, unmasked IR terms at {2, 6}
    (the RGB/IR mix-up), plus the masked terms of ``mask.modalities`` at ``temperatures``."""


@dataclass
class MaskConfig:
    source: Literal["class", "own_level_raw"] = "class"
    """``class``: c_i = max_k softmax(t_i C^mᵀ / τ_c), the teacher's confidence in its nearest identity,
    used at both levels; ``own_level_raw`` (release): the T = 1 softmax of each level's own raw teacher
    logits (the 2048-d embedding at instance level)."""
    rule: Literal["batch_quantile", "threshold", "none"] = "batch_quantile"
    q: float = bounded(0.5, ge=0.0, le=1.0)
    """Quantile of ``batch_quantile`` within each modality's rows of the (global) batch; 0.5 = median."""
    tau: float = bounded(0.5, ge=0.0, le=1.0)
    """Confidence threshold of ``rule: threshold`` (a softmax probability, so in [0, 1])."""
    keep: Literal["high", "low"] = "high"
    """``high``: keep c_i >= threshold (confident teacher predictions); ``low``: c_i <= threshold (release)."""
    reduce: Literal["per_sample", "scalar"] = "per_sample"
    """``per_sample``: Σ M_i ℓ_i / max(1, Σ M_i); ``scalar`` (release): mean_i ℓ_i x mean_i M_i."""
    modalities: list[str] = field(default_factory=lambda: ["rgb", "ir"])
    """Modalities whose terms are masked; the others are averaged unmasked. Release: [ir]."""
    require_correct: bool = False
    """Also require the teacher's nearest prototype to be the sample's identity ("informative")."""
    low_weight: float = bounded(0.0, ge=0.0, le=1.0)
    """Weight of the samples the mask does not select (0 = hard mask)."""


@dataclass
class DAKDLossConfig:
    inst: float = bounded(0.45, ge=0.0)
    """w_inst (the release's 0.5 x α, α = 0.9)."""
    cls: float = bounded(0.45, ge=0.0)
    """w_cls."""
    ce: float = bounded(0.0, ge=0.0)
    """Identity CE on a bias-free classifier over the student's BN feature; > 0 builds the classifier."""
    label_smoothing: float = bounded(0.0, ge=0.0, lt=1.0)
    tri: float = bounded(0.0, ge=0.0)
    """Metric loss on the student's pooled features over the whole batch."""
    metric: Literal["triplet", "wrt"] = "triplet"
    margin: float = bounded(0.3, ge=0.0)
    """Margin of ``metric: triplet``."""


@dataclass
class TeacherRunConfig:
    """How ``teacher: <recipe>`` trains its teacher (a nested run in ``<student run>/teacher``)."""

    recipes: dict[str, str] = field(
        default_factory=lambda: {"mce": "dakd/sysu_teacher", "baseline": "dakd/sysu_teacher_baseline"}
    )
    """Recipe name -> config (a preset name such as ``dakd/sysu_teacher`` or a YAML path)."""
    overrides: list[str] = field(default_factory=list)
    """Dotted overrides applied to the teacher config after the inherited keys."""


@dataclass
class DAKDConfig(RunConfig):
    """DAKD student config; the defaults are vireid's SYSU-MM01 recipe (method-dakd.md sections 3 and 4)."""

    method: str = "dakd"
    teacher: str = "mce"
    """``mce`` (default) or ``baseline``: train that recipe first, inside this run's folder; otherwise a
    vireid run or checkpoint folder whose model is the teacher (write ``./mce`` for a folder named mce)."""
    teacher_run: TeacherRunConfig = field(default_factory=TeacherRunConfig)
    data: DataConfig = field(default_factory=lambda: DataConfig(height=384, width=128))
    model: DAKDModelConfig = field(default_factory=DAKDModelConfig)
    aug: AugConfig = field(default_factory=lambda: AugConfig(preset="dakd"))
    cutswap: CutSwapConfig = field(default_factory=lambda: CutSwapConfig(p=0.5))
    optim: OptimConfig = field(
        default_factory=lambda: OptimConfig(name="adam", lr=3.5e-4, weight_decay=0.0, backbone_lr_mult=1.0)
    )
    sched: SchedConfig = field(default_factory=lambda: SchedConfig(name="constant", warmup_epochs=0))
    train: TrainConfig = field(default_factory=lambda: TrainConfig(epochs=160))
    student: StudentConfig = field(default_factory=StudentConfig)
    prototypes: PrototypeConfig = field(default_factory=PrototypeConfig)
    kd: KDConfig = field(default_factory=KDConfig)
    mask: MaskConfig = field(default_factory=MaskConfig)
    loss: DAKDLossConfig = field(default_factory=DAKDLossConfig)


def check_config(cfg: DAKDConfig) -> None:
    """Reject values that have no meaning, naming the key and the fix (types are checked at load time)."""
    kd, mask, loss = cfg.kd, cfg.mask, cfg.loss
    if not str(cfg.teacher).strip():
        raise ConfigError("teacher is empty.", fix="set teacher=mce, teacher=baseline or teacher=RUN_OR_CHECKPOINT.")
    if not kd.temperatures or any(t <= 0 for t in kd.temperatures):
        raise ConfigError(f"kd.temperatures must be a non-empty list of positive numbers, got {kd.temperatures}.")
    if kd.class_tau <= 0 or kd.eps <= 0:
        raise ConfigError(f"kd.class_tau and kd.eps must be positive, got {kd.class_tau} and {kd.eps}.")
    if not 0.0 <= mask.q <= 1.0:
        raise ConfigError(f"mask.q is a quantile in [0, 1], got {mask.q}.", fix="use 0.5 (the batch median).")
    if not 0.0 <= mask.low_weight <= 1.0:
        raise ConfigError(f"mask.low_weight must be in [0, 1], got {mask.low_weight}.")
    unknown = sorted(set(mask.modalities) - set(MODALITY_NAMES))
    if unknown:
        raise ConfigError(f"mask.modalities has unknown names {unknown}.", fix="use a subset of [rgb, ir].")
    weights = {"inst": loss.inst, "cls": loss.cls, "ce": loss.ce, "tri": loss.tri}
    negative = {k: v for k, v in weights.items() if v < 0}
    if negative:
        raise ConfigError(f"loss weights must be >= 0, got {negative}.")
    if not any(v > 0 for v in weights.values()):
        raise ConfigError("every DAKD loss weight is 0.", fix="set loss.inst and/or loss.cls > 0 (0.45 each).")
    if cfg.prototypes.refresh_every != 0:
        raise ConfigError(
            f"prototypes.refresh_every={cfg.prototypes.refresh_every}: the teacher is frozen, so recomputed "
            "prototypes would be identical.",
            fix="leave prototypes.refresh_every at 0 (computed once at train start).",
        )
    if cfg.prototypes.batch_size < 1:
        raise ConfigError(f"prototypes.batch_size must be >= 1, got {cfg.prototypes.batch_size}.")


# --------------------------------------------------------------------------------------------------- losses


def multi_temperature_kl(
    student: torch.Tensor,
    teacher: torch.Tensor,
    temperatures: list[float] | tuple[float, ...],
    *,
    standardize: bool = True,
    eps: float = 1e-7,
) -> torch.Tensor:
    """Per-sample Σ_T T² KL(softmax(z(teacher)/T) || softmax(z(student)/T)), (B, K) x (B, K) -> (B,).

    z is :func:`~vireid.losses.logit_standardize` when ``standardize`` (identity otherwise). The teacher side
    is used as given: pass it detached.
    """
    if standardize:
        student = logit_standardize(student.float(), eps)
        teacher = logit_standardize(teacher.float(), eps)
    terms = [kl_div_temperature(student, teacher, float(t), reduction="none") for t in temperatures]
    return torch.stack(terms).sum(dim=0)


def teacher_confidence(logits: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(B, K) teacher logits -> (confidence (B,) = max softmax probability at T = 1, argmax (B,))."""
    probs = F.softmax(logits.float(), dim=-1)
    return probs.max(dim=-1)


def confidence_weights(
    confidence: torch.Tensor, nearest: torch.Tensor, labels: torch.Tensor, cfg: MaskConfig
) -> torch.Tensor:
    """Per-sample mask weights M (B,) float: 1 for selected samples, ``cfg.low_weight`` for the others.

    Selection (``cfg.rule``) within the given rows (one modality of the batch):

    - ``batch_quantile``: c_i >= quantile_q(c) (``keep: high``; ties kept) or c_i <= quantile_q(c)
      (``keep: low``, the release's ``le`` of ``np.percentile``); the quantile interpolates linearly as
      ``np.percentile`` does;
    - ``threshold``: c_i >= ``cfg.tau`` (high) or c_i <= ``cfg.tau`` (low);
    - ``none``: every sample.

    ``require_correct`` additionally requires ``nearest == labels``.
    """
    if cfg.rule == "none" or confidence.numel() == 0:
        selected = torch.ones_like(confidence, dtype=torch.bool)
    else:
        if cfg.rule == "batch_quantile":
            threshold = torch.quantile(confidence, cfg.q)
        elif cfg.rule == "threshold":
            threshold = torch.tensor(cfg.tau, dtype=confidence.dtype, device=confidence.device)
        else:  # pragma: no cover - guarded by the config's Literal type
            raise ConfigError(f"unknown mask.rule {cfg.rule!r}.")
        selected = confidence >= threshold if cfg.keep == "high" else confidence <= threshold
    if cfg.require_correct:
        selected = selected & (nearest == labels)
    return torch.where(selected, 1.0, float(cfg.low_weight)).to(confidence.dtype)


def masked_reduce(per_sample: torch.Tensor, weights: torch.Tensor, mode: str = "per_sample") -> torch.Tensor:
    """Reduce per-sample losses (B,) with mask weights (B,).

    ``per_sample``: Σ M_i ℓ_i / max(1, Σ M_i), the mean over the selected samples. ``scalar`` (release): the
    loss is reduced before masking, mean_i ℓ_i x mean_i M_i (a scale of about one half that favours nothing).
    """
    if mode == "per_sample":
        return (weights * per_sample).sum() / weights.sum().clamp(min=1.0)
    if mode == "scalar":
        return per_sample.mean() * weights.mean()
    raise ConfigError(f"unknown mask.reduce {mode!r}; use per_sample or scalar.")


@dataclass
class DistillationTerms:
    """The two distillation levels of one batch and the kept fraction of each modality's mask."""

    inst: torch.Tensor
    cls: torch.Tensor
    kept: dict[str, torch.Tensor]


def distillation_terms(
    student: torch.Tensor,
    teacher: torch.Tensor,
    labels: torch.Tensor,
    modality: torch.Tensor,
    prototypes: torch.Tensor,
    kd: KDConfig,
    mask: MaskConfig,
) -> DistillationTerms:
    """L_inst and L_cls (unweighted) of DAKD over a (global) batch.

    Args:
        student: (B, D) student BN features (unnormalised), with gradient.
        teacher: (B, D) ℓ2-normalised teacher embeddings (no gradient).
        labels, modality: (B,) training labels and modalities (0 RGB, 1 IR).
        prototypes: (2, C, D) ℓ2-normalised class prototypes of the teacher, [RGB, IR].

    Each modality's rows use that modality's prototypes and mask; per modality and level the per-sample
    multi-temperature KL is reduced with the mask (``mask.modalities``) or averaged, and the modality terms
    are summed (section 3 of method-dakd.md; release layout with ``kd.release_temperature_sets``).
    """
    teacher = teacher.detach().float()
    student = student.float()
    zero = student.sum() * 0.0
    totals = {"inst": zero, "cls": zero}
    kept: dict[str, torch.Tensor] = {}
    for m, name in enumerate(MODALITY_NAMES):
        rows = torch.nonzero(modality == m).flatten()
        if rows.numel() == 0:
            continue
        s, t, y = student[rows], teacher[rows], labels[rows]
        centres = prototypes[m].float()
        a_cls = s @ centres.t() / kd.class_tau
        b_cls = t @ centres.t() / kd.class_tau
        conf_cls, nearest = teacher_confidence(b_cls)
        w_cls = confidence_weights(conf_cls, nearest, y, mask)
        if mask.source == "class":
            w_inst = w_cls
        else:  # own_level_raw: the raw T = 1 softmax of the 2048-d teacher embedding
            conf_inst, _ = teacher_confidence(t)
            w_inst = confidence_weights(conf_inst, nearest, y, mask)
        kept[name] = w_cls.mean().detach()
        for level, (a, b, w) in {"inst": (s, t, w_inst), "cls": (a_cls, b_cls, w_cls)}.items():
            kl = {"standardize": kd.standardize, "eps": kd.eps}
            if kd.release_temperature_sets:
                plain = multi_temperature_kl(a, b, RELEASE_PLAIN_TEMPERATURES[name], **kl).mean()
                totals[level] = totals[level] + plain
                if name in mask.modalities:
                    masked = multi_temperature_kl(a, b, kd.temperatures, **kl)
                    totals[level] = totals[level] + masked_reduce(masked, w, mask.reduce)
            else:
                per_sample = multi_temperature_kl(a, b, kd.temperatures, **kl)
                if name in mask.modalities:
                    term = masked_reduce(per_sample, w, mask.reduce)
                else:
                    term = per_sample.mean()
                totals[level] = totals[level] + term
    return DistillationTerms(inst=totals["inst"], cls=totals["cls"], kept=kept)


# -------------------------------------------------------------------------------------------------- teacher


@dataclass
class DAKDOutput:
    """What one DAKD student step produces (B rows, D = feature dim, N = identities).

    Attributes:
        pooled: (B, D) student pooled features (metric-loss option).
        bn: (B, D) student BNNeck features, unnormalised: the distillation's student side.
        logits: (B, N) identity logits, or ``None`` without a CE loss.
        teacher: (B, D) ℓ2-normalised teacher embeddings, computed under ``no_grad``.
    """

    pooled: torch.Tensor
    bn: torch.Tensor
    logits: torch.Tensor | None
    teacher: torch.Tensor


@dataclass
class TeacherState:
    """The frozen teacher of a run and what is derived from it (kept in ``trainer.method_state["dakd"]``).

    Attributes:
        model: the teacher network, frozen (``requires_grad=False``) and in eval mode.
        embedder: its method's retrieval embedder (``embed_images(images, modality)``).
        source: the checkpoint folder it was loaded from.
        method: the method that trained it (``mce``, ``baseline``, ...).
        distillation: ``self_kd`` (same architecture as the student) or ``kd``.
        prototypes: (2, C, D) class prototypes [RGB, IR], ``None`` until computed.
    """

    model: nn.Module
    embedder: Any
    source: str
    method: str
    distillation: str
    prototypes: torch.Tensor | None = None

    @torch.no_grad()
    def embed(self, images: torch.Tensor, modality: torch.Tensor) -> torch.Tensor:
        """(B, 3, H, W), (B,) -> (B, D) ℓ2-normalised teacher embeddings, each row through its modality."""
        out: torch.Tensor | None = None
        for m in modality.unique().tolist():
            rows = torch.nonzero(modality == m).flatten()
            feats = F.normalize(self.embedder.embed_images(images[rows], int(m)).float(), dim=1)
            if out is None:
                out = feats.new_empty(images.shape[0], feats.shape[1])
            out[rows] = feats
        if out is None:
            raise TrainingError("the teacher received an empty batch.")
        return out


_NOT_ARCHITECTURE = ("classifier.", "infrared_bn_stats.")
"""State-dict prefixes that do not make another architecture: the classifier (its size is the number of
training identities) and the second set of BatchNorm running statistics of ``student.bn: per_modality``."""


def architecture_signature(model: nn.Module) -> dict[str, tuple[int, ...]]:
    """Parameter and buffer names with shapes, classifier and per-modality BatchNorm statistics excluded:
    equal signatures = same architecture."""
    return {k: tuple(v.shape) for k, v in model.state_dict().items() if not k.startswith(_NOT_ARCHITECTURE)}


def load_teacher(path: str | Path, student: nn.Module, device: torch.device | str) -> TeacherState:
    """Load a vireid checkpoint (or run folder) as a frozen teacher and label the run ``self_kd`` / ``kd``."""
    from vireid.engine.loading import load_model

    lm = load_model(path, device=device)
    model = lm.model
    model.eval()
    for param in model.parameters():
        param.requires_grad_(False)
    same = architecture_signature(model) == architecture_signature(student)
    return TeacherState(
        model=model,
        embedder=lm.method.embedder(model, lm.cfg),
        source=str(lm.path),
        method=str(lm.meta.get("method")),
        distillation="self_kd" if same else "kd",
    )


def _merged(base: dict, child: dict) -> dict:
    out = dict(base)
    for key, value in child.items():
        out[key] = _merged(out[key], value) if isinstance(value, dict) and isinstance(out.get(key), dict) else value
    return out


def teacher_stage_config(cfg: DAKDConfig, recipe: str) -> RunConfig:
    """The config of the nested teacher run of ``teacher: <recipe>``.

    Starts from ``teacher_run.recipes[recipe]``, then takes from the student: the whole ``data`` section
    (same dataset, root, trial, input size and validation identities: the teacher runs on the student's
    batches and must not have trained on the student's validation identities), ``train.seed``, ``amp``,
    ``deterministic``, ``progress``, ``sync_bn``, ``channels_last`` and ``eval.selection`` /
    ``allow_test_selection``; finally ``teacher_run.overrides``.
    """
    if recipe not in cfg.teacher_run.recipes:
        names = ", ".join(sorted(cfg.teacher_run.recipes))
        raise ConfigError(
            f"teacher={recipe!r} names no recipe in teacher_run.recipes ({names}).",
            fix="use one of those names, or a run/checkpoint folder.",
        )
    base = read_yaml(cfg.teacher_run.recipes[recipe])
    t = cfg.train
    inherited = {
        "data": to_dict(cfg.data),
        "train": {
            "seed": t.seed,
            "amp": t.amp,
            "deterministic": t.deterministic,
            "progress": t.progress,
            "sync_bn": t.sync_bn,
            "channels_last": t.channels_last,
        },
        "eval": {"selection": cfg.eval.selection, "allow_test_selection": cfg.eval.allow_test_selection},
    }
    return load_config(_merged(base, inherited), list(cfg.teacher_run.overrides))


def _finished_run(run_dir: Path, cfg: RunConfig) -> bool:
    """True when ``run_dir`` holds a completed run of ``cfg`` (differences in ``train.progress`` and
    ``data.workers``, which do not change the result, are ignored, as when resuming)."""
    from vireid.config import config_diff
    from vireid.engine.checkpoint import resolve_checkpoint

    try:
        folder = resolve_checkpoint(run_dir, prefer="last")
        meta = json.loads((folder / "meta.json").read_text())
    except (CheckpointError, OSError, ValueError):
        return False
    diffs = [d for d in config_diff(meta.get("config", {}), to_dict(cfg)) if not d.startswith(_IGNORED_ON_REUSE)]
    return meta.get("epoch") == cfg.train.epochs and not diffs


_IGNORED_ON_REUSE = ("train.progress", "data.workers")


def train_teacher_stage(trainer, recipe: str) -> Path:
    """Train (or finish, or reuse) the teacher of ``teacher: <recipe>`` in ``<student run>/teacher``.

    A completed teacher run of the same config is reused; a partial one is resumed from its last
    checkpoint. Returns the teacher's run folder.
    """
    # The nested run uses the class of the trainer that called this hook, so the method layer does not
    # import the engine above it (docs/architecture.md, layers).
    trainer_class = type(trainer)
    cfg: DAKDConfig = trainer.cfg
    teacher_cfg = teacher_stage_config(cfg, recipe)
    run_dir = Path(trainer.run_dir) / "teacher"
    if _finished_run(run_dir, teacher_cfg):
        trainer.logger.print(f"[bold]DAKD teacher[/]: reusing the finished {recipe} teacher in {run_dir}")
        return run_dir
    partial = (run_dir / "checkpoints" / "last.json").is_file()
    trainer.logger.print(
        f"[bold]DAKD stage 1/2[/]: {'resuming' if partial else 'training'} the {recipe} teacher "
        f"({teacher_cfg.method}, {teacher_cfg.train.epochs} epochs) in {run_dir}"
    )
    result = trainer_class(
        teacher_cfg,
        run_dir=None if partial else run_dir,
        resume=run_dir if partial else None,
        console=trainer.logger.console,
        device=str(trainer.dist.device),  # the teacher runs where the student was asked to (--device)
    ).fit()
    if result.interrupted:
        raise TrainingError(
            f"training of the {recipe} teacher in {run_dir} stopped before the end, so the student did not start.",
            fix=f"run the same command again with train.out_dir={Path(trainer.run_dir).parent} "
            f"train.name={Path(trainer.run_dir).name} (the teacher resumes from its last checkpoint), or finish "
            f"it with `vireid train {run_dir / 'config.yaml'} --resume {run_dir}` and pass teacher={run_dir}.",
        )
    trainer.logger.print(f"[bold]DAKD stage 2/2[/]: training the student with the teacher of {run_dir}")
    return run_dir


# --------------------------------------------------------------------------------------------------- method


class DAKDMethod(ImageMethodBase):
    """DAKD student training: frozen teacher, class prototypes, two-level multi-temperature masked KD."""

    name = "dakd"
    config_class = DAKDConfig

    def build_model(self, cfg: DAKDConfig, num_classes: int) -> DAKDNet:
        check_config(cfg)
        # The bias-free classifier exists only when the CE option is on (the release has none).
        # student.bn=per_modality keeps BatchNorm running statistics per modality (evaluation uses them).
        return DAKDNet(
            cfg.model, num_classes if cfg.loss.ce > 0 else 0, modality_running_stats=cfg.student.bn == "per_modality"
        )

    def forward(self, model, batch: CrossModalBatch, ctx: StepContext) -> DAKDOutput:
        state: TeacherState | None = ctx.extras.get("dakd")
        if state is None:
            raise TrainingError(
                "the DAKD teacher is not loaded.",
                fix="train DAKD through vireid.engine.trainer, which calls DAKDMethod.on_train_start.",
            )
        per_modality = ctx.cfg.student.bn != "joint"
        # One student forward per step (the release's duplicate forward is a bug); the per-modality
        # BatchNorm passes happen inside this one call.
        out = model(batch.images, batch.modality, per_modality_bn=per_modality)
        teacher = state.embed(batch.images, batch.modality)
        return DAKDOutput(pooled=out.pooled, bn=out.bn, logits=out.logits, teacher=teacher)

    def loss(self, out: DAKDOutput, batch: CrossModalBatch, ctx: StepContext) -> LossOutput:
        cfg: DAKDConfig = ctx.cfg
        state: TeacherState = ctx.extras["dakd"]
        if state.prototypes is None:
            raise TrainingError("the DAKD prototypes were not computed before the first step.")
        lc = cfg.loss
        parts: dict[str, torch.Tensor] = {}
        terms = distillation_terms(out.bn, out.teacher, batch.label, batch.modality, state.prototypes, cfg.kd, cfg.mask)
        if lc.inst > 0:
            parts["inst"] = lc.inst * terms.inst
        if lc.cls > 0:
            parts["cls"] = lc.cls * terms.cls
        if lc.ce > 0:
            parts["ce"] = lc.ce * cross_entropy_ls(out.logits, batch.label, lc.label_smoothing)
        if lc.tri > 0:
            if lc.metric == "wrt":
                parts["tri"] = lc.tri * weighted_regularized_triplet(out.pooled, batch.label)
            else:
                parts["tri"] = lc.tri * batch_hard_triplet(out.pooled, batch.label, margin=lc.margin)
        total = torch.stack(list(parts.values())).sum()
        logged = {k: v.detach() for k, v in parts.items()}
        logged.update({f"mask_kept_{name}": value for name, value in terms.kept.items()})
        return LossOutput(total=total, parts=logged, terms=parts)

    # ---- engine hooks ------------------------------------------------------------------------------------

    def on_train_start(self, trainer) -> None:
        """Resolve (and if needed train) the teacher, load it frozen, optionally initialise the student."""
        cfg: DAKDConfig = trainer.cfg
        spec = str(cfg.teacher).strip()
        if spec in cfg.teacher_run.recipes:
            path = train_teacher_stage(trainer, spec)
        else:
            path = Path(spec)
            if not path.exists():
                raise ConfigError(
                    f"teacher={spec!r} is neither a recipe ({', '.join(sorted(cfg.teacher_run.recipes))}) nor an "
                    "existing run or checkpoint folder.",
                    fix="pass teacher=mce (default), teacher=baseline, or the folder of a trained vireid run.",
                )
        state = load_teacher(path, trainer.model, trainer.dist.device)
        if cfg.train.channels_last:
            state.model.to(memory_format=torch.channels_last)
        dim = getattr(state.model, "feature_dim", None)
        if dim is not None and dim != trainer.model.feature_dim:
            raise ConfigError(
                f"the teacher's embedding has {dim} dimensions but the student's has {trainer.model.feature_dim}; "
                "instance-level distillation compares them entry by entry.",
                fix="use a teacher with the student's feature dimension (same backbone and width).",
            )
        if cfg.student.init == "teacher":
            if state.distillation != "self_kd":
                raise ConfigError(
                    f"student.init=teacher needs the teacher's architecture, but {state.source} differs.",
                    fix="use student.init=imagenet, or a teacher of the same model config.",
                )
            weights = {k: v for k, v in state.model.state_dict().items() if not k.startswith("classifier.")}
            # A teacher with one set of BatchNorm running statistics starts both of the student's sets.
            trainer.model.fill_infrared_statistics(weights)
            trainer.model.load_state_dict(weights, strict=False)
        trainer.method_state["dakd"] = state
        trainer.logger.print(
            f"DAKD teacher: {state.source} (method {state.method}); distillation: {state.distillation}; "
            f"student init: {cfg.student.init}"
        )

    def on_epoch_start(self, trainer, epoch: int) -> None:
        """Compute the class prototypes once (a resumed run restores them from its checkpoint)."""
        state: TeacherState = trainer.method_state["dakd"]
        if state.prototypes is None:
            state.prototypes = compute_prototypes(state, trainer)

    def extra_state(self, trainer) -> dict[str, Any]:
        state: TeacherState | None = trainer.method_state.get("dakd")
        if state is None or state.prototypes is None:
            return {}
        return {"prototypes": state.prototypes.detach().cpu()}

    def load_extra_state(self, trainer, saved: dict[str, Any]) -> None:
        state: TeacherState | None = trainer.method_state.get("dakd")
        if state is not None and saved.get("prototypes") is not None:
            state.prototypes = saved["prototypes"].to(trainer.dist.device)

    def checkpoint_extra(self, trainer) -> dict[str, Any]:
        state: TeacherState | None = trainer.method_state.get("dakd")
        if state is None:
            return {}
        return {"distillation": state.distillation, "teacher": state.source, "teacher_method": state.method}


def compute_prototypes(state: TeacherState, trainer) -> torch.Tensor:
    """(2, C, D) teacher prototypes [RGB, IR] over the run's training images (test transform, once)."""
    cfg: DAKDConfig = trainer.cfg
    return identity_mean_embeddings(
        state.embedder.embed_images,
        trainer.train_loader.loader.dataset,
        [RGB, IR],
        trainer.split.num_classes,
        device=trainer.dist.device,
        batch_size=cfg.prototypes.batch_size,
        workers=cfg.data.workers,
        seed=cfg.train.seed,
        autocast_dtype=trainer.amp_dtype,
    )


METHOD = DAKDMethod()
