"""One precision for evaluation and deployment: ``vireid test``, ``index``, ``search`` and ``FeatureExtractor``.

A gallery indexed for deployment must hold the features that ``vireid test`` scored; these tests compare the
two paths on the same checkpoint and images, and check that every entry point defaults to fp32 with the same
``--amp`` flag.
"""

from __future__ import annotations

import inspect
from pathlib import Path

import pytest
import torch

import vireid.evaluation.runner as runner
from deploy_fixtures import save_tiny_agw, write_gallery
from vireid.cli import build_parser
from vireid.devices import AMP_CHOICES, resolve_amp_dtype
from vireid.engine.testing import test_checkpoint as run_vireid_test
from vireid.index import GalleryIndex, build_index
from vireid.inference import FeatureExtractor
from vireid.search import build_index_cli, search_cli

TEST_IDS = (1, 2, 3, 4)


@pytest.fixture(scope="module")
def sysu_like(tmp_path_factory) -> Path:
    """A SYSU-MM01 layout whose images differ per identity and image (block patterns plus noise)."""
    root = tmp_path_factory.mktemp("sysu_precision")
    for cam in range(1, 7):  # every listed identity has its folders (an id without one is a DataError)
        write_gallery(root, pids=(5, 6, *TEST_IDS), per_id=2, cam=cam)
    (root / "exp").mkdir()
    for name, ids in (("train", (5,)), ("val", (6,)), ("test", TEST_IDS)):
        (root / "exp" / f"{name}_id.txt").write_text(",".join(map(str, ids)) + "\n")
    return root


def features_scored_by_vireid_test(monkeypatch, checkpoint: Path, root: Path, out: Path) -> dict[tuple, torch.Tensor]:
    """(absolute path, modality) -> the feature row ``vireid test`` scored for that image."""
    seen: dict[tuple, torch.Tensor] = {}
    original = runner._score_trial

    def spy(trial, feats, index, *args, **kwargs):
        for key, row in index["image"].items():
            seen[key] = feats["image"][row].clone()
        return original(trial, feats, index, *args, **kwargs)

    monkeypatch.setattr(runner, "_score_trial", spy)
    with pytest.warns(Warning):  # the tiny layout's counts differ from the published ones
        run_vireid_test(checkpoint, root=str(root), protocols=["sysu.all.single.random"], trials=1, out=out)
    assert seen, "vireid test scored no image"
    return seen


def test_index_features_equal_the_features_vireid_test_scores(monkeypatch, tmp_path, sysu_like):
    checkpoint = save_tiny_agw(tmp_path / "ckpt", flip=True)  # flip TTA on: both paths must apply it alike
    scored = features_scored_by_vireid_test(monkeypatch, checkpoint, sysu_like, tmp_path / "test")
    compared = 0
    for cam, modality_name, modality in ((1, "visible", 0), (3, "infrared", 1)):
        index = build_index(checkpoint, sysu_like / f"cam{cam}", tmp_path / f"cam{cam}.vidx", modality=modality_name)
        features = torch.as_tensor(GalleryIndex.open(index.folder).features)
        for row, rel in enumerate(index.meta.paths):
            key = (str(Path(sysu_like / f"cam{cam}" / rel)), modality)
            if key in scored:
                torch.testing.assert_close(features[row], scored[key], rtol=0, atol=1e-6)
                compared += 1
    # Every cam3 image of the test ids is a query; cam1 gives one gallery image per identity.
    assert compared == len(TEST_IDS) * 2 + len(TEST_IDS)


def _default(function, name: str):
    return inspect.signature(function).parameters[name].default


def test_every_extraction_path_defaults_to_fp32():
    defaults = {
        "FeatureExtractor": _default(FeatureExtractor.__init__, "amp"),
        "build_index": _default(build_index, "amp"),
        "build_index_cli": _default(build_index_cli, "amp"),
        "search_cli": _default(search_cli, "amp"),
        "run_protocol": _default(runner.run_protocol, "amp"),
        "test_checkpoint": _default(run_vireid_test, "amp"),
    }
    assert set(defaults.values()) == {"none"}, defaults
    # "none" is fp32 even on a GPU (where "auto" would pick bf16 or fp16).
    assert resolve_amp_dtype("none", torch.device("cuda")) is None


@pytest.mark.parametrize(
    "argv",
    [
        ["test", "CKPT"],
        ["index", "CKPT", "--images", "D", "-o", "O"],
        ["search", "IDX", "--query", "q.png"],
    ],
)
def test_commands_share_one_amp_flag_defaulting_to_fp32(argv):
    parser = build_parser()
    assert parser.parse_args(argv).amp == "none"
    assert parser.parse_args([*argv, "--amp", "bf16"]).amp == "bf16"
    sub = parser._subparsers._group_actions[0].choices[argv[0]]  # the sub-command's own parser
    (amp,) = [a for a in sub._actions if a.dest == "amp"]
    assert tuple(amp.choices) == AMP_CHOICES


def test_extraction_under_amp_on_the_cpu_stays_fp32(tmp_path, sysu_like):
    """``--amp`` only autocasts on the GPU: on the CPU every choice gives the fp32 features."""
    checkpoint = save_tiny_agw(tmp_path / "ckpt")
    images = sorted((sysu_like / "cam1").rglob("*.png"))[:3]
    reference = FeatureExtractor(checkpoint, device="cpu")(images, "visible")
    for amp in AMP_CHOICES:
        torch.testing.assert_close(
            FeatureExtractor(checkpoint, device="cpu", amp=amp)(images, "visible"), reference, rtol=0, atol=0
        )
