"""The bad-input matrix: each case stops with a message that names the file (or sheet row) and the fix,
a non-zero exit where a command is run, and nothing written.

Cases tested in their own module: truncated DICOM (test_convert: test_truncated_dicom_names_the_file_and_writes_nothing,
test_cli_reports_corrupt_file_and_exits_nonzero), a series without b0 and one missing a slice at one b (test_convert),
off-grid b-values (test_preprocess: test_unknown_bvalue_names_the_subject), NaN in a normalized volume and an empty
mask (test_preprocess), a subject listed twice at the split (test_preprocess), unknown organs and missing sheet
columns (test_config), a misspelt config key (test_config), a held-out b among the training b-values (test_config),
a corrupt checkpoint (test_training: test_a_corrupt_checkpoint_falls_back_to_the_previous_one_and_says_so).
"""

import math
import os
import re
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import nibabel as nib
import numpy as np
import pydicom
import pytest
import yaml

from dwisynth.config import check_data_root, load_config, read_sample_sheet
from dwisynth.convert import convert_series, staging_folder
from dwisynth.dicom import series_uids, write_ct_series, write_dwi_series
from dwisynth.errors import ConfigError, DicomSeriesError, DwisynthError, HeaderQCError, SampleSheetError
from dwisynth.geometry import Grid
from dwisynth.metrics import robust_max

from helpers import REPO, write_sheet

quiet = {"log": lambda *_: None}


def dwisynth(*args):
    return subprocess.run([sys.executable, "-m", "dwisynth.cli", *map(str, args)], capture_output=True, text=True)


def written(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir()) if folder.exists() else []


# --- DICOM series -------------------------------------------------------------------------------------------


def test_a_non_dicom_file_in_a_series_is_named_and_nothing_is_written(tmp_path, small_grid, small_dwi, patient, uids):
    volumes, bvals = small_dwi
    write_dwi_series(tmp_path / "dcm", volumes, bvals, small_grid, "siemens", patient, uids)
    (tmp_path / "dcm" / "notes.txt").write_text("exported by PACS on request 1234\n")
    proc = dwisynth("convert", tmp_path / "dcm", "-o", tmp_path / "out", "--subject", "B01")
    assert proc.returncode == 2
    assert "notes.txt" in proc.stderr and "not a readable DICOM image" in proc.stderr and "remove" in proc.stderr
    assert written(tmp_path / "out") == []


def test_two_series_in_one_folder_are_refused(tmp_path, small_grid, small_dwi, patient, uids):
    volumes, bvals = small_dwi
    write_dwi_series(tmp_path / "dcm", volumes, bvals, small_grid, "siemens", patient, uids)
    other = series_uids("pytest-series", 6)
    for f in write_dwi_series(tmp_path / "second", volumes, bvals, small_grid, "siemens", patient, other):
        f.rename(tmp_path / "dcm" / f"second_{f.name}")
    with pytest.raises(DicomSeriesError, match="holds 2 series.*give each series its own folder"):
        convert_series(tmp_path / "dcm", tmp_path / "out", "B02", "DWI", **quiet)
    assert written(tmp_path / "out") == []


@pytest.mark.parametrize("b", [0, 1000])
def test_a_dwi_series_with_one_b_value_is_refused(tmp_path, small_grid, small_dwi, patient, uids, b):
    volumes, _ = small_dwi
    write_dwi_series(tmp_path / "dcm", volumes[:1], [b], small_grid, "ge", patient, uids)
    with pytest.raises(HeaderQCError, match=f"every image has b={b}.*need a b0 and at least one higher b-value"):
        convert_series(tmp_path / "dcm", tmp_path / "out", "B03", "DWI", **quiet)
    assert written(tmp_path / "out") == []


