"""The per-set search of `orbit uq benchmark --tune-trials`: chosen on validation rows only, the same
number of trials for every method (each from its own space), clear errors."""
import argparse

import numpy as np
import pytest

from orbit.plugins.pi3nn.benchmark import _benchmark_split, format_suite, main, run_benchmark
from orbit.plugins.pi3nn.data import heteroscedastic
from orbit.plugins.pi3nn.methods import METHODS, Budget
from orbit.plugins.pi3nn.tuning import SPACES, candidates, check_tuning, interval_score

SPACE = {"lr": [3e-3, 1e-2], "hidden": [8], "weight_decay": [0.0, 1.0], "steps": [20, 30]}
TINY = {**{m: SPACE for m in ("pi3nn", "pi3nn_cal", "ensemble", "mc_dropout", "conformal")},  # every method, tiny
        "bnn": {"lr": [3e-3, 1e-2], "hidden": [8], "steps": [20, 30], "bnn_prior_sd": [0.3, 1.0]},
        "gp": {"gp_kernel": ["rbf", "matern52"], "gp_ard": [True, False], "gp_noise_floor": [1e-5, 1e-2]},
        "cqr": {"cqr_estimators": [10, 20], "cqr_depth": [2, 3], "cqr_lr": [0.1], "cqr_min_leaf": [1, 5]}}


def _csv(path, x, y):
    np.savetxt(path, np.column_stack([x, y]), delimiter=",", header="x0,x1,y", comments="")
    return path


def _tuned(tmp_path, name, x, y):
    budget = Budget(steps=20, hidden=8, check_every=10, ensemble_members=2, mc_samples=10)
    return run_benchmark(_csv(tmp_path / f"{name}.csv", x, y), tmp_path / name, splits=1, methods=METHODS,
                         budget=budget, tune_trials=3, spaces=TINY, log=lambda *_: None)


def test_choice_uses_validation_rows_only(tmp_path):
    x, y = heteroscedastic(500, seed=3, dims=2)  # 45 calibration rows: CQR's 95% interval is finite
    split = _benchmark_split(500, 0)
    base = _tuned(tmp_path, "base", x, y)
    x2, y2 = x.copy(), y.copy()  # other test rows: the search must not notice
    x2[split.test] = np.random.default_rng(1).normal(size=(len(split.test), 2)) * 3
    y2[split.test] = np.random.default_rng(2).normal(size=len(split.test)) * 5
    other_test = _tuned(tmp_path, "other_test", x2, y2)
    search, search2 = base["tuning"]["searches"]["split0"], other_test["tuning"]["searches"]["split0"]
    assert set(search["choice"]) == set(METHODS) == set(search["trials"])
    assert all(len(t) == 3 and t[0] == {} for t in search["trials"].values())
    assert search["trials"]["gp"][1].keys() == TINY["gp"].keys()  # each method draws from its own space
    assert search["trials"]["pi3nn"] == search["trials"]["pi3nn_cal"]  # they share the trained networks
    assert search2["scores"] == search["scores"] and search2["choice"] == search["choice"]
    assert set(base["methods"]) == {f"{m}_tuned" for m in METHODS}
    assert base["methods"]["pi3nn_tuned"]["wall_s"]["mean"] > 0  # split 0 reuses the search's run and its time
    table = format_suite({"toy": base})
    assert "settings chosen by the search (3 trials per method, on each split's own" in table
    assert f"| toy | mc_dropout | {search['choice']['mc_dropout']['trial']} |" in table
    assert base["methods"]["ensemble_tuned"]["picp"] != other_test["methods"]["ensemble_tuned"]["picp"]
    assert base["budget"]["gp_kernel"] == "rbf"  # the shipped settings stay the base the trials replace
    y3 = y.copy()  # other validation targets: the scores the choice rests on change
    y3[split.val] += np.random.default_rng(4).normal(size=len(split.val))
    other_val = _tuned(tmp_path, "other_val", x, y3)["tuning"]["searches"]["split0"]
    for method in METHODS:
        assert other_val["scores"][method] != search["scores"][method]
    y4 = y.copy()  # other calibration targets: only the methods that calibrate on them move
    y4[split.cal] += np.random.default_rng(5).normal(size=len(split.cal))
    other_cal = _tuned(tmp_path, "other_cal", x, y4)["tuning"]["searches"]["split0"]
    for method in METHODS:
        moved = other_cal["scores"][method] != search["scores"][method]
        assert moved == (method in ("pi3nn_cal", "conformal", "cqr")), method


def test_every_method_has_a_space_of_budget_knobs():
    assert set(SPACES) == set(METHODS)
    fields = set(Budget.__dataclass_fields__)
    for method, space in SPACES.items():
        assert set(space) <= fields, method
        assert all(len(v) == len(set(v)) >= 2 for v in space.values()), method


def test_bound_weight_decay_reaches_the_pi3nn_run_config():
    from orbit.config import load_config
    from orbit.plugins.pi3nn.trained import BENCHMARK_CONFIG

    assert "bound_weight_decay" in SPACES["pi3nn"] and "bound_weight_decay" not in SPACES["ensemble"]
    shipped = load_config(BENCHMARK_CONFIG, Budget().pi3nn_overrides())
    decayed = load_config(BENCHMARK_CONFIG, Budget(bound_weight_decay=5.0).pi3nn_overrides())
    assert (shipped.options.bound_weight_decay, decayed.options.bound_weight_decay) == (0.0, 5.0)


