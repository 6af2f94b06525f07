"""The one trainer, on a small regression task: it learns, checkpoints atomically (also
asynchronously) and resumes bitwise identically on CPU, stops cleanly on SIGUSR1/SIGTERM, and
stops on or skips non-finite losses and gradients."""
import csv
import os
import signal
from pathlib import Path

import pytest
import torch
from torch import nn

from orbit.config import TrainConfig
from orbit.train import checkpoint as ckpt
from orbit.train.logging import RunLogger
from orbit.parallel.checkpoint import consolidate
from orbit.parallel.engine import LocalEngine
from orbit.train.signals import PREEMPTED_EXIT_CODE, Preempted
from orbit.train.task import Task
from orbit.train.trainer import NonFiniteError, Trainer
from trainer_runs import fit


class ShuffledBatches:
    """Endless seeded batches of a fixed linear problem with a resumable position."""

    def __init__(self, seed=0, batch=16):
        gen = torch.Generator().manual_seed(123)
        self.x = torch.randn(256, 8, generator=gen)
        self.y = self.x @ torch.randn(8, 1, generator=gen) + 0.01 * torch.randn(256, 1, generator=gen)
        self.seed, self.batch, self.position = seed, batch, 0

    def __iter__(self):
        while True:
            per_epoch = len(self.x) // self.batch
            epoch, index = divmod(self.position, per_epoch)
            order = torch.randperm(len(self.x), generator=torch.Generator().manual_seed(self.seed + epoch))
            rows = order[index * self.batch:(index + 1) * self.batch]
            self.position += 1
            yield self.x[rows], self.y[rows]

    def state_dict(self):
        return {"position": self.position}

    def load_state_dict(self, state):
        self.position = state["position"]


class RegressionTask(Task):
    """`poison_at`: NaN loss from that call on; `nan_loss_at` / `inf_grad_at`: calls (= steps) whose
    loss is NaN / whose loss is finite but gradient infinite; `kill_at`, `signal_at`: the call that
    is interrupted / during which this process receives (`signum`)."""

    def __init__(self, poison_at=None, kill_at=None, nan_loss_at=(), inf_grad_at=(), signal_at=None,
                 signum=signal.SIGUSR1):
        self.poison_at, self.kill_at, self.calls = poison_at, kill_at, 0
        self.nan_loss_at, self.inf_grad_at, self.signal_at, self.signum = nan_loss_at, inf_grad_at, signal_at, signum

    def build_model(self):
        return nn.Sequential(nn.Linear(8, 32), nn.Dropout(0.1), nn.GELU(), nn.Linear(32, 1))

    def train_batches(self, dp_rank, dp_size):
        return ShuffledBatches()

    def model_inputs(self, batch):
        return (batch[0],)

    def loss(self, output, batch):
        target = batch[1]
        self.calls += 1
        if self.calls == self.kill_at:
            raise KeyboardInterrupt("simulated kill")
        if self.calls == self.signal_at:
            os.kill(os.getpid(), self.signum)
        if self.calls in self.inf_grad_at:
            output.register_hook(lambda grad: torch.full_like(grad, float("inf")))
        loss = ((output - target) ** 2).mean()
        if (self.poison_at is not None and self.calls >= self.poison_at) or self.calls in self.nan_loss_at:
            loss = loss * float("nan")
        return loss

    def evaluate(self, engine, step):
        x, y = ShuffledBatches().x, ShuffledBatches().y
        return {"scalars": {"mse": float(((engine.forward((x,)) - y) ** 2).mean())}}


def _train(run_dir, max_steps, resume_from=None, task=None, **kw):
    cfg = TrainConfig(**{"max_steps": max_steps, "lr": 1e-2, "warmup_steps": 3, "log_every": 1, "ckpt_every": 5,
                         "keep_last": 2, **kw})
    return fit(task or RegressionTask(), cfg, run_dir, resume_from)


def _losses(run_dir):
    with open(Path(run_dir) / "metrics.csv") as handle:
        return [(int(r["step"]), r["loss"]) for r in csv.DictReader(handle)]


def test_trainer_learns_and_logs(tmp_path):
    trainer, results = _train(tmp_path, 40)
    rows = _losses(tmp_path)
    assert [s for s, _ in rows] == list(range(1, 41))
    assert float(rows[-1][1]) < 0.2 * float(rows[0][1])
    assert results["scalars"]["mse"] < 0.25 * float(ShuffledBatches().y.var())
    assert (tmp_path / "tensorboard").is_dir()
    kept = [p.name for p in ckpt.list_checkpoints(tmp_path / "checkpoints")]
    assert kept == ["step_00000035", "step_00000040"]