def test_an_all_zero_series_is_refused_after_conversion(tmp_path, small_grid, small_dwi, patient, uids):
    volumes, bvals = small_dwi
    volumes = volumes.copy()
    volumes[2] = 0  # the b=500 volume: an aborted export
    write_dwi_series(tmp_path / "dcm", volumes, bvals, small_grid, "philips", patient, uids)
    with pytest.raises(Exception, match="volume 3 of 4 .* is zero everywhere.*re-export"):
        convert_series(tmp_path / "dcm", tmp_path / "out", "B04", "DWI", **quiet)
    assert written(tmp_path / "out") == []


def _ct(tmp_path, patient, name):
    grid = Grid.centred((16, 16, 8), (1.0, 1.0, 5.0))
    hu = np.full(grid.shape, 30)
    hu[9:11, 5:7, 5:7] = 1000  # a bright block to locate after conversion
    return write_ct_series(tmp_path / name, hu, grid, patient, series_uids(name, 3))


def test_ct_with_a_missing_slice_is_refused_not_interpolated(tmp_path, patient):
    files = _ct(tmp_path, patient, "ct")
    files[4].unlink()  # dcm2niix would fill the 10 mm gap by interpolation (its _Eq image)
    with pytest.raises(HeaderQCError, match=r"slice spacing is uneven \(5.00 to 10.00 mm.*follows slice 4 of 7.*re-export"):
        convert_series(tmp_path / "ct", tmp_path / "out", "B05", "CT", **quiet)
    assert written(tmp_path / "out") == []


def test_gantry_tilted_ct_converts_to_the_tilt_corrected_geometry(tmp_path, patient):
    """Stroke head CT is often tilted; dcm2niix writes a sheared image and a corrected one (_Tilt_1).
    The block planted at known scanner coordinates must sit there in the converted NIfTI."""
    tilt = 15.0
    shift = 5.0 * math.tan(math.radians(tilt))  # each 5 mm slice moves along y
    planted = []
    for f in _ct(tmp_path, patient, "ct"):
        ds = pydicom.dcmread(f)
        k = ds.InstanceNumber - 1
        position = np.array([float(v) for v in ds.ImagePositionPatient]) + [0, k * shift, 0]
        ds.ImagePositionPatient = position.tolist()
        ds.GantryDetectorTilt = tilt
        ds.save_as(f)
        if k in (5, 6):
            planted += [position + [i, j, 0] for i in (9, 10) for j in (5, 6)]
    expected_ras = np.mean(planted, 0) * [-1, -1, 1]  # DICOM LPS -> NIfTI RAS

    record = convert_series(tmp_path / "ct", tmp_path / "out", "B06", "CT", **quiet)
    img = nib.load(tmp_path / "out" / "sub-B06_ct.nii.gz")
    weight = np.clip(np.asarray(img.dataobj, float) - 500, 0, None)
    centre = (np.argwhere(weight > 0) * weight[weight > 0][:, None]).sum(0) / weight.sum()
    found = nib.affines.apply_affine(img.affine, centre)
    assert np.linalg.norm(found - expected_ras) < 1.0, (found, expected_ras)  # the sheared image is 7 mm off
    assert record["gantry_tilt_deg"] == tilt and written(tmp_path / "out") == [
        "sub-B06_ct.json", "sub-B06_ct.nii.gz", "sub-B06_ct_qc.json"]


def test_a_stopped_conversion_removes_its_staging_folder(tmp_path, small_grid, small_dwi, patient, uids):
    """SIGTERM (Snakemake stopping a job, scancel) while dcm2niix's raw output is staged: the script exits
    143 and the staging folder, which holds un-de-identified sidecars, is gone; nothing reached out/."""
    volumes, bvals = small_dwi
    write_dwi_series(tmp_path / "dcm", volumes, bvals, small_grid, "siemens", patient, uids)
    ready = tmp_path / "dcm2niix_done"
    script = textwrap.dedent(f"""
        import subprocess, sys, time, types
        sys.path.insert(0, {str(REPO / 'scripts')!r})
        from _logging import redirect_to_log
        import dwisynth.convert as convert
        redirect_to_log(types.SimpleNamespace(log=[]))
        real_read = convert.read_series_headers
        def slow_read(path, source=None):  # dcm2niix runs beside the header reading: wait for its output
            staging = convert.staging_folder(convert.Path({str(tmp_path / 'out')!r}), "sub-B07_dwi")
            while not list(staging.glob("*.json")):
                time.sleep(0.05)
            open({str(ready)!r}, "w").close()
            time.sleep(120)
            return real_read(path, source)
        convert.read_series_headers = slow_read
        convert.convert_series({str(tmp_path / 'dcm')!r}, {str(tmp_path / 'out')!r}, "B07", "DWI")
    """)
    proc = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    staging = staging_folder(tmp_path / "out", "sub-B07_dwi")
    for _ in range(600):
        if ready.exists() or proc.poll() is not None:
            break
        time.sleep(0.1)
    assert ready.exists() and any(staging.glob("*.json")), proc.stderr.read() if proc.poll() is not None else ""
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(timeout=30) == 128 + signal.SIGTERM
    assert not staging.exists() and not any((tmp_path / "out").glob("*.nii.gz"))


