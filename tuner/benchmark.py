"""The full benchmark, with tf_cnn_benchmarks' conventions, and the records it stores.

A benchmark measures named settings (tf-default, heuristic, tuned, or any ``--settings`` string) on one
target: a runtime, a device (the CPU on a core set, or one replica per GPU) and a workload. Warm-up batches
are run and not counted, then timed batches; images/sec = timed batches x batch size / wall time of the
timed loop, summed over rounds when a benchmark is split into interleaved rounds (A B C A B C ...: drift
then hits every setting alike). Step time is its inverse per image (ms/image, as the reference table
prints it); the spread of per-step rates is kept beside it.

Records are stored in the study storage as trials of one Optuna study, ``BENCH_STUDY``: a complete trial
per measured record (its value the headline figure, the record in its user attributes), a failed one per
skipped target with its reason. ``tuner table`` reads them and never measures. Two yardsticks are stored
the same way: the model's FLOPs per image, counted from its graph, and a large matmul's GFLOP/s per core
set, so every CPU row can say how close it comes to what the hardware can do.
"""

from __future__ import annotations

import os
import socket
import statistics
import uuid
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import optuna
import psutil
from optuna.trial import TrialState

from tuner import __version__
from tuner.confirm import interleave
from tuner.disturbance import ATTEMPTS
from tuner.errors import Interrupted, InvalidSettings, TunerError, WorkerError, WorkerNotStarted
from tuner.measurement import Measurement, coefficient_of_variation, median_abs_deviation, pooled_loop_rate
from tuner.models import ModelRef, as_ref
from tuner.objective import latency_ms
from tuner.owner import decidable, gone, identity
from tuner.policy import MeasurementPolicy
from tuner.progress import StepLines
from tuner.records import BENCH_STUDY as BENCH_STUDY  # named here too, where the records are kept
from tuner.records import BenchmarkRecord, MalformedRecord, check_record, utc_now
from tuner.runner import Runner, TaskSpec, TrialSpec
from tuner.sanitize import one_line
from tuner.settings import Settings
from tuner.signature import CpuSignature
from tuner.topology import cores_text
from tuner.workload import Workload

CPU_BATCH = 32
GPU_BATCH = 64  # per GPU, as the reference table
FULL_WARMUP = 10
FULL_TIMED = 100
Progress = Callable[[str], None]


@dataclass(frozen=True)
class Target:
    """Where a benchmark runs: ``cores`` always (the host side of a GPU run too); ``replicas`` > 1 splits
    the work with MirroredStrategy, one replica per GPU (or per logical CPU device, to test that path)."""

    runtime: str
    workload: Workload
    cores: tuple[int, ...]
    device: str = "cpu"
    replicas: int = 1

    def describe(self) -> str:
        where = cores_text(len(self.cores)) if self.device == "cpu" else f"{self.replicas} GPU"
        if self.device == "cpu" and self.replicas > 1:
            where += f" as {self.replicas} replicas"
        return f"{self.runtime} {self.workload.model} {self.workload.mode} on {where}"

    def key(self) -> dict[str, Any]:
        return {
            "runtime": self.runtime,
            "device": self.device,
            "cores": len(self.cores),
            "core_set": list(self.cores),
            "gpus": self.replicas if self.device == "gpu" else 0,
            "replicas": self.replicas,
            "model": self.workload.model,
            "objective": self.workload.objective,
            "mode": self.workload.mode,
            "batch_size": self.workload.batch_size,
            "global_batch": self.workload.batch_size * self.replicas,
        }


def full_policy(
    warmup: int = FULL_WARMUP, timed: int = FULL_TIMED, rounds: int = 1, step_s: float = 60.0
) -> MeasurementPolicy:
    """A benchmark policy; its timeout allows ``step_s`` per batch plus start-up and tracing."""
    return MeasurementPolicy("full", warmup, timed, timeout_s=900.0 + (warmup + timed) * step_s, rounds=rounds)


