"""The reference table rebuilt from stored records (tuner/table.py): columns, pairing, latest records, formats."""

from __future__ import annotations

import io
import json
import re

import pandas as pd
import pytest

from tuner import table
from tuner.benchmark import Target, make_record, skip_record
from tuner.errors import UsageError
from tuner.layout import WIDTH
from tuner.measurement import Measurement
from tuner.settings import Settings
from tuner.signature import cpu_signature
from tuner.workload import Workload

SIGNATURE = cpu_signature()
TARGET = Target("tensorflow", Workload("resnet50", "infer", 32), (0, 1))


def run(step: float, timed: int = 4, loop: float = 0.0, batch: int = 32) -> Measurement:
    return Measurement(batch, (step,) * timed, (step * 2,), {"framework_version": "2.21.0"}, 0.0, loop)


def _group(run_id: str = "r1", rounds: int = 3, recommended: str = "tf-default") -> list[dict[str, object]]:
    def rec(label: str, step: float, settings: Settings) -> dict[str, object]:
        runs = [run(step) for _ in range(rounds)]
        extra = {"recommended": recommended}
        return make_record(TARGET, label, settings, runs, SIGNATURE, run_id, extra)

    return [
        rec("tf-default", 0.5, Settings()),
        rec("heuristic", 0.6, Settings(intra_op=2, inter_op=1, data_format="NCHW")),
        rec("tuned", 0.4, Settings(intra_op=2, inter_op=2)),
    ]


def _yardsticks() -> list[dict[str, object]]:
    cpu = {"cpu": SIGNATURE.to_dict()}
    return [
        {"kind": "flops", "model": "resnet50", "flops_per_image": {"infer": 8e9, "train": 24e9}},
        {"kind": "matmul", "runtime": "tensorflow", "cores": 2, "peak_gflops": 500.0, **cpu},
        {"kind": "matmul", "runtime": "tensorflow-eigen", "cores": 2, "peak_gflops": 1000.0, **cpu},
    ]


def test_table_has_the_reference_columns_then_defaults_heuristic_tuned_and_efficiency() -> None:
    frame, notes = table.build([*_group(), *_yardsticks()])
    row = frame.iloc[0]
    # The model (with the objective where it is not throughput) names the row, then the reference table's
    # columns come, in its order, the CPU split into its name and its core count (numbers stay numbers).
    assert list(frame.columns[:8]) == ["model", "runtime", "CPU", "cores", "memory GiB", "GPU", "batch size", "mode"]
    assert row["runtime"] == "CPU (oneDNN)" and row["GPU"] == 0 and row["batch size"] == 32 and row["cores"] == 2
    # 4 x 32 images in 4 x 0.5 s = 64 img/s for tf-default; tuned ran 0.4 s steps, so 80 img/s.
    assert row["tf-default images/sec"] == pytest.approx(64.0) and row["tuned images/sec"] == pytest.approx(80.0)
    # The main figure is what the verdict recommends (tf-default here), with ms per image beside it.
    assert row["recommended"] == "tf-default" and row["images/sec"] == pytest.approx(64.0)
    assert row["ms/image"] == pytest.approx(15.625)
    # Measured interleaved in 3 rounds: the speedup carries a 95% interval, in three numeric columns.
    ratio = [row[column] for column in table.RATIOS["tuned/tf-default"]]
    assert ratio == pytest.approx([1.25, 1.25, 1.25])
    # Efficiency against the best matmul peak on those cores (1000 GFLOP/s): 80 img/s x 8 GFLOP = 640, 64%.
    assert row["tuned GFLOP/s"] == pytest.approx(640.0) and row["tuned % peak"] == pytest.approx(64.0)
    assert row["tuned settings"] == Settings(intra_op=2, inter_op=2).label()
    # Notes name the yardsticks.
    assert any("1000 GFLOP/s" in note for note in notes) and any("8 GFLOP per sample" in note for note in notes)
    wide = table.render(frame, notes, "markdown", wide=True)
    # The wide view writes the same figures as people read them.
    assert "64.00 (15.62ms)" in wide and "1.25x [1.25, 1.25]" in wide and "640 (64%)" in wide


