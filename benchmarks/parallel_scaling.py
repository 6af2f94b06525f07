"""Parallel scaling benchmark of the Hybrid-STOP engine: a thin wrapper over `orbit bench`.

For layouts of 1-8 gloo ranks and two small ORBIT sizes it measures step time, samples/s,
tokens/s, TFLOPS per rank, MFU, peak memory per rank, bytes sent per step on each mesh axis
(counted at the process groups, next to the analytic bytes) and the per-rank bytes of parameters,
gradients and AdamW state against the ideal 1/N; then strong and weak scaling sweeps. Writes
benchmarks/results/parallel_scaling.md and .png (see orbit/parallel/benchmark*.py):

    .venv/bin/python benchmarks/parallel_scaling.py [--sizes d128] [--world-sizes 1 2 4] [--steps 3]
"""
import sys

from orbit.cli import main

if __name__ == "__main__":
    args = sys.argv[1:]
    raise SystemExit(main(["bench", *args, "--command-line", " ".join(["python benchmarks/parallel_scaling.py", *args])]))
