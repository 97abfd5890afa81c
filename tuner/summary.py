"""What was found, read from storage without measuring: one summary per study, as a table or JSON."""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from typing import TypedDict

import optuna
from optuna.trial import TrialState

from tuner.capability import NOT_RUNNABLE
from tuner.confirm import DEFAULT, HEURISTIC
from tuner.objective import OBJECTIVES
from tuner.records import StoredRunnable, StoredVerdict, StudyMeta, tuner_studies
from tuner.sanitize import one_line

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
    images_per_sec: float | None
    params: Params


class VerdictSummary(TypedDict):
    """The stored verdict's fields that show prints."""

    winner: str | None
    recommended: str
    recommended_params: Params
    clear: bool
    text: str
    images_per_sec: dict[str, float]
    speedup_vs_tf_default: dict[str, float] | None
    speedup_vs_heuristic: dict[str, float] | None
    rounds: int | None
    measured: str | None
    score: dict[str, float]  # the objective's statistic of each candidate (higher is better)
    latency_ms: dict[str, dict[str, float | None]]  # p50 and p99 request times of each candidate


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
    search_baselines: dict[str, float | None]  # baseline -> its search trial's images/sec
    importances: Importances | None
    inert_knobs: list[str]
    baseline_notes: dict[str, str]  # what the probe's read-back ruled out on this CPU (tuner/capability.py)
    excluded: list[str]
    probe: dict[str, object]
    verdict: VerdictSummary | None


def _interval(value: Mapping[str, float] | None) -> dict[str, float] | None:
    return None if value is None else dict(value)


def summarize_verdict(verdict: StoredVerdict) -> VerdictSummary:
    """The verdict as show prints it, from the checked record."""
    return VerdictSummary(
        winner=verdict.winner,
        recommended=verdict.recommended,
        recommended_params=dict(verdict.recommended_params),
        clear=verdict.clear,
        text=verdict.text,
        images_per_sec=dict(verdict.images_per_sec),
        speedup_vs_tf_default=_interval(verdict.speedup),
        speedup_vs_heuristic=_interval(verdict.vs_heuristic),
        rounds=verdict.rounds,
        measured=verdict.measured,
        score=dict(verdict.score),
        latency_ms={name: dict(v) for name, v in verdict.latency_ms.items()},
    )


