"""`tuner` whose trials run ``fake_worker.py`` through the real subprocess runner (the host lock, the worker's
process group, its channel), while the probe's yardstick tasks are replayed: a study of several trials in
seconds, with every trial a real process that can be killed. Used by the shared-study tests, which test the
storage and the workers' coordination, not a framework."""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Any

from tuner.cli import main
from tuner.replay import ReplayRunner
from tuner.runner import HOST_LOCK, SubprocessRunner, TaskSpec

FAKE_WORKER = Path(__file__).resolve().parent / "fake_worker.py"


class FakeWorkerRunner(SubprocessRunner):
    """The real runner (its host lock, or ``FAKE_TUNE_LOCK``) with the worker script swapped for the fake one."""

    def __init__(self) -> None:
        super().__init__(lock=Path(os.environ.get("FAKE_TUNE_LOCK") or HOST_LOCK))  # the test's own, or the host's
        self.tasks = ReplayRunner(lambda spec, call: [])

    def argv(self, worker_spec: dict[str, Any], channel_fd: int) -> list[str]:
        python, _worker, *rest = super().argv(worker_spec, channel_fd)
        return [python, str(FAKE_WORKER), *rest, "--behaviour", "study"]

    def compute(self, spec: TaskSpec) -> dict[str, Any]:
        return self.tasks.compute(spec)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:], runner=FakeWorkerRunner()))
