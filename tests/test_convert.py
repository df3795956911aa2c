"""``vireid convert``: safe reading, the key tables against the releases' manifests, refusals, round trips.

The manifests (``tests/manifests/<source>.json``) list every tensor name, shape and dtype of a file saved by
the release's own code (``benchmarks/parity/release_parity.py --manifest``). Files with exactly those keys
are rebuilt here with one distinct constant per tensor (stored as an expanded one-element tensor, so a
full ResNet-50 file is a few hundred kilobytes), which shows where each release tensor lands. The round
trip and DAKD tests use tiny ResNet-50s (width 8) written in the release format.
"""

from __future__ import annotations

import hashlib
import json
import shutil
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch
from rich.console import Console
from safetensors.torch import load_file

from dakd_runs import TINY_DATA, TINY_TRAIN, student_cfg, textured_sysu
from vireid.cli import main
from vireid.config import load_config
from vireid.convert import ConversionError, UnsafeCheckpointError, convert_checkpoint, get_source, read_release_file
from vireid.convert.mapping import fit_to_model, rename_state
from vireid.engine.loading import inference_config
from vireid.methods import get_method

MANIFESTS = Path(__file__).parent / "manifests"
DTYPES = {"float32": torch.float32, "int64": torch.int64}
# ResNet-50 at width 8 keeps the release's non-local block indices (layer2 2-3, layer3 3-5) and is tiny.
TINY_R50 = ["model.backbone=resnet50", "model.width=8", "model.pretrained=none"]


def manifest(name: str) -> dict:
    return json.loads((MANIFESTS / f"{name}.json").read_text())


def manifest_state(name: str) -> dict[str, torch.Tensor]:
    """Every tensor of the manifest, filled with its 1-based position (a constant view: no memory)."""
    state = {}
    for index, (key, shape, dtype) in enumerate(manifest(name)["tensors"], start=1):
        value = torch.full((1,), index, dtype=DTYPES[dtype]).reshape(())
        state[key] = value.expand(shape) if shape else value.clone()
    return state


def release_file(path: Path, state: dict[str, torch.Tensor], **stored) -> Path:
    defaults = {"cmc": np.linspace(0.6, 0.99, 20), "mAP": np.float64(0.58), "mINP": np.float64(0.41), "epoch": 60}
    stored = defaults | stored
    torch.save({"net": state, **stored}, path)
    return path


def meta_model(method_name: str, cfg, num_classes: int):
    """The model of ``cfg`` on the meta device: names and shapes only, built instantly."""
    method = get_method(method_name)
    with torch.device("meta"):
        return method.build_model(inference_config(cfg), num_classes)


class OpensAFile:
    """Unpickling this object calls ``open(target, "w")``, which creates the file."""

    def __init__(self, target: Path):
        self.target = str(target)

    def __reduce__(self):
        return (open, (self.target, "w"))


# --------------------------------------------------------------------------------------------- safe reading


def test_a_pickle_that_would_create_a_file_is_refused_by_name(tmp_path, capsys):
    target = tmp_path / "created_by_unpickling"
    evil = tmp_path / "evil_best.t"
    torch.save({"net": {"bottleneck.weight": torch.ones(2)}, "payload": OpensAFile(target)}, evil)
    with pytest.raises(UnsafeCheckpointError, match=r"'io\.open'"):
        read_release_file(evil)
    code = main(["convert", str(evil), "--from", "agw", "--out", str(tmp_path / "out")])
    err = capsys.readouterr().err.strip()
    assert code == 2 and len(err.splitlines()) == 1 and "io.open" in err and "weights_only=False" in err
    assert not target.exists() and not (tmp_path / "out").exists()
    # Files of torch < 1.6 (the legacy, non-zip format) are checked by the weights-only unpickler itself.
    legacy = tmp_path / "evil_legacy.t"
    torch.save({"payload": OpensAFile(target)}, legacy, _use_new_zipfile_serialization=False)
    with pytest.raises(UnsafeCheckpointError, match=r"'io\.open'"):
        read_release_file(legacy)
    assert not target.exists()
    ok = tmp_path / "legacy_ok.t"
    torch.save({"net": {"w": torch.ones(2)}, "mAP": np.float64(0.5)}, ok, _use_new_zipfile_serialization=False)
    assert float(read_release_file(ok)["mAP"]) == 0.5


