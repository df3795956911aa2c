"""Readers of the official layouts on tiny generated trees: records, labels, counts and every bad-input error."""

from __future__ import annotations

import json
import logging
import os
import random
import warnings
from pathlib import Path

import pytest

from layout_builders import (
    build_llcm,
    build_regdb,
    build_rgbnt201,
    build_rgbnt201_pedes,
    build_rgbt_pedes,
    build_sysu,
    default_sysu_folders,
    text_entries,
    write_image,
)
from vireid.config import DataConfig
from vireid.data.catalog import (
    available_datasets,
    dataset_from_config,
    get_dataset,
    register_dataset,
    unregister_dataset,
)
from vireid.data.readers import SYNTHETIC_MARKER, DataWarning, select_holdout_ids
from vireid.data.records import Modality
from vireid.errors import ConfigError, DataError

TRAIN, VAL, TEST = (1, 2, 3, 4), (5, 6), (7, 8, 9, 10, 11)


@pytest.fixture
def no_data_warnings():
    with warnings.catch_warnings():
        warnings.simplefilter("error", DataWarning)
        yield


def sysu_tree(tmp_path: Path, name: str = "my_cam3_study/SYSU-MM01", **kwargs):
    """A SYSU tree under a root whose path contains 'cam' (G2), marked synthetic unless told otherwise."""
    folders = kwargs.pop("folders", None) or default_sysu_folders(TRAIN, VAL, TEST)
    synthetic = kwargs.pop("synthetic", True)
    root = build_sysu(tmp_path / name, folders, TRAIN, VAL, TEST, **kwargs)
    if synthetic:
        (root / SYNTHETIC_MARKER).write_text("{}")
    return root, folders


# ------------------------------------------------------------------------------------------------ SYSU-MM01


def test_sysu_training_records_follow_the_folders(tmp_path, no_data_warnings):
    root, folders = sysu_tree(tmp_path)
    ds = get_dataset("sysu", root)
    split = ds.train_split(holdout="none")
    pids = sorted(TRAIN + VAL)
    expected = [
        (f"cam{cam}/{pid:04d}/{k:04d}.jpg", pid, cam)
        for pid in pids
        for cam in range(1, 7)
        for k in range(1, folders.get((cam, pid), 0) + 1)
    ]
    got = [(Path(r.path).relative_to(root).as_posix(), r.pid, r.camid) for r in split.records]
    assert got == expected
    assert all(os.path.isabs(r.path) and os.path.isfile(r.path) for r in split.records)
    assert all(r.modality is (Modality.INFRARED if r.camid in (3, 6) else Modality.VISIBLE) for r in split.records)
    assert {r.label for r in split.records} == set(range(len(pids)))
    assert all(r.label == pids.index(r.pid) for r in split.records)
    assert split.num_classes == len(pids) and split.val_trials == [] and split.holdout == "none"


def test_sysu_holdout_uses_the_official_val_ids(tmp_path, no_data_warnings):
    root, folders = sysu_tree(tmp_path)
    split = get_dataset("sysu", root).train_split(holdout="val")
    assert sorted({r.pid for r in split.records}) == list(TRAIN)
    assert split.num_classes == len(TRAIN) and split.val_pids == VAL
    (trial,) = split.val_trials
    assert trial.rule == "sysu" and trial.meta["split"] == "val"
    query = [(r.pid, r.camid) for r in trial.query]
    assert query == [(p, c) for p in VAL for c in (3, 6) for _ in range(folders.get((c, p), 0))]
    rng = random.Random(0)
    expected = []
    for pid in VAL:
        for cam in (1, 2, 4, 5):
            n = folders.get((cam, pid))
            if n:
                expected.append(f"cam{cam}/{pid:04d}/{rng.choice(range(1, n + 1)):04d}.jpg")
    assert [Path(r.path).relative_to(root).as_posix() for r in trial.gallery] == expected


