"""`tuner report`: one self-contained HTML page of figures, rendered from a storage the fake runner filled,
then loaded in headless Chromium (Debian's chromium + chromium-driver; .ci/run installs them)."""

from __future__ import annotations

import dataclasses
import json
import os
import re
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import optuna
import pytest

from tuner import benchmark, report
from tuner.cli import main
from tuner.errors import WorkerCrashed
from tuner.replay import ReplayRunner
from tuner.runner import TrialSpec
from tuner.signature import cpu_signature
from tuner.storage import open_storage
from tuner.summary import summarize

CHROMIUM = "/usr/bin/chromium"
CHROMEDRIVER = "/usr/bin/chromedriver"
SCREENSHOTS = Path(os.environ.get("TUNER_SCREENSHOTS", "")) if os.environ.get("TUNER_SCREENSHOTS") else None

TUNE = ["tune", "--model", "tiny", "--trials", "8", "--budget", "none"]
INERT = ["--allow-inert", "OMP_NUM_THREADS", "--allow-inert", "KMP_BLOCKTIME", "--allow-inert", "KMP_AFFINITY"]


def rate(spec: TrialSpec) -> float:
    """A made-up landscape: inter_op 1 is fastest, two cores scale by 1.8, training is 3x slower."""
    base = 900.0 + 100 * (spec.settings.inter_op == 1) - 20 * abs(spec.settings.intra_op - len(spec.cores))
    return base * (1.8 if len(spec.cores) == 2 else 1.0) / (3 if spec.workload.mode == "train" else 1)


def crashing(spec: TrialSpec, call: int) -> list[float] | BaseException:
    """The runtime probe (the first run) works; every trial after it crashes."""
    return [0.01] * (spec.policy.warmup + spec.policy.timed) if call == 0 else WorkerCrashed("killed by SIGSEGV")


@pytest.fixture(scope="module")
def filled(tmp_path_factory: pytest.TempPathFactory) -> tuple[str, Path]:
    """Studies at 1 and 2 cores in both modes, an OpenMP-knob study, a study whose every trial crashed, and
    benchmark records of tf-default, heuristic and tuned at both core counts."""
    folder = tmp_path_factory.mktemp("report")
    url = f"sqlite:///{folder / 'studies.db'}"
    runner = ReplayRunner.from_rates(rate, noise=0.02)
    assert main([*TUNE, "--cores", "1,2", "--mode", "train,infer", "--storage", url], runner=runner) == 0
    # Its own batch size: study names do not include the space, and this one searches another.
    knobs = [*TUNE, "--cores", "2", "--mode", "infer", "--batch-size", "64", "--space", "intel-tensorflow", *INERT]
    assert main([*knobs, "--storage", url], runner=runner) == 0
    # Every trial crashes: the command fails, and leaves a study with no complete trial.
    assert main([*TUNE, "--cores", "1", "--mode", "infer", "--batch-size", "16", "--storage", url],
                runner=ReplayRunner(crashing)) == 1  # fmt: skip
    bench = ["benchmark", "--model", "tiny", "--cores", "1,2", "--mode", "train,infer", "--warmup", "1"]
    bench += ["--timed", "4", "--rounds", "2", "--settings", "tf-default", "--settings", "heuristic"]
    assert main([*bench, "--settings", "tuned", "--storage", url], runner=runner) == 0
    output = folder / "report.html"
    assert main(["report", "--storage", url, "--output", str(output)]) == 0
    return url, output


def expected_titles(url: str) -> list[str]:
    """What the page must show, in order, for the filled storage."""
    _, titles = report.build(open_storage(url, create=False), url)
    return titles


