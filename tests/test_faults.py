"""Fault table, part 2: bad inputs and options end in one clear line (or are handled), never a traceback.

Each case states the command or call, the expected exit code (CLI) or error class (library), the key words
the message must contain, and that files which existed before are untouched. The cases are listed in
docs/reliability.md ("Inputs and options"); rerun them with ``pytest tests/test_faults.py``.
"""

from __future__ import annotations

import errno
import hashlib
import json
import os
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from deploy_fixtures import save_tiny_agw
from layout_builders import build_regdb, build_rgbt_pedes, build_sysu, default_sysu_folders, write_image
from vireid import cli
from vireid.config import RunConfig, load_config
from vireid.data.cache import build_image_cache, decode_resized
from vireid.data.catalog import get_dataset
from vireid.data.image_io import load_image
from vireid.data.readers import SYNTHETIC_MARKER
from vireid.errors import ConfigError, DataError, StorageError, VireidError, describe_os_error
from vireid.evaluation.metrics import DegenerateFeaturesWarning, evaluate_embeddings
from vireid.files import storage_error

# ------------------------------------------------------------------------------------------------- helpers


def snapshot(folder: Path) -> dict[str, str]:
    """Relative path -> sha1 of every file under ``folder`` (to prove that nothing was changed or deleted)."""
    return {
        str(p.relative_to(folder)): hashlib.sha1(p.read_bytes()).hexdigest()
        for p in sorted(folder.rglob("*"))
        if p.is_file() and not p.is_symlink()
    }


def run_cli(argv: list[str], capsys) -> tuple[int, str]:
    """Exit code and stderr of ``vireid ARGV`` (argparse usage errors exit through SystemExit)."""
    try:
        code = cli.main(argv)
    except SystemExit as exc:
        code = exc.code if isinstance(exc.code, int) else 1
    return code, capsys.readouterr().err


def assert_one_clear_line(code: int, err: str, words: list[str], expected_code: int = 2) -> None:
    assert code == expected_code, err
    assert "Traceback" not in err, err
    last = err.strip().splitlines()[-1]
    for word in words:
        assert word in last, f"{word!r} not in {last!r}"


@pytest.fixture
def keep(tmp_path) -> Path:
    """A folder with a user file in it, passed as an output location; it must come out untouched."""
    folder = tmp_path / "out"
    folder.mkdir()
    (folder / "notes.txt").write_text("user data\n")
    return folder


# ------------------------------------------------------------------------------ numeric options and configs

CONFIG_CASES = [
    # (overrides, key words of the one-line message)
    (["train.epochs=0"], ["'train.epochs' is 0", "integer in [1, inf)"]),
    (["sampler.epoch_length=forever"], ["'sampler.epoch_length' is 'forever'", "agw, idkl", "[1, inf)"]),
    (["sampler.epoch_length=0"], ["'sampler.epoch_length' is '0'"]),
    (["optim.lr=-1"], ["'optim.lr' is -1.0", "(0, inf)"]),
    (["optim.lr=.nan"], ["'optim.lr' is nan", "finite number"]),
    (["eval.batch_size=0"], ["'eval.batch_size' is 0", "[1, inf)"]),
    (["data.workers=-1"], ["'data.workers' is -1", "[0, inf)"]),
    (["optim.betas=[0.9, 1.5]"], ["'optim.betas' is 1.5", "[0, 1)", "each element"]),
    (["aug.flip=2"], ["'aug.flip' is 2.0", "[0, 1]"]),
    (["data.trial=11"], ["'data.trial' is 11", "[1, 10]"]),
    (["aug.flip=3", "train.seed=-1"], ["'aug.flip' is 3.0", "'train.seed' is -1", "set aug.flip, train.seed"]),
]


@pytest.mark.parametrize(("overrides", "words"), CONFIG_CASES, ids=[c[0][0] for c in CONFIG_CASES])
def test_out_of_range_option_is_one_line_naming_key_and_range(overrides, words, keep, capsys):
    before = snapshot(keep)
    code, err = run_cli(["train", "baseline/sysu", f"train.out_dir={keep}", "data.root=/nowhere", *overrides], capsys)
    assert_one_clear_line(code, err, words)
    assert snapshot(keep) == before and sorted(os.listdir(keep)) == ["notes.txt"]


