"""`tuner benchmark`'s third default setting is what the study's verdict recommends, not its best sample."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import optuna
import pytest
from optuna.trial import TrialState

from tests.helpers import one_error_line
from tuner import benchmark
from tuner.benchmark import records
from tuner.cli import main
from tuner.errors import WorkerCrashed
from tuner.owner import identity
from tuner.replay import ReplayRunner
from tuner.runner import TrialSpec
from tuner.storage import open_storage

TUNE = ["tune", "--model", "tiny", "--cores", "1", "--mode", "infer", "--trials", "6", "--candidates", "1"]
BENCH = ["benchmark", "--model", "tiny", "--cores", "1", "--mode", "infer", "--warmup", "1", "--timed", "5"]


def measured_labels(storage_url: str) -> list[str]:
    return sorted(r["label"] for r in records(open_storage(storage_url)) if "skipped" not in r)


def tuned_with_a_clear_winner(storage_url: str) -> ReplayRunner:
    """A study tuned where more inter-op threads run much faster, far beyond the 1% noise, so that a sampled
    setting clearly wins; the runner, to benchmark with."""
    runner = ReplayRunner.from_rates(lambda spec: 900.0 + 300 * spec.settings.inter_op, noise=0.01)
    assert main([*TUNE, "--storage", storage_url], runner=runner) == 0
    return runner


def test_a_clear_winner_is_benchmarked_as_tuned_and_marked_recommended(
    storage_url: str, capsys: pytest.CaptureFixture[str]
) -> None:
    runner = tuned_with_a_clear_winner(storage_url)
    capsys.readouterr()
    (name,) = optuna.get_all_study_names(storage_url)
    study = optuna.load_study(study_name=name, storage=storage_url)
    sampled = [t for t in study.trials if t.state.name == "COMPLETE" and "baseline" not in t.user_attrs]
    # Another worker of a shared study adds a sampled trial after the verdict: not one "tuned" was chosen from.
    study.add_trial(optuna.trial.create_trial(params=sampled[0].params, distributions=sampled[0].distributions,
                                              value=1.0, user_attrs={}))  # fmt: skip
    assert main([*BENCH, "--storage", storage_url], runner=runner) == 0
    captured = capsys.readouterr()
    # The defaults: tf-default, the heuristic, and the recommended setting, which is the tuned one.
    assert measured_labels(storage_url) == ["heuristic", "tf-default", "tuned"]
    # The log says which setting "recommended" turned out to be, and every record carries it for the table.
    assert "recommended, by the verdict of tiny-infer-b32-" in captured.err and ": tuned [" in captured.err
    assert {r.get("recommended") for r in records(open_storage(storage_url))} == {"tuned"}
    # The tuned record says of how many sampled settings it is the best: the study's complete trials that are
    # no baseline when its verdict was confirmed (6 trials, some of them the baselines), the later one aside.
    # The baselines' records carry no count, as `tuner run`'s do not.
    assert 1 <= len(sampled) < 6
    counts = {r["label"]: r.get("sampled") for r in records(open_storage(storage_url))}
    assert counts == {"heuristic": None, "tf-default": None, "tuned": len(sampled)}


def test_a_kept_default_is_benchmarked_once_not_the_best_sample(
    storage_url: str, capsys: pytest.CaptureFixture[str]
) -> None:
    # Every setting runs alike (within 1% noise): no sampled setting clearly wins, the verdict keeps tf-default.
    runner = ReplayRunner.from_rates(lambda spec: 1000.0, noise=0.01)
    assert main([*TUNE, "--storage", storage_url], runner=runner) == 0
    capsys.readouterr()
    assert main([*BENCH, "--storage", storage_url], runner=runner) == 0
    captured = capsys.readouterr()
    # "recommended" is tf-default itself, measured once under its own name; the best sample is not benchmarked.
    assert measured_labels(storage_url) == ["heuristic", "tf-default"]
    assert ": tf-default [" in captured.err
    assert {r.get("recommended") for r in records(open_storage(storage_url))} == {"tf-default"}
    # `--settings tuned` still asks for the best sampled setting, by name.
    assert main([*BENCH, "--settings", "tuned", "--storage", storage_url], runner=runner) == 0
    assert "tuned" in measured_labels(storage_url)


def test_recommended_without_a_verdict_is_one_line(storage_url: str, capsys: pytest.CaptureFixture[str]) -> None:
    runner = ReplayRunner.from_rates(lambda spec: 1000.0)
    assert main([*BENCH, "--settings", "recommended", "--storage", storage_url], runner=runner) == 1
    # Asked for by name, a recommendation that does not exist is an error naming the flag and the remedy.
    assert "--settings recommended: study tiny-infer-b32-" in one_error_line(capsys.readouterr().err)
    # Left to the defaults, the same storage benchmarks tf-default and the heuristic and says why no more,
    # after saying that it probes the runtime (the storage was checked first: the error above is its only line).
    assert main([*BENCH, "--storage", storage_url], runner=runner) == 0
    err = capsys.readouterr().err
    assert "has no confirmed verdict yet" in err and "probing tensorflow: one short run" in err
    assert measured_labels(storage_url) == ["heuristic", "tf-default"]


def test_a_verdict_missing_at_one_count_fails_before_any_run(
    storage_url: str, capsys: pytest.CaptureFixture[str]
) -> None:
    runner = tuned_with_a_clear_winner(storage_url)
    capsys.readouterr()
    argv = [*BENCH, "--cores", "1,2", "--settings", "recommended", "--format", "json", "--storage", storage_url]
    assert main(argv, runner=runner) == 1
    out, err = capsys.readouterr()
    # Tuned at 1 core only: the 2-core study has no verdict, which is found before the probe and any run, so
    # the 1-core setting is not measured first only for the command to fail after it. The data is the empty
    # list of records stored, and the error is the only line.
    assert "--settings recommended: study tiny-infer-b32-" in one_error_line(err) and "-2c-" in err
    assert out.strip() == "[]" and records(open_storage(storage_url)) == []


def test_a_malformed_verdict_stops_only_what_needs_it(storage_url: str, capsys: pytest.CaptureFixture[str]) -> None:
    runner = tuned_with_a_clear_winner(storage_url)
    (name,) = optuna.get_all_study_names(storage_url)
    optuna.load_study(study_name=name, storage=storage_url).set_user_attr("verdict", {"bogus": 1})
    capsys.readouterr()
    # A study's verdict broken (a shared storage is untrusted input): a benchmark of named baselines does not
    # read it, and measures them ...
    assert main([*BENCH, "--settings", "tf-default", "--storage", storage_url], runner=runner) == 0
    assert measured_labels(storage_url) == ["tf-default"]
    capsys.readouterr()
    # ... while the recommendation, which needs it, is refused in one line naming the study.
    assert main([*BENCH, "--settings", "recommended", "--storage", storage_url], runner=runner) == 1
    assert name in one_error_line(capsys.readouterr().err)


def test_recommend_for_another_model_names_the_models_that_have_verdicts(
    storage_url: str, capsys: pytest.CaptureFixture[str]
) -> None:
    runner = ReplayRunner.from_rates(lambda spec: 1000.0, noise=0.01)
    assert main([*TUNE, "--storage", storage_url], runner=runner) == 0
    capsys.readouterr()
    assert main(["recommend", "--storage", storage_url]) == 1
    line = one_error_line(capsys.readouterr().err)
    # The README's tiny walkthrough leaves a verdict for tiny only: asked for resnet50 (the default), the error
    # says what exists and the flag that reaches it.
    assert "no confirmed verdict for resnet50" in line and "verdicts are stored for: --model tiny" in line


def test_tune_and_benchmark_print_json_data_on_stdout(storage_url: str, capsys: pytest.CaptureFixture[str]) -> None:
    import json

    runner = ReplayRunner.from_rates(lambda spec: 900.0 + 300 * spec.settings.inter_op, noise=0.01)
    assert main([*TUNE, "--format", "json", "--storage", storage_url], runner=runner) == 0
    captured = capsys.readouterr()
    (study,) = json.loads(captured.out)
    # stdout is the studies as data (show's keys), and the progress went to stderr.
    assert study["name"].startswith("tiny-infer-b32-") and study["verdict"]["recommended"].startswith("trial ")
    assert "studies in" in captured.err
    assert main([*BENCH, "--format", "json", "--storage", storage_url], runner=runner) == 0
    captured = capsys.readouterr()
    stored = json.loads(captured.out)
    # Every record the benchmark stored, as data: the three default settings, each with its figures.
    assert sorted(r["label"] for r in stored) == ["heuristic", "tf-default", "tuned"]
    assert all(r["images_per_sec"] > 0 for r in stored) and "images/sec" in captured.err


def test_instances_that_do_not_divide_the_cores_are_not_runnable_and_the_rest_is_measured(
    storage_url: str, capsys: pytest.CaptureFixture[str]
) -> None:
    runner = ReplayRunner.from_rates(lambda spec: 1000.0)
    argv = [*BENCH, "--settings", "instances=3", "--settings", "tf-default", "--storage", storage_url]
    # Three instances on one core cannot be pinned: never run (before, a fake runner measured it and the real
    # one failed at launch), stored as not runnable with why; tf-default is measured; exit 1 naming it.
    assert main(argv, runner=runner) == 1
    assert [spec for spec in runner.calls if spec.settings.instances > 1] == []
    assert measured_labels(storage_url) == ["tf-default"]
    last = capsys.readouterr().err.strip().splitlines()[-1]
    assert last.startswith("tuner: error: ") and "3 instances cannot share 1 core equally" in last


def _pending_trials(storage_url: str) -> list[optuna.trial.FrozenTrial]:
    storage = open_storage(storage_url, create=False)
    study = optuna.load_study(study_name=benchmark.BENCH_STUDY, storage=storage)
    return [t for t in study.get_trials(deepcopy=False) if benchmark.PENDING in t.user_attrs]


def benchmarked_once(storage_url: str) -> tuple[list[str], ReplayRunner, dict[str, Any]]:
    """A 3-round benchmark of tf-default run and stored: its command, runner and record, to run again."""
    argv = [*BENCH, "--rounds", "3", "--settings", "tf-default", "--storage", storage_url]
    runner = ReplayRunner.from_rates(lambda spec: 1000.0)
    assert main(argv, runner=runner) == 0
    (whole,) = records(open_storage(storage_url, create=False))
    return argv, runner, dict(whole)


def add_pending(storage: optuna.storages.BaseStorage, attrs: dict[str, Any]) -> None:
    """A RUNNING trial in the benchmark study with ``attrs``: a pending record as a benchmark leaves it."""
    trial = optuna.trial.create_trial(state=TrialState.RUNNING, user_attrs=attrs)
    storage.create_new_trial(storage.get_study_id_from_name(benchmark.BENCH_STUDY), template_trial=trial)


def test_a_setting_that_fails_after_a_round_leaves_no_record_of_it_and_exports_cleanly(
    storage_url: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    def heuristic_dies_in_round_two(spec: TrialSpec, call: int) -> list[float] | BaseException:
        heuristic = spec.settings.data_format == "NCHW"
        if heuristic:
            seen.append(call)
        if heuristic and len(seen) == 2:
            return WorkerCrashed("killed by SIGSEGV")
        return [0.01] * (spec.policy.warmup + spec.policy.timed)

    seen: list[int] = []
    argv = [*BENCH, "--rounds", "3", "--settings", "tf-default", "--settings", "heuristic", "--storage", storage_url]
    assert main(argv, runner=ReplayRunner(heuristic_dies_in_round_two)) == 1
    # The heuristic's first round is no record of it (it fails): only its failure is; tf-default's is whole.
    # Every pending copy is cleared once its trial is finished, and nothing stays running.
    kept = records(open_storage(storage_url, create=False))
    assert sorted((r["label"], "skipped" in r) for r in kept) == [("heuristic", True), ("tf-default", False)]
    trials = _pending_trials(storage_url)
    assert all(t.state != TrialState.RUNNING and t.user_attrs[benchmark.PENDING] is None for t in trials)
    # What is exported is records only, so another storage imports all of it (the closed copy was refused).
    out = tmp_path / "export.json"
    assert main(["export", "--output", str(out), "--storage", storage_url]) == 0
    target = f"sqlite:///{tmp_path / 'other.db'}"
    assert main(["import", str(out), "--storage", target]) == 0
    assert len(records(open_storage(target, create=False))) == 2


def test_a_pending_record_from_another_boot_is_kept_once_stale_and_a_forged_one_is_refused(
    storage_url: str, capsys: pytest.CaptureFixture[str]
) -> None:
    argv, runner, whole = benchmarked_once(storage_url)
    storage = open_storage(storage_url, create=False)
    old = {**whole, "partial": "2 of 3 rounds", "measured": "2026-01-01T00:00:00"}  # no zone: read as UTC
    # A benchmark killed by a power cut: its owner's boot is not this one, so nobody can tell from the process
    # whether it runs; its record has not been rewritten for months.
    rebooted = {**identity(), "boot_id": "another-boot", "pid": 1}
    forged = {**whole, "value": "abc"}  # a shared storage: a value no reader could use
    live = {**whole, "partial": "1 of 3 rounds"}  # this process's own: measuring now
    for record, owner in ((old, rebooted), (forged, {**identity(), "pid": 2**22 - 1}), (live, identity())):
        add_pending(storage, {benchmark.PENDING: record, "owner": owner})
    capsys.readouterr()
    assert main(argv, runner=runner) == 0
    err = capsys.readouterr().err
    # The stale one is stored as the cut-short record it is; the forged one is one warning line and closed
    # (it crashed every later benchmark); the live one is left to its process.
    assert "stored 1 records of an earlier benchmark that was killed" in err
    assert "value: must be a finite, positive number" in err
    partial = [r.get("partial") for r in records(open_storage(storage_url, create=False))]
    assert "2 of 3 rounds, its benchmark killed" in partial and "1 of 3 rounds" not in partial
    running = [t for t in _pending_trials(storage_url) if t.state == TrialState.RUNNING]
    assert [t.user_attrs[benchmark.PENDING]["partial"] for t in running] == ["1 of 3 rounds"]


def test_a_live_benchmark_is_never_taken_for_killed_and_a_record_cut_while_closing_is_kept(
    storage_url: str, capsys: pytest.CaptureFixture[str]
) -> None:
    argv, runner, whole = benchmarked_once(storage_url)
    storage = open_storage(storage_url, create=False)
    dead = {**identity(), "pid": 2**22 - 1}  # on this host, boot and namespace: known to be gone
    # This process, silent for 8 hours by its record's date (one long round): it is known to run, so its
    # record is neither read nor stored, however old (staleness is only for what cannot be told).
    add_pending(storage, {benchmark.PENDING: {**whole, "measured": "2000-01-01T00:00:00+00:00"}, "owner": identity()})
    # Killed while closing: its record written, the pending copy cleared, its state not yet set.
    add_pending(storage, {"record": {**whole, "partial": "2 of 3 rounds"}, benchmark.PENDING: None, "owner": dead})
    # Killed while closing with no record (its setting had failed): nothing to keep, closed.
    add_pending(storage, {benchmark.PENDING: None, "owner": dead})
    capsys.readouterr()
    assert main(argv, runner=runner) == 0
    assert "stored 1 records of an earlier benchmark that was killed" in capsys.readouterr().err
    trials = optuna.load_study(study_name=benchmark.BENCH_STUDY, storage=storage).get_trials(deepcopy=False)
    running = [t for t in trials if t.state == TrialState.RUNNING]
    # Only the live one is left running; the one cut while closing is a record, the empty one is closed.
    assert len(running) == 1 and running[0].user_attrs["owner"] == identity()
    assert [r.get("partial") for r in records(storage)].count("2 of 3 rounds") == 1
    assert len(records(storage)) == 3  # the first run's, the cut one's and the second run's


def test_a_precision_named_in_settings_is_measured_as_asked(
    storage_url: str, capsys: pytest.CaptureFixture[str]
) -> None:
    runner = ReplayRunner.from_rates(lambda spec: 2000.0 if spec.settings.precision == "bf16" else 1000.0, noise=0.01)
    argv = [*BENCH, "--settings", "tf-default", "--settings", "precision=bf16", "--storage", storage_url]
    assert main(argv, runner=runner) == 0
    # Naming bf16 is the opt-in that tune asks for with --allow-precision (a verdict of a study tuned with it
    # passes the same check): both settings are measured, and bf16 ran as bf16 (twice the rate here).
    assert measured_labels(storage_url) == ["custom precision=bf16", "tf-default"]
    rates = {r["label"]: r["images_per_sec"] for r in records(open_storage(storage_url))}
    assert rates["custom precision=bf16"] > 1.5 * rates["tf-default"]
    # Impossible settings are still refused by name: NCHW where oneDNN is forced off cannot run on a CPU.
    argv = [*BENCH, "--settings", "data_format=NCHW;onednn=false", "--storage", storage_url]
    assert main(argv, runner=runner) == 1
    last = capsys.readouterr().err.splitlines()[-1]
    assert last.startswith("tuner: error: 1 setting(s) could not be measured") and "NCHW needs oneDNN" in last
    # So is what the objective rules out, as tune does: a latency objective times one request at a time.
    argv = [*BENCH, "--cores", "2", "--objective", "latency", "--settings", "instances=2", "--storage", storage_url]
    assert main(argv, runner=runner) == 1
    assert "one request at a time" in capsys.readouterr().err.splitlines()[-1]
    # GPU rows measure a named precision as asked too.
    runner.tasks["devices"] = {"gpus": 1}
    gpu = [*BENCH, "--device", "gpu", "--timed", "3", "--settings", "precision=bf16", "--storage", storage_url]
    assert main(gpu, runner=runner) == 0, capsys.readouterr().err
    gpu_rows = [r["label"] for r in records(open_storage(storage_url)) if r.get("device") == "gpu"]
    assert gpu_rows == ["custom precision=bf16"]


def test_a_named_bf16_that_runs_without_bf16_instructions_is_measured_and_marked_emulated(
    storage_url: str, capsys: pytest.CaptureFixture[str]
) -> None:
    # A CPU with bf16 instructions where TensorFlow leaves oneDNN off by default (a Neoverse V2): bf16 there runs
    # on plain Eigen (converted to fp32 and back; 0.70x of fp32 where measured), while bf16 with oneDNN forced on
    # has the CPU's instructions.
    runner = ReplayRunner.from_rates(lambda spec: 700.0 if spec.settings.precision == "bf16" else 1000.0, noise=0.01)
    runner.onednn_default = False
    plain, forced = "precision=bf16", "precision=bf16;onednn=true"
    argv = [*BENCH, "--settings", plain, "--settings", forced, "--storage", storage_url]
    assert main(argv, runner=runner) == 0
    out, err = capsys.readouterr()
    # Named, so both are measured, as tune's --force-precision would; the emulated one is said to be so in the
    # log before it runs, and in the results beside its figure.
    assert measured_labels(storage_url) == sorted([f"custom {forced}", f"custom {plain}"])
    logged = [line for line in err.splitlines() if "bf16 emulated" in line]
    assert len(logged) == 1 and f"custom {plain} (infer 1c)" in logged[0] and "measured all the same" in logged[0], err
    shown = [line for line in out.splitlines() if "bf16 emulated" in line]
    assert len(shown) == 1 and f"custom {plain}: " in shown[0] and "images/sec" in shown[0], out
    emulated = {r["label"]: r.get("emulated") for r in records(open_storage(storage_url))}
    # The record keeps why: oneDNN off leaves bf16 to plain Eigen. With oneDNN on nothing is emulated.
    assert (
        emulated[f"custom {plain}"]
        == "bf16 emulated: with oneDNN off, bf16 runs on plain Eigen, without bf16 instructions"
    )
    assert emulated[f"custom {forced}"] is None
    # The table's note says which row's figure is emulated, so that it is not read as what bf16 does here.
    assert main(["table", "--storage", storage_url, "--format", "json"]) == 0
    (row,) = json.loads(capsys.readouterr().out)["rows"]
    assert f"custom {plain}: bf16 emulated" in row["note"] and f"custom {forced}: bf16" not in row["note"]
    # GPU rows convolve on the GPU, in NCHW, whatever the host's oneDNN: one with oneDNN off is measured (the CPU's
    # "NCHW needs oneDNN" does not apply there), and its bf16 is the GPU's, never marked emulated.
    runner.tasks["devices"] = {"gpus": 1}
    gpu = [*BENCH, "--device", "gpu", "--timed", "3", "--settings", "precision=bf16;onednn=false"]
    assert main([*gpu, "--storage", storage_url], runner=runner) == 0, capsys.readouterr().err
    (gpu_row,) = [r for r in records(open_storage(storage_url)) if r.get("device") == "gpu"]
    assert gpu_row["settings"]["precision"] == "bf16" and "emulated" not in gpu_row
