"""What can run here, from the probe: the stock space and its baselines on an AVX2-only CPU (oneDNN off by
default, NCHW impossible) and on an AVX-512 one (oneDNN on by default), with the replaying runner standing
in for each CPU, through the study and the CLI."""

from __future__ import annotations

from pathlib import Path

import optuna
import pytest
from optuna.trial import TrialState

from tests.helpers import THREADS_SPACE, make_config
from tuner.capability import Capabilities, narrow, plan_baselines, unrunnable
from tuner.cli import main
from tuner.errors import WorkerExited
from tuner.replay import NCHW_WITHOUT_ONEDNN, ReplayRunner
from tuner.runner import TrialSpec
from tuner.space import load
from tuner.study import StudyRun

AVX2 = Capabilities(onednn_default=False)
AVX512 = Capabilities(onednn_default=True)
TINY = ["--model", "tiny", "--cores", "1", "--mode", "infer"]


def onednn_rate(spec: TrialSpec) -> float:
    """As measured on the AVX2 machine: oneDNN on is 1.25x plain Eigen, threads matter little."""
    onednn = dict(spec.settings.env_knobs).get("onednn", "default")
    return 1250.0 if onednn is True else 1000.0


def unknown_cpu_runner() -> ReplayRunner:
    """A CPU whose probe reports nothing about oneDNN, and where NCHW fails in the worker all the same."""

    def script(spec: TrialSpec, _call: int) -> list[float] | BaseException:
        if spec.settings.data_format == "NCHW":
            return WorkerExited("worker exited with status 1", NCHW_WITHOUT_ONEDNN)
        return [0.032] * (spec.policy.warmup + spec.policy.timed)

    return ReplayRunner(script, onednn_default=None)


def avx2_runner(noise: float = 0.01) -> ReplayRunner:
    runner = ReplayRunner.from_rates(onednn_rate, noise=noise, seed=7)
    runner.onednn_default = False  # TensorFlow leaves oneDNN off; NCHW without it fails like the real worker
    return runner


def test_heuristic_is_not_runnable_without_onednn_and_its_nhwc_part_stands_in() -> None:
    plan = plan_baselines(load("tensorflow", 2).baselines(2), AVX2)
    # The reference heuristic is NCHW with oneDNN left to TensorFlow, which leaves it off here: set aside
    # with the reason, and its same threads in NHWC are measured under a name that says so.
    assert "not runnable here: NCHW needs oneDNN" in plan.notes["heuristic"]
    assert "off by default on this CPU" in plan.notes["heuristic"]
    assert list(plan.runnable)[:3] == ["tf-default", "heuristic-nhwc", "onednn-on"]
    assert plan.runnable["heuristic-nhwc"] == {
        "intra_op": 2,
        "inter_op": 1,
        "data_format": "NHWC",
        "onednn": "default",
        "instances": 1,
        "allocator": "system",
        "precision": "fp32",
    }


def test_onednn_on_baseline_is_measured_once_where_it_is_the_default() -> None:
    plan = plan_baselines(load("tensorflow", 2).baselines(2), AVX512)
    # oneDNN is on by default here, so forcing it on runs exactly as tf-default: noted, not measured twice.
    assert list(plan.runnable)[:2] == ["tf-default", "heuristic"] and "onednn-on" not in plan.runnable
    assert plan.notes["onednn-on"] == "same as tf-default on this CPU"


def test_unknown_capabilities_take_nothing_out() -> None:
    plan = plan_baselines(load("tensorflow", 2).baselines(2), Capabilities())
    # Without the probe's read-back nothing is assumed impossible: every baseline is measured.
    assert list(plan.runnable)[:3] == ["tf-default", "heuristic", "onednn-on"]
    assert not plan.not_runnable()


def test_rule_reads_explicit_and_default_onednn() -> None:
    # NCHW runs with oneDNN forced on anywhere; with it off, or left to TensorFlow on an AVX2 CPU, it cannot.
    assert unrunnable({"data_format": "NCHW", "onednn": True}, AVX2) is None
    assert unrunnable({"data_format": "NCHW", "onednn": False}, AVX512) is not None
    assert unrunnable({"data_format": "NCHW", "onednn": "default"}, AVX2) is not None
    assert unrunnable({"data_format": "NCHW"}, AVX512) is None


