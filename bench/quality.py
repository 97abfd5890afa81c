"""Quality: is the tuner's answer the fastest setting there is? Its pick against tf-default, the heuristic
and the grid optimum, all re-measured interleaved in one run.

    python -m bench.grid --mode infer --cores 2          # first: the whole grid, once (the reference optimum)
    python -m bench.quality --mode infer --cores 2 [--trials 20] [--rounds 5] [--timed 8]

1. The tuner searches as a user would: `tuner tune --no-confirm` with a normal budget (--trials complete
   trials, baselines included), stock TensorFlow, into its own SQLite file next to the output. Its pick is
   the study's best complete trial (what confirmation would then test against tf-default).
2. The pick, tf-default, the heuristic and the grid's best point are measured interleaved for --rounds
   rounds (order rotated each round, each run a fresh pinned process of 2 warm-up + --timed batches).
   Settings that coincide are measured once and share a name.
3. Printed and written: each one's median images/sec, and tuned / tf-default, tuned / heuristic and
   tuned / grid optimum as a ratio of medians with the paired hierarchical bootstrap 95% interval that
   confirmation uses (rounds resampled, then steps within them).

Runs are written to the JSON as they finish, so an interrupted run resumes where it stopped.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
from pathlib import Path
from typing import Any

import optuna
from optuna.trial import TrialState

from tuner.confirm import Candidate, bootstrap_ratio, confirm, pooled_median
from tuner.measurement import Measurement
from tuner.policy import MeasurementPolicy
from tuner.runner import runtime_runner
from tuner.runtime import load as load_runtime
from tuner.settings import Settings
from tuner.signature import cpu_signature
from tuner.space import load as load_space
from tuner.topology import core_set
from tuner.workload import Workload

NAMES = ("tuned", "tf-default", "heuristic", "grid optimum")


def grid_optimum(grid: dict[str, Any]) -> dict[str, Any]:
    measured = [p for p in grid["points"] if "images_per_sec" in p]
    return max(measured, key=lambda p: p["images_per_sec"])


def tuned_pick(storage: str, study_name: str) -> tuple[dict[str, Any], dict[str, Any]]:
    """The best complete trial's params, and where it came from (trial number, baseline or sampled)."""
    study = optuna.load_study(study_name=study_name, storage=storage)
    trials = study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
    best = max(trials, key=lambda t: t.value or 0.0)
    return best.params, {
        "trial": best.number,
        "baseline": best.user_attrs.get("baseline"),
        "search_images_per_sec": best.value,
        "complete_trials": len(trials),
    }


def candidates(named: dict[str, Settings]) -> tuple[list[Candidate], dict[str, str]]:
    """One candidate per distinct setting; ``alias`` maps every name to the candidate measured for it."""
    alias: dict[str, str] = {}
    unique: list[Candidate] = []
    for name, settings in named.items():
        same = next((c.name for c in unique if c.settings.label() == settings.label()), None)
        if same is None:
            unique.append(Candidate(name, settings))
            same = name
        alias[name] = same
    return unique, alias


