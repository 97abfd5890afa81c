"""Start a user's program the way a recommendation says: N instances, each pinned to its own core group.

The launcher behind ``tuner exec -- python app.py ARGS`` and ``tuner recommend --format shell``. Each
instance is started like a trial's worker (see ``runner``): explicit argv and no shell, its own session and
process group, pinned to its CPUs (``sched_setaffinity``) and killed by Linux if the launcher dies
(``PR_SET_PDEATHSIG``), both before exec. Each is told ``TUNER_INSTANCE`` (0-based), ``TUNER_INSTANCES`` and
``TUNER_CORES``. Its stdout and stderr are relayed line by line, prefixed ``[i] `` when there are several
instances. SIGINT and SIGTERM are forwarded to every instance's process group; a second one kills them all.
The result is the worst exit status, a death by signal N counting as 128+N, as a shell reports it.
"""

from __future__ import annotations

import contextlib
import functools
import os
import re
import shlex
import shutil
import signal
import subprocess
import sys
import threading
from collections.abc import Callable, Iterable, Mapping, Sequence
from types import FrameType
from typing import IO, Any, TextIO

from tuner.errors import UsageError
from tuner.runner import _die_with_parent, _prctl

FORWARDED = (signal.SIGINT, signal.SIGTERM)
RELAY_JOIN_S = 5.0  # how long to wait for output still in flight after every instance has exited
_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")


def instance_environ(env: Mapping[str, str], index: int, groups: Sequence[tuple[int, ...]]) -> dict[str, str]:
    """``env`` plus what instance ``index`` is told: its index, the instance count and its CPUs."""
    return {
        **env,
        "TUNER_INSTANCE": str(index),
        "TUNER_INSTANCES": str(len(groups)),
        "TUNER_CORES": ",".join(map(str, groups[index])),
    }


def _check(argv: Sequence[str], groups: Sequence[tuple[int, ...]]) -> None:
    if not argv:
        raise UsageError("no program to run: give it after --, e.g. tuner exec -- python app.py")
    if not groups or any(not group for group in groups):
        raise UsageError("every instance needs at least one CPU")
    cpus = [cpu for group in groups for cpu in group]
    if len(set(cpus)) != len(cpus):
        raise UsageError(f"core groups overlap: {' '.join(','.join(map(str, g)) for g in groups)}")


def _program(argv: Sequence[str], env: Mapping[str, str]) -> str:
    """The executable ``argv[0]`` names, looked up on the child's PATH as exec will; one line if none."""
    found = shutil.which(argv[0], path=env.get("PATH", os.defpath))
    if found is None or not os.access(found, os.X_OK):
        where = "" if os.sep in argv[0] else " on PATH"
        raise UsageError(f"cannot run {argv[0]!r}: no such executable file{where}")
    return found


class _Forwarder:
    """SIGINT/SIGTERM handler of the launcher: forward the first to every instance's group, kill on the next."""

    def __init__(self) -> None:
        self.children: list[subprocess.Popen[bytes]] = []
        self.received = 0

    def __call__(self, signum: int, frame: FrameType | None) -> None:
        self.received += 1
        self.signal_all(signum if self.received == 1 else signal.SIGKILL)

    def signal_all(self, signum: int) -> None:
        for child in self.children:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(child.pid, signum)


def _relay(stream: IO[bytes], out: TextIO, prefix: str, lock: threading.Lock) -> None:
    """Copy ``stream`` to ``out`` line by line as lines arrive, each prefixed; a last partial line gets a newline."""
    broken = False
    with stream:
        for raw in iter(stream.readline, b""):
            if broken:
                continue  # keep draining: a child blocked on a full pipe would never exit
            line = raw.decode(errors="replace")
            try:
                with lock:
                    out.write(prefix + line + ("" if line.endswith("\n") else "\n"))
                    out.flush()
            except (OSError, ValueError):  # the reader went away (a closed pipe, a closed file)
                broken = True


def _status(returncode: int) -> int:
    """An exit status as a shell reports it: a death by signal N is 128+N."""
    return 128 - returncode if returncode < 0 else returncode


