"""The loader benchmark (benchmarks/loader.py) runs end to end on a small grid and reports against the presets."""
import importlib.util
import json
from pathlib import Path

import numpy as np

from orbit.data import store
from orbit.models.registry import get_config
from orbit.synthetic import toy_earth

SPEC = importlib.util.spec_from_file_location("loader_benchmark", Path(__file__).parents[2] / "benchmarks" / "loader.py")
bench = importlib.util.module_from_spec(SPEC)
SPEC.loader.exec_module(bench)


def test_benchmark_reports_every_case_and_the_consumption_ratio_from_its_91_channel_store(tmp_path):
    out = tmp_path / "loader"
    assert bench.main(["--data", str(tmp_path), "--out", str(out), "--grid", "16x32", "--steps", "24",
                       "--workers", "0", "1", "--batches", "1", "--repeats", "1", "--batch-size", "2"]) == 0
    result = json.loads(out.with_suffix(".json").read_text())
    cases = {(r["store"], r["in_memory"], r["read"], r["workers"]) for r in result["results"]}
    assert cases == {("lz4", False, "per variable", 0), ("lz4", False, "per variable", 1),
                     ("lz4", False, "per channel", 0), ("uncompressed", False, "per variable", 0),
                     ("lz4", True, "per variable", 0), ("lz4", True, "per variable", 1)}
    assert all(r["samples_per_s"] > 0 for r in result["results"])
    need = result["consumption"]
    assert need["1b"]["batch_per_rank"] == 8 and need["115m"]["batch_per_rank"] == 16
    assert need["115m"]["samples_per_s"] > need["1b"]["samples_per_s"] > 0  # the 1b model costs more per sample
    text = out.with_suffix(".md").read_text()
    assert "| 115m |" in text and "| 1b |" in text and "uncompressed" in text

    # the store it wrote: the presets' channels, one time step per chunk, the toy Earth's own levels kept
    ds = store.open_store(tmp_path / "toy91_16x32_24.zarr")
    assert store.channel_names(ds) == list(get_config("1b").variables)
    assert ds["t"].encoding["chunks"] == (2, 12, 16, 32)  # 24 KiB per step: 2 steps make the minimum chunk
    assert float(ds["q"].min()) >= 0 and np.isfinite(ds["r"].values).all()
    toy, _ = next(toy_earth.generate_blocks("reanalysis", (2000, 2000), (16, 32), block_steps=24))
    np.testing.assert_allclose(ds["t"].sel(level=850).values, toy["t"].sel(level=850).values, rtol=1e-6)
    np.testing.assert_allclose(ds["z"].sel(level=500).values, toy["z"].sel(level=500).values, rtol=1e-6)
