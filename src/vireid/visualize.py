"""Rank-list pictures: a query and its top-k gallery items in a row, green/red borders for right/wrong identity.

Shared by ``vireid search -o ranks.png`` (one row) and ``vireid test --visualize K`` (one row per query of the
K worst queries by AP). Drawing uses PIL only, so the picture size is exact and known in advance
(:meth:`RankListLayout.size`)::

    margin | query tile | gap | tile 1 | spacing | tile 2 | ... | tile k | margin

A tile is a coloured border around one thumbnail (two side by side, RGB then thermal, for an RGB+T pair)
above a one-line caption (rank and score). The query's border is blue; a gallery border is green for the
query's identity, red for another one and grey when either identity is unknown. A text query is drawn as a
wider white tile holding the wrapped description.
"""

from __future__ import annotations

import os
import textwrap
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image, ImageDraw, ImageFont

from vireid.data.image_io import load_image

QUERY_COLOUR = (40, 90, 200)
MATCH_COLOUR = (0, 160, 0)
MISMATCH_COLOUR = (210, 20, 20)
UNKNOWN_COLOUR = (170, 170, 170)
BACKGROUND = (255, 255, 255)


@dataclass
class RankTile:
    """One cell of a rank list: one image (or an RGB + thermal pair) or a text, a caption and a border colour."""

    images: tuple[Image.Image, ...] = ()
    text: str | None = None
    caption: str = ""
    match: bool | None = None
    is_query: bool = False


@dataclass
class RankListRow:
    query: RankTile
    gallery: list[RankTile]


@dataclass(frozen=True)
class RankListLayout:
    """Pixel geometry of a rank-list picture (all sizes in pixels)."""

    thumb_height: int = 128
    thumb_width: int = 64
    border: int = 4
    caption_height: int = 14
    pair_gap: int = 2
    spacing: int = 4
    query_gap: int = 16
    margin: int = 8
    row_gap: int = 10
    text_width: int = 200

    @property
    def tile_height(self) -> int:
        return self.thumb_height + 2 * self.border + self.caption_height

    def tile_width(self, tile: RankTile) -> int:
        if tile.text is not None:
            return self.text_width
        n = max(1, len(tile.images))
        return n * self.thumb_width + (n - 1) * self.pair_gap + 2 * self.border

    def row_width(self, row: RankListRow) -> int:
        gallery = sum(self.tile_width(t) for t in row.gallery) + self.spacing * max(0, len(row.gallery) - 1)
        return self.tile_width(row.query) + self.query_gap + gallery

    def size(self, rows: Sequence[RankListRow]) -> tuple[int, int]:
        """(width, height) of the picture of ``rows``."""
        width = 2 * self.margin + max(self.row_width(r) for r in rows)
        height = 2 * self.margin + len(rows) * self.tile_height + (len(rows) - 1) * self.row_gap
        return width, height


def _font() -> ImageFont.ImageFont:
    return ImageFont.load_default()


def _border_colour(tile: RankTile) -> tuple[int, int, int]:
    if tile.is_query:
        return QUERY_COLOUR
    if tile.match is None:
        return UNKNOWN_COLOUR
    return MATCH_COLOUR if tile.match else MISMATCH_COLOUR


