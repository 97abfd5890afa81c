"""The launcher behind ``tuner exec``: pinned instances, prefixed output, forwarded signals, worst status."""

from __future__ import annotations

import io
import os
import signal
import subprocess
import sys
import textwrap
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tuner.errors import UsageError
from tuner.launch import launch, shell_lines

TWO: list[tuple[int, ...]] = [(0,), (1,)]  # this machine's two CPUs, one instance on each


def script(tmp_path: Path, name: str, body: str) -> list[str]:
    """argv running a small Python program written to ``tmp_path``."""
    path = tmp_path / name
    path.write_text(textwrap.dedent(body))
    return [sys.executable, str(path)]


def run(argv: list[str], groups: list[tuple[int, ...]]) -> tuple[int, list[str], list[str]]:
    out, err = io.StringIO(), io.StringIO()
    status = launch(argv, groups, dict(os.environ), out, err)
    return status, out.getvalue().splitlines(), err.getvalue().splitlines()


REPORT = """
    import os, sys
    env = os.environ
    print("instance", env["TUNER_INSTANCE"], "of", env["TUNER_INSTANCES"], "cores", env["TUNER_CORES"],
          "affinity", sorted(os.sched_getaffinity(0)), flush=True)
    print("to stderr", env["TUNER_INSTANCE"], file=sys.stderr, flush=True)
"""


@pytest.fixture(autouse=True)
def _two_cpus() -> None:
    if not {0, 1} <= os.sched_getaffinity(0):
        pytest.skip("needs CPUs 0 and 1")


def test_two_instances_are_pinned_told_and_prefixed(tmp_path: Path) -> None:
    status, out, err = run(script(tmp_path, "report.py", REPORT), TWO)
    # Both succeeded: the worst status is 0.
    assert status == 0
    # Each instance's stdout is prefixed with its index, knows its index, count and CPUs, and ran only there.
    assert sorted(out) == [
        "[0] instance 0 of 2 cores 0 affinity [0]",
        "[1] instance 1 of 2 cores 1 affinity [1]",
    ]
    # Stderr is relayed to err, prefixed the same way.
    assert sorted(err) == ["[0] to stderr 0", "[1] to stderr 1"]


def test_one_instance_is_not_prefixed(tmp_path: Path) -> None:
    status, out, err = run(script(tmp_path, "report.py", REPORT), [(0, 1)])
    # With one instance the output is the program's own, unprefixed; it runs on both CPUs of its group.
    assert (status, out, err) == (0, ["instance 0 of 1 cores 0,1 affinity [0, 1]"], ["to stderr 0"])


def test_large_output_on_both_streams_does_not_deadlock(tmp_path: Path) -> None:
    body = """
        import os, sys
        for n in range(20000):
            print("out", n, "x" * 40)
            print("err", n, "y" * 40, file=sys.stderr)
        sys.stdout.write("no newline at the end")
    """
    status, out, err = run(script(tmp_path, "loud.py", body), TWO)
    # Several MB through both pipes of both instances: all of it arrives as whole lines, none lost.
    assert status == 0
    assert len(err) == 2 * 20000 and len(out) == 2 * 20001
    # Lines of one instance are never cut or mixed with the other's.
    assert all(line.startswith(("[0] out ", "[1] out ", "[0] no newline", "[1] no newline")) for line in out)
    # A last line without a newline is relayed as a line of its own.
    assert "[0] no newline at the end" in out and "[1] no newline at the end" in out


def test_worst_exit_status(tmp_path: Path) -> None:
    exits = script(tmp_path, "exits.py", "import os, sys\nsys.exit(3 if os.environ['TUNER_INSTANCE'] == '0' else 0)")
    # One instance exits 3, the other 0: the launcher returns the worse, 3.
    assert run(exits, TWO)[0] == 3
    killed = script(
        tmp_path,
        "killed.py",
        "import os, signal, sys\n"
        "if os.environ['TUNER_INSTANCE'] == '1': os.kill(os.getpid(), signal.SIGKILL)\n"
        "sys.exit(5)\n",
    )
    # One exits 5, the other is killed by SIGKILL (9): counted as 128+9 = 137, as a shell would, the worst.
    assert run(killed, TWO)[0] == 137


def test_missing_program_is_one_usage_line_and_nothing_starts(tmp_path: Path) -> None:
    with pytest.raises(UsageError) as error:
        launch(["tuner-no-such-program"], TWO, dict(os.environ), io.StringIO(), io.StringIO())
    # A program not on PATH: one line naming it, raised before any instance starts.
    assert "tuner-no-such-program" in str(error.value) and "\n" not in str(error.value)
    plain = tmp_path / "not-executable.sh"
    plain.write_text("#!/bin/sh\ntouch started\n")
    with pytest.raises(UsageError, match="no such executable"):
        launch([str(plain)], TWO, dict(os.environ), io.StringIO(), io.StringIO())
    # A file without execute permission is refused the same way; it never ran.
    assert not (tmp_path / "started").exists()


def test_cpus_outside_the_allowed_set_are_refused(tmp_path: Path) -> None:
    # A CPU this process may not use is refused in one line instead of failing inside a child.
    with pytest.raises(UsageError, match="not available"):
        launch([sys.executable, "-c", "pass"], [(0,), (4095,)], dict(os.environ), io.StringIO(), io.StringIO())