def ratios(rates: dict[str, list[list[float]]], alias: dict[str, str]) -> dict[str, dict[str, Any]]:
    out: dict[str, dict[str, Any]] = {}
    tuned = alias["tuned"]
    for other in NAMES[1:]:
        if alias[other] == tuned:
            out[other] = {"value": 1.0, "low": 1.0, "high": 1.0, "same_setting": True}
            continue
        interval = bootstrap_ratio(rates[tuned], rates[alias[other]])
        per_round = [
            statistics.median(a) / statistics.median(b) for a, b in zip(rates[tuned], rates[alias[other]], strict=False)
        ]
        out[other] = {**interval.to_dict(), "same_setting": False, "per_round": per_round}
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m bench.quality", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--mode", default="infer", choices=("train", "infer"))
    parser.add_argument("--cores", type=int, default=2)
    parser.add_argument("--runtime", default="tensorflow")
    parser.add_argument("--model", default="resnet50", help="tiny for a dry run of the script")
    parser.add_argument("--trials", type=int, default=20, help="the tuner's budget (tune's default: 20)")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--timed", type=int, default=8)
    parser.add_argument("--grid", type=Path, default=None)
    parser.add_argument("--output", type=Path, default=None)
    args = parser.parse_args(argv)
    tag = f"{args.runtime}-{args.mode}-{args.cores}c"
    grid_path = args.grid or Path(f"bench/results/grid-{tag}.json")
    output = args.output or Path(f"bench/results/quality-{tag}.json")
    if not grid_path.exists():
        first = f"python -m bench.grid --mode {args.mode} --cores {args.cores}"
        print(f"{grid_path} is missing: run {first} first", file=sys.stderr)
        return 1
    grid = json.loads(grid_path.read_text())
    runtime = load_runtime(args.runtime)
    space = load_space(runtime.space, args.cores)
    if grid["space_hash"] != space.hash:
        print(f"{grid_path} was measured on another version of the space", file=sys.stderr)
        return 1
    data: dict[str, Any] = json.loads(output.read_text()) if output.exists() else {}

    # 1. The tuner's search, as a user runs it (resumes if its storage already holds the study).
    storage = f"sqlite:///{output.with_suffix('.db')}"
    if "tuned" not in data:
        argv_tune = [
            *[str(Path(sys.executable).parent / "tuner"), "tune", "--model", args.model, "--mode", args.mode],
            *["--cores", str(args.cores), "--runtime", args.runtime, "--trials", str(args.trials)],
            *["--budget", "none", "--no-confirm", "--storage", storage],
        ]
        print("$ " + " ".join(argv_tune), flush=True)
        subprocess.run(argv_tune, check=True)
        summaries = optuna.get_all_study_summaries(storage)
        name = next(s.study_name for s in summaries if f"-{args.mode}-" in s.study_name)
        params, origin = tuned_pick(storage, name)
        data = {
            "runtime": args.runtime,
            "model": args.model,
            "mode": args.mode,
            "cores": args.cores,
            "trials": args.trials,
            "study": name,
            "cpu": cpu_signature().to_dict(),
            "grid": str(grid_path),
            "tuned": {"params": params, **origin},
            "policy": {"warmup": 2, "timed": args.timed, "rounds": args.rounds},
            "runs": {},
        }
    best = grid_optimum(grid)
    # Baselines first, so that a pick equal to one of them is measured under the baseline's name.
    named = {
        "tf-default": Settings.from_params(space.baselines(args.cores)["tf-default"]),
        "heuristic": Settings.from_params(space.baselines(args.cores)["heuristic"]),
        "grid optimum": Settings.from_params(best["params"]),
        "tuned": Settings.from_params(data["tuned"]["params"]),
    }
    unique, alias = candidates(named)
    data["settings"] = {name: s.label() for name, s in named.items()}
    data["alias"] = alias

    # 2. Interleaved re-measurement, saved after every run.
    policy = MeasurementPolicy("quality", warmup=2, timed=args.timed, timeout_s=1800.0)
    workload = Workload(args.model, args.mode, 32)

    def save(_round: int, candidate: Candidate, measurement: Measurement) -> None:
        data["runs"].setdefault(candidate.name, []).append(measurement.rates)
        data.setdefault("framework", measurement.facts.get("framework_version"))
        tmp = output.with_suffix(".tmp")
        tmp.write_text(json.dumps(data, indent=1))
        tmp.replace(output)
        print(f"round {_round + 1}/{args.rounds} {candidate.name}: {statistics.median(measurement.rates):.2f} img/s")

    runner = runtime_runner(runtime)
    done = {name: list(runs) for name, runs in data["runs"].items()}
    verdict = confirm(runner, unique, workload, core_set(args.cores), policy, args.rounds, done=done, on_run=save)

    # 3. Figures.
    data["images_per_sec"] = {name: pooled_median(verdict.rates[alias[name]]) for name in NAMES}
    data["ratios"] = ratios(verdict.rates, alias)
    data["grid_optimum_in_grid"] = best["images_per_sec"]
    tmp = output.with_suffix(".tmp")
    tmp.write_text(json.dumps(data, indent=1))
    tmp.replace(output)
    print(f"\n{args.model} {args.mode}, {args.cores} cores, {args.runtime}: tuner's pick after {args.trials} trials "
          f"(trial {data['tuned']['trial']}, {data['tuned']['baseline'] or 'sampled'}), {args.rounds} interleaved "
          f"rounds of 2 + {args.timed} batches")  # fmt: skip
    for name in NAMES:
        same = f" (= {alias[name]})" if alias[name] != name else ""
        print(f"  {name:13} {data['settings'][name]:40} {data['images_per_sec'][name]:8.2f} img/s{same}")
    for other, r in data["ratios"].items():
        span = "same setting" if r["same_setting"] else f"95% CI {r['low']:.3f} to {r['high']:.3f}"
        print(f"  tuned / {other:13} {r['value']:.3f}  ({span})")
    print(f"written to {output}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
