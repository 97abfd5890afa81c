"""Trial owners that survive containers: only a process that can really tell declares an owner gone."""

from __future__ import annotations

import subprocess
import sys

from tuner.owner import gone, identity


def _dead_pid() -> int:
    return int(subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True).stdout)


def test_a_dead_owner_on_this_host_boot_and_namespace_is_gone() -> None:
    me = identity()
    # Same host, boot and PID namespace, and no such process: gone.
    assert gone({**me, "pid": _dead_pid()})
    # This very process is not gone.
    assert not gone(me)


def test_another_pid_namespace_or_boot_is_never_judged_by_pid() -> None:
    me = identity()
    dead = _dead_pid()
    # A tuner in another container (same host name, other PID namespace) or before a reboot: its pid says
    # nothing here, so it is left to the heartbeat.
    assert not gone({**me, "pid": dead, "pid_ns": "pid:[4026531999]"})
    assert not gone({**me, "pid": dead, "boot_id": "another-boot"})
    assert not gone({**me, "pid": dead, "host": "elsewhere"})


def test_a_reused_pid_is_told_apart_by_its_start_time() -> None:
    me = identity()
    assert isinstance(me["start"], int)
    # The pid is alive but started at another time: it is not the owner, which is gone.
    assert gone({**me, "start": me["start"] - 1})


def test_a_forged_pid_out_of_range_is_judged_by_nothing() -> None:
    host = identity()["host"]
    # A shared study's RUNNING trial claiming this host with a pid no process can have (2**70, 0, -1):
    # os.kill would raise OverflowError or reach a process group. Nothing can be told, and no error.
    for pid in (2**70, 0, -1):
        assert not gone({"host": host, "pid": pid})
