"""Typed failures. The CLI turns any TunerError into one line and exit code 1.

A failed trial is stored as FAIL with the error's ``reason`` (its class's short name), never scored, and
never classified by matching message text.
"""

from __future__ import annotations


class TunerError(Exception):
    """Base of every error the tool expects and reports as one clear line."""

    reason = "error"


class UsageError(TunerError):
    """Bad command-line input: core lists, model names, settings strings."""

    reason = "usage"


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


class WorkerError(TunerError):
    """A trial's worker process failed; carries the tail of its stderr."""

    reason = "worker"

    def __init__(self, message: str, stderr_tail: str = "") -> None:
        super().__init__(message)
        self.stderr_tail = stderr_tail


class WorkerCrashed(WorkerError):
    """The worker died from a signal (segfault, abort, out-of-memory kill)."""

    reason = "crashed"


class WorkerExited(WorkerError):
    """The worker exited with a non-zero status."""

    reason = "exited"


class WorkerOutOfMemory(WorkerError):
    """The worker ran out of memory (its allocation failed under the memory limit)."""

    reason = "out-of-memory"


class WorkerTimeout(WorkerError):
    """The worker ran past the policy's timeout and was killed."""

    reason = "timeout"


class WorkerBadOutput(WorkerError):
    """The worker's channel carried no result or something that is not the protocol."""

    reason = "bad-output"


class Interrupted(WorkerError):
    """The user interrupted (SIGINT/SIGTERM) while a worker ran; it was killed."""

    reason = "interrupted"


class Pruned(TunerError):
    """The pruner stopped a trial early; the worker was killed."""

    reason = "pruned"
