"""Training and inference throughput (images/s): mixed precision and memory layout, side by side in one run.

Rows, each timed after warm-up steps on random batches that carry every pairing field:

* baseline training step: AGW (ResNet-50 with non-local blocks, two stems, GeM, BNNeck; CE + WRT) at
  288x144, batch 64 = P 8 x K 4 x 2 modalities, SGD; plain fp32 eager vs bf16 autocast + channels_last;
* IDKL training step (both branches, purifier, every loss, Adam) at 384x144, batch 120 = P 12 x K 5 x 2;
* IDKL inference (``extract``: the shared path only) at 384x144;
* training data loader, images/s per worker count (decoding generated JPEGs, the baseline's ``agw``
  preset at 288x144), through :mod:`dataloader_speed` (the loader benchmark next to this file).

A step is forward (autocast when asked), the losses in fp32 (as the engine casts outputs), backward and the
optimiser step, exactly what :class:`vireid.engine.trainer.Trainer` runs per iteration. Weights are random
(``pretrained=none``): speed does not depend on them.

    PYTHONPATH=src python benchmarks/train_speed.py --device cuda       # full settings on a GPU
    PYTHONPATH=src python benchmarks/train_speed.py --quick             # small batches on a CPU

``--quick`` keeps the architectures and input sizes but uses 2 identities x 2 draws per batch and few
steps, so that a 2-core CPU finishes in minutes. bf16 on a CPU without bf16 matrix units is emulated and
slow; the ratio that matters is the GPU one.
"""

from __future__ import annotations

import argparse
import dataclasses
import platform
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import torch

from vireid.config import load_config
from vireid.data.batch import CrossModalBatch
from vireid.engine.distributed import DistContext
from vireid.engine.optim import build_optimizer
from vireid.methods import get_method
from vireid.methods.base import StepContext


@dataclass
class Row:
    what: str
    precision: str
    batch: int
    images_per_s: float
    seconds_per_step: float


def synthetic_batch(P: int, K: int, height: int, width: int, device: torch.device) -> CrossModalBatch:
    """P identities x K draws, visible rows then infrared rows (as the loader's collate), random images."""
    n = P * K
    slot = torch.arange(P).repeat_interleave(K)
    inst = torch.arange(K).repeat(P)

    def twice(x: torch.Tensor) -> torch.Tensor:
        return torch.cat([x, x]).to(device)

    return CrossModalBatch(
        images=torch.randn(2 * n, 3, height, width, device=device),
        label=twice(slot),
        modality=torch.cat([torch.zeros(n), torch.ones(n)]).long().to(device),
        view=torch.zeros(2 * n, dtype=torch.int64, device=device),
        pair_index=twice(slot * K + inst),
        slot=twice(slot),
        inst=twice(inst),
        camid=torch.cat([torch.ones(n), torch.full((n,), 3)]).long().to(device),
    )


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _float32(obj):
    changes = {
        f.name: v.float()
        for f in dataclasses.fields(obj)
        if isinstance(v := getattr(obj, f.name), torch.Tensor) and v.is_floating_point() and v.dtype != torch.float32
    }
    return dataclasses.replace(obj, **changes) if changes else obj


def time_training(method_name: str, config: str, overrides: list[str], args, *, fast: bool) -> Row:
    """images/s of full training steps of ``method_name`` (fp32 eager, or bf16 autocast + channels_last)."""
    device = torch.device(args.device)
    cfg = load_config(config, ["model.pretrained=none", *overrides])
    method = get_method(method_name)
    torch.manual_seed(0)
    model = method.build_model(cfg, args.classes).to(device).train()
    if fast:
        model = model.to(memory_format=torch.channels_last)
    groups = method.param_groups(model, cfg) if hasattr(method, "param_groups") else model.param_groups()
    optimizer = build_optimizer(cfg.optim, groups)
    P, K = cfg.sampler.P, cfg.sampler.K
    batch = synthetic_batch(P, K, cfg.data.height, cfg.data.width, device)
    if fast:
        batch = dataclasses.replace(batch, images=batch.images.contiguous(memory_format=torch.channels_last))
    ctx = StepContext(epoch=0, iteration=0, global_step=0, dist=DistContext(device=device), cfg=cfg)

    def step() -> None:
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=fast):
            out = method.forward(model, batch, ctx)
        loss = method.loss(_float32(out), batch, ctx)
        optimizer.zero_grad(set_to_none=True)
        loss.total.backward()
        optimizer.step()

    seconds = _timed(step, args.warmup, args.steps, device)
    return Row(
        f"{method_name} train step {cfg.data.height}x{cfg.data.width}",
        "bf16 autocast + channels_last" if fast else "fp32 eager",
        len(batch),
        len(batch) / seconds,
        seconds,
    )


