"""Tiny checkpoints and galleries for the deployment tests (inference, index/search, export).

``save_tiny_agw`` writes an untrained ResNet-18 (width 8) AGW network through the engine's own
``save_checkpoint`` with the sidecar fields of ``Trainer._meta``; the infrared stem is perturbed so that the
two modalities really give different features (the stems start as copies of each other). ``write_gallery``
draws per-identity random block patterns plus small per-image noise in a SYSU-like ``cam<c>/<pid>/`` layout,
so that a near-copy of a gallery image is recognisable even by an untrained network.
``register_toy_text_method`` plugs the text method of ``toy_text_method`` into the method registry.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from PIL import Image

from vireid import __version__
from vireid.config import load_config, to_dict
from vireid.engine.checkpoint import save_checkpoint
from vireid.methods import get_method

HEIGHT, WIDTH = 64, 32
NUM_CLASSES = 4

TINY_MODEL = {
    "backbone": "resnet18",
    "pretrained": "none",
    "width": 8,
    "nl_layer2": [1],
    "nl_layer3": [0, 1],
}


def sidecar(cfg, method, num_classes: int) -> dict:
    """The fields that ``vireid.engine.trainer.Trainer._meta`` writes."""
    return {
        "vireid_version": __version__,
        "method": cfg.method,
        "task": getattr(method, "task", "vireid"),
        "dataset": cfg.data.dataset,
        "trial": None,
        "num_classes": num_classes,
        "epoch": 1,
        "iteration": 0,
        "global_step": 3,
        "selection": "last",
        "selection_metric": "mAP",
        "metrics": {},
        "config": to_dict(cfg),
        "extra": {},
    }


def save_tiny_agw(folder: Path, *, flip: bool = False, seed: int = 0) -> Path:
    cfg = load_config(
        {
            "method": "baseline",
            "model": TINY_MODEL,
            "data": {"dataset": "sysu", "height": HEIGHT, "width": WIDTH},
            "eval": {"flip": flip, "selection": "last"},
        }
    )
    method = get_method("baseline")
    torch.manual_seed(seed)
    model = method.build_model(cfg, NUM_CLASSES)
    with torch.no_grad():
        for p in model.stems.infrared.parameters():
            p.add_(0.2 * torch.randn_like(p))
        # Non-trivial BatchNorm statistics, as after training.
        for m in model.modules():
            if isinstance(m, torch.nn.BatchNorm2d | torch.nn.BatchNorm1d):
                m.running_mean.uniform_(-0.1, 0.1)
                m.running_var.uniform_(0.5, 1.5)
    return save_checkpoint(Path(folder), model_state=model.state_dict(), meta=sidecar(cfg, method, NUM_CLASSES))


def identity_pattern(pid: int) -> np.ndarray:
    """An (H, W, 3) uint8 pattern of 8 x 4 coloured blocks, fixed per identity."""
    rng = np.random.default_rng(1000 + pid)
    blocks = rng.integers(0, 256, size=(8, 4, 3), dtype=np.uint8)
    return np.kron(blocks, np.ones((HEIGHT // 8, WIDTH // 4, 1), dtype=np.uint8))


def noisy(pattern: np.ndarray, seed: int, amount: int = 12) -> np.ndarray:
    rng = np.random.default_rng(seed)
    noise = rng.integers(-amount, amount + 1, size=pattern.shape)
    return np.clip(pattern.astype(np.int32) + noise, 0, 255).astype(np.uint8)


def write_gallery(root: Path, pids=(1, 2, 3, 4, 5), per_id: int = 3, cam: int = 1) -> list[tuple[str, int]]:
    """Write ``root/cam<cam>/<pid:04d>/<k:04d>.png``; returns (relative path, pid) in sorted path order."""
    written = []
    for pid in pids:
        for k in range(1, per_id + 1):
            rel = f"cam{cam}/{pid:04d}/{k:04d}.png"
            (root / rel).parent.mkdir(parents=True, exist_ok=True)
            Image.fromarray(noisy(identity_pattern(pid), seed=pid * 100 + k)).save(root / rel)
            written.append((rel, pid))
    return sorted(written)


def register_toy_text_method(monkeypatch) -> None:
    """Register the toy text method in a copy of the method registry that ``monkeypatch`` puts back."""
    import vireid.methods.registry as registry
    from toy_text_method import METHOD

    scoped = registry.REGISTRY.copy()
    scoped.register("toytext", METHOD)
    monkeypatch.setattr(registry, "REGISTRY", scoped)


def save_tiny_text(folder: Path) -> Path:
    """A checkpoint of the toy text method (``register_toy_text_method`` must be active)."""
    cfg = load_config({"method": "toytext", "data": {"dataset": "rgbt_pedes", "height": HEIGHT, "width": WIDTH}})
    method = get_method("toytext")
    torch.manual_seed(1)
    model = method.build_model(cfg, 0)
    return save_checkpoint(Path(folder), model_state=model.state_dict(), meta=sidecar(cfg, method, 0))


def write_pair_gallery(root: Path, pids=(1, 2, 3), per_id: int = 2) -> list[str]:
    """``root/RGB/<pid:04d>_<j>.png`` + ``root/T/<same name>`` (the RGBT-PEDES layout)."""
    names = []
    for pid in pids:
        for j in range(per_id):
            name = f"{pid:04d}_{j}.png"
            pattern = noisy(identity_pattern(pid), seed=pid * 10 + j)
            for sub, img in (("RGB", pattern), ("T", pattern.mean(axis=2).astype(np.uint8))):
                (root / sub).mkdir(parents=True, exist_ok=True)
                Image.fromarray(img).save(root / sub / name)
            names.append(name)
    return sorted(names)
