"""Choosing and checking the compute device and the inference precision.

``--device`` on every command (``device=`` in the API): a device that this machine does not have is reported
as one line naming it and what is available, instead of a CUDA traceback from deep inside the first
``.to(device)``.

``--amp`` on ``vireid test``/``index``/``search`` (``amp=`` in the API): every feature extraction path
defaults to fp32 (``none``), so the features a deployed index holds are the features ``vireid test`` scored.
"""

from __future__ import annotations

import torch

from vireid.errors import ConfigError


def available_devices() -> list[str]:
    """Device names usable here, e.g. ``['cpu', 'cuda', 'cuda:0', 'cuda:1']``."""
    names = ["cpu"]
    if torch.cuda.is_available():
        names += ["cuda"] + [f"cuda:{i}" for i in range(torch.cuda.device_count())]
    mps = getattr(torch.backends, "mps", None)
    if mps is not None and mps.is_available():
        names.append("mps")
    return names


def resolve_device(device: str | torch.device | None = None) -> torch.device:
    """``device`` as a :class:`torch.device`, checked to exist; ``None`` = the first GPU if any, else CPU.

    Raises:
        ConfigError: the name is not a device (``cdua``), or this machine lacks it (``cuda`` without a GPU,
            ``cuda:3`` on a two-GPU machine); the message lists the devices that are available.
    """
    if device is None or (isinstance(device, str) and device.strip().lower() in ("", "auto")):
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(device)
    except (RuntimeError, ValueError, TypeError):
        raise ConfigError(
            f"device {str(device)!r} is not a device name.",
            fix=f"use one of: {', '.join(available_devices())}.",
        ) from None
    if dev.type == "cpu":
        return dev
    if dev.type == "cuda":
        count = torch.cuda.device_count() if torch.cuda.is_available() else 0
        if count == 0:
            problem = "no CUDA GPU is visible to PyTorch" + (
                "" if torch.version.cuda else " (this PyTorch build has no CUDA support)"
            )
        elif dev.index is not None and dev.index >= count:
            problem = f"only {count} CUDA GPU(s) are visible (cuda:0 .. cuda:{count - 1})"
        else:
            return dev
    else:
        backend = getattr(torch.backends, dev.type, None) or getattr(torch, dev.type, None)
        is_available = getattr(backend, "is_available", None)
        if callable(is_available) and is_available():
            return dev
        problem = f"the {dev.type} backend is not available in this PyTorch"
    raise ConfigError(
        f"device {str(device)!r} is not available: {problem}.",
        fix=f"use one of: {', '.join(available_devices())}.",
    )


AMP_CHOICES = ("none", "auto", "bf16", "fp16")
"""``--amp`` values. ``none`` (the default everywhere) extracts in fp32."""


def resolve_amp_dtype(amp: str, device: torch.device) -> torch.dtype | None:
    """The autocast dtype for ``amp`` (``none``/``auto``/``bf16``/``fp16``) on ``device``; ``None`` = fp32.

    ``auto`` is bf16 on GPUs that support it, fp16 on other GPUs and fp32 on the CPU, where autocast is
    slower than fp32 for these convolutional networks. Features are returned in fp32 whatever ``amp`` is.
    """
    if amp not in AMP_CHOICES:
        raise ConfigError(f"amp={amp!r} is not one of {', '.join(AMP_CHOICES)}.")
    if amp == "none" or torch.device(device).type != "cuda":
        return None
    if amp == "fp16":
        return torch.float16
    if amp == "bf16":
        return torch.bfloat16
    return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16


def autocast(device: torch.device, dtype: torch.dtype | None):
    """``torch.autocast`` for ``dtype`` on ``device``, or a no-op context for fp32 (``dtype=None``)."""
    import contextlib

    if dtype is None:
        return contextlib.nullcontext()
    return torch.autocast(device_type=torch.device(device).type, dtype=dtype)
