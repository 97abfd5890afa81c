"""The full benchmark's records, their storage, the budget planner and the table, with fakes only."""

from __future__ import annotations

import optuna
import pytest

from tuner import benchmark, table
from tuner.benchmark import Target, make_record, skip_record, store
from tuner.errors import UsageError
from tuner.measurement import Measurement
from tuner.pipeline import FULL_TIMED, MIN_TIMED, plan_benchmark
from tuner.replay import ReplayRunner
from tuner.settings import Settings
from tuner.signature import cpu_signature
from tuner.summary import summarize
from tuner.workload import Workload

SIGNATURE = cpu_signature()
TARGET = Target("tensorflow", Workload("resnet50", "infer", 32), (0, 1))


def run(step: float, timed: int = 4, loop: float = 0.0, batch: int = 32) -> Measurement:
    return Measurement(batch, (step,) * timed, (step * 2,), {"framework_version": "2.21.0"}, 0.0, loop)


def test_images_per_sec_is_timed_batches_times_batch_over_loop_wall_time() -> None:
    # Two rounds: 4 batches of 32 in a 2.0 s loop, then 4 in a 3.0 s loop (the loop's own clock, which
    # includes the gaps between steps), so 256 images in 5.0 s.
    record = make_record(TARGET, "tf-default", Settings(), [run(0.4, loop=2.0), run(0.6, loop=3.0)], SIGNATURE, "r1")
    assert record["images_per_sec"] == pytest.approx(256 / 5.0)
    # Step time is its inverse per image, in milliseconds, as the reference table prints it.
    assert record["ms_per_image"] == pytest.approx(1000 * 5.0 / 256)
    # Rounds, warm-up and timed batches per round, and the raw per-round rates are kept.
    assert (record["rounds"], record["warmup"], record["timed"]) == (2, 1, 4)
    assert record["round_rates"] == [[80.0] * 4, [pytest.approx(32 / 0.6)] * 4]
    # Provenance: where and what it ran on.
    assert record["cpu"]["id"] == SIGNATURE.id and record["framework_version"] == "2.21.0"
    assert record["runtime"] == "tensorflow" and record["cores"] == 2 and record["device"] == "cpu"


def test_loop_time_falls_back_to_the_sum_of_steps_when_not_recorded() -> None:
    record = make_record(TARGET, "x", Settings(), [run(0.5, timed=10)], SIGNATURE, "r1")
    # No loop clock: 10 x 32 images over 10 x 0.5 s.
    assert record["images_per_sec"] == pytest.approx(64.0)


def test_records_round_trip_through_storage_and_stay_out_of_the_studies(
    storage: optuna.storages.RDBStorage,
) -> None:
    # Nothing stored yet: no records, and no benchmark study created by reading.
    assert benchmark.records(storage) == []
    record = make_record(TARGET, "tf-default", Settings(), [run(0.5)], SIGNATURE, "r1")
    store(storage, record)
    gpu = Target("tensorflow", Workload("resnet50", "train", 64), (0, 1), "gpu", 2)
    store(storage, skip_record(gpu, "no GPU", SIGNATURE))
    stored = benchmark.records(storage)
    # Both come back as written, in order; the skipped one keeps its reason.
    assert [r.get("label") for r in stored] == ["tf-default", ""]
    assert stored[0]["images_per_sec"] == pytest.approx(record["images_per_sec"])
    assert stored[1]["skipped"] == "no GPU" and stored[1]["gpus"] == 2
    # The skipped record is a FAIL trial (never a score), the measured one COMPLETE with its figure.
    trials = optuna.load_study(study_name=benchmark.BENCH_STUDY, storage=storage).get_trials()
    assert [t.state.name for t in trials] == ["COMPLETE", "FAIL"]
    # `tuner show` lists tuning studies only: the benchmark study is not one.
    assert summarize(storage) == []


