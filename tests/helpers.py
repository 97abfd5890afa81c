"""Helpers the tests import (fixtures stay in conftest.py): fast measurement policies and a study config on
the stock space's framework knobs (tests/spaces/threads.toml: the stock space without instances, allocator
and precision, so a study can exhaust it), as the probe reads it on a CPU where TensorFlow turns oneDNN on
by itself. The stock space itself is tested in test_space, test_capability, test_pipeline and the CLI tests."""

from __future__ import annotations

from pathlib import Path

from tuner.policy import MeasurementPolicy
from tuner.signature import cpu_signature
from tuner.space import load
from tuner.study import StudyConfig
from tuner.workload import Workload

THREADS_SPACE = str(Path(__file__).resolve().parent / "spaces" / "threads.toml")
FAST = MeasurementPolicy("test", warmup=1, timed=4, timeout_s=60.0)
FAST_CONFIRM = MeasurementPolicy("test-confirm", warmup=1, timed=4, timeout_s=60.0, rounds=3)


def make_config(cores: int = 2, trials: int = 8, **overrides: object) -> StudyConfig:
    values: dict[str, object] = {
        "workload": Workload("tiny", "infer", 32),
        "cores": tuple(range(cores)),
        "space": load(THREADS_SPACE, cores),
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


def one_error_line(err: str) -> str:
    lines = [line for line in err.splitlines() if line.strip()]
    # Bad input gets exactly one line on stderr, starting with the tool's name, and no traceback.
    assert len(lines) == 1, err
    assert lines[0].startswith("tuner: error: ") and "Traceback" not in err
    return lines[0]
