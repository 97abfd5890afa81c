"""Search spaces as data: TOML files in Optuna's distribution vocabulary.

::

    [knobs.intra_op]
    type = "int"            # or "categorical" with choices = [...]
    low = 0
    high = "2*cores"        # bounds may refer to the study's core count: N, "cores", "N*cores"

    constraints = ["inter_op_not_above_intra_op"]   # names of Python predicates, never evaluated text

    [baselines.heuristic]
    intra_op = "cores"

Every error names the file and the key and is raised as one ``SearchSpaceError`` line.
"""

from __future__ import annotations

import hashlib
import importlib.resources
import itertools
import json
import re
import tomllib
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import optuna
from optuna.distributions import BaseDistribution, CategoricalDistribution, IntDistribution

from tuner.errors import InvalidSettings, SearchSpaceError
from tuner.records import BASELINE_NAME, NAME_LENGTH, SUFFIX_ROOM
from tuner.settings import KNOBS, ONEDNN_DEFAULT, ONEDNN_ISAS, Settings
from tuner.topology import cores_text

CHECKOUT = Path(__file__).resolve().parent.parent  # the repository, when tuner runs from a checkout


def shipped(folder: str) -> Path:
    """The data folder ``runtimes`` or ``search_spaces`` that comes with tuner.

    Both stay at the top of the repository; pyproject.toml installs them as tuner.runtimes and
    tuner.search_spaces, so a wheel carries them inside the package, read here through importlib.resources.
    An editable install (the README's and CI's) or a bare checkout reads the repository's folders instead:
    setuptools' editable finder cannot import a mapped folder without an ``__init__.py`` (pypa/setuptools#4943).
    """
    installed = importlib.resources.files("tuner").joinpath(folder)
    if isinstance(installed, Path) and installed.is_dir():
        return installed
    return CHECKOUT / folder


SPACES_DIR = shipped("search_spaces")
_CORES = re.compile(r"^\s*(?:(\d+)\s*\*\s*)?cores(?:\s*\*\s*(\d+))?\s*$")
_PER = re.compile(r"^\s*cores\s*/\s*(\d+|sockets)\s*$")  # cores/4: instances of about 4 cores each
TOP_KEYS = {"runtime", "description", "knobs", "constraints", "baselines"}
INT_KEYS = {"type", "low", "high", "step", "log"}
CATEGORICAL_KEYS = {"type", "choices"}
MAX_VALUE = 1_000_000
MAX_CORES = "max_cores"  # a baseline key, not a knob: the rule it stands for holds up to that many cores
GRID_LIMIT = 100_000  # spaces larger than this are not enumerated


def _effective(params: Mapping[str, Any], name: str, cores: int) -> int:
    value = int(params.get(name, 0))
    return cores if value == 0 else value  # 0 lets TensorFlow choose: about one thread per core


