"""The synthetic person generator and its official-layout writers (``vireid synth``)."""

from __future__ import annotations

import hashlib
import json
import re
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from vireid.cli import main
from vireid.data.synthetic import (
    MARKER_NAME,
    CameraProfile,
    SynthOptions,
    describe,
    read_marker,
    render_person,
    render_views,
    sample_identity,
    write_layout,
    write_preview,
)
from vireid.data.synthetic import layouts as layouts_module
from vireid.data.synthetic.attributes import COLOUR_WORDS
from vireid.data.synthetic.captions import colour_words_in
from vireid.data.synthetic.render import pseudo_colour_palette
from vireid.data.synthetic.seeding import stream
from vireid.errors import ConfigError, DataError

SMALL = (64, 32)
CAM = CameraProfile("cam1", 1, "indoor", 7)


def tiny(**kw) -> SynthOptions:
    kw.setdefault("size", SMALL)
    kw.setdefault("images_per_camera", (1, 2))
    return SynthOptions(**kw)


def digest(root: Path) -> dict[str, str]:
    return {
        str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(root.rglob("*"))
        if p.is_file()
    }


def channels_equal(path: Path) -> bool:
    arr = np.asarray(Image.open(path).convert("RGB")).astype(int)
    return bool((arr[..., 0] == arr[..., 1]).all() and (arr[..., 1] == arr[..., 2]).all())


# ------------------------------------------------------------------------------------------- rendering


@pytest.mark.parametrize("size", [(64, 32), (128, 64), (96, 48)])
def test_render_person_sizes_and_modalities(size):
    person = sample_identity(0, 3)
    vis = render_person(person, CAM, "visible", np.random.default_rng(1), size)
    assert vis.shape == (*size, 3) and vis.dtype == np.uint8
    assert not (vis[..., 0] == vis[..., 1]).all()
    for look in ("thermal", "nir"):
        ir = render_person(person, CAM, "infrared", np.random.default_rng(1), size, look=look)
        assert ir.shape == (*size, 3) and ir.dtype == np.uint8
        assert (ir[..., 0] == ir[..., 1]).all() and (ir[..., 1] == ir[..., 2]).all()
        assert ir.std() > 10  # a person and a scene, not a flat frame


def test_render_is_deterministic_and_seed_dependent():
    person = sample_identity(5, 11)
    a = render_person(person, CAM, "visible", stream(5, "image", 11, 1), SMALL)
    b = render_person(person, CAM, "visible", stream(5, "image", 11, 1), SMALL)
    c = render_person(person, CAM, "visible", stream(5, "image", 11, 2), SMALL)
    assert np.array_equal(a, b)
    assert not np.array_equal(a, c)


def test_aligned_views_share_geometry():
    """An aligned pair is one moment: the thermal image of render_views equals a thermal-only render."""
    person = sample_identity(0, 4)
    pair = render_views(person, CAM, ["visible", "thermal"], stream(0, "x", 1), SMALL)
    alone = render_views(person, CAM, ["thermal"], stream(0, "x", 1), SMALL)
    assert np.array_equal(pair[1], alone[0])


def test_identity_depends_only_on_seed_and_pid():
    assert sample_identity(3, 17) == sample_identity(3, 17)
    assert sample_identity(3, 17) != sample_identity(4, 17)
    people = [sample_identity(0, pid) for pid in range(1, 200)]
    assert len({(p.upper_type, p.lower_type, p.upper_pattern, p.hair_style, p.backpack, p.bag) for p in people}) > 60


def test_difficulty_increases_attribute_sharing():
    def distinct(d: float) -> int:
        return len(
            {(p.upper_colour, p.lower_colour, p.upper_type) for p in (sample_identity(0, i, d) for i in range(300))}
        )

    assert distinct(0.0) > distinct(1.0)


def test_pseudo_colour_palette_keeps_temperature_order():
    pal = pseudo_colour_palette()
    assert pal.shape == (256, 3)
    gray = np.asarray(Image.fromarray(pal[None, :, :]).convert("L"))[0].astype(int)
    assert (np.diff(gray) >= 0).all() and gray[0] < 10 and gray[-1] > 245
    assert len({tuple(c) for c in pal}) > 200


