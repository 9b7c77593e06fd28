"""Preprocessing benchmark on a finished demo run: time and memory per step, accuracy against the truth.

Usage: .venv/bin/python bench/preprocess.py [RUN_DIR]   (RUN_DIR defaults to this checkout, after `make demo`)
Writes bench/results/preprocess_{timing,adc,masks,registration,hdbet_precision}.tsv and prints the tables.
It reports; it asserts nothing about speed.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import nibabel as nib
import numpy as np
import pandas as pd

from dwisynth.config import adc_settings
from dwisynth.preprocess.qa import adc_error_by_tissue, dice, registration_residual_mm, voxel_centres_lps
from dwisynth.provenance import run_config

STEPS = ["convert_dwi", "convert_ct", "register_dwi", "organ_mask", "normalize_dwi", "adc_acquired", "register_ct",
         "slice_shard"]


def load(path):
    img = nib.as_closest_canonical(nib.load(path))
    return img, np.asarray(img.dataobj)


def timing(run: Path) -> pd.DataFrame:
    rows = []
    for step in STEPS:
        files = list((run / "benchmarks" / step).glob("*/*.tsv"))
        if not files:
            continue
        table = pd.concat([pd.read_csv(f, sep="\t") for f in files])
        rows.append({"step": step, "subjects": len(files), "seconds_mean": table["s"].mean(),
                     "seconds_max": table["s"].max(), "peak_rss_mb_max": table["max_rss"].max()})
    return pd.DataFrame(rows)


def accuracy(run: Path):
    tissues = pd.read_csv(run / "data/demo/truth/dseg.tsv", sep="\t")
    names = dict(zip(tissues["index"], tissues["name"]))
    adc_rows, mask_rows, reg_rows = [], [], []
    for adc_path in sorted((run / "results").glob("*/preproc/sub-*/sub-*_adc.nii.gz")):
        cohort, subject = adc_path.parts[-4], adc_path.parent.name[4:]
        truth = run / f"data/demo/truth/{cohort}/sub-{subject}/sub-{subject}"
        meta = json.loads(truth.with_name(f"sub-{subject}_truth.json").read_text())
        _, adc = load(adc_path)
        _, mask = load(str(adc_path).replace("_adc.nii.gz", "_desc-organ_mask.nii.gz"))
        record = json.loads(Path(str(adc_path).replace("_adc.nii.gz", "_desc-organ_mask.json")).read_text())
        _, truth_mask = load(f"{truth}_desc-organ_mask.nii.gz")
        mask_rows.append({"cohort": cohort, "subject": subject, "organ": meta["organ"], "method": record["method"],
                          "dice_vs_phantom": dice(mask > 0, truth_mask > 0)})
        _, noise_free = load(f"{truth}_desc-noisefree_dwi.nii.gz")
        truth_b = list(np.loadtxt(f"{truth}_desc-noisefree_dwi.bval"))
        b0, high_b = (noise_free[..., truth_b.index(b)] for b in (0.0, max(meta["adc_fit_bvals"])))
        labels, purity = load(f"{truth}_dseg.nii.gz")[1], load(f"{truth}_desc-purity_probseg.nii.gz")[1]
        references = {  # apparent: the noise-free signal fitted on the same b-values; ivim_D: perfusion removed
            "apparent": load(f"{truth}_desc-truth_adc.nii.gz")[1],
            "ivim_D": load(f"{truth}_desc-truth_ivimd.nii.gz")[1],
        }
        for reference, truth_adc in references.items():
            table = adc_error_by_tissue(adc, truth_adc, labels, purity, mask > 0, names,
                                        b0_snr=b0 / meta["noise_sigma"], high_b_snr=high_b / meta["noise_sigma"])
            for row in table.to_dict("records"):
                adc_rows.append({"reference": reference, "center": meta["center"], "organ": meta["organ"],
                                 "n_b": len(meta["acquired_bvals"]), "snr": meta["snr"], "subject": subject, **row})
        xfm = Path(str(adc_path).replace("_adc.nii.gz", "_from-ct_to-dwi_xfm.json"))
        if xfm.exists():
            img, brain = load(f"{truth}_desc-organ_mask.nii.gz")
            points = voxel_centres_lps(brain > 0, img.affine)
            truth_motion = np.array(meta["ct_to_dwi_lps"])
            before, _ = registration_residual_mm(np.eye(4), truth_motion, points)
            mean_mm, max_mm = registration_residual_mm(np.array(json.loads(xfm.read_text())["fixed_to_moving_lps"]),
                                                       truth_motion, points)
            reg_rows.append({"subject": subject, "planted_mean_mm": before, "residual_mean_mm": mean_mm,
                             "residual_max_mm": max_mm})
    return pd.DataFrame(adc_rows), pd.DataFrame(mask_rows), pd.DataFrame(reg_rows)


def noise_floor_effect(run: Path) -> pd.DataFrame:
    """ADC error against the apparent-ADC truth per tissue with `adc.noise_floor` none and background, refitted
    here from the run's normalized images on the run's ADC b-values (what the option changes on the demo)."""
    from dwisynth.diffusion import adc_fit_bvalues, fit_adc
    from dwisynth.preprocess.steps import noise_floor_sigma

    tissues = pd.read_csv(run / "data/demo/truth/dseg.tsv", sep="\t")
    names = dict(zip(tissues["index"], tissues["name"]))
    allowed = adc_settings(run_config(run))["bvalues"]
    rows = []
    for dwi_path in sorted((run / "results").glob("*/preproc/sub-*/sub-*_desc-norm_dwi.nii.gz")):
        cohort, subject = dwi_path.parts[-4], dwi_path.parent.name[4:]
        truth = run / f"data/demo/truth/{cohort}/sub-{subject}/sub-{subject}"
        meta = json.loads(Path(f"{truth}_truth.json").read_text())
        _, dwi = load(dwi_path)
        bvals = np.loadtxt(str(dwi_path).replace(".nii.gz", ".bval"), ndmin=1)
        mask = load(str(dwi_path).replace("_desc-norm_dwi.nii.gz", "_desc-organ_mask.nii.gz"))[1] > 0
        use_b = adc_fit_bvalues(allowed, bvals)
        reference = load(f"{truth}_desc-truth_adc.nii.gz")[1]
        labels, purity = load(f"{truth}_dseg.nii.gz")[1], load(f"{truth}_desc-purity_probseg.nii.gz")[1]
        for method in ("none", "background"):
            sigma = noise_floor_sigma(dwi.astype(float), mask, method)
            adc = fit_adc(dwi, bvals, mask=mask, use_b=use_b, sigma=sigma)
            for row in adc_error_by_tissue(adc, reference, labels, purity, mask, names).to_dict("records"):
                rows.append({"noise_floor": method, "organ": meta["organ"], "snr": meta["snr"],
                             "subject": subject, **row})
    return pd.DataFrame(rows)


def hdbet_precision(run: Path, subjects: int = 3) -> pd.DataFrame:
    """HD-BET v1 in float32 and bfloat16 on the first demo brains, one thread: seconds, Dice to each other
    and to the phantom (masking.hdbet_precision)."""
    import time

    import torch

    from dwisynth.preprocess.masking import hd_bet_v1_mask

    torch.set_num_threads(1)
    rows = []
    records = sorted((run / "results").glob("*/preproc/sub-*/sub-*_desc-organ_mask.json"))
    brains = [r for r in records if json.loads(r.read_text())["organ"] == "brain"][:subjects]
    for record_path in brains:
        cohort, subject = record_path.parts[-4], record_path.parent.name[4:]
        img, dwi = load(str(record_path).replace("_desc-organ_mask.json", "_desc-reg_dwi.nii.gz"))
        bvals = np.loadtxt(str(record_path).replace("_desc-organ_mask.json", "_desc-reg_dwi.bval"), ndmin=1)
        high_b = dwi[..., int(np.argmax(bvals))].astype(np.float32)
        _, truth = load(run / f"data/demo/truth/{cohort}/sub-{subject}/sub-{subject}_desc-organ_mask.nii.gz")
        masks = {}
        for precision in ("float32", "bfloat16"):
            start = time.perf_counter()
            masks[precision] = hd_bet_v1_mask(high_b, img.header.get_zooms()[:3], precision=precision)
            rows.append({"subject": subject, "precision": precision, "seconds": time.perf_counter() - start,
                         "dice_vs_phantom": dice(masks[precision], truth > 0)})
        rows[-1]["dice_vs_float32"] = dice(masks["bfloat16"], masks["float32"])
        rows[-1]["voxels_differing"] = int((masks["bfloat16"] != masks["float32"]).sum())
    return pd.DataFrame(rows)


def main(run: Path) -> None:
    out = Path(__file__).resolve().parent / "results"
    out.mkdir(exist_ok=True)
    time_table = timing(run)
    adc_table, mask_table, reg_table = accuracy(run)
    time_table.to_csv(out / "preprocess_timing.tsv", sep="\t", index=False)
    adc_table.to_csv(out / "preprocess_adc.tsv", sep="\t", index=False)
    mask_table.to_csv(out / "preprocess_masks.tsv", sep="\t", index=False)
    reg_table.to_csv(out / "preprocess_registration.tsv", sep="\t", index=False)
    floor_table = noise_floor_effect(run)
    floor_table.to_csv(out / "preprocess_noise_floor.tsv", sep="\t", index=False)
    precision_table = hdbet_precision(run)
    precision_table.to_csv(out / "preprocess_hdbet_precision.tsv", sep="\t", index=False)
    pd.set_option("display.width", 160)
    print("== seconds per subject and peak memory, per step ==")
    print(time_table.round(2).to_string(index=False))
    print("\n== ADC median absolute error per tissue (x10^-3 mm²/s), median over subjects ==")
    summary = (adc_table.groupby(["reference", "organ", "tissue"])
               .agg(subjects=("subject", "nunique"), snr=("snr", "median"), snr_high_b=("snr_high_b", "median"),
                    median_abs_error=("median_abs_error", "median"), worst_abs_error=("median_abs_error", "max"),
                    median_error=("median_error", "median")).reset_index())
    print(summary.round(3).to_string(index=False))
    apparent = adc_table[(adc_table["reference"] == "apparent") & (adc_table["snr"] >= 25)]
    floor = apparent["snr_high_b"] < 3
    print(f"\ntissues with b0 SNR >= 25 ({len(apparent)} subject-tissues): worst tissue bias "
          f"|median error| {apparent.loc[~floor, 'median_error'].abs().max():.3f} (target < 0.05), worst voxel "
          f"median |error| {apparent.loc[~floor, 'median_abs_error'].max():.3f}; on the Rician floor at high b "
          f"(< 3 sigma, {int(floor.sum())}): worst bias {apparent.loc[floor, 'median_error'].abs().max():.3f}")
    print("\n== masks: Dice against the phantom ==")
    print(mask_table.groupby(["organ", "method"])["dice_vs_phantom"].describe()[["count", "mean", "min"]]
          .round(3).to_string())
    print("\n== HD-BET v1 precision (masking.hdbet_precision), one thread ==")
    print(precision_table.round(4).to_string(index=False))
    print("\n== adc.noise_floor: ADC median error per tissue against the apparent-ADC truth, median over subjects ==")
    print(floor_table.pivot_table(index=["organ", "tissue"], columns="noise_floor", values="median_error",
                                  aggfunc="median").round(3).to_string())
    if len(reg_table):
        print("\n== CT -> DWI registration (mm) ==")
        print(reg_table.round(2).to_string(index=False))


if __name__ == "__main__":
    main(Path(sys.argv[1]) if len(sys.argv) > 1 else Path(__file__).resolve().parents[1])
