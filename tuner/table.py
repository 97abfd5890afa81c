"""The reference table, rebuilt from stored benchmark records (never measured here), through pandas.

One row per target (runtime, CPU and core count or GPUs, model, mode, batch size), with the reference
table's columns first: runtime, CPU, memory, GPU, batch size, mode, images/sec (ms/image) with the
recommended settings. Then tf-default, heuristic and tuned images/sec side by side, the tuned speedups
(with a 95% interval where they were measured interleaved in rounds), the achieved GFLOP/s as a share of
the matmul peak on the same core set, and the tuned settings.

``build`` returns the data: one column per quantity, numbers as numbers (a speedup's value, low and high in
three columns), missing values empty; csv and json print it as it is. Markdown and html are views of it
for people: every column (``wide``, html and files), or on a terminal the essential ones within
``layout.WIDTH``. Every images/sec is tf_cnn_benchmarks' timed-loop figure (the record's ``images_per_sec``);
the speedup columns with an interval are the verdict's statistic, the ratio of pooled per-step medians, and
their headers say so.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import numpy as np
import pandas as pd

from tuner.capability import NOT_RUNNABLE
from tuner.confirm import DEFAULT, HEURISTIC, TUNED, bootstrap_ratio, pooled_median
from tuner.errors import InvalidSettings, check_choice
from tuner.layout import CUT, WIDTH, fit, shorten, wrap
from tuner.records import EXTRA_KNOBS, BenchmarkRecord
from tuner.runtime import load as load_runtime
from tuner.runtime import names as runtime_names
from tuner.sanitize import one_line
from tuner.settings import Settings
from tuner.topology import cores_text

FORMATS = ("markdown", "csv", "html", "json")
_NUMBER = re.compile(r"[-+]?[0-9][0-9.,]*(e[-+]?[0-9]+)?x?")  # -0.5, +1.2e3, 1.03x: a figure, not a formula
EMPTY = "no benchmark results stored yet (run: tuner run, or tuner benchmark)"
HEURISTIC_NHWC = f"{HEURISTIC}-nhwc"  # the heuristic's runnable part where NCHW cannot run (tuner/capability.py)
# The stock space's oneDNN-forced-on point (search_spaces/tensorflow.toml): measured only where TensorFlow's
# default leaves oneDNN off (a CPU without AVX-512 VNNI/BF16 or AMX); elsewhere it is tf-default itself.
ONEDNN_ON = "onednn-on"
MODE_NAMES = {"train": "train", "infer": "infer"}
STATISTIC = "median step"  # what the speedup columns compare: the verdict's statistic, not images/sec
RATIOS = {
    name: (f"{name} ({STATISTIC})", f"{name} low", f"{name} high")
    for name in ("tuned/tf-default", "tuned/heuristic", "tuned/best recipe")
}
SHARES = tuple(f"{name} {what}" for name in (DEFAULT, HEURISTIC, TUNED) for what in ("GFLOP/s", "% peak"))
COLUMNS = (
    "model", "runtime", "CPU", "cores", "memory GiB", "GPU", "batch size", "mode", "status",
    "recommended", "images/sec", "ms/image", "p50 ms", "p99 ms",
    "tf-default images/sec", "heuristic images/sec", "heuristic measured as", "onednn-on images/sec",
    "tuned images/sec", "sampled settings", "tuned searched",
    *RATIOS["tuned/tf-default"], *RATIOS["tuned/heuristic"],
    "best recipe", "best recipe images/sec", *RATIOS["tuned/best recipe"], *SHARES,
    "tuned settings", "rounds", "warm-up batches", "timed batches", "recommended launch", "note", "imported from",
)  # fmt: skip
INTEGERS = ("cores", "GPU", "batch size", "sampled settings", "rounds", "warm-up batches", "timed batches")
FLOATS = (
    "memory GiB", "images/sec", "ms/image", "p50 ms", "p99 ms", "tf-default images/sec", "heuristic images/sec",
    "onednn-on images/sec", "tuned images/sec", *(c for name in RATIOS.values() for c in name),
    "best recipe images/sec", *SHARES,
)  # fmt: skip


def _group_key(record: BenchmarkRecord) -> tuple[Any, ...]:
    return (
        record.get("cpu", {}).get("id"),
        record.get("runtime"),
        record.get("device"),
        record.get("cores"),
        record.get("gpus"),
        record.get("replicas"),
        record.get("model"),
        record.get("batch_size"),
        record.get("mode"),
        record.get("objective") or "throughput",
    )


def _declared_label(name: str) -> str:
    return load_runtime(name).label if name in runtime_names() else name


def runtime_label(name: str, facts: Mapping[str, Any] | None = None) -> str:
    """How a row names its runtime, like the reference table's first column, from what the worker read back
    (``onednn``, ``openmp`` of a record), never from the runtime's name alone: stock TensorFlow on a CPU where
    it leaves oneDNN off is 'CPU (no optimisation)'. The runtime's name is added where the read-back differs
    from what the runtime declares. Without read-back facts, the declared label. A GPU row (``device`` gpu)
    is named by its stack as the reference table names it, the CUDA version TensorFlow was built with and the
    GPU's name, both read back by the worker; without them (a row not measured) 'GPU [runtime]'."""
    declared = _declared_label(name)
    facts = facts or {}
    if facts.get("device") == "gpu":
        cuda, gpu = facts.get("cuda_version"), facts.get("gpu_name")
        if not cuda:
            return f"GPU [{name}]"
        return f"CUDA {one_line(cuda, 20)}" + (f" ({one_line(gpu, 40)})" if gpu else "") + f" [{name}]"
    if facts.get("openmp"):
        found = "CPU (oneDNN on OpenMP)"
    elif facts.get("onednn") is True:
        found = "CPU (oneDNN)"
    elif facts.get("onednn") is False:
        found = "CPU (no optimisation)"
    else:
        return declared
    return found if found == declared else f"{found} [{name}]"


