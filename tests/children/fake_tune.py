"""`tuner` with a replaying runner whose runs take a little wall time: a whole study in a few seconds,
long enough to be interrupted anywhere (start-up, a trial, confirmation, a write). Used by signal tests."""

from __future__ import annotations

import sys
import time

from tuner.cli import main
from tuner.replay import ReplayRunner
from tuner.runner import TrialSpec


def script(spec: TrialSpec, call: int) -> list[float]:
    time.sleep(0.05)  # a run takes a moment, as a worker process would
    fast = spec.settings.inter_op == 1
    return [0.01 if fast else 0.012] * (spec.policy.warmup + spec.policy.timed)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:], runner=ReplayRunner(script)))