def test_table_recommends_tuned_only_when_the_verdict_did_and_pairs_only_one_run() -> None:
    frame, _ = table.build([*_group(recommended="tuned")])
    # A confirmed win: the main column is the tuned figure.
    assert frame.iloc[0]["recommended"] == "tuned" and frame.iloc[0]["images/sec"] == pytest.approx(80.0)
    frame, _ = table.build([*_group(recommended="heuristic")])
    # A baseline that clearly won is shown as such (32 images in 0.6 s steps: 53.33 img/s).
    assert frame.iloc[0]["recommended"] == "heuristic"
    assert frame.iloc[0]["images/sec"] == pytest.approx(53.333, abs=0.001)
    records = _group(rounds=1)
    records[2]["run_id"] = "another run"
    frame, _ = table.build(records)
    value, low, high = (frame.iloc[0][column] for column in table.RATIOS["tuned/tf-default"])
    # Measured in different runs (or one round): a plain ratio, and no interval that would pretend pairing.
    assert value == pytest.approx(1.25) and pd.isna(low) and pd.isna(high)
    records = _group()
    records[2]["round_rates"][1] = []  # type: ignore[index]  # a crafted record: one round of no steps
    frame, _ = table.build(records)
    value, low, high = (frame.iloc[0][column] for column in table.RATIOS["tuned/tf-default"])
    # Its pair is left out of the bootstrap, and the other two rounds still give an interval around 1.25.
    assert value == pytest.approx(1.25) and low <= value <= high


def test_table_keeps_the_latest_record_and_lists_skipped_targets() -> None:
    old, new = _group()[0], _group()[0]
    old["measured"], new["measured"] = "2026-01-01T00:00:00+00:00", "2026-02-01T00:00:00+00:00"
    new["images_per_sec"] = 99.0
    gpu = Target("tensorflow", Workload("resnet50", "train", 64), (0, 1), "gpu", 1)
    frame, _ = table.build([new, old, skip_record(gpu, "no GPU visible", SIGNATURE)])
    # One row per target; the later measurement wins whatever the storage order.
    assert len(frame) == 2 and frame.iloc[0]["tf-default images/sec"] == 99.0
    # The skipped GPU target is a row of its own that says so and why (so CSV keeps the reason too), its
    # figures missing rather than made up.
    skipped = frame.iloc[1]
    assert skipped["GPU"] == 1 and skipped["status"] == "skipped" and pd.isna(skipped["images/sec"])
    assert skipped["note"] == "no GPU visible" and skipped["runtime"].startswith("GPU")
    # The markdown view says "skipped" where the figure would be.
    assert "| skipped " in table.render(frame, [], "markdown")


def test_table_renders_markdown_csv_html_and_json_and_refuses_other_formats() -> None:
    frame, notes = table.build([*_group(), *_yardsticks()])
    markdown = table.render(frame, notes, "markdown")
    csv = table.render(frame, notes, "csv")
    html = table.render(frame, notes, "html")
    data = json.loads(table.render(frame, notes, "json"))
    # Each format carries the header and the figures; the markdown view names the model once under the
    # table where every row has the same one (the data formats keep the column: the model first).
    assert markdown.startswith("| runtime ") and "64.00 (15.62ms)" in markdown
    assert "- model: resnet50 (every row)" in markdown
    assert csv.splitlines()[0].startswith("model,runtime,CPU,cores,memory GiB,GPU,batch size,mode,status")
    assert "<table" in html and "<th>tuned settings</th>" in html
    # JSON: the data rows, every column, numbers as numbers, and the notes beside them.
    assert data["rows"][0]["tf-default images/sec"] == pytest.approx(64.0) and data["notes"] == notes
    assert list(data["rows"][0]) == list(table.COLUMNS)
    # The terminal's markdown keeps the essential columns within 120; --wide (and html) keep every column.
    assert "tuned settings" not in markdown and all(len(line) <= 120 for line in markdown.splitlines())
    assert "| tuned settings " in table.render(frame, notes, "markdown", wide=True)
    with pytest.raises(UsageError, match="--format"):
        table.render(frame, notes, "xlsx")
    # An empty storage says what to run rather than printing an empty table; the data formats stay data.
    empty = table.build([])[0]
    assert "tuner run" in table.render(empty, [], "markdown")
    assert table.render(empty, [], "csv").split(",")[:2] == ["model", "runtime"]
    assert json.loads(table.render(empty, [], "json")) == {"rows": [], "notes": []}


