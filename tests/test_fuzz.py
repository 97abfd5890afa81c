"""Bad input, fuzzed with hypothesis: always one clear line and exit 1, never a traceback, never a write.

Search-space files are generated as TOML from random structures (wrong types, missing keys, inverted
bounds, unknown knobs, huge values, odd Unicode) or as raw text; core lists, storage URLs and --settings
strings as random text. A generated input may happen to be valid: then the command must simply work.
"""

from __future__ import annotations

import contextlib
import io
import json
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tuner.cli import main
from tuner.errors import SearchSpaceError, TunerError
from tuner.replay import ReplayRunner
from tuner.runner import TrialSpec
from tuner.settings import Settings
from tuner.space import load as load_space

FUZZ = settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
KNOB_NAMES = ["intra_op", "inter_op", "data_format", "onednn", "KMP_BLOCKTIME", "OMP_NUM_THREADS", "KMP_AFFINITY"]
odd_text = st.text(alphabet=st.characters(blacklist_categories=("Cs",)), max_size=12)
values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(min_value=-(10**20), max_value=10**20)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.sampled_from(["cores", "2*cores", "NHWC", "NCHW", "int", "categorical", "infinite", "", "1e400"])
    | odd_text,
    lambda inner: st.lists(inner, max_size=4),
    max_leaves=6,
)
knob = st.dictionaries(
    st.sampled_from(["type", "low", "high", "step", "log", "choices"]) | odd_text, values, max_size=5
)
space = st.fixed_dictionaries(
    {},
    optional={
        "runtime": values,
        "description": values,
        "knobs": st.dictionaries(st.sampled_from(KNOB_NAMES) | odd_text, knob | values, max_size=4),
        "constraints": values,
        "baselines": st.dictionaries(
            st.sampled_from(["tf-default", "heuristic"]) | odd_text,
            st.dictionaries(st.sampled_from(KNOB_NAMES) | odd_text, values, max_size=4) | values,
            max_size=3,
        ),
        "extra": values,
    },
)


def toml_value(value: Any) -> str:
    if value is None:
        return '""'  # TOML has no null: an empty string is as wrong in every place
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return repr(value)
    if isinstance(value, list):
        return "[" + ", ".join(toml_value(v) for v in value) + "]"
    return json.dumps(value)  # a TOML basic string: JSON escapes are valid TOML escapes


def to_toml(data: dict[str, Any]) -> str:
    lines = [f"{json.dumps(k)} = {toml_value(v)}" for k, v in data.items() if not isinstance(v, dict)]
    for table, body in data.items():
        if not isinstance(body, dict):
            continue
        lines.append(f"[{json.dumps(table)}]")
        for key, value in body.items():
            if isinstance(value, dict):
                inline = ", ".join(f"{json.dumps(k)} = {toml_value(v)}" for k, v in value.items())
                lines.append(f"{json.dumps(key)} = {{ {inline} }}")
            else:
                lines.append(f"{json.dumps(key)} = {toml_value(value)}")
    return "\n".join(lines) + "\n"


def never_measures(spec: TrialSpec, call: int) -> list[float]:
    return [0.01] * (spec.policy.warmup + spec.policy.timed)


def one_line_or_success(code: int, err: str) -> None:
    # Either the command worked, or it failed with exactly one line naming the problem: never a traceback.
    assert code in (0, 1), err
    assert "Traceback" not in err
    if code == 1:
        lines = [line for line in err.splitlines() if line.strip()]
        assert len(lines) == 1 and lines[0].startswith("tuner: error: "), err


@FUZZ
@given(data=space)
def test_fuzzed_space_files_load_or_fail_with_a_search_space_error(tmp_path: Path, data: dict[str, Any]) -> None:
    path = tmp_path / "fuzzed.toml"
    path.write_text(to_toml(data), encoding="utf-8")
    try:
        loaded = load_space(str(path), 2)
    except SearchSpaceError as error:
        # The promised error type, whose message names the file.
        assert str(path) in str(error)
        return
    # Loaded: then it really is usable. Every core count up to the one validated gives distributions, and
    # every baseline is a valid setting.
    for cores in (1, 2):
        assert loaded.distributions(cores)
        for params in loaded.baselines(cores).values():
            Settings.from_params(params)


