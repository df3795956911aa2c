"""The engine hooks of DIKDNet: building, optimiser groups, the paired loader, the stage hook (the stages
themselves are in :mod:`vireid.methods.dikdnet.stages`), forward and loss (method-dikdnet.md 5.6)."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import torch
from torch import nn

from vireid.data.text_pairs import TextPairBatch
from vireid.engine.optim import ParamGroup
from vireid.errors import ConfigError, TrainingError
from vireid.methods.base import LossOutput, StepContext, TrainLoader
from vireid.methods.dikdnet.building import (
    build_side,
    build_tokenizer,
    caption_texts,
    tokenizer_from_state,
    training_captions,
)
from vireid.methods.dikdnet.config import DIKDNetConfig
from vireid.methods.dikdnet.inference import PairOrImageTestTransform, TextPairEmbedder
from vireid.methods.dikdnet.losses import ckdm_losses, ikdm_diagnostics, ikdm_loss, task_loss
from vireid.methods.dikdnet.networks import DIKDNetOutput, OnlineDIKDNet, SideOutput
from vireid.methods.dikdnet.stages import TEACHER_RUN, loader_views, start_stage_two, uses_teacher_targets


class DIKDNetMethod:
    """The engine hooks of DIKDNet (see the module docstring for the schedule)."""

    name = "dikdnet"
    config_class = DIKDNetConfig
    task = "text"
    find_unused_parameters = False

    # ----------------------------------------------------------------------------------------- building
    def build_model(self, cfg: DIKDNetConfig, num_classes: int, tokenizer=None) -> nn.Module:
        """The trained model of ``cfg``: a :class:`DIKDNetSide` (teacher or student), or an
        :class:`OnlineDIKDNet`. Without ``tokenizer``, a tiny text encoder's vocabulary is built from the
        training captions (read with the trainer's holdout rules)."""
        if tokenizer is None:
            tokenizer = build_tokenizer(cfg, training_captions(cfg) if cfg.model.text.name == "tiny" else None)
        if cfg.role == "teacher":
            return build_side(cfg, "teacher", num_classes, tokenizer)
        if cfg.schedule == "online":
            return OnlineDIKDNet(
                build_side(cfg, "teacher", num_classes, tokenizer), build_side(cfg, "student", num_classes, tokenizer)
            )
        return build_side(cfg, "student", num_classes, tokenizer)

    def inference_config(self, cfg: DIKDNetConfig) -> DIKDNetConfig:
        """Build for inference without pretrained files (the checkpoint supplies every tensor)."""
        m = cfg.model
        model = dataclasses.replace(
            m,
            text=dataclasses.replace(m.text, load=False),
            image=dataclasses.replace(m.image, pretrained="none"),
            clip=dataclasses.replace(m.clip, load=False),
        )
        return dataclasses.replace(cfg, model=model)

    def build_inference_model(self, cfg: DIKDNetConfig, meta: dict[str, Any]) -> nn.Module:
        """The model of a checkpoint, with the tokeniser stored in its sidecar (never re-derived from data)."""
        extra = meta.get("extra") or {}
        tokenizer = tokenizer_from_state(extra.get("tokenizer"))
        return self.build_model(cfg, int(meta["num_classes"]), tokenizer=tokenizer)

    def param_groups(self, model: nn.Module, cfg: DIKDNetConfig) -> list[ParamGroup]:
        """IRRA's groups: encoders at ``optim.lr``; classifier and MLM head x ``new_module_lr_mult``; fusion,
        IKDM adaptors and the token projector at ``fusion_lr``; biases x ``bias_lr_mult`` with
        ``bias_weight_decay``."""
        g = cfg.lr_groups
        new_mult = g.new_module_lr_mult
        fusion_mult = g.fusion_lr / cfg.optim.lr if g.fusion_lr is not None else new_mult
        buckets: dict[tuple[str, bool], list[torch.nn.Parameter]] = {}
        for name, param in model.named_parameters():
            parts = name.split(".")
            if any(p in ("fusion", "ikdm_adaptor", "ikdm_reverse_adaptor", "ikdm_token_adaptors") for p in parts) or (
                "token_projector" in parts
            ):
                kind = "fusion"
            elif "classifier" in parts or "mlm" in parts:
                kind = "new"
            else:
                kind = "encoders"
            buckets.setdefault((kind, name.endswith(".bias")), []).append(param)
        mults = {"encoders": 1.0, "new": new_mult, "fusion": fusion_mult}
        groups = []
        for (kind, bias), params in sorted(buckets.items()):
            groups.append(
                ParamGroup(
                    f"{kind}{'_bias' if bias else ''}",
                    params,
                    lr_mult=mults[kind] * (g.bias_lr_mult if bias else 1.0),
                    weight_decay=g.bias_weight_decay if bias else None,
                )
            )
        return groups

    def build_train_loader(self, cfg: DIKDNetConfig, split, dist) -> TrainLoader:
        from vireid.data.text_pairs import build_text_pair_loader
        from vireid.data.transforms.paired import PairedTrainTransform

        a = cfg.aug
        transform = PairedTrainTransform(
            cfg.data.height,
            cfg.data.width,
            flip=a.flip,
            pad=a.pad,
            pad_fill=a.pad_fill,
            erasing_p=a.erasing_p,
            pair_erase=a.pair_erase,
            normalization=a.normalization,
            interpolation=a.interpolation,
        )
        tokenizer = build_tokenizer(cfg, caption_texts(split.captions) if cfg.model.text.name == "tiny" else None)
        epoch_length = cfg.sampler.epoch_length
        if cfg.train.iters_per_epoch > 0:  # CPU demos cap the epoch length
            epoch_length = str(cfg.train.iters_per_epoch)
        views = loader_views(cfg)
        loader = build_text_pair_loader(
            split.records,
            split.captions,
            tokenizer,
            transform,
            P=cfg.sampler.P,
            K=cfg.sampler.K,
            views=views,
            epoch_length=epoch_length,
            seed=cfg.train.seed,
            rank=dist.rank,
            world_size=dist.world_size,
            workers=cfg.data.workers,
            mlm_probability=cfg.loss.mlm_probability if cfg.loss.w_mlm > 0 else None,
            gray3_thermal=cfg.data.thermal_gray3,
        )
        return TrainLoader(
            loader=loader, sampler=loader.batch_sampler, images_per_batch=cfg.sampler.P * cfg.sampler.K * views * 2
        )

    # ------------------------------------------------------------------------------------- stage wiring
    def on_train_start(self, trainer) -> None:
        """Check the tokeniser; for stage 2 of ``two_stage``, get the trained teacher (train it as the nested
        run ``<run>/teacher``, resume it, or load ``teacher.checkpoint``), freeze it into
        ``trainer.method_state['teacher']`` and initialise the student from it."""
        cfg: DIKDNetConfig = trainer.cfg
        model = trainer.model
        if model.tokenizer != trainer.train_loader.loader.dataset.tokenizer:
            raise TrainingError("the model's tokeniser differs from the training loader's; the split changed.")
        if cfg.role == "teacher" or cfg.schedule != "two_stage":
            return
        start_stage_two(trainer, self.name)

    # ----------------------------------------------------------------------------------------- training
    def forward(self, model, batch: TextPairBatch, ctx: StepContext) -> DIKDNetOutput:
        cfg: DIKDNetConfig = ctx.cfg
        if cfg.role == "teacher":
            return DIKDNetOutput.from_sides(model(batch, views=cfg.teacher.views))
        if cfg.schedule == "online":
            teacher_out, student_out = model(batch, views=cfg.teacher.views)
            return DIKDNetOutput.from_sides(student_out, teacher_out)
        student_out = model(batch, views=1)
        if cfg.schedule == "student_only" or not uses_teacher_targets(cfg):
            return DIKDNetOutput.from_sides(student_out)
        teacher = ctx.extras.get("teacher")
        if teacher is None:
            raise TrainingError(
                "stage 2 needs the frozen teacher in trainer.method_state['teacher'], but there is none.",
                fix="train through vireid.engine.trainer.train (its on_train_start hook loads the teacher).",
            )
        with torch.no_grad():
            teacher_out = teacher(batch, views=cfg.teacher.views, targets_only=True)
        return DIKDNetOutput.from_sides(student_out, teacher_out)

    def loss(self, out: DIKDNetOutput, batch: TextPairBatch, ctx: StepContext) -> LossOutput:
        cfg: DIKDNetConfig = ctx.cfg
        label = batch.label
        main, teacher = out.main(), out.teacher()
        parts = task_loss(main, label, cfg.loss)
        diagnostics: dict[str, torch.Tensor] = {}

        def add_ikdm(side: SideOutput, weight: float, prefix: str) -> None:
            parts[f"{prefix}ikdm"] = weight * ikdm_loss(side, cfg.ikdm)
            diagnostics.update(ikdm_diagnostics(side, parts[f"{prefix}ikdm"], prefix))

        if cfg.role == "teacher":
            if cfg.ikdm.weight > 0:
                add_ikdm(main, cfg.ikdm.weight, "")
        else:
            if cfg.schedule == "online" and teacher is not None:
                parts.update(task_loss(teacher, label, cfg.loss, prefix="teacher_"))
                if cfg.ikdm.weight > 0:
                    add_ikdm(teacher, cfg.ikdm.weight, "teacher_")
                if ctx.epoch >= cfg.ckdm.online_start_epoch:
                    parts.update(ckdm_losses(main, teacher, cfg.ckdm))
            elif teacher is not None:
                parts.update(ckdm_losses(main, teacher, cfg.ckdm))
            if cfg.ikdm.student_weight > 0:
                add_ikdm(main, cfg.ikdm.student_weight, "")
        if not parts:
            raise ConfigError("every DIKDNet loss weight is 0; nothing would be trained.")
        total = torch.stack(list(parts.values())).sum()
        return LossOutput(total=total, parts={k: v.detach() for k, v in parts.items()}, diagnostics=diagnostics)

    def checkpoint_extra(self, trainer) -> dict[str, Any]:
        """The tokeniser (a tiny encoder's vocabulary) and the stage, stored in the checkpoint sidecar."""
        extra: dict[str, Any] = {"tokenizer": trainer.model.tokenizer.state_dict(), "role": trainer.cfg.role}
        if trainer.cfg.schedule == "two_stage" and trainer.cfg.role == "student":
            extra["teacher"] = trainer.cfg.teacher.checkpoint or str(Path(trainer.run_dir) / TEACHER_RUN)
        return extra

    # ---------------------------------------------------------------------------------------- inference
    def embedder(self, model: nn.Module, cfg: DIKDNetConfig) -> TextPairEmbedder:
        return TextPairEmbedder(model, batch_size=cfg.eval.batch_size, gray3_thermal=cfg.data.thermal_gray3)

    def test_transform(self, cfg: DIKDNetConfig) -> PairOrImageTestTransform:
        return PairOrImageTestTransform(
            cfg.data.height, cfg.data.width, normalization=cfg.aug.normalization, interpolation=cfg.aug.interpolation
        )