def test_launcher_recipes_get_a_best_recipe_column_and_the_launch_is_spelled_out() -> None:
    def rec(label: str, step: float, settings: Settings) -> dict[str, object]:
        runs = [run(step) for _ in range(3)]
        return make_record(TARGET, label, settings, runs, SIGNATURE, "r1", {"recommended": "tuned"})

    two = Settings.from_params({"instances": 2, "intra_op": 1, "allocator": "tcmalloc"})
    records = [
        *_group(recommended="tuned")[:2],
        rec("model-zoo", 0.45, Settings.from_params({"intra_op": 2, "inter_op": 1, "allocator": "tcmalloc"})),
        rec("openvino-small", 0.42, Settings.from_params({"instances": 2, "intra_op": 1, "inter_op": 1})),
        rec("tuned", 0.35, two),
    ]
    row = table.build(records)[0].iloc[0]
    # The fastest recipe by images/sec is OpenVINO's small-CPU rule (0.42 s steps: 76.19 img/s), and tuned is
    # compared with it on the same rounds; the recommended launch is spelled out, instances first.
    assert row["best recipe"] == "openvino-small" and row["best recipe images/sec"] == pytest.approx(76.19, abs=0.01)
    value, low, high = (row[column] for column in table.RATIOS["tuned/best recipe"])
    assert value == pytest.approx(1.2) and low <= value <= high
    assert row["recommended launch"] == "2x1 core, intra 1, inter default, tcmalloc, fp32"


def _uneven_group() -> list[dict[str, object]]:
    """tf-default steady at 0.5 s a step; tuned faster per step (0.4 s) but with one 2 s stall a round, so
    its median step says 1.25x while its timed loop is slower than tf-default's."""
    default = [run(0.5) for _ in range(3)]
    stalled = [Measurement(32, (0.4, 0.4, 0.4, 2.0), (0.8,), {}, 0.0, 3.2) for _ in range(3)]
    extra = {"recommended": "tf-default"}
    return [
        make_record(TARGET, "tf-default", Settings(), default, SIGNATURE, "r1", extra),
        make_record(TARGET, "tuned", Settings(intra_op=2, inter_op=2), stalled, SIGNATURE, "r1", extra),
    ]


def test_images_per_sec_is_the_timed_loop_rate_and_the_median_step_speedup_says_so() -> None:
    frame, notes = table.build(_uneven_group())
    row = frame.iloc[0]
    # Every images/sec is tf_cnn_benchmarks' figure: 4 x 32 images over the 3.2 s timed loop = 40 img/s for
    # tuned, not the 80 img/s of its median step.
    assert row["tuned images/sec"] == pytest.approx(40.0) and row["tf-default images/sec"] == pytest.approx(64.0)
    # The speedup with an interval is the verdict's statistic, the ratio of median steps (0.5 / 0.4), and its
    # column header names that statistic.
    assert row["tuned/tf-default (median step)"] == pytest.approx(1.25)
    wide = table.render(frame, notes, "markdown", wide=True)
    assert "tuned/tf-default (median step, 95% CI)" in wide and "1.25x [" in wide
    # The plain ratio beside the figures is of the figures themselves: 40 / 64.
    assert "| 0.62x " in table.render(frame, notes, "markdown")


