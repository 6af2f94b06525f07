"""The import rules of ../shared/DESIGN.md, read from the source: the engine knows no model, the
generic config no task, the trainer no task or CLI, the architecture no data/trainer/engine."""
import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[2] / "orbit"


def _imports(path: Path) -> set[str]:
    names = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom):
            if node.level:  # relative: resolve against the module's package
                base = ".".join(path.relative_to(PACKAGE.parent).with_suffix("").parts[:-node.level])
                names.add(f"{base}.{node.module}" if node.module else base)
            else:
                names.add(node.module)
    return {n for n in names if n == "orbit" or n.startswith("orbit.")}


def _violations(files, forbidden) -> list[str]:
    return [f"{path.relative_to(PACKAGE.parent)} imports {name}" for path in files for name in sorted(_imports(path))
            if any(name == f or name.startswith(f + ".") for f in forbidden)]


RULES = {
    "parallel imports no model, task, plug-in, data, trainer or orchestration": (
        "parallel/**/*.py", ("orbit.models", "orbit.tasks", "orbit.plugins", "orbit.data", "orbit.train", "orbit.run",
                             "orbit.cli", "orbit.perf")),
    "config imports no task or plug-in": ("config.py", ("orbit.tasks", "orbit.plugins", "orbit.run")),
    "the registry imports nothing of orbit": ("registry.py", ("orbit",)),
    "train knows no task, plug-in or CLI": ("train/**/*.py", ("orbit.tasks", "orbit.plugins", "orbit.cli", "orbit.run")),
    "data imports no model, trainer or engine": ("data/**/*.py", ("orbit.models", "orbit.train", "orbit.parallel")),
}


@pytest.mark.parametrize("rule", sorted(RULES))
def test_import_rule(rule):
    pattern, forbidden = RULES[rule]
    assert not _violations(sorted(PACKAGE.glob(pattern)), forbidden)


def test_models_reach_the_engine_only_through_their_plans():
    """Architecture modules import no engine, data or trainer; a family's `*_parallel.py` plan module may
    use the engine's model-agnostic tools."""
    architecture = [p for p in PACKAGE.glob("models/**/*.py") if not p.name.endswith("_parallel.py")
                    and p.name != "families.py"]
    assert not _violations(architecture, ("orbit.parallel", "orbit.data", "orbit.train", "orbit.tasks"))
    plans = list(PACKAGE.glob("models/**/*_parallel.py"))
    assert plans and not _violations(plans, ("orbit.data", "orbit.train", "orbit.tasks"))


def test_a_broken_plugin_is_named_but_does_not_stop_other_tasks(monkeypatch):
    from orbit import registry

    monkeypatch.setattr(registry, "BROKEN_PLUGINS", {"orbit.plugins.broken": "ImportError: no module named x"})
    assert registry.get_task("pretrain").name == "pretrain"
    with pytest.raises(ValueError, match=r"unknown task 'brokn'.*plug-in orbit.plugins.broken failed to import "
                                         r"\(ImportError: no module named x\)"):
        registry.get_task("brokn")
