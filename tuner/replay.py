"""A runner that replays scripted or recorded measurements: deterministic, instant, for tests and benches.

It follows the real runner's contract (steps reported through ``on_step``, typed errors raised), so study,
confirmation and CLI logic are tested without starting a framework.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from tuner import interrupt
from tuner.errors import WorkerExited
from tuner.measurement import Measurement
from tuner.runner import StepCallback, TaskSpec, TrialSpec
from tuner.settings import ONEDNN_DEFAULT, Settings

Outcome = Sequence[float] | BaseException
Script = Callable[[TrialSpec, int], Outcome]  # (trial, call number) -> step seconds, or an error to raise


# What the fake reports for worker tasks unless told otherwise: made-up but plausible yardsticks for tests.
FAKE_TASKS: dict[str, dict[str, Any]] = {
    "flops": {"flops_per_image": {"infer": 8.0e9, "train": 24.0e9}},
    "matmul": {"size": 4096, "gflops": [100.0, 101.0, 99.0]},
    "devices": {"gpus": 0},
}


# What stock TensorFlow's worker prints when asked for NCHW with oneDNN off (measured on an AVX2-only CPU).
NCHW_WITHOUT_ONEDNN = (
    "tensorflow.python.framework.errors_impl.UnimplementedError: Graph execution error:\n\n"
    "Detected at node sequential_1/conv2d_1/convolution defined at (most recent call last):\n"
    '  File "worker.py", line 268, in run\n\n'
    "The Conv2D op currently only supports the NHWC tensor format on the CPU. The op was given the format: NCHW\n"
    "\t [[{{node sequential_1/conv2d_1/convolution}}]] [Op:__inference_one_step_145]\n"
)


class ReplayRunner:
    """``onednn_default`` mimics a CPU: True where TensorFlow turns oneDNN on by itself (AVX-512 VNNI/BF16),
    False where it leaves it off (AVX2 only: then NCHW without oneDNN fails as the real worker does), None
    to report nothing about oneDNN. ``facts`` are added to every run's read-back (``{"openmp": None}`` plays
    a build that loads no OpenMP library)."""

    def __init__(
        self,
        script: Script,
        tasks: Mapping[str, dict[str, Any]] | None = None,
        onednn_default: bool | None = True,
        facts: Mapping[str, Any] | None = None,
    ) -> None:
        self.script = script
        self.onednn_default = onednn_default
        self.extra_facts = dict(facts or {})  # read back by every run, as a probe would (openmp: None)
        self.calls: list[TrialSpec] = []
        self.tasks = dict(FAKE_TASKS if tasks is None else tasks)
        self.task_calls: list[TaskSpec] = []

    def compute(self, spec: TaskSpec) -> dict[str, Any]:
        self.task_calls.append(spec)
        outcome = self.tasks[spec.task]
        if isinstance(outcome, BaseException):
            raise outcome
        onednn = self._onednn(spec.settings)
        return {"event": "result", "framework": "replay", "cpus": list(spec.cores), "onednn": onednn, **outcome}

    def _onednn(self, settings: Settings) -> bool | None:
        value = dict(settings.env_knobs).get("onednn", ONEDNN_DEFAULT)
        return self.onednn_default if value == ONEDNN_DEFAULT else bool(value)

    @classmethod
    def from_rates(cls, rate: Callable[[TrialSpec], float], noise: float = 0.0, seed: int = 0) -> ReplayRunner:
        """Step times for ``rate(spec)`` images/sec, each step scaled by Gaussian noise of relative sd ``noise``."""
        rng = random.Random(seed)

        def script(spec: TrialSpec, _call: int) -> list[float]:
            seconds = spec.global_batch / rate(spec)
            steps = spec.policy.warmup + spec.policy.timed
            return [seconds * max(0.05, 1 + rng.gauss(0, noise)) for _ in range(steps)]

        return cls(script)

    @classmethod
    def from_table(cls, table: Mapping[str, float], default: float, noise: float = 0.0, seed: int = 0) -> ReplayRunner:
        """Rates looked up by the settings' label (``Settings.label()``), ``default`` for the rest."""
        return cls.from_rates(lambda spec: table.get(spec.settings.label(), default), noise, seed)

    def run(self, spec: TrialSpec, on_step: StepCallback | None = None) -> Measurement:
        with interrupt.interruptible():  # a script that sleeps stands for a worker being waited on
            outcome = self.script(spec, len(self.calls))
        self.calls.append(spec)
        if isinstance(outcome, BaseException):
            raise outcome
        onednn = self._onednn(spec.settings)
        if spec.settings.data_format == "NCHW" and onednn is False and spec.device == "cpu":  # a GPU convolves
            raise WorkerExited("worker exited with status 1", NCHW_WITHOUT_ONEDNN)
        steps = list(outcome)
        warmup, timed = steps[: spec.policy.warmup], steps[spec.policy.warmup :][: spec.policy.timed]
        for phase, values in (("warmup", warmup), ("timed", timed)):
            for index, seconds in enumerate(values):
                if on_step is not None:
                    on_step(phase, index, seconds)
        facts = {
            "replayed": True,
            "framework": "replay",
            "intra_op": spec.settings.intra_op,
            "inter_op": spec.settings.inter_op,
            "cpus": list(spec.cores),
            "onednn": onednn,
        }
        facts.update(self.extra_facts, replicas=spec.replicas)
        return Measurement(spec.global_batch, tuple(timed), tuple(warmup), facts, sum(steps))
