"""Loader benchmark: samples/s of the training loader at 128x256 with the presets' 91 channels, against
the samples/s a device consumes when training the 115m and 1b presets.

1. A 91-channel store (the channels of the 115m/1b presets) is written once under --data from the toy
   Earth at 128x256: its 14 channels, the 3-D ones interpolated linearly in log-pressure from 500/850 hPa
   onto the presets' 12 levels, plus msl, sp, tcwv, r, w derived from them (see `expand`). It is
   written by orbit.data.writer, chunked one time step per chunk (all levels, lat, lon), blosc-lz4.
2. The training loader (orbit.data.loader.ResumableLoader over orbit.data.dataset.ForecastDataset,
   6 h lead) is timed for each case: lazy zarr vs in memory, number of worker processes, pinned
   memory, and two layouts to show what they cost: reading channel by channel (the store reader before
   it read each variable once for all its levels) and an uncompressed copy of the store.
3. Consumption: a device that trains a preset at `--tflops` achieved TFLOP/s (default: 40 % of an
   MI250X GCD's 191.5 TFLOP/s bf16 peak) needs flops_per_sample_train / achieved samples/s
   (orbit.models.flops). The ratio loader / consumption is reported at the per-rank batch of
   configs/pretrain/{115m,1b}-frontier.yaml. With --measure-model on a CUDA device, the presets'
   training step (bf16 autocast, fused AdamW, random data, batch of the Frontier config) is also
   timed there, giving the samples/s that device really consumes.

Writes <out>.md and <out>.json. Timings: best of --repeats steady-state runs (the batches the workers
prefetched while starting are consumed first, untimed); on a shared machine the load average is recorded.

    python benchmarks/loader.py --data /tmp/loader-bench --out benchmarks/results/loader
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import torch
import xarray as xr
import yaml

from orbit.atomic import write_atomically
from orbit.data import store, writer
from orbit.data.dataset import ForecastDataset
from orbit.data.loader import ResumableLoader
from orbit.models.flops import model_info
from orbit.models.registry import create_model, get_config
from orbit.synthetic import toy_earth

REPO = Path(__file__).resolve().parents[1]
MI250X_GCD_BF16_TFLOPS = 191.5  # dense bf16 peak of one MI250X GCD (383 TFLOP/s per MI250X, 2 GCDs)
LEVELS = (50, 100, 150, 200, 250, 300, 400, 500, 600, 700, 850, 925)
SURFACE = ("t2m", "u10", "v10", "msl", "sp", "tcwv", "tp")
UPPER = ("z", "t", "u", "v", "q", "r", "w")
PRESETS = ("115m", "1b")


# --------------------------------------------------------------------------- the 91-channel store
def expand(block: xr.Dataset, orography: np.ndarray) -> xr.Dataset:
    """Toy-Earth fields (levels 500, 850) -> the presets' 7 surface + 7 x 12 upper-air variables."""
    weight = ((np.log(LEVELS) - np.log(500.0)) / (np.log(850.0) - np.log(500.0)))[None, :, None, None]

    def levels(name: str) -> np.ndarray:
        low, high = block[name].sel(level=500).values[:, None], block[name].sel(level=850).values[:, None]
        return low + weight * (high - low)

    upper = {name: levels(name) for name in ("z", "t", "u", "v", "q")}
    upper["q"] = np.maximum(upper["q"], 0.0)
    pressure = np.array(LEVELS, np.float64)[None, :, None, None] * 100.0
    upper["r"] = np.clip(100.0 * upper["q"] / toy_earth.q_sat(upper["t"], pressure), 0.0, 120.0)
    upper["w"] = 0.05 * upper["v"]  # vertical velocity stand-in (Pa s-1 scale), not a diagnosed ascent
    z850 = block["z"].sel(level=850).values
    msl = 101325.0 + 1.2 * (z850 - z850.mean())
    q = block["q"].values
    surface = {name: block[name].values for name in ("t2m", "u10", "v10", "tp")}
    surface.update(msl=msl, sp=msl * np.exp(-orography / 8000.0),
                   tcwv=(q[:, 0] * 3.5e4 + q[:, 1] * 3.0e4) / toy_earth.G)
    data = {name: (("time", "lat", "lon"), surface[name].astype(np.float32)) for name in SURFACE}
    data.update({name: (("time", "level", "lat", "lon"), upper[name].astype(np.float32)) for name in UPPER})
    return xr.Dataset(data, coords={"time": block["time"].values, "level": np.array(LEVELS, np.int32),
                                    "lat": block["lat"].values, "lon": block["lon"].values})


