"""Metrics, statistics, reader-study scoring and the report, against hand-computed values."""

import numpy as np
import pandas as pd
import pytest

from dwisynth.evaluate import SUMMARY_GROUPINGS, score_synthesis, summarize
from dwisynth.metrics import legacy_psnr, slice_metrics, ssim_in_mask, superpixel_correlation, volume_metrics
from dwisynth.reader_study import RatingsError, export_reading_set, read_ratings, score_ratings
from dwisynth.statistics import icc, mean_ci, paired_agreement

# Shrout & Fleiss (1979), table 2: 6 targets rated by 4 judges.
SHROUT_FLEISS = [[9, 2, 5, 8], [6, 1, 3, 2], [8, 4, 6, 8], [7, 1, 2, 6], [10, 5, 6, 9], [6, 2, 4, 7]]


def test_mse_mae_psnr_on_a_hand_computed_pair():
    ref = np.full((12, 12), 2.0)
    pred = ref.copy()
    pred[:6] = 2.5  # half the pixels off by 0.5 before scaling by 2 -> 0.25
    mask = np.ones_like(ref, bool)
    m = slice_metrics(pred, ref, mask, scale=2.0)
    assert m["mse"] == pytest.approx(0.5 * 0.25**2)
    assert m["mae"] == pytest.approx(0.5 * 0.25)
    assert m["psnr"] == pytest.approx(10 * np.log10(1 / 0.03125))  # 15.05 dB, data range 1


def test_metrics_count_only_voxels_inside_the_mask():
    ref, pred = np.ones((12, 12)), np.ones((12, 12))
    pred[0, 0] = 100.0
    mask = np.ones((12, 12), bool)
    mask[0, 0] = False
    assert slice_metrics(pred, ref, mask, 1.0)["mse"] == 0.0


def test_legacy_psnr_is_the_seed_papers_8bit_convention():
    ref, pred = np.full((12, 12), 0.2), np.full((12, 12), 0.4)  # 8-bit: 51 and 102, MSE 2601
    expected = 20 * np.log10(255 * 255) - 10 * np.log10(51.0**2)
    assert legacy_psnr(pred, ref) == pytest.approx(expected)
    assert expected == pytest.approx(62.111, abs=1e-3)
    standard = slice_metrics(pred, ref, np.ones((12, 12), bool), 1.0)["psnr"]
    assert legacy_psnr(pred, ref) - standard == pytest.approx(48.13, abs=0.01)


def test_ssim_of_constant_images_reduces_to_the_luminance_term():
    a, b = np.full((16, 16), 0.5), np.full((16, 16), 0.25)
    c1 = (0.01 * 1.0) ** 2
    expected = (2 * 0.5 * 0.25 + c1) / (0.5**2 + 0.25**2 + c1)
    assert ssim_in_mask(b, a, np.ones((16, 16), bool)) == pytest.approx(expected, rel=1e-6)


def test_volume_metrics_do_not_depend_on_the_intensity_unit():
    rng = np.random.default_rng(0)
    ref = rng.random((16, 16, 3)) + 0.5
    pred = ref + rng.normal(0, 0.05, ref.shape)
    mask = np.ones(ref.shape, bool)
    rows, vol = volume_metrics(pred, ref, mask)
    rows_scaled, vol_scaled = volume_metrics(1000 * pred, 1000 * ref, mask)
    assert len(rows) == 3
    for key in ("mse", "psnr", "ssim", "psnr_legacy"):
        assert vol[key] == pytest.approx(vol_scaled[key])


def test_superpixel_correlation_follows_the_gray_levels():
    yy, xx = np.mgrid[:32, :32]
    ref = np.sin(xx / 5.0) + np.cos(yy / 7.0) + 2
    mask = np.ones_like(ref, bool)
    assert superpixel_correlation(2 * ref + 1, ref, mask) == pytest.approx(1.0)
    assert superpixel_correlation(-ref, ref, mask) == pytest.approx(-1.0)


