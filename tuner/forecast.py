"""What `tuner run` will take: its plan before it starts (``tuner run --plan``) and its ETA while it runs.

Both run the job's own rules on a trial cost instead of on measurements: each study's share of the time
left (``plan.shares``, with the floors a ``Yardstick`` sets), its search until one of ``StopRule``'s exits
(the trials wanted, every setting that can run here, half its share, only confirmation's time left) and its
benchmark-confirmation (``plan_benchmark``: the longest that fits what is left). A study's trial cost is its
own (``CostModel.from_trials`` over its stored trials), else another study's of the same CPU, model and
batch, scaled by step cost (``plan.weight``), else unknown: such a study is expected to fill its share, and
without a budget the total is unknown.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import optuna
from optuna.trial import FrozenTrial, TrialState

from tuner.benchmark import FULL_TIMED, FULL_WARMUP, full_policy
from tuner.confirm import MIN_ROUNDS
from tuner.cost import CostModel
from tuner.errors import TunerError
from tuner.layout import WIDTH, columns, wrap
from tuner.measurement import Measurement
from tuner.plan import Yardstick, share, weight
from tuner.policy import BURST, MeasurementPolicy
from tuner.records import StudyMeta, tuner_studies
from tuner.runner import StepCallback, TaskSpec, TrialSpec
from tuner.sanitize import one_line
from tuner.study import StudyConfig, duration

SEARCH_SHARE = 0.5  # of a study's share: the search's; the rest goes to the benchmark-confirmation
MIN_TIMED = 3
BUDGET_SLACK = 0.05  # the job plans against 95% of its budget


def plan_benchmark(time_left: float, configs: int, overhead_s: float, step_s: float) -> MeasurementPolicy:
    """The longest benchmark that fits ``time_left`` for ``configs`` settings: three interleaved rounds if
    at all possible (fewer cannot give a clear verdict), tf_cnn_benchmarks' 10 + 100 batches split over
    them when that fits, else fewer timed batches, never fewer than ``MIN_TIMED`` per round."""

    def planned(warmup: int, timed: int, rounds: int) -> MeasurementPolicy:
        # A run that takes three times its expected length is stuck: kill it rather than eat the budget.
        timeout = 120.0 + 3 * (overhead_s + (warmup + timed) * step_s)
        return MeasurementPolicy("full", warmup, timed, timeout_s=timeout, rounds=rounds)

    for rounds in (3, 2, 1):
        per_run = time_left / (rounds * configs)
        steps = math.floor((per_run - overhead_s) / max(step_s, 1e-9))
        full_timed = math.ceil(FULL_TIMED / rounds)
        if steps >= FULL_WARMUP + full_timed:
            return planned(FULL_WARMUP, full_timed, rounds)
        warmup = min(FULL_WARMUP, max(2, steps // 5))
        if steps - warmup >= MIN_TIMED:
            return planned(warmup, min(full_timed, steps - warmup), rounds)
    return planned(2, MIN_TIMED, 1)


def benchmark_policy(cost: CostModel | None, time_left: float | None, configs: int) -> MeasurementPolicy:
    """A study's benchmark-confirmation of ``configs`` settings: the longest that fits ``time_left`` at
    ``cost``; with no budget (or nothing measured), tf_cnn_benchmarks' 10 + 100 batches over three rounds."""
    if time_left is None or cost is None:
        return full_policy(rounds=3, timed=math.ceil(FULL_TIMED / 3))
    return plan_benchmark(time_left, configs, cost.overhead_s, cost.step_s)


FEW_CONFIRMED = 4  # tf-default, the heuristic, the best sampled setting and the best other baseline


def confirmation_size(
    configs: int, few: int, cost: CostModel | None, time_left: float | None
) -> tuple[int, MeasurementPolicy]:
    """How many settings the benchmark-confirmation measures, and how: all ``configs`` when three rounds
    of them fit (a verdict can be clear only after ``MIN_ROUNDS``); else the ``few`` the table needs (see
    ``StudyRun.few_candidates``) where three rounds of those fit; else all of them in what fits, as long as
    one round of all of them fits; past that (the study has overrun its share) only the few, so that the
    overrun is the table's settings' and no more."""
    bench = benchmark_policy(cost, time_left, configs)
    if bench.rounds >= MIN_ROUNDS or few >= configs:
        return configs, bench
    trimmed = benchmark_policy(cost, time_left, few)
    if trimmed.rounds >= MIN_ROUNDS:
        return few, trimmed
    if cost is not None and time_left is not None and configs * cost.run_s(bench) > time_left:
        return few, trimmed
    return configs, bench


