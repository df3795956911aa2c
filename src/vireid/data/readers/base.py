"""The interface every dataset reader offers, and the pieces of a training split they share.

A reader is created cheaply (the catalog hands out readers lazily) and reads its root on first use. It
offers records, camera folders and one training split (with the identities held out for checkpoint
selection; the engine never selects on test). Readers know nothing about evaluation protocols: a protocol
module (``vireid.evaluation.protocols``) takes what a reader produces, and the dataset catalog
(:mod:`vireid.data.catalog`) binds each reader to its protocols and validation trial. Records carry the
dataset's own identities; training labels are assigned per split from ``sorted(unique pids)`` (G5).
"""

from __future__ import annotations

import abc
import random
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field, replace
from functools import cached_property
from typing import Any, ClassVar

from vireid.data.readers.checks import ExpectedCount, compare_counts, warn
from vireid.data.readers.layout import is_synthetic_root, resolve_root
from vireid.data.records import CaptionRecord, ImageRecord, Modality, relabel
from vireid.errors import ConfigError, DataError

HOLDOUT_CHOICES = ("val", "none")


@dataclass(frozen=True)
class CameraFolder:
    """All images of one identity in one camera folder, sorted by file name (G4).

    Protocols sample galleries from lists of these, id-major and camera-minor (data spec 3.1).
    """

    pid: int
    camid: int
    records: tuple[ImageRecord, ...]


@dataclass(frozen=True, eq=False)
class TrainSplit:
    """What the training engine needs from a dataset.

    Attributes:
        dataset: catalog name of the dataset.
        records: training images with ``label`` in ``0..num_classes-1`` (from sorted pids). For paired
            datasets (RGBT-PEDES, RGBNT201-PEDES, RGBNT201) one record per RGB+thermal pair, with
            ``pair_path`` set.
        num_classes: number of training identities.
        val_trials: validation trials (:class:`vireid.evaluation.trial.Trial`) on the held-out identities.
            A reader leaves this empty; the dataset catalog's binding fills it from ``val_pids`` and
            ``val_records`` (``get_dataset(...).train_split()``). Empty for ``holdout="none"``.
        holdout: ``"val"`` or ``"none"``.
        val_pids: identities held out for validation (dataset ids).
        dropped_pids: training identities left out because they have images in one modality only.
        captions: text datasets: one training sample per non-empty caption; ``pair_index`` indexes
            ``records`` and ``label`` equals the label of that pair.
        meta: facts recorded with a run (RegDB trial, holdout seed, ...).
        val_records: the held-out identities' records, unlabelled (what validation trials are built from).
    """

    dataset: str
    records: list[ImageRecord]
    num_classes: int
    val_trials: list[Any]
    holdout: str
    val_pids: tuple[int, ...] = ()
    dropped_pids: tuple[int, ...] = ()
    captions: list[CaptionRecord] = field(default_factory=list)
    meta: dict[str, Any] = field(default_factory=dict)
    val_records: tuple[ImageRecord, ...] = ()

    @property
    def pairs(self) -> list[ImageRecord]:
        """The RGB+thermal pair records (empty for single-image datasets)."""
        return [r for r in self.records if r.pair_path is not None]

    def of_modality(self, modality: Modality | str) -> list[ImageRecord]:
        """Training records of one modality, in split order."""
        wanted = Modality.parse(modality)
        return [r for r in self.records if r.modality is wanted]

    @property
    def label_to_pid(self) -> dict[int, int]:
        """Training label -> dataset identity."""
        return {r.label: r.pid for r in self.records}


def check_holdout(holdout: str) -> str:
    if holdout not in HOLDOUT_CHOICES:
        raise ConfigError(f"holdout={holdout!r} is not valid; use one of {', '.join(HOLDOUT_CHOICES)}.")
    return holdout


