"""Tests for tuner.runner: the subprocess discipline, checked with a fake worker instead of TensorFlow.

``FakeRunner`` keeps the real runner and only swaps the worker script for ``children/fake_worker.py``, which
speaks the same channel protocol and then crashes, exits, hangs or lies on request.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from tuner import lockfile
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
from tuner.lockfile import LockError, open_lock
from tuner.policy import MeasurementPolicy
from tuner.runner import WORKER, SubprocessRunner, TrialSpec
from tuner.settings import ENV_ALLOWLIST, ENV_FIXED, Settings
from tuner.workload import Workload

FAKE_WORKER = Path(__file__).resolve().parent / "children" / "fake_worker.py"
CORES = tuple(sorted(os.sched_getaffinity(0)))[:1]
POLICY = MeasurementPolicy("test", warmup=2, timed=3, timeout_s=10.0)
HANG_POLICY = MeasurementPolicy("hang", warmup=2, timed=3, timeout_s=3.0)
WARMUP = [0.01, 0.02]  # what fake_worker.py reports for POLICY: (index + 1) / 100
TIMED = [0.1, 0.2, 0.3]  # (index + 1) / 10
MINIMAL_ENV = {"PATH": os.environ.get("PATH", "/usr/bin:/bin")}


PRIVATE_LOCK = Path(tempfile.gettempdir()) / f"tuner-test-lock-{os.getpid()}"


class FakeRunner(SubprocessRunner):
    """The real runner with the worker script swapped for the fake one."""

    def __init__(
        self,
        behaviour: str,
        pids: Path | None = None,
        parent_env: dict[str, str] | None = None,
        memory_limit: int | None = None,
        stamps: Path | None = None,
    ) -> None:
        # A private lock: these tests time the runner's mechanics, not a measurement, so a tuner measuring on
        # this host meanwhile must not make them wait.
        super().__init__(
            python=sys.executable,
            parent_env=MINIMAL_ENV if parent_env is None else parent_env,
            lock=PRIVATE_LOCK,
            memory_limit=memory_limit,
        )
        self.behaviour = behaviour
        self.pids = pids
        self.stamps = stamps

    def argv(self, worker_spec: dict[str, Any], channel_fd: int) -> list[str]:
        python, _worker, *rest = super().argv(worker_spec, channel_fd)
        extra = ["--pids", str(self.pids)] if self.pids else []
        extra += ["--stamps", str(self.stamps)] if self.stamps else []
        return [python, str(FAKE_WORKER), *rest, "--behaviour", self.behaviour, *extra]


def make_spec(policy: MeasurementPolicy = POLICY, settings: Settings | None = None) -> TrialSpec:
    return TrialSpec(settings or Settings(intra_op=1, inter_op=1), Workload("tiny", "infer", 8), CORES, policy)


def is_gone(pid: int, within: float = 3.0) -> bool:
    """True once ``pid`` no longer exists or is a zombie (killed, waiting for its parent to reap it)."""
    deadline = time.monotonic() + within
    while True:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return True
        try:
            state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
        except (OSError, IndexError):
            return True
        if state in ("Z", "X"):
            return True
        if time.monotonic() > deadline:
            return False
        time.sleep(0.02)


def read_pids(path: Path) -> dict[str, int]:
    pids: dict[str, int] = json.loads(path.read_text())
    return pids


def open_fds() -> set[str]:
    return set(os.listdir("/proc/self/fd"))


def test_success_returns_raw_steps_and_reports_every_step_in_order() -> None:
    steps: list[tuple[str, int, float]] = []
    measurement = FakeRunner("ok").run(make_spec(), lambda *step: steps.append(step))
    # The record keeps the raw step times exactly as the child sent them, warm-up apart from timed.
    assert measurement.timed_seconds == tuple(TIMED)
    assert measurement.warmup_seconds == tuple(WARMUP)
    assert measurement.batch_size == 8
    # on_step saw every warm-up step, then every timed step, in the order the child ran them.
    expected = [("warmup", i, s) for i, s in enumerate(WARMUP)] + [("timed", i, s) for i, s in enumerate(TIMED)]
    assert steps == expected
    # The facts are the child's report, less the step lists: it ran on exactly the requested cores.
    assert measurement.facts["cpus"] == list(CORES)
    assert "timed_seconds" not in measurement.facts and "event" not in measurement.facts
    # The wall time covers the whole run, so it is at least positive.
    assert measurement.wall_seconds > 0


def test_child_environment_is_allowlist_fixed_and_knobs_only() -> None:
    parent = {**MINIMAL_ENV, "HOME": "/tmp/fake-home", "OMP_NUM_THREADS": "64", "KMP_BLOCKTIME": "200"}
    settings = Settings(intra_op=1, inter_op=1, env_knobs=(("KMP_AFFINITY", "compact"),))
    measurement = FakeRunner("ok", parent_env=parent).run(make_spec(settings=settings))
    seen = measurement.facts["environ"]
    # The parent's stray threading variables must not leak: they would silently change what is measured.
    assert "OMP_NUM_THREADS" not in seen
    assert "KMP_BLOCKTIME" not in seen
    # Allowlisted variables pass through unchanged; the fixed ones and the knob's own variable are set.
    assert seen["HOME"] == "/tmp/fake-home"
    assert {k: seen.get(k) for k in ENV_FIXED} == ENV_FIXED
    assert seen["KMP_AFFINITY"] == "compact"
    # Nothing else reaches the child (Python itself may only add LC_CTYPE, which is allowlisted), but the
    # run's own private Keras folder: fresh for this run, so no shared keras.json can change the model.
    assert set(seen) <= set(ENV_ALLOWLIST) | set(ENV_FIXED) | {"KMP_AFFINITY", "KERAS_HOME"}
    assert os.path.basename(seen["KERAS_HOME"]).startswith("tuner-keras-") and not os.path.exists(seen["KERAS_HOME"])
    # The recorded child_env is the fixed and knob variables, the ones that can change a measurement.
    child_env = dict(measurement.facts["child_env"])
    assert child_env.pop("KERAS_HOME") == seen["KERAS_HOME"]
    assert child_env == {**ENV_FIXED, "KMP_AFFINITY": "compact"}


@pytest.mark.parametrize(("behaviour", "signal_name"), [("abort", "SIGABRT"), ("segv", "SIGSEGV")])
def test_child_killed_by_signal_is_crashed(behaviour: str, signal_name: str) -> None:
    with pytest.raises(WorkerCrashed) as caught:
        FakeRunner(behaviour).run(make_spec())
    # The message names the signal, so a segfault is told apart from an abort without reading logs.
    assert signal_name in str(caught.value)
    # The tail carries what the child printed to stderr just before it died.
    assert f"fake worker: {behaviour}" in caught.value.stderr_tail
    # A crash is a failed trial with its own reason, not a generic error.
    assert caught.value.reason == "crashed"


def test_nonzero_exit_is_exited_with_status_and_stderr() -> None:
    with pytest.raises(WorkerExited) as caught:
        FakeRunner("exit3").run(make_spec())
    # The exit status is in the message.
    assert "status 3" in str(caught.value)
    # And the child's last words are kept for the report.
    assert "fake worker: exit3" in caught.value.stderr_tail


def test_hang_times_out_and_kills_the_whole_group(tmp_path: Path) -> None:
    pid_file = tmp_path / "pids.json"
    steps: list[tuple[str, int, float]] = []
    started = time.monotonic()
    with pytest.raises(WorkerTimeout) as caught:
        FakeRunner("hang", pids=pid_file).run(make_spec(HANG_POLICY), lambda *step: steps.append(step))
    elapsed = time.monotonic() - started
    # The runner waited for the policy's timeout, not for the child's 1000 s sleep, and not much longer.
    assert HANG_POLICY.timeout_s - 0.5 <= elapsed < HANG_POLICY.timeout_s + 3
    # The steps sent before the hang were still delivered, up to the first timed step.
    assert steps[-1][:2] == ("timed", 0)
    # The message gives the timeout and the tail what the child printed before hanging.
    assert "3 s" in str(caught.value)
    assert "fake worker: hanging" in caught.value.stderr_tail
    pids = read_pids(pid_file)
    # The child was killed and reaped, and so was its grandchild: the whole process group is gone.
    assert is_gone(pids["child"])
    assert is_gone(pids["grandchild"])


@pytest.mark.parametrize(
    ("behaviour", "words"),
    [
        ("garbage", "non-JSON"),
        ("no-event", "unknown message"),
        ("no-result", "without a result"),
        ("short", "3 timed steps"),
        ("wrong-cpus", "not the requested"),
    ],
)
def test_protocol_violations_are_bad_output(behaviour: str, words: str) -> None:
    started = time.monotonic()
    with pytest.raises(WorkerBadOutput) as caught:
        FakeRunner(behaviour).run(make_spec())
    # Each violation is typed as bad output, with a message that says which rule was broken.
    assert words in str(caught.value)
    # Garbage and unknown messages are caught while the child still sleeps: the runner kills it at once.
    assert time.monotonic() - started < POLICY.timeout_s / 2


def test_step_event_missing_fields_is_bad_output() -> None:
    # A step without phase/index/seconds breaks the protocol like any other malformed line.
    with pytest.raises(WorkerBadOutput):
        FakeRunner("bad-step").run(make_spec(), lambda *step: None)


def test_infinite_step_times_are_bad_output() -> None:
    # JSON 'Infinity' is not a step time; the runner should refuse it as it refuses zero or negative ones.
    with pytest.raises(WorkerBadOutput):
        FakeRunner("infinite").run(make_spec())


def test_pruned_from_on_step_propagates_and_kills_the_group(tmp_path: Path) -> None:
    pid_file = tmp_path / "pids.json"

    def prune(phase: str, index: int, seconds: float) -> None:
        if phase == "timed":
            raise Pruned("pruned at the first timed step")

    started = time.monotonic()
    with pytest.raises(Pruned):
        FakeRunner("hang", pids=pid_file).run(make_spec(), prune)
    # The runner stops as soon as the pruner says so, not at the timeout.
    assert time.monotonic() - started < POLICY.timeout_s / 2
    pids = read_pids(pid_file)
    # The pruned child and its grandchild are both gone.
    assert is_gone(pids["child"])
    assert is_gone(pids["grandchild"])


def test_keyboard_interrupt_from_on_step_propagates_and_leaves_no_process(tmp_path: Path) -> None:
    pid_file = tmp_path / "pids.json"

    def interrupt(phase: str, index: int, seconds: float) -> None:
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        FakeRunner("hang", pids=pid_file).run(make_spec(), interrupt)
    pids = read_pids(pid_file)
    # Ctrl-C during a trial leaves neither the worker nor anything it started.
    assert is_gone(pids["child"])
    assert is_gone(pids["grandchild"])


def test_missing_interpreter_is_not_started_in_one_line() -> None:
    before = open_fds()
    with pytest.raises(WorkerNotStarted) as caught:
        SubprocessRunner(python="/nonexistent/python", parent_env=MINIMAL_ENV, lock=PRIVATE_LOCK).run(make_spec())
    # One line that names the interpreter, fit for the CLI's one-line error.
    assert "/nonexistent/python" in str(caught.value)
    assert "\n" not in str(caught.value)
    # Both ends of the channel pipe were closed on the way out.
    assert open_fds() == before


@pytest.mark.parametrize("behaviour", ["ok", "exit3", "garbage", "wrong-cpus"])
def test_no_file_descriptor_leaks(behaviour: str) -> None:
    before = open_fds()
    with contextlib.suppress(WorkerError):
        FakeRunner(behaviour).run(make_spec())
    # Every run, good or bad, closes the channel and the log it opened.
    assert open_fds() == before


def test_argv_is_explicit_and_spec_carries_validated_values_only() -> None:
    settings = Settings(intra_op=2, inter_op=1, data_format="NCHW", env_knobs=(("KMP_BLOCKTIME", 0),))
    spec = TrialSpec(settings, Workload("tiny", "train", 16), CORES, POLICY)
    argv = SubprocessRunner(python="/opt/env/bin/python", parent_env=MINIMAL_ENV).argv(spec.worker_spec(), 7)
    # The interpreter given, then the worker script by absolute path: no shell in between.
    assert argv[0] == "/opt/env/bin/python"
    assert argv[1] == str(WORKER) and WORKER.is_absolute() and WORKER.name == "worker.py"
    # The channel and the spec are passed as separate arguments, all of them strings.
    assert argv[2:5] == ["--channel-fd", "7", "--spec"]
    assert len(argv) == 6 and all(isinstance(arg, str) for arg in argv)
    # The spec holds exactly the validated framework values and the trial's shape; env knobs go elsewhere.
    assert json.loads(argv[5]) == {
        "task": "measure",
        "device": "cpu",
        "replicas": 1,
        "intra_op": 2,
        "inter_op": 1,
        "data_format": "channels_first",
        "precision": "fp32",
        "cores": list(CORES),
        "model": "tiny",
        "model_kind": "app",
        "model_path": None,
        "input_shape": None,
        "mode": "train",
        "batch_size": 16,
        "warmup": 2,
        "timed": 3,
        "probe": False,
    }


def test_popen_gets_a_list_no_shell_own_session_and_built_env(monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[tuple[Any, dict[str, Any]]] = []

    def fake_popen(args: Any, **kwargs: Any) -> Any:
        calls.append((args, kwargs))
        raise OSError("not started")

    monkeypatch.setattr(subprocess, "Popen", fake_popen)
    settings = Settings(env_knobs=(("onednn", False),))
    parent = {**MINIMAL_ENV, "OMP_NUM_THREADS": "9"}
    with pytest.raises(WorkerNotStarted):
        SubprocessRunner(python=sys.executable, parent_env=parent, lock=PRIVATE_LOCK).run(make_spec(settings=settings))
    (args, kwargs) = calls[0]
    # An explicit argv list and never a shell, so no value is ever parsed by sh.
    assert isinstance(args, list) and args[1] == str(WORKER)
    assert not kwargs.get("shell", False)
    # Its own session (so its own process group to kill), no stdin, and the channel fd passed through.
    assert kwargs["start_new_session"] is True
    assert kwargs["stdin"] is subprocess.DEVNULL
    assert kwargs["pass_fds"] == (int(args[3]),)
    # The environment is the one the settings built, not the parent's, with the run's private Keras folder.
    assert kwargs["env"] == settings.environ(parent, keras_home=kwargs["env"]["KERAS_HOME"])


def test_worker_hanging_after_its_result_is_killed_and_the_result_kept(monkeypatch: pytest.MonkeyPatch) -> None:
    import tuner.runner as runner_module

    monkeypatch.setattr(runner_module, "EXIT_GRACE_S", 1.0)
    started = time.monotonic()
    measurement = FakeRunner("hang-at-exit").run(make_spec())
    # The result arrived complete, so the measurement stands; the hang costs the grace period, not the
    # whole timeout, and is recorded on the measurement.
    assert len(measurement.timed_seconds) == POLICY.timed
    assert "hung at shutdown" in measurement.facts["exit"]
    assert time.monotonic() - started < POLICY.timeout_s


def test_a_worker_out_of_memory_is_its_own_failure_and_leaves_no_process(tmp_path: Path) -> None:
    pids = tmp_path / "pids"
    runner = FakeRunner("oom", pids=pids, memory_limit=1024 * 2**20)
    with pytest.raises(WorkerOutOfMemory) as caught:
        runner.run(make_spec())
    # The allocation failed under the 1 GiB limit: reported as out-of-memory with the child's own words.
    assert caught.value.reason == "out-of-memory" and "MemoryError" in caught.value.stderr_tail
    # The worker and the grandchild it started are gone.
    assert all(is_gone(pid) for pid in json.loads(pids.read_text()).values())


class OneBadTrial(FakeRunner):
    """Behaves on every run but the second, which misbehaves as ``bad``."""

    def __init__(self, bad: str, pids: Path) -> None:
        super().__init__("ok", memory_limit=1024 * 2**20)
        self.bad, self.bad_pids, self.count = bad, pids, 0

    def argv(self, worker_spec: dict[str, Any], channel_fd: int) -> list[str]:
        self.count += 1
        self.behaviour, self.pids = (self.bad, self.bad_pids) if self.count == 2 else ("ok", None)
        return super().argv(worker_spec, channel_fd)


@pytest.mark.parametrize(
    ("bad", "reason"),
    [
        ("segv", "crashed"),
        ("abort", "crashed"),
        ("hang", "timeout"),
        ("oom", "out-of-memory"),
        ("garbage", "bad-output"),
    ],
)
def test_a_failing_trial_is_stored_with_its_reason_and_the_study_goes_on(
    bad: str, reason: str, tmp_path: Path, storage: Any
) -> None:
    from optuna.trial import TrialState

    from tests.helpers import make_config
    from tuner.study import StudyRun

    pids = tmp_path / "pids"
    quick = MeasurementPolicy("quick", warmup=1, timed=3, timeout_s=5.0)
    run = StudyRun(storage, make_config(cores=1, trials=3, policy=quick), OneBadTrial(bad, pids))
    run.search(None)
    trials = run.study.get_trials()
    failed = [t for t in trials if t.state == TrialState.FAIL]
    # The second run failed: one FAIL trial with the typed reason (never a score), and the study went on to
    # its three complete trials.
    assert [t.user_attrs["fail_reason"] for t in failed] == [reason]
    assert len([t for t in trials if t.state == TrialState.COMPLETE]) == 3
    # The failed worker and the grandchild it started are gone.
    assert all(is_gone(pid) for pid in json.loads(pids.read_text()).values())


# -- the host lock and the worker's life -----------------------------------------------------------------


def test_lock_path_planted_as_a_link_or_a_fifo_is_refused_at_once(tmp_path: Path) -> None:
    victim = tmp_path / "victim"
    link = tmp_path / "lock-link"
    link.symlink_to(victim)
    # A symbolic link in the lock's place: refused with one line, and its target is never created. It is a
    # fault of the host, not of the settings measured: never a worker failure that would blacklist them.
    with pytest.raises(LockError, match="cannot use the measurement lock") as refused:
        open_lock(link)
    assert not isinstance(refused.value, WorkerError)
    assert not victim.exists()
    fifo = tmp_path / "lock-fifo"
    os.mkfifo(fifo)
    started = time.monotonic()
    # A FIFO in its place: refused at once instead of blocking for ever on open.
    with pytest.raises(LockError, match="not a regular file"):
        open_lock(fifo)
    assert time.monotonic() - started < 2.0


def test_a_lock_made_by_one_user_serves_every_user(tmp_path: Path) -> None:
    import fcntl

    lock = tmp_path / "tuner-measure.lock"
    descriptor = open_lock(lock)
    try:
        # Made readable by everyone, and opened read-only (flock needs no more): another user, who could not
        # open it for appending, opens and locks the same file.
        assert os.stat(lock).st_mode & 0o777 == 0o644
        assert fcntl.fcntl(descriptor, fcntl.F_GETFL) & os.O_ACCMODE == os.O_RDONLY
        fcntl.flock(descriptor, fcntl.LOCK_EX | fcntl.LOCK_NB)
    finally:
        os.close(descriptor)


def hold_lock(lock: Path) -> tuple[subprocess.Popen[str], Callable[[], None]]:
    """Another process holding ``lock``, returned once it holds it, with what releases it. It holds it until
    released, not for a fixed time, so a slow or busy machine cannot end the wait before the test sees it;
    after 30 s it lets go anyway, so that a test whose release never comes fails rather than hangs."""
    holder = subprocess.Popen(
        [sys.executable, "-c", "import fcntl, select, sys; f = open(sys.argv[1], 'a'); fcntl.flock(f, fcntl.LOCK_EX); "
         "print('held', flush=True); select.select([sys.stdin], [], [], 30)", str(lock)],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
    )  # fmt: skip
    assert holder.stdin is not None and holder.stdout is not None and holder.stdout.readline().strip() == "held"
    holder.stdout.close()
    return holder, holder.stdin.close  # its end of file wakes the holder, which exits and lets go


def test_waiting_for_the_lock_is_announced_once(tmp_path: Path) -> None:
    lock = tmp_path / "lock"
    holder, release = hold_lock(lock)
    notes: list[str] = []

    def note(line: str) -> None:
        notes.append(line)
        threading.Timer(0.5, release).start()  # the other measurement ends a while after this one said it waits

    runner = FakeRunner("ok")
    runner.lock, runner.note = lock, note
    try:
        measurement = runner.run(make_spec())
    finally:
        release()
        holder.wait()
    # The runner waited for the other measurement, said so once, then measured.
    assert notes == [f"waiting for another measurement on this host (lock {lock})"]
    assert measurement.timed_seconds == tuple(TIMED)


def test_a_long_wait_for_the_lock_says_so_every_while_and_when_it_ends(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(lockfile, "STILL_S", 0.3)  # every 30 s in use
    lock = tmp_path / "lock"
    holder, release = hold_lock(lock)
    notes: list[str] = []

    def note(line: str) -> None:
        notes.append(line)
        if sum(n.startswith("still waiting") for n in notes) == 2:
            release()  # the other measurement ends after two reminders

    runner = FakeRunner("ok")
    runner.lock, runner.note = lock, note
    try:
        runner.run(make_spec())
    finally:
        release()
        holder.wait()
    # Announced once, then "still waiting" lines while it waits (never silent for long), then when it got it.
    assert notes[0].startswith("waiting for another measurement on this host")
    assert len(notes) >= 4 and all(n.startswith("still waiting for the host lock, 0m0") for n in notes[1:-1])
    assert notes[-1].startswith("took the host lock after 0m0")


def write_manifest(environment: Path, framework: str) -> None:
    """A finished build's manifest, as `tuner env create` writes it last."""
    (environment / "tuner-env.json").write_text(json.dumps({
        "packages": [f"intel-tensorflow=={framework}"], "framework_version": framework, "size_bytes": 1,
        "seconds": 1.0, "created": "2026-12-01T12:00:00+00:00",
    }))  # fmt: skip


