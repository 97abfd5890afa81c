"""The stored schema (tuner/records.py): typed records read from a study's attributes, checked on the way in."""

from __future__ import annotations

import json
import math
from typing import Any

import pytest

from tuner.measurement import Measurement
from tuner.records import (
    ConfirmationRun,
    MalformedRecord,
    StoredConfirmation,
    StoredRunnable,
    StoredVerdict,
    StudyMeta,
    check_record,
    check_study,
    trial_measurement,
)

MEASUREMENT = Measurement(32, (0.032, 0.031, 0.033), (0.05,), {"onednn": True}, 1.5, 0.1)
META: dict[str, Any] = {
    "model": "tiny",
    "mode": "infer",
    "batch_size": 32,
    "runtime": "tensorflow",
    "cores": 2,
    "cpu": {"model_name": "AMD EPYC", "id": "abc", "vendor": "AuthenticAMD", "isa": ["avx2"]},
    "probe": {"framework_version": "2.21.0"},
    "space": "tensorflow",
    "inert_knobs": ["KMP_BLOCKTIME"],
    "created": "2026-11-29T10:00:00+00:00",
}


def test_a_confirmation_run_reads_back_what_was_stored() -> None:
    run = ConfirmationRun(2, "tf-default", MEASUREMENT)
    # The stored form is plain JSON data, and reading it back gives the same run, facts included.
    stored = run.to_dict()
    assert stored["round"] == 2 and stored["candidate"] == "tf-default"
    assert ConfirmationRun.from_dict(stored) == run
    assert ConfirmationRun.from_dict(stored).measurement.facts == {"onednn": True}


@pytest.mark.parametrize(
    ("change", "where"),
    [
        ({"round": -1}, "run.round"),
        ({"round": "0"}, "run.round"),
        ({"candidate": 3}, "run.candidate"),
        ({"measurement": "fast"}, "run.measurement"),
        ({"measurement": {"batch_size": 32}}, "run.measurement"),
        ({"measurement": {"batch_size": 32, "timed_seconds": [-1.0]}}, "run.measurement"),
    ],
)
def test_a_malformed_confirmation_run_is_refused_naming_the_field(change: dict[str, Any], where: str) -> None:
    data = {**ConfirmationRun(0, "tf-default", MEASUREMENT).to_dict(), **change}
    # Each broken field is one typed error that says where, never a KeyError or a run with garbage in it.
    with pytest.raises(MalformedRecord, match=where.replace(".", r"\.")):
        ConfirmationRun.from_dict(data)


def test_an_absent_confirmation_reads_as_empty_and_a_stored_one_in_full() -> None:
    # No confirmation yet: nothing to resume.
    assert StoredConfirmation.from_dict(None) == StoredConfirmation()
    stored = {
        "id": "0123456789ab",
        "candidates": ["tf-default", "heuristic"],
        "policy": {"warmup": 1, "timed": 3},
        "rates": {"tf-default": [MEASUREMENT.rates]},
        "runs": [ConfirmationRun(0, "tf-default", MEASUREMENT).to_dict()],
    }
    confirmation = StoredConfirmation.from_dict(stored)
    # Every field typed: the id, the candidates in order, the policy, the rates and each run.
    assert confirmation.id == "0123456789ab" and confirmation.candidates == ("tf-default", "heuristic")
    assert confirmation.policy == {"warmup": 1, "timed": 3}
    assert confirmation.rates == {"tf-default": [MEASUREMENT.rates]}
    assert confirmation.runs == (ConfirmationRun(0, "tf-default", MEASUREMENT),)


