"""Scoring synthetic images and ADC maps against the acquisition, one subject at a time.

Every method is scored against the same acquired (normalized) images of the same
test subjects, inside the organ mask, on the normalization documented in
`dwisynth.metrics`. Only b-values the subject actually acquired are scored.
"""

from __future__ import annotations

import numpy as np

from dwisynth.diffusion import tissue_mask
from dwisynth.errors import DwisynthError
from dwisynth.metrics import host_ring, lesion_contrast, monotonicity_violations, spectral_peak, volume_metrics


def seen_label(b: float, heldout) -> str:
    return "heldout" if float(b) in {float(h) for h in heldout} else "trained"


def heldout_regime(b: float, inputs, targets) -> dict:
    """Where a held-out b lies against the b-values a test subject has (acquired inputs, stage-1 targets), and
    what a comparison of synthetic images there can show: {"b_value", "between" ("b1-b2" or "beyond b2"),
    "regime", "shows"}.

    The log-linear reading of exact images between (or beyond) b1 and b2 errs in ln S by the curvature term,
    for a kurtotic tissue -D²K/6 (b - b1)(b - b2) (Lagrange); quoted here for D 1e-3 mm²/s, K 1."""
    b = float(b)
    inputs, targets = sorted(map(float, inputs)), sorted(map(float, targets))
    stack = sorted(set(inputs) | set(targets))
    below, above = [x for x in stack if x < b], [x for x in stack if x > b]
    if below and above:
        b1, b2 = below[-1], above[0]
        between = f"{b1:g}-{b2:g}"
    else:  # beyond the ends: read on from the two nearest
        b1, b2 = (stack[-2], stack[-1]) if below else (stack[0], stack[1])
        between = f"beyond {b2:g}" if below else f"below {b1:g}"
    curvature = abs(1e-6 / 6 * (b - b1) * (b - b2))  # D 1e-3 mm²/s, K 1
    if below and above and b1 in inputs and b2 in inputs:
        regime, shows = "between acquired inputs", (
            f"the interpolation of two acquired images errs only by the signal's curvature between {b1:g} and "
            f"{b2:g}: perfusion (IVIM) in perfused tissue (liver with f 0.25, D* 50e-3: 7% at 75), about "
            f"{curvature:.2%} from kurtosis; what a learned model can add is that curvature, and denoising")
    elif below and above and b1 in targets and b2 in targets:
        regime, shows = "between stage-1 targets", (
            f"the log-linear reading of exact images at {b1:g} and {b2:g} errs by {curvature:.2%} (kurtosis, "
            "K 1), far below the noise: this comparison measures denoising of the stage-1 images only, not a "
            "learned signal model")
    elif below and above:
        regime, shows = "between an acquired and a synthesized b", (
            f"the reading of an acquired ({b1:g}) and a stage-1 ({b2:g}) image: curvature of about {curvature:.1%} "
            "(K 1) and the stage-1 image's error")
    else:
        regime, shows = "extrapolation", (
            f"beyond every trained b: log-linear extrapolation of exact images from {b1:g} and {b2:g} reads low by "
            f"about {curvature:.0%} (kurtosis, D 1e-3, K 1; a slope fitted over more b-values, lower still), the "
            "room a learned model has. The acquisition there is near "
            "the Rician noise floor: the truth is the reference, and an acquisition-referenced score rewards "
            "predicting the floor")
    return {"b_value": b, "between": between, "regime": regime, "shows": shows}


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


