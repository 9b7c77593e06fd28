import pandas as pd
from pathlib import Path

from dwisynth.config import bvalue_grid, read_sample_sheet, validate_config, validate_sample_sheet
from dwisynth.demo.cohort import plan_demo_cohort, sample_sheet


validate_config(config, "config")

if config["demo"]["enabled"]:
    # The demo plan is a function of the config, so the sheet is known before
    # the demo_cohort rule writes the DICOM it points at.
    DEMO_SHEET = f"{config['demo']['outdir']}/samples.tsv"
    SAMPLES = validate_sample_sheet(sample_sheet(plan_demo_cohort(config)), "demo plan")
else:
    DEMO_SHEET = None
    SAMPLES = read_sample_sheet(config["samples"])

COHORTS = config["cohorts"] or sorted(SAMPLES["cohort"].unique())
_unknown = sorted(set(COHORTS) - set(SAMPLES["cohort"]))
if _unknown:
    raise ValueError(f"config cohorts {_unknown} have no rows in the sample sheet; cohorts there: "
                     f"{sorted(SAMPLES['cohort'].unique())}")
SAMPLES = SAMPLES[SAMPLES["cohort"].isin(COHORTS) & SAMPLES["organ"].isin(config["organs"])]
SAMPLES = SAMPLES.set_index(["cohort", "subject", "modality"], drop=False).sort_index()

MODALITY_SUFFIX = {"DWI": "dwi", "CT": "ct"}
BVALUE_GRID = bvalue_grid(config)
SUBJECTS = (
    SAMPLES[SAMPLES["modality"] == "DWI"][["cohort", "center", "organ", "subject", "split"]]
    .reset_index(drop=True)
    .to_dict("records")
)


wildcard_constraints:
    cohort="[A-Za-z0-9_]+",
    subject="[A-Za-z0-9]+",


def series_row(wildcards, modality):
    return SAMPLES.loc[(wildcards.cohort, wildcards.subject, modality)]


def dicom_dir(modality):
    def lookup(wildcards):
        return series_row(wildcards, modality)["dicom_dir"]

    return lookup


def hdbet_weights_input(wildcards):
    """hd-bet 2.x weights are installed once by a local rule; only brain masks wait for it."""
    if config["masking"]["method"] == "hd-bet-v2" and series_row(wildcards, "DWI")["organ"] == "brain":
        return ["results/provenance/hdbet_v2_weights.json"]
    return []


def registered_ct_input(wildcards):
    """Stroke subjects carry their CT (on the DWI grid) into the slice shard."""
    if (wildcards.cohort, wildcards.subject, "CT") in SAMPLES.index:
        return {"ct": f"results/{wildcards.cohort}/preproc/sub-{wildcards.subject}/sub-{wildcards.subject}_space-dwi_ct.nii.gz"}
    return {}


def nifti_outputs(cohort, subject, modality):
    stem = f"results/{cohort}/nifti/sub-{subject}/sub-{subject}_{MODALITY_SUFFIX[modality]}"
    files = [f"{stem}.nii.gz", f"{stem}.json", f"{stem}_qc.json"]
    if modality == "DWI":
        files += [f"{stem}.bval", f"{stem}.bvec"]
    return files


def preproc_outputs(cohort, subject, modality):
    stem = f"results/{cohort}/preproc/sub-{subject}/sub-{subject}"
    if modality == "CT":
        return [f"{stem}_space-dwi_ct.nii.gz"]
    return [f"{stem}_adc.nii.gz", f"results/{cohort}/slices/sub-{subject}_slices.npz"]


def cohort_targets(cohort):
    rows = SAMPLES[SAMPLES["cohort"] == cohort]
    return [
        f
        for r in rows.itertuples()
        for f in nifti_outputs(r.cohort, r.subject, r.modality) + preproc_outputs(r.cohort, r.subject, r.modality)
    ]


def all_nifti_targets():
    return [f for r in SAMPLES.itertuples() for f in nifti_outputs(r.cohort, r.subject, r.modality)]


def all_targets():
    return [f for cohort in COHORTS for f in cohort_targets(cohort)] + ["results/datasets/split.tsv"]


# --- synthesis (multi-b task) --------------------------------------------------------------
def synth_stem(method):
    """results/{cohort}/synth/<method>/sub-{subject}/sub-{subject}_desc-<method>, wildcards kept."""
    return f"results/{{cohort}}/synth/{method}/sub-{{subject}}/sub-{{subject}}_desc-{method}"
