"""DIKDNet ablation ladder (method-dikdnet.md 5.7) on the synthetic RGBT-PEDES layout: train, test, table.

Runs the rungs of ``configs/dikdnet/ablation/`` for every seed, scores every student (and the rung-2
teachers, single view at test time) with the ``text.t2rgbt`` protocol, and prints mean +- std over seeds.
Rungs 3 and 4 reuse the rung-2 teachers of the same seed (their stage 1 is identical); rungs 5 and 6 train
their own (IKDM changes stage 1). Finished runs are reused, so an interrupted ladder continues.

    python benchmarks/dikdnet_ablation.py --out ablation_out --seeds 0 1 2
    python benchmarks/dikdnet_ablation.py --out ablation_out --seeds 0 --set train.epochs=10 teacher.epochs=10

On a machine with few cores shared with other work, ``OMP_NUM_THREADS=1`` is much faster than the default.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np

RUNGS = {
    "r0_dcalign": "0 DCAlign-like: shared visual encoder",
    "r1_separate": "1 separate RGB/TIR encoders (student alone)",
    "r1_long": "1b rung 1 trained as long as both stages together",
    "r2_teachers": "2 + multi-view teachers (V=2), no KD",
    "r3_relation": "3 + CKDM relations",
    "r4_representation": "4 + CKDM representations",
    "r5_ikdm_m0": "5 + IKDM, margin 0",
    "r6_full": "6 + IKDM, margin 0.2 (full)",
}
REUSE_TEACHER = {"r3_relation": "r2_teachers", "r4_representation": "r2_teachers"}
METRICS = ("R1", "R5", "R10", "mAP", "mINP")


def _finished(run: Path, epochs: int) -> bool:
    from vireid.engine.checkpoint import load_checkpoint

    try:
        return int(load_checkpoint(run, prefer="best").meta.get("epoch", -1)) >= epochs
    except Exception:
        return False


def train_rung(rung: str, seed: int, data: Path, out: Path, extra: list[str]) -> Path:
    from vireid.config import load_config
    from vireid.engine.trainer import train

    run = out / f"seed{seed}" / rung
    overrides = [f"data.root={data}", f"train.seed={seed}", "train.progress=false", *extra]
    if rung in REUSE_TEACHER:
        overrides.append(f"teacher.checkpoint={out / f'seed{seed}' / REUSE_TEACHER[rung] / 'teacher'}")
    cfg = load_config(f"dikdnet/ablation/{rung}", overrides)
    if _finished(run, cfg.train.epochs):
        return run
    if (run / "checkpoints" / "last.json").is_file():
        train(cfg, resume=run)
    else:
        train(cfg, run_dir=run)
    return run


def score(checkpoint: Path) -> dict[str, float]:
    """R1/R5/mAP/mINP (percent) of a checkpoint on the text.t2rgbt test protocol."""
    from rich.console import Console

    from vireid.engine.testing import test_checkpoint

    result = test_checkpoint(checkpoint, protocols=["text.t2rgbt"], console=Console(quiet=True))[0]
    return {k: float(result.mean[k]) for k in METRICS if k in result.mean}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", default=None, help="synthetic rgbt-pedes root (default: <out>/data, generated)")
    parser.add_argument("--out", default="dikdnet_ablation")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0])
    parser.add_argument("--ids", type=int, default=120, help="identities of a generated set")
    parser.add_argument("--rungs", nargs="+", default=list(RUNGS), choices=list(RUNGS))
    parser.add_argument("--set", nargs="*", default=[], help="config overrides applied to every rung")
    parser.add_argument("--no-test", action="store_true", help="train only (score later with another call)")
    args = parser.parse_args()
    out = Path(args.out)
    data = Path(args.data) if args.data else out / "data"
    if not (data / "vireid_synthetic.json").is_file():
        from vireid.data.synthetic import SynthOptions, write_layout

        write_layout("rgbt-pedes", data, SynthOptions(num_ids=args.ids, seed=0), overwrite=True)
    rows: dict[str, list[dict[str, float]]] = {}
    started = time.perf_counter()
    for seed in args.seeds:
        for rung in args.rungs:
            if rung in REUSE_TEACHER and REUSE_TEACHER[rung] not in args.rungs:
                train_rung(REUSE_TEACHER[rung], seed, data, out, args.set)
            run = train_rung(rung, seed, data, out, args.set)
            if args.no_test:
                continue
            rows.setdefault(rung, []).append(score(run))
            if rung == "r2_teachers":
                rows.setdefault("r2_teachers/teacher", []).append(score(run / "teacher"))
    if args.no_test:
        return
    print(f"\nDIKDNet ablation on synthetic RGBT-PEDES ({data}), seeds {args.seeds}, overrides {args.set}")
    print(f"{'rung':50s} " + " ".join(f"{m:>14s}" for m in METRICS))
    table = {}
    for rung, results in rows.items():
        label = RUNGS.get(rung, "2' the rung-2 teachers (single view at test)")
        stats = {}
        for m in METRICS:
            values = np.array([r[m] for r in results if m in r])
            stats[m] = (float(values.mean()), float(values.std()))
        table[rung] = {"label": label, "seeds": args.seeds, **{m: list(v) for m, v in stats.items()}}
        print(f"{label:50s} " + " ".join(f"{stats[m][0]:7.2f} ± {stats[m][1]:4.2f}" for m in METRICS))
    (out / "ablation.json").write_text(json.dumps(table, indent=2))
    print(f"{time.perf_counter() - started:.0f} s; table written to {out / 'ablation.json'}")


if __name__ == "__main__":
    main()
