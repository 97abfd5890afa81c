"""The schema of what tuner stores on a study: checked when a study is imported and when it is read.

A study's user attributes are the real API of the storage: export files and shared PostgreSQL studies carry
them between machines, so they are untrusted input. ``StudyMeta`` (the ``tuner`` attribute: where and how a
study measured), ``StoredVerdict`` (the ``verdict`` attribute: what confirmation concluded),
``StoredConfirmation`` (the ``confirmation`` attribute: its runs, each a ``ConfirmationRun``) and
``StoredRunnable`` (the ``runnable`` attribute: what the probe ruled out) are frozen records built only
through ``from_dict``, which checks types, ISO dates, lengths and nesting depth, and the
settings through ``Settings``. A malformed study is reported by ``check_study`` as one line and skipped by
its readers, never fatal for the rest of the storage.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import PurePath
from typing import Any, TypedDict, cast

from tuner.errors import InvalidSettings, TunerError
from tuner.measurement import Measurement
from tuner.objective import OBJECTIVES
from tuner.sanitize import one_line
from tuner.settings import ONEDNN_DEFAULT, Settings


def utc_now() -> str:
    """The timestamp every stored record carries: UTC, ISO 8601, to the second."""
    return datetime.now(UTC).isoformat(timespec="seconds")


IMPORTING = "tuner_importing"  # set on a study while it is imported; readers leave such a study alone
BENCH_STUDY = "tuner-benchmarks"  # the benchmark records' study: never a tuner study, whatever it holds
# Knobs a flag adds to a runtime's space (--search-batch, --search-isa), as show's mode column and the table
# name them: such a study has a row of its own, and a tuned record from it says so (``searched``).
EXTRA_KNOBS = {"batch": "batch searched", "onednn_isa": "ISA cap searched"}
MAX_DEPTH = 12  # nesting of any stored attribute (a verdict's rates are 4 deep)
MAX_TEXT = 4096  # characters in any one stored string
MAX_ITEMS = 200_000  # entries in any one list or mapping
MODES = ("train", "infer")
# A candidate's name: a baseline of a search space (tuner/space.py checks them on load) or "trial N". Stored
# names are printed, logged and keyed on; a shared study's names must be these and nothing else.
NAME_LENGTH = 64
NAME = re.compile(rf"trial [0-9]{{1,9}}|[A-Za-z0-9][A-Za-z0-9_.+-]{{0,{NAME_LENGTH - 1}}}")
# A stand-in is named after its baseline plus "-" and its repair's suffix (tuner/capability.py REPAIRS):
# a search space's baseline names leave room for the longest, so every stand-in's name is a NAME too.
SUFFIX_ROOM = len("-system-malloc")
BASELINE_NAME = re.compile(rf"[A-Za-z0-9][A-Za-z0-9_.+-]{{0,{NAME_LENGTH - SUFFIX_ROOM - 1}}}")
MAX_STEPS = 100_000  # warm-up or timed steps of one stored confirmation run: a run is sized from them


class MalformedRecord(TunerError):
    """A stored or imported study attribute that does not match the schema."""

    reason = "malformed"


def check_shape(value: Any, where: str, depth: int = 0) -> None:
    """JSON-like data within the depth, length and size limits; raise ``MalformedRecord`` naming where."""
    if depth > MAX_DEPTH:
        raise MalformedRecord(f"{where}: nested deeper than {MAX_DEPTH} levels")
    if isinstance(value, str):
        if len(value) > MAX_TEXT:
            raise MalformedRecord(f"{where}: a string of {len(value)} characters (at most {MAX_TEXT})")
    elif isinstance(value, Mapping):
        if len(value) > MAX_ITEMS:
            raise MalformedRecord(f"{where}: {len(value)} entries (at most {MAX_ITEMS})")
        for key, item in value.items():
            if not isinstance(key, str):
                raise MalformedRecord(f"{where}: a key that is not a string")
            check_shape(item, f"{where}.{key[:40]}", depth + 1)
    elif isinstance(value, list):
        if len(value) > MAX_ITEMS:
            raise MalformedRecord(f"{where}: {len(value)} entries (at most {MAX_ITEMS})")
        for index, item in enumerate(value):
            check_shape(item, f"{where}[{index}]", depth + 1)
    elif isinstance(value, float) and not math.isfinite(value):
        raise MalformedRecord(f"{where}: {value} is not a finite number (JSON has none)")
    elif value is not None and not isinstance(value, (bool, int, float)):
        raise MalformedRecord(f"{where}: {type(value).__name__} is not JSON data")


def _get(data: Mapping[str, Any], key: str, kind: type | tuple[type, ...], where: str, optional: bool = False) -> Any:
    value = data.get(key)
    if value is None and optional:
        return None
    if isinstance(value, bool) and kind in (int, float, (int, float)):
        raise MalformedRecord(f"{where}.{key}: must be a number, not {value!r}")
    if not isinstance(value, kind):
        name = kind.__name__ if isinstance(kind, type) else " or ".join(k.__name__ for k in kind)
        raise MalformedRecord(f"{where}.{key}: must be {name}, not {type(value).__name__}")
    return value


def _date(data: Mapping[str, Any], key: str, where: str) -> str | None:
    value: str | None = _get(data, key, str, where, optional=True)
    if value is not None:
        try:
            datetime.fromisoformat(value)
        except ValueError:
            raise MalformedRecord(f"{where}.{key}: {value[:40]!r} is not an ISO date") from None
    return value


def _settings(params: Any, where: str) -> Settings:
    if not isinstance(params, Mapping):
        raise MalformedRecord(f"{where}: settings must be an object")
    try:
        return Settings.from_params(params)
    except (InvalidSettings, TypeError) as error:
        raise MalformedRecord(f"{where}: {error}") from None


@dataclass(frozen=True)
class StudyMeta:
    """The ``tuner`` attribute of a study: what, where and how it measured."""

    model: str
    mode: str
    batch_size: int
    runtime: str
    cores: int
    cpu: Mapping[str, Any]
    probe: Mapping[str, Any]
    created: str | None
    raw: Mapping[str, Any]
    space: str | None = None  # the search space's name
    inert_knobs: tuple[str, ...] = ()  # knobs searched although the runtime ignores them (--allow-inert)
    objective: str = "throughput"  # what the study optimised (studies before objectives: throughput)
    searched_knobs: tuple[str, ...] = ()  # the space's knobs (studies before session 34: not stored)

    @classmethod
    def from_dict(cls, data: Any, where: str = "tuner") -> StudyMeta:
        if not isinstance(data, Mapping):
            raise MalformedRecord(f"{where}: must be an object")
        check_shape(data, where)
        mode = _get(data, "mode", str, where)
        if mode not in MODES:
            raise MalformedRecord(f"{where}.mode: must be train or infer, not {mode[:20]!r}")
        cores = _get(data, "cores", int, where)
        batch = _get(data, "batch_size", int, where)
        if not 1 <= cores <= 4096 or not 1 <= batch <= 1_000_000:
            raise MalformedRecord(f"{where}: cores {cores} or batch size {batch} out of range")
        cpu = _get(data, "cpu", Mapping, where)
        for key in ("model_name", "id", "vendor"):
            _get(cpu, key, str, f"{where}.cpu")
        isa = cpu.get("isa", [])
        if not isinstance(isa, list) or not all(isinstance(flag, str) for flag in isa):
            raise MalformedRecord(f"{where}.cpu.isa: must be a list of strings")
        probe = data.get("probe", {})
        if not isinstance(probe, Mapping):
            raise MalformedRecord(f"{where}.probe: must be an object")
        _get(probe, "framework_version", str, f"{where}.probe", optional=True)
        inert = data.get("inert_knobs") or []
        if not isinstance(inert, list) or not all(isinstance(knob, str) for knob in inert):
            raise MalformedRecord(f"{where}.inert_knobs: must be a list of strings")
        searched = data.get("searched_knobs") or []
        if not isinstance(searched, list) or not all(isinstance(knob, str) and len(knob) <= 40 for knob in searched):
            raise MalformedRecord(f"{where}.searched_knobs: must be a list of knob names")
        if data.get("searched_batches"):  # --search-batch studies stored the batches before they stored knobs
            searched = [*searched, "batch"]
        objective = _get(data, "objective", str, where, optional=True) or "throughput"
        if objective not in OBJECTIVES:
            raise MalformedRecord(f"{where}.objective: unknown objective {one_line(objective, 40)!r}")
        return cls(
            model=_get(data, "model", str, where),
            mode=mode,
            batch_size=batch,
            runtime=_get(data, "runtime", str, where),
            cores=cores,
            cpu=cpu,
            probe=probe,
            created=_date(data, "created", where),
            raw=data,
            space=_get(data, "space", str, where, optional=True),
            inert_knobs=tuple(inert),
            objective=objective,
            searched_knobs=tuple(sorted(set(searched))),
        )

    @property
    def extra_knobs(self) -> list[str]:
        """The knobs of ``EXTRA_KNOBS`` the study searched: what makes it a variant of its target's plain study."""
        return [knob for knob in EXTRA_KNOBS if knob in self.searched_knobs]