def test_score_synthesis_scores_only_acquired_b_and_labels_heldout():
    ref = np.random.default_rng(1).random((12, 12, 2, 3)) + 0.5
    slices, volumes = score_synthesis(ref[..., [1, 2]], [400, 850], ref, [0, 400, 850], np.ones((12, 12, 2), bool),
                                      score_b=[400, 800, 850], heldout=[850])
    assert [(v["b_value"], v["seen"]) for v in volumes] == [(400, "trained"), (850, "heldout")]
    assert volumes[0]["psnr"] == float("inf") and len(slices) == 4


def test_mean_ci_is_the_t_interval():
    result = mean_ci([1, 2, 3, 4, 5])
    half = 2.7764451 * np.std([1, 2, 3, 4, 5], ddof=1) / np.sqrt(5)
    assert result["mean"] == 3 and result["ci_low"] == pytest.approx(3 - half) and result["n"] == 5


def test_icc_matches_shrout_and_fleiss_textbook_values():
    long = pd.DataFrame(SHROUT_FLEISS).reset_index().melt(id_vars="index", var_name="judge", value_name="score")
    expected = {"ICC1": 0.17, "ICC2": 0.29, "ICC3": 0.71, "ICC1k": 0.44, "ICC2k": 0.62, "ICC3k": 0.91}
    for kind, value in expected.items():
        assert icc(long, "index", "judge", "score", kind)["icc"] == pytest.approx(value, abs=0.006), kind
    assert icc(long, "index", "judge", "score", "ICC3k")["icc_label"] == "excellent"


def test_paired_agreement_bland_altman_limits_and_tests():
    reference = np.array([1.0, 1.2, 0.8, 1.5, 0.9, 1.1])
    candidate = reference + np.array([0.1, 0.12, 0.08, 0.11, 0.09, 0.1])
    result = paired_agreement(candidate, reference)
    diff = candidate - reference
    assert result["mean_difference"] == pytest.approx(diff.mean())
    assert result["loa_high"] == pytest.approx(diff.mean() + 1.96 * diff.std(ddof=1))
    assert result["p_ttest"] < 1e-4 and result["p_wilcoxon"] == pytest.approx(0.03125)
    assert result["icc"] > 0.8  # a constant offset of 0.1 on a spread of 0.25


def _metrics_table():
    rows = []
    for method, offset in (("dc2anet", 3.0), ("cdwi", 0.0)):
        for s, center in enumerate(["A", "A", "B", "B"]):
            for b in (400, 1000):
                rows.append({"task": "multib", "method": method, "cohort": "mc", "center": center, "organ": "brain",
                             "subject": f"S{s}", "slice": "volume", "b_value": b, "seen": "trained", "mse": 0.01,
                             "mae": 0.1, "psnr": 20 + offset + s, "ssim": 0.8, "psnr_legacy": 68.0,
                             "superpixel_r": 0.9})
    return pd.DataFrame(rows)


def test_summary_groups_as_specified_and_compares_with_the_baseline():
    adc = pd.DataFrame({"task": "multib", "method": "dc2anet", "cohort": "c", "organ": "brain", "subject": [f"S{i}" for i in range(4)],
                        "adc_synthetic": [0.81, 0.92, 0.75, 0.88], "adc_acquired": [0.8, 0.9, 0.74, 0.9]})
    summary = summarize(_metrics_table(), adc)
    image = summary[summary["analysis"] == "image metrics"]
    assert set(image["grouping"]) == set(SUMMARY_GROUPINGS)
    by_center = image[(image["grouping"] == "method x center x b") & (image["metric"] == "psnr")]
    assert set(by_center["center"]) == {"A", "B"} and (by_center["n"] == 2).all()
    versus = summary[(summary["analysis"] == "psnr vs cdwi") & (summary["method"] == "dc2anet")].iloc[0]
    # one value per subject (its mean over b): n is the number of subjects, not subjects x b-values
    assert versus["mean_difference"] == pytest.approx(3.0) and versus["n"] == 4
    agreement = summary[(summary["analysis"] == "ADC agreement") & (summary["grouping"] == "method")].iloc[0]
    assert agreement["mean_difference"] == pytest.approx(0.005) and agreement["n"] == 4
    assert agreement["tost_margin"] == 0.02 and np.isnan(agreement["icc"])  # no ICC across pooled organs
    per_organ = summary[(summary["analysis"] == "ADC agreement") & (summary["grouping"] == "method x organ")]
    assert per_organ["organ"].tolist() == ["brain"] and np.isfinite(per_organ["icc"]).all()


