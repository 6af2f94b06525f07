"""Merge the `uci_table.json` of one or more `orbit uq benchmark --suite uci` runs into one Markdown table,
in the suite's format: the sets of all runs, and per set the methods of all runs (a later run's method
replaces an earlier run's). E.g. the baselines of a full run with PI3NN re-run alone (`--methods pi3nn
pi3nn_cal`) on the same splits and seeds, or with a `--tune-trials` run (its `<method>_tuned` columns
go beside the shipped settings); runs of different splits or seeds are refused.

    python benchmarks/pi3nn_tables.py RUN_A RUN_B > table.md
    python benchmarks/pi3nn_tables.py RUN_A RUN_B --plots DIR    # also DIR/pi3nn_uci_calibration_<set>.png
    python benchmarks/pi3nn_tables.py RUN_A RUN_B --json FILE    # also the merged per-set summaries
    python benchmarks/pi3nn_tables.py RUN_A --grid FILE.png        # also every set's calibration in one figure
"""
import json
import sys
from pathlib import Path

from orbit.plugins.pi3nn.benchmark import UCI_SETS, draw_calibration, format_suite, plot_calibration
from orbit.plugins.pi3nn.methods import METHODS


def _sets(run: Path) -> dict:
    """A suite's `uci_table.json`, or, while it is still running, the sets it has finished."""
    if (run / "uci_table.json").is_file():
        return json.loads((run / "uci_table.json").read_text())
    return {name: json.loads((run / name / "summary.json").read_text()) for name in UCI_SETS
            if (run / name / "summary.json").is_file()}


def merge(run_dirs: list[str]) -> dict:
    results: dict = {}
    for run in run_dirs:
        for name, summary in _sets(Path(run)).items():
            if name not in results:
                results[name] = summary
                continue
            seen = results[name]
            if (seen["splits"], seen["seeds"], seen["confidence"]) != (summary["splits"], summary["seeds"],
                                                                       summary["confidence"]):
                raise ValueError(f"{name}: {run} has other splits / seeds / confidence than the runs before it")
            seen["methods"] = {**seen["methods"], **summary["methods"]}
            if "tuning" in summary:
                seen["tuning"] = summary["tuning"]
    order = [name for m in METHODS for name in (m, f"{m}_tuned")]  # a tuned method beside its shipped setting
    for summary in results.values():
        summary["methods"] = {m: summary["methods"][m] for m in order if m in summary["methods"]}
    return {name: results[name] for name in UCI_SETS if name in results}


def plot_grid(results: dict, path: Path) -> None:
    """Every set's calibration curves (mean test PICP against gamma, every method) in one figure."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    cols = 3
    rows = -(-len(results) // cols)
    fig, axes = plt.subplots(rows, cols, figsize=(4 * cols, 3.8 * rows + 0.8), squeeze=False)
    for ax, (name, summary) in zip(axes.flat, results.items()):
        draw_calibration(ax, summary, f"{name} ({summary['splits']} splits)")
    for ax in axes.flat[len(results):]:
        ax.axis("off")
    handles, labels = axes.flat[0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="lower center", ncol=5, fontsize=8)
    fig.tight_layout(rect=(0, 0.8 / (3.8 * rows + 0.8) + 0.03, 1, 1))
    fig.savefig(path, dpi=110)
    plt.close(fig)


def _option(args: list[str], flag: str) -> tuple[Path | None, list[str]]:
    if flag not in args:
        return None, args
    at = args.index(flag)
    return Path(args[at + 1]), args[:at] + args[at + 2:]


def main(args: list[str]) -> str:
    plots, args = _option(args, "--plots")
    out_json, args = _option(args, "--json")
    grid, args = _option(args, "--grid")
    results = merge(args)
    if grid is not None:
        plot_grid(results, grid)
    if out_json is not None:
        out_json.write_text(json.dumps(results, indent=1))
    if plots is not None:
        for name, summary in results.items():  # calibration curve per method, mean over the splits
            plot_calibration(summary, plots / f"pi3nn_uci_calibration_{name}.png", title=name)
    return format_suite(results)


if __name__ == "__main__":
    print(main(sys.argv[1:]), end="")
