"""Run every trial of a protocol with any embedder, and aggregate the results.

The runner is where records become numbers: it extracts one L2-normalised embedding per unique record across
all trials (SYSU's 3,803 queries once, not ten times), scores every trial by cosine similarity (or by
k-reciprocal re-ranking, when asked for and labelled), calls :func:`vireid.evaluation.evaluate` and returns a
:class:`~vireid.evaluation.report.ProtocolResult` (mean +- std over trials, per-trial values, metadata).

Anything that maps images to vectors can be evaluated: an object with ``embed_images(images, modality)``
(:class:`ImageEmbedder`), a plain callable ``(images, modality) -> features``, and for text protocols an
object that also has ``embed_pairs(rgb, thermal)`` and ``embed_texts(texts)`` (:class:`TextPairEmbedder`).
RegDB trains one model per trial: pass a mapping ``{trial index: embedder}`` so that each trial is scored
with its own model.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader, Dataset

from vireid.data.image_io import load_image
from vireid.data.records import CaptionRecord, ImageRecord, Modality
from vireid.devices import autocast, resolve_amp_dtype
from vireid.errors import ProtocolError
from vireid.evaluation.metrics import cmc_variant, evaluate, evaluate_embeddings
from vireid.evaluation.report import ProtocolResult, TrialResult
from vireid.evaluation.rerank import RerankOptions, k_reciprocal_distance
from vireid.evaluation.trial import Trial

__all__ = ["ImageEmbedder", "TextPairEmbedder", "run_protocol"]


@runtime_checkable
class ImageEmbedder(Protocol):
    """Maps a batch of images of one modality to embeddings."""

    def embed_images(self, images: torch.Tensor, modality: Modality) -> torch.Tensor:
        """(B, 3, H, W) normalised images -> (B, D) features (the runner L2-normalises them)."""
        ...


@runtime_checkable
class TextPairEmbedder(Protocol):
    """Embeds captions and RGB+thermal pairs into one space (text -> RGB+T protocols)."""

    def embed_pairs(self, rgb: torch.Tensor, thermal: torch.Tensor) -> torch.Tensor:
        """(B, 3, H, W) RGB and aligned thermal images -> (B, D) pair features."""
        ...

    def embed_texts(self, texts: list[str]) -> torch.Tensor:
        """B captions -> (B, D) text features."""
        ...


ImageFn = Callable[[torch.Tensor, Modality], torch.Tensor]
Embedder = ImageEmbedder | TextPairEmbedder | ImageFn


# --------------------------------------------------------------------------------------------- datasets


class _ImageDataset(Dataset):
    """Decodes and transforms images (picklable, so it works with DataLoader workers)."""

    def __init__(self, paths: Sequence[str], transform: Callable, load: Callable):
        self.paths, self.transform, self.load = list(paths), transform, load

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, i: int) -> torch.Tensor:
        return self.transform(self.load(self.paths[i]))


class _PairDataset(Dataset):
    """RGB at ``path`` and thermal at ``pair_path`` (optionally decoded as gray x 3)."""

    def __init__(self, pairs: Sequence[tuple[str, str]], transform: Callable, load: Callable, thermal_gray3: bool):
        self.pairs, self.transform, self.load, self.gray3 = list(pairs), transform, load, thermal_gray3

    def __len__(self) -> int:
        return len(self.pairs)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, torch.Tensor]:
        rgb_path, thermal_path = self.pairs[i]
        thermal = self.load(thermal_path, gray3=True) if self.gray3 else self.load(thermal_path)
        return self.transform(self.load(rgb_path)), self.transform(thermal)


# ------------------------------------------------------------------------------------------- extraction


@dataclass
class _Extractor:
    """Feature extraction for one embedder: batching, flip TTA, shape checks, L2 normalisation."""

    embedder: Any
    transform: Callable
    load: Callable
    batch_size: int
    workers: int
    device: torch.device
    flip: bool
    thermal_gray3: bool
    progress: Any
    amp_dtype: torch.dtype | None = None
    """Autocast dtype of the network (``None`` = fp32, the default of ``vireid test``)."""

    def _check(self, feats: Any, batch: int, what: str) -> torch.Tensor:
        if not isinstance(feats, torch.Tensor) or feats.ndim != 2 or len(feats) != batch:
            shape = tuple(feats.shape) if isinstance(feats, torch.Tensor) else type(feats).__name__
            raise ProtocolError(
                f"{what} returned {shape} for a batch of {batch}; expected a (batch, dim) embedding.",
                fix="return retrieval embeddings from the inference path (not logits or a tuple).",
            )
        feats = feats.float()
        if not bool(torch.isfinite(feats).all()):
            raise ProtocolError(f"{what} returned NaN or infinite features.", fix="check the model and checkpoint.")
        return feats

    def _fused(self, run: Callable[..., torch.Tensor], inputs: tuple[torch.Tensor, ...], what: str) -> torch.Tensor:
        """F(x) = l2(h(x)), or with flip TTA F(x) = l2((l2(h(x)) + l2(h(flip_W(x)))) / 2), one batched call."""
        inputs = tuple(x.to(self.device, non_blocking=True) for x in inputs)
        batch = len(inputs[0])
        if not self.flip:
            with autocast(self.device, self.amp_dtype):
                out = run(*inputs)
            return F.normalize(self._check(out, batch, what), dim=1)
        doubled = tuple(torch.cat([x, torch.flip(x, dims=[-1])]) for x in inputs)  # new tensors, inputs untouched
        with autocast(self.device, self.amp_dtype):
            out = run(*doubled)
        feats = F.normalize(self._check(out, 2 * batch, what), dim=1)
        return F.normalize(feats[:batch] + feats[batch:], dim=1)  # (a + b) / 2 and (a + b) normalise alike

    def _loader(self, dataset: Dataset) -> DataLoader:
        return DataLoader(
            dataset,
            batch_size=self.batch_size,
            shuffle=False,
            num_workers=self.workers,
            pin_memory=self.device.type == "cuda",
        )

    def images(self, paths: Sequence[str], modality: Modality) -> torch.Tensor:
        if hasattr(self.embedder, "embed_images"):
            run, what = (lambda x: self.embedder.embed_images(x, modality)), "embed_images"
        elif callable(self.embedder):
            run, what = (lambda x: self.embedder(x, modality)), "the embedder"
        else:
            raise ProtocolError(
                f"{type(self.embedder).__name__} cannot embed images.",
                fix="pass an object with embed_images(images, modality) or a callable (images, modality).",
            )
        chunks = []
        task = self.progress.add_task(f"{modality.short} images", total=len(paths))
        for batch in self._loader(_ImageDataset(paths, self.transform, self.load)):
            chunks.append(self._fused(run, (batch,), what))
            self.progress.advance(task, len(batch))
        return torch.cat(chunks)

    def pairs(self, pairs: Sequence[tuple[str, str]]) -> torch.Tensor:
        if not hasattr(self.embedder, "embed_pairs"):
            raise ProtocolError(
                f"{type(self.embedder).__name__} has no embed_pairs(rgb, thermal), needed by text protocols."
            )
        chunks = []
        task = self.progress.add_task("RGB+T pairs", total=len(pairs))
        for rgb, thermal in self._loader(_PairDataset(pairs, self.transform, self.load, self.thermal_gray3)):
            chunks.append(self._fused(self.embedder.embed_pairs, (rgb, thermal), "embed_pairs"))
            self.progress.advance(task, len(rgb))
        return torch.cat(chunks)

    def texts(self, texts: Sequence[str]) -> torch.Tensor:
        if not hasattr(self.embedder, "embed_texts"):
            raise ProtocolError(f"{type(self.embedder).__name__} has no embed_texts(texts), needed by text protocols.")
        chunks = []
        task = self.progress.add_task("captions", total=len(texts))
        for start in range(0, len(texts), self.batch_size):
            batch = list(texts[start : start + self.batch_size])
            with autocast(self.device, self.amp_dtype):
                out = self.embedder.embed_texts(batch)
            feats = self._check(out, len(batch), "embed_texts")
            chunks.append(F.normalize(feats.to(self.device), dim=1))
            self.progress.advance(task, len(batch))
        return torch.cat(chunks)


@contextlib.contextmanager
def _eval_mode(embedder: Any) -> Iterator[None]:
    """Put an nn.Module embedder in eval mode for extraction and restore its previous mode afterwards."""
    module = embedder if isinstance(embedder, torch.nn.Module) else None
    was_training = module.training if module is not None else False
    if module is not None:
        module.eval()
    try:
        with torch.no_grad():  # not inference_mode: the features are used again after extraction
            yield
    finally:
        if module is not None:
            module.train(was_training)


def _default_device(embedder: Any) -> torch.device:
    if isinstance(embedder, torch.nn.Module):
        for param in embedder.parameters():
            return param.device
    return torch.device("cpu")


class _NoProgress:
    def add_task(self, *_: Any, **__: Any) -> int:
        return 0

    def advance(self, *_: Any, **__: Any) -> None:
        pass


@contextlib.contextmanager
def _progress(enabled: bool) -> Iterator[Any]:
    if not enabled:
        yield _NoProgress()
        return
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

    columns = (TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn())
    with Progress(*columns, transient=True) as bar:
        yield bar


# ----------------------------------------------------------------------------------------------- runner


def _check_trials(trials: Sequence[Trial]) -> None:
    if not trials:
        raise ProtocolError("run_protocol got no trials.", fix="check the protocol selection (dataset, mode, trials).")
    indices = [t.index for t in trials]
    if len(set(indices)) != len(indices):
        raise ProtocolError(f"trial indices must be unique within a run, got {indices}.")
    for what in ("protocol_id", "rule", "max_rank"):
        values = {getattr(t, what) for t in trials}
        if len(values) > 1:
            raise ProtocolError(f"trials of one run must share {what}, got {sorted(map(str, values))}.")
    for t in trials:
        if not t.query or not t.gallery:
            part = "query" if not t.query else "gallery"
            raise ProtocolError(f"{t.protocol_id} trial {t.index} has an empty {part} set.")
        if t.rule == "text":
            if not all(isinstance(r, CaptionRecord) for r in t.query):
                raise ProtocolError(f"{t.protocol_id} trial {t.index}: text protocols need CaptionRecord queries.")
            if any(r.pair_path is None for r in t.gallery):
                raise ProtocolError(
                    f"{t.protocol_id} trial {t.index}: text protocols need gallery records with pair_path set."
                )
        elif not all(isinstance(r, ImageRecord) for r in t.query):
            raise ProtocolError(f"{t.protocol_id} trial {t.index}: image protocols need ImageRecord queries.")


def _shared_meta(trials: Sequence[Trial]) -> dict[str, Any]:
    """Trial metadata whose value is the same in every trial (the rest stays per trial)."""
    shared = dict(trials[0].meta)
    for t in trials[1:]:
        for key in list(shared):
            if key not in t.meta or t.meta[key] != shared[key]:
                del shared[key]
    return shared


def run_protocol(
    trials: Iterable[Trial] | Sequence[Trial],
    embedder: Embedder | Mapping[int, Embedder],
    *,
    transform: Callable[[Any], torch.Tensor],
    batch_size: int = 128,
    workers: int = 0,
    device: str | torch.device | None = None,
    flip: bool = False,
    rerank: RerankOptions | None = None,
    load: Callable[..., Any] = load_image,
    progress: bool = True,
    thermal_gray3: bool = False,
    selection_split: str | None = None,
    chunk_size: int | None = None,
    amp: str = "none",
) -> ProtocolResult:
    """Evaluate an embedder on every trial of a protocol.

    Args:
        trials: the protocol's trials (same protocol id, rule and CMC length).
        embedder: an :class:`ImageEmbedder`, a callable ``(images, modality) -> (B, D)``, or for text protocols
            a :class:`TextPairEmbedder`; or a mapping ``{trial index: embedder}`` (RegDB: one model per trial).
            ``nn.Module`` embedders are switched to eval mode during extraction and restored afterwards.
        transform: PIL image -> normalised (3, H, W) tensor (the caller's test transform).
        batch_size, workers: DataLoader settings for decoding (``workers`` processes).
        device: where images are sent (default: the embedder's parameters' device, else CPU).
        flip: horizontal-flip test-time augmentation, F(x) = l2((l2(h(x)) + l2(h(flip(x)))) / 2); recorded.
        rerank: k-reciprocal re-ranking options (default None = off); recorded as ``rerank=<label>``.
        load: image decoder ``load(path[, gray3=...]) -> PIL image``.
        progress: show a progress bar.
        thermal_gray3: decode the thermal image of a pair as gray x 3 (RGBT-PEDE behaviour).
        selection_split: how the evaluated checkpoint was selected (``val``, ``last``, ...); recorded.
        chunk_size: query rows per chunk in ``evaluate`` / re-ranking.
        amp: ``none`` (default, fp32), or on the GPU ``auto``/``bf16``/``fp16`` autocast for extraction
            (:func:`vireid.devices.resolve_amp_dtype`); features are scored in fp32 either way. Recorded.

    Returns:
        ProtocolResult with per-trial results, mean/std (percent) and metadata.
    """
    trials = list(trials)
    _check_trials(trials)
    is_text = trials[0].rule == "text"
    if isinstance(embedder, Mapping):
        missing = [t.index for t in trials if t.index not in embedder]
        if missing:
            raise ProtocolError(f"no embedder given for trial(s) {missing} of {trials[0].protocol_id}.")
        per_trial = {t.index: embedder[t.index] for t in trials}
    else:
        per_trial = {t.index: embedder for t in trials}

    # Extract each unique record once per embedder (by identity), across all trials.
    groups: dict[int, list[Trial]] = {}
    for t in trials:
        groups.setdefault(id(per_trial[t.index]), []).append(t)
    results: dict[int, TrialResult] = {}
    with _progress(progress) as bar:
        for group in groups.values():
            model = per_trial[group[0].index]
            dev = torch.device(device) if device is not None else _default_device(model)
            extractor = _Extractor(
                model, transform, load, batch_size, workers, dev, flip, thermal_gray3, bar, resolve_amp_dtype(amp, dev)
            )
            with _eval_mode(model):
                feats, index = _extract(group, extractor, is_text)
            for t in group:
                results[t.index] = TrialResult(
                    index=t.index,
                    result=_score_trial(t, feats, index, is_text, rerank, chunk_size),
                    meta=dict(t.meta),
                )

    ordered = [results[t.index] for t in trials]
    first = trials[0]
    metadata: dict[str, Any] = {
        **_shared_meta(trials),
        "protocol_id": first.protocol_id,
        "sampler": first.meta.get("sampler"),
        "direction": first.meta.get("direction"),
        "trials": [t.index for t in trials],
        "num_trials": len(trials),
        "rule": first.rule,
        "max_rank": first.max_rank,
        "cmc_variant": cmc_variant(first.rule),
        "score": "k_reciprocal re-ranked distance (squared Euclidean of L2-normalised features)"
        if rerank is not None
        else "cosine similarity of L2-normalised embeddings",
        "rerank": rerank.label if rerank is not None else "none",
        "tta": "flip" if flip else "none",
        "precision": "fp32" if amp == "none" else f"amp={amp}",
        "selection_split": selection_split,
    }
    return ProtocolResult.from_trials(first.protocol_id, ordered, metadata)


def _image_key(r: ImageRecord) -> tuple[str, int]:
    return (str(Path(r.path)), int(r.modality))


def _extract(
    trials: Sequence[Trial], extractor: _Extractor, is_text: bool
) -> tuple[dict[str, torch.Tensor], dict[str, dict[Any, int]]]:
    """Embed every unique record of ``trials`` once; return features and key -> row maps per kind."""
    feats: dict[str, torch.Tensor] = {}
    index: dict[str, dict[Any, int]] = {}
    if is_text:
        texts = {r.text: None for t in trials for r in t.query}  # insertion-ordered unique captions
        pairs = {(str(r.path), str(r.pair_path)): None for t in trials for r in t.gallery}
        index["text"] = {k: i for i, k in enumerate(texts)}
        index["pair"] = {k: i for i, k in enumerate(pairs)}
        feats["text"] = extractor.texts(list(texts))
        feats["pair"] = extractor.pairs(list(pairs))
        return feats, index
    by_modality: dict[int, dict[str, None]] = {}
    for t in trials:
        for r in (*t.query, *t.gallery):
            by_modality.setdefault(int(r.modality), {})[str(Path(r.path))] = None
    rows, offset, blocks = {}, 0, []
    for modality, paths in sorted(by_modality.items()):
        blocks.append(extractor.images(list(paths), Modality(modality)))
        for i, path in enumerate(paths):
            rows[(path, modality)] = offset + i
        offset += len(paths)
    feats["image"] = torch.cat(blocks)
    index["image"] = rows
    return feats, index


def _score_trial(
    trial: Trial,
    feats: dict[str, torch.Tensor],
    index: dict[str, dict[Any, int]],
    is_text: bool,
    rerank: RerankOptions | None,
    chunk_size: int | None,
):
    if is_text:
        q_rows = [index["text"][r.text] for r in trial.query]
        g_rows = [index["pair"][(str(r.path), str(r.pair_path))] for r in trial.gallery]
        qf, gf = feats["text"][q_rows], feats["pair"][g_rows]
        q_cams = None
    else:
        q_rows = [index["image"][_image_key(r)] for r in trial.query]
        g_rows = [index["image"][_image_key(r)] for r in trial.gallery]
        qf, gf = feats["image"][q_rows], feats["image"][g_rows]
        q_cams = [r.camid for r in trial.query]
    q_pids = [r.pid for r in trial.query]
    g_pids = [r.pid for r in trial.gallery]
    g_cams = [r.camid for r in trial.gallery]
    if rerank is not None:
        dist = k_reciprocal_distance(
            qf, gf, rerank.k1, rerank.k2, rerank.lambda_value, rerank.variant, chunk_size=chunk_size
        )
        return evaluate(dist, q_pids, g_pids, q_cams, g_cams, trial.rule, trial.max_rank, chunk_size=chunk_size)
    # Cosine similarity, computed chunk by chunk: the (Q, G) matrix is never materialised.
    return evaluate_embeddings(
        qf, gf, q_pids, g_pids, q_cams, g_cams, trial.rule, trial.max_rank, chunk_size=chunk_size
    )
