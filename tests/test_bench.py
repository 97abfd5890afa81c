"""The benchmark scripts' own logic on synthetic data: they must be able to tell samplers apart."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from bench import grid, quality, search_cost
from tuner.settings import Settings
from tuner.space import load as load_space


def synthetic_grid(tmp_path: Path) -> Path:
    """The stock space on 1 core (36 settings): one clear optimum, the rest 10% to 40% slower."""
    space = load_space("tensorflow", 1)
    points = []
    for params in grid.grid(space, 1):
        best = params == {"intra_op": 2, "inter_op": 1, "data_format": "NHWC", "onednn": True}
        rate = 100.0 if best else 60.0 + 5 * params["intra_op"] + 3 * params["inter_op"]
        points.append({"params": params, "rates": [rate * f for f in (0.99, 1.0, 1.01, 1.0, 0.995)]})
    path = tmp_path / "grid.json"
    path.write_text(json.dumps({"space": "tensorflow", "cores": 1, "points": points}))
    return path


def test_grid_enumerates_every_setting_once() -> None:
    points = grid.grid(load_space("tensorflow", 2), 2)
    # intra 0..4 x inter 0..2 x two layouts x oneDNN default/on/off x 3 allocators x 2 precisions in one
    # instance; with two instances of one core, at most 2 intra-op and 1 inter-op threads each. All distinct.
    one, two = 5 * 3 * 2 * 3 * 3 * 2, 3 * 2 * 2 * 3 * 3 * 2
    assert len(points) == one + two == len({json.dumps(p, sort_keys=True) for p in points})


def test_trials_to_target_counts_until_the_pick_is_truly_good(tmp_path: Path) -> None:
    data = json.loads(synthetic_grid(tmp_path).read_text())
    replay = search_cost.Replay(data, seed=0)
    good = {"intra_op": 2, "inter_op": 1, "data_format": "NHWC", "onednn": True}
    poor = {"intra_op": 0, "inter_op": 0, "data_format": "NHWC", "onednn": "default"}
    # The pick becomes good at the second measured setting; a noisy-high poor setting would not count.
    assert search_cost.trials_to_target([(poor, 60.0), (good, 100.0)], replay) == 2
    assert search_cost.trials_to_target([(poor, 70.0), (good, 50.0)], replay) is None


def test_search_cost_runs_every_sampler_and_exhaustive_budgets_always_reach(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = synthetic_grid(tmp_path)
    out = tmp_path / "cost.json"
    assert search_cost.main([str(path), "--seeds", "3", "--budget", "36", "--output", str(out)]) == 0
    results = json.loads(out.read_text())
    measured = {k: v for k, v in results.items() if "unavailable" not in v}
    # TPE, random and the simplex ran, alone and after the baselines.
    assert {k.split("/")[-1] for k in measured} >= {"tpe", "random", "nelder-mead"}
    # A budget as large as the grid always finds the optimum, in 1 to 36 trials.
    assert all(v["reached"] == 1.0 and 1 <= v["median"] <= 36 for v in measured.values())
    assert "median" in capsys.readouterr().out


def test_quality_measures_coinciding_settings_once_and_reports_them_as_the_same() -> None:
    default = Settings.from_params({"intra_op": 0, "inter_op": 0, "data_format": "NHWC"})
    best = Settings.from_params({"intra_op": 2, "inter_op": 1, "data_format": "NHWC"})
    heuristic = Settings.from_params({"intra_op": 2, "inter_op": 1, "data_format": "NCHW"})
    named = {"tf-default": default, "heuristic": heuristic, "grid optimum": best, "tuned": best}
    unique, alias = quality.candidates(named)
    # The tuner found the grid optimum: three settings are measured, and "tuned" is the grid optimum's runs.
    assert [c.name for c in unique] == ["tf-default", "heuristic", "grid optimum"]
    assert alias["tuned"] == "grid optimum"
    rates = {
        "tf-default": [[10.0, 10.1, 9.9]] * 3,
        "heuristic": [[8.0, 8.1, 7.9]] * 3,
        "grid optimum": [[11.0, 11.1, 10.9]] * 3,
    }
    ratios = quality.ratios(rates, alias)
    # Against itself the ratio is exactly 1 and says so; against the others it is the ratio of medians.
    assert ratios["grid optimum"]["same_setting"] and ratios["grid optimum"]["value"] == 1.0
    assert ratios["tf-default"]["value"] == pytest.approx(1.1) and ratios["heuristic"]["value"] == pytest.approx(
        1.1 / 0.8
    )
    assert ratios["tf-default"]["low"] <= 1.1 <= ratios["tf-default"]["high"]


def test_reference_gap_refuses_a_missing_environment_or_benchmark_folder_in_one_line(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    from bench import reference_gap

    (tmp_path / "file").write_text("")
    monkeypatch.setenv("TUNER_ENVS", str(tmp_path / "file"))
    # $TUNER_ENVS read as the tuner reads it: a file where the folder should be is one line and exit 1,
    # before any process is started or any result merged.
    assert reference_gap.main(["compare", "--arms", "tuner", "--name", "x", "--output", str(tmp_path / "o.json")]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert err == [f"reference_gap: error: $TUNER_ENVS={str(tmp_path / 'file')!r} is not a folder: it says where "
                   "managed environments live"]  # fmt: skip
    # An environment that was never built names the command that builds it.
    monkeypatch.setenv("TUNER_ENVS", str(tmp_path / "envs"))
    output = ["--output", str(tmp_path / "o.json")]
    assert reference_gap.main(["interleaved", "--arms", "step:", "--name", "x", *output]) == 1
    assert "run: tuner env create intel-tensorflow" in capsys.readouterr().err
    # With the environment there, a tf_cnn_benchmarks arm needs its folder: $TFCNN_DIR is named.
    python = tmp_path / "envs" / "intel-tensorflow" / "bin" / "python"
    python.parent.mkdir(parents=True)
    python.write_text("")
    (tmp_path / "envs" / "intel-tensorflow" / "tuner-env.json").write_text("{}")
    monkeypatch.setattr(reference_gap, "TFCNN", tmp_path / "no-benchmarks")
    assert reference_gap.main(["compare", "--arms", "tfcnn,tuner", "--name", "x", *output]) == 1
    assert "set $TFCNN_DIR to its folder" in capsys.readouterr().err
    assert not (tmp_path / "o.json").exists()


def test_reference_gap_never_takes_its_lock_through_a_planted_link(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    from bench import reference_gap

    python = tmp_path / "envs" / "intel-tensorflow" / "bin" / "python"
    python.parent.mkdir(parents=True)
    python.write_text("")
    (tmp_path / "envs" / "intel-tensorflow" / "tuner-env.json").write_text("{}")
    monkeypatch.setenv("TUNER_ENVS", str(tmp_path / "envs"))
    victim = tmp_path / "victim"
    lock = tmp_path / "host.lock"
    lock.symlink_to(victim)  # another user planted a link where the host lock goes
    monkeypatch.setattr("tuner.runner.HOST_LOCK", lock)
    monkeypatch.setattr(reference_gap, "LOGS", tmp_path / "logs")
    started: list[list[str]] = []
    monkeypatch.setattr(reference_gap.subprocess, "run", lambda argv, **kw: started.append(argv))
    output = tmp_path / "o.json"
    assert reference_gap.main(["interleaved", "--arms", "step:", "--name", "x", "--output", str(output)]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    # One line naming the lock, and nothing created through the link, no process started, nothing merged:
    # flock(1), which it used before, would have created the link's target and run the child.
    assert len(err) == 1 and f"cannot use the measurement lock {lock}" in err[0]
    assert not victim.exists() and started == [] and not output.exists()
