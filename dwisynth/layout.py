"""Where every file lives: one function per kind of file, for rules, scripts and the CLI.

Paths are relative to the workflow's working directory and follow BIDS-derivatives
habits (`sub-<id>_<desc>_<suffix>`). Pass "{cohort}"/"{subject}"/"{method}"/"{organ}"
to get the wildcard pattern a rule declares; pass values to get one file. Nobody
parses a cohort or subject back out of a path: they travel as data.
"""

from __future__ import annotations

from pathlib import Path

RESULTS = "results"
SPLIT = f"{RESULTS}/datasets/split.tsv"
METRICS = f"{RESULTS}/tables/synthesis_metrics.tsv"
ADC_AGREEMENT = f"{RESULTS}/tables/adc_agreement.tsv"
SUMMARY = f"{RESULTS}/tables/summary.tsv"
CLAIMS = f"{RESULTS}/tables/claims.tsv"  # each claim against its strongest baseline (dwisynth.claims)
TRAINING_COMPUTE = f"{RESULTS}/tables/training_compute.tsv"  # per multi-b model: steps, seconds, parameters
LESION_ADC = f"{RESULTS}/tables/lesion_adc.tsv"  # mean ADC per lesion label: synthetic, acquired, truth
LESION_CONTRAST = f"{RESULTS}/tables/lesion_contrast.tsv"  # lesion vs host contrast per label and b
TRUTH_METRICS = f"{RESULTS}/tables/truth_metrics.tsv"  # PSNR/SSIM/MAE/spectral peak against the noise-free truth
MONOTONICITY = f"{RESULTS}/tables/monotonicity.tsv"  # signal rising with b, for networks that synthesize any b
CT2DWI_TRUTH_METRICS = f"{RESULTS}/tables/ct2dwi/truth_metrics.tsv"  # the same for CT -> DWI (the demo)
CT2DWI_LESION_CONTRAST = f"{RESULTS}/tables/ct2dwi/lesion_contrast.tsv"
REPORT = f"{RESULTS}/report.html"
MODALITY_SUFFIX = {"DWI": "dwi", "CT": "ct"}


def nifti_stem(cohort: str, subject: str) -> str:
    return f"{RESULTS}/{cohort}/nifti/sub-{subject}/sub-{subject}"


def nifti(cohort: str, subject: str, modality: str) -> dict[str, str]:
    """The converted series: image, BIDS sidecar, header QC record (+ .bval/.bvec for DWI)."""
    stem = f"{nifti_stem(cohort, subject)}_{MODALITY_SUFFIX[modality]}"
    files = {"nifti": f"{stem}.nii.gz", "sidecar": f"{stem}.json", "qc": f"{stem}_qc.json"}
    if modality == "DWI":
        files |= {"bval": f"{stem}.bval", "bvec": f"{stem}.bvec"}
    return files


def preproc_stem(cohort: str, subject: str) -> str:
    return f"{RESULTS}/{cohort}/preproc/sub-{subject}/sub-{subject}"


def preproc_files(stem: str | Path) -> dict[str, str]:
    """Every preprocessing output of one subject, by name, below `stem` (a results stem or a CLI folder)."""
    return {name: f"{stem}_{suffix}" for name, suffix in (
        ("reg_dwi", "desc-reg_dwi.nii.gz"), ("reg_bval", "desc-reg_dwi.bval"), ("reg_xfm", "desc-reg_xfm.json"),
        ("mask", "desc-organ_mask.nii.gz"), ("mask_record", "desc-organ_mask.json"),
        ("dwi", "desc-norm_dwi.nii.gz"), ("bval", "desc-norm_dwi.bval"), ("norm_record", "desc-norm_dwi.json"),
        ("adc", "adc.nii.gz"), ("ct", "space-dwi_ct.nii.gz"), ("ct_xfm", "from-ct_to-dwi_xfm.json"),
        ("ct_mask", "space-dwi_desc-ctbrain_mask.nii.gz"), ("ct_mask_record", "space-dwi_desc-ctbrain_mask.json"))}


