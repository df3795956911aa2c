"""Protocols against independent transcriptions of the reference conventions, and the ``vireid protocol`` CLI."""

from __future__ import annotations

import io
import os
import random
import re
import warnings
from contextlib import redirect_stderr, redirect_stdout
from pathlib import Path

import numpy as np
import pytest

from layout_builders import (
    build_llcm,
    build_regdb,
    build_rgbnt201,
    build_rgbt_pedes,
    build_sysu,
    default_sysu_folders,
    text_entries,
    write_image,
    write_rand_perm,
)
from vireid.cli import main
from vireid.data.catalog import get_dataset
from vireid.data.readers import SYNTHETIC_MARKER, DataWarning
from vireid.data.records import CaptionRecord, Modality
from vireid.errors import DataError, ProtocolError

TRAIN, VAL, TEST = (1, 2, 3, 4), (5, 6), (7, 8, 9, 10, 11, 12)


@pytest.fixture(scope="module")
def sysu_root(tmp_path_factory):
    root = tmp_path_factory.mktemp("cam_root") / "SYSU-MM01"
    folders = default_sysu_folders(TRAIN, VAL, TEST)
    build_sysu(root, folders, TRAIN, VAL, TEST)
    (root / SYNTHETIC_MARKER).write_text("{}")
    return root


# --------------------------------------------------------------------- reference conventions (transcribed)
# Written from the pseudo-code of the data spec 3.1 / 3.3 in the style of the AGW / MCE / DEEN
# data_manager.py functions: module-level random.seed + random.choice / random.sample, ids formatted
# "%04d" and sorted as strings, folders listed with os.listdir and full paths sorted.


def _read_ids(path):
    with open(path) as f:
        ids = f.read().splitlines()
    return [f"{int(y):04d}" for y in ids[0].split(",")]


def reference_sysu_query(data_path):
    ids = _read_ids(os.path.join(data_path, "exp/test_id.txt"))
    files = []
    for id in sorted(ids):
        for cam in ["cam3", "cam6"]:
            img_dir = os.path.join(data_path, cam, id)
            if os.path.isdir(img_dir):
                files.extend(sorted([img_dir + "/" + i for i in os.listdir(img_dir)]))
    return files


def reference_sysu_gallery(data_path, mode, trial, shot):
    state = random.getstate()
    try:
        random.seed(trial)
        cams = ["cam1", "cam2", "cam4", "cam5"] if mode == "all" else ["cam1", "cam2"]
        ids = _read_ids(os.path.join(data_path, "exp/test_id.txt"))
        files = []
        for id in sorted(ids):
            for cam in cams:
                img_dir = os.path.join(data_path, cam, id)
                if os.path.isdir(img_dir):
                    new_files = sorted([img_dir + "/" + i for i in os.listdir(img_dir)])
                    if shot == 1:
                        files.append(random.choice(new_files))
                    else:
                        files.extend(random.sample(new_files, 10))
        return files
    finally:
        random.setstate(state)


LLCM_VIS = [f"test_vis/cam{c}" for c in range(1, 10)]
LLCM_NIR = [f"test_nir/cam{c}" for c in (1, 2, 4, 5, 6, 7, 8, 9)]


def reference_llcm_all(data_path, cameras):
    ids = _read_ids(os.path.join(data_path, "idx/test_id.txt"))
    files = []
    for id in sorted(ids):
        for cam in cameras:
            img_dir = os.path.join(data_path, cam, id)
            if os.path.isdir(img_dir):
                files.extend(sorted([img_dir + "/" + i for i in os.listdir(img_dir)]))
    return files


def reference_llcm_sampled(data_path, cameras, trial):
    state = random.getstate()
    try:
        random.seed(trial)
        ids = _read_ids(os.path.join(data_path, "idx/test_id.txt"))
        files = []
        for id in sorted(ids):
            for cam in cameras:
                img_dir = os.path.join(data_path, cam, id)
                if os.path.isdir(img_dir):
                    files.append(random.choice(sorted([img_dir + "/" + i for i in os.listdir(img_dir)])))
        return files
    finally:
        random.setstate(state)