def _ratio(top: BenchmarkRecord | None, bottom: BenchmarkRecord | None) -> tuple[float | None, ...]:
    """Speedup of ``top`` over ``bottom`` as the verdict states it, the ratio of pooled per-step medians, with
    a 95% paired bootstrap interval when both were measured in the same interleaved run with two rounds or
    more (else no interval): (value, low, high), None where missing."""
    if top is None or bottom is None or not any(top["round_rates"]) or not any(bottom["round_rates"]):
        return None, None, None
    paired = top.get("run_id") == bottom.get("run_id") and min(top["rounds"], bottom["rounds"]) >= 2
    value = pooled_median(top["round_rates"]) / pooled_median(bottom["round_rates"])
    if not paired:
        return _finite(value), None, None
    with np.errstate(over="ignore"):  # extreme imported rates: an overflow is a missing figure, not a warning
        interval = bootstrap_ratio(top["round_rates"], bottom["round_rates"])  # over the rounds both have
    return _finite(interval.value), _finite(interval.low), _finite(interval.high)


def _finite(value: float | None) -> float | None:
    """A figure computed from stored records, or None where it overflowed: imported figures are each finite,
    but a ratio or product of two extreme ones need not be (JSON has no Infinity)."""
    return value if value is not None and math.isfinite(value) else None


def model_text(record: BenchmarkRecord) -> str:
    """'resnet50', or 'mobilenet_v2, latency': the model, and the objective where it is not throughput."""
    objective = record.get("objective") or "throughput"
    return f"{record.get('model')}" + ("" if objective == "throughput" else f", {objective}")


def _rate(record: BenchmarkRecord | None) -> float | None:
    return None if record is None else record["images_per_sec"]


def _share(
    record: BenchmarkRecord | None, flops: dict[str, float] | None, peak: float | None
) -> tuple[float | None, float | None]:
    """Achieved GFLOP/s and its percentage of the matmul peak on the same cores (None where not known)."""
    per = None if record is None or not flops else flops.get(record["mode"])  # a SavedModel's: inference only
    if record is None or not per or not peak or record.get("device") != "cpu":
        return None, None
    achieved = _finite(record["images_per_sec"] * per / 1e9)
    return achieved, None if achieved is None else _finite(100.0 * achieved / peak)


# The launchers' fixed recipes, as the stock space names its baselines (and their stand-ins' suffixes).
RECIPES = ("run_cpu-throughput", "run_cpu-latency", "model-zoo", "openvino-small")


def _best_recipe(group: dict[str, BenchmarkRecord]) -> tuple[str, BenchmarkRecord] | None:
    """The fastest launcher recipe measured in this group, by name and record; None where none was."""
    found = [(label, r) for label, r in group.items() if label.startswith(RECIPES)]
    return max(found, key=lambda item: item[1]["images_per_sec"]) if found else None


