"""Several pinned instances measured as one trial: their steps over the window they all ran in, summed.

Launchers run N copies of a model, each on cores/N cores, and count their summed throughput (PyTorch's
``run_cpu``, Intel's model-zoo, OpenVINO's streams). A trial with ``instances = N`` does the same: N workers
start together (each waits at a barrier until all are built), each runs its warm-up and timed steps, and each
reports when its timed steps ended on CLOCK_MONOTONIC, one clock for every process. The common window runs
from the latest first timed step to the earliest last one: only while all instances run does their sum mean
anything (the last one alone would have the machine to itself). Each instance's steps inside the window are
kept; the k-th group step is the k-th such step of every instance, and its rate is the sum of their rates. The
group's timed-loop rate (tf_cnn_benchmarks' figure) is the sum of each instance's in-window loop rate.
"""

from __future__ import annotations

import contextlib
import math
import os
import select
import statistics
import subprocess
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import IO, Any

from tuner import interrupt
from tuner.disturbance import Disturbance, Monitor
from tuner.errors import WorkerBadOutput, WorkerError, WorkerNotStarted, WorkerTimeout
from tuner.measurement import Measurement, seconds_ok
from tuner.runner import STEP_KEYS, SubprocessRunner, TrialSpec, _decode, _tail, check_read_back, kill_group
from tuner.settings import ENV_ALLOWLIST, Settings
from tuner.topology import partition

SLACK_S = 1e-3  # clock rounding between a step's end stamp and its own duration
MIN_WINDOW_STEPS = 3  # fewer steps of every instance side by side than this: no figure worth ranking


def padded_steps(timed: int) -> int:
    """Timed steps each instance runs, so that ``timed`` of them fall in the common window: instances do
    not start their timed loops at exactly the same moment, so a few steps at either edge fall outside."""
    return timed + max(2, math.ceil(timed / 4))


@dataclass(frozen=True)
class Instance:
    """One instance's timed steps: durations and end stamps (monotonic seconds)."""

    cores: tuple[int, ...]
    seconds: tuple[float, ...]
    ends: tuple[float, ...]

    @classmethod
    def from_result(cls, cores: Sequence[int], result: dict[str, Any]) -> Instance:
        seconds, ends = result.get("timed_seconds"), result.get("timed_ends")
        if (
            not isinstance(seconds, list)
            or not isinstance(ends, list)
            or len(seconds) != len(ends)
            or not seconds
            or not all(isinstance(v, (int, float)) and math.isfinite(v) for v in [*seconds, *ends])
        ):
            raise WorkerBadOutput("an instance's result has no matching timed steps and end stamps")
        return cls(tuple(cores), tuple(float(s) for s in seconds), tuple(float(e) for e in ends))

    def begins(self) -> list[float]:
        return [end - seconds for end, seconds in zip(self.ends, self.seconds, strict=True)]

    def inside(self, start: float, stop: float) -> list[float]:
        """Durations of the steps that ran wholly inside [start, stop]."""
        return [
            s
            for s, b, e in zip(self.seconds, self.begins(), self.ends, strict=True)
            if b >= start - SLACK_S and e <= stop + SLACK_S
        ]


@dataclass(frozen=True)
class GroupSteps:
    """The group as one measurement: per-step seconds for the group's batch (instances x batch)."""

    step_seconds: tuple[float, ...]
    loop_seconds: float
    window_seconds: float
    per_instance: list[dict[str, Any]]


def combine(instances: Sequence[Instance], batch: int, keep: int) -> GroupSteps:
    """The group's steps over the common window, at most ``keep`` of them; raises when the instances' timed
    steps did not run together (one finished before another began)."""
    start = max(min(i.begins()) for i in instances)
    stop = min(max(i.ends) for i in instances)
    inside = [i.inside(start, stop) for i in instances]
    count = min(len(steps) for steps in inside)
    if stop <= start or count < min(keep, MIN_WINDOW_STEPS):
        raise WorkerBadOutput(
            f"the instances' timed steps hardly ran at the same time ({count} step(s) of every instance in a "
            "common window): the machine could not run them side by side"
        )
    count = min(count, keep)
    group_batch = batch * len(instances)
    rates = [sum(batch / steps[k] for steps in inside) for k in range(count)]
    loop_rate = sum(batch * len(steps) / math.fsum(steps) for steps in inside)
    per_instance = [
        {
            "cores": list(instance.cores),
            "steps_in_window": len(steps),
            "median_step_seconds": statistics.median(steps),
            "images_per_sec": batch / statistics.median(steps),
        }
        for instance, steps in zip(instances, inside, strict=True)
    ]
    return GroupSteps(
        step_seconds=tuple(group_batch / rate for rate in rates),
        loop_seconds=count * group_batch / loop_rate,
        window_seconds=stop - start,
        per_instance=per_instance,
    )