def paths(records):
    return [os.path.normpath(r.path) for r in records]


def norm(files):
    return [os.path.normpath(f) for f in files]


# ------------------------------------------------------------------------------------------------ SYSU


@pytest.mark.parametrize("mode", ["all", "indoor"])
@pytest.mark.parametrize("shots", ["single", "multi"])
def test_sysu_random_gallery_matches_the_reference_for_all_trials(sysu_root, mode, shots):
    proto = get_dataset("sysu", sysu_root).protocol(f"sysu.{mode}.{shots}.random")
    assert proto.trial_indices == tuple(range(10)) and proto.rule == "sysu" and proto.max_rank == 20
    galleries = []
    for trial in proto.trials():
        expected = norm(reference_sysu_gallery(str(sysu_root), mode, trial.index, 1 if shots == "single" else 10))
        assert paths(trial.gallery) == expected
        assert trial.meta == {**proto.meta, "trial": trial.index}
        assert trial.meta["mode"] == mode and trial.meta["sampler"] == "random"
        assert trial.meta["shots"] == (1 if shots == "single" else 10)
        galleries.append(paths(trial.gallery))
    assert len({tuple(g) for g in galleries}) > 1  # the trials really differ


def test_sysu_query_order_and_sharing(sysu_root):
    ds = get_dataset("sysu", sysu_root)
    a = ds.protocol("sysu.all.single.random")
    b = ds.protocol("sysu.indoor.multi.random")
    t0, t5 = a.trial(0), a.trial(5)
    assert paths(t0.query) == norm(reference_sysu_query(str(sysu_root)))
    assert t0.query is t5.query  # extracted once for all trials
    assert paths(b.trial(0).query) == paths(t0.query)
    assert [(r.pid, r.camid) for r in t0.query] == sorted((r.pid, r.camid) for r in t0.query)
    assert all(r.modality is Modality.INFRARED for r in t0.query)
    assert {r.camid for r in a.trial(0).gallery} <= {1, 2, 4, 5} and {r.camid for r in b.trial(0).gallery} <= {1, 2}


def test_sysu_multi_shot_needs_ten_images(tmp_path):
    folders = default_sysu_folders(TRAIN, VAL, TEST, multi_shot=False)
    build_sysu(tmp_path, folders, TRAIN, VAL, TEST)
    (tmp_path / SYNTHETIC_MARKER).write_text("{}")
    proto = get_dataset("sysu", tmp_path).protocol("sysu.all.multi.random")
    with pytest.raises(ProtocolError, match=r"10-shot sampling needs 10 images .*/cam1/0007 holds \d"):
        proto.trial(0)
    assert isinstance(ProtocolError("x"), ValueError)