def launch_text(record: BenchmarkRecord | None) -> str:
    """'2x1 core, intra 1, inter default, tcmalloc, fp32': how a record's settings launch, in short."""
    if record is None:
        return "-"
    try:
        settings = Settings.from_params(record.get("settings", {}))
    except InvalidSettings:
        return "?"
    per = record["cores"] // settings.instances
    intra, inter = settings.intra_op or "default", settings.inter_op or "default"
    threads = f"intra {intra}, inter {inter}"
    return f"{settings.instances}x{cores_text(per)}, {threads}, {settings.allocator}, {settings.precision}"


def _recommended(group: dict[str, BenchmarkRecord]) -> BenchmarkRecord | None:
    """The record of the settings a confirmed verdict recommends (tf-default unless another clearly won)."""
    recommended = next((r["recommended"] for r in group.values() if r.get("recommended")), DEFAULT)
    return group.get(recommended) or group.get(DEFAULT) or group.get(TUNED) or group.get(HEURISTIC)


def build(records: Sequence[BenchmarkRecord]) -> tuple[pd.DataFrame, list[str]]:
    """The table, and notes (skipped targets, what the columns mean) to print under it."""
    # Yardsticks measured here come first: an imported one (any file may claim this CPU's id) counts only
    # where none was measured here.
    imported_first = sorted(records, key=lambda r: "imported" not in r)
    flops = {r["model"]: r["flops_per_image"] for r in imported_first if r.get("kind") == "flops"}
    own: dict[tuple[Any, Any, Any], float] = {}
    elsewhere: dict[tuple[Any, Any, Any], float] = {}
    for r in records:
        if r.get("kind") == "matmul":
            key = (r.get("cpu", {}).get("id"), r.get("cores"), r.get("precision", "fp32"))
            found = elsewhere if "imported" in r else own
            found[key] = max(found.get(key, 0.0), float(r["peak_gflops"]))
    peaks = {**elsewhere, **own}
    groups: dict[tuple[Any, ...], dict[str, BenchmarkRecord]] = {}
    skipped: dict[tuple[Any, ...], BenchmarkRecord] = {}
    unmeasured: dict[tuple[Any, ...], dict[str, str]] = {}  # settings of a target that were not measured, why
    for r in sorted((r for r in records if r.get("kind") == "benchmark"), key=lambda r: r.get("measured", "")):
        if "skipped" in r and r.get("label"):
            unmeasured.setdefault(_group_key(r), {})[r["label"]] = r["skipped"]
            groups.get(_group_key(r), {}).pop(r["label"], None)
            continue
        if "skipped" in r:
            skipped[_group_key(r)] = r
            continue
        unmeasured.get(_group_key(r), {}).pop(r["label"], None)
        skipped.pop(_group_key(r), None)
        groups.setdefault(_group_key(r), {})[r["label"]] = r  # the latest record of each label wins
    rows = []
    for key in sorted(set(groups) | set(unmeasured), key=_sort_key):
        group = groups.get(key, {})
        if not group:  # every setting of this target failed or could not run: a row that says so
            r = next(r for r in records if r.get("kind") == "benchmark" and _group_key(r) == key)
            rows.append(_skipped_row(r, "; ".join(f"{label}: {why}" for label, why in unmeasured[key].items())))
            continue
        rows.append(_measured_row(group, unmeasured.get(key, {}), flops, peaks))
    # A target skipped after it was measured (a later run had no time or no GPU for it) keeps its measured row.
    for key in sorted(set(skipped) - set(groups) - set(unmeasured), key=_sort_key):
        rows.append(_skipped_row(skipped[key], skipped[key]["skipped"]))
    notes = []
    for (cpu_id, cores, precision), top in sorted(peaks.items(), key=lambda item: (str(item[0][0]), item[0][1] or 0)):
        notes.append(
            f"matmul peak (4096x4096 {precision}, best runtime, oneDNN on where it runs) on {cores_text(cores)} of CPU "
            f"{cpu_id}: {top:.0f} GFLOP/s"
        )
    for model, counted in sorted(flops.items()):
        train = f", {counted['train'] / 1e9:.3g} for a training step" if "train" in counted else ""
        notes.append(f"{model}: {counted['infer'] / 1e9:.3g} GFLOP per sample for inference{train} (from the graphs)")
    frame = pd.DataFrame(rows, columns=COLUMNS)
    return frame.astype({name: "Int64" for name in INTEGERS}).astype({name: "Float64" for name in FLOATS}), notes


