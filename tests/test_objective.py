"""Objectives and model references without TensorFlow: the quantile and latency arithmetic, a verdict ranked by
the objective's statistic, --model and --input-shape checked in the parent, and what a model file or a latency
objective takes out of the space."""

from __future__ import annotations

import dataclasses
import json
import re
import zipfile
from pathlib import Path

import pytest
from optuna.distributions import CategoricalDistribution

from tests.helpers import THREADS_SPACE, one_error_line
from tuner.capability import Capabilities, narrow, plan_baselines, unrunnable
from tuner.cli import main
from tuner.confirm import DEFAULT, decide
from tuner.errors import UsageError
from tuner.measurement import Measurement
from tuner.models import ModelRef, resolve
from tuner.objective import OBJECTIVES, P99_MIN_STEPS, latency_ms, quantile
from tuner.replay import ReplayRunner
from tuner.space import load
from tuner.workload import Workload, workload_for

# -- quantiles and latencies ---------------------------------------------------------------------------------


def test_quantile_interpolates_linearly_between_order_statistics() -> None:
    values = [10.0, 1.0, 4.0, 2.0, 3.0]  # sorted: 1 2 3 4 10, positions 0..4
    # q=0.25: position 0.25*4 = 1 exactly, the second smallest value (numpy's default, type 7).
    assert quantile(values, 0.25) == 2.0
    # q=0.9: position 3.6, 60% of the way from 4 to 10: 4 + 0.6*6 = 7.6, as numpy.quantile gives.
    assert quantile(values, 0.9) == pytest.approx(7.6)
    # The ends are the smallest and largest values; an even count's median is the mean of the middle two.
    assert quantile(values, 0.0) == 1.0 and quantile(values, 1.0) == 10.0
    assert quantile([4.0, 1.0, 3.0, 2.0], 0.5) == 2.5
    # A quantile of nothing is an error, not a silent 0.
    with pytest.raises(ValueError):
        quantile([], 0.5)


def test_p99_latency_needs_a_hundred_steps() -> None:
    steps = [i / 1000.0 for i in range(1, P99_MIN_STEPS + 1)]  # 1 ms .. 100 ms
    # 99 steps are too few for a 99th percentile: None rather than the slowest step in disguise.
    assert P99_MIN_STEPS == 100
    assert latency_ms(steps[:-1], 0.99) is None
    # At 100 steps it is stated: position 0.99*99 = 98.01, between 99 ms and 100 ms.
    assert latency_ms(steps, 0.99) == pytest.approx(99.01)
    # The median needs no such floor: 99 steps of 1..99 ms have a p50 of 50 ms.
    assert latency_ms(steps[:-1], 0.5) == pytest.approx(50.0)
    # No steps, no latency.
    assert latency_ms([], 0.5) is None


def test_measurement_states_p99_only_from_enough_steps() -> None:
    short = Measurement(batch_size=1, timed_seconds=tuple([0.02] * 20))
    # 20 steps state a p50 (20 ms, one request of one sample per step) but no p99.
    assert short.p50_ms == pytest.approx(20.0)
    assert short.p99_ms is None
    # The stored record carries both, the p99 as null.
    assert short.to_dict()["p50_ms"] == pytest.approx(20.0) and short.to_dict()["p99_ms"] is None
    long = Measurement(batch_size=1, timed_seconds=tuple([0.02] * 99 + [0.5]))
    # 100 steps state a p99, pulled towards the one slow step: 20 + 0.01*(500-20) ms at position 98.01.
    assert long.p99_ms == pytest.approx(24.8)


# -- the verdict ranked by the objective's statistic --------------------------------------------------------

# tf-default: the better median (100/s) but a slow tail, 5 of every 40 steps at 20/s (12.5% of them);
# trial 1: every step at 90/s, a worse median and a far better tail.
STEADY_TAIL = {
    DEFAULT: [[100.0] * 35 + [20.0] * 5 for _ in range(3)],
    "trial 1": [[90.0] * 40 for _ in range(3)],
}
PARAMS = {DEFAULT: {"intra_op": 0}, "trial 1": {"intra_op": 1}}


