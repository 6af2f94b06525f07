"""PI3NN plug-in: step 4 (bisection) hits the target count exactly, coverage on a problem with known
quantiles, the three phases (and resuming inside the second one), the OOD initialisation, bad input."""
import csv
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from orbit.config import load_config
from orbit.plugins.pi3nn.data import heteroscedastic, read_table, true_interval
from orbit.plugins.pi3nn.intervals import (HeldOutCalibrator, IntervalCalibrator, bisect_scale, check_confidence,
                                          make_calibrator, picp, target_count)
from orbit.plugins.pi3nn.model import PI3NN, PI3NNConfig
from orbit.plugins.pi3nn.task import PI3NNTask, lower_loss, upper_loss
from orbit.run.runner import run_training

REPO = Path(__file__).resolve().parents[2]
TINY = REPO / "configs" / "plugins" / "pi3nn" / "tiny.yaml"
GAMMAS = (0.5, 0.683, 0.8, 0.9, 0.95, 0.99)


@pytest.mark.parametrize("n", [57, 1000, 4001])
def test_bisection_puts_exactly_the_target_count_outside_for_every_gamma(n):
    rng = np.random.default_rng(n)
    f = rng.normal(size=n)
    y = f + rng.standard_t(3, size=n) * (0.5 + rng.uniform(size=n))
    u, l = rng.uniform(0.2, 2.0, size=n), rng.uniform(0.2, 2.0, size=n)
    cal = IntervalCalibrator(y, f, u, l)
    for gamma in GAMMAS:
        s = cal.scales(gamma)
        k = int(np.floor(n * (1 - gamma) / 2 + 1e-9))
        lower, upper = cal.bounds(f, u, l, gamma)
        assert s.target == k == target_count(n, gamma)
        assert int((y > upper).sum()) == k and int((y < lower).sum()) == k, (gamma, s)
        assert picp(y, lower, upper) == pytest.approx(1 - 2 * k / n)
    # a wider gamma never gives a narrower interval (no crossing)
    widths = [cal.width(u, l, g) for g in GAMMAS]
    assert all((b >= a).all() for a, b in zip(widths, widths[1:]))


@pytest.mark.parametrize("n", [28, 45, 200])
def test_held_out_calibration_covers_rank_over_n_plus_one_on_new_points(n):
    """Split conformal's known answer: on exchangeable new points the expected coverage is exactly
    ceil((n + 1) gamma) / (n + 1) >= gamma, where the training-row count would fall short."""
    rng = np.random.default_rng(n)
    gamma, reps, m = 0.95, 2000, 200
    rank = int(np.ceil((n + 1) * gamma))
    covered, by_count = [], []
    for _ in range(reps):
        x = rng.uniform(-1, 1, size=n + m)
        f, u, l = np.zeros(n + m), 0.5 + x ** 2, 1.0 + 0.5 * np.abs(x)
        y = np.where(rng.uniform(size=n + m) < 0.5, u, -l) * rng.exponential(size=n + m)  # skewed, heteroscedastic
        cal, test = slice(0, n), slice(n, None)
        lower, upper = HeldOutCalibrator(y[cal], f[cal], u[cal], l[cal]).bounds(f[test], u[test], l[test], gamma)
        covered.append(picp(y[test], lower, upper))
        lower, upper = IntervalCalibrator(y[cal], f[cal], u[cal], l[cal]).bounds(f[test], u[test], l[test], gamma)
        by_count.append(picp(y[test], lower, upper))
    assert np.mean(covered) == pytest.approx(rank / (n + 1), abs=0.003)
    if n == 45:  # the training rows' rule (k = 1 outside per side, alpha between the two largest) under-covers
        assert np.mean(by_count) < gamma - 0.005  # 0.938 here


def test_held_out_calibration_is_unbounded_with_too_few_rows():
    rng = np.random.default_rng(0)
    y, ones = rng.normal(size=10), np.ones(10)
    cal = make_calibrator("cal", y, 0 * ones, ones, ones)
    assert cal.scales(0.95).alpha == np.inf and np.isfinite(cal.scales(0.9).alpha)  # rank 11 > 10; rank 10
    np.testing.assert_allclose(cal.confidence_score(np.array([1.0, 4.0]), np.array([1.0, 4.0]), 0.95), [1.0, 0.25])
    with pytest.raises(ValueError, match="'train' \\(the paper\\) or 'cal'"):
        make_calibrator("test", y, 0 * ones, ones, ones)


def test_bisection_with_ties_keeps_at_most_the_target_outside():
    ratio = np.array([0.0] * 5 + [1.0] * 5 + [2.0] * 5)
    alpha, count = bisect_scale(ratio, 3)  # 5 tied points jump over 3
    assert count <= 3 and (ratio > alpha).sum() == count


def test_confidence_score_is_one_in_distribution_and_falls_with_width():
    rng = np.random.default_rng(0)
    n = 500
    f, y = np.zeros(n), rng.normal(size=n)
    cal = IntervalCalibrator(y, f, np.ones(n), np.ones(n))
    score = cal.confidence_score(np.array([1.0, 2.0, 10.0]), np.array([1.0, 2.0, 10.0]), 0.95)
    np.testing.assert_allclose(score, [1.0, 0.5, 0.1])