def summarize_study(study: optuna.Study) -> StudySummary:
    """One study as show prints it (and its --json), from the study's checked metadata and verdict."""
    attrs = study.user_attrs
    where = f"study {study.study_name}"
    meta = StudyMeta.from_dict(attrs.get("tuner"), f"{where}: tuner")
    runnable = StoredRunnable.from_dict(attrs.get("runnable"), f"{where}: runnable")
    verdict = None if "verdict" not in attrs else StoredVerdict.from_dict(attrs["verdict"], f"{where}: verdict")
    trials = study.get_trials(deepcopy=False)
    counts = Counter(t.state.name.lower() for t in trials)
    complete = [t for t in trials if t.state == TrialState.COMPLETE]
    best = max(complete, key=lambda t: t.value or 0.0, default=None)
    framework = next((t.user_attrs["measurement"]["facts"].get("framework_version") for t in complete), None)
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
        else BestTrial(number=best.number, images_per_sec=best.value, params=dict(best.params)),
        search_baselines={t.user_attrs["baseline"]: t.value for t in complete if "baseline" in t.user_attrs},
        importances=attrs.get("importances"),  # checked by tuner_studies: numbers, or {"error": text}
        inert_knobs=list(meta.inert_knobs),
        baseline_notes=dict(runnable.baselines),
        excluded=list(runnable.excluded),
        probe=dict(meta.probe),
        verdict=None if verdict is None else summarize_verdict(verdict),
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
    milliseconds per request (batch / rate) for the latency objectives."""
    if not OBJECTIVES[s["objective"]].latency:
        return dict(values)
    return {name: None if rate is None else 1000.0 * s["batch_size"] / rate for name, rate in values.items()}


def _speedup(interval: Mapping[str, float] | None) -> str:
    if not interval:
        return "-"
    return f"{interval['value']:.2f}x [{interval['low']:.2f}, {interval['high']:.2f}]"


def _others(baselines: Mapping[str, float | None]) -> str:
    """Baselines beyond tf-default and heuristic (Intel's advice, say), as 'name rate' pairs."""
    rest = [f"{name} {rate:.2f}" for name, rate in baselines.items() if name not in (DEFAULT, HEURISTIC)]
    return ", ".join(rest) or "-"


def _rates(
    rates: Mapping[str, float | None], baselines: Mapping[str, object], tuned: str, notes: Mapping[str, str]
) -> list[str]:
    """The tf-default, heuristic, other-baselines and tuned cells; a baseline that cannot run here says so."""
    others = {name: rate for name, rate in rates.items() if name in baselines}
    heuristic = _rate(rates.get(HEURISTIC))
    if HEURISTIC not in rates and notes.get(HEURISTIC, "").startswith(NOT_RUNNABLE):
        heuristic = NOT_RUNNABLE
    return [_rate(rates.get(DEFAULT)), heuristic, _others(others), _rate(rates.get(tuned))]


def table_rows(summaries: Sequence[StudySummary]) -> list[list[str]]:
    header = [
        "model",
        "runtime",
        "mode",
        "cores",
        "trials",
        "tf-default",
        "heuristic",
        "other baselines",
        "tuned",
        "tuned/default (95% CI)",
        "tuned/heuristic (95% CI)",
        "recommended settings",
        "verdict",
    ]
    rows = [header]
    for s in summaries:
        v = s["verdict"]
        goal = OBJECTIVES[s["objective"]]
        head = [
            s["model"],
            s["runtime"],
            s["mode"] if not goal.latency else f"{s['mode']} ({goal.unit()}, batch {s['batch_size']})",
            str(s["cores"]),
            f"{s['trials']['complete']}+{s['trials']['fail']}F",
        ]
        if v is None:  # searched but not confirmed: show the search's own values, and say so
            searched, best = s["search_baselines"], s["best_trial"]
            rates = _as_objective(s, {**searched, "best": None if best is None else best["images_per_sec"]})
            cells = _rates(rates, searched, "best", s["baseline_notes"])
            rows.append([*head, *cells, "-", "-", "-", "not confirmed yet (search values)"])
            continue
        params = v["recommended_params"] or {}
        rows.append([
            *head,
            *_rates(
                _as_objective(s, v["score"]) if v["score"] else v["images_per_sec"],
                s["search_baselines"], v["winner"] or "", s["baseline_notes"],
            ),
            _speedup(v["speedup_vs_tf_default"]), _speedup(v["speedup_vs_heuristic"]),
            ",".join(f"{k}={val}" for k, val in params.items()), v["text"],
        ])  # fmt: skip
    return rows


def format_table(summaries: Sequence[StudySummary]) -> str:
    """A plain-text table; images/sec are confirmed medians where a verdict exists. Every cell is one
    printable line: stored text may come from another machine and must not drive the terminal."""
    rows = [[one_line(cell, 300) for cell in row] for row in table_rows(summaries)]
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    lines = ["  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True)).rstrip() for row in rows]
    lines.insert(1, "  ".join("-" * width for width in widths))
    return "\n".join(lines)


def format_importances(importances: Importances | None) -> str:
    if not importances:
        return "not computed"
    if "error" in importances:
        return f"not computed ({importances['error']})"
    return ", ".join(f"{name} {value:.2f}" for name, value in importances.items())


def format_importance_lines(summaries: Sequence[StudySummary]) -> str:
    """Which knobs mattered per study (fANOVA importances, summing to 1)."""
    lines = ["", "What mattered (parameter importances, fANOVA):"]
    for s in summaries:
        inert = f"  [inert, searched anyway: {', '.join(s['inert_knobs'])}]" if s["inert_knobs"] else ""
        lines.append(one_line(f"  {s['name']}: {format_importances(s['importances'])}{inert}", 1000))
    ruled_out = [
        f"  {s['name']}: {line}"
        for s in summaries
        for line in [*(f"baseline {b}: {n}" for b, n in s["baseline_notes"].items()), *s["excluded"]]
    ]
    if ruled_out:
        lines += ["", "Not measured on this CPU (probe read-back):", *(one_line(line, 1000) for line in ruled_out)]
    return "\n".join(lines)