def test_numpy_metrics_written_by_numpy_1_are_read(tmp_path):
    """The releases were saved with NumPy 1.x, whose pickles name ``numpy.core.multiarray``."""
    path = tmp_path / "np2.t"
    torch.save({"net": {"w": torch.arange(3.0)}, "cmc": np.array([0.5, 0.75]), "mAP": np.float64(0.25)}, path)
    old = tmp_path / "np1.t"
    with zipfile.ZipFile(path) as src, zipfile.ZipFile(old, "w", zipfile.ZIP_STORED) as dst:
        for item in src.infolist():
            data = src.read(item)
            if item.filename.endswith("data.pkl"):
                assert b"numpy._core.multiarray" in data
                data = data.replace(b"numpy._core.multiarray", b"numpy.core.multiarray")
            dst.writestr(item, data)
    with pytest.raises(Exception, match="numpy"):  # what the allow-list is for
        torch.load(old, weights_only=True)
    loaded = read_release_file(old)
    assert loaded["cmc"].tolist() == [0.5, 0.75] and float(loaded["mAP"]) == 0.25
    assert torch.equal(loaded["net"]["w"], torch.arange(3.0))


# ------------------------------------------------------------------------------------- manifests and tables

# Where release tensors must land, read off the release code by hand (model.py / resnet.py at the manifest's
# commit), not derived from the tables under test.
AGW_LANDINGS = {
    "visible_module.visible.conv1.weight": "stems.visible.conv1.weight",
    "thermal_module.thermal.bn1.running_var": "stems.infrared.bn1.running_var",
    "base_resnet.base.layer1.0.downsample.1.running_mean": "layer1.0.downsample.1.running_mean",
    "base_resnet.base.layer4.2.bn3.weight": "layer4.2.bn3.weight",
    "NL_2.0.theta.weight": "layer2.non_local.2.theta.weight",
    "NL_2.1.W.1.running_mean": "layer2.non_local.3.out_bn.running_mean",
    "NL_3.0.g.0.weight": "layer3.non_local.3.g.weight",
    "NL_3.2.W.0.bias": "layer3.non_local.5.out_conv.bias",
    "NL_3.1.phi.bias": "layer3.non_local.4.phi.bias",
    "bottleneck.running_var": "bnneck.running_var",
    "classifier.weight": "classifier.weight",
}
MCE_LANDINGS = {
    "backbone.conv1.weight": "stems.shared.conv1.weight",
    "backbone.bn1.num_batches_tracked": "stems.shared.bn1.num_batches_tracked",
    "backbone.layer3.5.conv2.weight": "layer3.5.conv2.weight",
    "backbone.NL_2.0.W.1.weight": "layer2.non_local.2.out_bn.weight",
    "backbone.NL_3.2.g.0.bias": "layer3.non_local.5.g.bias",
    "backbone.pool.p": "pool.p",
    "bn_neck.weight": "bnneck.weight",
}


def _landing_values(name: str) -> dict[str, int]:
    return {key: index for index, (key, _, _) in enumerate(manifest(name)["tensors"], start=1)}


