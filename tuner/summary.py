"""What was found, read from storage without measuring: one summary per study, as a table or JSON.

The headline images/sec of every setting is tf_cnn_benchmarks' figure, as the benchmark table prints it:
timed batches x batch size / wall time of the timed loop (``Measurement.loop_images_per_sec``), pooled over
the confirmation rounds (sum of images over sum of loop times). The verdict itself ranks and compares by the
objective's statistic of per-step rates (the median, for throughput); its speedup column says so.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from typing import Any, TypedDict

import optuna
from optuna.trial import FrozenTrial, TrialState

from tuner.capability import NOT_RUNNABLE
from tuner.confirm import DEFAULT, HEURISTIC
from tuner.disturbance import describe_study, study_figures
from tuner.errors import InvalidSettings
from tuner.layout import columns, wrap
from tuner.measurement import Measurement, pooled_loop_rate
from tuner.objective import OBJECTIVES
from tuner.records import (
    EXTRA_KNOBS,
    MalformedRecord,
    StoredConfirmation,
    StoredRunnable,
    StoredVerdict,
    StudyMeta,
    confirmed_baseline,
    trial_measurement,
    tuner_studies,
)
from tuner.sanitize import one_line
from tuner.settings import Settings
from tuner.study import unusable
from tuner.topology import cores_text

Params = dict[str, object]  # a setting's knobs, as Optuna stores a trial's params
Importances = Mapping[str, float | str]  # knob -> share of the variance, or {"error": why not computed}


class CpuName(TypedDict):
    model_name: str | None
    id: str | None


class TrialCounts(TypedDict):
    complete: int
    fail: int
    pruned: int
    running: int
    waiting: int


class BestTrial(TypedDict):
    number: int
    images_per_sec: float | None  # the trial's value: the objective's statistic (median per-step img/s)
    loop_images_per_sec: float | None  # timed batches x batch / the timed loop's wall time
    params: Params


class VerdictSummary(TypedDict):
    """The stored verdict's fields that show prints."""

    winner: str | None
    recommended: str
    recommended_params: Params
    clear: bool
    text: str
    images_per_sec: dict[str, float]  # median of the pooled per-step rates of each candidate
    # Timed-loop images/sec of each candidate over the confirmation rounds (None: those runs are not stored).
    loop_images_per_sec: dict[str, float] | None
    speedup_vs_tf_default: dict[str, float] | None
    speedup_vs_heuristic: dict[str, float] | None
    rounds: int | None
    measured: str | None
    score: dict[str, float]  # the objective's statistic of each candidate (higher is better)
    latency_ms: dict[str, dict[str, float | None]]  # p50 and p99 request times of each candidate
    dropped: dict[str, str]  # candidates whose confirmation run failed, with why (left out of the verdict)


class StudySummary(TypedDict):
    """One study as ``tuner show`` prints it; ``tuner show --json`` prints these, key for key."""

    name: str
    model: str
    mode: str
    batch_size: int
    objective: str  # throughput, latency (p50) or p99: what the study optimised
    runtime: str
    cores: int
    cpu: CpuName
    framework_version: str | None
    trials: TrialCounts
    best_trial: BestTrial | None
    search_baselines: dict[str, float | None]  # baseline -> its search trial's value (the objective's statistic)
    search_loop_images_per_sec: dict[str, float | None]  # baseline -> its search trial's timed-loop images/sec
    importances: Importances | None
    inert_knobs: list[str]
    searched_extra: list[str]  # knobs searched beside the runtime's: batch (--search-batch), onednn_isa (--search-isa)
    baseline_notes: dict[str, str]  # what the probe's read-back ruled out on this CPU (tuner/capability.py)
    excluded: list[str]
    probe: dict[str, object]
    verdict: VerdictSummary | None
    disturbance: dict[str, Any]  # tuner/disturbance.py study_figures: trials measured again, never ranked, shares


def _interval(value: Mapping[str, float] | None) -> dict[str, float] | None:
    return None if value is None else dict(value)


def _trial_loop_rate(trial: optuna.trial.FrozenTrial) -> float | None:
    measured = trial_measurement(trial.user_attrs)
    # A trial stored before its raw steps were kept, or without them (or a shared study's malformed one):
    # no figure, not a guess.
    return None if measured is None else measured.loop_images_per_sec


