"""The CLI with a replaying runner: tune then show, and bad input as one line and exit 1."""

from __future__ import annotations

import argparse
import json
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import optuna
import pytest
from optuna.trial import TrialState

from tests.helpers import one_error_line
from tuner import benchmark
from tuner.cli import build_parser, main, parse_duration
from tuner.errors import TunerError, UsageError, WorkerCrashed, WorkerExited
from tuner.replay import ReplayRunner
from tuner.runner import TrialSpec
from tuner.storage import open_storage

TINY = ["tune", "--model", "tiny", "--cores", "1", "--mode", "infer", "--trials", "6"]


def fake_runner() -> ReplayRunner:
    return ReplayRunner.from_rates(lambda spec: 900.0 + 100 * spec.settings.inter_op, noise=0.02)


def test_tune_then_show_json(storage_url: str, capsys: pytest.CaptureFixture[str]) -> None:
    assert main([*TINY, "--storage", storage_url], runner=fake_runner()) == 0
    table = capsys.readouterr().out
    # The summary table names both baselines and the tuned result.
    assert "tf-default" in table and "heuristic" in table and "tiny" in table
    assert main(["show", "--storage", storage_url, "--json"]) == 0
    studies = json.loads(capsys.readouterr().out)
    # One study, with at least the requested complete trials and a stored verdict.
    assert len(studies) == 1
    assert studies[0]["trials"]["complete"] >= 6
    assert studies[0]["verdict"]["recommended_params"] is not None
    assert studies[0]["cores"] == 1 and studies[0]["mode"] == "infer"


def test_show_on_storage_without_studies_says_so(storage_url: str, capsys: pytest.CaptureFixture[str]) -> None:
    open_storage(storage_url)
    assert main(["show", "--storage", storage_url]) == 0
    # An existing storage with no tuner study is not an error: it says there is nothing yet.
    assert "no tuner studies" in capsys.readouterr().out


def test_malformed_space_is_one_line_and_nothing_is_written(
    tmp_path: Path, storage_url: str, capsys: pytest.CaptureFixture[str]
) -> None:
    bad = tmp_path / "bad.toml"
    bad.write_text('[knobs.intra_op]\ntype = "int"\nlow = 4\nhigh = 1\n')
    assert main([*TINY, "--space", str(bad), "--storage", storage_url], runner=fake_runner()) == 1
    line = one_error_line(capsys.readouterr().err)
    # The line names the file and the key at fault.
    assert str(bad) in line and "knobs.intra_op" in line
    # The storage was never opened, so no database was created.
    assert not Path(storage_url.removeprefix("sqlite:///")).exists()


def test_a_space_with_a_fraction_is_one_line(
    tmp_path: Path, storage_url: str, capsys: pytest.CaptureFixture[str]
) -> None:
    space = tmp_path / "space.toml"
    space.write_text('[knobs.intra_op]\ntype = "int"\nlow = 0.5\nhigh = 2\n')
    for command in ("tune", "benchmark"):
        argv = [command, *TINY[1:7], "--space", str(space), "--storage", storage_url]
        assert main(argv, runner=fake_runner()) == 1
        # TOML reads 0.5 as a float: one line calls it what it is (it said "not a number"), for tune and
        # benchmark alike, naming the file and key; nothing stored.
        line = one_error_line(capsys.readouterr().err)
        assert f"{space}: knobs.intra_op.low: 0.5 is not a whole number" in line
        assert not Path(storage_url.removeprefix("sqlite:///")).exists()


def test_a_space_without_a_tf_default_baseline_is_refused_before_any_trial(
    tmp_path: Path, storage_url: str, capsys: pytest.CaptureFixture[str]
) -> None:
    space = tmp_path / "space.toml"
    space.write_text('[knobs.intra_op]\ntype = "int"\nlow = 1\nhigh = 2\n')
    calls: list[TrialSpec] = []
    runner = ReplayRunner(lambda spec, call: calls.append(spec) or [0.01] * 4)
    assert main([*TINY, "--space", str(space), "--storage", storage_url], runner=runner) == 1
    # Confirmation compares with tf-default: without it the verdict could never be made, so the space is
    # refused in one line, before the probe or any trial (it used to fail after the whole search).
    assert "no [baselines.tf-default] at 1 core" in one_error_line(capsys.readouterr().err)
    assert calls == [] and not Path(storage_url.removeprefix("sqlite:///")).exists()
    # A search alone confirms nothing, so it needs no tf-default (the run that confirms it is checked then).
    assert main([*TINY, "--no-confirm", "--space", str(space), "--storage", storage_url], runner=runner) == 0


