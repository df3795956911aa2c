"""Knowledge-distillation helpers shared by the methods: tempered KL, symmetric KL, logit standardisation.

These are building blocks, not policies: none of them detaches anything. A method that distils from a
frozen teacher passes ``teacher_logits.detach()`` (or computes them under ``no_grad``); IDKL's mutual
learning passes both sides with their graphs.
"""

from __future__ import annotations

from typing import Literal

import torch
import torch.nn.functional as F

from vireid.losses._precision import at_least_float32

Reduction = Literal["batchmean", "sum", "none"]


def _reduce(per_row: torch.Tensor, reduction: Reduction) -> torch.Tensor:
    if reduction == "batchmean":
        return per_row.mean()
    if reduction == "sum":
        return per_row.sum()
    if reduction == "none":
        return per_row
    raise ValueError(f"reduction must be 'batchmean', 'sum' or 'none', got {reduction!r}")


def kl_div_temperature(
    student_logits: torch.Tensor,
    teacher_logits: torch.Tensor,
    temperature: float = 1.0,
    reduction: Reduction = "batchmean",
    target_eps: float = 0.0,
) -> torch.Tensor:
    """T^2 * KL(softmax(t/T) || softmax(s/T)) per row of (B, C) logits; averaged over rows by default.

    The T^2 factor (Hinton et al.) keeps gradient magnitudes comparable across temperatures.
    ``reduction="none"`` returns the (B,) per-sample values (DAKD's confidence masking weighs them).
    ``target_eps`` adds a constant to the teacher probabilities without renormalising, which reproduces
    CAJ's optional logit KL (q = softmax(z_t/3) + 1e-7); leave it 0 otherwise. Computed in at least float32.
    """
    if temperature <= 0:
        raise ValueError(f"temperature must be positive, got {temperature}")
    log_p = F.log_softmax(at_least_float32(student_logits) / temperature, dim=-1)
    if target_eps:
        q = F.softmax(at_least_float32(teacher_logits) / temperature, dim=-1) + target_eps
        log_q = q.log()
    else:
        log_q = F.log_softmax(at_least_float32(teacher_logits) / temperature, dim=-1)
        q = log_q.exp()
    per_row = (q * (log_q - log_p)).sum(dim=-1) * temperature**2
    return _reduce(per_row, reduction)


def symmetric_kl(
    a: torch.Tensor, b: torch.Tensor, temperature: float = 1.0, reduction: Reduction = "batchmean"
) -> torch.Tensor:
    """KL(s(b) || s(a)) + KL(s(a) || s(b)) for (B, C) logits, s = row softmax at ``temperature``.

    Each KL is summed over columns and scaled by T^2; rows are averaged (IDKL's SKL at T = 1). Symmetric in
    ``a`` and ``b``; gradients reach both.
    """
    return kl_div_temperature(a, b, temperature, reduction) + kl_div_temperature(b, a, temperature, reduction)


def logit_standardize(x: torch.Tensor, eps: float = 1e-7) -> torch.Tensor:
    """(x - mean) / (std + eps) along the last dimension, with the unbiased std (DAKD's standardisation).

    Removes each row's shift and scale so that teacher and student logits are compared by shape only.
    """
    return (x - x.mean(dim=-1, keepdim=True)) / (x.std(dim=-1, keepdim=True) + eps)
