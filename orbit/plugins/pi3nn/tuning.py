"""Per-data-set hyper-parameter search of `orbit uq benchmark --tune-trials N`, on validation rows only.

Why: the PI3NN paper's code (UQnet, "auto" mode) tunes each network's width, learning rate and
regularisation per data set with Hyperopt on validation rows; a fixed setting for every set (the
benchmark's untuned default) costs PI3NN accuracy and width. A fair comparison gives the strongest
neural baselines the same search: every tuned method evaluates the same trials on the same rows.

Search (random search, scikit-learn's `ParameterSampler`, seed 0): every searched method gets the same
number N of trials on the same validation rows with the same objective, from its own space (`SPACES`,
keys are `Budget` fields): trial 0 is the method's shipped setting (`Budget` and
`configs/plugins/pi3nn/benchmark.yaml`), trials 1..N-1 are seeded draws without replacement. The knobs:

    networks (PI3NN, ensemble, MC dropout, the split-conformal MLP), `NETWORK_SPACE`:
    lr            learning rate: PI3NN's mean network (`train.lr`; u, l keep `options.bound_lr`), the others'
    hidden        width of both hidden layers: PI3NN's f, u, l (`model.hidden`), the others' networks
    weight_decay  AdamW weight decay of the weight matrices: PI3NN's f only (`train.weight_decay`), the
                  others' networks
    steps         optimizer steps per network (`train.max_steps`, `options.bound_steps`); every network also
                  keeps its best validation state inside them (early stopping)
    PI3NN also (`PI3NN_SPACE`): `bound_weight_decay`, u's and l's (`options.bound_weight_decay`). Shipped 0
                  keeps the OOD widening; decay flattens u and l, which narrows the calibrated interval where
                  the spread has no shape they can learn (wine, splits 0-2, calibrated on the calibration
                  rows: validation width 0.46-0.65 of the range of y with decay 5 against 0.78-1.10 without;
                  docs/pi3nn.md); decay removes the widening (benchmarks/results/pi3nn_ood.md).
    BNN: lr, hidden, steps as above and `bnn_prior_sd`, the N(0, s^2) prior's scale (no weight decay: the
                  prior is the regulariser)
    GP: `gp_kernel` RBF or Matern-5/2, `gp_ard` one length scale per input or one, `gp_noise_floor` the
                  white-noise level's lower bound (the rest by marginal likelihood, as shipped)
    CQR: the gradient-boosting quantile trees: `cqr_estimators`, `cqr_depth`, `cqr_lr`, `cqr_min_leaf`

PI3NN's two step-4 variants draw the same trials and share the trained networks of each trial.

Objective, lower is better: the mean interval score of the central gamma interval on the validation
rows (Gneiting & Raftery 2007, eq. 43; standardised units),

    S = (U - L) + 2/(1 - gamma) * (L - y)_+ + 2/(1 - gamma) * (y - U)_+,

a proper score for a central interval: it rewards width and coverage together. PI3NN's two step-4
variants share the networks but are scored apart: `pi3nn` with alpha, beta bisected on the training
rows (the paper), `pi3nn_cal` with alpha = beta from the calibration rows. The methods that calibrate
on held-out rows (pi3nn_cal, conformal, cqr) calibrate every trial on the calibration rows and are
scored on the validation rows, so neither early stopping nor the choice of a trial reads the rows
whose coverage guarantee they rely on. The test rows are never read.
"""
from __future__ import annotations

import dataclasses
import json
import time
from pathlib import Path
from typing import Any, Callable

import numpy as np

from orbit.atomic import write_atomically

from .intervals import picp
from .methods import FITTERS, ROW_WISE, Budget, Fitted, SplitData
from .trained import calibrator, outputs

NETWORK_SPACE: dict[str, list] = {"lr": [1e-3, 3e-3, 1e-2], "hidden": [32, 64, 128],
                                  "weight_decay": [0.0, 0.1, 1.0, 5.0], "steps": [1000, 1500, 2000]}
