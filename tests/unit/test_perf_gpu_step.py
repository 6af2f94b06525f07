"""benchmarks/gpu_step.py at tiny size on the CPU: it writes its JSON and Markdown with a step per
variant, and rejects a bad --steps."""
import importlib.util
import json
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[2] / "benchmarks" / "gpu_step.py"


@pytest.fixture(scope="module")
def gpu_step():
    spec = importlib.util.spec_from_file_location("gpu_step", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_tiny_step_writes_results(gpu_step, tmp_path, capsys):
    assert gpu_step.main(["--tiny", "--out", str(tmp_path / "step")]) == 0
    data = json.loads((tmp_path / "step.json").read_text())
    assert not data["errors"] and data["precision"] == "fp32"
    assert [(r["compile"], r["activation_checkpointing"]) for r in data["steps"]] == [(False, False), (False, True)]
    assert all(r["step_s"] > 0 and r["tflops"] > 0 and r["tokens"] == 128 for r in data["steps"])
    assert data["kernels"]["gemm_flops"] > 0
    assert data["dispatch"]["inplace_op_s"] > 0 and data["dispatch"]["dtensor_inplace_op_s"] > 0
    assert all(r["optimizer_s"] > 0 and r["param_tensors"] > 10 for r in data["steps"])
    assert "| tiny | 2 | off | on |" in (tmp_path / "step.md").read_text()


def test_bad_steps_is_rejected(gpu_step, tmp_path, capsys):
    with pytest.raises(SystemExit):
        gpu_step.main(["--tiny", "--out", str(tmp_path / "x"), "--steps", "0"])
    assert "--steps must be >= 1, got 0" in capsys.readouterr().err