@pytest.mark.parametrize(
    ("args", "expected"),
    [
        (["tune", "--cores", "4096"], "4096 cores asked for"),
        (["tune", "--cores", "1,x"], "'x' is not a positive core count"),
        (["tune", "--model", "vgg"], "--model: unknown model 'vgg'; known: resnet50"),
        (["tune", "--mode", "fly"], "unknown mode 'fly'"),
        (["tune", "--budget", "soon"], "'soon' is not a duration"),
        (["tune", "--trials", "0"], "argument --trials: '0' is not a whole number from 1 to 100000"),
        (["tune", "--storage", "nosuchdb://x", "--cores", "1"], "cannot open storage nosuchdb://x"),
        (["show", "--storage", "sqlite:////nonexistent/dir/x.db"], "no storage at"),
        (["show", "--storage", "not a url"], "is not a database URL"),
        (["tune", "--space", "/nonexistent/space.toml", "--cores", "1"], "no such search-space file"),
    ],
)
def test_bad_input_is_one_line_and_exit_1(args: list[str], expected: str, capsys: pytest.CaptureFixture[str]) -> None:
    # Every kind of bad input ends the same way: exit code 1 and one line saying what is wrong.
    assert main(args, runner=fake_runner()) == 1
    assert expected in one_error_line(capsys.readouterr().err)


def test_storage_password_is_never_printed(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["show", "--storage", "postgresql://user:hunter2@127.0.0.1:1/db"]) == 1
    err = capsys.readouterr().err
    # Credentials in a storage URL are masked in every message.
    assert "hunter2" not in err and "***" in err