def test_check_study_refuses_a_malformed_confirmation_or_runnable_record() -> None:
    # Rates that are not rounds of numbers: the study is malformed (its readers skip it, import refuses it).
    with pytest.raises(MalformedRecord, match=r"confirmation\.rates\.tf-default"):
        check_study("s", {"confirmation": {"rates": {"tf-default": ["fast"]}}})
    # A baseline note that is not text could not be printed by show: refused too.
    with pytest.raises(MalformedRecord, match=r"runnable\.baselines"):
        check_study("s", {"runnable": {"baselines": {"heuristic": 3}}})
    # Planned baselines whose settings are not valid settings, or not an object, are refused: show and the
    # report compare trials with them.
    with pytest.raises(MalformedRecord, match=r"runnable\.planned\.tf-default"):
        check_study("s", {"runnable": {"planned": {"tf-default": {"intra_op": -3}}}})
    for planned in (["tf-default"], [], ""):  # empty or not, only an object maps names to settings
        with pytest.raises(MalformedRecord, match=r"runnable\.planned"):
            check_study("s", {"runnable": {"planned": planned}})
    # Well-formed records pass, and the planned settings read back as stored.
    record = StoredRunnable(("x taken out",), {"heuristic": "note"}, planned_params={"tf-default": {"intra_op": 0}})
    check_study("s", {"runnable": record.to_dict()})
    assert StoredRunnable.from_dict(record.to_dict()).planned_params == {"tf-default": {"intra_op": 0}}


def test_study_meta_reads_the_space_and_the_inert_knobs() -> None:
    meta = StudyMeta.from_dict(META)
    # The report and show read these typed, not from the raw mapping.
    assert meta.space == "tensorflow" and meta.inert_knobs == ("KMP_BLOCKTIME",)
    # Inert knobs that are not names are refused.
    with pytest.raises(MalformedRecord, match="inert_knobs"):
        StudyMeta.from_dict({**META, "inert_knobs": [1]})


def test_study_meta_reads_the_searched_knobs_old_and_new() -> None:
    # A study made before the knobs were stored has none; one of --search-batch had its batches stored already.
    assert StudyMeta.from_dict(META).searched_knobs == ()
    assert StudyMeta.from_dict({**META, "searched_batches": [8, 32]}).searched_knobs == ("batch",)
    assert StudyMeta.from_dict({**META, "searched_knobs": ["onednn_isa", "intra_op"]}).searched_knobs == (
        "intra_op",
        "onednn_isa",
    )
    # A stored list of anything but short names (an import, a shared study) is refused, not shown.
    for bad in ("onednn_isa", [1], ["x" * 41]):
        with pytest.raises(MalformedRecord, match="searched_knobs"):
            StudyMeta.from_dict({**META, "searched_knobs": bad})


def test_stored_verdict_reads_what_show_prints() -> None:
    data = {
        "winner": "trial 4",
        "recommended": "tf-default",
        "recommended_params": {"intra_op": 0, "inter_op": 0, "data_format": "NHWC", "onednn": True},
        "params": {
            "tf-default": {"intra_op": 0, "inter_op": 0, "data_format": "NHWC", "onednn": "default"},
            "trial 4": {"intra_op": 2, "inter_op": 1, "data_format": "NHWC"},
        },
        "clear": False,
        "text": "no clear gain",
        "rounds": 3,
        "speedup_vs_heuristic": {"value": 1.0, "low": 0.9, "high": 1.1},
    }
    verdict = StoredVerdict.from_dict(data)
    # The winner, rounds and heuristic interval are typed fields; the recommended settings stay as stored.
    assert verdict.winner == "trial 4" and verdict.rounds == 3
    assert verdict.vs_heuristic == {"value": 1.0, "low": 0.9, "high": 1.1}
    assert verdict.recommended_params == data["recommended_params"]
    # A round count that is not a number is refused.
    with pytest.raises(MalformedRecord, match=r"verdict\.rounds"):
        StoredVerdict.from_dict({**data, "rounds": "three"})
    # The count of sampled settings it chose from is optional (verdicts before it have none), a count when given.
    assert verdict.sampled is None and StoredVerdict.from_dict({**data, "sampled": 7}).sampled == 7
    for bad in (-1, True, "7", 2**40):
        with pytest.raises(MalformedRecord, match=r"verdict\.sampled"):
            StoredVerdict.from_dict({**data, "sampled": bad})
    # A speedup is an interval, value, low and high, as show prints it: a mapping of other names is refused
    # (show --wide read ['value'] of it: KeyError), in each place a verdict keeps one.
    for key, bad in (
        ("speedup_vs_heuristic", {"x": 1.0}),
        ("speedup_vs_tf_default", {"value": 1.0, "low": "0.9", "high": 1.1}),
        ("speedup_vs_each", {"tf-default": {"value": 1.0}}),
        ("speedup_vs_each", [1.0]),
    ):
        with pytest.raises(MalformedRecord, match=rf"verdict\.{key}"):
            StoredVerdict.from_dict({**data, key: bad})
    # A number that is no finite number has no JSON form: anywhere in a verdict (a shared study written by
    # anyone) it is refused, not printed as NaN by show --format json or failing tuner export.
    for key, bad in (
        ("images_per_sec", {"tf-default": math.nan}),
        ("speedup_vs_heuristic", {"value": math.inf, "low": 1.0, "high": 1.0}),
        ("latency_ms", {"tf-default": {"p50": -math.inf}}),
    ):
        with pytest.raises(MalformedRecord, match="not a finite number"):
            StoredVerdict.from_dict({**data, key: bad})


