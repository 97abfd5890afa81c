"""Runtimes as data: declarations, refusing knobs a runtime ignores, and where a runtime cannot install."""

from __future__ import annotations

import dataclasses
import json
import os
import re
import sys
from pathlib import Path

import pytest

from tuner.errors import SearchSpaceError, UsageError
from tuner.runtime import OPENMP_KNOBS, check_knobs, load, names
from tuner.space import load as load_space


def test_every_declared_runtime_loads_with_its_space() -> None:
    # The three runtimes of the reference table are declared as files, each with a loadable search space.
    assert {"tensorflow", "tensorflow-eigen", "intel-tensorflow"} <= set(names())
    for name in names():
        runtime = load(name)
        space = load_space(runtime.space, 4)
        # A runtime's own space never varies a knob the runtime ignores.
        assert runtime.inert(space.distributions(4)) == []


def test_stock_tensorflow_declares_no_openmp_knob() -> None:
    # Stock TensorFlow runs oneDNN on its Eigen pool: the OpenMP variables are not honoured (DESIGN.md).
    assert not set(OPENMP_KNOBS) & set(load("tensorflow").honours)
    assert set(OPENMP_KNOBS) <= set(load("intel-tensorflow").honours)


def test_undeclared_knob_is_refused_in_one_line_but_openmp_knobs_wait_for_the_probe() -> None:
    space = load_space("intel-tensorflow", 2)
    # OpenMP knobs on stock TensorFlow are not refused here: the probe reads back whether OpenMP runs, and
    # the study takes them out if it does not (tests/test_capability.py).
    assert check_knobs(load("tensorflow"), space.distributions(2), allowed=[]) == []
    narrow_runtime = dataclasses.replace(load("tensorflow"), honours=("intra_op", "inter_op", "OMP_NUM_THREADS"))
    with pytest.raises(SearchSpaceError) as caught:
        check_knobs(narrow_runtime, space.distributions(2), allowed=[])
    message = str(caught.value)
    # A knob the runtime does not declare at all is refused: one line naming the runtime, the knob, the override.
    assert "\n" not in message
    assert "runtime tensorflow ignores knob data_format" in message and "--allow-inert data_format" in message


def test_allowing_inert_knobs_returns_them_for_the_record() -> None:
    space = load_space("intel-tensorflow", 2)
    inert = check_knobs(load("tensorflow"), space.distributions(2), allowed=list(OPENMP_KNOBS))
    # With an explicit override the search may go on, and the knobs come back to be recorded as inert.
    assert sorted(inert) == sorted(OPENMP_KNOBS)


def test_eigen_runtime_fixes_onednn_off_and_nhwc() -> None:
    space = load_space(load("tensorflow-eigen").space, 2)
    dists = space.distributions(2)
    # The table's 'no optimisation' rows: oneDNN off in every trial and baseline, NHWC only.
    assert dists["onednn"].single() and dists["data_format"].single()
    assert all(params["onednn"] is False for params in space.baselines(2).values())


def test_installable_says_exactly_why_not() -> None:
    runtime = load("intel-tensorflow")
    # intel-tensorflow 2.14 has wheels for CPython 3.9 to 3.11 on x86-64 only: other cases say so and what works.
    assert runtime.installable("3.11", "x86_64") is None
    assert "CPython 3.9, 3.10, 3.11 only" in (runtime.installable("3.12", "x86_64") or "")
    assert "x86_64 Linux only" in (runtime.installable("3.11", "aarch64") or "")
    # Both wrong: the machine is named first, since no other interpreter would mend it.
    assert "x86_64 Linux only" in (runtime.installable("3.12", "aarch64") or "")


def test_unknown_runtime_is_one_line() -> None:
    with pytest.raises(UsageError, match="unknown runtime 'pytorch'; known: "):
        load("pytorch")


