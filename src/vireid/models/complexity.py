"""Parameter and FLOP counts for model tables, and a check for parameters that never learn.

Papers in this field report parameter counts that silently include layers the network never uses (the
IDKL release builds 74.97 M parameters of which 25.48 M never receive a gradient). vireid counts what is
built, what is trainable, and what actually receives a gradient in a real training step, so that "no dead
parameters" is a measured statement.

FLOPs are counted with :class:`torch.utils.flop_counter.FlopCounterMode`, which counts 2 FLOPs per
multiply-add of convolutions and matrix products (element-wise operations, pooling and normalisation are
not counted, as in most papers' "GFLOPs"). Halve the number to get MACs. Counting works on the ``meta``
device, so a full-size ResNet-50 can be measured without allocating it.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode


@dataclass(frozen=True)
class ParameterCount:
    """Numbers of scalar parameters: ``total`` = ``trainable`` + ``frozen`` (``requires_grad=False``)."""

    total: int
    trainable: int
    frozen: int


def count_parameters(model: nn.Module) -> ParameterCount:
    """Count the scalar parameters of ``model`` (shared parameters once)."""
    total = trainable = 0
    for param in model.parameters():
        total += param.numel()
        if param.requires_grad:
            trainable += param.numel()
    return ParameterCount(total=total, trainable=trainable, frozen=total - trainable)


@dataclass(frozen=True)
class GradientCoverage:
    """Which trainable parameters received a usable gradient in one training step.

    Attributes:
        no_grad: names of trainable parameters whose ``.grad`` stayed ``None`` (not in the loss graph).
        zero_grad: names whose gradient exists but is exactly zero everywhere.
        non_finite: names whose gradient contains NaN or infinity.
        dead_numel: scalar parameters in ``no_grad`` and ``zero_grad`` together.
    """

    no_grad: list[str]
    zero_grad: list[str]
    non_finite: list[str]
    dead_numel: int

    @property
    def dead(self) -> list[str]:
        return self.no_grad + self.zero_grad


def gradient_coverage(model: nn.Module, step: Callable[[], torch.Tensor]) -> GradientCoverage:
    """Run one training step and report trainable parameters that got no, zero or non-finite gradients.

    ``step`` computes and returns the scalar loss (forward only); this function clears the gradients,
    calls ``step().backward()`` and inspects every trainable parameter of ``model``. The gradients are left
    in place for the caller to look at.
    """
    model.zero_grad(set_to_none=True)
    step().backward()
    no_grad, zero_grad, non_finite = [], [], []
    dead = 0
    for name, param in model.named_parameters():
        if not param.requires_grad:
            continue
        if param.grad is None:
            no_grad.append(name)
            dead += param.numel()
        elif not torch.isfinite(param.grad).all():
            non_finite.append(name)
        elif not param.grad.any():
            zero_grad.append(name)
            dead += param.numel()
    return GradientCoverage(no_grad=no_grad, zero_grad=zero_grad, non_finite=non_finite, dead_numel=dead)


def count_flops(fn: Callable[..., Any], *args: Any, **kwargs: Any) -> int:
    """FLOPs (2 per multiply-add) of calling ``fn(*args, **kwargs)`` once, without autograd.

    Example: ``count_flops(model.extract, torch.empty(1, 3, 288, 144, device="meta"), 0)``.
    """
    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        fn(*args, **kwargs)
    return int(counter.get_total_flops())


@dataclass(frozen=True)
class ModelComplexity:
    """One row of a model table: parameters and inference FLOPs per image at ``input_size`` (C, H, W)."""

    params: ParameterCount
    inference_flops: int
    input_size: tuple[int, int, int]

    def row(self) -> dict[str, float | str]:
        """Millions of parameters and GFLOPs, rounded for a table."""
        return {
            "params_M": round(self.params.total / 1e6, 2),
            "trainable_M": round(self.params.trainable / 1e6, 2),
            "GFLOPs": round(self.inference_flops / 1e9, 2),
            "input": "x".join(str(s) for s in self.input_size),
        }


def model_complexity(
    model: nn.Module, input_size: tuple[int, int, int] = (3, 288, 144), modality: int = 0
) -> ModelComplexity:
    """Parameters of ``model`` and FLOPs of ``model.extract`` for one image of ``input_size`` in eval mode.

    The image is created on the model's device (``meta`` works and allocates nothing). The model's
    training mode is restored afterwards.
    """
    param = next(model.parameters(), None)
    device = param.device if param is not None else torch.device("cpu")
    image = torch.zeros((1, *input_size), device=device)
    was_training = model.training
    model.eval()
    try:
        flops = count_flops(model.extract, image, modality)  # type: ignore[arg-type]
    finally:
        model.train(was_training)
    return ModelComplexity(params=count_parameters(model), inference_flops=flops, input_size=tuple(input_size))
