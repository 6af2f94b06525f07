"""The one trainer, on a small regression task: it learns, checkpoints atomically and resumes
bitwise identically on CPU."""
import csv
from pathlib import Path

import pytest
import torch
from torch import nn

from orbit.config import TrainConfig
from orbit.train import checkpoint as ckpt
from orbit.train.logging import RunLogger
from orbit.train.trainer import NonFiniteLossError, Trainer


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


class RegressionTask:
    def __init__(self, poison_at=None, kill_at=None):
        self.poison_at, self.kill_at, self.calls = poison_at, kill_at, 0

    def build_model(self):
        return nn.Sequential(nn.Linear(8, 32), nn.Dropout(0.1), nn.GELU(), nn.Linear(32, 1))

    def train_batches(self, dp_rank, dp_size):
        return ShuffledBatches()

    def model_inputs(self, batch):
        return (batch[0],)

    def target(self, batch):
        return batch[1]

    def loss_fn(self, output, target):
        self.calls += 1
        if self.calls == self.kill_at:
            raise KeyboardInterrupt("simulated kill")
        loss = ((output - target) ** 2).mean()
        if self.poison_at is not None and self.calls >= self.poison_at:
            loss = loss * float("nan")
        return loss

    def evaluate(self, engine, step):
        x, y = ShuffledBatches().x, ShuffledBatches().y
        return {"scalars": {"mse": float(((engine.forward((x,)) - y) ** 2).mean())}}


def _train(run_dir, max_steps, resume_from=None, kill_at=None, **kw):
    cfg = TrainConfig(max_steps=max_steps, lr=1e-2, warmup_steps=3, log_every=1, ckpt_every=5,
                      keep_last=2, **kw)
    trainer = Trainer(RegressionTask(kill_at=kill_at), cfg, run_dir)
    if resume_from:
        trainer.load(resume_from)
    logger = RunLogger(run_dir, resumed_step=trainer.state.step, total_steps=max_steps)
    results = trainer.fit(logger)
    logger.close()
    return trainer, results


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
        _train(partial, 20, kill_at=13)  # killed during step 13; the newest checkpoint is step 10
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
    with pytest.raises(NonFiniteLossError, match="step 4"):
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
