"""Scoring synthetic images and ADC maps against the acquisition, one subject at a time.

Every method is scored against the same acquired (normalized) images of the same
test subjects, inside the organ mask, on the normalization documented in
`dwisynth.metrics`. Only b-values the subject actually acquired are scored.
"""

from __future__ import annotations

import numpy as np

from dwisynth.diffusion import tissue_mask
from dwisynth.errors import DwisynthError
from dwisynth.metrics import volume_metrics


def seen_label(b: float, heldout) -> str:
    return "heldout" if float(b) in {float(h) for h in heldout} else "trained"


def score_synthesis(pred: np.ndarray, pred_bvals, acquired: np.ndarray, acquired_bvals, mask: np.ndarray,
                    score_b, heldout=()) -> tuple[list[dict], list[dict]]:
    """Per-slice and per-volume metrics at every b in score_b that both images hold.

    pred, acquired: 4D (X, Y, Z, n_b) on the same normalized scale. Returns
    (slice rows, volume rows), each row with b_value, seen and the metric columns.
    """
    pred_b = [float(b) for b in pred_bvals]
    acq_b = [float(b) for b in acquired_bvals]
    slice_rows, volume_rows = [], []
    for b in (float(x) for x in score_b):
        if b not in pred_b or b not in acq_b:
            continue
        rows, volume = volume_metrics(pred[..., pred_b.index(b)], acquired[..., acq_b.index(b)], mask)
        label = {"b_value": b, "seen": seen_label(b, heldout)}
        slice_rows += [{**label, **r} for r in rows]
        volume_rows.append({**label, "slice": "volume", **volume})
    return slice_rows, volume_rows


def adc_agreement(synthetic_adc: np.ndarray, acquired_adc: np.ndarray, mask: np.ndarray,
                  truth_adc: np.ndarray | None = None) -> dict:
    """Mean ADC (x10^-3 mm²/s) in the ROI `mask`: synthetic, acquired, (truth) and their differences."""
    mask = np.asarray(mask, bool)
    row = {"voxels": int(mask.sum()), "adc_synthetic": float(synthetic_adc[mask].mean()),
           "adc_acquired": float(acquired_adc[mask].mean())}
    row["difference"] = row["adc_synthetic"] - row["adc_acquired"]
    row["mean_abs_voxel_difference"] = float(np.abs(synthetic_adc - acquired_adc)[mask].mean())
    if truth_adc is not None:
        row["adc_truth"] = float(truth_adc[mask].mean())
        row["difference_vs_truth"] = row["adc_synthetic"] - row["adc_truth"]
        row["acquired_vs_truth"] = row["adc_acquired"] - row["adc_truth"]
    return row


TABLE_KEYS = ["task", "method", "cohort", "center", "organ", "subject"]
METRICS = ["mse", "mae", "psnr", "ssim", "psnr_legacy", "superpixel_r"]


