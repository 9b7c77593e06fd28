"""Scoring against the truth and per lesion: lesion ADC and contrast, truth-referenced metrics, spectral peak,
monotonicity in b, and the sample sheet's lesion_mask."""

import nibabel as nib
import numpy as np
import pandas as pd
import pytest

from dwisynth.evaluate import (
    lesion_adc_rows,
    lesion_contrast_rows,
    monotonicity_grid,
    monotonicity_scores,
    subject_lesions,
    summarize,
    truth_metric_rows,
)
from dwisynth.metrics import spectral_peak

SHAPE = (24, 20, 4)
NAMES = {5: "brain_tumour", 1: "cortical_gm", 3: "wm", 4: "csf"}


def _phantom():
    """A brain-like phantom: grey matter (label 1) with a white-matter (3) block, a tumour (5) inside the grey
    matter; b 0 and 1000 images whose tumour is 1.5 times as bright as grey matter at b 1000."""
    dseg = np.zeros(SHAPE, np.int16)
    dseg[2:22, 2:18] = 1
    dseg[2:22, 12:18] = 3
    dseg[8:12, 6:10] = 5
    lesion = (dseg == 5).astype(np.uint8)
    b1000 = np.select([dseg == 5, dseg == 1, dseg == 3], [0.6, 0.4, 0.3], 0.0)
    image = np.stack([np.where(dseg > 0, 1.0, 0.0), b1000], -1)
    return dseg, lesion, image


def _save(array, affine, path, dtype=np.float32):
    nib.save(nib.Nifti1Image(np.asarray(array, dtype), affine), str(path))
    return str(path)


def _lesions_from_files(tmp_path, dseg, lesion, to_storage, storage_affine, names=NAMES):
    """Write the reference grid (RAS, the results' order) and the truth in a storage order, then load it."""
    ras = np.diag([2.0, 2.0, 3.0, 1.0])
    reference = _save(np.zeros(SHAPE), ras, tmp_path / "ref.nii.gz")
    stored = {"lesion": _save(to_storage(lesion), storage_affine, tmp_path / "lesion.nii.gz", np.uint8),
              "dseg": _save(to_storage(dseg), storage_affine, tmp_path / "dseg.nii.gz", np.int16)}
    pd.DataFrame({"index": list(names), "name": list(names.values())}).to_csv(tmp_path / "dseg.tsv", sep="\t",
                                                                           index=False)
    subject = {**stored, "label_names": str(tmp_path / "dseg.tsv")}
    return subject_lesions(subject, reference, np.ones(SHAPE, bool))


def test_the_truth_scored_against_itself_is_perfect_and_a_blurred_copy_scores_lower():
    from scipy import ndimage

    rng = np.random.default_rng(0)
    truth = ndimage.gaussian_filter(rng.uniform(0.2, 1.0, (32, 32, 3)), (1, 1, 0))[..., None]
    blurred = ndimage.gaussian_filter(truth, (2, 2, 0, 0))
    mask = np.zeros((32, 32, 3), bool)
    mask[4:28, 4:28] = True
    rows = truth_metric_rows({"same": (truth, [1000]), "blurred": (blurred, [1000])}, (truth, [1000]), mask,
                             [1000, 850], heldout=[850])
    same, blur = (pd.DataFrame(rows).set_index("method").loc[m] for m in ("same", "blurred"))
    assert len(rows) == 2 and same["seen"] == "trained"  # b 850: the truth has none, so nothing scored
    assert same["psnr"] == np.inf and same["ssim"] == pytest.approx(1.0) and same["mae"] == 0.0
    assert np.isnan(same["spectral_peak"])  # no residual: no spectrum to read
    assert 15 < blur["psnr"] < 60 and blur["ssim"] < 0.99 and blur["mae"] > 0


def test_a_checkerboard_residual_has_a_far_higher_spectral_peak_than_white_noise():
    rng = np.random.default_rng(1)
    mask = np.zeros((64, 64, 3), bool)
    mask[8:56, 8:56] = True
    x, y = np.meshgrid(np.arange(64), np.arange(64), indexing="ij")
    checkerboard = np.repeat((0.05 * (-1.0) ** (x + y))[..., None], 3, -1) + 0.01 * rng.standard_normal((64, 64, 3))
    noise = 0.05 * rng.standard_normal((64, 64, 3))
    checker_peak, noise_peak = spectral_peak(checkerboard, mask), spectral_peak(noise, mask)
    assert 5 < noise_peak < 40  # white noise: about ln(bins) / ln(2)
    assert checker_peak > 50 * noise_peak
    assert np.isnan(spectral_peak(noise, np.zeros_like(mask)))  # no organ: no score


