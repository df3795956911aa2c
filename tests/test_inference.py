"""FeatureExtractor: every input type gives the same features, which equal a direct forward pass."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from deploy_fixtures import identity_pattern, noisy, register_toy_text_method, save_tiny_agw, save_tiny_text
from vireid.data.image_io import load_image
from vireid.errors import CheckpointError, ConfigError, DataError
from vireid.inference import FeatureExtractor, resolve_amp_dtype


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory) -> Path:
    return save_tiny_agw(tmp_path_factory.mktemp("inference") / "ckpt")


@pytest.fixture(scope="module")
def extractor(ckpt) -> FeatureExtractor:
    return FeatureExtractor(ckpt, batch_size=4)


@pytest.fixture(scope="module")
def image_paths(tmp_path_factory) -> list[Path]:
    root = tmp_path_factory.mktemp("images")
    paths = []
    for i in range(5):
        # Not the model's input size, so that the test transform really resizes.
        img = Image.fromarray(noisy(identity_pattern(i), seed=i)).resize((40, 90))
        paths.append(root / f"{i}.png")
        img.save(paths[-1])
    return paths


def direct_features(extractor: FeatureExtractor, paths, modality: int, flip: bool = False) -> torch.Tensor:
    """Reference: test transform -> model.extract (BNNeck feature) -> L2 normalise; with flip, the protocol
    runner's l2(l2(h(x)) + l2(h(mirrored x)))."""
    x = torch.stack([extractor.transform(load_image(p)) for p in paths])
    with torch.no_grad():
        f = F.normalize(extractor.model.extract(x, modality, feature="bn"), dim=1)
        if flip:
            mirrored = torch.stack(
                [extractor.transform(load_image(p).transpose(Image.Transpose.FLIP_LEFT_RIGHT)) for p in paths]
            )
            f = F.normalize(f + F.normalize(extractor.model.extract(mirrored, modality, feature="bn"), dim=1), dim=1)
    return f


def test_features_equal_a_direct_forward(extractor, image_paths):
    feats = extractor(image_paths, "infrared")
    assert feats.shape == (5, extractor.model.feature_dim)
    assert feats.dtype == torch.float32 and feats.device.type == "cpu"
    torch.testing.assert_close(feats.norm(dim=1), torch.ones(5))
    torch.testing.assert_close(feats, direct_features(extractor, image_paths, 1), atol=1e-5, rtol=0)


def test_every_input_type_gives_identical_features(extractor, image_paths):
    path = image_paths[2]
    pil = Image.open(path)
    array = np.array(pil.convert("RGB"))
    uint8_tensor = torch.from_numpy(array).permute(2, 0, 1).contiguous()
    preprocessed = extractor.transform(load_image(path))
    reference = extractor(path, "visible")
    for item in (str(path), pil, array, uint8_tensor, preprocessed, [path], (array,)):
        torch.testing.assert_close(extractor(item, "visible"), reference, atol=1e-6, rtol=0)
    # A mixed list and 4-D batches keep order and values.
    mixed = extractor([image_paths[0], pil, uint8_tensor], "visible")
    torch.testing.assert_close(mixed[1:], reference.expand(2, -1), atol=1e-6, rtol=0)
    batch = torch.stack([uint8_tensor, uint8_tensor])
    torch.testing.assert_close(extractor(batch, "visible"), reference.expand(2, -1), atol=1e-6, rtol=0)
    torch.testing.assert_close(
        extractor(np.stack([array, array]), "visible"), reference.expand(2, -1), atol=1e-6, rtol=0
    )


def test_grayscale_array_is_replicated_to_rgb(extractor, image_paths):
    gray = np.asarray(Image.open(image_paths[0]).convert("L"))
    as_rgb = Image.fromarray(gray).convert("RGB")
    torch.testing.assert_close(extractor(gray, "infrared"), extractor(as_rgb, "infrared"), atol=1e-6, rtol=0)


def test_batch_size_does_not_change_features(ckpt, extractor, image_paths):
    one_by_one = FeatureExtractor(ckpt, batch_size=1)(image_paths, "visible")
    torch.testing.assert_close(one_by_one, extractor(image_paths, "visible"), atol=1e-5, rtol=0)
    streamed = torch.cat(list(extractor.iter_paths(image_paths, "visible")))
    torch.testing.assert_close(streamed, one_by_one, atol=1e-5, rtol=0)