@pytest.mark.parametrize(
    ("change", "where"),
    [
        ({"recommended": "tf-default\x1b]0;owned\x07"}, "verdict"),
        ({"recommended": "trial 1; rm -rf ~"}, "verdict"),
        ({"winner": "<script>"}, "verdict"),
        ({"images_per_sec": {"tf-default": 20.0, "$(id)": 21.0}}, r"verdict\.images_per_sec"),
        ({"params": {"../x": {"intra_op": 1}}}, r"verdict\.params"),
    ],
)
def test_a_verdict_naming_a_candidate_otherwise_than_a_name_is_refused(change: dict[str, Any], where: str) -> None:
    data = {
        "recommended": "tf-default",
        "recommended_params": {"intra_op": 0, "inter_op": 0, "data_format": "NHWC"},
        "params": {"tf-default": {"intra_op": 0, "inter_op": 0, "data_format": "NHWC"}},
        "clear": False,
        "text": "no clear gain",
    }
    # Well formed, it reads.
    assert StoredVerdict.from_dict(data).recommended == "tf-default"
    # Candidate names are printed, logged and keyed on: from a shared study they must be a baseline's name or
    # "trial N", so escape sequences, shell text or markup in one make the whole verdict malformed.
    with pytest.raises(MalformedRecord, match=f"{where}.*not a candidate name"):
        StoredVerdict.from_dict({**data, **change})


def test_a_stored_confirmation_with_foreign_names_or_a_huge_policy_is_refused() -> None:
    # A resumed confirmation sizes its runs (and their timeout, while holding the host's lock) from the stored
    # policy: a shared study's policy of 10**12 timed steps would hold the lock for ever, so it is refused.
    with pytest.raises(MalformedRecord, match=r"confirmation\.policy\.timed"):
        StoredConfirmation.from_dict({"candidates": ["tf-default"], "policy": {"warmup": 1, "timed": 10**12}})
    with pytest.raises(MalformedRecord, match=r"confirmation\.policy\.warmup"):
        StoredConfirmation.from_dict({"candidates": ["tf-default"], "policy": {"warmup": -1, "timed": 5}})
    # Candidate names, in the list, the rates and each run, must be names.
    with pytest.raises(MalformedRecord, match=r"confirmation\.candidates"):
        StoredConfirmation.from_dict({"candidates": ["tf-default", "\x1b[2J"]})
    with pytest.raises(MalformedRecord, match=r"confirmation\.rates"):
        StoredConfirmation.from_dict({"rates": {"a b": [[1.0]]}})
    run = {**ConfirmationRun(0, "tf-default", MEASUREMENT).to_dict(), "candidate": "x\ny"}
    with pytest.raises(MalformedRecord, match=r"run\.candidate"):
        ConfirmationRun.from_dict(run)


