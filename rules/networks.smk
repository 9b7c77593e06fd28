# Every registered network (dwisynth.networks.base) trains and synthesizes through this one rule
# pair: one model per (method, organ), trained by the shared trainer on the train split only. A network
# built from other models of its organ (MineGAN from DC²Anet) gets their model.pt as inputs.


rule train:
    input:
        shards=training_shards,
        upstream=lambda wc: list(upstream_models(wc).values()),
        weights=lambda wc: list(weight_files(wc.method, config[config_block_name(wc.method)]).values()),
        lesions=lambda wc: [f for v in training_lesion_masks(wc).values() for f in v.values()],
    output:
        model=layout.model("{method}", "{organ}"),
        log=layout.training_log("{method}", "{organ}"),
    params:
        block=lambda wc: config[config_block_name(wc.method)],
        upstream=upstream_models,
        lesion_masks=training_lesion_masks,
        training=config["training"],
        bvalues=config["bvalues"],
        seed=config["seed"],
        device=config["device"],
        network_code=lambda wc: code_digest(wc.method),  # a change to the network's code retrains it
        code=script_code("train.py"),  # a change to the code it runs reruns it
    wildcard_constraints:
        method=NETWORK_PATTERN,
    threads: config["training"]["threads"]
    priority: 20  # the longest jobs: start each as soon as its organ's shards exist
    resources:
        gpu=config["training"]["gpus"],
    log:
        layout.log("train", "{method}", "{organ}"),
    benchmark:
        layout.benchmark("train", "{method}", "{organ}")
    script:
        "../scripts/train.py"


rule synthesize:
    input:
        unpack(synthesis_inputs),
    output:
        **layout.synth("{method}", "{cohort}", "{subject}"),
    params:
        device=config["device"],
        adc=ADC,
        code=script_code("synthesize.py"),  # a change to the code it runs reruns it
    wildcard_constraints:
        method=NETWORK_PATTERN,
    log:
        layout.log("synthesize", "{method}", "{cohort}", "{subject}"),
    benchmark:
        layout.benchmark("synthesize", "{method}", "{cohort}", "{subject}")
    script:
        "../scripts/synthesize.py"


rule training_compute:
    input:
        models=lambda wc: [r["model"] for r in training_logs()],
    output:
        layout.TRAINING_COMPUTE,
    params:
        models=training_logs,
        benchmarks=lambda wc: [layout.benchmark("train", r["method"], r["organ"]) for r in training_logs()],
        code=script_code("training_compute.py"),  # a change to the code it runs reruns it
    log:
        "logs/training_compute.log",
    script:
        "../scripts/training_compute.py"

