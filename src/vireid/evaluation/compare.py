"""Compare evaluated results: mean +- std per result and paired differences with 95% confidence intervals.

``vireid compare A B C`` answers "does B (or C) beat A, and by how much, beyond the noise?". Each argument is one
*result*: a folder written by ``vireid test`` / ``vireid demo`` (or a run folder whose ``test`` folder holds
one), a protocol-result JSON, or a glob of several seeds of one configuration (``'runs/idkl_seed*'``, quoted so
that the shell does not expand it into several results). A result made of several runs is one configuration
trained with several seeds.

Statistics (docs/evaluation.md, "Comparing results"):

* **mean +- std**: with several seeds, the mean and sample std (ddof = 1) over seeds of each seed's mean over
  trials; with one run, the mean and sample std over its trials (what ``vireid test`` prints).
* **paired difference** of each result against the first: ``d_u = B_u - A_u`` for every pairing unit ``u``,
  reported as ``mean(d)`` with the Student-t interval ``mean(d) +- t_{0.975, n-1} * sd(d) / sqrt(n)``.
  The unit is the **seed** (runs paired by their training seed, each seed's value the mean over the trials both
  runs share) whenever the two results share at least two seeds, because trials of one model share its training
  noise and so understate the uncertainty; otherwise the unit is the **trial** (trials paired by index, which
  the protocols draw with the same seeds for every model), and the interval then covers gallery sampling only.
  The unit and n are printed beside every interval.

Results are only comparable when they were scored the same way on the same data: a different protocol,
dataset (name, or synthetic generator options), re-ranking setting, or set of trials/queries is refused with
one line naming the difference.

Only the report layer is used here (result JSON files written by :class:`~vireid.evaluation.report.ProtocolResult`
and numpy/scipy); nothing is re-evaluated.
"""

from __future__ import annotations

import glob
import json
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from vireid.errors import DataError, ProtocolError

__all__ = [
    "Comparison",
    "PairedDifference",
    "ResultGroup",
    "SeedRun",
    "compare_results",
    "load_result_group",
    "paired_difference",
]

DEFAULT_METRICS = ("R1", "mAP", "mINP")
CONFIDENCE = 0.95
# Metadata that must agree between compared runs, with the name used in the refusal message.
_MUST_AGREE = (
    ("protocol_id", "protocol"),
    ("dataset", "dataset"),
    ("data_identity", "dataset"),
    ("rerank", "re-ranking setting"),
    ("rule", "evaluation rule"),
    ("max_rank", "CMC length"),
)


# ------------------------------------------------------------------------------------------------ loading


@dataclass(frozen=True)
class SeedRun:
    """One trained model's result on one protocol (one protocol-result JSON file).

    Attributes:
        path: the JSON file.
        seed: the training seed (``metadata.train_seed``, else the checkpoint's ``meta.json``), or None.
        protocol_id: e.g. ``sysu.all.single.random``.
        metadata: the result's metadata (protocol, dataset, re-ranking, ...).
        trials: trial index -> metric name -> value in percent.
        num_queries: trial index -> number of queries (trials must match query for query to be paired).
        cmc: (max_rank,) mean CMC over trials, percent.
    """

    path: Path
    seed: int | None
    protocol_id: str
    metadata: dict[str, Any]
    trials: dict[int, dict[str, float]]
    num_queries: dict[int, int]
    cmc: np.ndarray

    def mean(self, metric: str, trials: Sequence[int] | None = None) -> float:
        """Mean of ``metric`` over ``trials`` (default: all of this run's trials)."""
        indices = list(self.trials) if trials is None else list(trials)
        return float(np.mean([self.trials[i][metric] for i in indices]))