@dataclass(frozen=True)
class StoredVerdict:
    """The ``verdict`` attribute of a study: the recommended settings, validated, and how sure it is."""

    recommended: str
    settings: Settings
    clear: bool
    text: str
    measured: str | None
    speedup: Mapping[str, float] | None
    raw: Mapping[str, Any]
    params: Mapping[str, Settings] = field(default_factory=dict)  # every confirmed candidate's settings
    images_per_sec: Mapping[str, float] = field(default_factory=dict)  # each candidate's confirmed median
    winner: str | None = None  # the fastest candidate, recommended only when its gain is clear
    rounds: int | None = None  # interleaved rounds every candidate was measured
    vs_heuristic: Mapping[str, float] | None = None  # the winner's speedup over the heuristic, as stored
    recommended_params: Mapping[str, object] = field(default_factory=dict)  # ``settings`` as stored
    objective: str = "throughput"  # whose statistic ranked the candidates
    score: Mapping[str, float] = field(default_factory=dict)  # each candidate's statistic (higher is better)
    latency_ms: Mapping[str, Mapping[str, float | None]] = field(default_factory=dict)  # p50, p99 by candidate
    dropped: Mapping[str, str] = field(default_factory=dict)  # candidates whose confirmation run failed -> why
    sampled: int | None = None  # sampled settings measured when it was confirmed (verdicts before: unknown)

    def ranking(self) -> Mapping[str, float]:
        """What ranked the candidates: the objective's statistic, or (verdicts before objectives) the median."""
        return self.score or self.images_per_sec

    def best_sampled(self) -> str | None:
        """The confirmed sampled candidate ("trial N") best by the objective, if any was confirmed."""
        ranking = self.ranking()
        sampled = [name for name in self.params if name.startswith("trial ") and name in ranking]
        return max(sampled, key=lambda name: ranking[name], default=None)

    @classmethod
    def from_dict(cls, data: Any, where: str = "verdict") -> StoredVerdict:
        if not isinstance(data, Mapping):
            raise MalformedRecord(f"{where}: must be an object")
        check_shape(data, where)
        # Speedups with their 95% interval: value, low and high, each a number (show prints all three).
        for key in ("speedup_vs_tf_default", "speedup_vs_heuristic"):
            _speedup_interval(data.get(key), f"{where}.{key}")
        each = data.get("speedup_vs_each")
        if each is not None and not isinstance(each, Mapping):
            raise MalformedRecord(f"{where}.speedup_vs_each: must map names to speedups")
        for name, interval in (each or {}).items():
            _speedup_interval(interval, f"{where}.speedup_vs_each.{name[:40]}", optional=False)
        for key in ("images_per_sec", "score"):
            _numbers(data.get(key), f"{where}.{key}")
        objective = _get(data, "objective", str, where, optional=True) or "throughput"
        if objective not in OBJECTIVES:
            raise MalformedRecord(f"{where}.objective: unknown objective {one_line(objective, 40)!r}")
        latency = data.get("latency_ms") or {}
        if not isinstance(latency, Mapping) or not all(
            isinstance(v, Mapping) and all(x is None or _number(x) for x in v.values()) for v in latency.values()
        ):
            raise MalformedRecord(f"{where}.latency_ms: must map names to p50 and p99 numbers (or null)")
        params = data.get("params", {})
        if not isinstance(params, Mapping):
            raise MalformedRecord(f"{where}.params: must be an object")
        settings = _settings(data.get("recommended_params"), f"{where}.recommended_params")
        _names([data.get("recommended")] + ([data["winner"]] if data.get("winner") is not None else []), where)
        for key in ("params", "images_per_sec", "score", "latency_ms", "speedup_vs_each"):
            if isinstance(data.get(key), Mapping):
                _names(data[key], f"{where}.{key}")
        recommended: str = _get(data, "recommended", str, where)
        candidates = {name: _settings(p, f"{where}.params.{name[:40]}") for name, p in params.items()}
        # The recommendation is stated three times: its name (tables), its settings (recommend, exec) and the
        # name's entry in params (benchmark): they must agree, or one of them lies about what is recommended.
        if recommended not in candidates:
            raise MalformedRecord(f"{where}.recommended: {recommended!r} is not one of the confirmed params")
        if not _resolves_to(candidates[recommended], settings):
            raise MalformedRecord(
                f"{where}.recommended_params: not the settings of {recommended!r} in params "
                f"({one_line(candidates[recommended].label(), 200)})"
            )
        return cls(
            recommended=recommended,
            settings=settings,
            clear=_get(data, "clear", bool, where),
            text=_get(data, "text", str, where),
            measured=_date(data, "measured", where),
            speedup=data.get("speedup_vs_tf_default"),
            raw=data,
            params=candidates,
            images_per_sec=dict(data.get("images_per_sec") or {}),
            winner=_get(data, "winner", str, where, optional=True),
            rounds=_get(data, "rounds", int, where, optional=True),
            vs_heuristic=data.get("speedup_vs_heuristic"),
            recommended_params=data["recommended_params"],  # a mapping: ``_settings`` checked it
            objective=objective,
            score=dict(data.get("score") or {}),
            latency_ms={name: dict(v) for name, v in latency.items()},
            dropped=_dropped(data.get("dropped"), f"{where}.dropped"),
            sampled=_typed(data, "sampled", int, where, optional=True),
        )


