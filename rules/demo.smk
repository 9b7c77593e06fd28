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
        conda:
            "../envs/dwisynth.yaml"
        benchmark:
            "benchmarks/demo_cohort.tsv"
        script:
            "../scripts/demo_cohort.py"
