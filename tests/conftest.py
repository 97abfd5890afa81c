"""Shared fixtures: quiet Optuna, a fixed machine for fake workers, a fresh SQLite storage. Helpers tests
import live in tests/helpers.py."""

from __future__ import annotations

import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

import optuna
import pytest

from tuner.allocator import ALLOCATORS
from tuner.storage import open_storage

RAM_FOLDER = Path("/dev/shm")
RAM_FREE = 2 * 2**30  # a container's 64 MiB /dev/shm would fill: the disk is used there
RAM_BASETEMP = pytest.StashKey[str]()


def pytest_configure(config: pytest.Config) -> None:
    """Temporary folders (the tests' SQLite storages above all) in RAM where Linux offers a roomy tmpfs: the
    suite commits to SQLite thousands of times, and each commit waits for the disk (test_pipeline and
    test_transfer ran 15-25% faster, measured A B A B). ``--basetemp`` still chooses; the folder is
    removed when the session ends."""
    if config.option.basetemp or not RAM_FOLDER.is_dir():
        return
    try:
        if shutil.disk_usage(RAM_FOLDER).free < RAM_FREE:
            return
        config.option.basetemp = tempfile.mkdtemp(prefix="tuner-tests-", dir=RAM_FOLDER)
    except OSError:  # not writable here: pytest's own folder on disk
        return
    config.stash[RAM_BASETEMP] = config.option.basetemp


def pytest_unconfigure(config: pytest.Config) -> None:
    if RAM_BASETEMP in config.stash:
        shutil.rmtree(config.stash[RAM_BASETEMP], ignore_errors=True)


@pytest.fixture(autouse=True)
def _quiet_optuna() -> None:
    optuna.logging.set_verbosity(optuna.logging.ERROR)


FIXED_MACHINE = pytest.StashKey[pytest.MonkeyPatch]()


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_setup(item: pytest.Item) -> Iterator[None]:
    """A test without real TensorFlow sees one machine wherever the suite runs: every allocator installed and
    bf16 instructions, so that its space (and the settings its fake worker ranks) does not shrink on a CPU
    without AVX-512 BF16 or a machine without CI's Debian packages. Set before the test's fixtures, so that a
    module fixture's study (test_fuzz, test_layout, test_report) is made on the same machine as its tests
    resume it. Tests of the real facts, and of what the space leaves out without them, pass their own
    (test_capability, test_exec, test_signature); tests with real TensorFlow see the real machine."""
    if item.get_closest_marker("tensorflow") is None:
        patch = pytest.MonkeyPatch()
        patch.setattr("tuner.probe.machine_facts", lambda: {"allocators": list(ALLOCATORS), "bf16_instructions": True})
        item.stash[FIXED_MACHINE] = patch
    yield


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_teardown(item: pytest.Item) -> Iterator[None]:
    yield
    if FIXED_MACHINE in item.stash:
        item.stash[FIXED_MACHINE].undo()


@pytest.fixture
def storage_url(tmp_path: Path) -> str:
    return f"sqlite:///{tmp_path / 'studies.db'}"


@pytest.fixture
def storage(storage_url: str) -> optuna.storages.RDBStorage:
    return open_storage(storage_url)
