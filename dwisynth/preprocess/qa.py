"""Accuracy of preprocessing against the demo truth: ADC per tissue, mask Dice, registration residual."""

from __future__ import annotations

import numpy as np
import pandas as pd


def dice(a: np.ndarray, b: np.ndarray) -> float:
    a, b = np.asarray(a, bool), np.asarray(b, bool)
    total = a.sum() + b.sum()
    return float(2 * (a & b).sum() / total) if total else 1.0


def adc_error_by_tissue(adc: np.ndarray, truth_adc: np.ndarray, labels: np.ndarray, purity: np.ndarray,
                        mask: np.ndarray, tissue_names: dict[int, str], min_purity: float = 0.95,
                        min_voxels: int = 20, b0_snr: np.ndarray | None = None,
                        high_b_snr: np.ndarray | None = None) -> pd.DataFrame:
    """Median absolute ADC error (x10^-3 mm²/s) per tissue, over nearly pure voxels inside the mask.

    truth_adc: the demo's apparent ADC (its noise-free signal fitted on the same b-values), so the
    error is what acquisition noise and the pipeline cost. `median_error` is the tissue's bias (what
    an ROI reading sees), `median_abs_error` the typical voxel's error (mostly noise). b0_snr and
    high_b_snr (noise-free signal / sigma at b0 and at the highest fitted b) add the tissue's median
    as columns `snr` and `snr_high_b`: below about 3 at high b the magnitude sits on the Rician floor.
    """
    rows = []
    for label, name in sorted(tissue_names.items()):
        voxels = (labels == label) & (purity >= min_purity) & np.asarray(mask, bool)
        if voxels.sum() < min_voxels:
            continue
        err = adc[voxels] - truth_adc[voxels]
        row = {"tissue": name, "voxels": int(voxels.sum()), "truth_adc": float(np.median(truth_adc[voxels])),
               "median_adc": float(np.median(adc[voxels])), "median_abs_error": float(np.median(np.abs(err))),
               "median_error": float(np.median(err))}
        if b0_snr is not None:
            row["snr"] = float(np.median(b0_snr[voxels]))
        if high_b_snr is not None:
            row["snr_high_b"] = float(np.median(high_b_snr[voxels]))
        rows.append(row)
    return pd.DataFrame(rows)


def registration_residual_mm(fixed_to_moving: np.ndarray, truth_moving_to_fixed: np.ndarray,
                             points_lps: np.ndarray) -> tuple[float, float]:
    """Mean and max distance (mm) between each point and its round trip fixed -> moving -> fixed.

    points_lps: (3, n) points in the fixed space (e.g. the brain's voxel centres).
    """
    hom = np.vstack([points_lps, np.ones(points_lps.shape[1])])
    round_trip = truth_moving_to_fixed @ fixed_to_moving @ hom
    dist = np.linalg.norm(round_trip[:3] - points_lps, axis=0)
    return float(dist.mean()), float(dist.max())


def voxel_centres_lps(mask: np.ndarray, affine_ras: np.ndarray) -> np.ndarray:
    idx = np.vstack([np.array(np.nonzero(mask)), np.ones(int(np.count_nonzero(mask)))])
    ras = affine_ras @ idx
    return np.diag([-1.0, -1.0, 1.0]) @ ras[:3]
