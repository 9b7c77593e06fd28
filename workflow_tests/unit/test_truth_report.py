"""The report's "Against the truth" section: its tables from small hand-made truth tables (the numbers and their
rounding), the lesion panels, and a run without truth (real data) that says so."""

import numpy as np
import pandas as pd

from dwisynth.report import (MISSING, lesion_crop, read_truth_tables, truth_section, _embed, _lesion_panel)

IDS = {"task": "multib", "cohort": "demo", "center": "hospitalA", "seen": "trained"}


def truth_tables():
    metrics = pd.DataFrame([
        {**IDS, "method": m, "organ": "brain", "subject": s, "b_value": b, "psnr": p, "ssim": q, "mae": 0.05,
         "spectral_peak": 12.0}
        for m, p, q in (("acquired", 21.04, 0.7312), ("dc2anet", 30.26, 0.9123))
        for s in ("B1", "B2") for b in (100.0, 1000.0)])
    metrics.loc[(metrics["method"] == "dc2anet") & (metrics["subject"] == "B2"), "psnr"] = 30.36  # mean 30.31
    adc = pd.DataFrame([{**IDS, "method": "dc2anet", "organ": "brain", "subject": "B1", "lesion_label": 5,
                         "lesion_name": "brain_tumour", "voxels": 58, "adc_synthetic": 0.8412, "adc_acquired": 0.7901,
                         "adc_truth": 0.8, "difference": 0.0511, "relative_difference": 0.0647,
                         "relative_difference_vs_truth": 0.0515, "adc_input_sd": 0.0632}])
    contrast = pd.DataFrame([
        {**IDS, "method": m, "organ": "brain", "subject": "B1", "lesion_label": 5, "lesion_name": "brain_tumour",
         "host_label": 3, "host_name": "wm", "voxels": 58, "b_value": 1000.0, "contrast": c, "contrast_truth": 0.5,
         "contrast_acquired": 0.48, "relative_error_vs_truth": c / 0.5 - 1, "conspicuity": c / 0.5}
        for m, c in (("truth", 0.5), ("acquired", 0.48), ("dc2anet", 0.1234))])
    monotonicity = pd.DataFrame([{**IDS, "method": "dc2anet", "organ": "brain", "subject": "B1", "b_step": 50,
                                  "b_max": 1000, "tissue_voxels": 1000, "violating_fraction": 0.0234,
                                  "worst_interval": "400-600", "worst_interval_share": 0.61}])
    ct = {"task": "ct2dwi", "cohort": "stroke", "center": "strokeA", "organ": "brain", "subject": "S1",
          "b_value": 1000.0, "seen": "trained"}
    ct_metrics = pd.DataFrame([{**ct, "method": m, "psnr": p, "ssim": 0.5, "mae": 0.09, "spectral_peak": 900.0}
                               for m, p in (("acquired", 21.77), ("jmmdagan", 16.1))])
    ct_contrast = pd.DataFrame([{**ct, "method": m, "lesion_label": 6, "lesion_name": "acute_infarct", "host_label": 3,
                                 "host_name": "wm", "voxels": 36, "contrast": c, "contrast_truth": 0.2,
                                 "contrast_acquired": 0.19, "relative_error_vs_truth": c / 0.2 - 1,
                                 "conspicuity": c / 0.2}
                                for m, c in (("truth", 0.2), ("acquired", 0.19), ("jmmdagan", 0.0877))])
    return {"truth_metrics": metrics, "lesion_adc": adc, "lesion_contrast": contrast, "monotonicity": monotonicity,
            "ct2dwi_truth_metrics": ct_metrics, "ct2dwi_lesion_contrast": ct_contrast}


def test_the_truth_section_shows_each_table_with_its_rounding():
    html = truth_section(truth_tables())
    assert "demo cohort is simulated" in html and "exist only for the simulated" in html
    # PSNR / SSIM per b >= 400 only, the acquisition first: mean over the two subjects
    assert "21.0 / 0.731" in html and "30.3 / 0.912" in html and "b = 1000" in html and "b = 100<" not in html
    assert html.index("acquired") < html.index("DC²Anet")
    assert "0.841 (+5%)" in html and "0.790" in html and "0.800" in html  # ADC: method (vs truth), acquired, truth
    assert "inputs' SD" in html and ">8%<" in html  # 0.0632 / 0.7901: what the b 0 / 100 inputs fix
    assert "0.12 (0.25)" in html and "0.50 (1.00)" in html and "brain_tumour, b = 1000" in html  # C (C / C_truth)
    assert "2.3" in html and "400-600" in html  # violating voxels (%), the worst interval
    assert "-0.00" not in truth_section({"lesion_contrast": truth_tables()["lesion_contrast"].assign(contrast=-1e-4)})
    assert "21.8" in html and "0.09 (0.44)" not in html and "0.44" in html  # CT -> DWI: PSNR, conspicuity


def test_a_run_without_truth_tables_gets_a_section_that_says_so(tmp_path):
    (tmp_path / "empty.tsv").write_text("")
    (tmp_path / "header.tsv").write_text("task\tmethod\n")
    tables = read_truth_tables({"truth_metrics": str(tmp_path / "empty.tsv"),
                                "lesion_adc": str(tmp_path / "header.tsv"), "monotonicity": str(tmp_path / "none.tsv")})
    assert tables["truth_metrics"] is None and tables["monotonicity"] is None and tables["lesion_adc"].empty
    html = truth_section(tables)
    assert "demo cohort is simulated" in html and "No truth-referenced scores in this run" in html
    assert "<table" not in html
    assert "No truth-referenced scores" in truth_section(read_truth_tables(None))


def test_only_the_ct2dwi_truth_tables_show_only_their_part():
    tables = {k: (v if k.startswith("ct2dwi") else None) for k, v in truth_tables().items()}
    html = truth_section(tables)
    assert "CT -&gt; DWI against the truth" in html
    assert "Lesion ADC" not in html and MISSING in html  # the truth row has no PSNR against itself


def test_a_lesion_panel_crops_24_pixels_around_the_lesion_on_its_largest_slice(tmp_path):
    shape = (40, 30, 5)
    lesion = np.zeros(shape, bool)
    lesion[30:34, 20:23, 2] = True  # largest on slice 2
    lesion[31, 21, 3] = True
    z, (sx, sy) = lesion_crop(lesion)
    assert z == 2 and (sx.stop - sx.start, sy.stop - sy.start) == (24, 24)
    assert sx == slice(16, 40) and sy == slice(6, 30)  # centred on (31.5, 21), shifted inside the 40 x 30 image
    truth = np.where(lesion, 2.0, 1.0)
    images = {"acquired": truth + 0.1, "truth": truth, "dc2anet": np.where(lesion, 1.0, 1.0)}
    fig = _lesion_panel(images, lesion, lesion, "brain: sub-B1, b = 1000")
    assert len(fig.axes) == 3 and fig.axes[1].get_title() == "truth"
    assert fig.axes[0].images[0].get_array().shape == (96, 96)  # x4 nearest upsampling
    assert fig.axes[0].images[0].get_clim() == (0, 2.0)  # the truth's 99.5th percentile in the crop
    assert "<img" in _embed(fig, "lesion_brain", tmp_path) and (tmp_path / "lesion_brain.png").is_file()
