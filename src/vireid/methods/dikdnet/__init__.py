"""DIKDNet: text -> RGB+thermal person retrieval with dual teachers, IKDM and CKDM (AAAI 2026).

Only the abstract is public, so everything here beyond the task is vireid's reconstruction
(``../shared/specs/method-dikdnet.md`` section 5; ``docs/methods/dikdnet.md`` explains each choice):

- Two sides, teacher and student, each with a text encoder, an RGB image encoder, a separate thermal (TIR)
  image encoder and a token fusion (:class:`DIKDNetSide`). Teachers see V views (the caption's pair plus
  V - 1 other pairs of the same identity) and average their features over views.
- Task loss on both sides: SDM(fused, text) + ITC(RGB, text) + UITC(TIR, sg(colour-free text)) + optional
  ID and MLM.
- IKDM (stage 1, teachers): boundary-constrained RGB -> TIR feature distillation through an adaptor, the RGB
  side detached: mean w * max(0, 1 - cos(A(h_tir), sg(h_rgb)) - m).
- CKDM (stage 2, teachers frozen): text-image similarity relations (row and column KL) and cosine pull of
  the single-view student features towards the teachers' cross-view aggregates.
- Inference uses the student only: caption -> text feature; pair -> fusion of the two CLS tokens.

How one ``vireid train`` call runs both stages (``schedule: two_stage``, the default): stage 2 is the run
itself; when it starts (``on_train_start``) it trains the teachers as a *nested run* in ``<run>/teacher``
(same config with ``role: teacher`` and ``teacher.epochs`` epochs; resumable like any run), or reuses a
finished one (``teacher.checkpoint``). The frozen teacher is kept in ``trainer.method_state`` and never
enters the student's checkpoint. ``vireid train --resume <run>`` continues whichever stage was interrupted.
``schedule: online`` trains both sides jointly in one model (its checkpoint therefore holds both sides;
inference still uses the student); ``schedule: student_only`` trains the student alone (ablation rungs 0-1).

Modules: :mod:`~vireid.methods.dikdnet.config` (run configuration), :mod:`~vireid.methods.dikdnet.networks`
(sides and their outputs), :mod:`~vireid.methods.dikdnet.building` (tokenisers, encoders, sides),
:mod:`~vireid.methods.dikdnet.losses` (task, IKDM, CKDM), :mod:`~vireid.methods.dikdnet.inference` (test
transform, embedder), :mod:`~vireid.methods.dikdnet.stages` (teachers and stages: views per stage, the nested
teacher run, freezing), :mod:`~vireid.methods.dikdnet.method` (the engine hooks). The names below
are re-exported so that ``vireid.methods.dikdnet`` stays the public import path.
"""

from __future__ import annotations

from vireid.methods.dikdnet.building import (
    build_side,
    build_tokenizer,
    caption_texts,
    initialise_from,
    side_options,
    tokenizer_from_state,
    training_captions,
)
from vireid.methods.dikdnet.config import (
    CKDMConfig,
    ClipWeightsConfig,
    DIKDNetConfig,
    DIKDNetModelConfig,
    IKDMConfig,
    ImageEncoderConfig,
    LrGroupsConfig,
    PairAugConfig,
    StudentConfig,
    TaskLossConfig,
    TeacherConfig,
    TextEncoderConfig,
)
from vireid.methods.dikdnet.inference import PairOrImageTestTransform, TextPairEmbedder
from vireid.methods.dikdnet.losses import ckdm_losses, ikdm_diagnostics, ikdm_loss, task_loss, text_gate
from vireid.methods.dikdnet.method import DIKDNetMethod
from vireid.methods.dikdnet.networks import DIKDNetOutput, DIKDNetSide, OnlineDIKDNet, SideOptions, SideOutput
from vireid.methods.dikdnet.stages import (
    TEACHER_RUN,
    loader_views,
    start_stage_two,
    teacher_stage_config,
    trained_teacher,
)

METHOD = DIKDNetMethod()

__all__ = [
    "METHOD",
    "TEACHER_RUN",
    "CKDMConfig",
    "ClipWeightsConfig",
    "DIKDNetConfig",
    "DIKDNetMethod",
    "DIKDNetModelConfig",
    "DIKDNetOutput",
    "DIKDNetSide",
    "IKDMConfig",
    "ImageEncoderConfig",
    "LrGroupsConfig",
    "OnlineDIKDNet",
    "PairAugConfig",
    "PairOrImageTestTransform",
    "SideOptions",
    "SideOutput",
    "StudentConfig",
    "TaskLossConfig",
    "TeacherConfig",
    "TextEncoderConfig",
    "TextPairEmbedder",
    "build_side",
    "build_tokenizer",
    "caption_texts",
    "ckdm_losses",
    "ikdm_diagnostics",
    "ikdm_loss",
    "initialise_from",
    "loader_views",
    "side_options",
    "start_stage_two",
    "task_loss",
    "teacher_stage_config",
    "text_gate",
    "tokenizer_from_state",
    "trained_teacher",
    "training_captions",
]
