"""Noise: one setting measured again and again, as bursts and as full runs, and how many interleaved
confirmation rounds a 95% interval narrower than 3% needs on this machine.

    python -m bench.noise [--mode infer] [--cores 2] [--bursts 10] [--full 4] [--full-timed 100]

Bursts are the search's (2 warm-up + 5 timed), full runs the benchmark's (10 + 100 by default); each run
is a fresh pinned process with tf-default settings, bursts and full runs interleaved. Reported: the CV of
per-step rates within a run (median over runs) and the CV of run medians across runs. Then, from the
recorded bursts, the confirmation's paired bootstrap is replayed for tf-default against itself with n
rounds drawn from the record: the median width of its 95% interval for each n, and the first n under 3%.
"""

from __future__ import annotations

import argparse
import json
import random
import statistics
import sys
from pathlib import Path

from tuner.confirm import bootstrap_ratio
from tuner.policy import BURST, MeasurementPolicy
from tuner.runner import SubprocessRunner, TrialSpec
from tuner.settings import Settings
from tuner.topology import core_set
from tuner.workload import Workload

TARGET_WIDTH = 0.03


def cv(values: list[float]) -> float:
    return statistics.stdev(values) / statistics.mean(values) if len(values) > 1 else 0.0


def replay_widths(bursts: list[list[float]], paired: bool) -> dict[int, float]:
    """Median width of the confirmation's 95% interval for tf-default against itself, n rounds replayed from
    the recorded bursts. Unpaired: each side's rounds drawn from any burst (drift counts fully as noise).
    Paired: each round is two bursts measured one after the other, as interleaved confirmation measures
    them, so a level shift between rounds hits both sides of a round."""
    widths: dict[int, float] = {}
    rng = random.Random(1)
    for rounds in range(2, 11):
        samples = []
        for trial in range(40):
            if paired:
                starts = [rng.randrange(len(bursts) - 1) for _ in range(rounds)]
                pairs = [
                    (bursts[k], bursts[k + 1]) if rng.random() < 0.5 else (bursts[k + 1], bursts[k]) for k in starts
                ]
                a, b = [p[0] for p in pairs], [p[1] for p in pairs]
            else:
                a = [rng.choice(bursts) for _ in range(rounds)]
                b = [rng.choice(bursts) for _ in range(rounds)]
            interval = bootstrap_ratio(a, b, seed=trial)
            samples.append(interval.high - interval.low)
        widths[rounds] = statistics.median(samples)
    return widths


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m bench.noise", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--mode", default="infer", choices=("train", "infer"))
    parser.add_argument("--cores", type=int, default=2)
    parser.add_argument("--bursts", type=int, default=10)
    parser.add_argument("--full", type=int, default=4)
    parser.add_argument("--full-timed", type=int, default=100)
    parser.add_argument("--output", type=Path, default=None)
    parser.add_argument("--replay", action="store_true", help="recompute the figures from --output's runs")
    args = parser.parse_args(argv)
    output = args.output or Path(f"bench/results/noise-{args.mode}-{args.cores}c.json")
    full = MeasurementPolicy("full", warmup=10, timed=args.full_timed, timeout_s=3600.0)
    runner = SubprocessRunner()
    workload = Workload("resnet50", args.mode, 32)
    runs: dict[str, list[list[float]]] = {"burst": [], "full": []}
    plan = [] if args.replay else ["burst"] * args.bursts + ["full"] * args.full
    if args.replay:
        runs = json.loads(output.read_text())["runs"]
    random.Random(0).shuffle(plan)  # interleave bursts and full runs, so drift hits both
    for index, kind in enumerate(plan, 1):
        policy = BURST if kind == "burst" else full
        m = runner.run(TrialSpec(Settings(), workload, core_set(args.cores), policy))
        runs[kind].append(m.rates)
        print(f"[{index}/{len(plan)}] {kind}: {m.images_per_sec:.2f} img/s, per-step cv {m.cv:.1%}", flush=True)
    report: dict[str, object] = {"mode": args.mode, "cores": args.cores, "runs": runs}
    print(f"\nResNet-50 {args.mode}, {args.cores} cores, tf-default")
    for kind, found in runs.items():
        if not found:
            continue
        within = statistics.median(cv(r) for r in found)
        across = cv([statistics.median(r) for r in found])
        report[kind] = {"within_run_cv": within, "across_run_cv": across, "runs": len(found)}
        print(f"{kind:5}: {len(found)} runs; per-step CV within a run {within:.1%} (median); "
              f"CV of run medians across runs {across:.1%}")  # fmt: skip
    bursts = runs["burst"]
    for name, paired in (("unpaired", False), ("paired", True)):
        widths = replay_widths(bursts, paired)
        enough = next((n for n, w in widths.items() if w < TARGET_WIDTH), None)
        report[f"interval_width_by_rounds_{name}"] = widths
        report[f"rounds_for_3pct_{name}"] = enough
        how = "time neighbours, as interleaving pairs them" if paired else "any two bursts"
        print(f"95% interval width of tf-default vs itself by confirmation rounds, {name} ({how}):")
        print("  " + ", ".join(f"{n}: {w:.1%}" for n, w in widths.items()))
        print(f"  rounds for an interval narrower than {TARGET_WIDTH:.0%}: {enough if enough else 'more than 10'}")
    output.parent.mkdir(parents=True, exist_ok=True)
    output.write_text(json.dumps(report, indent=1))
    print(f"written to {output}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
