"""The main job, ``tuner run``: for each runtime and core count, tune train and infer, benchmark, tabulate.

One wall-time budget covers everything (environment set-up, probes, yardsticks, every study). Each study
gets a share of the time still left, weighted by what its steps cost (training about three inference
steps; one core about twice two cores), so a study that overruns takes from the ones after it, not from
the budget. Within a study: the search (baselines first) gets about half its share; the rest is the
benchmark, which is also the confirmation: tf-default, the heuristic, the other baselines and the best
sampled setting measured in interleaved rounds, with as many timed batches as the share allows (the full
10 + 100 when it fits). The verdict, with its 95% interval, comes from those rounds; the benchmark records
are made from the same runs. Everything is stored as it is measured, so the same command resumes.
"""

from __future__ import annotations

import dataclasses
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import optuna

from tuner.benchmark import (
    FULL_TIMED,
    FULL_WARMUP,
    GPU_BATCH,
    Target,
    full_policy,
    make_record,
    matmul_peak,
    measure,
    new_run_id,
    records,
    skip_record,
    store,
    visible_gpus,
    yardstick_settings,
)
from tuner.benchmark import flops_per_image as count_flops
from tuner.confirm import DEFAULT, TUNED
from tuner.cost import CostModel
from tuner.envs import create as create_env
from tuner.errors import TunerError
from tuner.measurement import Measurement
from tuner.models import ModelRef, as_ref
from tuner.plan import (
    Prepared,
    StudyOptions,
    Yardstick,
    baseline_count,
    check_model,
    prepare,
    share,
    study_config,
    weight,
)
from tuner.policy import BURST, CONFIRM, MeasurementPolicy
from tuner.probe import fixed_knobs
from tuner.records import StoredConfirmation, StoredVerdict
from tuner.runner import Runner, SubprocessRunner
from tuner.runtime import MANIFEST, Runtime
from tuner.settings import Settings
from tuner.signature import CpuSignature
from tuner.space import SearchSpace
from tuner.study import StudyConfig, StudyRun, duration
from tuner.topology import core_set, sockets_for
from tuner.workload import workload_for

Log = Callable[[str], None]
SEARCH_SHARE = 0.5  # of a study's share: the search's; the rest goes to the benchmark-confirmation
MIN_TIMED = 3
BUDGET_SLACK = 0.05


def plan_benchmark(time_left: float, configs: int, overhead_s: float, step_s: float) -> MeasurementPolicy:
    """The longest benchmark that fits ``time_left`` for ``configs`` settings: three interleaved rounds if
    at all possible (fewer cannot give a clear verdict), tf_cnn_benchmarks' 10 + 100 batches split over
    them when that fits, else fewer timed batches, never fewer than ``MIN_TIMED`` per round."""

    def planned(warmup: int, timed: int, rounds: int) -> MeasurementPolicy:
        # A run that takes three times its expected length is stuck: kill it rather than eat the budget.
        timeout = 120.0 + 3 * (overhead_s + (warmup + timed) * step_s)
        return MeasurementPolicy("full", warmup, timed, timeout_s=timeout, rounds=rounds)

    for rounds in (3, 2, 1):
        per_run = time_left / (rounds * configs)
        steps = math.floor((per_run - overhead_s) / max(step_s, 1e-9))
        full_timed = math.ceil(FULL_TIMED / rounds)
        if steps >= FULL_WARMUP + full_timed:
            return planned(FULL_WARMUP, full_timed, rounds)
        warmup = min(FULL_WARMUP, max(2, steps // 5))
        if steps - warmup >= MIN_TIMED:
            return planned(warmup, min(full_timed, steps - warmup), rounds)
    return planned(2, MIN_TIMED, 1)


def study_records(
    study: optuna.Study, target: Target, signature: CpuSignature
) -> list[tuple[str, Settings, list[Measurement], dict[str, Any]]]:
    """Benchmark records' parts from a study's stored confirmation runs: every baseline under its own name,
    and the best sampled candidate as ``tuned``; each carries what the verdict recommends."""
    confirmation = stored_confirmation(study)
    verdict = StoredVerdict.from_dict(study.user_attrs.get("verdict"), f"study {study.study_name}: verdict")
    runs: dict[str, list[Measurement]] = {}
    for run in confirmation.runs:
        runs.setdefault(run.candidate, []).append(run.measurement)
    best = verdict.best_sampled()
    recommended_label = TUNED if verdict.recommended == best else verdict.recommended
    parts = []
    for name, measured in runs.items():
        if name not in verdict.params or (name.startswith("trial ") and name != best):
            continue
        label = TUNED if name == best else name
        extra = {
            "study": study.study_name,
            "candidate": name,
            "recommended": recommended_label,
            "verdict": verdict.text,
        }
        parts.append((label, verdict.params[name], measured, extra))
    return parts


def stored_confirmation(study: optuna.Study) -> StoredConfirmation:
    """The study's confirmation runs as stored, checked (empty before any)."""
    return StoredConfirmation.from_dict(study.user_attrs.get("confirmation"), f"study {study.study_name}: confirmation")


def confirmation_id(study: optuna.Study) -> str:
    """Names one confirmation's runs: a new confirmation, or more rounds of it, is another id."""
    confirmation = stored_confirmation(study)
    return f"{study.study_name}:{confirmation.id}:{len(confirmation.runs)}"


def tuned_settings(study: optuna.Study) -> Settings | None:
    """The tuned settings of a study: its best confirmed sampled setting, else its best sampled trial."""
    if "verdict" in study.user_attrs:
        verdict = StoredVerdict.from_dict(study.user_attrs["verdict"], f"study {study.study_name}: verdict")
        best = verdict.best_sampled()
        if best is not None:
            return verdict.params[best]
    sampled = [
        t
        for t in study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.COMPLETE,))
        if "baseline" not in t.user_attrs
    ]
    top = max(sampled, key=lambda t: t.value or 0.0, default=None)
    return None if top is None else Settings.from_params(top.params)


