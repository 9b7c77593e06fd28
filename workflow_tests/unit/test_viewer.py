"""The viewer's pieces without a server: uploads, the derived DICOM export, the voxel fit, model checks."""

import hashlib
import subprocess
import zipfile
from pathlib import Path

import nibabel as nib
import numpy as np
import pydicom
import pytest

from dwisynth.convert import dcm2niix_binary
from dwisynth.dicom import write_derived_series
from dwisynth.viewer.studies import ModelInfo, Study, ViewerError, check_model_fits, mono_exponential, unpack_upload

STATIC = Path(__file__).resolve().parents[2] / "dwisynth" / "viewer" / "static"


def test_the_vendored_niivue_is_the_release_its_readme_names():
    readme = (STATIC / "vendor" / "README.md").read_text()
    (bundle,) = (STATIC / "vendor").glob("niivue-*.umd.js")
    assert hashlib.sha256(bundle.read_bytes()).hexdigest() in readme
    assert f'src="/static/vendor/{bundle.name}"' in (STATIC / "index.html").read_text()


def test_derived_dicom_of_an_oblique_volume_reads_back_through_dcm2niix(tmp_path):
    rng = np.random.default_rng(0)
    volume = rng.uniform(0, 3, size=(12, 10, 5)).astype(np.float32)
    angle = np.deg2rad(12)  # a rotated grid: orientation and position must come from the affine, not assumed
    rotation = np.array([[np.cos(angle), -np.sin(angle), 0], [np.sin(angle), np.cos(angle), 0], [0, 0, 1]])
    affine = np.eye(4)
    affine[:3, :3] = rotation @ np.diag([2.0, 2.5, 4.0])
    affine[:3, 3] = [-30, 12, 7]
    files = write_derived_series(tmp_path / "dicom", volume, affine, 850, pseudonym="s1", description="synthetic",
                                 seed_text="t")
    ds = pydicom.dcmread(files[0])
    assert list(ds.ImageType) == ["DERIVED", "SECONDARY", "DIFFUSION"]
    assert ds[0x0018, 0x9087].value == 850 and ds.PatientName == "s1" and "PatientBirthDate" not in ds
    again = write_derived_series(tmp_path / "again", volume, affine, 850, "s1", "synthetic", "other export")
    assert pydicom.dcmread(again[0]).SeriesInstanceUID != ds.SeriesInstanceUID  # a new series per export
    subprocess.run([dcm2niix_binary(), "-z", "y", "-f", "back", "-o", str(tmp_path), str(tmp_path / "dicom")],
                   check=True, capture_output=True)
    assert np.loadtxt(tmp_path / "back.bval", ndmin=1).tolist() == [850.0]
    back = nib.load(tmp_path / "back.nii.gz")
    # dcm2niix may flip axes: compare world coordinates of every voxel, and values at the same world point
    voxel_to_back = np.linalg.inv(back.affine) @ affine
    ijk = np.argwhere(np.ones(volume.shape, bool))
    mapped = np.rint(nib.affines.apply_affine(voxel_to_back, ijk)).astype(int)
    np.testing.assert_allclose(nib.affines.apply_affine(voxel_to_back, ijk), mapped, atol=1e-3)
    back_values = np.asarray(back.dataobj).squeeze()[tuple(mapped.T)]
    np.testing.assert_allclose(back_values, volume[tuple(ijk.T)], atol=3 / 60000 + 1e-6)


def test_an_upload_zip_may_not_escape_or_inflate(tmp_path):
    evil = tmp_path / "evil.zip"
    with zipfile.ZipFile(evil, "w") as z:
        z.writestr("../../outside.dcm", b"x")
    with pytest.raises(ViewerError, match="outside the upload"):
        unpack_upload(evil, tmp_path / "a", max_bytes=10**6)
    assert not (tmp_path / "outside.dcm").exists()
    bomb = tmp_path / "bomb.zip"
    with zipfile.ZipFile(bomb, "w", zipfile.ZIP_DEFLATED) as z:
        z.writestr("series/IM1.dcm", b"\0" * 5_000_000)  # ~5 KB zipped
    assert bomb.stat().st_size < 100_000
    with pytest.raises(ViewerError, match="unpacks to 5 MiB") as refused:
        unpack_upload(bomb, tmp_path / "b", max_bytes=2**20)
    assert refused.value.status == 413 and not (tmp_path / "b").exists()
    series = tmp_path / "series.zip"
    with zipfile.ZipFile(series, "w") as z:
        for n in range(3):
            z.writestr(f"export/DWI/IM{n}.dcm", b"x")
    assert unpack_upload(series, tmp_path / "c", 10**6) == tmp_path / "c" / "export" / "DWI"
    with zipfile.ZipFile(tmp_path / "nifti.zip", "w") as z:
        z.writestr("dwi.nii.gz", b"x")
        z.writestr("dwi.bval", b"0 1000")
    assert unpack_upload(tmp_path / "nifti.zip", tmp_path / "d", 10**6).name == "dwi.nii.gz"