def _run(tmp_path, name, *overrides):
    cfg = load_config(TINY, ["train.log_every=1", *overrides])
    return run_training(cfg, tmp_path / name)


def test_coverage_on_a_heteroscedastic_problem_with_known_quantiles(tmp_path):
    summary = _run(tmp_path, "run", "data.n_samples=5000", "data.test_fraction=0.3", "train.max_steps=500",
                   "options.bound_steps=500", "train.log_every=100", "train.ckpt_every=2000")
    sc = summary["scalars"]
    n_test = summary["rows"]["test"]
    assert n_test == 1500
    sigma = np.sqrt(0.95 * 0.05 / n_test)
    assert abs(sc["test_picp"] - 0.95) < 3 * sigma + 0.01, sc
    # every gamma of the calibration curve, from the same three networks
    for row in summary["calibration"]["test"]:
        g = row["gamma"]
        assert abs(row["picp"] - g) < 3 * np.sqrt(g * (1 - g) / n_test) + 0.02, row
    # the interval is about as wide as the true 95% interval (known noise), not trivially wide
    x, y = heteroscedastic(5000, 0)
    lo, hi = true_interval(x, 0.95)
    true_mpiw = float(np.mean(hi - lo) / np.ptp(y))
    assert 0.8 * true_mpiw < sc["test_mpiw"] < 1.3 * true_mpiw, (sc["test_mpiw"], true_mpiw)
    assert sc["calibration_above"] == sc["calibration_below"] == sc["calibration_target_outside"]
    run = tmp_path / "run"
    assert (run / "pi3nn_report.md").is_file() and (run / "pi3nn_calibration.png").is_file()


def _losses(run_dir):
    with open(run_dir / "metrics.csv") as handle:
        return {int(r["step"]): (r["phase"], float(r["loss"])) for r in csv.DictReader(handle)}


def test_resume_inside_the_upper_phase_equals_the_uninterrupted_run(tmp_path):
    steps = ["train.max_steps=30", "options.bound_steps=30", "train.ckpt_every=10", "train.keep_last=20",
             "data.n_samples=400"]
    full = _run(tmp_path, "full", *steps)
    resumed_dir = tmp_path / "resumed" / "checkpoints"
    resumed_dir.mkdir(parents=True)
    shutil.copytree(tmp_path / "full" / "checkpoints" / "step_00000040", resumed_dir / "step_00000040")
    cfg = load_config(TINY, ["train.log_every=1", *steps])
    resumed = run_training(cfg, tmp_path / "resumed", resume="auto")
    assert resumed["scalars"] == full["scalars"]
    a, b = _losses(tmp_path / "full"), _losses(tmp_path / "resumed")
    assert min(b) == 41 and {s: a[s] for s in b} == b
    assert a[40][0] == "upper" and a[61][0] == "lower"


def test_phase_losses_train_only_their_network_and_only_their_side():
    torch.manual_seed(0)
    model = PI3NN(PI3NNConfig(in_features=2, hidden=[8]))
    x, y = torch.randn(32, 2), torch.randn(32)
    out = model(x)
    assert out.shape == (32, 3) and (out[:, 1:] > 0).all()
    upper_loss(out, (x, y)).backward()
    untouched = [*model.mean.parameters(), *model.lower.parameters()]
    assert all(p.grad is None or not p.grad.any() for p in untouched)
    assert any(p.grad.abs().sum() > 0 for p in model.upper.parameters())
    # points below f do not enter the upper loss, points above f do not enter the lower loss
    f = out[:, 0].detach()
    above = y >= f
    manual = ((out[:, 1] - (y - f))[above] ** 2).mean()
    assert upper_loss(out, (x, y)).item() == pytest.approx(manual.item(), rel=1e-6)
    manual_low = ((out[:, 2] - (f - y))[~above] ** 2).mean()
    assert lower_loss(out, (x, y)).item() == pytest.approx(manual_low.item(), rel=1e-6)


def test_ood_initialisation_sets_large_output_biases_and_can_be_switched_off():
    on = PI3NN(PI3NNConfig(in_features=3, ood_bias=10.0))
    off = PI3NN(PI3NNConfig(in_features=3, ood_init=False))
    assert on.upper[-1].bias.item() == on.lower[-1].bias.item() == 10.0
    assert abs(off.upper[-1].bias.item()) < 1.0
    assert (on(torch.zeros(4, 3))[:, 1:] > 5).all()


@pytest.mark.parametrize("gamma", [0.0, 1.0, 1.5, -0.2, "high"])
def test_confidence_outside_the_open_unit_interval_is_refused(gamma):
    with pytest.raises(ValueError, match=r"\(0, 1\)") as err:
        check_confidence(gamma)
    assert repr(gamma) in str(err.value)
    with pytest.raises(ValueError, match="options.confidence"):
        load_config(TINY, [f"options.confidence={gamma}"])


