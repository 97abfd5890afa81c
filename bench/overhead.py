"""Where a study's wall time goes: timed steps against process start, imports, model build, graph
tracing, warm-up and the tuner's own work, from the trials stored in a storage (no new measurement).

    python -m bench.overhead [--storage sqlite:///studies/tuner.db]
    python -m bench.overhead --ab infer [--cores 2] [--pairs 8]     # a cut, before and after, interleaved

Per complete trial the worker reports its import, build, first-step (trace), warm-up and timed seconds;
the runner adds the trial's wall time. What is left is the interpreter's start and exit and the parent's
work (spawn, channel, storage writes). Prints one row per study and a total, and writes JSON.

With --ab MODE it measures a cut instead: tf-default ResNet-50 bursts with the old policy (2 warm-up steps
after the trace, before) and the current one (tuner.policy.for_mode, after), in ABBA order, each a fresh
pinned process. Printed: the median wall time of a trial before and after with its range, the saving, and
images/sec before and after (ratio of medians with the paired bootstrap interval), which shows whether
the cut moved the figure the search ranks by.
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import optuna
from optuna.trial import TrialState

from tuner.confirm import bootstrap_ratio
from tuner.policy import BURST, for_mode
from tuner.runner import SubprocessRunner, TrialSpec
from tuner.settings import Settings
from tuner.topology import core_set
from tuner.workload import Workload

PARTS = ("timed", "warm-up", "trace", "build", "import", "start, exit, tuner")


def shares(trial: optuna.trial.FrozenTrial) -> dict[str, float] | None:
    m = trial.user_attrs.get("measurement", {})
    facts, wall = m.get("facts", {}), trial.user_attrs.get("trial_seconds")
    if not wall or "first_step_seconds" not in facts:
        return None
    seconds = {
        "timed": math.fsum(m["timed_seconds"]),
        "warm-up": math.fsum(m.get("warmup_seconds", [])),
        "trace": facts["first_step_seconds"],
        "build": facts.get("build_seconds", 0.0),
        "import": facts.get("import_seconds", 0.0),
    }
    seconds["start, exit, tuner"] = max(0.0, wall - math.fsum(seconds.values()))
    return seconds


def ab(mode: str, cores: int, pairs: int, output: Path) -> int:
    """Before (BURST, 2 warm-up steps) against after (the mode's policy), interleaved ABBA."""
    before, after = BURST, for_mode(BURST, mode)
    if before == after:
        print(f"the policy for {mode} is unchanged: nothing to compare", file=sys.stderr)
        return 1
    runner = SubprocessRunner()
    settings = Settings.from_params({"intra_op": 0, "inter_op": 0, "data_format": "NHWC"})
    workload = Workload("resnet50", mode, 32)
    runs: dict[str, list[dict[str, Any]]] = {"before": [], "after": []}
    order = [name for i in range(pairs) for name in (("before", "after") if i % 2 == 0 else ("after", "before"))]
    for index, name in enumerate(order, 1):
        policy = before if name == "before" else after
        started = time.monotonic()
        m = runner.run(TrialSpec(settings, workload, core_set(cores), policy))
        wall = time.monotonic() - started
        runs[name].append({"wall_seconds": wall, "images_per_sec": m.images_per_sec, "rates": m.rates})
        print(f"[{index}/{len(order)}] {name} (warm-up {policy.warmup}): {wall:.1f} s, {m.images_per_sec:.2f} img/s")
    walls = {name: [r["wall_seconds"] for r in rs] for name, rs in runs.items()}
    speed = bootstrap_ratio([r["rates"] for r in runs["after"]], [r["rates"] for r in runs["before"]])
    result = {
        "mode": mode,
        "cores": cores,
        "pairs": pairs,
        "before": {"warmup": before.warmup, "timed": before.timed},
        "after": {"warmup": after.warmup, "timed": after.timed},
        "median_wall_seconds": {name: statistics.median(w) for name, w in walls.items()},
        "range_wall_seconds": {name: [min(w), max(w)] for name, w in walls.items()},
        "saving": 1 - statistics.median(walls["after"]) / statistics.median(walls["before"]),
        "images_per_sec_after_over_before": speed.to_dict(),
        "runs": runs,
    }
    print(f"\nResNet-50 {mode}, {cores} cores, tf-default, {pairs} pairs (ABBA):")
    for name in ("before", "after"):
        low, high = result["range_wall_seconds"][name]
        print(f"  {name:6} warm-up {result[name]['warmup']}: median {result['median_wall_seconds'][name]:.1f} s "
              f"per trial (range {low:.1f} to {high:.1f})")  # fmt: skip
    print(f"  saving: {result['saving']:.1%} of a trial's wall time")
    print(f"  images/sec after / before: {speed.value:.3f} (95% CI {speed.low:.3f} to {speed.high:.3f})")
    output.parent.mkdir(parents=True, exist_ok=True)
    output.write_text(json.dumps(result, indent=1))
    print(f"written to {output}")
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m bench.overhead", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--storage", default="sqlite:///studies/tuner.db")
    parser.add_argument("--output", type=Path, default=None)
    parser.add_argument("--ab", choices=("train", "infer"), default=None, help="measure a cut, before and after")
    parser.add_argument("--cores", type=int, default=2)
    parser.add_argument("--pairs", type=int, default=8)
    args = parser.parse_args(argv)
    if args.ab:
        return ab(
            args.ab,
            args.cores,
            args.pairs,
            args.output or Path(f"bench/results/overhead-ab-{args.ab}-{args.cores}c.json"),
        )
    args.output = args.output or Path("bench/results/overhead.json")
    optuna.logging.set_verbosity(optuna.logging.ERROR)
    storage = optuna.storages.RDBStorage(args.storage)
    rows: dict[str, dict[str, float]] = {}
    for info in storage.get_all_studies():
        if "tuner" not in info.user_attrs:
            continue
        totals = dict.fromkeys(PARTS, 0.0)
        for trial in storage.get_all_trials(info._study_id, deepcopy=False, states=(TrialState.COMPLETE,)):
            found = shares(trial)
            for part, seconds in (found or {}).items():
                totals[part] += seconds
        if sum(totals.values()) > 0:
            rows[info.study_name] = totals
    if not rows:
        print(f"no complete trials with timings in {args.storage}", file=sys.stderr)
        return 1
    rows["all studies"] = {part: math.fsum(r[part] for r in rows.values()) for part in PARTS}
    print(f"{'study':58} {'wall s':>7} " + " ".join(f"{p:>9.9}" for p in PARTS))
    for name, totals in rows.items():
        wall = math.fsum(totals.values())
        print(f"{name[:58]:58} {wall:7.0f} " + " ".join(f"{totals[p] / wall:9.1%}" for p in PARTS))
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(json.dumps(rows, indent=1))
    print(f"written to {args.output}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
