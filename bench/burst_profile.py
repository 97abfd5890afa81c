"""Profile stored trials: where a trial's time goes and whether the burst's warm-up is long enough.

Reads the raw step times every complete trial keeps (no new measurement) and prints, per study: median
process import, model build and first-step (trace) seconds, each warm-up step relative to the timed
median, the per-burst coefficient of variation, and the share of trial wall time spent in timed steps.
Writes the same figures as JSON.

    .venv/bin/python -m bench.burst_profile [--storage sqlite:///studies/tuner.db] [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
from typing import TypedDict

import optuna
from optuna.trial import TrialState

from tuner.measurement import Measurement
from tuner.storage import DEFAULT_STORAGE, open_storage


class Profile(TypedDict):
    study: str
    trials: int
    import_s: float
    build_s: float
    first_step_s: float
    step_s: float
    warmup_vs_timed: list[float]
    burst_cv: float
    timed_share: float


def profile(study: optuna.Study) -> Profile | None:
    records = [
        Measurement.from_dict(t.user_attrs["measurement"])
        for t in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
    ]
    records = [m for m in records if "first_step_seconds" in m.facts]
    if not records:
        return None
    warm = [[w / m.median_step_seconds for w in m.warmup_seconds] for m in records]
    return {
        "study": study.study_name,
        "trials": len(records),
        "import_s": statistics.median(float(m.facts["import_seconds"]) for m in records),
        "build_s": statistics.median(float(m.facts["build_seconds"]) for m in records),
        "first_step_s": statistics.median(float(m.facts["first_step_seconds"]) for m in records),
        "step_s": statistics.median(m.median_step_seconds for m in records),
        "warmup_vs_timed": [statistics.median(w[i] for w in warm) for i in range(min(map(len, warm)))],
        "burst_cv": statistics.median(m.cv for m in records),
        "timed_share": statistics.median(sum(m.timed_seconds) / m.wall_seconds for m in records),
    }


def main() -> int:
    parser = argparse.ArgumentParser(
        prog="python -m bench.burst_profile", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--storage", default=DEFAULT_STORAGE)
    parser.add_argument("--json", default=None, help="also write the figures here")
    args = parser.parse_args()
    optuna.logging.set_verbosity(optuna.logging.ERROR)
    storage = open_storage(args.storage, create=False)
    rows: list[Profile] = []
    for info in storage.get_all_studies():
        row = profile(optuna.load_study(study_name=info.study_name, storage=storage))
        if row is not None:
            rows.append(row)
    print(f"{'study':58} {'n':>3} {'import':>7} {'build':>6} {'trace':>6} {'step':>6} {'warm-up/timed':>14} "
          f"{'cv':>6} {'timed share':>11}")  # fmt: skip
    for r in rows:
        warm = " ".join(f"{w:.2f}" for w in r["warmup_vs_timed"])
        print(
            f"{r['study']:58} {r['trials']:>3} {r['import_s']:>6.1f}s {r['build_s']:>5.1f}s "
            f"{r['first_step_s']:>5.1f}s {r['step_s']:>5.2f}s {warm:>14} "
            f"{r['burst_cv']:>6.1%} {r['timed_share']:>11.0%}"
        )
    if args.json:
        with open(args.json, "w") as out:
            json.dump(rows, out, indent=2)
    return 0


if __name__ == "__main__":
    sys.exit(main())
