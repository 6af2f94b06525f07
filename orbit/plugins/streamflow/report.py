"""The streamflow run report: `streamflow_report.md` (median NSE / KGE per forecaster and split, per
lead; the calibrated conceptual baseline's settings; interval coverage per year),
`streamflow_nse_cdf.png` (CDF of the per-basin test NSE),
`streamflow_hydrograph.png` (the first scored basin's test hydrograph, with the interval if any)
and, for forecasts, `streamflow_nse_lead.png` (median test NSE against lead day)."""
from __future__ import annotations

from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402


def _fmt(v) -> str:
    return "–" if v is None else f"{v:.3f}"


def markdown(summary: dict[str, Any], family: str, horizon: int) -> str:
    proto = summary.get("protocol", {})
    scored = [len(summary["per_basin"][s][family]) for s in ("val", "test")]
    lines = [f"Streamflow `{family}`, step {summary.get('step')}, split {proto.get('split')}, periods "
             f"{proto.get('periods')}; median over the scored basins (val/test: {scored[0]}/{scored[1]})"]
    lines += [f"Phase {phase!r}: weights of step {best['step']}, chosen on validation ({best['metric']} = "
              f"{best['value']:.4g}, train.select_best)." for phase, best in summary.get("selected", {}).items()]
    lines.append("")
    leads = sorted({0, horizon - 1})
    head = " | ".join(f"{s} {m} lead {h + 1}" for s in ("val", "test") for m in ("NSE", "KGE") for h in leads)
    lines += [f"| forecaster | {head} |", "|---" * (1 + 4 * len(leads)) + "|"]
    for name in summary["median"]["test"]:
        cells = [_fmt(summary["median"][s][name][m][h]) for s in ("val", "test") for m in ("nse", "kge") for h in leads]
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    if "conceptual" in summary:
        c = summary["conceptual"]
        lines += ["", f"conceptual: the HBV-like model of the synthetic generator calibrated per basin on the training "
                      f"period ({c['optimiser']}, {c['generations']} generations x popsize {c['popsize']}, maximising "
                      f"{c['objective'].upper()} after a {c['spinup_days']}-day spin-up; median training "
                      f"{c['objective'].upper()} {c['train_objective_median']:.3f}; {c['calibrated_basins']} basins "
                      f"calibrated in {c['calibration_seconds']} s); scored basins use: {c['regionalisation']}. On "
                      f"synthetic basins it is the generator's own structure, close to an upper bound, not a "
                      f"competitor; on CAMELS basins it is a real baseline."]
    if "intervals" in summary:
        iv = summary["intervals"]
        lines += ["", f"PI3NN intervals at confidence {iv['confidence']} (calibrated on {iv['calibrated_on']}), "
                      f"lead 1:",
                  "", "| period | PICP | mean width (mm/day) | RMSE (mm/day) |", "|---|---|---|---|"]
        for split in ("val", "test"):
            for row in iv[split]["by_year"]:
                lines.append(f"| {split} {row['year']} | {row['picp']:.3f} | {row['width']:.3f} | {row['rmse']:.3f} |")
        lines.append(f"\nSpearman correlation over test basins of mean width with RMSE: "
                     f"{_fmt(iv['test']['spearman_width_rmse_over_basins'])}; over test years: "
                     f"{_fmt(iv['test'].get('spearman_width_rmse_over_years'))}")
    return "\n".join(lines)


def write_report(summary: dict[str, Any], run_dir: Path, family: str, horizon: int) -> None:
    if "median" not in summary:
        return
    text = markdown(summary, family, horizon)
    print(text)
    Path(run_dir, "streamflow_report.md").write_text(text + "\n")
    fig, ax = plt.subplots(figsize=(5, 3.5))
    for name, table in summary["per_basin"]["test"].items():
        nse = np.sort([v["nse"][0] for v in table.values() if v["nse"][0] is not None])
        if len(nse):
            ax.step(np.clip(nse, -1, 1), np.arange(1, len(nse) + 1) / len(nse), where="post", label=name)
    ax.set(xlabel="test NSE (lead 1, clipped at -1)", ylabel="fraction of basins", xlim=(-1, 1))
    ax.legend()
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(Path(run_dir, "streamflow_nse_cdf.png"), dpi=110)
    plt.close(fig)
    if horizon > 1:
        fig, ax = plt.subplots(figsize=(5, 3.5))
        for name, metrics in summary["median"]["test"].items():
            ax.plot(np.arange(1, horizon + 1), [np.nan if v is None else v for v in metrics["nse"]], marker="o",
                    label=name)
        ax.set(xlabel="lead (days)", ylabel="median test NSE")
        ax.legend()
        ax.grid(alpha=0.3)
        fig.tight_layout()
        fig.savefig(Path(run_dir, "streamflow_nse_lead.png"), dpi=110)
        plt.close(fig)


def plot_hydrograph(p: dict[str, np.ndarray], dates: np.ndarray, basin: str, row: int, path: Path) -> None:
    """Observed and forecast flow (lead 1) of one basin over a test period, with the interval if any."""
    days = dates[p["t0"] + 1]
    fig, ax = plt.subplots(figsize=(9, 3.2))
    if "lower" in p:
        ax.fill_between(days, p["lower"][row, :, 0], p["upper"][row, :, 0], color="tab:blue", alpha=0.25,
                        label="interval")
    ax.plot(days, p["obs"][row, :, 0], color="black", lw=0.8, label="observed")
    ax.plot(days, p["pred"][row, :, 0], color="tab:blue", lw=0.8, label="forecast (lead 1)")
    ax.set(ylabel="flow (mm/day)", title=f"basin {basin}, test period")
    ax.legend(loc="upper right")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