def _score_subject(s: dict, methods, targets, heldout, adc_min_snr: float = 0.0,
                   inputs=()) -> dict[str, list[dict]]:
    """The rows of every table (`TABLES`) of every method for one test subject (`evaluate_tables`)."""
    from dwisynth.io import load_dwi, load_map, load_mask, load_on_grid

    tables = {name: [] for name in TABLES}
    ids = {"task": "multib", "cohort": s["cohort"], "center": s["center"], "organ": s["organ"],
           "subject": s["subject"]}
    acquired, acquired_b = load_dwi(*s["acquired"])
    mask = load_mask(s["mask"])
    acquired_adc = load_map(s["adc"])
    grid = s["acquired"][0]  # the results grid (RAS) every truth and lesion file is brought onto
    truth_adc = load_on_grid(s["truth_adc"], grid) if s.get("truth_adc") else None
    # Fat-suppressed fat and air hold noise, whose ADC is noise: on the demo, over the whole mask even the
    # noise-free reference read 0.02-0.15 x10^-3 mm²/s from the acquired ADC, over tissue under 0.01.
    roi, sigma = tissue_mask(acquired[..., int(np.argmin(acquired_b))], mask, adc_min_snr)
    roi_name = f"{s['organ']}_b0snr{adc_min_snr:g}" if sigma > 0 else f"{s['organ']}_mask"
    if not roi.any():
        raise DwisynthError(f"sub-{s['subject']} ({s['acquired'][0]}): no voxel of the organ mask has a b0 SNR of "
                            f"{adc_min_snr:g} (background noise SD {sigma:.3g}); check its b0 volume, or lower "
                            f"adc.roi_min_snr")
    score_b = list(targets) + list(heldout)
    lesions = subject_lesions(s, grid, mask)
    input_sd = lesion_input_adc_sd(acquired, acquired_b, inputs, lesions, mask)
    truth = load_dwi(*s["truth_dwi"]) if s.get("truth_dwi") else None
    images = {"acquired": (acquired, acquired_b)}
    for method in methods:
        if method not in s["synth"]:
            continue
        dwi_path, bval_path, adc_path = s["synth"][method]
        pred, pred_b = load_dwi(dwi_path, bval_path)
        images[method] = (pred, pred_b)
        slices, volumes = score_synthesis(pred, pred_b, acquired, acquired_b, mask, score_b, heldout)
        tables["metrics"] += [{**ids, "method": method, **row} for row in slices + volumes]
        synthetic_adc = load_map(adc_path)
        agreement = adc_agreement(synthetic_adc, acquired_adc, roi, truth_adc)
        # the whole organ mask too, so a reader sees what the ROI left out
        agreement["difference_whole_mask"] = float(synthetic_adc[mask].mean() - acquired_adc[mask].mean())
        tables["adc"].append({**ids, "method": method, "roi": roi_name, **agreement})
        tables["lesion_adc"] += [{**ids, "method": method, **row, "adc_input_sd": input_sd.get(row["lesion_label"])}
                                 for row in lesion_adc_rows(synthetic_adc, acquired_adc, lesions, truth_adc)]
    if truth is not None:
        images["truth"] = truth
    contrast = lesion_contrast_rows(images, lesions, score_b, heldout, organ=mask)
    tables["lesion_contrast"] = [{**ids, **row} for row in contrast]
    if truth is not None:
        scored = {m: image for m, image in images.items() if m not in ("truth", TRUTH_METHOD)}
        tables["truth_metrics"] = [{**ids, **row} for row in truth_metric_rows(scored, truth, mask, score_b, heldout)]
    return tables


def evaluate_multib(subjects: list[dict], methods, targets, heldout, progress=print, workers: int = 1,
                    adc_min_snr: float = 0.0, inputs=()):
    """`evaluate_tables`' synthesis metrics and ADC agreement (the two tables every study has)."""
    tables = evaluate_tables(subjects, methods, targets, heldout, progress, workers, adc_min_snr, inputs)
    return tables["metrics"], tables["adc"]


