"""claims.tsv: each claim against its strongest baseline, one value per test subject, Holm-corrected."""

import numpy as np
import pandas as pd
import pytest

from dwisynth.claims import CLAIMS, MIN_SUBJECTS, claims_table


def volume_rows(method, subject, b, psnr, ssim=0.8, seen="trained", task="multib", **extra):
    return {"task": task, "method": method, "cohort": "c", "center": "A", "organ": "brain", "subject": subject,
            "slice": "volume", "b_value": float(b), "seen": seen, "psnr": psnr, "ssim": ssim, **extra}


def cohort_metrics(seed=0):
    """8 test subjects acquire b 1000, only 4 of them b 400; DC²Anet is 2 dB above pix2pix (SD 0.5) at both;
    at held-out b 850 (6 subjects) MineGAN is level with the interpolation and 3 dB above cDWI."""
    rng = np.random.default_rng(seed)
    rows = []
    for i in range(8):
        subject = f"S{i}"
        for b in ([400, 1000] if i < 4 else [1000]):
            base = 20 + rng.normal()
            rows += [volume_rows("pix2pix", subject, b, base), volume_rows("dc2anet", subject, b, base + 2 + 0.5 * rng.normal())]
        if i < 6:
            interp = 25 + rng.normal()
            rows += [volume_rows("dc2anetinterp", subject, 850, interp, seen="heldout", ssim=0.7),
                     volume_rows("cdwi", subject, 850, interp - 3, seen="heldout", ssim=0.9),
                     volume_rows("minegan", subject, 850, interp + 0.01 * rng.normal(), seen="heldout", ssim=0.7)]
    return pd.DataFrame(rows)


def test_each_claims_n_is_the_number_of_test_subjects_with_its_b_and_few_subjects_are_never_a_win():
    metrics = cohort_metrics()
    table = claims_table(metrics)
    stage1 = table[(table["method"] == "dc2anet") & (table["metric"] == "psnr")].set_index("b_value")
    has_b = metrics[metrics["method"] == "dc2anet"].groupby("b_value")["subject"].nunique()
    assert stage1["n_subjects"].to_dict() == has_b.to_dict() == {400.0: 4, 1000.0: 8}
    assert stage1.loc[1000.0, "mean_difference"] == pytest.approx(2.0, abs=0.5)
    assert stage1.loc[1000.0, "ci_low"] > 0 and stage1.loc[1000.0, "verdict"] == "better"
    # b 400: the same 2 dB, p small, but 4 subjects
    assert stage1.loc[400.0, "p"] < 0.05 and stage1.loc[400.0, "underpowered"]
    assert stage1.loc[400.0, "verdict"] == "underpowered" and 4 < MIN_SUBJECTS


def test_a_claim_is_tested_against_its_strongest_baseline_per_metric_and_holm_never_lowers_p():
    table = claims_table(cohort_metrics())
    stage2 = table[table["method"] == "minegan"].set_index("metric")
    assert stage2.loc["psnr", "baseline"] == "dc2anetinterp"  # 3 dB above cDWI: the one to beat in PSNR
    assert stage2.loc["ssim", "baseline"] == "cdwi"  # cDWI's SSIM is the higher here
    assert stage2.loc["psnr", "baselines_considered"] == "dc2anetinterp,cdwi"
    assert stage2.loc["psnr", "verdict"] == "no difference shown" and stage2.loc["psnr", "n_subjects"] == 6
    tested = table.dropna(subset=["p"])
    assert (tested["p_holm"] >= tested["p"] - 1e-12).all() and (tested["p_holm"] <= 1).all()
    smallest = tested["p"].idxmin()  # Holm multiplies the smallest p by the number of tests
    assert tested.loc[smallest, "p_holm"] == pytest.approx(min(1.0, tested.loc[smallest, "p"] * len(tested)))


def test_acquisition_referenced_rows_beyond_every_trained_b_are_floor_limited_and_truth_rows_still_judge():
    from dwisynth.claims import floor_limited_bvalues

    rows, truth = [], []
    for i in range(8):  # at b 2000 MineGAN predicts the noise floor: 3 dB "better" against the noisy acquisition
        floor = 20 + 0.3 * i
        rows += [volume_rows("dc2anetinterp", f"S{i}", 2000, floor, seen="heldout"),
                 volume_rows("minegan", f"S{i}", 2000, floor + 3 + 0.1 * (i % 3), seen="heldout")]
        truth += [volume_rows("dc2anetinterp", f"S{i}", 2000, 25 + 0.3 * i, seen="heldout"),
                  volume_rows("minegan", f"S{i}", 2000, 23 + 0.3 * i + 0.1 * (i % 3), seen="heldout")]
    bvalues = {"inputs": [0, 100], "targets": [400, 600, 800, 1000], "heldout": [75, 850, 1500, 2000]}
    assert floor_limited_bvalues(bvalues) == [1500.0, 2000.0]
    table = claims_table(pd.DataFrame(rows), pd.DataFrame(truth).drop(columns="slice"),
                         floor_limited_b=floor_limited_bvalues(bvalues))
    psnr = table[table["metric"] == "psnr"].set_index("reference")
    assert psnr.loc["acquisition", "p_holm"] < 0.05 and psnr.loc["acquisition", "verdict"] == "floor-limited"
    assert psnr.loc["truth", "verdict"] == "worse"


def test_an_error_metric_is_better_when_lower_and_truth_rows_are_corrected_apart():
    rows, truth = [], []
    rng = np.random.default_rng(3)
    for i in range(7):
        for method, error in (("jmmdagan", 0.2), ("pix2pix", 0.9), ("unet", 0.8)):
            rows.append(volume_rows(method, f"T{i}", 1000, 16 + rng.normal(0, 0.1), task="ct2dwi",
                                    lesion_psnr=12.0, lesion_conspicuity_vs_acquired=1 - error + 0.05 * rng.normal()))
            truth.append({"task": "ct2dwi", "method": method, "cohort": "c", "subject": f"T{i}", "b_value": 1000.0,
                          "seen": "trained", "psnr": 20.0 + rng.normal(), "ssim": 0.5})
    table = claims_table(pd.DataFrame(rows), ct2dwi_truth=pd.DataFrame(truth))
    error = table[(table["metric"] == "infarct_contrast_error") & (table["reference"] == "acquisition")].iloc[0]
    assert error["baseline"] == "unet"  # the lower error of the two baselines
    assert error["mean_difference"] == pytest.approx(-0.6, abs=0.1) and error["verdict"] == "better"
    assert set(table["reference"]) == {"acquisition", "truth"}
    for reference, rows_ in table.groupby("reference"):
        alone = claims_table(pd.DataFrame(rows) if reference == "acquisition" else None,
                             ct2dwi_truth=pd.DataFrame(truth) if reference == "truth" else None)
        np.testing.assert_allclose(rows_["p_holm"].to_numpy(float), alone["p_holm"].to_numpy(float))


def test_claims_without_their_method_have_no_rows_and_the_report_says_what_the_cohort_is():
    from dwisynth.report import claims_section

    metrics = cohort_metrics()
    table = claims_table(metrics[metrics["method"] != "dc2anet"])
    assert "dc2anet" not in set(table["method"]) and {c.method for c in CLAIMS} >= set(table["method"])
    html = claims_section(claims_table(metrics), simulated=True)
    assert "Cohort: simulated" in html and "underpowered" in html and "DC²Anet" not in html.split("<table")[0]
    assert "Cohort: acquired" in claims_section(None, simulated=False)
