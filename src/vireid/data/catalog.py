"""The dataset catalog: readers registered by name as lazy factories (detectron2 style).

``get_dataset("sysu", root)`` returns a reader that has not touched the disk yet; it reads on first use.
Built-in readers are registered as import strings, so importing the catalog imports no reader. Users add
their own datasets with :func:`register_dataset`; a factory is any callable ``factory(root, **options)``
returning an object with the :class:`~vireid.data.readers.base.ReidDataset` interface.

Example::

    from vireid.data.catalog import get_dataset
    ds = get_dataset("regdb", "/data/RegDB", trial=3)
    split = ds.train_split(holdout="val", seed=0)
    for trial in ds.protocol("regdb.v2t").trials():
        ...
"""

from __future__ import annotations

import difflib
import importlib
import inspect
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from vireid.errors import ConfigError

if TYPE_CHECKING:
    from vireid.config import DataConfig
    from vireid.data.readers.base import ReidDataset

DatasetFactory = Callable[..., "ReidDataset"]

_BUILTIN: dict[str, str] = {
    "sysu": "vireid.data.readers.sysu:SysuMM01",
    "regdb": "vireid.data.readers.regdb:RegDB",
    "llcm": "vireid.data.readers.llcm:LLCM",
    "rgbnt201": "vireid.data.readers.rgbnt201:RGBNT201",
    "rgbt_pedes": "vireid.data.readers.rgbt_pedes:RGBTPedes",
    "rgbnt201_pedes": "vireid.data.readers.rgbt_pedes:RGBNT201Pedes",
}
_REGISTRY: dict[str, DatasetFactory | str] = dict(_BUILTIN)


def canonical_name(name: str) -> str:
    """Catalog key of ``name``: lower case, ``-`` read as ``_`` (``RGBT-PEDES`` -> ``rgbt_pedes``)."""
    return str(name).strip().lower().replace("-", "_")


def register_dataset(
    name: str, factory: DatasetFactory | None = None, *, overwrite: bool = False
) -> Callable[[DatasetFactory], DatasetFactory] | DatasetFactory:
    """Register ``factory`` under ``name``; usable as a decorator (``@register_dataset("mine")``).

    Raises:
        ConfigError: ``name`` is taken and ``overwrite`` is False.
    """
    key = canonical_name(name)

    def add(fn: DatasetFactory) -> DatasetFactory:
        if key in _REGISTRY and not overwrite:
            raise ConfigError(
                f"a dataset named '{key}' is already registered.", fix="pick another name or overwrite=True."
            )
        if not callable(fn):
            raise ConfigError(f"the factory registered as '{key}' must be callable(root, **options).")
        _REGISTRY[key] = fn
        return fn

    return add(factory) if factory is not None else add


def unregister_dataset(name: str) -> None:
    """Remove a registered dataset (built-ins included)."""
    _REGISTRY.pop(canonical_name(name), None)


def available_datasets() -> list[str]:
    """Names of every registered dataset, sorted."""
    return sorted(_REGISTRY)


def _factory(name: str) -> DatasetFactory:
    key = canonical_name(name)
    if key not in _REGISTRY:
        names = available_datasets()
        near = difflib.get_close_matches(key, names, n=1, cutoff=0.5)
        hint = f" Did you mean '{near[0]}'?" if near else ""
        raise ConfigError(f"unknown dataset '{name}'.{hint} Available: {', '.join(names)}.")
    entry = _REGISTRY[key]
    if isinstance(entry, str):
        module, attr = entry.split(":")
        entry = getattr(importlib.import_module(module), attr)
        _REGISTRY[key] = entry
    return entry


def _accepted_options(factory: DatasetFactory) -> set[str] | None:
    """Keyword options ``factory`` accepts besides ``root`` (``None`` = any, it takes ``**kwargs``)."""
    try:
        params = inspect.signature(factory).parameters
    except (TypeError, ValueError):  # pragma: no cover - builtins without signatures
        return None
    if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values()):
        return None
    return {n for n, p in params.items() if n != "root" and p.kind is not inspect.Parameter.VAR_POSITIONAL}


def get_dataset(name: str, root: str | None, **options: Any) -> ReidDataset:
    """A lazy reader of dataset ``name`` at ``root``; nothing is read until it is used.

    Args:
        name: a registered name (:func:`available_datasets`), e.g. ``sysu``, ``regdb``, ``rgbt-pedes``.
        root: the dataset folder (required: vireid has no default locations).
        **options: reader options, e.g. ``trial=3`` (RegDB), ``strict_counts=True``, ``thermal_dir="TGray"``.

    Raises:
        ConfigError: unknown name or option (the message lists the valid ones).
    """
    factory = _factory(name)
    accepted = _accepted_options(factory)
    if accepted is not None:
        unknown = sorted(set(options) - accepted)
        if unknown:
            raise ConfigError(
                f"dataset '{canonical_name(name)}' has no option {', '.join(repr(u) for u in unknown)}; "
                f"its options are: {', '.join(sorted(accepted)) or 'none'}."
            )
    return factory(root, **options)


def dataset_from_config(data: DataConfig, **options: Any) -> ReidDataset:
    """The reader described by a run's ``data`` config section (``dataset``, ``root``, ``trial``, ...)."""
    factory = _factory(data.dataset)
    accepted = _accepted_options(factory)
    if "strict_counts" not in options and (accepted is None or "strict_counts" in accepted):
        options["strict_counts"] = data.strict_counts
    # Only readers that declare a trial (RegDB) get one: data.trial has a default for every dataset.
    if "trial" not in options and accepted is not None and "trial" in accepted:
        options["trial"] = data.trial
    return get_dataset(data.dataset, data.root, **options)
