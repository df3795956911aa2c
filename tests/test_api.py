"""The public Python API (``vireid.create_model``/``load``/``list_*``/``register_method``) and method plugins."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

import vireid
import vireid.methods.registry as registry
from deploy_fixtures import HEIGHT, NUM_CLASSES, WIDTH, identity_pattern, save_tiny_agw
from layout_builders import build_sysu
from vireid.config import load_config, read_yaml
from vireid.engine.checkpoint import load_checkpoint
from vireid.errors import CheckpointError, ConfigError

TESTS = Path(__file__).resolve().parent
SRC = TESTS.parent / "src"
TINY_AGW = {"backbone": "resnet18", "width": 8, "nl_layer2": [1], "nl_layer3": [0, 1]}


@pytest.fixture
def scoped_registry(monkeypatch) -> registry.MethodRegistry:
    """A copy of the method registry; whatever a test registers in it is gone afterwards."""
    scoped = registry.REGISTRY.copy()
    monkeypatch.setattr(registry, "REGISTRY", scoped)
    return scoped


@pytest.fixture(scope="module")
def sysu_root(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("sysu")
    ids = list(range(1, 11))
    return build_sysu(root, {(cam, pid): 3 for pid in ids for cam in range(1, 7)}, ids[:6], ids[6:8], ids[8:])


def tiny_run_yaml(path: Path, method: str, root: Path, out: Path) -> Path:
    cfg = {
        "method": method,
        "data": {"dataset": "sysu", "root": str(root), "height": 32, "width": 16, "workers": 0},
        "sampler": {"P": 4, "K": 2},
        "train": {"epochs": 1, "iters_per_epoch": 3, "progress": False, "log_every": 1, "out_dir": str(out)},
        "eval": {"selection": "last"},
        "optim": {"lr": 0.05},
    }
    path.write_text(yaml.safe_dump(cfg))
    return path


# ------------------------------------------------------------------------------------------- package top


def test_import_is_lazy_and_api_names_resolve():
    code = "import sys, vireid\nassert 'torch' not in sys.modules\nassert 'create_model' in dir(vireid)\n"
    out = subprocess.run(
        [sys.executable, "-c", code], env={**os.environ, "PYTHONPATH": str(SRC)}, capture_output=True, text=True
    )
    assert out.returncode == 0, out.stderr
    for name in ("create_model", "load", "list_configs", "list_methods", "register_method", "FeatureExtractor"):
        assert callable(getattr(vireid, name)), name
    assert vireid.list_methods() == ["baseline", "dakd", "dikdnet", "idkl", "mce"]
    with pytest.raises(AttributeError, match="no attribute 'nosuch'"):
        vireid.nosuch  # noqa: B018


def test_every_listed_config_is_a_usable_preset():
    presets = vireid.list_configs()
    assert {"baseline/sysu", "idkl/regdb", "dakd/sysu", "dikdnet/rgbt_pedes"} <= set(presets)
    for name in presets:  # each resolves by name and names a known method (building them all is slow)
        assert read_yaml(name).get("method", "baseline") in vireid.list_methods(), name
    assert load_config("idkl/regdb").method == "idkl"


# ----------------------------------------------------------------------------------------- create_model


def test_create_model_applies_overrides_and_reads_no_files():
    model = vireid.create_model("baseline", num_classes=7, model=TINY_AGW, model__last_stride=2)
    assert model.classifier.out_features == 7
    assert model.layer1[0].conv1.in_channels == 8  # model.width=8 reached the network
    assert model.layer4[0].conv1.stride == (2, 2)  # the dotted keyword model__last_stride=2 reached it too
    with torch.no_grad():
        features = model.eval().extract(torch.randn(2, 3, HEIGHT, WIDTH), 1)
    assert features.shape == (2, model.feature_dim)
    # The packaged preset asks for ImageNet weights, which this machine lacks: pretrained=None reads none.
    assert vireid.create_model("baseline/sysu", num_classes=3, model=TINY_AGW) is not None


def test_create_model_rejects_unknown_keys_and_methods():
    with pytest.raises(ConfigError, match=r"model\.widht.*model\.width"):
        vireid.create_model("baseline", num_classes=2, model={"widht": 8})
    with pytest.raises(ConfigError, match=r"unknown method 'basline'.*Did you mean 'baseline'"):
        vireid.create_model({"method": "basline"}, num_classes=2)


def test_create_model_from_checkpoint_copies_matching_weights(tmp_path):
    ckpt = save_tiny_agw(tmp_path / "ckpt")
    stored = load_checkpoint(ckpt).state_dict
    model = vireid.create_model("baseline", num_classes=NUM_CLASSES + 3, model=TINY_AGW, pretrained=ckpt)
    own = model.state_dict()
    assert own["classifier.weight"].shape[0] == NUM_CLASSES + 3  # a new classifier, left fresh
    copied = [k for k in stored if not k.startswith("classifier.")]
    assert copied and all(torch.equal(own[k], stored[k]) for k in copied)
    fresh = vireid.create_model("baseline", num_classes=NUM_CLASSES, model=TINY_AGW)
    assert not torch.equal(fresh.state_dict()["layer1.0.conv1.weight"], stored["layer1.0.conv1.weight"])


def test_create_model_with_a_weight_file_starts_the_backbone_from_it(tmp_path):
    from vireid.models.resnet import ResNetBackbone

    torch.manual_seed(3)
    weights = tmp_path / "resnet18_w8.pth"
    torch.save(ResNetBackbone("resnet18", width=8).state_dict(), weights)
    stored = torch.load(weights, weights_only=True)
    model = vireid.create_model("baseline", num_classes=3, model=TINY_AGW, pretrained=weights)
    assert model.load_report.loaded == len(stored) and not model.load_report.surprising
    torch.testing.assert_close(model.state_dict()["layer3.1.conv2.weight"], stored["layer3.1.conv2.weight"])
    with pytest.raises(CheckpointError, match="does not exist"):
        vireid.create_model("baseline", num_classes=3, model=TINY_AGW, pretrained=tmp_path / "missing.pth")


# ------------------------------------------------------------------------------------------------- load


def test_load_gives_model_config_and_the_transform_that_test_uses(tmp_path):
    from PIL import Image

    from vireid.inference import FeatureExtractor

    ckpt = save_tiny_agw(tmp_path / "ckpt")
    run = vireid.load(ckpt, device="cpu")
    assert run.config.method == "baseline" and run.meta["num_classes"] == NUM_CLASSES
    assert not run.model.training and run.device.type == "cpu"
    image = Image.fromarray(identity_pattern(2))
    with torch.no_grad():
        mine = torch.nn.functional.normalize(run.model.extract(run.transform(image)[None], 1), dim=1)
    reference = FeatureExtractor(ckpt, device="cpu", amp="none")(np.asarray(image), "infrared")
    torch.testing.assert_close(mine, reference, rtol=0, atol=1e-6)


def test_load_on_a_missing_device_is_one_clear_error(tmp_path):
    ckpt = save_tiny_agw(tmp_path / "ckpt")
    bad = "cuda:7" if torch.cuda.is_available() else "cuda"
    with pytest.raises(ConfigError, match=rf"device '{bad}' is not available.*use one of: cpu"):
        vireid.load(ckpt, device=bad)
    with pytest.raises(ConfigError, match="'gpu0' is not a device name"):
        vireid.load(ckpt, device="gpu0")


# --------------------------------------------------------------------------------------------- registry


def test_register_method_checks_the_contract_and_names(scoped_registry):
    from tiny_method import TinyMethod

    with pytest.raises(ConfigError, match="'baseline' already exists"):
        vireid.register_method("baseline", TinyMethod)

    class NoConfig:
        def build_model(self, cfg, num_classes):
            return torch.nn.Linear(1, 1)

    with pytest.raises(ConfigError, match="lacks config_class"):
        vireid.register_method("broken", NoConfig)
    registered = vireid.register_method("tiny", TinyMethod)  # a class is instantiated
    assert isinstance(registered, TinyMethod) and "tiny" in vireid.list_methods()
    assert registry.REGISTRY.source("tiny") == "registered"


def test_registered_method_is_trained_by_vireid_train_and_loaded_back(scoped_registry, sysu_root, tmp_path):
    from tiny_method import METHOD
    from vireid.cli import main

    vireid.register_method("tinyreg", METHOD)
    config = tiny_run_yaml(tmp_path / "tiny.yaml", "tinyreg", sysu_root, tmp_path / "runs")
    initial = vireid.create_model(str(config), num_classes=6)
    assert main(["train", str(config), "train.name=r", "--device", "cpu"]) == 0

    run_dir = tmp_path / "runs" / "r"
    steps = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    losses = [s["loss"] for s in steps if s["kind"] == "train"]
    assert len(losses) == 3 and all(np.isfinite(losses))
    run = vireid.load(run_dir, device="cpu")
    assert run.meta["method"] == "tinyreg" and type(run.model).__name__ == "TinyNet"
    trained = run.model.state_dict()["stems.0.weight"]
    assert not torch.equal(trained, initial.state_dict()["stems.0.weight"].to(trained.dtype))


def test_a_method_without_training_hooks_is_refused_before_training(scoped_registry, sysu_root, tmp_path):
    from toy_text_method import METHOD
    from vireid.engine.trainer import Trainer

    vireid.register_method("toytext", METHOD)
    cfg = load_config(tiny_run_yaml(tmp_path / "t.yaml", "toytext", sysu_root, tmp_path / "runs"))
    with pytest.raises(ConfigError, match="'toytext' cannot be trained: it lacks build_train_loader, forward, loss"):
        Trainer(cfg)


# ---------------------------------------------------------------------------------------------- plugins


def write_fake_distribution(site: Path, entry: str) -> Path:
    """An installed distribution ``vireid-tiny-plugin`` declaring ``entry`` in the group ``vireid.methods``
    (the files pip writes for a package with ``[project.entry-points."vireid.methods"]``)."""
    info = site / "vireid_tiny_plugin-0.1.dist-info"
    info.mkdir(parents=True)
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: vireid-tiny-plugin\nVersion: 0.1\n")
    (info / "entry_points.txt").write_text(f"[vireid.methods]\n{entry}\n")
    return site


def test_entry_point_plugin_is_listed_loaded_and_trained_by_the_cli(sysu_root, tmp_path, monkeypatch):
    from vireid.cli import main

    site = write_fake_distribution(tmp_path / "site", "tinyplug = tiny_method:TinyMethod")
    monkeypatch.syspath_prepend(str(site))
    # A fresh registry reads the entry points of the installed distributions, as a new process does.
    monkeypatch.setattr(registry, "REGISTRY", registry.MethodRegistry())
    assert "tinyplug" in vireid.list_methods()
    assert registry.REGISTRY.source("tinyplug") == "plugin vireid-tiny-plugin"

    # No registration call: `vireid train` finds the method through its entry point.
    config = tiny_run_yaml(tmp_path / "plug.yaml", "tinyplug", sysu_root, tmp_path / "runs")
    assert main(["train", str(config), "train.name=p", "--device", "cpu"]) == 0
    meta = json.loads((tmp_path / "runs" / "p" / "checkpoints" / "best" / "meta.json").read_text())
    assert meta["method"] == "tinyplug" and meta["global_step"] == 3


def test_broken_plugin_names_its_entry_point(tmp_path, monkeypatch):
    site = write_fake_distribution(tmp_path / "site", "ghost = no_such_module_xyz:METHOD")
    monkeypatch.syspath_prepend(str(site))
    plugins = registry.MethodRegistry()
    with pytest.raises(ConfigError, match=r"entry point 'ghost = no_such_module_xyz:METHOD'.*cannot be imported"):
        plugins.get("ghost")


# ------------------------------------------------------------------------------------------------ --device


@pytest.mark.parametrize(
    "argv",
    [
        ["train", "baseline/sysu", "data.root=/nowhere"],
        ["test", "/nowhere/ckpt"],
        ["index", "/nowhere/ckpt", "--images", "/nowhere", "-o", "/nowhere/x"],
        ["search", "/nowhere/index", "--query", "q.png"],
        ["export", "/nowhere/ckpt", "--onnx", "/nowhere/m.onnx"],
    ],
)
def test_every_command_refuses_an_unavailable_device_in_one_line(argv, capsys):
    from vireid.cli import main

    missing = f"cuda:{torch.cuda.device_count()}"  # one past the last GPU (cuda:0 on a CPU-only machine)
    assert main([*argv, "--device", missing]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0, err
    assert err.startswith(f"vireid {argv[0]}: error: device '{missing}' is not available")
    assert "use one of: cpu" in err


def test_declared_torch_range_admits_the_current_release_and_the_tested_one():
    import tomllib

    from packaging.requirements import Requirement

    project = tomllib.loads((TESTS.parent / "pyproject.toml").read_text())["project"]
    requirements = {r.name: r.specifier for r in map(Requirement, project["dependencies"])}
    assert "2.15.0" in requirements["torch"] and "2.14.1" in requirements["torch"]
    assert "2.4.1" not in requirements["torch"]  # torch.onnx.export(dynamo=...) needs 2.5
    assert torch.__version__.split("+")[0] in requirements["torch"]
    assert "0.30.0" in requirements["torchvision"] and "0.20.0" in requirements["torchvision"]