# -- the group's processes: the subprocess runner's discipline, for N workers at once --------------------


def run_group(self: SubprocessRunner, spec: TrialSpec) -> Measurement:
    """``instances`` workers, each pinned to its share of the cores, started together and measured over
    the window they all ran in (tuner/group.py); any instance failing fails the trial and ends them all.
    The pruner sees no steps here: a group is measured whole."""
    if spec.device != "cpu" or spec.replicas != 1:
        raise WorkerBadOutput("instances run on the CPU target with one replica each")
    groups = partition(spec.cores, spec.settings.instances)
    timed = padded_steps(spec.policy.timed)
    specs = [{**spec.worker_spec(), "cores": list(g), "timed": timed, "barrier": True} for g in groups]
    started = time.monotonic()

    def execute(keras_home: str) -> tuple[list[dict[str, Any]], dict[str, str]]:
        return _execute_group(self, specs, spec.settings, groups, spec.policy.timeout_s, keras_home)

    results, env = self._holding_lock(execute)
    for index, result in enumerate(results):
        if not all(seconds_ok(s) for s in [*result.get("timed_seconds", []), *result.get("warmup_seconds", [])]):
            raise WorkerBadOutput(
                "an instance's step times are not numbers of seconds a step can take", result.get("_tail", "")
            )
        if len(result.get("timed_seconds") or []) != timed:
            raise WorkerBadOutput(f"instance {index} sent no {timed} timed steps", result.get("_tail", ""))
        check_read_back(spec.settings, result)
    try:
        steps = combine([Instance.from_result(g, r) for g, r in zip(groups, results, strict=True)],
                        spec.batch_size, spec.policy.timed)  # fmt: skip
    except WorkerBadOutput as error:  # a neighbour can keep instances from running side by side: say so
        error.disturbance = results[0].get("disturbance") if results else None
        raise
    warmups = [r.get("warmup_seconds") or [] for r in results]
    facts = {k: v for k, v in results[0].items() if k not in STEP_KEYS}
    facts.update(
        cpus=sorted(spec.cores),
        instances=steps.per_instance,
        instance_pids=[r.get("pid") for r in results],
        window_seconds=steps.window_seconds,
        child_env={k: v for k, v in env.items() if k not in ENV_ALLOWLIST},
    )
    return Measurement(
        batch_size=spec.global_batch * len(groups),
        timed_seconds=steps.step_seconds,
        warmup_seconds=tuple(max(w) for w in zip(*warmups, strict=False)) if all(warmups) else (),
        facts=facts,
        wall_seconds=time.monotonic() - started,
        timed_wall_seconds=steps.loop_seconds,
    )


