"""train.select_best: the trainer keeps, per phase, the state of the best evaluation and restores it at the
phase's end; the choice survives a resume; a key the task does not report stops the run before any step."""
import pytest
import torch
from torch import nn

from orbit.config import ConfigError, TrainConfig, load_config
from orbit.train import checkpoint as ckpt
from orbit.train.task import Phase, Task
from test_phases import Batches  # tests/unit is on sys.path under pytest
from trainer_runs import fit

PHASE_STEPS = {"a": 40, "b": 40}
BEST_AT = {"a": 20, "b": 70}  # the step where each phase's validation metric is smallest


class TwoPhaseTask(Task):
    """Modules `a` then `b`, one phase each; the evaluation reports `score_<phase>` = distance of the
    step from that phase's known best step, and remembers the weights it saw at every step."""

    def __init__(self, kill_at=None):
        self.seen, self.calls, self.kill_at = {}, 0, kill_at

    def build_model(self):
        class Net(nn.Module):
            def __init__(self):
                super().__init__()
                self.a, self.b = nn.Linear(4, 1), nn.Linear(4, 1)

            def forward(self, x):
                return self.a(x) + self.b(x)

        return Net()

    def train_batches(self, dp_rank, dp_size):
        return Batches()

    def model_inputs(self, batch):
        return (batch[0],)

    def loss(self, output, batch):
        self.calls += 1
        if self.calls == self.kill_at:
            raise KeyboardInterrupt("simulated kill")
        return ((output - batch[1]) ** 2).mean()

    def phases(self, train_cfg):
        return [Phase(name, steps, (name,)) for name, steps in PHASE_STEPS.items()]

    def evaluate(self, engine, step):
        # the first evaluation of a step: at a phase's end, the one before the restore
        self.seen.setdefault(step, {k: v.clone() for k, v in engine.full_state_dict().items()})
        return {"scalars": {f"score_{name}": float(abs(step - best)) for name, best in BEST_AT.items()}}


def _cfg(**kw):
    return TrainConfig(**{"max_steps": 40, "lr": 1e-2, "warmup_steps": 0, "log_every": 10, "eval_every": 10,
                          "ckpt_every": 10, "keep_last": 1, "select_best": "score_{phase}", **kw})


def _params_of(engine):
    return {k: v.clone() for k, v in engine.full_state_dict().items()}


def _params(trainer):
    return _params_of(trainer.engine)


@pytest.mark.parametrize("async_checkpoint", [False, True])
def test_each_phase_ends_with_the_state_of_its_best_step(tmp_path, async_checkpoint):
    task = TwoPhaseTask()
    trainer, results = fit(task, _cfg(async_checkpoint=async_checkpoint), tmp_path)
    assert results["selected"] == {"a": {"metric": "score_a", "value": 0.0, "step": 20},
                                   "b": {"metric": "score_b", "value": 0.0, "step": 70}}
    final = _params(trainer)
    for name in ("a.weight", "a.bias"):  # module a as at step 20, not step 40
        assert torch.equal(final[name], task.seen[20][name])
        assert not torch.equal(final[name], task.seen[40][name])
    for name in ("b.weight", "b.bias"):
        assert torch.equal(final[name], task.seen[70][name])
        assert not torch.equal(final[name], task.seen[80][name])
    assert torch.equal(task.seen[60]["a.weight"], task.seen[20]["a.weight"])  # phase b started from a's best
    kept = sorted(p.name for p in (tmp_path / "checkpoints").iterdir())
    assert kept == ["step_00000080"]  # best states pruned once restored


def test_max_mode_and_a_single_phase(tmp_path):
    class Single(TwoPhaseTask):
        def phases(self, train_cfg):
            return [Phase("train", train_cfg.max_steps)]

        def evaluate(self, engine, step):
            super().evaluate(engine, step)
            return {"scalars": {"acc": -abs(step - 30)}}

    task = Single()
    trainer, results = fit(task, _cfg(max_steps=50, select_best="acc", select_mode="max"), tmp_path)
    assert results["selected"]["train"]["step"] == 30
    assert all(torch.equal(v, task.seen[30][k]) for k, v in _params(trainer).items())


