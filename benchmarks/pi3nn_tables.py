"""Merge the `uci_table.json` of one or more `orbit uq benchmark --suite uci` runs (e.g. the six sets
run as two halves in parallel) into one Markdown table, in the suite's format.

    python benchmarks/pi3nn_tables.py RUN_A RUN_B > table.md
"""
import json
import sys
from pathlib import Path

from orbit.plugins.pi3nn.benchmark import UCI_SETS, format_suite


def main(run_dirs: list[str]) -> str:
    results = {}
    for run in run_dirs:
        results.update(json.loads((Path(run) / "uci_table.json").read_text()))
    ordered = {name: results[name] for name in UCI_SETS if name in results}
    return format_suite(ordered)


if __name__ == "__main__":
    print(main(sys.argv[1:]), end="")
