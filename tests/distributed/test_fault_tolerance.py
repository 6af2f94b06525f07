"""Fault handling across ranks: a non-finite loss on ONE rank makes every rank take the same
decision (skip the step together, or stop together naming the step), on a 2-rank FSDP layout.
Also the watchdog's verdicts from heartbeats (pure logic; the watchdog ending real multi-process
jobs is tested in tests/integration/test_faults.py)."""
from pathlib import Path

import pytest
import torch
from torch import nn

from orbit.config import ParallelConfig, TrainConfig
from orbit.parallel.mesh import ParallelDims
from orbit.parallel.parallelize import ParallelEngine
from orbit.parallel.plans import data_parallel_only
from orbit.parallel.spawn import RankFailed, spawn
from orbit.train.logging import RunLogger
from orbit.train.task import Task
from orbit.train.trainer import Trainer
from orbit.train.watchdog import Heartbeat, Progress, diagnose, is_communication_error


class NanOnOneRankTask(Task):
    """Linear regression; rank `bad_rank`'s loss is NaN at step `bad_step` (the others' is finite)."""

    def __init__(self, rank, bad_rank=1, bad_step=3):
        self.rank, self.bad_rank, self.bad_step, self.calls = rank, bad_rank, bad_step, 0

    def build_model(self):
        return nn.Sequential(nn.Linear(4, 8), nn.GELU(), nn.Linear(8, 1))

    def train_batches(self, dp_rank, dp_size):
        return Batches(seed=dp_rank)

    def model_inputs(self, batch):
        return (batch[0],)

    def loss(self, output, batch):
        target = batch[1]
        self.calls += 1
        loss = ((output - target) ** 2).mean()
        return loss * float("nan") if (self.calls, self.rank) == (self.bad_step, self.bad_rank) else loss

    def evaluate(self, engine, step):
        return {}


class Batches:
    def __init__(self, seed):
        self.gen, self.position = torch.Generator().manual_seed(seed), 0

    def __iter__(self):
        while True:
            self.position += 1
            x = torch.randn(4, 4, generator=self.gen)
            yield x, x.sum(dim=1, keepdim=True)

    def state_dict(self):
        return {"position": self.position}

    def load_state_dict(self, state):
        self.position = state["position"]


def _train_with_nan_on_rank_one(rank, world_size, run_dir, nonfinite):
    cfg = TrainConfig(max_steps=5, lr=1e-2, warmup_steps=1, log_every=1, ckpt_every=0, nonfinite=nonfinite,
                      max_skipped_steps=1)

    def engine(model, loss_fn, make_optimizer):
        return ParallelEngine(model, data_parallel_only("sequential"), ParallelDims(world_size=world_size,
                              dp_shard=world_size), ParallelConfig(), loss_fn=loss_fn, precision="fp32", activation_checkpointing=False,
                              make_optimizer=make_optimizer)

    trainer = Trainer(NanOnOneRankTask(rank), cfg, Path(run_dir), build_engine=engine)
    logger = RunLogger(Path(run_dir), total_steps=cfg.max_steps, enabled=rank == 0)
    try:
        trainer.fit(logger)
    finally:
        logger.close()
    return trainer.state.step, trainer.state.skipped_steps, trainer.engine.optimizer.state_dict()["state"][0]["step"]


def test_every_rank_skips_the_same_step(tmp_path):
    # each rank's own count of skipped steps and of optimizer updates it applied to its shard
    assert spawn(_train_with_nan_on_rank_one, 2, str(tmp_path), "skip") == [(5, 1, 4), (5, 1, 4)]


def test_every_rank_stops_at_the_same_step(tmp_path):
    with pytest.raises(RankFailed) as failed:
        spawn(_train_with_nan_on_rank_one, 2, str(tmp_path), "stop")
    for rank in (0, 1):
        assert f"rank {rank} failed:" in str(failed.value)
    assert str(failed.value).count("NonFiniteError: the loss or the gradient norm was not finite at step 3; stopping") == 2


# ------------------------------------------------------------------------------ watchdog verdicts

