from pathlib import Path

import pandas as pd

from dwisynth import layout
from dwisynth.config import (
    adc_settings,
    bvalue_grid,
    check_data_root,
    lesion_mask_file,
    read_sample_sheet,
    validate_config,
    validate_sample_sheet,
)
from dwisynth.ct2dwi import (
    GRIDS,
    cell_params,
    cell_training,
    experiment_cells,
    find_cell,
    lesion_mask_path,
    network_block,
    read_lesion_table,
    training_members,
)
from dwisynth.dataset import check_ct2dwi_subjects, subject_table, task_members
from dwisynth.demo.cohort import plan_demo_cohort, sample_sheet
from dwisynth.evaluate import MONOTONICITY_RISE, any_b_methods
from dwisynth.networks.base import code_digest, config_block_name, network_class, networks, weight_files
from dwisynth.provenance import environment_digest, git_state, package_versions, source_digest


validate_config(config, "config")

if config["demo"]["enabled"]:
    # The demo plan is a function of the config, so the sheet is known before
    # the demo_cohort rule writes the DICOM it points at.
    DEMO_SHEET = f"{config['demo']['outdir']}/samples.tsv"
    SAMPLES = validate_sample_sheet(sample_sheet(plan_demo_cohort(config)), "demo plan")
else:
    DEMO_SHEET = None
    SAMPLES = read_sample_sheet(config["samples"])
    check_data_root(SAMPLES, config["data_root"], config["samples"])

COHORTS = config["cohorts"] or sorted(SAMPLES["cohort"].unique())
_unknown = sorted(set(COHORTS) - set(SAMPLES["cohort"]))
if _unknown:
    raise ValueError(f"config cohorts {_unknown} have no rows in the sample sheet; cohorts there: "
                     f"{sorted(SAMPLES['cohort'].unique())}")
SAMPLES = SAMPLES[SAMPLES["cohort"].isin(COHORTS) & SAMPLES["organ"].isin(config["organs"])]
SAMPLES = SAMPLES.set_index(["cohort", "subject", "modality"], drop=False).sort_index()

BVALUE_GRID = bvalue_grid(config)
ADC = adc_settings(config)  # one b-set for every ADC fit, acquired and synthetic
# What every source writes for a test subject: the trained targets, then the held-out b-values
SYNTHESIS_B = [float(b) for b in config["bvalues"]["targets"] + config["bvalues"]["heldout"]]
SUBJECTS = subject_table(SAMPLES.reset_index(drop=True))  # one row per DWI subject, with its task
check_ct2dwi_subjects(SUBJECTS, config["ct2dwi"]["cohorts"], DEMO_SHEET or config["samples"])
# Networks come from the registry (dwisynth.networks.base): a new one needs no rule here.
NETWORKS = list(networks())
TRAINED_METHODS = [m for m in config["methods"] if m in NETWORKS]
NETWORK_PATTERN = "|".join(NETWORKS)


wildcard_constraints:
    cohort="[A-Za-z0-9_]+",
    subject="[A-Za-z0-9]+",


# An upgrade of ANTs, SimpleITK or torch can change any output, as our own code can (provenance.json lists them).
ENVIRONMENT = environment_digest(Path(workflow.basedir) / "requirements.lock")


def script_code(name):
    """Each rule's `code` param: a digest of scripts/`name`, every dwisynth module it imports and the library
    versions (Snakemake itself watches only the script)."""
    return {"source": source_digest(script=Path(workflow.basedir) / "scripts" / name), "environment": ENVIRONMENT}


def series_row(wildcards, modality):
    return SAMPLES.loc[(wildcards.cohort, wildcards.subject, modality)]


def dicom_dir(modality):
    def lookup(wildcards):
        return series_row(wildcards, modality)["dicom_dir"]

    return lookup


def supplied_gradients(wildcards):
    """The sheet's bval/bvec files of a DWI series whose DICOM carries no b-value tag (none when empty): inputs,
    so a corrected file reconverts."""
    row = series_row(wildcards, "DWI")
    return {column: row[column] for column in ("bval", "bvec") if row[column]}


