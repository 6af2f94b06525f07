"""The per-set search of `orbit uq benchmark --tune-trials`: chosen on validation rows only, the same
trials for every tuned method, clear errors."""
import argparse

import numpy as np
import pytest

from orbit.plugins.pi3nn.benchmark import format_suite, main, run_benchmark
from orbit.plugins.pi3nn.data import heteroscedastic, split_rows
from orbit.plugins.pi3nn.methods import Budget
from orbit.plugins.pi3nn.tuning import candidates, check_tuning, interval_score

SPACE = {"lr": [3e-3, 1e-2], "hidden": [8], "weight_decay": [0.0, 1.0], "steps": [20, 30]}
METHODS = ["pi3nn", "pi3nn_val", "ensemble", "mc_dropout"]


def _csv(path, x, y):
    np.savetxt(path, np.column_stack([x, y]), delimiter=",", header="x0,x1,y", comments="")
    return path


def _tuned(tmp_path, name, x, y):
    budget = Budget(steps=20, hidden=8, check_every=10, ensemble_members=2, mc_samples=10)
    return run_benchmark(_csv(tmp_path / f"{name}.csv", x, y), tmp_path / name, splits=1, methods=METHODS,
                         budget=budget, tune_trials=3, space=SPACE, log=lambda *_: None)


def test_choice_uses_validation_rows_only(tmp_path):
    x, y = heteroscedastic(300, seed=3, dims=2)
    split = split_rows(300, 0.1, 0.1, seed=0)
    base = _tuned(tmp_path, "base", x, y)
    x2, y2 = x.copy(), y.copy()  # other test rows: the search must not notice
    x2[split.test] = np.random.default_rng(1).normal(size=(len(split.test), 2)) * 3
    y2[split.test] = np.random.default_rng(2).normal(size=len(split.test)) * 5
    other_test = _tuned(tmp_path, "other_test", x2, y2)
    search, search2 = base["tuning"]["searches"]["split0"], other_test["tuning"]["searches"]["split0"]
    assert set(search["choice"]) == set(METHODS) and len(search["trials"]) == 3 and search["trials"][0] == {}
    assert search2["scores"] == search["scores"] and search2["choice"] == search["choice"]
    assert set(base["methods"]) == {f"{m}_tuned" for m in METHODS}
    assert base["methods"]["pi3nn_tuned"]["wall_s"]["mean"] > 0  # split 0 reuses the search's run and its time
    table = format_suite({"toy": base})
    assert "settings chosen by the search (3 trials" in table and "| toy | split0 | mc_dropout |" in table
    assert base["methods"]["ensemble_tuned"]["picp"] != other_test["methods"]["ensemble_tuned"]["picp"]
    y3 = y.copy()  # other validation targets: the scores the choice rests on change
    y3[split.val] += np.random.default_rng(4).normal(size=len(split.val))
    other_val = _tuned(tmp_path, "other_val", x, y3)["tuning"]["searches"]["split0"]
    for method in METHODS:
        assert other_val["scores"][method] != search["scores"][method]


def test_interval_score_rewards_narrow_covering_intervals():
    y = np.array([0.0, 1.0, 2.0])
    assert interval_score(y, y - 1, y + 1, 0.9) == pytest.approx(2.0)
    # missing a point by 0.5 costs 2 / (1 - gamma) * 0.5 = 10 on that point
    assert interval_score(y, y - 1, y + np.array([1.0, 1.0, -0.5]), 0.9) == pytest.approx((2 + 2 + 0.5 + 10) / 3)


def test_trials_are_the_shipped_setting_then_distinct_draws():
    trials = candidates(5, SPACE)
    assert trials[0] == {} and len({tuple(sorted(t.items())) for t in trials[1:]}) == 4
    assert candidates(5, SPACE) == trials


def test_bad_tuning_requests_are_refused():
    with pytest.raises(ValueError, match=">= 0"):
        check_tuning(-1, "each", METHODS)
    with pytest.raises(ValueError, match="at most 9"):
        check_tuning(10, "each", METHODS, SPACE)
    with pytest.raises(ValueError, match="'sometimes'.*each"):
        check_tuning(3, "sometimes", METHODS)
    with pytest.raises(ValueError, match="none of the methods.*searched"):
        check_tuning(3, "each", ["gp", "cqr"])
    args = argparse.Namespace(steps=10, csv=None, suite="ood", run_dir="unused", tune_trials=4, tune_on="each",
                              methods=None)
    with pytest.raises(ValueError, match="OOD suite"):
        main(args)