def managed_environment(folder: Path) -> Path:
    """A managed environment's folder with its finished build's manifest (the interpreter is not used)."""
    environment = folder / "intel-tensorflow"
    environment.mkdir()
    write_manifest(environment, "2.14.0")
    return environment


def test_a_trial_holds_its_environment_shared_and_waits_for_a_build_without_the_host_lock(tmp_path: Path) -> None:
    import fcntl

    environment = managed_environment(tmp_path)
    env_lock = tmp_path / ".intel-tensorflow.lock"
    host_lock = tmp_path / "host.lock"
    builder = subprocess.Popen(
        [sys.executable, "-c", "import fcntl, sys; f = open(sys.argv[1], 'a'); fcntl.flock(f, fcntl.LOCK_EX); "
         "print('held', flush=True); sys.stdin.readline()", str(env_lock)],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
    )  # fmt: skip
    assert builder.stdin is not None and builder.stdout is not None and builder.stdout.readline().strip() == "held"
    release = builder.stdin

    def free(path: Path) -> bool:
        """Whether a process could take the lock alone now (as `env create` does for a build)."""
        descriptor = open_lock(path)
        try:
            fcntl.flock(descriptor, fcntl.LOCK_EX | fcntl.LOCK_NB)
            return True
        except BlockingIOError:
            return False
        finally:
            os.close(descriptor)

    seen: list[bool] = []

    class Watched(FakeRunner):
        def _execute(self, *args: Any, **kwargs: Any) -> tuple[dict[str, Any], dict[str, str]]:
            seen.append(free(env_lock))
            return super()._execute(*args, **kwargs)

    notes: list[str] = []
    host_free_while_waiting: list[bool] = []

    def note(line: str) -> None:
        notes.append(line)
        host_free_while_waiting.append(free(host_lock))
        release.write("done\n")  # the build ends once the trial has said it waits for it
        release.flush()

    runner = Watched("ok")
    runner.lock, runner.environment, runner.note = host_lock, environment, note
    measurement = runner.run(make_spec())
    builder.wait()
    # The trial did not start from an environment being built: it waited for the build, said so once, then
    # measured, holding the environment's lock shared so that no build could start meanwhile.
    assert notes == [f"waiting for the environment's build to finish (lock {env_lock})"]
    assert measurement.timed_seconds == tuple(TIMED)
    assert seen == [False]
    # While it waited for the build it held no host lock: other tuners' measurements went on meanwhile.
    assert host_free_while_waiting == [True]
    # After the trial both are free again.
    assert free(env_lock) and free(host_lock)