def test_a_truth_stored_flipped_or_transposed_lands_on_the_same_voxels(tmp_path):
    dseg, lesion, image = _phantom()
    ras = np.diag([2.0, 2.0, 3.0, 1.0])
    lps = ras.copy()  # the DICOM's order: x and y reversed, the same anatomy
    lps[:2, :2] *= -1
    lps[:2, 3] = [2.0 * (SHAPE[0] - 1), 2.0 * (SHAPE[1] - 1)]
    transposed = np.array([[0, 2.0, 0, 0], [2.0, 0, 0, 0], [0, 0, 3.0, 0], [0, 0, 0, 1]])  # array axes x and y swapped
    images = {"acquired": (image, [0, 1000])}
    tables = []
    for to_storage, affine in [(lambda a: a, ras), (lambda a: a[::-1, ::-1], lps),
                               (lambda a: np.swapaxes(a, 0, 1), transposed)]:
        lesions = _lesions_from_files(tmp_path, dseg, lesion, to_storage, affine)
        assert list(lesions["lesions"]) == [5] and np.array_equal(lesions["lesions"][5], lesion > 0)
        assert np.array_equal(lesions["dseg"], dseg)
        tables.append(pd.DataFrame(lesion_contrast_rows(images, lesions, [1000])))
    pd.testing.assert_frame_equal(tables[0], tables[1])
    pd.testing.assert_frame_equal(tables[0], tables[2])
    row = tables[0].iloc[0]
    assert row["lesion_name"] == "brain_tumour" and row["host_name"] == "cortical_gm"
    assert row["contrast"] == pytest.approx(0.6 / 0.4 - 1)  # host: grey matter only, no tumour voxel, no wm


def test_the_host_is_the_commonest_label_of_the_ring():
    """A lesion at a tissue border, three of its ring's sides in tissue 1 and one in tissue 3: read against 1."""
    dseg, lesion, image = _phantom()
    dseg[2:22, 10:18] = 3  # white matter now starts at the lesion's right edge (y = 10)
    image[..., 1] = np.select([dseg == 5, dseg == 1, dseg == 3], [0.6, 0.4, 0.3], 0.0)
    lesions = {"lesions": {5: lesion > 0}, "dseg": dseg, "names": NAMES}
    images = {"acquired": (image, [0, 1000]), "truth": (image, [0, 1000]), "m": (image * 0.5, [0, 1000])}
    rows = pd.DataFrame(lesion_contrast_rows(images, lesions, [1000], organ=dseg > 0)).set_index("method")
    assert set(rows["host_label"]) == {1} and set(rows["host_name"]) == {"cortical_gm"}
    assert rows.loc["truth", "contrast"] == pytest.approx(0.5) and rows.loc["truth", "conspicuity"] == 1.0
    assert rows.loc["m", "conspicuity"] == pytest.approx(1.0)  # a scaled image keeps the lesion's contrast
    assert rows.loc["acquired", "relative_error_vs_truth"] == 0.0
    # without a label map the host is the whole ring: both tissues
    ring = lesion_contrast_rows(images, {"lesions": {1: lesion > 0}, "dseg": None, "names": None}, [1000],
                                organ=dseg > 0)
    assert ring[0]["host_name"] == "ring" and ring[0]["host_label"] is None
    assert 0.5 < ring[0]["contrast"] < 0.6 / 0.3 - 1


def test_lesion_adc_rows_hold_the_known_means_of_a_phantom():
    dseg, _, _ = _phantom()
    dseg[14:18, 4:6] = 12  # a second lesion label
    lesions = {"lesions": {5: dseg == 5, 12: dseg == 12}, "dseg": dseg, "names": {5: "brain_tumour"}}
    synthetic = np.where(dseg == 5, 1.5, np.where(dseg == 12, 0.8, 1.0))
    acquired = np.where(dseg == 5, 1.0, np.where(dseg == 12, 1.0, 0.9))
    truth = np.where(dseg > 0, 1.2, 0.0)
    rows = {r["lesion_label"]: r for r in lesion_adc_rows(synthetic, acquired, lesions, truth)}
    tumour, other = rows[5], rows[12]
    assert tumour["lesion_name"] == "brain_tumour" and other["lesion_name"] == "lesion_12"
    assert (tumour["voxels"], other["voxels"]) == (16 * SHAPE[2], 8 * SHAPE[2])
    assert tumour["adc_synthetic"] == pytest.approx(1.5) and tumour["adc_acquired"] == pytest.approx(1.0)
    assert tumour["difference"] == pytest.approx(0.5) and tumour["relative_difference"] == pytest.approx(0.5)
    assert tumour["relative_difference_vs_truth"] == pytest.approx(1.5 / 1.2 - 1)
    assert other["relative_difference"] == pytest.approx(-0.2)
    assert np.isnan(lesion_adc_rows(synthetic, acquired, lesions)[0]["adc_truth"])  # no truth: NaN, not 0


