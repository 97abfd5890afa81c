"""Confirmation: noise makes the best trial the luckiest one, so re-measure before believing it.

The top candidates and both baselines are measured interleaved (A B C A B C ...) for several rounds, each
run a fresh process. The winner is chosen by median, and its speedups come with a 95% hierarchical
bootstrap interval (resample rounds, then steps within each round), because rounds are the independent
units and steps within one process are not.
"""

from __future__ import annotations

import statistics
import uuid
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, TypeVar

import numpy as np
import optuna
from optuna.trial import FrozenTrial

from tuner.cost import CostModel
from tuner.disturbance import Disturbed
from tuner.errors import Interrupted, TunerError, WorkerError, WorkerNotStarted
from tuner.measurement import Measurement
from tuner.objective import OBJECTIVES, Objective, latency_ms, quantile
from tuner.policy import MeasurementPolicy
from tuner.progress import StepLines
from tuner.records import DROP_REASON_CHARS, ConfirmationRun, StoredConfirmation, baseline_name, utc_now
from tuner.runner import Runner, StepCallback, TrialSpec
from tuner.sanitize import one_line
from tuner.settings import Settings
from tuner.workload import Workload

DEFAULT = "tf-default"  # the names of candidates, everywhere: TensorFlow's defaults,
HEURISTIC = "heuristic"  # the reference table's hand-picked settings,
TUNED = "tuned"  # and the best confirmed sampled setting, as benchmark records and tables call it
RESAMPLES = 2000
BLOCK_CELLS = 2_000_000  # steps drawn per block of resamples in bootstrap_ratio (16 MiB per float array)
MIN_ROUNDS = 3  # fewer paired rounds cannot support a "clear" verdict


@dataclass(frozen=True)
class Candidate:
    name: str  # a baseline's name, or "trial N"
    settings: Settings


@dataclass(frozen=True)
class Interval:
    value: float
    low: float
    high: float

    def to_dict(self) -> dict[str, float]:
        return {"value": self.value, "low": self.low, "high": self.high}


def pooled_median(runs: Sequence[Sequence[float]]) -> float:
    return statistics.median(rate for run in runs for rate in run)


def pooled(runs: Sequence[Sequence[float]], q: float = 0.5) -> float:
    """The ``q`` quantile of every round's per-step rates together (0.5: the median)."""
    return pooled_median(runs) if q == 0.5 else quantile((rate for run in runs for rate in run), q)