# Named constraints: a trial whose params break one is not measured. Add predicates here, by name.
CONSTRAINTS: dict[str, Callable[[Mapping[str, Any], int], bool]] = {
    "inter_op_not_above_intra_op": lambda p, c: _effective(p, "inter_op", c) <= _effective(p, "intra_op", c),
    "omp_threads_match_intra_op": lambda p, c: p.get("OMP_NUM_THREADS") in (None, _effective(p, "intra_op", c)),
    # Instances share the cores equally, and threads follow an instance's own cores (0: TensorFlow's choice,
    # which reads the instance's CPU mask): at most 2 intra-op and 1 inter-op thread per core of an instance.
    "instances_divide_cores": lambda p, c: c % int(p.get("instances", 1)) == 0,
    "threads_fit_instance": lambda p, c: (
        int(p.get("intra_op", 0)) <= 2 * max(1, c // int(p.get("instances", 1)))
        and int(p.get("inter_op", 0)) <= max(1, c // int(p.get("instances", 1)))
    ),
}


@dataclass(frozen=True)
class SearchSpace:
    """A parsed, validated space. Bounds stay symbolic until ``distributions(cores)``."""

    path: Path
    data: Mapping[str, Any]

    @property
    def name(self) -> str:
        return self.path.stem

    @property
    def hash(self) -> str:
        """Hash of the parsed content (not the file bytes), so comments and layout do not matter."""
        return hashlib.sha256(json.dumps(self.data, sort_keys=True).encode()).hexdigest()[:12]

    @property
    def constraints(self) -> list[str]:
        return list(self.data.get("constraints", []))

    def distributions(self, cores: int) -> dict[str, BaseDistribution]:
        return {name: _distribution(self.path, name, spec, cores) for name, spec in self.data["knobs"].items()}

    def size(self, cores: int) -> int:
        """How many distinct settings the space holds at this core count."""
        total = 1
        for dist in self.distributions(cores).values():
            if isinstance(dist, CategoricalDistribution):
                total *= len(dist.choices)
            elif isinstance(dist, IntDistribution):
                total *= (dist.high - dist.low) // dist.step + 1
        return total

    def grid(self, cores: int, limit: int = GRID_LIMIT) -> list[dict[str, Any]] | None:
        """Every setting of the space at this core count, or None when there are more than ``limit``."""
        if self.size(cores) > limit:
            return None
        values: dict[str, list[Any]] = {}
        for name, dist in self.distributions(cores).items():
            if isinstance(dist, CategoricalDistribution):
                values[name] = list(dist.choices)
            elif isinstance(dist, IntDistribution):
                values[name] = list(range(dist.low, dist.high + 1, dist.step))
        return [dict(zip(values, combo, strict=True)) for combo in itertools.product(*values.values())]

    def suggest(self, trial: optuna.Trial, cores: int) -> dict[str, Any]:
        params: dict[str, Any] = {}
        for name, dist in self.distributions(cores).items():
            if isinstance(dist, IntDistribution):
                params[name] = trial.suggest_int(name, dist.low, dist.high, step=dist.step, log=dist.log)
            elif isinstance(dist, CategoricalDistribution):
                params[name] = trial.suggest_categorical(name, dist.choices)
        return params

    def violated(self, params: Mapping[str, Any], cores: int) -> str | None:
        """The first named constraint that ``params`` break, or None."""
        return next((c for c in self.constraints if not CONSTRAINTS[c](params, cores)), None)

    def baselines(self, cores: int, sockets: int = 1) -> dict[str, dict[str, Any]]:
        """Baseline params by name, with symbolic values resolved for ``cores`` on ``sockets`` sockets; a
        baseline with ``max_cores`` (a rule for small CPUs) applies only up to that many cores."""
        return {
            name: {
                knob: _value(self.path, f"baselines.{name}.{knob}", v, cores, sockets)
                for knob, v in spec.items()
                if knob != MAX_CORES
            }
            for name, spec in self.data.get("baselines", {}).items()
            if cores <= int(spec.get(MAX_CORES, cores))
        }


def with_batches(space: SearchSpace, batches: Sequence[int], batch: int) -> SearchSpace:
    """``space`` with the batch size searched over ``batches`` and ``batch``, the study's own, which every
    baseline keeps (rates are per sample, so the values compare across batches)."""
    if "batch" in space.data["knobs"]:
        raise SearchSpaceError(f"{space.path}: knobs.batch: the space searches it already; leave --search-batch out")
    knobs = {**space.data["knobs"], "batch": {"type": "categorical", "choices": sorted({*batches, batch})}}
    baselines = {name: {**spec, "batch": batch} for name, spec in space.data.get("baselines", {}).items()}
    return SearchSpace(space.path, {**space.data, "knobs": knobs, "baselines": baselines})


def with_isa(space: SearchSpace) -> SearchSpace:
    """``space`` with oneDNN's instruction-set cap searched (``ONEDNN_MAX_CPU_ISA``: ``default`` and every cap);
    the caps this CPU lacks the instructions for are taken out before the study (capability.isa_in_cpu), and
    every baseline keeps the default, as it runs without the tuner."""
    if "onednn_isa" in space.data["knobs"]:
        raise SearchSpaceError(f"{space.path}: knobs.onednn_isa: the space searches it already; leave --search-isa out")
    knobs = {**space.data["knobs"], "onednn_isa": {"type": "categorical", "choices": [ONEDNN_DEFAULT, *ONEDNN_ISAS]}}
    baselines = {name: {**spec, "onednn_isa": ONEDNN_DEFAULT} for name, spec in space.data.get("baselines", {}).items()}
    return SearchSpace(space.path, {**space.data, "knobs": knobs, "baselines": baselines})


def searched_batches(space: SearchSpace) -> list[int]:
    """The batch sizes a space searches (empty: it keeps the study's)."""
    spec = space.data["knobs"].get("batch")
    if spec is None:
        return []
    if spec.get("type") == "categorical":
        return sorted(int(c) for c in spec["choices"])
    return list(range(int(spec["low"]), int(spec["high"]) + 1, int(spec.get("step", 1))))


def _fail(path: Path, key: str, message: str) -> SearchSpaceError:
    return SearchSpaceError(f"{path}: {key}: {message}")


def _value(path: Path, key: str, raw: Any, cores: int, sockets: int = 1) -> Any:
    """A literal, or a symbol resolved for the core count and the sockets the core set spans: ``cores``,
    ``N*cores``, ``sockets``, ``cores/sockets`` (cores per socket) and ``cores/N`` (the largest divisor of the
    core count not above cores/N, at least 1: how many instances of about N cores fit)."""
    if isinstance(raw, str) and (match := _CORES.match(raw)):
        return int(match.group(1) or 1) * int(match.group(2) or 1) * cores
    if isinstance(raw, str) and raw.strip() == "sockets":
        return sockets
    if isinstance(raw, str) and (match := _PER.match(raw)):
        if match.group(1) == "sockets":
            return max(1, cores // sockets)
        if int(match.group(1)) < 1:
            raise _fail(path, key, f"{raw!r}: divide by a positive number")
        most = max(1, cores // int(match.group(1)))
        return max(d for d in range(1, most + 1) if cores % d == 0)
    if isinstance(raw, float):  # TOML's 0.5 or 2.0: thread counts and the like are whole numbers
        raise _fail(path, key, f"{raw!r} is not a whole number; give an integer, 'cores', 'N*cores' or 'cores/N'")
    if isinstance(raw, (bool, int, str)):
        return raw
    raise _fail(path, key, f"{raw!r} is not a number, a string, true/false, 'cores', 'N*cores' or 'cores/N'")


def _bound(path: Path, key: str, raw: Any, cores: int) -> int:
    value = _value(path, key, raw, cores)
    if isinstance(value, bool) or not isinstance(value, int):
        raise _fail(path, key, f"{raw!r} is not an integer, 'cores' or 'N*cores'")
    if not 0 <= value <= MAX_VALUE:
        raise _fail(path, key, f"{value} is outside 0..{MAX_VALUE}")
    return value


def _distribution(path: Path, name: str, spec: Mapping[str, Any], cores: int) -> BaseDistribution:
    key = f"knobs.{name}"
    if spec.get("type") == "int":
        low = _bound(path, f"{key}.low", spec.get("low"), cores)
        high = _bound(path, f"{key}.high", spec.get("high"), cores)
        step = spec.get("step", 1)
        log = spec.get("log", False)
        if isinstance(step, bool) or not isinstance(step, int) or step < 1:
            raise _fail(path, f"{key}.step", f"{step!r} is not a positive integer")
        if not isinstance(log, bool):
            raise _fail(path, f"{key}.log", f"{log!r} is not true or false")
        if low > high:
            raise _fail(path, key, f"low {low} is above high {high} at {cores_text(cores)}")
        if log and (low < 1 or step != 1):
            raise _fail(path, key, "a log scale needs low >= 1 and step 1")
        return IntDistribution(low, high - (high - low) % step, log=log, step=step)
    choices = spec.get("choices")
    if not isinstance(choices, list) or not choices:
        raise _fail(path, f"{key}.choices", "a categorical knob needs a non-empty list of choices")
    if any(isinstance(c, (list, dict, float)) for c in choices) or len({(type(c), c) for c in choices}) < len(choices):
        raise _fail(path, f"{key}.choices", "choices must be distinct strings, integers or booleans")
    return CategoricalDistribution(choices)


def _check_keys(path: Path, key: str, table: Any, allowed: set[str]) -> None:
    if not isinstance(table, dict):
        raise _fail(path, key, "must be a table")
    unknown = sorted(set(table) - allowed)
    if unknown:
        raise _fail(path, f"{key}.{unknown[0]}" if key else unknown[0], f"unknown key; expected {sorted(allowed)}")


def validate(path: Path, data: dict[str, Any], max_cores: int) -> None:
    """Check the whole file at every core count from 1 to ``max_cores``; raise on the first problem."""
    _check_keys(path, "", data, TOP_KEYS)
    knobs = data.get("knobs")
    if not isinstance(knobs, dict) or not knobs:
        raise _fail(path, "knobs", "missing: declare at least one [knobs.NAME] table")
    for name, spec in knobs.items():
        if name not in KNOBS:
            raise _fail(path, f"knobs.{name}", f"unknown knob; known: {', '.join(KNOBS)}")
        if not isinstance(spec, dict) or spec.get("type") not in ("int", "categorical"):
            raise _fail(path, f"knobs.{name}.type", "must be 'int' or 'categorical'")
        _check_keys(path, f"knobs.{name}", spec, INT_KEYS if spec["type"] == "int" else CATEGORICAL_KEYS)
    for key in ("runtime", "description"):
        if not isinstance(data.get(key, ""), str):
            raise _fail(path, key, "must be a string")
    constraints = data.get("constraints", [])
    if not isinstance(constraints, list):
        raise _fail(path, "constraints", "must be a list of constraint names")
    for name in constraints:
        if not isinstance(name, str) or name not in CONSTRAINTS:
            raise _fail(path, "constraints", f"unknown constraint {name!r}; known: {', '.join(CONSTRAINTS)}")
    baselines = data.get("baselines", {})
    if not isinstance(baselines, dict):
        raise _fail(path, "baselines", "must be a table of [baselines.NAME] tables")
    for name, spec in baselines.items():
        if not BASELINE_NAME.fullmatch(name):
            raise _fail(
                path,
                f"baselines.{name}",
                f"rename it: a baseline's name is letters, digits and . _ + - (at most {NAME_LENGTH - SUFFIX_ROOM})",
            )
        if not isinstance(spec, dict):
            raise _fail(path, f"baselines.{name}", "must be a table of knob values")
        limit = spec.get(MAX_CORES, 1)
        if isinstance(limit, bool) or not isinstance(limit, int) or limit < 1:
            raise _fail(path, f"baselines.{name}.{MAX_CORES}", f"{limit!r} is not a positive core count")
    if max_cores < 1:
        raise SearchSpaceError(f"{path}: cannot validate for {max_cores} cores")
    space = SearchSpace(path, data)
    for cores in range(1, max_cores + 1):
        dists = space.distributions(cores)
        _check_values(path, dists)
        for base, params in space.baselines(cores).items():
            _check_baseline(path, base, params, dists)
            broken = space.violated(params, cores)
            if broken:
                raise _fail(path, f"baselines.{base}", f"breaks constraint {broken} at {cores_text(cores)}")


def _check_values(path: Path, dists: dict[str, BaseDistribution]) -> None:
    """Every value any knob can take (each choice; an integer knob's bounds) must pass ``Settings``, so a
    bad choice or a huge bound is refused when the file loads, never half-way through a study."""
    for name, dist in dists.items():
        if isinstance(dist, CategoricalDistribution):
            values: tuple[Any, ...] = dist.choices
        elif isinstance(dist, IntDistribution):
            values = (dist.low, dist.high)
        for value in values:
            try:
                Settings.from_params({name: value})
            except InvalidSettings as error:
                raise _fail(path, f"knobs.{name}", str(error)) from None


def _check_baseline(path: Path, base: str, params: dict[str, Any], dists: dict[str, BaseDistribution]) -> None:
    for knob, value in params.items():
        dist = dists.get(knob)
        if dist is None:
            raise _fail(path, f"baselines.{base}.{knob}", "not a knob of this space")
        if not contains(dist, value):
            raise _fail(path, f"baselines.{base}.{knob}", f"{value!r} is outside {dist}")
    missing = sorted(set(dists) - set(params))
    if missing:
        raise _fail(path, f"baselines.{base}", f"no value for knob {missing[0]!r}")
    try:
        Settings.from_params(params)
    except InvalidSettings as error:
        raise _fail(path, f"baselines.{base}", str(error)) from None


def contains(dist: BaseDistribution, value: Any) -> bool:
    """Whether ``value`` is a point of ``dist`` as it is, type included: an int in range on its step, or one
    of the choices (where Optuna's own check takes 1 or 1.0 for the choice True, and True for the int 1)."""
    if isinstance(dist, IntDistribution):
        return type(value) is int and dist.low <= value <= dist.high and (value - dist.low) % dist.step == 0
    if isinstance(dist, CategoricalDistribution):
        return any(type(choice) is type(value) and choice == value for choice in dist.choices)
    return False


def resolve_path(name_or_path: str) -> Path:
    """A bare name means ``search_spaces/NAME.toml``; anything else is a path."""
    candidate = Path(name_or_path)
    if candidate.suffix == "" and not candidate.exists():
        candidate = SPACES_DIR / f"{name_or_path}.toml"
    return candidate


def load(name_or_path: str, max_cores: int) -> SearchSpace:
    path = resolve_path(name_or_path)
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise SearchSpaceError(f"{path}: no such search-space file") from None
    except (OSError, UnicodeDecodeError) as error:
        raise SearchSpaceError(f"{path}: cannot read: {error}") from None
    except tomllib.TOMLDecodeError as error:
        raise SearchSpaceError(f"{path}: not valid TOML: {error}") from None
    validate(path, data, max_cores)
    return SearchSpace(path, data)
