"""`tuner report`: every study and benchmark in storage as one self-contained HTML page.

The page opens from disk with no network: plotly.js is embedded once and each figure carries its data.
Per CPU signature and runtime it shows the table of `tuner table`; images/sec of tf-default, heuristic and
tuned with 95% intervals per core count and mode; images/sec against cores; and for each study its
optimisation history, parameter importances (Optuna's visualisation module, seeded fANOVA), a heat map of
images/sec over intra_op x inter_op, and images/sec against KMP_BLOCKTIME where that knob was searched.
Every figure's title says how noisy its data were; a study with no complete trial gets a sentence instead.
"""

from __future__ import annotations

import html
import statistics
import time
import warnings
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import optuna
import plotly.graph_objects as go
import plotly.offline
from optuna.trial import FrozenTrial, TrialState

from tuner import __version__, benchmark, table
from tuner.confirm import DEFAULT, HEURISTIC, TUNED
from tuner.disturbance import describe_study, study_figures
from tuner.errors import InvalidSettings, TunerError
from tuner.records import (
    BenchmarkRecord,
    MalformedRecord,
    StoredRunnable,
    StoredVerdict,
    StudyMeta,
    confirmed_baseline,
    trial_measurement,
    tuner_studies,
)
from tuner.sanitize import printable
from tuner.settings import Settings
from tuner.topology import cores_text

LABELS = (DEFAULT, HEURISTIC, TUNED)
COLOURS = {DEFAULT: "#7f7f7f", HEURISTIC: "#ff7f0e", TUNED: "#1f77b4"}
RATE = "images/sec"
MIN_IMPORTANCE_TRIALS = 3  # fANOVA needs a few distinct points; fewer gets a sentence


# -- statistics ---------------------------------------------------------------------------------------


def _cv_text(cvs: Sequence[float], what: str, prefix: str = "noise: ") -> str:
    if not cvs:
        return f"{prefix}no {what} recorded"
    return (
        f"{prefix}per-step CV of {what} median {statistics.median(cvs):.1%} "
        f"(range {min(cvs):.1%} to {max(cvs):.1%}, n={len(cvs)})"
    )


def _trials_noise(complete: Sequence[FrozenTrial]) -> str:
    """The noise line of a study's figures: the per-step CV its complete trials recorded."""
    measured = [trial_measurement(t.user_attrs) for t in complete]
    return _cv_text([m.cv for m in measured if m is not None], "trials")


# -- figures ------------------------------------------------------------------------------------------


def plotted(study: optuna.Study) -> tuple[optuna.Study, int]:
    """What a study's figures draw: an in-memory copy that keeps each trial's number and each complete
    trial's value, its params where ``Settings`` validates them, and a well-formed baseline name, nothing else.
    Optuna's figures put every attribute a trial holds into their hover text, and a shared or imported
    study's attributes (hosts, stderr tails, names) are anyone's text. Returns the copy and how many complete
    trials were left out because no knob validates their params."""
    copy = optuna.create_study(direction=study.direction)  # in memory
    left_out = 0
    try:  # the study's word on what each baseline is: a trial with a baseline's name and other settings is none
        verdict = StoredVerdict.from_dict(study.user_attrs["verdict"]) if "verdict" in study.user_attrs else None
    except MalformedRecord:
        verdict = None
    try:  # before a verdict, the run's plan is that word
        planned = StoredRunnable.from_dict(study.user_attrs.get("runnable")).planned
    except MalformedRecord:
        planned = {}
    for t in study.get_trials(deepcopy=False):
        kept = None
        if t.state == TrialState.COMPLETE and t.value is not None:
            try:
                Settings.from_params(t.params)
                name = confirmed_baseline(t.params, t.user_attrs, verdict, planned)
                kept = optuna.trial.create_trial(
                    params=dict(t.params),
                    distributions=dict(t.distributions),
                    value=float(t.value),
                    user_attrs={"baseline": name} if name else {},
                )
            except (InvalidSettings, ValueError, TypeError):
                left_out += 1
        copy.add_trial(kept or optuna.trial.create_trial(state=TrialState.FAIL))  # keeps the numbering
    return copy, left_out


def _title(fig: go.Figure, title: str, noise: str, x: str, y: str) -> go.Figure:
    """A title whose second line says how noisy the data were, and axis labels with units."""
    fig.update_layout(
        title={"text": f"{html.escape(title)}<br><sup>{html.escape(noise)}</sup>"},
        xaxis_title=x,
        yaxis_title=y,
        template="plotly_white",
        height=420,
        margin={"t": 90},
    )
    return fig


