"""The protocol object: a named, labelled sequence of trials (data spec section 3).

A protocol knows its id (``sysu.all.single.random``), its junk/CMC rule, its trial numbers and its
metadata; :meth:`Protocol.trials` builds one :class:`~vireid.evaluation.trial.Trial` per trial on demand.
Query sets that do not change between trials are built once and shared by every trial, so feature
caches keyed on records extract them once.
"""

from __future__ import annotations

import abc
import copy
import difflib
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

from vireid.data.records import CaptionRecord, ImageRecord
from vireid.errors import ProtocolError
from vireid.evaluation.trial import Rule, Trial


def unknown_protocol(dataset: str, protocol_id: str, valid: Sequence[str]) -> ProtocolError:
    """The error for a protocol id a dataset does not offer, naming the closest valid id."""
    near = difflib.get_close_matches(protocol_id, list(valid), n=1, cutoff=0.5)
    hint = f" Did you mean '{near[0]}'?" if near else ""
    return ProtocolError(f"{dataset} has no protocol '{protocol_id}'.{hint} Valid protocols: {', '.join(valid)}.")


class Protocol(abc.ABC):
    """A named evaluation protocol producing :class:`Trial` objects.

    Attributes:
        id: protocol id, e.g. ``sysu.all.single.random``.
        rule: junk/CMC rule of every trial (``sysu``, ``llcm``, ``regdb``, ``market``, ``text``).
        max_rank: CMC length (20 for ReID, 10 for text).
        trial_indices: the trial numbers this protocol object will produce, in order.
        meta: metadata recorded with every result (mode, shots, sampler, direction, ...); each trial's
            ``meta`` is this plus ``trial``.
    """

    def __init__(
        self,
        protocol_id: str,
        trial_indices: Sequence[int],
        rule: Rule,
        max_rank: int,
        meta: dict[str, Any],
    ):
        self.id = protocol_id
        self.trial_indices: tuple[int, ...] = tuple(trial_indices)
        self.all_trial_indices: tuple[int, ...] = tuple(trial_indices)
        self.rule: Rule = rule
        self.max_rank = max_rank
        self.meta = dict(meta)

    def __repr__(self) -> str:
        return f"{type(self).__name__}(id={self.id!r}, trials={list(self.trial_indices)})"

    @property
    def num_trials(self) -> int:
        return len(self.trial_indices)

    def trials(self) -> Iterator[Trial]:
        """Build and yield each trial in order (built lazily: one gallery sample at a time)."""
        for index in self.trial_indices:
            yield self.trial(index)

    def trial(self, index: int) -> Trial:
        """The trial numbered ``index`` (as the protocol numbers them: SYSU/LLCM 0..9, RegDB 1..10)."""
        if index not in self.all_trial_indices:
            raise ProtocolError(
                f"protocol {self.id} has no trial {index}; its trials are {list(self.all_trial_indices)}."
            )
        query, gallery = self._select(index)
        return Trial(
            protocol_id=self.id,
            index=index,
            query=tuple(query),
            gallery=tuple(gallery),
            rule=self.rule,
            max_rank=self.max_rank,
            meta={**self.meta, "trial": index},
        )

    def restrict(self, trials: int | Sequence[int]) -> Protocol:
        """A copy that produces only some trials: the first ``n`` (int) or the listed trial numbers."""
        available = self.all_trial_indices
        if isinstance(trials, bool):
            raise ProtocolError(f"trials={trials!r} is not a number of trials or a list of trial numbers.")
        if isinstance(trials, int):
            if not 1 <= trials <= len(available):
                raise ProtocolError(
                    f"protocol {self.id} has {len(available)} trial(s); cannot run {trials}.",
                    fix=f"ask for 1..{len(available)} trials.",
                )
            chosen = available[:trials]
        else:
            chosen = tuple(int(t) for t in trials)
            bad = [t for t in chosen if t not in available]
            if bad or not chosen:
                raise ProtocolError(
                    f"protocol {self.id} has no trial(s) {bad or '[]'}; its trials are {list(available)}."
                )
        out = copy.copy(self)
        out.trial_indices = tuple(chosen)
        return out

    @abc.abstractmethod
    def _select(self, index: int) -> tuple[Sequence[ImageRecord | CaptionRecord], Sequence[ImageRecord]]:
        """Query and gallery records of trial ``index``."""


@dataclass(frozen=True)
class DatasetProtocols:
    """The protocols of one dataset: which ids exist, which ``vireid test`` runs, how to build them, and the
    validation trial that mimics them on held-out training identities.

    Readers know nothing about protocols; each protocol module defines one of these for its dataset, and
    the dataset catalog (:mod:`vireid.data.catalog`) binds it to the reader. ``make``, ``validation`` and
    ``ids`` receive the reader (the records and folders it produced), never the other way round.

    Attributes:
        ids: every protocol id, or a function of the reader returning them.
        standard: the ids ``vireid test`` runs by default (the ones papers report).
        make: ``make(reader, protocol_id) -> Protocol`` for a valid id.
        validation: ``validation(reader, split) -> Trial`` on ``split.val_pids`` / ``split.val_records``
            (``None``: the dataset offers no validation trial).
    """

    ids: tuple[str, ...] | Callable[[Any], Sequence[str]]
    standard: tuple[str, ...]
    make: Callable[[Any, str], Protocol]
    validation: Callable[[Any, Any], Trial] | None = None

    def protocol_ids(self, reader: Any) -> list[str]:
        return list(self.ids(reader) if callable(self.ids) else self.ids)

    def protocol(self, reader: Any, protocol_id: str, trials: int | Sequence[int] | None = None) -> Protocol:
        """Protocol ``protocol_id`` of ``reader``, optionally restricted to some trials (see :meth:`Protocol.restrict`).

        Raises:
            ProtocolError: unknown id (the message lists the valid ones) or invalid trials.
        """
        valid = self.protocol_ids(reader)
        if protocol_id not in valid:
            raise unknown_protocol(getattr(reader, "display_name", type(reader).__name__), protocol_id, valid)
        proto = self.make(reader, protocol_id)
        return proto.restrict(trials) if trials is not None else proto

    def validation_trials(self, reader: Any, split: Any) -> list[Trial]:
        """The validation trials of a training split held out with ``holdout="val"`` (else none)."""
        if split.holdout != "val" or self.validation is None:
            return []
        return [self.validation(reader, split)]
