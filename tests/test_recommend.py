"""Recommendations by CPU signature, with a replaying runner."""

from __future__ import annotations

import dataclasses
import json
import re

import optuna
import pytest

from tests.helpers import make_config
from tuner import recommend
from tuner.cli import main
from tuner.errors import TunerError
from tuner.replay import ReplayRunner
from tuner.runner import TrialSpec
from tuner.signature import cpu_signature
from tuner.storage import open_storage
from tuner.study import StudyRun
from tuner.workload import Workload

SIGNATURE = cpu_signature()
WINNER = "intra_op=2;inter_op=2;data_format=NHWC;onednn=True"


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
    # Shell: export lines TensorFlow reads before it starts, and where a program sets them itself.
    assert "export TF_NUM_INTRAOP_THREADS=2" in shell and "export TF_NUM_INTEROP_THREADS=2" in shell
    assert "intra_op 2 and inter_op 2 by tf.config.threading" in shell
    # Every comment line, the tool's own words too, holds nothing a shell acts on: pasted into an
    # interactive zsh, where "#" starts no comment, it runs nothing.
    comments = [line[2:] for line in shell.splitlines() if line.startswith("# ")]
    assert comments and all(re.fullmatch(r"[A-Za-z0-9 .,:/@%+=_\[\]-]*", line) for line in comments)
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
    out = capsys.readouterr().out
    # The text format lists every core count and mode, one block each headed by its target, within 120
    # columns; into a pipe (not a terminal) without colour codes.
    heads = [line for line in out.splitlines() if line and not line.startswith(" ")]
    assert len(heads) == 2 and {"infer", "train"} == {head.split()[1] for head in heads}
    assert all(len(line) <= 120 for line in out.splitlines()) and "\x1b" not in out


def test_text_names_the_settings_launch_verdict_and_source_and_colours_a_win(storage_url: str) -> None:
    (found,) = recommend.recommend(tuned_storage(storage_url), SIGNATURE, cores=2, mode="infer", model="tiny")
    lines = recommend.render([found], "text").splitlines()
    # First what to use, then one labelled line each for what it sets, how it launches, why, and from where.
    assert lines[0].startswith("tiny infer on 2 cores (tensorflow): trial ")
    assert [line.split(":")[0].strip() for line in lines[1:]] == ["settings", "launch", "verdict", "source"]
    assert found.settings.label() in lines[1] and "wins" in lines[3]
    # A clear win is green where colour is on; the colour wraps the name only.
    coloured = recommend.render([found], "text", colour=True)
    assert f"\x1b[32m{found.recommended}\x1b[0m" in coloured and "\x1b" not in "\n".join(lines)


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