def test_a_trial_whose_baseline_attribute_is_not_a_name_counts_as_sampled() -> None:
    from tuner.records import baseline_name

    # The search, resume and confirmation read a trial's baseline through this: a well-formed name is kept,
    # anything else (another worker's text, a number) makes the trial a sampled one, named "trial N".
    assert baseline_name({"baseline": "run_cpu-throughput"}) == "run_cpu-throughput"
    assert baseline_name({"baseline": "tf-default\x1b[31m"}) is None
    assert baseline_name({"baseline": ["tf-default"]}) is None
    assert baseline_name({}) is None


def test_trial_accessors_give_none_for_what_they_cannot_read() -> None:
    from tuner.records import imported_from, trial_measurement, trial_seconds, trial_text

    # Another worker's trial may hold anything: each accessor gives the value, or None, never an exception.
    assert trial_seconds({"trial_seconds": 12.5}) == 12.5
    assert trial_seconds({"trial_seconds": 10**400}) is None  # past float's range: OverflowError if unguarded
    assert trial_seconds({"trial_seconds": True}) is None and trial_seconds({"trial_seconds": -1}) is None
    assert trial_text({"fail_reason": ["exited"]}, "fail_reason") is None
    assert trial_measurement({"measurement": None}) is None
    assert trial_measurement({"measurement": {"batch_size": 32, "timed_seconds": "fast"}}) is None
    assert trial_measurement({"measurement": MEASUREMENT.to_dict()}) == MEASUREMENT
    # An imported study names its file (the name only, whatever the path's length); one cut short while
    # importing counts as imported too; a study of this machine's own is not.
    assert imported_from({"imported": {"file": "/" + "d" * 200 + "/crafted.json"}}) == "crafted.json"
    assert imported_from({"tuner_importing": True}) == "a file (import not finished)"
    assert imported_from({"tuner": {}}) is None


def stored_verdict(
    rates: dict[str, list[list[float]]], params: dict[str, dict[str, Any]], onednn_default: bool | None
) -> dict[str, Any]:
    """A verdict as confirmation stores it (``store_verdict``: oneDNN "default" resolved for the CPU), read
    back through JSON as a storage gives it."""
    import optuna

    from tuner.capability import Capabilities
    from tuner.confirm import decide, store_verdict

    study = optuna.create_study()
    store_verdict(study, decide(rates, params), Capabilities(onednn_default=onednn_default).effective, 5)
    stored: dict[str, Any] = json.loads(json.dumps(study.user_attrs["verdict"]))
    return stored


DEFAULT_PARAMS = {"intra_op": 0, "inter_op": 0, "data_format": "NHWC", "onednn": "default"}
TRIAL_PARAMS = {"intra_op": 2, "inter_op": 1, "data_format": "NHWC", "onednn": "default", "instances": 2}


@pytest.mark.parametrize("onednn_default", [True, False, None])
# tf-default faster; the trial faster but measured too few rounds to be sure; the trial a clear winner.
@pytest.mark.parametrize(("trial_rate", "rounds"), [(90.0, 3), (300.0, 2), (300.0, 3)])
def test_every_verdict_confirmation_stores_reads_back(
    onednn_default: bool | None, trial_rate: float, rounds: int
) -> None:
    rates = {
        "tf-default": [[100.0, 100.5, 99.5]] * rounds,
        "trial 4": [[trial_rate, trial_rate + 0.5, trial_rate - 0.5]] * rounds,
    }
    data = stored_verdict(rates, {"tf-default": DEFAULT_PARAMS, "trial 4": TRIAL_PARAMS}, onednn_default)
    verdict = StoredVerdict.from_dict(data)
    # Whether tf-default is kept (as fastest, or as not clearly beaten) or the trial wins, and whatever oneDNN
    # "default" meant on the CPU measured, a genuine verdict's name, settings and params agree: never refused.
    assert verdict.recommended == ("trial 4" if rounds == 3 and trial_rate > 100 else "tf-default")
    assert verdict.winner == ("trial 4" if trial_rate > 100 else "tf-default")
    assert verdict.params[verdict.recommended].intra_op == verdict.settings.intra_op
    assert verdict.settings.instances == verdict.params[verdict.recommended].instances


