# What the networks must beat on the same inputs and test subjects: computed DWI (physics, from the
# input b-values only); DC²Anet's images read at any b by log-linear interpolation (the stage-2 baseline);
# on the demo also the noise-free reference (the truth on the acquisition's scale). Each writes the trained
# targets and the held-out b-values. pix2pix, the learned baseline, is a network (rules/networks.smk).


rule cdwi:
    input:
        dwi=rules.normalize_dwi.output.dwi,
        bval=rules.normalize_dwi.output.bval,
        mask=rules.organ_mask.output.mask,
        norm_record=rules.normalize_dwi.output.record,
    output:
        **layout.synth("cdwi", "{cohort}", "{subject}"),
    params:
        inputs=config["bvalues"]["inputs"],
        targets=SYNTHESIS_B,
        adc=ADC,
        code=script_code("cdwi.py"),  # a change to the code it runs reruns it
    log:
        layout.log("cdwi", "{cohort}", "{subject}"),
    script:
        "../scripts/cdwi.py"


rule dc2anet_interpolation:
    input:
        source_dwi=layout.synth("dc2anet", "{cohort}", "{subject}")["dwi"],
        source_bval=layout.synth("dc2anet", "{cohort}", "{subject}")["bval"],
        bval=rules.normalize_dwi.output.bval,
        mask=rules.organ_mask.output.mask,
        norm_record=rules.normalize_dwi.output.record,
    output:
        **layout.synth("dc2anetinterp", "{cohort}", "{subject}"),
    params:
        inputs=config["bvalues"]["inputs"],
        targets=SYNTHESIS_B,
        adc=ADC,
        code=script_code("dc2anet_interpolation.py"),  # a change to the code it runs reruns it
    log:
        layout.log("dc2anet_interpolation", "{cohort}", "{subject}"),
    script:
        "../scripts/dc2anet_interpolation.py"


if config["demo"]["enabled"]:

    rule noise_free_reference:
        input:
            truth=rules.demo_cohort.output.truth,
            raw=rules.register_dwi.output.dwi,
            raw_bval=rules.register_dwi.output.bval,
            mask=rules.organ_mask.output.mask,
            dwi=rules.normalize_dwi.output.dwi,
            bval=rules.normalize_dwi.output.bval,
            norm_record=rules.normalize_dwi.output.record,
        output:
            **layout.synth("noisefree", "{cohort}", "{subject}"),
        params:
            truth=lambda wc: f"{layout.demo_truth_stem(config['demo']['outdir'], wc.cohort, wc.subject)}_desc-noisefree_dwi",
            inputs=config["bvalues"]["inputs"],
            targets=SYNTHESIS_B,
            b0_max=config["bvalues"]["b0_max"],
            adc=ADC,
            code=script_code("noise_free_reference.py"),  # a change to the code it runs reruns it
        log:
            layout.log("noise_free_reference", "{cohort}", "{subject}"),
        script:
            "../scripts/noise_free_reference.py"
