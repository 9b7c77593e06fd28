# The baselines DC²Anet must beat on the same inputs and test subjects: pix2pix (trained by the
# same trainer) and computed DWI (physics, from the input b-values only); on the demo also the
# noise-free truth, whose score against the acquisition is the noise floor.


rule train_pix2pix:
    input:
        shards=lambda wc: organ_shards(wc.organ),
        split="results/datasets/split.tsv",
    output:
        model="results/models/pix2pix/{organ}/model.pt",
        log="results/models/pix2pix/{organ}/training_log.csv",
    params:
        method="pix2pix",
        block=config["pix2pix"],
        training=config["training"],
        bvalues=config["bvalues"],
        seed=config["seed"],
        device=config["device"],
    threads: config["training"]["threads"]
    priority: 20  # the longest jobs: start each as soon as its organ's shards exist
    resources:
        gpu=config["training"]["gpus"],
    log:
        "logs/train/pix2pix/{organ}.log",
    benchmark:
        "benchmarks/train/pix2pix/{organ}.tsv"
    conda:
        "../envs/dwisynth.yaml"
    script:
        "../scripts/train.py"


rule synthesize_pix2pix:
    input:
        unpack(synthesis_inputs("pix2pix")),
    output:
        dwi=f"{synth_stem('pix2pix')}_dwi.nii.gz",
        bval=f"{synth_stem('pix2pix')}_dwi.bval",
        adc=f"{synth_stem('pix2pix')}_adc.nii.gz",
    params:
        device=config["device"],
        adc=config["adc"],
    log:
        "logs/synthesize/pix2pix/{cohort}/{subject}.log",
    benchmark:
        "benchmarks/synthesize/pix2pix/{cohort}/{subject}.tsv"
    conda:
        "../envs/dwisynth.yaml"
    script:
        "../scripts/synthesize.py"


rule cdwi:
    input:
        dwi=rules.normalize_dwi.output.dwi,
        bval=rules.normalize_dwi.output.bval,
        mask=rules.organ_mask.output.mask,
    output:
        dwi=f"{synth_stem('cdwi')}_dwi.nii.gz",
        bval=f"{synth_stem('cdwi')}_dwi.bval",
        adc=f"{synth_stem('cdwi')}_adc.nii.gz",
    params:
        inputs=config["bvalues"]["inputs"],
        targets=config["bvalues"]["targets"],
        adc=config["adc"],
    log:
        "logs/cdwi/{cohort}/{subject}.log",
    conda:
        "../envs/dwisynth.yaml"
    script:
        "../scripts/cdwi.py"


if config["demo"]["enabled"]:

    rule noise_free_reference:
        input:
            truth=rules.demo_cohort.output.truth,
            raw=rules.register_dwi.output.dwi,
            raw_bval=rules.register_dwi.output.bval,
            mask=rules.organ_mask.output.mask,
            dwi=rules.normalize_dwi.output.dwi,
            bval=rules.normalize_dwi.output.bval,
        output:
            dwi=f"{synth_stem('noisefree')}_dwi.nii.gz",
            bval=f"{synth_stem('noisefree')}_dwi.bval",
            adc=f"{synth_stem('noisefree')}_adc.nii.gz",
        params:
            truth=lambda wc: f"{DEMO_TRUTH.format(cohort=wc.cohort, subject=wc.subject)}_desc-noisefree_dwi",
            inputs=config["bvalues"]["inputs"],
            targets=config["bvalues"]["targets"],
            b0_max=config["bvalues"]["b0_max"],
            adc=config["adc"],
        log:
            "logs/noise_free_reference/{cohort}/{subject}.log",
        conda:
            "../envs/dwisynth.yaml"
        script:
            "../scripts/noise_free_reference.py"