def test_an_environment_rebuilt_or_half_built_under_a_run_stops_it_as_a_fault_of_the_host(tmp_path: Path) -> None:
    environment = managed_environment(tmp_path)
    runner = FakeRunner("ok")
    runner.environment = environment
    assert runner.run(make_spec()).timed_seconds == tuple(TIMED)
    # Another tuner sharing the folder rebuilt it with other pins: the next trial is refused rather than
    # measured on another build, and not as a worker failure (which would mark the settings as failing).
    write_manifest(environment, "2.15.0")
    rebuilt_text = r"was rebuilt by another tuner during this run \(framework 2.15.0, was 2.14.0\)"
    with pytest.raises(EnvironmentChanged, match=rebuilt_text) as rebuilt:
        runner.run(make_spec())
    assert not isinstance(rebuilt.value, WorkerError)
    # A build that failed half-way (venv --clear, then pip failed) left no manifest: refused, naming the fix,
    # from the first trial of a run as from a later one.
    (environment / "tuner-env.json").unlink()
    fresh = FakeRunner("ok")
    fresh.environment = environment
    for each in (runner, fresh):
        with pytest.raises(EnvironmentChanged, match=r"is incomplete .* run: tuner env create intel-tensorflow"):
            each.run(make_spec())


def test_an_environment_lock_that_cannot_be_made_does_not_fail_the_trial(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import tuner.runner as runner_module

    runner = FakeRunner("ok")
    runner.environment = managed_environment(tmp_path)
    # Environments shared read-only, made before they had locks: the lock cannot be created (here, its folder
    # is missing), and the trial still measures (no user who cannot create it can rebuild them either).
    monkeypatch.setattr(runner_module, "env_lock", lambda environment: tmp_path / "not-here" / ".lock")
    assert runner.run(make_spec()).timed_seconds == tuple(TIMED)
    # A lock that exists but is unsafe (a link planted in its place) is still refused in one line.
    planted = tmp_path / ".planted.lock"
    planted.symlink_to(tmp_path / "victim")
    monkeypatch.setattr(runner_module, "env_lock", lambda environment: planted)
    with pytest.raises(LockError, match="cannot use the environment lock"):
        runner.run(make_spec())
    assert not (tmp_path / "victim").exists()


def test_worker_dies_when_the_tool_is_killed_outright(tmp_path: Path) -> None:
    pids = tmp_path / "pids.json"
    script = tmp_path / "tool.py"
    script.write_text(
        "import sys\n"
        f"sys.path.insert(0, {str(Path(__file__).resolve().parent.parent)!r})\n"
        "from tests.test_runner import FakeRunner, make_spec\n"
        f"FakeRunner('hang', pids=__import__('pathlib').Path({str(pids)!r})).run(make_spec())\n"
    )
    tool = subprocess.Popen([sys.executable, str(script)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 60
    while not pids.exists() and time.monotonic() < deadline:
        time.sleep(0.05)
    worker = json.loads(pids.read_text())["child"]
    tool.send_signal(signal.SIGKILL)
    tool.wait()
    # kill -9 of the tool leaves no worker measuring on, unlocked, beside the next run.
    assert is_gone(worker, within=5.0)
