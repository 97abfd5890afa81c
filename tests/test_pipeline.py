"""The main job on a fake clock: every runtime x core count x mode tuned and benchmarked within the budget."""

from __future__ import annotations

import dataclasses
import json
import math
import re
from collections import Counter
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import optuna
import pytest

from tuner import benchmark, table, transfer
from tuner.confirm import MIN_ROUNDS
from tuner.cost import CostModel
from tuner.forecast import FEW_CONFIRMED, confirmation_size
from tuner.measurement import Measurement
from tuner.pipeline import Job
from tuner.plan import StudyOptions
from tuner.policy import MeasurementPolicy
from tuner.replay import ReplayRunner
from tuner.runner import StepCallback, TaskSpec, TrialSpec
from tuner.runtime import load
from tuner.signature import cpu_signature
from tuner.study import duration

START_S = 8.0  # process start, import and trace of every fake run
TASK_S = 5.0


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


class ClockedRunner(ReplayRunner):
    """Replays rates and advances the fake clock by what each run would have taken."""

    def __init__(self, clock: Clock) -> None:
        def rate(spec: TrialSpec) -> float:
            base = 10.0 if spec.workload.mode == "train" else 30.0  # train steps cost three inference steps
            bonus = 1.1 if spec.settings.inter_op == 2 else 1.0
            return base * len(spec.cores) * bonus

        super().__init__(ReplayRunner.from_rates(rate, noise=0.02).script)
        self.clock = clock

    def run(self, spec: TrialSpec, on_step: StepCallback | None = None) -> Measurement:
        measurement = super().run(spec, on_step)
        self.clock.now += START_S + sum(measurement.timed_seconds) + sum(measurement.warmup_seconds)
        return measurement

    def compute(self, spec: TaskSpec) -> dict[str, object]:
        self.clock.now += TASK_S
        return super().compute(spec)


def infer_1c_job(
    storage: optuna.storages.BaseStorage,
    clock: Clock,
    budget_s: float,
    runner: ReplayRunner,
    lines: list[str] | None = None,
    kind: type[Job] = Job,
) -> Job:
    """The job of one study: stock TensorFlow, tiny model, inference on 1 core, on the fake clock."""
    return kind(storage=storage, signature=cpu_signature(), runtimes=[load("tensorflow")], counts=[1],
                modes=["infer"], budget_s=budget_s, model="tiny", runner=runner,
                log=(lines.append if lines is not None else lambda line: None), clock=clock)  # fmt: skip