def test_agw_release_keys_convert_and_land_where_the_table_says(tmp_path):
    path = release_file(tmp_path / "sysu_agw_p4_n8_lr_0.1_seed_0_best.t", manifest_state("agw"))
    out = convert_checkpoint(path, source="agw", config="baseline/sysu", out=tmp_path / "converted")
    tensors = load_file(str(out / "model.safetensors"))
    value_of = _landing_values("agw")
    for release_key, vireid_key in AGW_LANDINGS.items():
        assert torch.all(tensors[vireid_key] == value_of[release_key]), (release_key, vireid_key)
    # Every vireid tensor comes from exactly one release tensor; the rest are the release's dead copies.
    sources = [int(t.flatten()[0]) for t in tensors.values()]
    assert len(set(sources)) == len(tensors) and all(torch.all(t == t.flatten()[0]) for t in tensors.values())
    names = {v: k for k, v in value_of.items()}
    dropped = set(value_of) - {names[s] for s in sources}
    dead = ("visible_module.visible.layer", "thermal_module.thermal.layer", "base_resnet.base.conv1.")
    assert all(k.startswith((*dead, "base_resnet.base.bn1.")) for k in dropped)
    assert len(dropped) == 2 * (60 + 78 + 114 + 60) + 6  # two unused ResNet-50 bodies + one unused stem
    meta = json.loads((out / "meta.json").read_text())
    assert meta["method"] == "baseline" and meta["num_classes"] == 395 and meta["selection"] == "test"
    info = meta["converted"]
    assert info["sha256"] == hashlib.sha256(path.read_bytes()).hexdigest() and info["file"] == path.name
    assert info["stored"]["mAP"] == 0.58 and info["stored"]["epoch"] == 60 and len(info["stored"]["cmc"]) == 20


@pytest.mark.parametrize(
    ("source", "config", "num_classes"), [("mce", "dakd/sysu_teacher", 395), ("dakd", "dakd/sysu", 0)]
)
def test_mce_and_dakd_release_keys_map_onto_the_model(source, config, num_classes):
    spec = get_source(source)
    state = manifest_state(source)
    mapped = rename_state(state, spec.mapping)
    cfg = load_config(config)
    from vireid.convert.source import architecture_facts, config_mismatches

    facts = architecture_facts(mapped.tensors, spec, state)
    assert facts.num_classes == num_classes and not config_mismatches(facts, cfg)
    model = meta_model(cfg.method, cfg, facts.num_classes)
    tensors, filled = fit_to_model(mapped, model.state_dict(), spec.mapping, what=source)
    assert set(tensors) == set(model.state_dict())
    # The release keeps one set of running statistics; the DAKD student (student.bn=per_modality) keeps a
    # second, infrared set, filled with copies of that one set (so it computes the release's output).
    assert bool(filled) == (source == "dakd") and all(k.startswith("infrared_bn_stats.") for k in filled)
    for key in filled:
        assert torch.equal(tensors[key], tensors[key.removeprefix("infrared_bn_stats.")]), key
    value_of = _landing_values(source)
    for release_key, vireid_key in MCE_LANDINGS.items():
        assert int(tensors[vireid_key].flatten()[0]) == value_of[release_key], (release_key, vireid_key)
    dropped = sorted(k for keys in mapped.dropped.values() for k in keys)
    expected = ["memory.features", "memory_ca.features", "memory_ir.features", "memory_rgb.features"]
    assert dropped == (expected if source == "mce" else [])


def test_missing_and_unexpected_keys_are_refused_grouped_by_prefix():
    spec = get_source("agw")
    state = manifest_state("agw")
    del state["base_resnet.base.layer3.1.conv2.weight"]
    state["NL_4.0.g.0.weight"] = torch.zeros(1, 2048, 1, 1)
    state["base_resnet.base.layer5.0.conv1.weight"] = torch.zeros(1)
    cfg = load_config("baseline/sysu")
    mapped = rename_state(state, spec.mapping)
    with pytest.raises(ConversionError) as info:
        fit_to_model(mapped, meta_model("baseline", cfg, 395).state_dict(), spec.mapping, what="f.t")
    message = str(info.value)
    assert "2 unexpected release keys: NL_4.* (1), base_resnet.base.layer5.* (1)" in message
    assert "1 vireid keys missing from the file: layer3.* (1)" in message


# ---------------------------------------------------------------------------------- tiny release-format files