def _latest_cpu(records: Sequence[BenchmarkRecord]) -> dict[tuple[int, str, str], BenchmarkRecord]:
    """The latest CPU record of each (cores, mode, setting) among tf-default, heuristic and tuned, as the
    table shows it: where that latest run failed or could not run here (a skipped record with its label),
    the setting has no figure to draw."""
    latest: dict[tuple[int, str, str], BenchmarkRecord] = {}
    for r in sorted(records, key=lambda r: r.get("measured", "")):
        if r.get("device") == "cpu" and r.get("label") in LABELS:
            latest[(r["cores"], r["mode"], r["label"])] = r
    return {key: r for key, r in latest.items() if "skipped" not in r}


def _records_cvs(latest: dict[tuple[int, str, str], BenchmarkRecord]) -> list[float]:
    return [r["rate_cv"] for r in latest.values() if isinstance(r.get("rate_cv"), int | float)]


def bars(records: Sequence[BenchmarkRecord], heading: str) -> go.Figure | None:
    """tf-default, heuristic and tuned images/sec per core count and mode: the headline figure the table
    prints (timed batches x batch / the timed loop's wall time, over every round), the slowest and fastest
    round as error bars."""
    latest = _latest_cpu(records)
    if not latest:
        return None
    targets = sorted({(cores, mode) for cores, mode, _ in latest}, key=lambda t: (t[0], t[1] != "train"))
    fig = go.Figure()
    rounds = sorted({r["rounds"] for r in latest.values()})
    for label in LABELS:
        xs, ys, lows, highs, tags = [], [], [], [], []
        for cores, mode in targets:
            record = latest.get((cores, mode, label))
            if record is None:
                continue
            # As the table's narrow view tags it: a tuned figure from a study that searched knobs beside the
            # runtime's (--search-isa, --search-batch) is not the plain study's figure.
            searched = record.get("searched")
            known = [table.TAGS[k] for k in searched if k in table.TAGS] if isinstance(searched, list) else []
            tags.append(" ".join(known))
            value = float(record["images_per_sec"])
            per_round = [float(r) for r in record.get("round_images_per_sec") or []] or [value]
            low, high = min([*per_round, value]), max([*per_round, value])
            xs.append(f"{cores_text(cores)}, {mode}")
            ys.append(value)
            lows.append(value - low)
            highs.append(high - value)
        if xs:
            fig.add_trace(
                go.Bar(
                    name=label,
                    x=xs,
                    y=ys,
                    marker_color=COLOURS[label],
                    text=tags if any(tags) else None,
                    textposition="inside",
                    insidetextanchor="start",
                    error_y={"type": "data", "symmetric": False, "array": highs, "arrayminus": lows},
                )
            )
    fig.update_layout(barmode="group")
    noise = f"error bars: slowest and fastest of {'/'.join(map(str, rounds))} round(s); " + _cv_text(
        _records_cvs(latest), "benchmark runs", prefix=""
    )
    return _title(fig, f"Images/sec by setting: {heading}", noise, "cores and mode", f"{RATE} (timed loop)")


def scaling(records: Sequence[BenchmarkRecord], heading: str) -> go.Figure | None:
    """Images/sec against the number of cores, one line per mode and setting."""
    latest = _latest_cpu(records)
    if not latest:
        return None
    fig = go.Figure()
    for mode in sorted({m for _, m, _ in latest}, key=lambda m: m != "train"):
        for label in LABELS:
            points = sorted((c, r) for (c, m, lab), r in latest.items() if m == mode and lab == label)
            if points:
                fig.add_trace(
                    go.Scatter(
                        name=f"{mode}, {label}",
                        x=[c for c, _ in points],
                        y=[r["images_per_sec"] for _, r in points],
                        mode="lines+markers",
                        line={"color": COLOURS[label], "dash": "solid" if mode == "train" else "dot"},
                    )
                )
    counts = sorted({c for c, _, _ in latest})
    fig.update_xaxes(tickvals=counts)
    noise = _cv_text(_records_cvs(latest), "benchmark runs")
    if len(counts) == 1:
        noise += "; one core count measured, so no slope yet"
    return _title(fig, f"Scaling: {heading}", noise, "cores (pinned)", f"{RATE} (timed loop)")


