"""Stored text made safe to print or to put in a comment: one line, printable, of bounded length.

Everything in storage may come from another machine (an imported export file, a shared PostgreSQL study), so
a CPU model name, a version, a verdict or a date is untrusted text. Before it reaches a terminal, a shell
comment or a Python comment it passes through ``one_line``: control characters (newlines, carriage returns,
terminal escape sequences, other C0/C1 codes and Unicode line separators) become spaces, runs of spaces
collapse, and the result is capped. Values that become code never come from here: they are rebuilt from
validated ``Settings`` and quoted (``shlex.quote``, ``repr``).
"""

from __future__ import annotations

import re
import unicodedata
from typing import Any

MAX_CHARS = 200
_ESCAPE = re.compile(r"\x1b(?:\[[0-?]*[ -/]*[@-~]|\][^\x07\x1b]*(?:\x07|\x1b\\)?|[@-Z\\-_])")


def _unsafe(char: str) -> bool:
    # Cc: C0/C1 controls and DEL; Zl/Zp: line and paragraph separators; Cf: format characters (bidi overrides).
    return unicodedata.category(char) in ("Cc", "Zl", "Zp", "Cf")


def _clean(text: str) -> str:
    """Escape sequences and unsafe characters (newlines included) made spaces."""
    return "".join(" " if _unsafe(char) else char for char in _ESCAPE.sub(" ", text))


def one_line(value: Any, limit: int = MAX_CHARS) -> str:
    """``value`` as one printable line of at most ``limit`` characters (``...`` marks a cut)."""
    text = " ".join(_clean(str(value)).split())
    return text if len(text) <= limit else text[: limit - 3] + "..."


def printable(value: Any) -> str:
    """``value`` with terminal escape sequences and control characters made spaces, its lines kept: for
    log lines, whose spacing and length are the tool's own but which may quote stored text."""
    return "\n".join(_clean(line) for line in str(value).split("\n"))


_PARENS = str.maketrans("()", "[]")
_SHELL_SAFE = re.compile(r"[^A-Za-z0-9 .,:/@%+=_\[\]-]")


def shell_comment(value: Any, limit: int = MAX_CHARS) -> str:
    """``value`` as one line safe after ``# `` even where ``#`` starts no comment (interactive zsh without
    INTERACTIVE_COMMENTS runs a pasted comment line as a command): parentheses become brackets and every
    character that the shell could act on (``; | & $ ` ' " < > * ? ! ~ { }``, non-ASCII) becomes ``_``."""
    return _SHELL_SAFE.sub("_", one_line(value, limit).translate(_PARENS))