def hdbet_v2_weights_file(wildcards):
    """The user's hd-bet 2.x weights as an input, so weights replaced at the same path reinstall and remask;
    a path that does not exist is left to the install script's clear error, not Snakemake's."""
    path = config["masking"]["hdbet_v2_weights"]
    return [path] if path and Path(path).exists() else []


def hdbet_weights_input(wildcards):
    """hd-bet 2.x weights are installed once by a local rule; only brain masks wait for it."""
    if config["masking"]["method"] == "hd-bet-v2" and series_row(wildcards, "DWI")["organ"] == "brain":
        return ["results/provenance/hdbet_v2_weights.json"]
    return []


def registered_ct_input(wildcards):
    """Stroke subjects carry their CT (on the DWI grid) and its brain mask into the slice shard."""
    if (wildcards.cohort, wildcards.subject, "CT") in SAMPLES.index:
        files = layout.preproc(wildcards.cohort, wildcards.subject)
        return {"ct": files["ct"], "ct_mask": files["ct_mask"]}
    return {}


def preproc_outputs(cohort, subject, modality):
    files = layout.preproc(cohort, subject)
    if modality == "CT":
        return [files["ct"], files["ct_mask"]]
    return [files["adc"], layout.shard(cohort, subject)]


def cohort_targets(cohort):
    rows = SAMPLES[SAMPLES["cohort"] == cohort]
    return [
        f
        for r in rows.itertuples()
        for f in [*layout.nifti(r.cohort, r.subject, r.modality).values(), *preproc_outputs(r.cohort, r.subject, r.modality)]
    ]


def all_targets():
    return [f for cohort in COHORTS for f in cohort_targets(cohort)] + [layout.SPLIT]


# --- tasks, splits and models (known once the split checkpoint has run) ----------------------
def _split():
    """The split manifest; known once its rule has run (a checkpoint), so only input functions call this."""
    return pd.read_csv(checkpoints.split_manifest.get().output[0], sep="\t", dtype=str, keep_default_na=False)


def training_shards(wildcards):
    """The train split's shards of the method's task and the organ: test subjects never reach training,
    so adding one schedules no training job."""
    task = networks()[wildcards.method].task
    return [layout.shard(s["cohort"], s["subject"]) for s in task_members(_split(), task, "train", wildcards.organ)]


def multib_lesion_mask(s: dict) -> str | None:
    """A multi-b subject's lesion mask (any grid): the demo's truth, or the sample sheet's lesion_mask column."""
    if config["demo"]["enabled"]:
        return f"{layout.demo_truth_stem(config['demo']['outdir'], s['cohort'], s['subject'])}_desc-lesion_mask.nii.gz"
    return lesion_mask_file(SAMPLES.loc[(s["cohort"], s["subject"], "DWI")]["lesion_mask"], s["cohort"],
                            s["subject"], config["samples"])


def training_lesion_masks(wildcards):
    """{"cohort/subject": {"mask", "reference"}} of the multi-b training subjects that have a lesion mask, for
    training.lesion_oversample and training.lesion_weight (every multi-b network alike); none when both are 0.
    Subjects without a mask train on their slices as drawn."""
    if not (config["training"]["lesion_oversample"] or config["training"].get("lesion_weight")):
        return {}
    task = networks()[wildcards.method].task
    masks = {}
    for s in task_members(_split(), task, "train", wildcards.organ):
        path = multib_lesion_mask(s)
        if path:
            masks[f"{s['cohort']}/{s['subject']}"] = {"mask": path,
                                                      "reference": layout.preproc(s["cohort"], s["subject"])["dwi"]}
    return masks


def upstream_models(wildcards):
    """{role: model.pt} of the models of this organ the network is built from (MineGAN: its stage 1)."""
    return {role: layout.model(method, wildcards.organ)
            for role, method in network_class(wildcards.method).upstream.items()}


def trainable_organs():
    """Organs with at least one multi-b training subject (an organ without any gets no model)."""
    return sorted({s["organ"] for s in task_members(_split(), "multib", "train")})


def multib_test_subjects():
    return task_members(_split(), "multib", "test")


def score_methods():
    """Every configured multi-b method, plus the noise-free reference on the demo."""
    return config["methods"] + (["noisefree"] if config["demo"]["enabled"] else [])


