"""`tuner doctor`: read-only, fast, and says what runs here."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from tests.test_signature import cpuinfo_text
from tuner.cli import main
from tuner.doctor import busy_processes, load_line, onednn_line
from tuner.runtime import names
from tuner.signature import CpuSignature, cpu_signature


def test_doctor_answers_in_seconds_and_lists_every_runtime(capsys: pytest.CaptureFixture[str]) -> None:
    started = time.monotonic()
    assert main(["doctor"]) == 0
    out = capsys.readouterr().out
    # It never imports a framework, so it answers within seconds even on a busy machine.
    assert time.monotonic() - started < 20
    # Every runtime is listed with its availability and the knobs it honours; the CPU facts come first.
    for name in names():
        assert f"runtime        {name}:" in out
    assert out.startswith("CPU ") and "honours intra_op" in out and "load average" in out


def test_busy_processes_finds_a_spinning_process() -> None:
    import subprocess
    import sys

    spinner = subprocess.Popen([sys.executable, "-c", "while True: pass"])
    try:
        time.sleep(0.3)
        found = busy_processes(interval=1.0)
    finally:
        spinner.kill()
        spinner.wait()
    # A process burning a CPU is reported as a noisy neighbour.
    assert spinner.pid in {b.pid for b in found}


def _signature(tmp_path: Path, name: str, text: str) -> CpuSignature:
    (tmp_path / name).write_text(text)
    return cpu_signature(tmp_path / name, tmp_path / "no-nodes")


def _aarch64(part: str) -> str:
    return f"processor\t: 0\nFeatures\t: fp asimd asimddp sve bf16\nCPU implementer\t: 0x41\nCPU part\t: {part}\n\n"


def test_the_onednn_default_is_predicted_for_x86_and_aarch64_as_tensorflow_decides_it(tmp_path: Path) -> None:
    avx2 = _signature(tmp_path, "avx2", cpuinfo_text(1, 2, 1, "fpu avx avx2 fma"))
    vnni = _signature(tmp_path, "vnni", cpuinfo_text(1, 2, 1, "avx avx2 fma avx512f avx512_vnni"))
    v1 = _signature(tmp_path, "v1", _aarch64("0xd40"))
    n1 = _signature(tmp_path, "n1", _aarch64("0xd0c"))
    # TensorFlow turns oneDNN on by itself for AVX-512 VNNI (x86) and for the Neoverse V1 (Graviton3),
    # whatever its flags: the line names the reason.
    assert onednn_line(vnni).endswith("on by default here (avx512_vnni)")
    assert onednn_line(v1).endswith("on by default here (Neoverse V1)")
    # An AVX2-only x86 and another Arm core (Neoverse N1, even with bf16) have it off, each with its own reason:
    # an Arm core lacks no VNNI, it is not the one part TensorFlow names.
    assert "off by default" in onednn_line(avx2) and "(no VNNI/BF16/AMX)" in onednn_line(avx2)
    assert "off by default" in onednn_line(n1) and "(not a Neoverse V1)" in onednn_line(n1)


def test_the_load_warning_is_relative_to_the_cpus() -> None:
    # Half a CPU of load on 2 CPUs is a quarter of the machine: not yet busy; one CPU's worth is.
    assert len(load_line(0.5, 0.5, 2)) == 1
    assert "was busy in the last minute" in load_line(1.0, 0.5, 2)[1]
    # The same load of 1.0 on 64 CPUs leaves the machine nearly idle: no warning.
    assert len(load_line(1.0, 1.0, 64)) == 1
