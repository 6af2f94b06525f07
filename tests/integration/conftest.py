"""Shared toy-Earth stores for the end-to-end CLI tests (generated once per session)."""
import pytest

from orbit.cli import main


@pytest.fixture(scope="session")
def toy_root(tmp_path_factory):
    root = tmp_path_factory.mktemp("toy")
    assert main(["data", "synth", "--root", str(root), "--sources", "cmip_a", "cmip_b", "--years", "1990",
                 "1991", "--train-years", "1990", "1990", "--grid", "16x32"]) == 0
    return root
