"""Shared fixtures: a replaying runner, a study config on the real search space, a fresh SQLite storage."""

from __future__ import annotations

from pathlib import Path

import optuna
import pytest

from tuner.policy import MeasurementPolicy
from tuner.signature import cpu_signature
from tuner.space import load
from tuner.storage import open_storage
from tuner.study import StudyConfig
from tuner.workload import Workload

FAST = MeasurementPolicy("test", warmup=1, timed=4, timeout_s=60.0)
FAST_CONFIRM = MeasurementPolicy("test-confirm", warmup=1, timed=4, timeout_s=60.0, rounds=3)


@pytest.fixture(autouse=True)
def _quiet_optuna() -> None:
    optuna.logging.set_verbosity(optuna.logging.ERROR)


@pytest.fixture
def storage_url(tmp_path: Path) -> str:
    return f"sqlite:///{tmp_path / 'studies.db'}"


@pytest.fixture
def storage(storage_url: str) -> optuna.storages.RDBStorage:
    return open_storage(storage_url)


def make_config(cores: int = 2, trials: int = 8, **overrides: object) -> StudyConfig:
    values: dict[str, object] = {
        "workload": Workload("tiny", "infer", 32),
        "cores": tuple(range(cores)),
        "space": load("tensorflow", cores),
        "signature": cpu_signature(),
        "trials": trials,
        "policy": FAST,
        "confirm_policy": FAST_CONFIRM,
        "seed": 1,
        # As the probe reads it on a CPU where TensorFlow turns oneDNN on by itself (AVX-512 VNNI/BF16).
        "probe": {"onednn": True},
    }
    values.update(overrides)
    return StudyConfig(**values)  # type: ignore[arg-type]