@dataclass(frozen=True)
class Cell:
    """One study of the job as the forecast sees it: its config and weight, what it measures here (the
    baselines and distinct settings ``StudyRun`` plans from the probe) and what is stored of it already."""

    config: StudyConfig
    weight: float
    baselines: int
    size: int  # distinct settings that can be measured here
    complete: int = 0  # complete trials stored
    measured_baselines: int = 0  # of which baselines
    kept: bool = False  # benchmarked already: the job keeps it and measures nothing

    @property
    def tag(self) -> str:
        return f"{self.config.runtime} {self.config.workload.mode} {len(self.config.cores)}c"

    @property
    def state(self) -> str:
        return "kept" if self.kept else "partly done" if self.complete else "new"

    def rescaled(self, cost: CostModel, weight: float) -> CostModel:
        """``cost``, measured by a study of ``weight``, as this study's: its steps scaled by weight."""
        return cost.scaled(self.weight / weight if weight > 0 else 1.0, self.config.policy)


@dataclass(frozen=True)
class Expected:
    """What one study is expected to do: search trials, then ``configs`` settings confirmed by ``bench``."""

    search: int
    configs: int
    bench: MeasurementPolicy
    seconds: float


def expect(cell: Cell, cost: CostModel, budget: float | None) -> Expected:
    """The study's search and benchmark-confirmation at ``cost`` (its own, at its weight) within its share
    ``budget`` (None: no budget), by the rules `tuner run` runs it by (``StopRule``, ``plan_benchmark``)."""
    config = cell.config
    trial_s = cost.run_s(config.policy)
    confirm_s = (cell.baselines + config.candidates) * MIN_ROUNDS * cost.run_s(config.confirm_policy)
    measured, baselines = cell.complete, min(cell.measured_baselines, cell.baselines)
    spent = 0.0
    while measured < min(config.trials, cell.size):
        ready = baselines >= cell.baselines and measured > baselines  # baselines done, one sampled setting
        if budget is not None and ready and (spent + confirm_s >= budget or spent >= SEARCH_SHARE * budget):
            break
        spent += trial_s
        measured += 1
        if baselines < cell.baselines:  # the baselines are measured first
            baselines += 1
    every = cell.baselines + min(config.candidates, measured - baselines)
    configs, bench = confirmation_size(
        every, min(every, FEW_CONFIRMED), cost, None if budget is None else budget - spent
    )
    run_s = cost.scaled(1.0, bench).wall_s  # one run measured by the benchmark's policy
    return Expected(measured - cell.complete, configs, bench, spent + configs * bench.rounds * run_s)


def least_s(cell: Cell, cost: CostModel) -> float:
    """The least study ``cell`` can do at ``cost`` (its own, at its weight) and still put its rows in the
    table: what is left of its baselines and one sampled setting measured by its search, then one round of
    the few settings the table needs by the shortest benchmark (``MIN_TIMED`` timed batches). A job does not
    start a study that cannot do this much in the time left of its budget."""
    config = cell.config
    searched = max(0, cell.baselines + 1 - cell.complete)
    few = min(FEW_CONFIRMED, cell.baselines + config.candidates)
    shortest = cost.scaled(1.0, plan_benchmark(0.0, few, cost.overhead_s, cost.step_s)).wall_s
    return searched * cost.run_s(config.policy) + few * shortest


LEAST = "its baselines and one sampled setting searched, then one short round of the settings the table needs"


def too_late(cell: Cell, cost: CostModel | None, time_left: float | None) -> bool:
    """Whether ``time_left`` (None: no budget) is less than ``cell``'s least at ``cost`` (None: unknown, so
    nothing to judge by): the job does not start such a study, and the plan says so."""
    return time_left is not None and cost is not None and least_s(cell, cost) > time_left