def test_in_range_values_still_load():
    cfg = load_config(
        None, ["train.epochs=1", "sampler.epoch_length=7", "optim.lr=1e-5", "aug.flip=0", "data.workers=0"]
    )
    assert (cfg.train.epochs, cfg.sampler.epoch_length, cfg.optim.lr, cfg.aug.flip) == (1, "7", 1e-5, 0.0)


def test_method_section_numbers_must_be_finite():
    # IDKL's purifier margins may be any sign (a negative margin is a slack), but never NaN or inf.
    with pytest.raises(
        ConfigError, match=r"'purifier\.margin_entropy' is inf but must be a finite number in \(-inf, inf\)"
    ):
        load_config(None, ["method=idkl", "purifier.margin_entropy=.inf"])


METHOD_RANGE_CASES = [
    # (packaged config, overrides, key words of the one-line message): a few keys of every method section.
    ("idkl/sysu", ["tgsa.tau=0"], ["'tgsa.tau' is 0.0", "a finite number in (0, inf)"]),
    ("idkl/sysu", ["loss.triplet.margin=-1.3"], ["'loss.triplet.margin' is -1.3", "[0, inf)"]),
    ("idkl/sysu", ["purifier.gate_reduction=0"], ["'purifier.gate_reduction' is 0", "an integer in [1, inf)"]),
    ("idkl/sysu", ["loss.id.label_smoothing=1"], ["'loss.id.label_smoothing' is 1.0", "[0, 1)"]),
    ("idkl/sysu", ["model.discriminator_dropout=1"], ["'model.discriminator_dropout' is 1.0", "[0, 1)"]),
    ("dakd/sysu", ["mask.q=1.5"], ["'mask.q' is 1.5", "[0, 1]"]),
    ("dakd/sysu", ["kd.temperatures=[2, 0]"], ["'kd.temperatures' is 0.0", "(0, inf) (each element)"]),
    ("dakd/sysu", ["loss.inst=-0.45"], ["'loss.inst' is -0.45", "[0, inf)"]),
    ("dakd/sysu", ["prototypes.refresh_every=1"], ["'prototypes.refresh_every' is 1", "an integer in [0, 0]"]),
    ("dakd/sysu_teacher", ["mce.global_momentum=1"], ["'mce.global_momentum' is 1.0", "[0, 1)"]),
    ("dakd/sysu_teacher", ["mce.temperature=0"], ["'mce.temperature' is 0.0", "(0, inf)"]),
    ("dikdnet/rgbt_pedes", ["loss.mlm_probability=1.5"], ["'loss.mlm_probability' is 1.5", "[0, 1]"]),
    ("dikdnet/rgbt_pedes", ["ikdm.margin=-0.2"], ["'ikdm.margin' is -0.2", "[0, inf)"]),
    ("dikdnet/rgbt_pedes", ["model.text.context_length=2"], ["'model.text.context_length' is 2", "[3, 512]"]),
    ("dikdnet/rgbt_pedes", ["lr_groups.fusion_lr=0"], ["'lr_groups.fusion_lr' is 0.0", "(0, inf)"]),
    (
        "dikdnet/rgbt_pedes",
        ["ckdm.temperature=-1", "teacher.views=0"],
        ["'ckdm.temperature' is -1.0", "'teacher.views' is 0"],
    ),
]


@pytest.mark.parametrize(
    ("config", "overrides", "words"), METHOD_RANGE_CASES, ids=[f"{c[0]}:{c[1][0]}" for c in METHOD_RANGE_CASES]
)
def test_out_of_range_method_option_is_one_line_naming_key_and_range(config, overrides, words, keep, capsys):
    before = snapshot(keep)
    code, err = run_cli(["train", config, f"train.out_dir={keep}", "data.root=/nowhere", *overrides], capsys)
    assert_one_clear_line(code, err, words)
    assert snapshot(keep) == before and sorted(os.listdir(keep)) == ["notes.txt"]


