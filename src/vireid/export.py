"""Export a checkpoint's inference path to ONNX and check it against onnxruntime (``vireid export``).

What is exported is exactly what :class:`vireid.FeatureExtractor` computes after preprocessing: the method's
embedder (``model.extract`` for the image methods, no classifier), flip test-time augmentation when the
checkpoint uses it (``eval.flip``; :func:`vireid.inference.embed_with_flip`), and the L2 normalisation. So ONNX
outputs can be compared with features from ``vireid index`` / ``vireid test`` directly.

**One graph per modality.** Two-stream networks route images through a stem chosen by modality; a traced
graph cannot branch on a per-row modality tensor, and computing both stems for every row to pick one would
waste compute. vireid therefore writes one file per modality with a fixed stem,
``<name>.visible.onnx`` and ``<name>.infrared.onnx`` (the two share every layer after the stem); use the file
of the modality you feed. Text checkpoints (DIKDNet) export their RGB+thermal pair side as
``<name>.pair.onnx`` with two inputs, ``rgb`` and ``thermal``. Their text side is not exported: tokenisation
is Python code outside the graph, so text queries are embedded with :class:`vireid.FeatureExtractor`.

Every graph has a dynamic batch axis (input ``images`` or ``rgb``/``thermal`` of shape (B, 3, H, W),
output ``features`` of shape (B, D)), is written with the legacy TorchScript exporter
(``torch.onnx.export(..., dynamo=False)``), and carries its preprocessing in the ONNX metadata
(``vireid.preprocessing``: input size, interpolation, mean and std). The parity check runs the PyTorch module
and onnxruntime on the same seeded random inputs at several batch sizes and reports the largest absolute
difference; above ``atol`` the export fails.
"""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from vireid.errors import ConfigError, VireidError, require
from vireid.files import ensure_folder, storage_error
from vireid.inference import embed_with_flip

DEFAULT_PARITY_BATCHES = (1, 7)
DEFAULT_ATOL = 1e-4
MIN_OPSET = 9
"""Oldest ONNX opset vireid exports to: opset 7-8 lack ``Expand``, which every vireid model's pooling uses
(measured with torch 2.14: the tiny AGW model exports and passes parity at opsets 9-21)."""


def check_opset(opset: Any) -> int:
    """``opset`` if this torch can export vireid models to it, else a :class:`ConfigError` with the range."""
    from torch.onnx import _constants

    newest = int(_constants.ONNX_MAX_OPSET)
    if isinstance(opset, bool) or not isinstance(opset, int) or not MIN_OPSET <= opset <= newest:
        raise ConfigError(
            f"ONNX opset {opset!r} is not supported; vireid exports opsets {MIN_OPSET}..{newest} with this torch.",
            fix="pass --opset 17 (the default) or another opset in that range.",
        )
    return opset


class ImageFeatureGraph(nn.Module):
    """``images (B, 3, H, W) -> features (B, D)`` for one fixed modality: embed, [flip TTA], L2-normalise."""

    def __init__(self, model: nn.Module, embedder: Any, modality: int, flip: bool):
        super().__init__()
        self.model = model  # registered so that tracing sees its parameters
        self.embedder = embedder
        self.modality = int(modality)
        self.flip = bool(flip)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return embed_with_flip(lambda x: self.embedder.embed_images(x, self.modality), (images,), self.flip)


class PairFeatureGraph(nn.Module):
    """``rgb, thermal (B, 3, H, W) -> features (B, D)``: the RGB+T gallery side of a text checkpoint."""

    def __init__(self, model: nn.Module, embedder: Any, flip: bool):
        super().__init__()
        self.model = model
        self.embedder = embedder
        self.flip = bool(flip)

    def forward(self, rgb: torch.Tensor, thermal: torch.Tensor) -> torch.Tensor:
        return embed_with_flip(self.embedder.embed_pairs, (rgb, thermal), self.flip)


@dataclass
class ExportedGraph:
    """One written ONNX file and its parity numbers (max |torch - onnxruntime| per batch size)."""

    path: Path
    modality: str
    input_names: list[str]
    diffs: dict[int, float] = field(default_factory=dict)

    @property
    def max_abs_diff(self) -> float | None:
        return max(self.diffs.values()) if self.diffs else None


@dataclass
class ExportReport:
    checkpoint: Path
    opset: int
    graphs: list[ExportedGraph]
    notes: list[str] = field(default_factory=list)


def graph_paths(onnx_path: str | os.PathLike, modalities: Sequence[str]) -> dict[str, Path]:
    """``model.onnx`` -> ``{"visible": model.visible.onnx, ...}`` (one file per modality, see module doc)."""
    path = Path(onnx_path)
    stem = path.with_suffix("") if path.suffix.lower() == ".onnx" else path
    return {m: stem.parent / f"{stem.name}.{m}.onnx" for m in modalities}


