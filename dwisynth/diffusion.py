"""Diffusion signal models and fits.

ADC is in x10^-3 mm²/s everywhere in dwisynth; b-values in s/mm². Volumes are
stacked on the last axis: dwi has shape (..., n_b).
"""

from __future__ import annotations

import numpy as np

ADC_SCALE = 1e-3  # ADC values are stored as multiples of 1e-3 mm²/s


def ivim_signal(s0, adc, bvals, perfusion_fraction=0.0, pseudo_diffusion=0.0, kurtosis=0.0) -> np.ndarray:
    """Noise-free signal S(b) = S0 [f exp(-b D*) + (1 - f) T(b)], T the tissue term (`kurtosis_decay`).

    adc (D) and pseudo_diffusion (D*) in x10^-3 mm²/s; kurtosis K dimensionless. f = 0 and K = 0 give the
    mono-exponential model. Returns shape (*broadcast(s0, adc, ...).shape, n_b).
    """
    b = np.asarray(bvals, dtype=float)
    s0, adc, f, dstar = (np.asarray(x, dtype=float)[..., None] for x in (s0, adc, perfusion_fraction, pseudo_diffusion))
    tissue = kurtosis_decay(adc, b, np.asarray(kurtosis, dtype=float)[..., None])
    return s0 * (f * np.exp(-b * ADC_SCALE * dstar) + (1.0 - f) * tissue)


def kurtosis_decay(adc, bvals, kurtosis) -> np.ndarray:
    """The tissue term exp(-b D + b² D² K / 6) (diffusion kurtosis, Jensen 2005), kept physical beyond its range.

    The quadratic form's log-signal turns upward at b = 3 / (D K), which no tissue does. Up to
    b_K = 3 / (2 D K), where its slope has fallen to -D/2, the form is used as it is; beyond, the log-signal
    continues on the tangent at b_K (slope -D/2): still decaying, continuous with its first derivative. With the
    demo's tissues b_K is 1300-2700 s/mm² for the kurtotic tissues (K 0.5-1.2) and infinite for fluids (K 0).
    adc (D) in x10^-3 mm²/s; arrays broadcast.
    """
    b = np.asarray(bvals, dtype=float) * ADC_SCALE
    d, k = np.asarray(adc, dtype=float), np.asarray(kurtosis, dtype=float)
    with np.errstate(divide="ignore", invalid="ignore"):
        b_k = np.where(d * k > 0, 1.5 / (d * k), np.inf)
    inside = np.minimum(b, b_k)
    log_s = -inside * d + inside**2 * d**2 * k / 6.0
    log_s = log_s - np.where(b > b_k, (b - b_k) * d / 2.0, 0.0)
    return np.exp(log_s)


def _log_linear_fit(log_signal, b, w):
    """Weighted least squares of log_signal = intercept + slope * b per voxel."""
    sw = w.sum(-1)
    sb = (w * b).sum(-1)
    sbb = (w * b * b).sum(-1)
    sy = (w * log_signal).sum(-1)
    sby = (w * b * log_signal).sum(-1)
    det = sw * sbb - sb * sb
    with np.errstate(divide="ignore", invalid="ignore"):
        slope = np.where(det > 0, (sw * sby - sb * sy) / det, 0.0)
        intercept = np.where(sw > 0, (sy - slope * sb) / sw, 0.0)
    return intercept, slope


def fit_mono_exponential(dwi, bvals, mask=None, weighted: bool = True,
                         iterations: int = 4) -> tuple[np.ndarray, np.ndarray]:
    """Least-squares fit of ln S = ln S0 - b ADC in every voxel.

    weighted=True: iteratively reweighted, each log-signal weighted by the square of the
    signal the previous pass predicts (the variance of ln S is about sigma²/S²). Weights
    from the observed S² alone favour the samples noise pushed up, biasing low-SNR fits;
    they only start the iteration, because they are robust. Samples <= 0 (quantized to
    zero, or negative after interpolation) have no logarithm and get no weight.
    Returns (s0, adc) with adc in x10^-3 mm²/s; voxels outside mask are 0.
    """
    dwi = np.asarray(dwi, dtype=float)
    b = np.asarray(bvals, dtype=float)
    if dwi.shape[-1] != b.size:
        raise ValueError(f"dwi has {dwi.shape[-1]} volumes but {b.size} b-values were given")
    if np.unique(b).size < 2:
        raise ValueError(f"an ADC fit needs at least two distinct b-values, got {sorted(set(b.tolist()))}")
    valid = dwi > 0
    log_signal = np.log(np.where(valid, dwi, 1.0))
    start = np.where(valid, dwi, 0.0) ** 2 if weighted else valid.astype(float)
    intercept, slope = _log_linear_fit(log_signal, b, start)
    for _ in range(iterations if weighted else 0):
        predicted = np.exp(np.clip(intercept[..., None] + slope[..., None] * b, -50, 50))
        intercept, slope = _log_linear_fit(log_signal, b, predicted**2 * valid)
    adc = -slope / ADC_SCALE
    s0 = np.exp(intercept)
    if mask is not None:
        keep = np.asarray(mask, dtype=bool)
        adc = np.where(keep, adc, 0.0)
        s0 = np.where(keep, s0, 0.0)
    return s0, adc