def _resolves_to(candidate: Settings, stored: Settings) -> bool:
    """Whether ``stored`` (a verdict's ``recommended_params``) is ``candidate`` (its entry in ``params``) as
    ``confirm.store_verdict`` writes it: the same knobs, except that oneDNN "default" may be stored as what it
    meant on the CPU measured (on or off); "default" and no oneDNN knob at all run alike."""
    have, want = dict(candidate.env_knobs), dict(stored.env_knobs)
    if have.get("onednn") == ONEDNN_DEFAULT and isinstance(want.get("onednn"), bool):
        have["onednn"] = want["onednn"]
    for knobs in (have, want):
        if knobs.get("onednn") == ONEDNN_DEFAULT:
            del knobs["onednn"]
    same = (candidate.intra_op, candidate.inter_op, candidate.data_format) == (
        stored.intra_op,
        stored.inter_op,
        stored.data_format,
    )
    return same and have == want and dict(candidate.launch) == dict(stored.launch)


def _rates(value: Any, where: str) -> dict[str, list[list[float]]]:
    """Per-step rates by candidate, round by round: names to lists of lists of positive numbers."""
    if not isinstance(value, Mapping):
        raise MalformedRecord(f"{where}: must be an object")
    _names(value, where)
    for name, runs in value.items():
        if not isinstance(runs, list) or not all(
            isinstance(run, list) and all(_positive(rate) for rate in run) for run in runs
        ):
            raise MalformedRecord(f"{where}.{name[:40]}: must be a list of rounds of positive rates")
    return {name: [[float(rate) for rate in run] for run in runs] for name, runs in value.items()}


