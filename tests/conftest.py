"""Shared fixtures: quiet Optuna and a fresh SQLite storage. Helpers that tests import live in tests/helpers.py."""

from __future__ import annotations

from pathlib import Path

import optuna
import pytest

from tuner.storage import open_storage


@pytest.fixture(autouse=True)
def _quiet_optuna() -> None:
    optuna.logging.set_verbosity(optuna.logging.ERROR)


@pytest.fixture
def storage_url(tmp_path: Path) -> str:
    return f"sqlite:///{tmp_path / 'studies.db'}"


@pytest.fixture
def storage(storage_url: str) -> optuna.storages.RDBStorage:
    return open_storage(storage_url)
