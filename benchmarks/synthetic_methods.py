"""Baseline, IDKL and DAKD under one training budget on the synthetic SYSU-MM01-layout set (CPU).

Why: the IDKL and DAKD issues ask for each method beside the baseline "with the same training budget" on the
synthetic set, whichever wins. The budget is the baseline demo's (``configs/baseline/demo.yaml``): the same
generated set (the demo's: 120 identities, seed 0), 96x48 inputs, a random-init ResNet-18 of width 32,
P 8 x K 4 per modality (64 images per step), 40 epochs x 20 steps = 800 steps = 51,200 images, the last epoch
kept (no selection), and the SYSU-MM01 all-search single-shot protocol over 10 random galleries. Each method
keeps its own optimiser and loss recipe from its ``demo`` config. DAKD trains its MCE teacher first under
the same budget (so DAKD costs two budgets; the teacher's own score is reported too); ``dakd_from_baseline``
distils a DAKD student from the finished baseline row instead.

    python benchmarks/synthetic_methods.py --out methods_out              # all rows (about 40 min on 2 cores)
    python benchmarks/synthetic_methods.py --out methods_out --rows idkl  # one row
    python benchmarks/synthetic_methods.py --out methods_out --quick      # 2 epochs x 3 steps: a smoke run

The ``untrained`` row (the baseline after a single step) shows what random convolutional features already
get from silhouettes, the floor that learning must beat. Finished runs are reused. Prints a markdown table
(mean +- std over the 10 galleries) with training seconds.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

PROTOCOL = "sysu.all.single.random"
BUDGET = [
    "data.height=96",
    "data.width=48",
    "model.backbone=resnet18",
    "model.width=32",
    "model.pretrained=none",
    "sampler.P=8",
    "sampler.K=4",
    "train.epochs=40",
    "train.iters_per_epoch=20",
    "eval.selection=last",
    "train.progress=false",
]
ROWS = {
    # name: (config preset, extra overrides)
    "untrained": ("baseline/demo", ["train.epochs=1", "train.iters_per_epoch=1"]),  # random features
    "baseline": ("baseline/demo", []),
    "idkl": ("idkl/demo", ["sched.milestones=[25,35]", "data.workers=1"]),
    "dakd": ("dakd/demo", ["data.workers=1"]),
    # DAKD distilling from the baseline row's finished run (the same budget once more, for the student only)
    "dakd_from_baseline": ("dakd/demo", ["data.workers=1"]),
}
METRICS = ("R1", "R5", "mAP", "mINP")


def _overrides(row: str, data: Path, out: Path, quick: bool) -> list[str]:
    short = ["train.epochs=2", "train.iters_per_epoch=3"] if quick and row != "untrained" else []
    extra = [*BUDGET, *ROWS[row][1], *short]  # later overrides win
    overrides = [f"data.root={data}", *extra]
    if row == "dakd":  # the nested MCE teacher gets the same budget
        # The demo teacher's LR step (epoch 5 of 6) is moved to the same place in the 40-epoch budget.
        teacher = [o for o in extra if not o.startswith("sched.")] + (["sched.milestones=[34]"] if not quick else [])
        overrides.append(f"teacher_run.overrides={json.dumps(teacher)}")
    if row == "dakd_from_baseline":
        if not (out / "baseline").is_dir():
            raise SystemExit("dakd_from_baseline needs the baseline row first: --rows baseline dakd_from_baseline")
        overrides.append(f"teacher={out / 'baseline'}")
    return overrides


def run_row(row: str, data: Path, out: Path, quick: bool) -> list[dict]:
    from vireid.config import load_config
    from vireid.engine.checkpoint import load_checkpoint
    from vireid.engine.loading import load_model
    from vireid.engine.testing import test_checkpoint
    from vireid.engine.trainer import train

    run = out / row
    cfg = load_config(ROWS[row][0], _overrides(row, data, out, quick))
    seconds_file = run / "train_seconds.txt"
    try:
        done = int(load_checkpoint(run, prefer="last").meta.get("epoch", -1)) >= cfg.train.epochs
    except Exception:
        done = False
    if not done:
        start = time.perf_counter()
        train(cfg, run_dir=run)
        seconds_file.write_text(f"{time.perf_counter() - start:.1f}\n")
    rows = []
    runs = [(row, run)]
    if row == "dakd":
        runs.insert(0, ("dakd teacher (MCE)", run / "teacher"))
    for name, folder in runs:
        result = test_checkpoint(load_model(folder), protocols=[PROTOCOL], out=folder / "test")[0]
        seconds = seconds_file.read_text().strip() if name == row and seconds_file.exists() else "-"
        rows.append({"row": name, "mean": result.mean, "std": result.std, "train_s": seconds})
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=Path("methods_out"))
    parser.add_argument("--data", type=Path, default=None, help="synthetic sysu set (default: generate the demo's)")
    parser.add_argument("--rows", nargs="+", choices=sorted(ROWS), default=list(ROWS))
    parser.add_argument("--quick", action="store_true")
    args = parser.parse_args()

    from vireid.data.catalog import get_dataset
    from vireid.data.synthetic import SynthOptions, write_layout
    from vireid.demo import DEMO_IDS, chance_level

    data = args.data or args.out / "data" / "sysu"
    if not (data / "exp").is_dir():
        write_layout("sysu", data, SynthOptions(num_ids=DEMO_IDS["sysu"], seed=0), overwrite=True)
    table = []
    for row in args.rows:
        table += run_row(row, data, args.out, args.quick)
    chance = chance_level(list(get_dataset("sysu", data).protocol(PROTOCOL).trials()), draws=5)

    print(f"\nSynthetic SYSU-MM01 ({data}), {PROTOCOL}, 10 galleries; budget: {' '.join(BUDGET)}\n")
    print("| model | " + " | ".join(METRICS) + " | train s |")
    print("|---" * (len(METRICS) + 2) + "|")
    for r in table:
        cells = [f"{r['mean'][m]:.2f} ± {r['std'][m]:.2f}" for m in METRICS]
        print(f"| {r['row']} | " + " | ".join(cells) + f" | {r['train_s']} |")
    print(f"| chance | {chance['rank1']:.2f} | - | {chance['mAP']:.2f} | {chance['mINP']:.2f} | - |")
    (args.out / "table.json").write_text(json.dumps({"budget": BUDGET, "rows": table, "chance": chance}, indent=2))


if __name__ == "__main__":
    main()
