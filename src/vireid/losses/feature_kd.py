"""Feature and relation distillation: boundary-constrained feature transfer, similarity-relation KL, and
representation pull-in (DIKDNet's IKDM and CKDM building blocks, method-dikdnet.md 5.4-5.5).

Unlike :mod:`vireid.losses.distillation`, these functions *do* detach their teacher/target side: in every
use the target is a fixed reference (the RGB feature for IKDM, a frozen teacher for CKDM), and detaching
inside the loss makes "no gradient into the target" a property of the loss rather than a caller's habit.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from vireid.losses._precision import at_least_float32


def cosine_distance(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """1 - cos(a, b) along the last dimension; shapes (..., D) -> (...)."""
    return 1.0 - F.cosine_similarity(at_least_float32(a), at_least_float32(b), dim=-1, eps=1e-8)


def boundary_constrained_distill(
    student: torch.Tensor,
    target: torch.Tensor,
    margin: float = 0.2,
    weights: torch.Tensor | None = None,
) -> torch.Tensor:
    """IKDM's hinge: mean_i w_i * max(0, (1 - cos(student_i, sg(target_i))) - margin).

    The target is detached (one-way transfer, RGB -> TIR). Inside the boundary (distance <= margin) the
    loss and its gradient are exactly zero, so the student keeps its own characteristics once it is close
    enough; ``margin`` 0 is plain cosine feature distillation, ``margin`` >= 2 disables the loss.

    Shapes: ``student`` and ``target`` (B, D) or (B, T, D) (token level: the hinge is taken per token and
    averaged over tokens); ``weights`` (B,) (the ``ikdm.gate: text`` indicator) or ``None`` (all 1). The
    mean runs over all B rows, so gated-off rows count as zeros. Returns a scalar.
    """
    if student.shape != target.shape:
        raise ValueError(f"student {tuple(student.shape)} and target {tuple(target.shape)} differ in shape")
    per = torch.relu(cosine_distance(student, target.detach()) - margin)
    if per.dim() > 1:
        per = per.flatten(1).mean(dim=1)
    if weights is not None:
        per = per * weights.to(per.dtype)
    return per.mean()


def _row_kl(teacher_logits: torch.Tensor, student_logits: torch.Tensor) -> torch.Tensor:
    """KL(softmax(teacher) || softmax(student)) per row of (B, C) logits -> (B,)."""
    log_q = F.log_softmax(at_least_float32(teacher_logits), dim=-1)
    log_p = F.log_softmax(at_least_float32(student_logits), dim=-1)
    return (log_q.exp() * (log_q - log_p)).sum(dim=-1)


def similarity_relation_kl(
    teacher_similarity: torch.Tensor, student_similarity: torch.Tensor, temperature: float = 0.05
) -> torch.Tensor:
    """CKDM's relation term for one modality: both directions of a B x B text-image similarity matrix.

    1/2 [ mean_b KL(softmax_row(S^T_b / tau) || softmax_row(S^S_b / tau))
        + mean_b' KL(softmax_col(S^T_b' / tau) || softmax_col(S^S_b' / tau)) ],
    with S[b, b'] = cos(text_b, image_b'). The teacher matrix is detached. Shapes: (B, B) -> scalar.
    """
    if temperature <= 0:
        raise ValueError(f"temperature must be positive, got {temperature}")
    t = teacher_similarity.detach() / temperature
    s = student_similarity / temperature
    return 0.5 * (_row_kl(t, s).mean() + _row_kl(t.t(), s.t()).mean())


def relation_hinge_kl(
    text: torch.Tensor,
    source: torch.Tensor,
    student: torch.Tensor,
    temperature: float = 0.05,
    epsilon: float = 0.1,
) -> torch.Tensor:
    """IKDM's relation form: mean_b max(0, KL(sg(P_source,b) || P_student,b) - epsilon).

    P_m = softmax_row(cos(text, h_m) / temperature) over the batch's images. The text and source sides are
    detached (only the student's features learn). Shapes: all (B, D) -> scalar.
    """
    t = F.normalize(at_least_float32(text.detach()), dim=-1)
    src = F.normalize(at_least_float32(source.detach()), dim=-1)
    stu = F.normalize(at_least_float32(student), dim=-1)
    kl = _row_kl(t @ src.t() / temperature, t @ stu.t() / temperature)
    return torch.relu(kl - epsilon).mean()


def representation_distill(student: torch.Tensor, teacher: torch.Tensor) -> torch.Tensor:
    """CKDM's representation term for one modality: mean_b (1 - cos(student_b, sg(teacher_b))). (B, D) -> scalar."""
    return cosine_distance(student, teacher.detach()).mean()
