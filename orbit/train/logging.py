"""Run-directory logging: metrics.csv (one row per logged step), TensorBoard events, progress bar."""
from __future__ import annotations

import csv
import json
import logging
import resource
from pathlib import Path
from typing import Any

import torch
from torch.utils.tensorboard import SummaryWriter
from tqdm.auto import tqdm

log = logging.getLogger("orbit")

CSV_COLUMNS = ("step", "phase", "loss", "lr", "grad_norm", "samples_per_s", "step_time_s", "tflops_per_device",
               "mfu", "peak_memory_gb", "data_wait_frac")


def peak_memory_gb(device: torch.device) -> float:
    """Peak memory of this process so far: allocated on an accelerator, resident set size on the CPU."""
    if device.type != "cpu":
        return torch.get_device_module(device.type).max_memory_allocated(device) / 2**30
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20  # Linux reports KiB


def step_line(row: dict[str, Any]) -> str:
    """The console line of a logged step."""
    parts = [f"step {row['step']}", f"{row['phase']}", f"loss {row['loss']:.4g}", f"lr {row['lr']:.3g}",
             f"grad norm {row['grad_norm']:.3g}", f"{row['samples_per_s']:.1f} samples/s"]
    if "tflops_per_device" in row:
        parts.append(f"{row['tflops_per_device']:.3g} TFLOP/s/device")
    if "mfu" in row:
        parts.append(f"MFU {100 * row['mfu']:.1f}%")
    parts += [f"peak mem {row['peak_memory_gb']:.2f} GB", f"data wait {100 * row['data_wait_frac']:.0f}%"]
    return " | ".join(parts)


def setup_console_logging(level: int = logging.INFO) -> None:
    if not log.handlers:
        handler = logging.StreamHandler()
        handler.setFormatter(logging.Formatter("[%(asctime)s orbit] %(message)s", "%H:%M:%S"))
        log.addHandler(handler)
    log.setLevel(level)


class RunLogger:
    """Writes per-step metrics to CSV and TensorBoard; on resume drops rows past the resumed step."""

    def __init__(self, run_dir: Path, resumed_step: int = 0, total_steps: int = 0, enabled: bool = True):
        self.run_dir = Path(run_dir)
        self.enabled = enabled
        self.csv_path = self.run_dir / "metrics.csv"
        if not enabled:
            return
        self.run_dir.mkdir(parents=True, exist_ok=True)
        self._truncate_csv(resumed_step)
        new_file = not self.csv_path.exists()
        self._csv_handle = open(self.csv_path, "a", newline="")
        self._csv = csv.DictWriter(self._csv_handle, fieldnames=CSV_COLUMNS, extrasaction="ignore")
        if new_file:
            self._csv.writeheader()
        self._tb = SummaryWriter(log_dir=str(self.run_dir / "tensorboard"), purge_step=resumed_step + 1)
        self._bar = tqdm(total=total_steps, initial=resumed_step, desc="train", dynamic_ncols=True,
                         mininterval=2.0)

    def _truncate_csv(self, resumed_step: int) -> None:
        if not self.csv_path.exists():
            return
        with open(self.csv_path, newline="") as handle:
            rows = [r for r in csv.DictReader(handle) if int(r["step"]) <= resumed_step]
        with open(self.csv_path, "w", newline="") as handle:
            writer = csv.DictWriter(handle, fieldnames=CSV_COLUMNS)
            writer.writeheader()
            writer.writerows(rows)

    def advance(self, steps: int = 1, **postfix: float) -> None:
        if self.enabled:
            self._bar.update(steps)
            if postfix:
                self._bar.set_postfix({k: f"{v:.4g}" for k, v in postfix.items()}, refresh=False)

    def log_step(self, row: dict[str, float]) -> None:
        if not self.enabled:
            return
        self._csv.writerow(row)
        self._csv_handle.flush()
        log.info(step_line(row))
        for key, value in row.items():
            if key not in ("step", "phase"):
                self._tb.add_scalar(f"train/{key}", value, int(row["step"]))

    def log_scalars(self, prefix: str, values: dict[str, float], step: int) -> None:
        if self.enabled:
            for key, value in values.items():
                self._tb.add_scalar(f"{prefix}/{key}", value, step)

    def close(self) -> None:
        if self.enabled:
            self._bar.close()
            self._csv_handle.close()
            self._tb.close()


def write_json(path: Path, payload: dict[str, Any]) -> None:
    tmp = Path(path).with_suffix(".json.tmp")
    tmp.write_text(json.dumps(payload, indent=2, default=float))
    tmp.replace(path)
