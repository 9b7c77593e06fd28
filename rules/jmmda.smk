# CT -> DWI for acute ischemic stroke: JMMDA-GAN and its comparisons (dwisynth.ct2dwi). Every cell of every
# experiment trains on the same inputs (CT on the DWI grid + a CT brain mask) with the same lesion supervision
# for its budget; `main` (with `unguided` when ct2dwi.guidance is on) and the grids in ct2dwi.grids run with
# `rule all`, every grid is also a target: ct2dwi_ablation, ct2dwi_sensitivity, ct2dwi_crosscenter.

rule train_ct2dwi:
    input:
        shards=ct2dwi_training_shards,
        lesions=lambda wc: [v["mask"] for v in ct2dwi_lesion_inputs(wc).values()],
        weights=lambda wc: list(weight_files(wc.method, network_block(config, ct2dwi_cell(wc))).values()),
    output:
        model=layout.ct2dwi_model("{experiment}", "{method}"),
        log=layout.ct2dwi_training_log("{experiment}", "{method}"),
    params:
        cell=lambda wc: cell_params(ct2dwi_cell(wc)),
        block=lambda wc: network_block(config, ct2dwi_cell(wc)),
        lesions=ct2dwi_lesion_inputs,
        training=lambda wc: cell_training(config, ct2dwi_cell(wc)),  # with the cell's lesion supervision
        ct2dwi={k: CT2DWI[k] for k in ("target_b", "hu_window")},  # only what shapes the model: a new grid retrains nothing
        seed=config["seed"],
        device=config["device"],
        network_code=lambda wc: code_digest(wc.method),  # a change to the network's code retrains it
        code=script_code("train_ct2dwi.py"),  # a change to the code it runs reruns it
    wildcard_constraints:
        method=CT2DWI_NETWORKS,
    threads: config["training"]["threads"]
    priority: 20
    resources:
        gpu=config["training"]["gpus"],
    log:
        layout.log("train_ct2dwi", "{experiment}", "{method}"),
    benchmark:
        layout.benchmark("train_ct2dwi", "{experiment}", "{method}")
    script:
        "../scripts/train_ct2dwi.py"


rule synthesize_ct2dwi:
    input:
        model=lambda wc: layout.ct2dwi_model(ct2dwi_cell(wc).model_from, wc.method),
        ct=PRE["ct"],
        ct_mask=PRE["ct_mask"],
    output:
        **layout.ct2dwi_synth("{experiment}", "{method}", "{cohort}", "{subject}"),
    params:
        device=config["device"],
        code=script_code("synthesize_ct2dwi.py"),  # a change to the code it runs reruns it
    wildcard_constraints:
        method=CT2DWI_NETWORKS,
    log:
        layout.log("synthesize_ct2dwi", "{experiment}", "{method}", "{cohort}", "{subject}"),
    script:
        "../scripts/synthesize_ct2dwi.py"


if config["demo"]["enabled"]:

    rule noise_free_ct2dwi:
        input:
            truth=rules.demo_cohort.output.truth,
            raw=rules.register_dwi.output.dwi,
            raw_bval=rules.register_dwi.output.bval,
            dwi=rules.normalize_dwi.output.dwi,
            bval=rules.normalize_dwi.output.bval,
        output:
            **layout.ct2dwi_synth("main", "noisefree", "{cohort}", "{subject}"),
        params:
            truth=lambda wc: f"{layout.demo_truth_stem(config['demo']['outdir'], wc.cohort, wc.subject)}_desc-noisefree_dwi",
            target_b=CT2DWI["target_b"],
            b0_max=config["bvalues"]["b0_max"],
            code=script_code("noise_free_ct2dwi.py"),  # a change to the code it runs reruns it
        log:
            layout.log("noise_free_ct2dwi", "{cohort}", "{subject}"),
        script:
            "../scripts/noise_free_ct2dwi.py"


rule score_ct2dwi:
    input:
        unpack(ct2dwi_score_inputs),
    output:
        layout.ct2dwi_scores("{experiment}"),
    wildcard_constraints:
        experiment="|".join(dict.fromkeys(c.experiment for c in CT2DWI_CELLS)),  # not the truth tables beside them
    params:
        records=lambda wc: ct2dwi_score_records(wc.experiment),
        cells=lambda wc: [cell_params(c) for c in ct2dwi_cells(wc.experiment)],
        blocks=lambda wc: {c.method: network_block(config, c) for c in ct2dwi_cells(wc.experiment)},
        noise_free=config["demo"]["enabled"],
        target_b=CT2DWI["target_b"][0],
        code=script_code("score_ct2dwi.py"),  # a change to the code it runs reruns it
    log:
        layout.log("score_ct2dwi", "{experiment}"),
    script:
        "../scripts/score_ct2dwi.py"


# On the demo: main's methods and the acquisition against the noise-free truth (the multi-b truth tables' columns).
if ct2dwi_truth_tables():

    rule score_ct2dwi_truth:
        input:
            unpack(lambda wc: ct2dwi_score_files("main")),
        output:
            **ct2dwi_truth_tables(),
        params:
            records=lambda wc: ct2dwi_score_records("main"),
            target_b=CT2DWI["target_b"][0],
            code=script_code("score_ct2dwi_truth.py"),  # a change to the code it runs reruns it
        log:
            layout.log("score_ct2dwi_truth"),
        script:
            "../scripts/score_ct2dwi_truth.py"


rule ct2dwi_experiment_table:
    input:
        ct2dwi_grid_experiments(CT2DWI["grids"]),
    output:
        layout.CT2DWI_EXPERIMENTS,
    log:
        "logs/ct2dwi_experiment_table.log",
    params:
        code=script_code("ct2dwi_tables.py"),  # a change to the code it runs reruns it
    script:
        "../scripts/ct2dwi_tables.py"


rule ct2dwi_compute:
    input:
        models=[layout.ct2dwi_model(c.experiment, c.method) for c in CT2DWI_TRAINED],
    output:
        layout.CT2DWI_COMPUTE,
    params:
        cells=[cell_params(c) for c in CT2DWI_TRAINED],
        benchmarks=[layout.benchmark("train_ct2dwi", c.experiment, c.method) for c in CT2DWI_TRAINED],
        code=script_code("ct2dwi_compute.py"),  # a change to the code it runs reruns it
    log:
        "logs/ct2dwi_compute.log",
    script:
        "../scripts/ct2dwi_compute.py"


rule ct2dwi_grid:
    input:
        lambda wc: ct2dwi_grid_experiments([wc.grid]),
    output:
        layout.ct2dwi_grid("{grid}"),
    wildcard_constraints:
        grid="|".join(("main", *GRIDS)),
    log:
        "logs/ct2dwi_grid_{grid}.log",
    params:
        code=script_code("ct2dwi_tables.py"),  # a change to the code it runs reruns it
    script:
        "../scripts/ct2dwi_tables.py"


for _grid in GRIDS:

    rule:
        name:
            f"ct2dwi_{_grid}"
        input:
            layout.ct2dwi_grid(_grid),