@dataclass(frozen=True)
class Recommended:
    """What a study's confirmed verdict recommends, named as benchmark records name it: ``tuned`` for its best
    sampled setting, else the baseline's own name (tf-default when no setting clearly won)."""

    label: str
    settings: Settings
    verdict: str


def stored_recommended(storage: optuna.storages.BaseStorage, study_name: str) -> Recommended | None:
    """The named study's recommendation; None if it does not exist or has no confirmed verdict yet."""
    if study_name not in {s.study_name for s in storage.get_all_studies()}:
        return None
    study = optuna.load_study(study_name=study_name, storage=storage)
    if "verdict" not in study.user_attrs:
        return None
    verdict = StoredVerdict.from_dict(study.user_attrs["verdict"], f"study {study_name}: verdict")
    label = TUNED if verdict.recommended == verdict.best_sampled() else verdict.recommended
    return Recommended(label, verdict.params[verdict.recommended], verdict.text)


def stored_tuned(storage: optuna.storages.BaseStorage, study_name: str) -> Settings | None:
    """The tuned settings of the named study in ``storage``; None if it does not exist or has none yet."""
    if study_name not in {s.study_name for s in storage.get_all_studies()}:
        return None
    return tuned_settings(optuna.load_study(study_name=study_name, storage=storage))