def build_store(path: Path, steps: int, grid: tuple[int, int] = (128, 256)) -> Path:
    """The 91-channel store of `steps` 6-hourly steps from 2000-01-01 (written once, reused after)."""
    if path.exists():
        return path
    statics = toy_earth.make_statics(grid)
    orography = statics["orography"].values.astype(np.float64)
    lat, lon = toy_earth.grid_coords(grid)
    zeros = {name: (("time", "lat", "lon"), (steps, *grid)) for name in SURFACE}
    zeros.update({name: (("time", "level", "lat", "lon"), (steps, len(LEVELS), *grid)) for name in UPPER})
    template = xr.Dataset({name: (dims, np.broadcast_to(np.float32(0), shape)) for name, (dims, shape) in zeros.items()},
                          coords={"time": toy_earth.time_axis((2000, 2000))[:steps], "level": np.array(LEVELS, np.int32),
                                  "lat": lat.astype(np.float32), "lon": lon.astype(np.float32)})
    block_steps = writer.steps_per_block(template)

    def produce(start: int, state: dict):
        position = 0
        for block, _ in toy_earth.generate_blocks("reanalysis", (2000, 2000), grid, block_steps=block_steps):
            block = block.isel(time=slice(0, steps - position))
            position += block.sizes["time"]
            if position > start:
                yield expand(block, orography), {}
            if position == steps:
                return

    writer.write_blocks(template, produce, path, source="toy91", kind="reanalysis", train_years=(2000, 2000),
                        statics=statics, progress=True)
    return path


def uncompressed_copy(path: Path) -> Path:
    out = path.with_name(path.stem + "-raw.zarr")
    if not out.exists():
        ds = xr.open_zarr(path, consolidated=True)
        encoding = {name: {"compressors": None, "chunks": ds[name].encoding["chunks"]} for name in ds.data_vars}
        write_atomically(out, lambda tmp: ds.drop_encoding().to_zarr(tmp, encoding=encoding, zarr_format=2,
                                                                     consolidated=True))
    return out


# --------------------------------------------------------------------------- timing
@contextmanager
def channel_by_channel():
    """Read each channel on its own (one chunk read per level), as the store reader did before."""
    per_variable = store.channel_array
    store.channel_array = lambda ds, channels, index: np.concatenate(
        [per_variable(ds, [c], index) for c in channels], axis=1)
    try:
        yield
    finally:
        store.channel_array = per_variable


def samples_per_second(dataset: ForecastDataset, batch_size: int, workers: int, pin_memory: bool,
                       batches: int, repeats: int) -> float:
    """Best of `repeats` steady-state timings of at least `batches` batches. The DataLoader keeps
    2 batches per worker in flight, so the first 2 x workers + 1 batches (made while the workers
    started) are consumed untimed and at least 2 x workers batches are timed."""
    best = 0.0
    for repeat in range(repeats):
        loader = ResumableLoader(dataset, batch_size, seed=repeat, num_workers=workers, pin_memory=pin_memory)
        batches_iter = iter(loader)
        for _ in range(2 * workers + 1):
            next(batches_iter)
        timed = max(batches, 2 * workers)
        start = time.perf_counter()
        for _ in range(timed):
            batch = next(batches_iter)
            assert batch.x.shape[0] == batch_size
        best = max(best, timed * batch_size / (time.perf_counter() - start))
        del batches_iter
    return best


def consumption(tflops: float) -> dict[str, dict[str, float]]:
    """Per preset: training FLOPs per sample, samples/s a device needs at `tflops`, per-rank batch."""
    out = {}
    for preset in PRESETS:
        flops = model_info(preset)["flops_per_sample_train"]
        config = yaml.safe_load((REPO / "configs" / "pretrain" / f"{preset}-frontier.yaml").read_text())
        out[preset] = {"train_flops_per_sample": flops, "samples_per_s": tflops * 1e12 / flops,
                       "batch_per_rank": config["data"]["batch_size"],
                       "num_workers_in_config": config["data"]["num_workers"]}
    return out


