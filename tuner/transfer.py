"""Export and import: studies and benchmark records moved between storages as one JSON file.

The file holds every tuner study (its attributes: metadata, confirmation, verdict) and the benchmark
study, each with its finished trials (COMPLETE, PRUNED, FAIL; never RUNNING or WAITING) with params,
distributions, values, intermediate values and user attributes. Import validates the whole file before
writing anything, and every study's attributes against the stored schema (``tuner/records.py``): a study
that breaks it is refused with one line and the others are imported. A study that already exists in the
target is left alone and reported, so importing twice changes nothing. The benchmark study is not imported
as a study: only its records (trials) are merged into this machine's, and none of the file's attributes of
that study are written (they could make it read as a verdict of this machine's, or hide it from export).

Import is atomic per study: the study is created marked as importing, its trials are added, then its other
attributes, and last the ones that make it a tuner study with a verdict (``tuner``, ``verdict``) and the
mark cleared; every imported study also gets ``imported`` (the file and the date), so recommendations can
prefer this machine's own verdicts. A Ctrl-C stops between studies (or between batches of a large one);
running the same import again deletes a study left marked as importing and imports it whole.
"""

from __future__ import annotations

import functools
import json
import math
import os
import re
import time
import warnings
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import optuna
from optuna.distributions import distribution_to_json, json_to_distribution
from optuna.trial import TrialState

from tuner import __version__, atomic, interrupt
from tuner.benchmark import BENCH_STUDY
from tuner.errors import TunerError, UsageError
from tuner.records import IMPORTING, MalformedRecord, check_record, check_shape, check_study
from tuner.sanitize import one_line

FORMAT = "tuner-export"
VERSION = 1
FINISHED = (TrialState.COMPLETE, TrialState.PRUNED, TrialState.FAIL)
MAX_BYTES = 512 * 2**20
LAST = ("tuner", "verdict")  # written last: a reader sees the study as a finished tuner study only then
CHUNK = 500  # trials added per batch, with a chance to stop between batches


class ImportRefused(UsageError):
    """A malformed or foreign export file."""


class _NotFinite(ValueError):
    """NaN, Infinity or a number past a float's range in an export file: JSON has none, and export fails on one."""


def _no_constant(text: str) -> Any:
    raise _NotFinite(text)


def _finite(text: str) -> float:
    value = float(text)
    if not math.isfinite(value):  # '1e999' parses to inf
        raise _NotFinite(text[:40])
    return value


def _ours(attrs: dict[str, Any], name: str) -> bool:
    return "tuner" in attrs or name == BENCH_STUDY


def export(storage: optuna.storages.BaseStorage) -> dict[str, Any]:
    studies = []
    for info in storage.get_all_studies():
        records = info.study_name == BENCH_STUDY  # only its trials are data: never imported as a study
        if not _ours(info.user_attrs, info.study_name) or (info.user_attrs.get(IMPORTING) and not records):
            continue  # not tuner's, or half imported: never passed on as if whole
        trials = storage.get_all_trials(info._study_id, deepcopy=False, states=FINISHED)
        if records:  # a benchmark's pending record closed without one (its setting failed) is no record to share
            trials = [t for t in trials if "record" in t.user_attrs]
        studies.append(
            {
                "name": info.study_name,
                "direction": info.direction.name.lower(),
                # The records' study carries no attribute of its own but its mark (one written there by an
                # import before 2026-11-30 is not passed on).
                "user_attrs": {"tuner_benchmarks": 1} if records else info.user_attrs,
                "trials": [
                    {
                        "state": t.state.name,
                        "value": t.value,
                        "params": t.params,
                        "distributions": {k: json.loads(distribution_to_json(d)) for k, d in t.distributions.items()},
                        "intermediate_values": {str(k): v for k, v in t.intermediate_values.items()},
                        "user_attrs": t.user_attrs,
                        "start": t.datetime_start.isoformat() if t.datetime_start else None,
                        "complete": t.datetime_complete.isoformat() if t.datetime_complete else None,
                    }
                    for t in trials
                ],
            }
        )
    return {
        "format": FORMAT,
        "version": VERSION,
        "exported": datetime.now(UTC).isoformat(timespec="seconds"),
        "tool_version": __version__,
        "studies": studies,
    }