def fit_adc(dwi, bvals, mask=None, max_adc: float = 4.0, use_b=None, sigma=None) -> np.ndarray:
    """ADC map (x10^-3 mm²/s) from the b-values in `use_b` (all when None), clipped to [0, max_adc].

    sigma: the Rician noise (one value or one per volume) to fit the noise floor away; None ignores it.

    The one ADC function for acquired and synthetic images alike: compare two ADC maps
    only when they were fitted on the same b-values (`adc_fit_bvalues`).
    """
    b = np.asarray(bvals, dtype=float)
    use = np.ones(b.size, bool) if use_b is None else np.isin(b, np.asarray(use_b, float))
    if np.unique(b[use]).size < 2:
        wanted = "" if use_b is None else f" among {sorted(float(x) for x in use_b)}"
        raise ValueError(f"ADC needs two distinct b-values{wanted}, the image has {sorted(set(b.tolist()))}")
    s0, adc = fit_mono_exponential(np.asarray(dwi)[..., use], b[use], mask=mask)
    if sigma is not None and np.any(np.asarray(sigma) > 0):
        sigma = np.broadcast_to(np.asarray(sigma, dtype=float), b.shape)[use]
        _, adc = fit_with_noise_floor(np.asarray(dwi)[..., use], b[use], sigma, s0, adc)
        if mask is not None:
            adc = np.where(np.asarray(mask, bool), adc, 0.0)
    return np.clip(adc, 0.0, max_adc)


def fit_with_noise_floor(dwi, bvals, sigma, s0, adc, iterations: int = 4) -> tuple[np.ndarray, np.ndarray]:
    """Refit (s0, adc) with the Rician noise floor removed from the log-signal the fit sees.

    For a magnitude M of a signal S with noise sigma, M²/σ² is noncentral chi-square with two
    degrees of freedom, so E[ln M] = ln S + E1(S²/2σ²)/2 (E1 the exponential integral). Each
    pass subtracts that bias, evaluated at the signal the previous fit predicts, from ln M and
    refits; starting from the floor-blind fit (s0, adc). It keeps the log-domain fit, so IVIM
    tissue keeps the apparent ADC a noise-free scan gives. Subtracting 2σ² from M² sample by
    sample instead over-corrects (high-b samples clip at zero, and the log's own bias is ignored).
    sigma: one value or one per volume (0 leaves that volume as it is).
    """
    from scipy.special import exp1

    b = np.asarray(bvals, dtype=float)
    var = np.broadcast_to(np.asarray(sigma, dtype=float) ** 2, b.shape)
    log_m = np.log(np.clip(np.asarray(dwi, dtype=float), 1e-6, None))
    for _ in range(iterations):
        predicted = np.asarray(s0)[..., None] * np.exp(-b * np.asarray(adc)[..., None] * ADC_SCALE)
        with np.errstate(divide="ignore"):
            ratio = np.where(var > 0, predicted**2 / (2.0 * np.where(var > 0, var, 1.0)), np.inf)
        bias = 0.5 * exp1(np.clip(ratio, 1e-12, None))  # exp1(inf) = 0: no noise, no bias
        s0, adc = fit_mono_exponential(np.exp(log_m - bias), b)
    return s0, adc


def noise_sigma_background(volume, mask, margin: int = 3) -> float:
    """Noise sigma of a magnitude image from its background: voxels farther than `margin` voxels from the
    mask and not zero-filled. There the magnitude is Rayleigh, whose median is sigma sqrt(2 ln 2) (the
    median, not the mean, so that stray anatomy in the background barely moves it). 0 without background."""
    from scipy import ndimage

    volume = np.asarray(volume, dtype=float)
    near = ndimage.binary_dilation(np.asarray(mask, bool), iterations=margin)
    background = volume[~near & (volume > 0)]
    return float(np.median(background) / np.sqrt(2 * np.log(2))) if background.size >= 50 else 0.0