@pytest.mark.parametrize("budget_min", [30, 90])
def test_job_tunes_and_benchmarks_every_cell_within_its_budget(
    storage: optuna.storages.RDBStorage, budget_min: int
) -> None:
    clock = Clock()
    lines: list[str] = []
    runtimes = [load("tensorflow-eigen"), load("tensorflow")]
    job = Job(
        storage=storage,
        signature=cpu_signature(),
        runtimes=runtimes,
        counts=[1, 2],
        modes=["train", "infer"],
        budget_s=budget_min * 60.0,
        model="tiny",
        runner=ClockedRunner(clock),
        log=lines.append,
        clock=clock,
    )
    job.run()
    spent = clock.now - 1000.0
    # The whole job (probes, yardsticks, eight studies) ends within its budget, and uses most of it.
    assert 0.7 * budget_min * 60 <= spent <= budget_min * 60, lines[-5:]
    assert job.failures == []
    records = benchmark.records(storage)
    rows = Counter(
        (r["runtime"], r["cores"], r["mode"]) for r in records if r.get("kind") == "benchmark" and "skipped" not in r
    )
    # Every runtime x cores x mode has tf-default, heuristic and tuned records; the stock runtime's space also
    # holds the launchers' recipes (run_cpu, model-zoo, OpenVINO's small-CPU rule), each measured beside them.
    assert len(rows) == 8
    assert {n for (runtime, _, _), n in rows.items() if runtime == "tensorflow-eigen"} == {3}
    labels = {r["label"] for r in records if r.get("kind") == "benchmark" and "skipped" not in r}
    assert {"tf-default", "heuristic", "tuned", "model-zoo", "openvino-small"} <= labels
    # Each benchmark is also its study's confirmation: every study has a stored verdict.
    studies = [s for s in storage.get_all_studies() if s.study_name != benchmark.BENCH_STUDY]
    assert len(studies) == 8
    assert all("verdict" in optuna.load_study(study_name=s.study_name, storage=storage).user_attrs for s in studies)
    # Each tuned record says of how many sampled settings (its study's, baselines aside) it is the best.
    for r in records:
        if r.get("label") == "tuned":
            study = optuna.load_study(study_name=r["study"], storage=storage)
            sampled = [t for t in study.trials if t.state.name == "COMPLETE" and "baseline" not in t.user_attrs]
            assert r["sampled"] == len(sampled) >= 1
            # A plain run searched no knob beside the runtime's own (no --search-isa, no --search-batch).
            assert r["searched"] == []
    # Yardsticks: FLOPs counted once, a matmul peak per runtime and core count.
    kinds = Counter(r["kind"] for r in records)
    assert kinds["flops"] == 1 and kinds["matmul"] == 4
    # No GPU here: each GPU row of the GPU runtime is a skip with its reason, and the job still succeeded.
    skipped = [r for r in records if "skipped" in r]
    assert sorted((r["mode"], r["gpus"]) for r in skipped) == [("infer", 1), ("infer", 2), ("train", 1), ("train", 2)]
    assert all(r["runtime"] == "tensorflow-gpu" and "sees 0 GPUs" in r["skipped"] for r in skipped)
    # Progress says what runs now and when the job is expected to end: an ETA from the trial times measured
    # so far, not the budget left.
    assert any("study 3/8" in line and "ETA " in line for line in lines)
    assert not any(line.endswith(" left") for line in lines)
    # A longer budget buys longer benchmarks: more timed batches per round on the same settings.
    timed = [r["timed"] * r["rounds"] for r in records if r.get("label") == "tf-default"]
    assert min(timed) >= 3
    if budget_min == 90:
        assert max(timed) >= 30


def test_rerunning_the_job_does_not_duplicate_records(storage: optuna.storages.RDBStorage) -> None:
    clock = Clock()

    def job() -> Job:
        return infer_1c_job(storage, clock, 600.0, ClockedRunner(clock))

    first_job = job()
    first_job.run()
    first = benchmark.records(storage)
    again = job()
    lines: list[str] = []
    again.log = lines.append
    again.run()
    second = benchmark.records(storage)
    measured = [r for r in second if r.get("kind") == "benchmark" and "skipped" not in r]
    # The finished study is kept, not searched and benchmarked again: no new measured record.
    assert any("already benchmarked: kept" in line for line in lines)
    assert measured == [r for r in first if r.get("kind") == "benchmark" and "skipped" not in r]
    # Yardsticks are read back, not measured again.
    assert Counter(r["kind"] for r in second)["matmul"] == Counter(r["kind"] for r in first)["matmul"] == 1