RUNTIMES = ("tensorflow", "tensorflow-eigen")


def test_narrow_view_keeps_the_runtime_name_that_tells_rows_apart_and_the_model_column_where_models_differ() -> None:
    # On a CPU where stock TensorFlow leaves oneDNN off (AVX2 only), its rows read "CPU (no optimisation)
    # [tensorflow]" beside plain Eigen's "CPU (no optimisation)".
    avx2 = Measurement(32, (0.5,) * 4, (1.0,), {"onednn": False}, 0.0, 0.0)
    targets = [Target(rt, Workload("resnet50", mode, 32), (0, 1)) for rt in RUNTIMES for mode in ("train", "infer")]
    records = [
        make_record(target, name, Settings(), [avx2] * 2, SIGNATURE, "r1")
        for target in targets
        for name in ("tf-default", "tuned")
    ]
    frame, notes = table.build(records)
    lines = table.render(frame, notes, "markdown").splitlines()
    rows = [line for line in lines if line.startswith("| CPU")]
    # Every line fits the width, and the two runtimes' rows stay apart: the runtime's name is kept whole
    # where the label is cut (before, both read "CPU (no optimisatio...").
    assert max(map(len, lines)) <= WIDTH
    assert len([r for r in rows if "[tensorflow] " in r]) == 2 and len([r for r in rows if "[" not in r]) == 2
    # One model in every row: a line under the table, not a column.
    assert lines[0].startswith("| runtime ") and "- model: resnet50 (every row)" in lines
    # Two models: a table for each under a line naming it, whole (a column would cut it, "mobil..."), and
    # no model column; each runtime label keeps its [tensorflow] (or is Eigen's label whole).
    mobilenet = [r | {"model": "mobilenet_v2"} for r in records]
    frame, notes = table.build([*records, *mobilenet])
    both = table.render(frame, notes, "markdown").splitlines()
    assert both[0] == "model: mobilenet_v2" and "model: resnet50" in both and "(every row)" not in "".join(both)
    headers = [line for line in both if line.startswith("| ") and "runtime" in line]
    assert len(headers) == 2 and all(line.startswith("| runtime ") for line in headers)
    runtimes = [line.split("|")[1].strip() for line in both if line.startswith("| CPU")]
    assert len(runtimes) == 8 and len(set(runtimes)) == 2 and any(r.endswith("[tensorflow]") for r in runtimes)
    assert max(map(len, both)) <= WIDTH
    # A stored runtime name of any length (an imported file's) does not hold the narrow view past its width.
    forged = [r | {"runtime": "x" * 300} for r in records]
    frame, notes = table.build(forged)
    rows = [line for line in table.render(frame, notes, "markdown").splitlines() if line.startswith("|")]
    assert max(map(len, rows)) <= WIDTH


def test_csv_has_numeric_columns_and_empty_missing_values() -> None:
    avx2 = Measurement(32, (0.5,) * 4, (1.0,), {"onednn": False}, 0.0, 0.0)
    nhwc = make_record(TARGET, "heuristic-nhwc", Settings(intra_op=2, inter_op=1), [avx2] * 2, SIGNATURE, "r1")
    gpu = Target("tensorflow", Workload("resnet50", "train", 64), (0, 1), "gpu", 1)
    records = [
        *_group(),
        *_yardsticks(),
        nhwc | {"model": "mobilenet_v2"},
        make_record(TARGET, "tf-default", Settings(), [avx2] * 2, SIGNATURE, "r1") | {"model": "mobilenet_v2"},
        skip_record(TARGET, "not runnable here: NCHW needs oneDNN", SIGNATURE, "heuristic") | {"model": "mobilenet_v2"},
        skip_record(gpu, "no GPU visible", SIGNATURE),
    ]
    frame, notes = table.build(records)
    parsed = pd.read_csv(io.StringIO(table.render(frame, notes, "csv")))
    numeric = ["cores", "GPU", "batch size", "images/sec", "ms/image", "tf-default images/sec",
               "heuristic images/sec", "tuned images/sec", *(c for r in table.RATIOS.values() for c in r),
               "tuned GFLOP/s", "tuned % peak", "rounds", "timed batches"]  # fmt: skip
    # pandas reads every figure column as numbers: no "64.00 (15.62ms)" or "1.25x [1.25, 1.25]" strings.
    assert all(pd.api.types.is_numeric_dtype(parsed[column]) for column in numeric), parsed.dtypes
    # A missing figure is an empty cell (NaN once parsed), never "-": the skipped GPU row has none at all.
    gpu_row = parsed[parsed["status"] == "skipped"].iloc[0]
    assert gpu_row[numeric[3:]].isna().all() and gpu_row["note"] == "no GPU visible"
    # The NHWC stand-in is a number in the heuristic column, named in its own column and in the note.
    stand_in = parsed[parsed["model"] == "mobilenet_v2"].iloc[0]
    assert stand_in["heuristic images/sec"] == pytest.approx(64.0)
    assert stand_in["heuristic measured as"] == "heuristic-nhwc" and "(NHWC)" in stand_in["note"]