def test_a_choice_that_can_never_run_is_taken_out_with_its_reason(tmp_path: Path) -> None:
    path = tmp_path / "layout.toml"
    path.write_text('[knobs.intra_op]\ntype = "int"\nlow = 0\nhigh = "cores"\n\n'
                    '[knobs.data_format]\ntype = "categorical"\nchoices = ["NHWC", "NCHW"]\n')  # fmt: skip
    space = load(str(path), 2)
    narrowed, excluded = narrow(space, AVX2, 2)
    # No oneDNN knob and oneDNN off by default: NCHW can never run, so the space loses it, saying why.
    assert narrowed.distributions(2)["data_format"].choices == ("NHWC",)
    assert len(excluded) == 1 and excluded[0].startswith("data_format=NCHW taken out: NCHW needs oneDNN")
    # On a CPU with oneDNN on by default the same space is kept whole.
    assert narrow(space, AVX512, 2) == (space, [])
    # The stock space keeps NCHW on AVX2, since oneDNN can be forced on; only the combinations are skipped.
    # (bf16 is taken out whatever the CPU: it was not opted into.)
    stock = load("tensorflow", 2)
    narrowed, excluded = narrow(stock, AVX2, 2)
    assert narrowed.distributions(2)["data_format"].choices == ("NHWC", "NCHW")
    assert [line.split(" taken out")[0] for line in excluded] == ["precision=bf16"]


def test_study_on_avx2_measures_no_impossible_setting_and_finds_onednn(storage: optuna.storages.RDBStorage) -> None:
    config = make_config(cores=1, trials=10, probe={"onednn": False})
    run = StudyRun(storage, config, avx2_runner())
    verdict = run.run()
    trials = run.study.get_trials()
    # Nothing failed: no NCHW-without-oneDNN setting ever reached a worker; those proposals were skipped.
    assert [t for t in trials if t.state == TrialState.FAIL] == []
    skipped = [t.user_attrs.get("skip_reason", "") for t in trials if t.state == TrialState.PRUNED]
    assert any(reason.startswith("not runnable here: NCHW needs oneDNN") for reason in skipped)
    # The heuristic is stored as not runnable; its NHWC part and oneDNN-on were measured as baselines.
    assert run.study.user_attrs["runnable"]["baselines"]["heuristic"].startswith("not runnable here")
    measured = {t.user_attrs.get("baseline") for t in trials if t.state == TrialState.COMPLETE}
    assert {"tf-default", "heuristic-nhwc", "onednn-on"} <= measured
    # oneDNN on is 1.25x here: the verdict recommends a setting with oneDNN forced on, clearly.
    assert verdict.clear and verdict.params[verdict.recommended]["onednn"] is True
    assert verdict.vs_default.low > 1.15


def test_failing_baseline_counts_as_done_for_the_budget(storage: optuna.storages.RDBStorage) -> None:
    now = [0.0]

    def script(spec: TrialSpec, call: int) -> list[float] | BaseException:
        now[0] += 10.0
        if spec.settings.intra_op == 1 and spec.settings.inter_op == 1:  # the heuristic's threads always crash
            return RuntimeError("unreachable")
        return [0.032] * 5

    def crashing(spec: TrialSpec, call: int) -> list[float] | BaseException:
        from tuner.errors import WorkerCrashed

        outcome = script(spec, call)
        return WorkerCrashed("worker killed by SIGSEGV") if isinstance(outcome, RuntimeError) else outcome

    config = make_config(cores=1, trials=30, budget_s=200.0)
    run = StudyRun(storage, config, ReplayRunner(crashing), clock=lambda: now[0])
    run.run()
    # The heuristic failed, yet counts as done: the search stopped for confirmation, and the study ended
    # within its budget instead of searching on for a baseline that can never complete.
    assert any(t.user_attrs.get("baseline") == "heuristic" and t.state == TrialState.FAIL for t in run.study.trials)
    assert now[0] <= 200.0


