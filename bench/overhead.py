"""Where a study's wall time goes: timed steps against process start, imports, model build, graph
tracing, warm-up and the tuner's own work, from the trials stored in a storage (no new measurement).

    python bench/overhead.py [--storage sqlite:///studies/tuner.db]

Per complete trial the worker reports its import, build, first-step (trace), warm-up and timed seconds;
the runner adds the trial's wall time. What is left is the interpreter's start and exit and the parent's
work (spawn, channel, storage writes). Prints one row per study and a total, and writes JSON.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from pathlib import Path

import optuna
from optuna.trial import TrialState

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


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--storage", default="sqlite:///studies/tuner.db")
    parser.add_argument("--output", type=Path, default=Path("bench/results/overhead.json"))
    args = parser.parse_args(argv)
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
