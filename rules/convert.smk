rule convert_dwi:
    input:
        unpack(supplied_gradients),
        dicom=dicom_dir("DWI"),
    output:
        **layout.nifti("{cohort}", "{subject}", "DWI"),
    params:
        modality="DWI",
        b0_max=config["bvalues"]["b0_max"],
        code=script_code("convert.py"),  # a change to the code it runs reruns it
    priority: 10
    log:
        layout.log("convert_dwi", "{cohort}", "{subject}"),
    benchmark:
        layout.benchmark("convert_dwi", "{cohort}", "{subject}")
    script:
        "../scripts/convert.py"


rule convert_ct:
    input:
        dicom=dicom_dir("CT"),
    output:
        **layout.nifti("{cohort}", "{subject}", "CT"),
    params:
        modality="CT",
        b0_max=config["bvalues"]["b0_max"],
        code=script_code("convert.py"),  # a change to the code it runs reruns it
    priority: 10
    log:
        layout.log("convert_ct", "{cohort}", "{subject}"),
    benchmark:
        layout.benchmark("convert_ct", "{cohort}", "{subject}")
    script:
        "../scripts/convert.py"