def test_sysu_official_sampler_replays_the_permutation_file(tmp_path):
    test_ids = (2, 4)
    folders = {(c, p): 3 for p in (1, 2, 3, 4) for c in range(1, 7)}
    folders.pop((5, 4))
    build_sysu(tmp_path, folders, (1,), (3,), test_ids)
    (tmp_path / SYNTHETIC_MARKER).write_text("{}")
    # Rename cam2/0004/0002.jpg so that the 2nd sorted file is 0003.jpg: index 2 -> '0003.jpg' with a warning.
    os.rename(tmp_path / "cam2/0004/0002.jpg", tmp_path / "cam2/0004/0009.jpg")
    rng = np.random.default_rng(0)
    perms = {}
    for (cam, pid), n in folders.items():
        perms[(cam, pid)] = np.stack([rng.permutation(n) + 1 for _ in range(10)])
    perms[(2, 4)][3] = [2, 1, 3]
    write_rand_perm(tmp_path, perms, num_pids=4)
    ds = get_dataset("sysu", tmp_path)

    def expected_gallery(t, cams, shots):
        out = []
        for pid in test_ids:
            for cam in cams:
                if (cam, pid) in folders:
                    files = sorted(os.listdir(tmp_path / f"cam{cam}/{pid:04d}"))
                    out.extend(f"cam{cam}/{pid:04d}/{files[k - 1]}" for k in perms[(cam, pid)][t, :shots].tolist())
        return out

    single = ds.protocol("sysu.all.single.official")
    for t in range(10):
        renamed_first = perms[(2, 4)][t, 0] in (2, 3)  # 2 -> 0003.jpg, 3 -> 0009.jpg
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            trial = single.trial(t)
        messages = [str(w.message) for w in caught if issubclass(w.category, DataWarning)]
        assert bool(messages) == renamed_first
        if perms[(2, 4)][t, 0] == 2:
            assert "not named after their index" in messages[0] and "2 -> 0003.jpg" in messages[0]
        assert [Path(r.path).relative_to(tmp_path).as_posix() for r in trial.gallery] == expected_gallery(
            t, (1, 2, 4, 5), 1
        )
        assert trial.meta["sampler"] == "official"
    assert 0 < sum(perms[(2, 4)][t, 0] in (2, 3) for t in range(10)) < 10  # both branches were exercised
    with pytest.warns(DataWarning, match=r"2 -> 0003\.jpg', '3 -> 0009\.jpg"):
        multi = ds.protocol("sysu.indoor.multi.official").trial(3)
    got = [Path(r.path).relative_to(tmp_path).as_posix() for r in multi.gallery]
    assert got == expected_gallery(3, (1, 2), 10)
    assert len(got) == 4 * 3  # fewer than 10 images: all of them, as the official code does


def test_sysu_official_sampler_errors(tmp_path):
    folders = {(c, p): 2 for p in (1, 2) for c in range(1, 7)}
    build_sysu(tmp_path, folders, (1,), (1,), (2,))
    (tmp_path / SYNTHETIC_MARKER).write_text("{}")
    ds = get_dataset("sysu", tmp_path)
    with pytest.raises(DataError, match=r"rand_perm_cam\.mat are missing.*random sampler"):
        ds.protocol("sysu.all.single.official").trial(0)
    perms = {k: np.tile([1, 2], (10, 1)) for k in folders}
    perms[(4, 3)] = np.tile([1], (10, 1))  # cam4/0003 does not exist
    write_rand_perm(tmp_path, perms, num_pids=3)
    (tmp_path / "exp" / "test_id.txt").write_text("2,3\n")
    write_image(tmp_path / "cam1" / "0003" / "0001.jpg")  # identity 3 exists, but not in cam4
    ds = get_dataset("sysu", tmp_path)
    with pytest.raises(DataError, match=r"selects images of cam4/0003, which does not exist"):
        ds.protocol("sysu.all.single.official").trial(0)


def test_protocol_ids_and_trial_selection(sysu_root):
    ds = get_dataset("sysu", sysu_root)
    assert ds.standard_protocols() == ["sysu.all.single.random", "sysu.indoor.single.random"]
    assert len(ds.protocol_ids()) == 8
    with pytest.raises(ProtocolError, match=r"Did you mean .sysu\.all\.single\.random."):
        ds.protocol("sysu.all.singel.random")
    proto = ds.protocol("sysu.all.single.random", trials=3)
    assert [t.index for t in proto.trials()] == [0, 1, 2] and proto.num_trials == 3
    assert [t.index for t in ds.protocol("sysu.all.single.random", trials=[4, 9]).trials()] == [4, 9]
    with pytest.raises(ProtocolError, match="has no trial"):
        ds.protocol("sysu.all.single.random", trials=[10])
    with pytest.raises(ProtocolError, match="cannot run 11"):
        ds.protocol("sysu.all.single.random", trials=11)


def test_sysu_published_query_count_is_checked(tmp_path):
    build_sysu(tmp_path, default_sysu_folders(TRAIN, VAL, TEST), TRAIN, VAL, TEST)
    ds = get_dataset("sysu", tmp_path)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DataWarning)
        ds.ids("test")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        ds.protocol("sysu.all.single.random").trial(0)
    messages = " | ".join(str(w.message) for w in caught)
    assert re.search(r"found \d+ query images .*, expected 3,803 \(AGW issues #4, #8\)", messages)
    assert re.search(r"found 22 all-search single-shot gallery images, expected 301", messages)


