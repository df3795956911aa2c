"""Numerical parity of ``vireid convert`` against the authors' own code (issue 13, item 5).

For one release source this script

1. imports the release's model code from a checkout given on the command line (never part of vireid; its
   ResNet-50 is built with ``pretrained=False``: nothing is downloaded),
2. builds the release model with random weights, random BatchNorm affine parameters (non-local output
   BatchNorms included, so those blocks are not the identity) and running statistics accumulated by a few
   training-mode passes over random inputs, and a learnable GeM p moved away from 3,
3. saves it in the release's own file format, converts it with :func:`vireid.convert.convert_checkpoint`,
4. compares, in eval mode, fp32, CPU, the release's eval output (its ℓ2-normalised BNNeck feature) with
   ``l2(load_model(DIR).model.extract(x, modality, feature="bn"))`` for visible and infrared inputs, and
   the unnormalised BNNeck features as well.

It prints one JSON line per modality and exits 1 when a normalised difference exceeds the tolerance.
``--manifest FILE`` also writes the key/shape manifest of the saved file (``tests/manifests/<source>.json``).

    python benchmarks/parity/release_parity.py agw /path/to/Cross-Modal-Re-ID-baseline
    python benchmarks/parity/release_parity.py caj /path/to/Cross-Modal-Re-ID-baseline
    python benchmarks/parity/release_parity.py mce /path/to/MCE
    python benchmarks/parity/release_parity.py dakd /path/to/DAKD

Run it outside the repository's tests: it builds full ResNet-50s (a few seconds each on a CPU).
"""

from __future__ import annotations

import argparse
import copy
import importlib
import json
import subprocess
import sys
import tempfile
import types
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

SOURCES = {
    # source: (sub-folder of the checkout holding model.py, vireid config preset)
    "agw": ("", "baseline/sysu"),
    "caj": ("ICCV21_CAJ", "baseline/sysu_caj"),
    "mce": ("", "dakd/sysu_teacher"),
    "dakd": ("", "dakd/sysu"),
}


def import_release(checkout: Path):
    """Import the release's ``model`` module with its ResNet constructors forced to ``pretrained=False``."""
    sys.path.insert(0, str(checkout))
    try:
        import regex  # noqa: F401  (MCE's memory.py imports it and never uses it)
    except ImportError:
        sys.modules["regex"] = types.SimpleNamespace(P=None)  # type: ignore[assignment]
    resnet = importlib.import_module("resnet")

    def no_download(*args, **kwargs):
        raise RuntimeError("the parity check must not download weights")

    for name in ("load_state_dict_from_url",):
        if hasattr(resnet, name):
            setattr(resnet, name, no_download)
    for arch in ("resnet18", "resnet34", "resnet50"):
        if hasattr(resnet, arch):
            original = getattr(resnet, arch)

            def random_init(*args, _original=original, **kwargs):
                kwargs.pop("pretrained", None)
                return _original(False, **kwargs)

            setattr(resnet, arch, random_init)
    return importlib.import_module("model")


def build_release_model(source: str, module, num_classes: int) -> nn.Module:
    if source in ("agw", "caj"):
        return module.embed_net(num_classes, no_local="on", gm_pool="on", arch="resnet50")
    kwargs = dict(mutual_information=True, drop_last_stride=True, mem=1, global_center=1, gx=0)
    if source == "dakd":
        # train.py: classification=args.nce (off by default), channel 2; the student carries no memory.
        return module.Model(num_classes, arch="resnet50", classification=False, channel=2, **kwargs)
    net = module.Model(num_classes, classification=False, channel=3, **kwargs)
    # train.py attaches the identity memories to the network before training: they are saved with it.
    memory = importlib.import_module("memory")
    mems = [memory.ClusterMemory(net.out_dim, num_classes) for _ in range(4)]
    for m in mems:
        m.features = F.normalize(torch.randn(num_classes, net.out_dim), dim=1)
    net.memory, net.memory_rgb, net.memory_ir, net.memory_ca = mems
    return net


def release_forward(source: str, net: nn.Module, x: torch.Tensor, modality: int) -> torch.Tensor:
    """The release's eval-mode output for one modality (0 visible, 1 infrared)."""
    if source in ("agw", "caj"):
        return net(x, x, modal=1 + modality)[1]  # (l2(pool), l2(BN(pool))): the "fc" feature
    return net(x, modal=1 + modality)  # F.normalize(bn_neck(backbone(x)))


def release_train_pass(source: str, net: nn.Module, x: torch.Tensor) -> None:
    """One training-mode pass (BatchNorm statistics only) the way the release's training runs the network."""
    if source in ("agw", "caj"):
        half = x.shape[0] // 2
        net(x[:half], x[half:], modal=0)
    else:
        net.bn_neck(net.backbone(x))


@torch.no_grad()
def randomise(source: str, net: nn.Module, seed: int, size: tuple[int, int]) -> None:
    gen = torch.Generator().manual_seed(seed)
    for module in net.modules():
        if isinstance(module, nn.BatchNorm1d | nn.BatchNorm2d):
            module.weight.copy_(torch.empty_like(module.weight).uniform_(0.5, 1.5, generator=gen))
            module.bias.copy_(torch.empty_like(module.bias).normal_(0.0, 0.1, generator=gen))
            module.momentum = None  # cumulative average over the passes below
            module.reset_running_stats()
    for name, param in net.named_parameters():
        if name.endswith("pool.p"):
            param.fill_(2.7)  # a learnt p, not the initial 3
    net.train()
    for _ in range(3):
        release_train_pass(source, net, torch.randn(8, 3, *size, generator=gen))
    net.eval()