def test_in_range_method_edge_values_still_load():
    # The edges that are meaningful load unchanged: a negative purifier margin (slack), zero loss weights,
    # ikdm.margin 0 (plain distillation), teacher.epochs 0 with a finished teacher, bias_weight_decay null.
    idkl = load_config("idkl/sysu", ["purifier.margin_entropy=-0.5", "confusion.grl_lambda=0", "tgsa.scale=0"])
    assert (idkl.purifier.margin_entropy, idkl.confusion.grl_lambda, idkl.tgsa.scale) == (-0.5, 0.0, 0.0)
    dakd = load_config("dakd/sysu", ["mask.q=0", "mask.low_weight=1", "loss.cls=0"])
    assert (dakd.mask.q, dakd.mask.low_weight, dakd.loss.cls) == (0.0, 1.0, 0.0)
    dikd = load_config(
        "dikdnet/rgbt_pedes",
        ["ikdm.margin=0", "teacher.epochs=0", "teacher.checkpoint=/some/run", "lr_groups.bias_weight_decay=null"],
    )
    assert (dikd.ikdm.margin, dikd.teacher.epochs, dikd.lr_groups.bias_weight_decay) == (0.0, 0, None)


def test_baseline_loss_ranges():
    with pytest.raises(
        ConfigError, match=r"'loss\.triplet\.margin' is -0\.3 but must be a finite number in \[0, inf\)"
    ):
        load_config(None, ["loss.triplet.margin=-0.3"])
    with pytest.raises(
        ConfigError, match=r"'loss\.id\.label_smoothing' is 1\.0 but must be a finite number in \[0, 1\)"
    ):
        load_config(None, ["loss.id.label_smoothing=1.0"])


def test_trainer_refuses_out_of_range_config_built_in_python(tmp_path):
    from vireid.engine.trainer import Trainer

    cfg = load_config(None, [f"train.out_dir={tmp_path}", "data.root=/nowhere"])
    cfg.train.epochs = 0  # bypasses load_config: the trainer checks again
    with pytest.raises(ConfigError, match=r"'train\.epochs' is 0"):
        Trainer(cfg)
    assert list(tmp_path.iterdir()) == []
    assert isinstance(cfg, RunConfig)


@pytest.mark.parametrize(
    ("files", "start", "chain"),
    [
        ({"a.yaml": "a.yaml"}, "a.yaml", ["a.yaml -> ", "a.yaml."]),
        (
            {"a.yaml": "b.yaml", "b.yaml": "c.yaml", "c.yaml": "b.yaml"},
            "a.yaml",
            ["b.yaml -> ", "c.yaml -> ", "b.yaml."],
        ),
    ],
    ids=["self", "cycle"],
)
def test_base_loop_names_the_chain(tmp_path, capsys, files, start, chain):
    for name, base in files.items():
        (tmp_path / name).write_text(f"_base_: {base}\ntrain:\n  epochs: 2\n")
    code, err = run_cli(["train", str(tmp_path / start)], capsys)
    assert_one_clear_line(code, err, ["_base_ inheritance loops", *chain])


def test_config_file_that_is_not_utf8(tmp_path, capsys):
    path = tmp_path / "latin1.yaml"
    path.write_bytes("# caf\u00e9 settings\ntrain:\n  epochs: 2\n".encode("latin-1"))
    code, err = run_cli(["train", str(path)], capsys)
    assert_one_clear_line(code, err, ["latin1.yaml is not UTF-8 text", "save the config file as UTF-8"])


CLI_OPTION_CASES = [
    (["test", "RUN", "--trials", "-1"], ["--trials -1 is out of range", "an integer in [1, inf)"]),
    (["test", "RUN", "--trials", "0"], ["--trials 0 is out of range", "an integer in [1, inf)"]),
    (
        ["index", "CKPT", "--images", "IMG", "-o", "OUT", "--workers", "-1"],
        ["--workers -1 is out of range", "an integer in [0, inf)"],
    ),
    (
        ["index", "CKPT", "--images", "IMG", "-o", "OUT", "--batch-size", "0"],
        ["--batch-size 0", "an integer in [1, inf)"],
    ),
    (["pretrain", "--out", "OUT", "--lr", "-0.1"], ["--lr -0.1 is out of range", "a finite number in (0, inf)"]),
    (["search", "INDEX", "--query", "q.png", "--top", "0"], ["--top 0", "an integer in [1, inf)"]),
]


