"""Checkpoints: weights in safetensors, a JSON sidecar, and a resumable trainer state.

A checkpoint is a folder::

    model.safetensors   the model's state dict (tensors only; no pickled modules)
    meta.json           config, method, epoch, iteration, metrics, selection split, dataset, trial, version
    trainer_state.pt    optimiser, scheduler, AMP scaler, RNG states, sampler position
                        (plain tensors and Python primitives: loadable with ``torch.load(weights_only=True)``)

Writes are atomic: the folder is written under a temporary name and renamed into place, and the
``last.json`` / ``best.json`` pointers are replaced with ``os.replace``. A crash or a full disk while
writing leaves the previous checkpoint and pointers intact.
"""

from __future__ import annotations

import json
import os
import random
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from vireid.errors import CheckpointError

MODEL_FILE = "model.safetensors"
META_FILE = "meta.json"
STATE_FILE = "trainer_state.pt"


@dataclass
class LoadedCheckpoint:
    path: Path
    meta: dict[str, Any]
    state_dict: dict[str, torch.Tensor]


def atomic_write_text(path: Path, text: str) -> None:
    """Write ``text`` to ``path`` via a temporary file in the same folder and ``os.replace``."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w") as handle:
            handle.write(text)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def rng_state() -> dict[str, Any]:
    """All global RNG states as tensors and primitives (``weights_only``-loadable)."""
    np_state = np.random.get_state()
    state: dict[str, Any] = {
        "torch": torch.get_rng_state(),
        "numpy": {
            "keys": torch.from_numpy(np.asarray(np_state[1], dtype=np.int64)),
            "pos": int(np_state[2]),
            "has_gauss": int(np_state[3]),
            "cached_gaussian": float(np_state[4]),
        },
        "python": random.getstate(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    np_state = state["numpy"]
    np.random.set_state(
        (
            "MT19937",
            np_state["keys"].numpy().astype(np.uint32),
            np_state["pos"],
            np_state["has_gauss"],
            np_state["cached_gaussian"],
        )
    )
    py = state["python"]
    random.setstate((py[0], tuple(py[1]), py[2]))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def save_checkpoint(
    folder: Path,
    *,
    model_state: dict[str, torch.Tensor],
    meta: dict[str, Any],
    trainer_state: dict[str, Any] | None = None,
) -> Path:
    """Write a checkpoint folder atomically and return its path.

    ``folder`` must not exist yet unless it is being replaced as a whole (the old folder is removed only
    after the new one is complete).
    """
    from safetensors.torch import save_file

    folder = Path(folder)
    folder.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=folder.parent, prefix=f".{folder.name}.tmp-"))
    try:
        # safetensors refuses shared storage and non-contiguous tensors: store plain contiguous copies.
        tensors = {k: v.detach().to("cpu").contiguous().clone() for k, v in model_state.items()}
        save_file(tensors, str(tmp / MODEL_FILE), metadata={"format": "pt", "vireid": "1"})
        (tmp / META_FILE).write_text(json.dumps(meta, indent=2, sort_keys=True, default=_json_default))
        if trainer_state is not None:
            torch.save(trainer_state, tmp / STATE_FILE)
        for child in tmp.iterdir():
            with open(child, "rb") as handle:
                os.fsync(handle.fileno())
        if folder.exists():
            old = folder.parent / f".{folder.name}.old-{os.getpid()}"
            os.replace(folder, old)
            os.replace(tmp, folder)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, folder)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return folder


def _json_default(obj: Any) -> Any:
    if isinstance(obj, np.generic):
        return obj.item()
    if isinstance(obj, np.ndarray | torch.Tensor):
        return obj.tolist()
    if isinstance(obj, Path):
        return str(obj)
    raise TypeError(f"cannot serialise {type(obj).__name__} into a checkpoint sidecar")


def resolve_checkpoint(path: str | Path, prefer: str = "best") -> Path:
    """Accept a checkpoint folder, a ``checkpoints/`` folder or a run folder and return a checkpoint folder.

    For a run folder the pointer ``prefer`` (``best`` then ``last``) decides.
    """
    path = Path(path)
    if (path / MODEL_FILE).is_file():
        return path
    for base in (path / "checkpoints", path):
        for name in (prefer, "last") if prefer != "last" else ("last",):
            pointer = base / f"{name}.json"
            if pointer.is_file():
                target = base / json.loads(pointer.read_text())["folder"]
                if (target / MODEL_FILE).is_file():
                    return target
    if not path.exists():
        raise CheckpointError(f"checkpoint {path} does not exist.", fix="pass a run folder or a checkpoint folder.")
    raise CheckpointError(
        f"{path} holds no checkpoint (no {MODEL_FILE}, and no best.json/last.json pointer).",
        fix="pass a run folder written by `vireid train` or one of its checkpoints/ sub-folders.",
    )


def load_checkpoint(path: str | Path, prefer: str = "best") -> LoadedCheckpoint:
    """Read weights and sidecar of a checkpoint (see :func:`resolve_checkpoint` for accepted paths)."""
    from safetensors.torch import load_file

    folder = resolve_checkpoint(path, prefer=prefer)
    meta_path = folder / META_FILE
    if not meta_path.is_file():
        raise CheckpointError(f"{folder} has weights but no {META_FILE}; the checkpoint is incomplete.")
    try:
        meta = json.loads(meta_path.read_text())
        state = load_file(str(folder / MODEL_FILE))
    except (OSError, ValueError) as exc:
        raise CheckpointError(f"checkpoint {folder} is unreadable or corrupt: {exc}") from None
    return LoadedCheckpoint(path=folder, meta=meta, state_dict=state)


def load_trainer_state(folder: str | Path) -> dict[str, Any]:
    """Load ``trainer_state.pt`` with ``weights_only=True`` (no arbitrary code execution on load)."""
    path = Path(folder) / STATE_FILE
    if not path.is_file():
        raise CheckpointError(
            f"{folder} has no {STATE_FILE}, so training cannot resume from it (best checkpoints keep weights only).",
            fix="resume from the run folder, which uses the last checkpoint.",
        )
    return torch.load(path, map_location="cpu", weights_only=True)


class CheckpointManager:
    """Writes numbered checkpoints into ``<run>/checkpoints`` and keeps ``last.json``/``best.json`` pointers."""

    def __init__(self, run_dir: Path, keep_last: int = 2):
        self.dir = Path(run_dir) / "checkpoints"
        self.keep_last = max(1, keep_last)

    def save(self, name: str, *, model_state, meta, trainer_state=None, best: bool = False) -> Path:
        folder = save_checkpoint(self.dir / name, model_state=model_state, meta=meta, trainer_state=trainer_state)
        if trainer_state is not None:
            atomic_write_text(self.dir / "last.json", json.dumps({"folder": name}))
        if best:
            save_checkpoint(self.dir / "best", model_state=model_state, meta=meta, trainer_state=None)
            atomic_write_text(self.dir / "best.json", json.dumps({"folder": "best"}))
        self._prune()
        return folder

    def last(self) -> Path | None:
        pointer = self.dir / "last.json"
        if not pointer.is_file():
            return None
        return self.dir / json.loads(pointer.read_text())["folder"]

    def _prune(self) -> None:
        last = self.last()
        numbered = sorted(p for p in self.dir.glob("s*") if p.is_dir() and not p.name.startswith("."))
        stale = [p for p in numbered if p != last][: max(0, len(numbered) - self.keep_last)]
        for folder in stale:
            shutil.rmtree(folder, ignore_errors=True)
