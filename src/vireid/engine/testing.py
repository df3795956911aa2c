"""Evaluate a checkpoint with every standard protocol of its dataset (``vireid test``).

Results are printed as rich tables (mean +- std over trials and per-trial rows), written as JSON and as a
CMC curve per protocol. Re-ranking is off unless asked for, and labelled whenever on. A checkpoint that
was selected on the test split is labelled as such in every output.
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from rich.console import Console

from vireid.engine.checkpoint import atomic_write_text
from vireid.engine.loading import LoadedModel, load_model
from vireid.errors import ConfigError, ProtocolError
from vireid.files import ensure_folder


def test_checkpoint(
    checkpoint: str | Path | LoadedModel | Sequence[str | Path | LoadedModel],
    *,
    dataset: str | None = None,
    root: str | None = None,
    protocols: list[str] | None = None,
    out: str | Path | None = None,
    rerank: str | None = None,
    flip: bool | None = None,
    trials: int | None = None,
    visualize: int = 0,
    batch_size: int | None = None,
    workers: int = 0,
    device: str | None = None,
    amp: str = "none",
    console: Console | None = None,
) -> list[Any]:
    """Run the protocols of ``dataset`` (default: the checkpoint's) and return their ``ProtocolResult``s.

    ``checkpoint`` may also be a list of RegDB checkpoints, one per trial (RegDB trains one model per trial):
    each trial is then scored with its own model and the results are reported as one protocol, mean +- std
    over those trials, the way papers report RegDB. Two checkpoints of the same trial are refused.

    ``device``: where to run (default the GPU if any; an unavailable one is a ``ConfigError``). ``amp``:
    ``none`` (default) extracts in fp32, the precision of ``vireid index``/``search`` and
    ``FeatureExtractor`` by default, so deployed features are the evaluated ones.
    """
    from vireid.data.catalog import get_dataset
    from vireid.evaluation.rerank import RerankOptions
    from vireid.evaluation.runner import run_protocol

    console = console or Console()
    # Checked before any work: a negative count would slice trials off the end (-1 ran 9 of 10 trials).
    for option, value, low in (
        ("trials", trials, 1),
        ("visualize", visualize, 0),
        ("batch_size", batch_size, 1),
        ("workers", workers, 0),
    ):
        if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < low):
            raise ConfigError(f"{option}={value!r} is out of range; it must be an integer >= {low}.")
    items = list(checkpoint) if isinstance(checkpoint, (list, tuple)) else [checkpoint]
    if not items:
        raise ProtocolError("no checkpoint given to test.")
    models = [c if isinstance(c, LoadedModel) else load_model(c, device=device) for c in items]
    lm = models[0]
    if out is not None:
        out_dir = Path(out)
    elif len(models) == 1:
        out_dir = lm.path / "test"
    else:
        out_dir = Path(os.path.commonpath([str(m.path) for m in models])) / "test_regdb_trials"
    # Fail before minutes of feature extraction if the results cannot be written (a file, a read-only disk).
    ensure_folder(out_dir, "test output folder (--out)")
    cfg = lm.cfg
    name = dataset or cfg.data.dataset
    data_root = root or cfg.data.root
    if len(models) > 1 and name != "regdb":
        raise ProtocolError(
            f"{len(models)} checkpoints were given for {name}; only RegDB (one model per trial) combines several "
            "checkpoints into one result. Test the others one at a time."
        )
    # One dataset object per model: RegDB's test split depends on the trial the model was trained on.
    datasets = []
    for m in models:
        options: dict[str, Any] = {}
        if name == "regdb":
            options["trial"] = _regdb_trial(m)
        datasets.append(get_dataset(name, data_root, **options))
    if name == "regdb":
        by_trial: dict[int, LoadedModel] = {}
        for m in models:
            t = _regdb_trial(m)
            if t in by_trial:
                raise ProtocolError(f"checkpoints {by_trial[t].path} and {m.path} were both trained on RegDB trial {t}")
            by_trial[t] = m
        _check_same_inputs(models)
    ds = datasets[0]
    ids = protocols or cfg.eval.protocols or ds.standard_protocols()
    rerank_mode = rerank or cfg.eval.rerank
    rerank_opts = None
    if rerank_mode != "none":
        rerank_opts = RerankOptions(
            k1=cfg.eval.rerank_k1, k2=cfg.eval.rerank_k2, lambda_value=cfg.eval.rerank_lambda, variant=rerank_mode
        )
    use_flip = cfg.eval.flip if flip is None else flip
    embedders = [m.method.embedder(m.model, m.cfg) for m in models]
    transform = lm.method.test_transform(cfg)
    selections = sorted({str(m.meta.get("selection", "unknown")) for m in models})
    selection = selections[0] if len(selections) == 1 else ",".join(selections)
    if "test" in selections:
        console.print("[bold red]A checkpoint was selected on the TEST split; its numbers are optimistic.[/]")
    results = []
    for protocol_id in ids:
        trial_list, per_trial = [], {}
        for d, embedder in zip(datasets, embedders, strict=True):
            for t in d.protocol(protocol_id).trials():
                trial_list.append(t)
                per_trial[t.index] = embedder
        if trials is not None:
            if trials > len(trial_list):  # running fewer trials than asked for would pass silently
                raise ConfigError(
                    f"trials={trials} asked for, but protocol {protocol_id} has {len(trial_list)} trial(s).",
                    fix=f"pass --trials {len(trial_list)} or fewer (or leave it out to run them all).",
                )
            trial_list = trial_list[:trials]
        result = run_protocol(
            trial_list,
            per_trial if len(models) > 1 else embedders[0],
            transform=transform,
            batch_size=batch_size or cfg.eval.batch_size,
            workers=workers,
            device=next(lm.model.parameters()).device,
            flip=use_flip,
            rerank=rerank_opts,
            progress=True,
            thermal_gray3=cfg.data.thermal_gray3,
            selection_split=selection,
            amp=amp,
        )
        paths = [str(m.path) for m in models]
        seeds = sorted({m.cfg.train.seed for m in models})
        # Facts `vireid compare` needs to pair results by seed and to refuse results on other data.
        result = result.with_metadata(
            checkpoint=paths[0] if len(paths) == 1 else paths,
            method=lm.meta.get("method"),
            train_seed=seeds[0] if len(seeds) == 1 else seeds,
            dataset=result.metadata.get("dataset", name),
            data_root=str(Path(data_root).resolve()) if data_root else None,
            data_identity=data_identity(name, data_root),
        )
        converted = converted_from(lm.meta)
        if converted:
            result = result.with_metadata(converted_from=converted)
        console.print(result.table())
        result.save(out_dir)
        if visualize:
            from vireid.inference import FeatureExtractor
            from vireid.visualize import save_worst_queries

            # The result holds no features: the first trial is embedded again, with the runner's settings.
            extractor = FeatureExtractor(lm, batch_size=batch_size or cfg.eval.batch_size, flip=use_flip, amp=amp)
            picture = save_worst_queries(trial_list[0], visualize, out_dir / "ranklists", extractor=extractor)
            console.print(f"rank lists of the {visualize} worst queries: {picture}")
        results.append(result)
    summary = {r.protocol_id: r.to_dict() for r in results}
    atomic_write_text(out_dir / "summary.json", json.dumps(summary, indent=2, default=str))
    console.print(f"results written to {out_dir}")
    return results


def data_identity(dataset: str, root: str | Path | None) -> str:
    """What the evaluated data is, independent of where it lies: the dataset name, plus the generator settings
    for a synthetic set (two synthetic SYSU sets of other seeds or sizes are different data)."""
    from vireid.data.synthetic.layouts import read_marker

    marker = read_marker(root) if root else None
    if not marker:
        return dataset
    options = dict(marker.get("options", {}))
    options.pop("workers", None)  # does not change the output
    settings = ",".join(f"{k}={options[k]}" for k in sorted(options))
    return f"{dataset}:synthetic(layout={marker.get('layout')},v{marker.get('generator_version')},{settings})"


def converted_from(meta: dict[str, Any]) -> str | None:
    """``"agw release file sysu_agw_best.t"`` for a checkpoint written by ``vireid convert``, else ``None``."""
    info = meta.get("converted")
    if not isinstance(info, dict):
        return None
    return f"{info.get('source')} release file {info.get('file')}"


def _regdb_trial(lm: LoadedModel) -> int:
    trained_trial = lm.meta.get("trial")
    if trained_trial is None:
        raise ProtocolError(
            f"checkpoint {lm.path} was not trained on RegDB, so it has no RegDB trial; RegDB test trial k "
            "must use the model trained on trial k."
        )
    return int(trained_trial)


def _check_same_inputs(models: Sequence[LoadedModel]) -> None:
    """Per-trial models share one test transform, so they must agree on method and input size."""
    first = models[0]
    key = (first.meta.get("method"), first.cfg.data.height, first.cfg.data.width)
    for m in models[1:]:
        other = (m.meta.get("method"), m.cfg.data.height, m.cfg.data.width)
        if other != key:
            raise ProtocolError(
                f"RegDB trial checkpoints differ: {first.path} is (method, height, width) = {key}, {m.path} is "
                f"{other}. Combine only the per-trial runs of one recipe."
            )