def test_report_tables_show_a_dash_where_a_method_has_no_value(tmp_path):
    from dwisynth.report import MISSING, agreement_table, comparison_table, ct2dwi_section

    metrics = _metrics_table()
    metrics = metrics[~((metrics["method"] == "cdwi") & (metrics["b_value"] == 1000))]  # cDWI has no b 1000
    adc = pd.DataFrame({"task": "multib", "method": "dc2anet", "cohort": "c", "organ": "brain",
                        "subject": ["S0", "S1"], "adc_synthetic": [0.81, 0.92], "adc_acquired": [0.8, 0.9]})
    summary = summarize(metrics, adc)
    psnr = comparison_table(summary, "psnr")
    assert MISSING in psnr and "NaN" not in psnr and "nan" not in psnr
    agreement = agreement_table(summary)  # two subjects: no ICC label, no Wilcoxon p
    assert MISSING in agreement and "NaN" not in agreement and "nan" not in agreement
    ct = summary.assign(task="ct2dwi")
    ct = pd.concat([ct, ct[ct["metric"] == "psnr"].assign(metric="lesion_psnr", method="cdwi")])
    grid = tmp_path / "ablation.tsv"
    pd.DataFrame({"experiment": ["nodwt", "noedge"], "method": "jmmdagan", "lesion_guidance": "yes",
                  "modules_off": ["dwt", "edge_attention"], "n": 2, "seeds": 1, "psnr": [16.1, 16.3],
                  "psnr_sd": np.nan, "psnr_vs_main": [-0.4, np.nan]}).to_csv(grid, sep="\t", index=False)
    section = ct2dwi_section(ct, [], {"ablation": str(grid)}, tmp_path / "figures")
    assert section.count(MISSING) >= 2 and "NaN" not in section and "nan" not in section


def test_each_held_out_b_is_placed_against_the_stack_and_says_what_its_comparison_shows():
    from dwisynth.diffusion import kurtosis_decay, loglinear_interpolation
    from dwisynth.evaluate import heldout_regime
    from dwisynth.report import heldout_b_table

    inputs, targets = [0, 100], [400, 600, 800, 1000]
    regimes = {b: heldout_regime(b, inputs, targets) for b in (75, 250, 850, 1500, 2000)}
    assert [regimes[b]["regime"] for b in (75, 250, 850, 1500)] == [
        "between acquired inputs", "between an acquired and a synthesized b", "between stage-1 targets",
        "extrapolation"]
    assert regimes[850]["between"] == "800-1000" and "denoising" in regimes[850]["shows"]
    assert regimes[2000]["between"] == "beyond 1000" and "noise floor" in regimes[2000]["shows"]
    # the quoted curvature is the true error of a log-linear reading of a D 1, K 1 tissue (within b_K = 1500)
    stack = np.array([800.0, 1000.0])
    error = loglinear_interpolation(kurtosis_decay(1.0, stack, 1.0), stack, [1500.0])[0] / kurtosis_decay(
        1.0, np.array([1500.0]), 1.0)[0] - 1
    assert f"{abs(error):.0%}" in regimes[1500]["shows"]  # 6%
    table = heldout_b_table({"inputs": inputs, "targets": targets, "heldout": [2000, 850, 75]})
    assert table.index("<td>75</td>") < table.index("<td>850</td>") < table.index("<td>2000</td>")
    assert heldout_b_table({"inputs": inputs, "targets": targets, "heldout": []}) == ""
    # one sentence per held-out b: MineGAN against its strongest baseline, the truth first, never floor-limited
    claim = {"claim": "MineGAN synthesizes never-trained b-values better than interpolation", "metric": "psnr",
             "baseline": "dc2anetinterp", "n_subjects": 20, "ci_low": -2.0, "ci_high": -0.1, "p": 0.04}
    claims = pd.DataFrame([
        {**claim, "reference": "acquisition", "b_value": 2000.0, "mean_difference": 3.0, "verdict": "floor-limited"},
        {**claim, "reference": "truth", "b_value": 2000.0, "mean_difference": -1.04, "verdict": "worse"},
        {**claim, "reference": "acquisition", "b_value": 850.0, "mean_difference": 0.2, "ci_low": -0.3,
         "ci_high": 0.7, "verdict": "no difference shown"}])
    table = heldout_b_table({"inputs": inputs, "targets": targets, "heldout": [850, 2000]}, claims)
    assert "interpolation by -1.04 dB (95% CI -2.00 to -0.10, n 20, against the truth: worse)" in table
    assert table.count("loses to") == 1 and "is not shown to beat" in table and "+3.00" not in table


