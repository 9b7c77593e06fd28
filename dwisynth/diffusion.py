"""Diffusion signal models and fits.

ADC is in x10^-3 mm²/s everywhere in dwisynth; b-values in s/mm². Volumes are
stacked on the last axis: dwi has shape (..., n_b).
"""

from __future__ import annotations

import numpy as np

ADC_SCALE = 1e-3  # ADC values are stored as multiples of 1e-3 mm²/s


def ivim_signal(s0, adc, bvals, perfusion_fraction=0.0, pseudo_diffusion=0.0) -> np.ndarray:
    """Noise-free signal S(b) = S0 [f exp(-b D*) + (1 - f) exp(-b D)].

    adc (D) and pseudo_diffusion (D*) in x10^-3 mm²/s; f = 0 gives the
    mono-exponential model. Returns shape (*broadcast(s0, adc, ...).shape, n_b).
    """
    b = np.asarray(bvals, dtype=float) * ADC_SCALE
    s0, adc, f, dstar = (np.asarray(x, dtype=float)[..., None] for x in (s0, adc, perfusion_fraction, pseudo_diffusion))
    return s0 * (f * np.exp(-b * dstar) + (1.0 - f) * np.exp(-b * adc))


def fit_mono_exponential(dwi, bvals, mask=None, weighted: bool = True) -> tuple[np.ndarray, np.ndarray]:
    """Least-squares fit of ln S = ln S0 - b ADC in every voxel.

    weighted=True weights each log-signal by S² (the variance of ln S is about
    sigma²/S²), which keeps noisy high-b voxels from dominating.
    Returns (s0, adc) with adc in x10^-3 mm²/s; voxels outside mask are 0.
    """
    dwi = np.asarray(dwi, dtype=float)
    b = np.asarray(bvals, dtype=float)
    if dwi.shape[-1] != b.size:
        raise ValueError(f"dwi has {dwi.shape[-1]} volumes but {b.size} b-values were given")
    if np.unique(b).size < 2:
        raise ValueError(f"an ADC fit needs at least two distinct b-values, got {sorted(set(b.tolist()))}")
    signal = np.clip(dwi, 1e-6, None)
    log_signal = np.log(signal)
    w = signal**2 if weighted else np.ones_like(signal)
    sw = w.sum(-1)
    sb = (w * b).sum(-1)
    sbb = (w * b * b).sum(-1)
    sy = (w * log_signal).sum(-1)
    sby = (w * b * log_signal).sum(-1)
    det = sw * sbb - sb * sb
    with np.errstate(divide="ignore", invalid="ignore"):
        slope = np.where(det > 0, (sw * sby - sb * sy) / det, 0.0)
        intercept = np.where(sw > 0, (sy - slope * sb) / sw, 0.0)
    adc = -slope / ADC_SCALE
    s0 = np.exp(intercept)
    if mask is not None:
        keep = np.asarray(mask, dtype=bool)
        adc = np.where(keep, adc, 0.0)
        s0 = np.where(keep, s0, 0.0)
    return s0, adc


def fit_adc(dwi, bvals, mask=None, max_adc: float = 4.0, min_b: float = 0.0, max_b: float = float("inf")) -> np.ndarray:
    """ADC map (x10^-3 mm²/s) from the b-values in [min_b, max_b], clipped to [0, max_adc].

    The one ADC function for acquired and synthetic images alike.
    """
    b = np.asarray(bvals, dtype=float)
    use = (b >= min_b) & (b <= max_b)
    if np.unique(b[use]).size < 2:
        raise ValueError(f"ADC needs two distinct b-values in [{min_b:g}, {max_b:g}], have {sorted(set(b.tolist()))}")
    _, adc = fit_mono_exponential(np.asarray(dwi)[..., use], b[use], mask=mask)
    return np.clip(adc, 0.0, max_adc)


def computed_dwi(dwi, bvals, input_bvals, target_bvals, mask=None) -> np.ndarray:
    """cDWI: S0 and ADC fitted from the input b-values only, extrapolated to each target b.

    Returns (..., len(target_bvals)). This is the physics baseline every network must beat,
    and it sees exactly what the networks see: the input b-values.
    """
    b = np.asarray(bvals, dtype=float)
    pick = [int(np.flatnonzero(np.isclose(b, x))[0]) for x in input_bvals]
    s0, adc = fit_mono_exponential(np.asarray(dwi)[..., pick], b[pick], mask=mask)
    adc = np.clip(adc, 0.0, None)
    return ivim_signal(s0, adc, target_bvals)
