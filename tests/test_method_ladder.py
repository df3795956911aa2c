"""benchmarks/method_ladder.py: a fair row table, a quick run end to end, resuming without rerunning.

The full ladder takes hours; here its plan is checked (every config loads, every VI-ReID row has the same
budget, and the rows meant to differ in one component differ in exactly its keys) and ``--quick`` (tiny sizes,
1 seed, 2 rows) runs for real: pretraining, training, testing, tables, the ledger read back on a "fresh machine".
"""

from __future__ import annotations

import dataclasses
import functools
import importlib.util
import json
import shutil
import sys
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "method_ladder.py"


@pytest.fixture(scope="module")
def ladder():
    spec = importlib.util.spec_from_file_location("method_ladder", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    sys.modules["method_ladder"] = module  # dataclasses look their module up while the script is executed
    try:
        spec.loader.exec_module(module)
        yield module
    finally:
        sys.modules.pop("method_ladder", None)


@pytest.fixture(scope="module")
def full_plans(ladder, tmp_path_factory):
    """The plan of every row of the full ladder (loads every row's config once; bad keys fail here)."""
    rows = list(ladder.ROWS)
    seeds = {r.name: list(range(r.seeds)) for r in rows}
    return ladder.plan(rows, seeds, tmp_path_factory.mktemp("ladder"), quick=False)


def _flat(cfg, prefix: str = "") -> dict:
    """A loaded config as {dotted key: value}."""
    values = dataclasses.asdict(cfg) if dataclasses.is_dataclass(cfg) else cfg
    flat = {}
    for key, value in values.items():
        if isinstance(value, dict):
            flat.update(_flat(value, f"{prefix}{key}."))
        else:
            flat[f"{prefix}{key}"] = value
    return flat


def _differing_keys(a, b) -> dict:
    fa, fb = _flat(a), _flat(b)
    return {k: (fa.get(k), fb.get(k)) for k in fa.keys() | fb.keys() if fa.get(k) != fb.get(k)}


def test_full_ladder_rows_share_one_budget(ladder, full_plans):
    rows = list(ladder.ROWS)
    vi = [p for p in full_plans if ladder.ROW_BY_NAME[p.row].task == "vi"]
    assert {p.images_per_step for p in vi} == {96}
    assert {p.facts["backbone"] for p in vi} == {"resnet18"} and {p.facts["width"] for p in vi} == {32}
    assert {p.facts["sched"] for p in vi} == {"cosine"} and {p.facts["input"] for p in vi} == {"64x32"}
    assert {p.steps for p in vi if p.row != "dakd_control_long"} == {600}
    assert {p.steps for p in vi if p.row == "dakd_control_long"} == {1200}
    # 5 seeds for each method's full configuration and its own baseline, at least 3 elsewhere
    five = {"agw", "idkl_shared", "idkl_full", "dakd_teacher_mce", "dakd_full"}
    assert {r.name for r in rows if r.seeds == 5} == five and min(r.seeds for r in rows) >= 3
    pretrained = [o for p in vi if ladder.ROW_BY_NAME[p.row].start == "pretrained" for o in p.overrides]
    assert sum(o.startswith("model.pretrained=") and o.endswith("backbone.safetensors") for o in pretrained) > 0
    # The fairness check refuses a row that sees more images per step.
    unfair = [dataclasses.replace(vi[0], images_per_step=128, row="caj"), *vi[1:]]
    with pytest.raises(SystemExit, match="caj uses 128 images per step"):
        ladder.check_fair([vi[0], *unfair])


# Rows that add or switch one component, and the keys in which their configs must differ (nothing else).
ONE_COMPONENT = {
    ("idkl_shared", "idkl_specific"): {
        "loss.specific.id_weight",
        "loss.specific.modality_weight",
        "loss.triplet.weight_sp",
    },
    ("idkl_specific", "idkl_purifier"): {"purifier.enabled"},
    ("idkl_purifier", "idkl_transfer"): {"tgsa.enabled", "csa.per_sample", "csa.per_identity"},
    ("idkl_transfer", "idkl_full"): {"confusion.weight"},
    ("idkl_full", "idkl_full_vireid"): {"transfer.mode", "tgsa.logits", "tgsa.cross", "confusion.mode"},
    ("idkl_tgsa_full", "idkl_tgsa_aligned"): {"tgsa.cross"},
    ("dakd_full", "dakd_bn_batch"): {"student.bn"},
    ("dakd_full", "dakd_bn_joint"): {"student.bn"},
    ("dikd_r2_teachers", "dikd_r1_restart"): {"teacher.views"},
    ("dikd_r6_full", "dikd_r6_adaptor_identity"): {"ikdm.adaptor"},
}


@pytest.mark.parametrize(("row_a", "row_b"), list(ONE_COMPONENT))
def test_rows_of_one_component_differ_in_exactly_its_keys(ladder, full_plans, row_a, row_b):
    loaded = {p.row: p.loaded for p in full_plans if p.seed == 0}
    assert set(_differing_keys(loaded[row_a], loaded[row_b])) == ONE_COMPONENT[(row_a, row_b)]


def test_idkl_rows_carry_the_release_regime_of_their_batch_or_force_the_full_tgsa_form(ladder, full_plans):
    from vireid.config import load_config, packaged_configs, read_yaml
    from vireid.errors import ConfigError
    from vireid.methods.idkl import regime_label

    loaded = {p.row: p.loaded for p in full_plans if p.seed == 0}
    idkl = [name for name in loaded if ladder.ROW_BY_NAME[name].ladder == "idkl"]
    labels = {name: regime_label(loaded[name]) for name in idkl}
    forced = {"idkl_tgsa_full", "idkl_tgsa_aligned"}
    # idkl_shared(_scratch) and idkl_specific use no TGSA/CSA weight at all ("custom": nothing to match).
    assert {labels[n] for n in idkl if n not in forced} == {"idkl_release_other", "custom"}
    assert {labels[n] for n in forced} == {"idkl_release_120 (forced at batch 96)"}
    # The forced rows carry exactly the batch-120 preset, and load only because of tgsa.regime=force.
    preset = read_yaml(packaged_configs() / "idkl" / "presets" / "idkl_release_120.yaml")
    for name in forced:
        assert {k: getattr(loaded[name].tgsa, k) for k in preset["tgsa"]} == preset["tgsa"]
        assert loaded[name].csa.inter_weight == preset["csa"]["inter_weight"]
    plan = next(p for p in full_plans if p.row == "idkl_tgsa_aligned")
    with pytest.raises(ConfigError, match="idkl_release_120 regime"):
        load_config(plan.config, [o for o in plan.overrides if o != "tgsa.regime=force"])
    # vireid's switches are exactly what idkl/sysu_vireid.yaml changes in idkl/sysu.yaml.
    assert load_config("idkl/sysu", list(ladder._IDKL_VIREID_SWITCHES)) == load_config("idkl/sysu_vireid")
    assert load_config("idkl/sysu_vireid", list(ladder._IDKL_RELEASE_SWITCHES)) == load_config("idkl/sysu")


def test_a_teacher_finished_only_in_the_ledger_is_retrained_when_a_student_needs_its_weights(ladder, tmp_path):
    out, ledger = tmp_path / "out", tmp_path / "ledger"
    plan = functools.partial(ladder.Plan, config="c", overrides=[], steps=1, images_per_step=1)
    plans = [plan("dakd_teacher_mce", 0), plan("dakd_full", 0), plan("agw", 0)]

    def done(folder):
        folder.mkdir(parents=True, exist_ok=True)
        (folder / ladder.DONE).write_text("{}")

    assert ladder.needs_local_weights(plans, out, ledger) == set()  # nothing finished: all train here anyway
    done(ladder.ledger_dir(ledger, "dakd_teacher_mce", 0))
    done(ladder.ledger_dir(ledger, "agw", 0))
    assert ladder.needs_local_weights(plans, out, ledger) == {("dakd_teacher_mce", 0)}
    done(ladder.run_dir(out, "dakd_teacher_mce", 0))  # its weights are here
    assert ladder.needs_local_weights(plans, out, ledger) == set()
    (ladder.run_dir(out, "dakd_teacher_mce", 0) / ladder.DONE).unlink()
    done(ladder.ledger_dir(ledger, "dakd_full", 0))  # the student finished too: no weights needed
    assert ladder.needs_local_weights(plans, out, ledger) == set()


def test_quick_ladder_runs_then_resumes_without_rerunning(ladder, tmp_path, capsys):
    out, ledger = tmp_path / "ladder", tmp_path / "results"
    assert ladder.main(["--out", str(out), "--quick", "--ledger", str(ledger)]) == 0
    printed = capsys.readouterr().out
    done = {row: out / "runs" / row / "seed0" / "ladder_done.json" for row in ladder.QUICK_ROWS}
    records = {row: json.loads(path.read_text()) for row, path in done.items()}
    for record in records.values():
        assert record["steps"] == 2 and 0.0 <= record["result"]["R1"] <= 100.0
    # `vireid test` records what `vireid compare` needs: the training seed and which synthetic set was scored.
    result = json.loads((done["agw"].parent / "test" / "sysu.all.single.random.json").read_text())
    assert result["metadata"]["train_seed"] == 0 and result["metadata"]["dataset"] == "sysu"
    assert (
        result["metadata"]["data_identity"].startswith("sysu:synthetic(layout=sysu,")
        and "seed=0" in (result["metadata"]["data_identity"])
    )
    table = (out / "tables" / "idkl" / "comparison.md").read_text()
    assert "| idkl_full | 1 run" in table and "| agw | trial (2) |" in table
    assert "about" in printed and "h of run time left" in printed  # the planned budget is printed
    weights = sorted((out / "runs").rglob("*.safetensors"))
    stamps = {p: p.stat().st_mtime_ns for p in [*weights, *done.values()]}

    # The ledger holds each finished row's done marker and result JSON, byte for byte, and nothing else.
    for row, marker in done.items():
        copied = ledger / row / "seed0"
        assert sorted(p.name for p in copied.iterdir()) == ["ladder_done.json", "sysu.all.single.random.json"]
        assert (copied / "ladder_done.json").read_bytes() == marker.read_bytes()
        assert (copied / "sysu.all.single.random.json").read_bytes() == (
            marker.parent / "test" / "sysu.all.single.random.json"
        ).read_bytes()

    # A fresh machine with only the ledger (another OUT): nothing is generated, trained or tested; same tables.
    fresh = tmp_path / "fresh"
    assert ladder.main(["--out", str(fresh), "--quick", "--ledger", str(ledger)]) == 0
    elsewhere = capsys.readouterr().out
    assert elsewhere.count("finished elsewhere (ledger") == 2 and ": training (" not in elsewhere
    assert not (fresh / "data").exists() and not (fresh / "runs").exists() and not (fresh / "pretrain").exists()
    assert (fresh / "tables" / "idkl" / "comparison.md").read_text() == table

    assert ladder.main(["--out", str(out), "--quick", "--ledger", str(ledger)]) == 0
    again = capsys.readouterr().out
    assert again.count("finished earlier, kept") == 2 and ": training (" not in again
    assert {p: p.stat().st_mtime_ns for p in stamps} == stamps  # nothing retrained or rewritten

    # A finished row whose definition changed is refused rather than silently mixed into the table.
    record = records["agw"]
    record["spec"]["overrides"].append("optim.lr=1.0")
    done["agw"].write_text(json.dumps(record))
    with pytest.raises(SystemExit, match="another definition of row agw"):
        ladder.main(["--out", str(out), "--quick"])
    # Likewise a ledger entry of another definition, on a machine that has only the ledger.
    (ledger / "agw" / "seed0" / "ladder_done.json").write_text(json.dumps(record))
    with pytest.raises(SystemExit, match=r"results/agw/seed0 was run with another definition of row agw"):
        ladder.main(["--out", str(fresh), "--quick", "--ledger", str(ledger)])


def test_jobs_run_rows_side_by_side_students_after_their_teacher_and_a_failure_stops_only_its_dependents(
    ladder, tmp_path, capsys
):
    out, ledger = tmp_path / "ladder", tmp_path / "results"
    # The teacher of seed 1 is broken on purpose: a resume record that is not JSON makes its worker fail.
    broken = ladder.run_dir(out, "dakd_teacher_mce", 1) / "checkpoints"
    broken.mkdir(parents=True)
    (broken / "last.json").write_text("not json")
    argv = ["--out", str(out), "--ledger", str(ledger), "--quick", "--rows", "dakd_nomask", "--seeds", "2"]
    assert ladder.main([*argv, "--jobs", "2"]) == 1
    printed = capsys.readouterr().out
    assert "in 2 worker processes" in printed
    assert "dakd_teacher_mce seed 1: FAILED" in printed
    assert "dakd_nomask seed 1: not started, its source run dakd_teacher_mce seed 1 failed" in printed
    assert "runs failed or were not started: dakd_teacher_mce seed 1, dakd_nomask seed 1" in printed
    finished = {(m.parent.parent.name, m.parent.name) for m in ledger.glob("*/seed*/ladder_done.json")}
    assert finished == {("dakd_teacher_mce", "seed0"), ("dakd_nomask", "seed0")}  # seed 0 went on
    # The student started only after its teacher had finished (its run folder is younger than the teacher's marker).
    teacher_done = (ladder.run_dir(out, "dakd_teacher_mce", 0) / ladder.DONE).stat().st_mtime_ns
    assert (ladder.run_dir(out, "dakd_nomask", 0) / "config.yaml").stat().st_mtime_ns > teacher_done
    record = json.loads((ledger / "dakd_nomask" / "seed0" / "ladder_done.json").read_text())
    assert record["threads"] == ladder.worker_threads(2)

    # Mended, the same command runs only what is missing.
    shutil.rmtree(broken.parent)
    assert ladder.main([*argv, "--jobs", "2"]) == 0
    again = capsys.readouterr().out
    assert "running 2 runs in 2 worker processes" in again and again.count("finished earlier, kept") == 2
    assert (ledger / "dakd_nomask" / "seed1" / "ladder_done.json").is_file()