def evaluate_tables(subjects: list[dict], methods, targets, heldout, progress=print, workers: int = 1,
                    adc_min_snr: float = 0.0, inputs=()) -> dict:
    """Score every method's synthetic images and ADC for every test subject of the multi-b task.

    subjects: dicts with cohort, center, organ, subject, `acquired` (normalized dwi, bval),
    `mask`, `adc` (acquired ADC), optional `truth_adc` (the demo's apparent ADC: its noise-free signal fitted on
    the ADC b-values), `truth_dwi` (dwi, bval: the noise-free reference on the normalized scale), `lesion` (a
    lesion mask, any grid), `dseg` (a tissue label map, any grid) and `label_names` (its TSV of index, name), and
    `synth` {method: (dwi, bval, adc)}; a method without files for a subject is skipped.
    workers: subjects scored at once, in processes (the rows come back in subject order: the same tables).
    adc_min_snr: ADC agreement counts the mask's voxels whose acquired b0 SNR reaches it (`tissue_mask`;
    config `adc.roi_min_snr`); 0: the whole mask.
    inputs: the input b-values (`bvalues.inputs`), for each lesion's `adc_input_sd` (`lesion_input_adc_sd`).
    Returns {table: data frame} for every name in `TABLES` (metrics: synthesis_metrics, adc: adc_agreement,
    lesion_adc, lesion_contrast, truth_metrics).
    """
    import concurrent.futures
    import contextlib
    import multiprocessing

    import pandas as pd

    rows = {name: [] for name in TABLES}
    n = len(subjects)
    with contextlib.ExitStack() as stack:
        if workers > 1 and n > 1:
            pool = stack.enter_context(concurrent.futures.ProcessPoolExecutor(
                min(workers, n), mp_context=multiprocessing.get_context("fork")))
            scored = pool.map(_score_subject, subjects,
                              *([x] * n for x in (methods, targets, heldout, adc_min_snr, inputs)))
        else:
            scored = (_score_subject(s, methods, targets, heldout, adc_min_snr, inputs) for s in subjects)
        for i, (s, tables) in enumerate(zip(subjects, scored), 1):
            for name in TABLES:
                rows[name] += tables[name]
            progress(f"[evaluate] {i}/{n} sub-{s['subject']} scored")
    frames = {name: pd.DataFrame(rows[name]) if columns is None else pd.DataFrame(rows[name]).reindex(columns=columns)
              for name, columns in TABLES.items()}
    frames["metrics"] = frames["metrics"].reindex(columns=TABLE_KEYS + ["slice", "b_value", "seen"] + METRICS)
    return frames


# --- lesions and the truth (the demo knows it; a study gives lesion masks) ------------------------------------
TRUTH_METHOD = "noisefree"  # the method whose images are the truth where it exists (the demo's)
LESION_ADC_COLUMNS = TABLE_KEYS + ["lesion_label", "lesion_name", "voxels", "adc_synthetic", "adc_acquired",
                                   "adc_truth", "difference", "relative_difference", "relative_difference_vs_truth",
                                   "adc_input_sd"]
LESION_CONTRAST_COLUMNS = TABLE_KEYS + ["lesion_label", "lesion_name", "host_label", "host_name", "voxels", "b_value",
                                        "seen", "contrast", "contrast_truth", "contrast_acquired",
                                        "relative_error_vs_truth", "conspicuity"]
TRUTH_METRICS_COLUMNS = TABLE_KEYS + ["b_value", "seen", "psnr", "ssim", "mae", "spectral_peak"]
TABLES = {"metrics": None, "adc": None, "lesion_adc": LESION_ADC_COLUMNS, "lesion_contrast": LESION_CONTRAST_COLUMNS,
          "truth_metrics": TRUTH_METRICS_COLUMNS}


def read_label_names(path) -> dict[int, str]:
    """{label: name} of a label map's TSV (BIDS dseg.tsv: columns index, name)."""
    import pandas as pd

    table = pd.read_csv(path, sep="\t")
    return {int(i): str(name) for i, name in zip(table["index"], table["name"])}


def lesion_name(label: int, names: dict | None) -> str:
    """A lesion label's name: the label map's, else `lesion` (label 1, a binary mask) or lesion_<label>."""
    if names and label in names:
        return names[label]
    return "lesion" if label == 1 else f"lesion_{label}"


