"""Recommendations by CPU signature, and export/import between storages, with a replaying runner."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import optuna
import pytest

from tests.conftest import make_config
from tuner import benchmark, recommend, transfer
from tuner.benchmark import Target, make_record
from tuner.cli import main
from tuner.errors import TunerError
from tuner.measurement import Measurement
from tuner.replay import ReplayRunner
from tuner.runner import TrialSpec
from tuner.settings import Settings
from tuner.signature import cpu_signature
from tuner.storage import open_storage
from tuner.study import StudyRun
from tuner.workload import Workload

SIGNATURE = cpu_signature()
WINNER = "intra_op=2,inter_op=2,data_format=NHWC,onednn=True"


def rate(spec: TrialSpec) -> float:
    # One setting is clearly 30% faster, so confirmation recommends it.
    return 1300.0 if spec.settings.label() == WINNER else 1000.0


def tuned_storage(url: str, cores: int = 2, mode: str = "infer") -> optuna.storages.RDBStorage:
    storage = open_storage(url)
    config = make_config(cores=cores, trials=40, candidates=1, workload=Workload("tiny", mode, 32))
    StudyRun(storage, config, ReplayRunner.from_rates(rate, noise=0.01)).run()
    return storage


def test_recommendation_for_this_machine_in_every_format(storage_url: str, capsys: pytest.CaptureFixture[str]) -> None:
    storage = tuned_storage(storage_url)
    (found,) = recommend.recommend(storage, SIGNATURE, cores=2, mode="infer", model="tiny")
    # The confirmed winner, measured on this very CPU: not borrowed.
    assert found.settings.label() == WINNER and not found.borrowed and found.recommended.startswith("trial ")
    shell = recommend.render([found], "shell")
    # Shell: export lines TensorFlow reads before it starts, and the calls for use inside a program.
    assert "export TF_NUM_INTRAOP_THREADS=2" in shell and "export TF_NUM_INTEROP_THREADS=2" in shell
    assert "set_intra_op_parallelism_threads(2)" in shell
    python = recommend.render([found], "python")
    # Python: valid code that sets the threads through TensorFlow's own API.
    compile(python, "<recommend>", "exec")
    assert "tf.config.threading.set_inter_op_parallelism_threads(2)" in python
    # JSON through the CLI: provenance (CPU, runtime, framework, speedup with its interval, date).
    argv = ["recommend", "--cores", "2", "--mode", "infer", "--model", "tiny", "--format", "json"]
    assert main([*argv, "--storage", storage_url]) == 0
    (data,) = json.loads(capsys.readouterr().out)
    assert data["cpu"]["id"] == SIGNATURE.id and data["borrowed"] is False
    assert data["runtime"] == "tensorflow" and data["measured"]
    assert data["speedup_vs_tf_default"]["low"] > 1.0 and data["settings"]["intra_op"] == 2


def test_shell_and_python_need_one_recommendation(storage_url: str, capsys: pytest.CaptureFixture[str]) -> None:
    tuned_storage(storage_url, mode="infer")
    tuned_storage(storage_url, mode="train")
    assert main(["recommend", "--model", "tiny", "--format", "shell", "--storage", storage_url]) == 1
    err = capsys.readouterr().err
    # Two modes match: shell output cannot apply both, so it says which to choose.
    assert "--mode infer" in err and "--mode train" in err and len(err.strip().splitlines()) == 1
    assert main(["recommend", "--model", "tiny", "--storage", storage_url]) == 0
    # The text format lists every core count and mode.
    assert len(capsys.readouterr().out.strip().splitlines()) == 2


def test_unknown_cpu_is_borrowed_from_the_same_family_or_refused(storage_url: str) -> None:
    storage = tuned_storage(storage_url)
    sibling = dataclasses.replace(SIGNATURE, physical_cores=64, model_name=SIGNATURE.model_name + " v2")
    (found,) = recommend.recommend(storage, sibling, cores=16, mode="infer", model="tiny")
    # Same vendor and ISA family, another CPU: the nearest core count (2) is lent, and labelled as such.
    assert found.borrowed and found.cores == 2 and "BORROWED" in recommend.render([found], "shell")
    stranger = dataclasses.replace(SIGNATURE, vendor="OtherVendor")
    with pytest.raises(TunerError, match="no confirmed verdict"):
        recommend.recommend(storage, stranger, cores=2, mode="infer", model="tiny")
    with pytest.raises(TunerError, match="Xeon"):
        recommend.recommend(storage, SIGNATURE, cpu_name="Intel(R) Xeon(R) CPU E5-2682 v4", model="tiny")


def test_cli_refuses_a_cpu_with_nothing_usable(storage_url: str, capsys: pytest.CaptureFixture[str]) -> None:
    tuned_storage(storage_url)
    argv = ["recommend", "--cpu", "Intel(R) Xeon(R) CPU E5-2682 v4", "--cores", "16", "--storage", storage_url]
    assert main(argv) == 1
    # One line, naming the CPU asked for.
    err = capsys.readouterr().err.strip()
    assert err.startswith("tuner: error: no confirmed verdict") and "E5-2682" in err and "\n" not in err


def test_export_then_import_moves_studies_and_records_and_twice_changes_nothing(
    tmp_path: Path, storage_url: str, capsys: pytest.CaptureFixture[str]
) -> None:
    source = tuned_storage(storage_url)
    m = Measurement(32, (0.1, 0.1), (0.2,), {"framework_version": "2.21.0"})
    target = Target("tensorflow", Workload("tiny", "infer", 32), (0, 1))
    benchmark.store(source, make_record(target, "tf-default", Settings(), [m], SIGNATURE, "r1"))
    path = tmp_path / "results.json"
    assert main(["export", "--output", str(path), "--storage", storage_url]) == 0
    copy_url = f"sqlite:///{tmp_path / 'copy.db'}"
    assert main(["import", str(path), "--storage", copy_url]) == 0
    copy = open_storage(copy_url, create=False)
    # Same studies, same finished trials with their values and attributes, same benchmark records; each
    # imported study also says where it came from, and its import finished.
    for info in source.get_all_studies():
        a = optuna.load_study(study_name=info.study_name, storage=source)
        b = optuna.load_study(study_name=info.study_name, storage=copy)
        copied = dict(b.user_attrs)
        assert copied.pop("imported")["file"] == str(path) and copied.pop("tuner_importing") is False
        assert a.user_attrs == copied
        assert [(t.state, t.value, t.params, t.user_attrs) for t in a.trials if t.state.is_finished()] == [
            (t.state, t.value, t.params, t.user_attrs) for t in b.trials
        ]
    assert benchmark.records(copy) == benchmark.records(source)
    capsys.readouterr()
    assert main(["import", str(path), "--storage", copy_url]) == 0
    # Importing again adds nothing: every study is reported as kept.
    out = capsys.readouterr().out
    assert "imported 0 studies" in out and out.count("kept ") == len(source.get_all_studies())


@pytest.mark.parametrize(
    ("content", "expected"),
    [
        ("not json at all", "not JSON"),
        ('{"format": "something-else", "version": 1, "studies": []}', "not a tuner export"),
        ('{"format": "tuner-export", "version": 99, "studies": []}', "version 99"),
        ('{"format": "tuner-export", "version": 1, "studies": [{"name": "x", "direction": "maximize", '
         '"user_attrs": {}, "trials": []}]}', "not a tuner study"),
        ('{"format": "tuner-export", "version": 1, "studies": [{"name": "x", "direction": "maximize", '
         '"user_attrs": {"tuner": {}}, "trials": [{"state": "COMPLETE", "value": 1.0, "params": {"a": 5}, '
         '"distributions": {"a": {"name": "IntDistribution", "attributes": {"low": 0, "high": 2, "step": 1, '
         '"log": false}}}}]}]}', "trials[0]"),
        ('{"format": "tuner-export", "version": 1, "studies": [{"name": "x", "direction": "maximize", '
         '"user_attrs": {"tuner": {}}, "trials": [{"state": "RUNNING", "params": {}, "distributions": {}}]}]}',
         "RUNNING"),
    ],
)  # fmt: skip
def test_malformed_or_foreign_import_is_one_line_and_writes_nothing(
    tmp_path: Path, content: str, expected: str, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "bad.json"
    path.write_text(content)
    url = f"sqlite:///{tmp_path / 'target.db'}"
    assert main(["import", str(path), "--storage", url]) == 1
    err = capsys.readouterr().err.strip()
    # One line naming the file and what is wrong; the target storage was never created.
    assert err.startswith("tuner: error: ") and expected in err and "\n" not in err
    assert not (tmp_path / "target.db").exists()
    with pytest.raises(transfer.ImportRefused):
        transfer.read(path)