def test_resume_is_bitwise_identical(tmp_path):
    full, partial = tmp_path / "full", tmp_path / "partial"
    ref, _ = _train(full, 20)
    with pytest.raises(KeyboardInterrupt):
        _train(partial, 20, task=RegressionTask(kill_at=13))  # killed during step 13; the newest checkpoint is step 10
    resumed, _ = _train(partial, 20, resume_from=ckpt.latest_checkpoint(partial / "checkpoints"))
    assert _losses(partial) == _losses(full)  # the CSV keeps one row per step, strings compared
    for (name, a), (_, b) in zip(ref.engine.full_state_dict().items(), resumed.engine.full_state_dict().items()):
        assert torch.equal(a, b), name


def test_grad_accumulation_matches_one_big_batch(tmp_path):
    """Two accumulated micro-batches of 16 equal one batch of 32 (same rows, same order)."""
    task = RegressionTask()
    model = task.build_model().eval()
    data = ShuffledBatches()
    it = iter(data)
    (x1, y1), (x2, y2) = next(it), next(it)
    model.zero_grad()
    for x, y in ((x1, y1), (x2, y2)):
        (((model(x) - y) ** 2).mean() / 2).backward()
    accumulated = [p.grad.clone() for p in model.parameters()]
    model.zero_grad()
    x, y = torch.cat([x1, x2]), torch.cat([y1, y2])
    ((model(x) - y) ** 2).mean().backward()
    for a, p in zip(accumulated, model.parameters()):
        torch.testing.assert_close(a, p.grad)


def test_nonfinite_loss_stops_with_step(tmp_path):
    cfg = TrainConfig(max_steps=10, log_every=1, ckpt_every=0)
    trainer = Trainer(RegressionTask(poison_at=4), cfg, tmp_path)
    logger = RunLogger(tmp_path, total_steps=10)
    with pytest.raises(NonFiniteError, match="step 4"):
        trainer.fit(logger)
    logger.close()


def test_interrupted_save_is_never_picked_up(tmp_path, monkeypatch):
    trainer, _ = _train(tmp_path, 5)  # complete checkpoint at step 5
    trainer.state.step = 6

    def killed(*args, **kwargs):
        raise KeyboardInterrupt  # a kill while the shards are being written

    monkeypatch.setattr("torch.distributed.checkpoint.save", killed)
    with pytest.raises(KeyboardInterrupt):
        trainer.save()
    assert ckpt.latest_checkpoint(tmp_path / "checkpoints").name == "step_00000005"


def test_bf16_autocast_path_runs(tmp_path):
    trainer, results = _train(tmp_path, 3, precision="bf16")
    assert torch.isfinite(torch.tensor(results["scalars"]["mse"]))


@pytest.mark.parametrize("signum", [signal.SIGUSR1, signal.SIGTERM])
def test_stop_signal_saves_and_exits_75_then_resumes_bitwise(tmp_path, signum):
    full, stopped = tmp_path / "full", tmp_path / "stopped"
    ref, _ = _train(full, 12)
    with pytest.raises(Preempted) as stop:
        _train(stopped, 12, task=RegressionTask(signal_at=7, signum=signum))  # arrives during step 7
    assert stop.value.code == PREEMPTED_EXIT_CODE == 75
    assert f"stopping at step 7 on {signal.Signals(signum).name}" in str(stop.value)
    assert ckpt.latest_checkpoint(stopped / "checkpoints").name == "step_00000007"
    assert signal.getsignal(signum) is signal.SIG_DFL  # handlers are restored after training
    resumed, _ = _train(stopped, 12, resume_from=ckpt.latest_checkpoint(stopped / "checkpoints"))
    assert _losses(stopped) == _losses(full)
    for (name, a), (_, b) in zip(ref.engine.full_state_dict().items(), resumed.engine.full_state_dict().items()):
        assert torch.equal(a, b), name


def test_async_checkpoints_equal_sync_ones_and_resume_bitwise(tmp_path):
    sync_dir, async_dir = tmp_path / "sync", tmp_path / "async"
    _train(sync_dir, 10, ckpt_every=3, keep_last=5)
    _train(async_dir, 10, ckpt_every=3, keep_last=5, async_checkpoint=True)
    names = [p.name for p in ckpt.list_checkpoints(async_dir / "checkpoints")]
    assert names == [p.name for p in ckpt.list_checkpoints(sync_dir / "checkpoints")]
    assert names == ["step_00000003", "step_00000006", "step_00000009", "step_00000010"]
    assert not [p for p in (async_dir / "checkpoints").iterdir() if ".tmp-" in p.name]
    for name in names:
        a, b = consolidate(sync_dir / "checkpoints" / name), consolidate(async_dir / "checkpoints" / name)
        assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a), name
    resumed = tmp_path / "resumed"
    resumed.mkdir()
    with open(sync_dir / "metrics.csv") as src, open(resumed / "metrics.csv", "w") as dst:
        dst.write(src.read())
    _train(resumed, 10, resume_from=async_dir / "checkpoints" / "step_00000006")  # optimizer state included
    assert _losses(resumed) == _losses(sync_dir)


