"""Framework runtimes: a build, the Python environment its trials run in, its search space, its knobs.

Runtimes are data (``runtimes/NAME.toml``): adding one is adding a file. Each declares the knobs it honours;
a search space that varies any other knob is refused before the first trial, because searching a knob the
runtime ignores only fits noise. A one-trial probe checks the declaration against what the process loaded.
"""

from __future__ import annotations

import os
import platform
import re
import sys
import tomllib
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from optuna.distributions import BaseDistribution

from tuner.errors import SearchSpaceError, UsageError
from tuner.settings import KNOBS
from tuner.space import CHECKOUT, shipped

RUNTIMES_DIR = shipped("runtimes")
# Managed environments (.envs/) are working data, never inside the installed package. From a checkout (an
# editable install, as the README and CI install it) they stay where they always were, in the repository
# root beside runtimes/; installed from a wheel, where runtimes/ lies in site-packages, they go to .envs/ in
# the working directory, so `tuner env create` and `tuner run` must then start from the same folder.
# `$TUNER_ENVS` moves them anywhere (``envs_dir``): one set of environments for several checkouts, a larger
# disk, or a cache that outlives a fresh clone, as CI keeps it.
ROOT = CHECKOUT if RUNTIMES_DIR == CHECKOUT / "runtimes" else Path.cwd()
ENVS_DIR = ROOT / ".envs"
ENVS_VARIABLE = "TUNER_ENVS"
OPENMP_KNOBS = ("OMP_NUM_THREADS", "KMP_BLOCKTIME", "KMP_AFFINITY")
MANIFEST = "tuner-env.json"  # written when an environment's build has finished
SAFE_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*")
KEYS = {
    "name",
    "label",
    "description",
    "framework",
    "space",
    "environment",
    "packages",
    "python",
    "machines",
    "honours",
    "devices",
}
DEVICES = ("cpu", "gpu")
GPU_RUNTIME = "tensorflow-gpu"  # the GPU rows' runtime (runtimes/tensorflow-gpu.toml)
NVIDIA_DRIVER = Path("/proc/driver/nvidia/version")  # present when NVIDIA's kernel driver is loaded


def envs_dir() -> Path:
    """Where managed environments live: ``$TUNER_ENVS`` where set (made absolute from the working directory),
    else ``ENVS_DIR``; a path that exists and is not a folder is one line."""
    value = os.environ.get(ENVS_VARIABLE, "")
    if not value:
        return ENVS_DIR
    path = Path(value).expanduser().absolute()
    if path.exists() and not path.is_dir():
        raise UsageError(f"${ENVS_VARIABLE}={value!r} is not a folder: it says where managed environments live")
    return path


def env_lock(env_dir: Path) -> Path:
    """A managed environment's lock file, beside it (``.NAME.lock``): a build holds it exclusive, each trial
    run from the environment holds it shared."""
    return env_dir.parent / f".{env_dir.name}.lock"


def environment_of(python: str) -> Path | None:
    """The managed environment an interpreter path (``--python``) lies in, judged by its manifest beside
    ``bin/``; None for any other interpreter."""
    folder = Path(python).absolute().parent.parent
    return folder if (folder / MANIFEST).is_file() else None


def gpu_driver(version_file: Path | None = None) -> str | None:
    """The NVIDIA kernel driver's version line (``NVRM version: ...``; default file ``NVIDIA_DRIVER``), or None
    where no driver is loaded: read without any framework, so a GPU runtime is refused before a multi-GiB
    CUDA install."""
    try:
        lines = (version_file or NVIDIA_DRIVER).read_text(encoding="utf-8", errors="replace").splitlines()
    except OSError:
        return None
    return next((line.strip()[:160] for line in lines if line.strip()), "NVIDIA driver (version unknown)")


@dataclass(frozen=True)
class Runtime:
    name: str
    description: str
    space: str
    honours: tuple[str, ...]
    environment: str = ""  # managed environment under .envs/; "" = the tuner's own interpreter
    packages: tuple[str, ...] = ()
    python_versions: tuple[str, ...] = ()
    machines: tuple[str, ...] = ()
    framework: str = "tensorflow"
    path: Path = field(default=Path(), compare=False)
    label: str = ""  # how the benchmark table names it, like the reference table's first column
    devices: tuple[str, ...] = ("cpu",)  # what its rows run on: a CUDA build is for the GPU rows only

    @property
    def gpu_only(self) -> bool:
        return "cpu" not in self.devices

    @property
    def env_dir(self) -> Path | None:
        return envs_dir() / self.environment if self.environment else None

    @property
    def env_lock(self) -> Path | None:
        """The managed environment's lock file (``env_lock``)."""
        return env_lock(self.env_dir) if self.env_dir is not None else None

    def python(self) -> str:
        """The interpreter trials run with; a managed environment must have been created first."""
        if self.env_dir is None:
            return sys.executable
        foreign = self.foreign()
        if foreign is not None:  # an environment there was built on another machine (a shared $TUNER_ENVS)
            raise UsageError(f"runtime {self.name}: {foreign}")
        python = self.env_dir / "bin" / "python"
        if not python.exists():
            raise UsageError(f"runtime {self.name}: its environment is missing; run: tuner env create {self.name}")
        if not (self.env_dir / MANIFEST).exists():  # written last: without it the build did not finish
            raise UsageError(f"runtime {self.name}: its environment is incomplete; run: tuner env create {self.name}")
        return str(python)

    def foreign(self, machine: str | None = None) -> str | None:
        """Why this runtime cannot run on this machine (``machine``: this one's) at all, whatever environment
        is there: its wheels are for other machines only. None where it can."""
        machine = machine or platform.machine()
        if self.machines and machine not in self.machines:
            return f"{self.name} has wheels for {', '.join(self.machines)} Linux only, and this machine is {machine}"
        return None

    def installable(
        self, version: str | None = None, machine: str | None = None, driver: str | None = ""
    ) -> str | None:
        """Why this runtime cannot be installed for that Python and machine (and, for a GPU-only runtime, with
        that NVIDIA driver: "" reads this machine's), or None if it can."""
        driver = gpu_driver() if driver == "" else driver
        version = version or ".".join(platform.python_version_tuple()[:2])
        foreign = self.foreign(machine)
        if foreign is not None:  # first: no interpreter can mend it
            return foreign
        if self.python_versions and version not in self.python_versions:
            return (
                f"{self.name} has wheels for CPython {', '.join(self.python_versions)} only, and this is "
                f"CPython {version}: create it from a supported interpreter (tuner env create {self.name} "
                f"--with-python /path/to/python{self.python_versions[-1]})"
            )
        if self.gpu_only and driver is None:
            return (
                f"{self.name} runs the GPU rows and needs an NVIDIA GPU and its driver; none is loaded here "
                "(no NVIDIA driver version file), so its CUDA libraries are not installed"
            )
        return None

    def inert(self, distributions: Mapping[str, BaseDistribution]) -> list[str]:
        """Knobs the space varies (more than one value) that this runtime does not honour."""
        return [name for name, dist in distributions.items() if not dist.single() and name not in self.honours]


