"""What `tuner show` prints (tuner/summary.py): timed-loop figures, the narrow and wide views, JSON."""

from __future__ import annotations

import json
import math
import re

import optuna
import pytest

from tests.helpers import make_config
from tuner.cli import main
from tuner.replay import ReplayRunner
from tuner.runner import TrialSpec
from tuner.storage import open_storage
from tuner.study import StudyRun
from tuner.summary import format_table, summarize

STEP, STALL = 0.032, 0.32  # 32 images a step: 1000 img/s, and one step in each run ten times slower


def stalled(spec: TrialSpec, call: int) -> list[float]:
    """Every setting alike: steady steps, but the last timed step of every run stalls."""
    return [STEP] * (spec.policy.warmup + spec.policy.timed - 1) + [STALL]


@pytest.fixture
def stalled_storage(storage_url: str) -> optuna.storages.RDBStorage:
    storage = open_storage(storage_url)
    StudyRun(storage, make_config(cores=1, trials=6), ReplayRunner(stalled)).run()
    return storage


def test_figures_are_the_timed_loop_rate_and_the_speedup_is_labelled_median(
    stalled_storage: optuna.storages.RDBStorage,
) -> None:
    (summary,) = summarize(stalled_storage)
    verdict = summary["verdict"]
    assert verdict is not None and verdict["loop_images_per_sec"] is not None
    # 4 timed steps of 32 images: 128 images over 3 x 0.032 + 0.32 s of timed loop = 307.69 img/s, while the
    # median step says 1000 img/s. The headline figure is the loop's (tf_cnn_benchmarks' definition) ...
    loop = 128 / (3 * STEP + STALL)
    assert verdict["loop_images_per_sec"]["tf-default"] == pytest.approx(loop)
    assert verdict["images_per_sec"]["tf-default"] == pytest.approx(1000.0)
    text = format_table([summary])
    row = next(line for line in text.splitlines() if line.startswith("tiny"))
    assert f"{loop:.2f}" in row and "1000.00" not in row
    # ... and the speedup column, which is the verdict's median statistic, says so in its header.
    assert "speedup (median)" in text.splitlines()[0]
    # The search trials' own figures are timed-loop rates too (used where nothing is confirmed yet).
    assert summary["search_loop_images_per_sec"]["tf-default"] == pytest.approx(loop)


def test_show_fits_120_columns_colours_only_on_request_and_wide_has_every_column(
    stalled_storage: optuna.storages.RDBStorage, storage_url: str, capsys: pytest.CaptureFixture[str]
) -> None:
    summaries = summarize(stalled_storage)
    narrow = format_table(summaries)
    # The default view fits a 120-column terminal, and names the recommendation in full under the table.
    assert all(len(line) <= 120 for line in narrow.splitlines())
    assert "recommended settings" not in narrow and "Recommended" in narrow
    # Every setting runs alike, so tf-default is kept: a warning tone (yellow) where colour is on, none
    # otherwise; the colour codes do not move the columns.
    coloured = format_table(summaries, colour=True)
    assert "\x1b[33m" in coloured and "\x1b" not in narrow
    assert re.sub(r"\x1b\[[0-9;]*m", "", coloured) == narrow
    # --wide: every column, the recommended settings and the verdict's text among them.
    assert main(["show", "--wide", "--storage", storage_url]) == 0
    assert "recommended settings" in capsys.readouterr().out.splitlines()[0]
    # Through the CLI into a pipe (not a terminal): no escape codes.
    assert main(["show", "--storage", storage_url]) == 0
    assert "\x1b" not in capsys.readouterr().out


def test_show_format_json_and_its_json_alias(
    stalled_storage: optuna.storages.RDBStorage, storage_url: str, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["show", "--format", "json", "--storage", storage_url]) == 0
    out = capsys.readouterr().out
    assert main(["show", "--json", "--storage", storage_url]) == 0
    # --json is kept as the same thing as --format json; the output parses as JSON and nothing else.
    assert capsys.readouterr().out == out
    (study,) = json.loads(out)
    assert study["model"] == "tiny" and study["verdict"]["loop_images_per_sec"]["tf-default"] > 0
    # A format that does not exist is one line naming the flag.
    assert main(["show", "--format", "yaml", "--storage", storage_url]) == 1
    assert "--format" in capsys.readouterr().err


def test_a_forged_zero_rate_in_a_latency_study_shows_as_no_time() -> None:
    from tuner.summary import _as_objective

    study = {"objective": "latency", "batch_size": 1}
    values = {"tf-default": 100.0, "forged": 0.0, "negative": -5.0, "missing": None}
    # 1 request at 100/s is 10 ms; a rate of 0 or below has no request time: '-', not ZeroDivisionError.
    assert _as_objective(study, values) == {  # type: ignore[arg-type]
        "tf-default": 10.0,
        "forged": None,
        "negative": None,
        "missing": None,
    }


def test_a_forged_trial_of_infinite_value_is_never_the_best(
    stalled_storage: optuna.storages.RDBStorage, capsys: pytest.CaptureFixture[str]
) -> None:
    (before,) = summarize(stalled_storage)
    (name,) = [s.study_name for s in stalled_storage.get_all_studies()]
    study = optuna.load_study(study_name=name, storage=stalled_storage)
    real = next(t for t in study.trials if t.state == optuna.trial.TrialState.COMPLETE)
    # Another worker of a shared study writes a complete trial whose value is infinite (Optuna stores it).
    study.add_trial(optuna.trial.create_trial(params=real.params, distributions=real.distributions, value=math.inf))
    (after,) = summarize(stalled_storage)
    # It is left out, as every reader leaves an unusable trial out: the best stays the measured one, and
    # show --format json stays JSON (no bare Infinity).
    assert after["best_trial"] == before["best_trial"] and after["best_trial"] is not None
    capsys.readouterr()
    assert main(["show", "--storage", str(stalled_storage.url), "--format", "json"]) == 0
    out = capsys.readouterr().out
    assert "Infinity" not in out and json.loads(out)[0]["best_trial"]["number"] == before["best_trial"]["number"]
