"""Studies shared by several workers on a real PostgreSQL server (`.ci/run` starts one on loopback).

Set TUNER_TEST_POSTGRES to a URL whose role may create databases; each test gets a fresh database. Without
it these tests are skipped, except under CI, where a missing server is a failure.

The workers are real `tuner tune` processes whose trials are real worker processes started by the real
runner under the host lock, but the worker is ``children/fake_worker.py``: this tests the storage and the
workers' coordination, which a framework would only slow down (real TensorFlow trials are tested in
test_tensorflow.py, and stored the same way).
"""

from __future__ import annotations

import itertools
import json
import os
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import optuna
import pytest
import sqlalchemy
from optuna.trial import TrialState
from sqlalchemy.engine import make_url

from tests.helpers import THREADS_SPACE
from tuner.storage import open_storage

CHILD = Path(__file__).resolve().parent / "children" / "fake_subprocess_tune.py"

SERVER = os.environ.get("TUNER_TEST_POSTGRES", "")
if not SERVER and os.environ.get("CI"):
    raise RuntimeError("CI must provide TUNER_TEST_POSTGRES (see .ci/run)")
TRIALS = 8


@pytest.fixture(params=["sqlite", "postgresql"])
def shared_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    """A fresh storage: a SQLite file, or a new database on the PostgreSQL server."""
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path / 'shared.db'}"
        return
    if not SERVER:
        pytest.skip("no PostgreSQL server (set TUNER_TEST_POSTGRES)")
    name = f"tuner_test_{uuid.uuid4().hex[:10]}"
    admin = sqlalchemy.create_engine(SERVER, isolation_level="AUTOCOMMIT")
    with admin.connect() as connection:
        connection.execute(sqlalchemy.text(f'CREATE DATABASE "{name}"'))
    try:
        yield make_url(SERVER).set(database=name).render_as_string(hide_password=False)
    finally:
        with admin.connect() as connection:
            connection.execute(sqlalchemy.text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        admin.dispose()


def _tune(url: str, *extra: str) -> list[str]:
    # The framework-knob space (tests/spaces/threads.toml): this tests sharing, not the stock space.
    return [sys.executable, str(CHILD), "tune", "--model", "tiny", "--cores", "1", "--mode", "infer",
            "--trials", str(TRIALS), "--budget", "none", "--space", THREADS_SPACE, "--storage", url,
            *extra]  # fmt: skip


def _owner(trial: optuna.trial.FrozenTrial) -> int | None:
    owner = trial.user_attrs.get("owner")
    return owner.get("pid") if isinstance(owner, dict) else None


def _trials(storage: optuna.storages.BaseStorage) -> list[optuna.trial.FrozenTrial]:
    studies = storage.get_all_studies()
    return storage.get_all_trials(studies[0]._study_id) if studies else []


def _complete(storage: optuna.storages.BaseStorage) -> int:
    return len([t for t in _trials(storage) if t.state == TrialState.COMPLETE])


def _held(storage: optuna.storages.BaseStorage, pid: int) -> bool:
    return any(t.state == TrialState.RUNNING and _owner(t) == pid for t in _trials(storage))


def test_three_workers_share_one_study_and_a_killed_one_leaves_nothing_running(shared_url: str, tmp_path: Path) -> None:
    pg_url = shared_url
    started = time.monotonic()
    # The workers share a lock of their own: they must not overlap each other, and a measurement elsewhere on
    # this host must not make them wait.
    env = {**os.environ, "FAKE_TUNE_LOCK": str(tmp_path / "lock")}
    workers = [
        subprocess.Popen(
            _tune(pg_url, "--no-confirm"), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env
        )
        for _ in range(3)
    ]
    brief: optuna.storages.RDBStorage | None = None
    try:
        storage = open_storage(pg_url)
        # The look at a stopped worker's trials waits half a second at most for SQLite's lock: stopped
        # mid-commit, the worker holds it, and a look that waited the storage's 30 s would hold up the
        # survivors' writes long enough to fail them ("database is locked").
        if pg_url.startswith("sqlite"):  # the tables are there: made by open_storage, checked by it
            brief = optuna.storages.RDBStorage(
                pg_url,
                engine_kwargs={"connect_args": {"timeout": 0.5}},
                skip_table_creation=True,
                skip_compatibility_check=True,
            )
        peek = brief or storage
        deadline = time.monotonic() + 240
        # Kill one worker outright (no chance to clean up) once the study is under way and it holds a trial:
        # stopped first, so that the trial seen RUNNING cannot finish between the look and the kill.
        while True:
            assert time.monotonic() < deadline, "worker 0 never held a trial after two were complete"
            if _complete(storage) >= 2:
                workers[0].send_signal(signal.SIGSTOP)
                try:
                    if _held(peek, workers[0].pid):
                        break
                except optuna.exceptions.StorageInternalError:
                    pass  # SQLite: stopped mid-commit, it holds the file's lock; let it go on and look again
                workers[0].send_signal(signal.SIGCONT)
            time.sleep(0.1)
        workers[0].send_signal(signal.SIGKILL)
        outputs = [w.communicate(timeout=300) for w in workers]
    finally:  # a failure above must not leave a worker stopped (SIGSTOP) or running after the test
        if brief is not None:
            brief.engine.dispose()
        for worker in workers:
            if worker.poll() is None:
                worker.kill()
                worker.wait()
    shared_s = time.monotonic() - started
    print(f"three workers, one killed: {TRIALS} trials in {shared_s:.1f} s")
    # The two survivors finish normally.
    assert [w.returncode for w in workers[1:]] == [0, 0], [err for _, err in outputs[1:]]
    (study,) = storage.get_all_studies()
    trials = storage.get_all_trials(study._study_id)
    complete = [t for t in trials if t.state == TrialState.COMPLETE]
    # Exactly the requested number of complete trials, none left RUNNING (the killed worker's trial is failed
    # as orphaned), and no trial number used twice.
    assert len(complete) == TRIALS
    assert not [t for t in trials if t.state in (TrialState.RUNNING, TrialState.WAITING)]
    assert len({t.number for t in trials}) == len(trials)
    # The killed worker held a trial (measuring, or waiting for the host lock): a survivor failed it as orphaned.
    killed = [t for t in trials if _owner(t) == workers[0].pid and t.state == TrialState.FAIL]
    assert [t.user_attrs.get("fail_reason") for t in killed] == ["orphaned"]
    # Several workers measured; the host lock kept their measurements from overlapping on this host.
    assert len({_owner(t) for t in complete}) >= 2
    windows = sorted(
        (w["from"], w["to"]) for w in (t.user_attrs["measurement"]["facts"]["host_lock"] for t in complete)
    )
    assert all(later[0] >= earlier[1] for earlier, later in itertools.pairwise(windows))
    # One more run of the same command (without --no-confirm) confirms and stores the verdict (one candidate
    # and the least rounds, three: enough to show the shared study confirms; confirmation is test_study's).
    final = subprocess.run(_tune(pg_url, "--candidates", "1", "--rounds", "3"), capture_output=True, text=True,
                           timeout=300, env=env)  # fmt: skip
    assert final.returncode == 0, final.stderr
    assert "verdict" in optuna.load_study(study_name=study.study_name, storage=storage).user_attrs
    # The password in the URL is never printed, nor stored in the study's metadata.
    secret = make_url(pg_url).password
    if not secret:
        return  # SQLite: no credentials to hide
    printed = "".join(out + err for out, err in outputs) + final.stdout + final.stderr
    assert secret not in printed and "***" in printed
    stored = json.dumps([s.user_attrs for s in storage.get_all_studies()])
    assert secret not in stored