def test_imported_records_say_where_they_came_from_and_never_stand_for_this_jobs_own(
    storage: optuna.storages.RDBStorage, tmp_path: Path
) -> None:
    clock = Clock()
    infer_1c_job(storage, clock, 600.0, ClockedRunner(clock)).run()
    # The job's own records, exported to a file whose records say they came from somewhere else ...
    data = transfer.export(storage)
    (bench,) = [study for study in data["studies"] if study["name"] == benchmark.BENCH_STUDY]
    for trial in bench["trials"]:
        trial["user_attrs"]["record"]["imported"] = {"file": "elsewhere.json", "at": "2000-01-01T00:00:00+00:00"}
    data["studies"] = [bench]
    path = tmp_path / "records.json"
    path.write_text(json.dumps(data))
    # ... are lost here (the benchmark study deleted), then imported back: the same runs, the same run ids.
    optuna.delete_study(study_name=benchmark.BENCH_STUDY, storage=storage)
    before = datetime.now(UTC).isoformat(timespec="seconds")
    assert transfer.import_into(storage, transfer.read(path), str(path)).records > 0
    merged = [r for r in benchmark.records(storage) if r.get("kind") == "benchmark"]
    # Each merged record says this import is where it came from, whatever the file said.
    assert merged and all(r["imported"]["file"] == str(path) and r["imported"]["at"] >= before for r in merged)
    # The table names them in its "imported from" column, and the narrow view under the table.
    frame, notes = table.build(benchmark.records(storage))
    day = merged[0]["imported"]["at"][:10]
    assert list(frame["imported from"]) == [f"{path} on {day}"] * len(frame)
    assert f"| {path} on {day} |" in table.render(frame, notes, "markdown", wide=True)
    narrow = " ".join(table.render(frame, notes, "markdown").split())  # its notes are wrapped to the width
    assert re.search(rf"tiny infer on 1 core \(CPU [^:]*\): imported from {re.escape(str(path))} on {day}", narrow)
    lines: list[str] = []
    again = infer_1c_job(storage, clock, 600.0, ClockedRunner(clock), lines)
    again.run()
    # The study's verdict names runs whose records are now only imported ones: another machine's, as far as
    # this storage knows. So the job benchmarks it again rather than keep it, and stores records of its own.
    assert not any("already benchmarked: kept" in line for line in lines)
    own = [r for r in benchmark.records(storage) if r.get("kind") == "benchmark" and "imported" not in r]
    assert {r["label"] for r in own} >= {r["label"] for r in merged}
    # Its yardsticks too: the FLOP count and the matmul peak are measured here again, not read from the file.
    kinds = {r["kind"] for r in benchmark.records(storage) if "imported" not in r}
    assert {"flops", "matmul"} <= kinds


def test_a_study_brought_by_import_is_kept_as_measured_elsewhere(
    storage: optuna.storages.RDBStorage, tmp_path: Path
) -> None:
    clock = Clock()
    other = optuna.storages.RDBStorage(f"sqlite:///{tmp_path / 'other.db'}")
    infer_1c_job(other, clock, 600.0, ClockedRunner(clock)).run()
    # Another machine's whole storage (its study, verdict and records) exported and imported here.
    path = tmp_path / "other.json"
    path.write_text(json.dumps(transfer.export(other)))
    transfer.import_into(storage, transfer.read(path), str(path))
    lines: list[str] = []
    job = infer_1c_job(storage, clock, 600.0, ClockedRunner(clock), lines)
    job.run()
    # The job does not tune into it (a run here may not: its trials were measured elsewhere) and does not
    # fail on it: it says where it came from and how to measure it here, and runs nothing for it.
    assert any("was imported (from other.json): kept as measured elsewhere" in line for line in lines), lines
    assert job.failures == []


def test_gpu_rows_run_one_replica_per_visible_gpu_with_the_tuned_host_threads(
    storage: optuna.storages.RDBStorage,
) -> None:
    clock = Clock()
    runner = ClockedRunner(clock)
    runner.tasks["devices"] = {"gpus": 2}  # as if TensorFlow saw two GPUs
    job = Job(
        storage=storage,
        signature=cpu_signature(),
        runtimes=[load("tensorflow")],
        counts=[1],
        modes=["infer"],
        budget_s=900.0,
        model="tiny",
        runner=runner,
        log=lambda line: None,
        clock=clock,
    )
    job.run()
    gpu = [r for r in benchmark.records(storage) if r.get("device") == "gpu"]
    # One row per GPU count (1 and 2), measured, none skipped.
    assert sorted(r["replicas"] for r in gpu) == [1, 2] and not any("skipped" in r for r in gpu)
    # Batch 64 per GPU, NCHW, and the tuned host settings of the CPU study on the same cores.
    assert [r["global_batch"] for r in sorted(gpu, key=lambda r: r["replicas"])] == [64, 128]
    cpu_tuned = next(r for r in benchmark.records(storage) if r.get("label") == "tuned" and r["device"] == "cpu")
    for record in gpu:
        assert record["label"] == "tuned" and record["settings"]["data_format"] == "NCHW"
        assert record["settings"]["intra_op"] == cpu_tuned["settings"]["intra_op"]
        # Of as many sampled settings as the host's tuned row: the table says "best of n" for both.
        assert record["sampled"] == cpu_tuned["sampled"] >= 1
    specs = [c for c in runner.calls if c.device == "gpu"]
    # The worker was asked for GPU replicas with the full benchmark's 10 + 100 batches.
    assert {(c.replicas, c.policy.warmup, c.policy.timed) for c in specs} == {(1, 10, 100), (2, 10, 100)}
    # Asking which GPUs exist is the only task that may see them.
    assert [t.gpus for t in runner.task_calls if t.task == "devices"] == [True]


