"""The stored schema (tuner/records.py): typed records read from a study's attributes, checked on the way in."""

from __future__ import annotations

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
    check_study,
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
    # Well-formed records pass.
    check_study("s", {"runnable": StoredRunnable(("x taken out",), {"heuristic": "note"}).to_dict()})


def test_study_meta_reads_the_space_and_the_inert_knobs() -> None:
    meta = StudyMeta.from_dict(META)
    # The report and show read these typed, not from the raw mapping.
    assert meta.space == "tensorflow" and meta.inert_knobs == ("KMP_BLOCKTIME",)
    # Inert knobs that are not names are refused.
    with pytest.raises(MalformedRecord, match="inert_knobs"):
        StudyMeta.from_dict({**META, "inert_knobs": [1]})


def test_stored_verdict_reads_what_show_prints() -> None:
    data = {
        "winner": "trial 4",
        "recommended": "tf-default",
        "recommended_params": {"intra_op": 0, "inter_op": 0, "data_format": "NHWC", "onednn": True},
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
