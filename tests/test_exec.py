"""Applying the answer: the allocator preload read back from a real process, `tuner recommend --format shell`
printing a multi-instance launch, and `tuner exec` starting a program the way the verdict says."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.helpers import make_config
from tuner import allocator
from tuner.errors import InvalidSettings
from tuner.replay import ReplayRunner
from tuner.runner import TrialSpec
from tuner.settings import Settings
from tuner.space import load
from tuner.storage import open_storage
from tuner.study import StudyRun

TWO = len(os.sched_getaffinity(0)) >= 2
CLI = [sys.executable, "-c", "import sys; from tuner.cli import main; sys.exit(main())"]
SPACE = """
constraints = ["instances_divide_cores", "threads_fit_instance"]
[knobs.intra_op]
type = "int"
low = 0
high = "cores"
[knobs.instances]
type = "int"
low = 1
high = "cores"
[knobs.allocator]
type = "categorical"
choices = ["system", "tcmalloc"]
[baselines.tf-default]
intra_op = 0
instances = 1
allocator = "system"
"""
APP = """
import os
maps = open("/proc/self/maps").read()
line = " ".join(str(word) for word in (
    "instance", os.environ["TUNER_INSTANCE"], "of", os.environ["TUNER_INSTANCES"],
    "cpus", sorted(os.sched_getaffinity(0)), "tcmalloc", "libtcmalloc" in maps,
    "intra", os.environ.get("TF_NUM_INTRAOP_THREADS")))
