"""Search cost on a recorded grid: how many trials each sampler needs to come within 2% of the optimum.

    python -m bench.search_cost bench/results/grid-tensorflow-infer-2c.json [...] [--seeds 50] [--budget 30]
    python -m bench.search_cost GRID... --samplers gp --seeds 10 --output bench/results/search_cost_gp.json

The grid (``python -m bench.grid``) holds every setting's recorded per-step rates. A replayed trial's value is the
median of as many rates resampled from that setting's record as a burst times, so each seed sees noise
as large as the machine's. A sampler "gets there" at the first trial after which the setting it would pick
(best observed value so far) is truly, by the grid's medians, within 2% of the grid optimum. Counted
per seed: distinct settings measured (the tool never measures a setting twice). Two starts: the sampler
alone, and as the tool runs it, after the space's baselines. Samplers: TPE (the default), random, CMA-ES,
GP (if PyTorch is installed), and a Nelder-Mead simplex over the knobs' grid indices like TensorTuner's.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import math
import random
import statistics
import sys
import warnings
from collections.abc import Callable
from functools import partial
from pathlib import Path
from typing import Any

import optuna
from optuna.distributions import CategoricalDistribution, IntDistribution

from tuner.capability import Capabilities
from tuner.settings import Settings
from tuner.space import load as load_space
from tuner.study import make_sampler

WITHIN = 0.98
Pick = Callable[[dict[str, Any]], float]  # params -> a noisy measured value
# The tool's duplicate key (a setting's label as StudyRun compares them). Without a probe "onednn: default"
# stays a setting of its own, as it is in the recorded grid.
SAME_SETTING = Capabilities()


class Replay:
    def __init__(self, data: dict[str, Any], seed: int) -> None:
        self.points: dict[str, dict[str, Any]] = {
            Settings.from_params(p["params"]).label(): p for p in data["points"] if "rates" in p
        }
        self.true: dict[str, float] = {label: statistics.median(p["rates"]) for label, p in self.points.items()}
        self.optimum = max(self.true.values())
        self.rng = random.Random(seed)

    def measure(self, params: dict[str, Any]) -> float:
        rates: list[float] = self.points[Settings.from_params(params).label()]["rates"]
        return statistics.median(self.rng.choice(rates) for _ in rates)

    def good(self, params: dict[str, Any]) -> bool:
        return self.true[Settings.from_params(params).label()] >= WITHIN * self.optimum


def trials_to_target(order: list[tuple[dict[str, Any], float]], replay: Replay) -> int | None:
    """1-based count of distinct measured settings until the best observed one is truly within 2%."""
    best: tuple[float, dict[str, Any]] | None = None
    for count, (params, value) in enumerate(order, 1):
        if best is None or value > best[0]:
            best = (value, params)
        if replay.good(best[1]):
            return count
    return None


def run_optuna(sampler: optuna.samplers.BaseSampler, data: dict[str, Any], replay: Replay, budget: int,
               baselines: list[dict[str, Any]]) -> list[tuple[dict[str, Any], float]]:  # fmt: skip
    space = load_space(data["space"], data["cores"])
    study = optuna.create_study(direction="maximize", sampler=sampler)
    for params in baselines:
        study.enqueue_trial(params)
    seen: dict[str, float] = {}
    order: list[tuple[dict[str, Any], float]] = []
    attempts = 0
    while len(order) < budget and attempts < budget * 20:
        attempts += 1
        trial = study.ask()
        params = space.suggest(trial, data["cores"])
        label = SAME_SETTING.label(params)
        if label in seen:  # the tool skips a setting it has measured: no new measurement
            study.tell(trial, state=optuna.trial.TrialState.PRUNED)
            continue
        if label not in replay.points:
            study.tell(trial, state=optuna.trial.TrialState.FAIL)
            continue
        value = replay.measure(params)
        seen[label] = value
        order.append((params, value))
        study.tell(trial, value)
        if len(seen) == len(replay.points):
            break
    return order


def run_simplex(data: dict[str, Any], replay: Replay, budget: int, seed: int,
                baselines: list[dict[str, Any]]) -> list[tuple[dict[str, Any], float]]:  # fmt: skip
    """Nelder-Mead over the knobs' grid indices (categoricals by index), each vertex rounded to the grid."""
    space = load_space(data["space"], data["cores"])
    axes: dict[str, list[Any]] = {}
    for name, dist in space.distributions(data["cores"]).items():
        if isinstance(dist, CategoricalDistribution):
            axes[name] = list(dist.choices)
        elif isinstance(dist, IntDistribution):
            axes[name] = list(range(dist.low, dist.high + 1, dist.step))
    names = [n for n in axes if len(axes[n]) > 1]
    fixed = {n: axes[n][0] for n in axes if len(axes[n]) == 1}
    seen: dict[str, float] = {}
    order: list[tuple[dict[str, Any], float]] = []

    def params_of(x: list[float]) -> dict[str, Any]:
        return {**fixed, **{n: axes[n][min(len(axes[n]) - 1, max(0, round(v)))] for n, v in zip(names, x, strict=True)}}

    def f(x: list[float]) -> float:
        params = params_of(x)
        label = Settings.from_params(params).label()
        if label not in replay.points:
            return -math.inf
        if label not in seen:
            seen[label] = replay.measure(params)
            order.append((params, seen[label]))
        return seen[label]

    for params in baselines:
        f([float(axes[n].index(params[n])) for n in names])
    rng = random.Random(seed)
    start = [rng.uniform(0, len(axes[n]) - 1) for n in names]
    simplex = [start]
    for i in range(len(names)):  # one step of half an axis along each knob
        simplex.append(
            [v + (len(axes[n]) - 1) / 2 * (i == j) for j, (n, v) in enumerate(zip(names, start, strict=True))]
        )
    values = [f(x) for x in simplex]
    for _ in range(budget * 10):
        if len(order) >= budget or len(seen) == len(replay.points):
            break
        ranked = sorted(zip(values, simplex, strict=True), key=lambda pair: -pair[0])
        values, simplex = [v for v, _ in ranked], [x for _, x in ranked]
        centroid = [statistics.mean(x[k] for x in simplex[:-1]) for k in range(len(names))]
        worst = simplex[-1]
        reflected = [c + (c - w) for c, w in zip(centroid, worst, strict=True)]
        fr = f(reflected)
        if fr > values[0]:
            expanded = [c + 2 * (c - w) for c, w in zip(centroid, worst, strict=True)]
            fe = f(expanded)
            simplex[-1], values[-1] = (expanded, fe) if fe > fr else (reflected, fr)
        elif fr > values[-2]:
            simplex[-1], values[-1] = reflected, fr
        else:
            contracted = [c + 0.5 * (w - c) for c, w in zip(centroid, worst, strict=True)]
            fc = f(contracted)
            if fc > values[-1]:
                simplex[-1], values[-1] = contracted, fc
            else:  # shrink towards the best, or restart somewhere new once it has collapsed
                best = simplex[0]
                simplex = [best] + [[b + 0.5 * (x - b) for b, x in zip(best, s, strict=True)] for s in simplex[1:]]
                if max(abs(a - b) for s in simplex[1:] for a, b in zip(s, best, strict=True)) < 0.5:
                    simplex = [best] + [[rng.uniform(0, len(axes[n]) - 1) for n in names] for _ in names]
                values = [f(x) for x in simplex]
    return order[:budget]


