"""Shared fixtures: quiet Optuna, a fixed machine for fake workers, a fresh SQLite storage. Helpers tests
import live in tests/helpers.py."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import optuna
import pytest

from tuner.allocator import ALLOCATORS
from tuner.storage import open_storage


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