PI3NN_SPACE: dict[str, list] = {**NETWORK_SPACE, "bound_weight_decay": [0.0, 1.0, 5.0]}
SPACES: dict[str, dict[str, list]] = {
    **{m: NETWORK_SPACE for m in ("ensemble", "mc_dropout", "conformal")},
    **{m: PI3NN_SPACE for m in ("pi3nn", "pi3nn_cal")},
    "bnn": {"lr": [1e-3, 3e-3, 1e-2], "hidden": [32, 64, 128], "steps": [1000, 1500, 2000],
            "bnn_prior_sd": [0.1, 0.3, 1.0, 3.0]},
    "gp": {"gp_kernel": ["rbf", "matern52"], "gp_ard": [True, False], "gp_noise_floor": [1e-5, 1e-3, 1e-2, 1e-1]},
    "cqr": {"cqr_estimators": [100, 200, 400], "cqr_depth": [2, 3, 5], "cqr_lr": [0.03, 0.1, 0.3],
            "cqr_min_leaf": [1, 5, 20]},
}
TUNE_ON = ("each", "first")  # each split's own validation rows, or split 0's for every split


def space_size(space: dict[str, list]) -> int:
    return int(np.prod([len(v) for v in space.values()]))


def check_tuning(trials: int, tune_on: str, methods: list[str], spaces: dict[str, dict] = SPACES) -> None:
    """Clear errors before any training: the trial count, where to tune, and that a method can be tuned."""
    if not isinstance(trials, int) or trials < 0:
        raise ValueError(f"--tune-trials must be an integer >= 0 (0: no search), got {trials!r}")
    sizes = {m: space_size(spaces[m]) for m in methods if m in spaces}
    if sizes and trials > min(sizes.values()) + 1:
        smallest = min(sizes, key=sizes.get)
        raise ValueError(f"--tune-trials={trials} exceeds the {sizes[smallest]} settings of {smallest}'s search space "
                         f"plus the shipped one; give at most {sizes[smallest] + 1} (the same number for every method)")
    if "pi3nn" in spaces and "pi3nn_cal" in spaces and spaces["pi3nn"] != spaces["pi3nn_cal"]:
        raise ValueError("pi3nn and pi3nn_cal share their trained networks: give them the same search space")
    if tune_on not in TUNE_ON:
        raise ValueError(f"--tune-on={tune_on!r} must be one of {list(TUNE_ON)}")
    if trials and not sizes:
        raise ValueError(f"--tune-trials={trials} but none of the methods {methods} is searched; the search covers "
                         f"{list(spaces)}")


def candidates(trials: int, space: dict[str, list] = NETWORK_SPACE) -> list[dict[str, Any]]:
    """Trial 0: {} (the shipped setting); then trials - 1 seeded draws without replacement."""
    from sklearn.model_selection import ParameterSampler

    if trials <= 1:
        return [{}][:trials]
    draws = ParameterSampler(space, n_iter=trials - 1, random_state=0)
    return [{}] + [{k: (v.item() if hasattr(v, "item") else v) for k, v in sorted(d.items())} for d in draws]


def trial_budget(budget: Budget, params: dict[str, Any]) -> Budget:
    return dataclasses.replace(budget, **params)


def interval_score(y: np.ndarray, lower: np.ndarray, upper: np.ndarray, gamma: float) -> float:
    """Mean interval score of central gamma intervals (Gneiting & Raftery 2007): lower is better."""
    a = 2.0 / (1.0 - gamma)
    return float(np.mean((upper - lower) + a * np.maximum(lower - y, 0.0) + a * np.maximum(y - upper, 0.0)))


def _test_rows(fitted: Fitted, n_val: int) -> Fitted:
    """The part of a fit on [validation rows; test rows] that predicts the test rows."""
    return Fitted(lambda g: tuple(a[n_val:] for a in fitted.interval(g)), fitted.mean[n_val:], fitted.any_gamma)


