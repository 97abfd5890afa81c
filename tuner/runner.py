"""Runners take one trial and return a measurement. The real one starts a worker process per trial.

The subprocess runner follows pyperf's worker discipline: explicit argv and no shell, its own process
group, a hard timeout, the whole group killed on timeout, Ctrl-C, pruning or any exception, always reaped,
and results on a dedicated pipe as JSON lines rather than parsed from log text.
"""

from __future__ import annotations

import contextlib
import ctypes
import json
import os
import resource
import select
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any, Protocol

from tuner import interrupt
from tuner.disturbance import Disturbance, Monitor
from tuner.envs import read_manifest
from tuner.errors import (
    EnvironmentChanged,
    Pruned,
    WorkerBadOutput,
    WorkerCrashed,
    WorkerError,
    WorkerExited,
    WorkerNotStarted,
    WorkerOutOfMemory,
    WorkerTimeout,
)
from tuner.lockfile import Busy, held
from tuner.measurement import MAX_LOOP_SECONDS, Measurement, seconds_ok
from tuner.models import ModelRef, as_ref
from tuner.policy import MeasurementPolicy
from tuner.runtime import Runtime, env_lock
from tuner.sanitize import one_line
from tuner.settings import ENV_ALLOWLIST, Settings
from tuner.workload import Workload

WORKER = Path(__file__).resolve().parent / "worker.py"
STDERR_TAIL = 2000
HOST_LOCK = Path(tempfile.gettempdir()) / "tuner-measure.lock"
EXIT_GRACE_S = 30.0
PR_SET_PDEATHSIG = 1  # prctl option, linux/prctl.h
# What a worker's stderr shows when an allocation failed: Python's, C++'s (TensorFlow) and the C library's.
OOM_SIGNS = ("MemoryError", "std::bad_alloc", "Cannot allocate memory", "OOM when allocating")

STEP_KEYS = ("event", "warmup_seconds", "timed_seconds", "timed_wall_seconds", "timed_ends", "_tail")
StepCallback = Callable[[str, int, float], None]  # (phase, index, seconds); may raise to stop the trial


@dataclass(frozen=True)
class TrialSpec:
    """Everything one measurement needs."""

    settings: Settings
    workload: Workload
    cores: tuple[int, ...]
    policy: MeasurementPolicy
    probe: bool = False  # also capture oneDNN's verbose runtime line (slows steps: never for timed trials)
    device: str = "cpu"  # "gpu": one replica per GPU; the cores still run the host side
    replicas: int = 1  # >1 on "cpu": the CPU split into logical devices (tests the multi-replica path)

    def __post_init__(self) -> None:
        if self.device not in ("cpu", "gpu") or not 1 <= self.replicas <= 64:
            raise ValueError(f"bad target: device {self.device!r}, {self.replicas} replicas")

    @property
    def batch_size(self) -> int:
        """Samples per step per replica: the settings' batch knob where it is set, else the workload's."""
        return self.settings.batch or self.workload.batch_size

    @property
    def global_batch(self) -> int:
        return self.batch_size * self.replicas

    def worker_spec(self) -> dict[str, Any]:
        """The JSON the worker receives: validated values only."""
        return {
            "task": "measure",
            "device": self.device,
            "replicas": self.replicas,
            **self.settings.framework_calls(),
            "cores": list(self.cores),
            **self.workload.ref.worker_fields(),
            "mode": self.workload.mode,
            "batch_size": self.batch_size,
            "warmup": self.policy.warmup,
            "timed": self.policy.timed,
            "probe": self.probe,
        }


@dataclass(frozen=True)
class TaskSpec:
    """A worker task that is not a timed trial: ``flops`` (count the model's FLOPs per image), ``describe``
    (the same with the model's parameters and inputs: a model file's check before any trial), ``matmul`` (a
    large fp32 matmul's GFLOP/s on ``cores``), ``devices`` (what TensorFlow sees, GPUs included) or ``screen``
    (several thread settings timed in one process: ``fields`` holds them, built by ``tuner.screening``)."""

    task: str
    settings: Settings
    cores: tuple[int, ...]
    model: ModelRef | str = "resnet50"
    timeout_s: float = 600.0
    gpus: bool = False  # let the worker see the GPUs (hidden from every CPU measurement)
    fields: tuple[tuple[str, Any], ...] = ()  # further worker fields, validated values only (``screen``'s)

    def __post_init__(self) -> None:
        if self.task not in ("flops", "describe", "matmul", "devices", "screen"):
            raise ValueError(f"unknown worker task {self.task!r}")
        if {"task", "cores", "model"} & {name for name, _ in self.fields}:
            raise ValueError("a task's fields must not replace its task, cores or model")

    def worker_spec(self) -> dict[str, Any]:
        return {
            **self.settings.framework_calls(),
            **dict(self.fields),
            "task": self.task,
            "cores": list(self.cores),
            **as_ref(self.model).worker_fields(),
        }


