"""ELM spin-up emulation: predict a land cell's spun-up C/N equilibrium from its forcing, site and maps.

Verification: R^2 per output (physical units) on the held-out regions of the store: the validation regions
(every choice) and the test regions (reported), against two baselines on the same inputs, a ridge
regression and a plain MLP with the emulator's step budget. Min and median count each independent output
once (`lm.INDEPENDENT_OUTPUTS`: outputs that are exact or equilibrium functions of others are listed but not
counted). Spin-up validation (in `report`): `spinup_cells` cells of each held-out set are spun up with the
toy land model from four starts — cold, cold with AD (how the truth was made), emulated, and emulated then
AD (`lm.to_accelerated`) — until the reference's own criterion (the store's |NEE| < tol for `window`
years) holds; scored by the years needed and by the relative distance of every pool to the truth,
d_p = |x_p - x*_p| / x*_p (cells with x*_p > `POOL_FLOOR`), at the start and when the criterion is met.
"""
from __future__ import annotations

import json
import time
import warnings
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
from orbit.train.optim import warmup_cosine
from orbit.data.sampler import ShardedSampler
from orbit.models.elm_emulator import ElmEmulatorConfig, ElmSpinupEmulator
from orbit.models.registry import get_config
from orbit.registry import register_task
from orbit.tasks.sections import WEATHER_SECTIONS
from orbit.train.task import Task
from orbit.run.plots import plot_loss_curve, plt
from orbit.train.finetune import prepare_model

SCATTER_OUTPUTS = ("totecosysc", "soil3c", "stemc", "sminn", "gpp", "cwdn")
POOL_FLOOR = 1e-3  # g m-2: pools below this in the truth (e.g. stems of grass) get no relative distance
STARTS = ("cold", "cold, AD", "emulated", "emulated, AD")


@dataclass
class ElmSpinupOptions:
    """`options:` of an ELM spin-up emulator run."""

    store: str = "data/elm/elm.zarr"  # written by `orbit data elm`
    patch: int = 5  # neighbourhood (cells) of the spatial encoder, odd
    static_tokens: int = 4
    spinup_cells: int = 128  # cells of each held-out set spun up in the validation (0: skip it)
    max_spinup_years: int = 6000
    mlp_hidden: int = 256  # width of the plain MLP baseline


def ridge_fit_predict(x_train: np.ndarray, y_train: np.ndarray, x: np.ndarray, alpha: float = 1e-2) -> np.ndarray:
    """Baseline: ridge regression with intercept, x (N, P), y (N, O) -> predictions (M, O) for `x`."""
    add = lambda a: np.concatenate([a, np.ones((len(a), 1))], axis=1)  # noqa: E731
    xt = add(x_train)
    gram = xt.T @ xt + alpha * len(xt) * np.eye(xt.shape[1])
    return add(x) @ np.linalg.solve(gram, xt.T @ y_train)