def history(study: optuna.Study, complete: Sequence[FrozenTrial], noise: str) -> go.Figure:
    fig = optuna.visualization.plot_optimization_history(study, target_name=RATE)
    fig.update_xaxes(tickformat="d", dtick=1 if max(t.number for t in complete) < 15 else None)  # whole trials
    return _title(fig, f"Optimisation history ({len(complete)} complete trials)", noise, "trial number", RATE)


def importances(
    study: optuna.Study, complete: Sequence[FrozenTrial], searched: list[str], noise: str
) -> go.Figure | str:
    if len(complete) < MIN_IMPORTANCE_TRIALS or not searched:
        return (
            f"Parameter importances need {MIN_IMPORTANCE_TRIALS} complete trials of searched knobs; "
            f"this study has {len(complete)}."
        )
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            fig = optuna.visualization.plot_param_importances(
                study,
                evaluator=optuna.importance.FanovaImportanceEvaluator(seed=0),
                params=searched,
                target_name=RATE,
            )
        except (ValueError, RuntimeError) as error:  # e.g. every trial the same setting
            return f"Parameter importances could not be computed: {error}"
    if len(complete) < 10:
        noise += f"; fANOVA on {len(complete)} trials is a rough guide"
    return _title(fig, "Parameter importances (fANOVA, seeded)", noise, "importance (share of variance)", "knob")


def heatmap(complete: Sequence[FrozenTrial], noise: str) -> go.Figure | str:
    """Best images/sec in each intra_op x inter_op cell (over the other knobs), trial counts as text."""
    cells: dict[tuple[int, int], list[float]] = {}
    for t in complete:
        if "intra_op" in t.params and "inter_op" in t.params and t.value is not None:
            cells.setdefault((int(t.params["intra_op"]), int(t.params["inter_op"])), []).append(t.value)
    if not cells:
        return "No complete trial has both intra_op and inter_op: no heat map."
    intras = sorted({i for i, _ in cells})
    inters = sorted({j for _, j in cells})
    z = [[max(cells[(i, j)]) if (i, j) in cells else None for i in intras] for j in inters]
    text = [[f"{len(cells[(i, j)])} trial(s)" if (i, j) in cells else "" for i in intras] for j in inters]
    fig = go.Figure(
        go.Heatmap(
            x=[str(i) for i in intras],
            y=[str(j) for j in inters],
            z=z,
            text=text,
            texttemplate="%{z:.1f}",
            hovertemplate="intra_op %{x}, inter_op %{y}: %{z:.2f} images/sec (%{text})<extra></extra>",
            colorscale="Viridis",
            colorbar={"title": {"text": RATE}},
        )
    )
    fig.update_xaxes(type="category")
    fig.update_yaxes(type="category")
    return _title(
        fig,
        "Images/sec over intra_op x inter_op (best trial per cell)",
        noise + "; blank cells were not measured",
        "intra_op threads (0 = TensorFlow chooses)",
        "inter_op threads (0 = TensorFlow chooses)",
    )


def blocktime(study: optuna.Study, noise: str) -> go.Figure:
    fig = optuna.visualization.plot_slice(study, params=["KMP_BLOCKTIME"], target_name=RATE)
    return _title(fig, "Images/sec against KMP_BLOCKTIME", noise, "KMP_BLOCKTIME (ms)", RATE)


# -- the page -----------------------------------------------------------------------------------------


class Page:
    """Collects sections and figures; each figure becomes a div whose data and drawing code are inline."""

    def __init__(self) -> None:
        self.parts: list[str] = []
        self.figures: list[str] = []  # titles, in order (the browser test checks them)

    def text(self, markup: str) -> None:
        """Markup whose stored text is escaped already; control characters (an escape sequence that `cat`
        of the file would replay, a bidi override) are made spaces here, for every part at once."""
        self.parts.append(printable(markup))

    def sentence(self, words: str) -> None:
        self.parts.append(f'<p class="empty">{html.escape(printable(words))}</p>')

    def figure(self, fig: go.Figure | str | None, missing: str = "") -> None:
        if fig is None:
            self.sentence(missing)
            return
        if isinstance(fig, str):
            self.sentence(fig)
            return
        self.figures.append(str(fig.layout.title.text).split("<br>")[0])
        div_id = f"figure-{len(self.figures)}"
        self.parts.append(
            fig.to_html(full_html=False, include_plotlyjs=False, div_id=div_id, config={"displaylogo": False})
        )


