"""`tuner doctor`: read-only, fast, and says what runs here."""

from __future__ import annotations

import time

import pytest

from tuner.cli import main
from tuner.doctor import busy_processes
from tuner.runtime import names


def test_doctor_answers_in_seconds_and_lists_every_runtime(capsys: pytest.CaptureFixture[str]) -> None:
    started = time.monotonic()
    assert main(["doctor"]) == 0
    out = capsys.readouterr().out
    # It never imports a framework, so it answers within seconds even on a busy machine.
    assert time.monotonic() - started < 20
    # Every runtime is listed with its availability and the knobs it honours; the CPU facts come first.
    for name in names():
        assert f"runtime        {name}:" in out
    assert out.startswith("CPU ") and "honours intra_op" in out and "load average" in out


def test_busy_processes_finds_a_spinning_process() -> None:
    import subprocess
    import sys

    spinner = subprocess.Popen([sys.executable, "-c", "while True: pass"])
    try:
        time.sleep(0.3)
        found = busy_processes(interval=1.0)
    finally:
        spinner.kill()
        spinner.wait()
    # A process burning a CPU is reported as a noisy neighbour.
    assert spinner.pid in {b.pid for b in found}
