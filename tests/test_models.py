"""Model blocks and the AGW network: build -> train step -> extract -> trace -> ONNX, plus unit behaviour."""

from __future__ import annotations

import io
import logging
import math
import warnings
from dataclasses import replace

import pytest
import torch
from torch import nn

from vireid.config import ModelConfig
from vireid.errors import CheckpointError, ConfigError, DataError, WeightsNotFoundError
from vireid.losses import cross_entropy_ls, weighted_regularized_triplet
from vireid.models.agw import AGWNet, ExtractWrapper
from vireid.models.complexity import count_flops, count_parameters, gradient_coverage, model_complexity
from vireid.models.heads import BNNeck, IdentityClassifier
from vireid.models.non_local import NonLocalBlock, resolve_inter_channels
from vireid.models.outputs import ReIDOutput
from vireid.models.pooling import GeM, build_pooling
from vireid.models.resnet import ResNetBackbone, build_backbone, load_backbone_weights

pytestmark = pytest.mark.filterwarnings("ignore::FutureWarning", "ignore::DeprecationWarning")

TINY = ModelConfig(backbone="resnet18", pretrained="none", width=16, nl_layer2=[1], nl_layer3=[0, 1])
"""ResNet-18 at width 16 (feature_dim 128): the whole matrix runs in a few seconds on a CPU."""

NUM_IDS = 6
LABELS = torch.tensor([0, 0, 1, 1, 2, 2, 3, 3])
MODALITY = torch.tensor([1, 0, 0, 1, 1, 0, 1, 0])  # mixed, not grouped: exercises per-row routing


def tiny(**overrides) -> ModelConfig:
    return replace(TINY, **overrides)


MATRIX = {
    "two_stems_nonlocal_gem": tiny(),
    "shared_stem_plain_avg": tiny(stems="shared", non_local=False, pooling="avg"),
    "shared_stem_nonlocal_half_learnable_p": tiny(stems="shared", nl_inter_channels="half", gem_learnable=True),
    "two_stems_learnable_p_stride2": tiny(non_local=False, gem_learnable=True, last_stride=2),
}

# Parameters allowed a zero gradient in a training step, and why: the bias of the non-local output conv
# feeds a BatchNorm in training mode, which subtracts every per-channel constant, so its gradient is 0 in
# exact arithmetic (round-off leaves ~1e-9).
ZERO_GRAD_ALLOWED = (".out_conv.bias",)


def _train_loss(model: AGWNet, images: torch.Tensor) -> torch.Tensor:
    out = model(images, MODALITY)
    return cross_entropy_ls(out.logits, LABELS) + weighted_regularized_triplet(out.pooled, LABELS)


@pytest.mark.parametrize("name", list(MATRIX))
def test_model_contract_matrix(name):
    onnxruntime = pytest.importorskip("onnxruntime")
    pytest.importorskip("onnx")
    torch.manual_seed(0)
    cfg = MATRIX[name]
    model = AGWNet(cfg, NUM_IDS)
    # Non-local blocks start as the identity and their inner convolutions get no gradient until the output
    # BN's gamma moves; open them so that the check below covers every non-local parameter too.
    for module in model.modules():
        if isinstance(module, NonLocalBlock):
            nn.init.constant_(module.out_bn.weight, 0.5)

    images = torch.randn(8, 3, 64, 32)
    model.train()
    out = model(images, MODALITY)
    assert isinstance(out, ReIDOutput)
    assert out.pooled.shape == out.bn.shape == (8, model.feature_dim)
    assert out.logits.shape == (8, NUM_IDS)

    coverage = gradient_coverage(model, lambda: _train_loss(model, images))
    assert coverage.no_grad == [] and coverage.non_finite == []
    assert [n for n in coverage.zero_grad if not n.endswith(ZERO_GRAD_ALLOWED)] == []
    assert model.bnneck.bias.grad is None  # frozen

    model.eval()
    calls = []
    model.classifier.register_forward_hook(lambda *_: calls.append(1))
    for batch in (1, 7):
        emb = model.extract(images[:batch], MODALITY[:batch])
        assert emb.shape == (batch, model.feature_dim)
        assert torch.isfinite(emb).all()
    assert model.extract(images[:3], MODALITY[:3], feature="pooled").shape == (3, model.feature_dim)
    assert calls == [], "extract must not run the classifier"

    modality = 1
    wrapper = ExtractWrapper(model, modality).eval()
    with torch.no_grad():
        traced = torch.jit.trace(wrapper, images[:2])
        for batch in (1, 7):
            torch.testing.assert_close(traced(images[:batch]), wrapper(images[:batch]), rtol=1e-5, atol=1e-5)

    buffer = io.BytesIO()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(
            wrapper,
            (images[:2],),
            buffer,
            dynamo=False,
            input_names=["images"],
            output_names=["embedding"],
            dynamic_axes={"images": {0: "batch"}, "embedding": {0: "batch"}},
            opset_version=17,
        )
    session = onnxruntime.InferenceSession(buffer.getvalue(), providers=["CPUExecutionProvider"])
    for batch in (1, 7):
        (onnx_out,) = session.run(None, {"images": images[:batch].numpy()})
        with torch.no_grad():
            expected = wrapper(images[:batch]).numpy()
        assert onnx_out.shape == (batch, model.feature_dim)
        assert abs(onnx_out - expected).max() < 1e-4


