"""`orbit dbuq ...`: train, sample, MCMC, compare, emulator learning curves, the GPP ensemble. Each subcommand
parses its arguments and calls the library (orbit/cli.py forwards `orbit dbuq` here)."""
from __future__ import annotations

import argparse
import csv
import sys
from pathlib import Path

import numpy as np


def read_observations(path: str | Path) -> np.ndarray:
    """(M, K) observations from a CSV, one per row; a first line that is not numeric is a header."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"--obs-file {str(path)!r} does not exist")
    with open(path, newline="") as handle:
        rows = [r for r in csv.reader(handle) if r and any(c.strip() for c in r)]
    try:
        [float(c) for c in rows[0]]
    except ValueError:
        rows = rows[1:]
    except IndexError:
        raise ValueError(f"--obs-file {str(path)!r} is empty") from None
    try:
        values = np.array([[float(c) for c in r] for r in rows], dtype=np.float64)
    except ValueError as error:
        raise ValueError(f"--obs-file {str(path)!r}: every cell must be a number ({error})") from None
    if values.ndim != 2 or len(values) == 0:
        raise ValueError(f"--obs-file {str(path)!r}: rows of equal length expected, one observation per row")
    return values


def _observations(args) -> np.ndarray:
    if (args.obs is None) == (args.obs_file is None):
        raise ValueError("give exactly one of --obs Y1 Y2 ... (one observation) or --obs-file OBS.csv")
    return np.array([args.obs], dtype=np.float64) if args.obs is not None else read_observations(args.obs_file)


def write_samples(path: Path, names: list[str], samples: np.ndarray) -> None:
    """One row per sample, one column per parameter."""
    path.parent.mkdir(parents=True, exist_ok=True)
    np.savetxt(path, samples, delimiter=",", header=",".join(names), comments="", fmt="%.8g")


def write_summaries(path: Path, names: list[str], samples: np.ndarray) -> None:
    """One row per observation: mean, std, q05, q95 of every parameter."""
    from orbit.metrics.calibration import summarize

    s = summarize(samples)
    columns = [f"{n}_{stat}" for n in names for stat in ("mean", "std", "q05", "q95")]
    table = np.stack([s[stat][:, d] for d in range(len(names)) for stat in ("mean", "std", "q05", "q95")], axis=1)
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["observation", *columns])
        for i, row in enumerate(table):
            writer.writerow([i, *(f"{v:.8g}" for v in row)])


def _write_output(args, names: list[str], samples: np.ndarray) -> None:
    out = Path(args.output)
    if args.obs is not None:
        write_samples(out, names, samples[0])
        print(f"wrote {len(samples[0])} samples of {len(names)} parameters to {out}")
    else:
        write_summaries(out, names, samples)
        print(f"wrote posterior summaries of {len(samples)} observations to {out}")


# --------------------------------------------------------------------------- commands


def cmd_train(args) -> int:
    from orbit.config import load_config
    from orbit.run.runner import run_training

    overrides = [*args.overrides, *([f"data.data_dir={args.data_dir}"] if args.data_dir else [])]
    cfg = load_config(args.config, overrides)
    run_training(cfg, run_dir=args.run_dir, resume=args.resume)
    return 0


def cmd_sample(args) -> int:
    from .posterior import sample_posterior
    from .runs import load_run

    y_obs = _observations(args)
    task, net = load_run(args.run_dir, "dbuq")
    samples = sample_posterior(net, task.norm, y_obs, args.num_samples, args.seed)
    _write_output(args, list(task.problem.parameters), samples)
    return 0


def cmd_mcmc(args) -> int:
    from .mcmc import run_chain
    from .posterior import Normalizer
    from .runs import load_run

    y_obs = _observations(args)
    task, emulator = load_run(args.emulator, "land_emulator")
    p = task.problem
    Normalizer(p, task.train_rows).check_observations(y_obs)
    sigma = p.sigma if args.sigma is None else np.broadcast_to(np.asarray(args.sigma, float), p.sigma.shape)
    chains = [run_chain(lambda x: task.predict(emulator, x), p.prior, y, sigma, p.x[task.train_rows],
                        walkers=args.walkers, steps=args.steps, seed=args.seed + i) for i, y in enumerate(y_obs)]
    for i, c in enumerate(chains):
        flag = "" if c.long_enough else " (chain shorter than 50 autocorrelation times: run longer)"
        print(f"observation {i}: acceptance {c.acceptance:.3f}, autocorrelation time {c.autocorr:.1f} steps, "
              f"{c.seconds:.2f} s{flag}")
    keep = min(len(c.samples) for c in chains)
    _write_output(args, list(p.parameters), np.stack([c.samples[-keep:] for c in chains]))
    return 0


def cmd_compare(args) -> int:
    from orbit.train.logging import setup_console_logging

    from .compare import compare, markdown

    setup_console_logging()
    summary = compare(args.dbuq, args.emulator, args.out, cases=args.cases, mcmc_cases=args.mcmc_cases,
                      mcmc_steps=args.mcmc_steps, walkers=args.walkers, n_samples=args.num_samples, npe=not args.no_npe,
                      many=args.many, seed=args.seed)
    print(markdown(summary))
    print(f"wrote {args.out}/compare.md, compare.json, corner_case0.png, predictive_case0.png")
    return 0


def cmd_verify(args) -> int:
    from .verify import markdown, verify, write

    result = verify(args.run_dir, n_samples=args.num_samples, mcmc_cases=args.mcmc_cases, mcmc_steps=args.mcmc_steps,
                    seed=args.seed)
    write(result, args.out or Path(args.run_dir) / "verify")
    print(markdown(result))
    return 0


def cmd_ensemble(args) -> int:
    from .gpp_ensemble import write_ensemble

    path = write_ensemble(args.out, args.runs, overwrite=args.overwrite, grid=tuple(args.grid), years=args.years,
                          adjust_years=args.adjust_years, seed=args.seed, spinup_tol=args.spinup_tol)
    print(f"wrote {args.runs} runs of annual GPP to {path}")
    return 0


def cmd_emulate(args) -> int:
    from .learning_curve import learning_curve, markdown

    rows = learning_curve(args.config, args.sizes, args.out, args.overrides, tuple(args.reduce), args.seeds,
                          resample=args.resample_runs)
    print(markdown(rows))
    print(f"wrote {args.out}/learning_curve.md, .json, .png")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="orbit dbuq", description="land-model calibration: DBUQ, emulators, "
                                                                     "surrogate + MCMC, NPE (docs/dbuq.md)")
    sub = parser.add_subparsers(dest="dbuq_command", required=True)

    train = sub.add_parser("train", help="train DBUQ (or a land emulator) from a config: labels + network")
    train.add_argument("--config", required=True, help="e.g. configs/plugins/dbuq/elm_ozark.yaml")
    train.add_argument("--run-dir", type=Path, default=None)
    train.add_argument("--resume", default=None)
    train.add_argument("--data-dir", default=None, help="directory of the ensemble (default: $ORBIT_SHARED_DATA/"
                                                        "elm_ozark or ../shared/data/elm_ozark)")
    train.add_argument("overrides", nargs="*", help="dotted overrides, e.g. options.n_labels=20000")
    train.set_defaults(func=cmd_train)

    def observations(p):
        p.add_argument("--obs", nargs="+", type=float, default=None, help="one observation, one value per output")
        p.add_argument("--obs-file", default=None, help="CSV, one observation per row (optional header)")
        p.add_argument("--output", required=True, help="CSV: samples (--obs) or one summary row per observation")
        p.add_argument("--seed", type=int, default=0)

    sample = sub.add_parser("sample", help="posterior samples for new observations from a trained DBUQ run")
    sample.add_argument("--run-dir", type=Path, required=True)
    sample.add_argument("--num-samples", type=int, default=1000)
    observations(sample)
    sample.set_defaults(func=cmd_sample)

    mcmc = sub.add_parser("mcmc", help="emcee on a trained land emulator (surrogate + MCMC baseline)")
    mcmc.add_argument("--emulator", type=Path, required=True, help="run dir of an `orbit train` land_emulator run")
    mcmc.add_argument("--steps", type=int, default=5000)
    mcmc.add_argument("--walkers", type=int, default=32)
    mcmc.add_argument("--sigma", type=float, nargs="+", default=None, help="noise std per output (default: 1)")
    observations(mcmc)
    mcmc.set_defaults(func=cmd_mcmc)

    comp = sub.add_parser("compare", help="DBUQ vs surrogate + MCMC vs NPE on held-out synthetic-truth runs")
    comp.add_argument("--dbuq", type=Path, required=True, help="run dir of a trained dbuq run")
    comp.add_argument("--emulator", type=Path, required=True, help="run dir of a land_emulator run (same runs)")
    comp.add_argument("--out", type=Path, required=True)
    comp.add_argument("--cases", type=int, default=0, help="held-out cases scored (0: all)")
    comp.add_argument("--mcmc-cases", type=int, default=10)
    comp.add_argument("--mcmc-steps", type=int, default=4000)
    comp.add_argument("--walkers", type=int, default=32)
    comp.add_argument("--num-samples", type=int, default=1000)
    comp.add_argument("--many", type=int, default=10000, help="observations calibrated in one DBUQ call (timed)")
    comp.add_argument("--no-npe", action="store_true")
    comp.add_argument("--seed", type=int, default=0)
    comp.set_defaults(func=cmd_compare)

    ver = sub.add_parser("verify", help="a dbuq run on linear_gaussian / nonlinear against the analytic posterior "
                                        "or long MCMC on the exact model; coverage and SBC")
    ver.add_argument("--run-dir", type=Path, required=True)
    ver.add_argument("--out", type=Path, default=None, help="default: <run-dir>/verify")
    ver.add_argument("--num-samples", type=int, default=1000)
    ver.add_argument("--mcmc-cases", type=int, default=20)
    ver.add_argument("--mcmc-steps", type=int, default=10000)
    ver.add_argument("--seed", type=int, default=0)
    ver.set_defaults(func=cmd_verify)

    emu = sub.add_parser("emulate", help="emulator learning curves: PCA-reduced vs direct against training runs")
    emu.add_argument("--config", required=True, help="a land_emulator config")
    emu.add_argument("--sizes", type=int, nargs="+", default=[10, 20, 50, 100, 200])
    emu.add_argument("--reduce", nargs="+", default=["pca", "none"], choices=["pca", "none"])
    emu.add_argument("--seeds", type=int, default=1)
    emu.add_argument("--resample-runs", action="store_true",
                     help="each seed also draws its own random subset of the training runs (data.subset_seed)")
    emu.add_argument("--out", type=Path, required=True)
    emu.add_argument("overrides", nargs="*")
    emu.set_defaults(func=cmd_emulate)

    ens = sub.add_parser("ensemble", help="perturbed-parameter ensemble of the toy land model: 8 parameters -> "
                                          "annual GPP per cell and year (zarr, for problem toy_gpp)")
    ens.add_argument("--runs", type=int, required=True)
    ens.add_argument("--out", type=Path, required=True, help="zarr store to write (atomically)")
    ens.add_argument("--grid", type=int, nargs=2, default=[58, 116], metavar=("H", "W"),
                     help="toy-Earth grid (58 116: 1379 vegetated land cells)")
    ens.add_argument("--years", type=int, default=30)
    ens.add_argument("--adjust-years", type=int, default=10,
                     help="years of cycled climatology per run from the shared spun-up state")
    ens.add_argument("--seed", type=int, default=0)
    ens.add_argument("--spinup-tol", type=float, default=1.0,
                     help="|NEE| tolerance (gC m-2 yr-1) of the shared spin-up; looser: quicker, less settled")
    ens.add_argument("--overwrite", action="store_true")
    ens.set_defaults(func=cmd_ensemble)
    return parser


def main(argv: list[str]) -> int:
    args = build_parser().parse_args(argv)
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