def _score_subject(s: dict, methods, targets, heldout, adc_min_snr: float = 0.0) -> tuple[list[dict], list[dict]]:
    """(metric rows, ADC agreement rows) of every method for one test subject (`evaluate_multib`)."""
    from dwisynth.io import load_dwi, load_map, load_mask

    metric_rows, adc_rows = [], []
    ids = {"task": "multib", "cohort": s["cohort"], "center": s["center"], "organ": s["organ"],
           "subject": s["subject"]}
    acquired, acquired_b = load_dwi(*s["acquired"])
    mask = load_mask(s["mask"])
    acquired_adc = load_map(s["adc"])
    truth_adc = load_map(s["truth_adc"], canonical=True) if s.get("truth_adc") else None
    # Fat-suppressed fat and air hold noise, whose ADC is noise: on the demo, over the whole mask even the
    # noise-free reference read 0.02-0.15 x10^-3 mm²/s from the acquired ADC, over tissue under 0.01.
    roi, sigma = tissue_mask(acquired[..., int(np.argmin(acquired_b))], mask, adc_min_snr)
    roi_name = f"{s['organ']}_b0snr{adc_min_snr:g}" if sigma > 0 else f"{s['organ']}_mask"
    if not roi.any():
        raise DwisynthError(f"sub-{s['subject']} ({s['acquired'][0]}): no voxel of the organ mask has a b0 SNR of "
                            f"{adc_min_snr:g} (background noise SD {sigma:.3g}); check its b0 volume, or lower "
                            f"adc.roi_min_snr")
    for method in methods:
        if method not in s["synth"]:
            continue
        dwi_path, bval_path, adc_path = s["synth"][method]
        pred, pred_b = load_dwi(dwi_path, bval_path)
        slices, volumes = score_synthesis(pred, pred_b, acquired, acquired_b, mask,
                                          list(targets) + list(heldout), heldout)
        metric_rows += [{**ids, "method": method, **row} for row in slices + volumes]
        synthetic_adc = load_map(adc_path)
        agreement = adc_agreement(synthetic_adc, acquired_adc, roi, truth_adc)
        # the whole organ mask too, so a reader sees what the ROI left out
        agreement["difference_whole_mask"] = float(synthetic_adc[mask].mean() - acquired_adc[mask].mean())
        adc_rows.append({**ids, "method": method, "roi": roi_name, **agreement})
    return metric_rows, adc_rows


def evaluate_multib(subjects: list[dict], methods, targets, heldout, progress=print, workers: int = 1,
                    adc_min_snr: float = 0.0):
    """Score every method's synthetic images and ADC for every test subject of the multi-b task.

    subjects: dicts with cohort, center, organ, subject, `acquired` (normalized dwi, bval),
    `mask`, `adc` (acquired ADC), optional `truth_adc` (the demo's apparent ADC: its noise-free signal fitted on the ADC b-values), and
    `synth` {method: (dwi, bval, adc)}; a method without files for a subject is skipped.
    workers: subjects scored at once, in processes (the rows come back in subject order: the same tables).
    adc_min_snr: ADC agreement counts the mask's voxels whose acquired b0 SNR reaches it (`tissue_mask`;
    config `adc.roi_min_snr`); 0: the whole mask.
    Returns (synthesis_metrics, adc_agreement) data frames.
    """
    import concurrent.futures
    import contextlib
    import multiprocessing

    import pandas as pd

    metric_rows, adc_rows = [], []
    n = len(subjects)
    with contextlib.ExitStack() as stack:
        if workers > 1 and n > 1:
            pool = stack.enter_context(concurrent.futures.ProcessPoolExecutor(
                min(workers, n), mp_context=multiprocessing.get_context("fork")))
            scored = pool.map(_score_subject, subjects,
                              *([x] * n for x in (methods, targets, heldout, adc_min_snr)))
        else:
            scored = (_score_subject(s, methods, targets, heldout, adc_min_snr) for s in subjects)
        for i, (s, (metrics, adc)) in enumerate(zip(subjects, scored), 1):
            metric_rows += metrics
            adc_rows += adc
            progress(f"[evaluate] {i}/{n} sub-{s['subject']} scored")
    metrics = pd.DataFrame(metric_rows).reindex(columns=TABLE_KEYS + ["slice", "b_value", "seen"] + METRICS)
    return metrics, pd.DataFrame(adc_rows)


LESION_METRICS = ["lesion_psnr", "lesion_ssim", "lesion_mse", "lesion_mae", "lesion_contrast"]


def with_ct2dwi(metrics, ct2dwi_tables):
    """synthesis_metrics.tsv: the multi-b rows, then the CT -> DWI main experiment's rows (task ct2dwi,
    with the lesion columns, empty for multi-b rows)."""
    import pandas as pd

    columns = list(metrics.columns) + LESION_METRICS
    frames = [metrics.reindex(columns=columns)] + [t.reindex(columns=columns) for t in ct2dwi_tables]
    return pd.concat(frames, ignore_index=True)


