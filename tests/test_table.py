"""The reference table rebuilt from stored records (tuner/table.py): columns, pairing, latest records, formats."""

from __future__ import annotations

import pytest

from tuner import table
from tuner.benchmark import Target, make_record, skip_record
from tuner.errors import UsageError
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
    # columns come, in its order.
    assert list(frame.columns[:8]) == [
        "model",
        "runtime",
        "CPU",
        "memory",
        "GPU",
        "batch size",
        "mode",
        "images/sec (ms/image)",
    ]
    assert row["runtime"] == "CPU (oneDNN)" and row["GPU"] == 0 and row["batch size"] == 32
    # 4 x 32 images in 4 x 0.5 s = 64 img/s for tf-default; tuned ran 0.4 s steps, so 80 img/s.
    assert row["tf-default"] == "64.00" and row["tuned"] == "80.00"
    # The main column shows what the verdict recommends (tf-default here), with ms per image.
    assert row["images/sec (ms/image)"] == "64.00 (15.62ms)" and row["recommended"] == "tf-default"
    # Measured interleaved in 3 rounds: the speedup carries a 95% interval.
    assert row["tuned/tf-default"] == "1.25x [1.25, 1.25]"
    # Efficiency against the best matmul peak on those cores (1000 GFLOP/s): 80 img/s x 8 GFLOP = 640.
    assert row["GFLOP/s tuned (% peak)"] == "640 (64%)"
    assert row["tuned settings"] == Settings(intra_op=2, inter_op=2).label()
    # Notes name the yardsticks.
    assert any("1000 GFLOP/s" in note for note in notes) and any("8 GFLOP per sample" in note for note in notes)


def test_table_recommends_tuned_only_when_the_verdict_did_and_pairs_only_one_run() -> None:
    frame, _ = table.build([*_group(recommended="tuned")])
    # A confirmed win: the main column is the tuned figure.
    assert frame.iloc[0]["recommended"] == "tuned" and frame.iloc[0]["images/sec (ms/image)"].startswith("80.00")
    frame, _ = table.build([*_group(recommended="heuristic")])
    # A baseline that clearly won is shown as such (32 images in 0.6 s steps: 53.33 img/s).
    assert frame.iloc[0]["recommended"] == "heuristic"
    assert frame.iloc[0]["images/sec (ms/image)"].startswith("53.33")
    records = _group(rounds=1)
    records[2]["run_id"] = "another run"
    frame, _ = table.build(records)
    # Measured in different runs (or one round): a plain ratio, no interval that would pretend pairing.
    assert frame.iloc[0]["tuned/tf-default"] == "1.25x"


def test_table_keeps_the_latest_record_and_lists_skipped_targets() -> None:
    old, new = _group()[0], _group()[0]
    old["measured"], new["measured"] = "2026-01-01T00:00:00+00:00", "2026-02-01T00:00:00+00:00"
    new["images_per_sec"] = 99.0
    gpu = Target("tensorflow", Workload("resnet50", "train", 64), (0, 1), "gpu", 1)
    frame, _ = table.build([new, old, skip_record(gpu, "no GPU visible", SIGNATURE)])
    # One row per target; the later measurement wins whatever the storage order.
    assert len(frame) == 2 and frame.iloc[0]["tf-default"] == "99.00"
    # The skipped GPU target is a row of its own that says so and why (so CSV keeps the reason too).
    skipped = frame.iloc[1]
    assert skipped["GPU"] == 1 and skipped["images/sec (ms/image)"] == "skipped"
    assert skipped["note"] == "no GPU visible" and skipped["runtime"].startswith("GPU")


def test_table_renders_markdown_csv_and_html_and_refuses_other_formats() -> None:
    frame, notes = table.build([*_group(), *_yardsticks()])
    markdown = table.render(frame, notes, "markdown")
    csv = table.render(frame, notes, "csv")
    html = table.render(frame, notes, "html")
    # Each format carries the header (the model first) and the figures.
    assert markdown.startswith("| model ") and "64.00" in markdown
    assert csv.splitlines()[0].startswith("model,runtime,CPU,memory,GPU,batch size,mode")
    assert "<table" in html and "<th>tuned settings</th>" in html
    with pytest.raises(UsageError, match="--format"):
        table.render(frame, notes, "xlsx")
    # An empty storage says what to run rather than printing an empty table.
    assert "tuner run" in table.render(table.build([])[0], [], "markdown")


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
    assert row["best recipe"] == "openvino-small 76.19"
    assert row["tuned/best recipe"].startswith("1.20x [")
    assert row["recommended launch"] == "2x1 core, intra 1, inter default, tcmalloc, fp32"
