"""Shared toy-Earth stores for the end-to-end CLI tests (generated once per session)."""
from pathlib import Path

import pytest

from orbit.cli import main


@pytest.fixture(scope="session")
def toy_root(tmp_path_factory):
    root = tmp_path_factory.mktemp("toy")
    assert main(["data", "synth", "--root", str(root), "--sources", "cmip_a", "cmip_b", "--years", "1990",
                 "1991", "--train-years", "1990", "1990", "--grid", "16x32"]) == 0
    return root


@pytest.fixture(scope="session")
def pretrained_ckpt(toy_root, tmp_path_factory):
    """A checkpoint of the tiny preset (full width and depth) after a few pretraining steps on the toy stores:
    what fine-tuning tests start from."""
    run_dir = tmp_path_factory.mktemp("pretrained") / "run"
    assert main(["pretrain", "--config", str(Path(__file__).resolve().parents[2] / "configs/pretrain/tiny.yaml"), "--run-dir", str(run_dir),
                 f"data.root={toy_root}", "data.sources=[cmip_a,cmip_b]", "data.train_years=[1990,1990]",
                 "eval.years=[1991,1991]", "eval.validation_years=null", "data.leads_hours=[6,24]", "eval.leads_hours=[6]", "eval.max_samples=4",
                 "data.batch_size=2", "train.max_steps=2", "train.warmup_steps=1",
                 "train.log_every=1", "train.ckpt_every=2"]) == 0
    return run_dir / "checkpoints" / "step_00000002"


@pytest.fixture(scope="session")
def downscale_pairs(tmp_path_factory):
    """A small downscaling store (16x32 -> 64x128, daily, 1990-1992; statistics from 1990)."""
    path = tmp_path_factory.mktemp("downscale") / "pairs.zarr"
    assert main(["data", "downscale", "--out", str(path), "--years", "1990", "1992", "--train-years", "1990", "1990",
                 "--coarse-grid", "16x32", "--scale", "4", "--step-hours", "24"]) == 0
    return path
