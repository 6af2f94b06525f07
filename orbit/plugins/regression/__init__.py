"""The regression plug-in: the MLP model family "mlp" and the task "regression", the smallest
complete example of a model trained by the orbit trainer and CLI (see orbit/train/template.py)."""
from . import model, task  # noqa: F401  (importing registers the family and the task)