def test_sysu_labels_are_deterministic_and_sorted(tmp_path, no_data_warnings):
    root, _ = sysu_tree(tmp_path)
    a = get_dataset("sysu", root).train_split(holdout="none").records
    b = get_dataset("sysu", str(root) + "/").train_split(holdout="none").records
    assert a == b
    label_of = {}
    for r in a:
        label_of.setdefault(r.pid, r.label)
    assert list(label_of) == sorted(label_of) and list(label_of.values()) == list(range(len(label_of)))


def test_sysu_crlf_and_trailing_comma_id_files(tmp_path, no_data_warnings):
    root, _ = sysu_tree(tmp_path, id_file_suffix=",  \r\n")
    ds = get_dataset("sysu", root)
    assert ds.ids("test") == list(TEST) and ds.ids("trainval") == sorted(TRAIN + VAL)


def test_sysu_count_mismatch_warns_names_numbers_and_strict_raises(tmp_path):
    root, _ = sysu_tree(tmp_path, synthetic=False)
    with pytest.warns(
        DataWarning, match=r"found \d+ visible images \(cam1, cam2, cam4, cam5\), expected 30,071 \(official README\)"
    ):
        get_dataset("sysu", root).train_split(holdout="none")
    with pytest.raises(DataError, match=r"expected 491") as err:
        get_dataset("sysu", root, strict_counts=True).train_split(holdout="none")
    assert "strict_counts" in str(err.value)


def test_sysu_non_numeric_identity_folder_is_named(tmp_path):
    root, _ = sysu_tree(tmp_path)
    (root / "cam4" / "backup").mkdir()
    with pytest.raises(DataError, match=r"folder \S+/cam4/backup has a name that is not a number.*identity folders"):
        get_dataset("sysu", root).train_split()


def test_sysu_ignores_hidden_files_and_reports_other_non_images(tmp_path):
    root, folders = sysu_tree(tmp_path)
    (root / "cam1" / "0001" / ".DS_Store").write_text("")
    (root / "cam1" / "0001" / "notes.txt").write_text("")
    with pytest.warns(DataWarning, match=r"1 entries that are not images were ignored.*cam1/0001/notes\.txt"):
        records = get_dataset("sysu", root).folder(1, 1)
    assert [Path(r.path).name for r in records] == [f"{k:04d}.jpg" for k in range(1, folders[(1, 1)] + 1)]


def test_sysu_missing_split_file_and_root(tmp_path):
    root, _ = sysu_tree(tmp_path)
    (root / "exp" / "val_id.txt").unlink()
    with pytest.raises(DataError, match=r"exp/val_id\.txt is missing"):
        get_dataset("sysu", root).train_split()
    ds = get_dataset("sysu", tmp_path / "nowhere")  # lazy: no error yet
    with pytest.raises(DataError, match="does not exist"):
        ds.train_split()
    with pytest.raises(DataError, match="no root folder"):
        get_dataset("sysu", None).train_split()


def test_sysu_malformed_id_file_names_file_and_line(tmp_path):
    root, _ = sysu_tree(tmp_path)
    (root / "exp" / "test_id.txt").write_text("\n7,8,x9\n")
    with pytest.raises(DataError, match=r"test_id\.txt, line 2: 'x9'"):
        get_dataset("sysu", root).ids("test")


def test_sysu_single_modality_training_ids_are_left_out_with_a_warning(tmp_path):
    folders = default_sysu_folders(TRAIN, VAL, TEST)
    for cam in (3, 6):
        folders.pop((cam, 2), None)
    root, _ = sysu_tree(tmp_path, folders=folders)
    with pytest.warns(DataWarning, match=r"1 training identities have images in one modality only.*2 \(visible only\)"):
        split = get_dataset("sysu", root).train_split(holdout="val")
    assert 2 not in {r.pid for r in split.records} and split.dropped_pids == (2,)
    assert split.num_classes == len(TRAIN) - 1