def test_tost_finds_equivalence_within_the_margin_and_not_beyond_it():
    from dwisynth.statistics import equivalence_tost

    rng = np.random.default_rng(0)
    acquired = rng.normal(1.0, 0.3, 30)  # ADC per subject, x10^-3 mm²/s
    close = acquired + 0.005 + rng.normal(0, 0.005, 30)
    far = acquired + 0.05 + rng.normal(0, 0.005, 30)
    assert equivalence_tost(close, acquired, margin=0.02)["equivalent"]
    assert not equivalence_tost(far, acquired, margin=0.02)["equivalent"]
    assert equivalence_tost(far, acquired, margin=0.1)["equivalent"]


def _reading_set(tmp_path):
    cases = [{"cohort": "mc", "subject": f"S{i}", "organ": "brain", "method": method, "b_value": 1000.0,
              "seen": "trained", "slice": 3, "image_array": np.random.default_rng(i).random((8, 8)), "window": 1.0}
             for i in range(4) for method in ("acquired", "dc2anet")]
    key = export_reading_set(cases, tmp_path / "reading", tmp_path / "key.tsv", tmp_path / "reading/template.tsv",
                             seed=1)
    return key


def test_reading_set_is_shuffled_blinded_and_keyed_apart(tmp_path):
    key = _reading_set(tmp_path)
    pngs = sorted(p.name for p in (tmp_path / "reading").glob("*.png"))
    assert pngs == [f"case-{i:03d}.png" for i in range(1, 9)]
    assert key["method"].tolist() != ["acquired", "dc2anet"] * 4  # shuffled
    template = pd.read_csv(tmp_path / "reading/template.tsv", sep="\t")
    assert set(template.columns) == {"reader", "image", "score"} and len(template) == 16
    assert not any("acquired" in p.read_text(errors="ignore") for p in (tmp_path / "reading").glob("*.tsv"))
    with pytest.raises(RatingsError, match="outside"):
        export_reading_set([], tmp_path / "reading", tmp_path / "reading/key.tsv", tmp_path / "t.tsv", seed=1)


def test_reader_scores_percent_excellent_and_inter_reader_icc(tmp_path):
    key = _reading_set(tmp_path)
    quality = {"acquired": [5, 5, 4, 5], "dc2anet": [5, 3, 4, 2]}
    rows = []
    for r, shift in (("r1", 0), ("r2", 0)):
        for row in key.itertuples():
            rows.append({"reader": r, "image": row.image, "score": quality[row.method][int(row.subject[1])] - shift})
    path = tmp_path / "ratings.tsv"
    pd.DataFrame(rows).to_csv(path, sep="\t", index=False)
    scores = score_ratings(read_ratings(path, key), key).set_index("method")
    assert scores.loc["acquired", "percent_excellent"] == 75.0 and scores.loc["dc2anet", "percent_excellent"] == 25.0
    assert scores.loc["dc2anet", "icc2"] == pytest.approx(1.0)  # the two readers agree exactly
    bad = pd.DataFrame(rows)
    bad.loc[0, "score"] = 7
    bad.to_csv(path, sep="\t", index=False)
    with pytest.raises(RatingsError, match="1-5"):
        read_ratings(path, key)