def preproc(cohort: str, subject: str) -> dict[str, str]:
    return preproc_files(preproc_stem(cohort, subject))


def shard(cohort: str, subject: str) -> str:
    """The subject's 2D slice shard (every masked slice at every grid b-value)."""
    return f"{RESULTS}/{cohort}/slices/sub-{subject}_slices.npz"


def synth_stem(method: str, cohort: str, subject: str) -> str:
    return f"{RESULTS}/{cohort}/synth/{method}/sub-{subject}/sub-{subject}_desc-{method}"


def synth_files(stem: str | Path) -> dict[str, str]:
    """One method's images for one subject: 4D DWI (inputs then targets), its .bval and the ADC map."""
    return {"dwi": f"{stem}_dwi.nii.gz", "bval": f"{stem}_dwi.bval", "adc": f"{stem}_adc.nii.gz"}


def synth(method: str, cohort: str, subject: str) -> dict[str, str]:
    return synth_files(synth_stem(method, cohort, subject))


def monotonicity(method: str, cohort: str, subject: str) -> str:
    """One subject's monotonicity row for a network that synthesizes any b (gathered into MONOTONICITY)."""
    return f"{synth_stem(method, cohort, subject)}_monotonicity.tsv"


def synth_folder_files(folder: str | Path, method: str, subject: str) -> dict[str, str]:
    """The same names in a folder of the user's choosing (`dwisynth synthesize -o`)."""
    return synth_files(Path(folder) / Path(synth_stem(method, "_", subject)).name)


def model_dir(method: str, organ: str) -> str:
    return f"{RESULTS}/models/{method}/{organ}"


def model(method: str, organ: str) -> str:
    return f"{model_dir(method, organ)}/model.pt"


def training_log(method: str, organ: str) -> str:
    return f"{model_dir(method, organ)}/training_log.csv"


# --- CT -> DWI (stroke): experiments of JMMDA-GAN and its comparisons -------------------------------
CT2DWI_EXPERIMENTS = f"{RESULTS}/tables/ct2dwi_experiments.tsv"
CT2DWI_COMPUTE = f"{RESULTS}/tables/ct2dwi_compute.tsv"  # parameters and training wall time (machine-dependent)


def ct2dwi_model_dir(experiment: str, method: str) -> str:
    return f"{RESULTS}/models/ct2dwi/{experiment}/{method}"


def ct2dwi_model(experiment: str, method: str) -> str:
    return f"{ct2dwi_model_dir(experiment, method)}/model.pt"


def ct2dwi_training_log(experiment: str, method: str) -> str:
    return f"{ct2dwi_model_dir(experiment, method)}/training_log.csv"


def ct2dwi_synth(experiment: str, method: str, cohort: str, subject: str) -> dict[str, str]:
    """One method's DWI at the CT -> DWI target b for one subject (a one-volume 4D NIfTI and its .bval)."""
    stem = f"{RESULTS}/{cohort}/ct2dwi/{experiment}/{method}/sub-{subject}/sub-{subject}_desc-{method}"
    return {"dwi": f"{stem}_dwi.nii.gz", "bval": f"{stem}_dwi.bval"}


def ct2dwi_scores(experiment: str) -> str:
    """Per-slice and per-volume scores of one experiment's methods on the CT -> DWI test subjects."""
    return f"{RESULTS}/tables/ct2dwi/{experiment}.tsv"


def ct2dwi_grid(grid: str) -> str:
    """One experiment grid's summary (ablation, sensitivity, crosscenter)."""
    return f"{RESULTS}/tables/ct2dwi_{grid}.tsv"


def demo_truth_stem(outdir: str, cohort: str, subject: str) -> str:
    """The demo generator's noise-free truth of one subject."""
    return f"{outdir}/truth/{cohort}/sub-{subject}/sub-{subject}"


def log(rule: str, *keys: str) -> str:
    return "/".join(["logs", rule, *keys]) + ".log"


def benchmark(rule: str, *keys: str) -> str:
    return "/".join(["benchmarks", rule, *keys]) + ".tsv"
