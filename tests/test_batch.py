"""--search-batch: the batch size as a searched knob for throughput, compared per sample."""

from __future__ import annotations

import json
from pathlib import Path

import optuna
import pytest

from tests.helpers import one_error_line
from tuner.benchmark import Target, make_record, records
from tuner.cli import main
from tuner.measurement import Measurement
from tuner.replay import ReplayRunner
from tuner.runner import TrialSpec
from tuner.settings import Settings
from tuner.signature import cpu_signature
from tuner.storage import open_storage
from tuner.workload import Workload

TINY = ["tune", "--model", "tiny", "--cores", "1", "--mode", "infer", "--trials", "8", "--candidates", "1"]


def per_sample(spec: TrialSpec) -> float:
    """Samples per second that grow with the batch: batch 64 is 1.3x faster per sample than batch 32."""
    return {8: 700.0, 32: 1000.0, 64: 1300.0}[spec.batch_size]


def test_search_batch_finds_the_batch_that_is_fastest_per_sample(
    storage_url: str, capsys: pytest.CaptureFixture[str]
) -> None:
    runner = ReplayRunner.from_rates(per_sample, noise=0.01)
    assert main([*TINY, "--search-batch", "8,64", "--storage", storage_url], runner=runner) == 0
    capsys.readouterr()
    # The workers were asked for every searched batch, and the baselines kept the study's own (32).
    assert {spec.batch_size for spec in runner.calls} == {8, 32, 64}
    assert all(spec.worker_spec()["batch_size"] == spec.batch_size for spec in runner.calls)
    (summary,) = optuna.get_all_study_summaries(open_storage(storage_url))
    # The study is named for the batches it searched, so it never shares a study with a fixed-batch one.
    assert "-b8.32.64-" in summary.study_name
    assert summary.user_attrs["tuner"]["searched_batches"] == [8, 32, 64]
    assert main(["recommend", "--storage", storage_url, "--model", "tiny", "--format", "json"]) == 0
    (advice,) = json.loads(capsys.readouterr().out)
    # Batch 64 is 1.3x faster per sample than the baselines' batch 32, well outside 1% noise: it is recommended.
    assert advice["settings"]["batch"] == 64 and advice["launch"]["batch"] == 64
    assert advice["speedup_vs_tf_default"]["value"] == pytest.approx(1.3, rel=0.05)
    assert main(["recommend", "--storage", storage_url, "--model", "tiny", "--format", "python"]) == 0
    # The batch is the program's to set: the snippet says so instead of exporting a variable for it.
    out = capsys.readouterr().out
    assert "batch size: 64 samples per step" in out
    # The verdict says the gain is per sample, between the two batches.
    assert "per sample at batch 64 against batch 32" in out


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--search-batch", "32"], "at least two batch sizes"),
        (["--search-batch", "0,8"], "'0' is not a batch size from 1 to 4096"),
        (["--search-batch", "8,x"], "'x' is not a batch size"),
        (["--search-batch", "1,8", "--objective", "latency"], "--objective latency keeps the request's batch"),
    ],
)
def test_bad_search_batch_is_one_line_before_any_storage(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], extra: list[str], message: str
) -> None:
    db = tmp_path / "studies.db"
    runner = ReplayRunner.from_rates(per_sample)
    assert main([*TINY, *extra, "--storage", f"sqlite:///{db}"], runner=runner) == 1
    line = one_error_line(capsys.readouterr().err)
    # The line names the flag and what is wrong with it; nothing ran and no storage was created.
    assert message in line
    assert runner.calls == [] and not db.exists()


def test_a_benchmark_record_states_the_batch_its_settings_ran() -> None:
    target = Target("tensorflow", Workload("tiny", "infer", 32), (0,))
    run = Measurement(64, (0.1, 0.1, 0.1), (0.2,), {"onednn": True}, 0.5)
    record = make_record(target, "tuned", Settings.parse("intra_op=1,batch=64"), [run], cpu_signature(), "r1")
    # The tuned setting ran at batch 64, not the target's 32: the record (and so the table) says 64.
    assert record["batch_size"] == 64 and record["global_batch"] == 64
    default = make_record(target, "tf-default", Settings(), [run], cpu_signature(), "r1")
    # A setting without the knob runs the target's batch.
    assert default["batch_size"] == 32


def test_benchmark_finds_the_batch_searching_study_and_runs_its_batch(
    storage_url: str, capsys: pytest.CaptureFixture[str]
) -> None:
    runner = ReplayRunner.from_rates(per_sample, noise=0.01)
    assert main([*TINY, "--search-batch", "8,64", "--storage", storage_url], runner=runner) == 0
    bench = ["benchmark", "--model", "tiny", "--cores", "1", "--mode", "infer", "--warmup", "1", "--timed", "5"]
    assert main([*bench, "--storage", storage_url], runner=runner) == 0
    capsys.readouterr()
    by_label = {r["label"]: r for r in records(open_storage(storage_url)) if "skipped" not in r}
    # No study is named -b32-; the one that searched 8, 32 and 64 is found, and its recommendation (batch 64,
    # 1.3x per sample) is benchmarked at batch 64 beside the baselines at 32.
    assert by_label["tuned"]["batch_size"] == 64 and by_label["tuned"]["recommended"] == "tuned"
    assert by_label["tf-default"]["batch_size"] == 32
    assert by_label["tuned"]["images_per_sec"] / by_label["tf-default"]["images_per_sec"] == pytest.approx(
        1.3, rel=0.05
    )


def test_benchmark_for_latency_runs_batch_1_and_finds_the_latency_study(
    storage_url: str, capsys: pytest.CaptureFixture[str]
) -> None:
    runner = ReplayRunner.from_rates(lambda spec: 100.0 * spec.batch_size, noise=0.01)
    latency = ["--objective", "latency"]
    assert main([*TINY, *latency, "--storage", storage_url], runner=runner) == 0
    bench = ["benchmark", "--model", "tiny", "--cores", "1", "--mode", "infer", "--warmup", "1", "--timed", "5"]
    assert main([*bench, *latency, "--settings", "recommended", "--storage", storage_url], runner=runner) == 0
    capsys.readouterr()
    stored = [r for r in records(open_storage(storage_url)) if "skipped" not in r]
    # Without --batch-size, a latency benchmark runs batch 1 as tune did (it ran batch 32 and then found no
    # "-latency-b32-" study to take the recommendation from, exiting 1).
    assert [r["batch_size"] for r in stored] == [1] and "recommended" in stored[0]