def scored(method, subject, organs):
    """A network (or DC²Anet's interpolation) scores a subject only when its organ has a model."""
    return (method not in TRAINED_METHODS and method != "dc2anetinterp") or subject["organ"] in organs


def synthesis_targets(wildcards=None):
    organs = trainable_organs()
    return [
        path
        for s in multib_test_subjects()
        for method in score_methods()
        if scored(method, s, organs)
        for path in layout.synth(method, s["cohort"], s["subject"]).values()
    ]


def model_targets(wildcards=None):
    return [layout.model(m, organ) for m in TRAINED_METHODS for organ in trainable_organs()]


def training_logs(wildcards=None):
    """Every multi-b model, as records: method, organ, its training log and model.pt."""
    return [{"method": m, "organ": organ, "log": layout.training_log(m, organ), "model": layout.model(m, organ)}
            for m in TRAINED_METHODS for organ in trainable_organs()]


def synthesis_inputs(wildcards):
    organ = series_row(wildcards, "DWI")["organ"]
    pre = layout.preproc(wildcards.cohort, wildcards.subject)
    return {"model": layout.model(wildcards.method, organ), "dwi": pre["dwi"], "bval": pre["bval"],
            "mask": pre["mask"], "norm_record": pre["norm_record"]}


# --- evaluation and report ---------------------------------------------------------------
def evaluation_records(wildcards=None):
    """One record per multi-b test subject: the acquired images, every method's synthesis and what lesion and
    truth scoring read (`dwisynth.evaluate.evaluate_tables`): the demo's truth (noise-free reference, lesion mask,
    tissue labels, ADC), or the sheet's lesion_mask of a study's subject."""
    organs = trainable_organs()
    records = []
    for s in multib_test_subjects():
        pre = layout.preproc(s["cohort"], s["subject"])
        synth = {}
        for method in score_methods():
            if scored(method, s, organs):
                files = layout.synth(method, s["cohort"], s["subject"])
                synth[method] = (files["dwi"], files["bval"], files["adc"])
        record = {**{k: s[k] for k in ("cohort", "center", "organ", "subject")},
                  "acquired": (pre["dwi"], pre["bval"]), "mask": pre["mask"], "adc": pre["adc"], "synth": synth}
        lesion = multib_lesion_mask(s)
        if lesion:
            record["lesion"] = lesion
        if config["demo"]["enabled"]:
            stem = layout.demo_truth_stem(config["demo"]["outdir"], s["cohort"], s["subject"])
            record |= {"truth_adc": f"{stem}_desc-truth_adc.nii.gz", "dseg": f"{stem}_dseg.nii.gz",
                       "label_names": f"{config['demo']['outdir']}/truth/dseg.tsv"}
            if "noisefree" in synth:
                record["truth_dwi"] = synth["noisefree"][:2]
        records.append(record)
    return records


def evaluation_inputs(wildcards):
    files = {"split": layout.SPLIT, "synth": synthesis_targets()}
    records = evaluation_records()
    files["acquired"] = [f for r in records for f in (*r["acquired"], r["mask"], r["adc"])]
    if config["demo"]["enabled"]:
        files["truth"] = rules.demo_cohort.output.truth
    else:
        files["lesions"] = [r["lesion"] for r in records if r.get("lesion")]
    return files


# monotonicity of the networks that synthesize any b (MineGAN), on a grid of evaluation.monotonicity_b_step
MONOTONICITY_STEP = config["evaluation"]["monotonicity_b_step"]
ANY_B_METHODS = any_b_methods(TRAINED_METHODS)


def monotonicity_targets(wildcards=None):
    """Every test subject's monotonicity row of every network that synthesizes any b."""
    organs = trainable_organs()
    return [layout.monotonicity(method, s["cohort"], s["subject"])
            for s in multib_test_subjects() for method in ANY_B_METHODS if scored(method, s, organs)]


def monotonicity_inputs(wildcards):
    row = series_row(wildcards, "DWI")
    pre = layout.preproc(wildcards.cohort, wildcards.subject)
    return {"model": layout.model(wildcards.method, row["organ"]), "dwi": pre["dwi"], "bval": pre["bval"],
            "mask": pre["mask"]}


