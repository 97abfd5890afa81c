"""Shared results are untrusted input: crafted export files, with the replaying runner and real bash/ast checks.

An attacker controls every string of an export file. Imported, none may become a shell or Python statement,
change which verdict is recommended without saying so, or break the readers for the genuine studies.
"""

from __future__ import annotations

import ast
import json
import socket
import subprocess
import sys
from pathlib import Path
from typing import Any

import optuna
import pytest

from tests.helpers import make_config
from tuner import benchmark, interrupt, recommend, transfer
from tuner.benchmark import Target, make_record
from tuner.cli import main
from tuner.errors import TunerError, WorkerExited
from tuner.measurement import Measurement
from tuner.records import tuner_studies
from tuner.replay import ReplayRunner
from tuner.runner import TrialSpec
from tuner.settings import Settings
from tuner.signature import cpu_signature
from tuner.storage import open_storage
from tuner.study import StudyRun
from tuner.workload import Workload

SIGNATURE = cpu_signature()
EVIL = "x\nid; touch /tmp/tuner-pwned #\r\x1b[2J\x1b]0;title\x07'\"$(reboot)`ls`\u2028import os; os.system('id')"
CLI = [sys.executable, "-c", "import sys; from tuner.cli import main; sys.exit(main())"]
TINY = ["--cores", "2", "--mode", "infer", "--model", "tiny"]


def rate(spec: TrialSpec) -> float:
    fast = (spec.settings.intra_op, spec.settings.inter_op) == (2, 2)
    return 1300.0 if fast else 1000.0


def tuned(url: str) -> optuna.storages.RDBStorage:
    storage = open_storage(url)
    config = make_config(cores=2, trials=8, candidates=1, workload=Workload("tiny", "infer", 32))
    StudyRun(storage, config, ReplayRunner.from_rates(rate, noise=0.01)).run()
    return storage


def exported(tmp_path: Path, storage_url: str) -> dict[str, Any]:
    tuned(storage_url)
    path = tmp_path / "export.json"
    assert main(["export", "--output", str(path), "--storage", storage_url]) == 0
    data: dict[str, Any] = json.loads(path.read_text())
    return data


def poison(study: dict[str, Any]) -> None:
    """Every stored string an attacker can choose, in the metadata and the verdict, set to EVIL."""
    meta, verdict = study["user_attrs"]["tuner"], study["user_attrs"]["verdict"]
    meta["cpu"]["model_name"] = EVIL
    meta["cpu"]["vendor"] = EVIL
    meta["probe"]["framework_version"] = EVIL
    meta["runtime_note"] = EVIL
    verdict["text"] = EVIL
    verdict["measured"] = "2099-01-01T00:00:00+00:00"  # later than any genuine verdict


def write(tmp_path: Path, data: dict[str, Any], name: str = "crafted.json") -> Path:
    path = tmp_path / name
    path.write_text(json.dumps(data))
    return path