DROP_REASON_CHARS = 300  # a dropped candidate's reason, as confirmation stores it


def _dropped(value: Any, where: str) -> dict[str, str]:
    """Dropped candidates: names to why (absent: none)."""
    if value is None:
        return {}
    if not isinstance(value, Mapping) or not all(isinstance(why, str) for why in value.values()):
        raise MalformedRecord(f"{where}: must map names to reasons")
    _names(value, where)
    return {name: one_line(why, DROP_REASON_CHARS) for name, why in value.items()}  # one printable line each


def _positive(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and value > 0


@dataclass(frozen=True)
class ConfirmationRun:
    """One run of a confirmation, as stored in the ``confirmation`` attribute's ``runs``."""

    round: int  # counted from 0
    candidate: str  # a baseline's name, or "trial N"
    measurement: Measurement

    @classmethod
    def from_dict(cls, data: Any, where: str = "run") -> ConfirmationRun:
        if not isinstance(data, Mapping):
            raise MalformedRecord(f"{where}: must be an object")
        round_ = _get(data, "round", int, where)
        if round_ < 0:
            raise MalformedRecord(f"{where}.round: must not be negative, not {round_}")
        measured = _get(data, "measurement", Mapping, where)
        try:
            measurement = Measurement.from_dict(dict(measured))
        except (KeyError, TypeError, ValueError, OverflowError) as error:
            raise MalformedRecord(f"{where}.measurement: {one_line(error, 200)}") from None
        candidate = _get(data, "candidate", str, where)
        _names([candidate], f"{where}.candidate")
        return cls(round_, candidate, measurement)

    def to_dict(self) -> dict[str, object]:
        return {"round": self.round, "candidate": self.candidate, "measurement": self.measurement.to_dict()}


@dataclass(frozen=True)
class StoredConfirmation:
    """The ``confirmation`` attribute of a study: one confirmation's runs, stored as each is measured so a
    re-run resumes it (``confirm.ConfirmationLog`` writes it). An absent attribute reads as empty."""

    id: str = ""  # names this confirmation: a new one (other candidates or policy) gets a new id
    candidates: tuple[str, ...] = ()
    policy: Mapping[str, int] | None = None  # warm-up and timed steps of its runs; None: not recorded
    rates: Mapping[str, list[list[float]]] = field(default_factory=dict)  # per-step rates by candidate
    runs: tuple[ConfirmationRun, ...] = ()
    dropped: Mapping[str, str] = field(default_factory=dict)  # candidates whose run failed -> why

    @classmethod
    def from_dict(cls, data: Any, where: str = "confirmation") -> StoredConfirmation:
        if data is None:
            return cls()
        if not isinstance(data, Mapping):
            raise MalformedRecord(f"{where}: must be an object")
        check_shape(data, where)
        candidates = data.get("candidates") or []
        if not isinstance(candidates, list):
            raise MalformedRecord(f"{where}.candidates: must be a list of names")
        _names(candidates, f"{where}.candidates")
        policy = _get(data, "policy", Mapping, where, optional=True)
        if policy is not None:
            for key in ("warmup", "timed"):
                steps = _get(policy, key, int, f"{where}.policy")
                if not 0 <= steps <= MAX_STEPS:
                    raise MalformedRecord(f"{where}.policy.{key}: {steps!r} is not a step count from 0 to {MAX_STEPS}")
        runs = data.get("runs") or []
        if not isinstance(runs, list):
            raise MalformedRecord(f"{where}.runs: must be a list")
        return cls(
            id=_get(data, "id", str, where, optional=True) or "",
            candidates=tuple(candidates),
            policy=policy,
            rates=_rates(data.get("rates") or {}, f"{where}.rates"),
            runs=tuple(ConfirmationRun.from_dict(run, f"{where}.runs[{index}]") for index, run in enumerate(runs)),
            dropped=_dropped(data.get("dropped"), f"{where}.dropped"),
        )


@dataclass(frozen=True)
class StoredRunnable:
    """The ``runnable`` attribute of a study: what the probe's read-back ruled out on its CPU (see
    ``tuner/capability.py``). An absent attribute reads as nothing ruled out."""

    excluded: tuple[str, ...] = ()  # knob values taken out of the space, one line each
    baselines: Mapping[str, str] = field(default_factory=dict)  # baseline name -> why it was set aside
    capabilities: Mapping[str, Any] = field(default_factory=dict)
    # baseline name -> the settings measured under it here, as the last run planned them (absent before)
    planned_params: Mapping[str, Mapping[str, Any]] = field(default_factory=dict)

    @property
    def planned(self) -> dict[str, Settings]:
        """``planned_params`` as ``Settings`` (``from_dict`` checked that each one is valid)."""
        return {name: Settings.from_params(params) for name, params in self.planned_params.items()}

    @classmethod
    def from_dict(cls, data: Any, where: str = "runnable") -> StoredRunnable:
        if data is None:
            return cls()
        if not isinstance(data, Mapping):
            raise MalformedRecord(f"{where}: must be an object")
        check_shape(data, where)
        excluded = data.get("excluded") or []
        if not isinstance(excluded, list) or not all(isinstance(line, str) for line in excluded):
            raise MalformedRecord(f"{where}.excluded: must be a list of strings")
        baselines = data.get("baselines") or {}
        if not isinstance(baselines, Mapping) or not all(isinstance(note, str) for note in baselines.values()):
            raise MalformedRecord(f"{where}.baselines: must map names to strings")
        _names(baselines, f"{where}.baselines")
        capabilities = data.get("capabilities") or {}
        if not isinstance(capabilities, Mapping):
            raise MalformedRecord(f"{where}.capabilities: must be an object")
        planned_params = data.get("planned")
        planned_params = {} if planned_params is None else planned_params
        if not isinstance(planned_params, Mapping):
            raise MalformedRecord(f"{where}.planned: must be an object")
        _names(planned_params, f"{where}.planned")
        for name, params in planned_params.items():
            _settings(params, f"{where}.planned.{name[:40]}")
        return cls(tuple(excluded), baselines, capabilities, planned_params)

    def to_dict(self) -> dict[str, object]:
        record: dict[str, object] = {
            "capabilities": self.capabilities,
            "excluded": list(self.excluded),
            "baselines": self.baselines,
        }
        if self.planned_params:
            record["planned"] = {name: dict(params) for name, params in self.planned_params.items()}
        return record


class BenchmarkRecord(TypedDict, total=False):
    """A stored benchmark record (``tuner/benchmark.py`` makes them): what its readers may rely on once
    ``check_record`` passed. ``kind`` is benchmark, flops or matmul; a skipped setting or target carries
    ``skipped`` instead of figures."""

    kind: str
    runtime: str
    device: str
    cores: int
    core_set: list[int]
    gpus: int
    replicas: int
    model: str
    objective: str
    mode: str
    batch_size: int
    global_batch: int
    label: str
    skipped: str
    partial: str
    settings: dict[str, Any]
    settings_text: str
    sampled: int  # on a tuned record: how many sampled settings its study's verdict chose from
    searched: list[str]  # on a tuned record: the EXTRA_KNOBS its study searched (--search-batch, --search-isa)
    images_per_sec: float
    ms_per_image: float
    step_seconds: float
    p50_ms: float | None
    p99_ms: float | None
    rate_median: float
    rate_jitter: float
    rate_cv: float
    rounds: int
    warmup: int
    timed: int
    round_rates: list[list[float]]
    round_images_per_sec: list[float]
    framework_version: str | None
    onednn: bool | None
    openmp: str | None
    cuda_version: str | None
    gpu_name: str | None
    run_id: str
    recommended: str
    cpu: dict[str, Any]
    memory_gib: float
    measured: str
    imported: dict[str, str]  # merged by `tuner import`: {"file": ..., "at": ISO date}; absent when measured here
    flops_per_image: dict[str, float]
    peak_gflops: float
    emulated: str  # on a CPU row whose bf16 ran without bf16 instructions (capability.emulated_note): why


_Kind = type | tuple[type, ...]
_TARGET: dict[str, _Kind] = {
    "runtime": str,
    "device": str,
    "cores": int,
    "gpus": int,
    "replicas": int,
    "model": str,
    "mode": str,
    "batch_size": int,
    "global_batch": int,
    "label": str,
    "cpu": Mapping,
}
_FIGURES: dict[str, _Kind] = {
    "images_per_sec": (int, float),
    "ms_per_image": (int, float),
    "step_seconds": (int, float),
    "rate_cv": (int, float),
    "rounds": int,
    "warmup": int,
    "timed": int,
    "round_rates": list,
    "settings_text": str,
    "run_id": str,
}


def _finite_positive(value: Any) -> bool:
    """A number (not a bool) that is finite and above 0 as a float: a rate or count every reader divides by."""
    if not _number(value):
        return False
    try:
        return math.isfinite(float(value)) and value > 0
    except OverflowError:  # an integer past float's range
        return False


MAX_COUNT = 2**31 - 1  # a record's counts (cores, batches, rounds) are table columns of 64-bit integers


def _typed(data: Mapping[str, Any], key: str, kind: _Kind, where: str, optional: bool = False) -> Any:
    """``_get``, and a number within what its readers convert: a count from 0 to ``MAX_COUNT``, a figure
    finite as a float (pandas and the figures turn it into one) and not negative (times, rates, spreads)."""
    value = _get(data, key, kind, where, optional)
    if not _number(value):
        return value
    if kind is int and not 0 <= value <= MAX_COUNT:
        raise MalformedRecord(f"{where}.{key}: must be a count from 0 to {MAX_COUNT}")
    if kind is not int and not (_finite_positive(value) or value == 0):
        raise MalformedRecord(f"{where}.{key}: must be a finite number, not negative")
    return value


def _record_cpu(data: Mapping[str, Any], where: str, required: bool) -> None:
    """A record's ``cpu`` (its signature, as ``provenance`` stores it): an object whose id and model name
    are text and whose ISA flags are a list of text, each where present (``required``: the object itself)."""
    cpu = _get(data, "cpu", Mapping, where, optional=not required)
    if cpu is None:
        if "cpu" in data:
            raise MalformedRecord(f"{where}.cpu: must be an object")
        return
    for key in ("id", "model_name", "vendor"):
        _get(cpu, key, str, f"{where}.cpu", optional=True)
    isa = cpu.get("isa", [])
    if not isinstance(isa, list) or not all(isinstance(flag, str) for flag in isa):
        raise MalformedRecord(f"{where}.cpu.isa: must be a list of strings")


def check_record(data: Any, where: str = "record") -> BenchmarkRecord:
    """A stored benchmark record, checked for the keys and types its readers use (table, report, the main
    job); raises ``MalformedRecord`` naming the first problem."""
    if not isinstance(data, Mapping):
        raise MalformedRecord(f"{where}: must be an object")
    check_shape(data, where)
    kind = data.get("kind")
    if kind not in ("benchmark", "flops", "matmul"):
        raise MalformedRecord(f"{where}.kind: {str(kind)[:20]!r} is not benchmark, flops or matmul")
    # Every kind: where it was measured and when (records are sorted by the date: text, never null).
    _record_cpu(data, where, required=kind == "benchmark")
    if "measured" in data:
        _get(data, "measured", str, where)
        _date(data, "measured", where)
    if "value" in data and not _finite_positive(data["value"]):  # the stored trial's value (tuner.benchmark)
        raise MalformedRecord(f"{where}.value: must be a finite, positive number")
    if "imported" in data:  # merged by `tuner import` (tuner/transfer.py): from which file, when
        origin = _get(data, "imported", Mapping, where)
        _get(origin, "file", str, f"{where}.imported")
        if _date(origin, "at", f"{where}.imported") is None:
            raise MalformedRecord(f"{where}.imported.at: must be str, not NoneType")
    if kind == "flops":
        flops = _get(data, "flops_per_image", Mapping, where)
        for mode in MODES:  # inference always; a SavedModel cannot train, so it has no training count
            if _get(flops, mode, (int, float), f"{where}.flops_per_image", optional=mode == "train") is None:
                continue
            if not _finite_positive(flops[mode]):
                raise MalformedRecord(f"{where}.flops_per_image.{mode}: must be finite and positive")
        _get(data, "model", str, where)
    elif kind == "matmul":
        _get(data, "runtime", str, where)
        _typed(data, "cores", int, where)
        _get(data, "precision", str, where, optional=True)
        if not _finite_positive(_get(data, "peak_gflops", (int, float), where)):
            raise MalformedRecord(f"{where}.peak_gflops: must be finite and positive")
    else:
        for key, expected in _TARGET.items():
            _typed(data, key, expected, where)
        if data["mode"] not in MODES or data["device"] not in ("cpu", "gpu"):
            raise MalformedRecord(f"{where}: mode must be train or infer, device cpu or gpu")
        _typed(data, "memory_gib", (int, float), where, optional=True)
        if (_get(data, "objective", str, where, optional=True) or "throughput") not in OBJECTIVES:
            raise MalformedRecord(f"{where}.objective: unknown objective")
        for key in ("p50_ms", "p99_ms"):
            if _typed(data, key, (int, float), where, optional=True) is not None and data[key] <= 0:
                raise MalformedRecord(f"{where}.{key}: must be positive")
        for key in ("cuda_version", "gpu_name"):  # a GPU row's stack, as the table labels it
            _get(data, key, str, where, optional=True)
        # What the verdict recommends (a label the table keys on), and the settings (the table reads their
        # precision to find the matmul peak of the same precision).
        _get(data, "recommended", str, where, optional=True)
        _typed(data, "sampled", int, where, optional=True)  # how many settings the search sampled (the table)
        searched = data.get("searched", [])  # the knobs its study searched beside the runtime's (the table)
        known = isinstance(searched, list) and all(isinstance(k, str) and k in EXTRA_KNOBS for k in searched)
        if not known or len(set(searched)) != len(searched):
            raise MalformedRecord(f"{where}.searched: must be a list of {', '.join(EXTRA_KNOBS)}")
        settings = _get(data, "settings", Mapping, where, optional=True)
        if settings is None and "settings" in data:
            raise MalformedRecord(f"{where}.settings: must be an object")
        if settings is not None:
            _get(settings, "precision", str, f"{where}.settings", optional=True)
        _get(data, "emulated", str, where, optional=True)  # why its precision ran without its instructions
        if "skipped" in data:
            _get(data, "skipped", str, where)
        else:
            for key, expected in _FIGURES.items():
                _typed(data, key, expected, where)
            # Rates are divided by and into (speedups, ms/image): each finite and above 0.
            # Each round has steps: a paired bootstrap over the rounds needs both sides of every pair.
            if not _finite_positive(data["images_per_sec"]) or not all(
                isinstance(run, list) and run and all(_finite_positive(v) for v in run) for run in data["round_rates"]
            ):
                raise MalformedRecord(
                    f"{where}: images_per_sec must be finite and positive, round_rates non-empty lists of such rates"
                )
            per_round = data.get("round_images_per_sec")
            if per_round is not None and (
                not isinstance(per_round, list) or not all(_finite_positive(v) for v in per_round)
            ):
                raise MalformedRecord(f"{where}.round_images_per_sec: must be a list of finite, positive rates")
    return cast(BenchmarkRecord, data)


def tuner_studies(storage: Any, warn: Callable[[str], None]) -> list[Any]:
    """The studies of ``storage`` (an Optuna storage) that tuner made and that match the schema, as
    ``FrozenStudy`` summaries; each malformed one is one ``warn`` line and left out, never fatal."""
    found = []
    for info in storage.get_all_studies():
        if "tuner" not in info.user_attrs or info.user_attrs.get(IMPORTING) or info.study_name == BENCH_STUDY:
            continue  # not tuner's, an import of it cut short (transfer.py redoes it), or the records' study
        try:
            check_study(info.study_name, info.user_attrs)
        except MalformedRecord as error:
            warn(f"study {one_line(info.study_name, 80)} skipped: {one_line(error)}")
            continue
        found.append(info)
    return found


def _number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def is_name(value: Any) -> bool:
    """Whether ``value`` is a candidate's name (``NAME``)."""
    return isinstance(value, str) and NAME.fullmatch(value) is not None


def baseline_name(attrs: Mapping[str, Any]) -> str | None:
    """A trial's ``baseline`` attribute if it is a well-formed name; otherwise (absent, or written by someone
    else as anything else) None: the trial counts as a sampled one."""
    value = attrs.get("baseline")
    return value if is_name(value) else None


def confirmed_baseline(
    params: Mapping[str, Any],
    attrs: Mapping[str, Any],
    verdict: StoredVerdict | None,
    planned: Mapping[str, Settings] | None = None,
) -> str | None:
    """A finished trial's baseline name (``baseline_name``) where its ``params`` are the settings ``verdict``
    confirmed under that name, or failing that the settings the run planned under it (the study's
    ``runnable.planned``: a name it does not plan is no baseline, as the run itself reads it); with neither,
    the name as written (a study from before plans were stored).
    For readers without the run's plan (show, report): in a shared study anyone may write a trial with a
    baseline's name and other settings, and the verdict, or before one the plan, is the study's word on what
    that baseline is."""
    name = baseline_name(attrs)
    if name is None:
        return None
    confirmed = verdict.params.get(name) if verdict is not None else None
    if confirmed is None and planned:
        confirmed = planned.get(name)
        if confirmed is None:  # a name the run does not measure as a baseline ("same as" one, or set aside)
            return None
    if confirmed is None:
        return name
    try:
        return name if Settings.from_params(params) == confirmed else None
    except InvalidSettings:
        return None


def trial_measurement(attrs: Mapping[str, Any]) -> Measurement | None:
    """A trial's ``measurement`` attribute, or None where it is absent or malformed: a shared study's trials
    may hold anything, and every reader skips what this cannot read rather than fail on it."""
    data = attrs.get("measurement")
    if not isinstance(data, Mapping):
        return None
    try:
        return Measurement.from_dict(dict(data))
    except (KeyError, TypeError, ValueError, OverflowError):
        return None


def trial_text(attrs: Mapping[str, Any], key: str) -> str | None:
    """A trial's text attribute (``fail_reason``, ``skip_reason``, ...), or None where it is not text."""
    value = attrs.get(key)
    return value if isinstance(value, str) else None


def trial_seconds(attrs: Mapping[str, Any]) -> float | None:
    """A trial's wall time (``trial_seconds``), or None where it is not a finite, non-negative number."""
    value = attrs.get("trial_seconds")
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    try:
        seconds = float(value)
    except OverflowError:  # an integer past float's range
        return None
    return seconds if math.isfinite(seconds) and seconds >= 0 else None


def imported_from(attrs: Mapping[str, Any]) -> str | None:
    """The file an imported study came from (its ``imported`` stamp), as one printable line; None when the
    study was not imported. A study still being imported counts as imported, from an unknown file."""
    stamp = attrs.get("imported")
    if stamp is None:
        return "a file (import not finished)" if attrs.get(IMPORTING) else None
    source = stamp.get("file") if isinstance(stamp, Mapping) else None
    return one_line(PurePath(source).name if isinstance(source, str) and source else "?", 80)


def _names(names: Iterable[Any], where: str) -> None:
    bad = next((name for name in names if not is_name(name)), None)
    if bad is not None:
        raise MalformedRecord(f"{where}: {one_line(repr(bad), 60)} is not a candidate name (a baseline or 'trial N')")


def _speedup_interval(value: Any, where: str, optional: bool = True) -> None:
    """None (where ``optional``), or a speedup with its interval: ``value``, ``low`` and ``high`` numbers."""
    if value is None and optional:
        return
    if not isinstance(value, Mapping):
        raise MalformedRecord(f"{where}: must be an object with value, low and high")
    for key in ("value", "low", "high"):
        _get(value, key, (int, float), where)


def _numbers(value: Any, where: str) -> None:
    """None, or a mapping of names to numbers (rates, intervals, importances)."""
    if value is None:
        return
    if not isinstance(value, Mapping) or not all(
        isinstance(v, (int, float)) and not isinstance(v, bool) for v in value.values()
    ):
        raise MalformedRecord(f"{where}: must map names to numbers")


def check_study(name: str, attrs: Mapping[str, Any]) -> None:
    """Every stored attribute within the limits, and the metadata and verdict (where present) valid."""
    check_shape(dict(attrs), f"study {name[:80]!r}")
    importances = attrs.get("importances")
    if isinstance(importances, Mapping) and "error" in importances:
        _get(importances, "error", str, f"study {name[:80]!r}: importances")
    else:
        _numbers(importances, f"study {name[:80]!r}: importances")
    if "tuner" in attrs:
        StudyMeta.from_dict(attrs["tuner"], f"study {name[:80]!r}: tuner")
    if "verdict" in attrs:
        StoredVerdict.from_dict(attrs["verdict"], f"study {name[:80]!r}: verdict")
    if "confirmation" in attrs:
        StoredConfirmation.from_dict(attrs["confirmation"], f"study {name[:80]!r}: confirmation")
    if "runnable" in attrs:
        StoredRunnable.from_dict(attrs["runnable"], f"study {name[:80]!r}: runnable")