def test_a_rerun_removes_what_a_killed_conversion_left(tmp_path, small_grid, small_dwi, patient, uids):
    """SIGKILL runs no cleanup; the next conversion of the same series starts from an empty staging folder."""
    volumes, bvals = small_dwi
    write_dwi_series(tmp_path / "dcm", volumes, bvals, small_grid, "siemens", patient, uids)
    staging = staging_folder(tmp_path / "out", "sub-B08_dwi")
    staging.mkdir(parents=True, exist_ok=True)
    (staging / "sub-B08_dwi_Eq_1.nii.gz").write_bytes(b"left by a killed job")
    convert_series(tmp_path / "dcm", tmp_path / "out", "B08", "DWI", **quiet)  # would pick the stale _Eq image
    assert not staging.exists()
    assert nib.load(tmp_path / "out" / "sub-B08_dwi.nii.gz").shape[-1] == len(bvals)


# --- NIfTI volumes ------------------------------------------------------------------------------------------


@pytest.mark.parametrize("bad, message", [
    (np.nan, "volume 2 of 2 \\(b=1000\\) holds 1 NaN/Inf voxels"),
    (np.inf, "volume 2 of 2 \\(b=1000\\) holds 1 NaN/Inf voxels"),
    (0.0, "volume 2 of 2 \\(b=1000\\) is zero everywhere"),
])
def test_nan_inf_or_all_zero_volumes_are_refused_naming_the_file(tmp_path, bad, message):
    dwi = np.full((4, 4, 3, 2), 100.0, np.float32)
    dwi[..., 1] = 40.0
    if bad == 0.0:
        dwi[..., 1] = 0.0
    else:
        dwi[1, 2, 0, 1] = bad
    nib.save(nib.Nifti1Image(dwi, np.eye(4)), tmp_path / "dwi.nii.gz")
    (tmp_path / "dwi.bval").write_text("0 1000\n")
    proc = dwisynth("adc", tmp_path / "dwi.nii.gz", "--bval", tmp_path / "dwi.bval", "-o", tmp_path / "adc.nii.gz")
    assert proc.returncode == 2
    assert str(tmp_path / "dwi.nii.gz") in proc.stderr and re.search(message, proc.stderr), proc.stderr
    assert not (tmp_path / "adc.nii.gz").exists()


def test_an_empty_image_is_refused(tmp_path):
    nib.save(nib.Nifti1Image(np.zeros((4, 4, 0, 2), np.float32), np.eye(4)), tmp_path / "dwi.nii.gz")
    (tmp_path / "dwi.bval").write_text("0 1000\n")
    proc = dwisynth("adc", tmp_path / "dwi.nii.gz", "--bval", tmp_path / "dwi.bval", "-o", tmp_path / "adc.nii.gz")
    assert proc.returncode == 2 and f"{tmp_path / 'dwi.nii.gz'}: the image is empty" in proc.stderr
    assert not (tmp_path / "adc.nii.gz").exists()


