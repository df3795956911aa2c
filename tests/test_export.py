"""ONNX export: one graph per modality, dynamic batch, onnxruntime outputs equal the FeatureExtractor's."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
from PIL import Image

from deploy_fixtures import register_toy_text_method, save_tiny_agw, save_tiny_text, write_pair_gallery
from vireid.cli import main
from vireid.data.image_io import load_image
from vireid.errors import ConfigError, MissingDependencyError, VireidError
from vireid.export import export_onnx, graph_paths
from vireid.inference import FeatureExtractor

pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning", "ignore::torch.jit.TracerWarning")


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory) -> Path:
    return save_tiny_agw(tmp_path_factory.mktemp("export") / "ckpt")


@pytest.fixture(scope="module")
def report(ckpt, tmp_path_factory):
    return export_onnx(ckpt, tmp_path_factory.mktemp("onnx") / "model.onnx")


@pytest.fixture(scope="module")
def images(tmp_path_factory) -> list[Path]:
    root = tmp_path_factory.mktemp("export_images")
    rng = np.random.default_rng(0)
    paths = []
    for i in range(7):
        paths.append(root / f"{i}.png")
        Image.fromarray(rng.integers(0, 256, size=(70 + i, 35, 3), dtype=np.uint8)).save(paths[-1])
    return paths


def run_onnx(path: Path, **inputs: torch.Tensor) -> np.ndarray:
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return session.run(["features"], {k: v.numpy() for k, v in inputs.items()})[0]


def test_one_graph_per_modality_with_parity_at_batch_1_and_7(report):
    assert [g.modality for g in report.graphs] == ["visible", "infrared"]
    assert [g.path.name for g in report.graphs] == ["model.visible.onnx", "model.infrared.onnx"]
    for graph in report.graphs:
        assert graph.path.is_file()
        assert set(graph.diffs) == {1, 7}
        assert graph.max_abs_diff < 1e-4


def test_onnx_features_equal_the_feature_extractor(report, ckpt, images):
    extractor = FeatureExtractor(ckpt)
    batch = torch.stack([extractor.transform(load_image(p)) for p in images])
    for graph, modality in zip(report.graphs, ("visible", "infrared")):
        expected = extractor(images, modality).numpy()
        assert np.abs(run_onnx(graph.path, images=batch) - expected).max() < 1e-4  # batch of 7
        assert np.abs(run_onnx(graph.path, images=batch[:1]) - expected[:1]).max() < 1e-4  # batch of 1
    # The two graphs really use different stems.
    assert (
        np.abs(run_onnx(report.graphs[0].path, images=batch) - run_onnx(report.graphs[1].path, images=batch)).max()
        > 1e-3
    )


def test_graph_has_a_dynamic_batch_axis_and_preprocessing_metadata(report):
    model = onnx.load(str(report.graphs[1].path))
    (images,) = model.graph.input
    dims = images.type.tensor_type.shape.dim
    assert images.name == "images" and dims[0].dim_param == "batch" and [d.dim_value for d in dims[1:]] == [3, 64, 32]
    assert model.graph.output[0].type.tensor_type.shape.dim[0].dim_param == "batch"
    meta = {p.key: p.value for p in model.metadata_props}
    assert meta["vireid.modality"] == "infrared" and meta["vireid.method"] == "baseline"
    pre = json.loads(meta["vireid.preprocessing"])
    assert (pre["height"], pre["width"], pre["interpolation"]) == (64, 32, "lanczos")
    np.testing.assert_allclose(pre["mean"], [0.485, 0.456, 0.406])


def test_metadata_is_enough_to_run_the_graph_without_vireid(report, ckpt, images):
    """The recipe of docs/deployment.md: PIL resize + scale + normalise from the metadata, then onnxruntime."""
    path = report.graphs[1].path
    pre = json.loads({p.key: p.value for p in onnx.load(str(path)).metadata_props}["vireid.preprocessing"])
    resample = getattr(Image.Resampling, pre["interpolation"].upper())
    img = Image.open(images[3]).convert("RGB").resize((pre["width"], pre["height"]), resample)
    x = (np.asarray(img, dtype=np.float32) / 255 - pre["mean"]) / pre["std"]
    got = run_onnx(path, images=torch.from_numpy(x.transpose(2, 0, 1)[None].astype(np.float32)))
    assert np.abs(got - FeatureExtractor(ckpt)(images[3], "infrared").numpy()).max() < 1e-4


def test_graph_paths_name_one_file_per_modality(tmp_path):
    assert graph_paths(tmp_path / "m.onnx", ["visible"]) == {"visible": tmp_path / "m.visible.onnx"}
    assert graph_paths(tmp_path / "m", ["pair"]) == {"pair": tmp_path / "m.pair.onnx"}


def test_missing_onnx_extra_is_a_clear_error(monkeypatch, ckpt, tmp_path):
    monkeypatch.setitem(sys.modules, "onnx", None)  # makes `import onnx` fail
    with pytest.raises(MissingDependencyError, match=r"ONNX export needs the optional package 'onnx'.*vireid\[onnx\]"):
        export_onnx(ckpt, tmp_path / "m.onnx")
    monkeypatch.delitem(sys.modules, "onnx")
    monkeypatch.setitem(sys.modules, "onnxruntime", None)
    with pytest.raises(MissingDependencyError, match="parity check needs the optional package 'onnxruntime'"):
        export_onnx(ckpt, tmp_path / "m.onnx")


def test_cli_exports_one_modality_and_a_failed_parity_check_raises(ckpt, tmp_path, capsys):
    assert main(["export", str(ckpt), "--onnx", str(tmp_path / "cli.onnx"), "--modality", "infrared"]) == 0
    assert sorted(p.name for p in tmp_path.iterdir()) == ["cli.infrared.onnx"]
    assert "cli.infrared.onnx" in capsys.readouterr().out
    with pytest.raises(VireidError, match="ONNX parity check failed"):
        export_onnx(ckpt, tmp_path / "strict.onnx", modalities=["visible"], batch_sizes=(1,), atol=-1.0)


def test_text_checkpoint_exports_its_pair_side(monkeypatch, tmp_path):
    register_toy_text_method(monkeypatch)
    ckpt = save_tiny_text(tmp_path / "text")
    report = export_onnx(ckpt, tmp_path / "text.onnx")
    (graph,) = report.graphs
    assert graph.path.name == "text.pair.onnx" and graph.input_names == ["rgb", "thermal"]
    assert graph.max_abs_diff < 1e-4 and any("text side not exported" in n for n in report.notes)
    names = write_pair_gallery(tmp_path / "pairs", pids=(1,), per_id=1)
    extractor = FeatureExtractor(ckpt)
    rgb_path, t_path = tmp_path / "pairs" / "RGB" / names[0], tmp_path / "pairs" / "T" / names[0]
    rgb, thermal = extractor.transform(load_image(rgb_path), load_image(t_path))
    got = run_onnx(graph.path, rgb=rgb[None], thermal=thermal[None])
    assert np.abs(got - extractor((rgb_path, t_path), "pair").numpy()).max() < 1e-5
    with pytest.raises(ConfigError, match="text encoder of a text checkpoint is not exported"):
        export_onnx(ckpt, tmp_path / "t2.onnx", modalities=["text"])