class Runner(Protocol):
    def run(self, spec: TrialSpec, on_step: StepCallback | None = None) -> Measurement:
        """Measure ``spec``; raise a ``WorkerError`` subclass on failure."""
        ...

    def compute(self, spec: TaskSpec) -> dict[str, Any]:
        """Run a non-timed-trial task in a worker and return its result event."""
        ...


def _prctl() -> Any:
    """libc's ``prctl``, looked up in the parent: the child between fork and exec must not call dlopen."""
    try:
        return ctypes.CDLL(None, use_errno=True).prctl
    except (OSError, AttributeError):
        return None


def _die_with_parent(prctl: Any, parent: int) -> None:
    """In the child: ask Linux to SIGKILL it when its parent dies; exit now if the parent already has."""
    if prctl is not None:
        prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
    if os.getppid() != parent:
        os._exit(1)


def kill_group(process: subprocess.Popen[bytes]) -> None:
    """Kill the worker's whole process group and reap the worker."""
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(process.pid, signal.SIGKILL)
    process.wait()


def _tail(stream: IO[bytes]) -> str:
    stream.seek(0, os.SEEK_END)
    size = stream.tell()
    stream.seek(max(0, size - STDERR_TAIL))
    return stream.read().decode(errors="replace").strip()


class SubprocessRunner:
    """Runs ``worker.py`` with ``python`` (the target environment's interpreter)."""

    def __init__(
        self,
        python: str = sys.executable,
        parent_env: Mapping[str, str] | None = None,
        lock: Path = HOST_LOCK,
        environment: Path | None = None,
        runtime_name: str = "",
        memory_limit: int | None = None,
        note: Callable[[str], None] = lambda line: print(f"tuner: {line}", file=sys.stderr, flush=True),
    ) -> None:
        self.memory_limit = memory_limit  # bytes of address space for the worker (RLIMIT_AS); None: no limit
        self.python = python
        self.parent_env = dict(os.environ if parent_env is None else parent_env)
        self.lock = lock  # the host-wide measurement lock; tests of the runner's mechanics use their own
        # The managed environment ``python`` belongs to (``Runtime.env_dir``): its lock is held shared per trial.
        self.environment = environment
        self.runtime_name = runtime_name  # whose environment it is, for the command that rebuilds it
        self._build: tuple[list[Any], str] | None = None  # its pins and framework, as the first trial found them
        self.note = note  # how a wait for the lock is announced (once per wait)
        self.parent_pid = os.getpid()
        self._prctl = _prctl()

    def argv(self, worker_spec: dict[str, Any], channel_fd: int) -> list[str]:
        return [self.python, str(WORKER), "--channel-fd", str(channel_fd), "--spec", json.dumps(worker_spec)]

    def run(self, spec: TrialSpec, on_step: StepCallback | None = None) -> Measurement:
        if spec.settings.instances > 1:
            from tuner.group import run_group  # the group's processes; it builds on this module

            return run_group(self, spec)
        started = time.monotonic()
        result, env = self._locked(
            spec.worker_spec(), spec.settings, spec.cores, spec.policy.timeout_s, on_step, spec.device == "gpu"
        )
        timed = result.get("timed_seconds")
        warmup = result.get("warmup_seconds")
        if not isinstance(timed, list) or len(timed) != spec.policy.timed or not isinstance(warmup, list):
            raise WorkerBadOutput(f"worker result has no {spec.policy.timed} timed steps", result.get("_tail", ""))
        if not all(seconds_ok(s) for s in timed + warmup):
            raise WorkerBadOutput(
                "worker result has step times that are not numbers of seconds a step can take", result.get("_tail", "")
            )
        check_read_back(spec.settings, result)
        loop = result.get("timed_wall_seconds", 0.0)
        facts = {k: v for k, v in result.items() if k not in STEP_KEYS}
        facts["child_env"] = {k: v for k, v in env.items() if k not in ENV_ALLOWLIST}
        return Measurement(
            batch_size=spec.global_batch,
            timed_seconds=tuple(timed),
            warmup_seconds=tuple(warmup),
            facts=facts,
            wall_seconds=time.monotonic() - started,
            timed_wall_seconds=float(loop) if seconds_ok(loop, MAX_LOOP_SECONDS) else 0.0,
        )

    def compute(self, spec: TaskSpec) -> dict[str, Any]:
        result, _ = self._locked(spec.worker_spec(), spec.settings, spec.cores, spec.timeout_s, None, spec.gpus)
        result.pop("_tail", None)
        return result

    def _locked(
        self,
        worker_spec: dict[str, Any],
        settings: Settings,
        cores: tuple[int, ...],
        timeout_s: float,
        on_step: StepCallback | None,
        gpus: bool = False,
    ) -> tuple[dict[str, Any], dict[str, str]]:
        def execute(keras_home: str) -> tuple[list[dict[str, Any]], dict[str, str]]:
            result, env = self._execute(worker_spec, settings, cores, timeout_s, on_step, gpus, keras_home)
            return [result], env

        results, env = self._holding_lock(execute)
        return results[0], env

    def _holding_lock(
        self, execute: Callable[[str], tuple[list[dict[str, Any]], dict[str, str]]]
    ) -> tuple[list[dict[str, Any]], dict[str, str]]:
        """Run ``execute(keras_home)`` holding the host lock, with a private, empty Keras folder.

        Where the interpreter is a managed environment's, that environment's lock is then held shared: a build,
        which holds it alone, waits for the trial to end instead of clearing the environment under it. A
        trial that finds a build under way lets the host lock go while it waits for the build, so other
        measurements go on meanwhile. Only the tuner holding the host lock holds an environment's lock (never
        one waiting for it), so a build gets the environment between two trials."""
        while True:
            with contextlib.ExitStack() as locks:
                # One measurement at a time on this host: two tuners timing on the same cores would disturb both.
                locks.enter_context(held(self.lock, self._waiting_for_host, still=self._still_waiting))
                if self.environment is None or self._hold_environment(locks, self.environment):
                    held_from = time.time()
                    with tempfile.TemporaryDirectory(prefix="tuner-keras-") as keras_home:
                        results, env = execute(keras_home)
                    # When this process measured, by the wall clock: shows that no two measurements overlapped.
                    for result in results:
                        result["host_lock"] = {"host": socket.gethostname(), "from": held_from, "to": time.time()}
                    return results, env
            # Another tuner is building the environment: wait for it without the host lock, then start again.
            lock = env_lock(self.environment)
            self.note(f"waiting for the environment's build to finish (lock {lock})")
            with held(lock, lambda: None, shared=True, what="the environment lock"):
                pass

    def _waiting_for_host(self) -> None:
        self.note(f"waiting for another measurement on this host (lock {self.lock})")

    def _still_waiting(self, waited_s: float, got: bool) -> None:
        said = f"{int(waited_s) // 60}m{int(waited_s) % 60:02d}s"
        self.note(f"took the host lock after {said}" if got else f"still waiting for the host lock, {said} so far")

    def _hold_environment(self, locks: contextlib.ExitStack, environment: Path) -> bool:
        """Hold the environment's lock shared for the trial (False, holding nothing, while a build holds it),
        then check that its build is the one this runner started with: another tuner sharing the folder may
        have rebuilt it with other pins, or failed half-way (``EnvironmentChanged``, a fault of the host,
        never of the settings measured)."""
        lock = env_lock(environment)
        try:
            locks.enter_context(
                held(lock, lambda: None, shared=True, what="the environment lock", wait=False, missing_ok=True)
            )
        except Busy:
            return False
        manifest = read_manifest(environment)
        name = self.runtime_name or environment.name
        if manifest is None:
            raise EnvironmentChanged(
                f"environment {environment} is incomplete (another tuner's build failed or was stopped?): "
                f"run: tuner env create {name}"
            )
        # Read from a folder other users write: compared, and shown only as one sanitized line.
        build = (manifest["packages"], manifest["framework_version"])
        if self._build is None:
            self._build = build  # the build this runner's trials are measured with
        elif build != self._build:
            was, now = one_line(self._build[1], 40), one_line(build[1], 40)
            what = f"framework {now}, was {was}" if now != was else "its pinned packages changed"
            raise EnvironmentChanged(
                f"environment {environment} was rebuilt by another tuner during this run ({what}): "
                "trials of one study must not mix two builds"
            )
        return True

    def _execute(
        self,
        worker_spec: dict[str, Any],
        settings: Settings,
        cores: tuple[int, ...],
        timeout_s: float,
        on_step: StepCallback | None,
        gpus: bool = False,
        keras_home: str = "",
    ) -> tuple[dict[str, Any], dict[str, str]]:
        """Start the worker, read its channel, and return its validated result event and the environment."""
        env = settings.environ(self.parent_env, gpus, keras_home)
        read_fd, write_fd = os.pipe()
        started = time.monotonic()
        with tempfile.TemporaryFile() as log:
            try:
                process = subprocess.Popen(
                    self.argv(worker_spec, write_fd),
                    env=env,
                    stdin=subprocess.DEVNULL,
                    stdout=log,
                    stderr=log,
                    pass_fds=(write_fd,),
                    start_new_session=True,  # its own process group, so the whole group can be killed
                    preexec_fn=self._child_setup,
                )
            except (OSError, ValueError) as error:
                os.close(read_fd)
                raise WorkerNotStarted(f"cannot start worker {self.python}: {error}") from None
            finally:
                os.close(write_fd)
            watch = TimedWindow(worker_spec, cores, process.pid)
            try:
                result = self._read(process, read_fd, started + timeout_s, on_step, watch)
                exit_note = self._wait(process, result is not None, started + timeout_s)
            except subprocess.TimeoutExpired:
                kill_group(process)
                raise WorkerTimeout(f"worker ran past {timeout_s:.0f} s", _tail(log)) from None
            except WorkerError as error:
                kill_group(process)
                error.stderr_tail = error.stderr_tail or _tail(log)
                raise
            except Pruned as error:  # the timed steps so far, judged while the worker is still alive
                cut = watch.cut()
                error.disturbance = cut.to_dict() if cut is not None else None
                raise
            finally:
                kill_group(process)  # also reaps any grandchildren left in the group
                os.close(read_fd)
            result = self._check(process.returncode, result, log, cores)
            result["_tail"] = _tail(log)
            if watch.found is not None:
                result["disturbance"] = watch.found.to_dict()
        if exit_note:
            result["exit"] = exit_note
        return result, env

    def _child_setup(self) -> None:
        """In the child, before exec: die with the tool (a ``kill -9`` of the tool must not leave a worker
        measuring after the lock is released), and cap the address space so a runaway allocation fails."""
        _die_with_parent(self._prctl, self.parent_pid)
        if self.memory_limit:
            resource.setrlimit(resource.RLIMIT_AS, (self.memory_limit, self.memory_limit))

    @staticmethod
    def _wait(process: subprocess.Popen[bytes], has_result: bool, deadline: float) -> str:
        """Wait for the worker to exit. One that hangs at shutdown after its result is killed, result kept."""
        limit = max(0.1, deadline - time.monotonic())
        try:
            with interrupt.interruptible():
                process.wait(timeout=min(limit, EXIT_GRACE_S) if has_result else limit)
        except subprocess.TimeoutExpired:
            if not has_result:
                raise
            kill_group(process)
            return f"killed {EXIT_GRACE_S:.0f} s after its result: it hung at shutdown"
        return ""

    def _read(
        self,
        process: subprocess.Popen[bytes],
        fd: int,
        deadline: float,
        on_step: StepCallback | None,
        watch: TimedWindow | None = None,
    ) -> dict[str, Any] | None:
        """Read JSON lines from the channel until EOF; return the ``result`` event."""
        buffer = b""
        result = None
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise subprocess.TimeoutExpired(process.args, 0)
            with interrupt.interruptible():  # Ctrl-C here: the caller kills the group and fails the trial
                ready, _, _ = select.select([fd], [], [], min(remaining, 1.0))
            if not ready:
                continue
            chunk = os.read(fd, 65536)
            if not chunk:
                return result
            buffer += chunk
            *lines, buffer = buffer.split(b"\n")
            for line in lines:
                event = _decode(line)
                if watch is not None:
                    watch.see(event)
                if event.get("event") == "step" and on_step is not None:
                    on_step(*_step(event))
                elif event.get("event") == "result":
                    return event  # the last message; do not wait for EOF from a worker hanging at exit

    @staticmethod
    def _check(
        returncode: int, result: dict[str, Any] | None, log: IO[bytes], cores: tuple[int, ...]
    ) -> dict[str, Any]:
        """Turn the exit status and the result into typed errors, or the result."""
        if returncode < 0 and result is None:
            name = signal.Signals(-returncode).name if -returncode in signal.valid_signals() else str(-returncode)
            raise WorkerCrashed(f"worker killed by {name}", _tail(log))
        if returncode > 0:
            tail = _tail(log)
            if any(sign in tail for sign in OOM_SIGNS):
                raise WorkerOutOfMemory(f"worker ran out of memory (exit status {returncode})", tail)
            raise WorkerExited(f"worker exited with status {returncode}", tail)
        if result is None:
            raise WorkerBadOutput("worker exited without a result on its channel", _tail(log))
        if result.get("cpus") != sorted(cores):
            raise WorkerBadOutput(
                f"worker ran on CPUs {result.get('cpus')}, not the requested {sorted(cores)}", _tail(log)
            )
        return result


