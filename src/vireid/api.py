"""The plain-Python entry points: build a model, load a trained one, list and add methods.

These are re-exported at the package top (``vireid.create_model`` etc., imported lazily)::

    import vireid

    model = vireid.create_model("baseline", num_classes=395, model={"backbone": "resnet18", "width": 16})
    features = model.eval().extract(images, modality=1)

    run = vireid.load("runs/baseline-sysu-20260101-120000")   # the run's best checkpoint
    features = run.model.extract(run.transform(pil_image)[None], 2)

    vireid.list_methods(), vireid.list_configs()
    vireid.register_method("mine", MyMethod)                  # then `vireid train cfg.yaml method=mine`

The command line calls the same library functions; nothing here is CLI-only or hidden behind YAML.
"""

from __future__ import annotations

import dataclasses
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from vireid.config import RunConfig, deep_merge, load_config, packaged_configs, to_dict
from vireid.errors import CheckpointError, ConfigError
from vireid.methods.registry import available_methods, get_method, register_method

logger = logging.getLogger(__name__)

__all__ = ["LoadedRun", "create_model", "list_configs", "list_methods", "load", "register_method"]


@dataclass
class LoadedRun:
    """A trained model ready for inference (what :func:`load` returns).

    Attributes:
        model: the network in eval mode on ``device``; ``model.extract(images, modality)`` (image methods)
            or ``extract_texts``/``extract_pairs`` (text methods) compute retrieval features.
        config: the run's resolved config, exactly as trained.
        transform: the test-time preprocessing of the run (PIL image -> normalised tensor; for text methods
            a paired transform taking (RGB, thermal)).
        method: the method object (its ``embedder`` gives the features ``vireid test`` scores).
        checkpoint: the checkpoint folder that was loaded.
        meta: the checkpoint's JSON sidecar (epoch, metrics, dataset, ...).
    """

    model: torch.nn.Module
    config: RunConfig
    transform: Any
    method: Any
    checkpoint: Path
    meta: dict[str, Any]

    @property
    def device(self) -> torch.device:
        return next(iter(self.model.parameters())).device


def list_methods() -> list[str]:
    """Names of every method: built-in, registered with :func:`register_method`, or installed plugins."""
    return available_methods()


def list_configs() -> list[str]:
    """The packaged config presets (``baseline/sysu``, ``idkl/regdb``, ...), usable wherever a YAML path is."""
    root = packaged_configs()
    return sorted(p.relative_to(root).with_suffix("").as_posix() for p in root.rglob("*.yaml"))


def create_model(
    config_or_name: str | Path | dict[str, Any] | RunConfig,
    *,
    num_classes: int,
    pretrained: str | Path | None = None,
    **overrides: Any,
) -> torch.nn.Module:
    """Build the model of a method or config, as ``vireid train`` would, without reading any data.

    Args:
        config_or_name: a method name (``"baseline"``: that method's defaults), a preset (``"idkl/sysu"``,
            see :func:`list_configs`), a YAML path, a config dict, or a :class:`~vireid.config.RunConfig`.
        num_classes: training identities (size of the identity classifier).
        pretrained: ``None`` (default): random initialisation, no weight file is read (``model.pretrained``
            of the config is ignored, as are training-only parts such as teachers). A vireid checkpoint or
            run folder: its weights are copied where names and shapes match (a classifier of another size is
            left fresh; the rest is reported in the log). A weight file (``.pth``/``.safetensors``): the
            backbone's starting weights, as ``model.pretrained=<file>`` does in a config.
        **overrides: config values, by section (``model={"width": 16}``) or dotted with ``__``
            (``model__width=16``); unknown keys are errors, as in YAML configs.

    Returns:
        the ``torch.nn.Module`` (training mode, CPU). Image models retrieve with ``model.extract``.

    A model that depends on the data needs ``data.root`` (``data={"root": ...}``): DIKDNet with the ``tiny``
    word tokenizer builds its vocabulary from the training captions; without a root that is a one-line
    :class:`~vireid.errors.DataError` naming the fix.
    """
    if num_classes < 0:
        raise ConfigError(f"num_classes={num_classes} must be >= 0.")
    cfg = resolve_config(config_or_name, overrides)
    method = get_method(cfg.method)
    from vireid.engine.loading import inference_config

    # Building without files: the method's own notion of "no pretrained parts" when it has one.
    build_cfg = method.inference_config(cfg) if hasattr(method, "inference_config") else inference_config(cfg)
    checkpoint_dir = None
    if pretrained is not None:
        path = Path(pretrained).expanduser()
        if path.is_dir():
            checkpoint_dir = path
        elif path.is_file():
            model_cfg = getattr(build_cfg, "model", None)
            if model_cfg is None or not hasattr(model_cfg, "pretrained"):
                raise ConfigError(
                    f"pretrained={str(path)!r}: method '{cfg.method}' has no model.pretrained backbone file option.",
                    fix="pass a vireid checkpoint or run folder instead.",
                )
            build_cfg = dataclasses.replace(build_cfg, model=dataclasses.replace(model_cfg, pretrained=str(path)))
        else:
            raise CheckpointError(
                f"pretrained={str(path)!r} does not exist.",
                fix="give a vireid checkpoint/run folder, a .pth/.safetensors weight file, or None.",
            )
    model = method.build_model(build_cfg, int(num_classes))
    if checkpoint_dir is not None:
        load_matching_weights(model, checkpoint_dir)
    return model