def select_holdout_ids(pids: Iterable[int], val_ids: int, seed: int, dataset: str) -> list[int]:
    """Training identities held out for validation, sorted; deterministic in ``seed``.

    ``val_ids = 0`` means automatic: 10% of the training identities (rounded), at least 2. The choice is
    ``random.Random(seed).sample(sorted(pids), n)``, so it does not depend on set order or on NumPy.
    """
    pool = sorted(set(pids))
    if val_ids < 0:
        raise ConfigError(f"val_ids={val_ids} must be >= 0 (0 = automatic, 10% of the training identities).")
    n = val_ids if val_ids > 0 else max(2, (len(pool) + 5) // 10)
    if n >= len(pool):
        raise ConfigError(
            f"{dataset}: cannot hold out {n} of {len(pool)} training identities for validation.",
            fix="lower data.val_ids, or train without validation (holdout='none', eval.selection=last).",
        )
    return sorted(random.Random(seed).sample(pool, n))


def drop_single_modality(records: Sequence[ImageRecord], where: str) -> tuple[list[ImageRecord], tuple[int, ...]]:
    """Remove identities that have images in one modality only, with a :class:`DataWarning` listing them.

    Cross-modal training samples every identity in both modalities, so such identities cannot be used.
    """
    seen: dict[int, set[Modality]] = {}
    for r in records:
        seen.setdefault(r.pid, set()).add(r.modality)
    dropped = tuple(sorted(pid for pid, mods in seen.items() if len(mods) < 2))
    if not dropped:
        return list(records), ()
    detail = ", ".join(f"{pid} ({next(iter(seen[pid])).name.lower()} only)" for pid in dropped[:20]) + (
        " ..." if len(dropped) > 20 else ""
    )
    warn(
        f"{where}: {len(dropped)} training identities have images in one modality only and are left out "
        f"of training: {detail}."
    )
    keep = set(dropped)
    return [r for r in records if r.pid not in keep], dropped


def assign_labels(records: Sequence[ImageRecord]) -> tuple[list[ImageRecord], int]:
    """Copies of ``records`` with ``label`` = index of ``pid`` in ``sorted(unique pids)`` (G5)."""
    mapping = relabel([r.pid for r in records])
    return [replace(r, label=mapping[r.pid]) for r in records], len(mapping)


def held_out_train_split(
    dataset: str,
    records: Sequence[ImageRecord],
    *,
    holdout: str,
    val_ids: int,
    seed: int,
    display_name: str,
    dropped_pids: tuple[int, ...] = (),
    meta: dict[str, Any] | None = None,
) -> TrainSplit:
    """The usual :class:`TrainSplit`: hold out ``val_ids`` identities (``holdout="val"``) as
    ``val_records``, relabel the rest 0..N-1.

    Readers differ only in how they pick training records; the hold-out choice, relabelling and recorded
    facts are the same for all of them. The validation trial is built from ``val_records`` by the
    dataset's protocol binding (see :mod:`vireid.data.catalog`).
    """
    check_holdout(holdout)
    records = list(records)
    val_pids: tuple[int, ...] = ()
    held_records: tuple[ImageRecord, ...] = ()
    if holdout == "val":
        val_pids = tuple(select_holdout_ids((r.pid for r in records), val_ids, seed, display_name))
        held = set(val_pids)
        held_records = tuple(r for r in records if r.pid in held)
        records = [r for r in records if r.pid not in held]
    records, num_classes = assign_labels(records)
    return TrainSplit(
        dataset=dataset,
        records=records,
        num_classes=num_classes,
        val_trials=[],
        holdout=holdout,
        val_pids=val_pids,
        dropped_pids=dropped_pids,
        meta={**(meta or {}), "holdout_seed": seed if holdout == "val" else None},
        val_records=held_records,
    )


def require_nonempty(items: Sequence[Any], what: str, fix: str) -> None:
    if len(items) == 0:
        raise DataError(f"{what} is empty.", fix=fix)


class ReidDataset(abc.ABC):
    """Base class of the readers: lazy root resolution and count checks.

    Subclasses set ``name`` (catalog key), ``display_name`` and ``layout_hint`` (what the root folder
    should contain, quoted in errors), and implement :meth:`train_split`. Constructors only store options;
    every file access happens on first use, so building a catalog entry costs nothing. Protocols are not
    a reader's business: ``get_dataset(name, root)`` returns the reader bound to them.
    """

    name: ClassVar[str] = ""
    display_name: ClassVar[str] = ""
    layout_hint: ClassVar[str] = ""

    def __init__(self, root: str | None, *, strict_counts: bool = False):
        self._root_arg = root
        self.strict_counts = bool(strict_counts)

    def __repr__(self) -> str:
        return f"{type(self).__name__}(root={self._root_arg!r})"

    @cached_property
    def root(self) -> str:
        """Absolute root folder (checked to exist on first access)."""
        return resolve_root(self._root_arg, self.display_name, self.layout_hint)

    @cached_property
    def synthetic(self) -> bool:
        """True for sets written by ``vireid synth`` (their counts are not compared with the real ones)."""
        return is_synthetic_root(self.root)

    def compare_counts(self, found: dict[str, int], expected: Sequence[ExpectedCount]) -> None:
        """Compare found counts with published ones (G7), honouring ``strict_counts`` and synthetic sets."""
        compare_counts(
            self.display_name, self.root, found, expected, strict=self.strict_counts, synthetic=self.synthetic
        )

    @abc.abstractmethod
    def train_split(self, holdout: str = "val", val_ids: int = 0, seed: int = 0) -> TrainSplit:
        """Training records and the held-out validation identities (see :class:`TrainSplit`)."""
