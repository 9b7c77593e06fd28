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
                        min_voxels: int = 20) -> pd.DataFrame:
    """Median absolute ADC error (x10^-3 mm²/s) per tissue, over nearly pure voxels inside the mask."""
    rows = []
    for label, name in sorted(tissue_names.items()):
        voxels = (labels == label) & (purity >= min_purity) & np.asarray(mask, bool)
        if voxels.sum() < min_voxels:
            continue
        err = adc[voxels] - truth_adc[voxels]
        rows.append({"tissue": name, "voxels": int(voxels.sum()), "truth_adc": float(np.median(truth_adc[voxels])),
                     "median_adc": float(np.median(adc[voxels])), "median_abs_error": float(np.median(np.abs(err))),
                     "median_error": float(np.median(err))})
    return pd.DataFrame(rows)


def protocol_truth_adc(noise_free: np.ndarray, truth_bvals, acquired_bvals, use_b=None) -> np.ndarray:
    """The ADC a noise-free acquisition with the same b-values would give (x10^-3 mm²/s), fitted on the
    acquired b-values in `use_b` (the resolved `adc.bvalues`, as the acquired ADC is).

    Differs from the tissue D by the IVIM perfusion bias of low b-values; the
    difference between this and the acquired ADC is what the pipeline itself costs.
    """
    from dwisynth.diffusion import adc_fit_bvalues, fit_adc

    truth_bvals = [float(b) for b in truth_bvals]
    pick = [truth_bvals.index(float(b)) for b in acquired_bvals]
    use_b = adc_fit_bvalues(use_b if use_b is not None else acquired_bvals, acquired_bvals)
    return fit_adc(noise_free[..., pick], np.asarray(acquired_bvals, float), use_b=use_b, max_adc=np.inf)


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