@dataclass(frozen=True)
class ResultGroup:
    """One configuration: a label and one run per training seed."""

    label: str
    runs: tuple[SeedRun, ...]

    @property
    def seeds(self) -> list[int | None]:
        return [r.seed for r in self.runs]

    def summary(self, metric: str) -> tuple[float, float, str]:
        """(mean, sample std, unit): over seeds' trial means when several runs, else over the run's trials."""
        if len(self.runs) > 1:
            values = np.array([r.mean(metric) for r in self.runs])
            unit = "seed"
        else:
            values = np.array([v[metric] for v in self.runs[0].trials.values()])
            unit = "trial"
        std = float(values.std(ddof=1)) if len(values) > 1 else float("nan")
        return float(values.mean()), std, unit

    def cmc(self) -> np.ndarray:
        """Mean CMC over runs (each run's own mean over trials), percent."""
        return np.mean(np.stack([r.cmc for r in self.runs]), axis=0)


def _is_result_json(path: Path) -> bool:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError, UnicodeDecodeError):
        return False
    return isinstance(data, dict) and "protocol_id" in data and "trials" in data and "metadata" in data


def _result_files(folder: Path) -> list[Path]:
    """Protocol-result JSON files of a ``vireid test`` folder, a ``vireid demo`` folder or a run folder."""
    for candidate in (folder, folder / "test"):
        found = sorted(p for p in candidate.glob("*.json") if _is_result_json(p)) if candidate.is_dir() else []
        if found:
            return found
    # A run folder: `vireid test RUN` writes into the evaluated checkpoint's folder (RUN/checkpoints/best/test).
    nested = sorted({p.parent for p in folder.glob("**/test/*.json") if _is_result_json(p)})
    if len(nested) > 1:
        listed = ", ".join(str(p) for p in nested)
        raise DataError(
            f"{folder} holds several test folders ({listed}).", fix="name the one to compare instead of the run."
        )
    return sorted(p for p in nested[0].glob("*.json") if _is_result_json(p)) if nested else []


def _followed(path: Path) -> Path:
    """A result JSON itself, or the full result a ``vireid demo`` ``results.json`` points to."""
    if _is_result_json(path):
        return path
    try:
        pointer = json.loads(path.read_text(encoding="utf-8")).get("result_file")
    except (OSError, ValueError, AttributeError):
        pointer = None
    if isinstance(pointer, str) and _is_result_json(path.parent / pointer):
        return path.parent / pointer
    raise DataError(
        f"{path} is not a protocol result written by `vireid test` (no protocol_id, metadata and trials).",
        fix="give the result JSON of `vireid test` (<protocol>.json) or the folder that holds it.",
    )


def _seed_of(data: Mapping[str, Any]) -> int | None:
    meta = data.get("metadata", {})
    seed = meta.get("train_seed")
    if isinstance(seed, list):  # RegDB: one model per trial, possibly trained with different seeds
        return int(seed[0]) if len(set(seed)) == 1 else None
    if seed is not None:
        return int(seed)
    # Results written before train_seed was recorded: read it from the evaluated checkpoint, if still there.
    checkpoint = meta.get("checkpoint")
    if isinstance(checkpoint, str):
        sidecar = Path(checkpoint) / "meta.json"
        try:
            seed = json.loads(sidecar.read_text())["config"]["train"]["seed"]
        except (OSError, ValueError, KeyError, TypeError):
            return None
        return int(seed)
    return None


def _load_run(path: Path) -> SeedRun:
    data = json.loads(path.read_text(encoding="utf-8"))
    trials: dict[int, dict[str, float]] = {}
    num_queries: dict[int, int] = {}
    curves = []
    for trial in data["trials"]:
        index = int(trial["index"])
        values = {k: float(v) for k, v in trial.items() if isinstance(v, int | float) and k not in ("index",)}
        values = {k: v for k, v in values.items() if k.startswith("R") or k in ("mAP", "mINP")}
        trials[index] = values
        num_queries[index] = int(trial.get("num_queries", -1))
        if "cmc" in trial:
            curves.append(np.asarray(trial["cmc"], dtype=np.float64))
    if not trials:
        raise DataError(f"{path} has no per-trial values.", fix="re-run `vireid test` to write a complete result.")
    cmc = np.mean(np.stack(curves), axis=0) if curves else np.asarray(data["cmc"]["mean"], dtype=np.float64)
    return SeedRun(
        path=path,
        seed=_seed_of(data),
        protocol_id=str(data["protocol_id"]),
        metadata=dict(data["metadata"]),
        trials=trials,
        num_queries=num_queries,
        cmc=cmc,
    )