def confirmed_loop_rates(verdict: StoredVerdict, confirmation: StoredConfirmation) -> dict[str, float] | None:
    """Timed-loop images/sec of each candidate over the confirmation runs the verdict was decided on; None
    where the stored runs are not exactly those (a later confirmation cut short, or none stored). A candidate
    dropped after some good runs has them stored, but the verdict was decided without it: they are left out."""
    kept = {name: runs for name, runs in confirmation.rates.items() if name not in verdict.dropped}
    if not confirmation.runs or kept != verdict.raw.get("rates"):
        return None
    runs: dict[str, list[Measurement]] = {}
    for run in confirmation.runs:
        if run.candidate not in verdict.dropped:
            runs.setdefault(run.candidate, []).append(run.measurement)
    return {name: pooled_loop_rate(measured) for name, measured in runs.items()}


def summarize_verdict(verdict: StoredVerdict, confirmation: StoredConfirmation | None = None) -> VerdictSummary:
    """The verdict as show prints it, from the checked record (and the confirmation runs behind it)."""
    return VerdictSummary(
        winner=verdict.winner,
        recommended=verdict.recommended,
        recommended_params=dict(verdict.recommended_params),
        clear=verdict.clear,
        text=verdict.text,
        images_per_sec=dict(verdict.images_per_sec),
        loop_images_per_sec=None if confirmation is None else confirmed_loop_rates(verdict, confirmation),
        speedup_vs_tf_default=_interval(verdict.speedup),
        speedup_vs_heuristic=_interval(verdict.vs_heuristic),
        rounds=verdict.rounds,
        measured=verdict.measured,
        score=dict(verdict.score),
        latency_ms={name: dict(v) for name, v in verdict.latency_ms.items()},
        dropped=dict(verdict.dropped),
    )


def _search_baselines(
    complete: Sequence[FrozenTrial], verdict: StoredVerdict | None, planned: Mapping[str, Settings]
) -> dict[str, FrozenTrial]:
    """Each baseline's search trial as show reports it: the first complete trial of its name (a run queues its
    baselines before anything else) whose settings the verdict confirmed, or the run planned, under it
    (``confirmed_baseline``)."""
    found: dict[str, FrozenTrial] = {}
    for t in complete:
        name = confirmed_baseline(t.params, t.user_attrs, verdict, planned)
        if name is not None and name not in found:
            found[name] = t
    return found


def summarize_study(study: optuna.Study) -> StudySummary:
    """One study as show prints it (and its --json), from the study's checked metadata and verdict."""
    attrs = study.user_attrs
    where = f"study {study.study_name}"
    meta = StudyMeta.from_dict(attrs.get("tuner"), f"{where}: tuner")
    runnable = StoredRunnable.from_dict(attrs.get("runnable"), f"{where}: runnable")
    verdict = None if "verdict" not in attrs else StoredVerdict.from_dict(attrs["verdict"], f"{where}: verdict")
    try:
        confirmation = StoredConfirmation.from_dict(attrs.get("confirmation"), f"{where}: confirmation")
    except MalformedRecord:
        confirmation = StoredConfirmation()  # checked by tuner_studies; a study loaded alone shows no loop rates
    trials = study.get_trials(deepcopy=False)
    counts = Counter(t.state.name.lower() for t in trials)
    # A shared study's trial may hold any value: one that is no finite number is never ranked or shown.
    complete = [t for t in trials if t.state == TrialState.COMPLETE and unusable(t) is None]
    best = max(complete, key=lambda t: t.value or 0.0, default=None)
    measured = [m for t in complete if (m := trial_measurement(t.user_attrs)) is not None]
    framework = next((m.facts.get("framework_version") for m in measured if m.facts.get("framework_version")), None)
    searched = _search_baselines(complete, verdict, runnable.planned)
    return StudySummary(
        name=study.study_name,
        model=meta.model,
        mode=meta.mode,
        batch_size=meta.batch_size,
        objective=meta.objective,
        runtime=meta.runtime,
        cores=meta.cores,
        cpu=CpuName(model_name=meta.cpu.get("model_name"), id=meta.cpu.get("id")),
        framework_version=framework,
        trials=TrialCounts(
            complete=counts["complete"],
            fail=counts["fail"],
            pruned=counts["pruned"],
            running=counts["running"],
            waiting=counts["waiting"],
        ),
        best_trial=None
        if best is None
        else BestTrial(
            number=best.number,
            images_per_sec=best.value,
            loop_images_per_sec=_trial_loop_rate(best),
            params=dict(best.params),
        ),
        search_baselines={name: t.value for name, t in searched.items()},
        search_loop_images_per_sec={name: _trial_loop_rate(t) for name, t in searched.items()},
        importances=attrs.get("importances"),  # checked by tuner_studies: numbers, or {"error": text}
        inert_knobs=list(meta.inert_knobs),
        searched_extra=meta.extra_knobs,
        baseline_notes=dict(runnable.baselines),
        excluded=list(runnable.excluded),
        probe=dict(meta.probe),
        verdict=None if verdict is None else summarize_verdict(verdict, confirmation),
        disturbance=study_figures(trials),
    )