def test_p99_picks_the_better_tail_and_throughput_the_better_median() -> None:
    tail = decide(STEADY_TAIL, PARAMS, objective="p99", batch_size=1)
    median = decide(STEADY_TAIL, PARAMS, objective="throughput", batch_size=1)
    # The p99 objective ranks by the rates' 1st percentile: 90/s beats tf-default's 20/s, whatever the medians.
    assert tail.winner == "trial 1"
    assert tail.statistic("trial 1") == 90.0 and tail.statistic(DEFAULT) == 20.0
    # Its speedup is the ratio of those statistics (tf-default's p99 time over the winner's), 4.5x, and clear.
    assert tail.vs_default.value == pytest.approx(4.5) and tail.clear
    # Throughput ranks by the median: tf-default's 100/s beats 90/s, so tf-default wins and is recommended.
    assert median.winner == DEFAULT and median.recommended == DEFAULT
    # The p50 latency objective ranks by the median too (a request's median time): tf-default again.
    assert decide(STEADY_TAIL, PARAMS, objective="latency", batch_size=1).winner == DEFAULT


def test_verdict_states_objective_score_and_latencies() -> None:
    stored = decide(STEADY_TAIL, PARAMS, objective="p99", batch_size=4).to_dict()
    # The stored verdict says which objective ranked it and each candidate's statistic (higher is better).
    assert stored["objective"] == "p99"
    assert stored["score"] == {DEFAULT: 20.0, "trial 1": 90.0}
    # images_per_sec stays the median rate, whatever the objective.
    assert stored["images_per_sec"] == {DEFAULT: 100.0, "trial 1": 90.0}
    latency = stored["latency_ms"]
    # p50 in ms is a request's median time: 1000 * batch / median rate = 1000*4/100 = 40 ms and 1000*4/90.
    assert latency[DEFAULT]["p50"] == pytest.approx(40.0)
    assert latency["trial 1"]["p50"] == pytest.approx(1000.0 * 4 / 90.0)
    # 120 pooled steps state a p99: tf-default's slow steps (4/20 s = 200 ms) make its tail.
    assert latency[DEFAULT]["p99"] == pytest.approx(200.0)
    few = decide({name: [run[:4] for run in runs] for name, runs in STEADY_TAIL.items()}, PARAMS, batch_size=4)
    # 12 pooled steps state a p50 but no p99 (None, never a number from too few steps).
    assert few.to_dict()["latency_ms"]["trial 1"] == {"p50": pytest.approx(1000.0 * 4 / 90.0), "p99": None}
    # Without a batch size the latencies are unknown, not computed from a guess.
    assert decide(STEADY_TAIL, PARAMS).to_dict()["latency_ms"][DEFAULT] == {"p50": None, "p99": None}


def test_latency_objectives_time_more_steps_at_batch_one() -> None:
    # A p99 search run and confirmation round time at least 100 steps, so every stored p99 is stated.
    assert OBJECTIVES["p99"].burst_timed >= P99_MIN_STEPS and OBJECTIVES["p99"].confirm_timed >= P99_MIN_STEPS
    # Latency objectives default to one-sample requests; throughput keeps batch 32.
    assert OBJECTIVES["latency"].default_batch == 1 and OBJECTIVES["throughput"].default_batch == 32
    # The p99 objective is the rates' 1st percentile: the slowest 1% of requests.
    assert OBJECTIVES["p99"].rate_quantile == 0.01


# -- --model and --input-shape ------------------------------------------------------------------------------


def _usage_line(text: str, input_shape: str | None = None) -> str:
    with pytest.raises(UsageError) as caught:
        resolve(text, input_shape)
    message = str(caught.value)
    # A bad --model or --input-shape is one line, with no traceback or repr in it.
    assert "\n" not in message and message
    return message


def test_unknown_name_and_missing_path_are_one_line(tmp_path: Path) -> None:
    # A bare word that is no file is taken as a model name and the known ones are listed.
    message = _usage_line("resnet9000")
    assert "unknown model 'resnet9000'" in message and "resnet50" in message and ".keras file" in message
    # Something that looks like a path and is not there is said to be missing, not unknown.
    assert "no such file or folder" in _usage_line(str(tmp_path / "absent.keras"))
    assert "no such file or folder" in _usage_line(str(tmp_path / "absent_folder"))


def test_a_file_that_is_not_a_keras_archive_is_refused(tmp_path: Path) -> None:
    not_zip = tmp_path / "broken.keras"
    not_zip.write_bytes(b"this is not a zip file")
    # A .keras file must be a zip archive.
    assert "is not a Keras archive" in _usage_line(str(not_zip))
    no_config = tmp_path / "empty.keras"
    with zipfile.ZipFile(no_config, "w") as archive:
        archive.writestr("model.weights.h5", b"weights")
    # A zip without config.json is no Keras model.
    assert "without config.json" in _usage_line(str(no_config))
    other = tmp_path / "model.h5"
    other.write_bytes(b"HDF")
    # Another file type (a legacy .h5) is refused by its name, before it is read.
    assert "must be a .keras archive" in _usage_line(str(other))