def mlp_fit_predict(x_train: np.ndarray, y_train: np.ndarray, x: np.ndarray, steps: int, batch_size: int,
                    lr: float, hidden: int = 256, seed: int = 0) -> np.ndarray:
    """Baseline: a plain MLP P -> hidden -> hidden -> O (SiLU) fitted by MSE with AdamW (weight decay 0.01)
    and a 5 % warm-up + cosine schedule, `steps` random batches of `batch_size` (the emulator's budget);
    x (N, P), y (N, O) -> predictions (M, O) for `x` (M, P)."""
    with torch.random.fork_rng(), torch.enable_grad():  # evaluation runs under no_grad
        torch.manual_seed(seed)
        net = nn.Sequential(nn.Linear(x_train.shape[1], hidden), nn.SiLU(), nn.Linear(hidden, hidden), nn.SiLU(),
                            nn.Linear(hidden, y_train.shape[1]))
        xt, yt = torch.as_tensor(x_train, dtype=torch.float32), torch.as_tensor(y_train, dtype=torch.float32)
        opt = torch.optim.AdamW(net.parameters(), lr=lr, weight_decay=0.01)
        schedule = warmup_cosine(opt, max(1, steps // 20), steps, lr, 0.0)
        for _ in range(steps):
            pick = torch.randint(len(xt), (min(batch_size, len(xt)),))
            loss = nn.functional.mse_loss(net(xt[pick]), yt[pick])
            opt.zero_grad()
            loss.backward()
            opt.step()
            schedule.step()
        with torch.no_grad():
            return net(torch.as_tensor(x, dtype=torch.float32)).double().numpy()


def relative_distance(state: np.ndarray, truth: np.ndarray) -> np.ndarray:
    """|x - x*| / x* per cell and pool, (N, S) -> (N, S); nan where x* <= POOL_FLOOR."""
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(truth > POOL_FLOOR, np.abs(state - truth) / truth, np.nan)


def _median(values: np.ndarray, axis=None):
    """nanmedian without the warning for an all-nan column (a pool absent from every cell stays nan)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        return np.nanmedian(values, axis=axis)


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
    """Train on the store's training cells, score the validation and test regions."""

    def __init__(self, cfg: RunConfig):
        self.cfg = cfg
        opts = cfg.options
        if opts.patch < 1 or opts.patch % 2 == 0:
            raise ValueError(f"options.patch must be a positive odd number of cells, got {opts.patch}")
        if opts.max_spinup_years < 1 or opts.spinup_cells < 0 or opts.mlp_hidden < 1:
            raise ValueError(f"need options.max_spinup_years >= 1, spinup_cells >= 0, mlp_hidden >= 1; got "
                             f"{opts.max_spinup_years}, {opts.spinup_cells}, {opts.mlp_hidden}")
        self.data = ElmArrays(open_dataset(opts.store), opts.patch, cfg.finetune.data_fraction, cfg.train.seed)
        if len(self.data.test) == 0 or len(self.data.val) == 0:
            raise ValueError(f"store {opts.store!r} holds {len(self.data.test)} test and {len(self.data.val)} "
                             f"validation cells; both sets are needed: regenerate it with `orbit data elm "
                             f"--holdout 0.2 --validation 0.1`")
        self._pred: dict[str, np.ndarray] = {}

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

    def baselines(self) -> dict[str, dict[str, np.ndarray]]:
        """{"ridge", "mlp"}: {"val", "test"} -> (N, len(lm.OUTPUTS)) physical predictions of the two baselines,
        fitted on the training cells in training space to the same learned outputs (derived ones follow as for
        the emulator), on the flattened inputs; the MLP gets the emulator's steps, batch size and peak lr."""
        d, train = self.data, self.cfg.train
        flat = np.concatenate([d.forcing.reshape(len(d), -1), d.statics, d.patch.reshape(len(d), -1)], axis=1)
        cells = np.concatenate([d.val, d.test])
        fits = {"ridge": ridge_fit_predict(flat[d.train], d.target[d.train], flat[cells]),
                "mlp": mlp_fit_predict(flat[d.train], d.target[d.train], flat[cells], train.max_steps,
                                       self.cfg.data.batch_size, train.lr, self.cfg.options.mlp_hidden, train.seed)}
        out = {}
        for name, z in fits.items():
            physical = d.outputs(z, cells)
            out[name] = {"val": physical[:len(d.val)], "test": physical[len(d.val):]}
        return out

    def evaluate(self, engine, step: int) -> dict[str, Any]:
        d = self.data
        self._pred = {split: self.predict(engine, cells) for split, cells in (("val", d.val), ("test", d.test))}
        fit = d.train[np.linspace(0, len(d.train) - 1, min(len(d.train), len(d.test))).round().astype(int)]
        # training cells too (emulator only): under-fitting vs the generalization gap
        methods = {"emulator": {**self._pred, "train": self.predict(engine, fit)}, **self.baselines()}
        truth = {"val": d.truth[d.val], "test": d.truth[d.test], "train": d.truth[fit]}
        r2 = {method: {split: dict(zip(lm.OUTPUTS, r2_score(pred, truth[split]).tolist()))
                       for split, pred in preds.items()} for method, preds in methods.items()}
        scalars = {}
        for method, by_split in r2.items():
            prefix = "" if method == "emulator" else f"{method}_"
            for split, values in by_split.items():
                independent = [values[n] for n in lm.INDEPENDENT_OUTPUTS]
                scalars[f"{prefix}{split}_r2_min"] = float(np.nanmin(independent))
                scalars[f"{prefix}{split}_r2_median"] = float(np.nanmedian(independent))
        return {"scalars": scalars, "r2": r2, "cells": {"train": int(len(d.train)), "val": int(len(d.val)),
                                                        "test": int(len(d.test))}}

    def report(self, summary: dict[str, Any], run_dir: Path) -> None:
        run_dir = Path(run_dir)
        r2, cells = summary["r2"], summary["cells"]
        table = r2_table({"emulator": r2["emulator"]["test"], "MLP": r2["mlp"]["test"], "ridge": r2["ridge"]["test"]})
        s = summary["scalars"]
        text = (f"R^2 per output on {cells['test']} test cells ({cells['train']} training cells, {cells['val']} "
                f"validation cells), physical units, step {summary.get('step')}; min and median over the "
                f"{len(lm.INDEPENDENT_OUTPUTS)} independent outputs\n\n{table}\n\n"
                f"Validation cells, min / median R^2 (independent outputs): emulator {s['val_r2_min']:.4f} / "
                f"{s['val_r2_median']:.4f}, MLP {s['mlp_val_r2_min']:.4f} / {s['mlp_val_r2_median']:.4f}, ridge "
                f"{s['ridge_val_r2_min']:.4f} / {s['ridge_val_r2_median']:.4f}; training cells (emulator): "
                f"{s['train_r2_min']:.4f} / {s['train_r2_median']:.4f}\n")
        print(text)
        if self._pred:
            d = self.data
            plot_scatter(self._pred["test"], d.truth[d.test], run_dir / "elm_scatter.png")
            if self.cfg.options.spinup_cells:
                results = {split: self.validate_spinup(self._pred[key], cells)
                           for split, key, cells in (("validation", "val", d.val), ("test", "test", d.test))}
                (run_dir / "spinup_validation.json").write_text(
                    json.dumps({split: r["summary"] for split, r in results.items()}, indent=2))
                plot_drift(results["test"]["curves"], results["test"]["summary"]["tol"], run_dir / "elm_drift.png")
                for split, result in results.items():
                    vtable = spinup_table(result["summary"], split)
                    print(vtable)
                    text += f"\n{vtable}\n"
        (run_dir / "elm_report.md").write_text(text)
        plot_loss_curve(run_dir)

    def validate_spinup(self, pred: np.ndarray, cells: np.ndarray) -> dict[str, Any]:
        """Spin up `spinup_cells` of `cells` (pred: their (N, len(lm.OUTPUTS)) emulated outputs) from each of
        `STARTS` until the store's criterion holds; see the module docstring for the scores."""
        opts, d = self.cfg.options, self.data
        pick = np.unique(np.linspace(0, len(cells) - 1, min(opts.spinup_cells, len(cells))).round().astype(int))
        ds = d.dataset.isel(cell=cells[pick])
        tol, window = float(ds.attrs["tol_gc_m2_yr"]), int(ds.attrs["window_years"])
        k = len(STARTS)  # every start of every cell runs in one vectorized spin-up: copies of the cells
        forcing = lm.Forcing(*(np.tile(ds[v].values, (k, 1)) for v in FORCING_VARS))
        site = lm.Site(*(np.tile(ds[v].values, k) for v in ("clay", "sand")), pft=np.tile(ds.pft.values.astype(int), k),
                       ndep=np.tile(ds.ndep.values, k))
        model = lm.LandModel(forcing, site)
        truth = lm.state_from_outputs({name: ds[name].values for name in lm.STATE})
        emulated = lm.state_from_outputs(dict(zip(lm.OUTPUTS, pred[pick].T)))
        cold = lm.cold_start(len(pick))
        handed = {"cold": cold, "cold, AD": cold, "emulated": emulated, "emulated, AD": emulated}
        ad = {name: name.endswith("AD") for name in STARTS}  # an AD run starts from the AD image of the state
        start = time.perf_counter()
        result = lm.spin_up(model, np.concatenate([lm.to_accelerated(handed[s]) if ad[s] else handed[s] for s in STARTS]),
                            tol=tol, window=window, max_years=opts.max_spinup_years, record=True,
                            accelerated=np.repeat([ad[s] for s in STARTS], len(pick)))
        summary = {"cells": int(len(pick)), "tol": tol, "window": window, "max_years": opts.max_spinup_years,
                   "wall_s": time.perf_counter() - start, "simulated_years": int(len(result.nee))}
        total = lambda x: x[:, :len(lm.C_POOLS)].sum(axis=1, keepdims=True)  # noqa: E731
        curves = {}
        for i, name in enumerate(STARTS):
            part = slice(i * len(pick), (i + 1) * len(pick))
            done = result.done_state[part]
            years = np.where(result.years[part] >= 0, result.years[part], opts.max_spinup_years).astype(float)
            summary[name] = {
                "median_years": float(np.median(years)), "mean_years": float(years.mean()),
                "p90_years": float(np.percentile(years, 90)), "unconverged_cells": int((result.years[part] < 0).sum()),
                "pool_distance_start": dict(zip(lm.STATE, _median(relative_distance(handed[name], truth), 0).tolist())),
                "pool_distance_done": dict(zip(lm.STATE, _median(relative_distance(done, truth), 0).tolist())),
                "totc_distance_start": float(_median(relative_distance(total(handed[name]), total(truth)))),
                "totc_distance_done": float(_median(relative_distance(total(done), total(truth))))}
            curves[name] = np.median(np.abs(result.nee[:, part]), axis=1)
        for base in ("cold", "cold, AD"):
            for name in ("emulated", "emulated, AD"):
                summary[f"median_years_saved_{name}_vs_{base}"] = (summary[base]["median_years"]
                                                                   - summary[name]["median_years"])
        return {"summary": summary, "curves": curves}

    def predictions(self, engine) -> xr.Dataset:
        """Emulated equilibrium of every cell: one (cell,) variable per output in gC/gN m-2 (fluxes per yr),
        with the cell's lat/lon, grid row/col and split (0 train, 1 test, 2 validation) as coordinates."""
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
                  "split": ("cell", ds.split.values, {"long_name": "0 = training cell, 1 = test cell, 2 = validation cell"})}
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
def r2_table(methods: dict[str, dict[str, float]]) -> str:
    """Markdown: one row per output ({method: {output: R^2}}), what it is a function of, then min and median
    over `lm.INDEPENDENT_OUTPUTS` and the min over all outputs."""
    names = list(methods)
    lines = ["| output | units | function of | " + " | ".join(f"R² {m}" for m in names) + " |",
             "|---|---|---|" + "---|" * len(names)]
    for output in lm.OUTPUTS:
        kind = lm.EXACT_FUNCTIONS.get(output) or (f"{lm.EQUILIBRIUM_FUNCTIONS[output]} at equilibrium"
                                                  if output in lm.EQUILIBRIUM_FUNCTIONS else "independent")
        lines.append(f"| {output} | {lm.output_units(output)} | {kind} | "
                     + " | ".join(f"{methods[m][output]:.4f}" for m in names) + " |")
    rows = (("min, independent", lm.INDEPENDENT_OUTPUTS, np.nanmin),
            ("median, independent", lm.INDEPENDENT_OUTPUTS, np.nanmedian), ("min, all 39", lm.OUTPUTS, np.nanmin))
    for label, outputs, fn in rows:
        lines.append(f"| **{label}** | | | " + " | ".join(f"{fn([methods[m][o] for o in outputs]):.4f}"
                                                          for m in names) + " |")
    return "\n".join(lines)


def spinup_table(summary: dict[str, Any], split: str) -> str:
    """Markdown: years to the reference's criterion and relative distance to the truth, for each start;
    then the per-pool median distance when the criterion is met."""
    lines = [f"Spin-up of {summary['cells']} {split} cells until |NEE| < {summary['tol']:g} gC m-2 yr-1 for "
             f"{summary['window']} years (the truth's own criterion; cap {summary['max_years']} years, counted as "
             f"the cap when not met; the distance is then taken at the cap); all starts in one run of "
             f"{summary['simulated_years']} years, {summary['wall_s']:.0f} s", "",
             "| start | median years | mean years | p90 years | not converged | total C distance at start "
             "| total C distance when met |", "|---|---|---|---|---|---|---|"]
    for name in STARTS:
        s = summary[name]
        lines.append(f"| {name} | {s['median_years']:.0f} | {s['mean_years']:.0f} | {s['p90_years']:.0f} | "
                     f"{s['unconverged_cells']} | {s['totc_distance_start']:.2%} | {s['totc_distance_done']:.2%} |")
    lines += ["", "Median relative distance |x - x*| / x* per pool when the criterion is met (emulated: also at "
              "the start)", "", "| pool | emulated at start | " + " | ".join(STARTS) + " |",
              "|---|---|" + "---|" * len(STARTS)]
    for pool in lm.STATE:
        lines.append(f"| {pool} | {summary['emulated']['pool_distance_start'][pool]:.2%} | "
                     + " | ".join(f"{summary[name]['pool_distance_done'][pool]:.2%}" for name in STARTS) + " |")
    lines.append("\nMedian years saved: " + ", ".join(
        f"{name} vs {base}: {summary[f'median_years_saved_{name}_vs_{base}']:.0f}"
        for name in ("emulated", "emulated, AD") for base in ("cold", "cold, AD")))
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
    """Median |annual NEE| over the spun-up cells against spin-up year, for each start."""
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