@FUZZ
@given(text=st.text(max_size=200) | st.binary(max_size=200).map(lambda b: b.decode("latin-1")))
def test_raw_garbage_space_file_is_one_line_and_nothing_is_written(
    tmp_path: Path, text: str, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "garbage.toml"
    path.write_text(text, encoding="utf-8", errors="surrogateescape")
    db = tmp_path / "never.db"
    db.unlink(missing_ok=True)
    argv = ["tune", "--model", "tiny", "--cores", "1", "--mode", "infer", "--trials", "1", "--space", str(path)]
    code = main([*argv, "--storage", f"sqlite:///{db}"], runner=ReplayRunner(never_measures))
    one_line_or_success(code, capsys.readouterr().err)
    if code == 1:
        # Refused before the storage was opened: no database file was created.
        assert not db.exists()


@FUZZ
@given(data=space)
def test_fuzzed_space_through_the_cli_never_writes_when_refused(
    tmp_path: Path, data: dict[str, Any], capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "fuzzed.toml"
    path.write_text(to_toml(data), encoding="utf-8")
    db = tmp_path / "fuzzed.db"
    db.unlink(missing_ok=True)  # hypothesis reuses tmp_path across examples
    argv = ["tune", "--model", "tiny", "--cores", "1", "--mode", "infer", "--trials", "2", "--space", str(path)]
    code = main([*argv, "--budget", "none", "--storage", f"sqlite:///{db}"], runner=ReplayRunner(never_measures))
    one_line_or_success(code, capsys.readouterr().err)
    if code == 1:
        # Refused before the storage was opened: no database file was created.
        assert not db.exists()


@FUZZ
@given(cores=st.text(max_size=30))
def test_fuzzed_core_lists(tmp_path: Path, cores: str, capsys: pytest.CaptureFixture[str]) -> None:
    db = tmp_path / "cores.db"
    db.unlink(missing_ok=True)
    argv = ["tune", "--model", "tiny", "--mode", "infer", "--trials", "1", "--cores", cores]
    code = main([*argv, "--storage", f"sqlite:///{db}"], runner=ReplayRunner(never_measures))
    one_line_or_success(code, capsys.readouterr().err)
    if code == 1:
        assert not db.exists()


@FUZZ
@given(url=st.text(max_size=60) | st.sampled_from(["postgresql://", "sqlite://", "mysql://x@/y", "sqlite:///"]))
def test_fuzzed_storage_urls(url: str, capsys: pytest.CaptureFixture[str]) -> None:
    # `show` opens without creating: a bad URL is one line, a missing database is one line.
    code = main(["show", "--storage", url])
    one_line_or_success(code, capsys.readouterr().err)


@FUZZ
@given(text=st.text(max_size=60) | st.lists(st.sampled_from([*KNOB_NAMES, "=", ",", ";", "1", "x"])).map("".join))
def test_fuzzed_settings_strings(tmp_path: Path, text: str, capsys: pytest.CaptureFixture[str]) -> None:
    with contextlib.suppress(TunerError):  # a typed, explained refusal, or valid settings
        Settings.parse(text)
    db = tmp_path / "b.db"
    argv = ["benchmark", "--model", "tiny", "--cores", "1", "--mode", "infer", "--timed", "1", "--warmup", "0"]
    code = main([*argv, "--settings", text, "--storage", f"sqlite:///{db}"], runner=ReplayRunner(never_measures))
    one_line_or_success(code, capsys.readouterr().err)


TRIAL_ATTRS = ["measurement", "trial_seconds", "disturbance", "disturbed_attempts", "baseline", "owner",
               "fail_reason", "fail_message", "skip_reason", "pruned", "stderr_tail", "attempts"]  # fmt: skip
attrs = st.dictionaries(st.sampled_from(TRIAL_ATTRS) | odd_text, values, max_size=5)


@pytest.fixture(scope="module")
def tuned_db(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("shared") / "genuine.db"
    runner = ReplayRunner(never_measures)
    args = ["tune", "--model", "tiny", "--cores", "1", "--mode", "infer", "--trials", "4", "--budget", "none"]
    assert main([*args, "--storage", f"sqlite:///{path}"], runner=runner) == 0
    return path


@settings(max_examples=20, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(complete=attrs, failed=attrs)
def test_a_shared_study_with_fuzzed_trial_attributes_breaks_no_reader(
    tuned_db: Path, tmp_path: Path, complete: dict[str, Any], failed: dict[str, Any]
) -> None:
    import shutil

    import optuna

    path = tmp_path / "shared.db"
    shutil.copy(tuned_db, path)
    url = f"sqlite:///{path}"
    study = optuna.load_study(study_name=optuna.get_all_study_names(url)[0], storage=url)
    genuine = study.get_trials(states=(optuna.trial.TrialState.COMPLETE,))[0]
    # Another worker on a shared PostgreSQL study writes trials whose attributes are anything at all.
    kinds = ((optuna.trial.TrialState.COMPLETE, complete), (optuna.trial.TrialState.FAIL, failed))
    for state, written in kinds:
        study.add_trial(
            optuna.trial.create_trial(
                state=state,
                params=genuine.params,
                distributions=genuine.distributions,
                value=genuine.value if state == optuna.trial.TrialState.COMPLETE else None,
                user_attrs=written,
            )
        )
    # Readers skip what they cannot read in such a trial and show the genuine ones: show, its JSON, the
    # report and recommend all work; a resumed tune searches on (its cost model, skips and orphan checks
    # read every trial) and stores its new trials.
    tune = ["tune", "--model", "tiny", "--cores", "1", "--mode", "infer", "--trials", "6", "--budget", "none"]
    for command in (["show"], ["show", "--format", "json"], ["report", "--output", str(tmp_path / "r.html")],
                    ["recommend", "--model", "tiny", "--cores", "1", "--mode", "infer"], tune):  # fmt: skip
        with contextlib.redirect_stderr(io.StringIO()) as stream, contextlib.redirect_stdout(io.StringIO()):
            code = main([*command, "--storage", url], runner=ReplayRunner(never_measures))
        assert code == 0, (command, stream.getvalue()[-2000:])