def tune(data: SplitData, methods: list[str], budget: Budget, trials: int, seed: int,
         pi3nn_run: Callable[[Budget, int], tuple], cache: Path | None = None,
         spaces: dict[str, dict] = SPACES, log=print) -> dict[str, Any]:
    """Score N trials of every tunable method in `methods` on the validation rows of `data` and pick
    the lowest interval score. `pi3nn_run(budget, trial)` returns the trained (task, model) of a PI3NN
    trial on the same rows. Returns (record, fits): record = {"trials": {method: [...]}, "scores": {method:
    [...]}, "choice": {method: {"trial", "params", "score", "picp"}}, "wall_s": {method: [...]}}, kept in
    `cache` (JSON) and reused when the trials match; fits = {method: (Fitted on data.x_test, fit wall s)}
    of the chosen trial of each `ROW_WISE` baseline scored in this call (a row's interval depends on
    that row alone, so predicting the test inputs beside the validation rows changes no score; the
    test targets are never read), which the benchmark reports instead of refitting the same setting."""
    gamma = budget.confidence
    tuned = [m for m in methods if m in spaces]
    trial_params = {m: candidates(trials, spaces[m]) for m in tuned}
    record: dict[str, Any] = {"trials": trial_params, "seed": seed, "scores": {}, "picp": {}, "wall_s": {}}
    if cache is not None and cache.is_file():  # reuse the scores of every method whose trials are unchanged
        saved = json.loads(cache.read_text())
        if saved.get("seed") == seed:
            same = [m for m in tuned if saved["trials"].get(m) == trial_params[m] and m in saved["scores"]]
            for key in ("scores", "picp", "wall_s"):
                record[key] = {m: saved[key][m] for m in same}
    val = dataclasses.replace(data, x_test=data.x_val)  # the baselines predict the validation rows, never the test
    both = dataclasses.replace(data, x_test=np.concatenate([data.x_val, data.x_test]))
    n_val, fits, best_so_far = len(data.x_val), {}, {}
    for method in tuned:
        if method in record["scores"]:
            continue
        scores, coverage, walls = [], [], []
        for i, params in enumerate(trial_params[method]):
            b = trial_budget(budget, params)
            start = time.perf_counter()
            if method in ("pi3nn", "pi3nn_cal"):
                task, model = pi3nn_run(b, i)
                f, u, l = outputs(model, data.x_val).T
                cal = calibrator(task, model, "train" if method == "pi3nn" else "cal")
                lower, upper = cal.bounds(f, u, l, gamma)
            elif method in ROW_WISE:
                fitted = FITTERS[method](both, b, seed)
                lower, upper = (a[:n_val] for a in fitted.interval(gamma))
            else:
                lower, upper = FITTERS[method](val, b, seed).interval(gamma)
            walls.append(time.perf_counter() - start)  # pi3nn_cal reuses pi3nn's trained runs: ~0
            scores.append(interval_score(data.y_val, lower, upper, gamma))
            if method in ROW_WISE and (i == 0 or scores[-1] < best_so_far[method]):  # argmin's choice: the first best
                best_so_far[method] = scores[-1]
                fits[method] = (_test_rows(fitted, n_val), walls[-1])
            coverage.append(picp(data.y_val, lower, upper))
            log(f"  tune {method:10s} trial {i} {params or 'shipped'}: val interval score {scores[-1]:.4f}, "
                f"val PICP {coverage[-1]:.3f}")
        record["scores"][method], record["picp"][method], record["wall_s"][method] = scores, coverage, walls
        if cache is not None:  # a kill mid-write must not leave a record that fails to load on resume
            write_atomically(cache, lambda tmp: tmp.write_text(json.dumps(record, indent=1)), overwrite=True)
    record["choice"] = {}
    for method in tuned:
        best = int(np.argmin(record["scores"][method]))
        record["choice"][method] = {"trial": best, "params": trial_params[method][best],
                                    "score": record["scores"][method][best], "picp": record["picp"][method][best]}
    return record, fits
