"""Training data-loader throughput (images/s) per worker count, with and without the pre-resized cache.

Writes a small generated visible/infrared image set (JPEGs of SYSU-like sizes) to a temporary folder,
then times :func:`vireid.data.datasets.build_cross_modal_loader` over a fixed number of batches for every
worker count, decoding JPEGs on the fly and reading the memory-mapped cache, side by side in one run.
Images/s counts every row of the batch (CAJ: visible A + visible B + infrared = 3 * P * K per batch).
With 0 workers the transforms run in the main process under its intra-op thread count (printed); on small
CPU machines many threads on tiny tensors can be much slower than one, which workers avoid (they use one
thread each).

    PYTHONPATH=src python benchmarks/dataloader_speed.py --workers 0 1 2 --batches 20
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from vireid.config import RunConfig
from vireid.data.datasets import build_cross_modal_loader
from vireid.data.records import ImageRecord, Modality


def write_images(root: Path, ids: int, vis_per_id: int, ir_per_id: int, seed: int = 0) -> list[ImageRecord]:
    """Smooth random images (compress like photos) of varying sizes around SYSU's typical box size."""
    rng = np.random.default_rng(seed)
    records = []
    for pid in range(ids):
        for modality, count in ((Modality.VISIBLE, vis_per_id), (Modality.INFRARED, ir_per_id)):
            for k in range(count):
                h, w = int(rng.integers(280, 520)), int(rng.integers(110, 220))
                small = rng.integers(0, 256, size=(h // 16 + 1, w // 16 + 1, 3), dtype=np.uint8)
                img = Image.fromarray(small).resize((w, h), Image.Resampling.BICUBIC)
                if modality == Modality.INFRARED:
                    img = img.convert("L").convert("RGB")
                path = root / f"{modality.short}_{pid:04d}_{k:02d}.jpg"
                img.save(path, quality=90)
                records.append(ImageRecord(str(path), pid, 1 if modality == Modality.VISIBLE else 3, modality, pid))
    return records


def time_loader(records, cfg: RunConfig, batches: int) -> tuple[float, float]:
    """(images/s over ``batches`` batches after one warm-up batch, seconds to build the loader)."""
    start = time.perf_counter()
    loader = build_cross_modal_loader(records, cfg, pin_memory=False)
    built = time.perf_counter() - start
    loader.batch_sampler.set_epoch(0)
    iterator = iter(loader)
    next(iterator)  # worker start-up and first batch excluded
    rows = 0
    start = time.perf_counter()
    for _ in range(batches):
        rows += len(next(iterator))
    elapsed = time.perf_counter() - start
    del iterator, loader
    return rows / elapsed, built


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--workers", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--batches", type=int, default=20)
    parser.add_argument("--ids", type=int, default=40)
    parser.add_argument("--preset", default="caj", choices=["agw", "caj", "idkl", "dakd", "none"])
    parser.add_argument("--height", type=int, default=288)
    parser.add_argument("--width", type=int, default=144)
    parser.add_argument("-P", type=int, default=8)
    parser.add_argument("-K", type=int, default=4)
    args = parser.parse_args()

    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        (root / "img").mkdir()
        records = write_images(root / "img", args.ids, vis_per_id=10, ir_per_id=6)
        print(
            f"{len(records)} generated JPEGs, preset {args.preset}, input {args.height}x{args.width}, "
            f"P={args.P} K={args.K}, {args.batches} timed batches, main-process torch threads "
            f"{torch.get_num_threads()}\n"
        )
        print(f"{'workers':>7} | {'decode img/s':>12} | {'cache img/s':>11} | {'speed-up':>8}")
        print("-" * 48)
        cache_build = None
        for workers in args.workers:
            rates = {}
            for cache in (False, True):
                cfg = RunConfig()
                cfg.data.height, cfg.data.width, cfg.data.workers = args.height, args.width, workers
                cfg.data.cache, cfg.data.cache_dir = cache, str(root / "cache")
                cfg.sampler.P, cfg.sampler.K, cfg.sampler.epoch_length = args.P, args.K, str(args.batches + 1)
                cfg.aug.preset = args.preset
                rates[cache], built = time_loader(records, cfg, args.batches)
                if cache and cache_build is None:
                    cache_build = built
            print(f"{workers:>7} | {rates[False]:>12.0f} | {rates[True]:>11.0f} | {rates[True] / rates[False]:>7.2f}x")
        print(f"\ncache build (first run, {len(records)} images): {cache_build:.2f} s")


if __name__ == "__main__":
    main()