def bootstrap_ratio(
    top: Sequence[Sequence[float]],
    bottom: Sequence[Sequence[float]],
    seed: int = 0,
    alpha: float = 0.05,
    q: float = 0.5,
) -> Interval:
    """Ratio of pooled ``q`` quantiles (the objective's statistic; 0.5, the median, for throughput and p50
    latency) of per-step rates, with a (1 - alpha) paired hierarchical bootstrap interval.

    Rounds are paired (round i of both was measured back to back), so the same round indices are drawn for
    both sides, then steps within each drawn round; drift that hits both sides of a round cancels. A pair
    with a round of no steps (only a crafted record has one) is left out of the resampling. Vectorised with
    numpy: RESAMPLES resamples at once, where a Python loop took 0.04 s to 0.4 s per interval.
    """
    pairs = [i for i in range(min(len(top), len(bottom))) if len(top[i]) and len(bottom[i])]
    if not pairs:
        raise ValueError("a bootstrap needs a pair of rounds with steps on both sides")
    rng = np.random.default_rng(seed)
    rounds = rng.integers(len(pairs), size=(RESAMPLES, len(pairs)))  # the same rounds for both sides
    tops, bottoms = [top[i] for i in pairs], [bottom[i] for i in pairs]
    # Resamples in blocks of about BLOCK_CELLS drawn steps: long stored rounds (a table's, a bench's) stay
    # within tens of MiB rather than growing with RESAMPLES x rounds x the longest round.
    longest = max(len(run) for run in (*tops, *bottoms))
    block = max(1, BLOCK_CELLS // (len(pairs) * longest))
    ratios = np.sort(
        np.concatenate(
            [
                _resampled(tops, rounds[at : at + block], rng, q) / _resampled(bottoms, rounds[at : at + block], rng, q)
                for at in range(0, RESAMPLES, block)
            ]
        )
    )
    low = max(0, int(alpha / 2 * RESAMPLES))
    return Interval(pooled(top, q) / pooled(bottom, q), float(ratios[low]), float(ratios[RESAMPLES - 1 - low]))


def _resampled(runs: Sequence[Sequence[float]], rounds: np.ndarray, rng: np.random.Generator, q: float) -> np.ndarray:
    """For each resample (a row of ``rounds``, round indices drawn with replacement): each drawn round's
    steps drawn with replacement, as many as it has, then the ``q`` quantile of them all (linear
    interpolation, as ``objective.quantile`` and ``pooled``)."""
    sizes = np.array([len(run) for run in runs])
    width = int(sizes.max())
    table = np.full((len(runs), width), np.nan)
    for i, run in enumerate(runs):
        table[i, : len(run)] = run
    drawn_sizes = sizes[rounds]  # (resamples, rounds)
    steps = rng.integers(drawn_sizes[..., None], size=(*rounds.shape, width))  # below each round's size
    values = table[rounds[..., None], steps]
    values[np.arange(width) >= drawn_sizes[..., None]] = np.nan  # a shorter round gives only its own count
    ordered = np.sort(values.reshape(len(rounds), -1), axis=1)  # NaN last
    count = drawn_sizes.sum(axis=1)
    position = q * (count - 1)
    below = np.floor(position).astype(np.int64)
    above = np.minimum(below + 1, count - 1)
    at = np.arange(len(rounds))
    low, high = ordered[at, below], ordered[at, above]
    result: np.ndarray = low + (high - low) * (position - below)
    return result


@dataclass(frozen=True)
class Verdict:
    """What confirmation concluded. ``recommended`` is tf-default unless the winner clearly beats it."""

    rates: dict[str, list[list[float]]]  # candidate name -> per-round per-step images/sec
    params: dict[str, dict[str, Any]]
    winner: str
    clear: bool
    vs_default: Interval
    vs_heuristic: Interval | None
    vs_others: dict[str, Interval] = field(default_factory=dict)  # the winner over every other candidate
    objective: str = "throughput"  # whose statistic ranked the candidates (tuner/objective.py)
    batch_size: int = 0  # the batch a request is, to state latencies (0: not stated)
    dropped: dict[str, str] = field(default_factory=dict)  # candidates whose confirmation runs failed -> why

    @property
    def goal(self) -> Objective:
        return OBJECTIVES[self.objective]

    def statistic(self, name: str) -> float:
        """The objective's statistic of ``name``'s pooled rates (higher is better)."""
        return pooled(self.rates[name], self.goal.rate_quantile)

    def latency_ms(self, name: str) -> dict[str, float | None]:
        """p50 and p99 request times of ``name``'s pooled steps (p99 None below ``P99_MIN_STEPS`` steps)."""
        if self.batch_size < 1:
            return {"p50": None, "p99": None}
        steps = [self.batch_size / rate for run in self.rates[name] for rate in run]
        return {"p50": latency_ms(steps, 0.5), "p99": latency_ms(steps, 0.99)}

    @property
    def recommended(self) -> str:
        return self.winner if self.clear else DEFAULT

    def median(self, name: str) -> float:
        return pooled_median(self.rates[name])

    def text(self) -> str:
        gain = self.vs_default
        span = f"{gain.value:.3f}x tf-default (95% CI {gain.low:.3f} to {gain.high:.3f})"
        if self.goal.latency and self.batch_size:
            # A speedup of a latency objective is tf-default's time over the winner's: say both times.
            def said(name: str) -> str:
                return self.goal.describe(self.statistic(name), self.batch_size)

            span += f", {said(self.winner)} against {said(DEFAULT)}"
        batches = [self.params.get(name, {}).get("batch") for name in (self.winner, DEFAULT)]
        if batches[0] != batches[1]:  # --search-batch: the rates are per sample, so the batches compare
            span += f", per sample at batch {batches[0]} against batch {batches[1]}"
        if self.winner == DEFAULT and len(self.rates) == 1 and self.dropped:
            line = "nothing left to compare with tf-default: recommend tf-default"
        elif self.winner == DEFAULT:
            line = "tf-default is fastest: recommend tf-default"
        elif self.clear:
            line = f"{self.winner} wins: {span}"
        elif min(len(r) for r in self.rates.values()) < MIN_ROUNDS:
            line = f"too few rounds to be sure: {self.winner} at {span}; recommend tf-default"
        else:
            line = f"no clear gain over tf-default: {self.winner} at {span}; recommend tf-default"
        gone = [f"{name} ({why})" for name, why in self.dropped.items()]
        return line + (f"; dropped (a confirmation run failed): {'; '.join(gone)}" if gone else "")

    def against_each(self) -> str:
        """'trial 18 over: openvino-small 1.03x [0.98, 1.06], ...': the winner against every other candidate."""
        spans = [f"{name} {i.value:.2f}x [{i.low:.2f}, {i.high:.2f}]" for name, i in self.vs_others.items()]
        return f"{self.winner} over: " + (", ".join(spans) or "no other candidate")

    def to_dict(self) -> dict[str, Any]:
        return {
            "winner": self.winner,
            "recommended": self.recommended,
            "recommended_params": self.params[self.recommended],
            "clear": self.clear,
            "text": self.text(),
            "images_per_sec": {name: self.median(name) for name in self.rates},
            "objective": self.objective,
            "score": {name: self.statistic(name) for name in self.rates},
            "latency_ms": {name: self.latency_ms(name) for name in self.rates},
            "speedup_vs_tf_default": self.vs_default.to_dict(),
            "speedup_vs_heuristic": self.vs_heuristic.to_dict() if self.vs_heuristic else None,
            "speedup_vs_each": {name: interval.to_dict() for name, interval in self.vs_others.items()},
            "rounds": min(len(runs) for runs in self.rates.values()),
            "params": self.params,
            "rates": self.rates,
            "dropped": self.dropped,
        }


def decide(
    rates: dict[str, list[list[float]]],
    params: dict[str, dict[str, Any]],
    seed: int = 0,
    objective: str = "throughput",
    batch_size: int = 0,
    dropped: Mapping[str, str] | None = None,
) -> Verdict:
    """Pick the winner by the objective's statistic (the median rate for throughput) and test it against
    tf-default.

    The winner is the best of several candidates measured on the same data, so "clear" uses a Bonferroni
    interval (alpha / number of challengers) and needs at least MIN_ROUNDS paired rounds; the reported
    interval is the plain 95% one.
    """
    q = OBJECTIVES[objective].rate_quantile
    winner = max(rates, key=lambda name: pooled(rates[name], q))
    vs_default = bootstrap_ratio(rates[winner], rates[DEFAULT], seed, q=q)
    vs_heuristic = bootstrap_ratio(rates[winner], rates[HEURISTIC], seed, q=q) if HEURISTIC in rates else None
    challengers = max(1, len(rates) - 1)
    strict = bootstrap_ratio(rates[winner], rates[DEFAULT], seed, alpha=0.05 / challengers, q=q)
    enough = min(len(rates[winner]), len(rates[DEFAULT])) >= MIN_ROUNDS
    clear = winner != DEFAULT and enough and strict.low > 1.0
    # Against every other candidate too (the launchers' recipes among them), each with its 95% interval.
    others = {name: bootstrap_ratio(rates[winner], rates[name], seed, q=q) for name in rates if name != winner}
    return Verdict(
        rates, params, winner, clear, vs_default, vs_heuristic, others, objective, batch_size, dict(dropped or {})
    )


class ConfirmationLog:
    """A study's confirmation runs, stored on it (attribute ``confirmation``, read back as a
    ``records.StoredConfirmation``) as each is measured, so that a re-run resumes. Rounds already stored
    count only for the same candidates measured the same way; else a new confirmation (a new id) starts."""

    def __init__(self, study: optuna.Study, names: list[str], policy: MeasurementPolicy) -> None:
        stored = StoredConfirmation.from_dict(
            study.user_attrs.get("confirmation"), f"study {study.study_name}: confirmation"
        )
        self.shape = {"warmup": policy.warmup, "timed": policy.timed}
        same = list(stored.candidates) == names and stored.policy in (None, self.shape)
        resumed = same and bool(stored.rates or stored.dropped)
        self.study = study
        self.names = names
        self.id = stored.id if resumed and stored.id else uuid.uuid4().hex[:12]
        self._rates: dict[str, list[list[float]]] = (
            {name: [list(run) for run in runs] for name, runs in stored.rates.items()} if resumed else {}
        )
        self.runs: list[ConfirmationRun] = list(stored.runs) if resumed else []
        # Candidates dropped because a run of theirs failed stay dropped when the confirmation resumes.
        self.dropped: dict[str, str] = (
            {name: why for name, why in stored.dropped.items() if name in names and name != DEFAULT} if resumed else {}
        )

    def rates(self) -> dict[str, list[list[float]]]:
        """Per-step rates of the rounds already measured, by candidate."""
        return {name: [list(run) for run in runs] for name, runs in self._rates.items()}

    def add(self, round_: int, name: str, measurement: Measurement) -> None:
        self._rates.setdefault(name, []).append(measurement.rates)
        self.runs.append(ConfirmationRun(round_, name, measurement))
        self.study.set_user_attr("confirmation", self.to_dict())

    def drop(self, name: str, why: str) -> None:
        self.dropped[name] = why
        self.study.set_user_attr("confirmation", self.to_dict())

    def to_dict(self) -> dict[str, object]:
        """The ``confirmation`` attribute as stored."""
        return {
            "id": self.id,
            "candidates": self.names,
            "policy": self.shape,
            "rates": self._rates,
            "runs": [run.to_dict() for run in self.runs],
            "dropped": self.dropped,
        }


def pick_candidates(
    trials: Sequence[FrozenTrial],
    label: Callable[[Mapping[str, Any]], str],
    most: int,
    extra: Sequence[Candidate] = (),
) -> list[Candidate]:
    """What confirmation measures, at most ``most`` in all: every measured baseline under its name, then
    ``extra`` (baselines confirmed without a search value), then the best distinct sampled settings
    ("trial N") by search value; settings that run alike (one ``label``) count once."""
    chosen: dict[str, Candidate] = {}
    ranked = sorted(trials, key=lambda t: -(t.value or 0.0))
    for trial in ranked:
        name = baseline_name(trial.user_attrs)
        if name is not None:
            chosen.setdefault(name, Candidate(name, Settings.from_params(trial.params)))
    for candidate in extra:
        chosen.setdefault(candidate.name, candidate)
    labels = {label(c.settings.params()) for c in chosen.values()}
    for trial in ranked:
        if len(chosen) >= most:
            break
        if label(trial.params) not in labels:
            labels.add(label(trial.params))
            chosen[f"trial {trial.number}"] = Candidate(f"trial {trial.number}", Settings.from_params(trial.params))
    return list(chosen.values())


def planned_rounds(policy: MeasurementPolicy, configs: int, cost: CostModel | None, time_left: float | None) -> int:
    """Rounds of ``configs`` settings that fit ``time_left`` (None: no limit), as many as ``policy`` asks
    when they fit; never fewer than MIN_ROUNDS, which a clear verdict needs."""
    wanted = max(MIN_ROUNDS, policy.rounds)
    if time_left is None or cost is None:
        return wanted
    return max(MIN_ROUNDS, min(wanted, cost.rounds_that_fit(time_left, configs, policy)))


OnRun = Callable[[int, Candidate, Measurement], None]  # called after every run, so nothing is lost
OnDrop = Callable[[Candidate, str, bool], None]  # a candidate dropped, why, and whether that lasts on resume
OnFail = Callable[[int, Candidate, str], None]  # a candidate's run failed (round, candidate, why): it is dropped


def own_failure(error: TunerError) -> bool:
    """Whether ``error`` may be a failure of the setting measured, not of the whole confirmation: its worker
    failed (crashed, exited, ran out of memory or time, sent no result), or every attempt was disturbed. An
    interrupt, a worker that could not even start, the host lock or a bug ends the confirmation instead."""
    if isinstance(error, (Interrupted, WorkerNotStarted)):
        return False
    return isinstance(error, (Disturbed, WorkerError))


T = TypeVar("T")


def interleave(items: Sequence[T], rounds: int, done: Callable[[T, int], bool]) -> Iterator[tuple[int, T]]:
    """(round, item) for every item in every round, the order rotated each round (A B C, B C A, C A B), so
    that no item always runs first or after the same neighbour; pairs for which ``done`` is true are
    skipped (measured already, or given up). Confirmation and the benchmark both measure in this order."""
    for round_ in range(rounds):
        shift = round_ % len(items)
        for item in [*items[shift:], *items[:shift]]:
            if not done(item, round_):
                yield round_, item


def confirm(
    runner: Runner,
    candidates: Sequence[Candidate],
    workload: Workload,
    cores: tuple[int, ...],
    policy: MeasurementPolicy,
    rounds: int,
    done: dict[str, list[list[float]]] | None = None,
    on_run: OnRun | None = None,
    seed: int = 0,
    dropped: Mapping[str, str] | None = None,
    on_drop: OnDrop | None = None,
    on_fail: OnFail | None = None,
    steps: Callable[[str], StepCallback | None] = lambda name: None,
) -> Verdict:
    """Measure ``candidates`` interleaved for ``rounds`` rounds; runs already in ``done`` are kept.
    ``steps(name)`` is a run's step callback (progress on the way; it must not raise).

    A candidate whose run fails by what may be its own doing (``own_failure``) is dropped, with why, and the
    others go on: the verdict is decided without it and names it. So are those ``dropped`` before (a resumed
    confirmation). A drop is passed to ``on_drop`` (to be stored) only once tf-default has run well after it
    (after the last round, one more run of tf-default checks the drops since its last): where tf-default
    fails too, the fault was the machine's, and a resumed confirmation measures them all again. A drop for
    disturbance does not last either (its neighbour may be gone). tf-default is never dropped: without it
    nothing can be compared, so its failure ends the confirmation (the runs measured so far are the
    caller's, through ``on_run``), and once it is the only candidate left it is measured only to settle the
    last drops."""
    rates: dict[str, list[list[float]]] = {c.name: list((done or {}).get(c.name, [])) for c in candidates}
    gone = {name: why for name, why in (dropped or {}).items() if name in rates and name != DEFAULT}
    pending: list[tuple[Candidate, str, bool]] = []  # dropped since tf-default last ran well

    def attempt(candidate: Candidate) -> Measurement | TunerError:
        """One run of ``candidate``, or the error where it failed by what may be its own doing."""
        try:
            return runner.run(TrialSpec(candidate.settings, workload, cores, policy), steps(candidate.name))
        except TunerError as error:
            if not own_failure(error):
                raise
            return error

    def settle() -> None:
        for candidate, why, lasting in pending:
            if on_drop is not None:
                on_drop(candidate, why, lasting)
        pending.clear()

    for round_, candidate in interleave(candidates, rounds, lambda c, r: c.name in gone or len(rates[c.name]) > r):
        if not pending and len(candidates) > 1 and all(c.name in gone for c in candidates if c.name != DEFAULT):
            break  # nothing left to compare tf-default with (once it has run after the last drop)
        measurement = attempt(candidate)
        if isinstance(measurement, TunerError):
            why = one_line(str(measurement), DROP_REASON_CHARS)
            if candidate.name == DEFAULT:
                raise TunerError(
                    f"tf-default failed in confirmation round {round_ + 1}: {why}; nothing can be compared without "
                    "it (the runs measured so far are kept: the same command resumes)"
                ) from measurement
            gone[candidate.name] = why
            pending.append((candidate, why, not isinstance(measurement, Disturbed)))
            if on_fail is not None:
                on_fail(round_, candidate, why)
            continue
        rates[candidate.name].append(measurement.rates)
        if on_run is not None:
            on_run(round_, candidate, measurement)
        if candidate.name == DEFAULT:
            settle()
    if pending:
        # Failures after tf-default's last run: one more run of it (a check, not a round) tells the machine's
        # fault from theirs before their drops are stored.
        check = attempt(next(c for c in candidates if c.name == DEFAULT))
        if isinstance(check, TunerError):
            raise TunerError(
                f"tf-default failed in the check after confirmation's last round: "
                f"{one_line(str(check), DROP_REASON_CHARS)}; the failures before it may be the machine's, so nothing "
                "is dropped (the runs measured so far are kept: the same command resumes)"
            ) from check
        settle()
    kept = [c for c in candidates if c.name not in gone]
    params = {c.name: c.settings.params() for c in kept}
    measured = {c.name: rates[c.name] for c in kept}
    return decide(measured, params, seed, workload.objective, workload.batch_size, gone)


def confirm_logged(
    study: optuna.Study,
    runner: Runner,
    candidates: Sequence[Candidate],
    workload: Workload,
    cores: tuple[int, ...],
    policy: MeasurementPolicy,
    rounds: int,
    seed: int = 0,
    progress: Callable[[str], None] = lambda line: None,
) -> Verdict:
    """``confirm`` for a study: the rounds already stored on ``study`` are kept, every new run is stored as
    it is measured (``ConfirmationLog``), so a re-run resumes, and each is said on ``progress``."""
    log = ConfirmationLog(study, [c.name for c in candidates], policy)
    progress(f"confirming {', '.join(c.name for c in candidates)}: {rounds} interleaved rounds")

    def on_run(round_: int, candidate: Candidate, m: Measurement) -> None:
        log.add(round_, candidate.name, m)
        value = workload.goal.describe(workload.goal.score(m.rates), workload.batch_size)
        progress(f"confirm round {round_ + 1}/{rounds} {candidate.name}: {value}")

    def on_fail(round_: int, candidate: Candidate, why: str) -> None:
        progress(f"confirm round {round_ + 1}/{rounds} {candidate.name}: FAILED ({why}); dropped, the others go on")

    def on_drop(candidate: Candidate, why: str, lasting: bool) -> None:
        if lasting:
            log.drop(candidate.name, why)

    for name, why in log.dropped.items():
        progress(f"{name}: dropped earlier in this confirmation ({why})")

    def steps(name: str) -> StepLines:
        return StepLines(progress, f"confirm {name}", policy.warmup, policy.timed)

    return confirm(
        runner,
        candidates,
        workload,
        cores,
        policy,
        rounds,
        log.rates(),
        on_run,
        seed,
        log.dropped,
        on_drop,
        on_fail,
        steps=steps,
    )


def store_verdict(
    study: optuna.Study,
    verdict: Verdict,
    effective: Callable[[Mapping[str, Any]], dict[str, Any]],
    trials: int,
    sampled: int | None = None,
) -> None:
    """Store ``verdict`` on the study (attribute ``verdict``, read back as ``records.StoredVerdict``), its
    recommended settings as ``effective`` resolves them on this CPU (oneDNN "default" made on or off), so
    the recommendation holds where it is used; with when it was measured, after how many trials, and of
    how many sampled settings (baselines aside) its candidates were chosen."""
    stored = {**verdict.to_dict(), "measured": utc_now(), "trials": trials}
    stored["recommended_params"] = effective(stored["recommended_params"])
    if sampled is not None:
        stored["sampled"] = sampled
    study.set_user_attr("verdict", stored)