def test_summary_has_the_lesion_adc_agreement_per_method_and_organ():
    rng = np.random.default_rng(2)
    rows = [{"task": "multib", "method": m, "cohort": "c", "center": "h", "organ": organ, "subject": f"S{i}",
             "lesion_label": label, "adc_acquired": a, "adc_synthetic": a * (1.5 if m == "dc2anet" else 1.0)}
            for m in ("dc2anet", "cdwi") for organ in ("brain", "neck") for i in range(4) for label in (31, 32)
            for a in [rng.uniform(0.6, 1.2)]]
    metrics = pd.DataFrame(columns=["task", "method", "cohort", "center", "organ", "subject", "slice", "b_value",
                                    "seen", "mse", "mae", "psnr", "ssim", "psnr_legacy", "superpixel_r"])
    summary = summarize(metrics, pd.DataFrame(), lesion_adc=pd.DataFrame(rows))
    lesion = summary[summary["analysis"] == "lesion ADC agreement"]
    assert set(lesion["grouping"]) == {"method", "method x organ"}
    pooled = lesion[lesion["grouping"] == "method"].set_index("method")
    assert pooled.loc["dc2anet", "n"] == 16  # one pair per lesion label of a subject
    assert pooled.loc["cdwi", "mean_difference"] == 0.0 and pooled.loc["cdwi", "reference"] == "acquired"
    neck = lesion[(lesion["grouping"] == "method x organ") & (lesion["organ"] == "neck")].set_index("method")
    assert neck.loc["dc2anet", "n"] == 8 and neck.loc["dc2anet", "mean_difference"] > 0.25


def test_a_monotone_signal_scores_zero_and_a_bump_scores_its_voxels():
    grid = monotonicity_grid([0, 1000], 25)
    assert grid[0] == 0 and grid[-1] == 1000 and np.allclose(np.diff(grid), 25)
    s0 = np.ones((6, 5, 2))
    signal = s0[..., None] * np.exp(-grid * 1e-3)  # (6, 5, 2, 41), falling everywhere
    tissue = np.ones(s0.shape, bool)
    tissue[0] = False
    clean = monotonicity_scores(signal, grid, s0, tissue)
    assert clean == {"tissue_voxels": 50, "violating_fraction": 0.0, "worst_interval": "", "worst_interval_share": 0.0}
    bumped = signal.copy()
    bumped[1:3, :, 0, 20] += 0.05  # b 500 rises 5% of S0 above b 475 in 10 tissue voxels
    bumped[0, :, :, 30] += 0.05  # outside the tissue: not counted
    score = monotonicity_scores(bumped, grid, s0, tissue)
    assert score["violating_fraction"] == pytest.approx(10 / 50)
    assert score["worst_interval"] == "475-500" and score["worst_interval_share"] == 1.0
    small = signal.copy()
    small[1:3, :, 0, 20] += 0.004 + (signal[1:3, :, 0, 19] - signal[1:3, :, 0, 20])  # a 0.4% rise: allowed
    assert monotonicity_scores(small, grid, s0, tissue)["violating_fraction"] == 0.0


def test_a_sheet_lesion_mask_is_checked_for_its_row_and_its_file(tmp_path):
    from dwisynth.config import lesion_mask_file, validate_sample_sheet
    from dwisynth.errors import SampleSheetError

    sheet = pd.DataFrame([{"cohort": "c", "center": "h", "subject": "S1", "organ": "brain", "modality": "DWI",
                           "dicom_dir": "d/S1", "lesion_mask": "masks/S1_lesion.nii.gz"}])
    assert validate_sample_sheet(sheet, "samples.tsv")["lesion_mask"].iloc[0] == "masks/S1_lesion.nii.gz"
    assert validate_sample_sheet(sheet.drop(columns="lesion_mask"), "samples.tsv")["lesion_mask"].iloc[0] == ""
    ct = pd.concat([sheet.assign(lesion_mask=""), sheet.assign(modality="CT")], ignore_index=True)
    with pytest.raises(SampleSheetError, match="row 3 is a CT series with a lesion_mask"):
        validate_sample_sheet(ct, "samples.tsv")
    with pytest.raises(SampleSheetError, match=r"lesion_mask of sub-S1 \(c\), .*S1_lesion.nii.gz, is not a file"):
        lesion_mask_file(str(tmp_path / "S1_lesion.nii.gz"), "c", "S1", "samples.tsv")
    assert lesion_mask_file("", "c", "S1", "samples.tsv") is None


def test_a_study_lesion_mask_without_labels_map_gives_one_lesion_per_value(tmp_path):
    """A user's lesion mask (no tissue labels): each integer value one lesion, cut to the organ mask."""
    lesion = np.zeros(SHAPE, np.uint8)
    lesion[2:5, 2:5] = 1
    lesion[10:14, 10:12] = 3
    ras = np.diag([2.0, 2.0, 3.0, 1.0])
    reference = _save(np.zeros(SHAPE), ras, tmp_path / "ref.nii.gz")
    organ = np.ones(SHAPE, bool)
    organ[2] = False  # one row of the first lesion lies outside the organ
    lesions = subject_lesions({"lesion": _save(lesion, ras, tmp_path / "mask.nii.gz", np.uint8)}, reference, organ)
    assert lesions["dseg"] is None and lesions["names"] is None
    assert {k: int(m.sum()) for k, m in lesions["lesions"].items()} == {1: 2 * 3 * SHAPE[2], 3: 8 * SHAPE[2]}
    rows = lesion_adc_rows(np.ones(SHAPE), np.ones(SHAPE), lesions)
    assert [r["lesion_name"] for r in rows] == ["lesion", "lesion_3"]
