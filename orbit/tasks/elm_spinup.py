"""ELM spin-up emulation: predict a land cell's spun-up C/N equilibrium from its forcing, site and maps.

Verification: R^2 per output on held-out spatial blocks (physical units), against a ridge regression on
the same inputs. Validation (in `report`): held-out cells are spun up with the toy land model from a cold
start (plain and ELM-style AD) and from the emulated state; the table gives the |NEE| drift of the first
years and the years each start needs until |NEE| < `options.drift_tol` holds for `options.drift_window` years.
"""
from __future__ import annotations

import json
import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import xarray as xr
from torch import nn

from orbit.config import RunConfig
from orbit.metrics.emulator import r2_score
from orbit.synthetic import land_model as lm
from orbit.data.elm_dataset import FORCING_VARS, ElmArrays, open_dataset
from orbit.data.sampler import ShardedSampler
from orbit.models.elm_emulator import ElmEmulatorConfig, ElmSpinupEmulator
from orbit.models.registry import get_config
from orbit.registry import register_task
from orbit.tasks.sections import WEATHER_SECTIONS
from orbit.train.task import Task
from orbit.run.plots import plot_loss_curve, plt
from orbit.train.finetune import prepare_model

SCATTER_OUTPUTS = ("totecosysc", "soil3c", "stemc", "sminn", "gpp", "cwdn")


@dataclass
class ElmSpinupOptions:
    """`options:` of an ELM spin-up emulator run."""

    store: str = "data/elm/elm.zarr"  # written by `orbit data elm`
    patch: int = 5  # neighbourhood (cells) of the spatial encoder, odd
    static_tokens: int = 4
    validation_cells: int = 256  # held-out cells spun up in the validation (0: skip it)
    drift_tol: float = 1.0  # gC m-2 yr-1, ELM-like spin-up criterion on |annual NEE|
    drift_window: int = 10  # years the criterion must hold
    max_spinup_years: int = 6000


def ridge_fit_predict(x_train: np.ndarray, y_train: np.ndarray, x: np.ndarray, alpha: float = 1e-2) -> np.ndarray:
    """Baseline: ridge regression with intercept, x (N, P), y (N, O) -> predictions (M, O) for `x`."""
    add = lambda a: np.concatenate([a, np.ones((len(a), 1))], axis=1)  # noqa: E731
    xt = add(x_train)
    gram = xt.T @ xt + alpha * len(xt) * np.eye(xt.shape[1])
    return add(x) @ np.linalg.solve(gram, xt.T @ y_train)


class CellSampler:
    """Endless, resumable batches of training-cell ids: `ShardedSampler` positions mapped to `cells`.

    No tail is dropped (the last global batch of an epoch wraps around), so every training cell is
    seen each epoch however few there are. State format: `orbit.data.sampler`.
    """

    def __init__(self, cells: np.ndarray, batch_size: int, seed: int, rank: int, world_size: int):
        self.cells = cells
        self.sampler = ShardedSampler(len(cells), batch_size, seed=seed, rank=rank, world_size=world_size,
                                      drop_last=False)

    def __iter__(self) -> Iterator[np.ndarray]:
        return (self.cells[indices] for indices in self.sampler)

    def state_dict(self) -> dict[str, int]:
        return self.sampler.state_dict()

    def load_state_dict(self, state: Mapping[str, int]) -> None:
        self.sampler.load_state_dict(state)


@dataclass
class ElmBatch:
    """forcing (B, 12, 3), statics (B, S), patch (B, C, K, K), target (B, O) normalized; index (B,) cells."""

    forcing: torch.Tensor
    statics: torch.Tensor
    patch: torch.Tensor
    target: torch.Tensor
    index: np.ndarray


