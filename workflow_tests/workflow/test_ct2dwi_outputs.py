"""CT -> DWI on the tiny config: every method and experiment for every stroke test subject, on the DWI grid,
scored with the lesion columns, and cross-center models trained on their own center only."""

import nibabel as nib
import numpy as np
import pandas as pd
import pytest
import torch

pytestmark = pytest.mark.workflow

MAIN = ["jmmdagan", "pix2pix", "unet", "noisefree"]
ABLATIONS = ["nomask", "nodwt", "noedge", "noadaptive"]
SEEDS = 2  # the tiny config's ct2dwi.seeds


def _stroke_split(run, which):
    split = pd.read_csv(run / "results/datasets/split.tsv", sep="\t")
    return split[(split["task"] == "ct2dwi") & (split["split"] == which)]


def test_every_method_and_ablation_writes_b1000_on_the_dwi_grid_for_every_stroke_test_subject(demo_run):
    test = _stroke_split(demo_run, "test")
    assert len(test) == 2 and set(test["center"]) == {"strokeA", "strokeB"}
    for row in test.itertuples():
        reference = nib.load(demo_run / f"results/stroke/preproc/sub-{row.subject}/sub-{row.subject}_desc-norm_dwi.nii.gz")
        outputs = [("main", m) for m in MAIN] + [("unguided", m) for m in MAIN if m != "noisefree"]
        outputs += [(e, "jmmdagan") for e in ABLATIONS] + [("nodwt_rep2", "jmmdagan"), ("unguided_rep2", "unet")]
        for experiment, method in outputs:
            stem = demo_run / f"results/stroke/ct2dwi/{experiment}/{method}/sub-{row.subject}/sub-{row.subject}_desc-{method}"
            img = nib.load(f"{stem}_dwi.nii.gz")
            assert img.shape == reference.shape[:3] + (1,) and np.allclose(img.affine, reference.affine)
            assert np.loadtxt(f"{stem}_dwi.bval", ndmin=1).tolist() == [1000.0]
            assert np.isfinite(np.asarray(img.dataobj)).all()


def test_ct2dwi_rows_join_the_metrics_with_lesion_columns(demo_run):
    metrics = pd.read_csv(demo_run / "results/tables/synthesis_metrics.tsv", sep="\t", dtype={"slice": str})
    ct = metrics[(metrics["task"] == "ct2dwi") & (metrics["slice"] == "volume")]
    assert set(ct["method"]) == set(MAIN)
    assert (ct["b_value"] == 1000).all() and len(ct) == 2 * len(MAIN)
    lesion = ct[["lesion_psnr", "lesion_ssim", "lesion_mse", "lesion_mae", "lesion_contrast"]]
    assert lesion.notna().all().all()
    # the noise-free reference has the lesion's contrast: brighter than its host, as conspicuous as acquired
    noisefree = ct[ct["method"] == "noisefree"]
    assert (noisefree["lesion_contrast"] > 0.05).all(), noisefree["lesion_contrast"]
    experiments = pd.read_csv(demo_run / "results/tables/ct2dwi_experiments.tsv", sep="\t")
    conspicuity = experiments.loc[experiments["method"] == "noisefree", "lesion_conspicuity_vs_acquired"]
    assert ((conspicuity - 1).abs() < 0.3).all(), conspicuity
    assert metrics.loc[metrics["task"] == "multib", "lesion_psnr"].isna().all()
    summary = pd.read_csv(demo_run / "results/tables/summary.tsv", sep="\t")
    paired = summary[(summary["task"] == "ct2dwi") & (summary["analysis"] == "psnr vs pix2pix")]
    assert set(paired["method"]) == {"jmmdagan", "unet", "noisefree"} and (paired["n"] == 2).all()