# What ``redact`` takes out: process identities (they say nothing about a setting's speed), and the workers'
# stderr tails, which may quote anything (environment, paths, user names).
PROCESS_KEYS = frozenset({"pid", "instance_pids"})
OWNER_KEYS = frozenset({"pid", "pid_ns", "boot_id", "start"})  # of a trial's ``owner``: its process
DROPPED_KEYS = frozenset({"stderr_tail"})
# The directories of an absolute path (or ~/...), wherever a string holds one: '/home/alice/envs/x/python'
# becomes '.../python'. Not after a word character, so ratios ('1/2') and units ('img/s') stay, nor in a URL's
# '//' ('https://example.com/a' keeps its host). A home folder itself ('/home/alice', or the exporting
# user's own wherever it is: ``_home``) becomes '~' first, so that no user name is left as a path's last part.
_DIRECTORIES = re.compile(r"(?<![\w.~-])(?<!:/)~?/(?:[^\s/:;,'\"()\[\]{}<>|]+/)+")
_HOMES = r"(?<![\w.~-])(?:/home|/Users)/[^\s/:;,'\"()\[\]{}<>|]+|(?<![\w.~/-])~[A-Za-z_][\w.-]*(?=/|$)"
_PID_RUN_ID = re.compile(r"^\d+-([0-9a-f]+)$")
# Names that other records refer to (a study's, a candidate's), and the data the file is for (settings,
# signatures, rates): never rewritten, so the file stays whole and its figures as measured.
NAME_KEYS = frozenset({"name", "study", "study_name", "candidate", "label", "baseline", "recommended", "winner"})
KEPT_KEYS = frozenset(
    {"params", "distributions", "cpu", "candidates", "rates", "recommended_params", "settings", "run_id", "signature"}
)
# Free text, where a host name may be quoted and is replaced by its stand-in: not in structured values, where
# a host named like one ('default', 'tensorflow') would change the data.
FREE_TEXT_KEYS = frozenset(
    {"fail_message", "skip_reason", "text", "skipped", "note", "notes", "message", "error", "excluded", "dropped"}
)


@dataclass
class Redacted:
    """What ``redact`` changed, counted for the line export prints."""

    hosts: dict[str, str] = field(default_factory=dict)  # host name -> its stand-in (host-1, host-2, ...)
    process_ids: int = 0  # pids, boot ids, process start times
    paths: int = 0
    stderr_tails: int = 0

    def describe(self) -> str:
        return (
            f"redacted {len(self.hosts)} host names (as host-N), {self.process_ids} process identities, "
            f"{self.paths} paths (directories cut, file names kept), {self.stderr_tails} stderr tails"
        )


def redact(data: dict[str, Any]) -> Redacted:
    """Make an export fit to share, in place: host names become host-1, host-2 ... (the same name the same
    stand-in, so trials of one machine still go together), process identities (pids, boot ids, process
    start times) and worker stderr tails are removed, and every absolute path keeps only its last part,
    in free text too. CPU signatures, settings, measurements, verdicts and dates are kept: they are what
    the file is for. The result still imports (the tests import it)."""
    done = Redacted()
    valid = {study["name"] for study in data["studies"] if _valid(study)}
    _hosts(data, done.hosts)
    names = sorted(done.hosts, key=len, reverse=True)
    known = re.compile(r"\b(?:" + "|".join(re.escape(name) for name in names) + r")\b") if names else None
    data["studies"] = [_redacted(study, done, known) for study in data["studies"]]
    data["redacted"] = True
    for index, study in enumerate(data["studies"]):  # what import checks: a redaction that broke it is a bug
        try:
            _check_study(Path("redacted export"), index, study)
            if study["name"] in valid:  # one malformed already (a shared study's) is refused on import anyway
                check_study(study["name"], study["user_attrs"])
        except (ImportRefused, MalformedRecord) as error:
            raise TunerError(f"redacting broke the export, nothing written: {error}") from None
    return done


def _valid(study: dict[str, Any]) -> bool:
    """Whether import would take ``study``'s attributes (the benchmark study's records are checked apart)."""
    if study.get("name") == BENCH_STUDY:
        return False
    try:
        check_study(study["name"], study["user_attrs"])
    except MalformedRecord:
        return False
    return True


def _hosts(value: Any, found: dict[str, str]) -> None:
    """Give every string under a ``host`` key a stand-in, in order of appearance."""
    if isinstance(value, dict):
        for key, item in value.items():
            if key == "host" and isinstance(item, str) and item and item not in found:
                found[item] = f"host-{len(found) + 1}"
            _hosts(item, found)
    elif isinstance(value, list):
        for item in value:
            _hosts(item, found)