def test_a_folder_without_saved_model_pb_is_refused(tmp_path: Path) -> None:
    folder = tmp_path / "export"
    folder.mkdir()
    (folder / "variables").mkdir()
    # A folder is taken as a SavedModel only with its saved_model.pb.
    assert "without a saved_model.pb" in _usage_line(str(folder))
    (folder / "saved_model.pb").write_bytes(b"")
    # An empty saved_model.pb (an export cut short) is no SavedModel either.
    assert "without a saved_model.pb" in _usage_line(str(folder))


@pytest.mark.parametrize("shape", ["0,3", "a,b", "1,2,3,4,5,6,7,8,9", "224,,3", "-1,3", "70000,3"])
def test_bad_input_shape_is_one_line(shape: str) -> None:
    # Sizes must be 1 or more, numbers, 1 to 8 of them, at most 65536: else one line naming the flag.
    assert _usage_line("tiny", shape).startswith("--input-shape: ")


def _saved_model(folder: Path, content: bytes) -> Path:
    folder.mkdir(parents=True)
    (folder / "saved_model.pb").write_bytes(b"graph")
    (folder / "variables").mkdir()
    (folder / "variables" / "variables.data-00000-of-00001").write_bytes(content)
    return folder


def test_a_saved_model_folder_is_named_by_its_name_and_content(tmp_path: Path) -> None:
    first = _saved_model(tmp_path / "my model", b"weights one")
    ref = resolve(str(first), "20,20,3")
    # A folder with saved_model.pb is a SavedModel, named by its folder (made safe) and 8 hex of its content.
    assert ref.kind == "savedmodel" and ref.path == str(first.resolve())
    assert re.fullmatch(r"my_model-[0-9a-f]{8}", ref.name), ref.name
    # The input shape given travels with it and names its studies apart from the model at its own shape.
    assert ref.input_shape == (20, 20, 3) and ref.label == f"{ref.name}@20x20x3"
    # The same content resolves to the same name: a re-run joins its studies.
    assert resolve(str(first)).name == ref.name
    second = _saved_model(tmp_path / "other" / "my model", b"weights two")
    # Other weights under the same folder name are another model: another label, never a shared study.
    assert resolve(str(second)).name != ref.name
    assert resolve(str(second)).name.startswith("my_model-")


def test_a_saved_model_cannot_train(tmp_path: Path) -> None:
    ref = resolve(str(_saved_model(tmp_path / "served", b"w")))
    # Inference on a SavedModel is a workload; training is refused, saying to use --mode infer.
    assert workload_for(ref, "infer", 1, "latency").source == ref
    with pytest.raises(UsageError, match="--mode infer"):
        workload_for(ref, "train", 1)
    with pytest.raises(UsageError, match="training needs a Keras model"):
        Workload(ref.label, "train", 1, source=ref)
    keras_ref = ModelRef("mine-0123abcd", "keras", str(tmp_path / "mine.keras"))
    # A .keras model keeps its Keras layers and can train.
    assert workload_for(keras_ref, "train", 8).mode == "train"


