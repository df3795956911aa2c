"""Parsers of the small text files that define splits: id lists and ``<path> <label>`` index lists.

Files written on Windows (CRLF line ends), with a UTF-8 byte-order mark, or with trailing spaces are
accepted; anything else that does not fit the format raises :class:`DataError` naming the file and the
1-based line number.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass

from vireid.data.readers.checks import DataWarning
from vireid.errors import DataError


@dataclass(frozen=True, slots=True)
class IndexEntry:
    """One line of an index file: a path relative to the dataset root, its integer label, and where it was."""

    path: str
    label: int
    file: str
    line: int


def _read_lines(path: str) -> list[str]:
    try:
        # newline=None turns CRLF and CR into LF; utf-8-sig drops a byte-order mark.
        with open(path, encoding="utf-8-sig", newline=None) as handle:
            return handle.read().split("\n")
    except UnicodeDecodeError as exc:
        with open(path, "rb") as handle:
            line = handle.read(exc.start).count(b"\n") + 1
        raise DataError(
            f"{path}, line {line}: byte 0x{exc.object[exc.start]:02x} is not UTF-8; this file must be UTF-8 text.",
            fix="re-save it as UTF-8 (or restore it from the dataset release).",
        ) from None


def read_id_list(path: str) -> list[int]:
    """Identities of a split file whose first non-empty line is comma-separated integers.

    SYSU-MM01 ``exp/{train,val,test}_id.txt`` and LLCM ``idx/test_id.txt`` use this format. Spaces around
    the numbers and a trailing comma are accepted. Returns the identities in numeric order (G4); duplicates
    are reported with a :class:`DataWarning` and kept once.

    Raises:
        DataError: the file is empty or a token is not an integer (message names the file and line).
    """
    lines = _read_lines(path)
    first = next(((n, line) for n, line in enumerate(lines, start=1) if line.strip()), None)
    if first is None:
        raise DataError(f"{path} is empty; it should hold one line of comma-separated identities.")
    number, line = first
    ids: list[int] = []
    for token in line.split(","):
        token = token.strip()
        if not token:
            continue
        if not token.isdigit():
            raise DataError(
                f"{path}, line {number}: '{token}' is not an identity number; the line must hold "
                f"comma-separated integers like 1,2,5.",
                fix="restore the file from the official release.",
            )
        ids.append(int(token))
    if not ids:
        raise DataError(f"{path}, line {number}: no identity numbers found.")
    extra = [n for n, other in enumerate(lines, start=1) if n > number and other.strip()]
    if extra:
        warnings.warn(
            f"{path}: only line {number} is read (as the reference code does); lines {extra[:5]} are ignored.",
            DataWarning,
            stacklevel=2,
        )
    unique = sorted(set(ids))
    if len(unique) != len(ids):
        warnings.warn(f"{path}: some identities are listed twice; each is used once.", DataWarning, stacklevel=2)
    return unique


def id_list_line(path: str) -> int:
    """1-based number of the line :func:`read_id_list` reads (the first non-empty one), for messages."""
    return next((n for n, line in enumerate(_read_lines(path), start=1) if line.strip()), 1)


def read_labelled_list(path: str) -> list[IndexEntry]:
    """Entries of an index file whose lines are ``<relative path> <integer label>``.

    RegDB ``idx/{train,test}_{visible,thermal}_{t}.txt`` and LLCM ``idx/train_{vis,nir}.txt`` use this format.
    Fields may be separated by any run of spaces or tabs; blank lines are skipped; order is kept.

    Raises:
        DataError: a non-blank line does not have exactly two fields or the label is not an integer.
    """
    entries: list[IndexEntry] = []
    for number, line in enumerate(_read_lines(path), start=1):
        fields = line.split()
        if not fields:
            continue
        if len(fields) != 2:
            raise DataError(
                f"{path}, line {number}: expected '<relative path> <integer label>', got {line.strip()!r}.",
                fix="each line must be one image path (without spaces) and one integer label.",
            )
        rel, label = fields
        try:
            value = int(label)
        except ValueError:
            raise DataError(
                f"{path}, line {number}: label {label!r} is not an integer (line {line.strip()!r}).",
                fix="each line must be one image path and one integer label.",
            ) from None
        entries.append(IndexEntry(path=rel.replace("\\", "/"), label=value, file=path, line=number))
    return entries
