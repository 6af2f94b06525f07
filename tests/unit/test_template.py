"""The task template is a working task: it trains through the one trainer and beats its baseline."""
from types import SimpleNamespace

from orbit.config import TrainConfig
from orbit.train.template import TemplateDataConfig, TemplateModelConfig, TemplateTask
from trainer_runs import fit


def test_the_template_trains_and_beats_the_training_mean(tmp_path):
    train = TrainConfig(max_steps=60, lr=1e-2, warmup_steps=5, ckpt_every=0)
    cfg = SimpleNamespace(train=train, data=TemplateDataConfig(batch_size=16), model=TemplateModelConfig())
    _, results = fit(TemplateTask(cfg), train, tmp_path)
    assert results["scalars"]["mse"] < 0.2 * results["scalars"]["mse_train_mean"]
