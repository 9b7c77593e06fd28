# CT -> DWI for acute ischemic stroke: JMMDA-GAN and its comparisons (dwisynth.ct2dwi). Every cell of every
# experiment trains on the same inputs (CT on the DWI grid + a CT brain mask) for the same steps; `main` and
# the grids in ct2dwi.grids run with `rule all`, every grid is also a target: ct2dwi_ablation,
# ct2dwi_sensitivity, ct2dwi_crosscenter.

from dwisynth.ct2dwi import (
    GRIDS,
    cell_params,
    experiment_cells,
    find_cell,
    network_block,
    read_lesion_table,
    training_members,
)

CT2DWI = config["ct2dwi"]
CT2DWI_CENTERS = sorted(SUBJECTS.loc[SUBJECTS["task"] == "ct2dwi", "center"].unique())
CT2DWI_CELLS = experiment_cells(config, CT2DWI_CENTERS)
CT2DWI_NETWORKS = "|".join(networks("ct2dwi"))
LESION_TABLE = read_lesion_table(CT2DWI["lesion_masks"]) if CT2DWI["lesion_masks"] else {}


def ct2dwi_cell(wildcards):
    return find_cell(CT2DWI_CELLS, wildcards.experiment, wildcards.method)


def ct2dwi_cells(experiment):
    return [c for c in CT2DWI_CELLS if c.experiment == experiment]


def ct2dwi_experiments_of(grids):
    return list(dict.fromkeys(c.experiment for c in CT2DWI_CELLS if c.grid in grids))


def lesion_mask_path(cohort, subject):
    """The lesion mask of a stroke subject: the demo's truth, or ct2dwi.lesion_masks; None when unknown."""
    if (cohort, subject) in LESION_TABLE:
        return LESION_TABLE[(cohort, subject)]
    if config["demo"]["enabled"]:
        return f"{layout.demo_truth_stem(config['demo']['outdir'], cohort, subject)}_desc-lesion_mask.nii.gz"
    return None


def ct2dwi_training_subjects(wildcards):
    return training_members(_split().to_dict("records"), ct2dwi_cell(wildcards))


def ct2dwi_training_shards(wildcards):
    return [layout.shard(s["cohort"], s["subject"]) for s in ct2dwi_training_subjects(wildcards)]


def ct2dwi_lesion_inputs(wildcards):
    """Lesion masks of the training subjects, only for a network trained with a lesion-weighted loss."""
    block = network_block(config, ct2dwi_cell(wildcards))
    if not block.get("weights", {}).get("lesion", 0):
        return {}
    paths = {}
    for s in ct2dwi_training_subjects(wildcards):
        path = lesion_mask_path(s["cohort"], s["subject"])
        if path is None:
            raise ValueError(f"jmmdagan.weights.lesion > 0, but sub-{s['subject']} ({s['cohort']}) has no lesion "
                             "mask; list every training subject in ct2dwi.lesion_masks or set weights.lesion: 0")
        paths[f"{s['cohort']}/{s['subject']}"] = {"mask": path,
                                                  "reference": layout.preproc(s["cohort"], s["subject"])["dwi"]}
    return paths


def ct2dwi_test_subjects():
    return task_members(_split(), "ct2dwi", "test")


def ct2dwi_methods(experiment):
    """The methods scored in an experiment (main adds the noise-free reference on the demo)."""
    methods = [c.method for c in ct2dwi_cells(experiment)]
    return methods + (["noisefree"] if experiment == "main" and config["demo"]["enabled"] else [])


def ct2dwi_score_records(experiment):
    records = []
    for s in ct2dwi_test_subjects():
        pre = layout.preproc(s["cohort"], s["subject"])
        synth = {}
        for method in ct2dwi_methods(experiment):
            files = layout.ct2dwi_synth(experiment, method, s["cohort"], s["subject"])
            synth[method] = (files["dwi"], files["bval"])
        records.append({**{k: s[k] for k in ("cohort", "center", "subject")}, "acquired": (pre["dwi"], pre["bval"]),
                        "mask": pre["mask"], "lesion": lesion_mask_path(s["cohort"], s["subject"]), "synth": synth})
    return records


def ct2dwi_score_inputs(wildcards):
    records = ct2dwi_score_records(wildcards.experiment)
    files = [f for r in records for f in (*r["acquired"], r["mask"], *[p for pair in r["synth"].values() for p in pair])]
    lesions = [r["lesion"] for r in records if r["lesion"]]
    if config["demo"]["enabled"]:
        return {"files": files, "truth": rules.demo_cohort.output.truth}
    return {"files": files, "lesions": lesions}


def ct2dwi_grid_experiments(grids):
    return [layout.ct2dwi_scores(e) for e in ["main", *ct2dwi_experiments_of(grids)]]


