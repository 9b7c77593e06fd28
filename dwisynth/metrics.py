"""Image metrics of both papers on one documented scale.

Normalization (the standard columns): prediction and reference are both divided by
the reference's robust maximum, its 99.5th percentile inside the mask, so the data
range is 1 by construction and never guessed from dtype or from the prediction.
MSE, MAE and PSNR = 10 log10(1 / MSE) use the voxels inside the mask; SSIM is
scikit-image's (Gaussian window sigma 1.5, Wang et al. constants) computed on the
whole slice and averaged over the mask.

Superpixel gray-level correlation (`superpixel_r`, JMMDA-GAN's test): SLIC superpixels
on the reference slice inside the mask, then Pearson r between the reference's and the
prediction's mean gray level per superpixel.

Legacy PSNR (`psnr_legacy`), to set our numbers beside the seed paper's: the
DC²Anet authors' public evaluation code scales each image to 8 bits and computes
20 log10(255 * 255) - 10 log10(MSE) over the whole slice. That is the 8-bit PSNR
plus 20 log10(255) = 48.13 dB, which is why that paper reports "PSNR > 74".
"""

from __future__ import annotations

import numpy as np
from skimage.metrics import mean_squared_error, peak_signal_noise_ratio, structural_similarity

ROBUST_MAX_PERCENTILE = 99.5
LEGACY_OFFSET_DB = 20 * np.log10(255.0)


def robust_max(reference: np.ndarray, mask: np.ndarray) -> float:
    values = reference[mask]
    if values.size == 0:
        raise ValueError("the mask is empty: nothing to score")
    top = float(np.percentile(values, ROBUST_MAX_PERCENTILE))
    if not top > 0:  # no scale to put errors on: a score would be a number without meaning
        raise ValueError(f"the reference is {top:g} at its {ROBUST_MAX_PERCENTILE}th percentile inside the mask: "
                         "nothing to score against; check that the mask covers the organ")
    return top


def superpixel_correlation(pred: np.ndarray, ref: np.ndarray, mask: np.ndarray, n_segments: int = 100,
                           compactness: float = 0.1) -> float:
    """Pearson r of per-superpixel mean gray levels (SLIC on the reference, inside the mask)."""
    from scipy import ndimage
    from skimage.segmentation import slic

    labels = slic(ref, n_segments=n_segments, compactness=compactness, mask=mask, channel_axis=None,
                  start_label=1, enforce_connectivity=True)
    ids = np.unique(labels[labels > 0])
    if ids.size < 3:
        return float("nan")
    ref_means = ndimage.mean(ref, labels, ids)
    pred_means = ndimage.mean(pred, labels, ids)
    if np.std(ref_means) == 0 or np.std(pred_means) == 0:
        return float("nan")
    return float(np.corrcoef(ref_means, pred_means)[0, 1])


def legacy_psnr(pred: np.ndarray, ref: np.ndarray) -> float:
    """The seed paper's convention on one 2D slice already scaled to [0, 1]: 8-bit, 20 log10(255²) - 10 log10(MSE)."""
    p8 = np.round(np.clip(pred, 0, 1) * 255.0)
    r8 = np.round(np.clip(ref, 0, 1) * 255.0)
    mse = float(np.mean((p8 - r8) ** 2))
    return float("inf") if mse == 0 else float(20 * np.log10(255.0 * 255.0) - 10 * np.log10(mse))


def ssim_in_mask(pred: np.ndarray, ref: np.ndarray, mask: np.ndarray, data_range: float = 1.0) -> float:
    """Mean of the SSIM map inside the mask (2D slices; data range given, never inferred)."""
    if min(pred.shape) < 11:  # the Gaussian window (sigma 1.5, truncated at 3.5 sigma) spans 11 pixels
        raise ValueError(f"slice {pred.shape} too small for the 11-pixel SSIM window")
    _, ssim_map = structural_similarity(ref, pred, data_range=data_range, gaussian_weights=True, sigma=1.5,
                                        use_sample_covariance=False, full=True)
    return float(ssim_map[mask].mean())


def slice_metrics(pred: np.ndarray, ref: np.ndarray, mask: np.ndarray, scale: float) -> dict[str, float]:
    """MSE, MAE, PSNR, SSIM (inside the mask) and legacy PSNR of one 2D slice, both images divided by `scale`."""
    p, r = pred / scale, ref / scale
    return {"mse": float(mean_squared_error(r[mask], p[mask])), "mae": float(np.mean(np.abs(p - r)[mask])),
            "psnr": _psnr(r[mask], p[mask]), "ssim": ssim_in_mask(p, r, mask), "psnr_legacy": legacy_psnr(p, r),
            "superpixel_r": superpixel_correlation(p, r, mask)}


def _psnr(ref: np.ndarray, pred: np.ndarray) -> float:
    """scikit-image's PSNR with the data range fixed at 1 (both images already divided by the robust max)."""
    if np.array_equal(ref, pred):
        return float("inf")
    return float(peak_signal_noise_ratio(ref, pred, data_range=1.0))


