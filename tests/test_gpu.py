"""GPU rows without a GPU: the CUDA runtime, its refusal where no driver is loaded, doctor's GPU line, and
rows labelled by their stack (CUDA version and GPU name, read back) through one label function."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.helpers import one_error_line
from tuner import runtime as runtime_module
from tuner.benchmark import records
from tuner.cli import main
from tuner.doctor import gpu_line
from tuner.replay import ReplayRunner
from tuner.runtime import cpu_names, load, names
from tuner.storage import open_storage
from tuner.table import runtime_label

BENCH = ["benchmark", "--model", "tiny", "--device", "gpu", "--cores", "1", "--mode", "infer", "--warmup", "1"]


@pytest.fixture
def no_driver(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """This machine as one without NVIDIA's driver, whatever the test machine has."""
    monkeypatch.setattr(runtime_module, "NVIDIA_DRIVER", tmp_path / "no-such-driver")


def test_the_cuda_runtime_is_for_gpu_rows_and_needs_a_driver() -> None:
    gpu = load("tensorflow-gpu")
    # It installs TensorFlow with its CUDA extra, runs GPU rows only, and `tuner run` does not tune it.
    assert any(p.startswith("tensorflow[and-cuda]") for p in gpu.packages) and gpu.gpu_only
    assert "tensorflow-gpu" in names() and "tensorflow-gpu" not in cpu_names()
    # Without a driver its multi-GiB install is refused with why; with one (and a supported Python) it may go on.
    reason = gpu.installable(version="3.11", machine="x86_64", driver=None)
    assert reason is not None and "needs an NVIDIA GPU and its driver" in reason
    assert gpu.installable(version="3.11", machine="x86_64", driver="NVRM version: 550.54") is None
    # The CPU runtimes never need a GPU.
    assert load("tensorflow").installable(version="3.11", machine="x86_64", driver=None) is None


def test_doctor_says_whether_a_gpu_and_its_driver_are_visible(tmp_path: Path) -> None:
    # No version file: no driver, so the GPU rows will be skipped.
    assert "none visible: no NVIDIA driver loaded" in gpu_line(tmp_path / "missing", tmp_path)
    version = tmp_path / "version"
    version.write_text("NVRM version: NVIDIA UNIX x86_64 Kernel Module  550.54.15\nGCC version: 12\n")
    dev = tmp_path / "dev"
    dev.mkdir()
    (dev / "nvidia0").touch()
    (dev / "nvidiactl").touch()  # the control node is not a GPU
    line = gpu_line(version, dev)
    # The driver's version line and the one GPU device node are named.
    assert "NVIDIA driver loaded: NVRM version: NVIDIA UNIX x86_64 Kernel Module  550.54.15" in line
    assert "1 device node(s) (nvidia0)" in line


def test_gpu_rows_without_a_driver_are_skipped_with_why_and_labelled_gpu(
    storage_url: str, capsys: pytest.CaptureFixture[str], no_driver: None
) -> None:
    # No runner is passed: the real path, which must not start a worker or install anything here.
    assert main([*BENCH, "--gpu-counts", "1,2", "--storage", storage_url]) == 0
    out = capsys.readouterr().out
    # Each GPU row is stored as skipped, with the reason: the CUDA runtime needs a driver.
    skipped = [r for r in records(open_storage(storage_url)) if r.get("device") == "gpu"]
    assert sorted(r["gpus"] for r in skipped) == [1, 2]
    assert all("needs an NVIDIA GPU and its driver" in r["skipped"] for r in skipped)
    assert "skipped: tensorflow-gpu runs the GPU rows" in out
    assert main(["table", "--storage", storage_url, "--format", "csv"]) == 0
    # The table names the rows as GPU rows of that runtime, never as a CPU runtime.
    table = capsys.readouterr().out
    assert "GPU [tensorflow-gpu]" in table and "CPU" not in table.split("\n", 1)[1]


def test_a_measured_gpu_row_is_labelled_by_its_cuda_and_gpu(
    storage_url: str, capsys: pytest.CaptureFixture[str]
) -> None:
    # A runner that reads back a CUDA build on two H200s, as the worker does (tf.sysconfig, device details).
    stack = {"cuda_version": "12.5.1", "gpu_names": ["NVIDIA H200", "NVIDIA H200"]}
    runner = ReplayRunner.from_rates(lambda spec: 600.0 * spec.replicas)
    runner.tasks["devices"] = {"gpus": 2}
    runner.extra_facts.update(stack)
    argv = [*BENCH, "--timed", "3", "--settings", "tf-default", "--storage", storage_url]
    assert main(argv, runner=runner) == 0
    (record,) = [r for r in records(open_storage(storage_url)) if "skipped" not in r]
    # The record keeps the stack it ran on, and the one label function names the row by it.
    assert record["cuda_version"] == "12.5.1" and record["gpu_name"] == "NVIDIA H200"
    assert runtime_label(record["runtime"], record) == "CUDA 12.5.1 (NVIDIA H200) [tensorflow-gpu]"
    # A CPU record is still named by what it read back (oneDNN here), not by a device it did not use.
    assert runtime_label("tensorflow", {"device": "cpu", "onednn": True}) == "CPU (oneDNN)"


def test_the_cuda_runtime_cannot_tune_the_cpu(storage_url: str, capsys: pytest.CaptureFixture[str]) -> None:
    argv = ["tune", "--runtime", "tensorflow-gpu", "--model", "tiny", "--cores", "1", "--storage", storage_url]
    assert main(argv, runner=ReplayRunner.from_rates(lambda spec: 1.0)) == 1
    # One line naming the runtime and where its rows belong.
    assert "runs the GPU rows only" in one_error_line(capsys.readouterr().err)


def test_gpu_rows_of_a_latency_benchmark_take_the_hosts_latency_study(
    storage_url: str, capsys: pytest.CaptureFixture[str]
) -> None:
    runner = ReplayRunner.from_rates(lambda spec: 100.0 * spec.batch_size * spec.replicas)
    tune = ["tune", "--model", "tiny", "--cores", "1", "--mode", "infer", "--trials", "6", "--candidates", "1"]
    assert main([*tune, "--objective", "latency", "--storage", storage_url], runner=runner) == 0
    runner.tasks["devices"] = {"gpus": 1}
    argv = [*BENCH, "--timed", "3", "--objective", "latency", "--settings", "recommended", "--storage", storage_url]
    # The host's study was tuned at batch 1 (`-latency-b1-`); the GPU rows find its verdict there. Before, they
    # looked for a `-latency-b32-` study and `--settings recommended` ended with "has no confirmed verdict".
    assert main(argv, runner=runner) == 0, capsys.readouterr().err
    (record,) = [r for r in records(open_storage(storage_url)) if r.get("device") == "gpu" and "skipped" not in r]
    assert "recommended" in record and "-latency-b1-" in record["study"]