def next_share(cells: Sequence[Cell], time_left: float | None, yardstick: Yardstick) -> float | None:
    """The share of ``cells[0]``, the next study to run, of ``time_left`` (None: no budget), as the job gives
    it: by weight among the studies still to run (kept ones weigh nothing), each at least its floor."""
    floors = [0.0 if c.kept else yardstick.floor_s(c.config, c.baselines, c.weight) for c in cells]
    return share(time_left, [0.0 if c.kept else c.weight for c in cells], floors)


@dataclass(frozen=True)
class Step:
    """One study in a schedule: its share, what it is expected to do (None: kept, or its cost unknown) and
    the seconds it takes (its share where its cost is unknown; None where there is no share either)."""

    share: float | None
    expected: Expected | None
    seconds: float | None
    started: bool = True  # False: the time left is less than its least (``least_s``), so the job skips it


def schedule(
    cells: Sequence[Cell],
    costs: Sequence[CostModel | None],
    time_left: float | None,
    yardstick: Yardstick,
    spare: float = 0.0,
    first: bool = True,
) -> list[Step]:
    """The studies run one after another as the job runs them: each one's share of what the ones before it
    left, then what it does at its cost; a study measured sets the floors of the ones after it. As the job
    does, a study after the first one run (``first``: none has run yet) is not started where its least does
    not fit the time left plus ``spare`` (the budget's slack beyond the time planned with)."""
    steps = []
    for index, (cell, cost) in enumerate(zip(cells, costs, strict=True)):
        if cell.kept:
            steps.append(Step(None, None, 0.0))
            continue
        if not first and too_late(cell, cost, None if time_left is None else time_left + spare):
            steps.append(Step(None, None, 0.0, started=False))
            continue
        first = False
        given = next_share(cells[index:], time_left, yardstick)
        expected = None if cost is None else expect(cell, cost, given)
        seconds = given if expected is None else expected.seconds
        steps.append(Step(given, expected, seconds))
        if time_left is not None and seconds is not None:
            time_left -= seconds
        if cost is not None:
            yardstick = Yardstick(cost, cell.weight)
    return steps


def eta(
    cells: Sequence[Cell],
    costs: Sequence[CostModel | None],
    elapsed: float,
    budget: float | None,
    tail_s: float = 0.0,
    time_left: float | None = None,
    cap: float | None = None,
) -> str:
    """'ETA 12m05s': the job's time left, ``elapsed`` seconds into the study ``cells[0]`` (its share
    ``budget``): the rest of that study at its cost, then the studies after it as ``schedule`` expects them
    in what is left of ``time_left`` (the time the job plans with; None: no budget), then ``tail_s``; never
    more than ``cap``, the budget left."""
    first = costs[0]
    if first is None:  # nothing measured to go by
        return "ETA unknown" if cap is None else f"ETA at most {duration(cap)}"
    rest = max(0.0, expect(cells[0], first, budget).seconds - elapsed)
    left = None if time_left is None else time_left - rest
    spare = 0.0 if time_left is None or cap is None else max(0.0, cap - time_left)
    later = schedule(cells[1:], costs[1:], left, Yardstick(first, cells[0].weight), spare, first=False)
    seconds = [step.seconds for step in later]
    if any(s is None for s in seconds):
        return "ETA unknown"
    total = rest + sum(s or 0.0 for s in seconds) + tail_s
    return f"ETA {duration(total if cap is None else min(total, cap))}"


@dataclass(frozen=True)
class Cost:
    """A study's trial cost for the plan and where it comes from: its own trials (``measured``), another
    study's ``scaled`` by weight (``source`` names it), or ``unknown`` (``model`` None)."""

    model: CostModel | None
    kind: str = "unknown"
    source: str | None = None


