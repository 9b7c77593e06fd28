PRE = "results/{cohort}/preproc/sub-{subject}/sub-{subject}"
NIFTI = "results/{cohort}/nifti/sub-{subject}/sub-{subject}"


rule register_dwi:
    input:
        dwi=f"{NIFTI}_dwi.nii.gz",
        bval=f"{NIFTI}_dwi.bval",
    output:
        dwi=f"{PRE}_desc-reg_dwi.nii.gz",
        bval=f"{PRE}_desc-reg_dwi.bval",
        xfm=f"{PRE}_desc-reg_xfm.json",
    params:
        seed=config["seed"],
        motion=config["registration"]["dwi_motion"],
        b0_max=config["bvalues"]["b0_max"],
    log:
        "logs/register_dwi/{cohort}/{subject}.log",
    conda:
        "../envs/dwisynth.yaml"
    benchmark:
        "benchmarks/register_dwi/{cohort}/{subject}.tsv"
    script:
        "../scripts/register_dwi.py"


if config["masking"]["method"] == "hd-bet-v2":

    rule install_hdbet_v2_weights:
        output:
            "results/provenance/hdbet_v2_weights.json",
        params:
            weights=config["masking"]["hdbet_v2_weights"],
        localrule: True
        log:
            "logs/install_hdbet_v2_weights.log",
        conda:
            "../envs/dwisynth.yaml"
        script:
            "../scripts/install_hdbet_v2_weights.py"


rule organ_mask:
    input:
        dwi=rules.register_dwi.output.dwi,
        bval=rules.register_dwi.output.bval,
        weights=hdbet_weights_input,
    output:
        mask=f"{PRE}_desc-organ_mask.nii.gz",
        record=f"{PRE}_desc-organ_mask.json",
    params:
        organ=lambda wc: series_row(wc, "DWI")["organ"],
        method=config["masking"]["method"],
        b0_max=config["bvalues"]["b0_max"],
        device=config["device"],
    log:
        "logs/organ_mask/{cohort}/{subject}.log",
    threads: lambda wildcards: config["masking"]["brain_threads"] if series_row(wildcards, "DWI")["organ"] == "brain" else 1
    priority: 10
    conda:
        "../envs/dwisynth.yaml"
    benchmark:
        "benchmarks/organ_mask/{cohort}/{subject}.tsv"
    script:
        "../scripts/organ_mask.py"


rule normalize_dwi:
    input:
        dwi=rules.register_dwi.output.dwi,
        bval=rules.register_dwi.output.bval,
        mask=rules.organ_mask.output.mask,
    output:
        dwi=f"{PRE}_desc-norm_dwi.nii.gz",
        bval=f"{PRE}_desc-norm_dwi.bval",
        record=f"{PRE}_desc-norm_dwi.json",
    params:
        grid=BVALUE_GRID,
        tolerance=config["bvalues"]["tolerance"],
        n4=config["normalization"]["n4"],
        b0_max=config["bvalues"]["b0_max"],
    log:
        "logs/normalize_dwi/{cohort}/{subject}.log",
    conda:
        "../envs/dwisynth.yaml"
    benchmark:
        "benchmarks/normalize_dwi/{cohort}/{subject}.tsv"
    script:
        "../scripts/normalize_dwi.py"


rule adc_acquired:
    input:
        dwi=rules.normalize_dwi.output.dwi,
        bval=rules.normalize_dwi.output.bval,
        mask=rules.organ_mask.output.mask,
    output:
        f"{PRE}_adc.nii.gz",
    params:
        adc=config["adc"],
    log:
        "logs/adc_acquired/{cohort}/{subject}.log",
    benchmark:
        "benchmarks/adc_acquired/{cohort}/{subject}.tsv"
    conda:
        "../envs/dwisynth.yaml"
    script:
        "../scripts/adc.py"


rule register_ct:
    input:
        ct=f"{NIFTI}_ct.nii.gz",
        dwi=rules.register_dwi.output.dwi,
        bval=rules.register_dwi.output.bval,
    output:
        ct=f"{PRE}_space-dwi_ct.nii.gz",
        xfm=f"{PRE}_from-ct_to-dwi_xfm.json",
    params:
        transform=config["registration"]["ct_transform"],
        seed=config["seed"],
        b0_max=config["bvalues"]["b0_max"],
    log:
        "logs/register_ct/{cohort}/{subject}.log",
    conda:
        "../envs/dwisynth.yaml"
    benchmark:
        "benchmarks/register_ct/{cohort}/{subject}.tsv"
    script:
        "../scripts/register_ct.py"