def volume_metrics(pred: np.ndarray, ref: np.ndarray, mask: np.ndarray, min_voxels: int = 20):
    """Per-slice metrics (slices along the last axis with >= min_voxels in the mask) and the volume's.

    pred, ref: (X, Y, Z) on the same scale; mask (X, Y, Z) bool. Returns (list of
    per-slice dicts with `slice`, dict for the whole volume): MSE/MAE/PSNR over all
    masked voxels; SSIM, legacy PSNR and superpixel r as the mean over the scored slices.
    """
    mask = np.asarray(mask, bool)
    scale = robust_max(ref, mask)
    rows = []
    for z in range(ref.shape[-1]):
        if mask[..., z].sum() >= min_voxels:
            rows.append({"slice": z, **slice_metrics(pred[..., z], ref[..., z], mask[..., z], scale)})
    p, r = pred[mask] / scale, ref[mask] / scale
    volume = {"mse": float(mean_squared_error(r, p)), "mae": float(np.mean(np.abs(p - r))), "psnr": _psnr(r, p)}
    for key in ("ssim", "psnr_legacy", "superpixel_r"):
        volume[key] = float(np.nanmean([row[key] for row in rows])) if rows else float("nan")
    return rows, volume


def host_ring(lesion: np.ndarray, organ: np.ndarray, labels: np.ndarray | None = None, width: int = 2) -> np.ndarray:
    """The tissue a lesion is read against: the in-plane ring `width` voxels wide around it, inside the organ
    and outside every lesion voxel; with a label map, only the ring's commonest label (the host tissue: a
    tumour at the liver's edge is read against liver, not the fat beside it). In-plane because DWI slices are
    thick: a through-plane ring would reach into other anatomy. (X, Y, Z) bool in, bool out."""
    from scipy import ndimage

    lesion, organ = np.asarray(lesion, bool), np.asarray(organ, bool)
    in_plane = np.zeros((3, 3, 3), bool)
    in_plane[:, :, 1] = ndimage.generate_binary_structure(2, 1)
    ring = ndimage.binary_dilation(lesion, in_plane, iterations=width) & organ & ~lesion
    if labels is not None and ring.any():
        values, counts = np.unique(np.asarray(labels)[ring], return_counts=True)
        tissue = values != 0
        if tissue.any():
            ring &= np.asarray(labels) == values[tissue][np.argmax(counts[tissue])]
    return ring


def lesion_contrast(image: np.ndarray, lesion: np.ndarray, host: np.ndarray) -> float:
    """C = lesion mean / host mean - 1 (0: the lesion cannot be told from its host; the sign says brighter
    or darker). NaN when either region is empty or the host has no positive signal."""
    lesion, host = np.asarray(lesion, bool), np.asarray(host, bool)
    if not lesion.any() or not host.any():
        return float("nan")
    host_mean = float(np.mean(image[host]))
    return float(np.mean(image[lesion]) / host_mean - 1.0) if host_mean > 0 else float("nan")


def spectral_peak(residual: np.ndarray, mask: np.ndarray, min_voxels: int = 20, dc_lobe: int = 2) -> float:
    """Periodic-artefact score of a residual volume (synthetic - truth): for each slice along the last axis
    with >= min_voxels in the mask, the 2D power spectrum of the residual inside the mask's in-plane bounding
    box (the whole volume's, so every slice has the same frequency bins), mean removed and Hann-windowed; the
    ratio of its largest non-DC bin to its median bin. Returns the volume's maximum over slices (NaN when no
    slice has power to compare). A checkerboard or ring concentrates power in a few bins and scores in the
    hundreds to thousands; white noise spreads it and scores about ln(bins) / ln(2) (10-20 on 32x32 to 128x128
    boxes).

    dc_lobe: bins within this many of DC on both axes count as DC. A Hann window's main lobe is 2 bins wide on
    each side, so a smooth residual (a bias over the organ, not a pattern) lands there: on the demo those bins
    held the peak of every network's residual, 10-100 times its median bin. 0: the DC bin alone."""
    residual, mask = np.asarray(residual, np.float64), np.asarray(mask, bool)
    rows, cols = np.flatnonzero(mask.any(axis=(1, 2))), np.flatnonzero(mask.any(axis=(0, 2)))
    if rows.size == 0:
        return float("nan")
    box = (slice(rows[0], rows[-1] + 1), slice(cols[0], cols[-1] + 1))
    h, w = rows[-1] - rows[0] + 1, cols[-1] - cols[0] + 1
    if min(h, w) < 2 * dc_lobe + 4:
        return float("nan")
    window = np.outer(np.hanning(h), np.hanning(w))
    fy, fx = np.meshgrid(np.fft.fftfreq(h) * h, np.fft.fftfreq(w) * w, indexing="ij")  # cycles per box
    keep = (np.abs(fy) > dc_lobe) | (np.abs(fx) > dc_lobe)
    peaks = []
    for z in range(residual.shape[-1]):
        if mask[..., z].sum() < min_voxels:
            continue
        patch = residual[box + (z,)]
        bins = (np.abs(np.fft.fft2((patch - patch.mean()) * window)) ** 2)[keep]
        median = float(np.median(bins))
        if median > 0:
            peaks.append(float(bins.max()) / median)
    return float(max(peaks)) if peaks else float("nan")


def monotonicity_violations(signal: np.ndarray, s0: np.ndarray, tissue: np.ndarray, rise: float = 0.005):
    """Where a synthetic signal rises with b (diffusion signal only falls): signal (X, Y, Z, n_b) on an
    ascending b grid, s0 (X, Y, Z) the b0 it was synthesized from, tissue (X, Y, Z) bool. A voxel violates when
    its signal rises by more than rise * s0 between any two consecutive grid b-values.
    Returns (tissue voxels, violating voxels, rises per interval: n_b - 1 counts of tissue voxels rising
    there)."""
    tissue = np.asarray(tissue, bool)
    steps = np.diff(np.asarray(signal, np.float64)[tissue], axis=-1)  # (voxels, n_b - 1)
    rising = steps > rise * np.asarray(s0, np.float64)[tissue][:, None]
    return int(tissue.sum()), int(rising.any(axis=-1).sum()), rising.sum(axis=0).astype(int)
