"""Would a pruner have saved time without pruning good trials? Replay stored studies to find out.

Each complete trial of each stored study is replayed, in its original order, into a fresh in-memory study
with the pruner under test: its recorded per-step rates are reported step by step, exactly as the live
objective reports them, and a pruned trial is credited with the timed steps it would not have run. No new
measurement is made. Printed per study and pruner: trials pruned, seconds saved as a share of the search's
wall time, and how many pruned trials were good (within 2% of the study's best).

    .venv/bin/python -m bench.pruner_replay [--storage sqlite:///studies/tuner.db] [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import sys

import optuna
from optuna.trial import TrialState

from tuner.storage import DEFAULT_STORAGE, open_storage
from tuner.study import make_pruner

PRUNERS = ("median", "wilcoxon")
GOOD = 0.98


def replay(trials: list[optuna.trial.FrozenTrial], pruner: str) -> dict[str, object]:
    study = optuna.create_study(direction="maximize", pruner=make_pruner(pruner))
    best = max(t.value or 0.0 for t in trials)
    saved = total = 0.0
    pruned = good_pruned = 0
    for frozen in trials:
        record = frozen.user_attrs["measurement"]
        steps = record["timed_seconds"]
        total += float(frozen.user_attrs.get("trial_seconds", record["wall_seconds"]))
        trial = study.ask()
        for index, seconds in enumerate(steps):
            trial.report(record["batch_size"] / seconds, index)
            if "baseline" not in frozen.user_attrs and trial.should_prune():
                saved += sum(steps[index + 1 :])
                pruned += 1
                good_pruned += (frozen.value or 0.0) >= GOOD * best
                study.tell(trial, state=TrialState.PRUNED)
                break
        else:
            study.tell(trial, frozen.value)
    return {"pruner": pruner, "trials": len(trials), "pruned": pruned, "good_pruned": good_pruned,
            "saved_s": saved, "search_s": total, "saved_share": saved / total if total else 0.0}  # fmt: skip


def main() -> int:
    parser = argparse.ArgumentParser(
        prog="python -m bench.pruner_replay", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--storage", default=DEFAULT_STORAGE)
    parser.add_argument("--json", default=None)
    args = parser.parse_args()
    optuna.logging.set_verbosity(optuna.logging.ERROR)
    storage = open_storage(args.storage, create=False)
    rows = []
    print(f"{'study':58} {'pruner':9} {'pruned':>6} {'good pruned':>11} {'saved':>8} {'of search':>9}")
    for info in storage.get_all_studies():
        study = optuna.load_study(study_name=info.study_name, storage=storage)
        trials = sorted(study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,)), key=lambda t: t.number)
        if len(trials) < 4:
            continue
        for pruner in PRUNERS:
            row = {"study": info.study_name, **replay(trials, pruner)}
            rows.append(row)
            print(f"{info.study_name:58} {pruner:9} {row['pruned']:>3}/{row['trials']:<2} {row['good_pruned']:>11} "
                  f"{row['saved_s']:>7.0f}s {row['saved_share']:>9.1%}")  # fmt: skip
    if args.json:
        with open(args.json, "w") as out:
            json.dump(rows, out, indent=2)
    return 0


if __name__ == "__main__":
    sys.exit(main())
