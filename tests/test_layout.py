"""Text for a terminal (tuner/layout.py): fitting, wrapping, colour, and the default views of show, table and
recommend within 120 columns on a storage with long settings labels, CPU names and notes."""

from __future__ import annotations

import dataclasses
import io
import re
from pathlib import Path

import pytest

from tuner import benchmark
from tuner.benchmark import Target, make_record, skip_record
from tuner.cli import main
from tuner.layout import WIDTH, colour_wanted, columns, paint, wrap
from tuner.measurement import Measurement
from tuner.replay import ReplayRunner
from tuner.runner import TrialSpec
from tuner.settings import Settings
from tuner.signature import cpu_signature
from tuner.storage import open_storage
from tuner.workload import Workload

ESCAPES = re.compile(r"\x1b\[[0-9;]*m")


class Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_colour_only_on_a_terminal_without_no_color(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("NO_COLOR", raising=False)
    # A terminal gets colour; a pipe or file never does.
    assert colour_wanted(Terminal()) and not colour_wanted(io.StringIO())
    # NO_COLOR set to anything turns it off (https://no-color.org); set but empty, it does not.
    monkeypatch.setenv("NO_COLOR", "1")
    assert not colour_wanted(Terminal())
    monkeypatch.setenv("NO_COLOR", "")
    assert colour_wanted(Terminal())
    # The tones: green for a win, yellow for a kept default, red for a failure; nothing without colour.
    assert paint("x", "good", True) == "\x1b[32mx\x1b[0m" and paint("x", "bad", True) == "\x1b[31mx\x1b[0m"
    assert paint("x", "warn", False) == "x"


def test_columns_shorten_only_the_named_columns_and_colour_moves_nothing() -> None:
    rows = [["name", "value", "verdict"], ["a" * 80, "1.00", "clear win"], ["b", "22.00", "kept " + "x" * 60]]
    text = columns(rows, width=60, shrink=(0, 2), right=(1,))
    lines = text.splitlines()
    # Every line fits; the value column is whole and right-aligned; the long cells are cut with a mark.
    assert all(len(line) <= 60 for line in lines)
    assert " 1.00  " in lines[2] and "22.00" in lines[3] and lines[2].split()[0].endswith("...")
    # Colour is added after the padding: without the escape codes the table is the same.
    coloured = columns(rows, width=60, shrink=(0, 2), right=(1,), tones=["good", "warn"], colour=True)
    assert "\x1b[32m" in coloured and ESCAPES.sub("", coloured) == text
    # Long text wraps within the width, continuation lines indented.
    wrapped = wrap("word " * 60, width=50, indent="  ")
    assert all(len(line) <= 50 for line in wrapped) and wrapped[1].startswith("    word")


# -- the default views of a realistic storage -----------------------------------------------------------

CPU_NAME = "Intel(R) Xeon(R) Platinum 8480+ CPU @ 2.00GHz (Sapphire Rapids, 2 sockets, 112 physical cores)"
INERT = ["--allow-inert", "OMP_NUM_THREADS", "--allow-inert", "KMP_BLOCKTIME", "--allow-inert", "KMP_AFFINITY"]
TUNE = ["tune", "--model", "tiny", "--budget", "none"]


def rate(spec: TrialSpec) -> float:
    return 900.0 + 100 * spec.settings.inter_op


def crashing(spec: TrialSpec, call: int) -> list[float] | BaseException:
    return [0.01] * (spec.policy.warmup + spec.policy.timed) if call == 0 else RuntimeError("killed by SIGSEGV")


def long_records() -> list[dict[str, object]]:
    """Benchmark records as a big machine stores them: a long CPU name, OpenMP settings with long values, a
    launcher recipe recommended, a heuristic that could not run (its NHWC part stands in), GPU targets
    skipped with a long reason."""
    signature = dataclasses.replace(cpu_signature(), model_name=CPU_NAME)
    long = Settings.parse(
        "intra_op=56;inter_op=2;OMP_NUM_THREADS=56;KMP_BLOCKTIME=1;KMP_AFFINITY=granularity=fine,compact,1,0;"
        "instances=2;allocator=tcmalloc;data_format=NCHW"
    )
    facts = {"onednn": True, "openmp": "libiomp5"}
    runs = {step: [Measurement(32, (step,) * 20, (step,), facts, 0.0, step * 21)] * 3 for step in (0.04, 0.045, 0.05)}
    nhwc, reason = (
        Settings(intra_op=56, inter_op=1),
        "not runnable here: NCHW needs oneDNN, which this runtime leaves off",
    )
    records: list[dict[str, object]] = []
    for mode in ("train", "infer"):
        target = Target("intel-tensorflow", Workload("mobilenet_v2", mode, 32), tuple(range(112)))
        extra = {"recommended": "run_cpu-throughput"}
        records += [
            make_record(target, "tf-default", Settings(), runs[0.05], signature, "r", extra),
            make_record(target, "heuristic-nhwc", nhwc, runs[0.045], signature, "r", extra),
            skip_record(target, reason, signature, "heuristic"),
            make_record(target, "run_cpu-throughput", long, runs[0.04], signature, "r", extra),
            make_record(target, "tuned", long, runs[0.04], signature, "r", extra),
        ]
        gpu = Target("intel-tensorflow", Workload("mobilenet_v2", mode, 64), (0, 1), "gpu", 2)
        records.append(skip_record(gpu, "no GPU visible to TensorFlow in any runtime: " + "x: 0, " * 12, signature))
    return records


@pytest.fixture(scope="module")
def realistic(tmp_path_factory: pytest.TempPathFactory) -> str:
    url = f"sqlite:///{tmp_path_factory.mktemp('views') / 'studies.db'}"
    runner = ReplayRunner.from_rates(rate, noise=0.02)
    # Stock TensorFlow's space (instances, allocators, recipes) at 1 and 2 cores; the OpenMP knobs searched
    # anyway (their long KMP_AFFINITY values in the labels); a latency study; a study whose trials all crashed.
    assert main([*TUNE, "--cores", "1,2", "--mode", "infer", "--trials", "10", "--storage", url], runner=runner) == 0
    knobs = [*TUNE, "--cores", "2", "--mode", "train", "--trials", "8", "--space", "intel-tensorflow", *INERT]
    assert main([*knobs, "--storage", url], runner=runner) == 0
    latency = [*TUNE, "--cores", "1", "--mode", "infer", "--objective", "latency", "--trials", "4"]
    assert main([*latency, "--storage", url], runner=runner) == 0
    assert main([*TUNE, "--cores", "1", "--mode", "train", "--trials", "4", "--storage", url],
                runner=ReplayRunner(crashing)) == 1  # fmt: skip
    storage = open_storage(url, create=False)
    for record in long_records():
        benchmark.store(storage, record)
    return url


@pytest.mark.parametrize(
    "argv",
    [["show"], ["table"], ["recommend", "--model", "tiny"], ["recommend", "--model", "tiny", "--objective", "latency"]],
)
def test_default_views_fit_120_columns(
    realistic: str, argv: list[str], capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    capsys.readouterr()
    assert main([*argv, "--storage", realistic]) == 0
    out = capsys.readouterr().out
    widest = max(out.splitlines(), key=len)
    # Every line of the default view fits a 120-column terminal, however long the stored labels are.
    assert len(widest) <= WIDTH, widest
    assert len(out.splitlines()) > 3  # and there was something to show


def test_wide_views_keep_every_column(realistic: str, capsys: pytest.CaptureFixture[str]) -> None:
    capsys.readouterr()
    assert main(["table", "--wide", "--storage", realistic]) == 0
    wide = capsys.readouterr().out
    # --wide keeps what the narrow view leaves out: the long settings and the CPU's name, in the table.
    assert "KMP_AFFINITY=granularity=fine,compact,1,0" in wide and f"112 cores ({CPU_NAME})" in wide
    assert main(["show", "--wide", "--storage", realistic]) == 0
    assert max(len(line) for line in capsys.readouterr().out.splitlines()) > WIDTH