def test_nonfinite_gradient_stops_naming_the_step(tmp_path):
    # finite loss; the infinite output gradient becomes NaN in the weight gradients (inf * 0)
    with pytest.raises(NonFiniteError, match=r"^the loss or the gradient norm was not finite at step 3; stopping"):
        _train(tmp_path, 6, task=RegressionTask(inf_grad_at={3}))


def test_skip_discards_the_update_counts_it_and_saves_the_count(tmp_path):
    before, _ = _train(tmp_path / "two", 2, ckpt_every=0)
    skipped, _ = _train(tmp_path / "three", 3, ckpt_every=0, nonfinite="skip", max_skipped_steps=2,
                        task=RegressionTask(inf_grad_at={3}))
    assert skipped.state.skipped_steps == 1
    for (name, a), (_, b) in zip(before.engine.full_state_dict().items(), skipped.engine.full_state_dict().items()):
        assert torch.equal(a, b), name  # step 3's update was discarded, not applied
    assert skipped.engine.optimizer.state_dict()["state"][0]["step"] == 2  # AdamW stepped twice
    assert skipped.scheduler.last_epoch == 3  # the LR schedule follows the step number
    rows = _losses(tmp_path / "three")
    assert [s for s, _ in rows] == [1, 2, 3]  # the skipped step is logged (its loss is finite here)

    run = tmp_path / "resume"
    _train(run, 6, ckpt_every=5, nonfinite="skip", max_skipped_steps=2, task=RegressionTask(nan_loss_at={2, 4}))
    resumed = Trainer(RegressionTask(), TrainConfig(max_steps=6), run)
    resumed.load(ckpt.checkpoint_path(run / "checkpoints", 5))
    assert resumed.state.skipped_steps == 2
    assert [loss for s, loss in _losses(run) if s in (2, 4)] == ["nan", "nan"]


def test_more_skipped_steps_than_allowed_stop(tmp_path):
    with pytest.raises(NonFiniteError, match=r"loss is nan and gradient norm is nan at step 5: 3 steps skipped so "
                                             r"far, more than train.max_skipped_steps=2"):
        _train(tmp_path, 10, nonfinite="skip", max_skipped_steps=2, task=RegressionTask(poison_at=3))


class EngineThatStepsItself(LocalEngine):
    """Like DeepSpeed: the gradient norm is known only once the update is applied; sync saves only."""

    grad_norm_before_step = False
    supports_async_checkpoint = False


@pytest.mark.parametrize("option, message", [
    ({"nonfinite": "skip"}, "train.nonfinite=skip is not supported by the EngineThatStepsItself engine"),
    ({"async_checkpoint": True}, "train.async_checkpoint=true is not supported by the EngineThatStepsItself"),
])
def test_options_an_engine_cannot_honour_are_refused(tmp_path, option, message):
    with pytest.raises(ValueError, match=message):
        Trainer(RegressionTask(), TrainConfig(**option), tmp_path, build_engine=EngineThatStepsItself)


def test_nonfinite_gradient_found_after_the_engine_stepped_still_stops(tmp_path):
    trainer = Trainer(RegressionTask(inf_grad_at={2}), TrainConfig(max_steps=4, ckpt_every=0), tmp_path,
                      build_engine=EngineThatStepsItself)
    logger = RunLogger(tmp_path, total_steps=4)
    with pytest.raises(NonFiniteError, match="gradient norm is nan at step 2; the update was already applied"):
        trainer.fit(logger)
    logger.close()


class CountedFlopsTask(RegressionTask):
    def train_flops_per_sample(self):
        return 3 * 2 * (8 * 32 + 32)  # fwd + bwd of the two linear layers


def test_log_rows_report_throughput_mfu_memory_and_data_wait(tmp_path):
    _train(tmp_path, 4, task=CountedFlopsTask(), peak_tflops=0.1)
    with open(tmp_path / "metrics.csv") as handle:
        rows = list(csv.DictReader(handle))
    for row in rows:
        tflops, mfu = float(row["tflops_per_device"]), float(row["mfu"])
        assert tflops > 0 and mfu == pytest.approx(tflops / 0.1)
        assert float(row["samples_per_s"]) > 0 and float(row["peak_memory_gb"]) > 0
        assert 0 <= float(row["data_wait_frac"]) <= 1
    _train(tmp_path / "no_flops", 2)  # a task that states no FLOPs logs no TFLOP/s or MFU
    with open(tmp_path / "no_flops" / "metrics.csv") as handle:
        assert all(row["tflops_per_device"] == row["mfu"] == "" for row in csv.DictReader(handle))
