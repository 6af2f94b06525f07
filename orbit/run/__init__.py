"""Run orchestration: a run directory from a config (`runner`), scoring a trained run (`evaluate`),
and the figures both write (`plots`)."""
