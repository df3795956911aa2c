"""Model-block measurements: AGW complexity table, non-local evaluation order, stem routing overhead.

Run: PYTHONPATH=src python benchmarks/model_blocks.py [--device cpu|cuda] [--repeats N]

Every ratio is measured side by side in one run on one device. Complexity is counted on the ``meta``
device (nothing is allocated), so the ResNet-50 rows cost nothing.
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable
from dataclasses import replace

import torch
from torch import nn

from vireid.config import ModelConfig
from vireid.models.agw import AGWNet
from vireid.models.complexity import model_complexity
from vireid.models.non_local import NonLocalBlock
from vireid.models.resnet import ResNetStem
from vireid.models.stems import ModalityStems


def compare(fns: dict[str, Callable[[], object]], repeats: int, device: str) -> dict[str, float]:
    """Median seconds of each function, measured round-robin (one call of each per round, after a warm-up)
    so that load changes on a shared machine hit every candidate alike."""
    for fn in fns.values():
        fn()
    times: dict[str, list[float]] = {name: [] for name in fns}
    for _ in range(repeats):
        for name, fn in fns.items():
            if device == "cuda":
                torch.cuda.synchronize()
            start = time.perf_counter()
            fn()
            if device == "cuda":
                torch.cuda.synchronize()
            times[name].append(time.perf_counter() - start)
    return {name: sorted(t)[len(t) // 2] for name, t in times.items()}


def complexity_table() -> None:
    base = ModelConfig(pretrained="none")
    variants = {
        "AGW (two stems, NL C'=1, GeM)": base,
        "AGW, NL C'=C/2": replace(base, nl_inter_channels="half"),
        "AGW base (no NL, avg pool)": replace(base, non_local=False, pooling="avg"),
        "shared stem, NL, learnable GeM (DAKD)": replace(base, stems="shared", gem_learnable=True),
    }
    print("\nAGW-family complexity, ResNet-50, 395 identities (SYSU-MM01), inference = extract() of one image")
    print(f"{'variant':42s} {'params M':>9s} {'trainable M':>12s} {'GFLOPs 288x144':>15s}")
    for name, cfg in variants.items():
        with torch.device("meta"):
            model = AGWNet(cfg, 395)
        c = model_complexity(model, (3, 288, 144))
        print(
            f"{name:42s} {c.params.total / 1e6:9.2f} {c.params.trainable / 1e6:12.2f} {c.inference_flops / 1e9:15.2f}"
        )


def dense_non_local(block: NonLocalBlock, x: torch.Tensor) -> torch.Tensor:
    """The release's evaluation order: the N x N affinity f is materialised."""
    n = x.shape[-2] * x.shape[-1]
    theta = block.theta(x).flatten(2).transpose(1, 2)
    phi = block.phi(x).flatten(2)
    g = block.g(x).flatten(2).transpose(1, 2)
    y = torch.bmm(torch.bmm(theta, phi) / n, g)
    y = y.transpose(1, 2).reshape(x.shape[0], block.inter_channels, x.shape[-2], x.shape[-1])
    return x + block.out_bn(block.out_conv(y))


def non_local_table(device: str, repeats: int, batch: int) -> None:
    print(f"\nNon-local block forward+backward, batch {batch}, {device}: dense N x N vs vireid's theta (phi g)")
    print(f"{'shape (C, H, W), C_inner':32s} {'dense ms':>9s} {'vireid ms':>10s} {'speed-up':>9s} {'max |diff|':>11s}")
    for channels, h, w in ((512, 36, 18), (1024, 18, 9)):
        for inner in (1, channels // 2):
            block = NonLocalBlock(channels, inner).to(device)
            nn.init.constant_(block.out_bn.weight, 1.0)
            x = torch.randn(batch, channels, h, w, device=device, requires_grad=True)

            def dense_step(block=block, x=x):
                dense_non_local(block, x).sum().backward()

            def vireid_step(block=block, x=x):
                block(x).sum().backward()

            t = compare({"dense": dense_step, "ours": vireid_step}, repeats, device)
            t_dense, t_ours = t["dense"], t["ours"]
            with torch.no_grad():
                diff = (dense_non_local(block.eval(), x) - block(x)).abs().max().item()
            block.train()
            label = f"({channels}, {h}, {w}), C'={inner}"
            print(f"{label:32s} {t_dense * 1e3:9.2f} {t_ours * 1e3:10.2f} {t_dense / t_ours:8.2f}x {diff:11.2e}")


def routing_table(device: str, repeats: int, batch: int) -> None:
    print(f"\nStem routing, training forward+backward of two stems, batch {batch} at 288x144, {device}")
    stems = ModalityStems(ResNetStem(64), per_modality=True).to(device)
    images = torch.randn(batch, 3, 288, 144, device=device)
    grouped = torch.arange(batch, device=device) >= batch // 2
    mixed = grouped[torch.randperm(batch, device=device)]
    half = batch // 2

    def release_layout() -> None:  # visible block, thermal block, concatenated by position
        out = torch.cat([stems.visible(images[:half]), stems.infrared(images[half:])])
        out.sum().backward()

    t = compare(
        {
            "release": release_layout,
            "grouped": lambda: stems(images, grouped.long()).sum().backward(),
            "mixed": lambda: stems(images, mixed.long()).sum().backward(),
        },
        repeats,
        device,
    )
    t_release, t_grouped, t_mixed = t["release"], t["grouped"], t["mixed"]
    print(f"{'layout':40s} {'ms':>8s} {'vs release':>11s}")
    for name, t in (
        ("release: split by position, concatenate", t_release),
        ("vireid, rows grouped visible-first", t_grouped),
        ("vireid, rows in random order", t_mixed),
    ):
        print(f"{name:40s} {t * 1e3:8.2f} {t / t_release:10.2f}x")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--batch", type=int, default=8)
    args = parser.parse_args()
    torch.manual_seed(0)
    complexity_table()
    non_local_table(args.device, args.repeats, args.batch)
    routing_table(args.device, args.repeats, args.batch)


if __name__ == "__main__":
    main()
