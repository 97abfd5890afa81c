"""A busy neighbour started mid-study, with and without disturbance accounting: does it change the pick?

    python -m bench.disturbance [--model tiny] [--batch-size 4096] [--cores 2] [--mode infer] [--trials 8]
                                [--neighbour-s 25] [--repeats 3] [--space FILE]

Runs the same seeded search-only study (``tuner tune --no-confirm``: its pick is its best trial) in three
arms, ``--repeats`` times in rotated order after a first quiet study:

- ``quiet``: nothing else started (how stable the pick is by itself);
- ``neighbour``: a Python busy loop pinned to the study's first core starts when the trial that was the
  first quiet study's pick begins (mid-study: after the baselines) and runs ``--neighbour-s`` seconds;
  accounting on (the default ``--max-disturbance``);
- ``neighbour-off``: the same neighbour, with ``--max-disturbance off`` (figures recorded, nothing measured
  again): what the tool did before.

The seeded random sampler draws the same settings in the same order in every arm (TPE's start-up did not:
its proposals after a failed trial differed), so only the neighbour differs. Printed per study: the pick,
the first quiet pick's value, and the disturbance figures (trials measured again, the shares thrown away,
the largest kept); then how often each arm picked what the first quiet study did. JSON goes to
bench/results/disturbance-<model>-<mode>-<cores>c.json.
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
            "--seed", str(args.seed), "--sampler", args.sampler, "--storage", storage, "--budget", "none"]  # fmt: skip
    if args.space:
        argv += ["--space", args.space]
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


def report(arms: list[dict[str, Any]]) -> None:
    """Each study's pick and disturbance; how often each arm picked the first quiet pick, and a setting some
    quiet study picked (near-ties among the top settings swap places by noise alone)."""
    first = arms[0]
    print()
    for arm in arms:
        pick = arm["pick"]
        print(f"{arm['arm']:<14} pick: trial {pick['trial']}: {pick['settings']} at {pick['value']:.1f}")
        print(f"{'':<14} {arm['line']}")
    wanted = first["pick"]["settings"]
    print(f"\nthe first quiet study's pick: {wanted}; its value, and the pick, in each study:")
    tally: dict[str, list[bool]] = {}
    for arm in arms:
        values = [t["value"] for t in arm["trials"] if t["settings"] == wanted and t["value"] is not None]
        same = arm["pick"]["settings"] == wanted
        tally.setdefault(arm["arm"], []).append(same)
        shown = ", ".join(f"{v:.1f} ({v / first['pick']['value']:.2f}x)" for v in values) or "not ranked"
        print(f"  {arm['arm']:<14} {shown:<24} pick {'same' if same else 'OTHER: ' + arm['pick']['settings']}")
    quiet = {arm["pick"]["settings"] for arm in arms if arm["arm"] == "quiet"}
    print("\nsame pick: " + ", ".join(f"{name} {sum(v)} of {len(v)}" for name, v in tally.items()))
    within = {name: sum(a["pick"]["settings"] in quiet for a in arms if a["arm"] == name) for name in tally}
    print(f"a pick of some quiet study ({len(quiet)} distinct): "
          + ", ".join(f"{name} {within[name]} of {len(tally[name])}" for name in tally))  # fmt: skip


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="tiny")
    parser.add_argument("--batch-size", type=int, default=4096)
    parser.add_argument("--cores", type=int, default=2)
    parser.add_argument("--mode", default="infer")
    parser.add_argument("--trials", type=int, default=8)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--sampler", default="random", help="random (default): the same settings in every arm")
    parser.add_argument("--neighbour-s", type=float, default=25.0)
    parser.add_argument("--space", default=None, help="a search space file (default: the runtime's)")
    parser.add_argument("--repeats", type=int, default=3, help="rounds of the three arms, order rotated")
    parser.add_argument("--output", default=None)
    parser.add_argument("--show", default=None, help="print a stored JSON result again, measuring nothing")
    args = parser.parse_args()
    if args.show:
        report(json.loads(Path(args.show).read_text())["arms"])
        return 0
    arms = []
    with tempfile.TemporaryDirectory(prefix="tuner-disturbance-") as folder:

        def url(name: str) -> str:
            return f"sqlite:///{os.path.join(folder, name)}.db"

        first = run_arm(args, "quiet", url("quiet-0"), None)
        arms.append(first)
        target = first["pick"]["trial"]  # the neighbour starts when this trial (the quiet pick) begins
        names = ["quiet", "neighbour", "neighbour-off"]
        for repeat in range(args.repeats):
            order = names[repeat % 3 :] + names[: repeat % 3]  # rotated: drift hits every arm alike
            for name in order:
                if repeat == 0 and name == "quiet":
                    continue  # the first quiet study above
                arms.append(run_arm(args, name, url(f"{name}-{repeat}"), None if name == "quiet" else target))
    report(arms)
    suffix = f"-{Path(args.space).stem}-space" if args.space else ""
    out = Path(args.output or f"bench/results/disturbance-{args.model}-{args.mode}-{args.cores}c{suffix}.json")
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"args": vars(args), "arms": arms}, indent=1) + "\n")
    print(f"written to {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