@dataclass
class Outlook:
    """What the job knows of its studies while it runs, to say its ETA: each study's trial cost (its own
    stored trials', else the latest cost measured in this run, else a stored study's, scaled by weight), the
    worker runs after the studies (``tail_s``), and, on the job's clock, the end it plans to (``deadline``)
    and the end of its budget (``ends``); both None without a budget."""

    cells: Sequence[Cell]
    stored: Sequence[Cost]
    tail_s: float = 0.0
    deadline: float | None = None
    ends: float | None = None
    latest: Yardstick | None = None  # the last cost measured in this run, with its study's weight

    def costs(self, index: int, current: CostModel | None = None) -> list[CostModel | None]:
        """The cost of every study from ``index`` on; ``current``: what study ``index`` has measured so far."""
        latest = self.latest if current is None else Yardstick(current, self.cells[index].weight)
        found: list[CostModel | None] = [current or self._cost(index, latest)]
        return found + [self._cost(i, latest) for i in range(index + 1, len(self.cells))]

    def _cost(self, index: int, latest: Yardstick | None) -> CostModel | None:
        stored, cell = self.stored[index], self.cells[index]
        if stored.kind == "measured" or latest is None:
            return stored.model
        return cell.rescaled(latest.cost, latest.weight)

    def eta(self, index: int, now: float, begun: float, budget: float | None, current: CostModel | None) -> str:
        """The ETA at ``now``, in study ``index`` begun at ``begun`` with share ``budget``."""
        time_left = None if self.deadline is None else self.deadline - now
        cap = None if self.ends is None else max(0.0, self.ends - now)
        costs = self.costs(index, current)
        return eta(self.cells[index:], costs, now - begun, budget, self.tail_s, time_left, cap)


class Unmeasured:
    """The plan's runner: the plan measures nothing, so a call is a bug, never a measurement."""

    python = ""

    def run(self, spec: TrialSpec, on_step: StepCallback | None = None) -> Measurement:
        raise TunerError("the plan measures nothing: no trial may run")

    def compute(self, spec: TaskSpec) -> dict[str, Any]:
        raise TunerError("the plan measures nothing: no task may run")