@pytest.mark.parametrize(("argv", "words"), CLI_OPTION_CASES, ids=[" ".join(c[0][-2:]) for c in CLI_OPTION_CASES])
def test_out_of_range_cli_option_is_a_usage_error(argv, words, capsys):
    code, err = run_cli(argv, capsys)
    assert_one_clear_line(code, err, words)


def test_library_refuses_negative_trials_before_any_work(tmp_path):
    from vireid.engine.testing import test_checkpoint

    with pytest.raises(ConfigError, match=r"trials=-1 is out of range; it must be an integer >= 1"):
        test_checkpoint(tmp_path / "no-checkpoint-needed", trials=-1)


def test_more_trials_than_the_protocol_has(tmp_path, sysu_root):
    from vireid.engine.testing import test_checkpoint

    ckpt = save_tiny_agw(tmp_path / "ckpt")
    with pytest.raises(ConfigError, match=r"trials=11 asked for, but protocol sysu\.all\.single\.random has 10"):
        test_checkpoint(ckpt, root=str(sysu_root), protocols=["sysu.all.single.random"], trials=11, out=tmp_path / "t")
    assert not (tmp_path / "t").exists() or not any((tmp_path / "t").iterdir())  # no results written


def test_export_opset_out_of_range(tmp_path, capsys):
    ckpt = save_tiny_agw(tmp_path / "ckpt")
    before = snapshot(tmp_path)
    code, err = run_cli(["export", str(ckpt), "--onnx", str(tmp_path / "m.onnx"), "--opset", "3"], capsys)
    assert_one_clear_line(code, err, ["ONNX opset 3 is not supported", "--opset 17"])
    assert snapshot(tmp_path) == before


# ------------------------------------------------------------------------------------------------ images


def _gradient(dtype, low: float, step: float) -> np.ndarray:
    return (low + step * np.arange(32 * 16).reshape(32, 16)).astype(dtype)


def _stretch(values: np.ndarray) -> np.ndarray:
    """Reference of the documented rescaling: per-image linear min-max to 0..255, rounded."""
    v = values.astype(np.float64)
    return np.rint((v - v.min()) * 255.0 / (v.max() - v.min())).astype(np.uint8)


@pytest.mark.parametrize(
    ("name", "array"),
    [
        ("raw16.png", _gradient(np.uint16, 7000, 4)),  # Pillow: mode I;16
        ("raw16.tif", _gradient(np.uint16, 7000, 4)),  # mode I;16
        ("raw32.tif", _gradient(np.int32, 70000, 9)),  # mode I
        ("float.tif", _gradient(np.float32, -3.0, 0.01)),  # mode F
    ],
)
def test_high_bit_depth_images_are_rescaled_not_white(tmp_path, name, array):
    path = tmp_path / name
    Image.fromarray(array).save(path)
    assert Image.open(path).mode in ("I;16", "I", "F")
    expected = _stretch(array)
    for gray3 in (False, True):
        decoded = np.asarray(load_image(path, gray3=gray3))
        assert decoded.shape == (32, 16, 3)
        for channel in range(3):
            np.testing.assert_array_equal(decoded[:, :, channel], expected)
    assert decoded.min() == 0 and decoded.max() == 255  # was solid white (255 everywhere) before


def test_constant_16bit_image_is_black_and_nan_float_image_is_refused(tmp_path):
    Image.fromarray(np.full((8, 4), 9000, np.uint16)).save(tmp_path / "flat.png")
    assert np.asarray(load_image(tmp_path / "flat.png")).max() == 0
    values = np.ones((8, 4), np.float32)
    values[2, 1] = np.nan
    Image.fromarray(values).save(tmp_path / "nan.tif")
    with pytest.raises(DataError, match=r"nan\.tif.*NaN or infinite"):
        load_image(tmp_path / "nan.tif")


def test_16bit_pil_image_given_to_the_feature_extractor_is_rescaled():
    from vireid.data.image_io import to_rgb

    array = _gradient(np.uint16, 7000, 4)
    np.testing.assert_array_equal(np.asarray(to_rgb(Image.fromarray(array)))[:, :, 0], _stretch(array))


