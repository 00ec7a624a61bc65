"""How file names and other user text are written to pixclust's tables, and read back.

Paths are carried as Python ``str`` the way ``os.listdir`` gives them: a byte of
a name that is not UTF-8 is the lone surrogate U+DC80 to U+DCFF
(``surrogateescape``), which ``open`` and ``os.symlink`` turn back into that
byte but which UTF-8 files cannot hold. Two reversible steps make any name
safe to write:

* :func:`escape_name` (Parquet, CSV, the report's data): each such byte is
  written ``\\xNN`` (``bad\\xff.png``), and a backslash that comes before
  another backslash, such a byte, or ``x`` and two hex digits is doubled, so
  that a name really holding ``\\xff`` stays apart. Every other name is
  written unchanged. :func:`unescape_name` undoes it.
* :func:`to_cell` (every CSV text cell): also puts a ``'`` before a cell that
  spreadsheets would take for a formula (OWASP's rule: a cell starting with
  ``=``, ``+``, ``-``, ``@``, tab or carriage return), and before a cell that
  starts with quotes followed by one of those, so that the quote added is the
  only one ever removed. :func:`from_cell` undoes both.
"""

from __future__ import annotations

import csv
import re
from collections.abc import Collection, Iterable, Iterator, Sequence
from pathlib import Path
from typing import Any

from pixclust.atomic import atomic_path

_ESCAPED = re.compile(r"\\(?=[\\\udc80-\udcff]|x[0-9a-fA-F]{2})|[\udc80-\udcff]")
_UNESCAPE = re.compile(r"\\(\\|x[89a-fA-F][0-9a-fA-F])")
FORMULA_START = ("=", "+", "-", "@", "\t", "\r")
_CONTROL_CHARACTERS = re.compile(r"[\x00-\x1f\x7f-\x9f]")
_QUOTE = "'"


def escape_name(name: str) -> str:
    """``name`` as valid Unicode text, from which :func:`unescape_name` gives it back."""
    return _ESCAPED.sub(_escape_one, name)


def _escape_one(match: re.Match[str]) -> str:
    char = match.group()
    return "\\\\" if char == "\\" else f"\\x{ord(char) - 0xDC00:02x}"


def unescape_name(text: str) -> str:
    """The name :func:`escape_name` wrote as ``text``."""
    return _UNESCAPE.sub(_unescape_one, text)


def _unescape_one(match: re.Match[str]) -> str:
    escaped = match.group(1)
    return "\\" if escaped == "\\" else chr(0xDC00 + int(escaped[1:], 16))


def printable(text: str) -> str:
    """``text`` for a terminal: a byte that is not UTF-8 or a control character (``\\x1b[2J`` clears it) shown as ``\\xNN``."""
    return _CONTROL_CHARACTERS.sub(lambda found: f"\\x{ord(found.group()):02x}", escape_name(text))


def _is_formula_like(text: str) -> bool:
    return text.lstrip(_QUOTE)[:1] in FORMULA_START


def to_cell(text: str) -> str:
    """A CSV text cell (path, label, name, id) for ``text``; numbers are written as they are, never through this."""
    cell = escape_name(text)
    return _QUOTE + cell if _is_formula_like(cell) else cell


def from_cell(cell: str) -> str:
    """The text :func:`to_cell` wrote as ``cell``."""
    if cell.startswith(_QUOTE) and _is_formula_like(cell):
        cell = cell[1:]
    return unescape_name(cell)


def text_cells(header: Sequence[str], rows: Iterable[Sequence[Any]], text: Collection[str]) -> Iterator[list[Any]]:
    """``rows`` with the cells of the columns named in ``text`` made by :func:`to_cell`, the others (numbers) left as they are."""
    columns = [header.index(name) for name in text]
    for row in rows:
        cells = list(row)
        for column in columns:
            cells[column] = to_cell(str(cells[column]))
        yield cells


def write_csv(path: Path, header: Sequence[str], rows: Iterable[Sequence[Any]], *, text: Collection[str]) -> Path:
    """Write the table atomically; cells of the ``text`` columns go through :func:`to_cell` (any name, never a formula)."""
    with atomic_path(path) as tmp, open(tmp, "w", newline="", encoding="utf-8") as stream:
        writer = csv.writer(stream, lineterminator="\n")
        writer.writerow(header)
        writer.writerows(text_cells(header, rows, text))
    return path