def ct2dwi_report(wildcards=None):
    """What the report's CT -> DWI section reads (records of main's test subjects, with their CT)."""
    if not CT2DWI_CENTERS:
        return {"records": [], "tables": {}}
    records = [{**r, "ct": layout.preproc(r["cohort"], r["subject"])["ct"]} for r in ct2dwi_score_records("main")]
    tables = {g: layout.ct2dwi_grid(g) for g in CT2DWI["grids"]} | {"compute": layout.CT2DWI_COMPUTE}
    return {"records": records, "tables": tables, "hu_window": CT2DWI["hu_window"]}


def ct2dwi_report_inputs():
    """The report's CT -> DWI files: the tables and every image the figures show."""
    if not CT2DWI_CENTERS:
        return []
    spec = ct2dwi_report(None)
    return [*ct2dwi_targets(), *[f for r in spec["records"] for f in
                                 (r["ct"], *r["acquired"], r["mask"], *[p for pair in r["synth"].values() for p in pair])]]


def ct2dwi_targets():
    """What `rule all` asks of the CT -> DWI task (nothing without stroke subjects)."""
    if not CT2DWI_CENTERS:
        return []
    return [layout.CT2DWI_EXPERIMENTS, layout.CT2DWI_COMPUTE, *[layout.ct2dwi_grid(g) for g in CT2DWI["grids"]]]


rule train_ct2dwi:
    input:
        shards=ct2dwi_training_shards,
        lesions=lambda wc: [v["mask"] for v in ct2dwi_lesion_inputs(wc).values()],
    output:
        model=layout.ct2dwi_model("{experiment}", "{method}"),
        log=layout.ct2dwi_training_log("{experiment}", "{method}"),
    params:
        cell=lambda wc: cell_params(ct2dwi_cell(wc)),
        block=lambda wc: network_block(config, ct2dwi_cell(wc)),
        lesions=ct2dwi_lesion_inputs,
        training=config["training"],
        ct2dwi=CT2DWI,
        seed=config["seed"],
        device=config["device"],
        code=lambda wc: code_digest(wc.method),  # a change to the network's code retrains it
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
    conda:
        "../envs/dwisynth.yaml"
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
    wildcard_constraints:
        method=CT2DWI_NETWORKS,
    resources:
        gpu=config["training"]["gpus"],
    log:
        layout.log("synthesize_ct2dwi", "{experiment}", "{method}", "{cohort}", "{subject}"),
    conda:
        "../envs/dwisynth.yaml"
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
        log:
            layout.log("noise_free_ct2dwi", "{cohort}", "{subject}"),
        conda:
            "../envs/dwisynth.yaml"
        script:
            "../scripts/noise_free_ct2dwi.py"


rule score_ct2dwi:
    input:
        unpack(ct2dwi_score_inputs),
    output:
        layout.ct2dwi_scores("{experiment}"),
    params:
        records=lambda wc: ct2dwi_score_records(wc.experiment),
        cells=lambda wc: [cell_params(c) for c in ct2dwi_cells(wc.experiment)],
        blocks=lambda wc: {c.method: network_block(config, c) for c in ct2dwi_cells(wc.experiment)},
        noise_free=config["demo"]["enabled"],
        target_b=CT2DWI["target_b"][0],
    log:
        layout.log("score_ct2dwi", "{experiment}"),
    conda:
        "../envs/dwisynth.yaml"
    script:
        "../scripts/score_ct2dwi.py"


rule ct2dwi_experiment_table:
    input:
        ct2dwi_grid_experiments(CT2DWI["grids"]),
    output:
        layout.CT2DWI_EXPERIMENTS,
    log:
        "logs/ct2dwi_experiment_table.log",
    conda:
        "../envs/dwisynth.yaml"
    script:
        "../scripts/ct2dwi_tables.py"


rule ct2dwi_compute:
    input:
        models=[layout.ct2dwi_model(c.experiment, c.method) for c in CT2DWI_CELLS
                if c.grid in ("main", *CT2DWI["grids"]) and not c.model_experiment],
    output:
        layout.CT2DWI_COMPUTE,
    params:
        cells=[cell_params(c) for c in CT2DWI_CELLS if c.grid in ("main", *CT2DWI["grids"]) and not c.model_experiment],
        benchmarks=[layout.benchmark("train_ct2dwi", c.experiment, c.method) for c in CT2DWI_CELLS
                    if c.grid in ("main", *CT2DWI["grids"]) and not c.model_experiment],
    log:
        "logs/ct2dwi_compute.log",
    conda:
        "../envs/dwisynth.yaml"
    script:
        "../scripts/ct2dwi_compute.py"


rule ct2dwi_grid:
    input:
        lambda wc: ct2dwi_grid_experiments([wc.grid]),
    output:
        layout.ct2dwi_grid("{grid}"),
    wildcard_constraints:
        grid="|".join(GRIDS),
    log:
        "logs/ct2dwi_grid_{grid}.log",
    conda:
        "../envs/dwisynth.yaml"
    script:
        "../scripts/ct2dwi_tables.py"


for _grid in GRIDS:

    rule:
        name:
            f"ct2dwi_{_grid}"
        input:
            layout.ct2dwi_grid(_grid),
