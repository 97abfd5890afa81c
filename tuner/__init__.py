"""tuner: find the fastest CPU threading settings for deep-learning training and inference."""

from __future__ import annotations

__version__ = "0.1.0"

from tuner.confirm import Verdict
from tuner.errors import TunerError
from tuner.measurement import Measurement
from tuner.policy import BURST, CONFIRM, FULL, MeasurementPolicy
from tuner.replay import ReplayRunner
from tuner.runner import Runner, SubprocessRunner, TrialSpec
from tuner.settings import Settings
from tuner.space import SearchSpace
from tuner.study import StudyConfig, StudyRun
from tuner.workload import Workload

__all__ = [
    "BURST", "CONFIRM", "FULL", "Measurement", "MeasurementPolicy", "ReplayRunner", "Runner",
    "SearchSpace", "Settings", "StudyConfig", "StudyRun", "SubprocessRunner", "TrialSpec",
    "TunerError", "Verdict", "Workload", "__version__",
]  # fmt: skip
