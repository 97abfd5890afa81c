"""In-process screening against fresh-process trials: does one process that measures many thread settings
(tuner/screening.py) rank them as fresh processes do, and how many more settings an hour does it measure?

    python -m bench.screening --mode infer --cores 2 [--rounds 3] [--intra 1,2,4] [--inter 1,2] [--spinning on,off]

A grid of thread settings (intra_op x inter_op; the rest TensorFlow's defaults, NHWC) for ResNet-50 batch 32 is
measured in rounds. Each round measures every setting once in one screening process (its own seeded order,
spinning on and, where asked, off) and once as fresh-process trials (SubprocessRunner, the search's policy
for the mode, seeded order), the two alternating which goes first (ABBA). Both hold the host lock per process.
Printed per setting: images/sec (median of every round's per-step rates) both ways and their ratio; then the
Spearman rank correlation of the two (over the settings fresh processes can run: spinning on), the same
correlation between halves of the rounds of each way (the noise's own ceiling), the largest relative
difference, whether the screen's best is within the noise of the fresh-process best (the paired bootstrap
interval of fresh best / fresh rate of the screen's pick includes 1), and settings measured per hour each way
(the time each process held the host lock: process start to exit). The decision rule: adopt screening as the
search's first stage only if Spearman >= 0.9, the best agrees within the noise and trials per hour at least
double. JSON goes to bench/results/screening-<mode>-<cores>c.json, rewritten after every round.
"""

from __future__ import annotations

import argparse
import json
import random
import statistics
import sys
import time
from pathlib import Path
from typing import Any

from scipy.stats import spearmanr  # type: ignore[import-untyped]  # no stubs installed

from tuner.confirm import bootstrap_ratio, pooled_median
from tuner.measurement import Measurement
from tuner.policy import BURST, for_mode
from tuner.runner import SubprocessRunner, TrialSpec
from tuner.screening import Screen, ScreenPoint, run_screen, split_settings
from tuner.settings import Settings
from tuner.signature import cpu_signature
from tuner.topology import core_set
from tuner.workload import Workload

SPEARMAN_MIN = 0.9
SPEEDUP_MIN = 2.0


def held_seconds(facts: dict[str, Any]) -> float:
    """How long the process held the host lock (its start to its exit): the cost of the measurement."""
    lock = facts.get("host_lock") or {}
    return float(lock.get("to", 0.0)) - float(lock.get("from", 0.0))


def ints(text: str) -> list[int]:
    return [int(part) for part in text.split(",") if part.strip()]


def cv(values: list[float]) -> float:
    return statistics.stdev(values) / statistics.mean(values) if len(values) > 1 else 0.0


def spearman(a: list[float], b: list[float]) -> float:
    return float(spearmanr(a, b).statistic) if len(a) > 2 else float("nan")