def _expand(spec: str) -> list[Path]:
    """A path, a comma-separated list of paths, or a glob -> existing paths (sorted)."""
    paths: list[Path] = []
    for part in (p for p in spec.split(",") if p):
        if glob.has_magic(part):
            matches = sorted(Path(m) for m in glob.glob(part))
            if not matches:
                raise DataError(f"the pattern {part} matches nothing.", fix="check the path (and quote the glob).")
            paths.extend(matches)
        else:
            path = Path(part)
            if not path.exists():
                raise DataError(f"result {part} does not exist.", fix="give a `vireid test` folder or result JSON.")
            paths.append(path)
    return paths


def load_result_group(spec: str, *, protocol: str | None = None, label: str | None = None) -> ResultGroup:
    """Load one result: ``[LABEL=]PATH``, a comma-separated list of paths, or a glob of seed runs.

    Each path is a result JSON or a folder (``vireid test`` output, ``vireid demo`` output, or a run folder).
    ``protocol`` picks one protocol when a folder holds several; without it a folder must hold exactly one.
    """
    if label is None and "=" in spec and not Path(spec).exists():
        label, spec = spec.split("=", 1)
    runs: list[SeedRun] = []
    for path in _expand(spec):
        files = [_followed(path)] if path.is_file() else _result_files(path)
        if not files:
            raise DataError(
                f"{path} holds no protocol result (no JSON written by `vireid test`).",
                fix="run `vireid test` on the run folder first, or give the result JSON itself.",
            )
        loaded = [_load_run(f) for f in files]
        if protocol is not None:
            chosen = [r for r in loaded if r.protocol_id == protocol]
            if not chosen:
                found = ", ".join(sorted(r.protocol_id for r in loaded))
                raise ProtocolError(f"{path} has no result for protocol {protocol} (it has: {found}).")
        elif len({r.protocol_id for r in loaded}) > 1:
            found = ", ".join(sorted(r.protocol_id for r in loaded))
            raise ProtocolError(f"{path} holds results of several protocols ({found}).", fix="choose with --protocol.")
        else:
            chosen = loaded
        # A plain and a re-ranked result of one protocol: prefer the plain one unless only re-ranked exists.
        plain = [r for r in chosen if r.metadata.get("rerank", "none") == "none"]
        runs.append((plain or chosen)[0])
    seeds = [r.seed for r in runs if r.seed is not None]
    if len(seeds) != len(set(seeds)):
        raise DataError(
            f"result {label or spec} has several runs with the same training seed {sorted(seeds)}.",
            fix="a result groups the seeds of one configuration; list each seed's run once.",
        )
    return ResultGroup(label=label or spec, runs=tuple(runs))


# -------------------------------------------------------------------------------------------- statistics


@dataclass(frozen=True)
class PairedDifference:
    """``mean(B - A)`` over paired units with a Student-t confidence interval.

    Attributes:
        unit: ``seed`` or ``trial``: what one pair is.
        n: number of pairs. differences: the per-pair differences ``B_u - A_u``.
        mean, std: their mean and sample std (ddof = 1; NaN for one pair).
        low, high: the ``confidence`` interval of the mean difference (NaN for one pair).
    """

    unit: str
    n: int
    differences: tuple[float, ...]
    mean: float
    std: float
    low: float
    high: float
    confidence: float = CONFIDENCE

    @property
    def excludes_zero(self) -> bool:
        """True when the interval lies entirely above or entirely below zero."""
        return not math.isnan(self.low) and (self.low > 0 or self.high < 0)

    def formatted(self) -> str:
        """``+2.30 [+0.50, +4.10]`` (percentage points)."""
        if math.isnan(self.low):
            return f"{self.mean:+.2f} [n/a]"
        return f"{self.mean:+.2f} [{self.low:+.2f}, {self.high:+.2f}]"


