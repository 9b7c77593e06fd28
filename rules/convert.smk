rule convert_dwi:
    input:
        dicom=dicom_dir("DWI"),
    output:
        nifti="results/{cohort}/nifti/sub-{subject}/sub-{subject}_dwi.nii.gz",
        sidecar="results/{cohort}/nifti/sub-{subject}/sub-{subject}_dwi.json",
        bval="results/{cohort}/nifti/sub-{subject}/sub-{subject}_dwi.bval",
        bvec="results/{cohort}/nifti/sub-{subject}/sub-{subject}_dwi.bvec",
        qc="results/{cohort}/nifti/sub-{subject}/sub-{subject}_dwi_qc.json",
    params:
        modality="DWI",
        b0_max=config["bvalues"]["b0_max"],
    log:
        "logs/convert_dwi/{cohort}/{subject}.log",
    benchmark:
        "benchmarks/convert_dwi/{cohort}/{subject}.tsv"
    conda:
        "../envs/dwisynth.yaml"
    script:
        "../scripts/convert.py"


rule convert_ct:
    input:
        dicom=dicom_dir("CT"),
    output:
        nifti="results/{cohort}/nifti/sub-{subject}/sub-{subject}_ct.nii.gz",
        sidecar="results/{cohort}/nifti/sub-{subject}/sub-{subject}_ct.json",
        qc="results/{cohort}/nifti/sub-{subject}/sub-{subject}_ct_qc.json",
    params:
        modality="CT",
        b0_max=config["bvalues"]["b0_max"],
    log:
        "logs/convert_ct/{cohort}/{subject}.log",
    benchmark:
        "benchmarks/convert_ct/{cohort}/{subject}.tsv"
    conda:
        "../envs/dwisynth.yaml"
    script:
        "../scripts/convert.py"
