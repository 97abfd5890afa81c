"""The job's progress on a terminal: a bar over its studies with the ETA beside it; plain lines elsewhere.

``tuner run`` logs a line per trial to stderr. On a terminal a tqdm bar over the studies stays under those
lines (each is written through tqdm's write mode, which lifts the bar and redraws it), its postfix the
job's ETA. Anywhere else (a file, a pipe, a CI log) there is no bar: the lines alone, no carriage returns.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any, TextIO

from tqdm import tqdm

Log = Callable[[str], None]

STEP_LINE_S = 30.0  # a run that takes longer says how far it is, at most this often


def duration(seconds: float) -> str:
    """'12m05s': how progress lines show time left."""
    seconds = max(0, int(seconds))
    return f"{seconds // 60}m{seconds % 60:02d}s"


class StepLines:
    """A step callback (``runner.StepCallback``) for one long run: every ``STEP_LINE_S`` at most it logs
    ``WHAT: batch 40/110, 10.4 s/batch, ~12m00s left`` (the steps so far, their mean, what is left at it), so
    a run of minutes (a full benchmark burst, a training trial on one core) is never a silent stretch. A
    run shorter than that says nothing more than before."""

    def __init__(
        self, log: Log, what: str, warmup: int, timed: int, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self.log, self.what, self.warmup, self.total, self.clock = log, what, warmup, warmup + timed, clock
        self.said = clock()
        self.seconds, self.steps = 0.0, 0

    def __call__(self, phase: str, index: int, seconds: float) -> None:
        self.seconds += seconds
        self.steps += 1
        done = index + 1 + (self.warmup if phase == "timed" else 0)
        now = self.clock()
        if now - self.said >= STEP_LINE_S and done < self.total:
            self.said = now
            mean = self.seconds / self.steps
            left = duration((self.total - done) * mean)
            self.log(f"{self.what}: batch {done}/{self.total}, {mean:.1f} s/batch, ~{left} left")


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