@dataclass
class Group:
    """What the page shows under one CPU signature and runtime: its studies and benchmark records."""

    cpu: Mapping[str, Any]  # the CPU signature as stored (records.StudyMeta.cpu, or a record's cpu)
    studies: list[tuple[optuna.Study, StudyMeta]] = field(default_factory=list)
    records: list[BenchmarkRecord] = field(default_factory=list)

    def name(self, runtime: str) -> str:
        """Named from what was read back (a tf-default record, else a study's probe), never from the name
        alone."""
        facts: Mapping[str, Any] | None = next(
            (r for r in self.records if r.get("label") == DEFAULT and "skipped" not in r), None
        )
        if facts is None:
            facts = next((meta.probe for _, meta in self.studies), None)
        cpu = self.cpu
        return f"{table.runtime_label(runtime, facts)} on {cpu.get('model_name', '?')} (CPU {cpu.get('id', '?')})"


def _searched(complete: Sequence[FrozenTrial]) -> list[str]:
    """Knobs that took more than one value among complete trials."""
    names = sorted({name for t in complete for name in t.params})
    return [n for n in names if len({repr(t.params.get(n)) for t in complete}) > 1]


def _study_section(page: Page, study: optuna.Study, meta: StudyMeta) -> None:
    complete = study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
    all_trials = study.get_trials(deepcopy=False)
    verdict = None
    if "verdict" in study.user_attrs:
        verdict = StoredVerdict.from_dict(study.user_attrs["verdict"], f"study {study.study_name}: verdict")
    goal = "" if meta.objective == "throughput" else f", objective {meta.objective}"
    heading = f"{meta.model} {meta.mode}, {cores_text(meta.cores)}, batch {meta.batch_size}{goal}"
    page.text(f'<h3 id="{html.escape(study.study_name)}">{html.escape(heading)}</h3>')
    facts = [
        f"study <code>{html.escape(study.study_name)}</code>",
        f"{len(complete)} complete of {len(all_trials)} trials",
        f"space {html.escape(str(meta.space))}",
        f"TensorFlow {html.escape(str(meta.probe.get('framework_version', '?')))}",
    ]
    page.text(f"<p>{' · '.join(facts)}</p>")
    disturbed = describe_study(study_figures(all_trials))
    if disturbed is not None:  # the "disturbed" mark: trials measured again or never ranked, and the shares
        head, _, rest = disturbed.partition(":")
        page.text(f"<p><b>{html.escape(head.capitalize())}:</b>{html.escape(rest)}</p>")
    if verdict is not None and verdict.text:
        page.text(f"<p><b>Verdict:</b> {html.escape(verdict.text)}</p>")
    if not complete:
        page.sentence("No complete trial yet: nothing to plot for this study.")
        return
    noise = _trials_noise(complete)
    drawn, left_out = plotted(study)
    if left_out:
        page.sentence(f"{left_out} complete trial(s) left out of the figures: their params are not valid settings.")
    complete = drawn.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
    if not complete:
        return
    searched = _searched(complete)
    page.figure(history(drawn, complete, noise))
    page.figure(importances(drawn, complete, searched, noise))
    page.figure(heatmap(complete, noise))
    if "KMP_BLOCKTIME" in searched:
        page.figure(blocktime(drawn, noise))


CSS = """
body { font-family: system-ui, sans-serif; margin: 2em auto; max-width: 1200px; color: #222; }
.wide { overflow-x: auto; }
table { border-collapse: collapse; font-size: 0.85em; margin: 1em 0; }
th, td { border: 1px solid #ccc; padding: 0.25em 0.5em; text-align: left; }
th { background: #f3f3f3; }
p.empty { color: #666; font-style: italic; }
code { background: #f3f3f3; padding: 0 0.2em; }
h2 { border-bottom: 2px solid #1f77b4; padding-bottom: 0.2em; margin-top: 2em; }
"""


PROGRESS_S = 10.0  # a big storage's report says how far it is, at most this often