def test_interrupted_tf_default_is_measured_again_before_the_budget_ends_the_search(
    storage: optuna.storages.RDBStorage,
) -> None:
    now = [0.0]

    def script(spec: TrialSpec, call: int) -> list[float] | BaseException:
        now[0] += 10.0
        return KeyboardInterrupt() if call == 0 else [0.032] * 5  # Ctrl-C during the first tf-default run

    runner = ReplayRunner(script)
    with pytest.raises(KeyboardInterrupt):
        StudyRun(storage, make_config(cores=1, trials=30, budget_s=60.0), runner, clock=lambda: now[0]).run()
    run = StudyRun(storage, make_config(cores=1, trials=30, budget_s=60.0), runner, clock=lambda: now[0])
    verdict = run.run()
    # An interrupted baseline is not "done": it is measured again on resume, so confirmation has tf-default.
    assert "tf-default" in verdict.rates
    done = [t for t in run.study.trials if t.user_attrs.get("baseline") == "tf-default"]
    assert [t.state for t in done] == [TrialState.FAIL, TrialState.COMPLETE]


def test_tune_on_avx2_prints_what_cannot_run_and_why(storage_url: str, capsys: pytest.CaptureFixture[str]) -> None:
    argv = ["tune", *TINY, "--trials", "8", "--budget", "none", "--storage", storage_url]
    assert main(argv, runner=avx2_runner()) == 0
    err = capsys.readouterr().err
    # The heuristic is named as not runnable here, with the reason, once; no trial failed.
    assert err.count("baseline heuristic: not runnable here: NCHW needs oneDNN") == 1
    assert "FAILED" not in err
    assert main(["show", "--storage", storage_url]) == 0
    shown = capsys.readouterr().out
    # show says so too: in the heuristic column, and as a line naming the reason.
    assert "not runnable here" in shown and "baseline heuristic: not runnable here: NCHW needs oneDNN" in shown


def test_fewer_trials_than_baselines_names_the_baselines_left_out_and_a_later_run_measures_them(
    storage_url: str, capsys: pytest.CaptureFixture[str]
) -> None:
    argv = ["tune", *TINY, "--space", THREADS_SPACE, "--budget", "none", "--no-confirm", "--storage", storage_url]
    # On AVX2 the test space has three baselines here (tf-default, heuristic-nhwc, onednn-on); two trials hold
    # two of them, and the search says which one it left out.
    assert main([*argv, "--trials", "2"], runner=avx2_runner()) == 0
    err = capsys.readouterr().err
    assert "search ends at 2 complete trials; baselines not yet measured: onednn-on" in err
    # The same command with more trials measures the queued baseline first, and says nothing is left out.
    assert main([*argv, "--trials", "3"], runner=avx2_runner()) == 0
    err = capsys.readouterr().err
    assert "baselines not yet measured" not in err
    (study,) = optuna.get_all_study_summaries(storage_url)
    trials = optuna.load_study(study_name=study.study_name, storage=storage_url).trials
    assert [t.user_attrs.get("baseline") for t in trials] == ["tf-default", "heuristic-nhwc", "onednn-on"]
    assert all(t.state == TrialState.COMPLETE for t in trials)


def test_a_failing_trial_prints_the_workers_reason(storage_url: str, capsys: pytest.CaptureFixture[str]) -> None:
    argv = ["tune", *TINY, "--trials", "4", "--budget", "none", "--storage", storage_url]
    # Nothing known in advance, so NCHW is tried and the worker fails: each such line says why.
    assert main(argv, runner=unknown_cpu_runner()) == 0
    err = capsys.readouterr().err
    failed = [line for line in err.splitlines() if "FAILED" in line]
    assert failed and all("UnimplementedError: The Conv2D op currently only supports the NHWC" in f for f in failed)


