"""Opening a study for a run, new or resumed, before its search: one place for what a resume must check.

A stored study is resumed only where its trials compare with this run's: the same search space (by hash),
the same core set and the same measurement policy; else the run is refused with one line. What can run on
this CPU (the probe's read-back: knob values taken out, baselines set aside) is stored on the study and said
once; a CPU quota or a topology note is said on every run. Trials left RUNNING by a dead process are failed,
then every baseline that can run here and is not measured, queued or running yet is queued, so baselines
are measured first. ``baselines_done`` tells the search when its budget may end it.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import TYPE_CHECKING, Any

import optuna
from optuna.distributions import BaseDistribution, CategoricalDistribution
from optuna.trial import FrozenTrial, TrialState

from tuner.capability import BaselinePlan, Capabilities
from tuner.errors import (
    InvalidSettings,
    TunerError,
    WorkerBadOutput,
    WorkerCrashed,
    WorkerExited,
    WorkerOutOfMemory,
    WorkerTimeout,
)
from tuner.owner import fail_orphans
from tuner.records import StoredRunnable, baseline_name, imported_from, trial_text
from tuner.sanitize import one_line
from tuner.settings import Settings
from tuner.topology import cpu_quota, quota_warning
from tuner.topology import notes as topology_notes

if TYPE_CHECKING:
    from tuner.study import StudyConfig

Progress = Callable[[str], None]
# A trial whose worker failed this way is "done" (its setting known to fail); an interrupted or orphaned one is not.
WORKER_FAILURES = {e.reason for e in (WorkerCrashed, WorkerExited, WorkerTimeout, WorkerBadOutput, WorkerOutOfMemory)}
# Done for the budget, though not known to fail: disturbed in every attempt (tuner/disturbance.py). It has no
# value to rank, and a resumed study queues it again.
DONE_FAILURES = WORKER_FAILURES | {"disturbed"}
COMPARED = ("core_set", "policy")  # besides the space: what a resumed study's trials must share with this run


def open_study(
    study: optuna.Study,
    config: StudyConfig,
    caps: Capabilities,
    baselines: BaselinePlan,
    excluded: list[str],
    progress: Progress,
    space: Mapping[str, BaseDistribution] | None = None,
) -> None:
    """Make ``study`` ready to search: its metadata stored (new) or checked (resumed, and its knobs' choices
    against ``space``, the space as narrowed here), what can run here stored and said, warnings said,
    orphaned trials failed and the missing baselines queued."""
    meta = config.metadata()
    source = imported_from(study.user_attrs)
    if source is not None:
        raise TunerError(
            f"study {config.name} was imported (from {source}): its trials and verdict were measured elsewhere, "
            "and tuning it here would mix them with this machine's; tune into another --storage"
        )
    if "tuner" not in study.user_attrs:
        study.set_user_attr("tuner", meta)
    else:
        check_comparable(config.name, study.user_attrs["tuner"], meta)
        check_choices(config.name, study, space or {}, excluded)
    runnable = StoredRunnable(tuple(excluded), baselines.notes, caps.to_dict(), baselines.runnable)
    store_runnable(study, runnable, progress)
    warn_limits(config.cores, progress)
    fail_orphans(study, progress)
    queue_baselines(study, baselines.runnable)


def check_comparable(name: str, stored: Any, meta: Mapping[str, Any]) -> None:
    """Raise ``TunerError`` unless the stored metadata ``stored`` (the study's ``tuner`` attribute) was made
    with the search space, core set and policy of ``meta`` (this run's): other trials would not compare."""
    if not isinstance(stored, Mapping):
        raise TunerError(f"study {name}: its stored metadata is not an object; use a new --storage")
    if stored.get("space_hash") != meta["space_hash"]:
        raise TunerError(
            f"study {name} was made with another version of search space "
            f"{meta['space']} (hash {one_line(stored.get('space_hash'), 20)}, now {meta['space_hash']}); "
            "use a new --storage or restore the space file"
        )
    was, now = _framework_version(stored), _framework_version(meta)
    if was is not None and now is not None and was != now:
        # The framework as the probe read it back (a rebuilt environment, an upgraded package, or a shared
        # study's worker on another machine): the same settings run other code.
        raise TunerError(
            f"study {name} was measured with framework version {one_line(was, 40)}, and this run has {now}: "
            "its trials would not be comparable; use a new --storage (or the framework it was measured with)"
        )
    for key in COMPARED:
        if stored.get(key) != meta[key]:
            raise TunerError(
                f"study {name} was measured with {key} {one_line(stored.get(key), 80)}, not "
                f"{meta[key]}: its trials would not be comparable; use a new --storage"
            )


def check_choices(
    name: str, study: optuna.Study, space: Mapping[str, BaseDistribution], excluded: Sequence[str]
) -> None:
    """Raise ``TunerError`` where the study searched a knob over other choices than ``space`` (this run's, as
    narrowed here) holds: other --allow-precision or --allow-inert, an allocator installed or removed since,
    or a rule of a newer tuner. Optuna searches a knob over one set of choices in a study (the first stored
    trial's), and would stop at this run's first trial with an error of its own."""
    seen: set[str] = set()
    for trial in study.get_trials(deepcopy=False):
        for knob, stored in trial.distributions.items():
            now = space.get(knob)
            if knob in seen or now is None:
                continue
            seen.add(knob)  # Optuna compares with the first trial that has the knob, so this does too
            try:
                optuna.distributions.check_distribution_compatibility(stored, now)
            except ValueError:
                why = next((f" ({line})" for line in excluded if line.startswith(f"{knob}=")), "")
                raise TunerError(
                    f"study {name} searched {one_line(knob, 40)} over {_choices(stored)}, and this run can search "
                    f"{_choices(now)}{why}: resume it with the options it was made with (--allow-precision, "
                    "--allow-inert, the same allocators installed), or use a new --storage"
                ) from None


def _choices(dist: BaseDistribution) -> str:
    if isinstance(dist, CategoricalDistribution):
        return one_line(", ".join(map(str, dist.choices)), 120)
    return one_line(dist, 120)


def _framework_version(meta: Mapping[str, Any]) -> str | None:
    """The framework version the study's probe read back, where it has one."""
    probe = meta.get("probe")
    version = probe.get("framework_version") if isinstance(probe, Mapping) else None
    return version if isinstance(version, str) and version else None


def store_runnable(study: optuna.Study, runnable: StoredRunnable, progress: Progress) -> None:
    """Store what can run here on the study and say each exclusion and baseline note, only when it changed
    (a resumed study on the same CPU says nothing again)."""
    record = runnable.to_dict()
    stored = study.user_attrs.get("runnable")
    if stored == record:
        return
    study.set_user_attr("runnable", record)
    if isinstance(stored, Mapping) and {**stored, "planned": None} == {**record, "planned": None}:
        return  # only the plan's record is new (a study stored before plans were): nothing new to say
    for line in [*runnable.excluded, *(f"baseline {name}: {note}" for name, note in runnable.baselines.items())]:
        progress(line)


def warn_limits(cores: tuple[int, ...], progress: Progress) -> None:
    """Say what may slow the measurements on these cores: a CPU quota below them, topology notes."""
    for warning in [quota_warning(len(cores), cpu_quota()), *topology_notes(cores)]:
        if warning:
            progress(f"warning: {warning}")


def not_the_baseline(trial: FrozenTrial, runnable: Mapping[str, Mapping[str, Any]]) -> str | None:
    """Why ``trial``, which claims to be a baseline, is not that baseline here, or None (it is, or it claims
    none). In a shared study anyone may write a trial named ``tf-default`` with settings of their own; taken
    at its name it would be confirmed as tf-default, and every ratio of the verdict would be to it. So a
    baseline is its name and its settings: a name this run measures as a baseline, and the settings it was
    queued with (waiting or running) or measured with (finished) equal to that baseline's here, as
    ``Settings`` (a knob the space lacks is at its default either way)."""
    name = baseline_name(trial.user_attrs)
    if name is None:
        return None
    planned = runnable.get(name)
    if planned is None:
        return f"it is named baseline {name}, which is not measured as a baseline here"
    params: Any = trial.params
    # What it will run (or would have: taken out of the queue before it ran, as ``requeued``) is what it was
    # queued with.
    if trial.state in (TrialState.WAITING, TrialState.RUNNING) or (trial.state == TrialState.FAIL and not params):
        params = trial.system_attrs.get("fixed_params")
        if not isinstance(params, Mapping):
            return f"it is named baseline {name} but was queued with no settings"
    try:
        same = Settings.from_params(params) == Settings.from_params(planned)
    except InvalidSettings:
        same = False
    return None if same else f"it is named baseline {name} but its settings are not {name}'s here"


REQUEUED = "requeued"  # a waiting baseline taken out of the queue and queued again behind one before it


def queue_baselines(study: optuna.Study, runnable: Mapping[str, Mapping[str, Any]]) -> None:
    """Queue each baseline that has no complete, queued or running trial of its own settings yet, in the
    plan's order: measured first. Optuna runs waiting trials by number, so a baseline queued again (its trial
    interrupted, or orphaned by a dead process) would run after those still waiting from the first start, and
    with ``--trials`` at or below the baselines' count a different set of them would be measured. Those
    behind it in the plan are taken out of the queue (failed as ``requeued``, which no sampler learns from and
    no budget counts) and queued again after it."""
    trials = study.get_trials(deepcopy=False)
    held = {
        baseline_name(t.user_attrs): t
        for t in trials
        if t.state in (TrialState.COMPLETE, TrialState.WAITING, TrialState.RUNNING)
        and not not_the_baseline(t, runnable)
    }
    order = list(runnable)
    missing = [name for name in order if name not in held]
    if not missing:
        return
    first = order.index(missing[0])
    behind = [name for name in order[first + 1 :] if name in held and held[name].state == TrialState.WAITING]
    storage = study._storage
    for name in behind:
        trial_id = held[name]._trial_id
        # Claimed as any worker claims a waiting trial: where another took it first (to measure it, or to
        # requeue it as this worker would), it is left to that worker.
        try:
            if not storage.set_trial_state_values(trial_id, TrialState.RUNNING):
                continue
        except optuna.exceptions.UpdateFinishedTrialError:
            continue
        # No owner: killed right here, it is failed as an orphan by any host after ORPHAN_AGE_S (an owner would
        # leave that to this host alone, and the trial never had Optuna's heartbeat).
        storage.set_trial_user_attr(trial_id, "fail_reason", REQUEUED)
        storage.set_trial_user_attr(
            trial_id, "fail_message", f"queued again behind baseline {missing[0]}, which was queued again first"
        )
        storage.set_trial_state_values(trial_id, TrialState.FAIL)
        missing.append(name)
    for name in order:
        if name in missing:
            study.enqueue_trial(dict(runnable[name]), user_attrs={"baseline": name}, skip_if_exists=False)


def baselines_done(study: optuna.Study, runnable: Mapping[str, Mapping[str, Any]]) -> bool:
    """Every baseline in ``runnable`` has a finished trial, complete, failed by its worker, or disturbed in
    every attempt: the budget may end the search only after that, and a failing baseline never holds it up."""
    return not baselines_pending(study, runnable)


def baselines_pending(study: optuna.Study, runnable: Mapping[str, Mapping[str, Any]]) -> list[str]:
    """The baselines in ``runnable`` (in their order) that ``baselines_done`` still waits for; a trial with a
    baseline's name and other settings (``not_the_baseline``) counts for none."""
    trials = [t for t in study.get_trials(deepcopy=False) if not not_the_baseline(t, runnable)]
    pending = {baseline_name(t.user_attrs) for t in trials if t.state in (TrialState.WAITING, TrialState.RUNNING)}
    done = {
        baseline_name(t.user_attrs)
        for t in trials
        if t.state == TrialState.COMPLETE
        or (t.state == TrialState.FAIL and trial_text(t.user_attrs, "fail_reason") in DONE_FAILURES)
    }
    # An interrupted or orphaned baseline is not done: it is queued again and measured first.
    return [name for name in runnable if name not in done - pending]
