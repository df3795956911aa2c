"""Rebuild a trained model from a checkpoint for inference (testing, search, export).

The sidecar holds the full resolved config, so the model is rebuilt exactly as trained. Building for
inference never needs the ImageNet file (``model.pretrained`` is set to ``none``: the checkpoint supplies
every weight) and never builds training-only parts such as DAKD's or DIKDNet's teachers.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from vireid.config import RunConfig, load_config
from vireid.engine.checkpoint import load_checkpoint
from vireid.errors import CheckpointError


@dataclass
class LoadedModel:
    model: torch.nn.Module
    cfg: RunConfig
    method: Any
    meta: dict[str, Any]
    path: Path


def inference_config(cfg: RunConfig) -> RunConfig:
    """A copy of ``cfg`` that builds the model without pretrained files or training-only parts."""
    model_cfg = getattr(cfg, "model", None)
    if model_cfg is not None and hasattr(model_cfg, "pretrained"):
        cfg = dataclasses.replace(cfg, model=dataclasses.replace(model_cfg, pretrained="none"))
    return cfg


def load_model(
    checkpoint: str | Path, *, device: str | torch.device | None = None, prefer: str = "best"
) -> LoadedModel:
    """Load the model of a checkpoint (or of a run folder's best checkpoint) in eval mode."""
    from vireid.devices import resolve_device
    from vireid.methods.registry import get_method

    device = resolve_device(device)  # checked before anything is read: a missing GPU is one clear line
    loaded = load_checkpoint(checkpoint, prefer=prefer)
    meta = loaded.meta
    if "config" not in meta or "method" not in meta:
        raise CheckpointError(f"{loaded.path}/meta.json lacks 'config' or 'method'; it was not written by vireid.")
    cfg = load_config(meta["config"], method=meta["method"])
    method = get_method(meta["method"])
    build_cfg = method.inference_config(cfg) if hasattr(method, "inference_config") else inference_config(cfg)
    if hasattr(method, "build_inference_model"):  # e.g. a text model whose vocabulary lives in the sidecar
        model = method.build_inference_model(build_cfg, meta)
    else:
        model = method.build_model(build_cfg, int(meta["num_classes"]))
    missing, unexpected = model.load_state_dict(loaded.state_dict, strict=False)
    if missing or unexpected:
        raise CheckpointError(
            f"checkpoint {loaded.path} does not fit the {meta['method']} model built from its own config: "
            f"missing {sorted(missing)[:6]}, unexpected {sorted(unexpected)[:6]}.",
            fix="was it written by another vireid version? Re-export it with that version.",
        )
    model.to(device).eval()
    return LoadedModel(model=model, cfg=cfg, method=method, meta=meta, path=loaded.path)