def test_benchmark_on_avx2_measures_what_it_can_and_tabulates_it(
    storage_url: str, capsys: pytest.CaptureFixture[str]
) -> None:
    argv = ["benchmark", *TINY, "--warmup", "1", "--timed", "3", "--storage", storage_url]
    # Default settings: the heuristic cannot run here, which is not a failure; its NHWC part is measured.
    assert main(argv, runner=avx2_runner()) == 0
    out = capsys.readouterr().out
    assert "heuristic: not runnable here: NCHW needs oneDNN" in out
    assert "tf-default:" in out and "heuristic-nhwc:" in out
    assert main(["table", "--storage", storage_url, "--format", "csv"]) == 0
    table = capsys.readouterr().out
    # The row is named from the read-back (oneDNN off), not from the runtime's name; the heuristic column
    # shows the NHWC stand-in, and the note says why the heuristic itself was not measured.
    assert "CPU (no optimisation) [tensorflow]" in table
    assert "(NHWC)" in table and "heuristic: not runnable here" in table


def test_benchmark_keeps_every_result_and_names_the_failure(
    storage_url: str, capsys: pytest.CaptureFixture[str]
) -> None:
    runner = unknown_cpu_runner()  # the impossible setting is not known in advance: it fails in the worker
    argv = ["benchmark", *TINY, "--warmup", "1", "--timed", "3", "--rounds", "2", "--storage", storage_url]
    argv += ["--settings", "tf-default", "--settings", "data_format=NCHW"]
    assert main(argv, runner=runner) == 1
    captured = capsys.readouterr()
    # tf-default was measured in both rounds and printed; the failing setting is named with the worker's reason.
    assert "tf-default:" in captured.out
    last = [line for line in captured.err.splitlines() if line.startswith("tuner: error:")]
    assert len(last) == 1 and "data_format=NCHW" in last[0] and "Conv2D" in last[0]
    assert main(["table", "--storage", storage_url, "--format", "csv"]) == 0
    # The measured setting is in the table; the failed one is a note, not a figure.
    assert "failed: worker exited with status 1" in capsys.readouterr().out


def test_openmp_knobs_are_taken_out_only_where_the_probe_read_no_openmp() -> None:
    space = load("intel-tensorflow", 2)
    stock = Capabilities(onednn_default=True, openmp=None, openmp_known=True)
    narrowed, lines = narrow(space, stock, 2, keep=("KMP_BLOCKTIME",))
    # No OpenMP library loaded: the two knobs not kept are gone from the space, each with one line; the one
    # the user kept (--allow-inert) stays searched.
    assert set(narrowed.distributions(2)) == {"intra_op", "inter_op", "data_format", "KMP_BLOCKTIME"}
    assert [line.split(" taken out")[0] for line in lines] == ["OMP_NUM_THREADS", "KMP_AFFINITY"]
    # With libiomp5 read back, or with nothing read back at all, every knob stays.
    for caps in (Capabilities(onednn_default=True, openmp="libiomp5", openmp_known=True), Capabilities()):
        assert narrow(space, caps, 2) == (space, [])


def test_bf16_is_searched_only_when_opted_into_and_where_the_cpu_has_it() -> None:
    space = load("tensorflow", 2)

    def precisions(caps: Capabilities) -> tuple[object, ...]:
        return narrow(space, caps, 2)[0].distributions(2)["precision"].choices  # type: ignore[attr-defined,no-any-return]

    with_bf16 = {"onednn": True, "bf16_instructions": True}
    without = {"onednn": False, "bf16_instructions": False}
    # Not asked for: fp32 only, whatever the CPU (bf16 changes the numerics).
    assert precisions(Capabilities.from_probe(with_bf16)) == ("fp32",)
    # Asked for: searched where the CPU has bf16 instructions; not where it would be emulated, unless forced.
    assert precisions(Capabilities.from_probe(with_bf16, ("bf16",))) == ("fp32", "bf16")
    assert precisions(Capabilities.from_probe(without, ("bf16",))) == ("fp32",)
    assert precisions(Capabilities.from_probe(without, ("bf16",), force_precision=True)) == ("fp32", "bf16")
    # Each exclusion says why, in one line naming the flag that would change it.
    _, lines = narrow(space, Capabilities.from_probe(without, ("bf16",)), 2)
    assert lines == [
        "precision=bf16 taken out: this CPU has no bf16 instructions (avx512_bf16, amx_bf16, bf16): bf16 would be "
        "emulated (--force-precision)"
    ]
    # Where the probe read the CPU's flags, the line names its own architecture's: an Arm user is not told of AVX-512.
    for isa, flags in ((["asimd", "asimddp"], "(bf16)"), (["avx", "avx2", "fma"], "(avx512_bf16, amx_bf16)")):
        _, lines = narrow(space, Capabilities.from_probe({**without, "cpu_isa": isa}, ("bf16",)), 2)
        assert f"this CPU has no bf16 instructions {flags}: bf16 would be emulated" in lines[0]