def summarize(
    storage: optuna.storages.BaseStorage, warn: Callable[[str], None] = lambda line: None
) -> list[StudySummary]:
    """One summary per tuner study; a study whose stored attributes break the schema is ``warn``ed about."""
    rows = []
    for info in tuner_studies(storage, warn):
        rows.append(summarize_study(optuna.load_study(study_name=info.study_name, storage=storage)))
    return sorted(rows, key=lambda r: (r["model"] or "", r["runtime"] or "", r["mode"] or "", r["cores"] or 0))


def _rate(value: float | None) -> str:
    return "-" if value is None else f"{value:.2f}"


def _as_objective(s: StudySummary, values: Mapping[str, float | None]) -> dict[str, float | None]:
    """Values of the study's statistic (higher is better) as its table shows them: images/sec for throughput,
    milliseconds per request (batch / rate) for the latency objectives; a rate that is not positive (only a
    forged study stores one) has no such time and shows as '-'."""
    if not OBJECTIVES[s["objective"]].latency:
        return dict(values)
    return {
        name: 1000.0 * s["batch_size"] / rate if rate is not None and rate > 0 else None
        for name, rate in values.items()
    }


def _speedup(interval: Mapping[str, float] | None) -> str:
    if not interval:
        return "-"
    return f"{interval['value']:.2f}x [{interval['low']:.2f}, {interval['high']:.2f}]"


def figures(s: StudySummary) -> tuple[dict[str, float | None], str, bool]:
    """What a study's row shows for each candidate, the name of its best one, and whether those are the
    headline figures: timed-loop images/sec for throughput (request times in ms for a latency objective), of
    the confirmation rounds, or of the search trials where nothing was confirmed. False where a verdict's
    confirmation runs are not stored: its pooled per-step medians stand in, and the table marks them."""
    v, best = s["verdict"], s["best_trial"]
    if v is None:
        if OBJECTIVES[s["objective"]].latency:
            searched = {**s["search_baselines"], "best": None if best is None else best["images_per_sec"]}
            return _as_objective(s, searched), "best", True
        best_rate = None if best is None else best["loop_images_per_sec"]
        return {**s["search_loop_images_per_sec"], "best": best_rate}, "best", True
    if OBJECTIVES[s["objective"]].latency:
        return _as_objective(s, v["score"] or v["images_per_sec"]), v["winner"] or "", True
    if v["loop_images_per_sec"] is not None:
        return dict(v["loop_images_per_sec"]), v["winner"] or "", True
    return dict(v["images_per_sec"]), v["winner"] or "", False


def verdict_word(s: StudySummary) -> tuple[str, str | None]:
    """The verdict in a word or two, and its tone: a clear win (good), tf-default kept or nothing confirmed
    yet (warn), every trial failed (bad)."""
    v = s["verdict"]
    if v is None:
        if s["trials"]["complete"] == 0 and s["trials"]["fail"]:
            return "failed", "bad"
        return "unconfirmed", "warn"
    if v["clear"]:
        return "clear win", "good"
    return ("default best" if v["winner"] == DEFAULT else "not clear"), "warn"


