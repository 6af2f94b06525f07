"""Land-model calibration plug-in: DBUQ amortized posterior sampling (task "dbuq"), emulators with output
dimension reduction (task "land_emulator"), and the surrogate + MCMC and neural posterior baselines.
docs/dbuq.md describes the method, the commands and the verification."""
from . import emulator, model, task  # noqa: F401  (importing registers the families and the tasks)
