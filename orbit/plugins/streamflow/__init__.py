"""The streamflow plug-in: rainfall-runoff model families ("lstm", "geo_lstm", "lstm_ed", "tst",
"imv_lstm") and the task "streamflow" on CAMELS-US or synthetic basins; explanations in explain.py
(`orbit explain`). See docs/streamflow.md."""
from . import models, task  # noqa: F401  (importing registers the families and the task)
