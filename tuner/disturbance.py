"""What else ran on a trial's cores while it was timed, measured from the controller with psutil.

A trial's figure is only the setting's if the setting had its cores to itself. Three things take them away,
and each is read over the timed window (from the worker's last warm-up step to its last timed one):

- other processes: CPU time spent on the trial's cores (``/proc/stat`` per CPU, through psutil) less the
  CPU time of the trial's own processes (psutil, the worker and its children);
- steal: time the hypervisor gave the trial's virtual CPUs to another guest (``/proc/stat``'s steal);
- throttling: time a cgroup CPU quota held the trial's group off its cores (``cpu.stat``: v2
  ``throttled_usec``, v1 ``throttled_time``), from this process's cgroup up to the root.

The disturbance is their sum as a share of the window's core time (throttling: of its wall time). A trial
above the limit is measured again after the cores are quiet (``Steady``), up to a limit of attempts, and is
never ranked on its disturbed value. The worker is not involved: it keeps importing only the standard library
and the framework.
"""

from __future__ import annotations

import math
import re
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import psutil

from tuner import interrupt
from tuner.errors import Pruned, TunerError, UsageError, WorkerError
from tuner.measurement import Measurement
from tuner.topology import CGROUP, PROC_CGROUP

if TYPE_CHECKING:  # the runner module imports this one
    from tuner.runner import Runner, StepCallback, TaskSpec, TrialSpec

# Limit on the disturbance share, from bench/disturbance.py on the 2-core development machine (tiny model,
# batch 4096, 0.6 to 2.2 s timed windows; README, "Disturbance"): 30 trials with nothing else started showed
# 0% to 3.7% of their cores' time used by others; every trial a busy loop on one of the two cores overlapped
# showed 22% to 51%, and the pick's setting then measured 0.66x its quiet value. 5% is above every quiet
# trial and far below what moved a ranking.
DEFAULT_LIMIT = 0.05
ATTEMPTS = 3  # measurements of one trial at most: the first and two more
MIN_WINDOW_S = 0.2  # shorter timed windows are within the clock ticks' (10 ms) resolution: not judged
QUIET_WAIT_S = 60.0  # before measuring again, wait at most this long for the cores to be quiet
QUIET_SAMPLE_S = 1.0
BUSY_FIELDS = ("user", "nice", "system", "irq", "softirq")  # guest time is inside user


class Disturbed(TunerError):
    """Every attempt at a trial was disturbed beyond the limit: it is not ranked on any of them."""

    reason = "disturbed"

    def __init__(self, message: str, attempts: list[dict[str, Any]] | None = None) -> None:
        super().__init__(message)
        self.attempts = attempts or []  # each attempt's Disturbance.to_dict()


@dataclass(frozen=True)
class Snapshot:
    """Counters at one moment: per-CPU busy and steal seconds, the trial's own CPU seconds, throttled time."""

    at: float
    busy: dict[int, float]
    steal: dict[int, float]
    own: float
    throttled: float | None


@dataclass(frozen=True)
class Disturbance:
    """The timed window's disturbance: shares of the trial's core time taken by others, by steal, and of its
    wall time held off by a quota."""

    window_s: float
    cores: int
    other: float
    steal: float
    throttled: float
    judged: bool = True  # False: the window was too short to tell

    @property
    def share(self) -> float:
        return min(1.0, self.other + self.steal + self.throttled)

    def over(self, limit: float | None) -> bool:
        return self.judged and limit is not None and self.share > limit

    def describe(self) -> str:
        parts = [f"others {self.other:.0%}"]
        if self.steal >= 0.005:
            parts.append(f"steal {self.steal:.0%}")
        if self.throttled >= 0.005:
            parts.append(f"quota throttling {self.throttled:.0%}")
        return f"{self.share:.0%} of its cores' time taken ({', '.join(parts)}) over {self.window_s:.1f} s"

    def to_dict(self) -> dict[str, Any]:
        return {k: round(v, 5) if isinstance(v, float) else v for k, v in asdict(self).items()}

    @classmethod
    def from_dict(cls, data: Any) -> Disturbance | None:
        """From a stored dict; None for anything malformed (stored results are untrusted input)."""
        if not isinstance(data, dict):
            return None
        try:
            values = {k: data[k] for k in ("window_s", "other", "steal", "throttled")}
            cores = data["cores"]
        except KeyError:
            return None
        if not all(_fraction(v) for k, v in values.items() if k != "window_s") or not _seconds(values["window_s"]):
            return None
        if not isinstance(cores, int) or isinstance(cores, bool) or not 1 <= cores <= 4096:
            return None
        return cls(cores=cores, judged=data.get("judged") is not False, **{k: float(v) for k, v in values.items()})