@dataclass(frozen=True)
class Plan:
    """What `tuner run` would do: each study with its share, cost, search and confirmation, and the total."""

    what: str  # runtimes, cores, modes, model and CPU, one line
    cells: tuple[Cell, ...]
    costs: tuple[Cost, ...]
    steps: tuple[Step, ...]
    budget_s: float | None
    setup_tasks: int  # probes, yardsticks, GPU checks: one worker run each
    setup_s: float | None
    notes: tuple[str, ...] = ()

    @property
    def total_s(self) -> float | None:
        """With a budget, what the job is expected to spend of it; without, the sum of the studies' times
        and the set-up (None where any is unknown)."""
        seconds = [step.seconds for step in self.steps]
        if self.budget_s is None and (self.setup_s is None or any(s is None for s in seconds)):
            return None
        return (self.setup_s or 0.0) + sum(s or 0.0 for s in seconds)

    def studies(self) -> list[dict[str, Any]]:
        rows = []
        for cell, cost, step in zip(self.cells, self.costs, self.steps, strict=True):
            expected = step.expected
            rows.append(
                {
                    "study": cell.config.name,
                    "runtime": cell.config.runtime,
                    "mode": cell.config.workload.mode,
                    "cores": len(cell.config.cores),
                    "state": cell.state,
                    "complete_trials": cell.complete,
                    "trials": cell.config.trials,
                    "weight": cell.weight,
                    "share_s": step.share,
                    "cost": cost.kind,
                    "scaled_from": cost.source,
                    "trial_s": None if cost.model is None else cost.model.run_s(cell.config.policy),
                    "step_s": None if cost.model is None else cost.model.step_s,
                    "search_trials": None if expected is None else expected.search,
                    "confirmation": None
                    if expected is None
                    else {
                        "settings": expected.configs,
                        "rounds": expected.bench.rounds,
                        "warmup": expected.bench.warmup,
                        "timed": expected.bench.timed,
                    },
                    "expected_s": step.seconds,
                    "started": step.started,
                }
            )
        return rows

    def to_dict(self) -> dict[str, Any]:
        return {
            "what": self.what,
            "budget_s": self.budget_s,
            "planned_s": None if self.budget_s is None else self.budget_s * (1 - BUDGET_SLACK),
            "setup_tasks": self.setup_tasks,
            "setup_s": self.setup_s,
            "studies": self.studies(),
            "total_s": self.total_s,
            "notes": list(self.notes),
        }

    def render(self, width: int = WIDTH) -> str:
        """The plan as text within ``width`` columns: a line of what, a row per study, the total, notes."""
        sources = sorted({c.source for c in self.costs if c.source is not None})
        header = ["study", "stored", "share", "trial", "cost", "search", "confirmation", "expected"]
        rows = [header, *(self._row(row, sources) for row in self.studies())]
        trials = self.cells[0].config.trials if self.cells else 20
        lines = wrap(f"plan of tuner run (nothing is measured): {self.what}", width)
        lines.append(columns(rows, width, shrink=[0], right=[2, 3, 5, 7]))
        lines += wrap(
            f"stored: complete trials of the study's {trials} (kept: benchmarked already, not run again); "
            "confirmation: settings x rounds x (warm-up + timed batches)",
            width,
        )
        for number, source in enumerate(sources, 1):  # a stored study's name: anyone's text (shared storage)
            lines += wrap(f"[{number}] trial cost scaled by step cost from {one_line(source, 200)}", width)
        setup = _seconds(self.setup_s, "unknown")
        lines += wrap(f"set-up: {self.setup_tasks} worker runs (probes, yardsticks, GPU checks), {setup}", width)
        lines += wrap(self._total_line(), width)
        skipped = [cell.tag for cell, step in zip(self.cells, self.steps, strict=True) if not step.started]
        if skipped:
            lines += wrap(
                f"not run: {', '.join(skipped)}: the time left would be less than the least each needs ({LEAST}); "
                "a larger --budget runs them",
                width,
            )
        for note in self.notes:
            lines += wrap(f"note: {note}", width)
        return "\n".join(lines)

    @staticmethod
    def _row(row: dict[str, Any], sources: list[str]) -> list[str]:
        """One study's row of the text view, from its ``studies()`` entry."""
        kept = row["state"] == "kept"
        confirmation, source = row["confirmation"] or {}, row["scaled_from"]
        runs = "x".join(str(confirmation.get(key)) for key in ("settings", "rounds"))
        return [
            row["study"],
            "kept" if kept else "new" if row["state"] == "new" else f"{row['complete_trials']}/{row['trials']}",
            _seconds(row["share_s"], "-"),
            "-" if row["trial_s"] is None else f"{row['trial_s']:.1f}s",
            row["cost"] if source is None else f"scaled [{sources.index(source) + 1}]",
            "-" if row["search_trials"] is None else str(row["search_trials"]),
            f"{runs}x({confirmation['warmup']}+{confirmation['timed']})" if confirmation else "-",
            "-" if kept else "not run" if not row["started"] else _seconds(row["expected_s"], "unknown"),
        ]

    def _total_line(self) -> str:
        total = self.total_s
        if self.budget_s is None:
            if total is None:
                return (
                    "total: unknown (no budget, and a study's trial cost is unknown: give --budget, or plan again "
                    "once a study of this CPU and model is stored)"
                )
            return f"total: {duration(total)} (no budget)"
        planned = duration(self.budget_s * (1 - BUDGET_SLACK))
        unknown = any(c.model is None for c, cell in zip(self.costs, self.cells, strict=True) if not cell.kept)
        fills = (
            "; a study whose trial cost is unknown fills its share, and once costs are measured a study whose least "
            "no longer fits is not started"
            if unknown
            else ""
        )
        budget = duration(self.budget_s)
        return f"total: {duration(total or 0.0)} of the {budget} budget (planned against {planned}{fills})"


def _seconds(value: float | None, missing: str) -> str:
    return missing if value is None else duration(value)


def make_plan(
    what: str,
    cells: Sequence[Cell],
    costs: Sequence[Cost],
    budget_s: float | None,
    tasks: tuple[int, int],
    notes: Sequence[str] = (),
) -> Plan:
    """The plan of the job's ``cells`` at ``costs``: ``tasks`` are the worker runs before the studies (probes,
    yardsticks) and after them (GPU checks), each as long as a run's overhead (a measured cost's)."""
    known = [c.model for c in costs if c.model is not None]
    task_s = None if not known else known[0].overhead_s
    before, after = (None, None) if task_s is None else (tasks[0] * task_s, tasks[1] * task_s)
    time_left = None if budget_s is None else budget_s * (1 - BUDGET_SLACK) - (before or 0.0)
    # Before any study has measured, the job's floors come from a probe's time: a run's overhead.
    yardstick = Yardstick(CostModel.estimate(task_s or 0.0, BURST))
    spare = 0.0 if budget_s is None else budget_s * BUDGET_SLACK
    steps = schedule(cells, [c.model for c in costs], time_left, yardstick, spare)
    setup = None if before is None or after is None else before + after
    return Plan(what, tuple(cells), tuple(costs), tuple(steps), budget_s, sum(tasks), setup, tuple(notes))