WAIT_FOR_SIGINT = """
    import os, signal, sys, time
    marker = sys.argv[1] + os.environ["TUNER_INSTANCE"]
    def stop(signum, frame):
        open(marker, "a").write("SIGINT\\n")
        if os.environ.get("STUBBORN") != "1":
            sys.exit(0)
    signal.signal(signal.SIGINT, stop)
    print("ready", os.getpid(), flush=True)
    while True:
        time.sleep(0.05)
"""


@pytest.fixture
def launchers() -> Iterator[list[subprocess.Popen[str]]]:
    """Launchers a test started, killed at its end whatever happened (their instances die with them)."""
    started: list[subprocess.Popen[str]] = []
    yield started
    for launcher in started:
        launcher.kill()
        launcher.wait()
        if launcher.stdout is not None:
            launcher.stdout.close()


def start_launcher(
    tmp_path: Path, stubborn: bool, launchers: list[subprocess.Popen[str]]
) -> tuple[subprocess.Popen[str], list[int]]:
    """A launcher process running two instances of WAIT_FOR_SIGINT and their pids, once both are ready."""
    argv = [*script(tmp_path, "wait.py", WAIT_FOR_SIGINT), str(tmp_path / "marker")]
    code = f"import os, sys; from tuner.launch import launch; sys.exit(launch({argv!r}, {TWO!r}, dict(os.environ)))"
    env = {**os.environ, "STUBBORN": "1" if stubborn else "0"}
    launcher = subprocess.Popen([sys.executable, "-c", code], env=env, stdout=subprocess.PIPE, text=True)
    launchers.append(launcher)
    assert launcher.stdout is not None
    ready = sorted(launcher.stdout.readline().split() for _ in TWO)
    # Both instances started and installed their handler before the signal is sent.
    assert [words[:2] for words in ready] == [["[0]", "ready"], ["[1]", "ready"]]
    return launcher, [int(words[2]) for words in ready]


def test_sigint_is_forwarded_to_every_instance(tmp_path: Path, launchers: list[subprocess.Popen[str]]) -> None:
    launcher, _ = start_launcher(tmp_path, False, launchers)
    launcher.send_signal(signal.SIGINT)
    # The launcher returns once its instances have handled SIGINT and exited 0.
    assert launcher.wait(timeout=10) == 0
    # Each instance got the SIGINT sent to the launcher only (they run in their own sessions), exactly once.
    assert [(tmp_path / f"marker{i}").read_text() for i in (0, 1)] == ["SIGINT\n", "SIGINT\n"]


def test_second_sigint_kills_the_instances(tmp_path: Path, launchers: list[subprocess.Popen[str]]) -> None:
    launcher, _ = start_launcher(tmp_path, True, launchers)
    launcher.send_signal(signal.SIGINT)
    deadline = time.monotonic() + 10
    while not all((tmp_path / f"marker{i}").exists() for i in (0, 1)) and time.monotonic() < deadline:
        time.sleep(0.02)
    launcher.send_signal(signal.SIGINT)
    # The instances ignore the first SIGINT; the second kills them with SIGKILL: status 128+9.
    assert launcher.wait(timeout=10) == 137


def test_instances_die_with_the_launcher(tmp_path: Path, launchers: list[subprocess.Popen[str]]) -> None:
    launcher, pids = start_launcher(tmp_path, True, launchers)
    launcher.kill()
    launcher.wait()
    deadline = time.monotonic() + 5
    while any(Path(f"/proc/{pid}").exists() for pid in pids) and time.monotonic() < deadline:
        time.sleep(0.02)
    # kill -9 of the launcher cannot forward anything: Linux kills the instances (PR_SET_PDEATHSIG).
    assert not any(Path(f"/proc/{pid}").exists() for pid in pids)


def test_shell_lines_are_valid_and_quote_values(tmp_path: Path) -> None:
    pwned = tmp_path / "pwned"
    value = f"a b $(touch {pwned}) `touch {pwned}` 'q'"
    argv = [
        sys.executable,
        "-c",
        "import os; os.write(1, f\"{os.environ['TUNER_TEST_VALUE']}|{'TUNER_TEST_GONE' in os.environ}\\n\".encode())",
    ]
    lines = shell_lines(argv, TWO, {"TUNER_TEST_VALUE": value}, ["TUNER_TEST_GONE"])
    text = "\n".join(lines) + "\n"
    # Two instances: each pinned with taskset and backgrounded, then one wait.
    assert lines[0].startswith("taskset -c 0 env -u TUNER_TEST_GONE ") and lines[0].endswith(" &")
    assert lines[1].startswith("taskset -c 1 env ") and lines[2] == "wait"
    # The lines are valid shell.
    assert subprocess.run(["bash", "-n"], input=text, text=True).returncode == 0
    done = subprocess.run(
        ["bash"], input=text, text=True, capture_output=True, env={**os.environ, "TUNER_TEST_GONE": "x"}
    )
    # Run, each instance sees the value verbatim and not the unset variable; nothing in the value was executed.
    assert done.stdout.splitlines() == [f"{value}|False"] * 2
    assert not pwned.exists()
    # One instance: no background job and no wait.
    one = shell_lines(argv, [(0, 1)], {}, [])
    assert len(one) == 1 and not one[0].endswith("&") and one[0].startswith("taskset -c 0,1 env ")
    # An environment name that is not a name is refused rather than pasted into a command.
    with pytest.raises(UsageError):
        shell_lines(argv, TWO, {"A;rm": "x"}, [])