def test_sysu_empty_training_split_is_an_error(tmp_path):
    root, _ = sysu_tree(tmp_path)
    (root / "exp" / "train_id.txt").write_text("400,401\n")
    # Identities without any folder are refused by name (before the split would end up empty).
    with pytest.raises(DataError, match=r"train_id\.txt, line 1: identity 400 has no folder"):
        get_dataset("sysu", root).train_split(holdout="val")


def test_synthetic_marker_skips_count_comparison(tmp_path):
    root, _ = sysu_tree(tmp_path, synthetic=False)
    (root / SYNTHETIC_MARKER).write_text(json.dumps({"layout": "sysu"}))
    with warnings.catch_warnings():
        warnings.simplefilter("error", DataWarning)
        get_dataset("sysu", root, strict_counts=True).train_split(holdout="none")


# ------------------------------------------------------------------------------------------------ RegDB


@pytest.mark.parametrize(("line_end", "trailing"), [("\n", ""), ("\r\n", ""), ("\n", "  "), ("\r\n", " \t")])
def test_regdb_index_files_crlf_and_trailing_spaces(tmp_path, line_end, trailing, no_data_warnings):
    lists = build_regdb(tmp_path / "RegDB", trials=(2,), line_end=line_end, trailing=trailing)[2]
    (tmp_path / "RegDB" / SYNTHETIC_MARKER).write_text("{}")
    ds = get_dataset("regdb", tmp_path / "RegDB", trial=2)
    test = ds.records("test")
    expected = [(p, lab, 1) for p, lab in lists["test_visible"]] + [(p, lab, 2) for p, lab in lists["test_thermal"]]
    assert [(Path(r.path).relative_to(ds.root).as_posix(), r.pid, r.camid) for r in test] == expected
    assert [r.modality for r in test] == [Modality.VISIBLE] * 12 + [Modality.INFRARED] * 12


def test_regdb_training_split_and_holdout(tmp_path, no_data_warnings):
    build_regdb(tmp_path, num_ids=12, trials=(1,))
    (tmp_path / SYNTHETIC_MARKER).write_text("{}")
    ds = get_dataset("regdb", tmp_path, trial=1)
    full = ds.train_split(holdout="none")
    assert full.num_classes == 6 and len(full.records) == 6 * 3 * 2 and full.meta["trial"] == 1
    split = ds.train_split(holdout="val", seed=4)
    expected_val = sorted(random.Random(4).sample(list(range(6)), 2))
    assert list(split.val_pids) == expected_val
    assert {r.pid for r in split.records}.isdisjoint(expected_val) and split.num_classes == 4
    (trial,) = split.val_trials
    assert trial.rule == "regdb" and trial.index == 1
    assert {r.pid for r in trial.query} == set(expected_val) and all(
        r.modality is Modality.VISIBLE for r in trial.query
    )
    assert all(r.modality is Modality.INFRARED for r in trial.gallery) and len(trial.gallery) == 2 * 3
    assert ds.train_split(holdout="val", seed=4).val_pids == split.val_pids


def test_regdb_labels_and_folders_must_match_one_to_one(tmp_path):
    build_regdb(tmp_path, trials=(1,))
    path = tmp_path / "idx" / "train_thermal_1.txt"
    lines = path.read_text().splitlines()
    first_path = lines[0].split()[0]
    lines[4] = f"{first_path.replace('Thermal/1/', 'Thermal/3/')} 0"  # folder 3 given label 0 (folder 1's label)
    path.write_text("\n".join(lines) + "\n")
    with pytest.raises(DataError, match=r"label 0 is given to images of folder '3'.*one-to-one"):
        get_dataset("regdb", tmp_path).train_split()