def check_knobs(runtime: Runtime, distributions: Mapping[str, BaseDistribution], allowed: Iterable[str]) -> list[str]:
    """Refuse a space varying a knob the runtime does not declare, unless the user allowed it; return the
    knobs searched anyway, to be recorded as inert. OpenMP knobs are not refused here: whether an OpenMP
    library runs is read back by the probe, and the study takes them out if none does (tuner/capability.py)."""
    allowed = set(allowed)
    inert = runtime.inert(distributions)
    refused = [knob for knob in inert if knob not in allowed and knob not in OPENMP_KNOBS]
    if refused:
        raise SearchSpaceError(
            f"runtime {runtime.name} ignores knob {refused[0]} (this runtime does not declare it); searching it "
            f"would only fit noise. Use a runtime that honours it, or pass --allow-inert {refused[0]} to search "
            "it anyway"
        )
    return [knob for knob in inert if knob in allowed]


def _strings(path: Path, key: str, value: Any) -> tuple[str, ...]:
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise UsageError(f"{path}: {key}: must be a list of strings")
    return tuple(value)


def load(name: str) -> Runtime:
    """The runtime declared in ``runtimes/NAME.toml``."""
    path = RUNTIMES_DIR / f"{name}.toml"
    if not SAFE_NAME.fullmatch(name) or not path.exists():
        raise UsageError(f"unknown runtime {name!r}; known: {', '.join(names())}")
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError) as error:
        raise UsageError(f"{path}: cannot read runtime: {error}") from None
    unknown = sorted(set(data) - KEYS)
    if unknown:
        raise UsageError(f"{path}: {unknown[0]}: unknown key; expected {sorted(KEYS)}")
    honours = _strings(path, "honours", data.get("honours", []))
    bad = [knob for knob in honours if knob not in KNOBS]
    if bad:
        raise UsageError(f"{path}: honours: unknown knob {bad[0]!r}")
    for key in ("name", "label", "description", "space", "environment", "framework"):
        if not isinstance(data.get(key, ""), str):
            raise UsageError(f"{path}: {key}: must be a string")
    devices = _strings(path, "devices", data.get("devices", ["cpu"]))
    if not devices or not set(devices) <= set(DEVICES):
        raise UsageError(f"{path}: devices: must list cpu, gpu or both")
    environment = data.get("environment", "")
    if environment and not SAFE_NAME.fullmatch(environment):
        raise UsageError(
            f"{path}: environment: {environment!r} must be a plain folder name (under .envs/ or $TUNER_ENVS)"
        )
    return Runtime(
        name=data.get("name", name),
        description=data.get("description", ""),
        space=data.get("space", name),
        honours=honours,
        environment=data.get("environment", ""),
        packages=_strings(path, "packages", data.get("packages", [])),
        python_versions=_strings(path, "python", data.get("python", [])),
        machines=_strings(path, "machines", data.get("machines", [])),
        framework=data.get("framework", "tensorflow"),
        path=path,
        label=data.get("label", "") or data.get("name", name),
        devices=devices,
    )


def names() -> list[str]:
    return sorted(p.stem for p in RUNTIMES_DIR.glob("*.toml"))


def cpu_names() -> list[str]:
    """The runtimes whose rows run on the CPU: what `tuner run` tunes by default, in its order: stock
    TensorFlow first (what most programs run, so that a budget too short for every study measures it before
    the OpenMP build and plain Eigen), then the others by name."""
    return sorted((name for name in names() if not load(name).gpu_only), key=lambda name: name != "tensorflow")


def for_device(runtime: Runtime, device: str) -> Runtime:
    """``runtime`` if it runs on ``device``; else one line saying which runtime does."""
    if device == "cpu" and runtime.gpu_only:
        raise UsageError(f"runtime {runtime.name} runs the GPU rows only (tuner benchmark --device gpu); "
                         f"for the CPU use {', '.join(cpu_names())}")  # fmt: skip
    return runtime
