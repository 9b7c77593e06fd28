# Stage 1 of the multi-b system: DC²Anet, one model per organ, trained by the shared trainer.


rule train_dc2anet:
    input:
        shards=lambda wc: organ_shards(wc.organ),
        split="results/datasets/split.tsv",
    output:
        model="results/models/dc2anet/{organ}/model.pt",
        log="results/models/dc2anet/{organ}/training_log.csv",
    params:
        method="dc2anet",
        block=config["dc2anet"],
        training=config["training"],
        bvalues=config["bvalues"],
        seed=config["seed"],
        device=config["device"],
    threads: config["training"]["threads"]
    priority: 20  # the longest jobs: start each as soon as its organ's shards exist
    resources:
        gpu=config["training"]["gpus"],
    log:
        "logs/train/dc2anet/{organ}.log",
    benchmark:
        "benchmarks/train/dc2anet/{organ}.tsv"
    conda:
        "../envs/dwisynth.yaml"
    script:
        "../scripts/train.py"


rule synthesize_dc2anet:
    input:
        unpack(synthesis_inputs("dc2anet")),
    output:
        dwi=f"{synth_stem('dc2anet')}_dwi.nii.gz",
        bval=f"{synth_stem('dc2anet')}_dwi.bval",
        adc=f"{synth_stem('dc2anet')}_adc.nii.gz",
    params:
        device=config["device"],
        adc=config["adc"],
    log:
        "logs/synthesize/dc2anet/{cohort}/{subject}.log",
    benchmark:
        "benchmarks/synthesize/dc2anet/{cohort}/{subject}.tsv"
    conda:
        "../envs/dwisynth.yaml"
    script:
        "../scripts/synthesize.py"
