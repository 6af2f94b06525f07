"""Choose PI3NN's regularisation on validation rows only (issue 12): every variant early-stops f, u and l
on their own validation losses (`train.select_best: val_{phase}_loss` in configs/plugins/pi3nn/benchmark.yaml)
and differs in the AdamW weight decay:

- `none`:    no weight decay;
- `f_only`:  weight decay 5 on the mean network f only (`options.bound_weight_decay=0`);
- `all`:     weight decay 5 on f, u and l (the previous setting).

Scores: validation PICP of the 95% interval (alpha, beta bisected on the training rows, as the paper and
the benchmark's `pi3nn` method) on split 0 of the six UCI sets, and on the OOD case (10-D cubic, seed 0)
its validation PICP and the OOD/ID width ratio on fresh unlabelled inputs (x ~ N(2, 1) against x ~ N(0, 1),
drawn with seeds the OOD suite's test sets do not use). Criterion: mean validation PICP closest to 0.95
with the OOD widening kept (ratio well above 1).

    python benchmarks/pi3nn_select.py RUN     # writes RUN/select.json and prints a Markdown table
"""
from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np

from orbit.plugins.pi3nn.benchmark import DEFAULT_UCI_ROOT, UCI_SETS
from orbit.plugins.pi3nn.data import cubic
from orbit.plugins.pi3nn.intervals import picp
from orbit.plugins.pi3nn.methods import Budget
from orbit.plugins.pi3nn.trained import calibrator, outputs, train_run

VARIANTS = {"none": ["train.weight_decay=0"],
            "f_only": ["train.weight_decay=5", "options.bound_weight_decay=0"],
            "all": ["train.weight_decay=5", "options.bound_weight_decay=5"]}
GAMMA = 0.95


def val_scores(task, model) -> tuple[float, float]:
    """(validation PICP, validation MPIW / range of y) with alpha, beta from the training rows."""
    cal = calibrator(task, model, "train")
    rows = task.split.val
    f, u, l = outputs(model, task.table.xn[rows]).T
    lower, upper = cal.bounds(f, u, l, GAMMA)
    return picp(task.table.yn[rows], lower, upper), float(np.mean(upper - lower)) * task.table.y_std / task.y_range


def main(run_dir: Path) -> dict:
    budget = Budget()
    results: dict = {}
    for variant, overrides in VARIANTS.items():
        rows = {}
        for name in UCI_SETS:
            task, model = train_run(run_dir / variant / name, [f"data.csv={DEFAULT_UCI_ROOT / (name + '.csv')}",
                                                              "data.seed=0", "train.seed=0", *budget.pi3nn_overrides(),
                                                              *overrides])
            rows[name] = dict(zip(("picp", "mpiw"), val_scores(task, model)))
        n_rows = int(round(2000 / 0.81))  # as the OOD suite
        task, model = train_run(run_dir / variant / "ood", ["data.synthetic=cubic", f"data.n_samples={n_rows}",
                                                           "data.seed=0", "train.seed=1000", *budget.pi3nn_overrides(),
                                                           *overrides])
        cal = calibrator(task, model, "train")
        widths = []
        for seed, shift in ((5000, 0.0), (6000, 2.0)):  # unlabelled inputs; the OOD test sets use 1000+k, 2000+k
            x, _ = cubic(1000, seed=seed, shift=shift)
            f, u, l = outputs(model, task.table.scale_x(x)).T
            lower, upper = cal.bounds(f, u, l, GAMMA)
            widths.append(float(np.mean(upper - lower)))
        rows["ood"] = {"picp": val_scores(task, model)[0], "ratio": widths[1] / widths[0]}
        rows["mean_uci_picp"] = float(np.mean([rows[n]["picp"] for n in UCI_SETS]))
        results[variant] = rows
        print(variant, json.dumps(rows), flush=True)
    (run_dir / "select.json").write_text(json.dumps(results, indent=1))
    lines = ["| variant | " + " | ".join(UCI_SETS) + " | mean UCI | OOD case | OOD/ID width ratio |",
             "|---" * (len(UCI_SETS) + 4) + "|"]
    for variant, rows in results.items():
        lines.append(f"| {variant} | " + " | ".join(f"{rows[n]['picp']:.3f}" for n in UCI_SETS)
                     + f" | {rows['mean_uci_picp']:.3f} | {rows['ood']['picp']:.3f} | {rows['ood']['ratio']:.2f} |")
    print("\n".join(lines))
    return results


if __name__ == "__main__":
    if len(sys.argv) != 2:
        sys.exit("usage: python benchmarks/pi3nn_select.py RUN_DIR")
    main(Path(sys.argv[1]))
