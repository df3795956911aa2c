"""The interface every dataset reader offers, and the pieces of a training split they share.

A reader is created cheaply (the catalog hands out readers lazily) and reads its root on first use. It
offers one training split (with validation trials for checkpoint selection; the engine never selects on
test) and the evaluation protocols of the dataset (``vireid.evaluation.protocols``). Records carry the
dataset's own identities; training labels are assigned per split from ``sorted(unique pids)`` (G5).
"""

from __future__ import annotations

import abc
import random
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field, replace
from functools import cached_property
from typing import TYPE_CHECKING, Any, ClassVar

from vireid.data.readers.checks import ExpectedCount, compare_counts, warn
from vireid.data.readers.layout import is_synthetic_root, resolve_root
from vireid.data.records import CaptionRecord, ImageRecord, Modality, relabel
from vireid.errors import ConfigError, DataError

if TYPE_CHECKING:
    from vireid.evaluation.protocols.base import Protocol
    from vireid.evaluation.trial import Trial

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
        val_trials: validation trials on identities held out of ``records`` (empty for ``holdout="none"``).
        holdout: ``"val"`` or ``"none"``.
        val_pids: identities of the validation trials (dataset ids).
        dropped_pids: training identities left out because they have images in one modality only.
        captions: text datasets: one training sample per non-empty caption; ``pair_index`` indexes
            ``records`` and ``label`` equals the label of that pair.
        meta: facts recorded with a run (RegDB trial, holdout seed, ...).
    """

    dataset: str
    records: list[ImageRecord]
    num_classes: int
    val_trials: list[Trial]
    holdout: str
    val_pids: tuple[int, ...] = ()
    dropped_pids: tuple[int, ...] = ()
    captions: list[CaptionRecord] = field(default_factory=list)
    meta: dict[str, Any] = field(default_factory=dict)

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
    validation_trial: Callable[[list[ImageRecord]], Trial],
    display_name: str,
    dropped_pids: tuple[int, ...] = (),
    meta: dict[str, Any] | None = None,
) -> TrainSplit:
    """The usual :class:`TrainSplit`: hold out ``val_ids`` identities (``holdout="val"``), build their
    validation trial with ``validation_trial``, relabel the rest 0..N-1.

    Readers differ only in how they pick training records and which validation trial mimics their test
    protocol; the hold-out choice, relabelling and recorded facts are the same for all of them.
    """
    check_holdout(holdout)
    records = list(records)
    val_pids: tuple[int, ...] = ()
    val_trials = []
    if holdout == "val":
        val_pids = tuple(select_holdout_ids((r.pid for r in records), val_ids, seed, display_name))
        held = set(val_pids)
        val_trials = [validation_trial([r for r in records if r.pid in held])]
        records = [r for r in records if r.pid not in held]
    records, num_classes = assign_labels(records)
    return TrainSplit(
        dataset=dataset,
        records=records,
        num_classes=num_classes,
        val_trials=val_trials,
        holdout=holdout,
        val_pids=val_pids,
        dropped_pids=dropped_pids,
        meta={**(meta or {}), "holdout_seed": seed if holdout == "val" else None},
    )


def require_nonempty(items: Sequence[Any], what: str, fix: str) -> None:
    if len(items) == 0:
        raise DataError(f"{what} is empty.", fix=fix)


class ReidDataset(abc.ABC):
    """Base class of the readers: lazy root resolution, count checks, protocol access.

    Subclasses set ``name`` (catalog key), ``display_name`` and ``layout_hint`` (what the root folder
    should contain, quoted in errors), and implement :meth:`train_split`, :meth:`protocol_ids`,
    :meth:`standard_protocols` and :meth:`_make_protocol`. Constructors only store options; every file
    access happens on first use, so building a catalog entry costs nothing.
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
        """Training records and validation trials (see :class:`TrainSplit`)."""

    @abc.abstractmethod
    def protocol_ids(self) -> list[str]:
        """Every protocol id this dataset offers."""

    @abc.abstractmethod
    def standard_protocols(self) -> list[str]:
        """The protocol ids ``vireid test`` runs by default (the ones papers report)."""

    @abc.abstractmethod
    def _make_protocol(self, protocol_id: str) -> Protocol:
        """Build the protocol object for a valid id."""

    def protocol(self, protocol_id: str, trials: int | Sequence[int] | None = None) -> Protocol:
        """The evaluation protocol ``protocol_id``, optionally restricted to some trials.

        Args:
            protocol_id: one of :meth:`protocol_ids`.
            trials: ``None`` = every trial of the protocol; an int ``n`` = the first ``n`` trials; a
                sequence = those trial indices (as the protocol numbers them).

        Raises:
            ProtocolError: unknown id (the message lists the valid ones) or invalid trials.
        """
        from vireid.evaluation.protocols.base import unknown_protocol

        if protocol_id not in self.protocol_ids():
            raise unknown_protocol(self.display_name, protocol_id, self.protocol_ids())
        proto = self._make_protocol(protocol_id)
        return proto.restrict(trials) if trials is not None else proto