def test_the_report_has_every_figure_with_noise_and_axis_labels(filled: tuple[str, Path]) -> None:
    url, output = filled
    titles = expected_titles(url)
    # Per runtime and CPU: bars of the three settings and scaling; per study with complete trials: history,
    # importances and the intra x inter heat map; and KMP_BLOCKTIME only where it was searched.
    assert sum(t.startswith("Images/sec by setting") for t in titles) == 1
    assert sum(t.startswith("Scaling") for t in titles) == 1
    assert sum(t.startswith("Optimisation history") for t in titles) == 5
    assert sum(t.startswith("Parameter importances") for t in titles) == 5
    assert sum(t.startswith("Images/sec over intra_op x inter_op") for t in titles) == 5
    assert sum(t == "Images/sec against KMP_BLOCKTIME" for t in titles) == 1
    page = output.read_text()
    # Every figure's title carries a second line about noise (a CV, with n), and its axes have units.
    assert page.count("noise: per-step CV of") + page.count("error bars: slowest and fastest") >= len(titles)
    assert "images/sec" in page and "intra_op threads (0 = TensorFlow chooses)" in page
    assert "KMP_BLOCKTIME (ms)" in page and "cores (pinned)" in page


def test_the_bars_show_the_tables_images_per_sec(filled: tuple[str, Path]) -> None:
    url, _ = filled
    stored = [r for r in benchmark.records(open_storage(url, create=False)) if "skipped" not in r]
    figure = report.bars(stored, "tiny")
    assert figure is not None
    heights = sorted(round(y, 6) for trace in figure.data for y in trace.y)
    # One definition of images/sec: each bar is a record's headline figure, the timed-loop rate the table
    # prints, not the median per-step rate; and the axis says so.
    assert heights == sorted(round(r["images_per_sec"], 6) for r in stored if r["device"] == "cpu")
    assert "timed loop" in figure.layout.yaxis.title.text


def test_a_tuned_bar_from_a_study_that_searched_more_says_so(filled: tuple[str, Path]) -> None:
    url, _ = filled
    stored = [r for r in benchmark.records(open_storage(url, create=False)) if "skipped" not in r]
    tuned = [r for r in stored if r["label"] == "tuned"]
    assert tuned
    plain = report.bars(stored, "tiny")
    assert plain is not None
    # A plain study's tuned bars carry no tag.
    assert all(trace.text is None for trace in plain.data)
    for record in tuned:
        record["searched"] = ["onednn_isa", "batch"]
    figure = report.bars(stored, "tiny")
    assert figure is not None
    (bar,) = [trace for trace in figure.data if trace.name == "tuned"]
    # Each tuned bar is tagged as the table's narrow view tags its figure; the other settings' bars are not.
    assert list(bar.text) == ["+isa +batch"] * len(bar.y)
    assert all(trace.text is None for trace in figure.data if trace.name != "tuned")