@register_task("elm_spinup", options=ElmSpinupOptions, **WEATHER_SECTIONS)
class ElmSpinupTask(Task):
    """Train on the store's training cells, score the held-out blocks."""

    def __init__(self, cfg: RunConfig):
        self.cfg = cfg
        opts = cfg.options
        if opts.patch < 1 or opts.patch % 2 == 0:
            raise ValueError(f"options.patch must be a positive odd number of cells, got {opts.patch}")
        if opts.drift_tol <= 0 or opts.drift_window < 1 or opts.max_spinup_years < 1 or opts.validation_cells < 0:
            raise ValueError(f"need options.drift_tol > 0, drift_window >= 1, max_spinup_years >= 1, "
                             f"validation_cells >= 0; got {opts.drift_tol}, {opts.drift_window}, "
                             f"{opts.max_spinup_years}, {opts.validation_cells}")
        self.data = ElmArrays(open_dataset(opts.store), opts.patch, cfg.finetune.data_fraction, cfg.train.seed)
        if len(self.data.test) == 0:
            raise ValueError(f"store {opts.store!r} holds no held-out cells (split == 1); regenerate it with "
                             f"`orbit data elm --holdout 0.2`")
        self._test_pred: np.ndarray | None = None

    # ------------------------------------------------------------------ model and training
    def build_model(self) -> nn.Module:
        base = get_config(self.cfg.model.preset, **self.cfg.model.overrides())
        d = self.data
        config = ElmEmulatorConfig(
            embed_dim=base.embed_dim, depth=base.depth, num_heads=base.num_heads, mlp_ratio=base.mlp_ratio,
            qk_norm=base.qk_norm, drop_path=base.drop_path, n_months=d.forcing.shape[1],
            n_forcing=d.forcing.shape[2], n_static=d.statics.shape[1], n_map=d.patch.shape[1],
            patch=self.cfg.options.patch, n_outputs=d.target.shape[1], static_tokens=self.cfg.options.static_tokens)
        return prepare_model(ElmSpinupEmulator(config), self.cfg.finetune)

    def batch(self, index: np.ndarray) -> ElmBatch:
        d = self.data
        return ElmBatch(*(torch.from_numpy(a[index]) for a in (d.forcing, d.statics, d.patch, d.target)), index)

    def train_batches(self, dp_rank: int, dp_size: int):
        sampler = CellSampler(self.data.train, self.cfg.data.batch_size, self.cfg.train.seed, dp_rank, dp_size)
        return _Batches(sampler, self.batch)

    def model_inputs(self, batch: ElmBatch) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        return batch.forcing, batch.statics, batch.patch

    def loss(self, output: torch.Tensor, batch: ElmBatch) -> torch.Tensor:
        return nn.functional.mse_loss(output.float(), batch.target)

    # ------------------------------------------------------------------ evaluation
    def predict(self, engine, cells: np.ndarray) -> np.ndarray:
        """Physical-unit predictions (N, len(lm.OUTPUTS)) for `cells`: the network's learned outputs, plus
        those that follow from them at equilibrium (nloss = ndep + nfix, `lm.derive_outputs`)."""
        device = next(iter(engine.parameters())).device
        size = self.cfg.eval.batch_size
        out = []
        for start in range(0, len(cells), size):
            inputs = self.model_inputs(self.batch(cells[start:start + size]))
            out.append(engine.forward(tuple(x.to(device) for x in inputs)).float().cpu().numpy())
        return self.data.outputs(np.concatenate(out).astype(np.float64), cells)

    def baseline(self) -> np.ndarray:
        """Ridge regression on the flattened inputs, fitted in training space to the same learned outputs
        (derived ones follow as for the emulator); (N_test, len(lm.OUTPUTS)) physical."""
        d = self.data
        flat = np.concatenate([d.forcing.reshape(len(d), -1), d.statics, d.patch.reshape(len(d), -1)], axis=1)
        z = ridge_fit_predict(flat[d.train], d.target[d.train], flat[d.test])
        return d.outputs(z, d.test)

    def evaluate(self, engine, step: int) -> dict[str, Any]:
        d = self.data
        pred = self.predict(engine, d.test)
        self._test_pred = pred
        truth = d.truth[d.test]
        r2 = dict(zip(lm.OUTPUTS, r2_score(pred, truth).tolist()))
        base = dict(zip(lm.OUTPUTS, r2_score(self.baseline(), truth).tolist()))
        fit = d.train[np.linspace(0, len(d.train) - 1, min(len(d.train), len(d.test))).round().astype(int)]
        train_r2 = r2_score(self.predict(engine, fit), d.truth[fit])  # underfitting vs generalization gap
        scalars = {"r2_min": float(np.nanmin(list(r2.values()))), "r2_median": float(np.nanmedian(list(r2.values()))),
                   "train_r2_min": float(np.nanmin(train_r2)), "train_r2_median": float(np.nanmedian(train_r2)),
                   "baseline_r2_min": float(np.nanmin(list(base.values()))),
                   "baseline_r2_median": float(np.nanmedian(list(base.values())))}
        return {"scalars": scalars, "r2": r2, "baseline_r2": base, "test_cells": int(len(d.test)),
                "train_cells": int(len(d.train))}

    def report(self, summary: dict[str, Any], run_dir: Path) -> None:
        run_dir = Path(run_dir)
        table = r2_table(summary["r2"], summary["baseline_r2"])
        print(table)
        text = (f"R^2 per output on {summary['test_cells']} held-out cells ({summary['train_cells']} training cells), "
                f"physical units, step {summary.get('step')}\n\n{table}\n")
        if self._test_pred is not None:
            plot_scatter(self._test_pred, self.data.truth[self.data.test], run_dir / "elm_scatter.png")
            if self.cfg.options.validation_cells:
                validation = self.validate_spinup(self._test_pred)
                (run_dir / "spinup_validation.json").write_text(json.dumps(validation["summary"], indent=2))
                plot_drift(validation["curves"], self.cfg.options.drift_tol, run_dir / "elm_drift.png")
                vtable = spinup_table(validation["summary"])
                print(vtable)
                text += f"\n{vtable}\n"
        (run_dir / "elm_report.md").write_text(text)
        plot_loss_curve(run_dir)

    def validate_spinup(self, test_pred: np.ndarray) -> dict[str, Any]:
        """Spin up `validation_cells` held-out cells from the cold start (plain, AD) and the emulated state."""
        opts, d = self.cfg.options, self.data
        pick = np.linspace(0, len(d.test) - 1, min(opts.validation_cells, len(d.test))).round().astype(int)
        cells = d.test[np.unique(pick)]
        pred = test_pred[np.unique(pick)]
        ds = d.dataset.isel(cell=cells)
        forcing = lm.Forcing(*(ds[v].values for v in FORCING_VARS))
        site = lm.Site(clay=ds.clay.values, sand=ds.sand.values, pft=ds.pft.values.astype(int), ndep=ds.ndep.values)
        model = lm.LandModel(forcing, site)
        true_c = ds.totecosysc.values
        starts = {"cold start": (lm.cold_start(model.n), False), "cold start, AD": (lm.cold_start(model.n), True),
                  "emulated": (lm.state_from_outputs(dict(zip(lm.OUTPUTS, pred.T))), False)}
        summary, curves = {"cells": int(model.n), "tol": opts.drift_tol, "window": opts.drift_window}, {}
        for name, (state, accelerated) in starts.items():
            start = time.perf_counter()
            result = lm.spin_up(model, state, tol=opts.drift_tol, window=opts.drift_window,
                                max_years=opts.max_spinup_years, record=True, accelerated=accelerated)
            wall = time.perf_counter() - start
            drift = np.abs(result.nee)  # (Y, N)
            years = result.years.astype(float)
            done = years >= 0
            pools = result.state[:, :len(lm.C_POOLS)].sum(axis=1)
            summary[name] = {
                "median_years": float(np.median(np.where(done, years, opts.max_spinup_years))),
                "mean_years": float(np.mean(np.where(done, years, opts.max_spinup_years))),
                "p90_years": float(np.percentile(np.where(done, years, opts.max_spinup_years), 90)),
                "unconverged_cells": int((~done).sum()),
                "median_drift_year1": float(np.median(drift[0])),
                "median_drift_years1_10": float(np.median(drift[:10].mean(axis=0))),
                "wall_s": wall, "simulated_years": int(len(drift)),
                "wall_s_per_cell_year": wall / (len(drift) * model.n),
                "median_abs_error_totecosysc_at_end": float(np.median(np.abs(pools - true_c)))}
            curves[name] = np.median(drift, axis=1)
        cold, emu = summary["cold start"]["median_years"], summary["emulated"]["median_years"]
        summary["median_years_saved_vs_cold"] = cold - emu
        summary["median_years_saved_vs_ad"] = summary["cold start, AD"]["median_years"] - emu
        return {"summary": summary, "curves": curves}

    def predictions(self, engine) -> xr.Dataset:
        """Emulated equilibrium of every cell: one (cell,) variable per output in gC/gN m-2 (fluxes per yr),
        with the cell's lat/lon, grid row/col and split (0 train, 1 held out) as coordinates."""
        d = self.data
        cells = np.arange(len(d))
        pred = self.predict(engine, cells)
        ds = d.dataset
        data_vars = {name: (("cell",), pred[:, j].astype(np.float32),
                            {"units": lm.output_units(name), "long_name": f"emulated equilibrium {name}"})
                     for j, name in enumerate(lm.OUTPUTS)}
        coords = {"cell": ("cell", cells),
                  "lat": ("cell", ds.cell_lat.values, {"units": "degrees_north", "standard_name": "latitude"}),
                  "lon": ("cell", ds.cell_lon.values, {"units": "degrees_east", "standard_name": "longitude"}),
                  "row": ("cell", ds.row.values), "col": ("cell", ds.col.values),
                  "split": ("cell", ds.split.values, {"long_name": "0 = training cell, 1 = held-out cell"})}
        return xr.Dataset(data_vars, coords=coords, attrs={
            "title": f"ORBIT ELM spin-up emulator predictions ({self.cfg.name})",
            "source": f"orbit elm_spinup task, model preset {self.cfg.model.preset}", "Conventions": "CF-1.8"})