def test_a_rerun_with_one_space_changed_searches_only_that_method_again(tmp_path):
    x, y = heteroscedastic(300, seed=3, dims=2)
    csv = _csv(tmp_path / "toy.csv", x, y)
    budget = Budget(steps=20, hidden=8, check_every=10, ensemble_members=2, mc_samples=10)
    methods = ["pi3nn", "pi3nn_cal", "mc_dropout", "gp"]
    first = run_benchmark(csv, tmp_path / "run", splits=1, methods=methods, budget=budget, tune_trials=3,
                          spaces=TINY, log=lambda *_: None)
    lines = []
    other_gp = {**TINY, "gp": {**TINY["gp"], "gp_noise_floor": [1e-3, 1e-1]}}
    second = run_benchmark(csv, tmp_path / "run", splits=1, methods=methods, budget=budget, tune_trials=3,
                           spaces=other_gp, log=lines.append)
    assert {line.split()[1] for line in lines if line.startswith("  tune ")} == {"gp"}
    before, after = (r["tuning"]["searches"]["split0"]["scores"] for r in (first, second))
    assert all(after[m] == before[m] for m in ("pi3nn", "pi3nn_cal", "mc_dropout"))


def test_gp_bnn_cqr_knobs_change_their_fits():
    from orbit.plugins.pi3nn.methods import FITTERS, SplitData

    x, y = heteroscedastic(240, seed=5, dims=2)
    x, y = x.astype(np.float32), ((y - y.mean()) / y.std()).astype(np.float32)
    # 50 calibration rows: CQR (MAPIE) needs >= 2 / (1 - gamma) = 40 for a finite 95% interval
    data = SplitData(x[:120], y[:120], x[120:150], y[120:150], x[200:], x[150:200], y[150:200])
    base = Budget(steps=20, hidden=8, check_every=10, mc_samples=10)
    for method, params in (("gp", {"gp_kernel": "matern52", "gp_ard": False, "gp_noise_floor": 0.5}),
                           ("bnn", {"bnn_prior_sd": 0.1}), ("cqr", {"cqr_depth": 1, "cqr_estimators": 10})):
        shipped = FITTERS[method](data, base, 0).interval(0.95)
        other = FITTERS[method](data, Budget(**{**base.__dict__, **params}), 0).interval(0.95)
        assert not np.allclose(shipped[1] - shipped[0], other[1] - other[0]), method
    with pytest.raises(ValueError, match="gp_kernel.*'cubic'"):
        FITTERS["gp"](data, Budget(gp_kernel="cubic"), 0)


def test_reported_fit_of_a_searched_baseline_is_the_fit_of_its_chosen_setting(tmp_path):
    """The search's own fit is reported (no refit): it must equal a fresh fit of the chosen setting."""
    import json

    from orbit.plugins.pi3nn.benchmark import _split_data
    from orbit.plugins.pi3nn.data import Standardized, read_table
    from orbit.plugins.pi3nn.intervals import mpiw
    from orbit.plugins.pi3nn.methods import FITTERS
    from orbit.plugins.pi3nn.tuning import trial_budget

    x, y = heteroscedastic(300, seed=3, dims=2)
    summary = _tuned(tmp_path, "reuse", x, y)
    rows = {r["method"]: r for r in json.loads((tmp_path / "reuse" / "runs.json").read_text())}
    x, y = read_table(tmp_path / "reuse.csv")
    split = _benchmark_split(len(y), 0)
    table = Standardized(x, y, split.train)
    budget = Budget(steps=20, hidden=8, check_every=10, ensemble_members=2, mc_samples=10)
    for method in ("ensemble", "gp", "conformal"):
        params = summary["tuning"]["searches"]["split0"]["choice"][method]["params"]
        fresh = FITTERS[method](_split_data(table, split), trial_budget(budget, params), 0)
        lower, upper = (a * table.y_std + table.y_mean for a in fresh.interval(0.95))
        assert rows[f"{method}_tuned"]["mpiw"] == pytest.approx(mpiw(lower, upper, float(np.ptp(y))), rel=1e-5)


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
    with pytest.raises(ValueError, match="search space.*at most 9"):
        check_tuning(10, "each", METHODS, TINY)
    with pytest.raises(ValueError, match="same search space"):
        check_tuning(3, "each", METHODS, {**TINY, "pi3nn_cal": TINY["gp"]})
    with pytest.raises(ValueError, match="'sometimes'.*each"):
        check_tuning(3, "sometimes", METHODS)
    with pytest.raises(ValueError, match="none of the methods.*searched"):
        check_tuning(3, "each", ["gp", "cqr"], {"pi3nn": SPACE})
    args = argparse.Namespace(steps=10, csv=None, suite="ood", run_dir="unused", tune_trials=4, tune_on="each",
                              methods=None)
    with pytest.raises(ValueError, match="OOD suite"):
        main(args)
