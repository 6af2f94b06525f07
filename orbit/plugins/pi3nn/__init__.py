"""PI3NN prediction intervals (Liu et al., ICLR 2022): the model family "pi3nn" and the task "pi3nn".

See `orbit/plugins/pi3nn/intervals.py` for the equations and the paper's choices, `task.py` for how the
three networks are trained as three phases of the one trainer, and `benchmark.py` for `orbit uq benchmark`
(which trains PI3NN through the same trainer: `trained.py`).
"""
from . import model, task  # noqa: F401  (importing registers the family and the task)
