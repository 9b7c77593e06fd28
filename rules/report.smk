# Tables, reader-study material, provenance and the HTML report.


rule summarize:
    input:
        metrics=rules.evaluate_synthesis.output.metrics,
        adc=rules.evaluate_synthesis.output.adc,
        lesion_adc=rules.evaluate_synthesis.output.lesion_adc,
    output:
        layout.SUMMARY,
    params:
        margin=config["adc"]["equivalence_margin"],
        code=script_code("summarize.py"),  # a change to the code it runs reruns it
    log:
        "logs/summarize.log",
    script:
        "../scripts/summarize.py"


rule claims:
    input:
        unpack(claims_inputs),
    output:
        layout.CLAIMS,
    params:
        bvalues={k: config["bvalues"][k] for k in ("inputs", "targets", "heldout")},
        code=script_code("claims.py"),  # a change to the code it runs reruns it
    log:
        "logs/claims.log",
    script:
        "../scripts/claims.py"


rule reader_study_export:
    input:
        unpack(evaluation_inputs),
    output:
        images=directory("results/reader_study"),
        key="results/reader_study_key.tsv",
    params:
        records=evaluation_records,
        methods=config["reader_study"]["methods"],
        readers=config["reader_study"]["readers"],
        score_b=config["bvalues"]["targets"] + config["bvalues"]["heldout"],
        heldout=config["bvalues"]["heldout"],
        seed=config["seed"],
        code=script_code("reader_study_export.py"),  # a change to the code it runs reruns it
    log:
        "logs/reader_study_export.log",
    script:
        "../scripts/reader_study_export.py"


rule reader_scores:
    input:
        ratings=config["reader_study"]["ratings"] or [],
        key=rules.reader_study_export.output.key,
    output:
        "results/tables/reader_scores.tsv",
    log:
        "logs/reader_scores.log",
    params:
        code=script_code("reader_scores.py"),  # a change to the code it runs reruns it
    script:
        "../scripts/reader_scores.py"


rule provenance:
    input:
        sheet=DEMO_SHEET or config["samples"],
        series=sorted(set(SAMPLES["dicom_dir"])),
    output:
        record="results/provenance/provenance.json",
        checksums="results/provenance/input_checksums.tsv",
    params:
        config=config,
        sheet=SAMPLES.reset_index(drop=True)[["cohort", "subject", "modality", "dicom_dir"]].to_dict("records"),
        repo=workflow.basedir,
        # what provenance.json records: a new commit, local edits or a library upgrade rewrite it
        git=git_state(workflow.basedir),
        versions=package_versions(),
        code=script_code("provenance.py"),  # a change to the code it runs reruns it
    log:
        "logs/provenance.log",
    script:
        "../scripts/provenance.py"


rule resolved_config:
    localrule: True  # a file written in a moment: no Slurm job for it
    output:
        "results/provenance/config.yaml",
    params:
        config=config,
        code=script_code("resolved_config.py"),  # a change to the code it runs reruns it
    log:
        "logs/resolved_config.log",
    script:
        "../scripts/resolved_config.py"


rule dataset_description:
    localrule: True  # a file written in a moment: no Slurm job for it
    output:
        "results/dataset_description.json",
    params:
        git=git_state(workflow.basedir),  # a new commit or local edits rewrite it
        cohorts=COHORTS,
        code=script_code("dataset_description.py"),  # a change to the code it runs reruns it
    log:
        "logs/dataset_description.log",
    script:
        "../scripts/dataset_description.py"


rule report:
    input:
        unpack(report_inputs),
    output:
        html=layout.REPORT,
        figures=directory("results/figures"),
    params:
        records=evaluation_records,
        targets=SYNTHESIS_B,
        logs=training_logs,
        ct2dwi=ct2dwi_report,
        simulated=config["demo"]["enabled"],
        bvalues={k: config["bvalues"][k] for k in ("inputs", "targets", "heldout")},
        code=script_code("report.py"),  # a change to the code it runs reruns it
    log:
        "logs/report.log",
    script:
        "../scripts/report.py"