def test_each_network_is_restored_to_its_selected_state_on_its_own_validation_loss(tmp_path):
    # select_mode=max (the worst state): an early step, so that a restore is visible in so few steps
    summary = _run(tmp_path, "run", "train.max_steps=30", "options.bound_steps=30", "train.eval_every=10",
                   "train.select_best=val_{phase}_loss", "train.select_mode=max", "train.weight_decay=1",
                   "options.bound_weight_decay=0", "data.n_samples=400")
    selected = summary["selected"]
    assert {p: s["metric"] for p, s in selected.items()} == {p: f"val_{p}_loss" for p in ("mean", "upper", "lower")}
    assert [s["step"] for s in selected.values()] == [10, 40, 70]
    for phase, best in selected.items():  # each network kept its best state; later phases do not move it
        assert summary["scalars"][f"val_{phase}_loss"] == pytest.approx(best["value"], rel=1e-6), phase
    cfg = load_config(TINY, ["options.bound_weight_decay=0", "train.weight_decay=1"])
    assert [p.weight_decay for p in PI3NNTask(cfg).phases(cfg.train)] == [None, 0.0, 0.0]
    with pytest.raises(ValueError, match="bound_weight_decay=-1.0 must be >= 0"):
        load_config(TINY, ["options.bound_weight_decay=-1"])


def test_training_validates_on_the_validation_losses_only_and_evaluates_everything():
    cfg = load_config(TINY, ["train.max_steps=10", "options.bound_steps=5", "data.n_samples=200"])
    task = PI3NNTask(cfg)
    model = PI3NN(PI3NNConfig(in_features=1))
    engine = type("Engine", (), {"forward": staticmethod(lambda inputs: model(*inputs))})()
    with torch.no_grad():  # as the trainer and `orbit evaluate` call it
        full = task.evaluate(engine, 20)["scalars"]  # the final evaluation, `orbit evaluate`
        validation = task.validate(engine, 10)["scalars"]  # periodic evaluations and checkpoint selection
    assert {"test_picp", "alpha", "val_mean_loss"} <= set(full)
    assert validation == {k: pytest.approx(full[k]) for k in ("val_mean_loss", "val_upper_loss", "val_lower_loss")}


def test_calibration_set_must_be_train_or_cal_with_calibration_rows():
    with pytest.raises(ValueError, match="'test'.*'train'.*'cal'"):
        load_config(TINY, ["options.calibrate_on=test"])
    with pytest.raises(ValueError, match="cal_fraction=0.95 must be in \\[0, 1 - data.val_fraction\\)"):
        load_config(TINY, ["data.cal_fraction=0.95"])
    cfg = load_config(TINY, ["options.calibrate_on=cal"])
    with pytest.raises(ValueError, match="calibrate_on=cal needs calibration rows.*data.cal_fraction > 0"):
        PI3NNTask(cfg)


def test_calibration_rows_are_held_out_and_step_4_reads_only_them():
    task = PI3NNTask(load_config(TINY, ["options.calibrate_on=cal", "data.cal_fraction=0.1", "data.n_samples=200"]))
    s = task.split
    parts = [s.train, s.val, s.cal, s.test]
    assert sum(map(len, parts)) == len(task.table.y) == len(np.unique(np.concatenate(parts)))
    assert len(s.cal) == len(s.val) > 0
    model = PI3NN(PI3NNConfig(in_features=1))
    engine = type("Engine", (), {"forward": staticmethod(lambda inputs: model(*inputs))})()
    with torch.no_grad():
        f, u, l = task.network_outputs(engine, s.cal).T
        expected = HeldOutCalibrator(task.table.yn[s.cal], f, u, l).scales(0.95)
        assert task.calibrator(engine).scales(0.95) == expected


def _write(path, header, rows):
    path.write_text(",".join(header) + "\n" + "".join(",".join(str(v) for v in r) + "\n" for r in rows))
    return path


def test_bad_tables_are_refused_with_what_is_valid(tmp_path):
    rows = [[i, i * 2.0, float(i % 7)] for i in range(30)]
    with pytest.raises(ValueError, match="no 'y' column.*x0..x"):
        read_table(_write(tmp_path / "no_y.csv", ["x0", "x1", "target"], rows))
    nan_rows = [list(r) for r in rows]
    nan_rows[4][1] = "nan"
    nan_rows[9][2] = ""
    with pytest.raises(ValueError, match=r"2 row\(s\) hold NaN.*lines 6, 11"):
        read_table(_write(tmp_path / "nan.csv", ["x0", "x1", "y"], nan_rows))
    const = [[i, i * 2.0, 3.5] for i in range(30)]
    with pytest.raises(ValueError, match="constant.*3.5"):
        read_table(_write(tmp_path / "const.csv", ["x0", "x1", "y"], const))
    with pytest.raises(FileNotFoundError, match="does not exist"):
        read_table(tmp_path / "missing.csv")
    x, y = read_table(_write(tmp_path / "ok.csv", ["x0", "x1", "y"], rows))
    assert x.shape == (30, 2) and y.shape == (30,)