def _execute_group(
    self: SubprocessRunner,
    worker_specs: list[dict[str, Any]],
    settings: Settings,
    groups: list[tuple[int, ...]],
    timeout_s: float,
    keras_home: str,
) -> tuple[list[dict[str, Any]], dict[str, str]]:
    """Start one worker per core group, release them together once all are built, read every channel,
    and return their checked results. A crash, exit or hang of any instance kills every instance."""
    env = settings.environ(self.parent_env, False, keras_home)
    deadline = time.monotonic() + timeout_s
    with contextlib.ExitStack() as stack:
        members: list[tuple[subprocess.Popen[bytes], int, IO[bytes]]] = []
        stack.callback(_end_group, members)
        for index, worker_spec in enumerate(worker_specs):
            log = stack.enter_context(tempfile.TemporaryFile())
            read_fd, write_fd = os.pipe()
            stack.callback(os.close, read_fd)
            try:
                process = subprocess.Popen(
                    self.argv(worker_spec, write_fd),
                    env=env,
                    stdin=subprocess.PIPE,  # the start barrier: one byte releases the instance
                    stdout=log,
                    stderr=log,
                    pass_fds=(write_fd,),
                    start_new_session=True,
                    preexec_fn=self._child_setup,
                )
            except (OSError, ValueError) as error:
                raise WorkerNotStarted(f"cannot start instance {index} with {self.python}: {error}") from None
            finally:
                os.close(write_fd)
            members.append((process, read_fd, log))
        monitor = Monitor(sorted(c for g in groups for c in g))
        results = _read_group(self, members, deadline, timeout_s, monitor, int(worker_specs[0]["timed"]))
        checked = []
        for index, ((process, _, member_log), result) in enumerate(zip(members, results, strict=True)):
            SubprocessRunner._wait(process, True, deadline)
            try:
                checked.append(SubprocessRunner._check(process.returncode, result, member_log, groups[index]))
            except WorkerError as error:
                raise type(error)(f"instance {index}: {error.message}", error.stderr_tail) from None
            checked[-1]["_tail"] = _tail(member_log)
        return checked, env


def _read_group(
    self: SubprocessRunner,
    members: list[tuple[subprocess.Popen[bytes], int, IO[bytes]]],
    deadline: float,
    timeout_s: float,
    monitor: Monitor | None = None,
    timed: int = 0,
) -> list[dict[str, Any]]:
    """Every instance's result event; the barrier is released when every instance reported ready. The
    group's disturbance is measured from the release to the last instance's last timed step, and kept on
    the first instance's result."""
    results: list[dict[str, Any] | None] = [None] * len(members)
    pids = [process.pid for process, _, _ in members]
    finished: set[int] = set()
    found: Disturbance | None = None
    buffers = [b""] * len(members)
    open_fds = {fd: index for index, (_, fd, _) in enumerate(members)}
    ready: set[int] = set()
    while open_fds:
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            late = sorted(i for i, r in enumerate(results) if r is None)
            raise WorkerTimeout(
                f"instance {late[0]} of {len(members)} ran past {timeout_s:.0f} s", _tail(members[late[0]][2])
            )
        with interrupt.interruptible():
            readable, _, _ = select.select(list(open_fds), [], [], min(remaining, 1.0))
        for fd in readable:
            index = open_fds[fd]
            chunk = os.read(fd, 65536)
            if not chunk:  # channel closed without a result: that instance failed; say how
                del open_fds[fd]
                process, _, log = members[index]
                try:
                    SubprocessRunner._wait(process, False, deadline)
                except subprocess.TimeoutExpired:
                    raise WorkerTimeout(f"instance {index} closed its channel and hung", _tail(log)) from None
                try:
                    SubprocessRunner._check(process.returncode, None, log, ())
                except WorkerError as error:
                    raise type(error)(f"instance {index}: {error.message}", error.stderr_tail) from None
                continue
            buffers[index] += chunk
            *lines, buffers[index] = buffers[index].split(b"\n")
            for line in lines:
                event = _decode(line)
                if event.get("event") == "ready":
                    ready.add(index)
                    if len(ready) == len(members):
                        if monitor is not None:
                            monitor.open(pids)
                        for process, _, _ in members:
                            assert process.stdin is not None
                            # One that died after it was ready: its channel's end says how, next read.
                            with contextlib.suppress(OSError):
                                process.stdin.write(b"g")
                                process.stdin.close()
                elif event.get("phase") == "timed" and event.get("index") == timed - 1 and monitor is not None:
                    finished.add(index)
                    if len(finished) == len(members):
                        found = monitor.close(pids)
                elif event.get("event") == "result":
                    results[index] = event
                    open_fds.pop(fd, None)
    if found is not None and results and results[0] is not None:
        results[0]["disturbance"] = found.to_dict()
    return [r for r in results if r is not None]


def _end_group(members: list[tuple[subprocess.Popen[bytes], int, IO[bytes]]]) -> None:
    for process, _, _ in members:
        kill_group(process)  # also reaps it
        if process.stdin is not None and not process.stdin.closed:
            with contextlib.suppress(OSError):
                process.stdin.close()
