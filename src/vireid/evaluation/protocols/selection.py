"""``vireid protocol``: print the images a protocol selects, so users can audit splits and galleries.

One line per selected item, tab-separated: the path relative to the root, the identity, the camera (and,
for RGB+thermal pairs, the thermal path). Text queries print the identity and the caption.
"""

from __future__ import annotations

import sys
from typing import TextIO

from vireid.data.readers.layout import relative
from vireid.data.records import CaptionRecord, ImageRecord
from vireid.errors import ProtocolError

SPLITS = ("query", "gallery")


def _choice(name: str, value, valid, dataset: str):
    if value not in valid:
        raise ProtocolError(f"{dataset}: {name}={value!r} is not valid; use one of {', '.join(str(v) for v in valid)}.")
    return value


def _unsupported(dataset: str, **given) -> None:
    """Options a dataset has no use for must keep their defaults (None, shots=1, sampler=random)."""
    defaults = {"mode": None, "shots": 1, "sampler": "random"}
    for name, value in given.items():
        if value != defaults[name]:
            raise ProtocolError(
                f"{dataset} has no {name} option (got {value!r}); only SYSU-MM01 has modes, multi-shot galleries "
                f"and the official sampler.",
                fix=f"drop --{name}.",
            )


def format_item(item: ImageRecord | CaptionRecord, root: str) -> str:
    """The line printed for one selected record."""
    if isinstance(item, CaptionRecord):
        return f"{item.pid}\t{' '.join(item.text.split())}"
    line = f"{relative(item.path, root)}\t{item.pid}\t{item.camid}"
    if item.pair_path is not None:
        line += f"\t{relative(item.pair_path, root)}"
    return line


def print_protocol_selection(
    dataset: str,
    root: str,
    mode: str | None = None,
    trial: int | None = None,
    shots: int = 1,
    sampler: str = "random",
    direction: str | None = None,
    split: str = "query",
    out: TextIO | None = None,
) -> int:
    """Print the query or gallery of one protocol trial, one item per line; return the number of lines.

    Args:
        dataset: ``sysu``, ``regdb``, ``llcm``, ``rgbt_pedes``, ``rgbnt201_pedes`` or ``rgbnt201``.
        root: dataset root.
        mode: SYSU-MM01 ``all`` (default) or ``indoor``.
        trial: SYSU-MM01/LLCM 0..9 (default 0); RegDB 1..10 (default 1); text and RGBNT201 only 0.
        shots: SYSU-MM01 1 or 10.
        sampler: SYSU-MM01 ``random`` or ``official``.
        direction: RegDB ``v2t`` (default) or ``t2v``; LLCM ``ir2vis`` (default), ``vis2ir`` or
            ``vis2ir.deen_release``; text ``t2rgbt``; RGBNT201 ``mm``.
        split: ``query`` or ``gallery``.
        out: stream to write to (default stdout).

    Raises:
        ProtocolError: an option is invalid for the dataset (the message names the valid values).
    """
    from vireid.data.catalog import canonical_name, get_dataset
    from vireid.evaluation.protocols.llcm import DIRECTIONS as LLCM_DIRECTIONS
    from vireid.evaluation.protocols.regdb import DIRECTIONS as REGDB_DIRECTIONS
    from vireid.evaluation.protocols.sysu import GALLERY_CAMERAS, SAMPLERS

    out = out or sys.stdout
    name = canonical_name(dataset)
    _choice("split", split, SPLITS, name)
    if name == "sysu":
        if direction is not None:
            raise ProtocolError("SYSU-MM01 has no direction option: queries are infrared, galleries visible.")
        mode = _choice("mode", mode or "all", tuple(GALLERY_CAMERAS), "SYSU-MM01")
        _choice("shots", shots, (1, 10), "SYSU-MM01")
        _choice("sampler", sampler, SAMPLERS, "SYSU-MM01")
        index = _choice("trial", 0 if trial is None else trial, tuple(range(10)), "SYSU-MM01")
        ds = get_dataset("sysu", root)
        protocol_id = f"sysu.{mode}.{'single' if shots == 1 else 'multi'}.{sampler}"
    elif name == "regdb":
        _unsupported("RegDB", mode=mode, shots=shots, sampler=sampler)
        index = _choice("trial", 1 if trial is None else trial, tuple(range(1, 11)), "RegDB")
        direction = _choice("direction", direction or "v2t", REGDB_DIRECTIONS, "RegDB")
        ds = get_dataset("regdb", root, trial=index)
        protocol_id = f"regdb.{direction}"
    elif name == "llcm":
        _unsupported("LLCM", mode=mode, shots=shots, sampler=sampler)
        index = _choice("trial", 0 if trial is None else trial, tuple(range(10)), "LLCM")
        direction = _choice("direction", direction or "ir2vis", LLCM_DIRECTIONS, "LLCM")
        ds = get_dataset("llcm", root)
        protocol_id = f"llcm.{direction}"
    elif name in ("rgbt_pedes", "rgbnt201_pedes"):
        _unsupported(name, mode=mode, shots=shots, sampler=sampler)
        _choice("direction", direction or "t2rgbt", ("t2rgbt",), name)
        index = _choice("trial", 0 if trial is None else trial, (0,), name)
        ds = get_dataset(name, root)
        protocol_id = "text.t2rgbt"
    elif name == "rgbnt201":
        _unsupported("RGBNT201", mode=mode, shots=shots, sampler=sampler)
        _choice("direction", direction or "mm", ("mm",), "RGBNT201")
        index = _choice("trial", 0 if trial is None else trial, (0,), "RGBNT201")
        ds = get_dataset("rgbnt201", root)
        protocol_id = "rgbnt201.mm"
    else:
        raise ProtocolError(
            f"no protocol listing for dataset '{dataset}'; use sysu, regdb, llcm, rgbt_pedes, rgbnt201_pedes or "
            f"rgbnt201."
        )
    selected = ds.protocol(protocol_id).trial(index)
    items = selected.query if split == "query" else selected.gallery
    for item in items:
        out.write(format_item(item, ds.root) + "\n")
    return len(items)