def test_a_verdict_whose_recommendation_contradicts_itself_is_refused() -> None:
    rates = {"tf-default": [[100.0, 100.5, 99.5]] * 3, "trial 4": [[90.0, 90.5, 89.5]] * 3}
    data = stored_verdict(rates, {"tf-default": DEFAULT_PARAMS, "trial 4": TRIAL_PARAMS}, True)
    # As stored, it reads: tf-default recommended, its oneDNN "default" stored as on (this CPU's choice).
    assert StoredVerdict.from_dict(data).recommended == "tf-default" and data["recommended_params"]["onednn"] is True
    # Labelled tf-default but carrying trial 4's settings: tables would say tf-default while recommend and exec
    # hand out the trial's settings. A lie in the label, refused.
    with pytest.raises(MalformedRecord, match=r"verdict\.recommended_params: not the settings of 'tf-default'"):
        StoredVerdict.from_dict({**data, "recommended_params": TRIAL_PARAMS})
    # oneDNN off where the candidate confirmed ran it forced on: another setting. (TensorFlow's own choice,
    # "default", may be stored as on or off: which it meant is the measuring CPU's fact, not the verdict's.)
    forced = {**data, "params": {**data["params"], "tf-default": {**DEFAULT_PARAMS, "onednn": True}}}
    assert StoredVerdict.from_dict(forced).settings == StoredVerdict.from_dict(data).settings
    with pytest.raises(MalformedRecord, match=r"verdict\.recommended_params"):
        StoredVerdict.from_dict({**forced, "recommended_params": {**DEFAULT_PARAMS, "onednn": False}})
    # A recommended name that is no confirmed candidate: benchmark would look it up in params (KeyError).
    with pytest.raises(MalformedRecord, match=r"verdict\.recommended: 'heuristic' is not one of the confirmed"):
        StoredVerdict.from_dict({**data, "recommended": "heuristic"})
    # No params at all (every verdict confirmation writes has them): nothing says what the name stands for.
    with pytest.raises(MalformedRecord, match=r"verdict\.recommended"):
        StoredVerdict.from_dict({key: value for key, value in data.items() if key != "params"})
    # check_study, which every reader and import goes through, refuses it the same way: skipped, not fatal.
    with pytest.raises(MalformedRecord, match=r"study 's': verdict\.recommended"):
        check_study("s", {"verdict": {**data, "recommended": "trial 9"}})


@pytest.mark.parametrize(
    ("change", "error"),
    [
        ({"batch_size": math.inf}, "batch size|out of range"),  # JSON's 1e999: int() overflows
        ({"batch_size": 10**400}, "batch size"),  # rates overflow float
        ({"batch_size": 2.0**80}, "batch size"),
        ({"timed_seconds": [5e-324, 0.1]}, "a step must take"),  # an infinite rate
        ({"timed_seconds": [10**400]}, "out of range"),
        ({"warmup_seconds": [1e300]}, "a step must take"),  # sums overflow
        ({"timed_wall_seconds": 5e-324}, "timed loop"),  # an infinite loop rate
    ],
)
def test_a_stored_run_whose_figures_overflow_is_malformed_not_a_crash(change: dict[str, Any], error: str) -> None:
    run = {**ConfirmationRun(0, "tf-default", MEASUREMENT).to_dict()}
    run["measurement"] = {**run["measurement"], **change}
    # An OverflowError or an infinite rate escaped check_study and crashed show, report and import: a run whose
    # numbers cannot give finite rates is one malformed record, named, like any other.
    with pytest.raises(MalformedRecord, match=f"run.measurement: .*({error})"):
        ConfirmationRun.from_dict(run)
    with pytest.raises(MalformedRecord, match=r"confirmation\.runs\[0\]\.measurement"):
        check_study("s", {"confirmation": {"runs": [run]}})
    # A trial's own measurement attribute reads as absent, as every reader of trials expects.
    assert trial_measurement({"measurement": run["measurement"]}) is None


