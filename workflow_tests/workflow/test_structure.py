"""The workflow's structure on real files: (cohort, subject) keys, a network added from outside, no needless retraining.

One run on a hand-written sheet: two cohorts that both hold S0001 (train) and S0002 (test),
made from the demo run's DICOM series, with a network registered through DWISYNTH_PLUGINS.
"""

import os
import re
import shutil

import pandas as pd
import pytest
import torch
import yaml

from helpers import REPO, TINY_CONFIG, snakemake

pytestmark = pytest.mark.workflow

PLUGIN = REPO / "workflow_tests" / "plugins" / "tiny_conv.py"
# (cohort, subject, split) <- a demo abdomen series; both cohorts use the same pseudonyms
# siteA/S0009 is the demo's few-shot subject (also acquired at b 75 and 850): the default methods include
# the few-shot MineGAN, which needs one in the train split
ROWS = [("siteA", "S0001", "train", "HBabdomen01"), ("siteB", "S0001", "train", "HCabdomen01"),
        ("siteA", "S0009", "train", "HAabdomen02"),
        ("siteA", "S0002", "test", "HAabdomen01"), ("siteB", "S0002", "test", "TCabdomen01")]


def _sheet(demo_run, rows):
    demo = pd.read_csv(demo_run / "data/demo/samples.tsv", sep="\t", keep_default_na=False).set_index("subject")
    return pd.DataFrame([{"cohort": cohort, "center": cohort, "subject": subject, "organ": "abdomen",
                          "modality": "DWI", "dicom_dir": str(demo_run / demo.loc[source, "dicom_dir"]),
                          "split": split} for cohort, subject, split, source in rows])


def _plugin_env():
    return {**os.environ, "DWISYNTH_PLUGINS": str(PLUGIN)}


@pytest.fixture(scope="module")
def shared_id_run(demo_run, tmp_path_factory):
    workdir = tmp_path_factory.mktemp("shared_ids")
    _sheet(demo_run, ROWS).to_csv(workdir / "samples.tsv", sep="\t", index=False)
    config = yaml.safe_load(TINY_CONFIG.read_text())
    # the plugin network's block is the only config it needs; `methods` defaults to every registered network
    config.update({"samples": str(workdir / "samples.tsv"), "demo": {"enabled": False}, "data_root": str(demo_run),
                   "tinyconv": {"steps": 10, "width": 4}})
    (workdir / "config.yaml").write_text(yaml.safe_dump(config))
    snakemake("--cores", "2", workdir=workdir, configfile=workdir / "config.yaml", env=_plugin_env())
    return workdir


def test_two_cohorts_sharing_pseudonyms_are_split_trained_and_scored_apart(shared_id_run):
    split = pd.read_csv(shared_id_run / "results/datasets/split.tsv", sep="\t")
    assert sorted(zip(split["cohort"], split["subject"], split["split"])) == sorted((c, s, x) for c, s, x, _ in ROWS)
    for method in ("dc2anet", "pix2pix", "tinyconv"):
        record = torch.load(shared_id_run / f"results/models/{method}/abdomen/model.pt", weights_only=True)
        assert record["train_subjects"] == [["siteA", "S0001"], ["siteA", "S0009"], ["siteB", "S0001"]]
    metrics = pd.read_csv(shared_id_run / "results/tables/synthesis_metrics.tsv", sep="\t", dtype={"slice": str})
    volumes = metrics[metrics["slice"] == "volume"]
    for method in ("dc2anet", "pix2pix", "tinyconv", "cdwi"):
        scored = set(zip(*[volumes[volumes["method"] == method][k] for k in ("cohort", "subject")]))
        assert scored == {("siteA", "S0002"), ("siteB", "S0002")}, method
    adc = pd.read_csv(shared_id_run / "results/tables/adc_agreement.tsv", sep="\t")
    assert len(adc[adc["method"] == "tinyconv"]) == 2


def test_a_network_added_from_outside_trains_and_synthesizes_with_no_rule_edit(shared_id_run):
    log = pd.read_csv(shared_id_run / "results/models/tinyconv/abdomen/training_log.csv")
    assert log["step"].iloc[-1] == 10
    for cohort in ("siteA", "siteB"):
        stem = shared_id_run / f"results/{cohort}/synth/tinyconv/sub-S0002/sub-S0002_desc-tinyconv"
        assert (stem.parent / f"{stem.name}_dwi.nii.gz").exists() and (stem.parent / f"{stem.name}_adc.nii.gz").exists()
    assert "tiny conv (test plugin)" in (shared_id_run / "results/report.html").read_text()


