"""`tuner tune`: one study per core count and mode on one runtime, each searched then confirmed.

The budget is shared as `tuner run` shares it (``tuner/plan.py``); a study that overruns its share says by
how much. A study that fails does not stop the others: its reason is kept in ``failures``.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import optuna

from tuner.cost import CostModel
from tuner.errors import EnvironmentChanged, TunerError
from tuner.models import ModelRef
from tuner.plan import Prepared, StudyOptions, Yardstick, baseline_count, share, study_config, weight
from tuner.policy import BURST
from tuner.signature import CpuSignature
from tuner.study import StudyRun, duration
from tuner.summary import format_importances
from tuner.workload import Workload, workload_for

Log = Callable[[str], None]


@dataclass
class TuneJob:
    storage: optuna.storages.BaseStorage
    signature: CpuSignature
    ready: Prepared
    counts: Sequence[int]
    modes: Sequence[str]
    budget_s: float | None
    model: ModelRef | str = "resnet50"
    batch_size: int = 32
    options: StudyOptions = field(default_factory=StudyOptions)
    objective: str = "throughput"
    search_only: bool = False  # a fleet worker (--no-confirm): search; one final `tuner tune` confirms
    probe_s: float = 0.0  # what the probe took: before any study is measured, what one run costs here
    log: Log = print
    clock: Callable[[], float] = time.monotonic
    studies: list[str] = field(default_factory=list)  # names of the studies that finished
    failures: list[str] = field(default_factory=list)

    def _workload(self, mode: str) -> Workload:
        return workload_for(self.model, mode, self.batch_size, self.objective)

    def _tagged(self, tag: str) -> Log:
        return lambda line: self.log(f"{tag} {line}")

    def run(self) -> None:
        plan = [(mode, n) for n in self.counts for mode in self.modes]
        weights = [weight(mode, n, max(self.counts)) for mode, n in plan]
        started = self.clock()
        deadline = None if self.budget_s is None else started + self.budget_s
        configs = [
            study_config(self.ready, self._workload(mode), n, self.signature, None, self.options) for mode, n in plan
        ]
        baselines = [baseline_count(self.ready, n) for _, n in plan]
        yardstick = Yardstick(CostModel.estimate(self.probe_s, BURST))
        confirms = not self.search_only  # a search alone needs no time for a confirmation
        for index, (mode, n) in enumerate(plan):
            left = None if deadline is None else deadline - self.clock()
            # As `tuner run` shares it: no study below what its baselines and shortest confirmation (none for
            # a search alone) need.
            floors = [
                yardstick.floor_s(configs[i], baselines[i], weights[i], confirms) for i in range(index, len(plan))
            ]
            budget = share(left, weights[index:], floors)
            workload = self._workload(mode)
            config = study_config(self.ready, workload, n, self.signature, budget, self.options)
            budget_text = "" if budget is None else f", share {duration(budget)}"
            self.log(
                f"study {index + 1}/{len(plan)}: {config.name} (elapsed {self.clock() - started:.0f} s{budget_text})"
            )
            tag = f"[{mode} {n}c]"
            study_started = self.clock()
            try:
                run = StudyRun(self.storage, config, self.ready.runner, progress=self._tagged(tag), clock=self.clock)
                if self.search_only:
                    run.search(None if budget is None else self.clock() + budget, confirms=False)
                    run.store_importances()
                else:
                    verdict = run.run()
                    self.log(f"{tag} verdict: {verdict.text()}")
                    self.log(f"{tag} {verdict.against_each()}")
            except EnvironmentChanged as error:  # every study after it would meet it too
                self.failures.append(f"{config.name}: {error}")
                self.log(f"{tag} study failed: {error}; the {len(plan) - index - 1} studies after it not started")
                break
            except TunerError as error:  # one study failing does not throw away the others
                self.failures.append(f"{config.name}: {error}")
                self.log(f"{tag} study failed: {error}")
                continue
            spent = self.clock() - study_started
            if budget is not None and spent > budget:
                # The baselines and three confirmation rounds are always measured, and a trial can take longer
                # than those before it: say what that cost.
                self.log(f"{tag} study overran its share of {budget:.0f} s by {spent - budget:.0f} s")
            self.log(f"{tag} importances: {format_importances(run.study.user_attrs.get('importances', {}))}")
            self.studies.append(config.name)
            cost = run.cost()
            if cost is not None:  # the floors of the studies after it, from what its runs cost
                yardstick = Yardstick(cost, weights[index])
