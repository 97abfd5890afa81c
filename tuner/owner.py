"""Who is measuring a trial, in a form that survives containers: host, boot, PID namespace, pid, start time.

A trial left RUNNING by a killed tool is failed at once by the next run on the same host, but only when
that run can really tell the owner is gone: the same host name is not enough (containers share it), nor is
a missing pid (another PID namespace numbers processes its own way; after a reboot pids are reused). So the
owner records the boot id and the PID namespace beside the pid, and the process's start time. When they do
not all match this process's, nothing is decided here: Optuna's heartbeat fails the trial once it stops.
"""

from __future__ import annotations

import os
import socket
import warnings
from collections.abc import Callable, Mapping
from datetime import datetime
from typing import Any

import optuna
from optuna.trial import TrialState

ORPHAN_AGE_S = 600  # a RUNNING trial with no owner and no heartbeat this old was abandoned before it began


def _read(path: str) -> str | None:
    try:
        with open(path) as handle:
            return handle.read().strip()
    except OSError:
        return None


PID_MAX = 2**22  # Linux's largest pid_max: a stored pid past it (or below 1) names no process


def _pid_namespace() -> str | None:
    try:
        return os.readlink("/proc/self/ns/pid")
    except OSError:
        return None


def start_ticks(pid: int) -> int | None:
    """When process ``pid`` started (clock ticks since boot, /proc/PID/stat field 22); None if it is gone."""
    stat = _read(f"/proc/{pid}/stat")
    if stat is None:
        return None
    try:
        return int(stat.rsplit(")", 1)[1].split()[19])
    except (IndexError, ValueError):
        return None


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # it exists, owned by someone else
    return True


def identity() -> dict[str, Any]:
    """This process as a trial's owner."""
    return {
        "host": socket.gethostname(),
        "pid": os.getpid(),
        "boot_id": _read("/proc/sys/kernel/random/boot_id"),
        "pid_ns": _pid_namespace(),
        "start": start_ticks(os.getpid()),
    }


def decidable(owner: Mapping[str, Any]) -> bool:
    """Whether ``gone`` can tell of ``owner``: it names this host, boot and PID namespace (an older owner
    with host and pid only: this host)."""
    me = identity()
    if owner.get("host") != me["host"]:
        return False
    recorded = "boot_id" in owner or "pid_ns" in owner
    return not recorded or (owner.get("boot_id") == me["boot_id"] and owner.get("pid_ns") == me["pid_ns"])


def gone(owner: Mapping[str, Any]) -> bool:
    """True only when this process can tell that ``owner`` no longer runs: same host, boot and PID
    namespace, and no process with its pid (or one with that pid that started at another time)."""
    pid = owner.get("pid")
    if not decidable(owner) or not isinstance(pid, int) or isinstance(pid, bool):
        return False  # another host, boot or container: its pids mean nothing here
    if not 1 <= pid <= PID_MAX:  # no process here has it (a forged or corrupt owner): nothing to tell by
        return False
    started = start_ticks(pid)
    if started is None:
        return not _alive(pid)  # /proc may hide other users' processes (hidepid): ask the kernel too
    return isinstance(owner.get("start"), int) and owner["start"] != started  # pid reused by another process


def fail_orphans(study: optuna.Study, progress: Callable[[str], None]) -> None:
    """Fail the study's RUNNING trials whose owner is known to be gone (see ``gone``), or that never got an
    owner and are old; the rest are left to Optuna's heartbeat (``fail_stale_trials``)."""
    storage = study._storage
    for trial in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
        owner = trial.user_attrs.get("owner", {})
        started = trial.datetime_start
        age = (datetime.now() - started).total_seconds() if started else 0.0
        if (isinstance(owner, dict) and owner and gone(owner)) or (not owner and age > ORPHAN_AGE_S):
            storage.set_trial_user_attr(trial._trial_id, "fail_reason", "orphaned")
            storage.set_trial_state_values(trial._trial_id, TrialState.FAIL)
            progress(f"trial {trial.number} was left running by a killed run: marked failed")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        optuna.storages.fail_stale_trials(study)