def lesion_labels(lesion: np.ndarray, dseg: np.ndarray | None = None) -> dict[int, np.ndarray]:
    """The lesions to score, {label: (X, Y, Z) bool}: with a tissue label map (the demo's dseg), each of its
    labels inside the lesion mask; without, each nonzero integer value of the lesion mask."""
    lesion = np.rint(np.asarray(lesion)).astype(int)
    labels = lesion if dseg is None else np.where(lesion != 0, np.rint(np.asarray(dseg)).astype(int), 0)
    return {int(k): labels == k for k in np.unique(labels) if k != 0}


def subject_lesions(s: dict, grid, mask: np.ndarray) -> dict:
    """One subject's lesions on the results grid: {"lesions": {label: bool mask inside the organ mask},
    "dseg": int label map or None, "names": {label: name} or None}; no lesion mask: no lesions."""
    from dwisynth.io import load_on_grid

    if not s.get("lesion"):
        return {"lesions": {}, "dseg": None, "names": None}
    dseg = np.rint(load_on_grid(s["dseg"], grid, order=0)).astype(int) if s.get("dseg") else None
    names = read_label_names(s["label_names"]) if s.get("label_names") else None
    lesions = {k: m & mask for k, m in lesion_labels(load_on_grid(s["lesion"], grid, order=0), dseg).items()}
    return {"lesions": {k: m for k, m in lesions.items() if m.any()}, "dseg": dseg, "names": names}


def _relative(value: float, reference: float) -> float:
    return value / reference - 1.0 if reference and np.isfinite(reference) else float("nan")


def lesion_adc_rows(synthetic_adc: np.ndarray, acquired_adc: np.ndarray, lesions: dict,
                    truth_adc: np.ndarray | None = None) -> list[dict]:
    """Mean ADC (x10^-3 mm²/s) in each lesion label (`subject_lesions`): synthetic, acquired, truth (NaN where
    unknown), difference (synthetic - acquired) and relative differences (synthetic / acquired - 1,
    synthetic / truth - 1)."""
    rows = []
    for label, region in lesions["lesions"].items():
        synthetic, acquired = float(synthetic_adc[region].mean()), float(acquired_adc[region].mean())
        truth = float(truth_adc[region].mean()) if truth_adc is not None else float("nan")
        rows.append({"lesion_label": label, "lesion_name": lesion_name(label, lesions["names"]),
                     "voxels": int(region.sum()), "adc_synthetic": synthetic, "adc_acquired": acquired,
                     "adc_truth": truth, "difference": synthetic - acquired,
                     "relative_difference": _relative(synthetic, acquired),
                     "relative_difference_vs_truth": _relative(synthetic, truth)})
    return rows


def lesion_input_adc_sd(acquired: np.ndarray, acquired_b, inputs, lesions: dict, mask: np.ndarray) -> dict:
    """{lesion label: SD (x10^-3 mm²/s)} of the lesion's mean ADC read from the input b-values alone.

    The slope ln(S_lo / S_hi) / (b_hi - b_lo) between the lowest and highest input b, averaged over the lesion's n
    voxels, with the acquisition's noise (`noise_sigma_background` of the lowest b) propagated as independent
    per voxel: sigma sqrt(1 / S_lo² + 1 / S_hi²) / (sqrt(n) (b_hi - b_lo)), S the lesion's mean signals. This is
    what the inputs say about the lesion's diffusion; a network can read the lesion's ADC more precisely only
    from priors (shape, S0), not from its signal decay. Empty without two input b-values in the acquisition or
    a background to measure the noise in."""
    from dwisynth.diffusion import noise_sigma_background

    b = np.asarray(acquired_b, float)
    present = [x for x in inputs if np.any(np.isclose(b, float(x)))]
    if len(present) < 2 or not lesions["lesions"]:
        return {}
    lo, hi = (int(np.flatnonzero(np.isclose(b, float(x)))[0]) for x in (min(present), max(present)))
    sigma = noise_sigma_background(acquired[..., lo], mask)
    if not sigma > 0:
        return {}
    span = (b[hi] - b[lo]) / 1000.0  # ADC in x10^-3 mm²/s
    sd = {}
    for label, region in lesions["lesions"].items():
        s_lo, s_hi = float(acquired[..., lo][region].mean()), float(acquired[..., hi][region].mean())
        if s_lo > 0 and s_hi > 0:
            sd[label] = sigma * np.sqrt(1 / s_lo**2 + 1 / s_hi**2) / (np.sqrt(region.sum()) * span)
    return sd