# -------------------------------------------------------------------------------------------- captions

_KEYWORDS = {
    "backpack": ("backpack", "rucksack"),
    "bag": ("bag",),
    "hat": ("cap", "beanie", "hat"),
    "glasses": ("glasses", "spectacles"),
    "logo": ("logo", "print"),
    "stripes": ("stripes", "striped"),
    "checks": ("checked", "plaid", "checkered"),
}


def test_captions_mention_only_what_the_person_has():
    texts = set()
    for pid in range(1, 80):
        person = sample_identity(1, pid)
        for k in range(3):
            cap, plain = describe(person, np.random.default_rng(pid * 10 + k), view=("front", "back", "side")[k])
            texts.add(cap)
            words = cap.lower()
            for attribute, keys in _KEYWORDS.items():
                if any(re.search(rf"\b{key}", words) for key in keys):
                    assert person.has(attribute), (attribute, cap)
            if re.search(r"\b(skirt|shorts)\b", words):
                assert person.lower_type in {"skirt", "long_skirt", "shorts"}, cap
            if "coat" in words:
                assert person.upper_type == "coat", cap
            assert colour_words_in(plain) == set(), plain
            assert cap.endswith(".") and plain.endswith(".")
            assert " a a" not in plain.lower() and " an t" not in plain.lower()
    assert len(texts) > 200  # varied phrasing, not one sentence per person


def test_captions_mention_colours_the_person_wears():
    person = sample_identity(0, 2)
    worn = {person.upper_colour, person.lower_colour, person.upper_pattern_colour, person.hair_colour,
            person.shoes_colour, person.hat_colour, person.bag_colour, person.backpack_colour}  # fmt: skip
    synonyms = {"gray": {"grey"}, "navy": {"dark", "blue"}, "maroon": {"dark", "red"}}
    for colour in list(worn):
        worn |= synonyms.get(colour, set())
    assert worn <= COLOUR_WORDS
    for k in range(20):
        cap, _ = describe(person, np.random.default_rng(k))
        assert colour_words_in(cap) <= worn, cap


# ---------------------------------------------------------------------------------------------- layouts


@pytest.fixture(scope="module")
def sets(tmp_path_factory) -> dict[str, Path]:
    base = tmp_path_factory.mktemp("synth")
    ids = {"sysu": 8, "regdb": 6, "llcm": 8, "rgbnt201": 8, "rgbt-pedes": 10, "rgbnt201-pedes": 10}
    out = {}
    for layout, n in ids.items():
        opts = tiny(num_ids=n, seed=3, images_per_camera=(10, 10) if layout == "regdb" else (1, 2))
        summary = write_layout(layout, base / layout, opts)
        assert summary.files == sum(1 for p in (base / layout).rglob("*.*") if p.suffix in (".jpg", ".bmp"))
        assert layout in summary.describe() and str(summary.files) in summary.describe()
        out[layout] = base / layout
    return out


def test_every_set_has_a_marker_and_decodable_images(sets):
    for layout, root in sets.items():
        marker = read_marker(root)
        assert marker["synthetic"] is True and marker["layout"] == layout and marker["seed"] == 3
        for p in root.rglob("*"):
            if p.suffix in (".jpg", ".bmp"):
                with Image.open(p) as img:
                    img.load()
                    assert img.size == (SMALL[1], SMALL[0])
    assert not list(sets["sysu"].parent.glob(".*partial*"))


def _ids(path: Path) -> list[int]:
    lines = path.read_text().splitlines()
    return [int(v) for v in lines[0].split(",")]


