# Scoring: every method against the same acquired images of the same test subjects.


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


rule evaluate_synthesis:
    input:
        unpack(evaluation_inputs),
    output:
        metrics="results/tables/synthesis_metrics.tsv",
        adc="results/tables/adc_agreement.tsv",
    params:
        records=evaluation_records,
        methods=score_methods(),
        targets=config["bvalues"]["targets"],
        heldout=config["bvalues"]["heldout"],
    log:
        "logs/evaluate_synthesis.log",
    benchmark:
        "benchmarks/evaluate_synthesis.tsv"
    conda:
        "../envs/dwisynth.yaml"
    script:
        "../scripts/evaluate_synthesis.py"
