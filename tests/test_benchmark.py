"""The full benchmark's records, their storage and the budget planner, with fakes only."""

from __future__ import annotations

import optuna
import pytest

from tuner import benchmark
from tuner.benchmark import Target, make_record, skip_record, store
from tuner.errors import WorkerExited, WorkerNotStarted
from tuner.measurement import Measurement
from tuner.pipeline import FULL_TIMED, MIN_TIMED, plan_benchmark
from tuner.policy import MeasurementPolicy
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


def test_a_failing_setting_is_noted_but_a_worker_that_cannot_start_ends_the_benchmark() -> None:
    named = [("a", Settings(intra_op=1)), ("b", Settings(intra_op=2))]
    bench = MeasurementPolicy("t", warmup=1, timed=3, timeout_s=60.0, rounds=2)

    def script(failure: BaseException) -> ReplayRunner:
        return ReplayRunner(lambda spec, call: failure if spec.settings.intra_op == 2 else [0.1] * 4)

    runs: dict[str, list[Measurement]] = {}
    failed: dict[str, str] = {}
    benchmark.measure(
        script(WorkerExited("worker exited with status 1")), TARGET, named, bench, runs=runs, failed=failed
    )
    # The setting's own failure is noted with its reason and left out of round 2; "a" runs both rounds.
    assert failed == {"b": "worker exited with status 1"} and len(runs["a"]) == 2
    runs, failed = {}, {}
    with pytest.raises(WorkerNotStarted):
        benchmark.measure(
            script(WorkerNotStarted("cannot start worker")), TARGET, named, bench, runs=runs, failed=failed
        )
    # A worker that could not start says nothing of "b": nothing is noted against it, and the run of "a"
    # measured before it is kept for the caller to store.
    assert failed == {} and len(runs["a"]) == 1


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
