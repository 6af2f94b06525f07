"""TST variants against LSTM-ED at a short budget, scored on the validation period only (the test
period is cut to one month and never read): which part of the TST design costs it the lead-time race?

Each variant switches parts of `TemporalSequenceTransformer` off (patched here, the plug-in is not
changed): `issue` = the issue-day token added to every future token, `norm` = the final LayerNorms of
the pre-norm stacks, `sin` = the sinusoidal day-offset code (the learned table stays). The table in
docs/streamflow.md was measured with the same variants built on the TST before these parts existed
(commit 2c76762), so a rerun matches it up to the order of initialisation. Run from the repository root:

    OMP_NUM_THREADS=1 python benchmarks/streamflow_tst_variants.py --steps 200     # ~2 min a variant
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch

from orbit.cli import main
from orbit.plugins.streamflow import models

# name -> (parts kept, extra overrides)
VARIANTS = {"lstm_ed": (None, []), "tst_plain": ((), []), "tst_plain_lr1e-3": ((), ["train.lr=1.0e-3"]),
            "tst_norm": (("norm",), []), "tst_issue": (("issue",), []), "tst_norm_issue": (("norm", "issue"), []),
            "tst": (("norm", "issue", "sin"), [])}
ORIGINAL_INIT = models.TemporalSequenceTransformer.__init__


def patch(keep: tuple[str, ...]) -> None:
    """Make the TST class build the variant that keeps only the parts in `keep`."""
    init = ORIGINAL_INIT

    def variant_init(self, *args, **kwargs):
        init(self, *args, **kwargs)
        if "norm" not in keep:
            for stack in (self.past_encoder, self.future_encoder, self.flow_decoder, self.fusion):
                stack.norm = None
        if "sin" not in keep:
            self.sinusoid.zero_()
        self.issue_token = "issue" in keep

    models.TemporalSequenceTransformer.__init__ = variant_init


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=200)
    parser.add_argument("--runs", type=Path, default=Path("runs/streamflow-tst-variants"))
    parser.add_argument("--variants", nargs="+", default=list(VARIANTS))
    args = parser.parse_args()
    torch.set_num_threads(1)
    common = [f"train.max_steps={args.steps}", "data.batch_size=64", f"train.warmup_steps={args.steps // 20}",
              f"train.eval_every={args.steps}", f"train.ckpt_every={args.steps}", "eval.max_basins=5",
              "train.log_every=50", "data.test_period=[2009-11-01,2009-11-30]"]
    rows = ["| variant | val NSE lead 1 | val NSE lead 30 | val loss (NSE*) |", "|---|---|---|---|"]
    for name in args.variants:
        keep, extra = VARIANTS[name]
        run = args.runs / name
        if not (run / "summary.json").is_file():
            if keep is not None:
                patch(keep)
            config = "lstm_ed.yaml" if keep is None else "tst.yaml"
            if main(["train", "--config", f"configs/plugins/streamflow/{config}", "--run-dir", str(run), *common,
                     *extra]) != 0:
                raise SystemExit(f"run {run} failed")
        s = json.loads((run / "summary.json").read_text())["scalars"]
        rows.append(f"| {name} | {s['val_nse']:.3f} | {s['val_nse_lead30']:.3f} | {s['val_mean_loss']:.4f} |")
    print("\n".join(rows))