def _volume_at(images: dict, name: str, b: float):
    if name not in images:
        return None
    data, bvals = images[name]
    bvals = [float(x) for x in bvals]
    return data[..., bvals.index(b)] if b in bvals else None


def lesion_contrast_rows(images: dict, lesions: dict, score_b, heldout=(),
                         organ: np.ndarray | None = None) -> list[dict]:
    """Lesion contrast C = lesion mean / host mean - 1 of each lesion label at each b, for every image source.

    images: {method: (4D image, b-values)}, with "acquired" and (where known) "truth" (the noise-free
    reference); lesions: `subject_lesions`; organ: the organ mask the host ring stays in (default: every
    voxel). The host is `host_ring` of the label, kept out of every lesion, restricted to the ring's commonest
    tissue label where a label map exists (else the ring itself, host_name "ring"). A b is scored for a source
    that holds it when the truth or the acquisition holds it too. Rows: method (each source, "acquired",
    "truth"), lesion and host, b_value, seen, contrast, contrast_truth, contrast_acquired, relative error vs
    truth ((C - C_truth) / |C_truth|) and conspicuity (C / C_truth)."""
    if not lesions["lesions"]:
        return []
    any_shape = next(iter(lesions["lesions"].values())).shape
    organ = np.ones(any_shape, bool) if organ is None else np.asarray(organ, bool)
    every_lesion = np.any(list(lesions["lesions"].values()), axis=0)
    dseg, names = lesions["dseg"], lesions["names"]
    rows = []
    for label, region in lesions["lesions"].items():
        host = host_ring(region, organ & ~every_lesion, labels=dseg)
        if dseg is not None and host.any():
            host_label = int(np.bincount(dseg[host]).argmax())
            host_name = (names or {}).get(host_label, f"label_{host_label}")
        else:
            host_label, host_name = None, "ring"
        ids = {"lesion_label": label, "lesion_name": lesion_name(label, names), "host_label": host_label,
               "host_name": host_name, "voxels": int(region.sum())}
        for b in (float(x) for x in score_b):
            truth, acquired = _volume_at(images, "truth", b), _volume_at(images, "acquired", b)
            if truth is None and acquired is None:
                continue
            c_truth = lesion_contrast(truth, region, host) if truth is not None else float("nan")
            c_acquired = lesion_contrast(acquired, region, host) if acquired is not None else float("nan")
            for method in images:
                image = _volume_at(images, method, b)
                if image is None or method == TRUTH_METHOD:  # the noise-free reference is the "truth" row
                    continue
                c = lesion_contrast(image, region, host)
                usable = np.isfinite(c_truth) and c_truth != 0
                rows.append({"method": method, **ids, "b_value": b, "seen": seen_label(b, heldout), "contrast": c,
                             "contrast_truth": c_truth, "contrast_acquired": c_acquired,
                             "relative_error_vs_truth": (c - c_truth) / abs(c_truth) if usable else float("nan"),
                             "conspicuity": c / c_truth if usable else float("nan")})
    return rows


