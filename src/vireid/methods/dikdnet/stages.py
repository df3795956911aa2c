"""DIKDNet teachers and stages: which stage reads how many views, the stage-1 (teacher) config, training or
loading the teachers as a nested run, and freezing them for stage 2 (method-dikdnet.md 5.2, 5.6)."""

from __future__ import annotations

import dataclasses
import logging
from pathlib import Path

from torch import nn

from vireid.errors import ConfigError, TrainingError
from vireid.methods.dikdnet.building import initialise_from
from vireid.methods.dikdnet.config import DIKDNetConfig

logger = logging.getLogger(__name__)

TEACHER_RUN = "teacher"
"""Folder of the nested stage-1 (teacher) run inside a two-stage run folder."""


def uses_teacher_targets(cfg: DIKDNetConfig) -> bool:
    """Stage 2 reads the frozen teacher's outputs only when some CKDM term is on."""
    ck = cfg.ckdm
    return ck.relation_weight > 0 or ck.representation_weight > 0 or ck.token_mse > 0


def loader_views(cfg: DIKDNetConfig) -> int:
    """Pairs per training sample: V for teachers (stage 1, online, or stage 2 when CKDM reads them), else 1."""
    if cfg.role == "teacher" or cfg.schedule == "online":
        return cfg.teacher.views
    if cfg.schedule == "two_stage" and uses_teacher_targets(cfg):
        return cfg.teacher.views
    return 1


def teacher_stage_config(cfg: DIKDNetConfig) -> DIKDNetConfig:
    """The stage-1 config of a two-stage run: the same settings with ``role: teacher`` and
    ``teacher.epochs`` epochs (run name and folder are chosen by the caller)."""
    return dataclasses.replace(
        cfg,
        role="teacher",
        train=dataclasses.replace(cfg.train, epochs=cfg.teacher.epochs, name=None),
    )


def trained_teacher(trainer, method_name: str) -> nn.Module:
    """The stage-1 teacher of a two-stage run: loaded from ``teacher.checkpoint``, or trained (or resumed) as
    the nested run ``<run>/teacher`` and loaded from there."""
    from vireid.engine.checkpoint import load_checkpoint
    from vireid.engine.loading import load_model

    # The nested run uses the class of the trainer that called this hook, so the method layer does not
    # import the engine above it (docs/architecture.md, layers), as DAKD's teacher stage does.
    trainer_class = type(trainer)
    cfg: DIKDNetConfig = trainer.cfg
    device = trainer.dist.device
    if cfg.teacher.checkpoint:
        lm = load_model(cfg.teacher.checkpoint, device=device)
        if lm.meta.get("method") != method_name or lm.cfg.role != "teacher":
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
        result = trainer_class(
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


def start_stage_two(trainer, method_name: str) -> None:
    """Stage 2 of ``two_stage``: get the trained teacher (:func:`trained_teacher`), freeze it (no gradient,
    eval mode) into ``trainer.method_state['teacher']`` and initialise the student from it."""
    cfg: DIKDNetConfig = trainer.cfg
    model = trainer.model
    teacher = trained_teacher(trainer, method_name)
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
