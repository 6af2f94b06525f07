"""Run the one trainer in-process on a task, optionally resuming, as the runner does (test helper)."""
from orbit.train.logging import RunLogger
from orbit.train.trainer import Trainer


def fit(task, cfg, run_dir, resume_from=None):
    """(trainer, final evaluation) of `task` trained with `cfg` in `run_dir`, resumed from `resume_from`."""
    trainer = Trainer(task, cfg, run_dir)
    if resume_from:
        trainer.load(resume_from)
    logger = RunLogger(run_dir, resumed_step=trainer.state.step, total_steps=trainer.total_steps)
    try:
        results = trainer.fit(logger)
    finally:
        logger.close()
    return trainer, results