def preprocessing_of(transform: Any, height: int, width: int) -> dict[str, Any]:
    """Input size, interpolation, mean and std of a test transform (torchvision Compose or paired transform)."""
    info: dict[str, Any] = {"height": height, "width": width, "layout": "NCHW", "channels": "RGB", "scale": 1 / 255}
    steps = getattr(transform, "transforms", None)
    if steps is not None:
        for step in steps:
            if hasattr(step, "mean") and hasattr(step, "std"):
                info["mean"], info["std"] = [float(v) for v in step.mean], [float(v) for v in step.std]
            if hasattr(step, "interpolation"):
                info["interpolation"] = getattr(step.interpolation, "value", str(step.interpolation))
    else:
        if hasattr(transform, "mean"):
            info["mean"], info["std"] = [float(v) for v in transform.mean], [float(v) for v in transform.std]
        if hasattr(transform, "interpolation"):
            info["interpolation"] = getattr(transform.interpolation, "value", str(transform.interpolation))
    return info


def _example_inputs(graph: nn.Module, batch: int, height: int, width: int, seed: int) -> tuple[torch.Tensor, ...]:
    gen = torch.Generator().manual_seed(seed)
    count = 2 if isinstance(graph, PairFeatureGraph) else 1
    return tuple(torch.randn(batch, 3, height, width, generator=gen) for _ in range(count))


def check_parity(
    graph: nn.Module,
    onnx_path: str | os.PathLike,
    input_names: Sequence[str],
    height: int,
    width: int,
    *,
    batch_sizes: Sequence[int] = DEFAULT_PARITY_BATCHES,
    seed: int = 0,
) -> dict[int, float]:
    """Largest absolute difference between ``graph`` (PyTorch, fp32, on its device) and onnxruntime, per batch."""
    ort = require("onnxruntime", "onnx", "the ONNX parity check")
    session = ort.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"])
    diffs: dict[int, float] = {}
    graph.eval()
    for batch in batch_sizes:
        inputs = _example_inputs(graph, batch, height, width, seed + batch)
        device = next(graph.parameters()).device
        with torch.no_grad():
            expected = graph(*(x.to(device) for x in inputs)).float().cpu().numpy()
        got = session.run(["features"], {name: x.numpy() for name, x in zip(input_names, inputs)})[0]
        if got.shape != expected.shape:
            raise VireidError(f"{onnx_path}: onnxruntime returned shape {got.shape}, PyTorch {expected.shape}.")
        diffs[int(batch)] = float(abs(got - expected).max())
    return diffs


def export_onnx(
    checkpoint: Any,
    onnx_path: str | os.PathLike,
    *,
    modalities: Sequence[str] | None = None,
    opset: int = 17,
    check: bool = True,
    batch_sizes: Sequence[int] = DEFAULT_PARITY_BATCHES,
    atol: float = DEFAULT_ATOL,
    device: str | torch.device | None = "cpu",
) -> ExportReport:
    """Export the inference path of ``checkpoint`` to ONNX, one file per modality, and check parity.

    Args:
        checkpoint: checkpoint folder, run folder, or a :class:`vireid.engine.loading.LoadedModel`.
        onnx_path: base name; ``model.onnx`` writes ``model.visible.onnx`` and ``model.infrared.onnx``
            (image checkpoints) or ``model.pair.onnx`` (text checkpoints).
        modalities: subset to export (default all of the checkpoint's).
        opset: ONNX opset.
        check: run the onnxruntime parity check (needs the ``onnx`` extra).
        batch_sizes: batch sizes of the parity check (the batch axis is dynamic).
        atol: largest accepted absolute difference of the L2-normalised features.
        device: where the graph is traced and the PyTorch side of the parity check runs (default ``cpu``;
            ``None`` = the GPU if any). onnxruntime runs on the CPU.

    Raises:
        MissingDependencyError: ``onnx`` (or, with ``check``, ``onnxruntime``) is not installed.
        VireidError: the parity check failed.
    """
    check_opset(opset)
    onnx = require("onnx", "onnx", "ONNX export")
    if check:
        require("onnxruntime", "onnx", "the ONNX parity check")
    from vireid.devices import resolve_device
    from vireid.engine.loading import LoadedModel, load_model
    from vireid.inference import TEXT_TASK, parse_modality

    dev = resolve_device(device)
    lm = checkpoint if isinstance(checkpoint, LoadedModel) else load_model(checkpoint, device=dev)
    model = lm.model.to(dev).eval()
    method = lm.method
    task = getattr(method, "task", "vireid")
    available = ["pair"] if task == TEXT_TASK else ["visible", "infrared"]
    wanted = [parse_modality(m, task=task) for m in (modalities or available)]
    if "text" in wanted:
        raise ConfigError(
            "the text encoder of a text checkpoint is not exported (tokenisation runs in Python).",
            fix="export modality 'pair' and embed texts with vireid.FeatureExtractor.",
        )
    embedder = method.embedder(model, lm.cfg)
    flip = bool(lm.cfg.eval.flip)
    height, width = int(lm.cfg.data.height), int(lm.cfg.data.width)
    preprocessing = preprocessing_of(method.test_transform(lm.cfg), height, width)
    notes = []
    if task == TEXT_TASK:
        notes.append("text side not exported: embed descriptions with vireid.FeatureExtractor (tokeniser in Python).")
    report = ExportReport(checkpoint=lm.path, opset=opset, graphs=[], notes=notes)
    for modality, path in graph_paths(onnx_path, wanted).items():
        if modality == "pair":
            graph: nn.Module = PairFeatureGraph(model, embedder, flip)
            names = ["rgb", "thermal"]
        else:
            graph = ImageFeatureGraph(model, embedder, 0 if modality == "visible" else 1, flip)
            names = ["images"]
        graph.eval()
        meta = {
            "vireid.checkpoint": str(lm.path),
            "vireid.method": str(lm.meta.get("method")),
            "vireid.modality": modality,
            "vireid.preprocessing": json.dumps(preprocessing),
            "vireid.output": "L2-normalised features (B, D); cosine similarity = dot product",
            "vireid.flip_tta": str(flip).lower(),
        }
        _write_graph_atomically(onnx, graph, path, names, meta, height, width, opset, dev)
        exported = ExportedGraph(path=path, modality=modality, input_names=names)
        if check:
            exported.diffs = check_parity(graph, path, names, height, width, batch_sizes=batch_sizes)
            if exported.max_abs_diff is not None and exported.max_abs_diff > atol:
                raise VireidError(
                    f"ONNX parity check failed for {path}: max |torch - onnxruntime| = {exported.max_abs_diff:.3g} "
                    f"> {atol:g} (per batch size: {exported.diffs}).",
                    fix="try another --opset; if it persists, report it with the checkpoint's method and config.",
                )
        report.graphs.append(exported)
    return report