def resolve_config(config_or_name: str | Path | dict[str, Any] | RunConfig, overrides: dict[str, Any]) -> RunConfig:
    """The :class:`RunConfig` of ``config_or_name`` with keyword ``overrides`` applied (see :func:`create_model`)."""
    if isinstance(config_or_name, RunConfig):
        cfg = config_or_name
    elif isinstance(config_or_name, dict):
        cfg = load_config(config_or_name)
    elif isinstance(config_or_name, str | Path):
        name = str(config_or_name)
        cfg = load_config(None, method=name) if name in available_methods() else load_config(name)
    else:
        raise ConfigError(
            f"create_model: config_or_name must be a method name, preset, YAML path, dict or RunConfig, "
            f"not {type(config_or_name).__name__}."
        )
    if not overrides:
        return cfg
    nested: dict[str, Any] = {}
    for key, value in overrides.items():
        parts = key.split("__")
        target = nested
        for part in parts[:-1]:
            target = target.setdefault(part, {})
        leaf = parts[-1]
        if isinstance(value, dict) and isinstance(target.get(leaf), dict):
            target[leaf].update(value)
        else:
            target[leaf] = value
    if "method" in nested and nested["method"] != cfg.method:
        raise ConfigError("create_model: change the method with the first argument, not with method=...")
    return load_config(deep_merge(to_dict(cfg), nested), method=cfg.method)


def load_matching_weights(model: torch.nn.Module, checkpoint: str | Path) -> dict[str, list[str]]:
    """Copy the tensors of a vireid checkpoint (or a run's best) whose names and shapes fit ``model``.

    Returns ``{"loaded", "missing", "unexpected", "mismatched"}`` key lists; a summary is logged (warning
    when anything but the identity classifier did not fit). Raises :class:`CheckpointError` when nothing fits.
    """
    from vireid.engine.checkpoint import load_checkpoint

    loaded = load_checkpoint(checkpoint)
    own = model.state_dict()
    report: dict[str, list[str]] = {"loaded": [], "missing": [], "unexpected": [], "mismatched": []}
    to_load = {}
    for key, tensor in loaded.state_dict.items():
        if key not in own:
            report["unexpected"].append(key)
        elif tuple(own[key].shape) != tuple(tensor.shape):
            report["mismatched"].append(key)
        else:
            to_load[key] = tensor
            report["loaded"].append(key)
    report["missing"] = [k for k in own if k not in loaded.state_dict]
    if not to_load:
        raise CheckpointError(
            f"no tensor of checkpoint {loaded.path} fits the model (first keys: {', '.join(list(own)[:4])}).",
            fix="pass a checkpoint of the same method and architecture.",
        )
    model.load_state_dict(to_load, strict=False)
    others = [k for k in report["missing"] + report["unexpected"] + report["mismatched"] if "classifier" not in k]
    summary = (
        f"weights from {loaded.path}: {len(to_load)} tensors loaded, {len(report['missing'])} missing, "
        f"{len(report['unexpected'])} unexpected, {len(report['mismatched'])} of another shape"
    )
    if others:
        logger.warning("%s (not fitting: %s)", summary, ", ".join(others[:8]))
    else:
        logger.info(summary)
    return report


def load(run_dir_or_checkpoint: str | Path, device: str | torch.device | None = None) -> LoadedRun:
    """Load a trained model for inference: from a run folder (its best checkpoint) or a checkpoint folder.

    ``device``: ``None`` = CUDA when available, else CPU; an unavailable device is a
    :class:`~vireid.errors.ConfigError`. The model is rebuilt from the config stored with the checkpoint
    (nothing else is read) and put in eval mode.
    """
    from vireid.engine.loading import load_model

    lm = load_model(run_dir_or_checkpoint, device=device)
    transform = lm.method.test_transform(lm.cfg) if hasattr(lm.method, "test_transform") else None
    return LoadedRun(
        model=lm.model, config=lm.cfg, transform=transform, method=lm.method, checkpoint=lm.path, meta=lm.meta
    )