def test_sysu_tree_splits_and_rand_perm(sets):
    from scipy.io import loadmat

    root = sets["sysu"]
    train, val, test, available = (_ids(root / "exp" / f"{n}_id.txt") for n in ("train", "val", "test", "available"))
    assert sorted(train + val + test) == sorted(available) and len(available) == 8 and len(set(available)) == 8
    assert len(test) >= 2 and test == sorted(test)
    assert loadmat(root / "exp" / "test_id.mat")["id"].ravel().tolist() == test
    for pid in available:
        vis = [c for c in (1, 2, 4, 5) if (root / f"cam{c}" / f"{pid:04d}").is_dir()]
        ir = [c for c in (3, 6) if (root / f"cam{c}" / f"{pid:04d}").is_dir()]
        assert vis and ir
        for c in vis + ir:
            names = sorted(p.name for p in (root / f"cam{c}" / f"{pid:04d}").iterdir())
            assert names == [f"{k:04d}.jpg" for k in range(1, len(names) + 1)]
            if pid in test and c in vis:
                assert len(names) >= 10  # multi-shot gallery needs 10 per folder
        for c in vis:
            assert not channels_equal(next((root / f"cam{c}" / f"{pid:04d}").iterdir()))
        for c in ir:
            assert channels_equal(next((root / f"cam{c}" / f"{pid:04d}").iterdir()))

    perm = loadmat(root / "exp" / "rand_perm_cam.mat")["rand_perm_cam"]
    assert perm.shape == (6, 1)
    for c in range(1, 7):
        cell = perm[c - 1, 0]
        for pid in available:
            folder = root / f"cam{c}" / f"{pid:04d}"
            n = len(list(folder.iterdir())) if folder.is_dir() else 0
            if pid > cell.shape[0]:
                assert n == 0
                continue
            entry = cell[pid - 1, 0]
            assert entry.shape == (10, n)
            for row in entry:
                assert sorted(row.tolist()) == list(range(1, n + 1))


def test_regdb_tree_and_index_files(sets):
    root = sets["regdb"]
    ids = sorted(int(p.name) for p in (root / "Visible").iterdir())
    assert ids == list(range(1, 7))
    for pid in ids:
        vis = sorted(p.name for p in (root / "Visible" / str(pid)).iterdir())
        th = sorted(p.name for p in (root / "Thermal" / str(pid)).iterdir())
        assert len(vis) == len(th) == 10
        assert all(re.fullmatch(rf"(male|female)_(front|back)_v_\d{{5}}_{pid}\.bmp", n) for n in vis)
        assert [n.replace("_v_", "_t_") for n in vis] == th
        assert channels_equal(root / "Thermal" / str(pid) / th[0]) and not channels_equal(
            root / "Visible" / str(pid) / vis[0]
        )
    splits = []
    for trial in range(1, 11):
        test_ids = set()
        for split in ("train", "test"):
            seen = {}
            for modality, top in (("visible", "Visible"), ("thermal", "Thermal")):
                lines = (root / "idx" / f"{split}_{modality}_{trial}.txt").read_text().splitlines()
                assert len(lines) == 30
                for line in lines:
                    rel, label = line.split(" ")
                    assert rel.startswith(f"{top}/") and (root / rel).is_file()
                    folder = int(rel.split("/")[1])
                    assert seen.setdefault(int(label), folder) == folder  # labels <-> folders one-to-one
            assert sorted(seen) == list(range(3))  # class indices 0..n-1 for train and test files
            if split == "test":
                test_ids = set(seen.values())
        splits.append(frozenset(test_ids))
    assert len(set(splits)) > 1  # each trial draws its own split


def test_llcm_tree_and_index_files(sets):
    root = sets["llcm"]
    test = _ids(root / "idx" / "test_id.txt")
    assert (root / "test_nir" / "cam3").is_dir() and not any((root / "test_nir" / "cam3").iterdir())
    name_re = re.compile(r"(\d{4})_c(\d{2})_s\d{6}_f\d+_(vis|nir)\.jpg")
    train_pids = set()
    for mod in ("vis", "nir"):
        lines = (root / "idx" / f"train_{mod}.txt").read_text().splitlines()
        labels = {}
        for line in lines:
            rel, label = line.split(" ")
            parts = rel.split("/")
            assert parts[0] == mod and (root / rel).is_file()
            m = name_re.fullmatch(parts[2])
            assert m and m.group(1) == parts[1] and m.group(3) == mod
            labels[int(parts[1])] = int(label)
            train_pids.add(int(parts[1]))
        assert [labels[p] for p in sorted(labels)] == list(range(len(labels)))
    assert not train_pids & set(test)
    for pid in test:
        vis_cams = {c for c in range(1, 10) if (root / "test_vis" / f"cam{c}" / f"{pid:04d}").is_dir()}
        nir_cams = {c for c in range(1, 10) if (root / "test_nir" / f"cam{c}" / f"{pid:04d}").is_dir()}
        assert nir_cams and 3 not in nir_cams
        assert all(vis_cams - {c} for c in nir_cams)  # every NIR query has a VIS match in another camera
        for c in nir_cams:
            for f in (root / "test_nir" / f"cam{c}" / f"{pid:04d}").iterdir():
                m = name_re.fullmatch(f.name)
                assert m and int(m.group(2)) == c and m.group(3) == "nir"