def launch(
    argv: Sequence[str],
    groups: Sequence[tuple[int, ...]],
    env: Mapping[str, str],
    out: TextIO = sys.stdout,
    err: TextIO = sys.stderr,
) -> int:
    """Run ``argv`` once per core group, pinned to it, with ``env`` (the whole environment) plus
    ``instance_environ``'s variables; relay output; return the worst exit status (0 when all succeed).

    One ``UsageError`` line, before any instance starts, when the program cannot be executed or the groups
    are not disjoint CPUs this process may use. Signals are forwarded only when called from the main thread
    (the only one Python delivers them to); the calling thread must outlive the instances, since Linux sends
    ``PR_SET_PDEATHSIG`` when the thread that started a child ends. With one instance it reads the
    launcher's stdin; with several, none does."""
    _check(argv, groups)
    program = _program(argv, env)
    allowed = os.sched_getaffinity(0)
    outside = sorted({cpu for group in groups for cpu in group} - allowed)
    if outside:
        raise UsageError(
            f"CPUs {','.join(map(str, outside))} are not available to this process "
            f"(allowed: {','.join(map(str, sorted(allowed)))})"
        )
    several = len(groups) > 1
    forwarder = _Forwarder()
    prctl, parent = _prctl(), os.getpid()
    previous: dict[int, Any] = {}
    threads: list[threading.Thread] = []
    # Signals wait while the instances start, so that a Ctrl-C reaches every one of them, not only those
    # already started; each child restores the caller's mask before exec.
    mask = signal.pthread_sigmask(signal.SIG_BLOCK, FORWARDED)
    try:
        if threading.current_thread() is threading.main_thread():
            previous = {signum: signal.signal(signum, forwarder) for signum in FORWARDED}
        for index, group in enumerate(groups):
            forwarder.children.append(
                _start(
                    argv,
                    program,
                    group,
                    instance_environ(env, index, groups),
                    several,
                    functools.partial(_setup, prctl, parent, group, mask),
                )
            )
        # Relays start once every child is forked: no thread runs while a child executes its setup.
        lock = threading.Lock()
        threads += [
            threading.Thread(target=_relay, args=(stream, sink, f"[{index}] " if several else "", lock), daemon=True)
            for index, child in enumerate(forwarder.children)
            for stream, sink in ((child.stdout, out), (child.stderr, err))
            if stream is not None
        ]
        for thread in threads:
            thread.start()
        signal.pthread_sigmask(signal.SIG_SETMASK, mask)  # a signal that came meanwhile is forwarded now
        statuses = []
        for child in forwarder.children:
            statuses.append(_status(child.wait()))
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(child.pid, signal.SIGKILL)  # what it left running in its group would hold our pipes
        for thread in threads:
            thread.join(RELAY_JOIN_S)
        return max(statuses)
    except BaseException:
        forwarder.signal_all(signal.SIGKILL)
        for child in forwarder.children:
            child.wait()
        for thread in threads:
            thread.join(RELAY_JOIN_S)
        if not threads:  # relays close the pipes they read; without them, close them here
            for child in forwarder.children:
                for stream in (child.stdout, child.stderr):
                    if stream is not None:
                        stream.close()
        raise
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, mask)
        for signum, handler in previous.items():
            signal.signal(signum, handler)


def _setup(prctl: Any, parent: int, group: tuple[int, ...], mask: Iterable[int]) -> None:
    """In the child, before exec: die with the launcher, pin to ``group``, restore the caller's signal mask."""
    _die_with_parent(prctl, parent)
    os.sched_setaffinity(0, group)
    signal.pthread_sigmask(signal.SIG_SETMASK, mask)


def _start(
    argv: Sequence[str],
    program: str,
    group: tuple[int, ...],
    env: Mapping[str, str],
    several: bool,
    setup: Callable[[], None],
) -> subprocess.Popen[bytes]:
    try:
        return subprocess.Popen(
            list(argv),
            executable=program,
            env=env,
            stdin=subprocess.DEVNULL if several else None,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            start_new_session=True,  # its own process group: signals and kills reach what it starts
            preexec_fn=setup,
        )
    except (OSError, subprocess.SubprocessError) as error:
        raise UsageError(f"cannot start {argv[0]!r} on CPUs {','.join(map(str, group))}: {error}") from None


def shell_lines(
    argv: Sequence[str],
    groups: Sequence[tuple[int, ...]],
    env_set: Mapping[str, str],
    env_unset: Sequence[str],
) -> list[str]:
    """The same launch as POSIX shell commands to paste: per instance ``taskset -c CPUS env -u VAR ...
    VAR=value ... TUNER_INSTANCE=i ... cmd args``, in the background followed by ``wait`` when there are
    several instances. Every word goes through ``shlex.quote``."""
    _check(argv, groups)
    bad = [name for name in [*env_set, *env_unset] if not _NAME.fullmatch(name)]
    if bad:
        raise UsageError(f"not an environment variable name: {bad[0]!r}")
    several = len(groups) > 1
    lines = []
    for index, group in enumerate(groups):
        words = ["taskset", "-c", ",".join(map(str, group)), "env"]
        words += [word for name in env_unset for word in ("-u", name)]
        words += [f"{name}={value}" for name, value in instance_environ(env_set, index, groups).items()]
        words += list(argv)
        lines.append(" ".join(shlex.quote(word) for word in words) + (" &" if several else ""))
    if several:
        lines.append("wait")
    return lines
