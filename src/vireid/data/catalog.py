"""The dataset catalog: readers registered by name as lazy factories (detectron2 style), each bound to
its evaluation protocols.

``get_dataset("sysu", root)`` returns a :class:`Dataset`: the reader (which has not touched the disk yet;
it reads on first use) bound to its protocols. Readers know nothing about protocols and protocols only take
what readers produce; this catalog is the one place that puts the two together, so it sits above both in
the layer picture (``docs/architecture.md``). Built-in readers and protocol bindings are registered as import
strings, so importing the catalog imports neither. Users add their own datasets with
:func:`register_dataset`; a factory is any callable ``factory(root, **options)`` returning an object with the
:class:`~vireid.data.readers.base.ReidDataset` interface, and ``protocols`` a
:class:`~vireid.evaluation.protocols.base.DatasetProtocols` (or an import string of one).

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
from collections.abc import Callable, Sequence
from dataclasses import replace
from typing import TYPE_CHECKING, Any

from vireid.errors import ConfigError

if TYPE_CHECKING:
    from vireid.config import DataConfig
    from vireid.data.readers.base import ReidDataset, TrainSplit

DatasetFactory = Callable[..., "ReidDataset"]

_BUILTIN: dict[str, str] = {
    "sysu": "vireid.data.readers.sysu:SysuMM01",
    "regdb": "vireid.data.readers.regdb:RegDB",
    "llcm": "vireid.data.readers.llcm:LLCM",
    "rgbnt201": "vireid.data.readers.rgbnt201:RGBNT201",
    "rgbt_pedes": "vireid.data.readers.rgbt_pedes:RGBTPedes",
    "rgbnt201_pedes": "vireid.data.readers.rgbt_pedes:RGBNT201Pedes",
}
_BUILTIN_PROTOCOLS: dict[str, str] = {
    "sysu": "vireid.evaluation.protocols.sysu:SYSU_PROTOCOLS",
    "regdb": "vireid.evaluation.protocols.regdb:REGDB_PROTOCOLS",
    "llcm": "vireid.evaluation.protocols.llcm:LLCM_PROTOCOLS",
    "rgbnt201": "vireid.evaluation.protocols.rgbnt201:RGBNT201_PROTOCOLS",
    "rgbt_pedes": "vireid.evaluation.protocols.text:TEXT_PROTOCOLS",
    "rgbnt201_pedes": "vireid.evaluation.protocols.text:TEXT_PROTOCOLS",
}
_REGISTRY: dict[str, DatasetFactory | str] = dict(_BUILTIN)
_PROTOCOLS: dict[str, Any] = dict(_BUILTIN_PROTOCOLS)


def _import(spec: str) -> Any:
    module, attr = spec.split(":")
    return getattr(importlib.import_module(module), attr)


class Dataset:
    """A reader bound to its evaluation protocols: what :func:`get_dataset` returns.

    Everything the reader offers (``root``, ``records(...)``, ``camera_folders(...)``, ...) is available
    on this object; in addition it offers the protocols (:meth:`protocol`, :meth:`protocol_ids`,
    :meth:`standard_protocols`) and a :meth:`train_split` whose ``val_trials`` are built.

    Attributes:
        reader: the reader (a :class:`~vireid.data.readers.base.ReidDataset`); protocols are built on it.
        protocols: the dataset's :class:`~vireid.evaluation.protocols.base.DatasetProtocols`.
    """

    def __init__(self, reader: ReidDataset, protocols: Any):
        self.reader = reader
        self.protocols = protocols

    def __getattr__(self, name: str) -> Any:
        if name.startswith("__") or name in ("reader", "protocols"):  # not set yet (copy, unpickling)
            raise AttributeError(name)
        return getattr(self.reader, name)

    def __repr__(self) -> str:
        return repr(self.reader)

    def protocol_ids(self) -> list[str]:
        """Every protocol id this dataset offers."""
        return self.protocols.protocol_ids(self.reader)

    def standard_protocols(self) -> list[str]:
        """The protocol ids ``vireid test`` runs by default (the ones papers report)."""
        return list(self.protocols.standard)

    def protocol(self, protocol_id: str, trials: int | Sequence[int] | None = None):
        """The evaluation protocol ``protocol_id``, optionally restricted to some trials.

        Args:
            protocol_id: one of :meth:`protocol_ids`.
            trials: ``None`` = every trial of the protocol; an int ``n`` = the first ``n`` trials; a
                sequence = those trial indices (as the protocol numbers them).

        Raises:
            ProtocolError: unknown id (the message lists the valid ones) or invalid trials.
        """
        return self.protocols.protocol(self.reader, protocol_id, trials)

    def train_split(self, holdout: str = "val", val_ids: int = 0, seed: int = 0) -> TrainSplit:
        """The reader's training split with its validation trials built by the protocol binding."""
        split = self.reader.train_split(holdout=holdout, val_ids=val_ids, seed=seed)
        if split.val_trials:
            return split
        return replace(split, val_trials=self.protocols.validation_trials(self.reader, split))


