"""``vireid demo``: the whole pipeline on built-in synthetic data, on the CPU, in minutes.

1. Generate a synthetic SYSU-MM01-layout set (``vireid synth sysu``) unless it already exists.
2. Train a small model of the chosen method with its ``demo`` config (``configs/<method>/demo.yaml``).
3. Evaluate with the SYSU-MM01 all-search single-shot protocol (10 random galleries) and print the table
   beside chance level; write ``<out>/results.json`` (rank1, mAP, mINP, chance_rank1, in percent).

A second call reuses the trained model when the config is unchanged (delete ``<out>/run`` to retrain).
``--quick`` trains into ``<out>/run-quick``, so it never touches the full demo's model. A run folder is only
ever deleted (to retrain after a config change or an interrupted run) when ``vireid demo`` created it
itself, which its ownership mark records (:mod:`vireid.files`); anything else there is refused.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import numpy as np
from rich.console import Console
from rich.table import Table

from vireid.config import load_config, to_dict
from vireid.files import RunLock, create_owned_folder, ensure_folder, folder_kind, remove_owned_folder

DEMO_RUN_KIND = "demo-run"
"""Ownership mark of the run folders ``vireid demo`` creates (the only runs it may delete)."""

DEMO_PROTOCOLS = {
    "baseline": "sysu.all.single.random",
    "idkl": "sysu.all.single.random",
    "dakd": "sysu.all.single.random",
    "dikdnet": "text.t2rgbt",
}
DEMO_LAYOUTS = {"baseline": "sysu", "idkl": "sysu", "dakd": "sysu", "dikdnet": "rgbt-pedes"}
DEMO_IDS = {"sysu": 120, "rgbt-pedes": 120}


def chance_level(trials, *, draws: int = 20, seed: int = 0) -> dict[str, float]:
    """Scores of a random ranking on ``trials`` (percent): rank-1 exactly, mAP and mINP by Monte Carlo.

    Rank-1 of a random ranking is, per valid query, (#true matches) / (#gallery items left after the junk
    rule); the de-duplicated CMC gives the same first position. mAP/mINP are averaged over random scores.
    """
    from vireid.evaluation import evaluate

    rng = np.random.default_rng(seed)
    r1, maps, minps = [], [], []
    for trial in trials:
        q_pids = np.array([r.pid for r in trial.query])
        g_pids = np.array([r.pid for r in trial.gallery])
        q_cams = np.array([getattr(r, "camid", 0) for r in trial.query])
        g_cams = np.array([r.camid for r in trial.gallery])
        for _ in range(draws):
            dist = rng.random((len(q_pids), len(g_pids)))
            res = evaluate(dist, q_pids, g_pids, q_cams, g_cams, rule=trial.rule, max_rank=trial.max_rank)
            maps.append(res.mAP)
            minps.append(res.mINP)
            r1.append(res.cmc[0])
    return {"rank1": 100 * float(np.mean(r1)), "mAP": 100 * float(np.mean(maps)), "mINP": 100 * float(np.mean(minps))}


def _completed_run(run_dir: Path, cfg_dict: dict[str, Any]) -> bool:
    from vireid.engine.checkpoint import load_checkpoint

    try:
        loaded = load_checkpoint(run_dir, prefer="best")
    except Exception:
        return False
    meta = loaded.meta
    return meta.get("config") == cfg_dict and meta.get("epoch") == cfg_dict["train"]["epochs"]


def _remove_demo_run(run_dir: Path, console: Console) -> None:
    """Delete an unfinished or outdated run of ``vireid demo`` (only one that the demo created, and only
    while no other process trains into it)."""
    fix = f"move {run_dir} away (or delete it yourself), or pass another --out."
    if folder_kind(run_dir) != DEMO_RUN_KIND:  # checked before the lock file is created in someone's folder
        remove_owned_folder(run_dir, DEMO_RUN_KIND, "demo run folder", fix=fix)  # raises, naming the folder
    lock = RunLock.acquire(run_dir)
    try:
        remove_owned_folder(run_dir, DEMO_RUN_KIND, "demo run folder", fix=fix)
    finally:
        lock.release()
    console.print(f"removed the unfinished or outdated demo run in {run_dir}")


def run_demo(
    out: str | Path = "demo_out",
    method: str = "baseline",
    data: str | Path | None = None,
    quick: bool = False,
    console: Console | None = None,
) -> dict[str, Any]:
    """Run the demo and return the results dict that is also written to ``<out>/results.json``."""
    from vireid.data.synthetic import SynthOptions, write_layout
    from vireid.engine.loading import load_model
    from vireid.engine.testing import test_checkpoint
    from vireid.engine.trainer import train

    console = console or Console()
    out = ensure_folder(out, "demo output folder (--out)")
    layout = DEMO_LAYOUTS[method]
    data_dir = Path(data) if data is not None else out / "data" / layout
    start = time.perf_counter()
    if not (data_dir / "vireid_synthetic.json").is_file():
        console.print(f"[bold]1/3[/] generating a synthetic {layout} set in {data_dir} ...")
        summary = write_layout(layout, data_dir, SynthOptions(num_ids=DEMO_IDS[layout], seed=0), overwrite=True)
        console.print(summary.describe())
    else:
        console.print(f"[bold]1/3[/] using the synthetic set in {data_dir}")
    run_name = "run-quick" if quick else "run"  # the quick smoke test never replaces the full demo's model
    overrides = [f"data.root={data_dir}", f"train.out_dir={out}", f"train.name={run_name}"]
    if quick:
        overrides += ["train.epochs=1", "train.iters_per_epoch=3"]
        if method == "dakd":  # DAKD trains its teacher first, inside the student's run: shorten it too
            overrides.append('teacher_run.overrides=["train.epochs=1", "train.iters_per_epoch=3"]')
        if method == "dikdnet":  # its nested stage-1 (teacher) run has its own epoch count
            overrides.append("teacher.epochs=1")
    cfg = load_config(f"{method}/demo", overrides)
    cfg_dict = to_dict(cfg)
    run_dir = out / run_name
    if _completed_run(run_dir, cfg_dict):
        console.print(f"[bold]2/3[/] reusing the model trained earlier in {run_dir} (delete it to retrain)")
    else:
        if run_dir.exists():
            _remove_demo_run(run_dir, console)
        create_owned_folder(run_dir, DEMO_RUN_KIND, "demo run folder")
        console.print(f"[bold]2/3[/] training {method} on the CPU ({cfg.train.epochs} epochs) ...")
        train(cfg, run_dir=run_dir, console=console)
    console.print(f"[bold]3/3[/] evaluating with the {DEMO_PROTOCOLS[method]} protocol ...")
    lm = load_model(run_dir)
    results = test_checkpoint(lm, protocols=[DEMO_PROTOCOLS[method]], out=out / "test", console=console)
    result = results[0]
    from vireid.data.catalog import get_dataset

    trials = list(get_dataset(cfg.data.dataset, cfg.data.root).protocol(DEMO_PROTOCOLS[method]).trials())
    chance = chance_level(trials, draws=5)
    # The runner names CMC points R1, R5, ...; the demo's table and JSON keep the name rank1.
    mean = {"rank1": result.mean["R1"], **result.mean}
    std = {"rank1": result.std["R1"], **result.std}
    table = Table(title=f"vireid demo: {method} on synthetic {layout} ({result.protocol_id}, {len(trials)} trials)")
    for col in ("", "R1", "mAP", "mINP"):
        table.add_column(col, justify="right")
    table.add_row("model", *(f"{mean[k]:.2f} ± {std[k]:.2f}" for k in ("R1", "mAP", "mINP")))
    table.add_row("chance", *(f"{chance[k]:.2f}" for k in ("rank1", "mAP", "mINP")))
    console.print(table)
    payload = {
        "method": method,
        "protocol": result.protocol_id,
        "rank1": mean["R1"],
        "rank1_std": std["R1"],
        "mAP": mean["mAP"],
        "mAP_std": std["mAP"],
        "mINP": mean["mINP"],
        "mINP_std": std["mINP"],
        "chance_rank1": chance["rank1"],
        "chance_mAP": chance["mAP"],
        "chance_mINP": chance["mINP"],
        "trials": len(trials),
        "reranked": False,
        # For `vireid compare`: the facts that decide comparability, the per-trial values, and the full result.
        "dataset": result.metadata.get("dataset"),
        "data_identity": result.metadata.get("data_identity"),
        "rerank": result.metadata.get("rerank", "none"),
        "train_seed": result.metadata.get("train_seed"),
        "per_trial": [{"index": t.index, **t.percent} for t in result.trials],
        "result_file": str(Path("test") / f"{result.protocol_id}.json"),
        "selection": lm.meta.get("selection"),
        "seconds": round(time.perf_counter() - start, 1),
        "data": str(data_dir),
        "run": str(run_dir),
    }
    (out / "results.json").write_text(json.dumps(payload, indent=2))
    ratio = payload["rank1"] / max(payload["chance_rank1"], 1e-9)
    console.print(f"rank-1 is {ratio:.1f}x chance; results written to {out / 'results.json'}")
    return payload