def test_environment_must_be_a_plain_folder_name(tmp_path: object, monkeypatch: pytest.MonkeyPatch) -> None:
    from pathlib import Path

    import tuner.runtime as runtime_module

    folder = Path(str(tmp_path))
    (folder / "evil.toml").write_text('environment = "../../etc"\nspace = "tensorflow"\n')
    monkeypatch.setattr(runtime_module, "RUNTIMES_DIR", folder)
    # `env create` clears the environment's folder, so a path that leaves .envs/ is refused at load.
    with pytest.raises(UsageError, match="must be a plain folder name"):
        load("evil")


def test_half_built_environment_is_not_used(tmp_path: object, monkeypatch: pytest.MonkeyPatch) -> None:
    from pathlib import Path

    import tuner.runtime as runtime_module

    envs = Path(str(tmp_path))
    (envs / "intel-tensorflow" / "bin").mkdir(parents=True)
    (envs / "intel-tensorflow" / "bin" / "python").write_text("")
    monkeypatch.setattr(runtime_module, "ENVS_DIR", envs)
    monkeypatch.delenv("TUNER_ENVS", raising=False)  # CI keeps its environments elsewhere
    monkeypatch.setattr("platform.machine", lambda: "x86_64")  # the environment's machine, wherever this runs
    # An interpreter without the manifest that `env create` writes last is an interrupted build.
    with pytest.raises(UsageError, match="environment is incomplete; run: tuner env create intel-tensorflow"):
        load("intel-tensorflow").python()


