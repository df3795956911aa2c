"""`vireid compare`: summaries, paired differences and their intervals, refusals, CLI outputs.

Result files are written by :class:`ProtocolResult.save` itself (the format `vireid test` writes), from
per-trial metric values drawn at random, so every expected number can be worked out from those values.
"""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
from scipy import stats

from vireid.cli import main
from vireid.errors import DataError, ProtocolError
from vireid.evaluation.compare import compare_results, load_result_group, paired_difference
from vireid.evaluation.metrics import RetrievalResult
from vireid.evaluation.report import ProtocolResult, TrialResult

PROTOCOL = "sysu.all.single.random"


def _trial_values(seed: int, num_trials: int = 10) -> np.ndarray:
    """(trials, 3) R1 / mAP / mINP fractions, with trial-to-trial spread."""
    rng = np.random.default_rng(seed)
    return rng.uniform(0.2, 0.6, size=(num_trials, 3))


def write_result(
    folder,
    values: np.ndarray,
    *,
    train_seed: int | None = 0,
    protocol: str = PROTOCOL,
    rerank: str = "none",
    data_identity: str = "sysu:synthetic(seed=0)",
    num_queries: int = 50,
):
    """A `vireid test` folder whose result has the given per-trial R1/mAP/mINP (fractions)."""
    trials = []
    for index, (r1, ap, inp) in enumerate(values):
        cmc = np.clip(np.linspace(r1, min(1.0, r1 + 0.4), 20), 0, 1)
        result = RetrievalResult(cmc=cmc, mAP=float(ap), mINP=float(inp), num_valid_queries=num_queries,
                                 num_queries=num_queries, rule="sysu")  # fmt: skip
        trials.append(TrialResult(index=index, result=result, meta={"trial": index}))
    meta = {"dataset": "sysu", "rule": "sysu", "max_rank": 20, "data_identity": data_identity}
    if train_seed is not None:
        meta["train_seed"] = train_seed
    result = ProtocolResult.from_trials(protocol, trials, meta)
    if rerank != "none":
        result = ProtocolResult.from_trials(protocol, trials, {**meta, "rerank": rerank})
    # The JSON that ProtocolResult.save writes, without its CMC picture (matplotlib is slow to draw).
    folder.mkdir(parents=True, exist_ok=True)
    stem = f"{protocol}.reranked" if result.reranked else protocol
    (folder / f"{stem}.json").write_text(json.dumps(result.to_dict()))
    return folder


def test_paired_interval_matches_hand_computation_with_scipy_t():
    a = [40.0, 42.5, 39.0, 41.0, 44.0]
    b = [41.0, 45.0, 39.5, 43.5, 44.5]
    diff = paired_difference(a, b, unit="seed")
    d = np.array(b) - np.array(a)  # 1.0, 2.5, 0.5, 2.5, 0.5
    assert diff.mean == pytest.approx(1.4)
    low, high = stats.t.interval(0.95, df=4, loc=d.mean(), scale=stats.sem(d))
    assert (diff.low, diff.high) == (pytest.approx(low), pytest.approx(high))
    # By hand: sd = sqrt(sum((d - 1.4)^2) / 4) = sqrt(4.2 / 4); t_{0.975,4} = 2.7764451
    half = 2.7764451 * math.sqrt(4.2 / 4) / math.sqrt(5)
    assert diff.high - diff.mean == pytest.approx(half, rel=1e-6)
    assert diff.excludes_zero and diff.n == 5 and diff.unit == "seed"
    single = paired_difference([1.0], [3.0], unit="trial")
    assert single.mean == 2.0 and math.isnan(single.low) and single.formatted() == "+2.00 [n/a]"


def test_identical_results_give_zero_difference_and_zero_width_interval(tmp_path):
    values = _trial_values(0)
    a = write_result(tmp_path / "a", values)
    b = write_result(tmp_path / "b", values)
    comparison = compare_results([str(a), str(b)])
    diff = comparison.differences[0]
    assert diff["unit"] == "trial"
    for d in diff["metrics"].values():
        assert d.mean == 0.0 and d.low == 0.0 and d.high == 0.0 and d.n == 10
    # mean +- std of a single run is over its trials, in percent
    mean, std, unit = comparison.groups[0].summary("mAP")
    assert unit == "trial"
    assert mean == pytest.approx(100 * values[:, 1].mean()) and std == pytest.approx(100 * values[:, 1].std(ddof=1))


def test_known_shift_per_trial_gives_that_difference(tmp_path):
    values = _trial_values(1)
    shift = np.zeros_like(values)
    shift[:, 0] = 0.03  # +3 R1 points on every trial
    shift[:, 1] = np.linspace(-0.02, 0.04, len(values))  # mAP: mean +1 point, spread over trials
    a = write_result(tmp_path / "a", values)
    b = write_result(tmp_path / "b", values + shift)
    diffs = compare_results([str(a), str(b)]).differences[0]["metrics"]
    assert diffs["R1"].mean == pytest.approx(3.0) and diffs["R1"].high - diffs["R1"].low == pytest.approx(0, abs=1e-9)
    assert diffs["mAP"].mean == pytest.approx(1.0)
    expected = stats.t.interval(0.95, df=9, loc=1.0, scale=stats.sem(100 * shift[:, 1]))
    assert (diffs["mAP"].low, diffs["mAP"].high) == (pytest.approx(expected[0]), pytest.approx(expected[1]))
    assert diffs["mINP"].mean == pytest.approx(0.0, abs=1e-9)