def test_the_many_core_studies_get_their_floor_and_the_job_still_ends_within_its_budget(
    storage: optuna.storages.RDBStorage, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A 16-core machine (the replaying runner pins nothing): a 16-core inference study weighs 1/48 of a
    # one-core training study, but each of its runs pays the same process start as any other.
    def many(count: int, *args: object, **kwargs: object) -> tuple[int, ...]:
        return tuple(range(count))

    monkeypatch.setattr("tuner.plan.core_set", many)
    monkeypatch.setattr("tuner.pipeline.core_set", many)
    clock = Clock()
    lines: list[str] = []
    job = Job(
        storage=storage,
        signature=cpu_signature(),
        runtimes=[load("tensorflow-eigen")],
        counts=[1, 16],
        modes=["train", "infer"],
        budget_s=12 * 60.0,
        model="tiny",
        runner=ClockedRunner(clock),
        log=lines.append,
        clock=clock,
    )
    job.run()
    # The floors came out of the one-core studies' shares: the whole job ends within its budget (by weight
    # alone the 16-core studies got a few seconds each and ran past it).
    assert clock.now - 1000.0 <= 12 * 60, lines[-3:]
    assert job.failures == []
    rounds = {
        (r["cores"], r["mode"]): r["rounds"] for r in benchmark.records(storage) if r.get("label") == "tf-default"
    }
    # Every study, the 16-core ones included, measured its benchmark-confirmation in at least two rounds (by
    # weight alone the 16-core ones had time for one, which can never give a verdict).
    assert set(rounds) == {(1, "train"), (1, "infer"), (16, "train"), (16, "infer")}
    assert min(rounds.values()) >= 2, rounds


def test_with_bf16_allowed_the_yardstick_is_measured_in_both_precisions(storage: optuna.storages.RDBStorage) -> None:
    clock = Clock()
    runner = ClockedRunner(clock)
    Job(
        storage=storage,
        signature=cpu_signature(),
        runtimes=[load("tensorflow")],
        counts=[1],
        modes=["infer"],
        budget_s=600.0,
        model="tiny",
        allow_precision=("bf16",),
        force_precision=True,
        runner=runner,
        log=lambda line: None,
        clock=clock,
    ).run()
    matmuls = [r for r in benchmark.records(storage) if r["kind"] == "matmul"]
    # One fp32 and one bf16 matmul per runtime and core count: a bf16 row is held against the bf16 peak.
    assert sorted(r["precision"] for r in matmuls) == ["bf16", "fp32"]
    # The worker was asked for each precision (the spec carries it).
    assert sorted(t.worker_spec()["precision"] for t in runner.task_calls if t.task == "matmul") == ["bf16", "fp32"]


def test_a_tuned_bf16_that_ran_without_bf16_instructions_is_stored_as_emulated(
    storage: optuna.storages.RDBStorage,
) -> None:
    clock = Clock()
    runner = ClockedRunner(clock)
    runner.onednn_default = False  # TensorFlow leaves oneDNN off here (a Neoverse V2; bf16 instructions, no oneDNN)

    def rate(spec: TrialSpec) -> float:  # bf16 on plain Eigen made the fastest, so that it is the tuned row
        plain_bf16 = spec.settings.precision == "bf16" and spec.settings.params().get("onednn") is not True
        return 30.0 * (3.0 if plain_bf16 else 1.0)

    runner.script = ReplayRunner.from_rates(rate, noise=0.02).script
    Job(storage=storage, signature=cpu_signature(), runtimes=[load("tensorflow")], counts=[1], modes=["infer"],
        budget_s=600.0, model="tiny", allow_precision=("bf16",), force_precision=True, runner=runner,
        log=lambda line: None, clock=clock).run()  # fmt: skip
    rows = {r["label"]: r for r in benchmark.records(storage) if r["kind"] == "benchmark" and "skipped" not in r}
    tuned = rows["tuned"]["settings"]
    # Searched with --force-precision, bf16 on plain Eigen won: its row says it was emulated, as `tuner
    # benchmark` says of one it was asked for; the fp32 baselines say nothing of the kind.
    assert tuned["precision"] == "bf16" and tuned.get("onednn") is not True
    assert (
        rows["tuned"]["emulated"]
        == "bf16 emulated: with oneDNN off, bf16 runs on plain Eigen, without bf16 instructions"
    )
    assert [label for label, r in rows.items() if "emulated" in r] == ["tuned"]
    # The table's note carries it.
    frame, _ = table.build(benchmark.records(storage))
    assert "tuned: bf16 emulated" in frame.iloc[0]["note"]


def test_when_three_rounds_of_every_candidate_do_not_fit_the_few_the_table_needs_get_them() -> None:
    cost = CostModel(wall_s=10.0, step_s=1.0, policy=MeasurementPolicy("search", warmup=2, timed=3, timeout_s=60))
    # A run of 2 warm-up and 3 timed batches takes 10 s: 6 settings x 3 rounds need 180 s, 4 x 3 need 120 s.
    assert confirmation_size(6, 4, cost, 200.0)[0] == 6 and confirmation_size(6, 4, cost, 200.0)[1].rounds == 3
    # With 150 s all six would get one round, which can never give a clear verdict: the four get three.
    configs, policy = confirmation_size(6, 4, cost, 150.0)
    assert configs == 4 and policy.rounds == MIN_ROUNDS
    # Where not even the four fit three rounds, all six are measured in what fits (their records are kept).
    configs, policy = confirmation_size(6, 4, cost, 70.0)
    assert configs == 6 and policy.rounds < MIN_ROUNDS
    # Where not even one round of all six fits (60 s), the study is past its share: only the four the table
    # needs are measured, so it overruns by four runs, not six.
    configs, policy = confirmation_size(6, 4, cost, 30.0)
    assert configs == 4 and policy.rounds == 1


def test_a_short_job_confirms_the_tables_settings_in_three_rounds_rather_than_all_in_one(
    storage: optuna.storages.RDBStorage,
) -> None:
    clock = Clock()
    lines: list[str] = []
    # 300 s on the fake clock: six settings fit one round of confirmation, four fit three.
    infer_1c_job(storage, clock, 300.0, ClockedRunner(clock), lines).run()
    (summary,) = [s for s in storage.get_all_studies() if s.study_name != benchmark.BENCH_STUDY]
    verdict = optuna.load_study(study_name=summary.study_name, storage=storage).user_attrs["verdict"]
    # The job said what it left out and why, and confirmed the few in three interleaved rounds, so that a
    # verdict could be clear; tf-default, the heuristic and the best sampled setting are among them.
    assert any("three rounds of all 6 settings do not fit" in line for line in lines), lines
    assert verdict["rounds"] == MIN_ROUNDS and len(verdict["params"]) <= FEW_CONFIRMED
    assert {"tf-default", "heuristic"} <= set(verdict["params"])
    assert any(name.startswith("trial ") for name in verdict["params"])
    # The table's three records come from those rounds; the job stayed within its budget.
    labels = {r["label"] for r in benchmark.records(storage) if r.get("kind") == "benchmark" and "skipped" not in r}
    assert {"tf-default", "heuristic", "tuned"} <= labels and "model-zoo" not in labels
    assert clock.now - 1000.0 <= 300.0


class InterruptedAt(ClockedRunner):
    """Interrupted (as by Ctrl-C) at its ``at``-th confirmation run; else the clocked replay."""

    def __init__(self, clock: Clock, at: int) -> None:
        super().__init__(clock)
        self.at, self.confirmations = at, 0

    def run(self, spec: TrialSpec, on_step: StepCallback | None = None) -> Measurement:
        if spec.policy.name == "full":
            self.confirmations += 1
            if self.confirmations == self.at:
                raise KeyboardInterrupt  # what a Ctrl-C raises while a worker runs
        return super().run(spec, on_step)


def test_a_resumed_confirmation_keeps_its_settings_and_rounds_whatever_time_is_left(
    storage: optuna.storages.RDBStorage,
) -> None:
    clock = Clock()

    class SearchDone(Job):
        """Six trials a study: the search ends in the first run, so the second one only confirms."""

        @property
        def options(self) -> StudyOptions:
            return dataclasses.replace(super().options, trials=6)

    first: list[str] = []
    with pytest.raises(KeyboardInterrupt):
        infer_1c_job(storage, clock, 300.0, InterruptedAt(clock, at=6), first, SearchDone).run()
    (summary,) = [s for s in storage.get_all_studies() if s.study_name != benchmark.BENCH_STUDY]
    study = optuna.load_study(study_name=summary.study_name, storage=storage)
    stored = study.user_attrs["confirmation"]
    # Interrupted in its second round: the few settings of a short share, five runs stored.
    assert any("do not fit" in line for line in first) and len(stored["runs"]) == 5
    again: list[str] = []
    infer_1c_job(storage, clock, 900.0, ClockedRunner(clock), again, SearchDone).run()
    study = optuna.load_study(study_name=summary.study_name, storage=storage)
    resumed = study.user_attrs["confirmation"]
    # A longer budget would confirm all six settings, but the resumed confirmation goes on with its own:
    # the same candidates, id and batches, its five stored runs kept, and a verdict of three rounds.
    assert any("resuming its confirmation: 5 runs stored" in line for line in again), again
    assert resumed["candidates"] == stored["candidates"] and resumed["id"] == stored["id"]
    assert resumed["policy"] == stored["policy"] and resumed["runs"][:5] == stored["runs"]
    assert study.user_attrs["verdict"]["rounds"] == MIN_ROUNDS


def test_a_study_that_cannot_fit_the_budget_left_is_not_started_and_a_later_run_does_it(
    storage: optuna.storages.RDBStorage,
) -> None:
    def job(budget_min: float, lines: list[str]) -> Job:
        return Job(storage=storage, signature=cpu_signature(), runtimes=[load("tensorflow-eigen"), load("tensorflow")],
                   counts=[1, 2], modes=["train", "infer"], budget_s=budget_min * 60.0, model="tiny",
                   runner=ClockedRunner(clock), log=lines.append, clock=clock)  # fmt: skip

    def cpu_rows() -> Any:
        frame, _ = table.build(benchmark.records(storage))
        return frame[frame["GPU"] == 0]  # the CPU rows (the GPU rows are skipped here: no GPU)

    clock = Clock()
    lines: list[str] = []
    first = job(12, lines)
    first.run()
    # 12 minutes on this fake CPU are less than the eight studies' least (their baselines searched, one short
    # round of the table's settings: about 17 minutes together). The studies that no longer fit are not
    # started, so the job ends within its budget instead of running on past it (before, all eight ran).
    assert clock.now - 1000.0 <= 12 * 60, lines[-3:]
    assert first.not_started and first.failures == []
    skipped = [line for line in lines if ": not started: it needs at least " in line]
    assert len(skipped) == len(first.not_started)
    # Each line's need is more than the time it says is left, as printed (need rounded up, time left down).
    for line in skipped:
        found = re.search(r"at least (\d+)m(\d+)s .*, (\d+)m(\d+)s of the budget is left", line)
        assert found is not None, line
        minutes, seconds, left_minutes, left_seconds = map(int, found.groups())
        assert minutes * 60 + seconds > left_minutes * 60 + left_seconds, line
    assert any(f"not started for want of budget ({', '.join(first.not_started)})" in note for note in first.notes)
    # The note says what budget would start them: their least together, at the cost the job measured.
    assert first.not_started_s > 0 and any(
        f"at least {duration(math.ceil(first.not_started_s))}" in n for n in first.notes
    )
    # The first study always runs; every study started has its verdict, none not started was even created.
    studies = {s.study_name for s in storage.get_all_studies()} - {benchmark.BENCH_STUDY}
    assert len(studies) == 8 - len(first.not_started) and "study 1/8" not in " ".join(skipped)
    assert all("verdict" in optuna.load_study(study_name=name, storage=storage).user_attrs for name in studies)
    # The table accounts for every study asked for: those not started are rows that say so, and why.
    waiting = {
        f"{r['runtime']} {r['mode']} {r['cores']}c": r["skipped"]
        for r in benchmark.records(storage)
        if "skipped" in r and r["runtime"] != "tensorflow-gpu"
    }
    assert set(waiting) == set(first.not_started)
    assert all(why.startswith("not started: the budget ran out (it needs at least") for why in waiting.values())
    cpu = cpu_rows()
    assert len(cpu) == 8 and (cpu["status"] == "skipped").sum() == len(first.not_started)
    # The same command with that budget (and a minute for the set-up: probes) keeps the studies done and
    # runs all those left.
    again: list[str] = []
    second = job(first.not_started_s / 60 + 1, again)
    second.run()
    assert sum("is already benchmarked: kept" in line for line in again) == 8 - len(first.not_started)
    assert second.not_started == [] and second.failures == []
    assert len({s.study_name for s in storage.get_all_studies()} - {benchmark.BENCH_STUDY}) == 8
    # Now every row is measured: the skips gave way to the measurements.
    cpu = cpu_rows()
    assert len(cpu) == 8 and "skipped" not in set(cpu["status"])


def test_an_environment_rebuilt_mid_job_ends_that_runtimes_studies_and_no_others(
    storage: optuna.storages.RDBStorage,
) -> None:
    from tuner.errors import EnvironmentChanged

    clock = Clock()

    class RebuiltOnce(ClockedRunner):
        """Another tuner rebuilds the first runtime's environment under the job's first study."""

        raised = False

        def run(self, spec: TrialSpec, on_step: StepCallback | None = None) -> Measurement:
            if len(self.calls) >= 12 and not self.raised:
                self.raised = True
                raise EnvironmentChanged("environment /e/x was rebuilt by another tuner during this run")
            return super().run(spec, on_step)

    lines: list[str] = []
    job = Job(storage=storage, signature=cpu_signature(), runtimes=[load("tensorflow-eigen"), load("tensorflow")],
              counts=[1], modes=["train", "infer"], budget_s=None, model="tiny", runner=RebuiltOnce(clock),
              log=lines.append, clock=clock)  # fmt: skip
    job.run()
    failed = next(line for line in lines if "was rebuilt by another tuner" in line)
    runtime = failed.split()[0]
    # The study that met it fails with the reason; the other study of the same runtime is not started (its
    # first trial would meet the same environment); the other runtime's two studies run as before.
    assert len(job.failures) == 2 and "was rebuilt by another tuner" in job.failures[0], job.failures
    assert job.failures[1].endswith(f"not started: runtime {runtime}'s environment changed during this run")
    other = "tensorflow" if runtime == "tensorflow-eigen" else "tensorflow-eigen"
    assert len([line for line in lines if re.match(rf"study \d/4: {other} (train|infer) 1c, ETA", line)]) == 2
    assert not any("failed" in line for line in lines if line.startswith(f"{other} "))