@dataclass
class Job:
    storage: optuna.storages.BaseStorage
    signature: CpuSignature
    runtimes: Sequence[Runtime]
    counts: Sequence[int]
    modes: Sequence[str]
    budget_s: float | None
    model: ModelRef | str = "resnet50"
    batch_size: int = 32
    objective: str = "throughput"
    seed: int = 0
    allow_precision: tuple[str, ...] = ()  # --allow-precision: bf16 is searched only when asked for
    force_precision: bool = False
    search_batch: tuple[int, ...] = ()  # --search-batch: batch sizes searched beside batch_size (throughput)
    create_envs: bool = True
    runner: Runner | None = None  # tests pass a replaying fake; else one subprocess runner per runtime
    log: Log = print
    clock: Callable[[], float] = time.monotonic
    notes: list[str] = field(default_factory=list)
    failures: list[str] = field(default_factory=list)

    @property
    def options(self) -> StudyOptions:
        """Each study: 20 trials, the best sampled setting confirmed against the baselines."""
        return StudyOptions(
            trials=20,
            candidates=1,
            confirm_policy=CONFIRM,
            seed=self.seed,
            allow_precision=self.allow_precision,
            force_precision=self.force_precision,
            search_batch=self.search_batch,
        )

    # -- preparation ------------------------------------------------------------------------------------

    def _runner(self, runtime: Runtime) -> Runner:
        return self.runner or SubprocessRunner(python=runtime.python())

    def _ready(self, runtime: Runtime) -> bool:
        """The runtime's environment exists, or is built now (its time counts against the budget)."""
        if runtime.env_dir is None or (runtime.env_dir / MANIFEST).exists() or self.runner is not None:
            return True
        reason = runtime.installable()
        if reason is not None:
            self.notes.append(f"runtime {runtime.name} skipped: {reason}")
            self.log(f"runtime {runtime.name} skipped: {reason}")
            return False
        if not self.create_envs:
            self.notes.append(f"runtime {runtime.name} skipped: its environment is not created (tuner env create)")
            return False
        self.log(f"runtime {runtime.name}: creating its environment (counts against the budget)")
        report = create_env(runtime, log=self.log)
        self.log(report.line())
        return True

    def _baseline(self, space: SearchSpace, cores: int, name: str) -> Settings:
        baselines = space.baselines(cores, sockets_for(core_set(cores)))
        return Settings.from_params({**baselines.get(name, baselines[DEFAULT]), "data_format": "NHWC"})

    # -- the job ----------------------------------------------------------------------------------------

    def run(self) -> None:
        started = self.clock()
        # Plan against a little less than the budget: floors (every baseline measured, three short rounds)
        # and the table at the end need some slack.
        deadline = None if self.budget_s is None else started + self.budget_s * (1 - BUDGET_SLACK)
        prepared: list[Prepared] = []
        probe_s = 0.0  # the longest probe: before any study is measured, what one run costs here
        for runtime in self.runtimes:
            try:
                if not self._ready(runtime):
                    continue
                probed = self.clock()
                ready = prepare(runtime, self._runner(runtime), max(self.counts))
                prepared.append(check_model(ready, self.model, self.log))
                probe_s = max(probe_s, self.clock() - probed)
            except TunerError as error:
                self._fail(f"runtime {runtime.name}", error)
                continue
            self.log(prepared[-1].describe())
        if not prepared:
            raise TunerError("no runtime could run here: " + "; ".join(self.notes + self.failures))
        self._yardsticks(prepared)
        cells = [(ready, n, mode) for ready in prepared for n in self.counts for mode in self.modes]
        configs = [self._config(ready, n, mode, None) for ready, n, mode in cells]
        done = [self._complete(config.name) for config in configs]
        weights = [
            0.0 if finished else weight(mode, n, max(self.counts))
            for (_, n, mode), finished in zip(cells, done, strict=True)
        ]
        baselines = [baseline_count(ready, n) for ready, n, _ in cells]
        yardstick = Yardstick(CostModel.estimate(probe_s, BURST))
        for index, (ready, n, mode) in enumerate(cells):
            tag = f"{ready.runtime.name} {mode} {n}c"
            if done[index]:
                self.log(f"study {index + 1}/{len(cells)}: {tag} is already benchmarked: kept")
                continue
            # What each study still to run needs at least: its baselines and the shortest confirmation.
            floors = [
                0.0 if done[i] else yardstick.floor_s(configs[i], baselines[i], weights[i])
                for i in range(index, len(cells))
            ]
            budget = share(None if deadline is None else deadline - self.clock(), weights[index:], floors)
            left = "" if deadline is None else f", {duration(deadline - self.clock())} of the budget left"
            self.log(
                f"study {index + 1}/{len(cells)}: {tag}" + (f", share {duration(budget)}" if budget else "") + left
            )
            try:
                cost = self._cell(ready, n, mode, budget)
            except TunerError as error:
                self._fail(tag, error)
                continue
            if cost is not None:  # the floors of the studies after it, from what its runs cost
                yardstick = Yardstick(cost, weights[index])
        self._gpu_rows(prepared)
        spent = self.clock() - started
        over = (
            ""
            if self.budget_s is None or spent <= self.budget_s
            else f" (over the budget by {spent - self.budget_s:.0f} s)"
        )
        self.log(f"job done in {spent:.0f} s{over}")

    def _fail(self, what: str, error: TunerError) -> None:
        self.failures.append(f"{what}: {error}")
        self.log(f"{what} failed: {error}")

    def _yardsticks(self, prepared: Sequence[Prepared]) -> None:
        """FLOPs per image (once, from the first runtime's graph) and the matmul peak per runtime and cores."""
        first = prepared[0]
        try:
            flops = count_flops(
                self.storage,
                first.runner,
                self.model,
                self._baseline(first.space, 1, DEFAULT),
                core_set(1),
                self.signature,
            )
            counted = ", ".join(f"{flops[mode] / 1e9:.2f} GFLOP/sample {mode}" for mode in flops)
            self.log(f"{as_ref(self.model).label}: {counted}")
        except TunerError as error:
            self._fail("FLOP count", error)
        # fp32 always; bf16 too where it may be searched, so a bf16 row is held against a bf16 matmul.
        precisions = ["fp32", *(p for p in self.allow_precision if p != "fp32")]
        for ready in prepared:
            name = ready.runtime.name
            searched = [p for p in precisions if "precision" in ready.runtime.honours or p == "fp32"]
            for n in self.counts:
                for precision in searched:
                    try:
                        settings = yardstick_settings(n, ready.runtime.honours, precision)
                        peak = matmul_peak(self.storage, ready.runner, name, settings, core_set(n), self.signature)
                        self.log(f"matmul peak ({precision}), {name} on {n} cores: {peak:.0f} GFLOP/s")
                    except TunerError as error:
                        self._fail(f"matmul peak {precision} {name} {n}c", error)

    def _config(self, ready: Prepared, n: int, mode: str, share: float | None) -> StudyConfig:
        workload = workload_for(self.model, mode, self.batch_size, self.objective)
        return study_config(ready, workload, n, self.signature, share, self.options)

    def _complete(self, study_name: str) -> bool:
        """The study has a verdict and the benchmark records of that very confirmation are stored."""
        if study_name not in {s.study_name for s in self.storage.get_all_studies()}:
            return False
        study = optuna.load_study(study_name=study_name, storage=self.storage)
        if "verdict" not in study.user_attrs:
            return False
        run_id = confirmation_id(study)
        return any(r.get("run_id") == run_id for r in records(self.storage) if r.get("kind") == "benchmark")

    def _cell(self, ready: Prepared, n: int, mode: str, share: float | None) -> CostModel | None:
        """Search, then benchmark-confirm, one study; what its search runs cost (None: nothing measured)."""
        config = self._config(ready, n, mode, share)
        tag = f"{ready.runtime.name} {mode} {n}c"
        run = StudyRun(
            self.storage, config, ready.runner, progress=lambda line: self.log(f"[{tag}] {line}"), clock=self.clock
        )
        start = self.clock()
        end = None if share is None else start + share
        run.search(end, stop_at=None if share is None else start + SEARCH_SHARE * share)
        cost = run.cost()
        configs = len(run.candidates())
        if end is None or cost is None:
            bench = full_policy(rounds=3, timed=math.ceil(FULL_TIMED / 3))
        else:
            bench = plan_benchmark(end - self.clock(), configs, cost.overhead_s, cost.step_s)
        self.log(
            f"[{tag}] benchmark-confirmation: {configs} settings x {bench.rounds} rounds x "
            f"({bench.warmup} warm-up + {bench.timed} timed batches)"
        )
        verdict = run.confirm(None, rounds=bench.rounds, policy=bench)
        run.store_importances()
        self.log(f"[{tag}] verdict: {verdict.text()}")
        self.log(f"[{tag}] {verdict.against_each()}")
        self._store_records(run.study, Target(ready.runtime.name, config.workload, config.cores))
        return cost

    def _store_records(self, study: optuna.Study, target: Target) -> None:
        stored = {(r.get("run_id"), r.get("label")) for r in records(self.storage) if r.get("kind") == "benchmark"}
        run_id = confirmation_id(study)  # the same confirmation runs always give the same records
        for label, settings, measured, extra in study_records(study, target, self.signature):
            if (run_id, label) not in stored:
                store(self.storage, make_record(target, label, settings, measured, self.signature, run_id, extra))

    def _gpu_rows(self, prepared: Sequence[Prepared]) -> None:
        """GPU targets: 1 to N visible GPUs, one replica each, batch 64 per GPU, NCHW, the tuned host threads
        of the largest core count. A runtime whose TensorFlow sees no GPU gets each row skipped with why."""
        host = core_set(max(self.counts))
        visible: dict[str, int] = {}
        for ready in prepared:
            try:
                fixed = Settings.from_params(fixed_knobs(ready.space))
                visible[ready.runtime.name] = visible_gpus(ready.runner, fixed, host)
            except TunerError as error:
                self._fail(f"GPU check {ready.runtime.name}", error)
        if not any(visible.values()):
            seen = ", ".join(f"{name}: {count}" for name, count in visible.items())
            reason = f"no GPU visible to TensorFlow in any runtime (GPUs seen: {seen})"
            stock = "tensorflow" if "tensorflow" in visible else prepared[0].runtime.name
            for mode in self.modes:
                for count in (1, 2):  # the reference table's GPU rows
                    target = Target(stock, workload_for(self.model, mode, GPU_BATCH), host, "gpu", count)
                    store(self.storage, skip_record(target, reason, self.signature))
            self.log(f"GPU rows skipped: {reason}")
            return
        for ready in prepared:
            for mode in self.modes:
                for count in range(1, visible.get(ready.runtime.name, 0) + 1):
                    target = Target(ready.runtime.name, workload_for(self.model, mode, GPU_BATCH), host, "gpu", count)
                    tuned = stored_tuned(self.storage, self._config(ready, max(self.counts), mode, None).name)
                    settings = dataclasses.replace(
                        tuned or self._baseline(ready.space, len(host), DEFAULT), data_format="NCHW"
                    )
                    label = TUNED if tuned is not None else DEFAULT
                    try:
                        runs = measure(ready.runner, target, [(label, settings)], full_policy(), self.log)
                    except TunerError as error:
                        self._fail(target.describe(), error)
                        continue
                    record = make_record(target, label, settings, runs[label], self.signature, new_run_id())
                    store(self.storage, record)