def test_regdb_folder_with_two_labels(tmp_path):
    build_regdb(tmp_path, trials=(1,))
    path = tmp_path / "idx" / "test_visible_1.txt"
    lines = path.read_text().splitlines()
    lines[1] = lines[1].rsplit(" ", 1)[0] + " 3"
    path.write_text("\n".join(lines) + "\n")
    with pytest.raises(DataError, match=r"folder '2' has label 3 \(test_visible_1\.txt line 2\)"):
        get_dataset("regdb", tmp_path).records("test")


@pytest.mark.parametrize(
    ("line", "message"),
    [
        ("Visible/1/x.bmp", r"line 3: expected '<relative path> <integer label>'"),
        ("Visible/1/x.bmp one", r"line 3: label 'one' is not an integer"),
        ("Thermal/1/x.bmp 0", r"line 3: 'Thermal/1/x\.bmp' should look like 'Visible/<id>/<file>\.bmp'"),
    ],
)
def test_regdb_malformed_lines_name_file_and_line(tmp_path, line, message):
    build_regdb(tmp_path, trials=(1,))
    path = tmp_path / "idx" / "train_visible_1.txt"
    lines = path.read_text().splitlines()
    lines[2] = line
    path.write_text("\n".join(lines) + "\n")
    with pytest.raises(DataError, match=r"train_visible_1\.txt, " + message):
        get_dataset("regdb", tmp_path).train_split()


def test_regdb_missing_trial_files_missing_images_and_bad_trial(tmp_path):
    build_regdb(tmp_path, trials=(1,))
    with pytest.raises(DataError, match=r"idx/train_visible_3\.txt is missing"):
        get_dataset("regdb", tmp_path, trial=3).train_split()
    with pytest.raises(ConfigError, match="from 1 to 10"):
        get_dataset("regdb", tmp_path, trial=11)
    os.remove(next((tmp_path / "Thermal" / "2").iterdir()))
    with pytest.raises(DataError, match=r"1 images listed .* do not exist.*test_thermal_1\.txt line"):
        get_dataset("regdb", tmp_path).records("test")


def test_regdb_published_counts(tmp_path):
    build_regdb(tmp_path, trials=(1,))
    with pytest.warns(DataWarning, match=r"found 4 training identities, expected 206"):
        get_dataset("regdb", tmp_path).records("train")


# ------------------------------------------------------------------------------------------------ LLCM


def test_llcm_training_cameras_from_file_names_and_labels(tmp_path, no_data_warnings):
    root = tmp_path / "camera_roll" / "LLCM"
    info = build_llcm(root)
    (root / SYNTHETIC_MARKER).write_text("{}")
    ds = get_dataset("llcm", root)
    records = ds.train_records()
    entries = info["train"]["vis"] + info["train"]["nir"]
    assert [Path(r.path).relative_to(root).as_posix() for r in records] == [p for p, _ in entries]
    assert [r.pid for r in records] == [lab for _, lab in entries]
    assert [r.camid for r in records] == [int(Path(p).name.split("_c")[1][:2]) for p, _ in entries]
    split = ds.train_split(holdout="none")
    assert split.num_classes == 6 and len(split.records) == len(entries)


def test_llcm_test_folders_skip_nir_cam3_and_parse_multi_digit_cameras(tmp_path):
    root = tmp_path / "cam" / "LLCM"
    build_llcm(root)
    (root / SYNTHETIC_MARKER).write_text("{}")
    write_image(root / "test_vis" / "cam12" / "0020" / "0020_c12_s1_f1_vis.jpg")
    write_image(root / "test_nir" / "cam3" / "0020" / "0020_c03_s1_f1_nir.jpg")
    ds = get_dataset("llcm", root)
    with pytest.warns(DataWarning, match=r"test_nir/cam3, test_vis/cam12 hold images, but the protocols use only"):
        nir = ds.test_images("nir")
    assert 3 not in {r.camid for r in nir} and {r.camid for r in nir} <= {1, 2, 4, 5, 6, 7, 8, 9}
    assert 12 not in {r.camid for r in ds.test_images("vis")}
    (folder,) = ds.camera_folders("vis", [20], [12])
    assert folder.camid == 12 and folder.records[0].camid == 12 and folder.records[0].pid == 20