os.write(1, (line + "\\n").encode())  # one write: two instances share the caller's stdout
"""


def mapped_allocator(env: dict[str, str]) -> str:
    code = "from tuner.worker import allocator_facts; print(allocator_facts()['allocator'])"
    return subprocess.run(
        [sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True
    ).stdout.strip()


@pytest.mark.parametrize("name", ["tcmalloc", "jemalloc"])
def test_the_preloaded_allocator_is_read_back_from_the_process(name: str) -> None:
    if allocator.find(name) is None:
        pytest.skip(f"{name} not installed ({allocator.PACKAGES[name]}); CI installs it")
    env = Settings.from_params({"allocator": name}).environ({**os.environ})
    # The library comes from the system folder, never from the user; jemalloc gets run_cpu's MALLOC_CONF.
    assert env["LD_PRELOAD"].startswith("/usr/") and ("MALLOC_CONF" in env) == (name == "jemalloc")
    # The worker's read-back sees it mapped; without the preload, the system's allocator.
    assert mapped_allocator({**env, "PYTHONPATH": str(Path.cwd())}) == name
    assert mapped_allocator({"PATH": os.environ["PATH"], "PYTHONPATH": str(Path.cwd())}) == "system"


def test_a_missing_or_writable_library_is_never_preloaded(tmp_path: Path) -> None:
    folder = tmp_path / "lib"
    folder.mkdir()
    # Nothing installed in the folders searched: the allocator is unavailable, with the command to install it.
    assert allocator.available((str(folder),)) == ["system"]
    with pytest.raises(allocator.AllocatorMissing, match="apt-get install libtcmalloc-minimal4"):
        allocator.environ("tcmalloc", (str(folder),))
    planted = folder / "libtcmalloc_minimal.so.4"
    planted.write_bytes(b"")
    planted.chmod(0o666)
    # A library anyone may write is not the distribution's: refused as if missing.
    assert allocator.find("tcmalloc", (str(folder),)) is None


def test_settings_with_a_missing_allocator_fail_in_one_line(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    empty = (str(tmp_path),)
    monkeypatch.setattr("tuner.settings.allocator_environ", lambda name: allocator.environ(name, empty))
    # Nothing installed where the libraries are looked for: one line naming the allocator and its package,
    # before any process starts; the system allocator needs nothing.
    with pytest.raises(InvalidSettings, match=r"jemalloc is not installed here .*libjemalloc2"):
        Settings.from_params({"allocator": "jemalloc"}).environ({})
    assert "LD_PRELOAD" not in Settings().environ({})


def tuned(url: str, tmp_path: Path) -> None:
    path = tmp_path / "launch.toml"
    path.write_text(SPACE)

    def rate(spec: TrialSpec) -> float:
        s = spec.settings
        # Two single-thread instances with TCMalloc are clearly faster than anything else.
        return 1400.0 if (s.instances, s.allocator, s.intra_op) == (2, "tcmalloc", 1) else 1000.0

    config = make_config(cores=2, trials=30, candidates=1, space=load(str(path), 2),
                         probe={"onednn": True, "allocators": allocator.available()})  # fmt: skip
    StudyRun(open_storage(url), config, ReplayRunner.from_rates(rate, noise=0.01)).run()


@pytest.mark.skipif(not TWO or allocator.find("tcmalloc") is None, reason="needs two CPUs and TCMalloc")
def test_recommend_shell_and_exec_launch_the_verdict(storage_url: str, tmp_path: Path) -> None:
    tuned(storage_url, tmp_path)
    base = ["--cores", "2", "--mode", "infer", "--model", "tiny", "--storage", storage_url]
    shell = subprocess.run([*CLI, "recommend", *base, "--format", "shell"], capture_output=True, text=True)
    assert shell.returncode == 0, shell.stderr
    # The shell form is a function that starts two pinned instances with the preload, and it parses.
    assert "tuner_launch() {" in shell.stdout and shell.stdout.count("taskset -c") == 2
    assert "LD_PRELOAD=" in shell.stdout and '"$@" &' in shell.stdout
    assert subprocess.run(["bash", "-n"], input=shell.stdout, text=True).returncode == 0
    app = tmp_path / "app.py"
    app.write_text(APP + "raise SystemExit(int(os.environ['TUNER_INSTANCE']) * 3)\n")
    script = f"{shell.stdout}\ntuner_launch {sys.executable} {app}\n"
    ran = subprocess.run(["bash", "-c", script], capture_output=True, text=True)
    # Run as printed, the function starts both instances pinned, with the preload, and returns the worst
    # status (instance 1 exits 3).
    assert ran.returncode == 3 and sorted(ran.stdout.splitlines())[0].startswith("instance 0 of 2")
    assert ran.stdout.count("tcmalloc True") == 2
    app.write_text(APP)
    inherited = {**os.environ, "OMP_NUM_THREADS": "7", "LD_PRELOAD": ""}
    done = subprocess.run(
        [*CLI, "exec", *base, "--", sys.executable, str(app)], capture_output=True, text=True, env=inherited
    )
    assert done.returncode == 0, done.stderr
    # What the settings decide is not inherited from the caller, and stderr says which it dropped.
    assert "not passed on (the settings decide them): LD_PRELOAD, OMP_NUM_THREADS" in done.stderr
    lines = sorted(done.stdout.splitlines())
    # Two instances, prefixed, each on its own CPU, each with TCMalloc mapped and one intra-op thread.
    assert len(lines) == 2 and lines[0].startswith("[0] instance 0 of 2") and lines[1].startswith("[1] instance 1 of 2")
    cpus = sorted(os.sched_getaffinity(0))[:2]
    assert f"cpus [{cpus[0]}]" in lines[0] and f"cpus [{cpus[1]}]" in lines[1]
    assert all("tcmalloc True" in line and "intra 1" in line for line in lines)
    # stderr says what was applied and where it came from.
    assert "2 instances x 1 core" in done.stderr and "allocator tcmalloc" in done.stderr


def test_exec_without_a_verdict_runs_tensorflows_defaults_and_says_so(tmp_path: Path) -> None:
    app = tmp_path / "app.py"
    app.write_text("import sys; sys.exit(3)")
    env = {k: v for k, v in os.environ.items() if k != "TUNER_STORAGE"}
    argv = [*CLI, "exec", "--", sys.executable, str(app)]
    done = subprocess.run(argv, capture_output=True, text=True, cwd=tmp_path, env=env)
    # Nothing tuned here yet (the built-in storage is missing): the program ran once with the defaults, and
    # its exit status is passed back.
    assert done.returncode == 3
    assert "1 instance x" in done.stderr and "TensorFlow's defaults" in done.stderr
    # Nothing asked for a storage to be made.
    assert not (tmp_path / "studies").exists()


def test_exec_with_a_named_storage_that_is_missing_is_one_line_and_starts_nothing(tmp_path: Path) -> None:
    app = tmp_path / "app.py"
    app.write_text("open(__file__ + '.ran', 'w')")
    argv = [*CLI, "exec", "--storage", f"sqlite:///{tmp_path}/typo.db", "--", sys.executable, str(app)]
    done = subprocess.run(argv, capture_output=True, text=True)
    # A storage named on purpose that is not there is a typo: one line naming it, exit 1, the program never
    # started (on the defaults it would run untuned, unnoticed) and no database made.
    assert done.returncode == 1 and done.stderr.count("\n") == 1 and "typo.db does not exist" in done.stderr
    assert not (tmp_path / "app.py.ran").exists() and not (tmp_path / "typo.db").exists()


def test_exec_without_a_program_is_one_line(tmp_path: Path) -> None:
    done = subprocess.run([*CLI, "exec", "--storage", f"sqlite:///{tmp_path}/x.db"], capture_output=True, text=True)
    # Usage error: one line, exit 1.
    assert done.returncode == 1 and done.stderr.count("\n") == 1 and "name the program" in done.stderr