def memory_gib() -> float:
    """This machine's memory in GiB (psutil), rounded to 0.1."""
    return round(psutil.virtual_memory().total / 2**30, 1)


def provenance(signature: CpuSignature) -> dict[str, Any]:
    """Where and when: stored on every record."""
    return {
        "cpu": signature.to_dict(),
        "memory_gib": memory_gib(),
        "host": socket.gethostname(),
        "measured": utc_now(),
        "tool_version": __version__,
    }


def make_record(
    target: Target,
    label: str,
    settings: Settings,
    runs: Sequence[Measurement],
    signature: CpuSignature,
    run_id: str,
    extra: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """One benchmark record from the rounds measured for ``label`` on ``target``."""
    if not runs:
        raise ValueError(f"no runs to make a record of {label}")
    rates = [rate for m in runs for rate in m.rates]
    steps = [s for m in runs for s in m.timed_seconds]
    facts = runs[0].facts
    images_per_sec = pooled_loop_rate(runs)
    return {
        "kind": "benchmark",
        **target.key(),
        **({"batch_size": settings.batch, "global_batch": settings.batch * target.replicas} if settings.batch else {}),
        "label": label,
        "settings": settings.params(),
        "settings_text": settings.label(),
        "images_per_sec": images_per_sec,
        "ms_per_image": 1000.0 / images_per_sec,
        "step_seconds": statistics.median(steps),
        # Request times of every timed step of every round (p99 only from P99_MIN_STEPS steps or more).
        "p50_ms": latency_ms(steps, 0.5),
        "p99_ms": latency_ms(steps, 0.99),
        "rate_median": statistics.median(rates),
        "rate_jitter": 1.4826 * median_abs_deviation(rates),
        "rate_cv": coefficient_of_variation(rates),
        "rounds": len(runs),
        "warmup": len(runs[0].warmup_seconds),
        "timed": len(runs[0].timed_seconds),
        "round_rates": [m.rates for m in runs],
        "round_images_per_sec": [m.loop_images_per_sec for m in runs],
        "framework_version": facts.get("framework_version"),
        "replicas_in_sync": facts.get("replicas"),  # read back from the strategy, not echoed
        "onednn": facts.get("onednn"),
        "openmp": facts.get("openmp"),
        # GPU rows: the stack the table names them by, read back (None on a CPU row, or a build without CUDA).
        "cuda_version": facts.get("cuda_version") if target.device == "gpu" else None,
        "gpu_name": (facts.get("gpu_names") or [None])[0] if target.device == "gpu" else None,
        "run_id": run_id,
        **provenance(signature),
        **(extra or {}),
    }


def _same_settings(text: Any, settings: Settings) -> bool:
    """Whether a stored settings text names ``settings`` (older labels were joined with ``,``)."""
    try:
        return isinstance(text, str) and Settings.parse(text) == settings
    except InvalidSettings:
        return False


def skip_record(target: Target, reason: str, signature: CpuSignature, label: str = "") -> dict[str, Any]:
    """A target (``label`` ""), or one setting of it, that was not measured, and why."""
    return {"kind": "benchmark", **target.key(), "label": label, "skipped": reason, **provenance(signature)}


# -- storage ------------------------------------------------------------------------------------------


def _study(storage: optuna.storages.BaseStorage) -> optuna.Study:
    study = optuna.create_study(storage=storage, study_name=BENCH_STUDY, direction="maximize", load_if_exists=True)
    if "tuner_benchmarks" not in study.user_attrs:
        study.set_user_attr("tuner_benchmarks", 1)
    return study


def store(storage: optuna.storages.BaseStorage, record: dict[str, Any]) -> None:
    """Add one record as one trial: a single insert, so a crash never leaves half a record."""
    skipped = "skipped" in record
    value = None if skipped else _value(record)
    trial = optuna.trial.create_trial(
        state=TrialState.FAIL if skipped else TrialState.COMPLETE,
        value=value,
        user_attrs={"record": record},
    )
    _study(storage).add_trial(trial)


# A benchmark still measuring keeps, per setting, one RUNNING trial holding the record of its finished rounds
# (``PENDING``), who measures it (``owner``) and how long it may go unwritten (``STALE_AFTER``), rewritten
# after each run. It becomes the record when the setting ends (completed in place, the copy cleared), or is
# closed with none when the setting fails. Where its process was killed outright (SIGKILL: no handler ran),
# the record it holds is read as a record at once (``records``) and stored for good by the next benchmark
# (``recover_pending``): where this process can tell (same host, boot and PID namespace), once its owner is
# gone (``owner.gone``); where it cannot (after a reboot, another host or container sharing the storage),
# once it was not rewritten for longer than a whole round can take.
PENDING = "pending_record"
STALE_AFTER = "stale_after_s"
STALE_MARGIN_S = 3600.0
STALE_DEFAULT_S = 24 * 3600.0  # where the trial says nothing usable of its own (a forged or older one)


def _value(record: Mapping[str, Any]) -> float:
    return float(record.get("value", record.get("images_per_sec", 0.0)))


def stale_after(settings: int, policy: MeasurementPolicy) -> float:
    """How long a setting's pending record may go unwritten: every setting's run of one round, each at its
    time limit and in every attempt the disturbance check allows, plus a margin."""
    return settings * policy.timeout_s * ATTEMPTS + STALE_MARGIN_S


def open_pending(storage: optuna.storages.BaseStorage, record: dict[str, Any], stale_after_s: float) -> int:
    """Start the pending record of one setting's runs; its trial id, for ``update_pending``/``finish_pending``."""
    study = _study(storage)
    attrs = {PENDING: record, "owner": identity(), STALE_AFTER: stale_after_s}
    trial = optuna.trial.create_trial(state=TrialState.RUNNING, user_attrs=attrs)
    return storage.create_new_trial(study._study_id, template_trial=trial)


def update_pending(
    storage: optuna.storages.BaseStorage, trial_id: int, record: dict[str, Any], stale_after_s: float
) -> int:
    """Rewrite the pending record; its trial id, a new one where another benchmark stored this one as killed
    meanwhile (this process could not be seen from there, and was silent past its limit)."""
    try:
        storage.set_trial_user_attr(trial_id, PENDING, record)
    except optuna.exceptions.UpdateFinishedTrialError:
        return open_pending(storage, record, stale_after_s)
    return trial_id


def _close(storage: optuna.storages.BaseStorage, trial_id: int, record: dict[str, Any] | None) -> None:
    """Finish a pending trial: ``record`` written first, then the pending copy cleared, then the state (a
    kill between two steps leaves a trial ``records`` still reads and ``recover_pending`` still closes).
    Raises ``UpdateFinishedTrialError`` where another process finished it first."""
    if record is not None:
        storage.set_trial_user_attr(trial_id, "record", record)
    storage.set_trial_user_attr(trial_id, PENDING, None)  # the record is kept once
    if record is None:
        storage.set_trial_state_values(trial_id, TrialState.FAIL)
    else:
        storage.set_trial_state_values(trial_id, TrialState.COMPLETE, values=[_value(record)])


def finish_pending(storage: optuna.storages.BaseStorage, trial_id: int, record: dict[str, Any] | None) -> None:
    """End a pending record: as ``record`` (stored whole in it, then completed), or with no record (its
    setting failed: the rounds before are no record of it, and the failure is a record of its own). Where
    another benchmark already stored it as killed, ``record`` is stored as a record of its own."""
    try:
        _close(storage, trial_id, record)
    except optuna.exceptions.UpdateFinishedTrialError:
        if record is not None:
            store(storage, record)


def _stale(trial: optuna.trial.FrozenTrial) -> bool:
    """Not rewritten (by its record's ``measured`` date, UTC where no zone is given) for longer than its
    ``STALE_AFTER`` (or ``STALE_DEFAULT_S``); an unreadable date is not stale."""
    limit = trial.user_attrs.get(STALE_AFTER)
    if isinstance(limit, bool) or not isinstance(limit, (int, float)) or not 0 < limit < 10 * 365 * 86400:
        limit = STALE_DEFAULT_S
    pending = trial.user_attrs.get(PENDING)
    try:
        written = datetime.fromisoformat(str(pending.get("measured") if isinstance(pending, dict) else None))
    except ValueError:
        return False
    if written.tzinfo is None:
        written = written.replace(tzinfo=UTC)
    return (datetime.now(UTC) - written).total_seconds() > limit


def _killed(trial: optuna.trial.FrozenTrial) -> bool:
    """Whether a RUNNING pending trial's benchmark was killed: its owner known to be gone where this process
    can tell (``owner.decidable``), else its record stale (``_stale``)."""
    owner = trial.user_attrs.get("owner")
    if trial.state != TrialState.RUNNING or (PENDING not in trial.user_attrs and "record" not in trial.user_attrs):
        return False
    if isinstance(owner, dict) and decidable(owner):
        return gone(owner)
    return _stale(trial)


def _killed_record(trial: optuna.trial.FrozenTrial) -> dict[str, Any] | None:
    """The record a killed benchmark's pending trial holds (``_killed``), marked so where rounds are
    missing; None where it holds none. Not checked here: the caller checks it, as every record."""
    pending = trial.user_attrs.get(PENDING)
    if not isinstance(pending, dict) or not _killed(trial):
        return None
    record = dict(pending)
    if isinstance(record.get("partial"), str):  # every round measured, only its storing cut: a whole record
        record["partial"] = f"{record['partial']}, its benchmark killed"
    return record


def recover_pending(storage: optuna.storages.BaseStorage, warn: Callable[[str], None] = lambda line: None) -> int:
    """Close the pending trials of killed benchmarks (``_killed``): each as the record it holds (readers
    already see it: ``records``), or, holding none usable (cut while it was closed, or malformed: a shared
    storage is untrusted, one ``warn`` line), with no record; one left by a live or unknown process stays as
    it is, and one another benchmark closes at the same moment is left to it. Returns how many records
    this call stored."""
    if BENCH_STUDY not in {s.study_name for s in storage.get_all_studies()}:
        return 0
    study = optuna.load_study(study_name=BENCH_STUDY, storage=storage)
    recovered = 0
    for trial in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
        if not _killed(trial):
            continue
        found = trial.user_attrs["record"] if "record" in trial.user_attrs else _killed_record(trial)
        record: dict[str, Any] | None = None
        if found is not None:
            try:
                record = dict(check_record(found, f"pending benchmark record {trial.number}"))
            except MalformedRecord as error:
                warn(f"skipped: {one_line(error)}")
        try:
            _close(storage, trial._trial_id, record)
        except optuna.exceptions.UpdateFinishedTrialError:
            continue
        recovered += record is not None
    return recovered


def records(
    storage: optuna.storages.BaseStorage, warn: Callable[[str], None] = lambda line: None
) -> list[BenchmarkRecord]:
    """Every stored record that matches the schema (``tuner/records.py``), oldest first; a malformed one (a
    shared storage is untrusted) is one ``warn`` line and left out. None if no benchmark was ever stored."""
    names = {s.study_name for s in storage.get_all_studies()}
    if BENCH_STUDY not in names:
        return []
    study = optuna.load_study(study_name=BENCH_STUDY, storage=storage)
    found = []  # each record is one trial, stored whole: a cut-short import leaves whole records only
    for trial in study.get_trials(deepcopy=False):
        # A killed benchmark's rounds are read as its record at once, before the next benchmark stores them.
        record = trial.user_attrs["record"] if "record" in trial.user_attrs else _killed_record(trial)
        if record is None:
            continue
        try:
            found.append(check_record(record, f"benchmark record {trial.number}"))
        except MalformedRecord as error:
            warn(f"skipped: {one_line(error)}")
    return found


def own_records(storage: optuna.storages.BaseStorage) -> list[BenchmarkRecord]:
    """The records this storage's own runs stored (``records``), without those `tuner import` merged: another
    machine's, whatever CPU id, run or model they name, so never a benchmark or yardstick of this one."""
    return [r for r in records(storage) if "imported" not in r]


# -- measuring ----------------------------------------------------------------------------------------


def measure(
    runner: Runner,
    target: Target,
    named: Sequence[tuple[str, Settings]],
    bench: MeasurementPolicy,
    progress: Progress = lambda line: None,
    runs: dict[str, list[Measurement]] | None = None,
    failed: dict[str, str] | None = None,
    on_run: Callable[[str], None] = lambda label: None,
    on_fail: Callable[[str], None] = lambda label: None,
) -> dict[str, list[Measurement]]:
    """Measure every named setting for ``bench.rounds`` interleaved rounds, order rotated each round.
    Runs are added to ``runs`` as they finish, so a caller keeps what was measured if it is interrupted.
    With ``failed``, a setting whose worker fails is noted there with its reason and left out of later
    rounds while the others go on; without it, the first failure is raised. An interrupt, and a worker that
    could not even start (the machine's fault, not the setting's), are always raised: the runs so far stay.
    ``on_run(label)`` is called after each run is added, ``on_fail(label)`` after a setting failed (the
    caller stores both at once)."""
    runs = {label: [] for label, _ in named} if runs is None else runs
    for label, _ in named:
        runs.setdefault(label, [])
    given_up = failed if failed is not None else {}
    for round_, (label, settings) in interleave(named, bench.rounds, lambda item, _round: item[0] in given_up):
        spec = TrialSpec(settings, target.workload, target.cores, bench, device=target.device, replicas=target.replicas)
        lines = StepLines(progress, f"round {round_ + 1}/{bench.rounds} {label}", bench.warmup, bench.timed)
        try:
            measurement = runner.run(spec, lines)  # a full burst takes minutes: said on the way
        except WorkerError as error:
            if failed is None or isinstance(error, (Interrupted, WorkerNotStarted)):
                raise
            failed[label] = str(error)
            on_fail(label)
            progress(f"round {round_ + 1}/{bench.rounds} {label}: FAILED ({error.reason}: {error})")
            continue
        runs[label].append(measurement)
        on_run(label)
        progress(
            f"round {round_ + 1}/{bench.rounds} {label}: {measurement.loop_images_per_sec:.2f} img/s "
            f"({len(measurement.timed_seconds)} timed batches, cv {measurement.cv:.1%})"
        )
    return runs


def flops_per_image(
    storage: optuna.storages.BaseStorage,
    runner: Runner,
    model: ModelRef | str,
    settings: Settings,
    cores: tuple[int, ...],
    signature: CpuSignature,
    log: Callable[[str], None] = lambda line: None,
) -> dict[str, float]:
    """FLOPs per image for inference and one training step (inference only for a SavedModel), counted once
    per model and stored."""
    name = as_ref(model).label
    for record in own_records(storage):  # counted here: an imported count could be anything
        if record.get("kind") == "flops" and record.get("model") == name:
            return {mode: float(v) for mode, v in record["flops_per_image"].items()}
    log(f"counting the FLOPs of {name} (one graph trace) ...")
    result = runner.compute(TaskSpec("flops", settings, cores, model=model))
    counted = result.get("flops_per_image")
    modes = ("infer", "train") if as_ref(model).trainable else ("infer",)
    if not isinstance(counted, dict) or not all(
        isinstance(counted.get(mode), (int, float)) and counted[mode] > 0 for mode in modes
    ):
        raise TunerError(f"the FLOP count of {name} came back malformed: {counted!r}")
    flops = {mode: float(counted[mode]) for mode in modes}
    store(
        storage,
        {
            "kind": "flops",
            "model": name,
            "flops_per_image": flops,
            "value": flops["infer"],
            "framework_version": result.get("framework_version"),
            "counted_by": "tf.profiler float_operation over the step's graph at batch 1",
            **provenance(signature),
        },
    )
    return flops


def yardstick_settings(cores: int, honours: Sequence[str], precision: str = "fp32") -> Settings:
    """The matmul yardstick's settings: every core, and oneDNN forced on where the runtime honours the knob.
    Plain Eigen's matmul does not use a second core (measured on AVX2: 78 GFLOP/s on 1 and on 2 cores, 170 on
    2 with oneDNN on), so a yardstick measured as the rows run would make rows exceed 100% of "peak". A bf16
    row is measured against a bf16 matmul (``precision``)."""
    knobs: dict[str, object] = {"intra_op": cores, "inter_op": 1, "data_format": "NHWC", "precision": precision}
    return Settings.from_params({**knobs, **({"onednn": True} if "onednn" in honours else {})})


def matmul_peak(
    storage: optuna.storages.BaseStorage,
    runner: Runner,
    runtime: str,
    settings: Settings,
    cores: tuple[int, ...],
    signature: CpuSignature,
    log: Callable[[str], None] = lambda line: None,
) -> float:
    """Best GFLOP/s of a 4096x4096 fp32 matmul in ``runtime`` on ``cores`` with ``settings`` (see
    ``yardstick_settings``), measured once and stored with the settings and whether oneDNN really ran."""
    for record in own_records(storage):  # measured here: a file may claim this CPU's id
        if (
            record.get("kind") == "matmul"
            and record.get("runtime") == runtime
            and record.get("cores") == len(cores)
            and record.get("cpu", {}).get("id") == signature.id
            and _same_settings(record.get("settings_text"), settings)
        ):
            return float(record["peak_gflops"])
    log(f"measuring the matmul yardstick ({settings.precision}), {runtime} on {cores_text(len(cores))} ...")
    result = runner.compute(TaskSpec("matmul", settings, cores))
    gflops = result.get("gflops")
    if not isinstance(gflops, list) or not gflops or not all(isinstance(g, (int, float)) and g > 0 for g in gflops):
        raise TunerError(f"the matmul yardstick came back malformed: {gflops!r}")
    peak = float(max(gflops))
    store(
        storage,
        {
            "kind": "matmul",
            "runtime": runtime,
            "cores": len(cores),
            "core_set": list(cores),
            "size": result.get("size"),
            "gflops": gflops,
            "peak_gflops": peak,
            "value": peak,
            "settings_text": settings.label(),
            "precision": settings.precision,
            "dtype": result.get("dtype"),  # read back: the matmul's own type
            "onednn": result.get("onednn"),  # read back: the yardstick's own path, not the rows'
            "framework_version": result.get("framework_version"),
            **provenance(signature),
        },
    )
    return peak


def visible_gpus(runner: Runner, settings: Settings, cores: tuple[int, ...]) -> int:
    """How many GPUs TensorFlow in the runner's environment sees (asked with the GPUs not hidden)."""
    return int(runner.compute(TaskSpec("devices", settings, cores[:1], gpus=True)).get("gpus") or 0)


def gpu_skip_reason(runtime: str, visible: int, wanted: int) -> str | None:
    if visible >= wanted:
        return None
    why = " (its build has no CUDA, or no GPU is attached)" if visible == 0 else ""
    return f"TensorFlow in runtime {runtime} sees {visible} GPU{'' if visible == 1 else 's'}{why}"


def new_run_id() -> str:
    return f"{os.getpid()}-{uuid.uuid4().hex[:8]}"
