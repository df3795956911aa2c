"""Evaluate a checkpoint with every standard protocol of its dataset (``vireid test``).

Results are printed as rich tables (mean +- std over trials and per-trial rows), written as JSON and as a
CMC curve per protocol. Re-ranking is off unless asked for, and labelled whenever on. A checkpoint that
was selected on the test split is labelled as such in every output.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from rich.console import Console

from vireid.engine.loading import LoadedModel, load_model
from vireid.errors import ProtocolError


def test_checkpoint(
    checkpoint: str | Path | LoadedModel,
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
    console: Console | None = None,
) -> list[Any]:
    """Run the protocols of ``dataset`` (default: the checkpoint's) and return their ``ProtocolResult``s."""
    from vireid.data.catalog import get_dataset
    from vireid.evaluation.rerank import RerankOptions
    from vireid.evaluation.runner import run_protocol

    console = console or Console()
    lm = checkpoint if isinstance(checkpoint, LoadedModel) else load_model(checkpoint, device=device)
    cfg, meta = lm.cfg, lm.meta
    name = dataset or cfg.data.dataset
    data_root = root or cfg.data.root
    options: dict[str, Any] = {}
    if name == "regdb":
        trained_trial = meta.get("trial")
        if trained_trial is None:
            raise ProtocolError(
                f"checkpoint {lm.path} was not trained on RegDB, so it has no RegDB trial; RegDB test trial k "
                "must use the model trained on trial k."
            )
        options["trial"] = int(trained_trial)
    ds = get_dataset(name, data_root, **options)
    ids = protocols or cfg.eval.protocols or ds.standard_protocols()
    rerank_mode = rerank or cfg.eval.rerank
    rerank_opts = None
    if rerank_mode != "none":
        rerank_opts = RerankOptions(
            k1=cfg.eval.rerank_k1, k2=cfg.eval.rerank_k2, lambda_value=cfg.eval.rerank_lambda, variant=rerank_mode
        )
    use_flip = cfg.eval.flip if flip is None else flip
    out_dir = Path(out) if out is not None else lm.path / "test"
    embedder = lm.method.embedder(lm.model, cfg)
    transform = lm.method.test_transform(cfg)
    selection = meta.get("selection", "unknown")
    if selection == "test":
        console.print("[bold red]This checkpoint was selected on the TEST split; its numbers are optimistic.[/]")
    results = []
    for protocol_id in ids:
        protocol = ds.protocol(protocol_id)
        trial_list = list(protocol.trials())
        if trials is not None:
            trial_list = trial_list[:trials]
        result = run_protocol(
            trial_list,
            embedder,
            transform=transform,
            batch_size=batch_size or cfg.eval.batch_size,
            workers=workers,
            device=next(lm.model.parameters()).device,
            flip=use_flip,
            rerank=rerank_opts,
            progress=True,
            thermal_gray3=cfg.data.thermal_gray3,
            selection_split=selection,
        )
        result = result.with_metadata(checkpoint=str(lm.path), method=meta.get("method"))
        console.print(result.table())
        result.save(out_dir)
        if visualize:
            from vireid.inference import FeatureExtractor
            from vireid.visualize import save_worst_queries

            # The result holds no features: the first trial is embedded again, with the runner's settings.
            extractor = FeatureExtractor(lm, batch_size=batch_size or cfg.eval.batch_size, flip=use_flip)
            picture = save_worst_queries(trial_list[0], visualize, out_dir / "ranklists", extractor=extractor)
            console.print(f"rank lists of the {visualize} worst queries: {picture}")
        results.append(result)
    summary = {r.protocol_id: r.to_dict() for r in results}
    (out_dir / "summary.json").write_text(json.dumps(summary, indent=2, default=str))
    console.print(f"results written to {out_dir}")
    return results