def model_consumption(preset: str, batch_size: int, steps: int = 10) -> dict[str, float]:
    """Time the training step of `preset` on the CUDA device: samples/s it consumes, achieved TFLOP/s."""
    config = get_config(preset)
    model = create_model(preset).cuda()
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4, fused=True)
    x = torch.randn(batch_size, len(config.variables), *config.img_size, device="cuda")
    y, lead = torch.randn_like(x), torch.full((batch_size,), 6.0, device="cuda")

    def step():
        with torch.autocast("cuda", dtype=torch.bfloat16):
            loss = torch.nn.functional.mse_loss(model(x, None, lead).float(), y)
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    for _ in range(3):
        step()
    torch.cuda.synchronize()
    start = time.perf_counter()
    for _ in range(steps):
        step()
    torch.cuda.synchronize()
    seconds = (time.perf_counter() - start) / steps
    flops = model_info(preset)["flops_per_sample_train"] * batch_size
    return {"step_s": seconds, "samples_per_s": batch_size / seconds, "tflops": flops / seconds / 1e12,
            "peak_memory_gib": torch.cuda.max_memory_allocated() / 2**30}


def run_cases(path: Path, cases: list[dict], batch_size: int, batches: int, repeats: int) -> list[dict]:
    channels = list(get_config("1b").variables)
    results = []
    datasets: dict[tuple[str, bool], ForecastDataset] = {}
    for case in cases:
        key = (case["store"], case["in_memory"])
        if key not in datasets:
            store_path = path if case["store"] == "lz4" else uncompressed_copy(path)
            datasets[key] = ForecastDataset({"toy91": store_path}, channels, years=[2000], lead_hours=[6],
                                            in_memory=case["in_memory"])
        reader = channel_by_channel() if case["read"] == "per channel" else _nothing()
        with reader:
            rate = samples_per_second(datasets[key], batch_size, case["workers"], case["pin_memory"], batches, repeats)
        results.append({**case, "samples_per_s": rate, "load_average": os.getloadavg()[0]})
        print(json.dumps(results[-1]), flush=True)
    return results


@contextmanager
def _nothing():
    yield


def default_cases(workers: list[int], pin_memory: bool) -> list[dict]:
    base = {"store": "lz4", "in_memory": False, "read": "per variable", "workers": 0, "pin_memory": False}
    cases = [{**base, "workers": n} for n in workers]
    cases += [{**base, "read": "per channel"}, {**base, "store": "uncompressed"}]
    cases += [{**base, "in_memory": True, "workers": n} for n in workers]
    if pin_memory:
        cases += [{**base, "workers": max(workers), "pin_memory": True}]
    return cases