def test_scoring_subjects_in_two_processes_gives_the_same_tables(tmp_path):
    from dwisynth.evaluate import evaluate_multib
    from dwisynth.io import save_nifti, write_bval

    rng = np.random.default_rng(5)
    bvals, shape = [0, 100, 400, 1000], (16, 14, 3)
    subjects = []
    for n in range(3):
        stem = tmp_path / f"s{n}"
        acquired = rng.uniform(0.2, 1.0, (*shape, 4)) * np.exp(-np.array(bvals) * 1e-3)
        mask = np.zeros(shape, np.uint8)
        mask[2:14, 2:12] = 1
        save_nifti(acquired, np.eye(4), f"{stem}_dwi.nii.gz")
        write_bval(bvals, f"{stem}_dwi.bval")
        save_nifti(mask, np.eye(4), f"{stem}_mask.nii.gz", np.uint8)
        save_nifti(rng.uniform(0.5, 2, shape), np.eye(4), f"{stem}_adc.nii.gz")
        save_nifti(acquired * rng.uniform(0.9, 1.1, acquired.shape), np.eye(4), f"{stem}_synth.nii.gz")
        save_nifti(rng.uniform(0.5, 2, shape), np.eye(4), f"{stem}_synthadc.nii.gz")
        subjects.append({"cohort": "c", "center": "h", "organ": "brain", "subject": f"S{n}",
                         "acquired": (f"{stem}_dwi.nii.gz", f"{stem}_dwi.bval"), "mask": f"{stem}_mask.nii.gz",
                         "adc": f"{stem}_adc.nii.gz",
                         "synth": {"m": (f"{stem}_synth.nii.gz", f"{stem}_dwi.bval", f"{stem}_synthadc.nii.gz")}})
    said = []
    one = evaluate_multib(subjects, ["m"], [400, 1000], [], progress=lambda _: None)
    two = evaluate_multib(subjects, ["m"], [400, 1000], [], progress=said.append, workers=2)
    pd.testing.assert_frame_equal(one[0], two[0])
    pd.testing.assert_frame_equal(one[1], two[1])
    assert len(one[0]) > 3 and said == [f"[evaluate] {i}/3 sub-S{i - 1} scored" for i in (1, 2, 3)]