def _draw_tile(canvas: Image.Image, draw: ImageDraw.ImageDraw, tile: RankTile, x: int, y: int, lay: RankListLayout):
    width = lay.tile_width(tile)
    box_h = lay.thumb_height + 2 * lay.border
    draw.rectangle([x, y, x + width - 1, y + box_h - 1], fill=_border_colour(tile))
    inner = [x + lay.border, y + lay.border, x + width - lay.border - 1, y + box_h - lay.border - 1]
    if tile.text is not None:
        draw.rectangle(inner, fill=BACKGROUND)
        chars = max(8, (width - 2 * lay.border - 4) // 6)
        lines = textwrap.wrap(tile.text, chars)
        max_lines = max(1, (lay.thumb_height - 4) // 11)
        if len(lines) > max_lines:
            lines = [*lines[: max_lines - 1], lines[max_lines - 1][: chars - 3] + "..."]
        draw.multiline_text((inner[0] + 2, inner[1] + 2), "\n".join(lines), fill=(0, 0, 0), font=_font(), spacing=1)
    else:
        px = x + lay.border
        for img in tile.images:
            thumb = img.convert("RGB").resize((lay.thumb_width, lay.thumb_height), Image.Resampling.BILINEAR)
            canvas.paste(thumb, (px, y + lay.border))
            px += lay.thumb_width + lay.pair_gap
    if tile.caption:
        draw.text((x + 1, y + box_h + 1), tile.caption, fill=(0, 0, 0), font=_font())


def draw_rank_lists(rows: Sequence[RankListRow], layout: RankListLayout | None = None) -> Image.Image:
    """Draw one rank list per row into an RGB image of size ``layout.size(rows)``."""
    if not rows:
        raise ValueError("no rank-list rows to draw")
    lay = layout or RankListLayout()
    canvas = Image.new("RGB", lay.size(rows), BACKGROUND)
    draw = ImageDraw.Draw(canvas)
    y = lay.margin
    for row in rows:
        x = lay.margin
        _draw_tile(canvas, draw, row.query, x, y, lay)
        x += lay.tile_width(row.query) + lay.query_gap
        for tile in row.gallery:
            _draw_tile(canvas, draw, tile, x, y, lay)
            x += lay.tile_width(tile) + lay.spacing
        y += lay.tile_height + lay.row_gap
    return canvas


def save_picture(image: Image.Image, output: str | os.PathLike) -> Path:
    output = Path(output)
    output.parent.mkdir(parents=True, exist_ok=True)
    image.save(output)
    return output


# ----------------------------------------------------------------------------------------------- search


def _gallery_tile(path: Path, pair_path: Path | None, caption: str, match: bool | None) -> RankTile:
    images = (load_image(path),) if pair_path is None else (load_image(path), load_image(pair_path))
    return RankTile(images=images, caption=caption, match=match)


def search_row(query: Any, hits: Sequence[Any], *, query_pid: int | None = None, text: bool = False) -> RankListRow:
    """The rank-list row of one search: ``query`` is an image path / PIL image, or the text when ``text``."""
    caption = "query" if query_pid is None else f"query id {query_pid}"
    if text:
        q_tile = RankTile(text=str(query), caption=caption, is_query=True)
    else:
        img = query if isinstance(query, Image.Image) else load_image(query)
        q_tile = RankTile(images=(img,), caption=caption, is_query=True)
    tiles = [_gallery_tile(h.path, h.pair_path, f"{h.rank}: {h.score:.3f}", h.match) for h in hits]
    return RankListRow(query=q_tile, gallery=tiles)


def save_search_picture(
    query: Any,
    hits: Sequence[Any],
    output: str | os.PathLike,
    *,
    query_pid: int | None = None,
    text: bool = False,
    layout: RankListLayout | None = None,
) -> Path:
    """Draw the rank list of one search (:class:`vireid.search.SearchHit` list) and save it (PNG by suffix)."""
    return save_picture(draw_rank_lists([search_row(query, hits, query_pid=query_pid, text=text)], layout), output)


# ----------------------------------------------------------------------------------------- test: worst


def _display_junk(rule: str, q_pid: int, q_cam: int, g_pids: np.ndarray, g_cams: np.ndarray) -> np.ndarray:
    """Gallery items a protocol discards for this query (data-and-protocols.md section 3); they are left
    out of the pictures exactly as they are left out of the metrics."""
    if rule == "sysu":
        return (g_cams == 2) if q_cam == 3 else np.zeros(len(g_pids), dtype=bool)
    if rule in ("llcm", "market"):
        return (g_pids == q_pid) & (g_cams == q_cam)
    return np.zeros(len(g_pids), dtype=bool)


def worst_query_rows(
    trial: Any,
    query_features: torch.Tensor,
    gallery_features: torch.Tensor,
    k: int,
    *,
    top: int = 10,
) -> tuple[list[RankListRow], list[int], list[float]]:
    """Rank-list rows of the ``k`` queries with the lowest AP in one trial.

    Args:
        trial: a :class:`vireid.evaluation.trial.Trial` (image or text queries).
        query_features, gallery_features: (Q, D) and (G, D) L2-normalised features in trial order.
        k: number of queries; ``top``: gallery items per row.

    Returns the rows, the query indices and their APs. AP comes from
    :func:`vireid.evaluation.per_query_metrics` on cosine similarity, with the trial's junk rule.
    """
    from vireid.evaluation import per_query_metrics

    sim = query_features.float() @ gallery_features.float().T
    q_pids = np.array([r.pid for r in trial.query])
    g_pids = np.array([r.pid for r in trial.gallery])
    text_queries = trial.rule == "text"
    q_cams = None if text_queries else np.array([r.camid for r in trial.query])
    g_cams = np.array([getattr(r, "camid", 0) for r in trial.gallery])
    metrics = per_query_metrics(
        sim, q_pids, g_pids, q_cams, None if text_queries else g_cams, trial.rule, similarity=True
    )
    worst = [int(i) for i in metrics.worst(k)]
    rows = []
    for qi in worst:
        record = trial.query[qi]
        junk = (
            np.zeros(len(g_pids), dtype=bool)
            if text_queries
            else _display_junk(trial.rule, q_pids[qi], q_cams[qi], g_pids, g_cams)
        )
        # Stable descending order (ties by gallery index) over the kept items: the ranking the metrics score.
        kept = torch.from_numpy(np.flatnonzero(~junk))
        order = torch.sort(sim[qi, kept], descending=True, stable=True).indices[:top]
        top_s, top_i = sim[qi, kept[order]], kept[order]
        caption = f"id {record.pid} AP {100 * metrics.ap[qi]:.1f}"
        if text_queries:
            q_tile = RankTile(text=record.text, caption=caption, is_query=True)
        else:
            q_tile = RankTile(images=(load_image(record.path),), caption=caption, is_query=True)
        tiles = []
        for rank, (s, gi) in enumerate(zip(top_s.tolist(), top_i.tolist()), start=1):
            g = trial.gallery[gi]
            pair = Path(g.pair_path) if getattr(g, "pair_path", None) else None
            tiles.append(_gallery_tile(Path(g.path), pair, f"{rank}: {s:.3f}", bool(g.pid == record.pid)))
        rows.append(RankListRow(query=q_tile, gallery=tiles))
    return rows, worst, [float(metrics.ap[i]) for i in worst]


def trial_features(trial: Any, extractor: Any) -> tuple[torch.Tensor, torch.Tensor]:
    """(Q, D) query and (G, D) gallery features of a trial in record order, with a
    :class:`vireid.inference.FeatureExtractor` (the same features the protocol runner scores)."""
    if trial.rule == "text":
        queries = extractor.extract_texts([r.text for r in trial.query])
        gallery = extractor.extract_pairs([(r.path, r.pair_path) for r in trial.gallery])
        return queries, gallery

    def by_modality(records) -> torch.Tensor:
        out = None
        for modality in sorted({int(r.modality) for r in records}):
            rows = [i for i, r in enumerate(records) if int(r.modality) == modality]
            feats = extractor.extract_images([records[i].path for i in rows], modality)
            if out is None:
                out = torch.empty(len(records), feats.shape[1])
            out[rows] = feats
        assert out is not None
        return out

    return by_modality(trial.query), by_modality(trial.gallery)


def save_worst_queries(
    trial: Any,
    k: int,
    out_dir: str | os.PathLike,
    *,
    extractor: Any = None,
    query_features: torch.Tensor | None = None,
    gallery_features: torch.Tensor | None = None,
    top: int = 10,
    layout: RankListLayout | None = None,
) -> Path:
    """Write ``<out_dir>/<protocol>.trial<i>.worst<k>.png``: the rank lists of the ``k`` worst queries by AP.

    Give either the trial's features or a :class:`vireid.inference.FeatureExtractor` to compute them. Ranking
    and AP use cosine similarity (re-ranking, if the test used it, is not applied to the pictures).
    """
    if query_features is None or gallery_features is None:
        if extractor is None:
            raise ValueError("save_worst_queries needs the trial's features or an extractor to compute them")
        query_features, gallery_features = trial_features(trial, extractor)
    rows, _, _ = worst_query_rows(trial, query_features, gallery_features, k, top=top)
    if not rows:
        raise ValueError(f"trial {trial.protocol_id} #{trial.index} has no valid query to draw")
    name = f"{trial.protocol_id}.trial{trial.index}.worst{len(rows)}.png"
    return save_picture(draw_rank_lists(rows, layout), Path(out_dir) / name)
