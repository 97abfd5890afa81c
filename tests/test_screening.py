"""In-process screening (tuner/screening.py and the worker's ``screen`` task): input refused before any worker,
the order shuffled by the seed, results mapped back to the settings that produced them, pools read back and
checked; and, with real TensorFlow, one process that gives each setting its own pools."""

from __future__ import annotations

from typing import Any

import pytest

from tuner.errors import InvalidSettings, WorkerBadOutput
from tuner.policy import MeasurementPolicy
from tuner.runner import SubprocessRunner, TaskSpec
from tuner.screening import (
    MAX_POINTS,
    Screen,
    ScreeningUnsupported,
    ScreenPoint,
    run_screen,
    screen_settings,
    split_settings,
)
from tuner.settings import Settings
from tuner.topology import physical_cores
from tuner.workload import Workload

QUICK = MeasurementPolicy("quick", warmup=1, timed=3, timeout_s=120.0)
TINY = Workload("tiny", "infer", 32)
GRID = [Settings(intra_op=i, inter_op=j) for i in (1, 2, 4) for j in (1, 2)]


def rate_of(intra: int, inter: int, spinning: bool) -> float:
    """A distinct rate for every setting, so a result mapped to the wrong setting shows."""
    return 100.0 * intra + 10.0 * inter + (1.0 if spinning else 0.0)


class FakeRunner:
    """Answers a screen as the worker would, from the spec alone: per point, steps at ``rate_of`` its setting
    and the pools it asked for (or ``pools`` for every point: a runtime with one shared pool)."""

    def __init__(self, pools: tuple[int, int] | None = None, **extra: Any) -> None:
        self.pools = pools
        self.extra = extra
        self.specs: list[dict[str, Any]] = []

    def run(self, spec: Any, on_step: Any = None) -> Any:
        raise AssertionError("screening never runs a trial")

    def compute(self, spec: TaskSpec) -> dict[str, Any]:
        sent = spec.worker_spec()
        self.specs.append(sent)
        points = []
        for index, p in enumerate(sent["points"]):
            seconds = sent["batch_size"] / rate_of(p["intra_op"], p["inter_op"], p["spinning"])
            intra, inter = self.pools or (p["intra_op"], p["inter_op"])
            points.append({
                "index": index, **p, "warmup_seconds": [seconds] * sent["warmup"],
                "timed_seconds": [seconds] * sent["timed"], "timed_wall_seconds": seconds * sent["timed"],
                "wall_seconds": 1.0, "first_step_seconds": 0.5, "session_seconds": 0.1,
                "threads": {"intra": intra, "inter": inter, "other": 0, "names": {}, "left_after_close": 0},
            })  # fmt: skip
        result = {"cpus": sent["cores"], "openmp": None, "points": points, "host_lock": {"from": 10.0, "to": 25.0}}
        result.update(self.extra)
        return result


def test_points_and_settings_refuse_bad_values_before_any_worker() -> None:
    for intra, inter in ((-1, 1), (1, -2), (True, 1), ("2", 1), (1, 2.0), (5000, 1)):
        with pytest.raises(InvalidSettings):
            ScreenPoint(intra, inter)  # type: ignore[arg-type]
    with pytest.raises(InvalidSettings, match="spinning"):
        ScreenPoint(1, 1, "no")  # type: ignore[arg-type]
    # One process, one layout, one set of environment knobs: settings that differ there are refused.
    with pytest.raises(InvalidSettings, match="differ in other knobs"):
        split_settings([Settings(1, 1), Settings(2, 1, data_format="NCHW")])
    with pytest.raises(InvalidSettings, match="differ in other knobs"):
        split_settings([Settings(1, 1), Settings.from_params({"intra_op": 2, "OMP_NUM_THREADS": 2})])
    with pytest.raises(InvalidSettings):
        split_settings([])
    base, points = split_settings(GRID)
    assert base == Settings() and points[0] == ScreenPoint(1, 1, True)
    cores = (0, 1)
    with pytest.raises(InvalidSettings, match="twice"):
        Screen(base, (ScreenPoint(1, 1), ScreenPoint(1, 1)), TINY, cores, QUICK)
    with pytest.raises(InvalidSettings, match="1 to"):
        Screen(base, (), TINY, cores, QUICK)
    many = tuple(ScreenPoint(i, 1) for i in range(1, MAX_POINTS + 2))
    with pytest.raises(InvalidSettings, match="1 to"):
        Screen(base, many, TINY, cores, QUICK)
    with pytest.raises(InvalidSettings, match="instances"):
        Screen(Settings.from_params({"instances": 2}), points, TINY, cores, QUICK)
    for bad_cores in ((), (-1,), (True,), ("0",)):
        with pytest.raises(InvalidSettings, match="core"):
            Screen(base, points, TINY, bad_cores, QUICK)  # type: ignore[arg-type]
    with pytest.raises(InvalidSettings, match="seed"):
        Screen(base, points, TINY, cores, QUICK, seed="1")  # type: ignore[arg-type]
    with pytest.raises(InvalidSettings, match="spinning"):
        screen_settings(FakeRunner(), GRID, TINY, cores, QUICK, spinning=(True, True))
    # A task's extra fields can never replace what the runner checks the worker against.
    with pytest.raises(ValueError, match="must not replace"):
        TaskSpec("screen", base, cores, fields=(("cores", [0, 1, 2, 3]),))


