"""Simulators that make the built-in data: the toy Earth (`toy_earth`), the fine-scale fields of the
downscaling task (`fine_scale`) and the toy land carbon/nitrogen model (`land_model`)."""
