"""One-device training step of ORBIT: achieved TFLOP/s, MFU, peak memory, and the kernel rates and
dispatch costs the time model's GPU profile assumes (large GEMM, flash attention, HBM copy; seconds
per in-place op on a plain tensor and on a DTensor; the AdamW step alone).

Cases, 2,048 tokens per sample (the presets' 128 x 256 grid, patch 4): the `115m` preset whole, and
slices of `1b` and `10b` (2 of their blocks, their width and heads, the 91-variable front end and
head); bf16 autocast, SDPA (flash on CUDA), torch.compile off/on, activation checkpointing off/on.
A step = forward + backward + AdamW (foreach=False, as the trainer) + zero_grad; the median of the
timed steps after warm-up. TFLOP/s = analytic training FLOPs (`orbit.models.flops`, 3 x forward;
+1 forward of the blocks under checkpointing is *not* counted, as MFU is defined) / step time.

    python benchmarks/gpu_step.py --out benchmarks/results/gpu_step          # on a GPU
    python benchmarks/gpu_step.py --tiny --out /tmp/gpu_step                  # tiny, CPU, fp32 (the tests)

Writes <out>.json and <out>.md, case by case (a run cut short keeps what it measured).
"""
from __future__ import annotations

import argparse
import json
import platform
import statistics
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

from orbit.models import create_model, get_config, model_info

PEAK_BF16 = {"H200": 989e12, "H100": 989e12, "A100": 312e12, "MI250X": 191.5e12}


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def timed(fn, device: torch.device, steps: int, warmup: int) -> list[float]:
    for _ in range(warmup):
        fn()
    _sync(device)
    out = []
    for _ in range(steps):
        start = time.perf_counter()
        fn()
        _sync(device)
        out.append(time.perf_counter() - start)
    return out


def kernel_rates(device: torch.device, dtype: torch.dtype, tiny: bool) -> dict:
    """Large GEMM FLOP/s, flash attention forward and forward+backward FLOP/s, copy bytes/s."""
    n = 256 if tiny else 8192
    a, b = torch.randn(n, n, device=device, dtype=dtype), torch.randn(n, n, device=device, dtype=dtype)
    gemm = statistics.median(timed(lambda: a @ b, device, 5, 2))
    B, h, L, d = (1, 2, 128, 32) if tiny else (4, 16, 2048, 128)
    q, k, v = (torch.randn(B, h, L, d, device=device, dtype=dtype, requires_grad=True) for _ in range(3))
    fwd = statistics.median(timed(lambda: F.scaled_dot_product_attention(q, k, v), device, 5, 2))
    both = statistics.median(timed(lambda: F.scaled_dot_product_attention(q, k, v).sum().backward(), device, 5, 2))
    x = torch.empty(2**20 if tiny else 2**30, device=device, dtype=torch.uint8)
    y = torch.empty_like(x)
    copy = statistics.median(timed(lambda: y.copy_(x), device, 5, 2))
    att = 4 * B * h * L * L * d
    return {"gemm_flops": 2 * n**3 / gemm, "attention_forward_flops": att / fwd,
            "attention_forward_backward_flops": 3 * att / both, "copy_bytes_per_s": 2 * x.numel() / copy,
            "gemm_n": n, "attention_shape": [B, h, L, d]}


def dispatch_costs(device: torch.device, ops: int = 200) -> dict:
    """Seconds per in-place op (the optimizer's kind: no autograd) on a plain tensor and on a
    replicated DTensor of a 1-rank mesh (what FSDP2 / TP make the parameters)."""
    import torch.distributed as dist
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.tensor import Replicate, distribute_tensor

    def per_op(x: torch.Tensor) -> float:
        def chain():
            for _ in range(ops):
                x.mul_(1.0)
        return min(timed(chain, device, 5, 2)) / ops

    out = {"inplace_op_s": per_op(torch.ones(4, device=device))}
    if dist.is_initialized():  # someone else's group: leave it alone
        return out
    dist.init_process_group("nccl" if device.type == "cuda" else "gloo", init_method="tcp://127.0.0.1:29517",
                            rank=0, world_size=1)
    try:
        mesh = init_device_mesh(device.type, (1,))
        out["dtensor_inplace_op_s"] = per_op(distribute_tensor(torch.ones(4, device=device), mesh, [Replicate()]))
    finally:
        dist.destroy_process_group()
    return out


def cases(tiny: bool) -> list[tuple[str, dict, int]]:
    """(name, preset overrides, batch)."""
    if tiny:
        return [("tiny", {"name": "tiny", "depth": 2}, 2)]
    return [("115m", {"name": "115m"}, 8), ("1b (2 blocks)", {"name": "1b", "depth": 2}, 8),
            ("10b (2 blocks)", {"name": "10b", "depth": 2}, 4)]