def _redacted(value: Any, done: Redacted, known: re.Pattern[str] | None, key: str = "", free: bool = False) -> Any:
    """``value`` under ``key`` redacted; ``free``: inside free text (host names quoted there are replaced)."""
    if key == "run_id" and isinstance(value, str) and _PID_RUN_ID.match(value):
        done.process_ids += 1  # 'PID-HEX' (benchmark.new_run_id): the hex part alone still names the run
        return _PID_RUN_ID.sub(r"run-\1", value)
    if key in KEPT_KEYS:
        return value
    if isinstance(value, dict):
        kept = {}
        for name, item in value.items():
            if name in PROCESS_KEYS or (key == "owner" and name in OWNER_KEYS):
                done.process_ids += 1
            elif name in DROPPED_KEYS:
                done.stderr_tails += 1
            else:
                kept[name] = _redacted(item, done, known, name, free or key in FREE_TEXT_KEYS)
        return kept
    if isinstance(value, list):
        return [_redacted(item, done, known, key, free) for item in value]
    if not isinstance(value, str):
        return value
    if key == "host" and value in done.hosts:
        return done.hosts[value]
    if key in NAME_KEYS:
        return value
    text, homes = _home(os.path.expanduser("~")).subn("~", value)
    text, cuts = _DIRECTORIES.subn(".../", text)
    done.paths += homes + cuts
    if known is None or not (free or key in FREE_TEXT_KEYS):
        return text
    return known.sub(lambda m: done.hosts[m.group(0)], text)


@functools.cache
def _home(own: str) -> re.Pattern[str]:
    """Home folders as ``redact`` finds them: under /home or /Users, ``~user``, and the exporting user's own
    ``own`` wherever it is (``/srv/alice``), a whole path part, so that its last part (often the user name) goes."""
    extra = own.rstrip("/")
    if extra.count("/") < 1 or not extra.startswith("/") or re.fullmatch(r"/(?:home|Users)/[^/]+", extra):
        return re.compile(_HOMES)  # '/' itself, or a home the general rule already covers
    return re.compile(rf"(?<![\w.~-]){re.escape(extra)}(?![^\s/:;,'\"()\[\]{{}}<>|])|{_HOMES}")


def write(data: dict[str, Any], path: Path) -> None:
    """Write atomically (tuner/atomic.py): a crash leaves the old file or none, never half a file."""
    try:
        atomic.write_text(path, json.dumps(data, indent=1, allow_nan=False))
    except (OSError, ValueError) as error:
        raise TunerError(f"cannot write {path}: {getattr(error, 'strerror', None) or error}") from None


def read(path: Path) -> dict[str, Any]:
    """Load and validate an export file; any fault is one ``ImportRefused`` naming what is wrong."""
    try:
        if path.stat().st_size > MAX_BYTES:
            raise ImportRefused(f"{path}: larger than {MAX_BYTES // 2**20} MiB; not a tuner export")
        data = json.loads(path.read_text(encoding="utf-8"), parse_constant=_no_constant, parse_float=_finite)
    except OSError as error:
        raise ImportRefused(f"cannot read {path}: {error.strerror}") from None
    except _NotFinite as error:
        raise ImportRefused(f"{path}: holds {one_line(error, 40)}, not a finite number; not a tuner export") from None
    except (UnicodeDecodeError, ValueError) as error:  # ValueError: JSONDecodeError, or an integer too long
        raise ImportRefused(f"{path}: not JSON ({one_line(error, 200)})") from None
    except RecursionError:  # nested deeper than the parser goes: no export is (records.MAX_DEPTH)
        raise ImportRefused(f"{path}: nested too deep; not a tuner export") from None
    if not isinstance(data, dict) or data.get("format") != FORMAT:
        raise ImportRefused(f'{path}: not a tuner export (no "format": "{FORMAT}")')
    if data.get("version") != VERSION:
        raise ImportRefused(f"{path}: export version {data.get('version')!r}; this tuner reads version {VERSION}")
    studies = data.get("studies")
    if not isinstance(studies, list):
        raise ImportRefused(f'{path}: "studies" must be a list')
    names = set()
    for index, study in enumerate(studies):
        _check_study(path, index, study)
        if study["name"] in names:
            raise ImportRefused(f"{path}: study {study['name']!r} appears twice")
        names.add(study["name"])
    return data