class FakeYardsticks:
    """A runner whose worker counts FLOPs (no training count for a SavedModel) and times the matmul, as the
    real worker answers."""

    def compute(self, spec: Any) -> dict[str, Any]:
        from tuner.models import as_ref

        if spec.task == "flops":
            counted = {"infer": 8e9, **({"train": 24e9} if as_ref(spec.model).trainable else {})}
            return {"flops_per_image": counted, "framework_version": "2.21.0"}
        return {"gflops": [400.0, 500.0], "size": 4096, "dtype": "bfloat16", "onednn": True, "framework_version": "2"}


TUNED_EXTRA = {
    "recommended": "tuned",
    "verdict": "x",
    "sampled": 4,
    "emulated": "bf16 emulated: this CPU has no bf16 instructions (avx512_bf16, amx_bf16)",
}


def genuine_records() -> list[dict[str, Any]]:
    """Every kind of record the tool writes: measured, skipped (a target, a setting), FLOPs of a Keras model and
    of a SavedModel (no training count), the matmul yardstick; read back through a storage, as readers see them."""
    import optuna

    from tuner import benchmark
    from tuner.models import ModelRef
    from tuner.settings import Settings
    from tuner.signature import cpu_signature
    from tuner.workload import Workload

    signature = cpu_signature()
    target = benchmark.Target("tensorflow", Workload("resnet50", "infer", 32), (0, 1))
    tuned = Settings.from_params({"intra_op": 2, "inter_op": 1, "precision": "bf16", "onednn": True})
    runs = [MEASUREMENT, Measurement(32, (0.03, 0.05), (0.1,), {}, 0.2, 0.0)]
    storage = optuna.storages.InMemoryStorage()
    for record in (
        benchmark.make_record(target, "tuned", tuned, runs, signature, "r1", TUNED_EXTRA),
        benchmark.skip_record(target, "no time left", signature),
        benchmark.skip_record(target, "not runnable here", signature, "heuristic"),
    ):
        benchmark.store(storage, record)
    runner: Any = FakeYardsticks()
    saved = ModelRef("my_model-1a2b3c4d", kind="savedmodel", path="/models/my_model")
    benchmark.flops_per_image(storage, runner, "resnet50", Settings(), (0, 1), signature)
    benchmark.flops_per_image(storage, runner, saved, Settings(), (0, 1), signature)
    yardstick = benchmark.yardstick_settings(2, ["onednn"], "bf16")
    benchmark.matmul_peak(storage, runner, "tensorflow", yardstick, (0, 1), signature)
    study = optuna.load_study(study_name=benchmark.BENCH_STUDY, storage=storage)
    return [json.loads(json.dumps(t.user_attrs["record"])) for t in study.trials]


def test_every_record_the_tool_writes_passes_the_check() -> None:
    records = genuine_records()
    # Three benchmark records, two FLOP counts (one without a training count) and one matmul peak: none refused.
    assert [r["kind"] for r in records] == ["benchmark"] * 3 + ["flops", "flops", "matmul"]
    assert "train" not in records[4]["flops_per_image"]
    for record in records:
        check_record(record)