def test_tuner_envs_moves_managed_environments(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import tuner.runtime as runtime_module

    monkeypatch.setattr(runtime_module, "ENVS_DIR", tmp_path / "default")
    monkeypatch.delenv("TUNER_ENVS", raising=False)
    # Unset (or empty), environments stay in the default folder (.envs/ of the checkout).
    assert load("intel-tensorflow").env_dir == tmp_path / "default" / "intel-tensorflow"
    monkeypatch.setenv("TUNER_ENVS", "")
    assert load("intel-tensorflow").env_dir == tmp_path / "default" / "intel-tensorflow"
    # Set, every managed environment lives under it; a relative path is taken from the working directory
    # of the command (made absolute, so the child processes it starts elsewhere use the same folder).
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("TUNER_ENVS", "cache/envs")
    assert load("intel-tensorflow").env_dir == tmp_path / "cache" / "envs" / "intel-tensorflow"
    # The tuner's own environment is not moved: stock TensorFlow still has none to manage.
    assert load("tensorflow").env_dir is None
    # A file where the folder should be is one line naming the variable and the value.
    (tmp_path / "file").write_text("")
    monkeypatch.setenv("TUNER_ENVS", str(tmp_path / "file"))
    with pytest.raises(UsageError, match=r"\$TUNER_ENVS=.*file' is not a folder"):
        load("intel-tensorflow").python()


def test_env_list_and_create_use_tuner_envs(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                            capsys: pytest.CaptureFixture[str]) -> None:  # fmt: skip
    from tests.helpers import one_error_line
    from tuner.cli import main

    monkeypatch.setenv("TUNER_ENVS", str(tmp_path / "envs"))
    monkeypatch.setattr("platform.machine", lambda: "x86_64")  # where intel-tensorflow can be made
    # `env list` shows where each managed environment would be: under $TUNER_ENVS, not yet created.
    assert main(["env", "list"]) == 0
    line = next(x for x in capsys.readouterr().out.splitlines() if x.startswith("intel-tensorflow"))
    assert f"{tmp_path / 'envs' / 'intel-tensorflow'}: not created (tuner env create intel-tensorflow)" in line
    # Where it cannot be made here (tensorflow-gpu without an NVIDIA driver), the line says why instead.
    monkeypatch.setattr("tuner.runtime.gpu_driver", lambda: None)
    assert main(["env", "list"]) == 0
    line = next(x for x in capsys.readouterr().out.splitlines() if x.startswith("tensorflow-gpu"))
    assert "not created (tensorflow-gpu runs the GPU rows and needs an NVIDIA GPU" in line
    (tmp_path / "file").write_text("")
    monkeypatch.setenv("TUNER_ENVS", str(tmp_path / "file"))
    # A bad $TUNER_ENVS stops `env create` in one line and exit 1, before pip or venv touch anything.
    assert main(["env", "create", "intel-tensorflow"]) == 1
    assert "is not a folder" in one_error_line(capsys.readouterr().err)
    assert (tmp_path / "file").read_text() == ""


def test_two_tuners_creating_one_shared_environment_build_it_once(tmp_path: Path,
                                                                  monkeypatch: pytest.MonkeyPatch) -> None:  # fmt: skip
    import fcntl
    import threading
    import time

    import tuner.envs as envs_module
    from tuner.envs import EnvReport, create

    monkeypatch.setenv("TUNER_ENVS", str(tmp_path / "envs"))
    runtime = load("intel-tensorflow")
    assert runtime.env_dir is not None and runtime.env_lock == tmp_path / "envs" / ".intel-tensorflow.lock"
    built: list[float] = []
    building = threading.Event()

    def current(runtime: object, path: Path) -> EnvReport | None:
        return EnvReport("intel-tensorflow", path, False, 0.0, 0, "3.11", "2.14") if built else None

    def build(runtime: object, path: Path, python: str, log: object) -> EnvReport:
        building.set()
        # pip at work, until the second tuner says it waits (however slow the machine; 30 s at most, so a
        # second tuner that never waits fails the test below rather than hanging it)
        waiting.wait(30)
        built.append(time.monotonic())
        return EnvReport("intel-tensorflow", path, True, 0.5, 0, "3.11", "2.14")

    monkeypatch.setattr(envs_module, "_interpreter_version", lambda python: "3.11")
    monkeypatch.setattr(type(runtime), "installable", lambda self, version=None: None)  # any machine
    monkeypatch.setattr(envs_module, "_current", current)
    monkeypatch.setattr(envs_module, "_build", build)
    logs: list[str] = []
    waiting = threading.Event()

    def said(line: str) -> None:
        logs.append(line)
        waiting.set()

    reports: list[EnvReport] = []
    first = threading.Thread(target=lambda: reports.append(create(runtime, log=logs.append)))
    first.start()
    assert building.wait(10)
    second = create(runtime, log=said)  # $TUNER_ENVS shared: a second tuner asks for the same one
    first.join()
    # The second waited for the first build, said so once, and found the environment made rather than
    # clearing it (venv --clear) and installing again: one build for two requests.
    assert len(built) == 1
    assert reports[0].created and not second.created
    assert logs == [f"waiting for another tuner using {runtime.env_dir} (lock {runtime.env_lock})"]
    # An up-to-date environment is confirmed without waiting for the trial running from it (a shared lock).
    trial = os.open(runtime.env_lock, os.O_RDONLY)
    try:
        fcntl.flock(trial, fcntl.LOCK_SH | fcntl.LOCK_NB)
        logs.clear()
        confirmed: list[EnvReport] = []
        looking = threading.Thread(target=lambda: confirmed.append(create(runtime, log=logs.append)), daemon=True)
        looking.start()
        looking.join(10)
        assert logs == [] and len(confirmed) == 1 and not confirmed[0].created
    finally:
        os.close(trial)
    # Shared read-only and made before environments had locks: the lock cannot be created (its folder stands
    # in here), and an up-to-date environment is still confirmed.
    monkeypatch.setattr(envs_module, "env_lock", lambda path: tmp_path / "not-here" / ".lock")
    assert not create(runtime, log=logs.append).created


def test_an_interpreter_inside_a_managed_environment_is_known_as_one(tmp_path: Path) -> None:
    from tuner.runtime import environment_of

    (tmp_path / "intel-tensorflow" / "bin").mkdir(parents=True)
    (tmp_path / "intel-tensorflow" / "tuner-env.json").write_text("{}")
    # `tuner tune --python .envs/intel-tensorflow/bin/python`: its trials take that environment's lock.
    assert environment_of(str(tmp_path / "intel-tensorflow" / "bin" / "python")) == tmp_path / "intel-tensorflow"
    # Any other interpreter (a system Python, a venv that `env create` did not make) has none.
    (tmp_path / "venv" / "bin").mkdir(parents=True)
    assert environment_of(str(tmp_path / "venv" / "bin" / "python")) is None
    assert environment_of("python3") is None


def test_a_long_build_step_says_it_goes_on_and_keeps_its_errors(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import tuner.envs as envs_module

    monkeypatch.setattr(envs_module, "BUILD_LINE_S", 0.2)  # every 30 s in use
    (tmp_path / "env").mkdir()
    (tmp_path / "env" / "wheel").write_bytes(b"x" * 3 * 2**20)
    slow = [sys.executable, "-c", "import time; time.sleep(0.9)", "pip-like"]
    logs: list[str] = []
    code, _ = envs_module._run_saying(slow, tmp_path / "env", logs.append)
    # A step of 0.9 s at one line per 0.2 s: several lines, each naming the step, its time and the
    # environment's size so far (pip's own bar is off), and then it ends with the step's status. (The
    # interpreter's start comes on top of the 0.9 s: on a slow or busy machine the last line says 0m01s.)
    assert code == 0 and len(logs) >= 3
    said = re.compile(
        rf"import time; time\.sleep\(0\.9\) pip-like still running: 0m0[0-9]s, {re.escape(str(tmp_path / 'env'))} 3 MiB"
    )
    assert all(said.fullmatch(line) for line in logs), logs
    failing = [sys.executable, "-c", "import sys; sys.exit('no matching distribution')", "x"]
    code, stderr = envs_module._run_saying(failing, tmp_path / "env", logs.append)
    # A failed step's errors are kept for the one-line failure.
    assert code == 1 and "no matching distribution" in stderr


def test_an_environment_built_for_another_machine_is_not_run_here(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, storage_url: str, capsys: pytest.CaptureFixture[str]
) -> None:
    from tuner.cli import main
    from tuner.doctor import availability
    from tuner.envs import MANIFEST
    from tuner.pipeline import Job
    from tuner.signature import cpu_signature
    from tuner.storage import open_storage

    # A $TUNER_ENVS shared with an x86-64 machine holds a complete intel-tensorflow environment; this one is aarch64.
    monkeypatch.setenv("TUNER_ENVS", str(tmp_path / "envs"))
    env = tmp_path / "envs" / "intel-tensorflow"
    (env / "bin").mkdir(parents=True)
    (env / "bin" / "python").write_text("")
    made = {"packages": [], "framework_version": "2.14.0", "size_bytes": 2**30, "seconds": 40,
            "created": "2026-12-01T00:00:00+00:00"}  # fmt: skip
    (env / MANIFEST).write_text(json.dumps(made))
    monkeypatch.setattr("platform.machine", lambda: "aarch64")
    runtime = load("intel-tensorflow")
    # Its x86-64 interpreter could not run here: every path to it says why in one line, rather than starting it.
    with pytest.raises(UsageError, match="x86_64 Linux only, and this machine is aarch64"):
        runtime.python()
    assert availability(runtime).startswith("not available: intel-tensorflow has wheels for x86_64 Linux only")
    assert main(["env", "list"]) == 0
    line = next(x for x in capsys.readouterr().out.splitlines() if x.startswith("intel-tensorflow"))
    assert "; not run here: intel-tensorflow has wheels for x86_64 Linux only" in line
    job = Job(open_storage(storage_url), cpu_signature(), [runtime], [1], ["infer"], None)
    assert job._skipped(runtime) == "intel-tensorflow has wheels for x86_64 Linux only, and this machine is aarch64"
    # The tuner's own interpreter (stock TensorFlow) is this machine's: never refused so.
    assert job._skipped(load("tensorflow")) is None and load("tensorflow").python()