def _write_graph_atomically(
    onnx, graph, path: Path, names, meta, height: int, width: int, opset: int, device: torch.device
) -> None:
    """Trace ``graph`` into ``path`` through a temporary file in the same folder and ``os.replace``.

    A failed export (a read-only folder, a full disk) leaves an existing file at ``path`` as it was and
    ends in one :class:`~vireid.errors.StorageError` naming the file.
    """
    ensure_folder(path.parent, "ONNX output folder (--onnx)")
    tmp: str | None = None
    try:
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
        os.close(fd)
        example = tuple(x.to(device) for x in _example_inputs(graph, 2, height, width, seed=0))
        axes = {name: {0: "batch"} for name in [*names, "features"]}
        with torch.no_grad():
            torch.onnx.export(
                graph,
                example,
                tmp,
                input_names=names,
                output_names=["features"],
                dynamic_axes=axes,
                opset_version=opset,
                dynamo=False,
            )
        proto = onnx.load(tmp)
        for key, value in meta.items():
            entry = proto.metadata_props.add()
            entry.key, entry.value = key, value
        onnx.checker.check_model(proto)
        onnx.save(proto, tmp)
        os.replace(tmp, path)
    except OSError as exc:
        if tmp is not None:
            Path(tmp).unlink(missing_ok=True)
        raise storage_error(exc, path, "write the ONNX file") from None
    except torch.onnx.errors.OnnxExporterError as exc:  # an operator this opset cannot express
        if tmp is not None:
            Path(tmp).unlink(missing_ok=True)
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        raise VireidError(
            f"ONNX export to {path} at opset {opset} failed: {first}",
            fix="pass a newer --opset, e.g. 17 (the default).",
        ) from None
    except BaseException:
        if tmp is not None:
            Path(tmp).unlink(missing_ok=True)
        raise


def export_onnx_cli(
    checkpoint: str,
    *,
    onnx_path: str,
    opset: int = 17,
    check: bool = True,
    modality: str | None = None,
    device: str | None = "cpu",
    console=None,
) -> ExportReport:
    """``vireid export``: export, check and print a table of files and parity numbers."""
    from rich.console import Console
    from rich.table import Table

    from vireid.engine.testing import converted_from

    console = console or Console()
    report = export_onnx(
        checkpoint, onnx_path, modalities=[modality] if modality else None, opset=opset, check=check, device=device
    )
    title = f"ONNX export of {report.checkpoint} (opset {report.opset})"
    meta_path = Path(report.checkpoint) / "meta.json"
    converted = converted_from(json.loads(meta_path.read_text())) if meta_path.is_file() else None
    if converted:
        title += f", converted from {converted}"
    table = Table(title=title)
    table.add_column("modality")
    table.add_column("file", overflow="fold")
    table.add_column("inputs")
    table.add_column("max |torch - onnxruntime|", justify="right")
    for g in report.graphs:
        diff = (
            "not checked" if g.max_abs_diff is None else f"{g.max_abs_diff:.2e} (batch {', '.join(map(str, g.diffs))})"
        )
        table.add_row(g.modality, str(g.path), ", ".join(g.input_names), diff)
    console.print(table)
    for note in report.notes:
        console.print(f"note: {note}")
    return report