def _changed(record: dict[str, Any], path: str, value: Any) -> dict[str, Any]:
    """``record`` with the value at ``path`` ("cpu.id") replaced, or removed where ``value`` is ``DROP``."""
    copy = json.loads(json.dumps(record))
    *parents, key = path.split(".")
    inner = copy
    for name in parents:
        inner = inner[name]
    if value is DROP:
        del inner[key]
    else:
        inner[key] = value
    return copy


DROP = object()


@pytest.mark.parametrize(
    ("index", "path", "value", "where"),
    [
        (0, "measured", None, r"\.measured"),  # sorted by date: None and text do not compare
        (0, "round_rates", [[0]], "round_rates"),  # a zero rate: ZeroDivisionError in the speedups
        (0, "round_rates", [[-1.0, 2.0]], "round_rates"),
        (0, "round_rates", [[10**400]], "round_rates"),  # past float's range
        (0, "round_rates", [[0.5, 0.5], []], "round_rates"),  # a round with no steps: no pair to bootstrap
        (0, "images_per_sec", 10**400, "images_per_sec"),
        (0, "round_images_per_sec", ["fast"], "round_images_per_sec"),  # the report's bars take float() of each
        (0, "emulated", ["bf16"], r"\.emulated"),  # the table's note is text: a list would be printed as one
        (0, "settings", 5, r"\.settings"),
        (0, "settings", {"precision": [1]}, r"settings\.precision"),  # a key of the peaks: unhashable
        (0, "recommended", [1], r"\.recommended"),  # the table looks the label up: unhashable
        (0, "cpu.id", [1], r"cpu\.id"),  # the table groups by it
        (0, "cpu.model_name", ["EPYC"], r"cpu\.model_name"),
        (0, "cpu.isa", "avx2", r"cpu\.isa"),  # the report joins the flags
        (0, "cpu", "zz", r"\.cpu"),
        (0, "cores", 10**20, r"\.cores"),  # a table column of 64-bit integers: OverflowError
        (0, "ms_per_image", 10**400, "ms_per_image"),
        (0, "p99_ms", math.inf, "p99_ms"),  # no genuine request takes for ever
        (0, "sampled", -1, r"\.sampled"),  # a count of sampled settings, an integer column of the table
        (0, "sampled", True, r"\.sampled"),
        (0, "sampled", "12; rm -rf /", r"\.sampled"),
        (0, "searched", "onednn_isa", r"\.searched"),  # the knobs a study searched beside its runtime's: a list
        (0, "searched", ["onednn_isa; rm -rf /"], r"\.searched"),  # only the known extra knobs, never free text
        (0, "searched", [["batch"]], r"\.searched"),
        (0, "searched", ["batch", "batch"], r"\.searched"),  # each knob once: the table tags each it finds
        (1, "cpu.id", {"a": 1}, r"cpu\.id"),  # a skipped record too
        (1, "measured", 7, r"\.measured"),
        (3, "flops_per_image.train", 10**400, r"flops_per_image\.train"),
        (3, "flops_per_image.infer", math.nan, r"flops_per_image\.infer"),
        (3, "measured", None, r"\.measured"),
        (5, "cpu", "zz", r"\.cpu"),  # the table keys matmul peaks by cpu.id: AttributeError on text
        (5, "cpu.id", [1], r"cpu\.id"),
        (5, "precision", [1], r"\.precision"),  # a key of the peaks: unhashable
        (5, "peak_gflops", 10**400, "peak_gflops"),
        (5, "cores", -1, r"\.cores"),
    ],
)
def test_a_benchmark_record_with_a_field_its_readers_cannot_use_is_refused(
    index: int, path: str, value: Any, where: str
) -> None:
    record = _changed(genuine_records()[index], path, value)
    # Each of these crashed tuner table or report with a traceback; refused here, the record is one warning
    # line and left out (benchmark.records), the rest of the storage still read.
    with pytest.raises(MalformedRecord, match=where):
        check_record(record)