def _dwi(tmp_path, n_volumes: int, bvals: str) -> tuple[Path, Path]:
    dwi = np.full((4, 4, 3, n_volumes), 100.0, np.float32)
    dwi[..., 1:] = 40.0
    nib.save(nib.Nifti1Image(dwi, np.eye(4)), tmp_path / "dwi.nii.gz")
    (tmp_path / "dwi.bval").write_text(bvals + "\n")
    return tmp_path / "dwi.nii.gz", tmp_path / "dwi.bval"


@pytest.mark.parametrize("n_volumes, bvals, message", [
    (3, "0 1000", "2 b-values for 3 volumes in .*dwi.nii.gz"),
    (2, "0 b1000", "not a .bval .*one number per volume"),
    (2, "500 1000", r"no b0 volume \(lowest b-value 500 > b0_max 10\).*add the b0 to the series or raise "
                    "bvalues.b0_max"),
], ids=["count", "not-numbers", "no-b0"])
def test_preprocessing_refuses_a_bval_that_does_not_fit_or_has_no_b0_naming_it(tmp_path, n_volumes, bvals, message):
    from dwisynth.preprocess.steps import register_dwi

    dwi, bval = _dwi(tmp_path, n_volumes, bvals)
    out = tmp_path / "out"
    with pytest.raises(DwisynthError, match=f"{re.escape(str(bval))}: {message}"):
        register_dwi(dwi, bval, out / "r_dwi.nii.gz", out / "r_dwi.bval", out / "r.json", "P01", seed=1,
                     motion=False)
    assert written(out) == []


def test_a_reference_without_signal_in_the_mask_is_an_error_not_a_scale_of_one():
    reference = np.zeros((6, 6, 2))
    reference[0, 0, 0] = 5.0  # signal only outside the mask
    mask = np.zeros((6, 6, 2), bool)
    mask[2:5, 2:5] = True
    with pytest.raises(ValueError, match="nothing to score against; check that the mask covers the organ"):
        robust_max(reference, mask)


