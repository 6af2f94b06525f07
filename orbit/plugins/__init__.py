"""Plug-ins: one package per model family and its tasks, registered when imported
(`orbit.registry.load_plugins` imports every package here). `regression/` is the worked example of
a plug-in; orbit/train/template.py the commented skeleton of a task."""