def truth_metric_rows(images: dict, truth: tuple, mask: np.ndarray, score_b, heldout=()) -> list[dict]:
    """PSNR, SSIM and MAE of each source against the noise-free truth (`volume_metrics` with the truth as the
    reference: both divided by the truth's 99.5th percentile in the mask), and `spectral_peak` of the residual,
    at every b in score_b that the source and the truth hold. images: {method: (4D image, b-values)}, the
    acquisition as "acquired" (the reference row: what noise alone costs)."""
    rows = []
    truth_images = {"truth": truth}
    for b in (float(x) for x in score_b):
        reference = _volume_at(truth_images, "truth", b)
        if reference is None:
            continue
        for method in images:
            image = _volume_at(images, method, b)
            if image is None:
                continue
            _, volume = volume_metrics(image, reference, mask)
            rows.append({"method": method, "b_value": b, "seen": seen_label(b, heldout), "psnr": volume["psnr"],
                         "ssim": volume["ssim"], "mae": volume["mae"],
                         "spectral_peak": spectral_peak(image - reference, mask)})
    return rows


LESION_METRICS = ["lesion_psnr", "lesion_ssim", "lesion_mse", "lesion_mae", "lesion_contrast",
                  "lesion_conspicuity_vs_acquired"]


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


def summarize(metrics, adc, baselines: dict | None = None, margin: float = 0.02, lesion_adc=None):
    """summary.tsv: grouped means with 95% CI (units: subjects' volume scores); each method against the
    baseline with one value per subject (its mean over the b-values of that `seen` group), so n is the
    number of subjects; ADC agreement with the acquired ADC per subject: pooled over organs the mean
    difference, its tests and TOST equivalence within ±margin (x10^-3 mm²/s); per organ also
    Bland-Altman limits and ICC (pooling organs with ADC 0.8 and 2 would inflate them).
    baselines: {task: method}, default `BASELINES` (cDWI for multi-b; pix2pix for CT -> DWI, which has no cDWI).
    lesion_adc: the lesion_adc table; its "lesion ADC agreement" is the same analysis, one pair per lesion
    label of a subject (a lesion's ADC is what a reader measures; the organ's mean hides it)."""
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
    rows += _adc_agreement_rows(adc, "ADC agreement", margin)
    if lesion_adc is not None:
        rows += _adc_agreement_rows(lesion_adc, "lesion ADC agreement", margin, unit_keys=("lesion_label",))
    return pd.DataFrame(rows).reindex(columns=SUMMARY_COLUMNS)


def _adc_agreement_rows(adc, analysis: str, margin: float, unit_keys=()) -> list[dict]:
    """Synthetic vs acquired ADC with `paired_agreement`, per method (pooled: tests and TOST) and per method x
    organ (also Bland-Altman and ICC); a unit is a cohort/subject (and its unit_keys: a lesion label)."""
    from dwisynth.statistics import paired_agreement

    rows = []
    if adc is None or not len(adc):
        return rows
    for grouping, keys in {"method": ["task", "method"], "method x organ": ["task", "method", "organ"]}.items():
        for group, table in adc.groupby(keys):
            ids = dict(zip(keys, group))
            units = table["cohort"] + "/" + table["subject"]  # two cohorts may share a pseudonym
            for key in unit_keys:
                units = units + "/" + table[key].astype(str)
            result = paired_agreement(table["adc_synthetic"], table["adc_acquired"], units, margin=margin,
                                      agreement=grouping == "method x organ")
            rows.append({"analysis": analysis, "grouping": grouping, **ids, "reference": "acquired",
                         "metric": "adc", **result, "mean": float(table["adc_synthetic"].mean())})
    return rows


# --- monotonicity of networks that synthesize any b --------------------------------------------------------
MONOTONICITY_B_STEP = 25.0  # s/mm² between grid b-values (the default of config evaluation.monotonicity_b_step)
MONOTONICITY_RISE = 0.005  # a rise above this fraction of S0 between two grid b-values is a violation
MONOTONICITY_COLUMNS = TABLE_KEYS + ["b_step", "b_max", "tissue_voxels", "violating_fraction", "worst_interval",
                                     "worst_interval_share"]