def _check_study(path: Path, index: int, study: Any) -> None:
    where = f"{path}: studies[{index}]"
    if not isinstance(study, dict):
        raise ImportRefused(f"{where}: must be an object")
    name = study.get("name")
    if not isinstance(name, str) or not name:
        raise ImportRefused(f"{where}.name: must be a non-empty string")
    if len(name) > 512:  # Optuna's column holds 512
        raise ImportRefused(f"{where}.name: {len(name)} characters long; a study name holds at most 512")
    if study.get("direction") not in ("maximize", "minimize"):
        raise ImportRefused(f"{where}.direction: must be maximize or minimize")
    attrs = study.get("user_attrs")
    if not isinstance(attrs, dict) or not _ours(attrs, name):
        raise ImportRefused(f"{where} ({name}): not a tuner study (no tuner metadata)")
    trials = study.get("trials")
    if not isinstance(trials, list):
        raise ImportRefused(f"{where}.trials: must be a list")
    for number, trial in enumerate(trials):
        try:
            _frozen(trial)
        except (KeyError, TypeError, ValueError, AttributeError, OverflowError) as error:
            raise ImportRefused(f"{where}.trials[{number}] ({name}): {one_line(error, 300)}") from None


def _frozen(trial: dict[str, Any]) -> optuna.trial.FrozenTrial:
    """An export trial as Optuna's trial, validated by Optuna itself (params against distributions)."""
    if not isinstance(trial, dict):
        raise TypeError("must be an object")
    state = TrialState[trial["state"]]
    if state not in FINISHED:
        raise ValueError(f"state {trial['state']} is not a finished state")
    value = trial.get("value")
    if state == TrialState.COMPLETE and not _a_number(value):
        raise ValueError("a COMPLETE trial needs a finite numeric value")
    steps = trial.get("intermediate_values", {})
    if not isinstance(steps, dict) or not all(_a_number(v) for v in steps.values()):
        raise ValueError("intermediate_values must map steps to finite numbers")
    with warnings.catch_warnings():  # Optuna warns (several lines) of choices that are no JSON primitives
        warnings.simplefilter("error")
        try:
            distributions = {k: json_to_distribution(json.dumps(v)) for k, v in dict(trial["distributions"]).items()}
        except Warning as warning:
            raise ValueError(f"distributions: {warning}") from None
    params = dict(trial["params"])
    if not isinstance(trial.get("user_attrs", {}), dict):
        raise TypeError("user_attrs must be an object")
    try:
        check_shape(trial.get("user_attrs", {}), "user_attrs")
    except MalformedRecord as error:
        raise ValueError(str(error)) from None
    stamp = {k: datetime.fromisoformat(trial[k]) if trial.get(k) else None for k in ("start", "complete")}
    created = optuna.trial.create_trial(
        state=state,
        value=float(value) if state == TrialState.COMPLETE and isinstance(value, (int, float)) else None,
        params=params,
        distributions=distributions,
        user_attrs=dict(trial.get("user_attrs", {})),
        intermediate_values={int(k): float(v) for k, v in dict(trial.get("intermediate_values", {})).items()},
    )
    return _with_times(created, stamp["start"], stamp["complete"])


def _a_number(value: Any) -> bool:
    """A finite JSON number: not a bool, not a string Python's float() would read ("nan", "inf")."""
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def _with_times(
    trial: optuna.trial.FrozenTrial, start: datetime | None, complete: datetime | None
) -> optuna.trial.FrozenTrial:
    trial.datetime_start = start or trial.datetime_start
    trial.datetime_complete = complete or trial.datetime_complete
    return trial


@dataclass
class Imported:
    """What ``import_into`` did. It unpacks as (imported, kept, refused), the lists of study names (refused:
    one line each); ``records`` counts the benchmark records merged into this machine's benchmark study."""

    imported: list[str] = field(default_factory=list)  # studies created (the benchmark study: records merged)
    kept: list[str] = field(default_factory=list)  # studies that exist in the target, left as they are
    refused: list[str] = field(default_factory=list)
    records: int = 0

    def __iter__(self) -> Iterator[list[str]]:
        return iter((self.imported, self.kept, self.refused))


PROGRESS_S = 10.0  # a long import says how far it is, at most this often