def monotonicity_ids(wildcards):
    row = series_row(wildcards, "DWI")
    return {"task": "multib", "method": wildcards.method, "cohort": wildcards.cohort, "center": row["center"],
            "organ": row["organ"], "subject": wildcards.subject}


def report_inputs(wildcards):
    files = {"summary": rules.summarize.output[0], "claims": rules.claims.output[0],
             "training_compute": rules.training_compute.output[0],
             "metrics": rules.evaluate_synthesis.output.metrics,
             "adc": rules.evaluate_synthesis.output.adc, "provenance": rules.provenance.output.record,
             "logs": [r["log"] for r in training_logs()], "reading_set": rules.reader_study_export.output.key}
    files.update(evaluation_inputs(wildcards))
    if config["reader_study"]["ratings"]:
        files["reader_scores"] = rules.reader_scores.output[0]
    files["ct2dwi"] = ct2dwi_report_inputs()
    files |= truth_report_inputs()
    return files


def claims_inputs(wildcards):
    """The tables the claims are tested on: the synthesis metrics, and the truth-referenced ones where this run
    writes them (the demo)."""
    truth = {k: v for k, v in truth_report_inputs().items()
             if k in ("truth_metrics", "ct2dwi_truth_metrics", "ct2dwi_lesion_contrast")}
    return {"metrics": rules.evaluate_synthesis.output.metrics, **truth}


def truth_report_inputs():
    """The truth-referenced tables the report shows, each only where this workflow writes it (its rules'
    outputs): the multi-b lesion and monotonicity tables, the truth metrics where there is a truth (the demo),
    the CT -> DWI truth tables on the demo (dwisynth.report.TRUTH_TABLES)."""
    from dwisynth.report import TRUTH_TABLES

    written = {str(f) for job_rule in workflow.rules for f in job_rule.output}
    wanted = {k: v for k, v in TRUTH_TABLES.items() if v in written}
    if not config["demo"]["enabled"]:
        wanted.pop("truth_metrics", None)
    return wanted | ct2dwi_truth_tables()


# --- CT -> DWI (stroke): experiment cells, their inputs, scores and report (rules/jmmda.smk) ---------
CT2DWI = config["ct2dwi"]
CT2DWI_CENTERS = sorted(SUBJECTS.loc[SUBJECTS["task"] == "ct2dwi", "center"].unique())
CT2DWI_CELLS = experiment_cells(config, CT2DWI_CENTERS)
CT2DWI_NETWORKS = "|".join(networks("ct2dwi"))
# the cells `rule all` trains (main and ct2dwi.grids; a cell that reuses another's model trains nothing)
CT2DWI_TRAINED = [c for c in CT2DWI_CELLS if c.grid in ("main", *CT2DWI["grids"]) and not c.model_experiment]
LESION_TABLE = read_lesion_table(CT2DWI["lesion_masks"]) if CT2DWI["lesion_masks"] else {}


def ct2dwi_cell(wildcards):
    return find_cell(CT2DWI_CELLS, wildcards.experiment, wildcards.method)


def ct2dwi_cells(experiment):
    return [c for c in CT2DWI_CELLS if c.experiment == experiment]


def ct2dwi_experiments_of(grids):
    return list(dict.fromkeys(c.experiment for c in CT2DWI_CELLS if c.grid in grids))


def ct2dwi_training_subjects(wildcards):
    return training_members(_split().to_dict("records"), ct2dwi_cell(wildcards))


def ct2dwi_training_shards(wildcards):
    return [layout.shard(s["cohort"], s["subject"]) for s in ct2dwi_training_subjects(wildcards)]


