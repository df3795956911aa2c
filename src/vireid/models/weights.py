"""Offline resolution of pretrained weights.

vireid never downloads anything at run time. ``pretrained: imagenet`` looks for the torchvision ImageNet
file in, in order: ``$VIREID_WEIGHTS``, ``~/.cache/vireid/weights`` and torch's hub cache
(``$TORCH_HOME/hub/checkpoints``, where ``torchvision`` itself stores downloads). ``pretrained: <path>`` uses
that file. When nothing is found the error says which file names were tried and how to obtain one.
"""

from __future__ import annotations

import os
from pathlib import Path

import torch

from vireid.errors import WeightsNotFoundError

# File names torchvision uses for its ImageNet checkpoints (V1 first: the AGW-family releases use V1).
TORCHVISION_FILES: dict[str, tuple[str, ...]] = {
    "resnet18": ("resnet18-f37072fd.pth", "resnet18-5c106cde.pth"),
    "resnet34": ("resnet34-b627a593.pth", "resnet34-333f7ec4.pth"),
    "resnet50": ("resnet50-0676ba61.pth", "resnet50-19c8e357.pth", "resnet50-11ad3fa6.pth"),
    "resnet101": ("resnet101-63fe2227.pth", "resnet101-cd907fc2.pth"),
}

TORCHVISION_URLS = {
    "resnet18": "https://download.pytorch.org/models/resnet18-f37072fd.pth",
    "resnet34": "https://download.pytorch.org/models/resnet34-b627a593.pth",
    "resnet50": "https://download.pytorch.org/models/resnet50-0676ba61.pth",
    "resnet101": "https://download.pytorch.org/models/resnet101-63fe2227.pth",
}


def weight_search_paths() -> list[Path]:
    """Folders searched for pretrained weights, in order."""
    paths: list[Path] = []
    env = os.environ.get("VIREID_WEIGHTS")
    if env:
        paths.append(Path(env).expanduser())
    paths.append(Path.home() / ".cache" / "vireid" / "weights")
    torch_home = Path(os.environ.get("TORCH_HOME", Path.home() / ".cache" / "torch")).expanduser()
    paths.append(torch_home / "hub" / "checkpoints")
    return paths


def resolve_pretrained(spec: str | None, arch: str) -> Path | None:
    """Return the weight file for ``spec`` (``none``/``imagenet``/a path) or ``None`` for random init.

    Raises :class:`WeightsNotFoundError` with download instructions when ImageNet weights are asked for
    and no local copy exists.
    """
    if spec is None or str(spec).lower() in {"", "none", "false", "random"}:
        return None
    if str(spec).lower() != "imagenet":
        path = Path(spec).expanduser()
        if not path.is_file():
            raise WeightsNotFoundError(
                f"pretrained weights file {path} does not exist.",
                fix="give the path of a .pth or .safetensors file, or set model.pretrained=none.",
            )
        return path
    names = TORCHVISION_FILES.get(arch, ())
    for folder in weight_search_paths():
        for name in names:
            candidate = folder / name
            if candidate.is_file():
                return candidate
        for candidate in sorted(folder.glob(f"{arch}*.safetensors")) if folder.is_dir() else []:
            return candidate
    url = TORCHVISION_URLS.get(arch, "the torchvision model zoo")
    where = ", ".join(str(p) for p in weight_search_paths())
    raise WeightsNotFoundError(
        f"ImageNet weights for {arch} were asked for (model.pretrained=imagenet) but no local copy was found "
        f"(looked for {', '.join(names) or arch + '*.safetensors'} in: {where}). vireid never downloads at run time.",
        fix=f"download {url} on a machine with internet into {weight_search_paths()[-1]} (or $VIREID_WEIGHTS), "
        "pass model.pretrained=/path/to/file, or train from scratch with model.pretrained=none.",
    )


def load_state_dict_file(path: str | Path) -> dict[str, torch.Tensor]:
    """Load a state dict from .safetensors or a .pth/.pt file (``weights_only=True``)."""
    path = Path(path)
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        return load_file(str(path))
    state = torch.load(str(path), map_location="cpu", weights_only=True)
    if isinstance(state, dict) and "state_dict" in state and isinstance(state["state_dict"], dict):
        state = state["state_dict"]
    if isinstance(state, dict) and "model" in state and isinstance(state["model"], dict):
        state = state["model"]
    return {k.removeprefix("module."): v for k, v in state.items() if isinstance(v, torch.Tensor)}
