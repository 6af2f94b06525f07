"""RS-LSTM (grid-encoder path) against the Geo-LSTM and LSTM on the same toy-Earth basins and splits
(configs/plugins/streamflow/rs_lstm.yaml: 60 basins on toy-Earth land cells, 1990-1999; temporal split
and ungauged fold 0 of 5); every model gets the same budget, nothing is tuned. Runs `orbit train` for
each seed x protocol x family (skipping runs whose summary.json exists) and writes
benchmarks/results/streamflow_rs.md. Run from the repository root:

    OMP_NUM_THREADS=1 python benchmarks/streamflow_rs.py --seeds 0 1     # ~2.5 min a run on one busy core
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np

from orbit.cli import main

CONFIG = "configs/plugins/streamflow/rs_lstm.yaml"
FAMILIES = ("rs_lstm", "geo_lstm", "lstm")
PROTOCOLS = {"temporal": [], "ungauged (fold 0 of 5)": ["data.split=basins", "data.fold=0"]}


def run_dir(root: Path, seed: int, protocol: str, family: str) -> Path:
    split = "temporal" if protocol == "temporal" else "basins"
    return root / (f"{split}-{family}" if seed == 0 else f"seed{seed}-{split}-{family}")


def train(root: Path, seed: int, protocol: str, family: str) -> dict:
    run = run_dir(root, seed, protocol, family)
    if not (run / "summary.json").is_file():
        overrides = [f"model.family={family}", *PROTOCOLS[protocol],
                     *([] if family == "rs_lstm" else ["data.patch=0"]), *([f"train.seed={seed}"] if seed else [])]
        if main(["train", "--config", CONFIG, "--run-dir", str(run), *overrides]) != 0:
            raise SystemExit(f"run {run} failed")
    return json.loads((run / "summary.json").read_text())


def table(root: Path, seeds: list[int]) -> str:
    rows = ["| model | protocol | test NSE (per seed) | test KGE (per seed) | val NSE (per seed) "
            "| climatology test NSE | chosen step (per seed) |",
            "|---|---|---|---|---|---|---|"]
    for protocol in PROTOCOLS:
        for family in FAMILIES:
            summaries = [train(root, seed, protocol, family) for seed in seeds]
            s = [x["scalars"] for x in summaries]
            chosen = " / ".join(str(x["selected"]["mean"]["step"]) if "selected" in x else "last"
                                for x in summaries)

            def fmt(key: str) -> str:
                values = [x[key] for x in s]
                return " / ".join(f"{v:.3f}" for v in values) + (f" (mean {np.mean(values):.3f})" if len(s) > 1 else "")
            rows.append(f"| {family} | {protocol} | {fmt('test_nse')} | {fmt('test_kge')} | {fmt('val_nse')} | "
                        f"{s[0]['climatology_test_nse']:.3f} | {chosen} |")
    return "\n".join(rows)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1])
    parser.add_argument("--runs", default="runs/streamflow-rs")
    parser.add_argument("--out", default="benchmarks/results/streamflow_rs.md")
    args = parser.parse_args()
    text = (f"# RS-LSTM vs Geo-LSTM vs LSTM on toy-Earth basins\n\n`{CONFIG}`, seeds {args.seeds} (train.seed; "
            f"same basins), median over scored basins; each run keeps its state with the lowest validation "
            f"loss (the config's train.select_best; 'last': a run from before model selection).\n\n"
            f"{table(Path(args.runs), args.seeds)}\n")
    Path(args.out).write_text(text)
    print(text)