def test_storage_in_a_folder_that_cannot_be_made(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("not a folder")
    url = f"sqlite:///{blocker / 'sub' / 'x.db'}"
    assert main([*TINY, "--storage", url], runner=fake_runner()) == 1
    # The folder for the SQLite file cannot be created under a regular file: one line naming it.
    assert "cannot create folder" in one_error_line(capsys.readouterr().err)


def test_debug_shows_the_traceback() -> None:
    # With --debug the typed error propagates, so a developer sees where it came from.
    with pytest.raises(UsageError):
        main(["--debug", "tune", "--cores", "0"], runner=fake_runner())


def test_runtime_that_cannot_start_fails_at_the_probe(storage_url: str, capsys: pytest.CaptureFixture[str]) -> None:
    def script(spec: TrialSpec, call: int) -> BaseException:
        return WorkerExited("worker exited with status 1", "ModuleNotFoundError: No module named 'tensorflow'")

    assert main([*TINY, "--storage", storage_url], runner=ReplayRunner(script)) == 1
    line = one_error_line(capsys.readouterr().err.splitlines()[-1])
    # The one-trial probe fails before any study starts, and the line carries the worker's last stderr line.
    assert "probe of runtime tensorflow failed" in line and "No module named 'tensorflow'" in line


def test_crashing_trials_end_with_one_line(storage_url: str, capsys: pytest.CaptureFixture[str]) -> None:
    def script(spec: TrialSpec, call: int) -> list[float] | BaseException:
        return [0.01] if call == 0 else WorkerCrashed("worker killed by SIGSEGV", "Segmentation fault")

    assert main([*TINY, "--storage", storage_url], runner=ReplayRunner(script)) == 1
    # The probe passed, then every trial crashed: the study stops after three failures with the reason.
    assert "3 trials in a row failed; last: crashed" in one_error_line(capsys.readouterr().err.splitlines()[-1])


def test_parse_duration() -> None:
    # Durations read as a person writes them.
    assert parse_duration("90s") == 90 and parse_duration("50m") == 3000 and parse_duration("1h30m") == 5400
    assert parse_duration("45") == 45


def test_openmp_knobs_on_stock_tensorflow_are_taken_out_with_the_reason(
    storage_url: str, capsys: pytest.CaptureFixture[str]
) -> None:
    runner = ReplayRunner.from_rates(lambda spec: 900.0 + 100 * spec.settings.inter_op, noise=0.02)
    runner.extra_facts = {"openmp": None}  # the probe reads back that no OpenMP library was loaded
    args = [*TINY, "--trials", "6", "--space", "intel-tensorflow", "--storage", storage_url]
    assert main(args, runner=runner) == 0
    err = capsys.readouterr().err
    # Searching OMP_*/KMP_* where they do nothing would only fit noise: each is taken out once, with the
    # reason and the override, and the study goes on with the knobs that act.
    for knob in ("OMP_NUM_THREADS", "KMP_BLOCKTIME", "KMP_AFFINITY"):
        assert err.count(f"{knob} taken out: this runtime's process loads no OpenMP library") == 1
        assert f"--allow-inert {knob}" in err
    # No trial set them, and the study records what was taken out.
    assert not any(dict(call.settings.env_knobs).keys() & {"OMP_NUM_THREADS", "KMP_BLOCKTIME"} for call in runner.calls)
    study = optuna.load_study(study_name=optuna.get_all_study_names(storage_url)[0], storage=storage_url)
    assert len(study.user_attrs["runnable"]["excluded"]) == 3


def test_allow_inert_records_the_knobs_and_show_prints_importances(
    storage_url: str, capsys: pytest.CaptureFixture[str]
) -> None:
    inert = ["--allow-inert", "OMP_NUM_THREADS", "--allow-inert", "KMP_BLOCKTIME", "--allow-inert", "KMP_AFFINITY"]
    args = [*TINY, "--trials", "8", "--space", "intel-tensorflow", *inert, "--storage", storage_url]
    assert main(args, runner=fake_runner()) == 0
    capsys.readouterr()
    assert main(["show", "--storage", storage_url, "--json"]) == 0
    study = json.loads(capsys.readouterr().out)[0]
    # The override is recorded on the study, so nobody mistakes those knobs' importances for real effects.
    assert sorted(study["inert_knobs"]) == ["KMP_AFFINITY", "KMP_BLOCKTIME", "OMP_NUM_THREADS"]
    # Importances were computed after the study and cover the knobs that varied, summing to 1.
    assert set(study["importances"]) <= {"intra_op", "inter_op", "data_format", *study["inert_knobs"]}
    assert abs(sum(study["importances"].values()) - 1.0) < 1e-6
    assert main(["show", "--storage", storage_url]) == 0
    assert "What mattered" in capsys.readouterr().out


def test_env_create_for_own_environment_runtime_is_one_line(capsys: pytest.CaptureFixture[str]) -> None:
    # Stock TensorFlow runs in the tuner's own environment: there is nothing to create, and it says so.
    assert main(["env", "create", "tensorflow"]) == 1
    assert "nothing to create" in one_error_line(capsys.readouterr().err)


def test_env_list_names_every_runtime(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["env", "list"]) == 0
    out = capsys.readouterr().out
    names = [line.split()[0] for line in out.splitlines() if line.strip()]
    # Each runtime has exactly one line, which names it first, then its environment or how to create it.
    assert sorted(names) == ["intel-tensorflow", "tensorflow", "tensorflow-eigen", "tensorflow-gpu"]


RUN = ["run", "--model", "tiny", "--runtimes", "tensorflow,tensorflow-eigen", "--cores", "1", "--budget", "5m"]


def test_run_prints_the_table_then_table_rereads_it_in_every_format(
    tmp_path: Path, storage_url: str, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main([*RUN, "--storage", storage_url], runner=fake_runner()) == 0
    out = capsys.readouterr().out
    # The main job ends with the table: one row per runtime x mode, then the reference's columns; its one
    # model is named once under the table (a table of several models names each row's first).
    rows = [line for line in out.splitlines() if line.startswith("| CPU (")]
    assert len(rows) == 4, out
    assert out.startswith("| runtime ") and "images/sec (ms/image)" in out and "- model: tiny (every row)" in out
    assert "no optimisation" in out and "CPU (oneDNN)" in out
    # `tuner table` reads the same records back without measuring (no runner is given).
    assert main(["table", "--storage", storage_url]) == 0
    assert [line for line in capsys.readouterr().out.splitlines() if line.startswith("| CPU (")] == rows
    csv_path, html_path = tmp_path / "t.csv", tmp_path / "t.html"
    assert main(["table", "--storage", storage_url, "--format", "csv", "--output", str(csv_path)]) == 0
    assert main(["table", "--storage", storage_url, "--format", "html", "--output", str(html_path)]) == 0
    # CSV: a header, four measured rows, and the GPU rows (1 and 2 GPUs, train and infer) skipped with the
    # reason in the note column; HTML: a table element. Nothing partial is left beside them.
    lines = csv_path.read_text().strip().splitlines()
    assert len([line for line in lines if line.startswith("tiny,CPU (")]) == 4
    skipped = [line for line in lines if ",skipped," in line]
    assert len(skipped) == 4 and all("GPU [tensorflow-gpu]" in line and "sees 0 GPUs" in line for line in skipped)
    assert "<table" in html_path.read_text()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["studies.db", "t.csv", "t.html"]


def test_benchmark_gpu_without_a_gpu_skips_with_the_reason_and_succeeds(
    storage_url: str, capsys: pytest.CaptureFixture[str]
) -> None:
    argv = ["benchmark", "--model", "tiny", "--device", "gpu", "--gpus", "1,2", "--cores", "1", "--mode", "train"]
    assert main([*argv, "--storage", storage_url], runner=fake_runner()) == 0
    out = capsys.readouterr().out
    # One line per GPU count, each saying why it was skipped; no GPU measurement was attempted.
    skipped = [line for line in out.splitlines() if "skipped" in line]
    assert len(skipped) == 2 and all("sees 0 GPU" in line for line in skipped)
    # The table lists the skipped targets as notes.
    assert main(["table", "--storage", storage_url]) == 0
    assert "skipped" in capsys.readouterr().out


def test_benchmark_named_settings_and_a_settings_string(storage_url: str, capsys: pytest.CaptureFixture[str]) -> None:
    runner = fake_runner()
    argv = ["benchmark", "--model", "tiny", "--cores", "1", "--mode", "infer", "--warmup", "1", "--timed", "5"]
    argv += ["--rounds", "2", "--settings", "tf-default", "--settings", "intra_op=1;inter_op=2"]
    assert main([*argv, "--storage", storage_url], runner=runner) == 0
    out = capsys.readouterr().out
    runs = [c for c in runner.calls if not c.probe]  # the runtime's one-step probe comes first
    # Two settings x two interleaved rounds, each run of 1 warm-up + 5 timed batches.
    assert len(runs) == 4 and all(c.policy.timed == 5 and c.policy.warmup == 1 for c in runs)
    assert [c.settings.inter_op for c in runs] == [0, 2, 2, 0]
    assert "tf-default:" in out and "custom intra_op=1;inter_op=2:" in out


@pytest.mark.parametrize(
    ("argv", "expected"),
    [
        (["benchmark", "--settings", "tuned", "--cores", "1"], "no study"),
        (["benchmark", "--settings", "intra_op=banana", "--cores", "1"], "intra_op"),
        (["benchmark", "--cores", "999"], "cores"),
        (["benchmark", "--model", "vgg"], "vgg"),
        (["table", "--format", "xlsx"], "--format"),
        (["run", "--runtimes", "nonesuch"], "nonesuch"),
        (["run", "--budget", "soon"], "budget"),
    ],
)
def test_bad_benchmark_table_and_run_input_is_one_line(
    argv: list[str], expected: str, storage_url: str, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main([*argv, "--storage", storage_url], runner=fake_runner()) == 1
    # One line naming what is wrong, and no measurement was taken.
    assert expected in one_error_line(capsys.readouterr().err)


def test_table_on_a_missing_storage_is_one_line_and_creates_nothing(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    url = f"sqlite:///{tmp_path / 'none.db'}"
    assert main(["table", "--storage", url]) == 1
    assert "does not exist" in one_error_line(capsys.readouterr().err)
    assert list(tmp_path.iterdir()) == []


def test_interrupted_benchmark_keeps_its_finished_rounds_marked_partial(
    storage_url: str, capsys: pytest.CaptureFixture[str]
) -> None:
    def script(spec: TrialSpec, call: int) -> list[float] | BaseException:
        # The probe, then two settings, order rotated each round (A B, B A): the fourth run (tf-default) is
        # interrupted.
        return KeyboardInterrupt() if call == 4 else [0.01] * (spec.policy.warmup + spec.policy.timed)

    argv = ["benchmark", "--model", "tiny", "--cores", "1", "--mode", "infer", "--warmup", "1", "--timed", "3"]
    argv += ["--rounds", "3", "--settings", "tf-default", "--settings", "heuristic", "--storage", storage_url]
    assert main(argv, runner=ReplayRunner(script)) == 130
    # The line says what a benchmark keeps, not a search's "run the same command to resume" (a rerun is a new
    # run, and a benchmark has no trials).
    err = capsys.readouterr().err.splitlines()[-1]
    assert err == "tuner: interrupted; any rounds finished are stored as partial records; run it again for full ones"
    assert main(["table", "--storage", storage_url, "--format", "csv"]) == 0
    out = capsys.readouterr().out
    # The finished runs are stored (one of tf-default, two of heuristic) and the row says it was cut short.
    assert "tf-default: 1 of 3 rounds (cut short)" in out and "heuristic: 2 of 3 rounds (cut short)" in out


def test_signals_at_random_moments_never_lose_a_trial_and_the_command_resumes(tmp_path: Path) -> None:
    child = Path(__file__).parent / "children" / "fake_tune.py"
    rng = random.Random(20261129)  # fixed seed: the same moments every run

    def counts(db: Path) -> dict[TrialState, int]:
        found: dict[TrialState, int] = {}
        if db.exists():
            storage = open_storage(f"sqlite:///{db}", create=False)  # retries while the schema is being made
            for study in storage.get_all_studies():
                for trial in storage.get_all_trials(study._study_id, deepcopy=False):
                    found[trial.state] = found.get(trial.state, 0) + 1
        return found

    def verdicts(db: Path) -> int:
        storage = open_storage(f"sqlite:///{db}", create=False)
        return sum("verdict" in study.user_attrs for study in storage.get_all_studies())

    for attempt in range(3):  # SIGTERM, SIGINT, SIGTERM, at moments drawn from the seed
        db = tmp_path / f"s{attempt}.db"
        cmd = [sys.executable, str(child), *TINY[:-1], "12", "--rounds", "3", "--storage", f"sqlite:///{db}"]
        process = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        time.sleep(rng.uniform(0.3, 3.0))  # start-up, a trial, confirmation or a write: wherever it lands
        before = counts(db).get(TrialState.COMPLETE, 0)
        process.send_signal(signal.SIGINT if attempt % 2 else signal.SIGTERM)
        _, err = process.communicate(timeout=60)
        after = counts(db)
        # Exit 130, or 0 if it had already finished, or death by the signal itself when it landed outside the
        # tool's main (Python still importing, before anything was written; or exiting, after the verdict).
        # Either way the storage opens, every finished trial is still there, and nothing is left RUNNING.
        assert process.returncode in (0, 130, -signal.SIGINT, -signal.SIGTERM), err
        if process.returncode in (0, 130):
            assert "Traceback" not in err
        else:
            assert before == 0 or verdicts(db) == 1
        assert after.get(TrialState.COMPLETE, 0) >= before
        assert after.get(TrialState.RUNNING, 0) == 0
        # The same command, left alone, resumes and finishes with its trials and a verdict.
        done = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
        assert done.returncode == 0, done.stderr
        assert counts(db).get(TrialState.COMPLETE, 0) >= 12 and verdicts(db) == 1


def test_inference_bursts_warm_up_once_and_training_twice(storage_url: str) -> None:
    runner = fake_runner()
    argv = ["tune", "--model", "tiny", "--cores", "1", "--mode", "train,infer", "--trials", "4", "--rounds", "3"]
    assert main([*argv, "--storage", storage_url], runner=runner) == 0
    storage = open_storage(storage_url, create=False)
    policies = {s.user_attrs["tuner"]["mode"]: s.user_attrs["tuner"]["policy"] for s in storage.get_all_studies()}
    # The stored policy says what each study ran: one warm-up step after the trace for inference (its next step
    # is already settled), two for training; the same five timed steps.
    assert policies["infer"]["warmup"] == 1 and policies["train"]["warmup"] == 2
    assert policies["infer"]["timed"] == policies["train"]["timed"] == 5
    # Every search and confirmation run used its mode's warm-up (the one-step runtime probe has none).
    runs = {(spec.workload.mode, spec.policy.warmup) for spec in runner.calls if spec.policy.name != "probe"}
    assert runs == {("infer", 1), ("train", 2)}


def test_refused_settings_string_creates_no_storage(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    db = tmp_path / "never.db"
    argv = ["benchmark", "--model", "tiny", "--cores", "1", "--settings", "intra_op=2;KMP_AFFINITY=$(id)"]
    assert main([*argv, "--storage", f"sqlite:///{db}"], runner=fake_runner()) == 1
    # One line naming the bad value, and no storage file was created for a command that did nothing.
    assert "KMP_AFFINITY" in one_error_line(capsys.readouterr().err)
    assert not db.exists()


def test_bf16_is_taken_out_without_the_opt_in_and_recorded_with_it(
    storage_url: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    args = [*TINY, "--trials", "6", "--storage", storage_url]
    assert main(args, runner=fake_runner()) == 0
    # Without --allow-precision the study says bf16 is out and why, once.
    assert capsys.readouterr().err.count("precision=bf16 taken out: bf16 changes the model's numerics") == 1
    other = f"sqlite:///{tmp_path}/other.db"
    argv = [*TINY, "--trials", "6", "--storage", other, "--allow-precision", "bf16", "--force-precision"]
    assert main(argv, runner=fake_runner()) == 0
    # Opted in (and forced, so it holds on any CPU): not taken out, and the study records the opt-in.
    assert "precision=bf16 taken out" not in capsys.readouterr().err
    study = optuna.load_study(study_name=optuna.get_all_study_names(other)[0], storage=other)
    assert study.user_attrs["runnable"]["capabilities"]["precisions"] == ["fp32", "bf16"]


def test_every_option_has_help_and_shows_its_default(capsys: pytest.CaptureFixture[str]) -> None:
    parser = build_parser()
    subcommands = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction)).choices
    for name, sub in subcommands.items():
        for action in sub._actions:
            if not action.option_strings or action.help == argparse.SUPPRESS or action.dest == "help":
                continue
            # A user reading --help learns what each option does, and its default where it has one.
            assert action.help, f"{name} {action.option_strings[0]} has no help"
            if isinstance(action.default, (int, str)) and not isinstance(action.default, bool):
                assert "default" in action.help, f"{name} {action.option_strings[0]}: default not shown"


def test_bare_tuner_prints_help_and_debug_works_after_the_subcommand(
    storage_url: str, capsys: pytest.CaptureFixture[str]
) -> None:
    # Bare `tuner`: the help, not an error.
    assert main([]) == 0 and "usage: tuner" in capsys.readouterr().out
    # --debug after the subcommand is accepted (errors suggest it there): the error is raised, not one line.
    with pytest.raises(TunerError, match="--cores: 999 cores asked for"):
        main(["tune", "--model", "tiny", "--cores", "999", "--storage", storage_url, "--debug"])


def test_tuner_storage_is_the_default_storage(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    url = f"sqlite:///{tmp_path}/from-env.db"
    monkeypatch.setenv("TUNER_STORAGE", url)
    open_storage(url)
    # Without --storage, the storage named by TUNER_STORAGE is the one read.
    assert main(["show"]) == 0
    assert "no tuner studies" in capsys.readouterr().out


def test_confirm_rounds_are_not_checked_for_a_search_alone(storage_url: str) -> None:
    argv = [*TINY, "--no-confirm", "--confirm-rounds", "2", "--storage", storage_url]
    # --no-confirm runs no confirmation, so its rounds are never used: fewer than three is no error there.
    assert main(argv, runner=fake_runner()) == 0
    (study,) = open_storage(storage_url, create=False).get_all_studies()
    assert "verdict" not in study.user_attrs


@pytest.mark.parametrize(
    ("argv", "words"),
    [
        (["benchmark", "--batch-size", "0"], "argument --batch-size: '0' is not a whole number from 1 to 1000000"),
        (["benchmark", "--timed", "0"], "argument --timed: '0' is not a whole number from 1 to 100000"),
        (["tune", "--candidates", "0"], "argument --candidates: '0' is not a whole number from 1 to 1000"),
        # More candidates than trials: the trials include the baselines, so fewer settings are ever sampled.
        (["tune", "--trials", "3", "--candidates", "4"], "--candidates 4: more than --trials 3, which include the"),
        # A negative seed: Optuna's samplers refuse one, so it was an "unexpected ValueError" after the probe.
        (["tune", "--seed", "-1"], "argument --seed: '-1' is not a whole number from 0 to 4294967295"),
        (["run", "--seed", "-1"], "argument --seed: '-1' is not a whole number from 0 to 4294967295"),
        # Past what numpy's generators take: the importances failed after the search.
        (["tune", "--seed", "4294967296"], "argument --seed: '4294967296' is not a whole number from 0 to"),
        # More timed batches or rounds than a run can hold: refused before the hours they would take.
        (["benchmark", "--timed", "999999999999"], "argument --timed: '999999999999' is not a whole number"),
        (["benchmark", "--rounds", "99999999"], "argument --rounds: '99999999' is not a whole number from 1 to 1000"),
        # Fewer confirmation rounds than a clear verdict needs: refused, not silently raised to three.
        (["tune", "--confirm-rounds", "2"], "--confirm-rounds 2: confirmation needs at least 3 interleaved rounds"),
        (["benchmark", "--device", "gpu", "--gpu-counts", "0"], "--gpu-counts: '0' is not a list of GPU counts"),
        (["env", "list", "extra"], "tuner env list takes no runtime name"),
        (
            ["run", "--runtimes", "tensorflow,tensorflow", "--plan"],
            "--runtimes: 'tensorflow,tensorflow' names a runtime twice",
        ),
        (["run", "--runtimes", "", "--plan"], "unknown runtime ''"),  # not every runtime, as it was
        (["run", "--budget", "99999999999999999999h", "--plan"], "is more than 8760h; use none for no limit"),
        (["exec", "--cores", "0", "--", "true"], "--cores: 0 asked for"),  # not every core, as it was
        (["benchmark", "--settings", ""], "--settings: '' names no setting"),  # not tf-default as "custom "
        (["tune", "--allow-inert", "KMP_BLOKTIME"], "--allow-inert: unknown knob 'KMP_BLOKTIME'"),  # a typo
        (["tune", "--force-precision"], "--force-precision searches an allowed precision: add --allow-precision"),
        (["run", "--force-precision", "--plan"], "--force-precision searches an allowed precision"),
        (["tune", "--python", "/nonexistent/python"], "--python: /nonexistent/python is not an executable file"),
        (["benchmark", "--settings", " ; "], "--settings: ' ; ' names no setting"),
        # Given but empty (an unset shell variable): never the working folder, nor "the model's own shape".
        (["tune", "--model", ""], "--model is empty; known: resnet50"),
        (["exec", "--model", "", "--", "true"], "--model is empty"),
        (["tune", "--input-shape", ""], "--input-shape is empty"),
    ],
)
def test_bad_counts_are_refused_before_any_work_naming_the_flag(
    argv: list[str], words: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    storage = tmp_path / "never.db"
    extra = [] if argv[0] == "env" else ["--storage", f"sqlite:///{storage}"]
    assert main([*argv, *extra], runner=fake_runner()) == 1
    # One line naming the flag and the value; nothing measured, no storage made.
    assert words in one_error_line(capsys.readouterr().err)
    assert not storage.exists()


def test_a_bare_budget_is_seconds_and_the_start_line_says_so(
    storage_url: str, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main([*TINY, "--budget", "900", "--storage", storage_url], runner=fake_runner()) == 0
    # A bare number is seconds (as timeout(1) reads it); the start line says what it was read as, so 900
    # meant as minutes is seen before the study ends early.
    first = capsys.readouterr().err.splitlines()[0]
    assert first.endswith(", budget 15m"), first
    # A last number without its unit after hours or minutes is refused, not read as seconds.
    assert main([*TINY, "--budget", "1h30", "--storage", storage_url], runner=fake_runner()) == 1
    assert "'1h30' leaves the last number's unit out" in one_error_line(capsys.readouterr().err)
    assert parse_duration("1h30m") == 5400 and parse_duration("1h30s") == 3630 and parse_duration("90") == 90


def test_a_signal_during_the_interpreters_teardown_keeps_the_commands_status(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 's.db'}"
    open_storage(url)
    # An exit hook stands for the half second of teardown after a command with TensorFlow or plotly loaded:
    # it sends the process a SIGTERM, then a SIGINT, as an impatient user or a job runner would.
    code = (
        "import atexit, os, signal, sys, time\n"
        "def late():\n"
        "    os.kill(os.getpid(), signal.SIGTERM); time.sleep(0.5)\n"
        "    os.kill(os.getpid(), signal.SIGINT); time.sleep(0.5)\n"
        "atexit.register(late)\n"
        "from tuner.cli import main\n"
        "sys.exit(main())\n"
    )
    done = subprocess.run([sys.executable, "-c", code, "show", "--storage", url], capture_output=True, text=True)
    # show had finished and said so: the process ends with its status (0), not killed by the signal, and
    # its output was not lost.
    assert done.returncode == 0, done.stderr
    assert "no tuner studies" in done.stdout


def test_a_killed_benchmark_keeps_the_rounds_it_measured(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    child = Path(__file__).parent / "children" / "fake_tune.py"
    url = f"sqlite:///{tmp_path / 'b.db'}"
    bench = ["benchmark", "--model", "tiny", "--cores", "1", "--mode", "infer", "--warmup", "1", "--timed", "3"]
    bench += ["--settings", "tf-default", "--settings", "heuristic", "--storage", url]
    process = subprocess.Popen(
        [sys.executable, str(child), *bench, "--rounds", "50"], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE
    )

    def pending_rounds() -> list[int]:
        if not (tmp_path / "b.db").exists():
            return []
        storage = open_storage(url, create=False)
        found = []
        for study in storage.get_all_studies():
            for trial in storage.get_all_trials(study._study_id, deepcopy=False, states=(TrialState.RUNNING,)):
                found.append(len(trial.user_attrs[benchmark.PENDING]["round_images_per_sec"]))
        return found

    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and not (len(pending_rounds()) == 2 and min(pending_rounds()) >= 2):
        time.sleep(0.1)
    process.kill()  # SIGKILL: no handler runs, nothing is stored on the way out
    process.communicate(timeout=30)
    kept = pending_rounds()
    assert len(kept) == 2 and min(kept) >= 2
    # The table reads the rounds the killed benchmark measured at once, each marked cut short.
    assert main(["table", "--storage", url, "--format", "csv"]) == 0
    out = capsys.readouterr().out
    assert out.count("of 50 rounds, its benchmark killed (cut short)") == 2
    # The next benchmark stores them as records (nothing is left running), then measures its own.
    assert main([*bench, "--rounds", "3"], runner=fake_runner()) == 0
    assert "stored 2 records of an earlier benchmark that was killed" in capsys.readouterr().err
    assert pending_rounds() == []
    records = benchmark.records(open_storage(url, create=False))
    killed = [r for r in records if "killed" in str(r.get("partial"))]
    assert sorted(len(r["round_images_per_sec"]) for r in killed) == sorted(kept)
    assert len(records) == 4