def _fraction(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and 0.0 <= value <= 1.0


def _seconds(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value) and value >= 0


@dataclass
class Sources:
    """Where the counters come from: psutil's /proc (``psutil.PROCFS_PATH``) and the cgroup folders.
    Tests point them at fake files."""

    proc: Path = Path("/proc")
    cgroup: Path = CGROUP
    proc_cgroup: Path = PROC_CGROUP
    clock: Callable[[], float] = time.monotonic

    def per_cpu(self) -> tuple[dict[int, float], dict[int, float]]:
        """Busy and steal seconds per CPU number since boot. psutil lists the CPUs in /proc/stat's order,
        which leaves offline CPUs out (CPUs 0,2,3 come as the first three), so they are numbered by the
        file's own ``cpuN`` labels; where the two readings disagree (a CPU went on or off line in between),
        nothing is returned and the window is not judged."""
        saved = psutil.PROCFS_PATH
        psutil.PROCFS_PATH = str(self.proc)
        try:
            times = psutil.cpu_times(percpu=True)
        finally:
            psutil.PROCFS_PATH = saved
        numbers = _stat_cpus(self.proc / "stat")
        if len(numbers) != len(times):
            return {}, {}
        pairs = list(zip(numbers, times, strict=True))
        busy = {cpu: sum(getattr(t, name, 0.0) for name in BUSY_FIELDS) for cpu, t in pairs}
        steal = {cpu: float(getattr(t, "steal", 0.0)) for cpu, t in pairs}
        return busy, steal

    def throttled(self) -> float | None:
        """Seconds this process's cgroups (v2 or v1 ``cpu``) have been throttled, the most of any on the
        path to the root; None where no cpu.stat can be read."""
        try:
            lines = self.proc_cgroup.read_text().splitlines()
        except OSError:
            return None
        found: list[float] = []
        for line in lines:
            hierarchy, controllers, path = [*line.split(":", 2), "", ""][:3]
            if hierarchy == "0" and controllers == "":
                found += _walk(self.cgroup, path, "throttled_usec", 1e-6)
            elif "cpu" in controllers.split(","):
                root = self.cgroup / controllers  # v1: /sys/fs/cgroup/cpu,cpuacct
                found += _walk(root if root.is_dir() else self.cgroup / "cpu", path, "throttled_time", 1e-9)
        return max(found) if found else None


def _stat_cpus(stat: Path) -> list[int]:
    """The CPU numbers of /proc/stat's per-CPU lines, in the file's order (online CPUs only)."""
    try:
        lines = stat.read_text().splitlines()
    except OSError:
        return []
    return [int(line.split()[0][3:]) for line in lines if re.match(r"cpu\d+ ", line)]


def _walk(root: Path, path: str, key: str, unit: float) -> list[float]:
    """``key`` of every cpu.stat from the group at ``path`` under ``root`` up to ``root`` itself."""
    values = []
    folder = root / path.lstrip("/")
    while True:
        try:
            for line in (folder / "cpu.stat").read_text().splitlines():
                name, _, value = line.partition(" ")
                if name == key:
                    values.append(int(value) * unit)
        except (OSError, ValueError):
            pass
        if folder == root or folder == folder.parent:
            return values
        folder = folder.parent


def own_cpu_seconds(pids: Iterable[int]) -> float:
    """User and system CPU seconds of processes ``pids`` and all their children; gone ones count 0."""
    total = 0.0
    for pid in pids:
        try:
            process = psutil.Process(pid)
            family = [process, *process.children(recursive=True)]
        except psutil.Error:
            continue
        for member in family:
            try:
                times = member.cpu_times()
            except psutil.Error:
                continue
            total += times.user + times.system + times.children_user + times.children_system
    return total


@dataclass
class Monitor:
    """Opened at the start of a trial's timed window, closed at its end: the window's ``Disturbance``."""

    cores: Sequence[int]
    sources: Sources = field(default_factory=Sources)
    start: Snapshot | None = None

    def snapshot(self, pids: Iterable[int]) -> Snapshot:
        busy, steal = self.sources.per_cpu()
        return Snapshot(self.sources.clock(), busy, steal, own_cpu_seconds(pids), self.sources.throttled())

    def open(self, pids: Iterable[int]) -> None:
        self.start = self.snapshot(pids)

    def close(self, pids: Iterable[int]) -> Disturbance | None:
        if self.start is None:
            return None
        return between(self.start, self.snapshot(pids), self.cores)


def between(start: Snapshot, end: Snapshot, cores: Sequence[int]) -> Disturbance:
    """The disturbance from ``start`` to ``end`` on ``cores``."""
    window = max(end.at - start.at, 1e-9)
    known = [c for c in cores if c in start.busy and c in end.busy]
    capacity = window * max(len(known), 1)
    busy = sum(end.busy[c] - start.busy[c] for c in known)
    steal = sum(end.steal.get(c, 0.0) - start.steal.get(c, 0.0) for c in known)
    own = end.own - start.own
    throttled = 0.0
    if start.throttled is not None and end.throttled is not None:
        throttled = max(0.0, end.throttled - start.throttled)
    return Disturbance(
        window_s=window,
        cores=len(cores),
        other=_clip(max(0.0, busy - own) / capacity),
        steal=_clip(max(0.0, steal) / capacity),
        throttled=_clip(throttled / window),
        judged=window >= MIN_WINDOW_S and bool(known),
    )


def _clip(value: float) -> float:
    return min(1.0, max(0.0, value))


def sample(cores: Sequence[int], seconds: float = QUIET_SAMPLE_S, sources: Sources | None = None) -> Disturbance:
    """What others do on ``cores`` now: busy, steal and throttling over ``seconds``, no trial running."""
    monitor = Monitor(cores, sources or Sources())
    monitor.open(())
    with interrupt.interruptible():
        time.sleep(seconds)
    found = monitor.close(())
    assert found is not None  # opened above
    return found


def of(measurement: Measurement) -> Disturbance | None:
    """The disturbance stored with ``measurement`` (runners that measure it put it in the facts)."""
    return Disturbance.from_dict(measurement.facts.get("disturbance"))


class Steady:
    """A runner that measures a disturbed trial again: when a measurement's disturbance is over ``limit``,
    it waits (at most ``QUIET_WAIT_S``) for the trial's cores to be quiet and runs it again, at most
    ``attempts`` times in all. The measurement kept carries the disturbance of the attempts it replaced
    (``disturbed_attempts`` in its facts). When every attempt was disturbed it raises ``Disturbed``: a
    disturbed value is never ranked.
    ``limit`` None measures once and only records. Tasks (``compute``) pass through."""

    def __init__(
        self,
        inner: Runner,
        limit: float | None = DEFAULT_LIMIT,
        attempts: int = ATTEMPTS,
        note: Callable[[str], None] = lambda line: None,
        wait_quiet: Callable[[Sequence[int]], float] | None = None,
    ) -> None:
        if limit is not None and not 0.0 < limit < 1.0:
            raise ValueError(f"disturbance limit {limit} is not a share between 0 and 1")
        self.inner = inner
        self.limit = limit
        self.attempts = max(1, attempts)
        self.note = note
        self.wait_quiet = wait_quiet or self._wait_quiet

    def compute(self, spec: TaskSpec) -> dict[str, Any]:
        return self.inner.compute(spec)

    def run(self, spec: TrialSpec, on_step: StepCallback | None = None) -> Measurement:
        seen: list[dict[str, Any]] = []
        for attempt in range(1, self.attempts + 1):
            try:
                # Steps go to ``on_step`` (the pruner) on the first attempt only: Optuna keeps one value per step.
                measurement = self.inner.run(spec, on_step if attempt == 1 else None)
            except (WorkerError, Pruned) as error:
                # Failed while disturbed (instances kept apart), or pruned on disturbed steps: measured again,
                # the later attempts in full (the pruner saw the first attempt's steps).
                found = Disturbance.from_dict(error.disturbance)
                if found is None or not found.over(self.limit) or attempt == self.attempts:
                    raise
                seen.append({**found.to_dict(), "pruned": True} if isinstance(error, Pruned) else found.to_dict())
            else:
                found = of(measurement)
                if found is None or not found.over(self.limit):
                    if seen:
                        measurement.facts["disturbed_attempts"] = seen  # the attempts thrown away
                    return measurement
                seen.append(found.to_dict())
                if attempt == self.attempts:
                    break
            self.note(
                f"disturbed: {found.describe()}; measuring again ({attempt + 1} of {self.attempts}) once its cores "
                f"are quiet (waiting up to {QUIET_WAIT_S:.0f} s)"
            )
            waited = self.wait_quiet(spec.cores)
            if waited > 0:
                self.note(f"waited {waited:.0f} s for its cores to be quiet")
        assert found is not None
        raise Disturbed(
            f"disturbed in all {self.attempts} attempts (last: {found.describe()}; limit {self.limit:.0%}): "
            "something else keeps using its cores; see tuner doctor",
            seen,
        )

    def _wait_quiet(self, cores: Sequence[int]) -> float:
        """Seconds waited until others use at most the limit of ``cores`` over one sample."""
        started = time.monotonic()
        while time.monotonic() - started < QUIET_WAIT_S:
            if sample(cores).share <= (self.limit or 1.0):
                break
        return time.monotonic() - started


def steady(runner: Runner, limit: float | None, note: Callable[[str], None] = lambda line: None) -> Runner:
    """``runner`` measuring disturbed trials again (``Steady``), unless it already does."""
    return runner if isinstance(runner, Steady) else Steady(runner, limit, note=note)


def parse_limit(text: str) -> float | None:
    """``--max-disturbance``: a share (0.05) or a percentage (5%), or ``off`` to only record it."""
    value = text.strip().lower()
    if value in ("off", "none"):
        return None
    try:
        share = float(value[:-1]) / 100 if value.endswith("%") else float(value)
    except ValueError:
        share = math.nan
    if not 0.0 < share < 1.0:
        raise UsageError(
            f"--max-disturbance: {text!r} is not a share of the cores' time between 0 and 1 (e.g. 0.05 or 5%), or off"
        )
    return share


def study_figures(trials: Sequence[Any]) -> dict[str, Any]:
    """A study's disturbance from its stored trials (Optuna ``FrozenTrial``s; untrusted: malformed entries
    are left out): how many trials carry a figure, how many were measured again, how many were never ranked
    (disturbed in every attempt), the shares of the attempts thrown away, and the largest share kept."""
    kept: list[float] = []
    thrown: list[float] = []
    remeasured = not_ranked = 0
    for trial in trials:
        attrs = trial.user_attrs
        found = Disturbance.from_dict(attrs.get("disturbance"))
        if found is not None and found.judged:
            kept.append(found.share)
        attempts = attrs.get("disturbed_attempts")
        shares = [d.share for d in map(Disturbance.from_dict, attempts if isinstance(attempts, list) else []) if d]
        thrown += shares
        if attrs.get("fail_reason") == Disturbed.reason:
            not_ranked += 1
        elif shares:
            remeasured += 1
    return {
        "trials_with_figure": len(kept),
        "remeasured": remeasured,
        "not_ranked": not_ranked,
        "thrown_away": [round(s, 4) for s in thrown],
        "largest_kept": round(max(kept), 4) if kept else None,
        "kept_over_default": sum(share > DEFAULT_LIMIT for share in kept),  # ranked anyway: the limit was off
    }


def describe_study(figures: dict[str, Any]) -> str | None:
    """One line for show and the report, or None when nothing was disturbed and nothing is recorded."""
    if not figures.get("trials_with_figure") and not figures.get("thrown_away"):
        return None
    thrown = figures.get("thrown_away") or []
    parts = []
    if figures.get("remeasured"):
        parts.append(f"{figures['remeasured']} trial(s) measured again")
    if figures.get("not_ranked"):
        parts.append(f"{figures['not_ranked']} not ranked (disturbed in every attempt)")
    if thrown:
        parts.append(
            "attempts thrown away at " + ", ".join(f"{s:.0%}" for s in thrown[:8]) + ("..." * (len(thrown) > 8))
        )
    over = figures.get("kept_over_default")
    if isinstance(over, int) and over:
        parts.append(f"{over} ranked over the default {DEFAULT_LIMIT:.0%} (measured with the limit off)")
    largest = figures.get("largest_kept")
    kept = f"largest share kept {largest:.1%}" if isinstance(largest, float) else "no judged window kept"
    head = "disturbed" if parts else "undisturbed"
    return f"{head}: {'; '.join([*parts, kept])} (of the cores' time used by others over each timed window)"