def measure_step(name: str, preset: dict, batch: int, *, compile_: bool, ac: bool, device: torch.device,
                 dtype: torch.dtype, steps: int) -> dict:
    overrides = {k: v for k, v in preset.items() if k != "name"}
    config = get_config(preset["name"], **overrides)
    model = create_model(preset["name"], **overrides).to(device)
    if ac:
        from torch.utils.checkpoint import checkpoint

        for block in model.blocks:
            block.forward = (lambda f: (lambda x: checkpoint(f, x, use_reentrant=False)))(block.forward)
    run = torch.compile(model) if compile_ else model
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4, foreach=False)
    x = torch.randn(batch, len(config.variables), *config.img_size, device=device)
    lead = torch.full((batch,), 24.0, device=device)
    target = torch.randn_like(x)

    def step():
        with torch.autocast(device.type, dtype=dtype, enabled=dtype != torch.float32):
            out = run(x, None, lead, None)
        loss = (out.float() - target).pow(2).mean()
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    start = time.perf_counter()
    step()
    _sync(device)
    first = time.perf_counter() - start
    times = timed(step, device, steps, 2)
    seconds = statistics.median(times)
    with torch.autocast(device.type, dtype=dtype, enabled=dtype != torch.float32):
        out = run(x, None, lead, None)
    (out.float() - target).pow(2).mean().backward()
    optimizer_s = statistics.median(timed(optimizer.step, device, steps, 1))
    optimizer.zero_grad(set_to_none=True)
    flops = model_info(config)["flops_per_sample_train"] * batch
    peak = next((v for k, v in PEAK_BF16.items() if device.type == "cuda" and k in torch.cuda.get_device_name()), None)
    return {"case": name, "preset": preset["name"], "depth": config.depth, "width": config.embed_dim,
            "heads": config.num_heads, "tokens": config.num_tokens, "batch": batch, "compile": compile_,
            "activation_checkpointing": ac, "step_s": seconds, "first_step_s": first, "optimizer_s": optimizer_s,
            "param_tensors": len(list(model.parameters())),
            "tflops": flops / seconds / 1e12, "mfu": flops / seconds / peak if peak else None,
            "peak_memory_gib": torch.cuda.max_memory_allocated(device) / 2**30 if device.type == "cuda" else None}


def markdown(result: dict) -> str:
    k = result["kernels"]
    lines = [f"# One-device ORBIT step ({result['device']})", "",
             f"- command: `{result['command']}`; torch {result['torch']}; precision {result['precision']}",
             f"- kernels: {k['gemm_n']}^3 GEMM {k['gemm_flops'] / 1e12:.1f} TFLOP/s; SDPA {k['attention_shape']} "
             f"forward {k['attention_forward_flops'] / 1e12:.1f}, forward+backward "
             f"{k['attention_forward_backward_flops'] / 1e12:.1f} TFLOP/s; copy {k['copy_bytes_per_s'] / 1e12:.2f} TB/s",
             "- dispatch: " + ", ".join(f"{name} {1e6 * value:.1f} us" for name, value in result["dispatch"].items()),
             "", "| case | batch | compile | AC | step s | TFLOP/s | MFU | peak GiB | first step s | AdamW step s "
             "(param tensors) |", "|---|---|---|---|---|---|---|---|---|---|"]
    for r in result["steps"]:
        mfu = f"{r['mfu']:.1%}" if r["mfu"] is not None else "-"
        mem = f"{r['peak_memory_gib']:.1f}" if r["peak_memory_gib"] is not None else "-"
        lines.append(f"| {r['case']} | {r['batch']} | {'on' if r['compile'] else 'off'} | "
                     f"{'on' if r['activation_checkpointing'] else 'off'} | {r['step_s']:.4f} | {r['tflops']:.1f} | "
                     f"{mfu} | {mem} | {r['first_step_s']:.1f} | {r['optimizer_s']:.4f} ({r['param_tensors']}) |")
    lines += [f"- failed: {e}" for e in result["errors"]]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", required=True, help="path prefix of the .json and .md written")
    parser.add_argument("--tiny", action="store_true", help="tiny model, CPU, fp32, one timed step (tests)")
    parser.add_argument("--steps", type=int, default=5)
    parser.add_argument("--no-compile", action="store_true", help="skip the torch.compile cases")
    args = parser.parse_args(argv)
    if args.steps < 1:
        parser.error(f"--steps must be >= 1, got {args.steps}")
    cuda = torch.cuda.is_available() and not args.tiny
    device = torch.device("cuda" if cuda else "cpu")
    dtype = torch.bfloat16 if cuda else torch.float32
    steps = 1 if args.tiny else args.steps
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    result = {"device": torch.cuda.get_device_name() if cuda else platform.processor() or "cpu",
              "torch": torch.__version__, "precision": "bf16" if cuda else "fp32",
              "command": " ".join(["python benchmarks/gpu_step.py", *(argv if argv is not None else sys.argv[1:])]),
              "kernels": kernel_rates(device, dtype, args.tiny), "dispatch": dispatch_costs(device),
              "steps": [], "errors": []}
    variants = [(False, False), (False, True)] + ([] if args.no_compile or args.tiny else [(True, False)])
    for name, preset, batch in cases(args.tiny):
        for compile_, ac in variants:
            try:
                result["steps"].append(measure_step(name, preset, batch, compile_=compile_, ac=ac, device=device,
                                                    dtype=dtype, steps=steps))
            except Exception as err:  # keep the other cases (e.g. a compile failure)
                result["errors"].append(f"{name} compile={compile_} ac={ac}: {type(err).__name__}: {err}")
            out.with_name(out.name + ".json").write_text(json.dumps(result, indent=1))
            out.with_name(out.name + ".md").write_text(markdown(result))
            if cuda:
                torch.cuda.empty_cache()
    print(markdown(result))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
