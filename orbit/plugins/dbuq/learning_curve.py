"""Emulator learning curves: held-out R^2 and relative RMSE against the number of training runs, for the
output-reduced (PCA) emulator and the direct one, each run an `orbit train` of task "land_emulator" (the one
trainer) from the same config with `data.n_train` and `model.reduce` overridden. Validation runs score
every size; the test runs are scored too and reported once, in the table. `resample`: each seed also trains on
its own random subset of the training runs (`data.subset_seed`), so the spread over seeds includes which runs
were simulated, not only the network's initialization."""
from __future__ import annotations

import json
import statistics
from pathlib import Path

from orbit.config import load_config
from orbit.run.runner import run_training


def learning_curve(config: str | Path, sizes: list[int], out_dir: str | Path, overrides: list[str] | None = None,
                   reductions: tuple[str, ...] = ("pca", "none"), seeds: int = 1, resample: bool = False) -> list[dict]:
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    rows = []
    for reduce in reductions:
        for n in sizes:
            for seed in range(seeds):
                cfg = load_config(config, [*(overrides or []), f"data.n_train={n}", f"model.reduce={reduce}",
                                           f"train.seed={seed}", *([f"data.subset_seed={seed}"] if resample else [])])
                summary = run_training(cfg, run_dir=out_dir / f"{reduce}_n{n}_s{seed}")
                sc = summary["scalars"]
                rows.append({"reduce": reduce, "n_train": n, "seed": seed, "components": int(sc["components"]),
                             **{k: sc[k] for k in ("val_r2", "val_rel_rmse", "test_r2", "test_rel_rmse")}})
    (out_dir / "learning_curve.json").write_text(json.dumps(rows, indent=1))
    (out_dir / "learning_curve.md").write_text(markdown(rows) + "\n")
    plot(rows, out_dir / "learning_curve.png")
    return rows


def _values(rows: list[dict], reduce: str, n: int, key: str) -> list[float]:
    return [r[key] for r in rows if r["reduce"] == reduce and r["n_train"] == n]


def _mean(rows: list[dict], reduce: str, n: int, key: str) -> float:
    values = _values(rows, reduce, n, key)
    return sum(values) / len(values)


def _cell(rows: list[dict], reduce: str, n: int, part: str) -> str:
    """'R2 / rel. RMSE' of the mean over seeds, with the std over seeds where there are several."""
    out = []
    for key in (f"{part}_r2", f"{part}_rel_rmse"):
        values = _values(rows, reduce, n, key)
        spread = f" ± {statistics.stdev(values):.3f}" if len(values) > 1 else ""
        out.append(f"{_mean(rows, reduce, n, key):.3f}{spread}")
    return " / ".join(out)


def markdown(rows: list[dict]) -> str:
    sizes = sorted({r["n_train"] for r in rows})
    reductions = list(dict.fromkeys(r["reduce"] for r in rows))
    lines = ["| training runs | " + " | ".join(f"{r} val R2 / rel. RMSE" for r in reductions) + " | " +
             " | ".join(f"{r} test R2 / rel. RMSE" for r in reductions) + " |",
             "|---|" + "---|" * (2 * len(reductions))]
    for n in sizes:
        cells = [_cell(rows, r, n, part) for part in ("val", "test") for r in reductions]
        lines.append(f"| {n} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def plot(rows: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    sizes = sorted({r["n_train"] for r in rows})
    fig, axes = plt.subplots(1, 2, figsize=(8, 3.2))
    for reduce in dict.fromkeys(r["reduce"] for r in rows):
        for ax, key in zip(axes, ("val_r2", "val_rel_rmse")):
            ax.plot(sizes, [_mean(rows, reduce, n, key) for n in sizes], "o-", label=reduce)
    for ax, label in zip(axes, ("validation R2", "validation relative RMSE")):
        ax.set_xscale("log")
        ax.set_xlabel("training runs")
        ax.set_ylabel(label)
        ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)