def _measured_row(
    group: dict[str, BenchmarkRecord],
    not_run: dict[str, str],
    flops: dict[str, dict[str, float]],
    peaks: dict[tuple[Any, Any, Any], float],
) -> dict[str, Any]:
    """One target's row from its latest record of each setting; ``not_run``: the settings that were not
    measured, and why."""
    any_record = next(iter(group.values()))
    main, default, tuned, recipe = _recommended(group), group.get(DEFAULT), group.get(TUNED), _best_recipe(group)
    # Where the reference heuristic cannot run (NCHW without oneDNN), its runnable NHWC part stands in.
    heuristic = group.get(HEURISTIC) or group.get(HEURISTIC_NHWC)
    notes = [f"{label}: {r['partial']} (cut short)" for label, r in group.items() if "partial" in r]
    notes += [f"{label}: {why}" for label, why in not_run.items()]
    notes += [f"{label}: {r['emulated']}" for label, r in group.items() if "emulated" in r]
    if heuristic is not None and HEURISTIC not in group:
        notes.append(f"heuristic figures: {HEURISTIC_NHWC} (NHWC), its runnable part")
    per_image = flops.get(any_record["model"])

    def shares(name: str, record: BenchmarkRecord | None) -> dict[str, float | None]:
        """GFLOP/s and % of the matmul peak on the same core set, in the record's own precision."""
        precision = (record or {}).get("settings", {}).get("precision", "fp32")
        peak = peaks.get((any_record.get("cpu", {}).get("id"), any_record["cores"], precision))
        achieved, percent = _share(record, per_image, peak)
        return {f"{name} GFLOP/s": achieved, f"{name} % peak": percent}

    def ratio(name: str, top: BenchmarkRecord | None, bottom: BenchmarkRecord | None) -> dict[str, float | None]:
        return dict(zip(RATIOS[name], _ratio(top, bottom), strict=True))

    return {
        **_target(any_record, runtime_label(any_record["runtime"], default or any_record)),
        "status": "measured",
        "recommended": None if main is None else main["label"],
        "images/sec": _rate(main),
        "ms/image": None if main is None else main["ms_per_image"],
        "p50 ms": None if main is None else main.get("p50_ms"),
        "p99 ms": None if main is None else main.get("p99_ms"),
        "tf-default images/sec": _rate(default),
        "heuristic images/sec": _rate(heuristic),
        "heuristic measured as": _heuristic_as(heuristic, not_run),
        "onednn-on images/sec": _rate(group.get(ONEDNN_ON)),
        "tuned images/sec": _rate(tuned),
        "sampled settings": None if tuned is None else tuned.get("sampled"),
        "tuned searched": None if tuned is None else ", ".join(tuned.get("searched", [])) or None,
        **ratio("tuned/tf-default", tuned, default),
        **ratio("tuned/heuristic", tuned, heuristic),
        "best recipe": None if recipe is None else recipe[0],
        "best recipe images/sec": None if recipe is None else _rate(recipe[1]),
        **ratio("tuned/best recipe", tuned, None if recipe is None else recipe[1]),
        **shares(DEFAULT, default),
        **shares(HEURISTIC, heuristic),
        **shares(TUNED, tuned),
        "tuned settings": None if tuned is None else tuned["settings_text"],
        "rounds": None if main is None else main["rounds"],
        "warm-up batches": None if main is None else main["warmup"],
        "timed batches": None if main is None else main["timed"],
        "recommended launch": None if main is None else launch_text(main),
        "note": "; ".join(notes),
        "imported from": _origin(group.values()),
    }


def _heuristic_as(heuristic: BenchmarkRecord | None, not_run: Mapping[str, str]) -> str | None:
    """What the heuristic column holds: the record measured (the heuristic, or its NHWC part), or why none
    was: not runnable here, or failed. None where it was not asked for."""
    if heuristic is not None:
        return heuristic["label"]
    if HEURISTIC not in not_run:
        return None
    return NOT_RUNNABLE if not_run[HEURISTIC].startswith(NOT_RUNNABLE) else "failed"


def _target(r: BenchmarkRecord, runtime: str) -> dict[str, Any]:
    """The columns that name a row's target: the reference table's, the CPU split into its name and cores."""
    return {
        "model": model_text(r),
        "runtime": runtime,
        "CPU": r.get("cpu", {}).get("model_name"),
        "cores": r["cores"],
        "memory GiB": r.get("memory_gib"),
        "GPU": r["gpus"] if r["device"] == "gpu" else 0,
        "batch size": r["global_batch"],
        "mode": MODE_NAMES.get(r["mode"], r["mode"]),
    }


