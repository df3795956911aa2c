"""``convert_checkpoint``: a release file in, an ordinary vireid checkpoint folder out."""

from __future__ import annotations

import hashlib
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from vireid.config import load_config, to_dict
from vireid.convert.mapping import ConversionError, fit_to_model, group_by_prefix, rename_state
from vireid.convert.reading import read_release_file
from vireid.convert.source import ReleaseSource, architecture_facts, config_mismatches
from vireid.convert.sources import get_source
from vireid.engine.checkpoint import save_checkpoint
from vireid.engine.loading import inference_config
from vireid.errors import CheckpointError, ConfigError


def convert_checkpoint(
    src: str | Path,
    *,
    source: str,
    config: str | Path | None = None,
    out: str | Path,
    overrides: Sequence[str] = (),
    overwrite: bool = False,
) -> Path:
    """Convert a released checkpoint into a vireid checkpoint folder and return the folder.

    Args:
        src: the release's file (``*_best.t``, ``model_best.pth``, ...).
        source: the release format, one of :data:`vireid.convert.sources.KNOWN_SOURCES`.
        config: the vireid recipe the file corresponds to (a YAML path or a preset such as
            ``baseline/sysu``); default: the source's preset.
        out: the checkpoint folder to write (``model.safetensors`` + ``meta.json``).
        overrides: dotted config overrides (``data.root=/data/SYSU-MM01``, ``model.non_local=false``).
        overwrite: replace an existing non-empty ``out``.

    The file is read without executing its pickle; every tensor must land by the source's table, the
    architecture the shapes imply must equal the config's (a mismatch names the override) and the weights
    load with ``strict=True``. The sidecar records the provenance (source, file name, sha256, the release's
    stored metrics, the keys dropped and why).
    """
    from vireid import __version__
    from vireid.methods import get_method

    src = Path(src)
    out = Path(out)
    spec = get_source(source)
    if out.exists() and not out.is_dir():
        raise ConfigError(f"--out {out} is a file, not a folder.", fix="give the checkpoint folder to write.")
    if out.exists() and any(out.iterdir()) and not overwrite:
        raise ConfigError(
            f"output folder {out} exists and is not empty.", fix="choose another --out or pass --overwrite."
        )
    cfg = load_config(config if config is not None else spec.default_config, list(overrides))
    if cfg.method not in spec.methods:
        raise ConfigError(
            f"the config's method is '{cfg.method}', but a {spec.name} file holds a {' or '.join(spec.methods)} model.",
            fix=f"pass a {spec.methods[0]} config, e.g. --config {spec.default_config}.",
        )
    loaded = read_release_file(src)
    state, stored = split_container(loaded, spec, src)
    mapped = rename_state(state, spec.mapping)
    if not any(k.startswith("stems.") for k in mapped.tensors):
        raise ConversionError(
            f"{src}: no key of the file matches the {spec.name} table ({spec.release}); first keys: "
            f"{', '.join(list(state)[:4])}.",
            fix="check --from: agw/caj (Cross-Modal-Re-ID-baseline .t files), dakd/mce (DAKD/MCE .t/.pth), "
            "idkl (model_best.pth).",
        )
    facts = architecture_facts(mapped.tensors, spec, state)
    mismatches = config_mismatches(facts, cfg, mapped.tensors, spec)
    if mismatches:
        what = "; ".join(m for m, _ in mismatches)
        fixes = " ".join(o for _, o in mismatches)
        raise ConversionError(
            f"{src} does not fit the config ({what}).",
            fix=f"add the override(s) {fixes} (or pick the matching --config).",
        )
    method = get_method(cfg.method)
    build_cfg = method.inference_config(cfg) if hasattr(method, "inference_config") else inference_config(cfg)
    model = method.build_model(build_cfg, facts.num_classes)
    tensors, filled = fit_to_model(
        mapped, model.state_dict(), spec.mapping, what=f"{src} ({spec.name}) vs the {cfg.method} model of the config"
    )
    model.load_state_dict(tensors, strict=True)
    provenance = {
        "source": spec.name,
        "release": spec.release,
        "release_commit_checked": spec.release_commit,
        "file": src.name,
        "sha256": _sha256(src),
        "stored": stored,
        "dropped": {
            reason: {"count": len(keys), "groups": group_by_prefix(keys, limit=20)}
            for reason, keys in mapped.dropped.items()
        },
        "filled": filled,
        "architecture": facts.as_dict(),
    }
    metrics = {k: stored[k] for k in ("cmc", "mAP", "mINP") if k in stored}
    meta = {
        "vireid_version": __version__,
        "method": cfg.method,
        "task": getattr(method, "task", "vireid"),
        "dataset": cfg.data.dataset,
        "trial": cfg.data.trial if cfg.data.dataset == "regdb" else None,
        "num_classes": facts.num_classes,
        "epoch": stored.get("epoch"),
        "iteration": None,
        "global_step": None,
        # The releases keep the file with the best *test-set* score as *_best; a fixed-epoch file is not selected.
        "selection": "test" if "best" in src.name else "fixed_epoch",
        "selection_metric": None,
        "metrics": metrics,
        "config": to_dict(cfg),
        "extra": {},
        "converted": provenance,
    }
    # save_checkpoint writes a temporary folder and swaps it in: an existing ``out`` is replaced as a whole.
    return save_checkpoint(out, model_state=model.state_dict(), meta=meta)


def split_container(loaded: Any, spec: ReleaseSource, src: Path) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """(state dict, the other stored entries as JSON-ready values) of a loaded release file."""
    if spec.state_key is None:
        container: Any = loaded
        stored: dict[str, Any] = {}
    else:
        if not isinstance(loaded, Mapping) or spec.state_key not in loaded:
            keys = ", ".join(map(str, loaded)) if isinstance(loaded, Mapping) else type(loaded).__name__
            raise ConversionError(
                f"{src} has no '{spec.state_key}' entry (it holds: {keys}); {spec.name} files are "
                f"torch.save({{'{spec.state_key}': state_dict, ...}}).",
                fix="check --from (idkl files are a bare state dict).",
            )
        container = loaded[spec.state_key]
        stored = {str(k): _plain(v) for k, v in loaded.items() if k != spec.state_key}
    if not isinstance(container, Mapping):
        raise ConversionError(f"{src}: the state dict is a {type(container).__name__}, not a mapping of tensors.")
    state = {str(k): v for k, v in container.items() if isinstance(v, torch.Tensor)}
    others = [str(k) for k, v in container.items() if not isinstance(v, torch.Tensor)]
    if others:
        raise ConversionError(f"{src}: state dict entries that are not tensors: {', '.join(others[:5])}.")
    if not state:
        raise CheckpointError(f"{src}: the state dict is empty.")
    return state, stored


def _plain(value: Any) -> Any:
    """NumPy/tensor values -> JSON-ready Python values (the sidecar stores the release's metrics)."""
    if isinstance(value, np.ndarray | torch.Tensor):
        return np.asarray(value.detach().cpu() if isinstance(value, torch.Tensor) else value).tolist()
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, Mapping):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_plain(v) for v in value]
    if value is None or isinstance(value, bool | int | float | str):
        return value
    return str(value)


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()