def test_experiment_tables_hold_main_the_ablations_and_both_cross_center_directions(demo_run):
    table = pd.read_csv(demo_run / "results/tables/ct2dwi_experiments.tsv", sep="\t")
    replicated = ["main", "unguided", *ABLATIONS]
    assert set(table["experiment"]) == {*replicated, *(f"{e}_rep2" for e in replicated), "from_strokeA", "from_strokeB"}
    assert set(table.loc[table["experiment"] == "nodwt", "modules_off"]) == {"dwt"}
    assert set(table.loc[table["experiment"] == "noedge", "modules_off"]) == {"edge_attention"}
    # the main table: every network guided and unguided, each a mean over both seeds
    main_table = pd.read_csv(demo_run / "results/tables/ct2dwi_main.tsv", sep="\t")
    networks = {"jmmdagan", "pix2pix", "unet"}
    assert {(r.experiment, r.method, r.lesion_guidance) for r in main_table.itertuples()} >= {
        *(("main", m, "yes") for m in networks), *(("unguided", m, "no") for m in networks)}
    assert (main_table.loc[main_table["method"].isin(networks), "seeds"] == SEEDS).all()
    assert main_table.loc[main_table["method"].isin(networks), "psnr_sd"].notna().all()
    cross = pd.read_csv(demo_run / "results/tables/ct2dwi_crosscenter.tsv", sep="\t")
    assert set(cross["train_centers"]) == {"strokeA", "strokeB"}
    assert (cross["n_in_center"] == 1).all() and (cross["n_cross_center"] == 1).all()
    assert np.allclose(cross["psnr_drop"], cross["psnr_in_center"] - cross["psnr_cross_center"])
    ablation = pd.read_csv(demo_run / "results/tables/ct2dwi_ablation.tsv", sep="\t")
    main = ablation[(ablation["experiment"] == "main") & (ablation["method"] == "jmmdagan")]
    assert main["psnr_vs_main"].abs().max() < 1e-9
    assert set(ablation.loc[ablation["grid"] == "ablation", "experiment"]) == set(ABLATIONS)
    compute = pd.read_csv(demo_run / "results/tables/ct2dwi_compute.tsv", sep="\t")
    assert (compute["trained_steps"] == 10).all() and (compute["parameters"] > 0).all()


def test_models_record_their_inputs_and_cross_center_ones_only_their_centers_subjects(demo_run):
    train = _stroke_split(demo_run, "train")
    for center in ("strokeA", "strokeB"):
        record = torch.load(demo_run / f"results/models/ct2dwi/from_{center}/jmmdagan/model.pt", weights_only=True)
        expected = sorted(train.loc[train["center"] == center, "subject"])
        assert sorted(s for _, s in record["train_subjects"]) == expected
    main = torch.load(demo_run / "results/models/ct2dwi/main/pix2pix/model.pt", weights_only=True)
    assert main["task"] == "ct2dwi" and main["input_channels"] == ["ct", "ct_brain_mask"]
    # every network of main trains with the same lesion supervision, unguided with none, a replicate from its seed
    assert main["lesion_guidance"] == {"lesion_weight": 0.1, "lesion_oversample": 0.5}
    unguided = torch.load(demo_run / "results/models/ct2dwi/unguided/jmmdagan/model.pt", weights_only=True)
    assert unguided["lesion_guidance"] == {"lesion_weight": 0.0, "lesion_oversample": 0.0}
    second = torch.load(demo_run / "results/models/ct2dwi/main_rep2/pix2pix/model.pt", weights_only=True)
    assert second["seed"] == main["seed"] + 1 and second["replicate"] == 2
    assert main["input_scaling"][0] == {"kind": "hu", "window": [0.0, 80.0]}
    assert sorted(s for _, s in main["train_subjects"]) == sorted(train["subject"])


def test_the_demo_scores_every_main_method_and_the_acquisition_against_the_truth(demo_run):
    metrics = pd.read_csv(demo_run / "results/tables/ct2dwi/truth_metrics.tsv", sep="\t")
    methods = {"acquired", *(m for m in MAIN if m != "noisefree")}
    assert set(metrics["method"]) == methods and len(metrics) == 2 * len(methods)
    assert (metrics["task"] == "ct2dwi").all() and (metrics["organ"] == "brain").all()
    assert np.isfinite(metrics[["psnr", "ssim", "mae"]]).all().all()
    contrast = pd.read_csv(demo_run / "results/tables/ct2dwi/lesion_contrast.tsv", sep="\t")
    assert set(contrast["method"]) == {"truth", *methods}
    assert set(contrast["lesion_name"]) == {"acute_infarct"}
    truth = contrast[contrast["method"] == "truth"]
    assert np.allclose(truth["conspicuity"], 1.0) and (truth["contrast"] > 0).all()


def test_report_shows_the_ct2dwi_section(demo_run):
    html = (demo_run / "results/report.html").read_text()
    assert "CT -&gt; DWI (acute ischemic stroke)" in html and "Ablations" in html
    assert "Against the truth" in html and "CT -&gt; DWI against the truth" in html
    assert (demo_run / "results/figures/lesion_ct2dwi.png").is_file()
    assert sorted(p.name for p in (demo_run / "results/figures").glob("ct2dwi_*.png")) == sorted(
        f"ct2dwi_{s}.png" for s in _stroke_split(demo_run, "test")["subject"])