def test_llcm_label_and_file_name_identity_must_agree(tmp_path):
    build_llcm(tmp_path)
    path = tmp_path / "idx" / "train_nir.txt"
    lines = path.read_text().splitlines()
    rel, _ = lines[0].split()
    lines[0] = f"{rel} 3"
    path.write_text("\n".join(lines) + "\n")
    with pytest.raises(DataError, match=r"train_nir\.txt line 1 .* one-to-one"):
        get_dataset("llcm", tmp_path).train_records()


def test_llcm_validation_trial_uses_file_name_cameras(tmp_path, no_data_warnings):
    build_llcm(tmp_path)
    (tmp_path / SYNTHETIC_MARKER).write_text("{}")
    split = get_dataset("llcm", tmp_path).train_split(holdout="val", val_ids=2, seed=1)
    (trial,) = split.val_trials
    assert trial.rule == "llcm" and len(split.val_pids) == 2
    assert {r.pid for r in trial.query} == set(split.val_pids) == {r.pid for r in trial.gallery}
    assert all(r.modality is Modality.INFRARED for r in trial.query)
    assert len(trial.gallery) == len({(r.pid, r.camid) for r in trial.gallery})  # one per (id, camera)
    assert {r.camid for r in trial.gallery} <= {1, 2, 5}


def test_llcm_missing_test_id_file(tmp_path):
    build_llcm(tmp_path)
    (tmp_path / "idx" / "test_id.txt").unlink()
    with pytest.raises(DataError, match=r"idx/test_id\.txt is missing"):
        get_dataset("llcm", tmp_path).test_ids()


# ------------------------------------------------------------------------------------------------ RGBNT201


@pytest.mark.parametrize("nested", [True, False])
def test_rgbnt201_triplets(tmp_path, nested, no_data_warnings):
    base = build_rgbnt201(tmp_path, nested=nested)
    (tmp_path / SYNTHETIC_MARKER).write_text("{}")
    ds = get_dataset("rgbnt201", tmp_path)
    test = ds.records("test")
    names = sorted(p.name for p in (base / "test" / "RGB").iterdir())
    assert [Path(r.path).name for r in test] == names
    assert all(Path(r.pair_path).parent.name == "TI" and Path(r.pair_path).name == Path(r.path).name for r in test)
    assert [(r.pid, r.camid) for r in test] == [(int(n[:6]), int(n.split("_")[1][3:])) for n in names]
    assert os.path.isfile(ds.ni_path(test[0])) and ds.ni_complete
    split = ds.train_split(holdout="val", seed=0)
    assert split.num_classes == 8 and len(split.val_pids) == 2 and split.val_trials[0].rule == "market"


def test_rgbnt201_bad_names_and_missing_thermal(tmp_path):
    base = build_rgbnt201(tmp_path)
    write_image(base / "test" / "RGB" / "000201_c1_extra.jpg")
    with pytest.raises(DataError, match=r"'000201_c1_extra\.jpg' does not follow '<pid>_cam<k>_\.\.\.'"):
        get_dataset("rgbnt201", tmp_path).records("test")
    (base / "test" / "RGB" / "000201_c1_extra.jpg").unlink()
    next((base / "train_171" / "TI").iterdir()).unlink()
    with pytest.raises(DataError, match=r"1 images of .* have no thermal partner"):
        get_dataset("rgbnt201", tmp_path).records("train")


# ------------------------------------------------------------------------------------------------ text datasets