def test_csv_cells_a_spreadsheet_would_run_as_formulas_are_quoted() -> None:
    frame = pd.DataFrame([{"CPU": '=HYPERLINK("http://x")', "note": "@SUM(A1)", "ratio": "-", "low": "-0.5"}])
    parsed = pd.read_csv(io.StringIO(table.render(frame, [], "csv")), dtype=str)
    # Stored text from another machine opens as text: "=", "+", "-", "@" first gets a leading quote ...
    assert parsed["CPU"][0] == '\'=HYPERLINK("http://x")' and parsed["note"][0] == "'@SUM(A1)"
    assert parsed["ratio"][0] == "'-"
    # ... while a figure stays a figure.
    assert parsed["low"][0] == "-0.5"


def test_a_pipe_in_stored_text_cannot_break_a_markdown_row() -> None:
    records = _group()
    for record in records:
        record["cpu"] = {**record["cpu"], "model_name": "EPYC | forged | cells"}  # type: ignore[dict-item]
        record["model"] = "m|" * 60  # stored text the narrow view shows, long and full of pipes
    other = [r | {"model": "n|" * 60} for r in _group()]  # two models: the narrow view names each above its table
    frame, notes = table.build([*records, *other, *_yardsticks()])
    for wide in (False, True):
        lines = [
            line for line in table.render(frame, notes, "markdown", wide=wide).splitlines() if line.startswith("|")
        ]
        # Every row of the table has as many cell borders as its header: a stored "|" is escaped, not a border.
        borders = [len(re.findall(r"(?<!\\)\|", line)) for line in lines]
        assert len(set(borders)) == 1 and len(lines) >= 3
        assert wide is False or any("EPYC \\| forged \\| cells" in line for line in lines)
        # The narrow view holds its width with the escapes counted: they are added before it is cut.
        assert wide is True or max(len(line) for line in lines) <= WIDTH


def test_stored_html_is_text_in_a_markdown_table() -> None:
    records = _group()
    for record in records:
        record["cpu"] = {**record["cpu"], "model_name": "EPYC <img src=x onerror=alert(1)>"}  # type: ignore[dict-item]
        record["model"] = "m\\<script>"  # a stored backslash must not cancel the escape
    frame, notes = table.build([*records, *_yardsticks()])
    for wide in (False, True):
        text = table.render(frame, notes, "markdown", wide=wide)
        # Where the markdown is rendered (a README, a PR comment) no tag opens: every "<" is escaped, and
        # the stored backslash is a backslash, not the start of an escape.
        assert not re.search(r"(?<!\\)<", text) and "\\<img" in text
        # The model, the same in every row, is a cell of the wide view and a line under the narrow one.
        assert ("| m\\\\\\<script> |" if wide else "- model: m\\\\\\<script> (every row)") in text
    # A long model under the table, wrapped at any point: no line ends on the backslash of an escape (a hard
    # line break, which would leave the "<" after it unescaped).
    for pad in range(95, 125):
        for record in records:
            record["model"] = "x" * pad + "<script>" + " y" * 20
        frame, notes = table.build([*records, *_yardsticks()])
        text = table.render(frame, notes, "markdown")
        assert not re.search(r"(?<!\\)(\\\\)*\\$", text, re.MULTILINE), text
        assert not re.search(r"(?<!\\)<", text) and "x\\<script>" in text


