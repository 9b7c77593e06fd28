"""ADC fit against dipy on the same data: accuracy against a known mean diffusivity, and time.

Usage: .venv/bin/python bench/adc.py [--voxels 20000] [--snr 20 40]
Writes bench/results/adc.tsv and prints it. It reports; it asserts nothing about speed.

Data: a multi-direction phantom with known truth, the case where the two can be compared on equal terms:
voxels with random diffusion tensors (eigenvalues drawn around white matter's, grey matter's and CSF's mean
diffusivity), six directions at each of b = 100, 400, 800, 1000 plus two b0, Rician noise at the given b0 SNR.
- dwisynth: `trace_average` (geometric mean of the directions at each b: the scanner's trace image) then
  `fit_adc` on every b, the workflow's iteratively reweighted log-linear fit; its ADC is trace(D)/3.
- dipy: `TensorModel` (weighted least squares, dipy's default), mean diffusivity of the fitted tensor.
Both are scored against the true trace(D)/3 (x10^-3 mm²/s).
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np
import pandas as pd

RESULTS = Path(__file__).resolve().parent / "results"
BVALS = [0.0, 0.0] + [b for b in (100.0, 400.0, 800.0, 1000.0) for _ in range(6)]
DIRECTIONS = np.array([[1, 0, 1], [-1, 0, 1], [0, 1, 1], [0, 1, -1], [1, 1, 0], [-1, 1, 0]], float) / np.sqrt(2)
TISSUE_MD = {"white matter": 0.75, "grey matter": 0.9, "CSF": 3.0}  # x10^-3 mm²/s


def phantom(voxels: int, snr: float, seed: int = 0):
    """(voxels, volumes) signal, b-values, unit b-vectors, true mean diffusivity, tissue names."""
    rng = np.random.default_rng(seed)
    tissues = rng.choice(list(TISSUE_MD), size=voxels, p=[0.45, 0.45, 0.1])
    md = np.array([TISSUE_MD[t] for t in tissues]) * rng.uniform(0.9, 1.1, voxels)
    fa_shape = np.where(tissues == "white matter", 1.0, np.where(tissues == "grey matter", 0.25, 0.0))
    spread = np.stack([1 + 1.2 * fa_shape, 1 - 0.6 * fa_shape, 1 - 0.6 * fa_shape], 1)
    evals = (md[:, None] * spread / spread.mean(1, keepdims=True)) * 1e-3  # mm²/s, mean = md
    rotations = np.linalg.qr(rng.normal(size=(voxels, 3, 3)))[0]
    tensors = rotations @ (evals[:, :, None] * np.swapaxes(rotations, 1, 2))
    bvecs = np.vstack([np.zeros((2, 3)), np.tile(DIRECTIONS, (4, 1))])
    b = np.array(BVALS)
    exponent = np.einsum("vi,nij,vj->nv", bvecs, tensors, bvecs) * b[None, :]
    clean = np.exp(-exponent)
    sigma = 1.0 / snr
    noisy = np.hypot(clean + rng.normal(0, sigma, clean.shape), rng.normal(0, sigma, clean.shape))
    return noisy, b, bvecs, md, tissues


def fit_dwisynth(signal, b):
    from dwisynth.diffusion import fit_adc, trace_average

    trace, unique_b = trace_average(signal, b)
    return fit_adc(trace, unique_b, max_adc=np.inf)


def fit_dipy(signal, b, bvecs):
    from dipy.core.gradients import gradient_table
    from dipy.reconst.dti import TensorModel

    table = gradient_table(b, bvecs=bvecs, b0_threshold=10)
    return TensorModel(table, fit_method="WLS").fit(signal).md * 1e3


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--voxels", type=int, default=20000)
    parser.add_argument("--snr", type=float, nargs="+", default=[20.0, 40.0])
    args = parser.parse_args()
    rows = []
    for snr in args.snr:
        signal, b, bvecs, truth, tissues = phantom(args.voxels, snr)
        fit_dwisynth(signal[:100], b), fit_dipy(signal[:100], b, bvecs)  # imports and first calls: not timed
        fits = {}
        for name, fit in (("dwisynth", lambda: fit_dwisynth(signal, b)), ("dipy", lambda: fit_dipy(signal, b, bvecs))):
            start = time.perf_counter()
            fits[name] = np.asarray(fit(), float)
            seconds = time.perf_counter() - start
            for tissue in TISSUE_MD:
                error = fits[name][tissues == tissue] - truth[tissues == tissue]
                rows.append({"snr": snr, "method": name, "tissue": tissue, "voxels": int((tissues == tissue).sum()),
                             "bias": round(float(np.mean(error)), 4),
                             "mean_abs_error": round(float(np.mean(np.abs(error))), 4),
                             "us_per_voxel": round(1e6 * seconds / len(truth), 2)})
        difference = np.abs(fits["dwisynth"] - fits["dipy"])
        print(f"[adc] SNR {snr:g}: dwisynth vs dipy, median |difference| {np.median(difference):.4f} "
              f"x10^-3 mm²/s", flush=True)
    table = pd.DataFrame(rows)
    RESULTS.mkdir(exist_ok=True)
    table.to_csv(RESULTS / "adc.tsv", sep="\t", index=False)
    print(table.to_string(index=False))


if __name__ == "__main__":
    main()
