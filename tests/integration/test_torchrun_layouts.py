"""The Hybrid-STOP engine through the CLI: `torchrun -m orbit pretrain` on (tp=2, dp_shard=2)
logs the single-process run's per-step losses, and its checkpoint resumes on another layout
(pp=2, sp=2) and on one process with the uninterrupted run's next loss."""
import pytest

from cli_runs import step_losses, torchrun
from orbit.cli import main
from test_cli import _tiny_run

STEPS = ("train.max_steps=4", "train.log_every=1", "train.ckpt_every=3", "model.depth=2", "model.num_heads=4")
LOSS_RTOL = 1e-5  # reached: ~1e-7 (float32 reductions in another order)


def test_layouts_match_one_process_and_checkpoints_reshard(toy_root, tmp_path):
    single, tp_dp = tmp_path / "single", tmp_path / "tp_dp"
    assert main(_tiny_run(toy_root, single, *STEPS)) == 0  # global batch 4
    torchrun(_tiny_run(toy_root, tp_dp, *STEPS, "data.batch_size=2", "parallel.tp=2", "parallel.dp_shard=2"), 4)
    reference, parallel = step_losses(single), step_losses(tp_dp)
    assert reference.keys() == parallel.keys() == {1, 2, 3, 4}
    for step in reference:
        assert parallel[step] == pytest.approx(reference[step], rel=LOSS_RTOL), step

    step3 = tp_dp / "checkpoints" / "step_00000003"
    on_pp_sp = tmp_path / "pp_sp"
    torchrun([*_tiny_run(toy_root, on_pp_sp, *STEPS, "parallel.pp=2", "parallel.sp=2", "parallel.dp_shard=1",
                         "parallel.pp_microbatches=2"), "--resume", str(step3)], 4)
    on_one = tmp_path / "one"
    assert main([*_tiny_run(toy_root, on_one, *STEPS), "--resume", str(step3)]) == 0
    for resumed in (on_pp_sp, on_one):
        assert step_losses(resumed)[4] == pytest.approx(reference[4], rel=LOSS_RTOL), resumed.name
