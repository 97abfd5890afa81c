"""Stock TensorFlow as it runs on a CPU without AVX-512, on a machine that has AVX-512.

TensorFlow decides per CPU whether oneDNN is on (only with AVX-512 VNNI/BF16 or AMX) from the CPUID
instruction, so fake /proc/cpuinfo trees cannot show it that choice. Here the trials' interpreter runs
under qemu-user emulating an AMD EPYC-Rome (AVX2 and FMA, no AVX-512), through ``--python``: real
TensorFlow reads the emulated CPU and leaves oneDNN off, and the tuner must follow what its probe reads
back, as on the AVX2-only EPYC of issue 12. Emulated speeds say nothing about that CPU's, so nothing here
compares figures. On a CPU without AVX-512 the rest of the suite runs this path natively, and this test is
skipped; where qemu-user is missing (`apt-get install qemu-user`; CI installs it), too.
"""

from __future__ import annotations

import platform
import re
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import optuna
import pytest

from tuner.cli import main

QEMU = shutil.which("qemu-x86_64")
CPU_MODEL = "EPYC-Rome"  # qemu's AMD Zen 2: AVX2 and FMA, no AVX-512


def _qemu_version() -> tuple[int, ...]:
    """qemu-user's version: AVX and AVX2 are emulated from 7.2 on (Debian 12's); before, TensorFlow aborts."""
    done = subprocess.run([str(QEMU), "--version"], capture_output=True, text=True, check=False)
    found = re.search(r"version (\d+)\.(\d+)", done.stdout)
    return (int(found[1]), int(found[2])) if found else (0, 0)


def _host_has_avx512() -> bool:
    text = Path("/proc/cpuinfo").read_text() if Path("/proc/cpuinfo").exists() else ""
    flags = next((line for line in text.splitlines() if line.startswith("flags")), "")
    return "avx512f" in flags.split()


pytestmark = [
    pytest.mark.tensorflow,
    pytest.mark.skipif(platform.machine() != "x86_64" or QEMU is None, reason="needs qemu-user on x86_64"),
    pytest.mark.skipif(QEMU is not None and _qemu_version() < (7, 2), reason="qemu-user before 7.2 has no AVX2"),
    pytest.mark.skipif(not _host_has_avx512(), reason="this CPU has no AVX-512: the suite runs this path natively"),
]


def test_on_an_emulated_avx2_only_cpu_oneDNN_is_off_by_default_and_the_space_follows(
    tmp_path: Path, storage_url: str, capsys: pytest.CaptureFixture[str]
) -> None:
    python = tmp_path / "python-epyc-rome"
    python.write_text(f'#!/bin/sh\nexec {shlex.quote(str(QEMU))} -cpu {CPU_MODEL} {shlex.quote(sys.executable)} "$@"\n')
    python.chmod(0o755)
    try:  # a folder mounted noexec (/dev/shm in some containers) cannot run the wrapper: not this test's subject
        subprocess.run([str(python), "-c", "pass"], capture_output=True, check=True, timeout=60)
    except (OSError, subprocess.CalledProcessError) as error:
        pytest.skip(f"the emulated interpreter does not start here: {error}")
    argv = ["tune", "--model", "tiny", "--cores", "1", "--mode", "infer", "--trials", "3", "--no-confirm"]
    assert main([*argv, "--python", str(python), "--storage", storage_url]) == 0
    err = capsys.readouterr().err
    # TensorFlow read the emulated CPU: oneDNN off by its default, and oneDNN's kernels (used by Eigen's
    # contractions) made for AVX2, the highest the CPU has.
    (probe,) = [line for line in err.splitlines() if "probe: tensorflow runs" in line]
    assert "oneDNN off" in probe and "kernels for Intel AVX2" in probe
    # The reference table's NCHW heuristic cannot run there: stored as not runnable with why, never tried.
    assert "baseline heuristic: not runnable here: NCHW needs oneDNN" in err
    (name,) = optuna.get_all_study_names(storage_url)
    study = optuna.load_study(study_name=name, storage=storage_url)
    assert study.user_attrs["runnable"]["baselines"]["heuristic"].startswith("not runnable here")
    # The three trials were the first baselines, tf-default, the heuristic's runnable NHWC part and oneDNN
    # forced on (the launchers' recipes stay queued for a run with more trials). Each ran to the end, NHWC,
    # and read back the oneDNN it ran with: off as TensorFlow chose on this CPU, on where the knob forced it.
    done = [t for t in study.trials if t.state == optuna.trial.TrialState.COMPLETE]
    onednn = {t.user_attrs.get("baseline"): t.user_attrs["measurement"]["facts"]["onednn"] for t in done}
    assert onednn == {"tf-default": False, "heuristic-nhwc": False, "onednn-on": True}
    assert {t.params["data_format"] for t in done} == {"NHWC"}
