"""Preprocessing outputs of the tiny workflow run against the demo truth: registration, masks, ADC, split, shards."""

import json

import numpy as np
import pandas as pd
import pytest

from dwisynth.preprocess.qa import (adc_error_by_tissue, dice, protocol_truth_adc, registration_residual_mm,
                                    voxel_centres_lps)

from helpers import TINY_CONFIG, canonical, preproc_stem, snakemake, truth_stem

ADC_BVALUES = [0, 100, 400, 600, 800, 1000]  # the tiny config's inputs + targets: adc.bvalues by default

pytestmark = pytest.mark.workflow




def test_ct_registration_undoes_the_planted_misalignment(demo_run):
    for xfm in (demo_run / "results/stroke/preproc").glob("sub-*/sub-*_from-ct_to-dwi_xfm.json"):
        subject = xfm.parent.name[4:]
        truth = json.loads(truth_stem(demo_run, "stroke", subject).with_name(f"sub-{subject}_truth.json").read_text())
        img, brain = canonical(f"{truth_stem(demo_run, 'stroke', subject)}_desc-organ_mask.nii.gz")
        mean_mm, max_mm = registration_residual_mm(np.array(json.loads(xfm.read_text())["fixed_to_moving_lps"]),
                                                   np.array(truth["ct_to_dwi_lps"]),
                                                   voxel_centres_lps(brain > 0, img.affine))
        planted, _ = registration_residual_mm(np.eye(4), np.array(truth["ct_to_dwi_lps"]),
                                              voxel_centres_lps(brain > 0, img.affine))
        assert planted > 2.0 and mean_mm < 1.0 and max_mm < 2.0, (planted, mean_mm, max_mm)


def test_hd_bet_brain_mask_matches_the_phantom(demo_run):
    masks = list((demo_run / "results").glob("*/preproc/sub-*/sub-*_desc-organ_mask.json"))
    brains = [m for m in masks if json.loads(m.read_text())["organ"] == "brain"]
    assert brains
    for record_path in brains:
        assert json.loads(record_path.read_text())["method"] == "hd-bet-v1"
        cohort, subject = record_path.parts[-4], record_path.parent.name[4:]
        _, mask = canonical(str(record_path).replace(".json", ".nii.gz"))
        _, truth = canonical(f"{truth_stem(demo_run, cohort, subject)}_desc-organ_mask.nii.gz")
        assert dice(mask > 0, truth > 0) >= 0.9


def test_acquired_adc_matches_the_protocol_truth_per_tissue(demo_run):
    """Against the ADC a noise-free scan with the same b-values would give (so IVIM bias is not counted).

    Target (issue 3): median absolute error < 0.05 x10^-3 mm²/s per tissue at the demo SNR. It holds in
    the multi-b brain; low-SNR body tissues at high b carry the Rician noise floor (ADC biased low),
    so elsewhere only a bound on the bias is asserted and the numbers go to bench/.
    """
    tissues = pd.read_csv(demo_run / "data/demo/truth/dseg.tsv", sep="\t")
    names = dict(zip(tissues["index"], tissues["name"]))
    brain_checked = 0
    for adc_path in (demo_run / "results").glob("*/preproc/sub-*/sub-*_adc.nii.gz"):
        cohort, subject = adc_path.parts[-4], adc_path.parent.name[4:]
        t = truth_stem(demo_run, cohort, subject)
        meta = json.loads(t.with_name(f"sub-{subject}_truth.json").read_text())
        _, adc = canonical(adc_path)
        _, noise_free = canonical(f"{t}_desc-noisefree_dwi.nii.gz")
        truth = protocol_truth_adc(noise_free, np.loadtxt(f"{t}_desc-noisefree_dwi.bval"), meta["acquired_bvals"],
                                   use_b=ADC_BVALUES)
        _, mask = canonical(f"{preproc_stem(demo_run, cohort, subject)}_desc-organ_mask.nii.gz")
        table = adc_error_by_tissue(adc, truth, canonical(f"{t}_dseg.nii.gz")[1],
                                    canonical(f"{t}_desc-purity_probseg.nii.gz")[1], mask > 0, names,
                                    min_voxels=100)
        tissue = table[~table["tissue"].isin(["fat", "csf", "urine"])]  # little signal at high b, or at the clip
        assert (tissue["median_error"].abs() < 0.1).all(), (subject, table)
        if meta["organ"] == "brain" and len(meta["acquired_bvals"]) >= 3:
            parenchyma = tissue[tissue["tissue"].isin(["cortical_gm", "deep_gm", "wm"])]
            assert (parenchyma["median_abs_error"] < 0.05).all(), (subject, table)
            brain_checked += len(parenchyma)
    assert brain_checked >= 2


def test_workflow_split_manifest_keeps_heldout_subjects_in_test(demo_run):
    split = pd.read_csv(demo_run / "results/datasets/split.tsv", sep="\t")
    heldout = split[split["reason"].str.contains("held-out|fixed")]
    assert (heldout["split"] == "test").all() and len(heldout) >= 1


def test_hd_bet_v2_config_adds_the_local_install_rule(tmp_path):
    import yaml


    config = yaml.safe_load(TINY_CONFIG.read_text())
    config["masking"] = {"method": "hd-bet-v2", "hdbet_v2_weights": str(tmp_path / "hdbet.zip")}
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(config))
    proc = snakemake("-n", "--cores", "1", workdir=tmp_path, configfile=path)
    assert "install_hdbet_v2_weights" in proc.stdout


def test_stroke_shard_carries_the_registered_ct(demo_run):
    shard = next((demo_run / "results/stroke/slices").glob("sub-*_slices.npz"))
    with np.load(shard) as data:
        assert data["ct"].shape == data["mask"].shape
        brain_hu = data["ct"][data["mask"] > 0]
        assert 15 < np.median(brain_hu) < 45  # soft tissue, not air or bone: the CT is on the DWI grid