def _skipped_row(r: BenchmarkRecord, note: str) -> dict[str, Any]:
    """A target with no measured setting: why, in the note (and where it came from, if imported)."""
    runtime = runtime_label(r["runtime"], {"device": r["device"]})
    return {**_target(r, runtime), "status": "skipped", "note": note, "imported from": _origin([r])}


def _origin(records: Iterable[BenchmarkRecord]) -> str | None:
    """Where the records that `tuner import` merged came from ("FILE on DAY", several joined by "; "); None
    for this storage's own. A row measured elsewhere never passes for this machine's without saying so."""
    found = sorted({(r["imported"]["file"], r["imported"]["at"][:10]) for r in records if "imported" in r})
    return "; ".join(f"{file} on {day}" for file, day in found) or None


def _sort_key(key: tuple[Any, ...]) -> tuple[Any, ...]:
    cpu_id, runtime, device, cores, gpus, replicas, model, batch, mode, objective = key
    order = {"tensorflow-eigen": 0, "tensorflow": 1, "intel-tensorflow": 2}
    return (
        str(cpu_id),
        device != "cpu",
        order.get(runtime, 9),
        str(runtime),
        cores or 0,
        gpus or 0,
        replicas or 0,
        str(model),
        batch or 0,
        mode != "train",
        str(objective),
    )


def check_format(fmt: str) -> None:
    check_choice("--format", fmt, FORMATS)


def _csv_cell(value: Any) -> Any:
    """A text cell a spreadsheet would run as a formula (``=``, ``+``, ``-``, ``@`` first, not a number)
    gets a leading ``'``: stored text from another machine is data, never a formula."""
    if isinstance(value, str) and value[:1] in ("=", "+", "-", "@") and not _NUMBER.fullmatch(value):
        return "'" + value
    return value


def render(frame: pd.DataFrame, notes: Sequence[str], fmt: str, wide: bool = False) -> str:
    """``frame`` as csv or json (the data, every column), html (every column) or markdown (the essential
    columns within ``layout.WIDTH``, or with ``wide`` every column), with the notes under it."""
    check_format(fmt)
    # Stored text (CPU names, notes) may come from another machine: each cell and note one printable line.
    frame = frame.map(lambda value: one_line(value, 500) if isinstance(value, str) else value)
    notes = [one_line(note, 500) for note in notes]
    if fmt == "csv":
        return str(frame.map(_csv_cell).to_csv(index=False)).rstrip("\n")
    if fmt == "json":
        return json.dumps({"rows": records_of(frame), "notes": notes}, indent=2)
    if frame.empty:
        return EMPTY + "".join(f"\n- {_markdown(note)}" for note in notes)
    view = pd.DataFrame([_view_row(row, wide or fmt == "html") for _, row in frame.iterrows()])
    if "imported from" in view and not view["imported from"].astype(bool).any():
        view = view.drop(columns="imported from")  # every row measured here: no empty column to read
    if fmt == "html":
        items = "".join(f"<li>{_escape(note)}</li>" for note in notes)
        return str(view.to_html(index=False, escape=True)) + (f"\n<ul>{items}</ul>" if notes else "")
    # A "|" in stored text would end its cell, and a "<" could open raw HTML where the markdown is rendered:
    # both escaped, as markdown reads them, before the narrow view is cut to width, so that the escapes count.
    view = view.map(lambda value: _cell(value) if isinstance(value, str) else value)
    if wide:
        text = _markdown_table(view)
    else:
        # One model and one machine in every row: said once under the table. Several: a table for each, under
        # a line naming it (the narrow view has no model or CPU column: rows of two machines would read alike).
        # Either way the model's width is left to the runtime, and no model name is cut.
        models, machines = _model_lines(frame), _cpu_lines(frame)
        notes = [
            *models,
            *(machines if len(machines) == 1 else []),
            *_imported_lines(frame),
            *_tag_lines(frame),
            *notes,
        ]
        heads = [
            ", ".join(([] if models else [f"model: {model}"]) + ([] if len(machines) == 1 else [_cell(machine)]))
            for model, machine in zip(view["model"], _machines(frame), strict=True)
        ]
        sections = []
        for head in dict.fromkeys(heads):
            part = view[[h == head for h in heads]].drop(columns="model")
            heading = "\n".join(_markdown_lines(head)) + "\n\n" if head else ""
            sections.append(heading + _markdown_table(_narrow(part)))
        text = "\n\n".join(sections)
    notes = [_cell(note) for note in notes]
    legend = [LEGEND_WIDE if wide else LEGEND, *(f"- {note}" for note in notes)]
    return text + "\n\n" + "\n".join(line for part in legend for line in _markdown_lines(part))