def any_b_methods(methods) -> list[str]:
    """The methods among `methods` that synthesize any b in a range (their config block has `b_range`)."""
    import dataclasses

    from dwisynth.networks.base import networks

    registry = networks()
    return [m for m in methods if m in registry
            and "b_range" in {f.name for f in dataclasses.fields(registry[m].Config)}]


def monotonicity_grid(b_range, b_step: float = MONOTONICITY_B_STEP) -> np.ndarray:
    """b = 0, b_step, 2 b_step, ... up to max(b_range), kept inside b_range (s/mm²)."""
    lo, hi = (float(b) for b in b_range)
    if not b_step > 0:
        raise ValueError(f"the monotonicity b step must be positive, not {b_step:g}")
    grid = np.arange(0.0, hi + b_step / 2, b_step)
    grid = grid[(grid >= lo) & (grid <= hi)]
    return np.unique(np.append(grid, hi)) if grid.size else np.array([hi])


def monotonicity_scores(signal: np.ndarray, grid, s0: np.ndarray, tissue: np.ndarray,
                        rise: float = MONOTONICITY_RISE) -> dict:
    """How often a synthetic signal (X, Y, Z, len(grid)) rises with b in the tissue voxels: the fraction of
    them whose signal rises by more than rise * s0 between any two consecutive grid b-values, and the
    interval holding most of the rises ("b1-b2", and its share of all rises; "" and 0 without any)."""
    grid = [float(b) for b in grid]
    voxels, violating, per_interval = monotonicity_violations(signal, s0, tissue, rise)
    total = int(per_interval.sum())
    worst = int(np.argmax(per_interval)) if total else None
    return {"tissue_voxels": voxels, "violating_fraction": violating / voxels if voxels else float("nan"),
            "worst_interval": f"{grid[worst]:g}-{grid[worst + 1]:g}" if worst is not None else "",
            "worst_interval_share": per_interval[worst] / total if total else 0.0}


def monotonicity_subject(model_path, dwi_path, bval_path, mask_path, ids: dict, b_step: float = MONOTONICITY_B_STEP,
                         min_snr: float = 0.0, device: str = "auto", rise: float = MONOTONICITY_RISE):
    """One test subject's monotonicity row (`MONOTONICITY_COLUMNS`) for a model that synthesizes any b: its
    images on `monotonicity_grid` over the model's b_range, scored in the organ mask's voxels whose acquired
    b0 reaches min_snr (`tissue_mask`, config adc.roi_min_snr), against S0 = its b0 input."""
    import pandas as pd

    from dwisynth.inference import load_model, synthesize_volume
    from dwisynth.io import load_dwi, load_mask

    model = load_model(model_path, device)
    if not model.b_conditioned:
        raise DwisynthError(f"{model_path}: {model.record.get('method')} synthesizes fixed b-values only; "
                            "monotonicity is scored for models that synthesize any b (MineGAN)")
    dwi, bvals = load_dwi(dwi_path, bval_path)
    grid = monotonicity_grid(model.record["b_range"], b_step)
    signal = synthesize_volume(model, dwi, bvals, ids.get("subject", "?"), list(grid))
    s0 = dwi[..., [float(b) for b in bvals].index(min(model.input_b))]
    tissue, _ = tissue_mask(dwi[..., int(np.argmin(bvals))], load_mask(mask_path), min_snr)
    row = {**ids, "b_step": float(b_step), "b_max": float(grid[-1]), **monotonicity_scores(signal, grid, s0, tissue, rise)}
    return pd.DataFrame([row]).reindex(columns=MONOTONICITY_COLUMNS)


def gather_tables(paths, columns=MONOTONICITY_COLUMNS):
    """One table of the per-subject TSVs at `paths` (in their order; none: the header alone)."""
    import pandas as pd

    frames = [pd.read_csv(path, sep="\t", keep_default_na=False, na_values=[""]) for path in paths]
    return pd.concat(frames, ignore_index=True).reindex(columns=columns) if frames else pd.DataFrame(columns=columns)
