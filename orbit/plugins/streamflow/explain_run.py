"""`orbit explain --run-dir RUN`: explanations of a trained streamflow run's test-period forecasts
(explain.py), written to `<out>/explanations.json` and `<out>/attribution_<method>.png` (lag x driver
heatmaps of mean |attribution|).

Samples: `samples` (basin, issue day) pairs drawn evenly at random from the test split (seeded);
SHAP's background: as many training samples. On synthetic basins, where the truth is known, the
checks of `truth_checks` are added: the never-used `noise` driver must rank last, and temperature
must matter more for forecasts of days with snowmelt than for days without.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from orbit.run.evaluate import find_checkpoint, load_trained, read_run_config
from orbit.train.logging import write_json

from .explain import Attribution, attention, driver_importance, integrated_gradients, lag_driver_map, shap_values

METHODS = ("ig", "shap", "attention")


def truth_checks(attr: Attribution, task, b: np.ndarray, t0: np.ndarray, lead: int) -> dict[str, Any]:
    """Synthetic basins: rank of the `noise` driver and the temperature share of attribution on days
    with and without true snowmelt (melt > 1 mm on the target day)."""
    names = task.data.driver_names
    importance = driver_importance(attr, names)
    ranking = sorted(names, key=lambda n: -importance[n])
    per_driver = np.abs(attr.values["x_past"]).sum(1) + np.abs(attr.values["x_future"]).sum(1)  # (B, D)
    temp = per_driver[:, [names.index("tmax"), names.index("tmin")]].sum(1) / per_driver.sum(1).clip(1e-12)
    melt = task.data.truth["melt"][b, t0 + lead + 1] > 1.0
    return {"driver_ranking": ranking, "noise_ranks_last": ranking[-1] == "noise",
            "temperature_share_melt_days": float(temp[melt].mean()) if melt.any() else None,
            "temperature_share_other_days": float(temp[~melt].mean()) if (~melt).any() else None,
            "melt_days": int(melt.sum()), "other_days": int((~melt).sum())}


def _heatmap(matrix: np.ndarray, names: list[str], seq_len: int, title: str, path: Path,
             label: str = "mean |attribution|") -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 3))
    lags = np.arange(-seq_len + 1, matrix.shape[0] - seq_len + 1)
    image = ax.imshow(matrix.T, aspect="auto", cmap="viridis",
                      extent=(lags[0] - 0.5, lags[-1] + 0.5, len(names) - 0.5, -0.5))
    ax.set(yticks=range(len(names)), yticklabels=names, xlabel="day relative to issue day (>0: forecast days)",
           title=title)
    fig.colorbar(image, ax=ax, label=label)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def run_explain(run_dir: str | Path, methods: list[str] | None = None, samples: int = 256, lead: int = 1,
                out_dir: str | Path | None = None, ig_steps: int = 64, seed: int = 0) -> dict[str, Any]:
    methods = list(methods or METHODS)
    unknown = [m for m in methods if m not in METHODS]
    if unknown:
        raise ValueError(f"--methods {unknown} not known; valid: {list(METHODS)}")
    run_dir = Path(run_dir)
    cfg = read_run_config(run_dir, "streamflow")
    if not 1 <= lead <= cfg.data.horizon:
        raise ValueError(f"--lead {lead} is outside 1..{cfg.data.horizon} (the run's horizon)")
    if samples < 1:
        raise ValueError(f"--samples must be >= 1, got {samples}")
    checkpoint = find_checkpoint(run_dir, None)
    task, model = load_trained(cfg, checkpoint)
    if cfg.options.intervals:  # explain the mean network of a PI3NN run
        model = model.mean
    rng = np.random.default_rng([seed, 3])
    b, t0 = task.windows.samples(task.rows["test"], *task.days["test"], require_target=True)
    pick = np.sort(rng.choice(len(b), min(samples, len(b)), replace=False))
    inputs = task.windows.batch(b[pick], t0[pick]).inputs()
    tb, tt = task.train_samples
    back = rng.choice(len(tb), min(samples, len(tb)), replace=False)
    background = task.windows.batch(tb[back], tt[back]).inputs()
    out_dir = Path(out_dir) if out_dir is not None else run_dir / "explain"
    out_dir.mkdir(parents=True, exist_ok=True)
    names = task.data.driver_names
    result: dict[str, Any] = {"checkpoint": str(checkpoint), "family": cfg.model.family, "lead": lead,
                              "samples": int(len(pick)), "drivers": names}
    attributions = {}
    if "ig" in methods:
        attributions["ig"] = integrated_gradients(model, inputs, lead - 1, steps=ig_steps)
        a = attributions["ig"]
        scale = max(float(np.abs(a.delta).mean()), 1e-12)
        result["ig_completeness"] = {"mean_abs_gap": float(a.gap.mean()), "median_abs_gap": float(np.median(a.gap)),
                                     "mean_abs_output_change": scale, "relative_gap": float(a.gap.mean()) / scale,
                                     "share_gap_above_5pct": float(np.mean(a.gap > 0.05 * scale))}
    if "shap" in methods:
        attributions["shap"] = shap_values(model, inputs, background, lead - 1, seed=seed)
    for name, attr in attributions.items():
        result[f"{name}_importance"] = driver_importance(attr, names)
        _heatmap(lag_driver_map(attr), names, cfg.data.seq_len, f"{cfg.model.family}: {name}, lead {lead}",
                 out_dir / f"attribution_{name}.png")
        if "melt" in task.data.truth:
            result[f"{name}_truth_checks"] = truth_checks(attr, task, b[pick], t0[pick], lead - 1)
    if "attention" in methods:
        maps = attention(model, inputs)
        if "beta" in maps:
            result["imv_variable_importance"] = dict(zip([*names, "flow"], maps["beta"].astype(float).tolist()))
            _heatmap(maps["alpha"].T, [*names, "flow"], cfg.data.seq_len, "IMV-LSTM temporal attention",
                     out_dir / "attention_imv.png", label="mean attention weight α")
        if "cross" in maps:
            result["tst_cross_attention_lead1_peak_lag"] = int(np.argmax(maps["cross"][0]) - cfg.data.seq_len + 1)
            np.save(out_dir / "attention_tst.npy", maps["cross"])
    write_json(out_dir / "explanations.json", result)
    return result
