"""Text for a terminal: columns fitted to a width, long lines wrapped, verdict words coloured.

The default views of ``show``, ``table`` and ``recommend`` fit ``WIDTH`` columns: a table that would be
wider is cut down in the columns its caller names as the ones to shorten (their text stands in full
elsewhere: a line under the table, ``--wide``, or the data formats). Colour marks a verdict word only, and
only where stdout is a terminal and ``NO_COLOR`` is unset or empty (https://no-color.org); data formats and
files never carry escape codes.
"""

from __future__ import annotations

import os
import textwrap
from collections.abc import Mapping, Sequence
from typing import TextIO

WIDTH = 120
CUT = "..."  # marks a shortened cell, as ``sanitize.one_line`` marks a shortened line
GAP = "  "
TONES = {"good": "32", "warn": "33", "bad": "31"}  # ANSI green, yellow, red


def colour_wanted(stream: TextIO) -> bool:
    """Colour only on a terminal, and never when NO_COLOR is set to anything but the empty string."""
    isatty = getattr(stream, "isatty", None)
    return bool(isatty and isatty()) and not os.environ.get("NO_COLOR")


def paint(text: str, tone: str | None, colour: bool) -> str:
    """``text`` in the tone's colour (good, warn or bad) where ``colour`` is on; else unchanged."""
    if not colour or tone is None:
        return text
    return f"\x1b[{TONES[tone]}m{text}\x1b[0m"


def shorten(text: str, width: int) -> str:
    return text if len(text) <= width else text[: max(0, width - len(CUT))] + CUT


def fit(
    rows: Sequence[Sequence[str]],
    width: int,
    overhead: int,
    shrink: Sequence[int],
    floors: Mapping[int, int] | None = None,
) -> list[int]:
    """Column widths for ``rows`` (the header first) within ``width`` characters, ``overhead`` being what the
    separators take. Where the natural widths do not fit, the ``shrink`` columns give way, widest first,
    down to their header's width (and never below 8, nor below a column's ``floors``)."""
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    floor = {i: min(widths[i], max(8, len(rows[0][i]), (floors or {}).get(i, 0))) for i in shrink}
    while sum(widths) + overhead > width:
        candidates = [i for i in shrink if widths[i] > floor[i]]
        if not candidates:
            break
        widest = max(candidates, key=lambda i: widths[i])
        widths[widest] -= 1
    return widths


def columns(
    rows: Sequence[Sequence[str]],
    width: int | None = WIDTH,
    shrink: Sequence[int] = (),
    right: Sequence[int] = (),
    tones: Sequence[str | None] = (),
    colour: bool = False,
) -> str:
    """A plain table: a header, a rule, then the rows, columns ``GAP`` apart, ``right`` columns right-aligned.
    With ``width``, the ``shrink`` columns are shortened so that every line fits (``fit``). ``tones`` (one per
    row after the header) colour the last column's words; the padding is computed before the colour."""
    overhead = len(GAP) * (len(rows[0]) - 1)
    widths = fit(rows, width or 10**9, overhead, shrink if width else ())
    lines = []
    for number, row in enumerate(rows):
        cells = [
            shorten(cell, size).rjust(size) if i in right else shorten(cell, size).ljust(size)
            for i, (cell, size) in enumerate(zip(row, widths, strict=True))
        ]
        tone = tones[number - 1] if 0 < number <= len(tones) else None
        cells[-1] = paint(cells[-1].rstrip(), tone, colour)  # padding first, so colour never shifts a column
        lines.append(GAP.join(cells).rstrip())
        if number == 0:
            lines.append(GAP.join("-" * size for size in widths))
    return "\n".join(lines)


def wrap(
    text: str, width: int = WIDTH, indent: str = "", more: str | None = None, break_words: bool = True
) -> list[str]:
    """``text`` as lines of at most ``width`` characters: the first indented ``indent``, the rest ``more``
    (two spaces further by default). Words longer than a line are broken, unless ``break_words`` is off
    (markdown: a break inside an escaped "<" would end a line on its backslash, a hard line break, and leave the
    ``<`` unescaped); such a word then has a line of its own, however long."""
    more = indent + "  " if more is None else more
    return textwrap.wrap(
        text,
        width,
        initial_indent=indent,
        subsequent_indent=more,
        break_on_hyphens=False,
        break_long_words=break_words,
    ) or [indent.rstrip()]