def analyse(data: dict[str, Any]) -> dict[str, Any]:
    """The figures from the recorded rounds (also rerun on a partial record)."""
    fresh: dict[str, list[list[float]]] = {}
    screen: dict[str, list[list[float]]] = {}
    fresh_s: list[float] = []
    screen_s: list[float] = []
    screen_points = 0
    for record in data["rounds"]:
        for label, run in record["fresh"].items():
            fresh.setdefault(label, []).append(run["rates"])
            fresh_s.append(run["held_seconds"])
        for label, run in record["screen"]["points"].items():
            screen.setdefault(label, []).append(run["rates"])
        screen_s.append(record["screen"]["held_seconds"])
        screen_points += len(record["screen"]["points"])
    common = [label for label in fresh if f"{label};spinning=true" in screen]
    rows: list[dict[str, Any]] = []
    for label in common:
        f, s = pooled_median(fresh[label]), pooled_median(screen[f"{label};spinning=true"])
        f_rounds = [statistics.median(r) for r in fresh[label]]
        s_rounds = [statistics.median(r) for r in screen[f"{label};spinning=true"]]
        rows.append(
            {
                "settings": label,
                "fresh": f,
                "screen": s,
                "ratio": s / f,
                "fresh_round_cv": cv(f_rounds),
                "screen_round_cv": cv(s_rounds),
            }
        )
    extra = {label: pooled_median(runs) for label, runs in screen.items() if label.endswith("spinning=false")}
    rounds = len(data["rounds"])
    halves: dict[str, float] = {}
    if rounds >= 2:
        for name, runs in (("fresh", fresh), ("screen", screen)):
            keys = common if name == "fresh" else [f"{label};spinning=true" for label in common]
            even = [pooled_median(runs[k][0::2]) for k in keys]
            odd = [pooled_median(runs[k][1::2]) for k in keys]
            halves[name] = spearman(even, odd)
    fresh_best = max(rows, key=lambda r: r["fresh"])["settings"]
    screen_best = max(rows, key=lambda r: r["screen"])["settings"]
    gap = bootstrap_ratio(fresh[fresh_best], fresh[screen_best])
    largest = max(rows, key=lambda r: abs(r["ratio"] - 1))
    per_hour = {
        "fresh": 3600 * len(fresh_s) / sum(fresh_s),
        "screen": 3600 * screen_points / sum(screen_s),
    }
    figures = {
        "rounds": rounds,
        "rows": rows,
        "screen_only": extra,
        "spearman": spearman([r["screen"] for r in rows], [r["fresh"] for r in rows]),
        "split_half_spearman": halves,
        "largest_difference": {"settings": largest["settings"], "relative": largest["ratio"] - 1},
        "fresh_best": fresh_best,
        "screen_best": screen_best,
        "fresh_best_over_screen_pick": gap.to_dict(),
        "best_within_noise": screen_best == fresh_best or gap.low <= 1.0,
        "trials_per_hour": per_hour,
        "speedup": per_hour["screen"] / per_hour["fresh"],
        "seconds_per_setting": {
            "fresh": statistics.median(fresh_s),
            "screen": sum(screen_s) / screen_points,
        },
        "median_round_cv": {
            "fresh": statistics.median(r["fresh_round_cv"] for r in rows),
            "screen": statistics.median(r["screen_round_cv"] for r in rows),
        },
    }
    figures["adopt"] = bool(
        figures["spearman"] >= SPEARMAN_MIN and figures["best_within_noise"] and figures["speedup"] >= SPEEDUP_MIN
    )
    return figures


def report(data: dict[str, Any], figures: dict[str, Any]) -> None:
    print(f"\nResNet-50 {data['mode']} b{data['batch']}, {data['cores']} cores, {figures['rounds']} rounds; images/sec "
          "(median of all rounds' per-step rates):")  # fmt: skip
    print(f"  {'settings':28} {'fresh':>8} {'screen':>8} {'ratio':>7} {'fresh CV':>9} {'screen CV':>9}")
    for r in sorted(figures["rows"], key=lambda r: -r["fresh"]):
        print(f"  {r['settings']:28} {r['fresh']:8.2f} {r['screen']:8.2f} {r['ratio']:7.3f} "
              f"{r['fresh_round_cv']:9.1%} {r['screen_round_cv']:9.1%}")  # fmt: skip
    for label, rate in sorted(figures["screen_only"].items()):
        print(f"  {label:50} screen only {rate:8.2f}")
    print(
        f"  Spearman screen vs fresh: {figures['spearman']:.3f}; between halves of the rounds: "
        + ", ".join(f"{k} {v:.3f}" for k, v in figures["split_half_spearman"].items())
    )
    largest = figures["largest_difference"]
    print(f"  largest difference: {largest['relative']:+.1%} ({largest['settings']})")
    gap = figures["fresh_best_over_screen_pick"]
    print(f"  best: fresh {figures['fresh_best']}, screen {figures['screen_best']}; fresh best / screen's pick "
          f"(fresh rates) {gap['value']:.3f} [95% {gap['low']:.3f}, {gap['high']:.3f}]: "
          f"{'within' if figures['best_within_noise'] else 'outside'} the noise")  # fmt: skip
    per_hour, per = figures["trials_per_hour"], figures["seconds_per_setting"]
    print(f"  settings per hour: fresh {per_hour['fresh']:.0f} ({per['fresh']:.1f} s each), screen "
          f"{per_hour['screen']:.0f} ({per['screen']:.1f} s each): x{figures['speedup']:.2f}")  # fmt: skip
    print(f"  round-to-round CV (median over settings): fresh {figures['median_round_cv']['fresh']:.1%}, "
          f"screen {figures['median_round_cv']['screen']:.1%}")  # fmt: skip
    print(f"  adopt as the search's first stage (Spearman >= {SPEARMAN_MIN}, best within noise, x{SPEEDUP_MIN:.0f} "
          f"trials/hour): {'yes' if figures['adopt'] else 'no'}")  # fmt: skip