def test_modality_selects_the_stem(extractor, image_paths):
    visible = extractor(image_paths, "rgb")
    infrared = extractor(image_paths, "thermal")
    assert (visible - infrared).abs().max() > 1e-3
    torch.testing.assert_close(visible, direct_features(extractor, image_paths, 0), atol=1e-5, rtol=0)


def test_flip_adds_the_mirrored_image(ckpt, image_paths):
    flipped = FeatureExtractor(ckpt, flip=True)
    feats = flipped(image_paths, "visible")
    torch.testing.assert_close(feats, direct_features(flipped, image_paths, 0, flip=True), atol=1e-5, rtol=0)
    assert (feats - direct_features(flipped, image_paths, 0)).abs().max() > 1e-4


@pytest.mark.parametrize(
    ("make_input", "modality", "error", "message"),
    [
        (lambda p: p.parent / "missing.png", "visible", DataError, "missing.png does not exist"),
        (lambda p: p.parent / "broken.png", "visible", DataError, "broken.png is not a readable image"),
        (lambda p: np.zeros((64, 32, 3), dtype=np.float32), "visible", DataError, "uint8"),
        (lambda p: torch.zeros(3, 10, 10), "visible", DataError, r"must be \(3, 64, 32\)"),
        (lambda p: torch.zeros(3, 10, 10, dtype=torch.int32), "visible", DataError, "uint8"),
        (lambda p: 42, "visible", DataError, "int"),
        (lambda p: [], "visible", DataError, "no images"),
        (lambda p: p, "depth", ConfigError, "modality='depth'"),
        (lambda p: "a man in a red coat", "text", ConfigError, "image .*model; it cannot embed texts"),
        (lambda p: (p, p), "pair", ConfigError, "cannot embed RGB\\+thermal pairs"),
    ],
)
def test_bad_inputs_raise_clear_errors(extractor, image_paths, make_input, modality, error, message):
    (image_paths[0].parent / "broken.png").write_text("not an image")
    with pytest.raises(error, match=message):
        extractor(make_input(image_paths[0]), modality)


def test_missing_checkpoint_is_a_checkpoint_error(tmp_path):
    with pytest.raises(CheckpointError, match="does not exist"):
        FeatureExtractor(tmp_path / "no-such-run")


def test_text_checkpoint_embeds_texts_and_pairs(monkeypatch, tmp_path, image_paths):
    register_toy_text_method(monkeypatch)
    extractor = FeatureExtractor(save_tiny_text(tmp_path / "text"))
    assert extractor.modalities == ("text", "pair")
    texts = ["a woman in a red coat", "a man with a backpack"]
    feats = extractor(texts, "text")
    expected = F.normalize(extractor.embedder.embed_texts(texts), dim=1)
    torch.testing.assert_close(feats, expected)
    pair = (image_paths[0], image_paths[1])
    rgb, thermal = extractor.transform(load_image(pair[0]), load_image(pair[1]))
    expected_pair = F.normalize(extractor.embedder.embed_pairs(rgb[None], thermal[None]), dim=1)
    torch.testing.assert_close(extractor(pair, "pair"), expected_pair, atol=1e-6, rtol=0)
    torch.testing.assert_close(extractor([pair, pair], "rgbt")[1:], expected_pair, atol=1e-6, rtol=0)
    with pytest.raises(ConfigError, match="text -> RGB\\+thermal model"):
        extractor(image_paths[0], "infrared")
    with pytest.raises(DataError, match="non-empty description"):
        extractor(["  "], "text")


def test_amp_dtype_follows_the_device():
    assert resolve_amp_dtype("auto", torch.device("cpu")) is None
    assert resolve_amp_dtype("fp16", torch.device("cpu")) is None  # autocast is for the GPU only
    assert resolve_amp_dtype("bf16", torch.device("cuda")) is torch.bfloat16
    assert resolve_amp_dtype("fp16", torch.device("cuda")) is torch.float16
    assert resolve_amp_dtype("none", torch.device("cuda")) is None
    with pytest.raises(ConfigError, match="amp='fp8'"):
        resolve_amp_dtype("fp8", torch.device("cpu"))
