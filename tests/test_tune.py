"""TuneJob (tuner tune): the budget shared as `tuner run` shares it, floors included."""

from __future__ import annotations

import re

import optuna
import pytest

from tests.test_pipeline import Clock, ClockedRunner
from tuner.plan import StudyOptions, prepare, share, weight
from tuner.runtime import load
from tuner.signature import cpu_signature
from tuner.tune import TuneJob


def test_tune_gives_the_many_core_studies_their_floor(
    storage: optuna.storages.RDBStorage, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A 16-core machine, as in test_pipeline: by weight alone a 16-core study gets a few seconds.
    monkeypatch.setattr("tuner.plan.core_set", lambda count, *a, **k: tuple(range(count)))
    clock = Clock()
    runner = ClockedRunner(clock)
    ready = prepare(load("tensorflow-eigen"), runner, 16)
    lines: list[str] = []
    plan = [(mode, n) for n in (1, 16) for mode in ("train", "infer")]
    job = TuneJob(storage, cpu_signature(), ready, [1, 16], ["train", "infer"], 12 * 60.0, "tiny", 32,
                  StudyOptions(trials=6, candidates=1), probe_s=20.0, log=lines.append, clock=clock)  # fmt: skip
    job.run()
    shares = [line for line in lines if re.search(r"study \d/4: .* share ", line)]
    first = re.search(r"share (\d+)m(\d\d)s", shares[0])
    assert first is not None
    given = int(first.group(1)) * 60 + int(first.group(2))
    by_weight = share(12 * 60.0, [weight(mode, n, 16) for mode, n in plan])
    assert by_weight is not None
    # The first (one-core training) study gave up part of its weighted share to the floors of the others.
    assert given < by_weight - 5
    # Every study finished with a verdict.
    assert len(job.studies) == 4 and job.failures == []