def test_seeds_are_the_unit_when_several_seeds_are_shared(tmp_path):
    """Per seed: the mean over trials; pairs by training seed, not by folder order."""
    seed_shift = {0: 0.01, 1: 0.05, 2: 0.03}
    for seed in (0, 1, 2):
        values = _trial_values(10 + seed)
        write_result(tmp_path / f"base_seed{seed}", values, train_seed=seed)
        shifted = values.copy()
        shifted[:, 0] += seed_shift[seed]
        # Written in reverse folder order: pairing must follow the recorded seed.
        write_result(tmp_path / f"new_seed{2 - seed}_run", shifted, train_seed=seed)
    comparison = compare_results([f"base={tmp_path}/base_seed*", f"new={tmp_path}/new_seed*"])
    diff = comparison.differences[0]
    assert diff["unit"] == "seed" and diff["seeds"] == [0, 1, 2]
    r1 = diff["metrics"]["R1"]
    assert sorted(r1.differences) == pytest.approx([1.0, 3.0, 5.0])
    expected = stats.t.interval(0.95, df=2, loc=3.0, scale=stats.sem([1.0, 3.0, 5.0]))
    assert (r1.low, r1.high) == (pytest.approx(expected[0]), pytest.approx(expected[1]))
    mean, std, unit = comparison.groups[0].summary("R1")
    per_seed = [100 * _trial_values(10 + s)[:, 0].mean() for s in (0, 1, 2)]
    assert unit == "seed" and mean == pytest.approx(np.mean(per_seed))
    assert std == pytest.approx(np.std(per_seed, ddof=1))
    assert comparison.groups[0].label == "base"


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"protocol": "sysu.indoor.single.random"}, "different protocol"),
        ({"rerank": "k_reciprocal(20,6,0.3,joint)"}, "different re-ranking setting"),
        ({"data_identity": "sysu:synthetic(seed=5)"}, "different dataset"),
        ({"num_queries": 60}, "different dataset: trial 0 has 50 queries"),
    ],
)
def test_results_scored_differently_are_refused_with_one_line(tmp_path, changes, message):
    values = _trial_values(2)
    a = write_result(tmp_path / "a", values)
    b = write_result(tmp_path / "b", values, **changes)
    with pytest.raises(ProtocolError, match=message) as info:
        compare_results([str(a), str(b)])
    assert "\n" not in str(info.value)


def test_trial_sets_must_match_and_metrics_must_exist(tmp_path):
    a = write_result(tmp_path / "a", _trial_values(3))
    b = write_result(tmp_path / "b", _trial_values(3, num_trials=4))
    with pytest.raises(ProtocolError, match="different trials"):
        compare_results([str(a), str(b)])
    with pytest.raises(ProtocolError, match="unknown metric"):
        compare_results([str(a)], metrics=["R1", "R100"])
    not_a_result = tmp_path / "notes.json"
    not_a_result.write_text('{"rank1": 40.0}')
    with pytest.raises(DataError, match="not a protocol result"):
        load_result_group(str(not_a_result))
    with pytest.raises(DataError, match="matches nothing"):
        load_result_group(f"{tmp_path}/missing_*")
    # RegDB results combine one model per trial: a seed list is one seed only when all agree.
    assert load_result_group(str(write_result(tmp_path / "r1", _trial_values(3), train_seed=[2, 2]))).seeds == [2]
    assert load_result_group(str(write_result(tmp_path / "r2", _trial_values(3), train_seed=[1, 2]))).seeds == [None]
    write_result(tmp_path / "dup1", _trial_values(3), train_seed=4)
    write_result(tmp_path / "dup2", _trial_values(4), train_seed=4)
    with pytest.raises(DataError, match="same training seed"):
        load_result_group(f"{tmp_path}/dup*")


def test_cli_writes_markdown_json_and_overlay_and_refuses_mismatch_with_exit_2(tmp_path, capsys):
    values = _trial_values(5)
    a = write_result(tmp_path / "a", values)
    shifted = values.copy()
    shifted[:, 0] += 0.02
    b = write_result(tmp_path / "b", shifted)
    assert main(["compare", str(a), f"better={b}", "--metrics", "R1", "mAP", "--out", str(tmp_path / "cmp")]) == 0
    printed = capsys.readouterr().out
    assert "| better | trial (10) | +2.00 [+2.00, +2.00] | +0.00 [+0.00, +0.00] |" in printed
    saved = json.loads((tmp_path / "cmp" / "comparison.json").read_text())
    assert saved["differences"][0]["metrics"]["R1"]["mean"] == pytest.approx(2.0)
    assert saved["results"][0]["summary"]["R1"]["mean"] == pytest.approx(100 * values[:, 0].mean())
    assert (tmp_path / "cmp" / "comparison.md").read_text().startswith("### Protocol")
    assert (tmp_path / "cmp" / "comparison_cmc.png").stat().st_size > 1000
    other = write_result(tmp_path / "indoor", values, protocol="sysu.indoor.single.random")
    assert main(["compare", str(a), str(other)]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "different protocol" in err
