"""``vireid convert --from idkl``: the IDKL release's ``model_best.pth`` (a bare state dict of its ``Baseline``).

``tests/manifests/idkl.json`` lists every tensor name, shape and dtype of a file saved by the release's own
code at the commit it names (``benchmarks/parity/idkl_parity.py --manifest``). The table tests run on the
meta device (names and shapes only); the round trip writes a tiny ResNet-50 (width 8) IDKL network in the
release's format and converts it through the command line. Numerical parity with the release's own code is
measured by ``benchmarks/parity/idkl_parity.py`` and recorded in ``docs/methods/idkl.md``.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from vireid.cli import main
from vireid.config import load_config
from vireid.convert import ConversionError, get_source
from vireid.convert.mapping import fit_to_model, rename_state
from vireid.convert.source import architecture_facts, config_mismatches
from vireid.engine.loading import inference_config, load_model
from vireid.methods import get_method

MANIFEST = Path(__file__).parent / "manifests" / "idkl.json"
DTYPES = {"float32": torch.float32, "int64": torch.int64}
TINY_R50 = ["model.backbone=resnet50", "model.width=8", "model.pretrained=none"]

# Where release tensors must land, read off the release code by hand (models/resnet.py embed_net: mask1 gates
# IN(F) into M_in, mask2 gates F into M_f; models/baseline.py: classifier = C_sh, C_sp_f = C_ent,
# D_shared_pseu = D_sh on BN_sh, D_special = D_sp; Discrimination = fc1, bn1, fc2, bn2, fc3 with ReLU and
# dropout between, which vireid's Sequential numbers 0, 1, 4, 5, 8), not derived from the table under test.
IDKL_LANDINGS = {
    "backbone.shared_module_fr.model_sh_fr.conv1.weight": "stems.shared.conv1.weight",
    "backbone.shared_module_fr.model_sh_fr.bn1.running_var": "stems.shared.bn1.running_var",
    "backbone.shared_module_fr.model_sh_fr.layer2.3.conv3.weight": "layer2.3.conv3.weight",
    "backbone.shared_module_bh.model_sh_bh.layer3.0.downsample.1.running_mean": (
        "branch_sh.layer3.0.downsample.1.running_mean"
    ),
    "backbone.shared_module_bh.model_sh_bh.layer4.2.bn3.weight": "branch_sh.layer4.2.bn3.weight",
    "backbone.special.special_module.layer3.5.conv2.weight": "branch_sp.shared.layer3.5.conv2.weight",
    "backbone.special.special_module.layer4.0.downsample.0.weight": "branch_sp.shared.layer4.0.downsample.0.weight",
    "backbone.IN.weight": "purifier.instance_norm.weight",
    "backbone.IN.bias": "purifier.instance_norm.bias",
    "backbone.mask1.channel_attention.0.weight": "purifier.gate_in.reduce.weight",
    "backbone.mask1.channel_attention.2.weight": "purifier.gate_in.expand.weight",
    "backbone.mask2.channel_attention.0.weight": "purifier.gate_f.reduce.weight",
    "backbone.mask2.channel_attention.2.weight": "purifier.gate_f.expand.weight",
    "bn_neck.running_mean": "bn_sh.running_mean",
    "bn_neck_sp.weight": "bn_sp.weight",
    "classifier.weight": "classifier_sh.weight",
    "classifier_sp.weight": "classifier_sp.weight",
    "C_sp_f.weight": "classifier_ent.weight",
    "D_shared_pseu.fc1.weight": "discriminator_sh.0.weight",
    "D_shared_pseu.bn2.running_var": "discriminator_sh.5.running_var",
    "D_special.fc2.bias": "discriminator_sp.4.bias",
    "D_special.fc3.weight": "discriminator_sp.8.weight",
}
# ResNet-50 state-dict entries per stage (num_batches_tracked included): stem 6, layer1 60, layer2 78,
# layer3 114, layer4 60. Dead copies: layer3-4 of the front copy, stem + layer1-2 of the two back copies.
DEAD_COPIES = (114 + 60) + 2 * (6 + 60 + 78)
DEAD_PREFIXES = (
    "backbone.shared_module_fr.model_sh_fr.layer3.",
    "backbone.shared_module_fr.model_sh_fr.layer4.",
    *(f"backbone.{part}.{stage}." for part in ("shared_module_bh.model_sh_bh", "special.special_module")
      for stage in ("conv1", "bn1", "layer1", "layer2")),
)  # fmt: skip


def manifest() -> dict:
    return json.loads(MANIFEST.read_text())


def manifest_state() -> dict[str, torch.Tensor]:
    """Every tensor of the manifest, filled with its 1-based position (a constant view: no memory)."""
    state = {}
    for index, (key, shape, dtype) in enumerate(manifest()["tensors"], start=1):
        value = torch.full((1,), index, dtype=DTYPES[dtype]).reshape(())
        state[key] = value.expand(shape) if shape else value.clone()
    return state


def meta_model(cfg, num_classes: int):
    with torch.device("meta"):
        return get_method("idkl").build_model(inference_config(cfg), num_classes)


def test_the_manifest_is_the_release_at_the_commit_the_source_names():
    data = manifest()
    assert data["source"] == "idkl" and data["state_key"] is None and data["stored"] == {}
    assert data["release_commit"] == get_source("idkl").release_commit
    resnet50 = 6 + 60 + 78 + 114 + 60
    # 3 ResNet-50s, IN (2 + 3 statistics), special_att, mask1, mask2 (2 each), 2 BNNecks, 3 classifiers, 2 D
    assert len(data["tensors"]) == 3 * resnet50 + 5 + 3 * 2 + 2 * 5 + 3 + 2 * (2 + 5 + 2 + 5 + 2) == 1010


def test_release_keys_convert_and_land_where_the_table_says():
    spec = get_source("idkl")
    state = manifest_state()
    mapped = rename_state(state, spec.mapping)
    cfg = load_config("idkl/sysu")
    facts = architecture_facts(mapped.tensors, spec, state)
    assert (facts.backbone, facts.width, facts.stems, facts.num_classes) == ("resnet50", 64, "shared", 395)
    assert (facts.pooling, facts.gem_learnable, facts.gem_p, facts.last_stride) == ("gem", False, 3.0, 1)
    assert config_mismatches(facts, cfg, mapped.tensors, spec) == []
    model_state = meta_model(cfg, facts.num_classes).state_dict()
    tensors, filled = fit_to_model(mapped, model_state, spec.mapping, what="model_best.pth")
    assert filled == [] and set(tensors) == set(model_state)
    position = {key: index for index, (key, _, _) in enumerate(manifest()["tensors"], start=1)}
    for release_key, vireid_key in IDKL_LANDINGS.items():
        assert int(tensors[vireid_key].flatten()[0]) == position[release_key], (release_key, vireid_key)
    # Every vireid tensor comes from exactly one release tensor; the rest is dropped by name, with a reason.
    assert len({int(t.flatten()[0]) for t in tensors.values()}) == len(tensors)
    dropped = {reason: sorted(keys) for reason, keys in mapped.dropped.items()}
    assert sum(len(keys) for keys in dropped.values()) == len(state) - len(tensors) == DEAD_COPIES + 2 + 3
    by_prefix = sorted(k for k in state if k.startswith(DEAD_PREFIXES))
    assert len(by_prefix) == DEAD_COPIES and any(keys == by_prefix for keys in dropped.values())
    assert ["backbone.special_att.channel_attention.0.weight", "backbone.special_att.channel_attention.2.weight"] in (
        dropped.values()
    )
    in_stats = ["backbone.IN.num_batches_tracked", "backbone.IN.running_mean", "backbone.IN.running_var"]
    assert in_stats in dropped.values()


def test_a_missing_or_extra_key_is_refused_grouped_by_prefix():
    spec = get_source("idkl")
    state = manifest_state()
    del state["backbone.mask2.channel_attention.0.weight"]
    state["backbone.mask3.channel_attention.0.weight"] = torch.zeros(128, 2048, 1, 1)
    mapped = rename_state(state, spec.mapping)
    with pytest.raises(ConversionError) as info:
        fit_to_model(mapped, meta_model(load_config("idkl/sysu"), 395).state_dict(), spec.mapping, what="f.pth")
    message = str(info.value)
    assert "1 unexpected release keys: backbone.mask3.channel_attention.* (1)" in message
    assert "1 vireid keys missing from the file: purifier.gate_f.reduce.* (1)" in message


def test_architecture_mismatches_name_the_override():
    spec = get_source("idkl")
    state = manifest_state()
    tensors = rename_state(state, spec.mapping).tensors
    facts = architecture_facts(tensors, spec, state)
    regdb = config_mismatches(facts, load_config("idkl/regdb"), tensors, spec)
    assert [override for _, override in regdb] == ["data.dataset=sysu"]  # 395 classes: SYSU-MM01's
    options = ["model.width=32", "model.stems=per_modality", "model.specific_branch=per_modality"]
    narrow = config_mismatches(facts, load_config("idkl/sysu", options), tensors, spec)
    assert [override for _, override in narrow] == [
        "model.width=64", "model.stems=shared", "model.specific_branch=shared_weights",
    ]  # fmt: skip


def release_names(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """A vireid IDKLNet state dict written under the release's names (the inverse of the table's renames)."""
    renames = get_source("idkl").mapping.renames
    out = {}
    for key, tensor in state.items():
        rule = max((r for r in renames if key.startswith(r.vireid)), key=lambda r: len(r.vireid))
        out[rule.release + key[len(rule.vireid) :]] = tensor.clone()
    return out


@pytest.mark.filterwarnings("ignore::UserWarning")
def test_a_release_format_file_converts_through_the_cli_and_embeds_identically(tmp_path, capsys):
    cfg = load_config("idkl/sysu", TINY_R50)
    torch.manual_seed(0)
    model = get_method("idkl").build_model(cfg, 395)
    with torch.no_grad():  # trained-looking BatchNorms: random affine parameters and running statistics
        for module in model.modules():
            if isinstance(module, torch.nn.BatchNorm1d | torch.nn.BatchNorm2d):
                module.weight.uniform_(0.5, 1.5)
                module.running_mean.normal_(0.0, 0.2)
                module.running_var.uniform_(0.5, 2.0)
    state = release_names(model.state_dict())
    # what the release saves besides: a dead ResNet stage, the unused gate, the IN's running statistics
    front = "backbone.shared_module_fr.model_sh_fr."
    state.update({f"{front}layer4.{k[len('branch_sh.layer4.') :]}": v for k, v in model.state_dict().items()
                  if k.startswith("branch_sh.layer4.")})  # fmt: skip
    state["backbone.special_att.channel_attention.0.weight"] = torch.zeros(64, 256 * 4, 1, 1)
    state["backbone.IN.running_mean"] = torch.zeros(1024)
    state["backbone.IN.num_batches_tracked"] = torch.tensor(7)
    path = tmp_path / "model_best.pth"
    torch.save(state, path)
    out = tmp_path / "converted"
    args = ["convert", str(path), "--from", "idkl", "--config", "idkl/sysu", *TINY_R50, "--out", str(out)]
    assert main(args) == 0, capsys.readouterr().err
    loaded = load_model(out, device="cpu")
    model.eval()
    x = torch.randn(3, 3, 64, 32)
    with torch.no_grad():
        for modality in (0, 1):
            torch.testing.assert_close(
                loaded.model.extract(x, modality, feature="bn"), model.extract(x, modality), rtol=0, atol=0
            )
    meta = json.loads((out / "meta.json").read_text())
    assert meta["method"] == "idkl" and meta["num_classes"] == 395 and meta["selection"] == "test"
    info = meta["converted"]
    assert info["source"] == "idkl" and info["file"] == "model_best.pth" and info["stored"] == {}
    dropped = {reason.split(":")[0]: entry["count"] for reason, entry in info["dropped"].items()}
    assert dropped == {
        "unused ResNet-50 stages": 3 * 18 + 6,
        "the release's special_att gate, built but never called": 1,
        "running statistics of the purifier's InstanceNorm": 2,
    }
