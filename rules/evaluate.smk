# Scoring: every method against the same acquired images of the same test subjects.


rule evaluate_synthesis:
    input:
        unpack(evaluation_inputs),
        ct2dwi=[layout.ct2dwi_scores("main")] if CT2DWI_CENTERS else [],  # CT -> DWI main experiment rows
    output:
        metrics=layout.METRICS,
        adc=layout.ADC_AGREEMENT,
    params:
        records=evaluation_records,
        methods=score_methods(),
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