def _markdown_table(view: pd.DataFrame) -> str:
    return str(view.to_markdown(index=False, disable_numparse=True))


LEGEND = (
    "images/sec (ms/image): of the recommended settings (what the confirmed verdict chose: tf-default unless "
    "another clearly won), timed batches x batch size / wall time of the timed loop (tf_cnn_benchmarks); "
    "ms/image is its inverse. tuned/tf-default: the ratio of those two settings' images/sec, tuned being the "
    "best of the n settings the search sampled and measured (best of n). --wide: every "
    "column (speedups with 95% intervals, GFLOP/s, settings, launch); --format csv or json: the data."
)
LEGEND_WIDE = (
    "images/sec: timed batches x batch size / wall time of the timed loop (tf_cnn_benchmarks), in every column; "
    "ms/image is its inverse, as the reference table prints it; tuned/tf-default is the ratio of two of them. "
    "tuned: the best of the n settings the search sampled and measured (best of n). "
    f"Speedups ({STATISTIC}): the verdict's statistic, the ratio of pooled per-step medians, with a 95% paired "
    "bootstrap interval where measured interleaved in rounds. GFLOP/s: images/sec x FLOPs per image; % of the "
    "matmul peak on the same cores. Timed batches: rounds x (warm-up + timed)."
)
NARROW = ("model", "runtime", "device", "mode", "images/sec (ms/image)", "recommended", "tuned/tf-default")


def records_of(frame: pd.DataFrame) -> list[dict[str, Any]]:
    """The rows as plain JSON values: numbers, text, or None where missing."""

    def plain(value: Any) -> Any:
        if value is None or value is pd.NA or (isinstance(value, float) and value != value):
            return None
        return value.item() if hasattr(value, "item") else value

    return [{str(name): plain(value) for name, value in row.items()} for row in frame.to_dict(orient="records")]


def _missing(value: Any) -> bool:
    return value is None or bool(pd.isna(value))


def _fixed(value: Any, digits: int = 2, unit: str = "") -> str:
    return "-" if _missing(value) else f"{value:.{digits}f}{unit}"


def _times(row: pd.Series, name: str) -> str:
    """'1.25x [1.20, 1.31]', '1.25x' without an interval, '-' without a value."""
    value, low, high = (row[column] for column in RATIOS[name])
    if _missing(value):
        return "-"
    return f"{value:.2f}x" + ("" if _missing(low) else f" [{low:.2f}, {high:.2f}]")


# The narrow view's tags for EXTRA_KNOBS, after "best of n", as the studies' names mark them; a note under the
# table says what each means.
TAGS = {"batch": "+batch", "onednn_isa": "+isa"}
FLAGS = {"batch": "--search-batch", "onednn_isa": "--search-isa"}


def _searched(row: pd.Series) -> list[str]:
    """The EXTRA_KNOBS the study of the row's tuned figure searched (stored text: only the known names)."""
    if _missing(row["tuned images/sec"]) or _missing(row["tuned searched"]):
        return []
    return [knob for knob in row["tuned searched"].split(", ") if knob in EXTRA_KNOBS]


def _best_of(row: pd.Series, short: bool = False) -> str:
    """' (best of n)' after a tuned figure: of how many sampled settings it is the best (one or two is hardly
    a search: a short budget), and ', ISA cap searched' (``short``: ', +isa') where its study searched knobs
    beside the runtime's (--search-isa, --search-batch: not the plain study's figure); empty where there is
    nothing to say."""
    if _missing(row["tuned images/sec"]):
        return ""
    count = row["sampled settings"]
    said = [] if _missing(count) or count < 1 else [f"best of {count}"]
    said += [(TAGS if short else EXTRA_KNOBS)[knob] for knob in _searched(row)]
    return f" ({', '.join(said)})" if said else ""


def _tag_lines(frame: pd.DataFrame) -> list[str]:
    """What the narrow view's tags mean, for those its rows have."""
    found = {knob for _, row in frame.iterrows() for knob in _searched(row)}
    return [
        f"{TAGS[knob]}: {EXTRA_KNOBS[knob]}, the tuned figure is from a {FLAGS[knob]} study"
        for knob in EXTRA_KNOBS
        if knob in found
    ]


def _interval(name: str) -> str:
    return f"{name} ({STATISTIC}, 95% CI)"