def test_yardsticks_measured_here_outrank_imported_ones() -> None:
    stamp = {"imported": {"file": "forged.json", "at": "2099-01-01T00:00:00+00:00"}}
    cpu = {"cpu": SIGNATURE.to_dict()}
    # A file claims this CPU's id with a matmul peak 8 times this machine's best and a FLOP count 10 times
    # the model's: imported, either would rescale every efficiency figure of this machine's rows.
    forged = [
        {"kind": "matmul", "runtime": "tensorflow", "cores": 2, "peak_gflops": 8000.0, **cpu, **stamp},
        {"kind": "flops", "model": "resnet50", "flops_per_image": {"infer": 8e10, "train": 24e10}, **stamp},
    ]
    for order in (forged + _yardsticks(), _yardsticks() + forged):
        row = table.build([*_group(), *order])[0].iloc[0]
        # Whatever the order: 80 img/s x 8 GFLOP (the count made here) against 1000 GFLOP/s (the peak here).
        assert row["tuned GFLOP/s"] == pytest.approx(640.0) and row["tuned % peak"] == pytest.approx(64.0)
    # Where nothing was measured here, the imported yardsticks are what there is.
    row = table.build([*_group(), *forged])[0].iloc[0]
    assert row["tuned GFLOP/s"] == pytest.approx(6400.0) and row["tuned % peak"] == pytest.approx(80.0)


def test_stored_links_and_images_are_text_in_a_markdown_table() -> None:
    records = _group()
    for record in records:
        pixel = "![pixel](https://evil.example/t.png?from=you) [verify your results](https://evil.example/login)"
        record["cpu"] = {**record["cpu"], "model_name": f"EPYC {pixel}"}  # type: ignore[dict-item]
        record["model"] = "m\\](x)"  # a stored backslash must not cancel the escape
    frame, notes = table.build([*records, *_yardsticks()])
    for wide in (False, True):
        text = table.render(frame, notes, "markdown", wide=wide)
        # A pasted table (a README, an issue) would fetch the image and show the links: no "](" is left
        # unescaped, so neither is an image or a link where the markdown is rendered ...
        assert not re.search(r"\]\(", text)
        assert wide is False or "![pixel]\\(https://evil.example/t.png?from=you)" in text
        # ... and the stored backslash is a backslash, not the escape of the "(" after it.
        assert ("| m\\\\]\\(x) |" if wide else "- model: m\\\\]\\(x) (every row)") in text
    # The tool's own brackets stay as they are: the interval of a ratio is no link.
    plain, plain_notes = table.build([*_group(), *_yardsticks()])
    wide = table.render(plain, plain_notes, "markdown", wide=True)
    assert "\\[" not in wide
    # Every row was measured here: the wide view has no empty "imported from" column.
    assert "imported from" not in wide


def test_stored_html_is_text_in_the_notes_of_a_table_with_no_rows() -> None:
    flops = {"kind": "flops", "model": "m<img src=x onerror=alert(1)>", "flops_per_image": {"infer": 1e9}}
    frame, notes = table.build([flops])
    text = table.render(frame, notes, "markdown")
    # No benchmark row, only the notes: stored text there is escaped as in the table's cells.
    assert frame.empty and "m\\<img" in text and not re.search(r"(?<!\\)<", text)


