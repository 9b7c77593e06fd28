"""What interpolation gets wrong at each held-out b, on the demo's noise-free tissue signal (issue 41).

Usage: .venv/bin/python bench/heldout_b_truth.py [--config config/demo.yaml]
Writes bench/results/heldout_b_truth.tsv and prints it. No network and no noise: the ceiling of what a learned
model can add over the baselines at each held-out b, tissue by tissue.

For every demo tissue (its IVIM f, D*, kurtosis K, and D calibrated so the ADC fit reads the literature ADC),
the relative error of the signal against the truth at each held-out b of:
- log-linear: the reading between the nearest configured b-values around it (inputs and targets, the stack a
  test subject has), extrapolated from the two largest beyond them (`diffusion.loglinear_interpolation`);
- log-linear, fitted: the same, but beyond the largest b read on along the least-squares log-slope of the
  targets (`fit_above`): what `dc2anetinterp` returns from perfect stage-1 images, and where MineGAN starts
  (on exact images it reads lower than two points: the slope is taken nearer the middle of the targets);
- cDWI: S0 and ADC fitted on the inputs, extrapolated (`diffusion.computed_dwi`).
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import pandas as pd
import yaml

from dwisynth.demo.anatomy import TISSUES, calibrated_diffusivity
from dwisynth.diffusion import computed_dwi, ivim_signal, loglinear_interpolation

REPO = Path(__file__).resolve().parent.parent
RESULTS = REPO / "bench" / "results"


def heldout_errors(inputs, targets, heldout) -> pd.DataFrame:
    stack = sorted(float(b) for b in inputs + targets)
    heldout = [float(b) for b in heldout]
    rows = []
    for name, t in TISSUES.items():
        d = calibrated_diffusivity(name, tuple(stack))
        truth = ivim_signal(1.0, d, stack + heldout, t.perfusion_fraction, t.pseudo_diffusion, t.kurtosis)
        acquired, at_heldout = truth[: len(stack)], truth[len(stack):]
        reading = loglinear_interpolation(acquired, stack, heldout)
        fitted = loglinear_interpolation(acquired, stack, heldout, fit_above=min(float(b) for b in targets))
        cdwi = computed_dwi(acquired, stack, [float(b) for b in inputs], heldout)
        for b, s, r, fit, c in zip(heldout, at_heldout, reading, fitted, cdwi):
            rows.append({"tissue": name, "f": t.perfusion_fraction, "kurtosis": t.kurtosis, "d": round(d, 3),
                         "b_value": b, "loglinear_error": r / s - 1, "loglinear_fitted_error": fit / s - 1,
                         "cdwi_error": c / s - 1})
    return pd.DataFrame(rows)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", default=str(REPO / "config" / "demo.yaml"))
    args = parser.parse_args(argv)
    b = yaml.safe_load(Path(args.config).read_text())["bvalues"]
    table = heldout_errors(b["inputs"], b["targets"], b["heldout"])
    RESULTS.mkdir(parents=True, exist_ok=True)
    table.to_csv(RESULTS / "heldout_b_truth.tsv", sep="\t", index=False, float_format="%.4f")
    shown = table.assign(b_value=[f"b {b:g}" for b in table["b_value"]])
    wide = shown.pivot_table(index="tissue", columns="b_value", values=["loglinear_error", "loglinear_fitted_error", "cdwi_error"],
                              sort=False)
    with pd.option_context("display.width", 200, "display.float_format", "{:+.1%}".format):
        print(wide.to_string())
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