def test_rgbt_pedes_records_captions_and_labels(tmp_path, no_data_warnings):
    entries = text_entries()
    build_rgbt_pedes(tmp_path, entries)
    (tmp_path / SYNTHETIC_MARKER).write_text("{}")
    ds = get_dataset("rgbt-pedes", tmp_path)
    test = ds.records("test")
    test_entries = [e for e in entries if e["split"] == "test"]
    assert [r.pid for r in test] == [e["id"] for e in test_entries]
    assert all(Path(r.pair_path).parent.name == "T" and r.captions for r in test)
    split = ds.train_split(holdout="val")
    assert split.meta["val_source"] == "json" and split.val_pids == (7, 8)
    train_entries = [e for e in entries if e["split"] == "train"]
    assert split.num_classes == 6 and len(split.records) == len(train_entries)
    assert len(split.captions) == sum(bool(c) for e in train_entries for c in e["captions"])
    for cap in split.captions:
        pair = split.records[cap.pair_index]
        assert cap.pid == pair.pid and cap.label == pair.label and cap.text in pair.captions
        assert cap.no_color_text == cap.text.replace("red ", "")
    assert [r.label for r in split.records] == [
        sorted({e["id"] for e in train_entries}).index(e["id"]) for e in train_entries
    ]


def test_synthetic_marker_inside_the_dataset_folder(tmp_path, no_data_warnings):
    base = build_rgbt_pedes(tmp_path)
    (base / SYNTHETIC_MARKER).write_text("{}")
    assert get_dataset("rgbt_pedes", tmp_path, strict_counts=True).records("test")


def test_rgbt_pedes_thermal_dir_and_subset_annotations(tmp_path, no_data_warnings):
    build_rgbt_pedes(tmp_path, thermal_dir="TGray", annotations="challenge_json/low_light.json")
    (tmp_path / SYNTHETIC_MARKER).write_text("{}")
    ds = get_dataset("rgbt_pedes", tmp_path, annotations="challenge_json/low_light.json")
    assert ds.thermal_dir == "TGray" and Path(ds.records("test")[0].pair_path).parent.name == "TGray"
    with pytest.raises(DataError, match="no thermal folder T in"):
        get_dataset("rgbt_pedes", tmp_path, thermal_dir="T", annotations="challenge_json/low_light.json").records(
            "test"
        )
    with pytest.raises(ConfigError, match="auto, T or TGray"):
        get_dataset("rgbt_pedes", tmp_path, thermal_dir="thermal")


def test_rgbt_pedes_basename_collisions_are_reported(tmp_path):
    entries = text_entries()
    entries[1]["file_path"] = "other/" + entries[0]["file_path"].rsplit("/", 1)[-1]
    build_rgbt_pedes(tmp_path, entries)
    (tmp_path / SYNTHETIC_MARKER).write_text("{}")
    with pytest.warns(DataWarning, match="1 basenames are shared by different file_path values"):
        get_dataset("rgbt_pedes", tmp_path).records("train")


@pytest.mark.parametrize(
    ("mutate", "message"),
    [
        (lambda e: e[3].pop("file_path"), r"entry 3: key 'file_path' is missing"),
        (lambda e: e[2].update(id="seven"), r"entry 2: 'id' must be an integer"),
        (lambda e: e[0].update(captions=[1, 2]), r"entry 0: 'captions' must be a list of strings"),
    ],
)
def test_rgbt_pedes_malformed_annotations(tmp_path, mutate, message):
    base = build_rgbt_pedes(tmp_path)
    entries = json.loads((base / "caption_2_no_color.json").read_text())
    mutate(entries)
    (base / "caption_2_no_color.json").write_text(json.dumps(entries))
    with pytest.raises(DataError, match=message):
        get_dataset("rgbt_pedes", tmp_path).records("test")


def test_rgbt_pedes_missing_image_and_invalid_json(tmp_path):
    base = build_rgbt_pedes(tmp_path)
    (base / "T" / "0009_0.jpg").unlink()
    with pytest.raises(DataError, match=r"1 images named by .* do not exist.*T/0009_0\.jpg"):
        get_dataset("rgbt_pedes", tmp_path).records("test")
    (base / "caption_2_no_color.json").write_text('[{"split": "train",}]')
    with pytest.raises(DataError, match=r"line 1 column \d+: invalid JSON"):
        get_dataset("rgbt_pedes", tmp_path).records("test")