# ------------------------------------------------------------------------------------------------ RegDB


@pytest.fixture(scope="module")
def regdb_root(tmp_path_factory):
    root = tmp_path_factory.mktemp("regdb")
    lists = build_regdb(root, num_ids=6, trials=(1, 2), line_end="\r\n", trailing=" ")
    (root / SYNTHETIC_MARKER).write_text("{}")
    return root, lists


@pytest.mark.parametrize("trial", [1, 2])
def test_regdb_directions_use_the_readers_trial(regdb_root, trial):
    root, lists = regdb_root
    ds = get_dataset("regdb", root, trial=trial)
    visible = [str(root / p) for p, _ in lists[trial]["test_visible"]]
    thermal = [str(root / p) for p, _ in lists[trial]["test_thermal"]]
    v2t = ds.protocol("regdb.v2t")
    assert v2t.trial_indices == (trial,) and v2t.rule == "regdb"
    (t,) = list(v2t.trials())
    assert (t.index, paths(t.query), paths(t.gallery)) == (trial, norm(visible), norm(thermal))
    assert [r.pid for r in t.query] == [lab for _, lab in lists[trial]["test_visible"]]
    (r,) = list(ds.protocol("regdb.t2v").trials())
    assert (paths(r.query), paths(r.gallery)) == (norm(thermal), norm(visible))
    assert t.meta["regdb_trial"] == trial and t.meta["direction"] == "v2t"
    other = 3 - trial
    with pytest.raises(ProtocolError, match=rf"has no trial {other}"):
        v2t.trial(other)
    with pytest.raises(ProtocolError, match="has 1 trial"):
        ds.protocol("regdb.v2t", trials=10)


# ------------------------------------------------------------------------------------------------ LLCM


@pytest.fixture(scope="module")
def llcm_root(tmp_path_factory):
    root = tmp_path_factory.mktemp("llcm_cam_root")
    build_llcm(root, test_ids=(20, 21, 22, 23, 35, 104))
    (root / SYNTHETIC_MARKER).write_text("{}")
    return root


def test_llcm_ir2vis_and_vis2ir_match_the_reference(llcm_root):
    ds = get_dataset("llcm", llcm_root)
    assert ds.standard_protocols() == ["llcm.ir2vis", "llcm.vis2ir"]
    ir2vis, vis2ir = ds.protocol("llcm.ir2vis"), ds.protocol("llcm.vis2ir")
    for t in range(10):
        a, b = ir2vis.trial(t), vis2ir.trial(t)
        assert paths(a.query) == norm(reference_llcm_all(str(llcm_root), LLCM_NIR))
        assert paths(a.gallery) == norm(reference_llcm_sampled(str(llcm_root), LLCM_VIS, t))
        assert paths(b.query) == norm(reference_llcm_all(str(llcm_root), LLCM_VIS))
        assert paths(b.gallery) == norm(reference_llcm_sampled(str(llcm_root), LLCM_NIR, t))
        assert a.rule == b.rule == "llcm"
    assert all(r.modality is Modality.INFRARED and r.camid != 3 for r in a.query)
    assert [(r.pid, r.camid) for r in a.query] == [
        (int(Path(f).parent.name), int(Path(f).parent.parent.name[3:]))
        for f in reference_llcm_all(str(llcm_root), LLCM_NIR)
    ]


def test_llcm_deen_release_samples_the_nir_queries(llcm_root):
    """DEEN test.py, test_mode=[2, 1]: VIS images are extracted as 'query', NIR sampled as 'gallery', then
    eval_llcm(-distmat(gallery x query), gallery labels, query labels, ...): sampled NIR rank the full VIS set."""
    proto = get_dataset("llcm", llcm_root).protocol("llcm.vis2ir.deen_release")
    assert proto.meta["sampled"] == "query"
    for t in (0, 4, 9):
        trial = proto.trial(t)
        assert paths(trial.query) == norm(reference_llcm_sampled(str(llcm_root), LLCM_NIR, t))
        assert paths(trial.gallery) == norm(reference_llcm_all(str(llcm_root), LLCM_VIS))
        assert all(r.modality is Modality.INFRARED for r in trial.query)