def test_training_selects_on_validate_and_evaluates_once_after_the_restore(tmp_path):
    """A task with a cheap `validate`: every periodic and phase-end look (and the key check before step 0)
    goes to it; the full `evaluate` runs once, on the restored state."""
    class Validated(TwoPhaseTask):
        def __init__(self):
            super().__init__()
            self.validated, self.evaluated = [], []

        def validate(self, engine, step):
            self.validated.append(step)
            return super().evaluate(engine, step)

        def evaluate(self, engine, step):
            self.evaluated.append((step, _params_of(engine)))
            return {"scalars": {"test_score": 1.0}}

    task = Validated()
    trainer, results = fit(task, _cfg(), tmp_path)
    assert task.validated == [0, 10, 20, 30, 40, 50, 60, 70, 80]
    assert [step for step, _ in task.evaluated] == [80]
    assert all(torch.equal(v, task.seen[70][k]) for k, v in task.evaluated[0][1].items() if k.startswith("b."))
    assert results["scalars"] == {"test_score": 1.0} and results["selected"]["b"]["step"] == 70


def test_resume_keeps_the_best_state_and_value(tmp_path):
    reference, _ = fit(TwoPhaseTask(), _cfg(), tmp_path / "whole")
    with pytest.raises(KeyboardInterrupt):  # killed at step 75, resumed from the checkpoint of step 70
        fit(TwoPhaseTask(kill_at=75), _cfg(), tmp_path / "cut")
    latest = ckpt.latest_checkpoint(tmp_path / "cut" / "checkpoints")
    assert latest.name == "step_00000070"
    trainer, results = fit(TwoPhaseTask(), _cfg(), tmp_path / "cut", resume_from=latest)
    assert results["selected"]["a"]["step"] == 20 and results["selected"]["b"]["step"] == 70
    assert all(torch.equal(v, _params(reference)[k]) for k, v in _params(trainer).items())


def test_resume_after_the_best_step_restores_it_from_disk(tmp_path):
    """Phase a's best (step 20) lies before the checkpoint resumed from (30): only its saved state has it."""
    with pytest.raises(KeyboardInterrupt):
        fit(TwoPhaseTask(kill_at=35), _cfg(), tmp_path)
    latest = ckpt.latest_checkpoint(tmp_path / "checkpoints")
    assert latest.name == "step_00000030" and (tmp_path / "checkpoints" / "best_00000020").is_dir()
    task = TwoPhaseTask()
    trainer, results = fit(task, _cfg(), tmp_path, resume_from=latest)
    assert results["selected"]["a"] == {"metric": "score_a", "value": 0.0, "step": 20}
    assert 20 not in task.seen  # the resumed run never saw step 20, yet module a ends there:
    reference, _ = fit(TwoPhaseTask(), _cfg(), tmp_path / "whole")
    assert all(torch.equal(v, _params(reference)[k]) for k, v in _params(trainer).items())


def test_unknown_metric_key_stops_before_the_first_step(tmp_path):
    task = TwoPhaseTask()
    with pytest.raises(ValueError, match=r"train.select_best='val_loss'.*\['score_a', 'score_b'\]"):
        fit(task, _cfg(select_best="val_loss"), tmp_path)
    assert task.calls == 0


def test_config_checks_mode_and_eval_every():
    with pytest.raises(ConfigError, match="needs train.eval_every >= 1"):
        load_config(None, ["task=regression", "train.select_best=val_rmse", "train.eval_every=0"])
    with pytest.raises(ConfigError, match="select_mode='best'"):
        load_config(None, ["task=regression", "train.select_mode=best"])
    with pytest.raises(ConfigError, match="only \\{phase\\}"):
        load_config(None, ["task=regression", "train.select_best=val_{step}", "train.eval_every=5"])
