PRE = layout.preproc("{cohort}", "{subject}")
NIFTI = layout.nifti("{cohort}", "{subject}", "DWI")


rule register_dwi:
    input:
        dwi=NIFTI["nifti"],
        bval=NIFTI["bval"],
    output:
        dwi=PRE["reg_dwi"],
        bval=PRE["reg_bval"],
        xfm=PRE["reg_xfm"],
    params:
        seed=config["seed"],
        motion=config["registration"]["dwi_motion"],
        b0_max=config["bvalues"]["b0_max"],
        code=script_code("register_dwi.py"),  # a change to the code it runs reruns it
    priority: 10  # the chain to the training shards: before synthesis and scoring, so training starts early
    log:
        layout.log("register_dwi", "{cohort}", "{subject}"),
    benchmark:
        layout.benchmark("register_dwi", "{cohort}", "{subject}")
    script:
        "../scripts/register_dwi.py"


if config["masking"]["method"] == "hd-bet-v2":

    rule install_hdbet_v2_weights:
        input:
            hdbet_v2_weights_file,
        output:
            "results/provenance/hdbet_v2_weights.json",
        params:
            weights=config["masking"]["hdbet_v2_weights"],
            code=script_code("install_hdbet_v2_weights.py"),  # a change to the code it runs reruns it
        localrule: True
        log:
            "logs/install_hdbet_v2_weights.log",
        script:
            "../scripts/install_hdbet_v2_weights.py"


rule organ_mask:
    input:
        dwi=rules.register_dwi.output.dwi,
        bval=rules.register_dwi.output.bval,
        weights=hdbet_weights_input,
    output:
        mask=PRE["mask"],
        record=PRE["mask_record"],
    params:
        organ=lambda wc: series_row(wc, "DWI")["organ"],
        method=config["masking"]["method"],
        hdbet_precision=config["masking"]["hdbet_precision"],
        b0_max=config["bvalues"]["b0_max"],
        device=config["device"],
        code=script_code("organ_mask.py"),  # a change to the code it runs reruns it
    log:
        layout.log("organ_mask", "{cohort}", "{subject}"),
    threads: lambda wildcards: config["masking"]["brain_threads"] if series_row(wildcards, "DWI")["organ"] == "brain" else 1
    priority: 10
    benchmark:
        layout.benchmark("organ_mask", "{cohort}", "{subject}")
    script:
        "../scripts/organ_mask.py"


rule normalize_dwi:
    input:
        dwi=rules.register_dwi.output.dwi,
        bval=rules.register_dwi.output.bval,
        mask=rules.organ_mask.output.mask,
    output:
        dwi=PRE["dwi"],
        bval=PRE["bval"],
        record=PRE["norm_record"],
    params:
        grid=BVALUE_GRID,
        tolerance=config["bvalues"]["tolerance"],
        n4=config["normalization"]["n4"],
        b0_max=config["bvalues"]["b0_max"],
        code=script_code("normalize_dwi.py"),  # a change to the code it runs reruns it
    priority: 10
    log:
        layout.log("normalize_dwi", "{cohort}", "{subject}"),
    benchmark:
        layout.benchmark("normalize_dwi", "{cohort}", "{subject}")
    script:
        "../scripts/normalize_dwi.py"


rule adc_acquired:
    input:
        dwi=rules.normalize_dwi.output.dwi,
        bval=rules.normalize_dwi.output.bval,
        mask=rules.organ_mask.output.mask,
        record=rules.normalize_dwi.output.record,
    output:
        PRE["adc"],
    params:
        adc=ADC,
        code=script_code("adc.py"),  # a change to the code it runs reruns it
    log:
        layout.log("adc_acquired", "{cohort}", "{subject}"),
    benchmark:
        layout.benchmark("adc_acquired", "{cohort}", "{subject}")
    script:
        "../scripts/adc.py"


rule register_ct:
    input:
        ct=layout.nifti("{cohort}", "{subject}", "CT")["nifti"],
        dwi=rules.register_dwi.output.dwi,
        bval=rules.register_dwi.output.bval,
    output:
        ct=PRE["ct"],
        xfm=PRE["ct_xfm"],
    params:
        transform=config["registration"]["ct_transform"],
        seed=config["seed"],
        b0_max=config["bvalues"]["b0_max"],
        code=script_code("register_ct.py"),  # a change to the code it runs reruns it
    priority: 10
    log:
        layout.log("register_ct", "{cohort}", "{subject}"),
    benchmark:
        layout.benchmark("register_ct", "{cohort}", "{subject}")
    script:
        "../scripts/register_ct.py"


rule ct_brain_mask:
    input:
        ct=PRE["ct"],
    output:
        mask=PRE["ct_mask"],
        record=PRE["ct_mask_record"],
    params:
        brain_hu=config["ct2dwi"]["brain_hu"],
        code=script_code("ct_brain_mask.py"),  # a change to the code it runs reruns it
    priority: 10
    log:
        layout.log("ct_brain_mask", "{cohort}", "{subject}"),
    script:
        "../scripts/ct_brain_mask.py"