def test_crafted_strings_never_become_statements(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    data = exported(tmp_path, f"sqlite:///{tmp_path / 'source.db'}")
    poison(data["studies"][0])
    data["studies"][0]["name"] = "crafted-" + data["studies"][0]["name"]
    target = f"sqlite:///{tmp_path / 'target.db'}"
    assert main(["import", str(write(tmp_path, data)), "--storage", target]) == 0
    capsys.readouterr()
    assert main(["recommend", *TINY, "--format", "shell", "--storage", target]) == 0
    shell = capsys.readouterr().out
    # bash parses it, and it holds exactly comments, unset/export of known variables: nothing else runs.
    assert subprocess.run(["bash", "-n"], input=shell, text=True).returncode == 0
    statements = [line for line in shell.splitlines() if line and not line.startswith("#")]
    assert statements and all(line.split()[0] in ("export", "unset") for line in statements)
    names = {line.split()[1].split("=")[0] for line in statements}
    assert names <= {"TF_NUM_INTRAOP_THREADS", "TF_NUM_INTEROP_THREADS", "TF_ENABLE_ONEDNN_OPTS"}
    # No control character or escape code survives into the output.
    assert "\x1b" not in shell and "\r" not in shell and "\u2028" not in shell
    # Pasted into an interactive zsh, where "#" starts no comment, a comment line runs as a command: the
    # stored text in it holds nothing a shell acts on (separators, substitutions, quotes, globs).
    provenance = [line for line in shell.splitlines() if "tuner-pwned" in line]
    assert provenance and all(not set(";|&$`'\"<>*?(){}") & set(line) for line in provenance)
    capsys.readouterr()
    assert main(["recommend", *TINY, "--format", "python", "--storage", target]) == 0
    python = capsys.readouterr().out
    tree = ast.parse(python)
    # Python: only the os import, environment assignments, the two imports and three framework calls.
    kinds = [type(node).__name__ for node in tree.body]
    assert kinds[0] == "Import" and set(kinds) <= {"Import", "Assign", "Expr"}
    calls = [ast.unparse(node.value.func) for node in tree.body if isinstance(node, ast.Expr)]  # type: ignore[attr-defined]
    assert all(
        call.startswith(("tf.config.threading.set_", "keras.backend.set_image_data_format", "os.environ.pop"))
        for call in calls
    )
    assert "os.system" not in "".join(ast.unparse(node) for node in tree.body)
    capsys.readouterr()
    assert main(["show", "--storage", target]) == 0
    shown = capsys.readouterr().out
    # show prints the crafted strings as plain text on their own row: no escape code reaches the terminal.
    assert "\x1b" not in shown and "\r" not in shown and "tuner-pwned" in shown


def test_a_verdict_recommending_a_crafted_name_is_refused_on_import(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    data = exported(tmp_path, f"sqlite:///{tmp_path / 'source.db'}")
    data["studies"][0]["user_attrs"]["verdict"]["recommended"] = EVIL
    target = f"sqlite:///{tmp_path / 'target.db'}"
    # The recommended candidate's name is logged by tuner exec and benchmark and keyed on by the table: it
    # must be a baseline's name or "trial N". The study is refused whole, in one line, and nothing is stored.
    assert main(["import", str(write(tmp_path, data)), "--storage", target]) == 1
    err = capsys.readouterr().err
    assert "not a candidate name" in err and "\x1b" not in err
    # Nothing landed, so the database this import made is gone again: no empty storage for show to find.
    assert not (tmp_path / "target.db").exists()
    existing = f"sqlite:///{tmp_path / 'kept.db'}"
    open_storage(existing).get_all_studies()
    assert main(["import", str(write(tmp_path, data)), "--storage", existing]) == 1
    # A storage that was there before is never removed, even where nothing was imported into it.
    assert main(["show", "--storage", existing]) == 0
    assert "no tuner studies" in capsys.readouterr().out


def test_an_encoding_declaration_in_stored_text_cannot_turn_a_comment_into_code(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    data = exported(tmp_path, f"sqlite:///{tmp_path / 'source.db'}")
    meta, verdict = data["studies"][0]["user_attrs"]["tuner"], data["studies"][0]["user_attrs"]["verdict"]
    # UTF-7 decodes "+AAo-" to a newline: declared on line 1 or 2, the next comment would become a statement.
    meta["probe"]["framework_version"] = "2.16 -*- coding: utf-7 -*-"
    meta["cpu"]["model_name"] = "EPYC -*- coding: utf-7 -*-"
    verdict["text"] = "+AAo-print(+ACI-PWNED+ACI-)"
    target = f"sqlite:///{tmp_path / 'target.db'}"
    assert main(["import", str(write(tmp_path, data)), "--storage", target]) == 0
    capsys.readouterr()
    assert main(["recommend", *TINY, "--format", "python", "--storage", target]) == 0
    source = capsys.readouterr().out.encode()
    # Parsed as Python parses a saved file (bytes, honouring any encoding declaration): no print call.
    tree = ast.parse(source)
    assert "PWNED" not in ast.dump(tree) and source.startswith(b"# -*- coding: utf-8 -*-\n")


def test_imported_verdict_does_not_replace_this_machines_own(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    data = exported(tmp_path, f"sqlite:///{tmp_path / 'source.db'}")
    study = data["studies"][0]
    study["name"] = "other-" + study["name"]
    study["user_attrs"]["verdict"]["measured"] = "2099-01-01T00:00:00+00:00"
    study["user_attrs"]["verdict"]["recommended_params"] = {"intra_op": 1, "inter_op": 1, "data_format": "NHWC"}
    verdict = study["user_attrs"]["verdict"]  # a verdict whose parts agree: its recommended name's settings
    verdict["params"][verdict["recommended"]] = verdict["recommended_params"]
    own = f"sqlite:///{tmp_path / 'own.db'}"
    tuned(own)
    assert main(["import", str(write(tmp_path, data)), "--storage", own]) == 0
    storage = open_storage(own, create=False)
    (found,) = recommend.recommend(storage, SIGNATURE, cores=2, mode="infer", model="tiny")
    # This machine's own verdict wins over an imported one, however late its date.
    assert found.imported is None and found.settings.intra_op != 1
    (other,) = recommend.recommend(storage, SIGNATURE, cores=2, mode="infer", model="tiny", prefer_imported=True)
    # Asked for, the imported one is used, and it says so.
    assert other.settings.intra_op == 1 and "IMPORTED from" in other.source()


def test_an_imported_study_is_never_resumed_as_this_machines_own(tmp_path: Path) -> None:
    data = exported(tmp_path, f"sqlite:///{tmp_path / 'source.db'}")
    target = f"sqlite:///{tmp_path / 'target.db'}"
    assert main(["import", str(write(tmp_path, data)), "--storage", target]) == 0
    before = len(optuna.load_study(study_name=data["studies"][0]["name"], storage=target).trials)
    # The same CPU, model and settings name the study as the imported one: tuning here would resume it, mix
    # its trials (measured elsewhere) with this machine's and benchmark its verdict as if measured here. It is
    # refused with one line saying why and what to do, and the imported study is left as it was.
    with pytest.raises(TunerError, match=r"was imported \(from .*crafted\.json\).*another --storage"):
        tuned(target)
    assert len(optuna.load_study(study_name=data["studies"][0]["name"], storage=target).trials) == before


@pytest.mark.parametrize(
    ("where", "value"),
    [
        ("probe", None),
        ("cores", "many"),
        ("mode", ["train"]),
        ("cpu", "x"),
        ("created", "yesterday"),
    ],
)
def test_malformed_imported_study_is_refused_and_the_rest_still_work(
    tmp_path: Path, where: str, value: Any, capsys: pytest.CaptureFixture[str]
) -> None:
    data = exported(tmp_path, f"sqlite:///{tmp_path / 'source.db'}")
    bad = json.loads(json.dumps(data["studies"][0]))
    bad["name"] = "bad-" + bad["name"]
    bad["user_attrs"]["tuner"][where] = value
    data["studies"].append(bad)
    target = f"sqlite:///{tmp_path / 'target.db'}"
    tuned(target)
    # The malformed study is refused with a line naming it; the import ends with exit 1.
    assert main(["import", str(write(tmp_path, data)), "--storage", target]) == 1
    err = capsys.readouterr().err
    assert f"bad-{data['studies'][0]['name']}" in err and f"tuner.{where}" in err
    # The genuine studies still show, recommend and report.
    for argv in (["show"], ["recommend", *TINY], ["report", "--output", str(tmp_path / "r.html")]):
        assert main([*argv, "--storage", target]) == 0, argv


def test_poison_already_in_storage_is_skipped_with_one_warning(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    url = f"sqlite:///{tmp_path / 'shared.db'}"
    storage = tuned(url)
    # Another worker of a shared PostgreSQL study wrote garbage straight into it (no import to stop it).
    study = optuna.create_study(storage=storage, study_name="poisoned")
    study.set_user_attr("tuner", {"model": "tiny", "mode": "infer", "cores": "many"})
    study.set_user_attr("verdict", {"recommended": "x", "recommended_params": {"intra_op": "$(id)"}})
    nested: Any = "deep"
    for _ in range(900):
        nested = [nested]
    deep = optuna.create_study(storage=storage, study_name="deep")
    deep.set_user_attr("tuner", storage.get_all_studies()[0].user_attrs["tuner"])
    deep.set_user_attr("verdict", nested)
    assert main(["recommend", *TINY, "--storage", url]) == 0
    err = capsys.readouterr().err
    # Each malformed study is one warning line; the genuine verdict is still recommended.
    assert err.count("tuner: warning: study") == 2 and "poisoned" in err and "deep" in err
    # show and report skip them too, and still show the genuine study.
    assert main(["show", "--storage", url]) == 0
    shown = capsys.readouterr()
    assert "tiny" in shown.out and "poisoned" in shown.err
    assert main(["report", "--storage", url, "--output", str(tmp_path / "r.html")]) == 0


def test_a_shared_verdict_whose_instances_cannot_share_its_cores_is_skipped(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    url = f"sqlite:///{tmp_path / 'shared.db'}"
    storage = tuned(url)
    (genuine,) = storage.get_all_studies()
    # Another worker of a shared study wrote a newer verdict of 3 instances on the study's 2 cores: each
    # field well-formed, but no launch can split 2 cores 3 ways (and no search samples it).
    verdict = json.loads(json.dumps(genuine.user_attrs["verdict"]))
    verdict["measured"] = "2999-01-01T00:00:00+00:00"
    verdict["recommended_params"]["instances"] = 3
    verdict["params"][verdict["recommended"]]["instances"] = 3
    forged = optuna.create_study(storage=storage, study_name="three-on-two")
    forged.set_user_attr("tuner", genuine.user_attrs["tuner"])
    forged.set_user_attr("verdict", verdict)
    assert main(["recommend", *TINY, "--format", "shell", "--storage", url]) == 0
    out, err = capsys.readouterr()
    # One warning line names the study and why; the genuine verdict is what is recommended, as one instance.
    assert err.count("tuner: warning: study three-on-two skipped") == 1 and "3 instances" in err
    assert "# 1 instance x 2 cores" in out and "3 instances" not in out
    app = tmp_path / "app.py"
    app.write_text("print('ran')")
    done = subprocess.run(
        [*CLI, "exec", *TINY, "--storage", url, "--", sys.executable, str(app)], capture_output=True, text=True
    )
    # exec skips it the same way and starts the program on the genuine verdict, not stopping at the forged one.
    assert done.returncode == 0 and done.stdout == "ran\n", done.stderr
    assert "three-on-two skipped" in done.stderr and "1 instance x 2 cores" in done.stderr


def test_interrupted_import_resumes_and_never_leaves_half_a_study(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    data = exported(tmp_path, f"sqlite:///{tmp_path / 'source.db'}")
    path = write(tmp_path, data)
    target = f"sqlite:///{tmp_path / 'target.db'}"
    batches = [0]
    real = optuna.Study.add_trials

    def interrupted_add(self: optuna.Study, trials: Any) -> None:
        batches[0] += 1
        real(self, trials[:3])
        raise KeyboardInterrupt  # as a SIGTERM would, half-way through the study's trials

    monkeypatch.setattr(optuna.Study, "add_trials", interrupted_add)
    assert main(["import", str(path), "--storage", target]) == 130
    assert "studies imported so far are kept (one cut short is redone)" in capsys.readouterr().err
    storage = open_storage(target, create=False)
    half = [s for s in storage.get_all_studies() if s.user_attrs.get(transfer.IMPORTING)]
    # The cut study is marked as importing and has no tuner metadata or verdict, so no reader uses it.
    assert len(half) == 1 and "tuner" not in half[0].user_attrs and "verdict" not in half[0].user_attrs
    assert main(["recommend", *TINY, "--storage", target]) == 1
    monkeypatch.setattr(optuna.Study, "add_trials", real)
    capsys.readouterr()
    # Running the same import again redoes that study whole: every trial, then its verdict.
    assert main(["import", str(path), "--storage", target]) == 0
    again = optuna.load_study(study_name=half[0].study_name, storage=open_storage(target, create=False))
    source = next(s for s in data["studies"] if s["name"] == half[0].study_name)
    assert len(again.trials) == len(source["trials"]) and "verdict" in again.user_attrs
    assert again.user_attrs[transfer.IMPORTING] is False


def test_an_import_killed_before_its_mark_is_redone_not_kept(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    data = exported(tmp_path, f"sqlite:///{tmp_path / 'source.db'}")
    name = data["studies"][0]["name"]
    target = f"sqlite:///{tmp_path / 'target.db'}"
    # What a SIGKILL between create_study and the importing mark leaves: the study, with nothing in it.
    optuna.create_study(storage=open_storage(target), study_name=name, direction="maximize")
    assert main(["import", str(write(tmp_path, data)), "--storage", target]) == 0
    # It is taken for the cut-short import it is, and redone whole: not "kept" (that blocked it for good,
    # while show saw no tuner study and export exported none).
    assert f"kept {name}" not in capsys.readouterr().out
    again = optuna.load_study(study_name=name, storage=open_storage(target, create=False))
    assert len(again.trials) == len(data["studies"][0]["trials"]) and "verdict" in again.user_attrs


def test_a_study_with_anything_in_it_is_kept_on_import(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    data = exported(tmp_path, f"sqlite:///{tmp_path / 'source.db'}")
    name = data["studies"][0]["name"]
    target = f"sqlite:///{tmp_path / 'target.db'}"
    mine = optuna.create_study(storage=open_storage(target), study_name=name, direction="maximize")
    mine.add_trial(optuna.trial.create_trial(value=1.0))  # a trial, and no attribute: someone's own study
    assert main(["import", str(write(tmp_path, data)), "--storage", target]) == 0
    # Only an empty study is taken for a cut-short import: one holding a trial is never replaced.
    assert f"kept {name}" in capsys.readouterr().out
    assert len(optuna.load_study(study_name=name, storage=open_storage(target, create=False)).trials) == 1


def test_first_ctrl_c_stops_an_import_between_studies(tmp_path: Path) -> None:
    data = exported(tmp_path, f"sqlite:///{tmp_path / 'source.db'}")
    target = open_storage(f"sqlite:///{tmp_path / 'target.db'}")
    with interrupt.handling():
        interrupt._pending = 2  # a SIGINT already received: the import stops at its first checkpoint
        with pytest.raises(KeyboardInterrupt):
            transfer.import_into(target, data, "export.json")
    # Nothing was written.
    assert target.get_all_studies() == []


def _unstamped(attrs: dict[str, Any], path: Path) -> dict[str, Any]:
    """A copied trial's attributes without the mark that import puts on a merged benchmark record, which
    must name the file it came from."""
    if "record" not in attrs:
        return attrs
    record = dict(attrs["record"])
    # A merged record says where it came from: this file, today.
    assert record.pop("imported")["file"] == str(path)
    return {**attrs, "record": record}


def test_export_then_import_moves_studies_and_records_and_twice_changes_nothing(
    tmp_path: Path, storage_url: str, capsys: pytest.CaptureFixture[str]
) -> None:
    source = tuned(storage_url)
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
        if info.study_name != benchmark.BENCH_STUDY:  # records are merged into the target's own study
            assert copied.pop("imported")["file"] == str(path) and copied.pop("tuner_importing") is False
        assert a.user_attrs == copied
        assert [(t.state, t.value, t.params, t.user_attrs) for t in a.trials if t.state.is_finished()] == [
            (t.state, t.value, t.params, _unstamped(t.user_attrs, path)) for t in b.trials
        ]
    assert [_unstamped({"record": r}, path)["record"] for r in benchmark.records(copy)] == benchmark.records(source)
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
        # Longer than Optuna's column: the length is named (it was called "not a non-empty string").
        ('{"format": "tuner-export", "version": 1, "studies": [{"name": "' + "x" * 5000 + '", "direction": '
         '"maximize", "user_attrs": {"tuner": {}}, "trials": []}]}', "5000 characters long; a study name holds at"),
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


def test_a_malformed_benchmark_record_is_skipped_with_one_warning(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    url = f"sqlite:///{tmp_path / 'shared.db'}"
    storage = tuned(url)
    m = Measurement(32, (0.1, 0.1), (0.2,), {"framework_version": "2.21.0"})
    target = Target("tensorflow", Workload("tiny", "infer", 32), (0, 1))
    benchmark.store(storage, make_record(target, "tf-default", Settings(), [m], SIGNATURE, "r1"))
    poisoned = make_record(target, "heuristic", Settings(), [m], SIGNATURE, "r1")
    poisoned["images_per_sec"] = "fast"  # a shared storage's worker wrote garbage
    benchmark.store(storage, {**poisoned, "value": 1.0})
    assert main(["table", "--storage", url, "--format", "csv"]) == 0
    captured = capsys.readouterr()
    # The good record is tabulated; the malformed one is one warning line naming what is wrong.
    assert "tf-default" in captured.out and captured.err.count("tuner: warning:") == 1
    assert "images_per_sec" in captured.err
    assert main(["report", "--storage", url, "--output", str(tmp_path / "r.html")]) == 0


def test_benchmark_records_of_another_machine_are_merged_not_dropped(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    m = Measurement(32, (0.1, 0.1), (0.2,), {"framework_version": "2.21.0"})
    target = Target("tensorflow", Workload("tiny", "infer", 32), (0, 1))
    source, mine = (f"sqlite:///{tmp_path / name}" for name in ("source.db", "mine.db"))
    benchmark.store(open_storage(source), make_record(target, "tf-default", Settings(), [m], SIGNATURE, "theirs"))
    benchmark.store(open_storage(mine), make_record(target, "tf-default", Settings(), [m], SIGNATURE, "mine"))
    path = tmp_path / "export.json"
    assert main(["export", "--output", str(path), "--storage", source]) == 0
    assert main(["import", str(path), "--storage", mine]) == 0
    assert main(["import", str(path), "--storage", mine]) == 0
    # Both machines' records are there, each once, though the target already had a benchmark study.
    runs = sorted(r.get("run_id", "") for r in benchmark.records(open_storage(mine, create=False)))
    assert runs == ["mine", "theirs"]


@pytest.mark.parametrize("hidden", [False, True])
def test_a_files_benchmark_study_brings_its_records_and_none_of_its_attributes(
    tmp_path: Path, hidden: bool, capsys: pytest.CaptureFixture[str]
) -> None:
    m = Measurement(32, (0.1, 0.1), (0.2,), {"framework_version": "2.21.0"})
    target = Target("tensorflow", Workload("tiny", "infer", 32), (0, 1))
    source = f"sqlite:///{tmp_path / 'source.db'}"
    benchmark.store(tuned(source), make_record(target, "tf-default", Settings(), [m], SIGNATURE, "theirs"))
    data = transfer.export(open_storage(source, create=False))
    genuine = next(s for s in data["studies"] if "verdict" in s["user_attrs"])
    (bench,) = (s for s in data["studies"] if s["name"] == benchmark.BENCH_STUDY)
    # The attacker's benchmark study carries a verdict of its own: dated later than any genuine one, with
    # other settings; or also the importing mark that makes export leave a study out.
    forged = json.loads(json.dumps(genuine["user_attrs"]))
    forged["verdict"]["measured"] = "2099-01-01T00:00:00+00:00"
    forged["verdict"]["recommended_params"] = {"intra_op": 1, "inter_op": 1, "data_format": "NHWC"}
    forged["verdict"]["params"][forged["verdict"]["recommended"]] = forged["verdict"]["recommended_params"]
    bench["user_attrs"].update(forged, **({transfer.IMPORTING: True} if hidden else {}))
    data["studies"] = [bench]
    own = f"sqlite:///{tmp_path / 'own.db'}"
    benchmark.store(tuned(own), make_record(target, "tf-default", Settings(), [m], SIGNATURE, "mine"))
    path = write(tmp_path, data)
    capsys.readouterr()
    assert main(["import", str(path), "--storage", own]) == 0
    storage = open_storage(own, create=False)
    attrs = optuna.load_study(study_name=benchmark.BENCH_STUDY, storage=storage).user_attrs
    # Only the file's record is merged; none of its attributes of the study reach this machine's.
    assert attrs == {"tuner_benchmarks": 1}
    assert sorted(r.get("run_id", "") for r in benchmark.records(storage)) == ["mine", "theirs"]
    # So this machine's own verdict is still the one recommended (the forged one never reads as ours) ...
    (found,) = recommend.recommend(storage, SIGNATURE, cores=2, mode="infer", model="tiny")
    assert found.imported is None and found.settings.intra_op != 1 and found.study != benchmark.BENCH_STUDY
    # ... and export still passes on this machine's records with the merged ones.
    shared = transfer.export(storage)
    (records,) = (s["trials"] for s in shared["studies"] if s["name"] == benchmark.BENCH_STUDY)
    assert sorted(t["user_attrs"]["record"]["run_id"] for t in records) == ["mine", "theirs"]
    # The output says what happened: a record was merged, no study imported, so the study is not "kept".
    assert "imported 0 studies and 1 benchmark records" in (out := capsys.readouterr().out) and "kept" not in out
    # Importing again finds every record there: none merged, nothing written, and now "kept" is true.
    assert transfer.import_into(storage, transfer.read(path), str(path)).records == 0
    assert main(["import", str(path), "--storage", own]) == 0
    assert f"kept {benchmark.BENCH_STUDY}" in capsys.readouterr().out
    assert optuna.load_study(study_name=benchmark.BENCH_STUDY, storage=storage).user_attrs == attrs


@pytest.mark.parametrize(
    ("where", "token"),
    [("attribute", "NaN"), ("attribute", "Infinity"), ("intermediate", "-Infinity"), ("value", "1e999")],
)
def test_nan_or_infinity_in_a_file_is_refused_and_writes_nothing(
    tmp_path: Path, where: str, token: str, capsys: pytest.CaptureFixture[str]
) -> None:
    data = exported(tmp_path, f"sqlite:///{tmp_path / 'source.db'}")
    study = data["studies"][0]
    trial = next(t for t in study["trials"] if t["state"] == "COMPLETE")
    if where == "value":
        trial["value"] = "PLACEHOLDER"
    elif where == "intermediate":
        trial["intermediate_values"]["0"] = "PLACEHOLDER"
    else:
        study["user_attrs"]["note"] = {"rate": "PLACEHOLDER"}
    path = tmp_path / "crafted.json"
    path.write_text(json.dumps(data).replace('"PLACEHOLDER"', token))  # as Python's json.dumps would write it
    url = f"sqlite:///{tmp_path / 'target.db'}"
    capsys.readouterr()
    assert main(["import", str(path), "--storage", url]) == 1
    err = capsys.readouterr().err.strip()
    # JSON has no NaN or Infinity (1e999 reads as Infinity) and export could not write them back: the file is
    # refused with one line naming it and the number, and the target storage was never created.
    assert err.startswith(f"tuner: error: {path}: ") and token in err and "\n" not in err
    assert not (tmp_path / "target.db").exists()


@pytest.mark.parametrize(
    ("where", "token"),
    [("intermediate", '"nan"'), ("intermediate", '"inf"'), ("intermediate", "true"), ("value", '"inf"')],
)
def test_a_number_written_as_text_is_refused_as_nan_is(
    tmp_path: Path, where: str, token: str, capsys: pytest.CaptureFixture[str]
) -> None:
    data = exported(tmp_path, f"sqlite:///{tmp_path / 'source.db'}")
    trial = next(t for t in data["studies"][0]["trials"] if t["state"] == "COMPLETE")
    if where == "value":
        trial["value"] = "PLACEHOLDER"
    else:
        trial["intermediate_values"]["0"] = "PLACEHOLDER"
    path = tmp_path / "crafted.json"
    path.write_text(json.dumps(data).replace('"PLACEHOLDER"', token))
    url = f"sqlite:///{tmp_path / 'target.db'}"
    capsys.readouterr()
    # float("nan") reads the text "nan": a file could bring NaN in that way, which export could not write
    # back. Refused with one line, and nothing written.
    assert main(["import", str(path), "--storage", url]) == 1
    err = capsys.readouterr().err.strip()
    assert err.startswith(f"tuner: error: {path}: ") and "finite" in err and "\n" not in err
    assert not (tmp_path / "target.db").exists()


def test_a_file_nested_past_the_parser_or_with_unusual_choices_is_one_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    deep = tmp_path / "deep.json"
    deep.write_text("[" * 100_000 + "]" * 100_000)
    url = f"sqlite:///{tmp_path / 'target.db'}"
    capsys.readouterr()
    # Deeper than Python's parser goes: one line, not an unexpected RecursionError.
    assert main(["import", str(deep), "--storage", url]) == 1
    assert capsys.readouterr().err.strip() == f"tuner: error: {deep}: nested too deep; not a tuner export"
    # Choices that are no JSON primitives: Optuna's several-line warning becomes the one line's reason.
    data = exported(tmp_path, f"sqlite:///{tmp_path / 'source.db'}")
    trial = next(t for t in data["studies"][0]["trials"] if t["state"] == "COMPLETE")
    name = next(iter(trial["distributions"]))
    trial["distributions"][name] = {"name": "CategoricalDistribution", "attributes": {"choices": [{"a": 1}]}}
    path = write(tmp_path, data)
    capsys.readouterr()  # the export's own lines
    assert main(["import", str(path), "--storage", url]) == 1
    err = capsys.readouterr().err.strip()
    assert err.startswith(f"tuner: error: {path}: ") and "distributions" in err and "\n" not in err
    assert not (tmp_path / "target.db").exists()


def test_a_malformed_record_in_a_file_is_refused_and_the_others_are_merged(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    m = Measurement(32, (0.1, 0.1), (0.2,), {"framework_version": "2.21.0"})
    target = Target("tensorflow", Workload("tiny", "infer", 32), (0, 1))
    source = f"sqlite:///{tmp_path / 'source.db'}"
    storage = open_storage(source)
    for run_id in ("good", "bad"):
        benchmark.store(storage, make_record(target, "tf-default", Settings(), [m], SIGNATURE, run_id))
    data = transfer.export(open_storage(source, create=False))
    (bench,) = (s for s in data["studies"] if s["name"] == benchmark.BENCH_STUDY)
    bad = next(t for t in bench["trials"] if t["user_attrs"]["record"]["run_id"] == "bad")
    bad["user_attrs"]["record"]["round_rates"] = [[0]]  # a rate of 0 would divide the table by zero
    good = next(t for t in bench["trials"] if t["user_attrs"]["record"]["run_id"] == "good")
    bench["trials"].append(json.loads(json.dumps(good)))  # and the good one twice
    own = f"sqlite:///{tmp_path / 'own.db'}"
    # The good record is merged, once; the bad one is refused with a line naming it, and the command exits 1.
    assert main(["import", str(write(tmp_path, data)), "--storage", own]) == 1
    err = capsys.readouterr().err
    # Named by its place in the file (every record's unsaved trial number read -1 before).
    assert "refused tuner-benchmarks trials[1] record" in err and "round_rates" in err
    assert [r["run_id"] for r in benchmark.records(open_storage(own, create=False))] == ["good"]


def test_a_benchmark_study_poisoned_before_the_fix_gives_no_verdict(tmp_path: Path) -> None:
    own = f"sqlite:///{tmp_path / 'own.db'}"
    storage = tuned(own)
    genuine = next(s for s in storage.get_all_studies() if "verdict" in s.user_attrs)
    poisoned = optuna.create_study(storage=storage, study_name=benchmark.BENCH_STUDY)
    # What an import wrote on the records' study before it stopped copying the file's attributes.
    for key, value in genuine.user_attrs.items():
        poisoned.set_user_attr(key, value)
    poisoned.set_user_attr(transfer.IMPORTING, True)
    m = Measurement(32, (0.1, 0.1), (0.2,), {"framework_version": "2.21.0"})
    target = Target("tensorflow", Workload("tiny", "infer", 32), (0, 1))
    benchmark.store(storage, make_record(target, "tf-default", Settings(), [m], SIGNATURE, "mine"))
    # Neither recommend nor show takes the records' study for a tuner study, whatever it holds.
    assert all(r.study != benchmark.BENCH_STUDY for r in recommend.verdicts(storage))
    assert all(s.study_name != benchmark.BENCH_STUDY for s in tuner_studies(storage, lambda line: None))
    # Export passes its records on, despite the importing mark, and none of the forged attributes.
    (bench,) = (s for s in transfer.export(storage)["studies"] if s["name"] == benchmark.BENCH_STUDY)
    assert bench["user_attrs"] == {"tuner_benchmarks": 1} and len(bench["trials"]) == 1


def test_a_redacted_export_keeps_the_results_and_drops_who_and_where(
    tmp_path: Path, storage_url: str, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setattr(socket, "gethostname", lambda: "alice-laptop")
    stderr = (
        'Traceback (most recent call last):\n  File "/home/alice/work/model.py", line 3, in <module>\n'
        "ValueError: no weights at /home/alice/work/weights.h5 on alice-laptop\n"
    )

    def script(spec: TrialSpec, call: int) -> list[float] | BaseException:
        if call == 3:  # one sampled trial fails, its worker's last words naming a home directory and the host
            return WorkerExited("worker exited with status 1", stderr)
        return [spec.global_batch / rate(spec)] * (spec.policy.warmup + spec.policy.timed)

    source = open_storage(storage_url)
    config = make_config(cores=2, trials=8, candidates=1, workload=Workload("tiny", "infer", 32))
    StudyRun(source, config, ReplayRunner(script)).run()
    target = Target("tensorflow", Workload("tiny", "infer", 32), (0, 1))
    m = Measurement(32, (0.1, 0.1), (0.2,), {"framework_version": "2.21.0", "openmp_path": "/opt/intel/libiomp5.so"})
    benchmark.store(source, make_record(target, "tf-default", Settings(), [m], SIGNATURE, "r1"))
    run_id = benchmark.new_run_id()  # 'PID-HEX', as tuner benchmark names its runs
    benchmark.store(source, make_record(target, "heuristic", Settings(), [m], SIGNATURE, run_id))
    path = tmp_path / "shared.json"
    assert main(["export", "--output", str(path), "--storage", storage_url, "--redact"]) == 0
    said = capsys.readouterr().out
    text = path.read_text()
    # Nothing names the machine, its user or its processes: the host is host-1 wherever it was (owner,
    # metadata, records, free text), no pid, boot id or worker stderr is left, and paths keep their last part.
    assert "alice" not in text and "/home/" not in text and "/opt/" not in text
    assert '"pid"' not in text and "boot_id" not in text and "stderr_tail" not in text
    assert run_id not in text and f"run-{run_id.split('-')[1]}" in text  # the run keeps a name, not the pid
    assert "host-1" in text and "redacted 1 host names" in said
    failed = next(t for s in json.loads(text)["studies"] for t in s["trials"] if t["state"] == "FAIL")
    assert failed["user_attrs"]["fail_message"].endswith("ValueError: no weights at .../weights.h5 on host-1")
    # What the file is for is whole: it imports, and the copy has the same verdict, trial values, params and
    # measurements (the CPU signature among them), and the same benchmark figures.
    copy_url = f"sqlite:///{tmp_path / 'copy.db'}"
    assert main(["import", str(path), "--storage", copy_url]) == 0
    copy = open_storage(copy_url, create=False)
    a = optuna.load_study(study_name=config.name, storage=source)
    b = optuna.load_study(study_name=config.name, storage=copy)
    assert b.user_attrs["verdict"] == a.user_attrs["verdict"]
    assert b.user_attrs["tuner"]["cpu"] == a.user_attrs["tuner"]["cpu"]
    assert [(t.state, t.value, t.params) for t in a.trials] == [(t.state, t.value, t.params) for t in b.trials]
    assert [t.user_attrs.get("measurement") for t in a.trials] == [t.user_attrs.get("measurement") for t in b.trials]

    def figures(storage: optuna.storages.RDBStorage) -> list[tuple[Any, ...]]:
        return [(r.get("label"), r.get("images_per_sec"), r.get("round_rates")) for r in benchmark.records(storage)]

    assert figures(copy) == figures(source) and any(label == "tf-default" for label, _, _ in figures(copy))


@pytest.mark.parametrize(
    ("stored", "shared"),
    [
        ("/home/alice/envs/tf/bin/python", ".../python"),
        ("cannot start worker ~/envs/tf/bin/python: no such file", "cannot start worker .../python: no such file"),
        ("sqlite:////home/alice/studies.db", "sqlite://.../studies.db"),
        ("KERAS_HOME=/tmp/tuner-keras-x1", "KERAS_HOME=.../tuner-keras-x1"),
        # A home folder is a user name: it goes whole, with or without a path under it.
        ("HOME=/home/alice", "HOME=~"),
        ("in /Users/alice/My Documents", "in ~/My Documents"),
        ("~alice/envs/python", ".../python"),
        ("see https://example.com/docs/page", "see https://example.com/docs/page"),
        # Not paths: ratios, units, dates and relative names stay as they are.
        ("1/2 of its cores, 24.5 img/s on 2026/11/30", "1/2 of its cores, 24.5 img/s on 2026/11/30"),
        ("studies/tuner.db", "studies/tuner.db"),
    ],
)
def test_redaction_cuts_directories_and_leaves_what_is_no_path(
    stored: str, shared: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("HOME", "/home/tester")  # the exporter's own home is '~' too: not one of these paths
    data = {
        "studies": [{"name": "s", "direction": "maximize", "user_attrs": {"tuner": {}, "note": stored}, "trials": []}]
    }
    transfer.redact(data)
    # Only the directories of an absolute (or ~) path go; the file name stays, so the reader still knows
    # which library or interpreter it was.
    assert data["studies"][0]["user_attrs"]["note"] == shared


@pytest.mark.parametrize(
    ("stored", "shared"),
    [
        ("HOME=/srv/alice", "HOME=~"),
        ("no weights at /srv/alice", "no weights at ~"),
        ("cannot start worker /srv/alice/envs/tf/bin/python", "cannot start worker .../python"),
        # Another folder that only starts the same keeps its last part, as any path does.
        ("/srv/alice2/model.py and /srv/alice2", ".../model.py and .../alice2"),
    ],
)
def test_the_exporting_users_own_home_goes_wherever_it_is(
    stored: str, shared: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("HOME", "/srv/alice")  # not under /home or /Users: its last part would name the user
    data = {
        "studies": [{"name": "s", "direction": "maximize", "user_attrs": {"tuner": {}, "note": stored}, "trials": []}]
    }
    transfer.redact(data)
    # The home folder itself becomes '~', so "alice" is not left as a path's last part.
    assert data["studies"][0]["user_attrs"]["note"] == shared


def test_a_host_named_like_a_value_changes_no_data_only_free_text(
    tmp_path: Path, storage_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A machine called "default" (or "tensorflow"): its name is also a word of the data itself.
    monkeypatch.setattr(socket, "gethostname", lambda: "default")
    source = tuned(storage_url)
    study = optuna.load_study(study_name=source.get_all_studies()[0].study_name, storage=source)
    study.set_user_attr("note", "measured on default while idle")
    data = transfer.export(source)
    before = json.loads(json.dumps(data))
    transfer.redact(data)
    shared, original = data["studies"][0], before["studies"][0]
    # The host is host-1 where it is a host and in free text ...
    assert shared["user_attrs"]["tuner"]["host"] == "host-1"
    assert shared["user_attrs"]["note"] == "measured on host-1 while idle"
    # ... while the data keeps "default": the confirmation's candidates, the verdict, every trial's params.
    assert shared["user_attrs"]["confirmation"]["candidates"] == original["user_attrs"]["confirmation"]["candidates"]
    assert "tf-default" in shared["user_attrs"]["confirmation"]["candidates"]
    assert (
        shared["user_attrs"]["verdict"]["recommended_params"] == original["user_attrs"]["verdict"]["recommended_params"]
    )
    assert [t["params"] for t in shared["trials"]] == [t["params"] for t in original["trials"]]
    assert shared["user_attrs"]["tuner"]["runtime"] == original["user_attrs"]["tuner"]["runtime"]


def test_a_long_import_and_an_export_say_what_they_do(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    data = exported(tmp_path, f"sqlite:///{tmp_path / 'source.db'}")
    # The export said what it was doing before it began (a big storage takes a while).
    assert "exporting the tuner studies and benchmark records of sqlite:///" in capsys.readouterr().err
    monkeypatch.setattr(transfer, "PROGRESS_S", 0.0)  # every study says so (10 s apart in use)
    assert main(["import", str(write(tmp_path, data)), "--storage", f"sqlite:///{tmp_path / 'target.db'}"]) == 0
    err = capsys.readouterr().err
    trials = sum(len(study["trials"]) for study in data["studies"])
    # A start line with the file's size in studies and trials, then how far it is, study by study.
    assert f"importing {len(data['studies'])} studies ({trials} trials) from" in err
    assert f"import: study 1/{len(data['studies'])}, 0 imported so far" in err