def test_rgbnt201_triplets(sets):
    root = sets["rgbnt201"] / "RGBNT201"
    pids = {}
    for subset in ("train_171", "test"):
        names = sorted(p.name for p in (root / subset / "RGB").iterdir())
        assert (
            names
            == sorted(p.name for p in (root / subset / "NI").iterdir())
            == sorted(p.name for p in (root / subset / "TI").iterdir())
        )
        for n in names:
            assert re.fullmatch(r"\d{6}_cam[1-4]_\d{4}\.jpg", n)
        pids[subset] = {int(n[:6]) for n in names}
        n0 = names[0]
        assert not channels_equal(root / subset / "RGB" / n0)
        assert channels_equal(root / subset / "NI" / n0) and channels_equal(root / subset / "TI" / n0)
    assert not pids["train_171"] & pids["test"] and len(pids["test"]) >= 2


@pytest.mark.parametrize(("layout", "annotations", "thermal"), [
    ("rgbt-pedes", "RGBT-PEDES/caption_2_no_color.json", "T"),
    ("rgbnt201-pedes", "RGBNT201/caption_rgbnt201_pedes.json", "TI"),
])  # fmt: skip
def test_text_layouts(sets, layout, annotations, thermal):
    root = sets[layout]
    path = root / annotations
    records = json.loads(path.read_text(encoding="utf-8"))
    ids_by_split: dict[str, set[int]] = {}
    for rec in records:
        assert set(rec) == {"split", "id", "file_path", "captions", "no_color_caption"}
        assert rec["split"] in ("train", "val", "test") and rec["id"] >= 1
        assert len(rec["captions"]) == len(rec["no_color_caption"]) >= 1
        rgb = path.parent / rec["file_path"]
        t = rgb.parent.parent / thermal / rgb.name
        assert rgb.is_file() and t.is_file()
        ids_by_split.setdefault(rec["split"], set()).add(rec["id"])
        for cap, plain in zip(rec["captions"], rec["no_color_caption"]):
            assert cap and plain and not colour_words_in(plain)
    assert set(ids_by_split) == {"train", "val", "test"}
    assert not ids_by_split["train"] & ids_by_split["test"] and not ids_by_split["train"] & ids_by_split["val"]
    assert min(min(v) for v in ids_by_split.values()) == 1
    first_t = path.parent / records[0]["file_path"]
    first_t = first_t.parent.parent / thermal / first_t.name
    # RGBT-PEDES stores pseudo-coloured thermal images; RGBNT201 stores three equal channels.
    assert channels_equal(first_t) == (layout == "rgbnt201-pedes")


# --------------------------------------------------------------------------------------- determinism


def test_same_seed_same_bytes_other_seed_differs(tmp_path):
    a = write_layout("sysu", tmp_path / "a", tiny(num_ids=8, seed=11))
    write_layout("sysu", tmp_path / "b", tiny(num_ids=8, seed=11))
    write_layout("sysu", tmp_path / "c", tiny(num_ids=8, seed=12))
    da, db, dc = digest(tmp_path / "a"), digest(tmp_path / "b"), digest(tmp_path / "c")
    assert da == db and a.files > 50
    assert "exp/rand_perm_cam.mat" in da
    shared = [k for k in set(da) & set(dc) if k.endswith(".jpg")]
    assert shared and sum(da[k] != dc[k] for k in shared) == len(shared)


def test_rendering_order_does_not_matter(tmp_path):
    o, _ = layouts_module._resolve("regdb", tiny(num_ids=4, images_per_camera=(3, 3)))
    plan = layouts_module._plan_regdb(o)
    layouts_module._render_jobs(str(tmp_path / "fwd"), plan.jobs, o.seed, o.difficulty, o.size, o.jpeg_quality)
    layouts_module._render_jobs(str(tmp_path / "rev"), plan.jobs[::-1], o.seed, o.difficulty, o.size, o.jpeg_quality)
    assert digest(tmp_path / "fwd") == digest(tmp_path / "rev")