def ct2dwi_lesion_inputs(wildcards):
    """Lesion masks of the training subjects, only for a cell trained with ct2dwi.guidance."""
    if not ct2dwi_cell(wildcards).guided:
        return {}
    paths = {}
    for s in ct2dwi_training_subjects(wildcards):
        path = lesion_mask_path(config, LESION_TABLE, s["cohort"], s["subject"])
        if path is None:
            raise ValueError(f"ct2dwi.guidance trains with lesion supervision, but sub-{s['subject']} ({s['cohort']}) "
                             "has no lesion mask; list every training subject in ct2dwi.lesion_masks or set "
                             "ct2dwi.guidance to {lesion_weight: 0, lesion_oversample: 0}")
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
    """An experiment's test subjects as `ct2dwi.score_experiment` reads them; on the demo with the truth's label
    map and its names (`dseg`, `label_names`: the lesion's host tissue and names)."""
    records = []
    for s in ct2dwi_test_subjects():
        pre = layout.preproc(s["cohort"], s["subject"])
        synth = {}
        for method in ct2dwi_methods(experiment):
            files = layout.ct2dwi_synth(experiment, method, s["cohort"], s["subject"])
            synth[method] = (files["dwi"], files["bval"])
        truth = {}
        if config["demo"]["enabled"]:
            stem = layout.demo_truth_stem(config["demo"]["outdir"], s["cohort"], s["subject"])
            truth = {"dseg": f"{stem}_dseg.nii.gz", "label_names": f"{config['demo']['outdir']}/truth/dseg.tsv"}
        records.append({**{k: s[k] for k in ("cohort", "center", "subject")}, "acquired": (pre["dwi"], pre["bval"]),
                        "mask": pre["mask"], "synth": synth, **truth,
                        "lesion": lesion_mask_path(config, LESION_TABLE, s["cohort"], s["subject"])})
    return records


def ct2dwi_score_inputs(wildcards):
    return ct2dwi_score_files(wildcards.experiment)


def ct2dwi_score_files(experiment):
    """What scoring an experiment reads: every record's images and masks, and the lesion masks (the demo's
    truth folder, which holds them and the label maps, on the demo)."""
    records = ct2dwi_score_records(experiment)
    files = [f for r in records for f in (*r["acquired"], r["mask"], *[p for pair in r["synth"].values() for p in pair])]
    lesions = [r["lesion"] for r in records if r["lesion"]]
    if config["demo"]["enabled"]:
        return {"files": files, "truth": rules.demo_cohort.output.truth}
    return {"files": files, "lesions": lesions}


def ct2dwi_grid_experiments(grids):
    """The score tables a grid's table reads: its experiments and main's (every replicate: the reference)."""
    return [layout.ct2dwi_scores(e) for e in ct2dwi_experiments_of(["main", *grids])]


def ct2dwi_report(wildcards=None):
    """What the report's CT -> DWI section reads (records of main's test subjects, with their CT)."""
    if not CT2DWI_CENTERS:
        return {"records": [], "tables": {}}
    records = [{**r, "ct": layout.preproc(r["cohort"], r["subject"])["ct"]} for r in ct2dwi_score_records("main")]
    tables = {g: layout.ct2dwi_grid(g) for g in ("main", *CT2DWI["grids"])} | {"compute": layout.CT2DWI_COMPUTE}
    return {"records": records, "tables": tables, "hu_window": CT2DWI["hu_window"], "target_b": CT2DWI["target_b"][0]}


def ct2dwi_report_inputs():
    """The report's CT -> DWI files: the tables and every image the figures show."""
    if not CT2DWI_CENTERS:
        return []
    spec = ct2dwi_report(None)
    return [*ct2dwi_targets(), *[f for r in spec["records"] for f in
                                 (r["ct"], *r["acquired"], r["mask"], *[p for pair in r["synth"].values() for p in pair])]]


def ct2dwi_targets():
    """What `rule all` asks of the CT -> DWI task (nothing without stroke subjects; the truth tables on the demo)."""
    if not CT2DWI_CENTERS:
        return []
    return [layout.CT2DWI_EXPERIMENTS, layout.CT2DWI_COMPUTE,
            *[layout.ct2dwi_grid(g) for g in ("main", *CT2DWI["grids"])],
            *ct2dwi_truth_tables().values()]


def ct2dwi_truth_tables():
    """{name: path} of the CT -> DWI scores against the demo's truth (none without the demo or stroke subjects)."""
    from dwisynth.report import TRUTH_TABLES

    if not (CT2DWI_CENTERS and config["demo"]["enabled"]):
        return {}
    return {"ct2dwi_truth_metrics": TRUTH_TABLES["ct2dwi_truth_metrics"],
            "ct2dwi_lesion_contrast": TRUTH_TABLES["ct2dwi_lesion_contrast"]}
