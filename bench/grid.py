"""Measure every point of a search space once: the reference optimum, and the recorded grid that
``python -m bench.search_cost`` replays.

    python -m bench.grid --mode infer --cores 2 [--runtime tensorflow] [--output bench/results/grid-infer-2c.json]

Each point is one burst (the search's policy: a fresh pinned process, 2 warm-up + 5 timed steps), in a
seeded shuffled order so that drift does not line up with any knob. Points are written to the JSON file as
they are measured, so an interrupted run resumes where it stopped. Prints the table, best first.
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

from tuner.policy import BURST
from tuner.runner import TrialSpec, runtime_runner
from tuner.runtime import load as load_runtime
from tuner.settings import Settings
from tuner.signature import cpu_signature
from tuner.space import SearchSpace
from tuner.space import load as load_space
from tuner.topology import core_set
from tuner.workload import Workload


def grid(space: SearchSpace, cores: int) -> list[dict[str, Any]]:
    """Every setting of the space at this core count that breaks no constraint."""
    points = space.grid(cores, limit=10**6) or []
    return [p for p in points if space.violated(p, cores) is None]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m bench.grid", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--mode", default="infer", choices=("train", "infer"))
    parser.add_argument("--cores", type=int, default=2)
    parser.add_argument("--runtime", default="tensorflow")
    parser.add_argument("--model", default="resnet50")
    parser.add_argument("--output", type=Path, default=None)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    runtime = load_runtime(args.runtime)
    space = load_space(runtime.space, args.cores)
    output = args.output or Path(f"bench/results/grid-{args.runtime}-{args.mode}-{args.cores}c.json")
    output.parent.mkdir(parents=True, exist_ok=True)
    data: dict[str, Any] = (
        json.loads(output.read_text())
        if output.exists()
        else {
            "runtime": runtime.name,
            "space": space.name,
            "space_hash": space.hash,
            "model": args.model,
            "mode": args.mode,
            "cores": args.cores,
            "policy": {"warmup": BURST.warmup, "timed": BURST.timed},
            "cpu": cpu_signature().to_dict(),
            "points": [],
        }
    )
    if data["space_hash"] != space.hash:
        print(f"{output} was measured on another version of the space; move it away first", file=sys.stderr)
        return 1
    done = {Settings.from_params(p["params"]).label() for p in data["points"]}
    todo = [p for p in grid(space, args.cores) if Settings.from_params(p).label() not in done]
    random.Random(args.seed).shuffle(todo)
    runner = runtime_runner(runtime)
    workload = Workload(args.model, args.mode, 32)
    total = len(todo) + len(done)
    for params in todo:
        started = time.monotonic()
        settings = Settings.from_params(params)
        try:
            m = runner.run(TrialSpec(settings, workload, core_set(args.cores), BURST))
            point = {"params": params, "rates": m.rates, "images_per_sec": m.images_per_sec, "cv": m.cv}
        except Exception as error:  # a failing point is recorded as such, never scored
            point = {"params": params, "error": f"{type(error).__name__}: {error}"}
        point["wall_seconds"] = time.monotonic() - started
        data["points"].append(point)
        tmp = output.with_suffix(".tmp")
        tmp.write_text(json.dumps(data, indent=1))
        tmp.replace(output)
        print(f"[{len(data['points'])}/{total}] {settings.label()}: {point.get('images_per_sec', point.get('error'))}")
    measured = sorted((p for p in data["points"] if "images_per_sec" in p), key=lambda p: -p["images_per_sec"])
    print(f"\n{args.runtime} {args.model} {args.mode} on {args.cores} cores: {len(measured)} points, best first")
    for p in measured:
        print(f"{p['images_per_sec']:8.2f} img/s  cv {p['cv']:5.1%}  {Settings.from_params(p['params']).label()}")
    cvs = [p["cv"] for p in measured]
    if cvs:
        print(f"per-burst CV: median {statistics.median(cvs):.1%}, max {max(cvs):.1%}; written to {output}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