class _Batches:
    """Resumable iterable of `ElmBatch`es over a `CellSampler`."""

    def __init__(self, sampler: CellSampler, make_batch):
        self.sampler, self.make_batch = sampler, make_batch

    def __iter__(self):
        return (self.make_batch(index) for index in self.sampler)

    def state_dict(self) -> dict[str, int]:
        return self.sampler.state_dict()

    def load_state_dict(self, state: dict[str, int]) -> None:
        self.sampler.load_state_dict(state)


# --------------------------------------------------------------------------- tables and figures
def r2_table(r2: dict[str, float], baseline: dict[str, float]) -> str:
    """Markdown: one row per output (emulator, ridge baseline), then min and median rows."""
    lines = ["| output | units | R² emulator | R² ridge baseline |", "|---|---|---|---|"]
    for name in r2:
        lines.append(f"| {name} | {lm.output_units(name)} | {r2[name]:.4f} | {baseline[name]:.4f} |")
    for label, fn in (("min", np.nanmin), ("median", np.nanmedian)):
        lines.append(f"| **{label}** | | **{fn(list(r2.values())):.4f}** | {fn(list(baseline.values())):.4f} |")
    return "\n".join(lines)


def spinup_table(summary: dict[str, Any]) -> str:
    """Markdown: years to the drift criterion and early drift for each start."""
    lines = [f"Spin-up of {summary['cells']} held-out cells until |NEE| < {summary['tol']} gC m-2 yr-1 for "
             f"{summary['window']} years", "",
             "| start | median years | mean years | p90 years | not converged | median |NEE| year 1 "
             "| median mean |NEE| years 1-10 | wall s per cell-year |", "|---|---|---|---|---|---|---|---|"]
    for name in ("cold start", "cold start, AD", "emulated"):
        s = summary[name]
        lines.append(f"| {name} | {s['median_years']:.0f} | {s['mean_years']:.0f} | {s['p90_years']:.0f} | "
                     f"{s['unconverged_cells']} | {s['median_drift_year1']:.3g} | {s['median_drift_years1_10']:.3g} | "
                     f"{s['wall_s_per_cell_year']:.2e} |")
    lines.append(f"\nMedian years saved by starting from the emulated state: "
                 f"{summary['median_years_saved_vs_cold']:.0f} vs the cold start, "
                 f"{summary['median_years_saved_vs_ad']:.0f} vs the AD cold start")
    return "\n".join(lines)