def time_inference(args, *, fast: bool) -> Row:
    """images/s of IDKL's ``extract`` (shared path only) in eval mode under ``no_grad``."""
    device = torch.device(args.device)
    cfg = load_config("idkl/sysu", ["model.pretrained=none"])
    model = get_method("idkl").build_model(cfg, args.classes).to(device).eval()
    images = torch.randn(args.infer_batch, 3, cfg.data.height, cfg.data.width, device=device)
    if fast:
        model = model.to(memory_format=torch.channels_last)
        images = images.contiguous(memory_format=torch.channels_last)

    @torch.no_grad()
    def step() -> None:
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=fast):
            model.extract(images, 0)

    seconds = _timed(step, args.warmup, args.steps, device)
    precision = "bf16 autocast + channels_last" if fast else "fp32 eager"
    return Row(
        f"idkl inference {cfg.data.height}x{cfg.data.width}", precision, len(images), len(images) / seconds, seconds
    )


def _timed(step, warmup: int, steps: int, device: torch.device) -> float:
    for _ in range(warmup):
        step()
    _sync(device)
    start = time.perf_counter()
    for _ in range(steps):
        step()
    _sync(device)
    return (time.perf_counter() - start) / steps


def loader_rows(args) -> list[Row]:
    """Training loader images/s per worker count (generated JPEGs, agw preset, 288x144)."""
    from dataloader_speed import time_loader, write_images

    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp) / "img"
        root.mkdir()
        records = write_images(root, ids=args.loader_ids, vis_per_id=10, ir_per_id=6)
        for workers in args.workers:
            cfg = load_config(
                "baseline/sysu",
                [
                    f"data.workers={workers}",
                    f"sampler.P={args.loader_P}",
                    "sampler.K=4",
                    f"sampler.epoch_length={args.loader_batches + 1}",
                ],
            )
            rate, _ = time_loader(records, cfg, args.loader_batches)
            rows.append(Row(f"loader, {workers} worker(s)", "decode + agw aug", 2 * args.loader_P * 4, rate, 0.0))
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--quick", action="store_true", help="small batches and few steps (CPU)")
    parser.add_argument("--steps", type=int, default=None)
    parser.add_argument("--warmup", type=int, default=None)
    parser.add_argument("--workers", type=int, nargs="+", default=None)
    parser.add_argument("--classes", type=int, default=395)
    parser.add_argument("--skip", nargs="*", default=[], choices=["baseline", "idkl", "inference", "loader", "bf16"])
    args = parser.parse_args()
    quick = args.quick
    args.steps = args.steps or (2 if quick else 20)
    args.warmup = args.warmup if args.warmup is not None else (1 if quick else 5)
    args.workers = args.workers or ([0, 1, 2] if quick else [0, 2, 4, 8])
    args.infer_batch = 8 if quick else 128
    args.loader_P, args.loader_ids, args.loader_batches = (4, 12, 5) if quick else (8, 40, 20)
    baseline_batch = ["sampler.P=2", "sampler.K=2"] if quick else ["sampler.P=8", "sampler.K=4"]
    # --quick times SYSU's batch-120 loss weights on 8 images, which the loader refuses unless forced.
    idkl_batch = ["sampler.P=2", "sampler.K=2", "tgsa.regime=force"] if quick else ["sampler.P=12", "sampler.K=5"]

    device = torch.device(args.device)
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True
        name = torch.cuda.get_device_name(device)
    else:
        name = f"{platform.processor() or platform.machine()} CPU, {torch.get_num_threads()} torch threads"
    print(f"device: {device} ({name}); torch {torch.__version__}; {'quick' if quick else 'full'} settings")
    precisions = [False] if "bf16" in args.skip else [False, True]
    rows: list[Row] = []
    if "baseline" not in args.skip:
        for fast in precisions:
            rows.append(time_training("baseline", "baseline/sysu", baseline_batch, args, fast=fast))
    if "idkl" not in args.skip:
        for fast in precisions:
            rows.append(time_training("idkl", "idkl/sysu", idkl_batch, args, fast=fast))
    if "inference" not in args.skip:
        for fast in precisions:
            rows.append(time_inference(args, fast=fast))
    if "loader" not in args.skip:
        rows.extend(loader_rows(args))

    print("| what | precision / layout | batch | images/s | s/step | vs fp32 |")
    print("|---|---|---|---|---|---|")
    reference: dict[str, float] = {}
    for row in rows:
        if row.precision == "fp32 eager":
            reference[row.what] = row.images_per_s
        ratio = row.images_per_s / reference[row.what] if row.what in reference else None
        step = f"{row.seconds_per_step:.3f}" if row.seconds_per_step else "-"
        ratio_text = f"{ratio:.2f}x" if ratio is not None and row.precision != "fp32 eager" else "-"
        print(f"| {row.what} | {row.precision} | {row.batch} | {row.images_per_s:.1f} | {step} | {ratio_text} |")


if __name__ == "__main__":
    main()