# --------------------------------------------------------------------------- report
def report(results: list[dict], need: dict, args, command: str) -> str:
    best = max(results, key=lambda r: r["samples_per_s"])
    lines = [
        "# Loader benchmark: samples/s at 128x256 x 91 channels vs what the 115m and 1b presets consume", "",
        f"Command: `{command}`", "",
        f"Machine: {platform.processor() or platform.machine()}, {os.cpu_count()} CPUs"
        f"{', ' + torch.cuda.get_device_name() if torch.cuda.is_available() else ''}; Python "
        f"{platform.python_version()}, torch {torch.__version__}, xarray {xr.__version__}. "
        f"Load average at the start {args.load_before:.1f} (other jobs share these CPUs: timings are best of "
        f"{args.repeats} runs of at least {args.batches} batches of {args.batch_size}, timed after the batches "
        f"prefetched while the workers started).", "",
        f"Store: {args.steps} 6-hourly steps of the toy Earth expanded to the presets' 91 channels, "
        f"{args.store_bytes / 2**30:.2f} GiB on disk; one sample (x and y) is 2 x 91 x {args.grid.replace('x', ' x ')} "
        f"x 4 B = {args.sample_mb:.1f} MB.", "",
        "| store | in memory | read | workers | pinned | samples/s | MB/s | load avg |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in results:
        lines.append(f"| {r['store']} | {'yes' if r['in_memory'] else 'lazy zarr'} | {r['read']} | {r['workers']} | "
                     f"{'yes' if r['pin_memory'] else 'no'} | {r['samples_per_s']:.1f} | "
                     f"{r['samples_per_s'] * args.sample_mb:.0f} | {r['load_average']:.1f} |")
    if args.measured:
        lines += ["", f"Training step measured on this device ({torch.cuda.get_device_name()}; bf16 autocast, fused "
                  "AdamW, random data, batch of the Frontier config):", "",
                  "| preset | batch | step | samples/s consumed | achieved TFLOP/s | best loader / consumption |",
                  "|---|---|---|---|---|---|"]
        for preset, m in args.measured.items():
            lines.append(f"| {preset} | {need[preset]['batch_per_rank']} | {m['step_s'] * 1e3:.0f} ms | "
                         f"{m['samples_per_s']:.1f} | {m['tflops']:.0f} | {best['samples_per_s'] / m['samples_per_s']:.2f}x |")
    lines += ["", f"Consumption at {args.tflops:.1f} achieved TFLOP/s per device ({args.tflops_note}):", "",
              "| preset | training FLOPs / sample | samples/s consumed | per-rank batch (Frontier config) | "
              "best loader / consumption | lazy zarr, workers of the config | ratio |",
              "|---|---|---|---|---|---|---|"]
    for preset, n in need.items():
        lazy = [r for r in results if not r["in_memory"] and r["read"] == "per variable" and r["store"] == "lz4"]
        at_config = max((r for r in lazy if r["workers"] <= n["num_workers_in_config"]),
                        key=lambda r: r["samples_per_s"], default=None)
        config_rate = at_config["samples_per_s"] if at_config else float("nan")
        lines.append(f"| {preset} | {n['train_flops_per_sample'] / 1e12:.2f} TFLOP | {n['samples_per_s']:.1f} | "
                     f"{n['batch_per_rank']} | {best['samples_per_s'] / n['samples_per_s']:.2f}x | "
                     f"{config_rate:.1f} samples/s ({at_config['workers'] if at_config else '-'} workers) | "
                     f"{config_rate / n['samples_per_s']:.2f}x |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", type=Path, default=Path("/tmp/orbit-loader-bench"), help="where the store is kept")
    parser.add_argument("--out", default=str(REPO / "benchmarks" / "results" / "loader"), help="path prefix of .md/.json")
    parser.add_argument("--steps", type=int, default=160, help="6-hourly steps in the store")
    parser.add_argument("--grid", default="128x256")
    parser.add_argument("--workers", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--batch-size", type=int, default=8, help="per rank (1b-frontier: 8, 115m-frontier: 16)")
    parser.add_argument("--batches", type=int, default=6)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--pin-memory", action="store_true", help="also time pinned memory (needs a GPU)")
    parser.add_argument("--measure-model", action="store_true",
                        help="also time the presets' training step on the CUDA device (what it really consumes)")
    parser.add_argument("--tflops", type=float, default=0.4 * MI250X_GCD_BF16_TFLOPS)
    parser.add_argument("--tflops-note", default="40 % of an MI250X GCD's 191.5 TFLOP/s bf16 peak")
    args = parser.parse_args(argv)
    args.load_before = os.getloadavg()[0]
    grid = tuple(int(v) for v in args.grid.split("x"))
    args.sample_mb = 2 * 91 * grid[0] * grid[1] * 4 / 1e6
    path = build_store(args.data / f"toy91_{args.grid}_{args.steps}.zarr", args.steps, grid)
    args.store_bytes = sum(f.stat().st_size for f in path.rglob("*") if f.is_file())
    results = run_cases(path, default_cases(args.workers, args.pin_memory), args.batch_size, args.batches,
                        args.repeats)
    need = consumption(args.tflops)
    args.measured = {preset: model_consumption(preset, need[preset]["batch_per_rank"])
                     for preset in PRESETS} if args.measure_model else {}
    command = "python benchmarks/loader.py " + " ".join(sys.argv[1:] if argv is None else argv)
    text = report(results, need, args, command)
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(f"{args.out}.md").write_text(text)
    Path(f"{args.out}.json").write_text(json.dumps({"results": results, "consumption": need, "tflops": args.tflops,
                                                    "measured_on_device": args.measured}, indent=2))
    print(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
