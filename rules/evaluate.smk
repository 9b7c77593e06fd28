# Scoring: every method against the same acquired images of the same test subjects; on the demo also against
# the noise-free truth, and every lesion (the demo's truth lesions, or the sample sheet's lesion_mask).


rule evaluate_synthesis:
    input:
        unpack(evaluation_inputs),
        ct2dwi=[layout.ct2dwi_scores("main")] if CT2DWI_CENTERS else [],  # CT -> DWI main experiment rows
    output:
        metrics=layout.METRICS,
        adc=layout.ADC_AGREEMENT,
        lesion_adc=layout.LESION_ADC,
        lesion_contrast=layout.LESION_CONTRAST,
        truth_metrics=layout.TRUTH_METRICS,
    params:
        records=evaluation_records,
        methods=score_methods(),
        inputs=config["bvalues"]["inputs"],
        targets=config["bvalues"]["targets"],
        heldout=config["bvalues"]["heldout"],
        adc_min_snr=config["adc"]["roi_min_snr"],
        code=script_code("evaluate_synthesis.py"),  # a change to the code it runs reruns it
    threads: 4  # subjects in parallel; it runs near the end, when little else can (capped at --cores)
    log:
        "logs/evaluate_synthesis.log",
    benchmark:
        "benchmarks/evaluate_synthesis.tsv"
    script:
        "../scripts/evaluate_synthesis.py"


# Diffusion signal falls with b: how often a network that synthesizes any b makes it rise, on a fine b grid.
rule monotonicity:
    input:
        unpack(monotonicity_inputs),
    output:
        layout.monotonicity("{method}", "{cohort}", "{subject}"),
    params:
        ids=monotonicity_ids,
        b_step=MONOTONICITY_STEP,
        rise=MONOTONICITY_RISE,
        min_snr=config["adc"]["roi_min_snr"],
        device=config["device"],
        code=script_code("monotonicity.py"),  # a change to the code it runs reruns it
    wildcard_constraints:
        method="|".join(ANY_B_METHODS) or "no-method-synthesizes-any-b",
    log:
        layout.log("monotonicity", "{method}", "{cohort}", "{subject}"),
    benchmark:
        layout.benchmark("monotonicity", "{method}", "{cohort}", "{subject}")
    script:
        "../scripts/monotonicity.py"


rule monotonicity_table:
    input:
        rows=monotonicity_targets,
    output:
        layout.MONOTONICITY,
    params:
        code=script_code("monotonicity.py"),  # a change to the code it runs reruns it
    log:
        "logs/monotonicity_table.log",
    script:
        "../scripts/monotonicity.py"