def _cells(s: StudySummary, wide: bool) -> list[str]:
    """tf-default, heuristic, other baselines and best figures; a baseline that cannot run here says so (in
    full where ``wide``), and a figure that is not the headline statistic is marked ``*``."""
    values, best, headline = figures(s)
    mark = "" if headline else "*"

    def cell(name: str) -> str:
        return _rate(values.get(name)) + (mark if values.get(name) is not None else "")

    heuristic = cell(HEURISTIC)
    if HEURISTIC not in values and s["baseline_notes"].get(HEURISTIC, "").startswith(NOT_RUNNABLE):
        heuristic = NOT_RUNNABLE if wide else "not runnable"
    # Every other baseline, confirmed or searched, whether or not its search trial ranked (one disturbed in the
    # search is confirmed from its plan): the names that are not sampled trials nor tf-default and heuristic.
    rest = [
        f"{name} {cell(name)}"
        for name in values
        if not name.startswith("trial ") and name not in (DEFAULT, HEURISTIC, "best")
    ]
    return [cell(DEFAULT), heuristic, ", ".join(rest) or "-", cell(best)]


def _mode(s: StudySummary) -> str:
    """'infer'; 'infer, p50 ms' where the figures are request times; the batch where it is not the
    objective's own (32 for throughput, 1 for latency); the knobs searched beside the runtime's own."""
    goal = OBJECTIVES[s["objective"]]
    batch = [f"batch {s['batch_size']}"] if s["batch_size"] != goal.default_batch else []
    extra = [EXTRA_KNOBS[knob] for knob in s["searched_extra"]]
    return ", ".join([s["mode"], *([goal.unit()] if goal.latency else []), *batch, *extra])


def _settings(params: Params) -> str:
    try:
        return Settings.from_params(params).label()
    except InvalidSettings:
        return ";".join(f"{k}={v}" for k, v in params.items())


SPEEDUP = "speedup (median)"  # the verdict's statistic, not the figures': its header says so
HEADER = ["model", "runtime", "mode", "cores", "tf-default", "heuristic", "best", SPEEDUP, "verdict"]
WIDE_HEADER = [
    "model", "runtime", "mode", "cores", "trials", "tf-default", "heuristic", "other baselines", "best",
    "best/tf-default (median step, 95% CI)", "best/heuristic (median step, 95% CI)", "recommended settings",
    "verdict",
]  # fmt: skip
LEGEND = (
    "Figures: images/sec = timed batches x batch size / wall time of the timed loop (tf_cnn_benchmarks), pooled "
    "over the confirmation rounds, or of the search trials where not confirmed; a latency objective's are "
    "request times in ms. speedup (median): of the best over tf-default by the verdict's statistic, the ratio of "
    "pooled per-step medians (throughput and p50), with its 95% bootstrap interval. The verdict: a clear win, "
    "not clear or default best (tf-default is kept), unconfirmed (search only), failed (no trial completed)."
)
UNMARKED = "*: median of per-step images/sec (the confirmation runs behind this verdict are not stored)."


def table_rows(summaries: Sequence[StudySummary], wide: bool = False) -> list[list[str]]:
    """The header and one row per study: the essential columns, or with ``wide`` every column."""
    rows = [WIDE_HEADER if wide else HEADER]
    for s in summaries:
        v = s["verdict"]
        head = [s["model"], s["runtime"], _mode(s), str(s["cores"])]
        tf_default, heuristic, others, best = _cells(s, wide)
        speedup = _speedup(v["speedup_vs_tf_default"]) if v else "-"
        if not wide:
            rows.append([*head, tf_default, heuristic, best, speedup, verdict_word(s)[0]])
            continue
        d = s["disturbance"]
        marked = d["remeasured"] + d["not_ranked"]
        head.append(f"{s['trials']['complete']}+{s['trials']['fail']}F" + (f" ({marked}d)" if marked else ""))
        if v is None:  # searched but not confirmed: the search's own figures, and it says so
            rows.append(
                [*head, tf_default, heuristic, others, best, "-", "-", "-", "not confirmed yet (search values)"]
            )
        else:
            rows.append([*head, tf_default, heuristic, others, best, speedup, _speedup(v["speedup_vs_heuristic"]),
                         _settings(v["recommended_params"] or {}), v["text"]])  # fmt: skip
    return rows


