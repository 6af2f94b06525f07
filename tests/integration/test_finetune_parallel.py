"""Fine-tuning runs through the parallel engine like pretraining: a downscaling run started from the
pretrained checkpoint logs the same per-step losses on one process, on tensor parallel (tp=2) and on
sharded data parallel (dp_shard=2, with the backbone frozen inside FSDP)."""
import pytest

from cli_runs import REPO, step_losses, torchrun
from orbit.cli import main

CONFIG = str(REPO / "configs/finetune/downscale/tiny.yaml")
LOSS_RTOL = 1e-5


def _args(store, ckpt, run_dir, *extra):
    return ["finetune", "--config", CONFIG, "--init", str(ckpt), "--run-dir", str(run_dir), f"options.store={store}",
            "data.train_years=[1990,1990]", "eval.years=[1991,1991]", "eval.validation_years=null", "train.max_steps=3", "train.warmup_steps=1",
            "train.log_every=1", "train.ckpt_every=3", "eval.max_samples=2", "eval.batch_size=2",
            *extra]


@pytest.mark.parametrize("freeze", ["none", "backbone"])
def test_downscaling_finetune_matches_one_process_on_tp_and_fsdp(downscale_pairs, pretrained_ckpt, tmp_path, freeze):
    runs = {name: tmp_path / name for name in ("one", "tp2", "dp_shard2")}
    common = (downscale_pairs, pretrained_ckpt)
    options = (f"finetune.freeze={freeze}",)
    assert main(_args(*common, runs["one"], *options, "data.batch_size=4")) == 0
    torchrun(_args(*common, runs["tp2"], *options, "data.batch_size=4", "parallel.tp=2", "parallel.dp_shard=1"), 2)
    torchrun(_args(*common, runs["dp_shard2"], *options, "data.batch_size=2", "parallel.dp_shard=2"), 2)
    reference = step_losses(runs["one"])
    assert reference.keys() == {1, 2, 3}
    for name in ("tp2", "dp_shard2"):
        losses = step_losses(runs[name])
        for step, loss in reference.items():
            assert losses[step] == pytest.approx(loss, rel=LOSS_RTOL), (name, step)