def samplers(seed: int) -> dict[str, Callable[[], optuna.samplers.BaseSampler] | None]:
    """Factories by name, None where not installed or not an Optuna sampler. The tool's samplers come from its
    own factory, so they are the ones `tuner tune --sampler` runs; the others exist only here."""
    found: dict[str, Callable[[], optuna.samplers.BaseSampler] | None] = {
        "tpe": partial(make_sampler, "tpe", seed),
        "random": partial(make_sampler, "random", seed),
        "cmaes": None,
        "gp": None,
        "nelder-mead": None,  # run by run_simplex
    }
    if importlib.util.find_spec("cmaes") is not None:
        found["cmaes"] = lambda: optuna.samplers.CmaEsSampler(seed=seed, warn_independent_sampling=False)
    if importlib.util.find_spec("torch") is not None:
        found["gp"] = lambda: optuna.samplers.GPSampler(seed=seed)
    return found


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m bench.search_cost", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("grids", nargs="+", type=Path)
    parser.add_argument("--seeds", type=int, default=50)
    parser.add_argument("--budget", type=int, default=30)
    parser.add_argument("--samplers", default=None, help="comma list (default all): tpe,random,cmaes,gp,nelder-mead")
    parser.add_argument("--output", type=Path, default=Path("bench/results/search_cost.json"))
    args = parser.parse_args(argv)
    wanted = args.samplers.split(",") if args.samplers else list(samplers(0))
    unknown = set(wanted) - set(samplers(0))
    if unknown:
        parser.error(f"unknown sampler(s): {', '.join(sorted(unknown))}")
    optuna.logging.set_verbosity(optuna.logging.ERROR)
    warnings.filterwarnings("ignore")
    results: dict[str, Any] = {}
    print(f"trials (distinct settings measured) until the pick is within {1 - WITHIN:.0%} of the grid optimum; "
          f"{args.seeds} seeds, budget {args.budget}")  # fmt: skip
    print(f"{'grid':34} {'start':10} {'sampler':12} {'median':>7} {'p90':>5} {'reached':>8}")
    for path in args.grids:
        data = json.loads(path.read_text())
        space = load_space(data["space"], data["cores"])
        named = list(space.baselines(data["cores"]).values())
        for start, baselines in (("alone", []), ("baselines", named)):
            for name in wanted:
                counts: list[float] = []
                unavailable = None
                for seed in range(args.seeds):
                    replay = Replay(data, seed)
                    make = samplers(seed)[name]
                    if name == "nelder-mead":
                        order = run_simplex(data, replay, args.budget, seed, baselines)
                    elif make is None:
                        unavailable = "not installed (cmaes)" if name == "cmaes" else "not installed (torch)"
                        break
                    else:
                        order = run_optuna(make(), data, replay, args.budget, baselines)
                    reached = trials_to_target(order, replay)
                    counts.append(math.inf if reached is None else reached)
                key = f"{path.stem}/{start}/{name}"
                if unavailable:
                    results[key] = {"unavailable": unavailable}
                    print(f"{path.stem:34} {start:10} {name:12} {unavailable}")
                    continue
                finite = sorted(counts)
                median = statistics.median(finite)
                p90 = finite[min(len(finite) - 1, int(0.9 * len(finite)))]
                share = sum(c != math.inf for c in counts) / len(counts)
                results[key] = {"median": median, "p90": p90, "reached": share, "counts": counts}
                print(f"{path.stem:34} {start:10} {name:12} {median:7.1f} {p90:5.0f} {share:8.0%}")
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(json.dumps(results, indent=1, default=str))
    print(f"written to {args.output}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