SUMMARY_GROUPINGS = {
    "method x b": ["task", "method", "b_value", "seen"],
    "method x organ x b": ["task", "method", "organ", "b_value", "seen"],
    "method x center x b": ["task", "method", "cohort", "center", "b_value", "seen"],
}
SUMMARY_COLUMNS = ["analysis", "grouping", "task", "method", "reference", "cohort", "center", "organ", "b_value",
                   "seen", "metric", "n", "mean", "ci_low", "ci_high", "mean_difference", "p_ttest", "p_wilcoxon",
                   "tost_margin", "p_tost", "equivalent", "loa_low", "loa_high", "icc_type", "icc", "icc_ci_low",
                   "icc_ci_high", "icc_label"]


BASELINES = {"multib": "cdwi", "ct2dwi": "pix2pix"}  # what each task's methods are compared with


def summarize(metrics, adc, baselines: dict | None = None, margin: float = 0.02):
    """summary.tsv: grouped means with 95% CI (units: subjects' volume scores); each method against the
    baseline with one value per subject (its mean over the b-values of that `seen` group), so n is the
    number of subjects; ADC agreement with the acquired ADC per subject: pooled over organs the mean
    difference, its tests and TOST equivalence within ±margin (x10^-3 mm²/s); per organ also
    Bland-Altman limits and ICC (pooling organs with ADC 0.8 and 2 would inflate them).
    baselines: {task: method}, default `BASELINES` (cDWI for multi-b; pix2pix for CT -> DWI, which has no cDWI)."""
    import pandas as pd

    from dwisynth.statistics import mean_ci, paired_agreement

    baselines = baselines or BASELINES
    rows = []
    volumes = metrics[metrics["slice"].astype(str) == "volume"]
    for grouping, keys in SUMMARY_GROUPINGS.items():
        for group, table in volumes.groupby(keys):
            ids = dict(zip(keys, group))
            lesion = [m for m in LESION_METRICS if m in table and table[m].notna().any()]
            for metric in METRICS + lesion:
                rows.append({"analysis": "image metrics", "grouping": grouping, **ids, "metric": metric,
                             **mean_ci(table[metric])})
    subject_keys = ["task", "method", "seen", "cohort", "subject"]
    per_subject = volumes.groupby(subject_keys)[["psnr", "ssim"]].mean().reset_index()
    for (task, method, seen), table in per_subject.groupby(["task", "method", "seen"]):
        baseline = baselines.get(task)
        if method == baseline or baseline is None:
            continue
        base = per_subject[(per_subject["method"] == baseline) & (per_subject["task"] == task)].drop(columns="method")
        paired = table.merge(base, on=["task", "seen", "cohort", "subject"], suffixes=("", "_baseline"))
        for metric in ("psnr", "ssim"):
            result = paired_agreement(paired[metric], paired[f"{metric}_baseline"], agreement=False)
            rows.append({"analysis": f"{metric} vs {baseline}", "grouping": "method", "task": task, "method": method,
                         "reference": baseline, "seen": seen, "metric": metric,
                         **{k: v for k, v in result.items() if not k.startswith("icc")}})
    if len(adc):
        for grouping, keys in {"method": ["task", "method"], "method x organ": ["task", "method", "organ"]}.items():
            for group, table in adc.groupby(keys):
                ids = dict(zip(keys, group))
                units = table["cohort"] + "/" + table["subject"]  # two cohorts may share a pseudonym
                result = paired_agreement(table["adc_synthetic"], table["adc_acquired"], units, margin=margin,
                                          agreement=grouping == "method x organ")
                rows.append({"analysis": "ADC agreement", "grouping": grouping, **ids, "reference": "acquired",
                             "metric": "adc", **result, "mean": float(table["adc_synthetic"].mean())})
    return pd.DataFrame(rows).reindex(columns=SUMMARY_COLUMNS)
