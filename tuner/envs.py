"""Managed target environments (``.envs/NAME``): the Python a runtime's trials run in, with pinned packages.

The controller (Optuna, SQLAlchemy) stays in the tuner's environment; a target environment holds only the
framework, since the worker imports nothing else. Creation is idempotent: a manifest records what was
installed, and an environment whose manifest matches and whose framework imports is left alone.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from tuner import interrupt
from tuner.errors import TunerError, UsageError
from tuner.lockfile import held
from tuner.progress import duration
from tuner.runtime import MANIFEST, Runtime, env_lock

VERSION_PROBE = "import sys, tensorflow as tf; print(sys.version.split()[0], tf.__version__)"


@dataclass(frozen=True)
class EnvReport:
    runtime: str
    path: Path
    created: bool  # False: it already existed and was up to date
    seconds: float
    size_bytes: int
    python_version: str
    framework_version: str

    def line(self) -> str:
        verb = f"created in {self.seconds:.0f} s" if self.created else "already up to date"
        return (
            f"{self.runtime}: {self.path} {verb}; {self.size_bytes / 2**20:.0f} MiB, "
            f"Python {self.python_version}, framework {self.framework_version}"
        )


def folder_size(path: Path) -> int:
    total = 0
    for root, _, files in os.walk(path):
        for name in files:
            file = Path(root) / name
            try:  # pip may be writing and removing files as it is counted
                if not file.is_symlink():
                    total += file.stat().st_size
            except OSError:
                continue
    return total


def _interpreter_version(python: str) -> str:
    try:
        out = subprocess.run([python, "-c", "import sys; print('%d.%d' % sys.version_info[:2])"],
                             capture_output=True, text=True, timeout=60, check=True)  # fmt: skip
    except (OSError, subprocess.SubprocessError) as error:
        raise UsageError(f"cannot run interpreter {python}: {error}") from None
    return out.stdout.strip()


def _versions(python: Path) -> tuple[str, str] | None:
    """Python and framework versions as the environment reports them, or None if the framework won't import."""
    try:
        out = subprocess.run([str(python), "-c", VERSION_PROBE], capture_output=True, text=True, timeout=300)
    except (OSError, subprocess.SubprocessError):
        return None
    parts = out.stdout.split()
    return (parts[-2], parts[-1]) if out.returncode == 0 and len(parts) >= 2 else None


def read_manifest(path: Path) -> dict[str, Any] | None:
    try:
        data = json.loads((path / MANIFEST).read_text())
    except (OSError, json.JSONDecodeError):
        return None
    fields: dict[str, type | tuple[type, ...]] = {
        "packages": list, "framework_version": str, "size_bytes": int, "seconds": (int, float), "created": str,
    }  # fmt: skip
    if not isinstance(data, dict) or not all(isinstance(data.get(k), t) for k, t in fields.items()):
        return None  # unreadable or foreign: treated as absent, so `env create` rebuilds
    return data


def create(runtime: Runtime, with_python: str = sys.executable, log: Callable[[str], None] = print) -> EnvReport:
    """Build (or confirm) the runtime's managed environment."""
    path = runtime.env_dir
    if path is None:
        raise UsageError(f"runtime {runtime.name} runs in the tuner's own environment: nothing to create")
    reason = runtime.installable(version=_interpreter_version(with_python))
    if reason:
        raise UsageError(reason)
    lock = env_lock(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        raise UsageError(f"cannot make the environments folder {path.parent}: {error.strerror}") from None

    # Another tuner sharing these environments ($TUNER_ENVS) may be building this one, or running trials from
    # it. Looking needs the lock shared (trials hold it so too); a build needs it alone, and looks again once
    # it has it, so two builds never clear each other's work or a running trial's interpreter.
    def waiting() -> None:
        log(f"waiting for another tuner using {path} (lock {lock})")

    with held(lock, waiting, shared=True, what="the environment lock", missing_ok=True):
        current = _current(runtime, path)
    if current is not None:
        return current
    with held(lock, waiting, what="the environment lock"):
        return _current(runtime, path) or _build(runtime, path, with_python, log)


def _current(runtime: Runtime, path: Path) -> EnvReport | None:
    """The environment's report if its manifest matches the runtime's packages and its framework imports."""
    manifest = read_manifest(path)
    if manifest and manifest.get("packages") == list(runtime.packages):
        versions = _versions(path / "bin" / "python")
        if versions:
            return EnvReport(runtime.name, path, False, 0.0, folder_size(path), *versions)
    return None


BUILD_LINE_S = 30.0  # a build step (pip's download and unpacking of a framework) says it goes on this often


def _run_saying(argv: list[str], path: Path, log: Callable[[str], None]) -> tuple[int, str]:
    """Run one build step (its output on stderr, its errors kept for the failure line); every
    ``BUILD_LINE_S`` it runs, a line says so with the environment's size so far (pip's own progress bar is
    off: it would garble a log). Ctrl-C stops it at once, and the step is killed."""
    started = time.monotonic()
    with interrupt.interruptible():
        process = subprocess.Popen(argv, stdout=sys.stderr, stderr=subprocess.PIPE, text=True)
        try:
            while True:
                try:
                    _, stderr = process.communicate(timeout=BUILD_LINE_S)  # retried, it loses no output
                    return process.returncode, stderr
                except subprocess.TimeoutExpired:
                    size, ran = folder_size(path) / 2**20, duration(time.monotonic() - started)
                    log(f"{argv[2]} {argv[3]} still running: {ran}, {path} {size:.0f} MiB")
        except BaseException:
            process.kill()
            process.wait()
            raise


def _build(runtime: Runtime, path: Path, with_python: str, log: Callable[[str], None]) -> EnvReport:
    """Build the environment at ``path``; the caller holds its lock alone."""
    started = time.monotonic()
    steps = [
        [with_python, "-m", "venv", "--clear", str(path)],
        [str(path / "bin" / "python"), "-m", "pip", "install", "--progress-bar", "off", *runtime.packages],
    ]
    for argv in steps:
        log(f"$ {' '.join(argv)}")
        returncode, stderr = _run_saying(argv, path, log)
        if returncode != 0:
            tail = " | ".join(stderr.strip().splitlines()[-3:])
            raise TunerError(f"creating {path} failed at {argv[2]} {argv[3]}: {tail}")
    log(f"checking that {runtime.name}'s framework imports in {path} ...")
    versions = _versions(path / "bin" / "python")
    if versions is None:
        raise TunerError(f"{path}: installed, but its framework does not import")
    seconds = time.monotonic() - started
    report = EnvReport(runtime.name, path, True, seconds, folder_size(path), *versions)
    partial = path / f"{MANIFEST}.partial"
    partial.write_text(json.dumps({
        "runtime": runtime.name, "packages": list(runtime.packages), "python_version": versions[0],
        "framework_version": versions[1], "seconds": seconds, "size_bytes": report.size_bytes,
        "created": datetime.now(UTC).isoformat(timespec="seconds"),
    }, indent=2))  # fmt: skip
    os.replace(partial, path / MANIFEST)  # the marker that the build finished, written atomically
    return report
