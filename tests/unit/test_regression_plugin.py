"""The regression plug-in: its split, its normalization, its CSV reader and a short training run."""
from pathlib import Path

import numpy as np
import pytest

from orbit.config import load_config
from orbit.plugins.regression.data import Table, read_csv, split_rows, synthetic
from orbit.run.runner import run_training

REPO = Path(__file__).resolve().parents[2]
CONCRETE = REPO.parent / "shared" / "data" / "uci" / "concrete.csv"
TINY = REPO / "configs" / "plugins" / "regression" / "tiny.yaml"


def test_split_is_disjoint_complete_and_seeded():
    split = split_rows(1000, 0.15, 0.1, seed=3)
    parts = [set(split.train), set(split.val), set(split.test)]
    assert [len(p) for p in parts] == [750, 150, 100]
    assert not (parts[0] & parts[1] or parts[0] & parts[2] or parts[1] & parts[2])
    assert set().union(*parts) == set(range(1000))
    again = split_rows(1000, 0.15, 0.1, seed=3)
    assert np.array_equal(split.test, again.test)
    assert not np.array_equal(split.test, split_rows(1000, 0.15, 0.1, seed=4).test)
    with pytest.raises(ValueError, match="val_fraction"):
        split_rows(100, 0.6, 0.5, seed=0)


def test_normalization_uses_the_training_rows_only():
    x, y = synthetic(500, 4, 0.1, seed=0)
    x[:, 0] += 100.0 * (np.arange(500) % 2)  # held-out rows could shift the statistics if they leaked in
    table = Table(x, y, split_rows(500, 0.2, 0.2, seed=1))
    train = table.split.train
    np.testing.assert_allclose(table.x_mean, x[train].mean(0))
    np.testing.assert_allclose(table.y_std, y[train].std(0))
    np.testing.assert_allclose(table.xn[train].mean(0), 0.0, atol=1e-5)
    np.testing.assert_allclose(table.xn[train].std(0), 1.0, atol=1e-4)
    assert not np.allclose(table.xn[table.split.test].mean(0), 0.0, atol=1e-3)


@pytest.mark.skipif(not CONCRETE.is_file(), reason=f"UCI tables not present at {CONCRETE} (../shared/data is "
                                                      f"absent in this checkout)")
def test_reads_the_uci_concrete_table():
    x, y = read_csv(CONCRETE)
    assert x.shape == (1030, 8) and y.shape == (1030, 1)
    assert np.isfinite(x).all() and 2.0 < y.min() < y.max() < 90.0  # compressive strength, MPa


def test_read_csv_names_a_bad_header_and_a_missing_file(tmp_path):
    bad = tmp_path / "bad.csv"
    bad.write_text("a,b,target\n1,2,3\n")
    with pytest.raises(ValueError, match="expected"):
        read_csv(bad)
    with pytest.raises(FileNotFoundError, match="data.csv"):
        read_csv(tmp_path / "missing.csv")


def test_short_training_beats_the_mean_predictor(tmp_path):
    cfg = load_config(TINY, ["train.max_steps=100", "train.log_every=50", "train.ckpt_every=100"])
    summary = run_training(cfg, tmp_path / "run")
    scores = summary["scalars"]
    assert scores["test_rmse"] < 0.8 * scores["mean_test_rmse"], scores
    assert (tmp_path / "run" / "regression_report.md").is_file()