def test_a_target_skipped_after_it_was_measured_keeps_its_measured_row() -> None:
    measured = _group()
    for record in measured:
        record["measured"] = "2026-01-01T00:00:00+00:00"
    later = skip_record(TARGET, "not started: the budget ran out", SIGNATURE)
    later["measured"] = "2026-02-01T00:00:00+00:00"
    frame, _ = table.build([*measured, later])
    # A later run that had no time for the target does not double its row: the measurement stands, alone.
    assert len(frame) == 1 and frame.iloc[0]["status"] != "skipped"


def test_the_onednn_on_point_has_its_column_where_it_was_measured() -> None:
    # On a CPU where TensorFlow leaves oneDNN off (AVX2 only), the stock space measures oneDNN forced on as
    # its own baseline: the table shows it beside tf-default (--wide and the data formats).
    forced = Settings.from_params({"onednn": True})
    on = make_record(TARGET, "onednn-on", forced, [run(0.25) for _ in range(3)], SIGNATURE, "r1")
    frame, notes = table.build([*_group(), on])
    assert frame.iloc[0]["onednn-on images/sec"] == pytest.approx(128.0)
    assert "| onednn-on " in table.render(frame, notes, "markdown", wide=True)
    # Where it was not measured (oneDNN on by default: it is tf-default itself), it is missing, not made up.
    frame, _ = table.build(_group())
    assert pd.isna(frame.iloc[0]["onednn-on images/sec"])


def test_tuned_says_of_how_many_sampled_settings_it_is_the_best() -> None:
    records = _group()
    records[2]["sampled"] = 1  # the search had room for one sampled setting (a short budget)
    frame, notes = table.build(records)
    # The count is data (an integer column), and each view prints it beside the tuned figure: 1.25x from one
    # sampled setting is no search result, and a reader must see that rather than take it for tuning's best.
    assert frame.iloc[0]["sampled settings"] == 1
    assert "1.25x (best of 1)" in table.render(frame, notes, "markdown")
    assert "80.00 (best of 1)" in table.render(frame, notes, "markdown", wide=True)
    assert json.loads(table.render(frame, notes, "json"))["rows"][0]["sampled settings"] == 1
    # A record stored before the count was kept (or by tuner benchmark --settings with no study): no count,
    # and no "(best of" made up.
    frame, notes = table.build(_group())
    assert pd.isna(frame.iloc[0]["sampled settings"])
    views = table.render(frame, notes, "markdown") + table.render(frame, notes, "markdown", wide=True)
    assert re.search(r"\(best of \d", views) is None


def test_a_tuned_figure_from_a_study_that_searched_more_says_so() -> None:
    records = _group()
    records[2]["sampled"] = 12
    records[2]["searched"] = ["onednn_isa"]  # from a --search-isa study: not what the plain space can reach
    frame, notes = table.build(records)
    # The data holds the knob names; each view names them beside the count, as show's mode column does.
    assert frame.iloc[0]["tuned searched"] == "onednn_isa"
    assert "80.00 (best of 12, ISA cap searched)" in table.render(frame, notes, "markdown", wide=True)
    # The narrow view tags it as the study's name does, and says under the table what the tag means.
    narrow = table.render(frame, notes, "markdown")
    assert "1.25x (best of 12, +isa)" in narrow
    assert "- +isa: ISA cap searched, the tuned figure is from a --search-isa study" in narrow.splitlines()
    # Without a tf-default figure there is no ratio, but the tag is still there for the note to explain.
    frame, notes = table.build(records[1:])
    narrow = table.render(frame, notes, "markdown")
    assert "- (best of 12, +isa)" in narrow and "- +isa: ISA cap searched" in narrow
    assert "(best of 12, ISA cap searched)" in table.render(frame, notes, "html")
    assert json.loads(table.render(frame, notes, "json"))["rows"][0]["tuned searched"] == "onednn_isa"
    # A plain study's tuned record (searched empty, or stored before the field existed) says nothing more.
    records[2]["searched"] = []
    frame, notes = table.build(records)
    assert pd.isna(frame.iloc[0]["tuned searched"])
    assert "searched" not in table.render(frame, notes, "markdown", wide=True).split("\n", 2)[2]
    assert "+isa" not in table.render(frame, notes, "markdown")