def _truncated_jpeg(path: Path) -> Path:
    buf = path.with_suffix(".full.jpg")
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (64, 32, 3), dtype=np.uint8)).save(buf)
    data = buf.read_bytes()
    buf.unlink()
    path.write_bytes(data[: len(data) // 2])
    return path


class _Images(torch.utils.data.Dataset):
    def __init__(self, paths):
        self.paths = paths

    def __len__(self):
        return len(self.paths)

    def __getitem__(self, index):
        return torch.from_numpy(np.asarray(load_image(self.paths[index]))).sum()


def test_dataloader_worker_error_is_the_original_one_line(tmp_path):
    bad = _truncated_jpeg(tmp_path / "bad.jpg")
    with pytest.raises(DataError) as direct:
        load_image(bad)
    loader = torch.utils.data.DataLoader(_Images([bad]), batch_size=1, num_workers=1)
    with pytest.raises(DataError) as through_worker:
        next(iter(loader))
    assert str(through_worker.value) == str(direct.value)
    assert "\n" not in str(through_worker.value) and "bad.jpg" in str(through_worker.value)


def test_truncated_jpeg_in_index_workers_is_one_line(tmp_path, capsys):
    ckpt = save_tiny_agw(tmp_path / "ckpt")
    images = tmp_path / "gallery"
    for k in range(3):
        write_image(images / f"{k}.png")
    _truncated_jpeg(images / "broken.jpg")
    before = snapshot(tmp_path)
    code, err = run_cli(
        ["index", str(ckpt), "--images", str(images), "-o", str(tmp_path / "idx"), "--workers", "1"], capsys
    )
    assert_one_clear_line(code, err, ["broken.jpg", "corrupt or truncated", "Fix:"])
    assert len(err.strip().splitlines()) == 1
    assert snapshot(tmp_path) == before


# ---------------------------------------------------------------------------------------------- datasets


@pytest.fixture
def sysu_root(tmp_path) -> Path:
    root = build_sysu(tmp_path / "SYSU-MM01", default_sysu_folders(), (1, 2, 3, 4), (5, 6), (7, 8, 9, 10, 11))
    (root / SYNTHETIC_MARKER).write_text("{}")  # a small test set: skip the comparison with the real counts
    return root


def test_symlink_loop_in_dataset_folder(sysu_root, capsys):
    link = sysu_root / "cam1" / "0001" / "loop.jpg"
    link.symlink_to(link.name)
    before = snapshot(sysu_root)
    code, err = run_cli(["protocol", "sysu", "--root", str(sysu_root), "--trial", "0"], capsys)
    assert_one_clear_line(code, err, [str(link), "symbolic link", "Fix: remove or repair"])
    with pytest.raises(DataError, match=r"loop\.jpg is a symbolic link that loops back on itself"):
        load_image(link)
    assert snapshot(sysu_root) == before


def test_sysu_id_without_folder(sysu_root, capsys):
    (sysu_root / "exp" / "train_id.txt").write_text("1,2,3,4,99\n")
    code, err = run_cli(["protocol", "sysu", "--root", str(sysu_root), "--trial", "0"], capsys)
    assert_one_clear_line(code, err, ["train_id.txt, line 1", "identity 99 has no folder", "Fix:"])


def test_regdb_duplicated_index_line(tmp_path, capsys):
    root = tmp_path / "RegDB"
    build_regdb(root)
    index = root / "idx" / "test_visible_1.txt"
    lines = index.read_text().splitlines()
    index.write_text("\n".join([*lines, lines[1]]) + "\n")
    code, err = run_cli(["protocol", "regdb", "--root", str(root), "--trial", "1"], capsys)
    assert_one_clear_line(code, err, [f"test_visible_1.txt, line {len(lines) + 1}", "already listed on line 2"])
    with pytest.raises(DataError, match="already listed on line 2"):
        get_dataset("regdb", root, trial=1).records("test")


def test_latin1_labels_file_names_the_line(tmp_path, capsys):
    labels = tmp_path / "labels.txt"
    labels.write_bytes("a.png 1\ncaf\u00e9.png 2\n".encode("latin-1"))
    from vireid.data.readers.index_files import read_labelled_list

    with pytest.raises(DataError, match=r"labels\.txt, line 2: byte 0xe9 is not UTF-8.*re-save it as UTF-8"):
        read_labelled_list(str(labels))


def test_latin1_caption_json(tmp_path):
    base = build_rgbt_pedes(tmp_path / "data")
    annotations = base / "caption_2_no_color.json"
    entries = json.loads(annotations.read_text())
    entries[0]["captions"][0] = "a man in a caf\u00e9 jacket"
    annotations.write_bytes(json.dumps(entries, ensure_ascii=False, indent=1).encode("latin-1"))
    with pytest.raises(DataError, match=r"caption_2_no_color\.json, line \d+: byte 0xe9 is not UTF-8.*iconv"):
        get_dataset("rgbt_pedes", tmp_path / "data").train_split()


def test_non_utf8_file_name_in_image_cache(tmp_path):
    folder = tmp_path / "imgs"
    write_image(folder / "a.png")
    odd = os.fsdecode(bytes(folder) + b"/caf\xe9.png")  # not UTF-8: a lone surrogate in Python
    try:
        Image.fromarray(np.random.default_rng(1).integers(0, 255, (16, 8, 3), dtype=np.uint8)).save(odd)
    except OSError:  # pragma: no cover - file systems that only accept UTF-8 names (macOS APFS)
        pytest.skip("this file system refuses file names that are not UTF-8")
    paths = [str(folder / "a.png"), odd]
    cache = build_image_cache(paths, tmp_path / "cache", 16, 8, workers=1)
    np.testing.assert_array_equal(cache[1], np.asarray(decode_resized(odd, 16, 8, "lanczos")))
    again = build_image_cache(paths, tmp_path / "cache", 16, 8, workers=1)
    assert again.data_path == cache.data_path  # the index round-trips: reused, not rebuilt


# ------------------------------------------------------------------------------------------ evaluation


@pytest.mark.parametrize(
    ("q", "g", "words"),
    [
        (np.zeros((3, 4)), np.random.default_rng(0).random((5, 4)), "3 of 3 embeddings are all zero"),
        (np.random.default_rng(0).random((3, 4)), np.ones((5, 4)), "all 5 embeddings point in the same direction"),
    ],
    ids=["zero", "constant"],
)
def test_degenerate_embeddings_warn(q, g, words):
    labels = ([0, 1, 2], [0, 1, 2, 0, 1], [1, 1, 1], [2, 2, 2, 2, 2])
    with pytest.warns(DegenerateFeaturesWarning, match=words):
        evaluate_embeddings(q.astype(np.float32), g.astype(np.float32), *labels, "sysu", max_rank=5)
    with warnings.catch_warnings():
        warnings.simplefilter("error", DegenerateFeaturesWarning)
        rng = np.random.default_rng(1)
        evaluate_embeddings(rng.random((3, 4)), rng.random((5, 4)), *labels, "sysu", max_rank=5)


# ------------------------------------------------------------------------------------- CLI error path


def _unicode_decode_error() -> UnicodeDecodeError:
    try:
        b"caf\xe9".decode("utf-8")
    except UnicodeDecodeError as exc:
        return exc
    raise AssertionError("b'caf\\xe9' decoded as UTF-8")


def _safetensors_error() -> Exception:
    import tempfile

    from safetensors.torch import load_file

    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "model.safetensors"
        path.write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{not a header}")
        try:
            load_file(path)
        except Exception as exc:  # safetensors_rust.SafetensorError
            return exc
    raise AssertionError("a junk safetensors file loaded")


ENVIRONMENT_ERRORS = [
    (
        OSError(errno.ENOSPC, "No space left on device", "/data/run/model.safetensors"),
        ["model.safetensors", "disk is full"],
    ),
    (PermissionError(errno.EACCES, "Permission denied", "/data/x.jpg"), ["/data/x.jpg", "permission denied"]),
    (OSError(errno.EROFS, "Read-only file system", "/ro/out"), ["/ro/out", "read-only"]),
    (OSError(errno.ELOOP, "Too many levels of symbolic links", "/d/l.jpg"), ["/d/l.jpg", "loops back"]),
    (json.JSONDecodeError("Expecting value", '{"a": }', 6), ["JSON file is malformed", "line 1 column 7"]),
    (_unicode_decode_error(), ["not UTF-8", "0xe9"]),
    (MemoryError(), ["out of memory"]),
    (_safetensors_error(), ["safetensors file is corrupt"]),
    (OSError("Truncated File Read"), ["Truncated File Read", "Fix: check the input files"]),
]


@pytest.mark.parametrize(
    ("exc", "words"), ENVIRONMENT_ERRORS, ids=[f"{type(e).__name__}-{i}" for i, (e, _) in enumerate(ENVIRONMENT_ERRORS)]
)
def test_cli_reports_environment_errors_as_one_line(monkeypatch, capsys, exc, words):
    def handler(args):
        raise exc

    monkeypatch.setattr(cli, "cmd_info", handler)
    monkeypatch.delenv(cli.DEBUG_ENV, raising=False)
    code, err = run_cli(["info"], capsys)
    assert_one_clear_line(code, err, [*words, f"{cli.DEBUG_ENV}=1"])
    assert len(err.strip().splitlines()) == 1


def test_cli_keeps_tracebacks_of_bugs_and_in_debug_mode(monkeypatch, capsys):
    def buggy(args):
        raise TypeError("unsupported operand type(s) for +: 'int' and 'str'")

    monkeypatch.setattr(cli, "cmd_info", buggy)
    code, err = run_cli(["info"], capsys)
    assert code == 1
    assert "Traceback" in err and "TypeError: unsupported operand" in err and "this is a bug in vireid" in err

    def full_disk(args):
        raise OSError(errno.ENOSPC, "No space left on device", "/x")

    monkeypatch.setattr(cli, "cmd_info", full_disk)
    monkeypatch.setenv(cli.DEBUG_ENV, "1")
    code, err = run_cli(["info"], capsys)
    assert code == 1 and "Traceback" in err and "No space left on device" in err


def test_vireid_error_stays_one_line_with_exit_2(monkeypatch, capsys):
    def refuse(args):
        raise VireidError("the thing is wrong.", fix="do the other thing.")

    monkeypatch.setattr(cli, "cmd_info", refuse)
    monkeypatch.delenv(cli.DEBUG_ENV, raising=False)
    code, err = run_cli(["info"], capsys)
    assert code == 2 and err == "vireid info: error: the thing is wrong. Fix: do the other thing.\n"


# One implementation turns an OSError into a message: vireid.errors.describe_os_error. files.storage_error (writes)
# calls it with the action, so both give the same advice for the same errno. (errno, strerror, key words of the fix)
OS_ERROR_ADVICE_CASES = [
    (errno.ENOSPC, "No space left on device", ["free disk space", "another disk"]),
    (errno.EROFS, "Read-only file system", ["writable"]),
    (errno.ELOOP, "Too many levels of symbolic links", ["remove or repair the link"]),
    (errno.ENOTDIR, "Not a directory", ["a file stands where a folder is needed"]),
    (errno.EEXIST, "File exists", ["a file stands where a folder is needed"]),
    (errno.EIO, "Input/output error", ["check the disk"]),
]


@pytest.mark.parametrize(
    ("code", "reason", "fix_words"), OS_ERROR_ADVICE_CASES, ids=[c[1] for c in OS_ERROR_ADVICE_CASES]
)
def test_storage_error_and_describe_os_error_give_one_advice(code, reason, fix_words):
    exc = OSError(code, reason, "/data/out/thing")
    read_side = describe_os_error(exc)
    write_side = storage_error(exc, "/data/out", "write the index")
    assert isinstance(write_side, StorageError) and isinstance(write_side, OSError)
    assert write_side.problem == f"cannot write the index /data/out: {reason}."
    assert read_side.problem.startswith("/data/out/thing ") and reason in read_side.problem
    assert write_side.fix == read_side.fix
    for word in fix_words:
        assert word in write_side.fix
    # A caller's own fix still wins, and a read error can name the action too.
    assert storage_error(exc, "/x", "lock the run folder", fix="do this.").fix == "do this."
    described = describe_os_error(exc, "/x", DataError, action="read the image cache")
    assert isinstance(described, DataError) and str(described).startswith(f"cannot read the image cache /x: {reason}.")
