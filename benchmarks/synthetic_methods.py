"""Baseline, IDKL and DAKD for the same number of steps on the synthetic SYSU-MM01-layout set (CPU).

Why: the IDKL and DAKD issues ask for each method beside the baseline "with the same training budget" on the
synthetic set, whichever wins. What is shared (``SHARED``): the generated set (the demo's: 120 identities,
seed 0), 96x48 inputs, a random-init ResNet-18 of width 32, P 8 identities x K 4 per modality per step,
40 epochs x 20 steps = 800 steps, the last epoch kept (no selection), and the SYSU-MM01 all-search
single-shot protocol over 10 random galleries.

What is NOT equal, so this is not a same-budget comparison (``--describe`` prints it from the configs):

* images per step: the baseline and the MCE teacher use the ``caj`` preset, three views per draw (visible,
  its channel-exchanged copy, infrared): 96 images per step, 76,800 in all; IDKL and the DAKD student use
  two views: 64 per step, 51,200 in all;
* recipes: each row keeps its own optimiser, learning rate, schedule and losses from its ``demo`` config;
  only the baseline's (Adam 2e-3, cosine, WRT, CAJ) was tuned on this set;
* networks: the baseline has two modality stems and no non-local blocks; IDKL its two-branch network; DAKD
  and MCE one shared stem, non-local blocks and a learnable GeM p;
* DAKD trains its MCE teacher first for the same 800 steps, so the DAKD row costs two runs (the teacher's
  own score is reported too); ``dakd_from_baseline`` distils a DAKD student from the finished baseline row.

A fair comparison (equal images, tuned recipes) is the method ladder's job; these rows check that every
method trains and composes at toy scale.

    python benchmarks/synthetic_methods.py --out methods_out              # all rows (about 40 min on 2 cores)
    python benchmarks/synthetic_methods.py --out methods_out --rows idkl  # one row
    python benchmarks/synthetic_methods.py --out methods_out --quick      # 2 epochs x 3 steps: a smoke run
    python benchmarks/synthetic_methods.py --describe                     # what each row trains with; no run

The ``untrained`` row (the baseline after a single step) shows what random convolutional features already
get from silhouettes, the floor that learning must beat. Finished runs are reused. Prints a markdown table
(mean +- std over the 10 galleries) with training seconds, and the table of what each row trained with.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

PROTOCOL = "sysu.all.single.random"
SHARED = [
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
    # DAKD distilling from the baseline row's finished run (800 more steps, for the student only)
    "dakd_from_baseline": ("dakd/demo", ["data.workers=1"]),
}
METRICS = ("R1", "R5", "mAP", "mINP")


def _overrides(row: str, data: Path, out: Path, quick: bool) -> list[str]:
    short = ["train.epochs=2", "train.iters_per_epoch=3"] if quick and row != "untrained" else []
    extra = [*SHARED, *ROWS[row][1], *short]  # later overrides win
    overrides = [f"data.root={data}", *extra]
    if row == "dakd":  # the nested MCE teacher gets the same shared settings
        # The demo teacher's LR step (epoch 5 of 6) is moved to the same place in the 40-epoch budget.
        teacher = [o for o in extra if not o.startswith("sched.")] + (["sched.milestones=[34]"] if not quick else [])
        overrides.append(f"teacher_run.overrides={json.dumps(teacher)}")
    if row == "dakd_from_baseline":
        if not (out / "baseline").is_dir():
            raise SystemExit("dakd_from_baseline needs the baseline row first: --rows baseline dakd_from_baseline")
        overrides.append(f"teacher={out / 'baseline'}")
    return overrides


def row_configs(row: str, data: Path, out: Path, quick: bool) -> list[tuple[str, object]]:
    """(name, resolved config) of what ``row`` trains: one run, or the MCE teacher and then the student."""
    from vireid.config import load_config

    cfg = load_config(ROWS[row][0], _overrides(row, data, out, quick))
    if row != "dakd":
        return [(row, cfg)]
    from vireid.methods.dakd import teacher_stage_config

    return [("dakd teacher (MCE)", teacher_stage_config(cfg, "mce")), (row, cfg)]


def training_budget(cfg) -> dict:
    """What one run trains with, read from its resolved config: images per step (P x K x views per draw),
    steps, images in all, optimiser and schedule. These are the quantities that differ between rows."""
    from vireid.data.transforms import build_train_views

    views = build_train_views(cfg.aug, cfg.cutswap, cfg.data.height, cfg.data.width)
    views_per_draw = views.num_visible_views + len(views.infrared)
    per_step = cfg.sampler.P * cfg.sampler.K * views_per_draw
    steps = cfg.train.epochs * cfg.train.iters_per_epoch
    sched = cfg.sched
    schedule = sched.name + (f" {sched.warmup_epochs}-epoch warm-up" if sched.warmup_epochs else "")
    if sched.name in ("warmup_step", "multistep"):
        schedule += f", x{sched.gamma} at {sched.milestones}"
    return {
        "method": cfg.method,
        "aug": cfg.aug.preset,
        "images_per_step": per_step,
        "steps": steps,
        "images": per_step * steps,
        "optimiser": f"{cfg.optim.name} lr {cfg.optim.lr:g} wd {cfg.optim.weight_decay:g}",
        "schedule": schedule,
    }


def describe(rows: list[str], data: Path, out: Path, quick: bool) -> list[dict]:
    """The training budget of every run of ``rows`` (no training)."""
    from vireid.config import load_config

    table = []
    for row in rows:
        if row == "dakd_from_baseline":  # its teacher is the baseline run: only the student's config matters
            names = [(row, load_config(ROWS[row][0], [f"data.root={data}", *SHARED, *ROWS[row][1]]))]
        else:
            names = row_configs(row, data, out, quick)
        table += [{"row": name, **training_budget(cfg)} for name, cfg in names]
    return table


def print_budgets(table: list[dict]) -> None:
    keys = ("method", "aug", "images_per_step", "steps", "images", "optimiser", "schedule")
    print("| run | " + " | ".join(keys) + " |")
    print("|---" * (len(keys) + 1) + "|")
    for r in table:
        print(f"| {r['row']} | " + " | ".join(str(r[k]) for k in keys) + " |")


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
    parser.add_argument("--describe", action="store_true", help="print what each row trains with, train nothing")
    args = parser.parse_args()
    if args.describe:
        print_budgets(describe(args.rows, args.data or args.out / "data" / "sysu", args.out, args.quick))
        return

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

    print(f"\nSynthetic SYSU-MM01 ({data}), {PROTOCOL}, 10 galleries; shared: {' '.join(SHARED)}\n")
    print("| model | " + " | ".join(METRICS) + " | train s |")
    print("|---" * (len(METRICS) + 2) + "|")
    for r in table:
        cells = [f"{r['mean'][m]:.2f} ± {r['std'][m]:.2f}" for m in METRICS]
        print(f"| {r['row']} | " + " | ".join(cells) + f" | {r['train_s']} |")
    print(f"| chance | {chance['rank1']:.2f} | - | {chance['mAP']:.2f} | {chance['mINP']:.2f} | - |")
    budgets = describe(args.rows, data, args.out, args.quick)
    print("\nWhat each run trained with (images per step and recipes differ between rows):\n")
    print_budgets(budgets)
    summary = {"shared": SHARED, "budgets": budgets, "rows": table, "chance": chance}
    (args.out / "table.json").write_text(json.dumps(summary, indent=2))


if __name__ == "__main__":
    main()
