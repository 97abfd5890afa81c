"""The one place that maps knobs to the child's environment and framework calls.

A ``Settings`` is frozen and validated on construction, so nothing user-supplied reaches a child except as
checked values. The child's environment is built from an allowlist of the parent's plus the knobs' own
variables: stray OMP_*, KMP_*, TF_* of the user's shell never leak into a measurement.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from tuner.allocator import ALLOCATORS, AllocatorMissing
from tuner.allocator import environ as allocator_environ
from tuner.errors import InvalidSettings

# Variables copied from the parent: enough to find programs, locale and temp space, nothing that tunes.
ENV_ALLOWLIST = ("PATH", "HOME", "USER", "LOGNAME", "LANG", "LC_ALL", "LC_CTYPE", "TMPDIR", "TZ")
# Fixed for every trial so that runs are comparable and the channel is the only output that matters.
ENV_FIXED = {
    "TF_CPP_MIN_LOG_LEVEL": "1",
    "PYTHONDONTWRITEBYTECODE": "1",
    "CUDA_VISIBLE_DEVICES": "",
    "KERAS_BACKEND": "tensorflow",
}

DATA_FORMATS = {"NHWC": "channels_last", "NCHW": "channels_first"}
_AFFINITY = re.compile(
    r"disabled|none|((granularity=(fine|core|thread),)?(verbose,)?(compact|scatter|balanced)(,[0-9]{1,3}){0,2})"
)


def _int(name: str, value: Any, low: int, high: int = 4096) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
        raise InvalidSettings(f"{name} must be an integer from {low} to {high}, got {value!r}")
    return value


def _blocktime(value: Any) -> str:
    if value == "infinite":
        return "infinite"
    return str(_int("KMP_BLOCKTIME", value, 0, 2_147_483_647))


def _affinity(value: Any) -> str:
    if not isinstance(value, str) or not _AFFINITY.fullmatch(value):
        raise InvalidSettings(f"KMP_AFFINITY {value!r} is not a supported affinity string")
    return value


ONEDNN_DEFAULT = "default"  # TF_ENABLE_ONEDNN_OPTS left unset: TensorFlow's own per-CPU choice


def _onednn(value: Any) -> str | None:
    if value == ONEDNN_DEFAULT:
        return None
    if not isinstance(value, bool):
        raise InvalidSettings(f"onednn must be true, false or {ONEDNN_DEFAULT!r}, got {value!r}")
    return "1" if value else "0"


# ONEDNN_MAX_CPU_ISA: the highest instruction set oneDNN may JIT its kernels for ("default": all the CPU has).
# The x86 values that oneDNN 2.x and 3.x both accept, in their order; a cap above what the CPU has changes
# nothing, so the space takes such values out (tuner/capability.py, ``isa_in_cpu``).
ONEDNN_ISAS = ("avx2", "avx2_vnni", "avx512_core", "avx512_core_vnni", "avx512_core_bf16", "avx512_core_amx")


def _onednn_isa(value: Any) -> str | None:
    if value == ONEDNN_DEFAULT:
        return None
    if value not in ONEDNN_ISAS:
        choices = ", ".join(ONEDNN_ISAS)
        raise InvalidSettings(f"onednn_isa must be {ONEDNN_DEFAULT!r} or one of {choices}, got {value!r}")
    return str(value).upper()


# Knobs applied as environment variables: name -> validator returning the variable's text (None: left unset).
ENV_KNOBS: dict[str, Callable[[Any], str | None]] = {
    "OMP_NUM_THREADS": lambda v: str(_int("OMP_NUM_THREADS", v, 1)),
    "KMP_BLOCKTIME": _blocktime,
    "KMP_AFFINITY": _affinity,
    "onednn": _onednn,
    "onednn_isa": _onednn_isa,
}
ENV_NAMES = {"onednn": "TF_ENABLE_ONEDNN_OPTS", "onednn_isa": "ONEDNN_MAX_CPU_ISA"}
# Older names the library still reads where the knob's own is unset: a launcher unsets them, so that a value
# left in the user's shell cannot cap a program the knob left uncapped.
ENV_ALIASES = {"onednn_isa": ("DNNL_MAX_CPU_ISA",)}
FRAMEWORK_KNOBS = ("intra_op", "inter_op", "data_format")
PRECISIONS = ("fp32", "bf16")  # bf16: Keras mixed_bfloat16 (bf16 compute, fp32 variables)


def _choice(name: str, choices: tuple[str, ...]) -> Callable[[Any], Any]:
    def check(value: Any) -> Any:
        if value not in choices:
            raise InvalidSettings(f"{name} must be one of {', '.join(choices)}, got {value!r}")
        return value

    return check


MAX_BATCH = 4096  # as a workload's (tuner/workload.py imports models, so it cannot be imported here)

# Knobs one level above the framework, applied by the runner: how many pinned processes share the cores, which
# allocator they preload, the compute precision, and the batch (0: the study's own; searched with --search-batch,
# rates stay per sample). Each has a default that leaves the trial as it was.
LAUNCH_KNOBS: dict[str, tuple[Any, Callable[[Any], Any]]] = {
    "instances": (1, lambda v: _int("instances", v, 1, 1024)),
    "allocator": (ALLOCATORS[0], _choice("allocator", ALLOCATORS)),
    "precision": (PRECISIONS[0], _choice("precision", PRECISIONS)),
    "batch": (0, lambda v: _int("batch", v, 0, MAX_BATCH)),
}
KNOBS = FRAMEWORK_KNOBS + tuple(ENV_KNOBS) + tuple(LAUNCH_KNOBS)


@dataclass(frozen=True)
class Settings:
    """Threading and layout knobs for one trial. ``intra_op``/``inter_op`` of 0 let TensorFlow choose."""

    intra_op: int = 0
    inter_op: int = 0
    data_format: str = "NHWC"
    env_knobs: tuple[tuple[str, Any], ...] = field(default=())
    launch: tuple[tuple[str, Any], ...] = field(default=())  # launch knobs away from their defaults only

    def __post_init__(self) -> None:
        _int("intra_op", self.intra_op, 0)
        _int("inter_op", self.inter_op, 0)
        if not isinstance(self.data_format, str) or self.data_format not in DATA_FORMATS:
            raise InvalidSettings(f"data_format must be NHWC or NCHW, got {self.data_format!r}")
        for name, value in self.env_knobs:
            if name not in ENV_KNOBS:
                raise InvalidSettings(f"unknown knob {name!r}; known: {', '.join(KNOBS)}")
            ENV_KNOBS[name](value)
        for name, value in self.launch:
            if name not in LAUNCH_KNOBS:
                raise InvalidSettings(f"unknown knob {name!r}; known: {', '.join(KNOBS)}")
            LAUNCH_KNOBS[name][1](value)
            if value == LAUNCH_KNOBS[name][0]:
                raise InvalidSettings(f"{name}={value} is the default: leave it out")

    @classmethod
    def from_params(cls, params: Mapping[str, Any]) -> Settings:
        """Build from a flat mapping of knob names, as Optuna's trial params are."""
        unknown = sorted(set(params) - set(KNOBS))
        if unknown:
            raise InvalidSettings(f"unknown knob {unknown[0]!r}; known: {', '.join(KNOBS)}")
        env = tuple(sorted((k, v) for k, v in params.items() if k in ENV_KNOBS))
        framework = {k: v for k, v in params.items() if k in FRAMEWORK_KNOBS}
        # A launch knob at its default is left out, so settings that run alike have one label; each value is
        # checked first, so that `instances = true` (equal to 1 in Python) is refused, not taken as the default.
        for name in LAUNCH_KNOBS.keys() & params.keys():
            LAUNCH_KNOBS[name][1](params[name])
        launch = tuple((k, params[k]) for k in LAUNCH_KNOBS if k in params and params[k] != LAUNCH_KNOBS[k][0])
        return cls(env_knobs=env, launch=launch, **framework)

    @classmethod
    def parse(cls, text: str) -> Settings:
        """Parse ``'intra_op=2,inter_op=1,KMP_BLOCKTIME=30'``; values are typed, never evaluated."""
        params: dict[str, Any] = {}
        for item in filter(None, (part.strip() for part in text.split(";" if ";" in text else ","))):
            name, sep, raw = item.partition("=")
            if not sep or not name.strip():
                raise InvalidSettings(f"settings item {item!r} is not name=value")
            if name.strip() in params:
                raise InvalidSettings(f"knob {name.strip()!r} is given twice")
            params[name.strip()] = _typed(raw.strip())
        return cls.from_params(params)

    def params(self) -> dict[str, Any]:
        """The flat knob mapping (inverse of ``from_params``)."""
        return {
            "intra_op": self.intra_op,
            "inter_op": self.inter_op,
            "data_format": self.data_format,
            **dict(self.env_knobs),
            **dict(self.launch),
        }

    def _launch(self, name: str) -> Any:
        return dict(self.launch).get(name, LAUNCH_KNOBS[name][0])

    @property
    def instances(self) -> int:
        """How many pinned worker processes share the trial's cores (each runs the whole workload)."""
        return int(self._launch("instances"))

    @property
    def allocator(self) -> str:
        return str(self._launch("allocator"))

    @property
    def precision(self) -> str:
        return str(self._launch("precision"))

    @property
    def batch(self) -> int:
        """Samples per step per instance; 0 runs the workload's own batch size."""
        return int(self._launch("batch"))

    def preload_environ(self) -> dict[str, str]:
        """LD_PRELOAD (and jemalloc's MALLOC_CONF) for the allocator: from the system's own libraries only."""
        try:
            return allocator_environ(self.allocator)
        except AllocatorMissing as error:
            raise InvalidSettings(f"allocator {error}") from None

    def label(self) -> str:
        """'intra_op=2;inter_op=1;...': joined with ``;``, so a printed label pastes back into ``--settings``
        even where a value holds a comma (``KMP_AFFINITY=granularity=core,scatter``)."""
        return ";".join(f"{k}={v}" for k, v in self.params().items())

    def knob_environ(self) -> dict[str, str]:
        """Environment variables set by the knobs themselves (a knob at its "default" sets none)."""
        values = {ENV_NAMES.get(k, k): ENV_KNOBS[k](v) for k, v in self.env_knobs}
        return {name: text for name, text in values.items() if text is not None}

    def knob_unset(self) -> list[str]:
        """Variables the knobs leave unset on purpose (a knob at its "default", and the older names of every
        knob's variable): a launcher must unset them."""
        unset = [ENV_NAMES.get(k, k) for k, v in self.env_knobs if ENV_KNOBS[k](v) is None]
        return unset + [alias for k, _ in self.env_knobs for alias in ENV_ALIASES.get(k, ())]

    def environ(self, parent: Mapping[str, str], gpus: bool = False, keras_home: str = "") -> dict[str, str]:
        """The child's whole environment: allowlisted parent variables, fixed ones, then the knobs. GPUs are
        hidden (``CUDA_VISIBLE_DEVICES=""``) unless ``gpus``: then the parent's choice of GPUs passes.
        ``keras_home`` is the run's private, empty Keras folder: neither ~/.keras nor a shared folder that
        someone else made first can switch the backend or the float type."""
        env = {k: parent[k] for k in ENV_ALLOWLIST if k in parent}
        env.update(ENV_FIXED)
        if keras_home:
            env["KERAS_HOME"] = keras_home
        if gpus:
            del env["CUDA_VISIBLE_DEVICES"]
            if "CUDA_VISIBLE_DEVICES" in parent:
                env["CUDA_VISIBLE_DEVICES"] = parent["CUDA_VISIBLE_DEVICES"]
        env.update(self.knob_environ())
        env.update(self.preload_environ())
        return env

    def framework_calls(self) -> dict[str, Any]:
        """Values the worker applies through the framework before its first op."""
        return {
            "intra_op": self.intra_op,
            "inter_op": self.inter_op,
            "data_format": DATA_FORMATS[self.data_format],
            "precision": self.precision,
        }


def _typed(raw: str) -> Any:
    if re.fullmatch(r"-?[0-9]+", raw):
        return int(raw)
    if raw.lower() in ("true", "false"):
        return raw.lower() == "true"
    return raw