def test_cli_refuses_bad_models_before_any_storage(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    saved = _saved_model(tmp_path / "served", b"w")
    corrupt = tmp_path / "corrupt.keras"
    corrupt.write_bytes(b"\x00" * 64)
    db = tmp_path / "s.db"
    tune = ["tune", "--cores", "1", "--budget", "none", "--storage", f"sqlite:///{db}"]
    cases = [
        (["--model", str(saved), "--mode", "train"], "training needs a Keras model"),
        (["--model", str(saved), "--mode", "both"], "training needs a Keras model"),
        (["--model", str(corrupt), "--mode", "infer"], "is not a Keras archive"),
        (["--model", str(tmp_path / "gone.keras"), "--mode", "infer"], "no such file or folder"),
        (["--model", "tiny", "--input-shape", "0,3", "--mode", "infer"], "--input-shape"),
    ]
    for extra, expected in cases:
        # Each is exit 1 with one error line saying why, from the parent alone (no probe, no worker) ...
        assert main([*tune, *extra]) == 1, extra
        assert expected in one_error_line(capsys.readouterr().err)
    # ... and before the storage is created.
    assert not db.exists()


# -- what a model file and a latency objective take out -----------------------------------------------------

# A CPU where everything else could run: oneDNN on by default, bf16 instructions, bf16 allowed.
EVERYTHING = Capabilities(onednn_default=True, bf16_instructions=True, precisions=("fp32", "bf16"))


def test_a_model_file_keeps_its_layout_and_precision() -> None:
    space = load("tensorflow", 2)
    model_file = dataclasses.replace(EVERYTHING, model_file=True)
    # Here an application searches both layouts and both precisions: nothing is taken out.
    assert narrow(space, EVERYTHING, 2)[1] == []
    narrowed, excluded = narrow(space, model_file, 2)
    layout, precision = (narrowed.distributions(2)[name] for name in ("data_format", "precision"))
    # A model loaded from a file runs as it was built: NCHW and bf16 are taken out of its space ...
    assert isinstance(layout, CategoricalDistribution) and isinstance(precision, CategoricalDistribution)
    assert layout.choices == ("NHWC",) and precision.choices == ("fp32",)
    # ... each with the reason, and nothing else is (oneDNN, allocator and threads still matter).
    assert sorted(line.split(" taken out")[0] for line in excluded) == ["data_format=NCHW", "precision=bf16"]
    assert all("a model loaded from a file keeps" in line for line in excluded)
    # The rule is model_file_layout, and fp32 NHWC runs.
    broken = unrunnable({"data_format": "NCHW"}, model_file)
    assert broken is not None and broken[0] == "model_file_layout"
    assert unrunnable({"data_format": "NHWC", "precision": "fp32"}, model_file) is None
    plan = plan_baselines(space.baselines(2), model_file)
    # The NCHW heuristic is set aside and its NHWC part stands in for it.
    assert plan.stand_ins["heuristic"] == "heuristic-nhwc" and plan.runnable["heuristic-nhwc"]["data_format"] == "NHWC"


def test_a_latency_objective_runs_one_instance() -> None:
    latency = Capabilities(latency=True)
    # A latency objective times one request at a time: two instances cannot run, one can.
    assert unrunnable({"instances": 2}, latency) == (
        "one_request_at_a_time",
        "a latency objective times one request at a time: more instances split its cores and add no speed to it",
    )
    assert unrunnable({"instances": 1}, latency) is None and unrunnable({}, latency) is None
    # A throughput objective keeps several instances.
    assert unrunnable({"instances": 2}, Capabilities()) is None
    plan = plan_baselines(load("tensorflow", 8).baselines(8), latency)
    # run_cpu's latency recipe (cores/4 = 2 instances on 8 cores) is set aside, saying why; its one-instance
    # part stands in, and since that runs exactly as run_cpu's throughput recipe (1 socket), it is measured once.
    assert "run_cpu-latency" not in plan.runnable
    assert plan.notes["run_cpu-latency"].startswith("not runnable here: a latency objective")
    assert plan.stand_ins["run_cpu-latency"] == "run_cpu-latency-1-instance"
    assert plan.notes["run_cpu-latency-1-instance"] == "same as run_cpu-throughput on this CPU"
    # Every baseline measured runs one instance.
    assert {params["instances"] for params in plan.runnable.values()} == {1}


# -- a model tuned at another input shape, asked for again ----------------------------------------------------


def test_a_model_tuned_at_an_input_shape_is_recommended_at_it(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    url = f"sqlite:///{tmp_path}/s.db"
    runner = ReplayRunner.from_rates(lambda spec: 1000.0 + 100 * spec.settings.inter_op, noise=0.02)
    facts = {"params": 1, "inputs": [{"name": "input", "shape": [20, 20, 3], "dtype": "float32"}], "vocabulary": 2}
    runner.tasks["describe"] = {"model_facts": facts, "flops_per_image": {"infer": 1.0e6, "train": 3.0e6}}
    tune = ["tune", "--model", "tiny", "--input-shape", "20,20,3", "--cores", "1", "--mode", "infer", "--trials", "2",
            "--rounds", "3", "--budget", "none", "--space", THREADS_SPACE, "--storage", url]  # fmt: skip
    # Setup: the tiny model at 20x20x3 is tuned (replayed), so a verdict exists for 'tiny@20x20x3'.
    assert main(tune, runner=runner) == 0
    capsys.readouterr()
    asked = main(["recommend", "--model", "tiny", "--input-shape", "20,20,3", "--storage", url, "--format", "json"])
    out, err = capsys.readouterr()
    # Asked for the model at the shape it was tuned at, recommend finds that verdict (and not plain 'tiny').
    assert asked == 0, err
    assert [r["model"] for r in json.loads(out)] == ["tiny@20x20x3"]