def test_the_worker_spec_holds_validated_integers_in_the_seeded_order() -> None:
    base, points = split_settings(GRID)
    spinning = tuple(ScreenPoint(p.intra_op, p.inter_op, s) for p in points for s in (True, False))
    orders = {seed: Screen(base, spinning, TINY, (0, 1), QUICK, seed).order() for seed in range(4)}
    assert all(sorted(order) == list(range(len(spinning))) for order in orders.values())
    assert len({tuple(order) for order in orders.values()}) > 1  # the seed shuffles
    assert Screen(base, spinning, TINY, (0, 1), QUICK, 2).order() == orders[2]  # and the same seed repeats
    screen = Screen(base, spinning, TINY, (0, 1), QUICK, 3)
    sent = screen.task().worker_spec()
    assert sent["task"] == "screen" and sent["cores"] == [0, 1] and sent["model"] == "tiny"
    assert sent["points"] == [spinning[i].worker_fields() for i in orders[3]]
    assert all(type(p["intra_op"]) is int and type(p["spinning"]) is bool for p in sent["points"])
    assert (sent["mode"], sent["batch_size"], sent["warmup"], sent["timed"]) == ("infer", 32, 1, 3)


def test_results_map_back_to_the_settings_that_produced_them() -> None:
    runner = FakeRunner()
    result = screen_settings(runner, GRID, TINY, (0, 1), QUICK, seed=5, spinning=(True, False))
    assert [p.label() for p in result.points][:2] == [
        "intra_op=1;inter_op=1;spinning=true",
        "intra_op=1;inter_op=1;spinning=false",
    ]
    # The worker measured them shuffled, yet each measurement is the one of its own setting, in the caller's order.
    assert [p["intra_op"] for p in runner.specs[0]["points"]] != [p.intra_op for p in result.points]
    for point, m in zip(result.points, result.measurements, strict=True):
        assert m.images_per_sec == pytest.approx(rate_of(point.intra_op, point.inter_op, point.spinning))
        assert m.facts["screen"] == point.label()
        assert len(m.timed_seconds) == QUICK.timed and len(m.warmup_seconds) == QUICK.warmup
    assert result.wall_seconds == 15.0  # the time the process held the host lock
    assert set(result.by_label()) == {p.label() for p in result.points}


def test_a_runtime_that_shares_one_pool_is_refused_not_scored() -> None:
    # Every session reads back the first setting's pools: the settings would all measure one thing.
    with pytest.raises(ScreeningUnsupported, match="own pools"):
        screen_settings(FakeRunner(pools=(1, 1)), GRID, TINY, (0, 1), QUICK)
    with pytest.raises(ScreeningUnsupported, match="OpenMP"):
        screen_settings(FakeRunner(openmp="libiomp5"), GRID, TINY, (0, 1), QUICK)


class Tampered(FakeRunner):
    def __init__(self, change: str) -> None:
        super().__init__()
        self.change = change

    def compute(self, spec: TaskSpec) -> dict[str, Any]:
        result = super().compute(spec)
        points = result["points"]
        if self.change == "swap":
            points[0], points[1] = points[1], points[0]
        elif self.change == "echo":
            points[0]["intra_op"] += 1
        elif self.change == "short":
            points.pop()
        elif self.change == "steps":
            points[0]["timed_seconds"] = [0.1, float("nan"), 0.1]
        elif self.change == "threads":
            del points[0]["threads"]
        return result


@pytest.mark.parametrize("change", ["swap", "echo", "short", "steps", "threads"])
def test_a_result_that_does_not_match_what_was_sent_is_refused(change: str) -> None:
    with pytest.raises(WorkerBadOutput):
        screen_settings(Tampered(change), GRID, TINY, (0, 1), QUICK, seed=1)


@pytest.mark.tensorflow
def test_one_process_gives_each_setting_its_own_pools() -> None:
    cores = tuple(physical_cores()[:2])
    base, _ = split_settings([Settings(1, 1)])
    points = (ScreenPoint(1, 1, True), ScreenPoint(3, 2, False), ScreenPoint(2, 3, True), ScreenPoint(0, 0))
    result = run_screen(SubprocessRunner(), Screen(base, points, TINY, cores, QUICK, seed=7))
    read_back = []
    for point, m in zip(result.points, result.measurements, strict=True):
        threads = m.facts["threads"]
        # The session made exactly the pools its setting asked for (0: TensorFlow's default, one per core) ...
        assert threads["intra"] == (point.intra_op or len(cores)), (point, threads)
        assert threads["inter"] == (point.inter_op or len(cores)), (point, threads)
        # ... and they ended with it.
        assert threads["left_after_close"] == 0
        assert len(m.timed_seconds) == QUICK.timed and m.images_per_sec > 0
        read_back.append((threads["intra"], threads["inter"]))
    assert len(set(read_back)) == len(points)  # distinct settings, distinct pools: all in one process
    assert result.facts["override_global_threadpool"] == "1" and result.facts["cpus"] == list(cores)
    assert result.facts["openmp"] is None and result.wall_seconds > 0