# ------------------------------------------------------------------------------------------------ text


def test_text_protocol_on_a_hand_made_json(tmp_path):
    entries = [
        {
            "split": "test",
            "id": 5,
            "file_path": "a/p1.jpg",
            "captions": ["a man", "", "tall man"],
            "no_color_caption": ["x", "", "y"],
        },
        {"split": "test", "id": 9, "file_path": "a/p2.jpg", "captions": ["a woman"], "no_color_caption": ["z"]},
        {"split": "test", "id": 5, "file_path": "a/p3.jpg", "captions": [""], "no_color_caption": [""]},
        {"split": "train", "id": 1, "file_path": "a/p4.jpg", "captions": ["kid"], "no_color_caption": ["kid"]},
    ]
    build_rgbt_pedes(tmp_path, entries)
    (tmp_path / SYNTHETIC_MARKER).write_text("{}")
    proto = get_dataset("rgbt_pedes", tmp_path).protocol("text.t2rgbt")
    assert (proto.rule, proto.max_rank, proto.trial_indices) == ("text", 10, (0,))
    (trial,) = list(proto.trials())
    assert [Path(r.path).name for r in trial.gallery] == ["p1.jpg", "p2.jpg", "p3.jpg"]
    assert [r.pid for r in trial.gallery] == [5, 9, 5]
    assert trial.query == (
        CaptionRecord("a man", 5, 0, -1, "x"),
        CaptionRecord("tall man", 5, 0, -1, "y"),
        CaptionRecord("a woman", 9, 1, -1, "z"),
    )


def test_text_protocol_duplicates_and_positives(tmp_path, monkeypatch):
    entries = [e for e in text_entries() if e["split"] == "test"]
    entries.append(dict(entries[0]))
    build_rgbt_pedes(tmp_path, entries)
    (tmp_path / SYNTHETIC_MARKER).write_text("{}")
    ds = get_dataset("rgbt_pedes", tmp_path)
    with pytest.warns(DataWarning, match="1 image pairs appear more than once in the gallery; all copies are kept"):
        trial = ds.protocol("text.t2rgbt").trial(0)
    assert len(trial.gallery) == len(entries)

    import vireid.evaluation.protocols.text as text_module

    real = text_module.caption_samples
    monkeypatch.setattr(text_module, "caption_samples", lambda recs: [*real(recs), CaptionRecord("ghost", 999, 0)])
    with pytest.raises(ProtocolError, match="1 caption queries have no positive"), warnings.catch_warnings():
        warnings.simplefilter("ignore", DataWarning)
        ds.protocol("text.t2rgbt").trial(0)


def test_text_validation_uses_the_json_val_split(tmp_path):
    build_rgbt_pedes(tmp_path)
    (tmp_path / SYNTHETIC_MARKER).write_text("{}")
    (trial,) = get_dataset("rgbt_pedes", tmp_path).train_split(holdout="val").val_trials
    assert trial.rule == "text" and trial.meta["split"] == "val"
    assert {r.pid for r in trial.gallery} == {7, 8} and {q.pid for q in trial.query} == {7, 8}


# ------------------------------------------------------------------------------------------------ RGBNT201


def test_rgbnt201_mm_is_all_test_triplets_against_themselves(tmp_path):
    build_rgbnt201(tmp_path)
    (tmp_path / SYNTHETIC_MARKER).write_text("{}")
    (trial,) = list(get_dataset("rgbnt201", tmp_path).protocol("rgbnt201.mm").trials())
    assert trial.query == trial.gallery and trial.rule == "market" and len(trial.query) == 6
    assert all(r.pair_path and "/TI/" in r.pair_path.replace(os.sep, "/") for r in trial.query)
    assert trial.meta["ni_available"] is True


