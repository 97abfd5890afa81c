"""The reference table, rebuilt from stored benchmark records (never measured here), through pandas.

One row per target (runtime, CPU and core count or GPUs, model, mode, batch size), with the reference
table's columns first: runtime, CPU, memory, GPU, batch size, mode, images/sec (ms/image) with the
recommended settings. Then tf-default, heuristic and tuned images/sec side by side, the tuned speedups
(with a 95% interval where they were measured interleaved in rounds), the achieved GFLOP/s as a share of
the matmul peak on the same core set, and the tuned settings.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import pandas as pd

from tuner.capability import NOT_RUNNABLE
from tuner.confirm import DEFAULT, HEURISTIC, TUNED, bootstrap_ratio
from tuner.errors import InvalidSettings, check_choice
from tuner.records import BenchmarkRecord
from tuner.runtime import load as load_runtime
from tuner.runtime import names as runtime_names
from tuner.sanitize import one_line
from tuner.settings import Settings
from tuner.topology import cores_text

FORMATS = ("markdown", "csv", "html")
HEURISTIC_NHWC = f"{HEURISTIC}-nhwc"  # the heuristic's runnable part where NCHW cannot run (tuner/capability.py)
MODE_NAMES = {"train": "train", "infer": "infer"}


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
    from what the runtime declares. Without read-back facts, the declared label."""
    declared = _declared_label(name)
    facts = facts or {}
    if facts.get("openmp"):
        found = "CPU (oneDNN on OpenMP)"
    elif facts.get("onednn") is True:
        found = "CPU (oneDNN)"
    elif facts.get("onednn") is False:
        found = "CPU (no optimisation)"
    else:
        return declared
    return found if found == declared else f"{found} [{name}]"


def _ratio(top: BenchmarkRecord | None, bottom: BenchmarkRecord | None) -> str:
    """Speedup of ``top`` over ``bottom``; with a 95% paired bootstrap interval when both were measured in
    the same interleaved run with two rounds or more, else the plain ratio."""
    if top is None or bottom is None:
        return "-"
    paired = top.get("run_id") == bottom.get("run_id") and min(top["rounds"], bottom["rounds"]) >= 2
    if not paired:
        return f"{top['images_per_sec'] / bottom['images_per_sec']:.2f}x"
    # The ratio of pooled per-step medians, the figure its interval is about (as the verdict states it).
    interval = bootstrap_ratio(top["round_rates"], bottom["round_rates"])
    return f"{interval.value:.2f}x [{interval.low:.2f}, {interval.high:.2f}]"


def model_text(record: BenchmarkRecord) -> str:
    """'resnet50', or 'mobilenet_v2, latency': the model, and the objective where it is not throughput."""
    objective = record.get("objective") or "throughput"
    return f"{record.get('model')}" + ("" if objective == "throughput" else f", {objective}")


def _latency(record: BenchmarkRecord | None) -> str:
    """p50 / p99 of the timed steps' times (a step is one request of the batch); p99 needs 100 steps."""
    if record is None or record.get("p50_ms") is None:
        return "-"
    p99 = record.get("p99_ms")
    return f"{record['p50_ms']:.2f} / {'-' if p99 is None else f'{p99:.2f}'}"


def _rate(record: BenchmarkRecord | None) -> str:
    return "-" if record is None else f"{record['images_per_sec']:.2f}"