def import_into(
    storage: optuna.storages.BaseStorage,
    data: dict[str, Any],
    source: str = "",
    log: Callable[[str], None] = lambda line: None,
    clock: Callable[[], float] = time.monotonic,
) -> Imported:
    """Create the studies the target lacks, each atomically, and merge the benchmark records it lacks; return
    what was done (``Imported``). ``source`` (the file) is recorded on every imported study. A large file
    says how far it is on ``log``, at most every ``PROGRESS_S``."""
    studies = storage.get_all_studies()
    existing = {s.study_name: s.user_attrs for s in studies}
    # A study with no attribute and no trial is an import killed between its creation and its mark (SIGKILL,
    # a power cut): nothing in it to keep, and kept it would block this study's import for good.
    empty = {s.study_name for s in studies if not s.user_attrs and not storage.get_n_trials(s._study_id)}
    done = Imported()
    imported, kept, refused = done.imported, done.kept, done.refused
    stamp = {"file": one_line(source, 200), "at": datetime.now(UTC).isoformat(timespec="seconds")}
    said = clock()
    for index, study in enumerate(data["studies"]):
        interrupt.checkpoint()  # a Ctrl-C stops here, between studies
        if clock() - said >= PROGRESS_S:
            said = clock()
            log(f"import: study {index + 1}/{len(data['studies'])}, {len(imported)} imported so far")
        name = study["name"]
        if name == BENCH_STUDY:  # this machine's records stay; the file's are added where missing
            done.records = _merge_records(storage, study, name in existing, refused, stamp)
            if done.records:
                imported.append(name)
            elif name in existing:  # nothing written: it is left exactly as it was
                kept.append(name)
            continue
        if name in existing and not existing[name].get(IMPORTING) and name not in empty:
            kept.append(name)
            continue
        try:
            check_study(name, study["user_attrs"])
        except MalformedRecord as error:
            refused.append(one_line(error, 300))
            continue
        if name in existing:  # an import of it was cut short (marked, or killed before the mark): redo it whole
            optuna.delete_study(study_name=name, storage=storage)
        _import_study(storage, study, stamp)
        imported.append(name)
    return done


def _record_key(trial: optuna.trial.FrozenTrial) -> str:
    record = trial.user_attrs.get("record", {})
    keys = ("kind", "run_id", "label", "runtime", "device", "cores", "gpus", "mode", "model", "measured")
    return json.dumps([record.get(key) for key in keys] if isinstance(record, dict) else None, default=str)


def _merge_records(
    storage: optuna.storages.BaseStorage,
    study: dict[str, Any],
    exists: bool,
    refused: list[str],
    stamp: dict[str, str],
) -> int:
    """Add the export's benchmark records that the target lacks (by kind, run, label, target and date);
    each record is one trial, added whole, and says where it came from (``stamp``, the file and the time,
    as ``imported``: the table names it, and the main job never takes it for a benchmark of its own).
    Returns how many were added. The file's attributes of the study are never written: only its records
    are data; its attributes could be anything (a ``tuner`` and ``verdict`` that make it read as this
    machine's own verdict, an importing mark that hides it from export). The study is created (with what
    ``tuner.benchmark`` stores on it) only where there is a record to add. A record its readers would skip
    as malformed (``check_record``) is not added: one line in ``refused``."""
    trials = []
    for index, trial in enumerate(_frozen(t) for t in study["trials"]):  # their shape checked when read
        try:  # named by its place in the file: an unsaved trial's number is -1 for every one
            check_record(trial.user_attrs.get("record"), f"{BENCH_STUDY} trials[{index}] record")
        except MalformedRecord as error:
            refused.append(one_line(error, 300))
            continue
        # Whatever the file said of its origin, this import is where it came from here.
        trial.user_attrs["record"] = {**trial.user_attrs["record"], "imported": stamp}
        trials.append(trial)
    have = set()
    if exists:
        stored = optuna.load_study(study_name=BENCH_STUDY, storage=storage).get_trials(deepcopy=False)
        have = {_record_key(t) for t in stored}
    new = []
    for trial in trials:  # each record once, though the file held it twice
        key = _record_key(trial)
        if key not in have:
            have.add(key)
            new.append(trial)
    if not new:
        return 0
    target = optuna.create_study(storage=storage, study_name=BENCH_STUDY, direction="maximize", load_if_exists=True)
    if "tuner_benchmarks" not in target.user_attrs:  # as tuner.benchmark marks the study it creates
        target.set_user_attr("tuner_benchmarks", 1)
    for start in range(0, len(new), CHUNK):
        interrupt.checkpoint()
        target.add_trials(new[start : start + CHUNK])
    return len(new)


def _import_study(storage: optuna.storages.BaseStorage, study: dict[str, Any], stamp: dict[str, str]) -> None:
    created = optuna.create_study(storage=storage, study_name=study["name"], direction=study["direction"])
    created.set_user_attr(IMPORTING, True)
    trials = [_frozen(trial) for trial in study["trials"]]
    for start in range(0, len(trials), CHUNK):
        interrupt.checkpoint()  # a large study stops between batches; it stays marked and is redone next time
        created.add_trials(trials[start : start + CHUNK])
    attrs = study["user_attrs"]
    for key, value in attrs.items():
        if key not in LAST and key != IMPORTING:
            created.set_user_attr(key, value)
    created.set_user_attr("imported", stamp)
    for key in LAST:
        if key in attrs:
            created.set_user_attr(key, attrs[key])
    created.set_user_attr(IMPORTING, False)
