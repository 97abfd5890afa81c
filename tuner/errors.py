"""Typed failures. The CLI turns any TunerError into one line and exit code 1.

A failed trial is stored as FAIL with the error's ``reason`` (its class's short name), never scored, and
never classified by matching message text.
"""

from __future__ import annotations

import re


class TunerError(Exception):
    """Base of every error the tool expects and reports as one clear line."""

    reason = "error"


class UsageError(TunerError):
    """Bad command-line input: core lists, model names, settings strings."""

    reason = "usage"


def check_choice(flag: str, value: str, allowed: tuple[str, ...]) -> None:
    """A flag's value is one of ``allowed``, else one ``UsageError`` line naming the flag and the choices."""
    if value not in allowed:
        raise UsageError(f"{flag} must be one of {', '.join(allowed)}, not {value!r}")


class SearchSpaceError(TunerError):
    """A malformed search-space file; the message names the file and the key."""

    reason = "search-space"


class InvalidSettings(TunerError):
    """Knob values that cannot be applied (negative threads, unknown data format)."""

    reason = "invalid-settings"


class StorageError(TunerError):
    """Storage that cannot be opened or read."""

    reason = "storage"


class TopologyError(TunerError):
    """More cores asked for than this process may use, or an unreadable topology."""

    reason = "topology"


class EnvironmentChanged(TunerError):
    """A managed environment was rebuilt, or left half-built, by another tuner while this one ran trials from
    it: a fault of the host (the next trial would meet it too), never of the settings measured."""

    reason = "environment"


class WorkerError(TunerError):
    """A trial's worker process failed; carries the tail of its stderr, and says why in one line: the
    message, then the worker's own last meaningful stderr line (see ``cause``)."""

    reason = "worker"
    explained_by_stderr = True  # a timeout or an interrupt is not explained by the worker's last words

    def __init__(self, message: str, stderr_tail: str = "") -> None:
        super().__init__(message)
        self.message = message
        self.stderr_tail = stderr_tail
        # What else used the trial's cores while it ran (tuner/disturbance.py), where the failure may be its
        # doing: instances that could not run side by side. A disturbed failure is measured again.
        self.disturbance: dict[str, object] | None = None

    def __str__(self) -> str:
        why = cause(self.stderr_tail) if self.explained_by_stderr else ""
        return f"{self.message}: {why}" if why else self.message


CAUSE_CHARS = 240
_EXCEPTION = re.compile(r"^(?:[A-Za-z_][\w]*\.)*([A-Za-z_]\w*(?:Error|Exception|Exit|Interrupt))(?::\s*(.*))?$")
_NOISE = (
    "Traceback (most recent call last)",
    'File "',
    "Detected at node",
    "[[{{node",
    "During handling of the above exception",
    "The above exception was the direct cause",
    "Current thread 0x",
    "Thread 0x",
    "Extension modules:",
)


def cause(stderr: str, limit: int = CAUSE_CHARS) -> str:
    """The worker's reason for failing, from its stderr: the last exception's name and message, or where
    that message is only a heading ("Graph execution error:") the last meaningful line after it; else the
    last meaningful line. Tracebacks, source lines and TensorFlow's node markers are passed over."""
    raw = stderr.splitlines()
    lines = [
        line.strip()
        for line in raw
        if line.strip() and not line.startswith((" ", "\t")) and not line.strip().startswith(_NOISE)
    ]
    if not lines:
        return ""
    text = lines[-1]
    for index in range(len(lines) - 1, -1, -1):
        found = _EXCEPTION.match(lines[index])
        if found:
            name, message = found.group(1), (found.group(2) or "").strip()
            after = lines[index + 1 :]
            if (not message or message.endswith(":")) and after:
                message = after[0]  # the first line after a heading says what went wrong
            text = f"{name}: {message}" if message else name
            break
    text = "".join(char if char.isprintable() else " " for char in text).replace("|", "/")
    return text if len(text) <= limit else text[: limit - 3] + "..."


class WorkerCrashed(WorkerError):
    """The worker died from a signal (segfault, abort, out-of-memory kill)."""

    reason = "crashed"


class WorkerExited(WorkerError):
    """The worker exited with a non-zero status."""

    reason = "exited"


class WorkerNotStarted(WorkerError):
    """The worker process could not be started at all (its interpreter missing, no memory or file handles
    left to start it): the machine's fault, never the settings'. A trial that fails so is not "known to fail"
    (``resume.WORKER_FAILURES``), and it ends the search, the confirmation or the benchmark it was in."""

    reason = "not-started"


class WorkerOutOfMemory(WorkerError):
    """The worker ran out of memory (its allocation failed under the memory limit)."""

    reason = "out-of-memory"


class WorkerTimeout(WorkerError):
    """The worker ran past the policy's timeout and was killed."""

    reason = "timeout"
    explained_by_stderr = False


class WorkerBadOutput(WorkerError):
    """The worker's channel carried no result or something that is not the protocol."""

    reason = "bad-output"


class Interrupted(WorkerError):
    """The user interrupted (SIGINT/SIGTERM) while a worker ran; it was killed."""

    reason = "interrupted"
    explained_by_stderr = False


class Pruned(TunerError):
    """The pruner stopped a trial early; the worker was killed. ``disturbance`` holds what else used its
    cores in the timed steps it ran, where the runner measured it (a disturbed trial is measured again,
    not pruned: tuner/disturbance.py)."""

    reason = "pruned"

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.disturbance: dict[str, object] | None = None