# ------------------------------------------------------------------------------------------- bad input


@pytest.mark.parametrize(
    ("layout", "options", "message"),
    [
        ("sysu", tiny(num_ids=3), r"--ids 3 is too few for the sysu layout.*at least 8"),
        ("regdb", tiny(num_ids=2), r"--ids 2 is too few for the regdb layout"),
        ("sysu", tiny(size=(16, 8)), r"too small to draw a person.*Fix: pass --size"),
        ("sysu", tiny(size=(64, 128)), r"height/width"),
        ("sysu", tiny(difficulty=1.5), r"--difficulty 1.5 is outside 0..1"),
        ("sysu", tiny(seed=-1), r"--seed -1"),
        ("sysu", tiny(images_per_camera=(5, 2)), r"images_per_camera"),
        ("nosuch", tiny(), r"unknown layout 'nosuch'"),
    ],
)
def test_impossible_options_raise_and_write_nothing(tmp_path, layout, options, message):
    with pytest.raises(ConfigError, match=message):
        write_layout(layout, tmp_path / "out", options)
    assert list(tmp_path.iterdir()) == []


def test_output_folder_rules(tmp_path):
    busy = tmp_path / "busy"
    busy.mkdir()
    (busy / "keep.txt").write_text("mine")
    with pytest.raises(DataError, match=r"not empty.*--overwrite"):
        write_layout("regdb", busy, tiny(num_ids=4))
    with pytest.raises(DataError, match=r"not a set written by vireid synth"):
        write_layout("regdb", busy, tiny(num_ids=4), overwrite=True)
    assert [p.name for p in busy.iterdir()] == ["keep.txt"]

    a_file = tmp_path / "file"
    a_file.write_text("x")
    with pytest.raises(DataError, match="not a folder"):
        write_layout("regdb", a_file, tiny(num_ids=4))
    with pytest.raises(DataError, match="cannot write the output folder"):
        write_layout("regdb", a_file / "sub", tiny(num_ids=4))

    empty = tmp_path / "empty"
    empty.mkdir()
    write_layout("regdb", empty, tiny(num_ids=4, seed=1))
    first = digest(empty)
    write_layout("regdb", empty, tiny(num_ids=4, seed=2), overwrite=True)  # replaces a previous synthetic set
    assert digest(empty) != first and read_marker(empty)["seed"] == 2
    assert sorted(p.name for p in tmp_path.iterdir()) == ["busy", "empty", "file"]


def test_failure_midway_leaves_nothing_behind(tmp_path, monkeypatch):
    def boom(*args, **kwargs):
        raise RuntimeError("disk on fire")

    monkeypatch.setattr(layouts_module, "_render_all", boom)
    with pytest.raises(RuntimeError, match="disk on fire"):
        write_layout("regdb", tmp_path / "out", tiny(num_ids=4))
    assert list(tmp_path.iterdir()) == []


# ---------------------------------------------------------------------------------------- CLI, preview


def test_cli_synth_and_preview(tmp_path, capsys):
    out, png = tmp_path / "set", tmp_path / "sheet.png"
    assert main(["synth", "regdb", "--out", str(out), "--ids", "4", "--size", "64x32", "--preview", str(png)]) == 0
    printed = capsys.readouterr().out
    assert "synthetic regdb set: 4 identities" in printed and "preview written" in printed
    assert (out / MARKER_NAME).is_file() and Image.open(png).size[0] > 200
    assert main(["synth", "regdb", "--out", str(out), "--ids", "4"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "not empty" in err[0] and "Fix:" in err[0]


def test_preview_of_every_layout(sets, tmp_path):
    for layout, root in sets.items():
        path = write_preview(layout, root, tmp_path / f"{layout}.png")
        with Image.open(path) as img:
            assert img.size[0] > 150 and img.size[1] > 150
    with pytest.raises(DataError, match="not a set written by vireid synth"):
        write_preview("sysu", tmp_path, tmp_path / "x.png")