def paired_difference(
    first: Sequence[float], other: Sequence[float], *, unit: str, confidence: float = CONFIDENCE
) -> PairedDifference:
    """Paired difference ``other - first`` and its Student-t interval ``mean +- t_{(1+c)/2, n-1} sd / sqrt(n)``."""
    from scipy import stats

    a = np.asarray(first, dtype=np.float64)
    b = np.asarray(other, dtype=np.float64)
    if a.shape != b.shape or a.ndim != 1 or len(a) == 0:
        raise ProtocolError(f"paired values must be two equal-length lists, got {a.shape} and {b.shape}.")
    d = b - a
    mean = float(d.mean())
    if len(d) < 2:
        nan = float("nan")
        return PairedDifference(unit, 1, tuple(d.tolist()), mean, nan, nan, nan, confidence)
    std = float(d.std(ddof=1))
    half = float(stats.t.ppf(0.5 + confidence / 2, len(d) - 1)) * std / math.sqrt(len(d))
    return PairedDifference(unit, len(d), tuple(d.tolist()), mean, std, mean - half, mean + half, confidence)


def _check_comparable(reference: SeedRun, run: SeedRun) -> None:
    """Refuse, in one line, two runs scored differently or on different data."""
    for key, what in _MUST_AGREE:
        a, b = reference.metadata.get(key), run.metadata.get(key)
        if key == "protocol_id":
            a, b = reference.protocol_id, run.protocol_id
        if key == "data_identity" and (a is None or b is None):
            continue  # written before vireid recorded it; the dataset name and query counts still apply
        if a != b:
            raise ProtocolError(
                f"cannot compare results with a different {what}: {reference.path} has {key}={a}, "
                f"{run.path} has {key}={b}.",
                fix="compare results of one protocol, dataset and re-ranking setting.",
            )
    if set(reference.trials) != set(run.trials):
        raise ProtocolError(
            f"cannot compare results over different trials: {reference.path} has trials {sorted(reference.trials)}, "
            f"{run.path} has {sorted(run.trials)}.",
            fix="evaluate both with the same number of trials (vireid test --trials).",
        )
    for index, count in reference.num_queries.items():
        other = run.num_queries.get(index)
        if count >= 0 and other is not None and other >= 0 and other != count:
            raise ProtocolError(
                f"cannot compare results on a different dataset: trial {index} has {count} queries in "
                f"{reference.path} but {other} in {run.path}.",
                fix="compare results evaluated on the same data.",
            )


def _pair_seeds(first: ResultGroup, other: ResultGroup) -> tuple[list[tuple[SeedRun, SeedRun]], str]:
    """Runs of the two results paired by training seed (or by position when no seed is recorded)."""
    if all(r.seed is not None for r in (*first.runs, *other.runs)):
        by_seed = {r.seed: r for r in first.runs}
        pairs = [(by_seed[r.seed], r) for r in other.runs if r.seed in by_seed]
        return sorted(pairs, key=lambda p: p[0].seed or 0), "by training seed"
    if all(r.seed is None for r in (*first.runs, *other.runs)) and len(first.runs) == len(other.runs):
        return list(zip(first.runs, other.runs)), "by position (no training seed recorded; runs sorted by path)"
    return [], "no common seeds"