def test_yardsticks_are_measured_once_then_read_from_storage(storage: optuna.storages.RDBStorage) -> None:
    runner = ReplayRunner(lambda spec, call: [0.1])
    settings = Settings(intra_op=1, inter_op=1)
    flops = benchmark.flops_per_image(storage, runner, "tiny", settings, (0,), SIGNATURE)
    peak = benchmark.matmul_peak(storage, runner, "tensorflow", settings, (0,), SIGNATURE)
    # The peak is the best of the matmul timings; FLOPs come as counted.
    assert peak == 101.0 and flops == {"infer": 8.0e9, "train": 24.0e9}
    benchmark.flops_per_image(storage, runner, "tiny", settings, (0,), SIGNATURE)
    benchmark.matmul_peak(storage, runner, "tensorflow", settings, (0,), SIGNATURE)
    # The second calls read the stored yardsticks: the worker ran once per task.
    assert [spec.task for spec in runner.task_calls] == ["flops", "matmul"]
    benchmark.matmul_peak(storage, runner, "tensorflow", settings, (0, 1), SIGNATURE)
    # Another core set is another measurement.
    assert len(runner.task_calls) == 3


def test_malformed_yardstick_results_are_refused(storage: optuna.storages.RDBStorage) -> None:
    runner = ReplayRunner(lambda spec, call: [0.1], tasks={"flops": {"flops_per_image": {"infer": -1}}})
    with pytest.raises(Exception, match="malformed"):
        benchmark.flops_per_image(storage, runner, "tiny", Settings(), (0,), SIGNATURE)
    # Nothing was stored from a bad result.
    assert benchmark.records(storage) == []


@pytest.mark.parametrize(
    ("time_left", "expected"),
    [
        # Plenty of time: three rounds of tf_cnn_benchmarks' 10 warm-up + 100 timed batches, split.
        (10_000.0, (3, 10, 34)),
        # 3 settings x 3 rounds of 100 s: (100 - 10) / 1 = 90 steps per run, more than 10 + 34.
        (900.0, (3, 10, 34)),
        # 3 x 3 runs of 30 s: 20 steps per run: 4 warm-up + 16 timed.
        (270.0, (3, 4, 16)),
        # 3 x 3 runs of 15 s leave 5 steps: still three rounds, 2 warm-up + the minimum 3 timed.
        (135.0, (3, 2, 3)),
        # Too little for three rounds: two rounds of 20 s runs (10 steps: 2 + 8).
        (120.0, (2, 2, 8)),
        # Not even one short round fits: the floor, one round of 2 + 3 (may overrun, never zero).
        (10.0, (1, 2, MIN_TIMED)),
    ],
)
def test_benchmark_plan_fits_the_time_left(time_left: float, expected: tuple[int, int, int]) -> None:
    # 3 settings, 10 s of start-up and tracing per run, 1 s per batch.
    plan = plan_benchmark(time_left, configs=3, overhead_s=10.0, step_s=1.0)
    assert (plan.rounds, plan.warmup, plan.timed) == expected
    # Never more than the full benchmark's timed batches in all, never fewer than the minimum per round.
    assert plan.timed >= MIN_TIMED and plan.timed * plan.rounds <= FULL_TIMED + plan.rounds


def _group(run_id: str = "r1", rounds: int = 3, recommended: str = "tf-default") -> list[dict[str, object]]:
    def rec(label: str, step: float, settings: Settings) -> dict[str, object]:
        runs = [run(step) for _ in range(rounds)]
        extra = {"recommended": recommended}
        return make_record(TARGET, label, settings, runs, SIGNATURE, run_id, extra)

    return [
        rec("tf-default", 0.5, Settings()),
        rec("heuristic", 0.6, Settings(intra_op=2, inter_op=1, data_format="NCHW")),
        rec("tuned", 0.4, Settings(intra_op=2, inter_op=2)),
    ]


def _yardsticks() -> list[dict[str, object]]:
    cpu = {"cpu": SIGNATURE.to_dict()}
    return [
        {"kind": "flops", "model": "resnet50", "flops_per_image": {"infer": 8e9, "train": 24e9}},
        {"kind": "matmul", "runtime": "tensorflow", "cores": 2, "peak_gflops": 500.0, **cpu},
        {"kind": "matmul", "runtime": "tensorflow-eigen", "cores": 2, "peak_gflops": 1000.0, **cpu},
    ]


