"""What was found, read from storage without measuring: one summary per study, as a table or JSON."""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable
from typing import Any

import optuna
from optuna.trial import TrialState

from tuner.capability import NOT_RUNNABLE
from tuner.confirm import DEFAULT, HEURISTIC
from tuner.records import StudyMeta, tuner_studies
from tuner.sanitize import one_line


def summarize_study(study: optuna.Study) -> dict[str, Any]:
    """One study as show prints it (and its --json), from the study's checked metadata and verdict."""
    meta = StudyMeta.from_dict(study.user_attrs.get("tuner"), f"study {study.study_name}: tuner")
    trials = study.get_trials(deepcopy=False)
    counts = Counter(t.state.name.lower() for t in trials)
    complete = [t for t in trials if t.state == TrialState.COMPLETE]
    best = max(complete, key=lambda t: t.value or 0.0, default=None)
    searched = {t.user_attrs["baseline"]: t.value for t in complete if "baseline" in t.user_attrs}
    verdict = study.user_attrs.get("verdict")
    return {
        "name": study.study_name,
        "model": meta.model,
        "mode": meta.mode,
        "batch_size": meta.batch_size,
        "runtime": meta.runtime,
        "cores": meta.cores,
        "cpu": {"model_name": meta.cpu.get("model_name"), "id": meta.cpu.get("id")},
        "framework_version": next(
            (t.user_attrs["measurement"]["facts"].get("framework_version") for t in complete), None
        ),
        "trials": {state: counts.get(state, 0) for state in ("complete", "fail", "pruned", "running", "waiting")},
        "best_trial": None
        if best is None
        else {"number": best.number, "images_per_sec": best.value, "params": best.params},
        "search_baselines": searched,
        "importances": study.user_attrs.get("importances"),
        "inert_knobs": meta.raw.get("inert_knobs", []),
        # What the probe's read-back ruled out on this CPU (tuner/capability.py): baselines and choices.
        "baseline_notes": study.user_attrs.get("runnable", {}).get("baselines", {}),
        "excluded": study.user_attrs.get("runnable", {}).get("excluded", []),
        "probe": dict(meta.probe),
        "verdict": None
        if verdict is None
        else {
            key: verdict.get(key)
            for key in (
                "winner",
                "recommended",
                "recommended_params",
                "clear",
                "text",
                "images_per_sec",
                "speedup_vs_tf_default",
                "speedup_vs_heuristic",
                "rounds",
                "measured",
            )
        },
    }


def summarize(
    storage: optuna.storages.BaseStorage, warn: Callable[[str], None] = lambda line: None
) -> list[dict[str, Any]]:
    """One summary per tuner study; a study whose stored attributes break the schema is ``warn``ed about."""
    rows = []
    for info in tuner_studies(storage, warn):
        rows.append(summarize_study(optuna.load_study(study_name=info.study_name, storage=storage)))
    return sorted(rows, key=lambda r: (r["model"] or "", r["runtime"] or "", r["mode"] or "", r["cores"] or 0))


def _rate(value: float | None) -> str:
    return "-" if value is None else f"{value:.2f}"


def _speedup(interval: dict[str, float] | None) -> str:
    if not interval:
        return "-"
    return f"{interval['value']:.2f}x [{interval['low']:.2f}, {interval['high']:.2f}]"


def _others(baselines: dict[str, float]) -> str:
    """Baselines beyond tf-default and heuristic (Intel's advice, say), as 'name rate' pairs."""
    rest = [f"{name} {rate:.2f}" for name, rate in baselines.items() if name not in (DEFAULT, HEURISTIC)]
    return ", ".join(rest) or "-"


def _rates(rates: dict[str, Any], baselines: dict[str, Any], tuned: str, notes: dict[str, str]) -> list[str]:
    """The tf-default, heuristic, other-baselines and tuned cells; a baseline that cannot run here says so."""
    others = {name: rate for name, rate in rates.items() if name in baselines}
    heuristic = _rate(rates.get(HEURISTIC))
    if HEURISTIC not in rates and notes.get(HEURISTIC, "").startswith(NOT_RUNNABLE):
        heuristic = NOT_RUNNABLE
    return [_rate(rates.get(DEFAULT)), heuristic, _others(others), _rate(rates.get(tuned))]


def table_rows(summaries: list[dict[str, Any]]) -> list[list[str]]:
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
        head = [
            s["model"],
            s["runtime"],
            s["mode"],
            str(s["cores"]),
            f"{s['trials']['complete']}+{s['trials']['fail']}F",
        ]
        if v is None:  # searched but not confirmed: show the search's own values, and say so
            searched, best = s["search_baselines"], s["best_trial"]
            rates = {**searched, "best": best and best["images_per_sec"]}
            cells = _rates(rates, searched, "best", s.get("baseline_notes", {}))
            rows.append([*head, *cells, "-", "-", "-", "not confirmed yet (search values)"])
            continue
        params = v["recommended_params"] or {}
        rows.append([
            *head, *_rates(v["images_per_sec"], s["search_baselines"], v["winner"], s.get("baseline_notes", {})),
            _speedup(v["speedup_vs_tf_default"]), _speedup(v["speedup_vs_heuristic"]),
            ",".join(f"{k}={val}" for k, val in params.items()), v["text"],
        ])  # fmt: skip
    return rows


def format_table(summaries: list[dict[str, Any]]) -> str:
    """A plain-text table; images/sec are confirmed medians where a verdict exists. Every cell is one
    printable line: stored text may come from another machine and must not drive the terminal."""
    rows = [[one_line(cell, 300) for cell in row] for row in table_rows(summaries)]
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    lines = ["  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True)).rstrip() for row in rows]
    lines.insert(1, "  ".join("-" * width for width in widths))
    return "\n".join(lines)


def format_importances(importances: dict[str, Any] | None) -> str:
    if not importances:
        return "not computed"
    if "error" in importances:
        return f"not computed ({importances['error']})"
    return ", ".join(f"{name} {value:.2f}" for name, value in importances.items())


def format_importance_lines(summaries: list[dict[str, Any]]) -> str:
    """Which knobs mattered per study (fANOVA importances, summing to 1)."""
    lines = ["", "What mattered (parameter importances, fANOVA):"]
    for s in summaries:
        inert = f"  [inert, searched anyway: {', '.join(s['inert_knobs'])}]" if s.get("inert_knobs") else ""
        lines.append(one_line(f"  {s['name']}: {format_importances(s.get('importances'))}{inert}", 1000))
    ruled_out = [
        f"  {s['name']}: {line}"
        for s in summaries
        for line in [*(f"baseline {b}: {n}" for b, n in s.get("baseline_notes", {}).items()), *s.get("excluded", [])]
    ]
    if ruled_out:
        lines += ["", "Not measured on this CPU (probe read-back):", *(one_line(line, 1000) for line in ruled_out)]
    return "\n".join(lines)