def _planned_rules(output: str) -> list[str]:
    return re.findall(r"^(?:local)?rule (\w+):", output, flags=re.M)


def test_adding_a_test_subject_schedules_no_training_job(shared_id_run, demo_run, tmp_path):
    workdir = tmp_path / "run"
    shutil.copytree(shared_id_run, workdir, symlinks=True)
    rows = ROWS + [("siteA", "S0003", "test", "HAabdomen01")]
    _sheet(demo_run, rows).to_csv(workdir / "samples.tsv", sep="\t", index=False)
    config = yaml.safe_load((workdir / "config.yaml").read_text())
    config["samples"] = str(workdir / "samples.tsv")
    (workdir / "config.yaml").write_text(yaml.safe_dump(config))
    run = dict(workdir=workdir, configfile=workdir / "config.yaml", env=_plugin_env())
    # the split checkpoint sees the new subject first (it needs its conversion record) ...
    snakemake("--cores", "2", "results/datasets/split.tsv", **run)
    # ... then the plan holds the new subject's chain and the aggregation, and no training job
    plan = snakemake("-n", "--cores", "2", **run).stdout
    planned = _planned_rules(plan)
    assert "train" not in planned, plan[-3000:]
    assert {"synthesize", "cdwi", "evaluate_synthesis", "report"} <= set(planned)
    jobs = re.findall(r"wildcards: (.*)", plan)
    assert any("subject=S0003" in w for w in jobs) and not any("subject=S000" in w and "S0003" not in w for w in jobs)


def test_adding_a_training_subject_schedules_its_chain_and_only_its_organs_models(shared_id_run, demo_run, tmp_path):
    """One-cohort rerun (README): a new brain training subject in siteB converts and preprocesses that one
    series and trains the brain models; no other subject's chain reruns and no abdomen model retrains."""
    workdir = tmp_path / "run"
    shutil.copytree(shared_id_run, workdir, symlinks=True)
    sheet = _sheet(demo_run, ROWS + [("siteB", "S0010", "train", "HAbrain01")])
    sheet.loc[sheet["subject"] == "S0010", "organ"] = "brain"
    sheet.to_csv(workdir / "samples.tsv", sep="\t", index=False)
    config = yaml.safe_load((workdir / "config.yaml").read_text())
    config["samples"] = str(workdir / "samples.tsv")
    (workdir / "config.yaml").write_text(yaml.safe_dump(config))
    run = dict(workdir=workdir, configfile=workdir / "config.yaml", env=_plugin_env())
    snakemake("--cores", "2", "results/datasets/split.tsv", **run)  # the split checkpoint first, as above
    plan = snakemake("-n", "--cores", "2", **run).stdout
    planned = _planned_rules(plan)
    blocks = re.split(r"^(?=(?:local)?rule \w+:)", plan, flags=re.M)
    jobs = [(re.match(r"(?:local)?rule (\w+):", b).group(1), (re.findall(r"wildcards: (.*)", b) or [""])[0])
            for b in blocks if re.match(r"(?:local)?rule \w+:", b)]
    trained = [w for rule, w in jobs if rule == "train"]
    assert trained and all("organ=brain" in w for w in trained), trained
    per_subject = [w for _, w in jobs if "subject=" in w]
    assert per_subject and all("subject=S0010" in w for w in per_subject), per_subject
    assert {"register_dwi", "organ_mask", "normalize_dwi", "slice_shard", "train", "report"} <= set(planned), planned


def test_an_edit_to_a_networks_code_retrains_that_network_and_no_other(shared_id_run, tmp_path):
    """The train rule's `network_code`: a plugin network's file is its code, like a module of dwisynth."""
    workdir = tmp_path / "run"
    shutil.copytree(shared_id_run, workdir, symlinks=True)
    edited = tmp_path / "tiny_conv.py"
    edited.write_text(PLUGIN.read_text().replace('label = "', 'label = "edited ', 1))
    assert edited.read_text() != PLUGIN.read_text()
    env = {**os.environ, "DWISYNTH_PLUGINS": str(edited)}
    plan = snakemake("-n", "--cores", "2", workdir=workdir, configfile=workdir / "config.yaml", env=env).stdout
    blocks = re.split(r"^(?=(?:local)?rule \w+:)", plan, flags=re.M)
    trained = [(re.findall(r"wildcards: (.*)", b) or [""])[0] for b in blocks if b.startswith("rule train:")]
    assert trained and all("method=tinyconv" in w for w in trained), trained
    assert not any(b.startswith(("rule register_dwi:", "rule slice_shard:")) for b in blocks), plan[-3000:]