def test_a_setting_that_failed_in_a_benchmark_leaves_the_report_whole(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    url = f"sqlite:///{tmp_path / 's.db'}"
    bench = ["benchmark", "--model", "tiny", "--cores", "1", "--mode", "infer", "--warmup", "1", "--timed", "3"]
    bench += ["--settings", "tf-default", "--settings", "heuristic", "--storage", url]
    assert main(bench, runner=ReplayRunner.from_rates(rate)) == 0

    def heuristic_dies(spec: TrialSpec, call: int) -> list[float] | BaseException:
        return WorkerCrashed("killed by SIGSEGV") if spec.settings.data_format == "NCHW" else [0.03] * 4

    # A later run in which the heuristic's worker dies: stored as a skipped record labelled "heuristic".
    assert main(bench, runner=ReplayRunner(heuristic_dies)) == 1
    output = tmp_path / "report.html"
    # The report is written, not a KeyError: as in the table on the same page, the heuristic's latest run
    # failed, so it has no bar; tf-default's latest run has its.
    assert main(["report", "--storage", url, "--output", str(output)]) == 0
    figure = report.bars(benchmark.records(open_storage(url, create=False)), "tiny")
    assert figure is not None and [trace.name for trace in figure.data] == ["tf-default"]


def test_control_characters_in_stored_text_never_reach_the_report_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A CPU name as a shared study or an imported record may bring it: a terminal escape, a bell, a bidi override.
    forged = dataclasses.replace(cpu_signature(), model_name="EPYC\x1b]0;owned\x07\x1b[2J\u202e")
    monkeypatch.setattr("tuner.cli.cpu_signature", lambda: forged)
    url = f"sqlite:///{tmp_path / 's.db'}"
    bench = ["benchmark", "--model", "tiny", "--cores", "1", "--mode", "infer", "--warmup", "1", "--timed", "3"]
    assert main([*bench, "--settings", "tf-default", "--storage", url], runner=ReplayRunner.from_rates(rate)) == 0
    output = tmp_path / "report.html"
    assert main(["report", "--storage", url, "--output", str(output)]) == 0
    # The page's text outside the scripts (plotly.js, inline, has its own bytes; the figures' data is JSON,
    # whose strings escape control characters).
    page = re.sub(r"<script.*?</script>", "", output.read_text(), flags=re.DOTALL)
    # The name is on the page, its control characters made spaces: `cat report.html` replays nothing.
    assert "EPYC" in page and not re.search("[\x00-\x08\x0b\x0c\x0e-\x1f\x7f\u202e]", page)


def test_the_report_is_self_contained(filled: tuple[str, Path]) -> None:
    _, output = filled
    page = output.read_text()
    # No script or stylesheet is fetched: plotly.js is inline, once, and no tag points at the network.
    assert not re.search(r"<script[^>]+src=", page) and not re.search(r"<link[^>]+href=", page)
    assert page.count("Plotly.newPlot") >= 10 and page.count("plotly.js v") >= 1


def test_a_study_without_complete_trials_is_a_sentence(filled: tuple[str, Path]) -> None:
    _, output = filled
    page = output.read_text()
    # The crashed study is listed, with a sentence in place of its figures.
    assert "0 complete of" in page and "No complete trial yet: nothing to plot for this study." in page


SUMMARY_KEYS = [
    "name", "model", "mode", "batch_size", "objective", "runtime", "cores", "cpu", "framework_version", "trials",
    "best_trial", "search_baselines", "search_loop_images_per_sec", "importances", "inert_knobs", "searched_extra",
    "baseline_notes",
    "excluded", "probe", "verdict", "disturbance",
]  # fmt: skip
VERDICT_KEYS = [
    "winner", "recommended", "recommended_params", "clear", "text", "images_per_sec", "loop_images_per_sec",
    "speedup_vs_tf_default", "speedup_vs_heuristic", "rounds", "measured", "score", "latency_ms", "dropped",
]  # fmt: skip


def test_show_json_keeps_its_keys_from_the_typed_records(filled: tuple[str, Path]) -> None:
    url, _ = filled
    summaries = summarize(open_storage(url, create=False))
    # Every study of the storage is summarised, each with the keys `tuner show --json` has always printed
    # (the objective's keys, the timed-loop figures, the disturbance and the knobs searched beside the runtime's
    # were added to them, none removed or renamed).
    assert len(summaries) == 6 and all(list(s) == SUMMARY_KEYS for s in summaries)
    verdicts = [s["verdict"] for s in summaries if s["verdict"] is not None]
    # A confirmed study's verdict has its keys too, read from the checked record, its settings as stored.
    assert verdicts and all(list(v) == VERDICT_KEYS for v in verdicts)
    assert all(isinstance(v["recommended_params"], dict) and v["recommended_params"] for v in verdicts)
    # The summaries are plain JSON data: printed and read back, they are unchanged.
    assert json.loads(json.dumps(summaries)) == summaries


def test_empty_and_missing_storage(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    empty = f"sqlite:///{tmp_path / 'empty.db'}"
    optuna.create_study(study_name="someone-elses", storage=open_storage(empty))
    output = tmp_path / "r.html"
    assert main(["report", "--storage", empty, "--output", str(output)]) == 1
    # A storage without tuner studies is an error, as `tuner recommend` without a verdict is: one line naming
    # the storage, and no page of zero figures written.
    errors = [line for line in capsys.readouterr().err.splitlines() if "error" in line]
    assert len(errors) == 1 and "nothing to report: no tuner studies or benchmark records in" in errors[0]
    assert not output.exists()
    missing = tmp_path / "none.db"
    assert main(["report", "--storage", f"sqlite:///{missing}", "--output", str(tmp_path / "m.html")]) == 1
    # A storage that does not exist is one line naming it, and nothing is created.
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "does not exist" in err
    assert not missing.exists() and not (tmp_path / "m.html").exists()


def test_an_unwritable_output_is_one_line(
    filled: tuple[str, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    url, _ = filled
    assert main(["report", "--storage", url, "--output", str(tmp_path / "no" / "such" / "r.html")]) == 1
    # The folder is named; no partial file is left anywhere.
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "no/such" in err
    assert list(tmp_path.iterdir()) == []


def _need_browser() -> None:
    if not (os.path.exists(CHROMIUM) and os.path.exists(CHROMEDRIVER)):
        if os.environ.get("CI"):
            pytest.fail("CI must install chromium and chromium-driver (.ci/run does)")
        pytest.skip("needs Debian's chromium and chromium-driver (apt-get install chromium chromium-driver)")


@pytest.mark.browser
def test_the_report_renders_in_headless_chromium(filled: tuple[str, Path], tmp_path: Path) -> None:
    _need_browser()
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    url, output = filled
    titles = expected_titles(url)
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for flag in (
        "--headless=new",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-dev-shm-usage",
        "--window-size=1300,900",
    ):
        options.add_argument(flag)
    options.add_argument("--host-resolver-rules=MAP * ~NOTFOUND")  # offline: any network fetch would fail
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    driver = webdriver.Chrome(service=Service(CHROMEDRIVER), options=options)
    try:
        driver.get(output.as_uri())
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            drawn = driver.execute_script("return document.querySelectorAll('.js-plotly-plot .main-svg').length")
            if drawn >= len(titles):
                break
            time.sleep(0.5)
        shown = driver.execute_script(
            "return Array.from(document.querySelectorAll('.js-plotly-plot')).map(p => {"
            " const t = p.querySelector('.gtitle'); return t ? t.textContent : null; })"
        )
        axes = driver.execute_script(
            "return Array.from(document.querySelectorAll('.js-plotly-plot')).map(p =>"
            " [p.querySelector('.xtitle'), p.querySelector('.ytitle')].filter(e => e && e.textContent).length)"
        )
        marks = driver.execute_script(
            "return Array.from(document.querySelectorAll('.js-plotly-plot')).map(p =>"
            " p.querySelectorAll('.point, .bars path, .scatterlayer path, .heatmaplayer image, .hm').length)"
        )
        logs = driver.get_log("browser")
        screenshot = tmp_path / "report.png"
        height = driver.execute_script("return document.body.scrollHeight")
        driver.set_window_size(1300, min(int(height), 16000))
        driver.save_screenshot(str(screenshot))
        if SCREENSHOTS is not None:
            SCREENSHOTS.mkdir(parents=True, exist_ok=True)
            shutil.copy(screenshot, SCREENSHOTS / "report.png")
    finally:
        driver.quit()
    # No console errors, and no warnings about failed loads (the page must not reach for the network).
    assert [entry for entry in logs if entry["level"] in ("SEVERE", "WARNING")] == []
    # Every figure rendered, in order, with the title the report gave it (first line; the noise line follows).
    assert len(shown) == len(titles)
    for title, text in zip(titles, shown, strict=True):
        assert text is not None and text.startswith(title), (title, text)
        assert "noise" in text or "error bars" in text
    # Each figure has both axis titles drawn and something plotted in it.
    assert all(count == 2 for count in axes), axes
    assert all(count > 0 for count in marks), marks
    assert screenshot.stat().st_size > 50_000


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def test_optuna_dashboard_reads_the_studies(filled: tuple[str, Path]) -> None:
    url, _ = filled
    dashboard = Path(sys.executable).parent / "optuna-dashboard"
    port = _free_port()
    process = subprocess.Popen(
        [str(dashboard), url, "--host", "127.0.0.1", "--port", str(port)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        studies = None
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and studies is None:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/api/studies", timeout=5) as response:
                    studies = json.load(response)["study_summaries"]
            except OSError:
                time.sleep(0.5)
        assert studies is not None, "optuna-dashboard did not answer"
        # The dashboard lists every tuner study and opens each one, trials and user attributes included.
        names = {s["study_name"] for s in studies}
        assert sum(name.startswith("tiny-") for name in names) == 6
        for study in studies:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/api/studies/{study['study_id']}", timeout=30) as r:
                detail = json.load(r)
            assert "trials" in detail
    finally:
        process.terminate()
        process.wait(timeout=30)


def test_figures_draw_a_shared_studys_numbers_and_valid_settings_only(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'shared.db'}"
    runner = ReplayRunner.from_rates(rate, noise=0.02)
    assert main([*TUNE, "--trials", "4", "--cores", "1", "--mode", "infer", "--storage", url], runner=runner) == 0
    storage = open_storage(url, create=False)
    study = optuna.load_study(study_name=optuna.get_all_study_names(storage)[0], storage=storage)
    # Someone sharing the study wrote markup into a trial's attributes and stored a trial no knob validates.
    first = study.get_trials(states=(optuna.trial.TrialState.COMPLETE,))[0]
    attrs = {"stderr_tail": '<a href="https://evil.example">x</a>', "baseline": "<b>tf-default</b>"}
    study.add_trial(
        optuna.trial.create_trial(
            params=first.params, distributions=first.distributions, value=first.value, user_attrs=attrs
        )
    )
    study.add_trial(
        optuna.trial.create_trial(
            params={"evil_knob": "evil.example"},
            distributions={"evil_knob": optuna.distributions.CategoricalDistribution(["evil.example"])},
            value=1e6,
        )
    )
    drawn, left_out = report.plotted(study)
    # The copy the figures draw keeps every trial's number, the valid trials' values and params, and no
    # attribute but a well-formed baseline name; the trial with invalid params is left out and counted.
    assert [t.number for t in drawn.trials] == [t.number for t in study.trials]
    complete = drawn.get_trials(states=(optuna.trial.TrialState.COMPLETE,))
    assert left_out == 1 and len(complete) == 5 and all(t.value is not None and t.value < 1e6 for t in complete)
    assert all(set(t.user_attrs) <= {"baseline"} for t in complete) and "baseline" not in complete[-1].user_attrs
    document, _ = report.build(storage, url)
    # So the page (hover text included) holds none of that text, and says what it left out.
    assert "evil.example" not in document and "<b>tf-default" not in document
    assert "1 complete trial(s) left out of the figures" in document


def test_a_big_report_says_how_far_it_is(filled: tuple[str, Path], monkeypatch: pytest.MonkeyPatch) -> None:
    url, _ = filled
    monkeypatch.setattr(report, "PROGRESS_S", 0.0)  # every study says so (10 s apart in use)
    said: list[str] = []
    report.build(open_storage(url, create=False), "s.db", log=said.append)
    studies = len(
        [s for s in open_storage(url, create=False).get_all_studies() if s.study_name != benchmark.BENCH_STUDY]
    )
    # Reading each stored study, then drawing each tuner study: lines that count up to the whole.
    assert any(line.startswith("report: reading study 1/") for line in said)
    assert f"report: drawing study {studies}/{studies}" in said