def _view_row(row: pd.Series, wide: bool) -> dict[str, str]:
    """One data row as people read it: every column (``wide``) or the ``NARROW`` ones."""
    measured = row["status"] != "skipped"
    heuristic = row["heuristic measured as"]
    if not _missing(row["heuristic images/sec"]):
        heuristic = _fixed(row["heuristic images/sec"]) + (" (NHWC)" if heuristic == HEURISTIC_NHWC else "")
    elif _missing(heuristic):
        heuristic = "-"
    loop_ratio = row["tuned images/sec"] / row["tf-default images/sec"] if measured else None
    gpus = int(row["GPU"])
    view = {
        "model": row["model"],
        "runtime": row["runtime"],
        "CPU": f"{cores_text(int(row['cores']))} ({'?' if _missing(row['CPU']) else row['CPU']})",
        "device": _device(row),
        "memory": _fixed(row["memory GiB"], 0, "G"),
        "GPU": str(gpus),
        "batch size": str(row["batch size"]),
        "mode": row["mode"],
        "images/sec (ms/image)": "skipped"
        if not measured
        else "-"
        if _missing(row["images/sec"])
        else f"{row['images/sec']:.2f} ({row['ms/image']:.2f}ms)",
        "p50 / p99 ms per batch": "-" if _missing(row["p50 ms"]) else f"{row['p50 ms']:.2f} / {_fixed(row['p99 ms'])}",
        "tf-default": _fixed(row["tf-default images/sec"]),
        "heuristic": heuristic,
        "onednn-on": _fixed(row["onednn-on images/sec"]),
        "tuned": _fixed(row["tuned images/sec"]) + _best_of(row),
        "tuned/tf-default": _fixed(loop_ratio, unit="x") + ("" if wide else _best_of(row, True)),
        **{_interval(name): _times(row, name) for name in ("tuned/tf-default", "tuned/heuristic")},
        "best recipe": "-"
        if _missing(row["best recipe"])
        else f"{row['best recipe']} {_fixed(row['best recipe images/sec'])}",
        _interval("tuned/best recipe"): _times(row, "tuned/best recipe"),
        **{
            f"GFLOP/s {name} (% peak)": "-"
            if _missing(row[f"{name} GFLOP/s"])
            else f"{row[f'{name} GFLOP/s']:.0f} ({row[f'{name} % peak']:.0f}%)"
            for name in (DEFAULT, HEURISTIC, TUNED)
        },
        "tuned settings": "-" if _missing(row["tuned settings"]) else row["tuned settings"],
        "timed batches": "-"
        if _missing(row["rounds"])
        else f"{row['rounds']}x({row['warm-up batches']}+{row['timed batches']})",
        "recommended": "-" if _missing(row["recommended"]) else row["recommended"],
        "recommended launch": "-" if _missing(row["recommended launch"]) else row["recommended launch"],
        "note": "" if _missing(row["note"]) else row["note"],
        "imported from": "" if _missing(row["imported from"]) else row["imported from"],
    }
    return {name: view[name] for name in NARROW} if not wide else {k: v for k, v in view.items() if k != "device"}