def test_table_has_the_reference_columns_then_defaults_heuristic_tuned_and_efficiency() -> None:
    frame, notes = table.build([*_group(), *_yardsticks()])
    row = frame.iloc[0]
    # The reference table's columns come first, in its order.
    assert list(frame.columns[:7]) == [
        "runtime",
        "CPU",
        "memory",
        "GPU",
        "batch size",
        "mode",
        "images/sec (ms/image)",
    ]
    assert row["runtime"] == "CPU (oneDNN)" and row["GPU"] == 0 and row["batch size"] == 32
    # 4 x 32 images in 4 x 0.5 s = 64 img/s for tf-default; tuned ran 0.4 s steps, so 80 img/s.
    assert row["tf-default"] == "64.00" and row["tuned"] == "80.00"
    # The main column shows what the verdict recommends (tf-default here), with ms per image.
    assert row["images/sec (ms/image)"] == "64.00 (15.62ms)" and row["recommended"] == "tf-default"
    # Measured interleaved in 3 rounds: the speedup carries a 95% interval.
    assert row["tuned/tf-default"] == "1.25x [1.25, 1.25]"
    # Efficiency against the best matmul peak on those cores (1000 GFLOP/s): 80 img/s x 8 GFLOP = 640.
    assert row["GFLOP/s tuned (% peak)"] == "640 (64%)"
    assert row["tuned settings"] == Settings(intra_op=2, inter_op=2).label()
    # Notes name the yardsticks.
    assert any("1000 GFLOP/s" in note for note in notes) and any("8 GFLOP per image" in note for note in notes)


def test_table_recommends_tuned_only_when_the_verdict_did_and_pairs_only_one_run() -> None:
    frame, _ = table.build([*_group(recommended="tuned")])
    # A confirmed win: the main column is the tuned figure.
    assert frame.iloc[0]["recommended"] == "tuned" and frame.iloc[0]["images/sec (ms/image)"].startswith("80.00")
    frame, _ = table.build([*_group(recommended="heuristic")])
    # A baseline that clearly won is shown as such (32 images in 0.6 s steps: 53.33 img/s).
    assert frame.iloc[0]["recommended"] == "heuristic"
    assert frame.iloc[0]["images/sec (ms/image)"].startswith("53.33")
    records = _group(rounds=1)
    records[2]["run_id"] = "another run"
    frame, _ = table.build(records)
    # Measured in different runs (or one round): a plain ratio, no interval that would pretend pairing.
    assert frame.iloc[0]["tuned/tf-default"] == "1.25x"


def test_table_keeps_the_latest_record_and_lists_skipped_targets() -> None:
    old, new = _group()[0], _group()[0]
    old["measured"], new["measured"] = "2026-01-01T00:00:00+00:00", "2026-02-01T00:00:00+00:00"
    new["images_per_sec"] = 99.0
    gpu = Target("tensorflow", Workload("resnet50", "train", 64), (0, 1), "gpu", 1)
    frame, _ = table.build([new, old, skip_record(gpu, "no GPU visible", SIGNATURE)])
    # One row per target; the later measurement wins whatever the storage order.
    assert len(frame) == 2 and frame.iloc[0]["tf-default"] == "99.00"
    # The skipped GPU target is a row of its own that says so and why (so CSV keeps the reason too).
    skipped = frame.iloc[1]
    assert skipped["GPU"] == 1 and skipped["images/sec (ms/image)"] == "skipped"
    assert skipped["note"] == "no GPU visible" and skipped["runtime"].startswith("GPU")


def test_table_renders_markdown_csv_and_html_and_refuses_other_formats() -> None:
    frame, notes = table.build([*_group(), *_yardsticks()])
    markdown = table.render(frame, notes, "markdown")
    csv = table.render(frame, notes, "csv")
    html = table.render(frame, notes, "html")
    # Each format carries the header and the figures.
    assert markdown.startswith("| runtime") and "64.00" in markdown
    assert csv.splitlines()[0].startswith("runtime,CPU,memory,GPU,batch size,mode")
    assert "<table" in html and "<th>tuned settings</th>" in html
    with pytest.raises(UsageError, match="--format"):
        table.render(frame, notes, "xlsx")
    # An empty storage says what to run rather than printing an empty table.
    assert "tuner run" in table.render(table.build([])[0], [], "markdown")