def plot_scatter(pred: np.ndarray, truth: np.ndarray, path: Path) -> Path:
    """Emulated vs true equilibrium for a few outputs (held-out cells)."""
    names = [n for n in SCATTER_OUTPUTS if n in lm.OUTPUTS]
    fig, axes = plt.subplots(2, 3, figsize=(10, 6.4))
    for ax, name in zip(axes.flat, names):
        j = lm.OUTPUTS.index(name)
        ax.scatter(truth[:, j], pred[:, j], s=4, alpha=0.5)
        lo, hi = float(min(truth[:, j].min(), pred[:, j].min())), float(max(truth[:, j].max(), pred[:, j].max()))
        ax.plot([lo, hi], [lo, hi], color="k", lw=0.8)
        ax.set_title(f"{name} (R² {r2_score(pred[:, j:j + 1], truth[:, j:j + 1])[0]:.3f})", fontsize=9)
        ax.set_xlabel(f"spun-up [{lm.output_units(name)}]", fontsize=8)
        ax.set_ylabel("emulated", fontsize=8)
        ax.tick_params(labelsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def plot_drift(curves: dict[str, np.ndarray], tol: float, path: Path) -> Path:
    """Median |annual NEE| over the validation cells against spin-up year, for each start."""
    fig, ax = plt.subplots(figsize=(6.5, 4))
    for name, curve in curves.items():
        ax.plot(np.arange(1, len(curve) + 1), np.maximum(curve, 1e-6), label=name)
    ax.axhline(tol, color="k", ls="--", lw=0.8, label=f"criterion {tol:g} gC m-2 yr-1")
    ax.set(xscale="log", yscale="log", xlabel="spin-up year", ylabel="median |NEE| (gC m-2 yr-1)")
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path

