"""The job's progress on a terminal: a bar over its studies with the ETA beside it; plain lines elsewhere.

``tuner run`` logs a line per trial to stderr. On a terminal a tqdm bar over the studies stays under those
lines (each is written through tqdm's write mode, which lifts the bar and redraws it), its postfix the
job's ETA. Anywhere else (a file, a pipe, a CI log) there is no bar: the lines alone, no carriage returns.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, TextIO

from tqdm import tqdm

Log = Callable[[str], None]


class Bar:
    """No bar: lines only. The job calls the same methods whether or not a bar is shown."""

    shown = False

    def start(self, total: int) -> None:
        """A bar over ``total`` studies."""

    def show(self, text: str) -> None:
        """``text`` (the ETA) beside the bar."""

    def advance(self) -> None:
        """One study more is done (or kept)."""

    def close(self) -> None:
        """The studies are over: the bar stays as its last state, and lines continue below it."""

    def lines(self, log: Log) -> Log:
        """``log`` as the job should call it while the bar is shown."""
        return log


class TerminalBar(Bar):
    """A tqdm bar on ``stream`` (a terminal), lines written above it."""

    shown = True

    def __init__(self, stream: TextIO) -> None:
        self.stream = stream
        self.bar: Any = None  # tqdm, once started

    def start(self, total: int) -> None:
        self.bar = tqdm(
            total=total,
            file=self.stream,
            desc="studies",
            unit="study",
            dynamic_ncols=True,
            bar_format="{desc} {n_fmt}/{total_fmt} |{bar}| {elapsed} elapsed{postfix}",
        )

    def show(self, text: str) -> None:
        if self.bar is not None:
            self.bar.set_postfix_str(text)

    def advance(self) -> None:
        if self.bar is not None:
            self.bar.update(1)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
            self.bar = None

    def lines(self, log: Log) -> Log:
        def write(line: str) -> None:
            # What tqdm.write does for its own text: lift the bar, write, redraw; ``log`` keeps its format.
            with tqdm.external_write_mode(file=self.stream):
                log(line)

        return write


def bar_for(stream: TextIO) -> Bar:
    """A bar where ``stream`` is a terminal; else none (plain lines)."""
    isatty = getattr(stream, "isatty", None)
    return TerminalBar(stream) if isatty is not None and isatty() else Bar()
