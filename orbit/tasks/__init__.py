"""The ORBIT tasks: each wires data, a model, a loss and an evaluation for the one trainer
(contract: orbit/train/task.py) and registers itself (orbit/registry.py) when imported."""
from orbit.tasks import downscale, elm_spinup, forecast, pretrain  # noqa: F401  (registers the tasks)