def test_last_stride_one_gives_18x9_for_resnet50():
    with torch.device("meta"):
        model = AGWNet(ModelConfig(pretrained="none"), 10)
        fmap = model.forward_features(torch.empty(2, 3, 288, 144), 0)
        assert fmap.shape == (2, 2048, 18, 9)
        assert model.feature_dim == 2048
        model2 = AGWNet(ModelConfig(pretrained="none", last_stride=2, non_local=False), 10)
        assert model2.forward_features(torch.empty(1, 3, 288, 144), 0).shape == (1, 2048, 9, 5)
    first = model.layer4[0]
    assert first.conv2.stride == (1, 1) and first.downsample[0].stride == (1, 1)
    assert first.conv2.dilation == (1, 1)
    assert model.layer2.non_local_indices == [2, 3] and model.layer3.non_local_indices == [3, 4, 5]
    assert model.layer1.non_local_indices == [] and model.layer4.non_local_indices == []


def test_backbone_has_torchvision_parameter_names_and_no_head():
    from torchvision.models import resnet50

    with torch.device("meta"):
        ours = ResNetBackbone("resnet50", non_local={})
        theirs = resnet50()
    own = {k.removeprefix("stem."): v.shape for k, v in ours.state_dict().items()}
    ref = {k: v.shape for k, v in theirs.state_dict().items() if not k.startswith("fc.")}
    assert own == ref
    assert not any(isinstance(m, nn.Linear | nn.AdaptiveAvgPool2d) for m in ours.modules())


def test_stems_are_copies_and_only_stems_differ():
    model = AGWNet(tiny(), NUM_IDS)
    vis, ir = model.stems.visible, model.stems.infrared
    assert vis is not ir
    for (n1, p1), (n2, p2) in zip(vis.named_parameters(), ir.named_parameters()):
        assert n1 == n2 and torch.equal(p1, p2) and p1.data_ptr() != p2.data_ptr()
    shared = AGWNet(tiny(stems="shared"), NUM_IDS)
    assert not hasattr(shared.stems, "visible")
    assert count_parameters(model).total - count_parameters(shared).total == count_parameters(vis).total


