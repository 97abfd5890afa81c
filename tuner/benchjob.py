"""`tuner benchmark`: named settings measured on each target in interleaved rounds, every result stored.

For each core count and mode: the settings asked for (default tf-default, the heuristic and, once a study
has a confirmed verdict, the setting it recommends), as they can run on this CPU (``tuner/capability.py``: a
baseline that cannot run is stored as such and its runnable part measured instead). A setting whose worker
fails is stored as failed with the reason while the others go on; an interrupt, or a worker that cannot
start at all (the machine's fault, not the setting's), keeps the finished rounds, marked partial. The job
ends with the list of what could not be measured, which the CLI turns into exit 1.
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import optuna

from tuner import benchmark
from tuner.capability import NOT_RUNNABLE, REPAIRS, Capabilities, emulated_note, plan_baselines, unrunnable
from tuner.confirm import DEFAULT, HEURISTIC, TUNED
from tuner.errors import TunerError, UsageError
from tuner.measurement import Measurement
from tuner.models import ModelRef
from tuner.objective import get as get_objective
from tuner.pipeline import Recommended, stored_recommended, stored_search, stored_tuned
from tuner.policy import MeasurementPolicy
from tuner.records import MalformedRecord, StoredVerdict
from tuner.runner import Runner
from tuner.runtime import Runtime
from tuner.settings import Settings
from tuner.signature import CpuSignature
from tuner.space import SearchSpace
from tuner.study import StudyConfig
from tuner.topology import core_set, cores_text, sockets_for
from tuner.workload import workload_for

Log = Callable[[str], None]
SEARCH_FACTS = ("sampled", "searched")  # what only the tuned record says of its search (stored_search)
RECOMMENDED = "recommended"  # --settings: what the study's verdict recommends (tuned, or a baseline)
Named = list[tuple[str, Settings]]


def check_settings(wanted: Sequence[str], baselines: Sequence[str]) -> None:
    """Every ``--settings`` string that is not a baseline's name (or its runnable part, ``heuristic-nhwc``),
    ``tuned`` or ``recommended`` parses (before any storage)."""
    names = {*baselines, *(f"{b}-{r.suffix}" for b in baselines for r in REPAIRS.values()), TUNED, RECOMMENDED}
    for text in wanted:
        if not text.strip(" ;"):  # it parsed as every knob at its default: tf-default under another name
            raise UsageError(
                f"--settings: {text!r} names no setting (a baseline, tuned, recommended, or knob=value;...)"
            )
        if text not in names:
            Settings.parse(text)


@dataclass
class BenchmarkJob:
    storage: optuna.storages.BaseStorage
    signature: CpuSignature
    runtime: Runtime
    space: SearchSpace
    runner: Runner
    caps: Capabilities  # what can run here (the probe's read-back); empty for GPU rows
    counts: Sequence[int]
    modes: Sequence[str]
    model: ModelRef | str
    batch: int
    policy: MeasurementPolicy
    wanted: Sequence[str] | None = None  # --settings; None: tf-default, heuristic and recommended where it exists
    device: str = "cpu"
    replica_counts: Sequence[int] = (1,)
    visible_gpus: int | None = None  # GPU rows: how many GPUs TensorFlow sees
    log: Log = print  # progress
    out: Log = print  # results, one line each
    failures: list[str] = field(default_factory=list)
    objective: str = "throughput"  # whose study's tuned settings are benchmarked
    unavailable: str | None = None  # GPU rows: why the runtime cannot run here at all (every row skipped)
    stored: list[dict[str, Any]] = field(default_factory=list)  # every record this job stored, in order

    def _keep(self, record: dict[str, Any]) -> None:
        benchmark.store(self.storage, record)
        self.stored.append(record)

    def run(self) -> None:
        recovered = benchmark.recover_pending(self.storage, self.log)
        if recovered:
            self.log(f"stored {recovered} records of an earlier benchmark that was killed: the rounds it measured")
        run_id = benchmark.new_run_id()
        for n in self.counts:
            for mode in self.modes:
                named, not_runnable, extra = self._settings(n, mode)
                for count in self.replica_counts:
                    workload = workload_for(self.model, mode, self.batch, self.objective)
                    target = benchmark.Target(self.runtime.name, workload, core_set(n), self.device, count)
                    self._target(target, named, not_runnable, run_id, extra)

    def check(self) -> None:
        """What the storage must hold for the settings asked for, checked before the probe and any run: a
        ``--settings recommended`` whose study has no confirmed verdict, or ``tuned`` whose study has no
        measured sampled setting, is one line (``UsageError``)."""
        if self.wanted is None or not {RECOMMENDED, TUNED} & set(self.wanted):
            return
        for n in self.counts:
            for mode in self.modes:
                study = self._study(n, mode)
                if RECOMMENDED in self.wanted:
                    self._recommended(study)
                if TUNED in self.wanted:
                    _tuned(self.storage, study)

    def _study(self, n: int, mode: str) -> str:
        """The study whose verdict and best sample are benchmarked at ``n`` cores in ``mode``."""
        # GPU rows take the recommendation of the host's study, tuned at the objective's own batch.
        host_batch = self.batch if self.device == "cpu" else get_objective(self.objective).default_batch
        workload = workload_for(self.model, mode, host_batch, self.objective)
        host = "tensorflow" if self.runtime.gpu_only else self.runtime.name  # GPU rows: the host's tuned study
        study = StudyConfig(workload, core_set(n), self.space, self.signature, host).name
        return study_of(study, host_batch, host, self.storage.get_all_studies())

    def _recommended(self, study: str) -> Recommended | None:
        """The study's confirmed verdict (None: not confirmed yet, an error where ``--settings recommended``
        asked for it)."""
        found = stored_recommended(self.storage, study)
        if found is None and self.wanted is not None:
            raise UsageError(f"--settings recommended: study {study} has no confirmed verdict in storage; "
                             "tune it first (tuner tune or tuner run)")  # fmt: skip
        return found

    def _settings(self, n: int, mode: str) -> tuple[Named, dict[str, str], dict[str, Any]]:
        """The settings to measure at ``n`` cores, those that cannot run here with why, and what the study's
        verdict recommends (stored on every record, so that tables mark the recommended row) and how many
        settings it sampled (on the tuned record: the table says of how many it is the best)."""
        study = self._study(n, mode)
        wanted = list(self.wanted or [DEFAULT, HEURISTIC, RECOMMENDED])
        baselines = self.space.baselines(n, sockets_for(core_set(n)))
        extra: dict[str, Any] = {}
        if RECOMMENDED in wanted:
            found = self._recommended(study)
            at = wanted.index(RECOMMENDED)
            if found is None:
                del wanted[at]
                self.log(f"study {study} has no confirmed verdict yet, so no recommended setting is benchmarked")
            else:
                extra.update(recommended=found.label, verdict=found.verdict, study=study)
                self.log(f"recommended, by the verdict of {study}: {found.label} [{found.settings.label()}]")
                baselines = {**baselines, found.label: found.settings.params()}
                if found.label in wanted:  # tf-default (no clear gain) is measured once, under its name
                    del wanted[at]
                else:
                    wanted[at] = found.label
        if TUNED in wanted:  # the best of how many sampled settings, searching what (the table says so)
            extra.update(stored_search(self.storage, study))
        plan = plan_baselines(baselines, self.caps)
        not_runnable = {name: note for name, note in plan.not_runnable().items() if name in wanted}
        stand_ins = [plan.stand_ins[name] for name in not_runnable if plan.stand_ins.get(name) in plan.runnable]
        runnable = [w for w in wanted if w not in not_runnable] + stand_ins
        named = _named(runnable, {**baselines, **plan.runnable}, self.storage, study)
        if self.device == "gpu":  # the host's tuned threads, the GPUs' layout
            named = [(label, dataclasses.replace(s, data_format="NCHW")) for label, s in named]
        for label, settings in list(named):
            # A GPU row convolves on the GPU: NCHW needs no oneDNN there, whatever the host's is set to.
            host = settings if self.device == "cpu" else dataclasses.replace(settings, data_format="NHWC")
            broken = unrunnable(host.params(), self.caps)
            why = None if broken is None else broken[1]
            if why is None and n % settings.instances:  # the space's instances_divide_cores, for a --settings
                why = f"{settings.instances} instances cannot share {cores_text(n)} equally: the count must divide it"
            if why is not None:  # asked for by name, and impossible here: a failure
                named.remove((label, settings))
                not_runnable[label] = f"{NOT_RUNNABLE}: {why}"
                self.failures.append(f"{label} ({mode} {n}c): {not_runnable[label]}")
        for label, settings in named:  # named or recommended, so measured; but its figure is not bf16's own
            emulated = self._emulated(settings)
            if emulated:
                self.log(
                    f"{label} ({mode} {n}c): {emulated['emulated']}; measured all the same, usually slower than fp32"
                )
        return named, not_runnable, extra

    def _emulated(self, settings: Settings) -> dict[str, str]:
        """``{"emulated": why}`` for a CPU row whose precision runs without its instructions here, else empty:
        stored on the record, so that the table says its figure is not what the precision does on such a CPU."""
        note = emulated_note(settings.params(), self.caps) if self.device == "cpu" else None
        return {} if note is None else {"emulated": note}

    def _target(
        self,
        target: benchmark.Target,
        named: Named,
        not_runnable: dict[str, str],
        run_id: str,
        extra: dict[str, Any] | None = None,
    ) -> None:
        skip = self.unavailable
        if skip is None and self.visible_gpus is not None:
            skip = benchmark.gpu_skip_reason(self.runtime.name, self.visible_gpus, target.replicas)
        if skip is not None:
            self._keep(benchmark.skip_record(target, skip, self.signature))
            self.out(f"{target.describe()}: skipped: {skip}")
            return
        for label, note in not_runnable.items():
            self._keep(benchmark.skip_record(target, note, self.signature, label))
            self.out(f"{target.describe()} {label}: {note}")
        if not named:
            return
        p = self.policy
        self.log(f"benchmark {target.describe()}: {', '.join(label for label, _ in named)}, "
                 f"{p.rounds} x ({p.warmup} warm-up + {p.timed} timed batches)")  # fmt: skip
        runs: dict[str, list[Measurement]] = {}
        failed: dict[str, str] = {}
        pending: dict[str, int] = {}  # label -> its pending record (benchmark.PENDING), stored after every run
        settings_of = dict(named)
        silent_s = benchmark.stale_after(len(named), p)  # how long a pending record may go unwritten

        def stored_now(label: str) -> None:
            record = self._record(target, label, settings_of[label], runs[label], run_id, extra)
            if label in pending:
                pending[label] = benchmark.update_pending(self.storage, pending[label], record, silent_s)
            else:
                pending[label] = benchmark.open_pending(self.storage, record, silent_s)

        def failed_now(label: str) -> None:  # its rounds before the failure are no record of it, even if killed
            if label in pending:
                benchmark.finish_pending(self.storage, pending.pop(label), None)

        tag = f"[{target.workload.mode} {len(target.cores)}c]"
        log = lambda line: self.log(f"{tag} {line}")  # noqa: E731
        try:
            benchmark.measure(self.runner, target, named, p, log, runs, failed, on_run=stored_now, on_fail=failed_now)
        except (KeyboardInterrupt, TunerError):
            self._store(target, named, runs, failed, pending, run_id, announce=False, extra=extra)  # finished rounds
            raise
        self._store(target, named, runs, failed, pending, run_id, announce=True, extra=extra)

    def _record(
        self,
        target: benchmark.Target,
        label: str,
        settings: Settings,
        measured: Sequence[Measurement],
        run_id: str,
        extra: dict[str, Any] | None,
    ) -> dict[str, Any]:
        """The record of ``label``'s runs so far: partial while rounds are missing."""
        rounds = self.policy.rounds
        partial = {"partial": f"{len(measured)} of {rounds} rounds"} if len(measured) < rounds else {}
        own = {k: v for k, v in (extra or {}).items() if k not in SEARCH_FACTS or label == TUNED}  # tuned's
        own.update(partial, **self._emulated(settings))
        return benchmark.make_record(target, label, settings, list(measured), self.signature, run_id, own)

    def _store(
        self,
        target: benchmark.Target,
        named: Named,
        runs: dict[str, list[Measurement]],
        failed: dict[str, str],
        pending: dict[str, int],
        run_id: str,
        announce: bool,
        extra: dict[str, Any] | None = None,
    ) -> None:
        """A record per setting measured (partial when rounds are missing; its pending record completed), a
        failed one per failure."""
        for label, settings in named:
            if label in failed:  # stored and counted even when an interrupt cut the benchmark short
                if label in pending:  # the rounds before the failure are not a record of the setting
                    benchmark.finish_pending(self.storage, pending[label], None)
                reason = f"failed: {failed[label]}"
                self._keep(benchmark.skip_record(target, reason, self.signature, label))
                self.out(f"{target.describe()} {label}: FAILED: {failed[label]}")
                self.failures.append(f"{label} ({target.workload.mode} {len(target.cores)}c): {failed[label]}")
                continue
            measured = runs.get(label, [])
            if not measured:
                continue
            record = self._record(target, label, settings, measured, run_id, extra)
            if label in pending:
                benchmark.finish_pending(self.storage, pending[label], record)
                self.stored.append(record)
            else:
                self._keep(record)
            if announce:
                self.out(
                    f"{target.describe()} {label}: {record['images_per_sec']:.2f} images/sec "
                    f"({record['ms_per_image']:.2f} ms/image, step {record['step_seconds'] * 1000:.0f} ms, "
                    f"per-step rates cv {record['rate_cv']:.1%}) [{settings.label()}]"
                    + (f" ({record['emulated']})" if "emulated" in record else "")
                )