def test_mono_exponential_recovers_a_known_adc():
    b = np.array([0, 100, 500, 1000.0])
    s0, adc = mono_exponential(b, 3.0 * np.exp(-b * 1.1e-3))
    assert s0 == pytest.approx(3.0) and adc == pytest.approx(1.1)
    assert mono_exponential(b, [1, 0.5, 0, 0.1]) is None  # a zero signal has no logarithm


def test_model_checks_name_what_would_fit(tmp_path):
    minegan = ModelInfo("minegan/brain", tmp_path, "minegan", "multib", "brain", (0.0, 100.0),
                        (75.0, 850.0, 1000.0), (0.0, 1000.0))
    dc2anet = ModelInfo("dc2anet/brain", tmp_path, "dc2anet", "multib", "brain", (0.0, 100.0), (400.0, 1000.0), None)
    ct2dwi = ModelInfo("ct2dwi/main/jmmdagan", tmp_path, "jmmdagan", "ct2dwi", "brain", (), (1000.0,), None)
    brain = Study("s1", "s1 (DWI)", "brain", tmp_path, dwi=tmp_path / "dwi.nii.gz", acquired_b=[0.0, 100.0, 1000.0])
    ct = Study("s2", "s2 (CT)", "brain", tmp_path, ct=tmp_path / "ct.nii.gz")
    assert check_model_fits(brain, minegan, 640.0) == 640.0
    with pytest.raises(ViewerError, match=r"outside minegan/brain's range \[0, 1000\]"):
        check_model_fits(brain, minegan, 1200.0)
    with pytest.raises(ViewerError, match="400, 1000 only, not 850; any other b needs a MineGAN"):
        check_model_fits(brain, dc2anet, 850.0)
    with pytest.raises(ViewerError, match="needs a CT"):
        check_model_fits(brain, ct2dwi, 1000.0)
    with pytest.raises(ViewerError, match="is a CT"):
        check_model_fits(ct, minegan, 850.0)
    abdomen = Study("s3", "s3 (DWI)", "abdomen", tmp_path, dwi=tmp_path / "dwi.nii.gz", acquired_b=[0.0, 100.0])
    with pytest.raises(ViewerError, match="brain model; s3 .* is abdomen"):
        check_model_fits(abdomen, minegan, 850.0)
    no_b100 = Study("s4", "s4 (DWI)", "brain", tmp_path, dwi=tmp_path / "dwi.nii.gz", acquired_b=[0.0, 1000.0])
    with pytest.raises(ViewerError, match="needs b = 100 as input"):
        check_model_fits(no_b100, minegan, 850.0)


def test_the_model_list_follows_a_retrained_model_pt(tmp_path):
    """A retrain may change what a network reads: the viewer relists instead of feeding it the old inputs."""
    import os

    import torch

    from dwisynth.viewer.server import Viewer

    path = tmp_path / "models/dc2anet/abdomen/model.pt"
    path.parent.mkdir(parents=True)
    record = {"method": "dc2anet", "organ": "abdomen", "input_b": [0.0, 100.0], "target_b": [800.0, 1000.0]}
    torch.save(record, path)
    viewer = Viewer(models_dir=tmp_path / "models", results_dir=tmp_path, config={}, roots=[tmp_path],
                    workspace=tmp_path / "ws", max_upload_bytes=1)
    assert viewer.models()[0].input_b == (0.0, 100.0)
    torch.save({**record, "input_b": [0.0]}, path)
    os.utime(path, ns=(path.stat().st_atime_ns, path.stat().st_mtime_ns + 10**9))
    assert viewer.models()[0].input_b == (0.0,)