def tissue_mask(b0, mask, min_snr: float) -> tuple[np.ndarray, float]:
    """The mask's voxels whose b0 is at least `min_snr` background noise SDs (`noise_sigma_background`),
    and that sigma. Fat-suppressed fat and air inside a body outline hold noise only. min_snr 0, or no
    background to measure sigma in (sigma 0), gives the whole mask."""
    mask = np.asarray(mask, bool)
    sigma = noise_sigma_background(b0, mask) if min_snr > 0 else 0.0
    return (mask & (np.asarray(b0) >= min_snr * sigma) if sigma > 0 else mask), sigma


def noise_sigma_repeats(repeats, mask) -> float:
    """Noise sigma from two or more repeated acquisitions of one volume (..., n_repeats): the SD across
    repeats, pooled over the mask (magnitude noise is near Gaussian where tissue signal is high)."""
    repeats = np.asarray(repeats, dtype=float)
    if repeats.shape[-1] < 2:
        raise ValueError("noise from repeats needs at least two repeated volumes at one b-value")
    return float(np.sqrt(np.mean(repeats[np.asarray(mask, bool)].var(-1, ddof=1))))


def adc_fit_bvalues(allowed, *acquired) -> list[float]:
    """The b-values every compared ADC map is fitted on: the allowed set (config `adc.bvalues`, by default
    the inputs and targets every method produces) that each of the images also holds."""
    common = {float(b) for b in allowed}
    for bvals in acquired:
        common &= {float(b) for b in bvals}
    return sorted(common)


def trace_average(dwi, bvals, b0_max: float = 10.0) -> tuple[np.ndarray, np.ndarray]:
    """One volume per b-value, sorted by b: the geometric mean of the volumes at each b > b0_max (the
    trace-weighted image scanners form from diffusion directions: its ADC is the mean diffusivity,
    trace(D)/3) and the arithmetic mean of repeated b0 volumes (no direction, only noise to average)."""
    dwi, b = np.asarray(dwi, dtype=float), np.asarray(bvals, dtype=float)
    unique = np.unique(b)
    volumes = []
    for value in unique:
        stack = dwi[..., b == value]
        if value <= b0_max or stack.shape[-1] == 1:
            volumes.append(stack.mean(-1))
        else:
            volumes.append(np.exp(np.log(np.clip(stack, 1e-6, None)).mean(-1)))
    return np.stack(volumes, axis=-1), unique


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


def loglinear_interpolation(dwi, bvals, target_bvals, fit_above: float | None = None) -> np.ndarray:
    """The signal at each target b, log-linear between the two nearest b-values of `dwi` (mono-exponential
    between neighbours), extrapolated from the last two beyond the ends. A target b the stack holds is copied.

    fit_above: beyond the largest b, read on from the largest b's image along the least-squares log-slope of
    the images at b >= fit_above (at least two), capped at 0 (`extrapolation_slope`). The two-point slope
    multiplies the errors of two images (x 6 at 2000 from 800 and 1000) and rises wherever the last image is the
    brighter; the fitted, anchored one carries the last image's error once plus the slope's.

    dwi (..., n_b) with n_b >= 2; returns (..., len(target_bvals)). The stage-2 baseline: stage 1's images
    at 400-1000 plus the inputs, read between their b-values.
    """
    b = np.asarray(bvals, dtype=float)
    order = np.argsort(b)
    b, dwi = b[order], np.asarray(dwi, dtype=float)[..., order]
    if len(b) < 2:
        raise ValueError("log-linear interpolation needs at least two b-values")
    log = np.log(np.clip(dwi, 1e-6, None))
    fitted = fit_above is not None and int((b >= fit_above).sum()) >= 2
    slope = extrapolation_slope(log[..., b >= fit_above], b[b >= fit_above]) if fitted else None
    out = []
    for t in (float(x) for x in target_bvals):
        hit = np.flatnonzero(np.isclose(b, t))
        if hit.size:
            out.append(dwi[..., hit[0]])
            continue
        if fitted and t > b[-1]:
            out.append(np.exp(log[..., -1] + slope * (t - b[-1])) * (dwi[..., -1] > 0))
            continue
        upper = int(np.clip(np.searchsorted(b, t), 1, len(b) - 1))
        lower = upper - 1
        weight = (t - b[lower]) / (b[upper] - b[lower])
        out.append(np.exp((1 - weight) * log[..., lower] + weight * log[..., upper]) * (dwi[..., lower] > 0))
    return np.stack(out, -1)


def extrapolation_slope(log_signal, bvals) -> np.ndarray:
    """Least-squares slope of log_signal (..., n) over bvals (n,), capped at 0: the signal never rises with b."""
    b = np.asarray(bvals, dtype=float)
    centred = b - b.mean()
    slope = (log_signal * centred).sum(-1) / (centred**2).sum()
    return np.minimum(slope, 0.0)
