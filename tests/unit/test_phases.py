"""Training phases (Task.phases): each phase updates only its modules with its own settings and loss,
a later phase's target may come from an earlier phase's network, and a run resumes inside any phase
(or at a boundary) exactly as if never interrupted; evaluation can run with gradients."""
import csv
from pathlib import Path

import pytest
import torch
from torch import nn

from orbit.config import TrainConfig
from orbit.train import checkpoint as ckpt
from orbit.train.task import Phase, Task
from orbit.train.trainer import Trainer
from trainer_runs import fit


class Batches:
    def __init__(self):
        gen = torch.Generator().manual_seed(0)
        self.x = torch.randn(128, 4, generator=gen)
        self.y = self.x.sum(dim=1, keepdim=True) + 0.3 * torch.randn(128, 1, generator=gen)
        self.position = 0

    def __iter__(self):
        while True:
            rows = torch.arange(self.position * 16, self.position * 16 + 16) % len(self.x)
            self.position += 1
            yield self.x[rows], self.y[rows]

    def state_dict(self):
        return {"position": self.position}

    def load_state_dict(self, state):
        self.position = state["position"]


class TwoNets(nn.Module):
    def __init__(self):
        super().__init__()
        self.mean, self.spread = nn.Linear(4, 1), nn.Linear(4, 1)

    def forward(self, x):
        return self.mean(x), self.spread(x)


class MeanThenSpread(Task):
    """Phase 1 fits the mean; phase 2 fits |y - mean(x)| with the mean network's output as target."""

    evaluate_with_grad = True

    def __init__(self, kill_at=None):
        self.kill_at, self.calls = kill_at, 0

    def build_model(self):
        return TwoNets()

    def train_batches(self, dp_rank, dp_size):
        return Batches()

    def model_inputs(self, batch):
        return (batch[0],)

    def _count(self):
        self.calls += 1
        if self.calls == self.kill_at:
            raise KeyboardInterrupt("simulated kill")

    def loss(self, output, batch):  # the phases' default (the mean phase names no loss of its own)
        self._count()
        return ((output[0] - batch[1]) ** 2).mean()

    def spread_loss(self, output, batch):
        self._count()
        return ((output[1] - (batch[1] - output[0].detach()).abs()) ** 2).mean()

    def phases(self, train_cfg):
        return [Phase("mean", 6, modules=("mean",)),
                Phase("spread", 8, modules=("spread",), lr=5e-2, warmup_steps=0, loss=self.spread_loss)]

    def evaluate(self, engine, step):
        x = Batches().x.requires_grad_(True)
        engine.forward((x,))[0].sum().backward()  # e.g. a gradient-based explanation
        return {"scalars": {"input_grad_norm": float(x.grad.norm())}}


def _train(run_dir, task=None, resume_from=None):
    cfg = TrainConfig(max_steps=1, lr=1e-2, warmup_steps=2, log_every=1, ckpt_every=3, keep_last=10)
    return fit(task or MeanThenSpread(), cfg, run_dir, resume_from)


def _rows(run_dir):
    with open(Path(run_dir) / "metrics.csv") as handle:
        return [(int(r["step"]), r["phase"], r["loss"], r["lr"]) for r in csv.DictReader(handle)]


def _params(trainer):
    return {k: v.clone() for k, v in trainer.engine.full_state_dict().items()}


def test_each_phase_trains_only_its_modules(tmp_path):
    initial = _params(Trainer(MeanThenSpread(), TrainConfig(max_steps=1), tmp_path / "init"))
    first, _ = _train(tmp_path / "a", task=MeanOnly())
    after_mean = _params(first)
    assert not torch.equal(after_mean["mean.weight"], initial["mean.weight"])
    assert torch.equal(after_mean["spread.weight"], initial["spread.weight"])
    full, results = _train(tmp_path / "b")
    final = _params(full)
    assert torch.equal(final["mean.weight"], after_mean["mean.weight"])  # phase 2 leaves the mean alone
    assert not torch.equal(final["spread.weight"], initial["spread.weight"])
    rows = _rows(tmp_path / "b")
    assert [r[1] for r in rows] == ["mean"] * 6 + ["spread"] * 8
    assert 4e-2 < float(rows[6][3]) <= 5e-2  # the spread phase's own LR (the LR after the step), no warm-up
    assert results["scalars"]["input_grad_norm"] > 0  # evaluation ran with gradients


class MeanOnly(MeanThenSpread):
    """The mean phase alone (the same first six steps)."""

    def phases(self, train_cfg):
        return super().phases(train_cfg)[:1]


@pytest.mark.parametrize("kill_at", [5, 8, 11])  # inside phase 1, just after the boundary, inside phase 2
def test_resume_inside_any_phase_is_bitwise_identical(tmp_path, kill_at):
    reference, _ = _train(tmp_path / "full")
    with pytest.raises(KeyboardInterrupt):
        _train(tmp_path / "killed", task=MeanThenSpread(kill_at=kill_at))
    latest = ckpt.latest_checkpoint(tmp_path / "killed" / "checkpoints")
    resumed, _ = _train(tmp_path / "killed", resume_from=latest)
    assert _rows(tmp_path / "killed") == _rows(tmp_path / "full")
    for (name, a), (_, b) in zip(_params(reference).items(), _params(resumed).items()):
        assert torch.equal(a, b), name


def test_a_phase_naming_no_module_of_the_model_is_refused(tmp_path):
    class Misnamed(MeanThenSpread):
        def phases(self, train_cfg):
            return [Phase("bounds", 2, modules=("upper",))]

    with pytest.raises(ValueError, match=r"phase 'bounds' trains modules \['upper'\].*\['mean', 'spread'\]"):
        Trainer(Misnamed(), TrainConfig(max_steps=1), tmp_path)