def _difference(first: ResultGroup, other: ResultGroup, metrics: Sequence[str]) -> dict[str, Any]:
    pairs, how = _pair_seeds(first, other)
    if len(pairs) >= 2:
        diffs = {
            m: paired_difference([a.mean(m) for a, _ in pairs], [b.mean(m) for _, b in pairs], unit="seed")
            for m in metrics
        }
        return {"unit": "seed", "pairing": how, "seeds": [a.seed for a, _ in pairs], "metrics": diffs}
    # Fewer than two shared seeds: pair the trials of one run of each (the same seed where one is shared).
    if pairs:
        a, b = pairs[0]
        how = f"by trial of the one run each shares (training seed {a.seed})" if a.seed is not None else how
    else:
        a, b = first.runs[0], other.runs[0]
        how = "by trial of the first run of each result (no common seed)"
    trials = sorted(a.trials)
    diffs = {
        m: paired_difference([a.trials[i][m] for i in trials], [b.trials[i][m] for i in trials], unit="trial")
        for m in metrics
    }
    note = "trials of one model: the interval covers gallery sampling, not training noise"
    return {"unit": "trial", "pairing": f"{how}; {note}", "seeds": [a.seed, b.seed], "metrics": diffs}


# -------------------------------------------------------------------------------------------- comparison