def _recommended_lines(summaries: Sequence[StudySummary]) -> list[str]:
    """Each study's recommended settings and verdict in full, wrapped: what the narrow table leaves out."""
    lines = ["", "Recommended (each study's verdict; --wide puts it in the table):"]
    for s in summaries:
        v, best = s["verdict"], s["best_trial"]
        key = f"{s['model']} {s['runtime']} {_mode(s)}, {cores_text(s['cores'])}"
        if v is not None:
            lines += wrap(one_line(f"{key}: {v['recommended']}: {_settings(v['recommended_params'] or {})}", 1000),
                          indent="  ", more="      ")  # fmt: skip
            lines += wrap(one_line(v["text"], 1000), indent="    ", more="      ")
        elif best is not None:
            found = f"{key}: not confirmed yet; best searched: trial {best['number']}: {_settings(best['params'])}"
            lines += wrap(one_line(found, 1000), indent="  ", more="      ")
        else:
            lines += wrap(one_line(f"{key}: no complete trial", 1000), indent="  ")
    return lines


def format_table(summaries: Sequence[StudySummary], wide: bool = False, colour: bool = False) -> str:
    """The studies as a plain-text table: the essential columns within ``layout.WIDTH`` (then each study's
    recommendation and verdict in full, and what the figures are), or with ``wide`` every column, however
    wide. The verdict word is coloured where ``colour`` is on. Every cell is one printable line: stored text
    may come from another machine and must not drive the terminal."""
    rows = [[one_line(cell, 300) for cell in row] for row in table_rows(summaries, wide)]
    if wide:
        text = columns(rows, None, right=(3, 4, 5, 6, 8))
    else:
        tones = [verdict_word(s)[1] for s in summaries]
        text = columns(rows, shrink=(1, 0, 2, 5), right=(3, 4, 5, 6), tones=tones, colour=colour)
        text += "\n" + "\n".join(_recommended_lines(summaries))
    legend = [LEGEND] + ([UNMARKED] if any(not figures(s)[2] for s in summaries) else [])
    return text + "\n\n" + "\n".join(line for paragraph in legend for line in wrap(paragraph, more=""))


def format_importances(importances: Importances | None) -> str:
    if not importances:
        return "not computed"
    if "error" in importances:
        return f"not computed ({importances['error']})"
    return ", ".join(f"{name} {value:.2f}" for name, value in importances.items())


def format_importance_lines(summaries: Sequence[StudySummary]) -> str:
    """Which knobs mattered per study (fANOVA importances, summing to 1), and what the probe ruled out, each
    line within ``layout.WIDTH``."""
    lines = ["", "What mattered (parameter importances, fANOVA):"]
    for s in summaries:
        inert = f"  [inert, searched anyway: {', '.join(s['inert_knobs'])}]" if s["inert_knobs"] else ""
        lines += wrap(one_line(f"{s['name']}: {format_importances(s['importances'])}{inert}", 1000), indent="  ")
    ruled_out = [
        (s["name"], [*(f"baseline {b}: {n}" for b, n in s["baseline_notes"].items()), *s["excluded"]])
        for s in summaries
    ]
    disturbed = [(s["name"], describe_study(s["disturbance"])) for s in summaries]
    if any(line and not line.startswith("undisturbed") for _, line in disturbed):
        lines += ["", "Disturbed trials (something else used their cores; tuner/disturbance.py):"]
        for name, line in disturbed:
            if line and not line.startswith("undisturbed"):
                lines += wrap(one_line(f"{name}: {line}", 1000), indent="  ", more="    ")
    if any(found for _, found in ruled_out):
        lines += ["", "Not measured on this CPU (probe read-back):"]
        for name, found in ruled_out:
            if found:
                lines += wrap(one_line(f"{name}:", 300), indent="  ")
                lines += [line for note in found for line in wrap(one_line(note, 1000), indent="    ")]
    return "\n".join(lines)
