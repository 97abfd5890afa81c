"""In-process screening: several thread settings timed in one pinned worker process, each in its own session.

A trial is a fresh process because TensorFlow fixes its thread pools when it starts, so half of a short
trial's wall time is process start, imports, model build and tracing. The ``screen`` worker task pays those
once: it builds the model's step into one graph, then measures each setting in a new ``tf.compat.v1.Session``
whose config names the setting. With ``TF_OVERRIDE_GLOBAL_THREADPOOL=1`` (set by the worker for itself) each
session's CPU device gets its own intra-op pool (oneDNN in stock TensorFlow runs on it), and
``use_per_session_threads`` its own inter-op pool; ``disable_thread_spinning`` turns the pools' spinning off.
Each setting has its own first run (timed apart), warm-up and timed steps, as a trial has, and the worker
reads back the threads each session really created, by pool: a setting whose pools do not match what it asked
for is refused, never scored (a TensorFlow that shares one pool would otherwise rank one setting many times).

Only what differs per session is screened: intra_op, inter_op and spinning. Every other knob (layout,
environment variables, allocator, precision, batch) is the process's and must be the same for every setting
of one screen. Values reach the worker only from validated ``Settings`` and ``ScreenPoint``s.
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from dataclasses import dataclass, replace
from typing import Any

from tuner.errors import InvalidSettings, TunerError, WorkerBadOutput
from tuner.measurement import MAX_LOOP_SECONDS, Measurement, seconds_ok
from tuner.policy import MeasurementPolicy
from tuner.runner import Runner, TaskSpec
from tuner.settings import Settings
from tuner.workload import Workload

MAX_POINTS = 64
SHARED_FACTS = ("framework_version", "onednn", "openmp", "cpus", "allocator", "compute_dtype", "python")


class ScreeningUnsupported(TunerError):
    """Screening cannot measure these settings on this runtime (its pools are not per session)."""

    reason = "screening-unsupported"


@dataclass(frozen=True)
class ScreenPoint:
    """One setting of a screen: the session's intra-op and inter-op pool sizes (0: TensorFlow's default) and
    whether their threads spin while waiting for work (TensorFlow's default: they do)."""

    intra_op: int
    inter_op: int
    spinning: bool = True

    def __post_init__(self) -> None:
        Settings(intra_op=self.intra_op, inter_op=self.inter_op)  # the same integer checks as a trial's
        if not isinstance(self.spinning, bool):
            raise InvalidSettings(f"spinning must be true or false, got {self.spinning!r}")

    @classmethod
    def from_settings(cls, settings: Settings, spinning: bool = True) -> ScreenPoint:
        return cls(settings.intra_op, settings.inter_op, spinning)

    def label(self) -> str:
        return f"intra_op={self.intra_op};inter_op={self.inter_op};spinning={str(self.spinning).lower()}"

    def worker_fields(self) -> dict[str, Any]:
        return {"intra_op": self.intra_op, "inter_op": self.inter_op, "spinning": self.spinning}


def split_settings(settings: Sequence[Settings]) -> tuple[Settings, tuple[ScreenPoint, ...]]:
    """Settings of one screen -> the process's settings (every knob but the two pool sizes) and the points.
    All must agree on every knob but intra_op and inter_op; one process runs one instance."""
    if not settings:
        raise InvalidSettings("a screen needs at least one setting")
    bases = {replace(s, intra_op=0, inter_op=0) for s in settings}
    if len(bases) > 1:
        labels = sorted(b.label() for b in bases)
        raise InvalidSettings(
            "screening varies only intra_op, inter_op and spinning in one process; these settings also "
            f"differ in other knobs: {labels[0]} / {labels[1]}"
        )
    return bases.pop(), tuple(ScreenPoint.from_settings(s) for s in settings)


@dataclass(frozen=True)
class Screen:
    """Which settings one screening process measures, and how: the workload, the cores it is pinned to, the
    policy (warm-up and timed steps per setting, the timeout per setting) and the seed of the order."""

    base: Settings
    points: tuple[ScreenPoint, ...]
    workload: Workload
    cores: tuple[int, ...]
    policy: MeasurementPolicy
    seed: int = 0

    def __post_init__(self) -> None:
        if not 1 <= len(self.points) <= MAX_POINTS:
            raise InvalidSettings(f"a screen measures 1 to {MAX_POINTS} settings, got {len(self.points)}")
        if not all(isinstance(p, ScreenPoint) for p in self.points):
            raise InvalidSettings("a screen's points must be ScreenPoints")
        if len(set(self.points)) != len(self.points):
            raise InvalidSettings("a screen measures each setting once: a point is given twice")
        if not isinstance(self.base, Settings) or self.base.instances != 1:
            raise InvalidSettings("a screen runs one process: instances must be 1")
        if self.workload.ref.kind != "app":
            raise InvalidSettings("screening builds the model into a graph: application models only")
        if not self.cores or any(isinstance(c, bool) or not isinstance(c, int) or c < 0 for c in self.cores):
            raise InvalidSettings(f"bad core set {self.cores!r}")
        if isinstance(self.seed, bool) or not isinstance(self.seed, int):
            raise InvalidSettings(f"the seed must be an integer, got {self.seed!r}")

    @property
    def batch_size(self) -> int:
        return self.base.batch or self.workload.batch_size

    def order(self) -> list[int]:
        """The points' indices in the order the worker measures them: shuffled by the seed, so that drift
        within the process does not line up with any knob."""
        indices = list(range(len(self.points)))
        random.Random(self.seed).shuffle(indices)
        return indices

    def task(self) -> TaskSpec:
        """The worker task, points in measuring order. Validated values only."""
        fields: dict[str, Any] = {
            "mode": self.workload.mode,
            "batch_size": self.batch_size,
            "warmup": self.policy.warmup,
            "timed": self.policy.timed,
            "points": [self.points[i].worker_fields() for i in self.order()],
        }
        return TaskSpec(
            "screen",
            self.base,
            self.cores,
            model=self.workload.ref,
            timeout_s=self.policy.timeout_s * len(self.points),
            fields=tuple(fields.items()),
        )


@dataclass(frozen=True)
class ScreenResult:
    """Per point, in the order the caller gave them: its measurement. ``wall_seconds``: the whole screen,
    process start to exit, as long as it held the host lock; ``facts``: what the process read back."""

    points: tuple[ScreenPoint, ...]
    measurements: tuple[Measurement, ...]
    wall_seconds: float
    facts: dict[str, Any]

    def by_label(self) -> dict[str, Measurement]:
        return {p.label(): m for p, m in zip(self.points, self.measurements, strict=True)}


def _seconds(value: Any) -> float:
    """A positive finite number of seconds, else 0 (not recorded)."""
    return float(value) if seconds_ok(value, MAX_LOOP_SECONDS) else 0.0


def _steps(entry: dict[str, Any], key: str, count: int, tail: str) -> tuple[float, ...]:
    values = entry.get(key)
    if not isinstance(values, list) or len(values) != count or not all(seconds_ok(v) for v in values):
        raise WorkerBadOutput(f"screen result has no {count} positive {key.replace('_', ' ')}", tail)
    return tuple(float(v) for v in values)


def _read_back(point: ScreenPoint, threads: Any, tail: str) -> None:
    """The session's pools, as the worker counted their threads, must be the sizes asked for (0: any)."""
    if not isinstance(threads, dict):
        raise WorkerBadOutput(f"screen result for {point.label()} has no thread read-back", tail)
    for pool, wanted in (("intra", point.intra_op), ("inter", point.inter_op)):
        found = threads.get(pool)
        if isinstance(found, bool) or not isinstance(found, int):
            raise WorkerBadOutput(f"screen result for {point.label()} has no {pool}-op thread count", tail)
        if wanted and found != wanted:
            raise ScreeningUnsupported(
                f"asked for {pool}_op={wanted}, the session made {found} {pool}-op threads: this runtime does not "
                "give each session its own pools, so settings cannot be screened in one process"
            )


def parse_result(screen: Screen, result: dict[str, Any]) -> ScreenResult:
    """The worker's ``screen`` result -> one Measurement per point, mapped back to the caller's order by the
    position each was sent at (and checked against the values it echoes)."""
    tail = str(result.get("_tail", ""))
    if result.get("openmp") is not None:
        raise ScreeningUnsupported(
            f"this runtime loads {result['openmp']}: oneDNN runs on OpenMP threads, not on the session's pools"
        )
    entries = result.get("points")
    order = screen.order()
    if not isinstance(entries, list) or len(entries) != len(order):
        raise WorkerBadOutput(f"screen result has no {len(order)} points", tail)
    shared = {k: result[k] for k in SHARED_FACTS if k in result}
    lock = result.get("host_lock")
    held = lock.get("to", 0) - lock.get("from", 0) if isinstance(lock, dict) else 0
    measurements: list[Measurement | None] = [None] * len(order)
    for position, entry in enumerate(entries):
        if not isinstance(entry, dict) or entry.get("index") != position:
            raise WorkerBadOutput(f"screen result's point {position} is out of order", tail)
        point = screen.points[order[position]]
        echoed = {k: entry.get(k) for k in ("intra_op", "inter_op", "spinning")}
        if echoed != point.worker_fields() or any(type(echoed[k]) is not type(v) for k, v in echoed.items()):
            raise WorkerBadOutput(f"screen result's point {position} is not the setting sent there", tail)
        _read_back(point, entry.get("threads"), tail)
        timed = _steps(entry, "timed_seconds", screen.policy.timed, tail)
        warmup = _steps(entry, "warmup_seconds", screen.policy.warmup, tail)
        loop, wall = entry.get("timed_wall_seconds"), entry.get("wall_seconds")
        facts = {
            **shared,
            "screen": point.label(),
            "position": position,
            "threads": entry["threads"],
            "first_step_seconds": entry.get("first_step_seconds"),
            "session_seconds": entry.get("session_seconds"),
        }
        measurements[order[position]] = Measurement(
            batch_size=screen.batch_size,
            timed_seconds=timed,
            warmup_seconds=warmup,
            facts=facts,
            wall_seconds=_seconds(wall),
            timed_wall_seconds=_seconds(loop),
        )
    facts = {k: v for k, v in result.items() if k not in ("points", "_tail", "event")}
    done = tuple(m for m in measurements if m is not None)
    return ScreenResult(screen.points, done, _seconds(held), facts)


def run_screen(runner: Runner, screen: Screen) -> ScreenResult:
    """Measure every point of ``screen`` in one worker process through ``runner`` (which holds the host lock
    for the whole process, as for a trial)."""
    return parse_result(screen, runner.compute(screen.task()))


def screen_settings(
    runner: Runner,
    settings: Sequence[Settings],
    workload: Workload,
    cores: tuple[int, ...],
    policy: MeasurementPolicy,
    seed: int = 0,
    spinning: Sequence[bool] = (True,),
) -> ScreenResult:
    """Screen ``settings`` (each with every spinning choice given), measured in an order shuffled by ``seed``."""
    if not spinning or any(not isinstance(s, bool) for s in spinning) or len(set(spinning)) != len(spinning):
        raise InvalidSettings(f"spinning must be distinct true/false values, got {list(spinning)!r}")
    base, points = split_settings(settings)
    every = tuple(replace(p, spinning=s) for p in points for s in spinning)
    return run_screen(runner, Screen(base, every, workload, cores, policy, seed))
