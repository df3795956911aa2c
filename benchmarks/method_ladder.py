"""The method ladder (issue 15): a fair, multi-seed ablation of IDKL, DAKD and DIKDNet against their own baselines.

Every VI-ReID row trains on one synthetic SYSU-MM01-layout set with the same budget (:data:`VI_BUDGET`): the
same backbone family and width (ResNet-18, width 32), the same input size, the same images per step (96: the
sampler's P is set per row so that P x K x views = 96, e.g. P 12 x K 4 x 2 views, or P 8 x K 4 x 3 views for
the CAJ preset's two visible views), the same number of steps and the same schedule shape (linear warm-up, then
cosine). Each method keeps its own optimiser, losses and augmentation. Rows start from the synthetic pretrained
backbone of ``vireid pretrain`` (written once into ``OUT/pretrain``; a stand-in for ImageNet), and the key rows
also from scratch. DIKDNet's rungs run on one synthetic RGBT-PEDES set with their own demo budget.

Every row is one line of :data:`ROWS`: a config preset plus overrides. Each finished (row, seed) is recorded at
once in ``OUT/runs/<row>/seed<k>/ladder_done.json`` and never rerun, so the ladder can run in the background,
be stopped at any time and be resumed by the same command; an interrupted training run resumes from its last
checkpoint. A row whose definition changed after it finished is refused (move its folder away to rerun it).
Each finished (row, seed) is also copied to the ledger (``--ledger``, default ``OUT/ledger``): its done marker and
its `vireid test` result JSON, never weights. Kept in git (``--ledger benchmarks/results/method_ladder``), the
ledger lets a fresh machine skip every row finished elsewhere and still build the tables; a finished teacher
whose checkpoint a still unfinished student needs is trained again there (its ledger result is kept).
At the end, one ``vireid compare`` table per method is written to ``OUT/tables/<ladder>/`` and printed.

    python benchmarks/method_ladder.py --out ladder --plan                   # print rows and budget, run nothing
    python benchmarks/method_ladder.py --out ladder                          # the whole ladder (hours; resumable)
    python benchmarks/method_ladder.py --out ladder --rows agw idkl_shared   # some rows
    python benchmarks/method_ladder.py --out ladder --seeds 1                # one seed of every row
    python benchmarks/method_ladder.py --out ladder --ledger benchmarks/results/method_ladder  # results in git
    python benchmarks/method_ladder.py --out ladder --jobs 2                 # two runs at once (2 cores: ~2x)
    python benchmarks/method_ladder.py --out quick --quick                   # tiny sizes, 1 seed, 2 rows (< 2 min)

``--jobs N`` runs N rows at once in worker processes; on the 2-core VM two one-thread IDKL runs side by side
give 1.2-1.3x the throughput of one two-thread run, AGW runs about the same (docs/benchmarks.md).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

# ---------------------------------------------------------------------------------------------------- budget

PROTOCOLS = {"vi": "sysu.all.single.random", "text": "text.t2rgbt"}
IMAGES_PER_STEP = 96
EPOCHS, ITERS_PER_EPOCH = 30, 20  # 600 steps
VI_DATA = {"layout": "sysu", "num_ids": 200, "seed": 0}
TEXT_DATA = {"layout": "rgbt-pedes", "num_ids": 120, "seed": 0}  # the DIKDNet demo's set
# The pretraining set is disjoint from the benchmark's: another generator seed (1000 vs 0).
PRETRAIN = {"width": 32, "num_ids": 1000, "data_seed": 1000, "height": 64, "image_width": 32, "steps": 3000}
VI_BUDGET = (
    "data.height=64",
    "data.width=32",
    "data.workers=1",
    "model.backbone=resnet18",
    "model.width=32",
    f"train.epochs={EPOCHS}",
    f"train.iters_per_epoch={ITERS_PER_EPOCH}",
    "train.progress=false",
    "train.log_every=50",
    # One schedule shape for every row: 2 warm-up epochs from 10% (linear), then cosine to 0.
    "sched.name=cosine",
    "sched.warmup_epochs=2",
    "sched.warmup_curve=linear",
    "sched.warmup_start=0.1",
    "sched.min_lr_factor=0.0",
    "eval.selection=last",  # no validation passes: the test protocol runs once per finished run
    "eval.every=0",
)
TEXT_BUDGET = ("train.progress=false",)
# Rough cost of one training image (forward + backward), seconds on 2 shared cores at 64x32, width 32. A GUESS
# used only until rows of the ladder have finished; the plan then uses the measured rate of the finished runs.
GUESSED_SECONDS_PER_IMAGE = 0.0035
# Quick mode: tiny sets and networks, 1 seed, 2 rows, 2 steps, 2 test trials (a smoke run for the test suite).
QUICK_DATA = {"num_ids": 16, "size": (32, 16), "images_per_camera": (1, 2)}
QUICK_PRETRAIN = {"width": 8, "num_ids": 12, "height": 32, "image_width": 16, "steps": 2, "batch_size": 8}
QUICK_OVERRIDES = (
    "data.height=32",
    "data.width=16",
    "data.workers=0",
    "model.width=8",
    "sampler.K=2",  # and each row's P halved, so that every row still sees the same images per step (24)
    "train.epochs=1",
    "train.iters_per_epoch=2",
    "sched.warmup_epochs=0",
    "eval.batch_size=64",
)
QUICK_TEXT_OVERRIDES = (
    "data.height=32",
    "data.width=16",
    "model.image.width=8",
    "sampler.P=4",
    "train.epochs=1",
    "train.iters_per_epoch=2",
    "teacher.epochs=1",
    "sched.warmup_epochs=0",
)
QUICK_ROWS = ("agw", "idkl_full")
QUICK_TRIALS = 2


# ------------------------------------------------------------------------------------------------------ rows


@dataclass(frozen=True)
class Row:
    """One ladder row: a config preset plus overrides, trained for ``seeds`` seeds.

    Attributes:
        ladder: the table it belongs to (``baseline``, ``idkl``, ``dakd``, ``dikdnet``).
        start: ``pretrained`` (the synthetic pretrained backbone), ``scratch`` or ``own`` (DIKDNet: its config's).
        steps_factor: the row trains for this many times the budget's steps (the long controls).
        link: ``(row, key, suffix)``: pass the same seed's run of ``row`` (plus ``suffix``) as ``key=...``
            (a DAKD student's ``teacher``, a DIKDNet rung's ``teacher.checkpoint``); that row runs first.
    """

    name: str
    ladder: str
    config: str
    overrides: tuple[str, ...] = ()
    seeds: int = 3
    start: str = "pretrained"
    steps_factor: int = 1
    link: tuple[str, str, str] | None = None
    note: str = ""

    @property
    def task(self) -> str:
        return "text" if self.ladder == "dikdnet" else "vi"


# IDKL's four switches (issue 14): the release's (the reproduction configs' defaults) and vireid's alternatives,
# exactly the four keys in which `idkl/sysu_vireid.yaml` differs from `idkl/sysu.yaml` (checked by the tests).
# Every IDKL row names the release's explicitly, so a later change of the config defaults cannot change a row.
_IDKL_RELEASE_SWITCHES = (
    "transfer.mode=mutual",
    "tgsa.logits=release",
    "tgsa.cross=release",
    "confusion.mode=release_pattern",
)
_IDKL_VIREID_SWITCHES = (
    "transfer.mode=distill",
    "tgsa.logits=neg_distance",
    "tgsa.cross=aligned",
    "confusion.mode=uniform",
)
# At the ladder's 96 images per step the release uses its non-120 regime, which `idkl/demo` carries
# (presets/idkl_release_other.yaml: reduced TGSA = 0.1 * (SKL(V, I) + inter), no cross set X). `tgsa.cross` only
# acts in the full form, so its rows keep the batch-120 weights (presets/idkl_release_120.yaml: full TGSA, inter
# 0.6, CSA inter 0.8) at 96 images on purpose: `tgsa.regime=force` (the loader otherwise refuses the mismatch).
_IDKL_FORCED_FULL_TGSA = (
    "tgsa.form=full",
    "tgsa.inter_weight=0.6",
    "tgsa.scale=1.0",
    "csa.inter_weight=0.8",
    "tgsa.regime=force",
)
_IDKL_BASE = ("sampler.P=12", *_IDKL_RELEASE_SWITCHES)
# The shared-only rung switches off every term of the specific branch, the purifier, TGSA/CSA and confusion. The
# specific branch, the purifier and their heads are still built and run (they get exactly zero gradient): no key
# skips building them, and one would have to touch IDKL's objective (it reads every output field), so only this
# row's compute is larger than its baseline's, not what it learns.
_IDKL_SHARED_ONLY = (
    *_IDKL_BASE,
    "loss.specific.id_weight=0",
    "loss.specific.modality_weight=0",
    "loss.triplet.weight_sp=0",
    "purifier.enabled=false",
    "tgsa.enabled=false",
    "csa.per_sample=false",
    "csa.per_identity=false",
    "confusion.weight=0",
)
# Each IDKL rung adds one component to the previous one (later overrides win).
_IDKL_SPECIFIC = (
    *_IDKL_SHARED_ONLY,
    "loss.specific.id_weight=1",
    "loss.specific.modality_weight=1",
    "loss.triplet.weight_sp=1",
)
_IDKL_PURIFIER = (*_IDKL_SPECIFIC, "purifier.enabled=true")
_IDKL_TRANSFER = (*_IDKL_PURIFIER, "tgsa.enabled=true", "csa.per_sample=true", "csa.per_identity=true")
_DAKD_NO_CUTSWAP = ("cutswap.p=0",)
_DAKD_TEACHER = ("dakd_teacher_mce", "teacher", "")
_DAKD_TEACHER_SCRATCH = ("dakd_teacher_scratch", "teacher", "")
_DAKD_TEACHER_BASELINE = ("dakd_teacher_baseline", "teacher", "")
_DIKD_TEACHERS = ("dikd_r2_teachers", "teacher.checkpoint", "teacher")

# The one table of the ladder. The first row of each ladder is the reference of its table (the method's own
# baseline). P is set so that every VI-ReID row sees IMAGES_PER_STEP images per step (checked by plan()).
ROWS: tuple[Row, ...] = (
    # -- baselines
    Row("agw", "baseline", "baseline/demo", ("aug.preset=agw", "sampler.P=12"), seeds=5),
    Row("caj", "baseline", "baseline/demo", ("aug.preset=caj", "sampler.P=8")),
    Row("agw_scratch", "baseline", "baseline/demo", ("aug.preset=agw", "sampler.P=12"), start="scratch"),
    # -- IDKL: shared branch only (its own baseline) -> + specific branch and its supervision -> + purifier
    #    -> + TGSA/CSA transfer -> + confusion = full (release switches) -> full with vireid's switches; the TGSA
    #    cross set (release vs aligned) in the full TGSA form. All in the release's regime for 96 images except
    #    the two forced rows.
    Row("idkl_shared", "idkl", "idkl/demo", _IDKL_SHARED_ONLY, seeds=5, note="specific branch built, idle"),
    Row("idkl_specific", "idkl", "idkl/demo", _IDKL_SPECIFIC),
    Row("idkl_purifier", "idkl", "idkl/demo", _IDKL_PURIFIER),
    Row("idkl_transfer", "idkl", "idkl/demo", _IDKL_TRANSFER),
    # + confusion (weight 1, the config default) = the full configuration
    Row("idkl_full", "idkl", "idkl/demo", _IDKL_BASE, seeds=5, note="release switches"),
    Row("idkl_full_vireid", "idkl", "idkl/demo", (*_IDKL_BASE, *_IDKL_VIREID_SWITCHES), note="tgsa.cross inert"),
    Row("idkl_tgsa_full", "idkl", "idkl/demo", (*_IDKL_BASE, *_IDKL_FORCED_FULL_TGSA), note="batch-120 weights"),
    Row(
        "idkl_tgsa_aligned",
        "idkl",
        "idkl/demo",
        (*_IDKL_BASE, *_IDKL_FORCED_FULL_TGSA, "tgsa.cross=aligned"),
        note="batch-120 weights",
    ),
    Row("idkl_shared_scratch", "idkl", "idkl/demo", _IDKL_SHARED_ONLY, start="scratch"),
    Row("idkl_full_scratch", "idkl", "idkl/demo", _IDKL_BASE, start="scratch"),
    # -- DAKD: its teacher (MCE; the baseline recipe on the DAKD network) -> student without masking -> with
    #    masking -> + CutSwap (region = full DAKD; full_image = the release's behaviour); student.bn per_modality
    #    (vireid: running statistics per modality; dakd_full) vs per_modality_batch (the release: one shared set)
    #    vs joint; a control: the MCE teacher trained for the teacher's plus the student's steps.
    Row("dakd_teacher_mce", "dakd", "dakd/demo_teacher", ("sampler.P=8",), seeds=5),
    Row("dakd_teacher_baseline", "dakd", "dakd/demo_teacher_baseline", ("sampler.P=8",)),
    Row("dakd_nomask", "dakd", "dakd/demo", ("sampler.P=12", "mask.rule=none", *_DAKD_NO_CUTSWAP), link=_DAKD_TEACHER),
    Row("dakd_mask", "dakd", "dakd/demo", ("sampler.P=12", *_DAKD_NO_CUTSWAP), link=_DAKD_TEACHER),
    Row(
        "dakd_full",
        "dakd",
        "dakd/demo",
        ("sampler.P=12", "cutswap.mode=region", "student.bn=per_modality"),
        seeds=5,
        link=_DAKD_TEACHER,
    ),
    Row(
        "dakd_cutswap_full_image", "dakd", "dakd/demo", ("sampler.P=12", "cutswap.mode=full_image"), link=_DAKD_TEACHER
    ),
    Row("dakd_bn_batch", "dakd", "dakd/demo", ("sampler.P=12", "student.bn=per_modality_batch"), link=_DAKD_TEACHER),
    Row("dakd_bn_joint", "dakd", "dakd/demo", ("sampler.P=12", "student.bn=joint"), link=_DAKD_TEACHER),
    Row("dakd_control_long", "dakd", "dakd/demo_teacher", ("sampler.P=8",), steps_factor=2),
    Row("dakd_teacher_scratch", "dakd", "dakd/demo_teacher", ("sampler.P=8",), start="scratch"),
    Row("dakd_full_scratch", "dakd", "dakd/demo", ("sampler.P=12",), start="scratch", link=_DAKD_TEACHER_SCRATCH),
    # Issue 15 item 5: the full student distilled from the baseline-recipe teacher (the same seed's
    # `dakd_teacher_baseline`) instead of MCE: does self-distillation add to a stronger teacher?
    Row(
        "dakd_full_from_baseline",
        "dakd",
        "dakd/demo",
        ("sampler.P=12", "cutswap.mode=region", "student.bn=per_modality"),
        link=_DAKD_TEACHER_BASELINE,
        note="teacher: baseline recipe",
    ),
    # -- DIKDNet: the existing rungs (configs/dikdnet/ablation), 3 seeds, its own demo budget and init, with two
    #    controls of the teachers' gain: r1_long (the student alone for both stages' epochs, one schedule) and
    #    r1_restart (a student that restarts its schedule from itself, without teachers); and the full model
    #    without the IKDM adaptor (the boundary acts on the TIR encoder's own feature).
    Row("dikd_r1_separate", "dikdnet", "dikdnet/ablation/r1_separate", start="own"),
    Row("dikd_r0_dcalign", "dikdnet", "dikdnet/ablation/r0_dcalign", start="own"),
    Row("dikd_r1_long", "dikdnet", "dikdnet/ablation/r1_long", start="own"),
    Row("dikd_r1_restart", "dikdnet", "dikdnet/ablation/r1_restart", start="own"),
    Row("dikd_r2_teachers", "dikdnet", "dikdnet/ablation/r2_teachers", start="own"),
    Row("dikd_r3_relation", "dikdnet", "dikdnet/ablation/r3_relation", start="own", link=_DIKD_TEACHERS),
    Row("dikd_r4_representation", "dikdnet", "dikdnet/ablation/r4_representation", start="own", link=_DIKD_TEACHERS),
    Row("dikd_r5_ikdm_m0", "dikdnet", "dikdnet/ablation/r5_ikdm_m0", start="own"),
    Row("dikd_r6_full", "dikdnet", "dikdnet/ablation/r6_full", start="own"),
    Row("dikd_r6_adaptor_identity", "dikdnet", "dikdnet/ablation/r6_full", ("ikdm.adaptor=identity",), start="own"),
)
ROW_BY_NAME = {r.name: r for r in ROWS}


# ------------------------------------------------------------------------------------------------ planning


@dataclass
class Plan:
    """What one (row, seed) will run: its config overrides and its budget."""

    row: str
    seed: int
    config: str
    overrides: list[str]
    steps: int | None
    images_per_step: int | None
    facts: dict = field(default_factory=dict)
    loaded: Any = field(default=None, repr=False, compare=False)
    """The row's loaded config (without its link keys), shared by its seeds: what the checks compare."""

    @property
    def images(self) -> int | None:
        return self.steps * self.images_per_step if self.steps and self.images_per_step else None


def row_overrides(row: Row, seed: int, out: Path, *, quick: bool) -> list[str]:
    """The dotted overrides of ``row`` for ``seed``: data, budget, start, the row's own keys, links."""
    if row.task == "vi":
        overrides = [f"data.root={out / 'data' / 'sysu'}", *VI_BUDGET, *row.overrides]
        if row.steps_factor != 1:
            overrides.append(f"train.epochs={EPOCHS * row.steps_factor}")
        if row.start == "pretrained":
            overrides.append(f"model.pretrained={out / 'pretrain' / 'backbone.safetensors'}")
        else:
            overrides.append("model.pretrained=none")
    else:
        overrides = [f"data.root={out / 'data' / 'rgbt-pedes'}", *TEXT_BUDGET, *row.overrides]
    overrides.append(f"train.seed={seed}")
    if quick:
        overrides += list(QUICK_OVERRIDES if row.task == "vi" else QUICK_TEXT_OVERRIDES)
        if row.task == "vi":
            p = next(int(o.split("=", 1)[1]) for o in reversed(row.overrides) if o.startswith("sampler.P="))
            overrides.append(f"sampler.P={p // 2}")
    if row.link is not None:
        source, key, suffix = row.link
        target = run_dir(out, source, seed)
        overrides.append(f"{key}={target / suffix if suffix else target}")
    return overrides


def run_dir(out: Path, row: str, seed: int) -> Path:
    return out / "runs" / row / f"seed{seed}"


def _images_per_step(cfg) -> int | None:
    """P x K x (visible views + infrared views) for the cross-modal samplers; None where it does not apply."""
    from vireid.data.transforms.presets import build_train_views

    if cfg.method == "dikdnet":
        return cfg.sampler.P * cfg.sampler.K
    views = build_train_views(cfg.aug, getattr(cfg, "cutswap", None), cfg.data.height, cfg.data.width)
    return cfg.sampler.P * cfg.sampler.K * (views.num_visible_views + views.num_infrared_views)


def plan(rows: list[Row], seeds: dict[str, list[int]], out: Path, *, quick: bool) -> list[Plan]:
    """Load every (row, seed) config (catching config errors before any training) and record its budget."""
    from vireid.config import load_config

    plans = []
    for row in rows:
        budget: tuple | None = None
        for seed in seeds[row.name]:
            overrides = row_overrides(row, seed, out, quick=quick)
            if budget is None:  # the seed changes no budget fact: load each row's config once (omegaconf is slow)
                # Links need not exist yet: they only name another run's folder.
                links = ("teacher=", "teacher.checkpoint=")
                cfg = load_config(row.config, [o for o in overrides if not o.startswith(links)])
                iters = cfg.train.iters_per_epoch
                model = getattr(cfg, "model", None)
                facts = {
                    "method": cfg.method,
                    "backbone": getattr(model, "backbone", None),
                    "width": getattr(model, "width", None),
                    "input": f"{cfg.data.height}x{cfg.data.width}",
                    "sched": cfg.sched.name,
                    "warmup_epochs": cfg.sched.warmup_epochs,
                    "epochs": cfg.train.epochs,
                }
                budget = (cfg.train.epochs * iters if iters else None, _images_per_step(cfg), facts, cfg)
            plans.append(Plan(row.name, seed, row.config, overrides, budget[0], budget[1], dict(budget[2]), budget[3]))
    check_fair(plans)
    return plans


def check_fair(plans: list[Plan]) -> None:
    """Every VI-ReID row must share backbone, width, input, images per step and schedule; steps scale only by
    the row's ``steps_factor``. Raises SystemExit naming the first row that differs."""
    vi = [p for p in plans if ROW_BY_NAME[p.row].task == "vi"]
    if not vi:
        return
    ref = vi[0]
    keys = ("backbone", "width", "input", "sched", "warmup_epochs")
    for p in vi[1:]:
        for key in keys:
            if p.facts[key] != ref.facts[key]:
                raise SystemExit(
                    f"unfair ladder: row {p.row} has {key}={p.facts[key]}, row {ref.row} has {ref.facts[key]}"
                )
        if p.images_per_step != ref.images_per_step:
            raise SystemExit(
                f"unfair ladder: row {p.row} uses {p.images_per_step} images per step, {ref.row} {ref.images_per_step}"
            )
        factor = ROW_BY_NAME[p.row].steps_factor / ROW_BY_NAME[ref.row].steps_factor
        if p.steps is None or ref.steps is None or p.steps != ref.steps * factor:
            raise SystemExit(f"unfair ladder: row {p.row} trains {p.steps} steps, {ref.row} {ref.steps}")


def _measured_rate(out: Path, ledger: Path) -> float | None:
    """Seconds per training image over the finished VI-ReID runs of this ladder (None before any)."""
    seconds = images = 0.0
    for record in finished_records(out, ledger).values():
        if record.get("images"):
            seconds += record["seconds"]
            images += record["images"]
    return seconds / images if images else None


def print_plan(plans: list[Plan], out: Path, ledger: Path, *, quick: bool = False, jobs: int = 1) -> None:
    """The rows, their budget, and the estimated total CPU time (measured rate when rows have finished)."""
    rate = _measured_rate(out, ledger)
    source = "measured on finished rows" if rate else "a guess until the first rows finish"
    rate = rate or GUESSED_SECONDS_PER_IMAGE
    print(f"{'row':26s} {'seeds':>6s} {'steps':>6s} {'img/step':>8s} {'images/seed':>11s}  {'start':11s} finished")
    total_images = todo_images = 0
    by_row: dict[str, list[Plan]] = {}
    for p in plans:
        by_row.setdefault(p.row, []).append(p)
        images = p.images or 0
        total_images += images
        if not is_finished(out, ledger, p.row, p.seed):
            todo_images += images
    for name, row_plans in by_row.items():
        first, row = row_plans[0], ROW_BY_NAME[name]
        done = sum(is_finished(out, ledger, name, p.seed) for p in row_plans)
        print(
            f"{name:26s} {len(row_plans):6d} {first.steps or '-':>6} {first.images_per_step or '-':>8} "
            f"{first.images or '-':>11}  {row.start:11s} {done}/{len(row_plans)}"
        )
    vi = [p for p in plans if ROW_BY_NAME[p.row].task == "vi"]
    if vi:
        f = vi[0].facts
        print(
            f"VI-ReID budget: {f['backbone']} width {f['width']}, {f['input']} input, {vi[0].images_per_step} images "
            f"per step, {vi[0].steps} steps ({f['sched']}, {f['warmup_epochs']} warm-up epochs); "
            f"test: {PROTOCOLS['vi']} ({QUICK_TRIALS if quick else 10} random galleries)"
        )
    hours = todo_images * rate / 3600
    wall = f"; about {hours / jobs:.1f} h of wall time with --jobs {jobs}" if jobs > 1 else ""
    print(
        f"{len(plans)} runs; {total_images:,} training images counted ({todo_images:,} still to run), "
        f"about {hours:.1f} h of run time left at {rate * 1000:.2f} ms per image ({source}; each run's own wall "
        f"clock){wall}; DAKD students also run their teacher forward, and DIKDNet rows (their own budget) are "
        "not counted."
    )


# ------------------------------------------------------------------------------------------------- running


def ensure_data(out: Path, rows: list[Row], *, quick: bool) -> None:
    """Generate the benchmark sets (and pretrain the backbone) that the selected rows need, once."""
    from vireid.data.synthetic import SynthOptions, write_layout

    for task, spec in (("vi", VI_DATA), ("text", TEXT_DATA)):
        if not any(r.task == task for r in rows):
            continue
        folder = out / "data" / spec["layout"]
        if (folder / "vireid_synthetic.json").is_file():
            continue
        options = SynthOptions(num_ids=spec["num_ids"], seed=spec["seed"], workers=2)
        if quick:
            options = SynthOptions(seed=spec["seed"], workers=1, **QUICK_DATA)
        print(f"generating the synthetic {spec['layout']} set in {folder} ...", flush=True)
        write_layout(spec["layout"], folder, options, overwrite=True)
    if any(r.start == "pretrained" for r in rows):
        from vireid.engine.pretrain import PretrainOptions, pretrain_backbone

        spec = {**PRETRAIN, **(QUICK_PRETRAIN if quick else {})}
        if quick:
            spec["images_per_camera"] = QUICK_DATA["images_per_camera"]
        report = pretrain_backbone(out / "pretrain", PretrainOptions(**spec), log=None if quick else print)
        print(report.describe(), flush=True)


# ------------------------------------------------------------------------------------------- the ledger
#
# A finished (row, seed) is recorded twice: in its run folder (``OUT/runs/<row>/seed<k>/ladder_done.json``, next
# to its weights) and in the ledger (``LEDGER/<row>/seed<k>/``: the done marker and the protocol's result JSON
# of `vireid test`, a few kB, never weights). The ledger can live in the repository
# (``--ledger benchmarks/results/method_ladder``): committed, it tells the ladder on another machine which rows
# are finished, and it holds everything the tables need (``vireid compare`` reads its folders directly).

DONE = "ladder_done.json"


def ledger_dir(ledger: Path, row: str, seed: int) -> Path:
    return ledger / row / f"seed{seed}"


def row_spec(p: Plan, out: Path) -> dict:
    """What defines a (row, seed): its config and overrides, with OUT written ``<out>`` (machine-independent)."""
    return {"config": p.config, "overrides": [o.replace(str(out), "<out>") for o in p.overrides]}


def _read_done(marker: Path, spec: dict, row: str) -> dict | None:
    """The done record at ``marker`` (None if absent); a record of another definition of the row is refused."""
    if not marker.is_file():
        return None
    record = json.loads(marker.read_text())
    if record["spec"] != spec:
        raise SystemExit(
            f"{marker.parent} was run with another definition of row {row} ({record['spec']}); move the folder "
            "away to rerun it, or restore the row."
        )
    return record


def is_finished(out: Path, ledger: Path, row: str, seed: int) -> bool:
    """Finished here (run folder) or anywhere (ledger)."""
    return (run_dir(out, row, seed) / DONE).is_file() or (ledger_dir(ledger, row, seed) / DONE).is_file()


def finished_records(out: Path, ledger: Path) -> dict[tuple[str, int], dict]:
    """Every done record of the ladder, keyed by (row, seed); the ledger's copy wins over the run folder's."""
    records: dict[tuple[str, int], dict] = {}
    for marker in [*(out / "runs").glob(f"*/seed*/{DONE}"), *ledger.glob(f"*/seed*/{DONE}")]:
        record = json.loads(marker.read_text())
        records[(record["row"], record["seed"])] = record
    return records


def result_folders(out: Path, ledger: Path, row: str) -> list[Path]:
    """One folder with the protocol result per finished seed of ``row``: the ledger's, else the run's ``test``."""
    found: dict[str, Path] = {}
    for marker in sorted((ledger / row).glob(f"seed*/{DONE}")):
        found[marker.parent.name] = marker.parent
    for marker in sorted((out / "runs" / row).glob(f"seed*/{DONE}")):
        found.setdefault(marker.parent.name, marker.parent / "test")
    return [found[k] for k in sorted(found, key=lambda name: int(name.removeprefix("seed")))]


def record_in_ledger(p: Plan, out: Path, ledger: Path) -> None:
    """Copy a finished run's result JSON, then its done marker (last: it says the copy is complete), atomically.

    A (row, seed) already in the ledger keeps its first record (the one its tables were built from)."""
    target = ledger_dir(ledger, p.row, p.seed)
    if (target / DONE).is_file():
        return
    folder = run_dir(out, p.row, p.seed)
    target.mkdir(parents=True, exist_ok=True)
    result = f"{PROTOCOLS[ROW_BY_NAME[p.row].task]}.json"
    for source in (folder / "test" / result, folder / DONE):
        tmp = target / f".{source.name}.tmp"
        shutil.copyfile(source, tmp)
        tmp.replace(target / source.name)


def needs_local_weights(plans: list[Plan], out: Path, ledger: Path) -> set[tuple[str, int]]:
    """(row, seed) finished only in the ledger whose weights a still unfinished linked row needs here.

    A DAKD student distils from its teacher's checkpoint, a DIKDNet rung 3-4 from rung 2's teachers: on a fresh
    machine the ledger has their results but not their weights, so they are trained again here (their ledger
    record, the one in the tables, is kept)."""
    needed = set()
    for p in plans:
        link = ROW_BY_NAME[p.row].link
        if link is None or is_finished(out, ledger, p.row, p.seed):
            continue
        if not (run_dir(out, link[0], p.seed) / DONE).is_file() and is_finished(out, ledger, link[0], p.seed):
            needed.add((link[0], p.seed))
    return needed


# ----------------------------------------------------------------------------------------------- one run


def _torch_threads() -> int:
    import torch

    return torch.get_num_threads()


def run_one(p: Plan, out: Path, ledger: Path, *, quick: bool, need_weights: bool = False) -> dict:
    """Train and test one (row, seed) unless finished here or in the ledger (``need_weights``: unless finished
    here); record it at once, in the run folder and in the ledger. Returns the done record."""
    from rich.console import Console

    from vireid.config import load_config
    from vireid.engine.checkpoint import load_checkpoint
    from vireid.engine.testing import test_checkpoint
    from vireid.engine.trainer import train

    folder = run_dir(out, p.row, p.seed)
    marker = folder / DONE
    # Paths under OUT are recorded relative to it, so a ladder resumed through another path to OUT (or on
    # another machine, through the ledger) still matches.
    spec = row_spec(p, out)
    record = _read_done(marker, spec, p.row)
    if record is not None:
        record_in_ledger(p, out, ledger)  # runs finished before the ledger existed, or with another --ledger
        print(f"{p.row} seed {p.seed}: finished earlier, kept", flush=True)
        return record
    elsewhere = _read_done(ledger_dir(ledger, p.row, p.seed) / DONE, spec, p.row)
    if elsewhere is not None and not need_weights:
        print(f"{p.row} seed {p.seed}: finished elsewhere (ledger {ledger}), kept", flush=True)
        return elsewhere
    if elsewhere is not None:
        print(f"{p.row} seed {p.seed}: in the ledger, trained again here for the checkpoint a linked row needs")
    started = time.perf_counter()
    cfg = load_config(p.config, p.overrides)
    quiet = Console(quiet=True)
    try:
        finished = int(load_checkpoint(folder, prefer="last").meta.get("epoch", -1)) >= cfg.train.epochs
    except Exception:
        finished = False
    if not finished:
        if (folder / "checkpoints" / "last.json").is_file():
            print(f"{p.row} seed {p.seed}: resuming the interrupted run", flush=True)
            train(cfg, resume=folder, console=quiet)
        else:
            if folder.exists():
                shutil.rmtree(folder)  # a run that stopped before its first checkpoint: nothing to keep
            print(f"{p.row} seed {p.seed}: training ({p.steps or '?'} steps) ...", flush=True)
            train(cfg, run_dir=folder, console=quiet)
    protocol = PROTOCOLS[ROW_BY_NAME[p.row].task]
    result = test_checkpoint(
        folder, protocols=[protocol], out=folder / "test", trials=QUICK_TRIALS if quick else None, console=quiet
    )[0]
    record = {
        "row": p.row,
        "seed": p.seed,
        "spec": spec,
        "seconds": round(time.perf_counter() - started, 1),
        "threads": _torch_threads(),
        "steps": p.steps,
        "images": p.images,
        "result": {k: result.mean[k] for k in ("R1", "mAP", "mINP")},
    }
    tmp = marker.with_suffix(".tmp")
    tmp.write_text(json.dumps(record, indent=2) + "\n")
    tmp.replace(marker)  # atomic: a row is either recorded as finished or not at all
    record_in_ledger(p, out, ledger)
    r = record["result"]
    print(f"{p.row} seed {p.seed}: R1 {r['R1']:.2f} mAP {r['mAP']:.2f} ({record['seconds']:.0f} s)", flush=True)
    return record


# ------------------------------------------------------------------------------------------ parallel runs


def worker_threads(jobs: int) -> int:
    """Threads per worker: ``OMP_NUM_THREADS`` when set, else the cores shared out evenly (at least 1)."""
    if os.environ.get("OMP_NUM_THREADS", "").isdigit():
        return max(1, int(os.environ["OMP_NUM_THREADS"]))
    return max(1, (os.cpu_count() or 1) // jobs)


def run_parallel(
    plans: list[Plan], out: Path, ledger: Path, *, jobs: int, quick: bool, retrain: set[tuple[str, int]]
) -> list[tuple[str, int]]:
    """Run the unfinished (row, seed)s in up to ``jobs`` worker processes at once; returns the failed ones.

    Why processes: a small network at 64x32 does not keep two threads busy, so two one-thread runs side by
    side can finish sooner than two two-thread runs in turn (1.2-1.3x for IDKL rows on the 2-core VM, about
    1x for AGW rows). Each worker is this script with ``--one ROW:SEED``, so a
    worker that dies takes nothing else with it, and every finished run is recorded by the worker itself
    exactly as in a sequential ladder. A linked row (a DAKD student, a DIKDNet rung 3-4) starts only after its
    source run of the same seed has finished; if that failed, the linked run is not started. Other runs go on.
    """
    pending = []
    for p in plans:
        if is_finished(out, ledger, p.row, p.seed) and (p.row, p.seed) not in retrain:
            run_one(p, out, ledger, quick=quick)  # finished: kept (and copied to the ledger if it was not)
        else:
            pending.append(p)
    waiting_on = {}
    keys = {(p.row, p.seed) for p in pending}
    for p in pending:
        link = ROW_BY_NAME[p.row].link
        if link is not None and (link[0], p.seed) in keys:
            waiting_on[(p.row, p.seed)] = (link[0], p.seed)
    env = {**os.environ, "OMP_NUM_THREADS": str(worker_threads(jobs))}
    threads = env["OMP_NUM_THREADS"]
    print(f"running {len(pending)} runs in {jobs} worker processes, {threads} thread(s) each", flush=True)
    running: dict[tuple[str, int], subprocess.Popen] = {}
    done: set[tuple[str, int]] = set()
    failed: list[tuple[str, int]] = []
    while pending or running:
        for key, proc in list(running.items()):
            if proc.poll() is None:
                continue
            del running[key]
            if proc.returncode == 0:
                done.add(key)
            else:
                failed.append(key)
                print(f"{key[0]} seed {key[1]}: FAILED (exit {proc.returncode}); see {run_dir(out, *key)}", flush=True)
        for p in list(pending):
            key = (p.row, p.seed)
            source = waiting_on.get(key)
            if source is not None and source in failed:
                pending.remove(p)
                failed.append(key)
                reason = f"its source run {source[0]} seed {source[1]} failed"
                print(f"{p.row} seed {p.seed}: not started, {reason}", flush=True)
                continue
            if len(running) >= jobs or (source is not None and source not in done):
                continue
            command = [sys.executable, str(Path(__file__).resolve()), "--out", str(out), "--ledger", str(ledger)]
            command += ["--one", f"{p.row}:{p.seed}"] + (["--quick"] if quick else [])
            command += ["--need-weights"] if key in retrain else []
            running[key] = subprocess.Popen(command, env=env)
            pending.remove(p)
        time.sleep(0.2)
    return failed


def write_tables(out: Path, ledger: Path) -> dict[str, Path]:
    """One ``vireid compare`` table per ladder over the rows with finished seeds (the first is the reference)."""
    from vireid.evaluation.compare import compare_results, load_result_group

    written = {}
    for ladder in dict.fromkeys(r.ladder for r in ROWS):
        groups = []
        for row in (r for r in ROWS if r.ladder == ladder):
            folders = result_folders(out, ledger, row.name)
            if folders:
                groups.append(load_result_group(",".join(map(str, folders)), label=row.name))
        if ladder in ("idkl", "dakd"):  # the AGW baseline beside each method, when it has finished seeds
            agw = result_folders(out, ledger, "agw")
            if agw and groups:
                groups.append(load_result_group(",".join(map(str, agw)), label="agw"))
        if not groups:
            continue
        comparison = compare_results(groups)
        paths = comparison.save(out / "tables" / ladder)
        print(f"\n## {ladder}\n\n{comparison.markdown()}")
        written[ladder] = paths["markdown"]
    return written


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", required=True, help="ladder folder (data, pretrain, runs, tables)")
    parser.add_argument(
        "--ledger",
        default=None,
        help="folder of finished rows' results and done markers, no weights (default OUT/ledger); "
        "benchmarks/results/method_ladder keeps them in git, so another machine skips them",
    )
    parser.add_argument("--rows", nargs="+", default=None, choices=[r.name for r in ROWS], metavar="ROW")
    parser.add_argument("--seeds", type=int, default=None, help="seeds 0..N-1 for every row (default: per row)")
    parser.add_argument("--quick", action="store_true", help="tiny sizes, 1 seed, 2 rows (a smoke run)")
    parser.add_argument("--plan", action="store_true", help="print the rows and the budget, run nothing")
    parser.add_argument(
        "--jobs",
        type=int,
        default=1,
        help="runs at once, each in its own process (default 1); threads per run: OMP_NUM_THREADS, else the "
        "cores divided by JOBS",
    )
    parser.add_argument("--one", default=None, metavar="ROW:SEED", help=argparse.SUPPRESS)  # a --jobs worker
    parser.add_argument("--need-weights", action="store_true", help=argparse.SUPPRESS)  # a --jobs worker
    args = parser.parse_args(argv)
    out = Path(args.out)
    ledger = Path(args.ledger) if args.ledger else out / "ledger"
    if args.jobs < 1:
        parser.error("--jobs must be at least 1")
    if args.one is not None:  # a worker of --jobs: one (row, seed); data and pretraining are the parent's
        name, seed = args.one.rsplit(":", 1)
        row = ROW_BY_NAME[name]
        (one,) = plan([row], {name: [int(seed)]}, out, quick=args.quick)
        run_one(one, out, ledger, quick=args.quick, need_weights=args.need_weights)
        return 0
    names = args.rows or (list(QUICK_ROWS) if args.quick else [r.name for r in ROWS])
    # A row whose run feeds another (a DAKD teacher, DIKDNet's rung-2 teachers) runs first.
    ordered: list[str] = []
    for name in names:
        link = ROW_BY_NAME[name].link
        if link is not None and link[0] not in ordered:
            ordered.append(link[0])
        if name not in ordered:
            ordered.append(name)
    rows = [ROW_BY_NAME[n] for n in ordered]
    count = 1 if args.quick and args.seeds is None else args.seeds
    seeds = {r.name: list(range(count if count is not None else r.seeds)) for r in rows}
    for r in rows:  # a linked row needs the seeds of the rows that use it
        if r.link is not None:
            seeds[r.link[0]] = sorted(set(seeds[r.link[0]]) | set(seeds[r.name]))
    plans = plan(rows, seeds, out, quick=args.quick)
    print_plan(plans, out, ledger, quick=args.quick, jobs=args.jobs)
    if args.plan:
        return 0
    retrain = needs_local_weights(plans, out, ledger)
    todo = [p for p in plans if not is_finished(out, ledger, p.row, p.seed) or (p.row, p.seed) in retrain]
    # Data and the pretrained backbone only for what still trains (a fresh machine with a full ledger needs none).
    ensure_data(out, list({ROW_BY_NAME[p.row].name: ROW_BY_NAME[p.row] for p in todo}.values()), quick=args.quick)
    started = time.perf_counter()
    failed: list[tuple[str, int]] = []
    if args.jobs > 1:
        failed = run_parallel(plans, out, ledger, jobs=args.jobs, quick=args.quick, retrain=retrain)
    else:
        for p in plans:
            run_one(p, out, ledger, quick=args.quick, need_weights=(p.row, p.seed) in retrain)
    write_tables(out, ledger)
    if failed:
        names = ", ".join(f"{row} seed {seed}" for row, seed in failed)
        print(f"\n{len(failed)} runs failed or were not started: {names}; rerun the same command to retry them")
        return 1
    print(f"\nladder done in {time.perf_counter() - started:.0f} s; tables in {out / 'tables'}; ledger in {ledger}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