# ------------------------------------------------------------------------------------------------ CLI


def run_cli(args):
    out, err = io.StringIO(), io.StringIO()
    with redirect_stdout(out), redirect_stderr(err):
        code = main(args)
    return code, out.getvalue(), err.getvalue()


def test_cli_prints_the_sysu_gallery_of_a_trial(sysu_root):
    code, out, _ = run_cli(
        [
            "protocol",
            "sysu",
            "--root",
            str(sysu_root),
            "--split",
            "gallery",
            "--trial",
            "3",
            "--mode",
            "indoor",
            "--shots",
            "10",
        ]
    )
    assert code == 0
    expected = []
    for f in reference_sysu_gallery(str(sysu_root), "indoor", 3, 10):
        rel = Path(f).relative_to(sysu_root)
        expected.append(f"{rel.as_posix()}\t{int(rel.parts[1])}\t{int(rel.parts[0][3:])}")
    assert out.splitlines() == expected


def test_cli_prints_queries_of_regdb_and_text(regdb_root, tmp_path):
    root, lists = regdb_root
    code, out, _ = run_cli(["protocol", "regdb", "--root", str(root), "--trial", "2", "--direction", "t2v"])
    assert code == 0
    assert out.splitlines() == [f"{p}\t{lab}\t2" for p, lab in lists[2]["test_thermal"]]
    build_rgbt_pedes(tmp_path)
    (tmp_path / SYNTHETIC_MARKER).write_text("{}")
    code, out, _ = run_cli(["protocol", "rgbt_pedes", "--root", str(tmp_path)])
    test = [e for e in text_entries() if e["split"] == "test"]
    assert out.splitlines() == [f"{e['id']}\t{c}" for e in test for c in e["captions"] if c]
    code, out, _ = run_cli(["protocol", "rgbt_pedes", "--root", str(tmp_path), "--split", "gallery"])
    first = test[0]["file_path"].rsplit("/", 1)[-1]
    assert out.splitlines()[0] == f"RGBT-PEDES/RGB/{first}\t{test[0]['id']}\t0\tRGBT-PEDES/T/{first}"


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["regdb", "--shots", "10"], "RegDB has no shots option"),
        (["regdb", "--trial", "0"], r"trial=0 is not valid; use one of 1, 2, 3"),
        (["sysu", "--mode", "outdoor"], r"mode='outdoor' is not valid; use one of all, indoor"),
        (["sysu", "--direction", "v2t"], "SYSU-MM01 has no direction option"),
        (["llcm", "--direction", "v2t"], r"use one of ir2vis, vis2ir, vis2ir\.deen_release"),
        (["llcm", "--sampler", "official"], "LLCM has no sampler option"),
        (["rgbt_pedes", "--trial", "2"], r"trial=2 is not valid; use one of 0"),
    ],
)
def test_cli_rejects_invalid_combinations_naming_valid_values(tmp_path, args, message):
    code, out, err = run_cli(["protocol", args[0], "--root", str(tmp_path), *args[1:]])
    assert code == 2 and out == ""
    assert re.search(message, err)
    assert err.startswith("vireid protocol: error:") and "Traceback" not in err


def test_cli_missing_root_is_a_one_line_error(tmp_path):
    code, _, err = run_cli(["protocol", "llcm", "--root", str(tmp_path / "missing")])
    assert code == 2 and "LLCM root" in err and "does not exist" in err


def test_cli_lists_llcm_deen_release_queries(llcm_root):
    code, out, _ = run_cli(
        ["protocol", "llcm", "--root", str(llcm_root), "--direction", "vis2ir.deen_release", "--trial", "6"]
    )
    assert code == 0
    rels = [Path(f).relative_to(llcm_root).as_posix() for f in reference_llcm_sampled(str(llcm_root), LLCM_NIR, 6)]
    assert [line.split("\t")[0] for line in out.splitlines()] == rels