@dataclass
class Comparison:
    """The outcome of :func:`compare_results`: summaries, paired differences, and writers."""

    protocol_id: str
    metrics: tuple[str, ...]
    groups: list[ResultGroup]
    differences: list[dict[str, Any]] = field(default_factory=list)
    """One entry per result after the first: ``{"unit", "pairing", "seeds", "metrics": {name: PairedDifference}}``."""

    @property
    def reference(self) -> ResultGroup:
        return self.groups[0]

    @property
    def rerank(self) -> str:
        return str(self.reference.runs[0].metadata.get("rerank", "none"))

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready: the protocol, per-result summaries and per-seed values, and every paired difference."""
        results = []
        for g in self.groups:
            summary = {}
            for m in self.metrics:
                mean, std, unit = g.summary(m)
                summary[m] = {"mean": mean, "std": None if math.isnan(std) else std, "over": unit}
            results.append(
                {
                    "label": g.label,
                    "seeds": g.seeds,
                    "files": [str(r.path) for r in g.runs],
                    "summary": summary,
                    "per_run": [{"seed": r.seed, **{m: r.mean(m) for m in self.metrics}} for r in g.runs],
                    "cmc": g.cmc().tolist(),
                }
            )
        differences = []
        for g, diff in zip(self.groups[1:], self.differences):
            entry = {"label": g.label, "against": self.reference.label, **{k: diff[k] for k in ("unit", "pairing")}}
            entry["seeds"] = diff["seeds"]
            entry["metrics"] = {
                m: {
                    "mean": d.mean,
                    "low": None if math.isnan(d.low) else d.low,
                    "high": None if math.isnan(d.high) else d.high,
                    "std": None if math.isnan(d.std) else d.std,
                    "n": d.n,
                    "differences": list(d.differences),
                    "excludes_zero": d.excludes_zero,
                }
                for m, d in diff["metrics"].items()
            }
            differences.append(entry)
        return {
            "protocol_id": self.protocol_id,
            "rerank": self.rerank,
            "confidence": CONFIDENCE,
            "metrics": list(self.metrics),
            "results": results,
            "differences": differences,
        }

    def markdown(self) -> str:
        """Two markdown tables: mean +- std per result, then each result minus the first with its 95% CI."""
        title = f"Protocol `{self.protocol_id}`, re-ranking: {self.rerank}"
        lines = [f"### {title}", "", "| result | runs | " + " | ".join(self.metrics) + " |"]
        lines.append("|---|---|" + "---:|" * len(self.metrics))
        for g in self.groups:
            cells = []
            for m in self.metrics:
                mean, std, _ = g.summary(m)
                cells.append(f"{mean:.2f}" if math.isnan(std) else f"{mean:.2f} ± {std:.2f}")
            runs = f"{len(g.runs)} seeds (± over seeds)" if len(g.runs) > 1 else "1 run (± over trials)"
            lines.append(f"| {g.label} | {runs} | " + " | ".join(cells) + " |")
        if self.differences:
            lines += [
                "",
                f"Paired difference against `{self.reference.label}` (percentage points, mean [95% CI]):",
                "",
                "| result | unit (n) | " + " | ".join(f"Δ{m}" for m in self.metrics) + " |",
                "|---|---|" + "---:|" * len(self.metrics),
            ]
            for g, diff in zip(self.groups[1:], self.differences):
                n = next(iter(diff["metrics"].values())).n
                cells = [d.formatted() for d in diff["metrics"].values()]
                lines.append(f"| {g.label} | {diff['unit']} ({n}) | " + " | ".join(cells) + " |")
            lines.append("")
            lines += [f"- `{g.label}`: paired {diff['pairing']}." for g, diff in zip(self.groups[1:], self.differences)]
        return "\n".join(lines) + "\n"

    def save(self, out_dir: str | Path) -> dict[str, Path]:
        """Write ``comparison.md``, ``comparison.json`` and ``comparison_cmc.png`` into ``out_dir``."""
        out = Path(out_dir)
        out.mkdir(parents=True, exist_ok=True)
        paths = {"markdown": out / "comparison.md", "json": out / "comparison.json", "png": out / "comparison_cmc.png"}
        paths["markdown"].write_text(self.markdown(), encoding="utf-8")
        paths["json"].write_text(json.dumps(self.to_dict(), indent=2) + "\n", encoding="utf-8")
        self._plot(paths["png"])
        return paths

    def _plot(self, path: Path) -> None:
        # Figure + Agg canvas directly: no pyplot global state, works without a display.
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure

        fig = Figure(figsize=(5.5, 3.8), dpi=120)
        FigureCanvasAgg(fig)
        ax = fig.add_subplot(1, 1, 1)
        for g in self.groups:
            curve = g.cmc()
            ax.plot(np.arange(1, len(curve) + 1), curve, marker="o", markersize=3, label=f"{g.label} ({len(g.runs)})")
        ax.set_xlabel("rank")
        ax.set_ylabel("matching rate (%)")
        ax.grid(True, alpha=0.3)
        ax.legend(loc="lower right", fontsize=7)
        ax.set_title(f"{self.protocol_id} (rerank={self.rerank})", fontsize=9)
        fig.tight_layout()
        fig.savefig(path)


def compare_results(
    results: Sequence[str | ResultGroup],
    *,
    metrics: Sequence[str] = DEFAULT_METRICS,
    protocol: str | None = None,
) -> Comparison:
    """Compare results (specs as for :func:`load_result_group`, or loaded groups); the first is the reference.

    Raises :class:`~vireid.errors.ProtocolError` naming the difference when two results were scored on another
    protocol, dataset, re-ranking setting or trial set, and when a metric is unknown.
    """
    if not results:
        raise ProtocolError("nothing to compare.", fix="give at least one result folder or JSON.")
    groups = [r if isinstance(r, ResultGroup) else load_result_group(r, protocol=protocol) for r in results]
    reference = groups[0].runs[0]
    for g in groups:
        for run in g.runs:
            _check_comparable(reference, run)
    available = set.intersection(*(set(v) for g in groups for r in g.runs for v in r.trials.values()))
    unknown = [m for m in metrics if m not in available]
    if unknown:
        raise ProtocolError(
            f"unknown metric(s) {', '.join(unknown)} for {reference.protocol_id}.",
            fix=f"choose from {', '.join(sorted(available))}.",
        )
    comparison = Comparison(protocol_id=reference.protocol_id, metrics=tuple(metrics), groups=groups)
    comparison.differences = [_difference(groups[0], g, metrics) for g in groups[1:]]
    return comparison