@pytest.mark.parametrize("nested", [False, True])
def test_rgbnt201_pedes_layout_assumption(tmp_path, nested, caplog, no_data_warnings):
    entries = [e for e in text_entries() if e["split"] != "val"]
    build_rgbnt201_pedes(tmp_path, entries, nested=nested)
    (tmp_path / SYNTHETIC_MARKER).write_text("{}")
    ds = get_dataset("rgbnt201_pedes", tmp_path, use_nir=True)
    with caplog.at_level(logging.WARNING, logger="vireid.data"):
        test = ds.records("test")
    assert "RGBNT201-PEDES layout is an assumption" in caplog.text
    sub = ("test/",) if nested else ("",)
    assert Path(test[0].path).relative_to(tmp_path).as_posix() == f"{sub[0]}RGB/0009_0.jpg"
    assert Path(test[0].pair_path).relative_to(tmp_path).as_posix() == f"{sub[0]}TI/0009_0.jpg"
    split = ds.train_split(holdout="val", seed=0)
    assert split.meta["val_source"] == "held_out_ids" and len(split.val_pids) == 2
    assert {r.pid for r in split.records}.isdisjoint(split.val_pids)


def test_rgbnt201_pedes_use_nir_needs_nir_images(tmp_path):
    build_rgbnt201_pedes(tmp_path)
    (tmp_path / SYNTHETIC_MARKER).write_text("{}")
    (tmp_path / "NI" / "0009_0.jpg").unlink()
    get_dataset("rgbnt201_pedes", tmp_path).records("test")  # NI not needed
    with pytest.raises(DataError, match="use_nir is set but 1 NI images are missing"):
        get_dataset("rgbnt201_pedes", tmp_path, use_nir=True).records("test")


# ------------------------------------------------------------------------------------------------ catalog


def test_catalog_names_options_and_registration(tmp_path):
    assert {"sysu", "regdb", "llcm", "rgbnt201", "rgbt_pedes", "rgbnt201_pedes"} <= set(available_datasets())
    with pytest.raises(ConfigError, match="Did you mean 'regdb'"):
        get_dataset("regbd", tmp_path)
    with pytest.raises(ConfigError, match="has no option 'trial'; its options are: strict_counts"):
        get_dataset("sysu", tmp_path, trial=2)

    @register_dataset("tiny_custom")
    def tiny(root, *, flavour="plain"):
        return ("custom", root, flavour)

    try:
        assert get_dataset("Tiny-Custom", "/r", flavour="x") == ("custom", "/r", "x")
        with pytest.raises(ConfigError, match="already registered"):
            register_dataset("tiny_custom", tiny)
    finally:
        unregister_dataset("tiny_custom")


def test_dataset_from_config_passes_trial_only_to_regdb(tmp_path):
    regdb = dataset_from_config(DataConfig(dataset="regdb", root=str(tmp_path), trial=4, strict_counts=True))
    assert regdb.trial == 4 and regdb.strict_counts
    sysu = dataset_from_config(DataConfig(dataset="sysu", root=str(tmp_path), trial=4))
    assert type(sysu.reader).__name__ == "SysuMM01"  # the reader, bound to its protocols by the catalog


def test_holdout_selection_is_deterministic_and_validated():
    pids = list(range(10, 40))
    assert select_holdout_ids(pids, 0, 3, "X") == sorted(random.Random(3).sample(pids, 3))
    assert len(select_holdout_ids(list(range(5)), 0, 0, "X")) == 2
    with pytest.raises(ConfigError, match="cannot hold out 5 of 5"):
        select_holdout_ids(list(range(5)), 5, 0, "X")
