checkpoint split_manifest:
    input:
        qc=[layout.nifti(s.cohort, s.subject, "DWI")["qc"] for s in SUBJECTS.itertuples()],
    output:
        layout.SPLIT,
    params:
        subjects=SUBJECTS.to_dict("records"),  # in the order of input.qc
        heldout=config["bvalues"]["heldout"],
        tolerance=config["bvalues"]["tolerance"],
        test_fraction=config["split"]["test_fraction"],
        seed=config["split"]["seed"],
        code=script_code("split_manifest.py"),  # a change to the code it runs reruns it
    log:
        "logs/split_manifest.log",
    script:
        "../scripts/split_manifest.py"


rule slice_shard:
    input:
        unpack(registered_ct_input),
        dwi=rules.normalize_dwi.output.dwi,
        bval=rules.normalize_dwi.output.bval,
        mask=rules.organ_mask.output.mask,
    output:
        layout.shard("{cohort}", "{subject}"),
    params:
        grid=BVALUE_GRID,
        metadata=lambda wc: {
            k: series_row(wc, "DWI")[k] for k in ("cohort", "center", "organ", "subject")
        },
        code=script_code("slice_shard.py"),  # a change to the code it runs reruns it
    priority: 10
    log:
        layout.log("slice_shard", "{cohort}", "{subject}"),
    benchmark:
        layout.benchmark("slice_shard", "{cohort}", "{subject}")
    script:
        "../scripts/slice_shard.py"