TIMEOUT = 10.0


def beat(progress=5, step=2, phase="train", in_comm=True, state="running", where="torch/x.py:1 in wait"):
    return Heartbeat(beat=1, progress=progress, step=step, phase=phase, where=where, in_comm=in_comm,
                     host="node7", state=state)


def test_all_healthy_or_not_yet_late_is_no_verdict():
    beats = {r: beat() for r in range(4)}
    assert diagnose(beats, {r: 1.0 for r in range(4)}, stalled_s=3.0, timeout_s=TIMEOUT) is None
    assert diagnose(beats, {0: 1.0, 1: 9.0, 2: 1.0, 3: 1.0}, stalled_s=9.0, timeout_s=TIMEOUT) is None


def test_a_rank_whose_heartbeat_stopped_is_dead():
    beats = {r: beat() for r in range(4)}
    verdict = diagnose(beats, {0: 1.0, 1: 1.0, 2: 12.0, 3: 1.0}, stalled_s=12.0, timeout_s=TIMEOUT)
    assert verdict.startswith("rank 2 (node7) is dead: last heartbeat 12 s ago, at step 2")


def test_a_rank_that_left_with_an_error_is_named_with_it():
    beats = {0: beat(), 1: beat(state="exited: ValueError: bad"), 2: beat()}
    verdict = diagnose(beats, {r: 0.0 for r in beats}, stalled_s=0.0, timeout_s=TIMEOUT)
    assert verdict == "rank 1 (node7) left training at step 2 while the others were still running: ValueError: bad"


def test_a_rank_behind_the_others_is_hung():
    beats = {0: beat(progress=9, step=3), 1: beat(progress=7, step=2, in_comm=False, where="data.py:5 in load"),
             2: beat(progress=9, step=3)}
    ages = {r: 1.0 for r in beats}
    assert diagnose(beats, ages, stalled_s=9.0, timeout_s=TIMEOUT) is None  # not yet
    verdict = diagnose(beats, ages, stalled_s=11.0, timeout_s=TIMEOUT)
    assert verdict.startswith("hung: rank 1 (node7) stuck at step 2 (train) in data.py:5 in load")
    assert "behind the others" in verdict


def test_at_the_same_point_the_rank_outside_collectives_is_hung_but_not_in_eval_or_checkpoint():
    beats = {0: beat(), 1: beat(), 2: beat(in_comm=False, where="inject.py:3 in sleep"), 3: beat()}
    ages = {r: 1.0 for r in beats}
    verdict = diagnose(beats, ages, stalled_s=11.0, timeout_s=TIMEOUT)
    assert verdict.startswith("hung: rank 2 (node7) stuck at step 2 (train) in inject.py:3 in sleep")
    assert "outside any collective while the others wait in one" in verdict
    for phase in ("eval", "checkpoint"):  # rank 0 may legitimately work alone there
        quiet = {r: beat(phase=phase, in_comm=r != 0) for r in range(4)}
        assert diagnose(quiet, ages, stalled_s=11.0, timeout_s=TIMEOUT) is None
    all_waiting = {r: beat() for r in range(4)}  # a deadlock: left to the process-group timeout
    assert diagnose(all_waiting, ages, stalled_s=11.0, timeout_s=TIMEOUT) is None


def test_finished_ranks_are_not_dead():
    beats = {0: beat(), 1: beat(state="done")}
    assert diagnose(beats, {0: 1.0, 1: 60.0}, stalled_s=60.0, timeout_s=TIMEOUT) is None


def test_progress_counts_every_mark():
    progress = Progress()
    progress.mark(1)
    progress.mark(1, "eval")
    assert (progress.count, progress.step, progress.phase) == (2, 1, "eval")


@pytest.mark.parametrize("err, expected", [
    (RuntimeError("[gloo/transport/tcp/pair.cc:545] Read error: Connection reset by peer"), True),
    (RuntimeError("shape mismatch"), False),
    (ValueError("gloo"), False),
])
def test_communication_errors_are_recognized(err, expected):
    assert is_communication_error(err) is expected