def _share(record: BenchmarkRecord | None, flops: dict[str, float] | None, peak: float | None) -> str:
    if record is None or not flops or not peak or record.get("device") != "cpu":
        return "-"
    achieved = record["images_per_sec"] * flops[record["mode"]] / 1e9
    return f"{achieved:.0f} ({achieved / peak:.0%})"


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
    flops = {r["model"]: r["flops_per_image"] for r in records if r.get("kind") == "flops"}
    peaks: dict[tuple[Any, Any, Any], float] = {}
    for r in records:
        if r.get("kind") == "matmul":
            key = (r.get("cpu", {}).get("id"), r.get("cores"), r.get("precision", "fp32"))
            peaks[key] = max(peaks.get(key, 0.0), float(r["peak_gflops"]))
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
        any_record = next(iter(group.values()))
        main = _recommended(group)
        tuned = group.get(TUNED)
        recipe = _best_recipe(group)
        not_run = unmeasured.get(key, {})
        # Where the reference heuristic cannot run (NCHW without oneDNN), its runnable NHWC part stands in.
        heuristic = group.get(HEURISTIC) or group.get(HEURISTIC_NHWC)
        stand_in = heuristic is not None and HEURISTIC not in group
        model = any_record["model"]

        cpu_cores = (key[0], any_record["cores"])

        def peak(record: BenchmarkRecord | None, at: tuple[Any, Any] = cpu_cores) -> float | None:
            """The yardstick in the record's own precision: a bf16 row against a bf16 matmul."""
            precision = (record or {}).get("settings", {}).get("precision", "fp32")
            return peaks.get((*at, precision))

        gpu = any_record["gpus"] if any_record["device"] == "gpu" else 0
        cpu = any_record.get("cpu", {})
        rows.append(
            {
                "model": model_text(any_record),
                "runtime": runtime_label(any_record["runtime"], group.get(DEFAULT, any_record)),
                "CPU": f"{cores_text(any_record['cores'])} ({cpu.get('model_name', '?')})",
                "memory": f"{any_record.get('memory_gib', 0):.0f}G",
                "GPU": gpu,
                "batch size": any_record["global_batch"],
                "mode": MODE_NAMES.get(any_record["mode"], any_record["mode"]),
                "images/sec (ms/image)": "-"
                if main is None
                else f"{main['images_per_sec']:.2f} ({main['ms_per_image']:.2f}ms)",
                "p50 / p99 ms per batch": _latency(main),
                "tf-default": _rate(group.get(DEFAULT)),
                "heuristic": (_rate(heuristic) + (" (NHWC)" if stand_in else ""))
                if heuristic is not None or HEURISTIC not in not_run
                else (NOT_RUNNABLE if not_run[HEURISTIC].startswith(NOT_RUNNABLE) else "failed"),
                "tuned": _rate(tuned),
                "tuned/tf-default": _ratio(tuned, group.get(DEFAULT)),
                "tuned/heuristic": _ratio(tuned, heuristic),
                "best recipe": "-" if recipe is None else f"{recipe[0]} {_rate(recipe[1])}",
                "tuned/best recipe": _ratio(tuned, None if recipe is None else recipe[1]),
                "GFLOP/s tf-default (% peak)": _share(group.get(DEFAULT), flops.get(model), peak(group.get(DEFAULT))),
                "GFLOP/s heuristic (% peak)": _share(heuristic, flops.get(model), peak(heuristic)),
                "GFLOP/s tuned (% peak)": _share(tuned, flops.get(model), peak(tuned)),
                "tuned settings": "-" if tuned is None else tuned["settings_text"],
                "timed batches": _batches(main),
                "recommended": "-" if main is None else main["label"],
                "recommended launch": launch_text(main),
                "note": "; ".join(
                    [f"{label}: {r['partial']} (interrupted)" for label, r in group.items() if "partial" in r]
                    + [f"{label}: {why}" for label, why in not_run.items()]
                ),
            }
        )
    for key in sorted(skipped, key=_sort_key):
        rows.append(_skipped_row(skipped[key], skipped[key]["skipped"]))
    notes = []
    for (cpu_id, cores, precision), top in sorted(peaks.items(), key=lambda item: (str(item[0][0]), item[0][1] or 0)):
        notes.append(
            f"matmul peak (4096x4096 {precision}, best runtime, oneDNN on where it runs) on {cores} cores of CPU "
            f"{cpu_id}: {top:.0f} GFLOP/s"
        )
    for model, counted in sorted(flops.items()):
        train = f", {counted['train'] / 1e9:.3g} for a training step" if "train" in counted else ""
        notes.append(f"{model}: {counted['infer'] / 1e9:.3g} GFLOP per sample for inference{train} (from the graphs)")
    return pd.DataFrame(rows).fillna("-"), notes


def _skipped_row(r: BenchmarkRecord, note: str) -> dict[str, Any]:
    """A target with no measured setting: why, in the note."""
    return {
        "model": model_text(r),
        "runtime": f"GPU ({r['runtime']})" if r["device"] == "gpu" else runtime_label(r["runtime"]),
        "CPU": f"{cores_text(r['cores'])} ({r.get('cpu', {}).get('model_name', '?')})",
        "memory": f"{r.get('memory_gib', 0):.0f}G",
        "GPU": r["gpus"],
        "batch size": r["global_batch"],
        "mode": MODE_NAMES.get(r["mode"], r["mode"]),
        "images/sec (ms/image)": "skipped",
        "note": note,
    }


def _batches(record: BenchmarkRecord | None) -> str:
    if record is None:
        return "-"
    return f"{record['rounds']}x({record['warmup']}+{record['timed']})"


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


def render(frame: pd.DataFrame, notes: Sequence[str], fmt: str) -> str:
    check_format(fmt)
    # Stored text (CPU names, notes) may come from another machine: each cell and note one printable line.
    frame = frame.map(lambda value: one_line(value, 500) if isinstance(value, str) else value)
    notes = [one_line(note, 500) for note in notes]
    if frame.empty:
        return "no benchmark results stored yet (run: tuner run, or tuner benchmark)" + "".join(
            f"\n- {note}" for note in notes
        )
    if fmt == "csv":
        return str(frame.to_csv(index=False)).rstrip("\n")
    if fmt == "html":
        items = "".join(f"<li>{_escape(note)}</li>" for note in notes)
        return str(frame.to_html(index=False, escape=True)) + (f"\n<ul>{items}</ul>" if notes else "")
    text = str(frame.to_markdown(index=False))
    legend = (
        "\nimages/sec: timed batches x batch size / wall time of the timed loop (tf_cnn_benchmarks); ms/image "
        "is its inverse, as the reference table prints it. Speedups: 95% paired bootstrap interval where "
        "measured interleaved in rounds. GFLOP/s: images/sec x FLOPs per image; % of the matmul peak on the "
        "same cores. Timed batches: rounds x (warm-up + timed)."
    )
    return text + "\n" + legend + "".join(f"\n- {note}" for note in notes)


def _escape(text: str) -> str:
    return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")