def write(output: Path, data: dict[str, Any]) -> None:
    output.parent.mkdir(parents=True, exist_ok=True)
    tmp = output.with_suffix(".tmp")
    tmp.write_text(json.dumps(data, indent=1))
    tmp.replace(output)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m bench.screening", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--mode", default="infer", choices=("train", "infer"))
    parser.add_argument("--cores", type=int, default=2)
    parser.add_argument("--model", default="resnet50")
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--intra", type=ints, default=[1, 2, 4])
    parser.add_argument("--inter", type=ints, default=[1, 2])
    parser.add_argument("--spinning", default="on,off", choices=("on", "on,off"))
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--output", type=Path, default=None)
    args = parser.parse_args(argv)
    output = args.output or Path(f"bench/results/screening-{args.mode}-{args.cores}c.json")
    cores = core_set(args.cores)
    workload = Workload(args.model, args.mode, args.batch)
    policy = for_mode(BURST, args.mode)
    settings = [Settings(intra_op=i, inter_op=j) for i in args.intra for j in args.inter]
    base, points = split_settings(settings)
    spinning = (True, False) if args.spinning == "on,off" else (True,)
    every = tuple(ScreenPoint(p.intra_op, p.inter_op, s) for p in points for s in spinning)
    runner = SubprocessRunner()
    data: dict[str, Any] = {
        "model": args.model, "mode": args.mode, "batch": args.batch, "cores": args.cores, "seed": args.seed,
        "policy": {"warmup": policy.warmup, "timed": policy.timed}, "cpu": cpu_signature().to_dict(),
        "settings": [s.label() for s in settings], "rounds": [],
    }  # fmt: skip
    started = time.monotonic()
    for index in range(args.rounds):
        seed = args.seed * 1000 + index
        record: dict[str, Any] = {"round": index, "fresh": {}}
        for way in ("screen", "fresh") if index % 2 == 0 else ("fresh", "screen"):
            if way == "screen":
                begin = time.monotonic()
                result = run_screen(runner, Screen(base, every, workload, cores, policy, seed))
                record["screen"] = {
                    "seed": seed,
                    "held_seconds": result.wall_seconds,
                    "seconds": time.monotonic() - begin,
                    "import_seconds": result.facts.get("import_seconds"),
                    "build_seconds": result.facts.get("build_seconds"),
                    "points": {
                        p.label(): point_record(m) for p, m in zip(result.points, result.measurements, strict=True)
                    },
                }
                print(f"[round {index + 1}/{args.rounds}] screen: {len(every)} settings in "
                      f"{result.wall_seconds:.1f} s (import {result.facts.get('import_seconds', 0):.1f} s, build "
                      f"{result.facts.get('build_seconds', 0):.1f} s)", flush=True)  # fmt: skip
                continue
            order = list(settings)
            random.Random(seed).shuffle(order)
            for s in order:
                m = runner.run(TrialSpec(s, workload, cores, policy))
                held = held_seconds(m.facts)
                record["fresh"][s.label().removesuffix(";data_format=NHWC")] = {
                    "rates": m.rates, "held_seconds": held, "threads": m.facts.get("threads"),
                }  # fmt: skip
                print(f"[round {index + 1}/{args.rounds}] fresh {s.label()}: {m.images_per_sec:.2f} img/s, "
                      f"{held:.1f} s", flush=True)  # fmt: skip
        data["rounds"].append(record)
        data["elapsed_seconds"] = time.monotonic() - started
        data["figures"] = analyse(data)
        write(output, data)
    report(data, data["figures"])
    print(f"written to {output} ({data['elapsed_seconds'] / 60:.1f} min)")
    return 0


def point_record(m: Measurement) -> dict[str, Any]:
    return {
        "rates": m.rates,
        "images_per_sec": m.images_per_sec,
        "position": m.facts.get("position"),
        "first_step_seconds": m.facts.get("first_step_seconds"),
        "session_seconds": m.facts.get("session_seconds"),
        "wall_seconds": m.wall_seconds,
        "threads": m.facts.get("threads"),
    }


if __name__ == "__main__":
    sys.exit(main())
