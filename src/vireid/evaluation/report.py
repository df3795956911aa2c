"""Protocol results: mean +- std over trials, per-trial tables, JSON and CMC plots.

Numbers are reported as papers report them (spec section 2): R1/R5/R10/R20 (R1/R5/R10 for text), mAP and
mINP, x100 with 2 decimals, as mean +- sample standard deviation (ddof = 1) over trials plus a per-trial table.
Every result carries its metadata (protocol id, sampler, direction, trials, CMC variant, score, re-ranking,
test-time augmentation, checkpoint-selection split), and a re-ranked result says so in every table title and
file it produces, so it can never be mistaken for a plain one.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
from rich.table import Table

from vireid.errors import ProtocolError
from vireid.evaluation.metrics import RetrievalResult

__all__ = ["ProtocolResult", "TrialResult", "format_metric", "metric_names", "summary_table"]

_CMC_POINTS = (1, 5, 10, 20)


def metric_names(max_rank: int) -> tuple[str, ...]:
    """Reported metric names for a CMC length: ``R1, R5, R10, R20, mAP, mINP`` (ranks beyond max_rank dropped)."""
    return (*(f"R{k}" for k in _CMC_POINTS if k <= max_rank), "mAP", "mINP")


def format_metric(mean: float, std: float | None = None) -> str:
    """``"47.50 ± 1.23"`` (2 decimals); just ``"47.50"`` when std is None or NaN (a single trial)."""
    if std is None or (isinstance(std, float) and math.isnan(std)):
        return f"{mean:.2f}"
    return f"{mean:.2f} ± {std:.2f}"


def _percent_metrics(result: RetrievalResult) -> dict[str, float]:
    values = {f"R{k}": 100.0 * float(result.cmc[k - 1]) for k in _CMC_POINTS if k <= len(result.cmc)}
    values["mAP"] = 100.0 * float(result.mAP)
    values["mINP"] = 100.0 * float(result.mINP)
    return values


def _json_ready(value: Any) -> Any:
    """Make metadata JSON-serialisable: NaN -> None, tuples -> lists, paths and unknown objects -> str."""
    if isinstance(value, float):
        return None if math.isnan(value) or math.isinf(value) else value
    if isinstance(value, bool | int | str) or value is None:
        return value
    if isinstance(value, np.generic):
        return _json_ready(value.item())
    if isinstance(value, np.ndarray):
        return [_json_ready(v) for v in value.tolist()]
    if isinstance(value, Mapping):
        return {str(k): _json_ready(v) for k, v in value.items()}
    if isinstance(value, list | tuple | set | frozenset):
        return [_json_ready(v) for v in value]
    return str(value)


@dataclass(frozen=True)
class TrialResult:
    """One trial's metrics with the trial's own metadata (e.g. its sampling seed)."""

    index: int
    result: RetrievalResult
    meta: dict[str, Any] = field(default_factory=dict)

    @property
    def percent(self) -> dict[str, float]:
        """Reported metrics (x100) of this trial."""
        return _percent_metrics(self.result)


@dataclass(frozen=True)
class ProtocolResult:
    """All trials of one protocol run, aggregated.

    Attributes:
        protocol_id: e.g. ``sysu.all.single.random``.
        trials: per-trial results, in run order.
        mean, std: per metric (``R1``... ``mINP``), percent; std is the sample std (ddof = 1), NaN for a single
            trial.
        metadata: protocol id, sampler, direction, trials, CMC variant, score, ``rerank`` (``"none"`` or
            ``k_reciprocal(k1,k2,lambda,variant)``), TTA, checkpoint-selection split, and the trial metadata
            shared by every trial.
    """

    protocol_id: str
    trials: tuple[TrialResult, ...]
    mean: dict[str, float]
    std: dict[str, float]
    metadata: dict[str, Any]

    @classmethod
    def from_trials(
        cls, protocol_id: str, trials: Sequence[TrialResult], metadata: Mapping[str, Any] | None = None
    ) -> ProtocolResult:
        """Aggregate trial results: mean and sample std (ddof = 1) of every reported metric, in percent."""
        if not trials:
            raise ProtocolError(f"protocol {protocol_id}: no trial results to aggregate.")
        max_ranks = {len(t.result.cmc) for t in trials}
        if len(max_ranks) != 1:
            raise ProtocolError(f"protocol {protocol_id}: trials have different CMC lengths {sorted(max_ranks)}.")
        names = metric_names(max_ranks.pop())
        table = np.array([[t.percent[name] for name in names] for t in trials], dtype=np.float64)
        mean = dict(zip(names, table.mean(axis=0).tolist(), strict=True))
        if len(trials) > 1:
            std = dict(zip(names, table.std(axis=0, ddof=1).tolist(), strict=True))
        else:
            std = dict.fromkeys(names, float("nan"))
        meta = {"protocol_id": protocol_id, "rerank": "none", **dict(metadata or {})}
        meta.setdefault("trials", [t.index for t in trials])
        return cls(protocol_id=protocol_id, trials=tuple(trials), mean=mean, std=std, metadata=meta)

    def with_metadata(self, **updates: Any) -> ProtocolResult:
        """A copy with metadata entries added or replaced, e.g. ``with_metadata(selection_split="val")``.

        ``rerank`` cannot be changed this way: the label must describe how the numbers were computed.
        """
        if "rerank" in updates and updates["rerank"] != self.metadata.get("rerank", "none"):
            raise ProtocolError("the rerank label of a result cannot be changed after the fact.")
        return replace(self, metadata={**self.metadata, **updates})

    # ---------------------------------------------------------------------------------------- queries

    @property
    def metric_names(self) -> tuple[str, ...]:
        return tuple(self.mean)

    @property
    def reranked(self) -> bool:
        return self.metadata.get("rerank", "none") != "none"

    @property
    def rerank_label(self) -> str:
        """``rerank=none`` or ``rerank=k_reciprocal(20,6,0.3,joint)``."""
        return f"rerank={self.metadata.get('rerank', 'none')}"

    @property
    def title(self) -> str:
        """Protocol id, plus a loud re-ranking label when re-ranked."""
        if self.reranked:
            return f"{self.protocol_id}  [RE-RANKED: {self.rerank_label}]"
        return self.protocol_id

    def cmc_curve(self) -> tuple[np.ndarray, np.ndarray]:
        """(max_rank,) mean and sample std (NaN for one trial) of the CMC over trials, in percent."""
        curves = np.stack([100.0 * t.result.cmc for t in self.trials])
        std = curves.std(axis=0, ddof=1) if len(curves) > 1 else np.full(curves.shape[1], np.nan)
        return curves.mean(axis=0), std

    def formatted(self) -> dict[str, str]:
        """``{"R1": "47.50 ± 1.23", ...}``."""
        return {name: format_metric(self.mean[name], self.std[name]) for name in self.mean}

    # ---------------------------------------------------------------------------------------- outputs

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready dictionary: metadata, mean/std summary, CMC curve, and per-trial values."""
        mean_cmc, std_cmc = self.cmc_curve()
        return _json_ready(
            {
                "protocol_id": self.protocol_id,
                "metadata": self.metadata,
                "summary": {name: {"mean": self.mean[name], "std": self.std[name]} for name in self.mean},
                "formatted": self.formatted(),
                "cmc": {"mean": mean_cmc, "std": std_cmc},
                "trials": [
                    {
                        "index": t.index,
                        **t.percent,
                        "num_queries": t.result.num_queries,
                        "num_valid_queries": t.result.num_valid_queries,
                        "cmc": 100.0 * t.result.cmc,
                        "meta": t.meta,
                    }
                    for t in self.trials
                ],
            }
        )

    def table(self) -> Table:
        """A rich table: a ``mean ± std`` row, then one row per trial. The title carries the re-ranking label."""
        names = self.metric_names
        table = Table(title=self.title, caption=self._caption(), title_style="bold red" if self.reranked else "bold")
        table.add_column("trial", justify="left")
        for name in names:
            table.add_column(name, justify="right")
        table.add_row("mean ± std", *(format_metric(self.mean[n], self.std[n]) for n in names), style="bold")
        for t in self.trials:
            values = t.percent
            table.add_row(str(t.index), *(f"{values[n]:.2f}" for n in names))
        return table

    def _caption(self) -> str:
        meta = self.metadata
        parts = [self.rerank_label]
        if meta.get("converted_from"):
            parts.insert(0, f"converted from {meta['converted_from']}")
        for key in ("cmc_variant", "score", "tta", "sampler", "direction", "selection_split"):
            if meta.get(key) not in (None, ""):
                parts.append(f"{key}={meta[key]}")
        return ", ".join(parts)

    def save(self, out_dir: str | Path) -> dict[str, Path]:
        """Write ``<protocol_id>.json`` and ``<protocol_id>_cmc.png`` into ``out_dir`` (created if needed).

        Re-ranked results are written as ``<protocol_id>.reranked.json`` / ``<protocol_id>.reranked_cmc.png`` so
        that they never overwrite, or get confused with, the plain result of the same protocol.
        """
        out = Path(out_dir)
        out.mkdir(parents=True, exist_ok=True)
        stem = f"{self.protocol_id}.reranked" if self.reranked else self.protocol_id
        json_path = out / f"{stem}.json"
        json_path.write_text(json.dumps(self.to_dict(), indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
        png_path = out / f"{stem}_cmc.png"
        self._plot_cmc(png_path)
        return {"json": json_path, "png": png_path}

    def _plot_cmc(self, path: Path) -> None:
        # Figure + Agg canvas directly: no pyplot global state, works without a display.
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure

        mean, std = self.cmc_curve()
        ranks = np.arange(1, len(mean) + 1)
        fig = Figure(figsize=(5.0, 3.6), dpi=120)
        FigureCanvasAgg(fig)
        ax = fig.add_subplot(1, 1, 1)
        ax.plot(ranks, mean, marker="o", markersize=3, label=f"mean over {len(self.trials)} trial(s)")
        if len(self.trials) > 1:
            ax.fill_between(ranks, mean - std, np.minimum(mean + std, 100.0), alpha=0.25, label="± std")
        ax.set_xlabel("rank")
        ax.set_ylabel("matching rate (%)")
        ax.set_xlim(1, len(mean))
        ax.grid(True, alpha=0.3)
        ax.legend(loc="lower right", fontsize=8)
        title = self.protocol_id if not self.reranked else f"{self.protocol_id}\nRE-RANKED: {self.rerank_label}"
        ax.set_title(title, fontsize=9, color="darkred" if self.reranked else "black")
        fig.tight_layout()
        fig.savefig(path)


def summary_table(results: Sequence[ProtocolResult], title: str = "results") -> Table:
    """One row per protocol (``mean ± std`` per metric).

    Re-ranked and plain numbers must not share a table without the label, so all results must share one
    re-ranking setting; the table title and a ``rerank`` column carry it.
    """
    if not results:
        raise ProtocolError("summary_table needs at least one ProtocolResult.")
    labels = {r.rerank_label for r in results}
    if len(labels) > 1:
        raise ProtocolError(
            f"summary_table got results with different re-ranking settings ({', '.join(sorted(labels))}).",
            fix="make one table per re-ranking setting.",
        )
    label = labels.pop()
    names: list[str] = []
    for r in results:
        names.extend(n for n in r.metric_names if n not in names)
    reranked = results[0].reranked
    table = Table(title=f"{title}  [RE-RANKED: {label}]" if reranked else title, title_style="bold")
    table.add_column("protocol")
    for name in names:
        table.add_column(name, justify="right")
    table.add_column("rerank")
    for r in results:
        cells = [format_metric(r.mean[n], r.std[n]) if n in r.mean else "-" for n in names]
        table.add_row(r.protocol_id, *cells, r.metadata.get("rerank", "none"))
    return table
