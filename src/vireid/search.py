"""Search a gallery index with a query image or a text description (``vireid search``).

The ranking itself (exact torch blocks, faiss flat, faiss IVF; ``--backend``) lives in :mod:`vireid.ranking`
and is re-exported here; this module adds queries, rank lists with paths and identities, and the command
line. Dependencies run one way: search -> index -> ranking.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from vireid.errors import CheckpointError, ConfigError
from vireid.index import (
    GalleryIndex,
    build_index,
    check_checkpoint_matches,
    identity_of_query,
)
from vireid.ranking import (
    BACKENDS,
    DEFAULT_BLOCK_ELEMENTS,
    Backend,
    SearchResult,
    build_ivf,
    exact_topk,
    faiss_flat_index,
    faiss_topk,
    load_ivf,
    resolve_backend,
    save_ivf,
    search_index,
)

__all__ = [
    "BACKENDS",
    "DEFAULT_BLOCK_ELEMENTS",
    "Backend",
    "SearchHit",
    "SearchResult",
    "build_index_cli",
    "build_ivf",
    "exact_topk",
    "faiss_flat_index",
    "faiss_topk",
    "hits_for_query",
    "load_ivf",
    "resolve_backend",
    "save_ivf",
    "search_cli",
    "search_index",
]


@dataclass(frozen=True)
class SearchHit:
    """One ranked gallery item of one query, for tables and pictures."""

    rank: int
    index: int
    score: float
    path: Path
    pair_path: Path | None
    pid: int | None
    match: bool | None
    """Same identity as the query (``None`` when either identity is unknown)."""


def hits_for_query(
    index: GalleryIndex, result: SearchResult, row: int = 0, query_pid: int | None = None
) -> list[SearchHit]:
    """The ranked items of query ``row`` with paths, identities and match flags."""
    hits = []
    pids = index.meta.pids
    for rank, (score, i) in enumerate(zip(result.scores[row].tolist(), result.indices[row].tolist()), start=1):
        if i < 0:  # IVF found fewer than k items
            continue
        pid = pids[i] if pids is not None else None
        match = None if pid is None or query_pid is None else pid == query_pid
        hits.append(
            SearchHit(
                rank=rank,
                index=i,
                score=float(score),
                path=index.absolute_path(i),
                pair_path=index.absolute_pair_path(i),
                pid=pid,
                match=match,
            )
        )
    return hits


# ------------------------------------------------------------------------------------------------- CLI


def build_index_cli(
    checkpoint: str,
    *,
    images: str,
    modality: str,
    output: str,
    batch_size: int = 64,
    device: str | None = None,
    labels: str | None = None,
    workers: int = 0,
    ivf: int = 0,
    amp: str = "none",
    console=None,
) -> GalleryIndex:
    """``vireid index``: build an index and print what it holds."""
    from rich.console import Console

    console = console or Console()
    index = build_index(
        checkpoint,
        images,
        output,
        modality=modality,
        labels=labels,
        batch_size=batch_size,
        workers=workers,
        device=device,
        ivf_lists=ivf,
        progress=console.is_terminal,
        amp=amp,
    )
    meta = index.meta
    ids = f"{len(set(meta.pids))} identities ({meta.identity_source})" if meta.pids is not None else "no identities"
    what = "RGB+thermal pairs" if meta.modality == "pair" else f"{meta.modality} images"
    console.print(
        f"indexed {meta.num_items} {what} ({meta.dim}-d features, {ids}) -> {index.folder}"
        + (f" with an IVF index ({ivf} lists)" if ivf else "")
    )
    return index


def search_cli(
    index: str,
    *,
    query: str | None = None,
    text: str | None = None,
    modality: str = "infrared",
    top: int = 10,
    output: str | None = None,
    backend: str = "auto",
    device: str | None = None,
    checkpoint: str | None = None,
    query_id: int | None = None,
    nprobe: int = 16,
    amp: str = "none",
    console=None,
) -> list[SearchHit]:
    """``vireid search``: embed one query, rank the index, print a table and optionally draw a rank list."""
    from rich.console import Console
    from rich.table import Table

    from vireid.engine.testing import converted_from
    from vireid.inference import FeatureExtractor

    console = console or Console()
    if (query is None) == (text is None):
        raise ConfigError("give exactly one of --query IMAGE or --text DESCRIPTION.")
    gallery = GalleryIndex.open(index)
    ckpt = Path(checkpoint or gallery.meta.checkpoint.path)
    if not ckpt.exists():
        raise CheckpointError(
            f"the checkpoint that built {gallery.folder} is not at {ckpt} any more.",
            fix="pass its new location with --checkpoint.",
        )
    extractor = FeatureExtractor(ckpt, device=device, amp=amp)
    check_checkpoint_matches(gallery, extractor.checkpoint_path)
    if text is not None:
        features = extractor(text, "text")
    else:
        if gallery.modality == "pair":
            raise ConfigError(
                f"index {gallery.folder} holds RGB+thermal pairs of a text model; it is searched with a description.",
                fix='use --text "..." instead of --query.',
            )
        features = extractor(query, modality)
        if query_id is None and gallery.has_identities:
            query_id = identity_of_query(query, gallery.meta.identity_source)
    result = gallery.search(features, min(top, len(gallery)), backend=backend, nprobe=nprobe, device=extractor.device)
    hits = hits_for_query(gallery, result, 0, query_id)

    what = "RGB+thermal pairs" if gallery.modality == "pair" else f"{gallery.modality} images"
    title = f"top {len(hits)} of {len(gallery)} {what} ({result.backend} search)"
    converted = converted_from(extractor.loaded.meta)
    if converted:  # every table printed for a converted model says so
        title += f", model converted from {converted}"
    table = Table(title=title)
    table.add_column("rank", justify="right")
    table.add_column("score", justify="right")
    show_ids = gallery.has_identities
    if show_ids:
        table.add_column("identity", justify="right")
    table.add_column("path", overflow="fold")
    for hit in hits:
        row = [str(hit.rank), f"{hit.score:.4f}"]
        if show_ids:
            mark = "" if hit.match is None else (" [green]✓[/]" if hit.match else " [red]✗[/]")
            row.append(f"{hit.pid}{mark}")
        row.append(str(Path(gallery.meta.paths[hit.index])))
        table.add_row(*row)
    console.print(table)
    if output:
        from vireid.visualize import save_search_picture

        path = save_search_picture(
            query if text is None else text, hits, output, query_pid=query_id, text=text is not None
        )
        console.print(f"rank list written to {path}")
    return hits
