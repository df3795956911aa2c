"""Contact sheet of a written synthetic set: a few identities, visible and infrared side by side.

The sheet is read back from the files on disk (not re-rendered), so it shows exactly what readers will load,
including JPEG compression and, for RGBT-PEDES, the pseudo-coloured thermal images. Text layouts add one
caption under each row.
"""

from __future__ import annotations

import json
import textwrap
from dataclasses import dataclass, field
from pathlib import Path

from PIL import Image, ImageDraw, ImageFont

from vireid.data.synthetic.layouts import LAYOUTS, MARKER_NAME, RGBNT201_PEDES_ANNOTATIONS, RGBT_PEDES_ANNOTATIONS
from vireid.errors import ConfigError, DataError

_ROWS = 6
_PER_SIDE = 3


@dataclass
class _Row:
    pid: int
    cells: list[tuple[str, Path]] = field(default_factory=list)  # (column label, image path)
    caption: str = ""


def _files(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir() if p.is_file()) if folder.is_dir() else []


def _ids_line(path: Path) -> list[int]:
    return [int(v) for v in path.read_text().splitlines()[0].split(",")]


def _rows_sysu(root: Path) -> list[_Row]:
    rows = []
    for pid in _ids_line(root / "exp" / "test_id.txt")[:_ROWS]:
        row = _Row(pid)
        for cams in ((1, 2, 4, 5), (3, 6)):
            cells = [(f"cam{c}", f) for c in cams for f in _files(root / f"cam{c}" / f"{pid:04d}")[:2]]
            row.cells += cells[:_PER_SIDE]
        rows.append(row)
    return rows


def _rows_regdb(root: Path) -> list[_Row]:
    rows = []
    ids = sorted(int(p.name) for p in (root / "Visible").iterdir() if p.is_dir())
    for pid in ids[:_ROWS]:
        row = _Row(pid)
        row.cells += [("Visible", f) for f in _files(root / "Visible" / str(pid))[:_PER_SIDE]]
        row.cells += [("Thermal", f) for f in _files(root / "Thermal" / str(pid))[:_PER_SIDE]]
        rows.append(row)
    return rows


def _rows_llcm(root: Path) -> list[_Row]:
    rows = []
    for pid in _ids_line(root / "idx" / "test_id.txt")[:_ROWS]:
        row = _Row(pid)
        for mod in ("vis", "nir"):
            cells = [
                (f"{mod} cam{c}", f)
                for c in range(1, 10)
                for f in _files(root / f"test_{mod}" / f"cam{c}" / f"{pid:04d}")[:1]
            ]
            row.cells += cells[:_PER_SIDE]
        rows.append(row)
    return rows


def _rows_rgbnt201(root: Path) -> list[_Row]:
    base = root / "RGBNT201" / "test"
    by_pid: dict[int, list[str]] = {}
    for f in _files(base / "RGB"):
        by_pid.setdefault(int(f.name.split("_")[0]), []).append(f.name)
    rows = []
    for pid in sorted(by_pid)[:_ROWS]:
        row = _Row(pid)
        for name in by_pid[pid][:2]:
            row.cells += [(folder, base / folder / name) for folder in ("RGB", "NI", "TI")]
        rows.append(row)
    return rows


def _rows_text(root: Path, annotations: str, thermal: str) -> list[_Row]:
    ann_path = root / annotations
    records = json.loads(ann_path.read_text(encoding="utf-8"))
    base = ann_path.parent
    by_pid: dict[int, list[dict]] = {}
    for rec in records:
        if rec["split"] == "test":
            by_pid.setdefault(int(rec["id"]), []).append(rec)
    rows = []
    for pid in sorted(by_pid)[:_ROWS]:
        row = _Row(pid, caption=by_pid[pid][0]["captions"][0])
        for rec in by_pid[pid][:_PER_SIDE]:
            rgb = base / rec["file_path"]
            row.cells += [("RGB", rgb), (thermal, rgb.parent.parent / thermal / rgb.name)]
        rows.append(row)
    return rows


def write_preview(layout: str, out: str | Path, png_path: str | Path) -> Path:
    """Draw a contact sheet of the set written by ``write_layout(layout, out, ...)`` into ``png_path``.

    Each row is one test identity: visible images on the left, infrared on the right (RGBNT201: RGB, NI, TI
    triplets; text layouts: RGB / thermal pairs with one caption under the row).
    """
    if layout not in LAYOUTS:
        raise ConfigError(f"unknown layout '{layout}'.", fix=f"use one of: {', '.join(LAYOUTS)}.")
    root = Path(out)
    if not (root / MARKER_NAME).is_file():
        raise DataError(
            f"{root} is not a set written by vireid synth (no {MARKER_NAME}).", fix="run vireid synth first."
        )
    try:
        rows = {
            "sysu": _rows_sysu,
            "regdb": _rows_regdb,
            "llcm": _rows_llcm,
            "rgbnt201": _rows_rgbnt201,
            "rgbt-pedes": lambda r: _rows_text(r, RGBT_PEDES_ANNOTATIONS, "T"),
            "rgbnt201-pedes": lambda r: _rows_text(r, RGBNT201_PEDES_ANNOTATIONS, "TI"),
        }[layout](root)
    except (OSError, ValueError, KeyError, IndexError) as exc:
        raise DataError(
            f"{root} does not look like a {layout} set ({exc}).", fix="pass the layout it was written with."
        ) from None
    if not rows:
        raise DataError(f"{root} has no test identities to preview.", fix="generate the set again.")

    cell_h, cell_w = 128, 64
    label_h, margin, pid_w = 12, 4, 44
    caption_lines = 3 if any(r.caption for r in rows) else 0
    row_h = label_h + cell_h + caption_lines * 11 + margin
    cols = max(len(r.cells) for r in rows)
    sheet = Image.new("RGB", (pid_w + cols * (cell_w + margin), len(rows) * row_h + margin), (255, 255, 255))
    draw = ImageDraw.Draw(sheet)
    font = ImageFont.load_default()
    for i, row in enumerate(rows):
        y = margin + i * row_h
        draw.text((2, y + label_h + cell_h // 2 - 6), f"id {row.pid}", fill=(0, 0, 0), font=font)
        for j, (label, path) in enumerate(row.cells):
            x = pid_w + j * (cell_w + margin)
            with Image.open(path) as img:
                sheet.paste(img.convert("RGB").resize((cell_w, cell_h), Image.Resampling.BILINEAR), (x, y + label_h))
            draw.text((x, y), label, fill=(60, 60, 60), font=font)
        if row.caption:
            width = max(20, (sheet.width - pid_w) // 6)
            for k, line in enumerate(textwrap.wrap(row.caption, width)[:caption_lines]):
                draw.text((pid_w, y + label_h + cell_h + 1 + 11 * k), line, fill=(0, 0, 90), font=font)
    png_path = Path(png_path)
    png_path.parent.mkdir(parents=True, exist_ok=True)
    sheet.save(png_path)
    return png_path
