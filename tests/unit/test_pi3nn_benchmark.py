"""The benchmark's pieces on tiny budgets: PI3NN fitted through the one trainer, the OOD case, the suite
table, the method list."""
import json

import numpy as np
import pytest

from orbit.config import load_config
from orbit.plugins.pi3nn.benchmark import check_methods, format_suite, run_benchmark, run_ood
from orbit.plugins.pi3nn.data import cubic, heteroscedastic, split_rows
from orbit.plugins.pi3nn.methods import METHODS, Budget


def test_ood_case_writes_widths_scores_and_coverage(tmp_path):
    summary = run_ood(tmp_path, seeds=1, n_train=300, n_test=100, budget=Budget(steps=40, hidden=16), log=lambda *_: None)
    assert set(summary["methods"]) == {"pi3nn (OOD init)", "pi3nn (no OOD init)", "pi3nn (OOD init, no weight decay)",
                                        "pi3nn (OOD init, weight decay on f, u, l)",
                                        "pi3nn (OOD init, weight decay 1 on u, l only)", "ensemble", "mc_dropout"}
    for entry in summary["methods"].values():
        assert entry["width_id"]["mean"] > 0 and entry["ratio"]["mean"] > 0
        assert 0 <= entry["score_ood"]["mean"] <= 1 and 0 <= entry["picp_id"]["mean"] <= 1
    assert "ratio OOD/ID" in (tmp_path / "table.md").read_text()
    assert (tmp_path / "width_vs_distance.png").is_file()
    assert len(json.loads((tmp_path / "runs.json").read_text())) == 7


def test_cubic_ood_inputs_are_shifted_and_splits_are_90_10():
    x, y = cubic(4000, seed=0)
    xo, _ = cubic(4000, seed=0, shift=2.0)
    assert x.shape == (4000, 10) and abs(x.mean()) < 0.05 and abs(xo.mean() - 2.0) < 0.05
    np.testing.assert_allclose(np.std(y - (x ** 3).sum(1) / 10), 1.0, atol=0.05)
    split = split_rows(1000, 0.1, 0.1, seed=0)
    assert len(split.test) == 100 and len(split.val) == 90 and len(split.train) == 810 and len(split.cal) == 0
    held_out = split_rows(1000, 0.1, 0.1, seed=0, cal_fraction=0.1)  # the benchmark's calibration part
    for part in ("test", "val"):  # carved from the training rows only
        np.testing.assert_array_equal(getattr(held_out, part), getattr(split, part))
    assert len(held_out.cal) == 90 and len(held_out.train) == 720
    assert np.union1d(held_out.train, held_out.cal).tolist() == split.train.tolist()
    with pytest.raises(ValueError, match="val_fraction \\+ cal_fraction < 1"):
        split_rows(1000, 0.1, 0.5, seed=0, cal_fraction=0.5)


def test_suite_table_bolds_the_narrowest_covering_method():
    def entry(p, w):
        return {"picp": {"mean": p, "std": 0.0}, "mpiw": {"mean": w, "std": 0.0}, "wall_s": {"mean": 1.0}}

    results = {"toy": {"confidence": 0.95, "splits": 3, "seeds": 1,
                       "methods": {"a": entry(0.90, 0.1), "b": entry(0.95, 0.3), "c": entry(0.96, 0.2)}}}
    text = format_suite(results)
    assert "**0.200 ± 0.000**" in text and "**0.100" not in text
    results["other"] = {**results["toy"], "methods": {"a": entry(0.95, 0.1)}}  # a set without b and c
    assert "| other | **0.100 ± 0.000** | – | – |" in format_suite(results)


def test_unknown_methods_are_named():
    assert check_methods(None) == list(METHODS)
    with pytest.raises(ValueError, match="'magic'.*valid methods"):
        check_methods(["pi3nn", "magic"])


def test_benchmark_fits_pi3nn_through_the_trainer_and_reuses_finished_runs(tmp_path):
    x, y = heteroscedastic(300, seed=5, dims=2)
    csv = tmp_path / "t.csv"
    np.savetxt(csv, np.column_stack([x, y]), delimiter=",", header="x0,x1,y", comments="")
    bench, budget = tmp_path / "bench", Budget(steps=20, hidden=8)
    kwargs = dict(splits=1, methods=["pi3nn", "pi3nn_cal"], budget=budget, log=lambda *_: None)
    first = run_benchmark(csv, bench, **kwargs)
    run = bench / "pi3nn" / "split0_seed0"
    assert [p.name for p in (run / "checkpoints").iterdir()] == ["step_00000060"]  # 3 phases of 20 steps
    cfg = load_config(run / "config.yaml")
    assert cfg.task == "pi3nn" and cfg.data.seed == 0 and cfg.options.bound_steps == cfg.train.max_steps == 20
    # the benchmark's training-calibrated PI3NN is the run's own evaluation (same networks, same step 4)
    own = json.loads((run / "summary.json").read_text())["scalars"]
    assert first["methods"]["pi3nn"]["picp"]["mean"] == pytest.approx(own["test_picp"])
    assert first["methods"]["pi3nn"]["rmse"]["mean"] == first["methods"]["pi3nn_cal"]["rmse"]["mean"]
    def scores(summary):
        return {m: (e["picp"], e["mpiw"], e["rmse"]) for m, e in summary["methods"].items()}

    assert scores(run_benchmark(csv, bench, **kwargs)) == scores(first)  # a finished run is reused
    (run / "summary.json").unlink()  # as if stopped after its last checkpoint: resumes from it, same networks
    assert scores(run_benchmark(csv, bench, **kwargs)) == scores(first)
    assert [p.name for p in (run / "checkpoints").iterdir()] == ["step_00000060"]
    with pytest.raises(FileExistsError, match="another config"):
        run_benchmark(csv, bench, **{**kwargs, "budget": Budget(steps=21, hidden=8)})
