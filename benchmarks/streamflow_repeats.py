"""Repeats of the streamflow benchmark side by side: the same cases of benchmarks/streamflow.py run with
another training seed (--seed) or another ungauged fold (--fold) give one *_benchmark.json each; this
writes, per case, every repeat's median test NSE / KGE (lead 1; forecasts also lead 30), validation NSE,
the process baseline's test NSE where every repeat has it, the chosen step, and their mean (seeds) or
median (folds). Run from the repository root:

    python benchmarks/streamflow_repeats.py --stat mean --out benchmarks/results/streamflow_seeds.md \\
        benchmarks/results/streamflow_benchmark.json benchmarks/results/streamflow_seed1_benchmark.json
    python benchmarks/streamflow_repeats.py --stat median --cases 3 4 --out benchmarks/results/streamflow_folds.md \\
        benchmarks/results/streamflow_benchmark.json benchmarks/results/streamflow_fold{1,2,3,4}_benchmark.json
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np

REFERENCES = ("climatology", "persistence", "conceptual")


def _scores(entry: dict) -> dict[str, float | None]:
    """Median scores of the case's model (not the references) in one repeat."""
    test, val = entry["median"]["test"], entry["median"]["val"]
    key = next(k for k in test if k not in REFERENCES)
    nse = test[key]["nse"]
    return {"test NSE": nse[0], "test KGE": test[key]["kge"][0], "test NSE lead 30": nse[-1] if len(nse) > 1 else None,
            "val NSE": val[key]["nse"][0], "conceptual test NSE": test.get("conceptual", {}).get("nse", [None])[0]}


def table(files: list[Path], stat: str, cases: list[int] | None = None) -> str:
    runs = [{r["index"]: r for r in json.loads(f.read_text())["results"]} for f in files]
    shared = [i for i in runs[0] if all(i in r for r in runs[1:]) and (cases is None or i in cases)]
    reduce = {"mean": np.mean, "median": np.median}[stat]
    names = [k for k in _scores(runs[0][shared[0]])  # columns some case has in every repeat
             if any(all(_scores(r[i])[k] is not None for r in runs) for i in shared)]
    lines = [f"| model | protocol | {' | '.join(f'{n} (each; {stat})' for n in names)} | chosen steps |",
             "|---|---|" + "---|" * (len(names) + 1)]
    for i in shared:
        scores = [_scores(r[i]) for r in runs]
        cells = []
        for name in names:
            values = [s[name] for s in scores]
            if any(v is None for v in values):
                cells.append("–")
                continue
            cells.append(" / ".join(f"{v:.3f}" for v in values) + f" (**{reduce(values):.3f}**)")
        steps = " / ".join(" ".join(str(v["step"]) for v in (r[i].get("selected") or {}).values()) or "last"
                           for r in runs)
        protocol = runs[0][i]["protocol"].replace(" (fold 0 of 5)", "") if stat == "median" else runs[0][i]["protocol"]
        lines.append(f"| {runs[0][i]['label']} | {protocol} | {' | '.join(cells)} | {steps} |")
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("files", type=Path, nargs="+", help="*_benchmark.json of each repeat, in order")
    parser.add_argument("--stat", choices=("mean", "median"), default="mean")
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--cases", type=int, nargs="+", default=None, help="only these case indices")
    args = parser.parse_args()
    text = (f"# Streamflow benchmark repeats ({args.stat} over {len(args.files)})\n\n"
            f"`python benchmarks/streamflow_repeats.py --stat {args.stat} "
            f"{'--cases ' + ' '.join(map(str, args.cases)) + ' ' if args.cases else ''}--out {args.out} "
            f"{' '.join(map(str, args.files))}`; each file is one run of benchmarks/streamflow.py (its own .md "
            f"holds the command and budget). Median over scored basins per repeat; repeats separated by '/'.\n\n"
            f"{table(args.files, args.stat, args.cases)}\n")
    args.out.write_text(text)
    print(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