def test_bf16_with_onednn_off_is_emulated_even_on_a_cpu_with_bf16() -> None:
    # A Neoverse V2 (Graviton4, Grace): bf16 instructions, but TensorFlow leaves oneDNN off by default there.
    caps = Capabilities.from_probe({"onednn": False, "bf16_instructions": True}, ("bf16",))
    bf16 = {"precision": "bf16", "data_format": "NHWC"}
    # bf16 on plain Eigen (the default there, or onednn=false anywhere) converts to fp32: measured at 0.70x of
    # fp32 where oneDNN's bf16 ran at 1.39x (studies/bf16-onednn-off-1core.log). It is taken out as emulated.
    for onednn in ("default", False):
        found = unrunnable({**bf16, "onednn": onednn}, caps)
        assert found is not None and found[0] == "bf16_instructions" and "plain Eigen" in found[1]
    # With oneDNN forced on it runs on the CPU's bf16 instructions: kept, so bf16 stays in the space.
    assert unrunnable({**bf16, "onednn": True}, caps) is None
    assert "bf16" in narrow(load("tensorflow", 2), caps, 2)[0].distributions(2)["precision"].choices  # type: ignore[attr-defined]
    # --force-precision measures it anyway.
    forced = Capabilities.from_probe({"onednn": False, "bf16_instructions": True}, ("bf16",), force_precision=True)
    assert unrunnable({**bf16, "onednn": False}, forced) is None


def test_a_missing_allocator_is_taken_out_and_its_recipes_stand_in_with_the_system_one() -> None:
    caps = Capabilities.from_probe({"onednn": True, "allocators": ["system", "jemalloc"]})
    narrowed, lines = narrow(load("tensorflow", 2), caps, 2)
    # TCMalloc is not installed here: out of the space, with the package that would bring it.
    assert narrowed.distributions(2)["allocator"].choices == ("system", "jemalloc")  # type: ignore[attr-defined]
    assert any(line.startswith("allocator=tcmalloc taken out") and "libtcmalloc-minimal4" in line for line in lines)
    plan = plan_baselines(load("tensorflow", 2).baselines(2), caps)
    # run_cpu's recipe cannot preload TCMalloc here: noted, and its system-allocator part stands in, which here
    # runs as tf-default does, so it is measured once.
    assert plan.notes["run_cpu-throughput"].startswith("not runnable here: tcmalloc is not installed")
    assert "run_cpu-throughput" not in plan.runnable


def test_instance_counts_that_would_span_sockets_are_taken_out() -> None:
    # 6 cores as 4 + 2 on two sockets: 2 instances of 3 would span them, 3 of 2 and 6 of 1 would not.
    caps = Capabilities(onednn_default=True, splits=(1, 3, 6))
    assert unrunnable({"instances": 2}, caps) == (
        "instances_fit_sockets",
        "2 instances cannot split these cores without one spanning two sockets",
    )
    assert unrunnable({"instances": 3}, caps) is None and unrunnable({}, caps) is None


def test_every_stand_in_of_a_valid_baseline_name_is_a_candidate_name() -> None:
    from tuner.capability import REPAIRS
    from tuner.records import BASELINE_NAME, NAME, SUFFIX_ROOM

    # A stand-in is its baseline's name plus "-" and a repair's suffix; a search space's names leave room
    # for the longest suffix, so a stand-in of the longest valid name is still a name the stored records
    # accept (else it would be queued again on every resume and never count as done).
    longest = next(n for n in ("b" * k for k in range(80, 0, -1)) if BASELINE_NAME.fullmatch(n))
    assert all(len(repair.suffix) + 1 <= SUFFIX_ROOM for repair in REPAIRS.values())
    assert all(NAME.fullmatch(f"{longest}-{repair.suffix}") for repair in REPAIRS.values())