def _narrow(view: pd.DataFrame) -> pd.DataFrame:
    """The narrow view cut to ``layout.WIDTH`` as markdown prints it (cells padded to their header plus two,
    three characters between columns): the longest of model, runtime and recommended give way first, a
    runtime keeping its ``[name]`` (``_shorten_runtime``)."""
    rows = [[f"{name}  " for name in view.columns], *view.astype(str).values.tolist()]
    names = list(view.columns)
    shrink = [names.index(name) for name in ("model", "runtime", "mode", "recommended") if name in names]
    # The runtime gives way no further than its longest [name] and a letter of the label before it (a name
    # is a runtime's, short; a stored one of any length would not hold the width).
    kept = [len(found[2]) + KEPT_LETTERS for cell in view["runtime"] if (found := _RUNTIME_NAME.fullmatch(cell))]
    floors = {names.index("runtime"): min(max(kept, default=0), WIDTH // 5)}
    widths = fit(rows, WIDTH, 3 * len(view.columns) + 1, shrink, floors)
    cells = view.astype(str)
    for name, size in zip(view.columns, widths, strict=True):
        cut = _shorten_runtime if name == "runtime" else shorten
        cells[name] = cells[name].map(lambda cell, size=size, cut=cut: cut(cell, size))
    return cells


_RUNTIME_NAME = re.compile(r"(.+)( \[[^\[\]]+\])")  # "CPU (no optimisation) [tensorflow]"
KEPT_LETTERS = len(CUT) + 1  # of a cut runtime label before its [name]: "C... [tensorflow]" at least


def _shorten_runtime(cell: str, size: int) -> str:
    """A runtime label cut to ``size``, its ``[name]`` kept where the read-back differs from the runtime's
    label (stock TensorFlow with oneDNN off, beside plain Eigen's 'CPU (no optimisation)'): that name is
    what tells the two rows apart, so the words before it give way."""
    found = _RUNTIME_NAME.fullmatch(cell)
    if len(cell) <= size or found is None or size - len(found[2]) < KEPT_LETTERS:
        return shorten(cell, size)
    return shorten(found[1], size - len(found[2])) + found[2]


def _model_lines(frame: pd.DataFrame) -> list[str]:
    """The model, where every row has the same one: a line under the narrow view instead of a column."""
    if "model" not in frame or frame.empty or frame["model"].nunique(dropna=False) != 1:
        return []
    return [f"model: {frame['model'].iloc[0]} (every row)"]


def _machines(frame: pd.DataFrame) -> list[str]:
    """Each row's CPU and memory, as the narrow view names a machine: 'CPU: AMD EPYC, memory 24G'."""
    pairs = frame[["CPU", "memory GiB"]].itertuples(index=False)
    return [f"CPU: {'?' if _missing(cpu) else cpu}, memory {_fixed(memory, 0, 'G')}" for cpu, memory in pairs]


def _cpu_lines(frame: pd.DataFrame) -> list[str]:
    """The CPU and memory the narrow view leaves out, once per machine."""
    return list(dict.fromkeys(_machines(frame)))


def _device(row: pd.Series) -> str:
    """What a row ran on, as the narrow view names it: its GPUs, else its cores."""
    gpus = int(row["GPU"])
    return f"{gpus} GPU{'s' if gpus > 1 else ''}" if gpus else cores_text(int(row["cores"]))


def _imported_lines(frame: pd.DataFrame) -> list[str]:
    """The rows measured elsewhere (merged by `tuner import`), which the narrow view has no note column to
    show: which row, and the file and day it came from."""
    return [
        f"{row['model']} {row['mode']} on {_device(row)} ({row['runtime']}): imported from {row['imported from']}"
        for _, row in frame.iterrows()
        if not _missing(row["imported from"])
    ]


def _cell(text: str) -> str:
    """Stored text in a markdown table's cell, or a line of text under it: ``_markdown``, and a "|" escaped
    (in a cell it would end the cell; in a line, with a line of dashes after it, start a table)."""
    return _markdown(text).replace("|", "\\|")


# What can begin a block where a wrapped line begins (after its indent): a heading, quote, code fence, table row
# or link definition; a list item ("- ", "+ ", "* ", "1. ", "1) "); a line of only "-", "*", "_" or "=" (a
# thematic break, or a setext underline that makes the line before a heading). "--wide" or "1.25x" begin none.
_BLOCK_START = re.compile(r"[#>`~|\[]|[-+*](?:\s|$)|(\d{1,9})[.)](?:\s|$)|[-*_=][-*_= ]*$")


def _markdown_lines(text: str) -> list[str]:
    """``text`` (already ``_cell``) wrapped to ``layout.WIDTH`` for a markdown view, each line after the first
    unable to begin a block: stored text that a wrap puts at the start of a line ("# ...", a code fence, "1. ")
    would make a heading, swallow the tables after it, or start a list; a backslash before its first
    character (after an ordered item's digits) keeps it text. Words are never broken: a break inside an
    escape ("\\<") would end a line on its backslash and leave the "<" unescaped."""
    lines = wrap(text, more="  ", break_words=False)
    safe = lines[:1]
    for line in lines[1:]:
        body = line.lstrip(" ")
        pad = line[: len(line) - len(body)]
        found = _BLOCK_START.match(body)
        if found is not None:
            digits = len(found[1] or "")
            body = f"{body[:digits]}\\{body[digits:]}"
        safe.append(pad + body)
    return safe


def _markdown(text: str) -> str:
    """Stored text as markdown text, never raw HTML, a link or an image: "<" backslash-escaped (CommonMark),
    and the "(" of every "](" (an inline link or image, which a pasted table would fetch or show as
    anyone's link; "[1.00, 1.20]" stays as it is); a backslash itself first, so that a stored one cannot
    cancel an escape ("\\<" would open a tag again)."""
    return text.replace("\\", "\\\\").replace("<", "\\<").replace("](", "]\\(")


def _escape(text: str) -> str:
    return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")