def test_adc_agreement_counts_tissue_not_the_noise_of_fat_suppressed_fat(tmp_path):
    """A body outline whose half is fat-suppressed fat (b0 SNR 3): the ADC of noise there is noise, so the
    noise-free image disagrees with the acquisition over the whole mask but not over the tissue ROI."""
    from dwisynth.diffusion import fit_adc, tissue_mask
    from dwisynth.errors import DwisynthError
    from dwisynth.evaluate import evaluate_multib
    from dwisynth.io import save_nifti, write_bval

    rng = np.random.default_rng(3)
    bvals, shape, sigma = np.array([0.0, 100, 400, 1000]), (40, 40, 4), 0.02
    s0, adc = np.zeros(shape), np.zeros(shape)
    s0[8:32, 8:20], adc[8:32, 8:20] = 1.0, 1.2    # tissue: b0 SNR 50
    s0[8:32, 20:32], adc[8:32, 20:32] = 0.06, 0.2  # fat-suppressed fat: b0 SNR 3
    mask = s0 > 0
    clean = s0[..., None] * np.exp(-bvals * 1e-3 * adc[..., None])
    noisy = np.abs(clean + sigma * (rng.standard_normal(clean.shape) + 1j * rng.standard_normal(clean.shape)))

    roi, measured_sigma = tissue_mask(noisy[..., 0], mask, 10)
    assert measured_sigma == pytest.approx(sigma, rel=0.1)
    assert roi[8:32, 8:20].mean() == 1.0 and roi[8:32, 20:32].mean() < 0.01
    assert tissue_mask(noisy[..., 0], mask, 0)[0].sum() == mask.sum()
    assert tissue_mask(np.where(mask, noisy[..., 0], 0.0), mask, 10)[0].sum() == mask.sum()  # no background: all

    paths = {}
    for name, image in {"acq": noisy, "synth": clean}.items():
        save_nifti(image, np.eye(4), tmp_path / f"{name}_dwi.nii.gz")
        save_nifti(fit_adc(image, bvals, mask=mask), np.eye(4), tmp_path / f"{name}_adc.nii.gz")
        paths[name] = str(tmp_path / f"{name}_dwi.nii.gz"), str(tmp_path / f"{name}_adc.nii.gz")
    write_bval(bvals, tmp_path / "dwi.bval")
    save_nifti(mask.astype(np.uint8), np.eye(4), tmp_path / "mask.nii.gz", np.uint8)
    subject = {"cohort": "c", "center": "h", "organ": "abdomen", "subject": "S1",
               "acquired": (paths["acq"][0], str(tmp_path / "dwi.bval")), "mask": str(tmp_path / "mask.nii.gz"),
               "adc": paths["acq"][1], "synth": {"noisefree": (paths["synth"][0], str(tmp_path / "dwi.bval"),
                                                               paths["synth"][1])}}
    row = evaluate_multib([subject], ["noisefree"], [400, 1000], [], progress=lambda _: None,
                          adc_min_snr=10)[1].iloc[0]
    assert row["roi"] == "abdomen_b0snr10" and row["voxels"] == 24 * 12 * 4
    assert abs(row["difference"]) < 0.01 < 0.05 < abs(row["difference_whole_mask"])
    assert row["adc_acquired"] == pytest.approx(1.2, abs=0.01)

    only_fat = mask.copy()
    only_fat[8:32, 8:20] = False
    save_nifti(only_fat.astype(np.uint8), np.eye(4), tmp_path / "mask.nii.gz", np.uint8)
    with pytest.raises(DwisynthError, match=r"sub-S1 .*acq_dwi.nii.gz.*no voxel.*adc.roi_min_snr"):
        evaluate_multib([subject], ["noisefree"], [400, 1000], [], progress=lambda _: None, adc_min_snr=10)


def test_lesion_input_adc_sd_is_the_spread_of_the_lesion_adc_the_inputs_give_over_noise_draws():
    """The SD the inputs leave on a lesion's ADC (sigma propagated over its n voxels) matches the spread of the
    lesion's b 0 - 100 slope over repeated Rician noise draws, and shrinks as 1 / sqrt(n)."""
    from dwisynth.evaluate import lesion_input_adc_sd

    rng = np.random.default_rng(4)
    shape, sigma, adc = (40, 40, 3), 0.04, 1.0  # x10^-3 mm²/s; S0 1 (SNR 25)
    mask = np.zeros(shape, bool)
    mask[10:30, 10:30] = True
    small, large = np.zeros(shape, bool), np.zeros(shape, bool)
    small[14:16, 14:16, 1] = True  # 4 voxels
    large[20:28, 20:28, :] = True  # 192 voxels
    lesions = {"lesions": {1: small, 2: large}}
    clean = np.stack([np.where(mask, 1.0, 0.0), np.where(mask, np.exp(-0.1 * adc), 0.0)], -1)
    slopes, predicted = {1: [], 2: []}, []
    for _ in range(300):
        noisy = np.abs(clean + rng.normal(0, sigma, clean.shape) + 1j * rng.normal(0, sigma, clean.shape))
        predicted.append(lesion_input_adc_sd(noisy, [0, 100], [0, 100], lesions, mask))
        for label, region in lesions["lesions"].items():
            slopes[label].append(np.log(noisy[..., 0][region].mean() / noisy[..., 1][region].mean()) / 0.1)
    for label in (1, 2):
        assert np.mean([p[label] for p in predicted]) == pytest.approx(np.std(slopes[label]), rel=0.15)
        assert np.mean(slopes[label]) == pytest.approx(adc, abs=3 * np.std(slopes[label]))
    assert predicted[0][1] / predicted[0][2] == pytest.approx(np.sqrt(192 / 4), rel=0.05)
    assert lesion_input_adc_sd(clean, [0, 100], [0], lesions, mask) == {}  # one input b: no slope