def build(
    storage: optuna.storages.BaseStorage,
    source: str,
    warn: Callable[[str], None] = lambda line: None,
    log: Callable[[str], None] = lambda line: None,
    clock: Callable[[], float] = time.monotonic,
) -> tuple[str, list[str]]:
    """The whole page, and the titles of its figures in order. A study whose stored attributes break the
    schema (tuner/records.py) is ``warn``ed about and left out. A big storage says how far it is on ``log``
    (studies read, then studies drawn), at most every ``PROGRESS_S``."""
    said = [clock()]

    def progress(line: str) -> None:
        if clock() - said[0] >= PROGRESS_S:
            said[0] = clock()
            log(line)

    page = Page()
    records = benchmark.records(storage, warn)
    studies = []
    valid = {info.study_name for info in tuner_studies(storage, warn)}
    foreign: list[str] = []
    every = storage.get_all_studies()
    for index, summary in enumerate(every):
        progress(f"report: reading study {index + 1}/{len(every)}")
        if summary.study_name == benchmark.BENCH_STUDY or (
            "tuner" in summary.user_attrs and summary.study_name not in valid
        ):
            continue
        if summary.study_name not in valid:
            foreign.append(summary.study_name)
            continue
        study = optuna.load_study(study_name=summary.study_name, storage=storage)
        # tuner_studies checked the metadata: this reads it as the typed record.
        studies.append((study, StudyMeta.from_dict(study.user_attrs["tuner"], f"study {study.study_name}: tuner")))
    # One section per CPU, runtime, model and objective: figures never mix two models or two objectives.
    groups: dict[tuple[str, str, str, str], Group] = {}
    for study, meta in studies:
        key = (str(meta.cpu.get("id")), meta.runtime, meta.model, meta.objective)
        groups.setdefault(key, Group(meta.cpu)).studies.append((study, meta))
    for r in records:
        if r.get("kind") == "benchmark":
            model, objective = str(r.get("model")), str(r.get("objective") or "throughput")
            key = (str(r.get("cpu", {}).get("id")), str(r.get("runtime")), model, objective)
            groups.setdefault(key, Group(r.get("cpu", {}))).records.append(r)
    yardsticks = [r for r in records if r.get("kind") in ("flops", "matmul")]
    now = datetime.now(UTC).isoformat(timespec="seconds")
    benchmarks = sum(r.get("kind") == "benchmark" for r in records)
    page.text(
        f"<h1>tuner report</h1><p>{len(studies)} studies and {benchmarks} benchmark records from "
        f"<code>{html.escape(source)}</code>, "
        f"written {now} by tuner {__version__}. The bars' images/sec are the table's (timed batches x batch / "
        "wall time of the timed loop); the other figures plot per-step rates, as each says; all of ResNet-50 (or "
        "the model named) on synthetic data; each figure's second title line says how noisy its data were.</p>"
    )
    if foreign:
        page.sentence(f"Left out: {len(foreign)} Optuna studies not made by tuner ({', '.join(sorted(foreign)[:5])}).")
    if not groups:  # as `tuner recommend` without a verdict: an error, not an empty page
        raise TunerError(f"nothing to report: no tuner studies or benchmark records in {source} (run: tuner run)")
    ordered_groups = sorted(groups.items(), key=lambda item: (item[0][0], item[0][2], item[0][3], item[0][1]))
    drawn = 0
    for (cpu_id, runtime, model, objective), group in ordered_groups:
        goal = "" if objective == "throughput" else f", objective {objective}"
        heading = f"{model}{goal}: {group.name(runtime)}"
        page.text(f"<h2>{html.escape(heading)}</h2>")
        isa = ", ".join(group.cpu.get("isa", [])) or "?"
        page.text(f"<p>CPU signature {html.escape(cpu_id)}: {html.escape(isa)}</p>")
        if group.records:
            frame, notes = table.build([*group.records, *yardsticks])
            page.text(f'<div class="wide">{table.render(frame, notes, "html")}</div>')
        else:
            page.sentence("No benchmark records for this runtime and CPU yet (run: tuner run, or tuner benchmark).")
        page.figure(bars(group.records, heading), "No CPU benchmark records: no bars of the three settings.")
        page.figure(scaling(group.records, heading), "No CPU benchmark records: no scaling plot.")
        by_target = sorted(group.studies, key=lambda sm: (sm[1].cores, sm[1].mode != "train"))
        for study, meta in by_target:
            drawn += 1
            progress(f"report: drawing study {drawn}/{len(studies)}")
            _study_section(page, study, meta)
    body = "\n".join(page.parts)
    script = plotly.offline.get_plotlyjs()
    document = (
        '<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8"><title>tuner report</title>'
        f"<style>{CSS}</style><script>{script}</script></head><body>\n{body}\n</body></html>\n"
    )
    return document, page.figures