def study_of(name: str, batch: int, runtime: str, studies: Sequence[Any]) -> str:
    """The study of ``name``'s target whose verdict ``--settings recommended`` and ``tuned`` take: of ``name``
    and the studies that searched more for the same target (``--search-batch`` with ``batch`` among its values,
    ``-b8.32.64-`` in place of ``-b32-``; ``--search-isa``, ``+isa`` after the runtime), the one confirmed
    last, as ``tuner recommend`` chooses; where none is confirmed, ``name`` if it exists, else the last named."""
    head, _, tail = name.rpartition(f"-b{batch}-")
    rest = tail.removeprefix(runtime)
    pattern = re.compile(rf"{re.escape(head)}-b(\d+(?:\.\d+)*)-{re.escape(runtime)}(?:\+isa)?{re.escape(rest)}")
    same = [s for s in studies if (m := pattern.fullmatch(s.study_name)) and str(batch) in m.group(1).split(".")]
    confirmed = sorted((when, s.study_name) for s in same if (when := _confirmed_at(s.user_attrs)) is not None)
    if confirmed:
        return str(confirmed[-1][1])
    names = sorted(s.study_name for s in same)
    return name if name in names or not names else names[-1]


def _confirmed_at(attrs: Mapping[str, Any]) -> str | None:
    """When the study's verdict was confirmed; None without one (or with one that does not read)."""
    if "verdict" not in attrs:
        return None
    try:
        return StoredVerdict.from_dict(attrs["verdict"]).measured or ""
    except MalformedRecord:
        return None


def _tuned(storage: optuna.storages.BaseStorage, study_name: str) -> Settings:
    """``--settings tuned``: the study's best measured sampled setting; a ``UsageError`` line where none is."""
    found = stored_tuned(storage, study_name)
    if found is None:
        raise UsageError(
            f"--settings tuned: no study {study_name} with a measured sampled setting in storage; "
            "tune it first (tuner tune or tuner run)"
        )
    return found


def _named(
    wanted: list[str],
    baselines: dict[str, dict[str, object]],
    storage: optuna.storages.BaseStorage,
    study_name: str,
) -> Named:
    """``--settings`` values -> (label, settings): a baseline's name, ``tuned`` (from the stored study), or a
    settings string such as ``'intra_op=2;inter_op=1'``."""
    named: Named = []
    for text in wanted:
        if text in baselines:
            named.append((text, Settings.from_params(baselines[text])))
        elif text == TUNED:
            named.append((TUNED, _tuned(storage, study_name)))
        else:
            named.append((f"custom {text}", Settings.parse(text)))
    labels = [label for label, _ in named]
    if len(set(labels)) != len(labels):
        raise UsageError("--settings: the same settings were named twice")
    return named