def test_rows_of_two_machines_get_a_table_each_in_the_narrow_view() -> None:
    # An imported study from another machine beside this one's: same model, runtime, cores and mode.
    other = [r | {"cpu": {**r["cpu"], "id": "other", "model_name": "Xeon <b>"}, "memory_gib": 64.0} for r in _group()]
    frame, notes = table.build([*_group(), *other])
    lines = table.render(frame, notes, "markdown").splitlines()
    # The narrow view has no CPU column: a table for each machine, under a line naming it (stored text,
    # escaped), so that the two rows cannot be taken for each other. The model, the same for both, stays a
    # line under them.
    here = _group()[0]
    mine = table._markdown(f"CPU: {here['cpu']['model_name']}, memory {here['memory_gib']:.0f}G")
    heads = [line for line in lines if line.startswith("CPU: ")]
    assert sorted(heads) == sorted([mine, "CPU: Xeon \\<b>, memory 64G"])
    assert len([line for line in lines if line.startswith("| runtime ")]) == 2
    assert "- model: resnet50 (every row)" in lines and not [line for line in lines if line.startswith("- CPU")]
    # One machine: no heading, the machine a line under the table as before.
    frame, notes = table.build(_group())
    lines = table.render(frame, notes, "markdown").splitlines()
    assert lines[0].startswith("| runtime ") and any(line.startswith("- CPU: ") for line in lines)


FORGED_BLOCKS = ["# FAKE HEADING: all rows verified", "``` z z", "1. a list", "> quoted", "- an item"]


@pytest.mark.parametrize("forged", FORGED_BLOCKS)
def test_stored_text_wrapped_onto_a_new_line_cannot_begin_a_markdown_block(forged: str) -> None:
    # Stored text long enough that the wrap puts its end at the start of a line: in a machine's heading
    # (two machines) and in a note under the table.
    name = "word " * 23 + forged
    other = [r | {"cpu": {**r["cpu"], "id": "other", "model_name": name}} for r in _group()]
    noted = make_record(TARGET, "heuristic", Settings(), [run(0.5)], SIGNATURE, "r1") | {"partial": name}
    frame, notes = table.build([*_group(), *other, noted])
    text = table.render(frame, notes, "markdown")
    starts = [line.lstrip(" ") for line in text.splitlines() if not line.startswith("|")]
    # Where it lands at the start of a line it is escaped: no heading, code fence (which would swallow the
    # tables after it), list or quote begins there; the text itself is all there, as text.
    first = forged[:3]
    assert [line for line in starts if line.startswith(first)] == []
    assert any(line.startswith("\\" + first[0]) or line.startswith("1\\.") for line in starts)
    assert len([line for line in text.splitlines() if line.startswith("| runtime ")]) == 2


def test_figures_computed_from_extreme_imported_ones_never_overflow_to_infinity() -> None:
    records = _group()
    # Each figure finite, as check_record asks, but their ratio and product past float's range.
    records[0] |= {"images_per_sec": 1e-300, "round_rates": [[1e-300] * 4] * 3}
    records[2] |= {"images_per_sec": 1e300, "round_rates": [[1e300] * 4] * 3}
    yardsticks = _yardsticks()
    yardsticks[0]["flops_per_image"] = {"infer": 1e300, "train": 1e300}
    yardsticks[1]["peak_gflops"] = 1e-300
    frame, notes = table.build([*records, *yardsticks])
    row = json.loads(table.render(frame, notes, "json"))["rows"][0]
    # What overflowed is missing (null), never Infinity, which JSON has not; every view still renders.
    assert row["tuned/tf-default (median step)"] is None and row["tuned GFLOP/s"] is None
    assert "Infinity" not in table.render(frame, notes, "json")
    assert all(table.render(frame, notes, fmt) for fmt in table.FORMATS)
