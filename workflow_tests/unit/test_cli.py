"""The dwisynth command line, one subject at a time."""

import resource
import subprocess
import sys

import nibabel as nib
import numpy as np
import pandas as pd

from dwisynth.demo.cohort import generate_demo_cohort
from dwisynth.dicom import series_uids, write_dwi_series
from dwisynth.diffusion import ivim_signal


def dwisynth(*args, file_size_limit=None):
    """The CLI in a subprocess; file_size_limit (bytes): a write past it fails (EFBIG), as on a full disk."""
    limit = None if file_size_limit is None else (
        lambda: resource.setrlimit(resource.RLIMIT_FSIZE, (file_size_limit, file_size_limit)))
    return subprocess.run([sys.executable, "-m", "dwisynth.cli", *map(str, args)], capture_output=True, text=True,
                          preexec_fn=limit)  # Python ignores SIGXFSZ: the write raises instead of killing it


def test_adc_command_recovers_phantom_adc(tmp_path):
    truth = np.linspace(0.5, 2.5, 6 * 5 * 4).reshape(6, 5, 4)
    bvals = [0, 500, 1000]
    nib.save(nib.Nifti1Image(ivim_signal(1000.0, truth, bvals).astype(np.float32), np.eye(4)), tmp_path / "dwi.nii.gz")
    (tmp_path / "dwi.bval").write_text("0 500 1000\n")
    proc = dwisynth("adc", tmp_path / "dwi.nii.gz", "--bval", tmp_path / "dwi.bval", "-o", tmp_path / "adc.nii.gz")
    assert proc.returncode == 0, proc.stderr
    assert np.allclose(nib.load(tmp_path / "adc.nii.gz").get_fdata(), truth, atol=1e-4)


def test_adc_command_with_one_b_value_fails_clearly(tmp_path):
    nib.save(nib.Nifti1Image(np.ones((2, 2, 2, 2), np.float32), np.eye(4)), tmp_path / "dwi.nii.gz")
    (tmp_path / "dwi.bval").write_text("0 0\n")
    proc = dwisynth("adc", tmp_path / "dwi.nii.gz", "--bval", tmp_path / "dwi.bval", "-o", tmp_path / "adc.nii.gz")
    assert proc.returncode == 2 and "two distinct b-values" in proc.stderr
    assert not (tmp_path / "adc.nii.gz").exists()


def test_adc_command_failing_mid_write_leaves_no_file(tmp_path):
    truth = np.random.default_rng(5).uniform(0.5, 2.5, (32, 32, 16))  # an ADC map that compresses little
    dwi = ivim_signal(1000.0, truth, [0, 1000]).astype(np.float32)
    nib.save(nib.Nifti1Image(dwi, np.eye(4)), tmp_path / "dwi.nii.gz")
    (tmp_path / "dwi.bval").write_text("0 1000\n")
    proc = dwisynth("adc", tmp_path / "dwi.nii.gz", "--bval", tmp_path / "dwi.bval", "-o", tmp_path / "adc.nii.gz",
                    file_size_limit=4096)
    assert proc.returncode != 0 and "File too large" in proc.stderr, proc.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == ["dwi.bval", "dwi.nii.gz"]


def test_scan_failing_mid_write_leaves_no_sheet(tmp_path, small_grid, small_dwi, patient):
    volumes, bvals = small_dwi
    for series in range(4):
        write_dwi_series(tmp_path / "dicom" / f"series{series}", volumes, bvals, small_grid, "siemens", patient,
                         series_uids("scan", series))
    proc = dwisynth("scan", tmp_path / "dicom", "-o", tmp_path / "sheet" / "samples.tsv", file_size_limit=200)
    assert proc.returncode != 0 and "File too large" in proc.stderr, proc.stderr
    assert list((tmp_path / "sheet").iterdir()) == []


def test_scan_drafts_one_row_per_series_with_pseudonyms(tiny_config, tmp_path):
    tiny_config["organs"] = ["abdomen"]
    centers = tiny_config["demo"]["centers"]
    tiny_config["demo"]["centers"] = [c for c in centers if "abdomen" in c["organs"]]
    for center in tiny_config["demo"]["centers"]:
        center["organs"] = ["abdomen"]
    tiny_config["demo"]["stroke"]["subjects_per_center"] = 0
    sheet = generate_demo_cohort(tiny_config, progress=lambda *_: None)
    proc = dwisynth("scan", tiny_config["demo"]["outdir"], "--cohort", "study", "-o", tmp_path / "samples.tsv")
    assert proc.returncode == 0, proc.stderr
    drafted = pd.read_csv(tmp_path / "samples.tsv", sep="\t", keep_default_na=False)
    assert len(drafted) == len(sheet)
    assert set(drafted["modality"]) == {"DWI"}
    assert sorted(drafted["vendor"]) == sorted(sheet["vendor"])
    assert set(drafted["dicom_dir"]) == set(sheet["dicom_dir"])
    assert set(drafted["organ"]) == {"abdomen"} and set(drafted["review"]) == {""}
    assert drafted["subject"].str.fullmatch(r"S\d{4}").all()
    text = (tmp_path / "samples.tsv").read_text()
    assert "MRN" not in text and "Infirmary" not in text


def test_every_command_has_help():
    for command in ("convert", "adc", "preprocess", "scan", "demo-cohort"):
        proc = dwisynth(command, "--help")
        assert proc.returncode == 0 and "usage" in proc.stdout