def test_per_row_routing_is_order_free_and_matches_split_stems():
    torch.manual_seed(1)
    model = AGWNet(tiny(non_local=False), NUM_IDS).train()
    images = torch.randn(8, 3, 64, 32)
    # Reference: the release's layout, visible rows through the visible stem, thermal through the thermal.
    vis, ir = (MODALITY == 0).nonzero().flatten(), (MODALITY == 1).nonzero().flatten()
    expected = torch.empty(8, 16, 16, 8)
    expected[vis] = model.stems.visible(images[vis])
    expected[ir] = model.stems.infrared(images[ir])
    torch.testing.assert_close(model.stems(images, MODALITY), expected)
    # Grouped (visible-first) input takes the no-gather path and agrees too.
    order = torch.cat([vis, ir])
    torch.testing.assert_close(model.stems(images[order], MODALITY[order]), expected[order])
    # The whole training forward commutes with any permutation of the rows (train-mode BN included).
    perm = torch.randperm(8)
    full = model(images, MODALITY)
    permuted = model(images[perm], MODALITY[perm])
    torch.testing.assert_close(permuted.pooled, full.pooled[perm], rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(permuted.logits, full.logits[perm], rtol=1e-4, atol=1e-6)
    # One-modality batches and an int modality use one stem directly.
    model.eval()
    torch.testing.assert_close(model.extract(images, torch.ones(8, dtype=torch.long)), model.extract(images, 1))


def test_routing_errors_are_clear():
    model = AGWNet(tiny(non_local=False), NUM_IDS)
    images = torch.randn(4, 3, 64, 32)
    with pytest.raises(DataError, match="no modality was given"):
        model(images, None)
    with pytest.raises(DataError, match=r"values \[2\]"):
        model(images, torch.tensor([0, 1, 2, 0]))
    with pytest.raises(DataError, match="shape"):
        model(images, torch.tensor([0, 1]))
    shared = AGWNet(tiny(non_local=False, stems="shared"), NUM_IDS).eval()
    assert shared.extract(images, None).shape == (4, 128)


def test_non_local_block_is_identity_at_init_and_matches_dense_formula():
    torch.manual_seed(2)
    block = NonLocalBlock(8, inter_channels=3)
    x = torch.randn(2, 8, 5, 4)
    assert torch.equal(block(x), x)
    assert torch.equal(block.eval()(x), x)
    # Once the output BN is open, compare with the written-out formula: f = theta^T phi / N, no softmax.
    nn.init.normal_(block.out_bn.weight)
    nn.init.normal_(block.out_bn.bias)
    block.eval()
    xd = x.double()
    b = block.double()
    n = 5 * 4
    expected = torch.empty_like(xd)
    for i in range(2):
        theta = b.theta(xd[i : i + 1]).reshape(3, n)
        phi = b.phi(xd[i : i + 1]).reshape(3, n)
        g = b.g(xd[i : i + 1]).reshape(3, n)
        f = theta.t() @ phi / n  # (N, N)
        y = (f @ g.t()).t().reshape(1, 3, 5, 4)
        expected[i] = xd[i] + b.out_bn(b.out_conv(y))[0]
    torch.testing.assert_close(b(xd), expected)


def test_non_local_does_not_change_the_network_at_init():
    torch.manual_seed(3)
    with_nl = AGWNet(tiny(), NUM_IDS).eval()
    without = AGWNet(tiny(non_local=False), NUM_IDS).eval()
    missing, unexpected = without.load_state_dict(with_nl.state_dict(), strict=False)
    assert missing == [] and all(".non_local." in k for k in unexpected)
    images = torch.randn(3, 3, 64, 32)
    torch.testing.assert_close(with_nl.extract(images, 0), without.extract(images, 0))
    # At init the non-local inner layers receive no gradient (documented), but their output BN does.
    with_nl.train()
    coverage = gradient_coverage(with_nl, lambda: _train_loss(with_nl, torch.randn(8, 3, 64, 32)))
    zero = set(coverage.zero_grad)
    for key in ("theta.weight", "phi.weight", "g.weight", "out_conv.weight"):
        assert f"layer2.non_local.1.{key}" in zero
    assert "layer2.non_local.1.out_bn.weight" not in zero


def test_non_local_config_validation():
    with pytest.raises(ConfigError, match=r"model.nl_layer2.*resnet18 layer2 has 2 blocks"):
        build_backbone(ModelConfig(backbone="resnet18", pretrained="none", width=16))  # default [2, 3]
    with pytest.raises(ConfigError, match="repeats"):
        build_backbone(tiny(nl_layer3=[1, 1]))
    assert resolve_inter_channels(1, 512) == 1
    assert resolve_inter_channels("half", 512) == 256
    assert resolve_inter_channels("7", 512) == 7
    with pytest.raises(ConfigError, match="nl_inter_channels"):
        resolve_inter_channels("quarter", 512)
    with pytest.raises(ConfigError, match="nl_inter_channels"):
        resolve_inter_channels(0, 512)
    half = ResNetBackbone("resnet18", width=16, non_local={"layer3": [1]}, nl_inter_channels="half")
    assert half.layer3.non_local["1"].inter_channels == 32
    with pytest.raises(ConfigError, match=r"model\.backbone"):
        build_backbone(tiny(backbone="resnet7"))
    with pytest.raises(ConfigError, match="last_stride"):
        build_backbone(tiny(last_stride=3))


def test_gem_golden_values():
    x = torch.tensor([1.0, 2.0, 3.0, 0.0]).reshape(1, 1, 2, 2)
    # (mean(1, 8, 27, 0))^(1/3) = 9^(1/3); the clamped zero contributes 1e-18.
    assert GeM(p=3.0)(x).item() == pytest.approx(9 ** (1 / 3), rel=1e-6)
    assert GeM(p=1.0)(x).item() == pytest.approx(1.5, rel=1e-6)
    assert GeM(p=3.0)(torch.zeros(2, 4, 3, 3)).flatten().tolist() == pytest.approx([1e-6] * 8, rel=1e-4)
    assert build_pooling("avg")(x).item() == pytest.approx(1.5)
    assert GeM()(torch.rand(1, 5, 3, 2)).shape == (1, 5)
    learn = GeM(p=3.0, learnable=True)
    assert isinstance(learn.p, nn.Parameter) and learn.p.item() == 3.0
    learn(torch.rand(2, 3, 4, 4) + 0.1).sum().backward()
    assert learn.p.grad is not None and learn.p.grad.abs().item() > 0
    with pytest.raises(ConfigError):
        build_pooling("max")
    with pytest.raises(ConfigError, match="gem_learnable"):
        build_pooling("avg", learnable=True)


def test_bnneck_and_classifier_initialisation():
    torch.manual_seed(0)
    neck = BNNeck(4096, bias_frozen=True)
    assert not neck.bias.requires_grad and torch.equal(neck.bias, torch.zeros(4096))
    assert neck.weight.mean().item() == pytest.approx(1.0, abs=2e-3)
    assert neck.weight.std().item() == pytest.approx(0.01, rel=0.1)
    assert BNNeck(8, bias_frozen=False).bias.requires_grad
    clf = IdentityClassifier(512, 400)
    assert clf.bias is None and clf.weight.std().item() == pytest.approx(0.001, rel=0.05)
    # The frozen bias stays zero through an optimiser step over the model's parameter groups.
    model = AGWNet(tiny(non_local=False), NUM_IDS)
    groups = model.param_groups()
    opt = torch.optim.SGD([{"params": g} for g in groups.values()], lr=0.1, momentum=0.9, weight_decay=5e-4)
    _train_loss(model, torch.randn(8, 3, 64, 32)).backward()
    opt.step()
    assert torch.equal(model.bnneck.bias, torch.zeros(model.feature_dim))


def test_param_groups_split_head_from_backbone():
    model = AGWNet(tiny(gem_learnable=True), NUM_IDS)
    groups = model.param_groups()
    assert [id(p) for p in groups["head"]] == [id(model.bnneck.weight), id(model.classifier.weight)]
    trainable = {id(p) for p in model.parameters() if p.requires_grad}
    backbone = {id(p) for p in groups["backbone"]}
    assert backbone | {id(p) for p in groups["head"]} == trainable and len(backbone) == len(groups["backbone"])
    assert id(model.pool.p) in backbone and id(model.stems.infrared.conv1.weight) in backbone
    assert id(model.layer3.non_local["1"].theta.weight) in backbone


def test_head_contract_and_reset_classifier():
    model = AGWNet(tiny(non_local=False), NUM_IDS).eval()
    images = torch.randn(2, 3, 64, 32)
    fmap = model.forward_features(images, 0)
    assert fmap.shape == (2, 128, 4, 2)
    torch.testing.assert_close(model.forward_head(fmap, pre_logits=True), model.extract(images, 0))
    assert model.forward_head(fmap).shape == (2, NUM_IDS)
    model.reset_classifier(0)
    assert model.classifier is None and model.num_classes == 0
    assert model(images, 0).logits is None
    with pytest.raises(ConfigError, match="no classifier"):
        model.forward_head(fmap)
    model.reset_classifier(11)
    assert model(images, 0).logits.shape == (2, 11)
    with pytest.raises(ConfigError, match=r"eval\.feature"):
        model.extract(images, 0, feature="fc")


def _save_torchvision_style(backbone: ResNetBackbone, path, drop: str) -> dict[str, torch.Tensor]:
    state = {k.removeprefix("stem."): v.clone() for k, v in backbone.state_dict().items() if ".non_local." not in k}
    del state[drop]
    state["fc.weight"] = torch.zeros(10, backbone.out_channels)
    torch.save(state, path)
    return state


def test_pretrained_file_loads_into_both_stems_and_reports_missing_keys(tmp_path, caplog):
    torch.manual_seed(4)
    source = ResNetBackbone("resnet18", width=16, non_local={})
    path = tmp_path / "tiny_resnet18.pth"
    state = _save_torchvision_style(source, path, drop="layer3.1.conv2.weight")
    with caplog.at_level(logging.INFO, logger="vireid.models.resnet"):
        model = AGWNet(tiny(pretrained=str(path)), NUM_IDS)
    report = model.load_report
    assert report is not None and report.loaded == len(state) - 1
    assert "layer3.1.conv2.weight" in report.missing
    assert report.surprising == ["missing layer3.1.conv2.weight"]
    assert "fc.weight" in report.expected_unexpected
    assert all(".non_local." in k for k in report.expected_missing)
    assert "layer3.1.conv2.weight" in caplog.text
    for stem in (model.stems.visible, model.stems.infrared):
        assert torch.equal(stem.conv1.weight, state["conv1.weight"])
    assert torch.equal(model.layer2[0].conv1.weight, state["layer2.0.conv1.weight"])
    assert not torch.equal(model.layer3[1].conv2.weight, source.layer3[1].conv2.weight)
    with pytest.raises(CheckpointError, match=r"layer3\.1\.conv2\.weight"):
        load_backbone_weights(ResNetBackbone("resnet18", width=16), path, strict=True)
    torch.save({"something.else": torch.zeros(3)}, tmp_path / "bad.pth")
    with pytest.raises(CheckpointError, match="no tensor"):
        load_backbone_weights(ResNetBackbone("resnet18", width=16), tmp_path / "bad.pth")


def test_missing_imagenet_weights_give_the_offline_message(tmp_path, monkeypatch):
    monkeypatch.setenv("VIREID_WEIGHTS", str(tmp_path / "w"))
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    monkeypatch.setenv("HOME", str(tmp_path))
    with pytest.raises(WeightsNotFoundError, match="never downloads"):
        AGWNet(ModelConfig(pretrained="imagenet"), 10)
    with pytest.raises(ConfigError, match="width=64"):
        AGWNet(tiny(pretrained="imagenet"), 10)
    with pytest.raises(WeightsNotFoundError, match="does not exist"):
        AGWNet(tiny(pretrained=str(tmp_path / "nope.pth")), 10)


def test_parameter_and_flop_counts():
    conv = nn.Conv2d(3, 8, kernel_size=3, padding=1, bias=False)
    assert count_flops(conv, torch.zeros(1, 3, 10, 6)) == 2 * 3 * 8 * 9 * 10 * 6
    model = AGWNet(tiny(), NUM_IDS)
    counts = count_parameters(model)
    assert counts.frozen == model.feature_dim  # the BNNeck bias
    assert counts.trainable == sum(p.numel() for p in model.parameters() if p.requires_grad)
    with torch.device("meta"):
        agw50 = AGWNet(ModelConfig(pretrained="none"), 395)
    summary = model_complexity(agw50, (3, 288, 144))
    # ResNet-50 without fc is 23.51 M; AGW adds a stem copy, five non-local blocks, BNNeck and classifier.
    assert 24.0e6 < summary.params.total < 24.6e6
    # A ResNet-50 at 224x224 is about 8.2 GFLOPs; 288x144 has 0.83x the pixels, and last stride 1 makes
    # layer4 4x dearer, so the AGW embedding costs about 10 GFLOPs.
    assert 9.5e9 < summary.inference_flops < 11e9
    assert summary.row()["input"] == "3x288x144"
    assert agw50.training  # mode restored


def test_batch_of_one_everywhere():
    model = AGWNet(tiny(), NUM_IDS).eval()
    emb = model.extract(torch.randn(1, 3, 64, 32), torch.tensor([1]))
    assert emb.shape == (1, 128)
    assert not math.isnan(emb.sum().item())


def test_torchvision_imagenet_file_loads_cleanly_from_the_offline_cache(tmp_path, monkeypatch):
    from torchvision.models import resnet18

    torch.manual_seed(5)
    reference = resnet18()
    (tmp_path / "w").mkdir()
    torch.save(reference.state_dict(), tmp_path / "w" / "resnet18-f37072fd.pth")
    monkeypatch.setenv("VIREID_WEIGHTS", str(tmp_path / "w"))
    cfg = ModelConfig(backbone="resnet18", pretrained="imagenet", nl_layer2=[1], nl_layer3=[1])
    model = AGWNet(cfg, NUM_IDS).eval()
    report = model.load_report
    assert report.surprising == [] and report.expected_unexpected == ["fc.weight", "fc.bias"]
    assert report.loaded == len(reference.state_dict()) - 2
    # With the non-local blocks at identity, the embedding is torchvision's trunk (last stride aside) + GeM.
    reference.eval()
    reference.layer4[0].conv1.stride = (1, 1)  # a BasicBlock carries its stride in conv1, its first 3x3 conv
    reference.layer4[0].downsample[0].stride = (1, 1)
    images = torch.randn(2, 3, 64, 32)
    with torch.no_grad():
        trunk = nn.Sequential(*list(reference.children())[:-2])(images)
        expected = model.bnneck(model.pool(trunk))
        torch.testing.assert_close(model.extract(images, 1), expected, rtol=1e-4, atol=1e-5)