# -- what is stored: trials, probes and costs to plan from ---------------------------------------------------


def stored_trials(storage: optuna.storages.BaseStorage, name: str) -> list[FrozenTrial]:
    """The complete trials of the named study; none where it does not exist."""
    if name not in {s.study_name for s in storage.get_all_studies()}:
        return []
    study = optuna.load_study(study_name=name, storage=storage)
    return study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))


def _studies(storage: optuna.storages.BaseStorage) -> list[tuple[str, StudyMeta]]:
    """Tuner's stored studies that match the schema, with their metadata (a malformed one is left out)."""
    return [(info.study_name, StudyMeta.from_dict(info.user_attrs["tuner"])) for info in tuner_studies(storage, _quiet)]


def _quiet(line: str) -> None:
    """A malformed stored study is left out of the plan without a word (``tuner show`` names it)."""


def stored_probe(storage: optuna.storages.BaseStorage, runtime: str, cpu_id: str) -> dict[str, Any]:
    """What the runtime's probe read back on this CPU, as its latest study here stored it; empty if none."""
    probed = [
        (meta.created or "", dict(meta.probe))
        for _, meta in _studies(storage)
        if meta.runtime == runtime and meta.cpu.get("id") == cpu_id and meta.probe
    ]
    return max(probed, key=lambda found: found[0])[1] if probed else {}


def _policy(data: Any) -> MeasurementPolicy | None:
    """A study's stored search policy (its name, warm-up and timed steps), or None if malformed."""
    if not isinstance(data, Mapping):
        return None
    warmup, timed = data.get("warmup"), data.get("timed")
    if not isinstance(warmup, int) or not isinstance(timed, int) or warmup < 0 or timed < 1:
        return None
    return MeasurementPolicy(str(data.get("name", "burst")), warmup, timed, timeout_s=BURST.timeout_s)


def stored_costs(storage: optuna.storages.BaseStorage, cells: Sequence[Cell], most_cores: int) -> list[Cost]:
    """Each study's trial cost from storage: its own trials' (measured); else, scaled by weight, that of the
    stored study of the same CPU, model and batch most like it (the same runtime, then mode, then cores,
    then the most trials); else unknown."""
    if not cells:
        return []
    config = cells[0].config
    alike = (config.signature.id, config.workload.model, config.workload.batch_size)
    measured: list[tuple[str, StudyMeta, CostModel, int]] = []
    for name, meta in _studies(storage):
        policy = _policy(meta.raw.get("policy"))
        if (meta.cpu.get("id"), meta.model, meta.batch_size) != alike or policy is None:
            continue
        trials = stored_trials(storage, name)
        try:
            cost = CostModel.from_trials(trials, policy)
        except (KeyError, TypeError, ValueError):  # a shared storage is untrusted: no cost from a malformed trial
            continue
        if cost is not None:
            measured.append((name, meta, cost, len(trials)))
    costs = []
    for cell in cells:
        own = [cost for name, _, cost, _ in measured if name == cell.config.name]
        best = max(measured, key=functools.partial(_likeness, cell), default=None)
        if own:
            costs.append(Cost(own[0], "measured"))
        elif best is None:
            costs.append(Cost(None))
        else:
            name, meta, cost, _ = best
            costs.append(Cost(cell.rescaled(cost, weight(meta.mode, meta.cores, most_cores)), "scaled", name))
    return costs


def _likeness(cell: Cell, found: tuple[str, StudyMeta, CostModel, int]) -> tuple[bool, bool, bool, int]:
    """How alike a stored study is to ``cell``'s: the same runtime, then mode, then cores; then more trials."""
    meta, config = found[1], cell.config
    same = (meta.runtime == config.runtime, meta.mode == config.workload.mode, meta.cores == len(config.cores))
    return (*same, found[3])
