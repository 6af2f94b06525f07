"""What pretraining buys: compare forecast fine-tuning runs (pretrained vs scratch, data fractions).

    python -m orbit.tasks.forecast_compare --run "pretrained 100%=runs/a" --run "scratch 100%=runs/b" ... \
        --out benchmarks/results/finetune_forecast

reads each run's summary.json (written by `orbit finetune`) and writes `<out>.md` (a table of
direct-forecast RMSE/ACC per variable and lead, and a one-number summary per run) and
`<out>_rmse.png` / `<out>_acc.png` (the skill curves of every run on one panel per variable).
"""
from __future__ import annotations

import argparse
import json
import shutil
from pathlib import Path
from typing import Any

import numpy as np

from orbit.run.plots import plot_skill_comparison


def read_summary(run_dir: Path) -> dict[str, Any]:
    path = Path(run_dir) / "summary.json"
    if not path.is_file():
        raise FileNotFoundError(f"{str(path)!r} not found: --run must name a finished `orbit finetune` run directory")
    return json.loads(path.read_text())


def normalized_rmse(skill: dict[str, Any], method: str = "direct") -> float:
    """Mean over (variable, lead) of RMSE / climatology RMSE: < 1 beats climatology on average."""
    ratios = [s[method]["rmse"] / s["climatology"]["rmse"] for by_lead in skill.values() for s in by_lead.values()
              if s[method]["rmse"] is not None]
    return float(np.mean(ratios))


def wins(skill: dict[str, Any], method: str = "direct") -> tuple[int, int]:
    """(pairs where the method's RMSE beats both persistence and climatology, pairs scored)."""
    scored = [s for by_lead in skill.values() for s in by_lead.values() if s[method]["rmse"] is not None]
    won = [s for s in scored if s[method]["rmse"] < min(s["persistence"]["rmse"], s["climatology"]["rmse"])]
    return len(won), len(scored)


def comparison_markdown(summaries: dict[str, dict[str, Any]], command: str | None = None) -> str:
    """Test-year table of every run (with its validation-year score, where choices were made) and
    per-variable direct-forecast RMSE / ACC."""
    runs = {label: summary["skill"] for label, summary in summaries.items()}
    labels = list(runs)
    reference = runs[labels[0]]
    lines = ["| run | validation: mean RMSE / clim. RMSE (direct) | test: mean RMSE / clim. RMSE (direct) | "
             "direct beats both baselines | mean RMSE / clim. RMSE (rollout) | rollout beats both baselines |",
             "|---|---|---|---|---|---|"]
    for label, skill in runs.items():
        direct, rolled = wins(skill, "direct"), wins(skill, "rollout")
        validation = summaries[label].get("validation_skill")
        val = f"{normalized_rmse(validation, 'direct'):.3f}" if validation else "-"
        lines.append(f"| {label} | {val} | {normalized_rmse(skill, 'direct'):.3f} | {direct[0]}/{direct[1]} | "
                     f"{normalized_rmse(skill, 'rollout'):.3f} | {rolled[0]}/{rolled[1]} |")
    for metric in ("rmse", "acc"):
        header = ["variable", "lead", *labels, "persistence", *(["climatology"] if metric == "rmse" else [])]
        lines += ["", f"Direct-forecast {metric.upper()} per variable and lead", "",
                  "| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
        for channel, by_lead in reference.items():
            for lead in sorted(by_lead, key=int):
                values = [runs[label][channel][lead]["direct"][metric] for label in labels]
                values += [by_lead[lead][b][metric] for b in header[2 + len(labels):]]
                lines.append(f"| {channel} | {lead} h | " + " | ".join(
                    "-" if v is None else f"{v:.4g}" for v in values) + " |")
    if command:
        lines = [f"Reproduce: `{command}`", "", *lines]
    return "\n".join(lines) + "\n"


def compare_runs(run_dirs: dict[str, Path], out: Path, command: str | None = None) -> tuple[Path, list[Path]]:
    """Write `<out>.md` and the RMSE / ACC comparison figures; returns their paths.

    The first run is the headline one: its scorecard (direct and rollout against both baselines)
    is appended to the table and its lead-time curves and maps are copied beside it."""
    summaries = {label: read_summary(path) for label, path in run_dirs.items()}
    runs = {label: summary["skill"] for label, summary in summaries.items()}
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    first_label, first_dir = next(iter(run_dirs.items()))
    text = comparison_markdown(summaries, command)
    scorecard = Path(first_dir) / "scorecard.md"
    if scorecard.is_file():
        text += f"\nScorecard of \"{first_label}\" ({first_dir}):\n\n{scorecard.read_text()}"
    md = out.with_suffix(".md")
    md.write_text(text)
    channels = list(next(iter(runs.values())))
    figures = [plot_skill_comparison(runs, channels, out.with_name(f"{out.name}_{metric}.png"), metric=metric)
               for metric in ("rmse", "acc")]
    for figure in sorted(Path(first_dir).glob("skill_*.png")) + sorted(Path(first_dir).glob("forecast_maps_*.png")):
        figures.append(Path(shutil.copy(figure, out.with_name(f"{out.name}_{figure.name}"))))
    return md, figures


def _labelled_run(text: str) -> tuple[str, Path]:
    if "=" not in text:
        raise argparse.ArgumentTypeError(f"--run must look like LABEL=RUN_DIR, got {text!r}")
    label, path = text.split("=", 1)
    return label, Path(path)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--run", type=_labelled_run, action="append", required=True, help="LABEL=RUN_DIR")
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/finetune_forecast"))
    parser.add_argument("--command", default=None, help="the command line that produced the runs, for the table")
    args = parser.parse_args(argv)
    md, figures = compare_runs(dict(args.run), args.out, args.command)
    print(md.read_text())
    print("wrote", md, *figures)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
