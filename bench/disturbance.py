"""A busy neighbour started mid-study, with and without disturbance accounting: does it change the pick?

    python -m bench.disturbance [--model tiny] [--batch-size 4096] [--cores 2] [--mode infer] [--trials 8]
                                [--neighbour-s 25] [--repeats 1]

Runs the same seeded search-only study (``tuner tune --no-confirm``: its pick is its best trial) in arms:

- ``quiet``: nothing else started (run first, and again at the end: how stable the pick is by itself);
- ``neighbour``: a Python busy loop pinned to the study's first core starts when the trial that was the
  quiet pick begins (mid-study: after the baselines) and runs ``--neighbour-s`` seconds; accounting on
  (the default ``--max-disturbance``);
- ``neighbour-off``: the same neighbour, with ``--max-disturbance off`` (figures recorded, nothing measured
  again): what the tool did before.

TPE's first 10 proposals are its seeded random start-up, so with ``--trials`` up to 10 every arm measures the
same settings in the same order and only the neighbour differs. Printed per arm: the pick, its value, each
setting's value, and the disturbance figures (trials measured again, the shares thrown away, the largest
kept); JSON goes to bench/results/disturbance-<model>-<mode>-<cores>c.json.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import optuna
from optuna.trial import TrialState

from tuner.disturbance import describe_study, study_figures
from tuner.settings import Settings
from tuner.topology import core_set


def neighbour(core: int) -> subprocess.Popen[bytes]:
    code = f"import os\nos.sched_setaffinity(0, {{{core}}})\nwhile True:\n    pass\n"
    return subprocess.Popen([sys.executable, "-c", code])


def run_arm(args: argparse.Namespace, name: str, storage: str, start_at: int | None) -> dict[str, Any]:
    """One study; with ``start_at``, the neighbour starts when trial ``start_at`` begins measuring."""
    argv = [sys.executable, "-m", "tuner.cli", "tune", "--model", args.model, "--batch-size", str(args.batch_size),
            "--cores", str(args.cores), "--mode", args.mode, "--trials", str(args.trials), "--no-confirm",
            "--seed", str(args.seed), "--storage", storage, "--budget", "none"]  # fmt: skip
    if name == "neighbour-off":
        argv += ["--max-disturbance", "off"]
    started = time.monotonic()
    process = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    assert process.stderr is not None
    hog: subprocess.Popen[bytes] | None = None
    timer: threading.Timer | None = None
    times: dict[str, float] = {}

    def stop() -> None:
        if hog is not None and hog.poll() is None:
            hog.kill()
            hog.wait()
            times["ended"] = time.monotonic() - started

    lines = []
    for line in process.stderr:
        lines.append(line.rstrip())
        print(f"  [{name}] {line.rstrip()}", flush=True)
        if start_at is not None and hog is None and re.search(rf"\btrial {start_at}: measuring\b", line):
            hog = neighbour(core_set(args.cores)[0])
            times["started"] = time.monotonic() - started
            timer = threading.Timer(args.neighbour_s, stop)
            timer.start()
    process.wait()
    if timer is not None:
        timer.cancel()
    stop()
    if process.returncode != 0:
        raise SystemExit(f"arm {name}: tuner tune exited {process.returncode}: {lines[-1] if lines else ''}")
    summaries = optuna.get_all_study_summaries(storage)
    study = optuna.load_study(study_name=summaries[0].study_name, storage=storage)
    trials = study.get_trials(deepcopy=False)
    complete = [t for t in trials if t.state == TrialState.COMPLETE]
    best = max(complete, key=lambda t: t.value or 0.0)
    return {
        "arm": name,
        "wall_s": round(time.monotonic() - started, 1),
        "neighbour": [round(times["started"], 1), round(times["ended"], 1)] if "started" in times else None,
        "pick": {"trial": best.number, "settings": Settings.from_params(best.params).label(), "value": best.value},
        "trials": [
            {
                "number": t.number,
                "settings": Settings.from_params(t.params).label() if t.params else None,
                "state": t.state.name,
                "value": t.value,
                "disturbance": t.user_attrs.get("disturbance"),
                "disturbed_attempts": t.user_attrs.get("disturbed_attempts"),
            }
            for t in trials
        ],
        "figures": study_figures(trials),
        "line": describe_study(study_figures(trials)),
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="tiny")
    parser.add_argument("--batch-size", type=int, default=4096)
    parser.add_argument("--cores", type=int, default=2)
    parser.add_argument("--mode", default="infer")
    parser.add_argument("--trials", type=int, default=8)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--neighbour-s", type=float, default=25.0)
    parser.add_argument("--output", default=None)
    args = parser.parse_args()
    if args.trials > 10:
        parser.error("--trials at most 10: beyond TPE's random start-up the arms would not measure the same settings")
    arms = []
    with tempfile.TemporaryDirectory(prefix="tuner-disturbance-") as folder:

        def url(name: str) -> str:
            return f"sqlite:///{os.path.join(folder, name)}.db"

        quiet = run_arm(args, "quiet", url("quiet"), None)
        arms.append(quiet)
        target = quiet["pick"]["trial"]
        for name in ("neighbour", "neighbour-off"):
            arms.append(run_arm(args, name, url(name), target))
        arms.append(run_arm(args, "quiet", url("quiet-again"), None))
    print()
    print(f"{'arm':<14} {'pick':<60} {'value':>10}  disturbance")
    for arm in arms:
        pick = arm["pick"]
        print(f"{arm['arm']:<14} {'trial ' + str(pick['trial']) + ': ' + pick['settings']:<60.60} "
              f"{pick['value']:>10.1f}  {arm['line']}")  # fmt: skip
    print("\nvalue of the quiet pick's setting in each arm:")
    wanted = quiet["pick"]["settings"]
    for arm in arms:
        values = [t["value"] for t in arm["trials"] if t["settings"] == wanted and t["value"] is not None]
        print(f"  {arm['arm']:<14} {', '.join(f'{v:.1f}' for v in values) or 'not ranked'}")
    same = {arm["arm"]: arm["pick"]["settings"] == wanted for arm in arms}
    print("\npick as the quiet study's: " + ", ".join(f"{k} {'yes' if v else 'NO'}" for k, v in same.items()))
    out = Path(args.output or f"bench/results/disturbance-{args.model}-{args.mode}-{args.cores}c.json")
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"args": vars(args), "arms": arms}, indent=1) + "\n")
    print(f"written to {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