class TimedWindow:
    """Follows a measuring worker's events and measures the disturbance of its timed loop: opened at the
    last warm-up step (or the trace, without warm-up), closed at the last timed step, while the worker is
    certainly alive. Tasks that time no steps are not watched."""

    def __init__(self, worker_spec: dict[str, Any], cores: tuple[int, ...], pid: int) -> None:
        self.pids = (pid,)
        self.warmup = int(worker_spec.get("warmup", 0) or 0)
        self.timed = int(worker_spec.get("timed", 0) or 0)
        self.monitor = Monitor(cores) if worker_spec.get("task", "measure") == "measure" and self.timed else None
        self.found: Disturbance | None = None  # set when the window closes

    def see(self, event: dict[str, Any]) -> None:
        if self.monitor is None:
            return
        kind, phase, index = event.get("event"), event.get("phase"), event.get("index")
        if (kind == "traced" and self.warmup == 0) or (phase == "warmup" and index == self.warmup - 1):
            self.monitor.open(self.pids)
        elif phase == "timed" and index == self.timed - 1:
            self.found = self.monitor.close(self.pids)

    def cut(self) -> Disturbance | None:
        """The window so far, where it is open and not yet closed (a trial the pruner stopped)."""
        if self.monitor is None or self.monitor.start is None or self.found is not None:
            return None
        return self.monitor.close(self.pids)


