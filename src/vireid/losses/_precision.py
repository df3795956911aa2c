"""Loss arithmetic in at least float32: half-precision inputs (from autocast) are upcast, wider ones kept."""

from __future__ import annotations

import torch

_HALF = (torch.float16, torch.bfloat16)


def at_least_float32(x: torch.Tensor) -> torch.Tensor:
    """``x`` in float32 if it is float16/bfloat16, unchanged otherwise (float64 stays float64)."""
    return x.float() if x.dtype in _HALF else x