def to_release_names(state: dict[str, torch.Tensor], source: str) -> dict[str, torch.Tensor]:
    """A vireid state dict written back under the release's names (the inverse of the source's renames)."""
    renames = get_source(source).mapping.renames
    out = {}
    for key, tensor in state.items():
        rule = max((r for r in renames if key.startswith(r.vireid)), key=lambda r: len(r.vireid))
        out[rule.release + key[len(rule.vireid) :]] = tensor.clone()
    return out


def image_batch(root: Path, cfg, count: int = 16) -> torch.Tensor:
    """``count`` images of the dataset under ``root`` through the test transform of ``cfg`` (N, 3, H, W)."""
    from PIL import Image

    transform = get_method(cfg.method).test_transform(cfg)
    paths = sorted(root.rglob("*.jpg"))[:: max(1, len(list(root.rglob("*.jpg"))) // count)][:count]
    return torch.stack([transform(Image.open(p).convert("RGB")) for p in paths])


def tiny_model(method_name: str, overrides: list[str], num_classes: int, seed: int = 0, root: Path | None = None):
    """A tiny ResNet-50 network with trained-looking BatchNorm: random affine parameters and running statistics
    averaged over training-mode passes on images of ``root`` (on noise without it). The non-local blocks are
    cubic in their input, so statistics taken on noise would let them blow up on images."""
    cfg = load_config(None, [*TINY_R50, *overrides], method=method_name)
    torch.manual_seed(seed)
    model = get_method(method_name).build_model(cfg, num_classes)
    with torch.no_grad():
        for name, module in model.named_modules():
            if isinstance(module, torch.nn.BatchNorm1d | torch.nn.BatchNorm2d):
                # Non-local output BatchNorms get a small non-zero scale: the blocks are not the identity,
                # and their cubic response stays finite on images unlike the calibration noise.
                module.weight.uniform_(0.05, 0.2) if name.endswith("out_bn") else module.weight.uniform_(0.5, 1.5)
                module.bias.normal_(0.0, 0.1)
                module.momentum = None  # running statistics = the average over the passes below
                module.reset_running_stats()
            if name == "stems.infrared":
                for p in module.parameters():
                    p.add_(0.2 * torch.randn_like(p))
        model.train()
        images = image_batch(root, cfg) if root is not None else torch.randn(16, 3, 32, 16)
        for _ in range(2):  # non-trivial running statistics, on the scale of the activations
            model(images, torch.arange(len(images)) % 2)
        for module in model.modules():
            if isinstance(module, torch.nn.BatchNorm1d | torch.nn.BatchNorm2d):
                module.momentum = 0.1
    return cfg, model.eval()


def test_architecture_mismatches_name_the_override(tmp_path, capsys):
    # The AGW release's --method base: no non-local blocks, average pooling.
    _, model = tiny_model("baseline", ["model.non_local=false", "model.pooling=avg"], 6)
    path = release_file(tmp_path / "sysu_base_best.t", to_release_names(model.state_dict(), "agw"))
    with pytest.raises(ConversionError, match=r"model\.non_local=false model\.pooling=avg"):
        convert_checkpoint(path, source="agw", config="baseline/sysu", out=tmp_path / "a", overrides=TINY_R50)
    with pytest.raises(ConversionError, match=r"width: file 8, config 16.*model\.width=8"):
        convert_checkpoint(
            path, source="agw", out=tmp_path / "b", overrides=[*TINY_R50, "model.width=16", "model.non_local=false"]
        )
    ok = ["model.non_local=false", "model.pooling=avg", *TINY_R50, "data.height=32", "data.width=16"]
    out = convert_checkpoint(path, source="agw", out=tmp_path / "c", overrides=ok)
    converted = load_file(str(out / "model.safetensors"))
    assert all(torch.equal(converted[k], v) for k, v in model.state_dict().items())
    # An ordinary checkpoint: FeatureExtractor gives the original network's features, `vireid export` takes it.
    from vireid.inference import FeatureExtractor

    images = torch.randn(3, 3, 32, 16)
    feats = FeatureExtractor(out, device="cpu", amp="none")(list(images), "infrared")
    with torch.no_grad():
        expected = torch.nn.functional.normalize(model.extract(images, 1), dim=1)
    torch.testing.assert_close(feats, expected, atol=1e-5, rtol=0)
    capsys.readouterr()
    assert main(["export", str(out), "--onnx", str(tmp_path / "m.onnx"), "--modality", "visible"]) == 0
    assert "converted from agw release file sysu_base_best.t" in " ".join(capsys.readouterr().out.split())


def test_batchnorm_counters_missing_from_old_files_are_filled_and_listed(tmp_path):
    _, model = tiny_model("baseline", [], 6)
    state = {k: v for k, v in to_release_names(model.state_dict(), "agw").items() if "num_batches_tracked" not in k}
    path = release_file(tmp_path / "old_torch_best.t", state)
    out = convert_checkpoint(path, source="agw", out=tmp_path / "o", overrides=TINY_R50)
    filled = json.loads((out / "meta.json").read_text())["converted"]["filled"]
    counters = [k for k in model.state_dict() if k.endswith("num_batches_tracked")]
    assert sorted(filled) == sorted(counters) and len(counters) > 50
    converted = load_file(str(out / "model.safetensors"))
    assert all(torch.equal(converted[k], v) for k, v in model.state_dict().items() if k not in counters)


def test_an_extra_key_in_a_file_fails_the_command_with_one_line(tmp_path, capsys):
    _, model = tiny_model("baseline", [], 6)
    state = to_release_names(model.state_dict(), "agw")
    state["NL_2.0.W.2.weight"] = torch.ones(32)
    path = release_file(tmp_path / "edited_best.t", state)
    args = ["convert", str(path), "--from", "agw", "--config", "baseline/sysu", *TINY_R50, "--out", str(tmp_path / "o")]
    assert main(args) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "1 unexpected release keys: NL_2.* (1)" in err
    assert not (tmp_path / "o").exists()


@pytest.fixture(scope="module")
def sysu_root(tmp_path_factory) -> Path:
    return textured_sysu(tmp_path_factory.mktemp("sysu_convert"))


@pytest.mark.filterwarnings("ignore::UserWarning")
def test_a_converted_agw_file_round_trips_into_vireid_test(sysu_root, tmp_path):
    from vireid.engine.testing import test_checkpoint

    data = [f"data.root={sysu_root}", "data.height=32", "data.width=16", "eval.selection=last"]
    _, model = tiny_model("baseline", data, 4, root=sysu_root)
    state = to_release_names(model.state_dict(), "agw")
    state["visible_module.visible.layer1.0.conv1.weight"] = torch.randn(8, 8, 1, 1)  # a dead copy, dropped
    path = release_file(tmp_path / "sysu_agw_best.t", state)
    out = tmp_path / "converted"
    args = ["convert", str(path), "--from", "agw", "--config", "baseline/sysu", *TINY_R50, *data, "--out", str(out)]
    assert main(args) == 0
    converted = load_file(str(out / "model.safetensors"))
    assert converted.keys() == model.state_dict().keys()
    assert all(torch.equal(converted[k], v) for k, v in model.state_dict().items())  # bit-identical network
    console = Console(record=True, width=300)
    (result,) = test_checkpoint(out, protocols=["sysu.all.single.random"], trials=1, console=console)
    assert result.metadata["converted_from"] == "agw release file sysu_agw_best.t"
    assert all(0.0 <= v <= 100.0 for v in result.mean.values()) and result.trials[0].result.num_valid_queries > 0
    text = console.export_text()
    assert "converted from agw release file sysu_agw_best.t" in text and "selected on the TEST split" in text
    # index + search with the converted model: the search table says where the model came from too
    from vireid.index import build_index
    from vireid.search import search_cli

    # the test identities' visible images (the ones vireid test just embedded: this random tiny network's
    # non-local blocks overflow on some training images, which the index rightly refuses)
    test_ids = [int(i) for i in (Path(sysu_root) / "exp" / "test_id.txt").read_text().split(",")]
    gallery = tmp_path / "gallery"
    for pid in test_ids:
        shutil.copytree(Path(sysu_root) / "cam1" / f"{pid:04d}", gallery / f"{pid:04d}")
    index = build_index(out, gallery, tmp_path / "gallery.vidx", modality="visible", identities="none")
    query = next((Path(sysu_root) / "cam3" / f"{test_ids[0]:04d}").glob("*.jpg"))
    console = Console(record=True, width=300)
    search_cli(str(index.folder), query=str(query), modality="infrared", top=2, console=console)
    title = " ".join(console.export_text().split())  # the title wraps to the table's width
    assert "model converted from agw release file sysu_agw_best.t" in title


@pytest.mark.filterwarnings("ignore::UserWarning")
def test_a_dakd_student_trains_from_a_converted_release_teacher(sysu_root, tmp_path):
    from vireid.engine.checkpoint import load_checkpoint
    from vireid.engine.trainer import train

    nl = ["model.nl_layer2=[2,3]", "model.nl_layer3=[3,4,5]"]
    torch.manual_seed(1)
    # An untrained network as the release's teacher (as dakd_runs.save_random_teacher): random features of an
    # over-confident "trained-looking" teacher would only exercise DAKD's masks, not the conversion.
    teacher = get_method("mce").build_model(load_config(None, [*TINY_R50, *nl], method="mce"), 0)
    state = to_release_names(teacher.state_dict(), "mce")
    for name in ("memory", "memory_rgb", "memory_ir", "memory_ca"):  # what MCE's train.py saves with the net
        state[f"{name}.features"] = torch.randn(4, teacher.feature_dim)
    path = release_file(tmp_path / "sysu_mce_best.t", state)
    folder = convert_checkpoint(path, source="mce", config="dakd/sysu_teacher", out=tmp_path / "t", overrides=TINY_R50)
    cfg = student_cfg(sysu_root, folder, *TINY_R50, *nl, *TINY_DATA, *TINY_TRAIN, "train.epochs=1")
    result = train(cfg, run_dir=tmp_path / "student", stop_after_iters=2)
    meta = load_checkpoint(result.run_dir, prefer="last").meta
    assert meta["extra"]["teacher"] == str(folder) and meta["extra"]["teacher_method"] == "mce"
    assert meta["extra"]["distillation"] == "self_kd"
    lines = [json.loads(x) for x in (result.run_dir / "metrics.jsonl").read_text().splitlines()]
    steps = [x for x in lines if x["kind"] == "train"]
    assert len(steps) == 2 and all(np.isfinite(x["loss"]) and x["inst"] > 0 for x in steps)


def test_architecture_facts_read_from_release_shapes_name_each_override():
    from vireid.convert.source import architecture_facts, config_mismatches

    spec = get_source("agw")
    state = manifest_state("agw")
    facts = architecture_facts(rename_state(state, spec.mapping).tensors, spec, state)
    assert (facts.backbone, facts.width, facts.stems, facts.num_classes) == ("resnet50", 64, "per_modality", 395)
    assert facts.non_local == {"layer2": [2, 3], "layer3": [3, 4, 5]} and facts.nl_inter_channels == 1
    assert (facts.pooling, facts.gem_learnable, facts.gem_p, facts.last_stride) == ("gem", False, 3.0, 1)
    wrong = load_config(
        "baseline/regdb",
        ["model.stems=shared", "model.gem_learnable=true", "model.nl_layer3=[5]", "model.last_stride=2"],
    )
    overrides = [o for _, o in config_mismatches(facts, wrong)]
    assert get_source("caj").mapping == spec.mapping  # ICCV21_CAJ/model.py is the AGW model.py
    assert overrides == [
        "model.stems=per_modality",
        "model.nl_layer3=[3,4,5]",
        "model.gem_learnable=false",
        "model.last_stride=1",
        "data.dataset=sysu",
    ]
