checkpoint split_manifest:
    input:
        qc=lambda wc: [f for f in all_nifti_targets() if f.endswith("_dwi_qc.json")],
    output:
        "results/datasets/split.tsv",
    params:
        subjects=SUBJECTS,
        heldout=config["bvalues"]["heldout"],
        tolerance=config["bvalues"]["tolerance"],
        test_fraction=config["split"]["test_fraction"],
        seed=config["split"]["seed"],
    log:
        "logs/split_manifest.log",
    conda:
        "../envs/dwisynth.yaml"
    script:
        "../scripts/split_manifest.py"


rule slice_shard:
    input:
        unpack(registered_ct_input),
        dwi=rules.normalize_dwi.output.dwi,
        bval=rules.normalize_dwi.output.bval,
        mask=rules.organ_mask.output.mask,
    output:
        "results/{cohort}/slices/sub-{subject}_slices.npz",
    params:
        grid=BVALUE_GRID,
        metadata=lambda wc: {
            k: series_row(wc, "DWI")[k] for k in ("cohort", "center", "organ", "subject")
        },
    log:
        "logs/slice_shard/{cohort}/{subject}.log",
    benchmark:
        "benchmarks/slice_shard/{cohort}/{subject}.tsv"
    conda:
        "../envs/dwisynth.yaml"
    script:
        "../scripts/slice_shard.py"