def save_release_file(source: str, net: nn.Module, path: Path) -> None:
    cmc = np.linspace(0.5, 0.99, 20)
    state = {"net": net.state_dict(), "cmc": cmc, "mAP": np.float64(0.47), "epoch": 80}
    if source == "dakd":
        config = {"name": "full", "kd": True, "mlkd": True, "instance": True, "class": True}
        state.update(ablation="full", config=config)
    else:
        state["mINP"] = np.float64(0.33)
    torch.save(state, path)


def manifest(source: str, path: Path, checkout: Path, config: str) -> dict:
    loaded = torch.load(path, map_location="cpu", weights_only=False)  # our own file, written just above
    commit = subprocess.run(["git", "-C", str(checkout), "rev-parse", "HEAD"], capture_output=True, text=True)
    return {
        "source": source,
        "release_commit": commit.stdout.strip() or None,
        "config": config,
        "state_key": "net",
        "stored": {k: type(v).__name__ for k, v in loaded.items() if k != "net"},
        "tensors": [[k, list(v.shape), str(v.dtype).removeprefix("torch.")] for k, v in loaded["net"].items()],
    }


def manifest_json(data: dict) -> str:
    """JSON with one tensor per line (diffs of a manifest stay readable)."""
    head = {k: v for k, v in data.items() if k != "tensors"}
    lines = ",\n".join(f"  {json.dumps(t)}" for t in data["tensors"])
    return json.dumps(head, indent=1)[:-2] + ',\n "tensors": [\n' + lines + "\n ]\n}\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("source", choices=sorted(SOURCES))
    parser.add_argument("checkout", type=Path, help="the release repository (a checkout or an exported tree)")
    parser.add_argument("--classes", type=int, default=395)
    parser.add_argument("--size", default="96x48", help="input HxW (small keeps the CPU cost low)")
    parser.add_argument("--batch", type=int, default=3)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--tolerance", type=float, default=1e-4)
    parser.add_argument("--manifest", type=Path, default=None, help="also write the key/shape manifest here")
    parser.add_argument("--commit", default=None, help="release commit to record (default: git rev-parse)")
    args = parser.parse_args(argv)
    torch.manual_seed(args.seed)
    torch.set_num_threads(max(1, torch.get_num_threads()))
    h, w = (int(v) for v in args.size.split("x"))
    sub, config = SOURCES[args.source]
    module = import_release(args.checkout / sub if sub else args.checkout)
    net = build_release_model(args.source, module, args.classes)
    randomise(args.source, net, args.seed, (h, w))

    from vireid.convert import convert_checkpoint
    from vireid.engine.loading import load_model

    worst = 0.0
    with tempfile.TemporaryDirectory(prefix="vireid-parity-") as tmp:
        release_file = Path(tmp) / f"sysu_{args.source}_release_best.t"
        save_release_file(args.source, net, release_file)
        if args.manifest:
            data = manifest(args.source, release_file, args.checkout, config)
            if args.commit:
                data["release_commit"] = args.commit
            args.manifest.parent.mkdir(parents=True, exist_ok=True)
            args.manifest.write_text(manifest_json(data))
        out = convert_checkpoint(release_file, source=args.source, config=config, out=Path(tmp) / "converted")
        converted = load_model(out, device="cpu").model
        captured: dict[str, torch.Tensor] = {}
        bnneck = net.bottleneck if args.source in ("agw", "caj") else net.bn_neck
        bnneck.register_forward_hook(lambda m, i, o: captured.__setitem__("bn", o.detach().clone()))
        # The release's own float32 rounding, for scale: the same network in float64.
        net64 = copy.deepcopy(net).double()
        bnneck64 = net64.bottleneck if args.source in ("agw", "caj") else net64.bn_neck
        bnneck64.register_forward_hook(lambda m, i, o: captured.__setitem__("bn64", o.detach().clone()))
        gen = torch.Generator().manual_seed(args.seed + 1)
        for modality, name in ((0, "visible"), (1, "infrared")):
            x = torch.randn(args.batch, 3, h, w, generator=gen)
            with torch.no_grad():
                ref = release_forward(args.source, net, x, modality)
                ref_bn = captured["bn"]
                ours_bn = converted.extract(x, modality, feature="bn")
                release_forward(args.source, net64, x.double(), modality)
                own_rounding = (captured["bn64"] - ref_bn.double()).abs().max().item()
            diff = (F.normalize(ours_bn, dim=1) - ref).abs().max().item()
            raw = (ours_bn - ref_bn).abs().max().item()
            worst = max(worst, diff)
            print(
                json.dumps(
                    {
                        "source": args.source,
                        "modality": name,
                        "input": [args.batch, 3, h, w],
                        "max_abs_diff_l2_bn": diff,
                        "max_abs_diff_bn_unnormalised": raw,
                        "bn_abs_max": ref_bn.abs().max().item(),
                        "release_fp32_vs_fp64_bn_unnormalised": own_rounding,
                        "tolerance": args.tolerance,
                    }
                )
            )
    return 0 if worst <= args.tolerance else 1


if __name__ == "__main__":
    sys.exit(main())
