"""The `orbit` command. Subcommands only parse arguments and call library functions."""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path


def _grid(text: str) -> tuple[int, int]:
    try:
        height, width = (int(v) for v in text.lower().split("x"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"grid must look like 32x64 (lat x lon), got {text!r}") from None
    return height, width


def _rename(text: str) -> tuple[str, str]:
    source, sep, target = text.partition("=")
    if not sep or not source or not target:
        raise argparse.ArgumentTypeError(f"--rename takes SOURCE=ORBIT pairs such as air=t2m, got {text!r}")
    return source, target


def _years(values: list[int]) -> tuple[int, int]:
    return int(values[0]), int(values[1])


# --------------------------------------------------------------------------- subcommands


def cmd_synth(args) -> int:
    from orbit.synthetic.toy_earth import synthesize

    paths = synthesize(args.root, sources=args.sources, years=_years(args.years), grid=args.grid,
                       seed=args.seed, train_years=_years(args.train_years), overwrite=args.overwrite,
                       progress=True)
    for source, path in paths.items():
        print(f"{source}: {path}")
    return 0


def cmd_convert(args) -> int:
    from orbit.data.convert import convert
    from orbit.data.readers import read_variable_map

    rename = {**(read_variable_map(args.variable_map) if args.variable_map else {}), **dict(args.rename)}
    path = convert(args.inputs, args.output, fmt=args.format, grid=args.grid, variables=args.variables,
                   levels=args.levels, source=args.source,
                   train_years=_years(args.train_years) if args.train_years else None,
                   overwrite=args.overwrite, method=args.method, allow_regional=args.regional,
                   time=tuple(args.time) if args.time else None, rename=rename, progress=True)
    print(path)
    return 0


def cmd_elm(args) -> int:
    from orbit.data.elm_dataset import write_dataset

    path = write_dataset(args.out, overwrite=args.overwrite, grid=args.grid, seed=args.seed, tol=args.tol,
                         max_years=args.max_years, holdout=args.holdout, validation=args.validation,
                         block=args.block, buffer=args.buffer, site_copies=args.site_copies)
    print(path)
    return 0


def cmd_downscale_data(args) -> int:
    from orbit.synthetic.fine_scale import synthesize

    path = synthesize(args.out, source=args.source, years=_years(args.years),
                      train_years=_years(args.train_years) if args.train_years else None,
                      coarse_grid=args.coarse_grid, scale=args.scale, seed=args.seed, step_hours=args.step_hours,
                      overwrite=args.overwrite)
    print(path)
    return 0


def cmd_train(args) -> int:
    from orbit.config import load_config
    from orbit.run.runner import run_training

    import torch.distributed as dist

    if args.command == "pretrain":
        cfg = load_config(args.config, [*args.overrides, "task=pretrain"])
    elif args.command == "train":  # any registered task, the plug-ins' included
        cfg = load_config(args.config, [*args.overrides, *([f"finetune.init={args.init}"] if args.init else [])])
    else:  # finetune: the config names the task; --init the pretrained checkpoint (none: from scratch)
        cfg = load_config(args.config, [*args.overrides, *([f"finetune.init={args.init}"] if args.init else [])])
        if cfg.task == "pretrain":
            raise ValueError(f"config {args.config!r} is a pretraining config (task: pretrain); use `orbit pretrain`, "
                             f"or give a fine-tuning config (configs/finetune/<task>/...)")
    try:
        run_training(cfg, run_dir=args.run_dir, resume=args.resume)
    finally:
        if dist.is_initialized():
            dist.destroy_process_group()
    return 0


def cmd_evaluate(args) -> int:
    from orbit.run.evaluate import run_evaluation

    import torch.distributed as dist

    try:
        run_evaluation(args.run_dir, checkpoint=args.checkpoint, out_dir=args.out, fmt=args.format,
                       overrides=args.overrides)
    finally:
        if dist.is_initialized():
            dist.destroy_process_group()
    return 0


def cmd_info(args) -> int:
    from orbit.config import parse_overrides
    from orbit.models.flops import model_info
    from orbit.models.registry import get_config

    config = get_config(args.model, **parse_overrides(args.overrides))
    print(json.dumps(model_info(config), indent=2))
    return 0


def cmd_plan(args) -> int:
    from orbit.config import load_config
    from orbit.perf.plan import Cluster, format_plan, parse_memory, plan

    if args.search:
        return _plan_search(args)
    cluster = Cluster(args.nodes, args.gpus_per_node, parse_memory(args.gpu_memory), headroom=args.headroom)
    result = plan(load_config(args.config, args.overrides), cluster, grid=args.grid, top=args.top,
                  always_suggest=args.suggest, flash_attention=not args.math_attention)
    print(format_plan(result))
    return 0 if result.fits else 1


def _plan_search(args) -> int:
    from orbit.config import load_config
    from orbit.perf.devices import get_system
    from orbit.perf.planner import format_search, search_config, search_json

    cfg = load_config(args.config, args.overrides)
    result = search_config(cfg, get_system(args.system, cfg.train.precision), args.nodes, grid=args.grid,
                           top=args.top, flash_attention=not args.math_attention, headroom=args.headroom)
    print(json.dumps(search_json(result), indent=1) if args.json else format_search(result))
    return 0 if result["ranked"] else 1


def cmd_bench(args) -> int:
    from orbit.perf.benchmark_report import run_scaling_benchmark

    command = "orbit bench " + " ".join(sys.argv[2:]) if args.command_line is None else args.command_line
    md, png = run_scaling_benchmark(args.sizes, args.world_sizes, args.steps, args.out, command=command,
                                    predict=args.predict, calibration_path=args.calibration)
    print(md.read_text())
    print(f"wrote {md} and {png}")
    return 0


def cmd_explain(args) -> int:
    from orbit.plugins.streamflow.explain_run import run_explain

    result = run_explain(args.run_dir, methods=args.methods, samples=args.samples, lead=args.lead, out_dir=args.out)
    print(json.dumps({k: v for k, v in result.items() if k.endswith(("importance", "completeness", "checks"))}, indent=1))
    return 0


def cmd_dbuq(args) -> int:
    from orbit.plugins.dbuq.cli import main as dbuq_main

    return dbuq_main(["--help"] if args.dbuq_help else args.dbuq_args)


def cmd_uq_benchmark(args) -> int:
    from orbit.plugins.pi3nn.benchmark import main as uq_benchmark

    return uq_benchmark(args)


# --------------------------------------------------------------------------- parser


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="orbit", description="ORBIT Earth-system foundation models")
    sub = parser.add_subparsers(dest="command", required=True)

    data = sub.add_parser("data", help="make or convert zarr stores").add_subparsers(dest="data_command",
                                                                                   required=True)
    synth = data.add_parser("synth", help="generate the toy-Earth stores (no download needed)",
                            description="Generate the toy-Earth stores block by block (memory does not grow with "
                                        "the years); an interrupted run resumes when the same command is run again.")
    synth.add_argument("--root", default="data/toy", help="directory for <source>.zarr stores")
    synth.add_argument("--sources", nargs="+", default=None, help="sources to generate (default: all)")
    synth.add_argument("--years", nargs=2, type=int, default=[1990, 1996], metavar=("FIRST", "LAST"))
    synth.add_argument("--train-years", nargs=2, type=int, default=[1990, 1994], metavar=("FIRST", "LAST"),
                       help="years the normalization statistics and climatology are computed on")
    synth.add_argument("--grid", type=_grid, default=(32, 64), help="lat x lon, e.g. 32x64 (up to 128x256)")
    synth.add_argument("--seed", type=int, default=0)
    synth.add_argument("--overwrite", action="store_true", help="replace existing stores")
    synth.set_defaults(func=cmd_synth)

    conv = data.add_parser("convert", help="convert CMIP6 netCDF or ERA5 zarr into an ORBIT store",
                           description="Convert CMIP6 netCDF files or an ERA5 / WeatherBench2 zarr store into an "
                                       "ORBIT store, reading lazily and writing block by block; an interrupted "
                                       "conversion resumes when the same command is run again.")
    conv.add_argument("inputs", nargs="+", help="input files (netCDF) or one zarr store")
    conv.add_argument("--output", required=True, help="path of the <source>.zarr store to write")
    conv.add_argument("--format", default="auto", choices=["auto", "cmip6", "era5"])
    conv.add_argument("--source", required=True, help="name recorded in the store, e.g. cmip6_mpi")
    conv.add_argument("--grid", type=_grid, default=None, help="regrid to lat x lon, e.g. 32x64")
    conv.add_argument("--variables", nargs="+", default=None)
    conv.add_argument("--levels", nargs="+", type=int, default=None, help="pressure levels in hPa")
    conv.add_argument("--time", nargs=2, default=None, metavar=("START", "END"),
                      help="dates to keep, both inclusive like xarray's sel(time=slice(START, END)), "
                           "e.g. 2000-01-01 2000-12-31; only this window is read")
    conv.add_argument("--rename", action="append", type=_rename, default=[], metavar="SOURCE=ORBIT",
                      help="name an input variable ORBIT does not recognise, e.g. --rename air=t2m (repeatable)")
    conv.add_argument("--variable-map", default=None, metavar="YAML",
                      help="a YAML file of the same pairs (air: t2m); --rename wins where both name a variable")
    conv.add_argument("--train-years", nargs=2, type=int, default=None, metavar=("FIRST", "LAST"))
    conv.add_argument("--method", default="auto", choices=["auto", "bilinear", "conservative"],
                      help="regridding; auto = conservative when coarsening, bilinear otherwise")
    conv.add_argument("--regional", action="store_true",
                      help="accept inputs that do not cover the globe (grid over the file's own region)")
    conv.add_argument("--overwrite", action="store_true")
    conv.set_defaults(func=cmd_convert)

    elm = data.add_parser("elm", help="generate the ELM spin-up emulator training set (toy land model spin-up)")
    elm.add_argument("--out", default="data/elm/elm.zarr", help="zarr store to write")
    elm.add_argument("--grid", type=_grid, default=(64, 128), help="lat x lon of the toy Earth, e.g. 128x256")
    elm.add_argument("--seed", type=int, default=0)
    elm.add_argument("--tol", type=float, default=0.02, help="equilibrium criterion |NEE| < tol, gC m-2 yr-1")
    elm.add_argument("--max-years", type=int, default=6000, help="spin-up years before a cell is dropped")
    elm.add_argument("--holdout", type=float, default=0.2, help="fraction of the regions held out for test")
    elm.add_argument("--validation", type=float, default=0.1, help="fraction of the regions held out for validation")
    elm.add_argument("--block", type=int, default=16, help="held-out region size in grid cells")
    elm.add_argument("--buffer", type=int, default=4,
                     help="cells around held-out regions dropped (no training cell closer than this)")
    elm.add_argument("--site-copies", type=int, default=0,
                     help="extra perturbed-soil/N-deposition sites per training cell (more training samples)")
    elm.add_argument("--overwrite", action="store_true")
    elm.set_defaults(func=cmd_elm)

    down = data.add_parser("downscale", help="generate toy-Earth downscaling pairs (fine fields + their block means)")
    down.add_argument("--out", default="data/downscale/reanalysis_16x32_x4.zarr", help="zarr store to write")
    down.add_argument("--source", default="reanalysis", help="toy-Earth source of the large-scale state")
    down.add_argument("--years", nargs=2, type=int, default=[1990, 1992], metavar=("FIRST", "LAST"))
    down.add_argument("--train-years", nargs=2, type=int, default=None, metavar=("FIRST", "LAST"),
                      help="years of the normalization statistics (default: all but the last year)")
    down.add_argument("--coarse-grid", type=_grid, default=(16, 32), help="lat x lon of the model input, e.g. 16x32")
    down.add_argument("--scale", type=int, default=4, help="fine cells per coarse cell along each axis")
    down.add_argument("--step-hours", type=int, default=12, help="hours between stored steps (multiple of 6)")
    down.add_argument("--seed", type=int, default=0)
    down.add_argument("--overwrite", action="store_true")
    down.set_defaults(func=cmd_downscale_data)

    for name, text in (("train", "train the task the config names (any registered task or plug-in)"),
                       ("pretrain", "pretrain ORBIT on the configured sources"),
                       ("finetune", "fine-tune on a task (forecast, downscale, elm_spinup) named by the config")):
        train = sub.add_parser(name, help=text)
        train.add_argument("--config", required=True, help="YAML file under configs/")
        train.add_argument("--run-dir", type=Path, default=None, help="default: runs/<name>-<time>")
        train.add_argument("--resume", default=None, help="'auto' (newest checkpoint in the run dir) or a path")
        if name != "pretrain":
            train.add_argument("--init", default=None,
                               help="pretrained checkpoint (directory from any layout, or exported file); "
                                    "omitted: train from scratch")
        train.add_argument("overrides", nargs="*", help="dotted overrides, e.g. train.max_steps=50")
        train.set_defaults(func=cmd_train)

    evaluate = sub.add_parser("evaluate", help="score a run's checkpoint and write its predictions (zarr/netCDF)")
    evaluate.add_argument("--run-dir", type=Path, required=True, help="directory of a pretrain/finetune run")
    evaluate.add_argument("--checkpoint", default=None, help="default: the run's newest complete checkpoint")
    evaluate.add_argument("--out", type=Path, default=None, help="default: <run-dir>/evaluation")
    evaluate.add_argument("--format", default="zarr", choices=["zarr", "netcdf"], help="predictions file format")
    evaluate.add_argument("overrides", nargs="*", help="dotted overrides, e.g. eval.max_samples=64")
    evaluate.set_defaults(func=cmd_evaluate)

    info = sub.add_parser("info", help="parameters, FLOPs and memory of a model preset (no allocation)")
    info.add_argument("--model", required=True, help="preset name, e.g. tiny, 115m, 1b, 10b, 113b")
    info.add_argument("overrides", nargs="*", help="preset overrides, e.g. depth=4")
    info.set_defaults(func=cmd_info)

    plan = sub.add_parser(
        "plan", help="will a config's parallel layout fit a cluster? memory, traffic, better layouts (no allocation)",
        description="Print the mesh layout, memory per rank (parameters, gradients, optimizer, activations with "
                    "and without activation checkpointing) and bytes per mesh axis of a run, without allocating "
                    "anything. Exit code 0 when the layout is valid and fits, 1 when it does not (a warning and "
                    "layouts that fit are printed), 2 on a bad argument or config.")
    plan.add_argument("--config", required=True, help="YAML file under configs/")
    plan.add_argument("--nodes", type=int, required=True, help="number of nodes")
    plan.add_argument("--gpus-per-node", type=int, default=8, help="ranks per node (Frontier: 8 GCDs)")
    plan.add_argument("--gpu-memory", default="64GiB", help="memory of one GPU, e.g. 64GiB (MI250X GCD), 80GB")
    plan.add_argument("--headroom", type=float, default=0.15,
                      help="fraction of GPU memory kept free for transients and fragmentation")
    plan.add_argument("--grid", type=_grid, default=None,
                      help="lat x lon of the data stores, e.g. 128x256 (default: the preset's img_size)")
    plan.add_argument("--top", type=int, default=5, help="how many suggested layouts to print")
    plan.add_argument("--suggest", action="store_true", help="print suggestions even when the layout fits")
    plan.add_argument("--math-attention", action="store_true",
                      help="plan for attention that keeps the L x L softmax (no flash / memory-efficient SDPA)")
    plan.add_argument("--search", action="store_true",
                      help="rank layouts by the time model's predicted step (within memory) at the configured "
                           "global batch; prints step, samples/s, TFLOP/s per device, MFU, memory and overrides")
    plan.add_argument("--system", default="frontier", choices=["frontier", "dgx-a100", "dgx-h100", "dgx-h200"],
                      help="with --search: node type (device profile, links, ranks per node)")
    plan.add_argument("--json", action="store_true", help="with --search: JSON output for scripts")
    plan.add_argument("overrides", nargs="*", help="dotted overrides, e.g. parallel.tp=8 data.batch_size=2")
    plan.set_defaults(func=cmd_plan)

    bench = sub.add_parser("bench", help="parallel scaling benchmark: time, MFU, memory, bytes per mesh axis")
    bench.add_argument("--sizes", nargs="+", default=["d128", "d256"], choices=["d128", "d256"],
                       help="model sizes (width 128 / 256, depth 4, 32x64 grid)")
    bench.add_argument("--world-sizes", nargs="+", type=int, default=[1, 2, 4, 8], choices=[1, 2, 4, 8],
                       help="process counts to sweep (1 is the baseline and must be included)")
    bench.add_argument("--steps", type=int, default=3, help="timed steps per case (median reported)")
    bench.add_argument("--out", default="benchmarks/results/parallel_scaling",
                       help="path prefix of the .md and .png written")
    bench.add_argument("--predict", action="store_true",
                       help="calibrate this CPU (GEMM, attention, elementwise, dispatch, gloo) and write the time "
                            "model's step beside each measured layout")
    bench.add_argument("--calibration", default=None,
                       help="with --predict: a calibration JSON to use instead of measuring now")
    bench.add_argument("--command-line", default=None, help=argparse.SUPPRESS)
    bench.set_defaults(func=cmd_bench)

    dbuq = sub.add_parser("dbuq", add_help=False, help="land-model calibration: DBUQ train / sample, emulators, "
                                                       "surrogate + MCMC, NPE, compare (orbit dbuq --help)")
    dbuq.add_argument("-h", "--help", action="store_true", dest="dbuq_help")
    dbuq.add_argument("dbuq_args", nargs=argparse.REMAINDER)
    dbuq.set_defaults(func=cmd_dbuq)

    uq = sub.add_parser("uq", help="uncertainty quantification").add_subparsers(dest="uq_command", required=True)
    uqb = uq.add_parser("benchmark", help="PI3NN beside ensembles, MC dropout, GP, BNN, conformal on the same splits")
    uqb.add_argument("--csv", default=None, help="table with header x0..x{d-1},y")
    uqb.add_argument("--suite", default=None, choices=["uci", "ood"], help="the six shared UCI sets, or the 10-D cubic OOD case")
    uqb.add_argument("--datasets", nargs="+", default=None, help="with --suite uci: a subset of the six sets")
    uqb.add_argument("--data-root", type=Path, default=None, help="directory of the UCI CSVs (default ../shared/data/uci)")
    uqb.add_argument("--confidence", type=float, default=0.95, help="gamma in (0, 1)")
    uqb.add_argument("--splits", type=int, default=5, help="random 90/10 train/test splits")
    uqb.add_argument("--seeds", type=int, default=1, help="model seeds per split")
    uqb.add_argument("--steps", type=int, default=1500, help="optimizer steps per network")
    uqb.add_argument("--methods", nargs="+", default=None, help="default: all")
    uqb.add_argument("--tune-trials", type=int, default=0,
                     help="per-set random search of N trials on validation rows for every method (each from its "
                          "own space, the same number and objective for each; 0: the shipped settings)")
    uqb.add_argument("--tune-on", default="each", choices=["each", "first"],
                     help="search on each split's validation rows, or on split 0's for every split (cheaper)")
    uqb.add_argument("--run-dir", type=Path, required=True)
    uqb.set_defaults(func=cmd_uq_benchmark)

    explain = sub.add_parser("explain", help="attributions of a streamflow run: integrated gradients, SHAP, attention")
    explain.add_argument("--run-dir", type=Path, required=True, help="directory of a streamflow training run")
    explain.add_argument("--methods", nargs="+", default=None, help="ig shap attention (default: all)")
    explain.add_argument("--samples", type=int, default=256, help="test samples explained (and SHAP background size)")
    explain.add_argument("--lead", type=int, default=1, help="lead day of the forecast explained")
    explain.add_argument("--out", type=Path, default=None, help="default: <run-dir>/explain")
    explain.set_defaults(func=cmd_explain)
    return parser


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """Dotted overrides may come anywhere, also between or after options (argparse alone takes one
    run of positionals and refuses a second one: `finetune a=1 --run-dir R b=2`)."""
    parser = build_parser()
    args, extra = parser.parse_known_args(argv)
    if extra and hasattr(args, "overrides") and all("=" in e and not e.startswith("-") for e in extra):
        args.overrides = [*args.overrides, *extra]
    elif extra:
        parser.error(f"unrecognized arguments: {' '.join(extra)}")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        return args.func(args)
    except (ValueError, FileNotFoundError, FileExistsError) as err:
        print(f"orbit: error: {err}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    raise SystemExit(main())
