"""benchmarks/method_ladder.py: a fair row table, a quick run end to end, resuming without rerunning.

The full ladder takes hours; here its plan is checked (every config loads and every VI-ReID row has the same
budget) and ``--quick`` (tiny sizes, 1 seed, 2 rows) runs for real: pretraining, training, testing, tables.
"""

from __future__ import annotations

import dataclasses
import importlib.util
import json
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


def test_full_ladder_rows_share_one_budget(ladder, tmp_path):
    rows = list(ladder.ROWS)
    seeds = {r.name: list(range(r.seeds)) for r in rows}
    # Loads every VI-ReID row's config (bad keys fail here); DIKDNet's rungs are its packaged ablation presets.
    plans = ladder.plan([r for r in rows if r.task == "vi"], seeds, tmp_path, quick=False)
    vi = [p for p in plans if ladder.ROW_BY_NAME[p.row].task == "vi"]
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


def test_quick_ladder_runs_then_resumes_without_rerunning(ladder, tmp_path, capsys):
    out = tmp_path / "ladder"
    assert ladder.main(["--out", str(out), "--quick"]) == 0
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
    assert "about" in printed and "h of CPU" in printed  # the planned budget is printed
    weights = sorted((out / "runs").rglob("*.safetensors"))
    stamps = {p: p.stat().st_mtime_ns for p in [*weights, *done.values()]}

    assert ladder.main(["--out", str(out), "--quick"]) == 0
    again = capsys.readouterr().out
    assert again.count("finished earlier, kept") == 2 and ": training (" not in again
    assert {p: p.stat().st_mtime_ns for p in stamps} == stamps  # nothing retrained or rewritten

    # A finished row whose definition changed is refused rather than silently mixed into the table.
    record = records["agw"]
    record["spec"]["overrides"].append("optim.lr=1.0")
    done["agw"].write_text(json.dumps(record))
    with pytest.raises(SystemExit, match="another definition of row agw"):
        ladder.main(["--out", str(out), "--quick"])