def check_read_back(settings: Settings, result: dict[str, Any]) -> None:
    """The allocator and precision the worker read back must be the ones asked for: a preload the loader
    ignored would otherwise be measured as glibc and stored as TCMalloc. Older workers report neither."""
    mapped = result.get("allocator")
    if mapped is not None and mapped != settings.allocator:
        raise WorkerBadOutput(
            f"asked for allocator {settings.allocator}, the worker mapped {mapped}", result.get("_tail", "")
        )
    dtype = result.get("compute_dtype")
    wanted = {"fp32": "float32", "bf16": "bfloat16"}[settings.precision]
    if dtype is not None and dtype != wanted:
        raise WorkerBadOutput(
            f"asked for precision {settings.precision}, the model computed in {dtype}", result.get("_tail", "")
        )


def _step(event: dict[str, Any]) -> tuple[str, int, float]:
    phase, index, seconds = event.get("phase"), event.get("index"), event.get("seconds")
    if phase not in ("warmup", "timed") or not isinstance(index, int) or not seconds_ok(seconds):
        raise WorkerBadOutput(f"worker sent a malformed step event: {json.dumps(event)[:120]}")
    return str(phase), index, float(seconds)  # type: ignore[arg-type]  # checked by seconds_ok


def _decode(line: bytes) -> dict[str, Any]:
    try:
        event = json.loads(line)
    except (json.JSONDecodeError, UnicodeDecodeError):
        raise WorkerBadOutput(f"worker channel carried non-JSON: {line[:80]!r}") from None
    if not isinstance(event, dict) or "event" not in event:
        raise WorkerBadOutput(f"worker channel carried an unknown message: {line[:80]!r}")
    return event


def runtime_runner(runtime: Runtime, note: Callable[[str], None] | None = None) -> SubprocessRunner:
    """A runner for the runtime's interpreter, holding its managed environment's lock (if any) per trial;
    ``note`` says what it waits for (default: a ``tuner:`` line on stderr)."""
    runner = SubprocessRunner(python=runtime.python(), environment=runtime.env_dir, runtime_name=runtime.name)
    if note is not None:
        runner.note = note
    return runner
