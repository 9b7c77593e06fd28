if config["demo"]["enabled"]:

    rule demo_cohort:
        output:
            sheet=DEMO_SHEET,
            phi=f"{config['demo']['outdir']}/planted_phi.json",
            truth=directory(f"{config['demo']['outdir']}/truth"),
            series=[directory(d) for d in sorted(set(SAMPLES["dicom_dir"]))],
        threads: 4  # nothing else can run before it; Snakemake caps it at --cores
        log:
            "logs/demo_cohort.log",
        benchmark:
            "benchmarks/demo_cohort.tsv"
        params:
            # everything the generator reads (dwisynth.demo.cohort): a change regenerates the cohort, whose
            # series folders keep their names, so Snakemake would otherwise see nothing to redo
            demo=config["demo"],
            seed=config["seed"],
            bvalues={k: config["bvalues"][k] for k in ("inputs", "targets", "heldout")},
            adc_bvalues=ADC["bvalues"],
            code=script_code("demo_cohort.py"),  # a change to the code it runs reruns it
        script:
            "../scripts/demo_cohort.py"