def canonical_name(name: str) -> str:
    """Catalog key of ``name``: lower case, ``-`` read as ``_`` (``RGBT-PEDES`` -> ``rgbt_pedes``)."""
    return str(name).strip().lower().replace("-", "_")


def register_dataset(
    name: str, factory: DatasetFactory | None = None, *, protocols: Any = None, overwrite: bool = False
) -> Callable[[DatasetFactory], DatasetFactory] | DatasetFactory:
    """Register ``factory`` under ``name``; usable as a decorator (``@register_dataset("mine")``).

    ``protocols``: the dataset's :class:`~vireid.evaluation.protocols.base.DatasetProtocols` (or a
    ``"module:ATTR"`` import string of one); with ``None``, :func:`get_dataset` returns the factory's object
    unchanged (it may then implement ``protocol()``/``standard_protocols()`` itself).

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
        _PROTOCOLS[key] = protocols
        return fn

    return add(factory) if factory is not None else add


def unregister_dataset(name: str) -> None:
    """Remove a registered dataset (built-ins included)."""
    _REGISTRY.pop(canonical_name(name), None)
    _PROTOCOLS.pop(canonical_name(name), None)


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
        entry = _import(entry)
        _REGISTRY[key] = entry
    return entry


def dataset_protocols(name: str) -> Any:
    """The :class:`~vireid.evaluation.protocols.base.DatasetProtocols` bound to dataset ``name`` (or ``None``)."""
    key = canonical_name(name)
    entry = _PROTOCOLS.get(key)
    if isinstance(entry, str):
        entry = _import(entry)
        _PROTOCOLS[key] = entry
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


def get_dataset(name: str, root: str | None, **options: Any) -> Dataset | Any:
    """A lazy reader of dataset ``name`` at ``root``, bound to its protocols; nothing is read until used.

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
    reader = factory(root, **options)
    protocols = dataset_protocols(name)
    # A dataset registered without a protocol binding is handed out as its factory made it (such readers
    # may offer protocol() themselves, as every reader did before readers and protocols were separated).
    return reader if protocols is None else Dataset(reader, protocols)


def dataset_from_config(data: DataConfig, **options: Any) -> Dataset:
    """The reader described by a run's ``data`` config section (``dataset``, ``root``, ``trial``, ...)."""
    factory = _factory(data.dataset)
    accepted = _accepted_options(factory)
    if "strict_counts" not in options and (accepted is None or "strict_counts" in accepted):
        options["strict_counts"] = data.strict_counts
    # Only readers that declare a trial (RegDB) get one: data.trial has a default for every dataset.
    if "trial" not in options and accepted is not None and "trial" in accepted:
        options["trial"] = data.trial
    return get_dataset(data.dataset, data.root, **options)