DEMO_TRUTH = f"{config['demo']['outdir']}/truth/{{cohort}}/sub-{{subject}}/sub-{{subject}}"
# Subjects with a CT belong to the CT -> DWI task; the rest are the multi-b task's.
_WITH_CT = set(SAMPLES[SAMPLES["modality"] == "CT"]["subject"])
MULTIB_SUBJECTS = [s for s in SUBJECTS if s["subject"] not in _WITH_CT]
TRAINED_METHODS = [m for m in config["methods"] if m in ("dc2anet", "pix2pix")]


def organ_shards(organ):
    """Every multi-b shard of the organ; the training script keeps the train split's."""
    return [f"results/{s['cohort']}/slices/sub-{s['subject']}_slices.npz" for s in MULTIB_SUBJECTS
            if s["organ"] == organ]


def synthesis_inputs(method):
    def inputs(wildcards):
        organ = series_row(wildcards, "DWI")["organ"]
        pre = f"results/{wildcards.cohort}/preproc/sub-{wildcards.subject}/sub-{wildcards.subject}"
        return {"model": f"results/models/{method}/{organ}/model.pt", "dwi": f"{pre}_desc-norm_dwi.nii.gz",
                "bval": f"{pre}_desc-norm_dwi.bval", "mask": f"{pre}_desc-organ_mask.nii.gz"}

    return inputs


def _split():
    """The split manifest; known once its rule has run (a checkpoint), so only input functions call this."""
    return pd.read_csv(checkpoints.split_manifest.get().output[0], sep="\t", dtype=str)


def trainable_organs():
    """Organs with at least one multi-b training subject (an organ without any gets no model, and says so)."""
    split = _split()
    train = set(split[split["split"] == "train"]["subject"])
    return sorted({s["organ"] for s in MULTIB_SUBJECTS if s["subject"] in train})


def multib_test_subjects():
    split = _split()
    test = set(split[split["split"] == "test"]["subject"])
    return [s for s in MULTIB_SUBJECTS if s["subject"] in test]


def score_methods():
    """Every configured multi-b method, plus the noise-free truth on the demo (the noise floor)."""
    return config["methods"] + (["noisefree"] if config["demo"]["enabled"] else [])


def synthesis_targets(wildcards=None):
    organs = trainable_organs()
    return [
        synth_stem(method).format(cohort=s["cohort"], subject=s["subject"]) + f"_{kind}"
        for s in multib_test_subjects()
        for method in score_methods()
        if method not in TRAINED_METHODS or s["organ"] in organs
        for kind in ("dwi.nii.gz", "adc.nii.gz")
    ]


def model_targets(wildcards=None):
    return [f"results/models/{m}/{organ}/model.pt" for m in TRAINED_METHODS for organ in trainable_organs()]


# --- evaluation and report ---------------------------------------------------------------
def evaluation_records(wildcards=None):
    """One record per multi-b test subject: the acquired images and every method's synthesis."""
    organs = trainable_organs()
    records = []
    for s in multib_test_subjects():
        pre = f"results/{s['cohort']}/preproc/sub-{s['subject']}/sub-{s['subject']}"
        synth = {}
        for method in score_methods():
            if method in TRAINED_METHODS and s["organ"] not in organs:
                continue
            stem = synth_stem(method).format(cohort=s["cohort"], subject=s["subject"])
            synth[method] = (f"{stem}_dwi.nii.gz", f"{stem}_dwi.bval", f"{stem}_adc.nii.gz")
        record = {**s, "acquired": (f"{pre}_desc-norm_dwi.nii.gz", f"{pre}_desc-norm_dwi.bval"),
                  "mask": f"{pre}_desc-organ_mask.nii.gz", "adc": f"{pre}_adc.nii.gz", "synth": synth}
        if config["demo"]["enabled"]:
            record["truth_adc"] = f"{DEMO_TRUTH.format(cohort=s['cohort'], subject=s['subject'])}_desc-truth_adc.nii.gz"
        records.append(record)
    return records


def evaluation_inputs(wildcards):
    files = {"split": "results/datasets/split.tsv", "synth": synthesis_targets()}
    records = evaluation_records()
    files["acquired"] = [f for r in records for f in (*r["acquired"], r["mask"], r["adc"])]
    if config["demo"]["enabled"]:
        files["truth"] = rules.demo_cohort.output.truth
    return files


def report_inputs(wildcards):
    files = {"summary": rules.summarize.output[0], "metrics": rules.evaluate_synthesis.output.metrics,
             "adc": rules.evaluate_synthesis.output.adc, "provenance": rules.provenance.output.record,
             "logs": [m.replace("model.pt", "training_log.csv") for m in model_targets()],
             "reading_set": rules.reader_study_export.output.key}
    files.update(evaluation_inputs(wildcards))
    if config["reader_study"]["ratings"]:
        files["reader_scores"] = rules.reader_scores.output[0]
    return files