# --- models -------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("damage", ["empty", "garbage", "truncated"])
def test_synthesize_refuses_a_damaged_model_file_naming_it_before_writing_anything(tmp_path, damage):
    import torch

    model = tmp_path / "model.pt"
    torch.save({"format": "dwisynth-model/2", "state_dict": {"w": torch.ones(64, 64)}}, model)
    whole = model.read_bytes()
    damaged = {"empty": b"", "garbage": b"<html>404 Not Found</html>", "truncated": whole[:len(whole) // 2]}
    model.write_bytes(damaged[damage])
    dwi, bval = _dwi(tmp_path, 2, "0 1000")
    proc = dwisynth("synthesize", model, dwi, "--bval", bval, "--config", REPO / "config" / "config.yaml",
                    "-o", tmp_path / "out")
    assert proc.returncode == 2 and f"{model}: not a readable model file" in proc.stderr, proc.stderr
    assert "Traceback" not in proc.stderr and written(tmp_path / "out") == []


# --- sheet and config ---------------------------------------------------------------------------------------


def _spreadsheet(path: Path) -> Path:
    """The bytes of an .xlsx (a zip of XML parts), as a reader saves ratings from a spreadsheet program."""
    import zipfile

    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as xlsx:
        xlsx.writestr("[Content_Types].xml", '<?xml version="1.0"?><Types xmlns="http://schemas.openxmlformats.org/'
                                             'package/2006/content-types"/>')
        xlsx.writestr("xl/worksheets/sheet1.xml", "<worksheet><sheetData>" + "".join(
            f'<row r="{r}"><c t="inlineStr"><is><t>reader1</t></is></c><c><v>{r % 5 + 1}</v></c></row>'
            for r in range(1, 40)) + "</sheetData></worksheet>")
    return path


@pytest.mark.parametrize("kind", ["empty", "xlsx"])
@pytest.mark.parametrize("table", ["ratings", "lesion masks"])
def test_a_ratings_or_lesion_table_that_is_empty_or_a_spreadsheet_is_refused_naming_the_file_and_format(
        tmp_path, table, kind):
    import pandas as pd

    from dwisynth.ct2dwi import read_lesion_table
    from dwisynth.reader_study import RatingsError, read_ratings

    path = tmp_path / "table.tsv"
    path.write_bytes(b"") if kind == "empty" else _spreadsheet(path)
    expected = "tab-separated text file with the columns"
    if table == "ratings":
        error, message = RatingsError, f"{re.escape(str(path))}: cannot read the ratings .*{expected} reader, image, score"
        read = lambda: read_ratings(path, pd.DataFrame({"image": ["case-001.png"]}))  # noqa: E731
    else:
        error, message = ConfigError, f"ct2dwi.lesion_masks: {re.escape(str(path))} cannot be read .*{expected} cohort"
        read = lambda: read_lesion_table(path)  # noqa: E731
    with pytest.raises(error, match=message):
        read()


def test_a_sheet_repeating_cohort_subject_and_modality_names_both_rows(tmp_path):
    path = write_sheet(tmp_path)
    lines = path.read_text().splitlines()
    path.write_text("\n".join(lines + [lines[1].replace("brain", "pelvis")]) + "\n")
    with pytest.raises(SampleSheetError, match=f"{path}: rows 2, 3 repeat the same cohort, subject and modality"):
        read_sample_sheet(path)


def test_a_ct_row_whose_subject_has_no_dwi_row_is_refused_naming_the_row(tmp_path):
    """SA1 vs SA01: the CT would be registered to a DWI series that is not in the sheet."""
    path = write_sheet(tmp_path)
    lines = path.read_text().splitlines()
    ct = lines[1].replace("S0001", "S001").replace("DWI", "CT")
    path.write_text("\n".join(lines + [ct]) + "\n")
    with pytest.raises(SampleSheetError, match=f"{path}: row 3 is a CT series with no DWI row of the same "
                                               "cohort and subject"):
        read_sample_sheet(path)
    path.write_text("\n".join(lines + [ct.replace("S001", "S0001")]) + "\n")
    assert list(read_sample_sheet(path)["modality"]) == ["DWI", "CT"]


def test_a_sheet_path_leading_outside_the_data_root_is_refused_without_showing_it(tmp_path):
    root = tmp_path / "study"
    (root / "S0001").mkdir(parents=True)
    (tmp_path / "Doe_John").mkdir()
    os.symlink(tmp_path / "Doe_John", root / "link")
    sheet = read_sample_sheet(write_sheet(tmp_path))
    sheet.loc[0, "dicom_dir"] = str(root / "S0001")
    check_data_root(sheet, root, "samples.tsv")  # inside: accepted
    for escaping in (str(root / ".." / "Doe_John"), str(root / "link")):
        sheet.loc[0, "dicom_dir"] = escaping
        with pytest.raises(SampleSheetError, match=r"samples.tsv: dicom_dir of row 2 \(c1/S0001 DWI\) leads outside "
                                                   r"the data root \(data_root in the config\).*set data_root") as err:
            check_data_root(sheet, root, "samples.tsv")
        assert "Doe" not in str(err.value)


@pytest.mark.parametrize("block, message", [
    ({"split": {"test_fraction": "a fifth"}}, r"split.test_fraction.*'a fifth' is not of type 'number'"),
    ({"masking": {"brain_threads": 1.5}}, r"masking.brain_threads.*1.5 is not of type 'integer'"),
    ({"masking": {"hdbet_precision": "float16"}}, r"masking.hdbet_precision.*'float16' is not one of"),
    ({"bvalues": {"inputs": [0, 0, 100]}}, r"bvalues.inputs.*has non-unique elements"),
    ({"bvalues": {"inputs": [0, 100], "targets": [100, 1000]}}, r"bvalues \[100\] are both inputs and targets"),
    ({"cohorts": "multicenter"}, r"cohorts.*'multicenter' is not of type 'array'"),
])
def test_config_with_a_wrong_type_or_a_repeated_b_value_names_the_key(tmp_path, block, message):
    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump(block))
    with pytest.raises(ConfigError, match=f"{path}: {message}"):
        load_config(path)
