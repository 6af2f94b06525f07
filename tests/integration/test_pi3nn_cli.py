"""PI3NN through the CLI: `orbit train` on the tiny config, `orbit evaluate`, `orbit uq benchmark` on a
user's CSV (every method, a tiny budget) and its clear errors."""
import json
import os
import subprocess
import sys

import numpy as np
import pytest

from cli_runs import REPO

from orbit.plugins.pi3nn.data import heteroscedastic
from orbit.plugins.pi3nn.methods import METHODS


def _orbit(args, timeout=300):
    return subprocess.run([sys.executable, "-W", "ignore", "-m", "orbit", *args], cwd=REPO, capture_output=True,
                          text=True, env={**os.environ, "OMP_NUM_THREADS": "1"}, timeout=timeout)


def test_train_tiny_config_and_evaluate(tmp_path):
    run = tmp_path / "run"
    done = _orbit(["train", "--config", "configs/plugins/pi3nn/tiny.yaml", "--run-dir", str(run),
                   "train.max_steps=200", "options.bound_steps=200"])
    assert done.returncode == 0, done.stderr[-4000:]
    summary = json.loads((run / "summary.json").read_text())
    sc = summary["scalars"]
    assert sc["calibration_above"] == sc["calibration_below"] == sc["calibration_target_outside"] == 40  # floor(1620 * 0.05 / 2): 2000 rows - 200 test - 180 validation
    assert 0.85 < sc["test_picp"] <= 1.0
    assert [r["gamma"] for r in summary["calibration"]["test"]][0] == 0.5
    for name in ("pi3nn_report.md", "pi3nn_calibration.json", "pi3nn_calibration.png", "pi3nn_slice.png", "metrics.csv"):
        assert (run / name).is_file(), name
    rows = [line.split(",") for line in (run / "metrics.csv").read_text().splitlines()[1:]]
    assert [r[1] for r in rows if int(r[0]) in (200, 400, 600)] == ["mean", "upper", "lower"]  # 3 phases of 200
    done = _orbit(["evaluate", "--run-dir", str(run)])
    assert done.returncode == 0, done.stderr[-4000:]
    scored = json.loads((run / "evaluation" / "evaluation.json").read_text())["scalars"]
    assert scored["test_picp"] == pytest.approx(sc["test_picp"])


def _csv(path, n=400):
    x, y = heteroscedastic(n, seed=3, dims=2)
    rows = np.column_stack([x, y])
    np.savetxt(path, rows, delimiter=",", header="x0,x1,y", comments="")
    return path


def test_uq_benchmark_on_a_users_csv_writes_summary_for_every_method(tmp_path):
    csv = _csv(tmp_path / "mine.csv")
    run = tmp_path / "bench"
    done = _orbit(["uq", "benchmark", "--csv", str(csv), "--confidence", "0.9", "--splits", "2", "--seeds", "1",
                   "--steps", "60", "--run-dir", str(run)])
    assert done.returncode == 0, done.stderr[-4000:]
    summary = json.loads((run / "summary.json").read_text())
    assert summary["confidence"] == 0.9 and set(summary["methods"]) == set(METHODS)
    for method, entry in summary["methods"].items():
        assert entry["fits"] == 2
        assert 0.0 <= entry["picp"]["mean"] <= 1.0 and entry["picp"]["std"] >= 0
        assert entry["mpiw"]["mean"] > 0 and entry["wall_s"]["mean"] > 0
    assert "calibration" in summary["methods"]["pi3nn"] and "calibration" not in summary["methods"]["cqr"]
    assert (run / "table.md").read_text().count("|") > 20 and (run / "calibration.png").is_file()
    runs = json.loads((run / "runs.json").read_text())
    assert len(runs) == 2 * len(METHODS)


def test_uq_benchmark_errors_name_the_value_and_what_is_valid(tmp_path, capsys):
    from orbit.cli import main  # in process: these fail before any fitting

    csv = _csv(tmp_path / "mine.csv")
    assert main(["uq", "benchmark", "--csv", str(csv), "--confidence", "1.5", "--run-dir", str(tmp_path / "r")]) == 2
    err = capsys.readouterr().err
    assert "1.5" in err and "(0, 1)" in err
    no_y = tmp_path / "no_y.csv"
    no_y.write_text("x0,x1,target\n" + "".join(f"{i},{i},{i}\n" for i in range(30)))
    assert main(["uq", "benchmark", "--csv", str(no_y), "--run-dir", str(tmp_path / "r")]) == 2
    assert "no 'y' column" in capsys.readouterr().err
    assert main(["uq", "benchmark", "--csv", str(csv), "--methods", "pi3nn", "magic", "--run-dir",
                 str(tmp_path / "r")]) == 2
    err = capsys.readouterr().err
    assert "'magic'" in err and "ensemble" in err
    assert main(["uq", "benchmark", "--run-dir", str(tmp_path / "r")]) == 2
    assert "exactly one of --csv" in capsys.readouterr().err
    assert main(["uq", "benchmark", "--csv", str(csv), "--tune-trials", "-2", "--run-dir", str(tmp_path / "r")]) == 2
    assert "--tune-trials must be an integer >= 0 (0: no search), got -2" in capsys.readouterr().err
    assert main(["uq", "benchmark", "--csv", str(csv), "--tune-trials", "40", "--methods", "gp", "--run-dir",
                 str(tmp_path / "r")]) == 2
    assert "--tune-trials=40 exceeds the 16 settings of gp's search space" in capsys.readouterr().err


def test_uq_benchmark_uci_suite_searches_and_writes_one_table(tmp_path):
    """`--suite uci` on one shared set (yacht, 308 rows) with the search: the held-out calibration variant,
    its searched u/l decay knob and the suite's Markdown + JSON table."""
    run = tmp_path / "suite"
    done = _orbit(["uq", "benchmark", "--suite", "uci", "--datasets", "yacht", "--splits", "1", "--seeds", "1",
                   "--steps", "30", "--methods", "pi3nn", "pi3nn_cal", "conformal", "--tune-trials", "2",
                   "--run-dir", str(run)])
    assert done.returncode == 0, done.stderr[-4000:]
    table = json.loads((run / "uci_table.json").read_text())
    assert set(table["yacht"]["methods"]) == {"pi3nn_tuned", "pi3nn_cal_tuned", "conformal_tuned"}
    search = table["yacht"]["tuning"]["searches"]["split0"]
    assert "bound_weight_decay" in search["trials"]["pi3nn_cal"][1]
    assert "| yacht |" in (run / "uci_table.md").read_text()
