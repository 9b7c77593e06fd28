"""Enhanced multi-frame DWI DICOM: b-values and positions per frame, conversion equal to dcm2niix's, refusals."""

import subprocess

import nibabel as nib
import numpy as np
import pydicom
import pytest

from dwisynth.convert import convert_series, dcm2niix_binary
from dwisynth.dicom import (VENDORS, frame_diffusion, image_frames, is_enhanced, write_dwi_series,
                            write_enhanced_dwi_series)
from dwisynth.errors import ConfigError, DicomSeriesError, HeaderQCError
from dwisynth.geometry import Grid

BVALS = [0, 500, 1000]
DIRECTIONS = [[0, 0, 0], [1, 0, 0], [0, 0.6, 0.8]]


@pytest.fixture
def grid():
    return Grid.centred((8, 6, 3), (2.0, 2.5, 4.0))


@pytest.fixture
def volumes(grid):
    """(n_b, x, y, z) integer volumes whose every voxel differs."""
    return np.random.default_rng(7).permutation(np.arange(1, 1 + len(BVALS) * np.prod(grid.shape))).reshape(
        len(BVALS), *grid.shape).astype(np.uint16)


@pytest.fixture
def decaying(volumes):
    """Like volumes, but each volume darker as b rises (as diffusion signal is): the order of user-given b-values
    is checked against it."""
    base = 1000 + 4 * volumes[0].astype(float)
    return np.stack([np.round(base * np.exp(-0.0007 * b)) for b in BVALS]).astype(np.uint16)


FLAVOURS = {
    # Siemens XA: the whole series in one file, each frame's b-value in its own functional groups
    "enhanced, one file": dict(enhanced=True),
    "enhanced, one file, no private b-value": dict(enhanced=True, private_bvalue=False),
    "enhanced, one file, gradient directions": dict(enhanced=True, bvecs=DIRECTIONS),
    "enhanced, one volume per file": dict(enhanced=True, volumes_per_file=1),
    "enhanced, one volume per file, b-value in the shared groups": dict(enhanced=True, volumes_per_file=1,
                                                                       shared_diffusion=True),
    "legacy converted enhanced, one file": dict(enhanced=True, legacy_converted=True),
    "enhanced Canon, one file, gradient directions": dict(enhanced=True, vendor="standard", bvecs=DIRECTIONS),
    **{f"classic {vendor}": dict(vendor=vendor) for vendor in VENDORS},
}


def write_flavour(folder, flavour: dict, volumes, grid, patient, uids, bvals=BVALS):
    options = dict(flavour)
    if options.pop("enhanced", False):
        return write_enhanced_dwi_series(folder, volumes, bvals, grid, patient, uids, **options)
    return write_dwi_series(folder, volumes, bvals, grid, options["vendor"], patient, uids)


def bare_dcm2niix(dicom_dir, out_dir):
    """dcm2niix alone, with the options convert_series gives it: (image, bvals, bvecs)."""
    out_dir.mkdir()
    subprocess.run([dcm2niix_binary(), "-b", "y", "-ba", "y", "-z", "y", "-f", "bare", "-o", str(out_dir),
                    str(dicom_dir)], check=True, capture_output=True)
    return (nib.load(out_dir / "bare.nii.gz"), np.loadtxt(out_dir / "bare.bval", ndmin=1),
            np.loadtxt(out_dir / "bare.bvec", ndmin=2))


@pytest.mark.parametrize("name", FLAVOURS)
def test_conversion_equals_dcm2niix_and_the_written_truth(tmp_path, name, grid, volumes, patient, uids):
    write_flavour(tmp_path / "dcm", FLAVOURS[name], volumes, grid, patient, uids)
    record = convert_series(tmp_path / "dcm", tmp_path / "out", "T01", "DWI", log=lambda *_: None)
    converted = nib.load(tmp_path / "out" / "sub-T01_dwi.nii.gz")
    bvals = np.loadtxt(tmp_path / "out" / "sub-T01_dwi.bval", ndmin=1)
    bvecs = np.loadtxt(tmp_path / "out" / "sub-T01_dwi.bvec", ndmin=2)
    bare, bare_bvals, bare_bvecs = bare_dcm2niix(tmp_path / "dcm", tmp_path / "bare")

    assert np.array_equal(np.asarray(converted.dataobj), np.asarray(bare.dataobj))
    assert np.allclose(converted.affine, bare.affine, atol=1e-4)
    assert bvals.tolist() == bare_bvals.tolist() == BVALS == record["bvals"]
    assert np.allclose(bvecs, bare_bvecs)
    # and both are the volumes written, in the order written, where they were written
    truth = nib.as_closest_canonical(nib.Nifti1Image(np.moveaxis(volumes, 0, -1), grid.affine_ras()))
    canonical = nib.as_closest_canonical(converted)
    assert np.array_equal(np.asarray(canonical.dataobj), np.asarray(truth.dataobj))
    assert np.allclose(canonical.affine, truth.affine, atol=1e-3)


def test_frame_b_values_and_directions_are_read_from_per_frame_and_shared_groups(tmp_path, grid, volumes, patient,
                                                                                  uids):
    [one_file] = write_enhanced_dwi_series(tmp_path / "one", volumes, BVALS, grid, patient, uids, bvecs=DIRECTIONS)
    per_volume = write_enhanced_dwi_series(tmp_path / "shared", volumes, BVALS, grid, patient, uids,
                                           volumes_per_file=1, shared_diffusion=True)
    ds = pydicom.dcmread(one_file, stop_before_pixels=True)
    nz = grid.shape[2]
    assert is_enhanced(ds) and "MRDiffusionSequence" not in ds.SharedFunctionalGroupsSequence[0]
    assert frame_diffusion(ds) == [(0.0, None)] * nz + [(500.0, (1.0, 0.0, 0.0))] * nz + [
        (1000.0, pytest.approx((0.0, 0.6, 0.8)))] * nz
    assert [frame.position[2] for frame in image_frames(ds)] == [grid.slice_position_lps(k)[2] for k in range(nz)] * 3
    for bval, path in zip(BVALS, per_volume):
        shared = pydicom.dcmread(path, stop_before_pixels=True)
        assert "MRDiffusionSequence" in shared.SharedFunctionalGroupsSequence[0]
        assert frame_diffusion(shared) == [(float(bval), None)] * nz  # trace images: isotropic, no direction


def test_a_classic_file_is_one_frame_with_its_vendor_b_value(tmp_path, grid, volumes, patient, uids):
    files = write_dwi_series(tmp_path / "dcm", volumes, BVALS, grid, "siemens", patient, uids)
    ds = pydicom.dcmread(files[-1], stop_before_pixels=True)
    assert not is_enhanced(ds)
    assert frame_diffusion(ds) == [(1000.0, None)]
    [frame] = image_frames(ds)
    assert frame.frame is None and frame.position == tuple(grid.slice_position_lps(grid.shape[2] - 1))


def _only_outputs(folder):
    return sorted(p.name for p in folder.glob("*")) if folder.exists() else []


def test_enhanced_series_without_b0_is_refused(tmp_path, grid, volumes, patient, uids):
    write_enhanced_dwi_series(tmp_path / "dcm", volumes, [100, 500, 1000], grid, patient, uids)
    with pytest.raises(HeaderQCError, match=r"no b0 volume \(lowest b-value 100 > b0_max 10\)"):
        convert_series(tmp_path / "dcm", tmp_path / "out", "T02", "DWI", log=lambda *_: None)
    assert _only_outputs(tmp_path / "out") == []


def _drop_frame(path, frame: int, keep_count: bool = False) -> None:
    """Remove one frame's functional groups (and, unless keep_count, its pixels and its count) from a file."""
    ds = pydicom.dcmread(path)
    del ds.PerFrameFunctionalGroupsSequence[frame]
    if not keep_count:
        pixels = np.frombuffer(ds.PixelData, "<u2").reshape(int(ds.NumberOfFrames), -1)
        ds.PixelData = np.delete(pixels, frame, axis=0).tobytes()
        ds.NumberOfFrames = int(ds.NumberOfFrames) - 1
    ds.save_as(path)


def test_enhanced_series_with_a_frame_missing_a_slice_is_refused(tmp_path, grid, volumes, patient, uids):
    [path] = write_enhanced_dwi_series(tmp_path / "dcm", volumes, BVALS, grid, patient, uids)
    _drop_frame(path, grid.shape[2] + 1)  # the second slice of b=500
    with pytest.raises(HeaderQCError, match=r"not every b-value covers the 3 slice positions \(b=0: 3 images, "
                                            r"b=500: 2 images, b=1000: 3 images\)"):
        convert_series(tmp_path / "dcm", tmp_path / "out", "T03", "DWI", log=lambda *_: None)
    assert _only_outputs(tmp_path / "out") == []


def test_corrupt_frames_are_named_by_file_and_frame(tmp_path, grid, volumes, patient, uids):
    [path] = write_enhanced_dwi_series(tmp_path / "nob", volumes, BVALS, grid, patient, uids)
    ds = pydicom.dcmread(path)
    del ds.PerFrameFunctionalGroupsSequence[4].MRDiffusionSequence
    ds.save_as(path)
    source = "multicenter/sub-T04 DWI (dicom_dir in the sample sheet)"
    with pytest.raises(HeaderQCError, match=r"image file 1 of 1 \(by name\) frame 5 of 9 has no diffusion b-value "
                                            r"in its MRDiffusionSequence"):
        convert_series(tmp_path / "nob", tmp_path / "out", "T04", "DWI", log=lambda *_: None, source=source)

    [path] = write_enhanced_dwi_series(tmp_path / "short", volumes, BVALS, grid, patient, uids)
    _drop_frame(path, 2, keep_count=True)
    with pytest.raises(HeaderQCError, match=r"image EN_00001.dcm: NumberOfFrames is 9 but "
                                            r"PerFrameFunctionalGroupsSequence describes 8; the file is damaged"):
        convert_series(tmp_path / "short", tmp_path / "out", "T04", "DWI", log=lambda *_: None)
    assert _only_outputs(tmp_path / "out") == []


def test_several_volumes_per_file_are_refused_as_dcm2niix_splits_them(tmp_path, grid, volumes, patient, uids):
    """dcm2niix stacks single-volume enhanced files but writes a file of several volumes as an image of its
    own: the series is refused with the reason, never converted in part."""
    write_enhanced_dwi_series(tmp_path / "dcm", volumes, BVALS, grid, patient, uids, volumes_per_file=2)
    with pytest.raises(DicomSeriesError, match="dcm2niix wrote 2 images"):
        convert_series(tmp_path / "dcm", tmp_path / "out", "T05", "DWI", log=lambda *_: None)
    assert _only_outputs(tmp_path / "out") == []


def test_a_demo_center_exporting_enhanced_dicom_writes_one_file_per_series_that_converts(tiny_config, tmp_path):
    from dwisynth.config import validate_config
    from dwisynth.demo.cohort import plan_demo_cohort, simulate_subject, write_subject

    tiny_config["demo"]["outdir"] = str(tmp_path / "demo")
    center = next(c for c in tiny_config["demo"]["centers"] if c["name"] == "hospitalA" and c["organs"] == ["abdomen"])
    center["dicom"] = "enhanced"
    validate_config(tiny_config)
    plan = next(p for p in plan_demo_cohort(tiny_config) if p.subject == "HAabdomen01")
    sim = simulate_subject(plan, tiny_config)
    write_subject(sim)
    [path] = sorted(p for p in (tmp_path / "demo").rglob("*.dcm") if "HAabdomen01" in str(p))
    ds = pydicom.dcmread(path, stop_before_pixels=True)
    assert is_enhanced(ds) and int(ds.NumberOfFrames) == len(plan.bvals) * sim.grid.shape[2]
    assert sorted({b for b, _ in frame_diffusion(ds)}) == plan.bvals == [0, 75, 100, 400, 800, 850, 1000]

    record = convert_series(plan.series["DWI"], tmp_path / "out", plan.subject, log=lambda *_: None)
    assert record["bvals"] == plan.bvals
    converted = nib.as_closest_canonical(nib.load(tmp_path / "out" / f"sub-{plan.subject}_dwi.nii.gz"))
    truth = nib.as_closest_canonical(nib.Nifti1Image(np.moveaxis(sim.acquired, 0, -1), sim.grid.affine_ras()))
    assert np.array_equal(np.asarray(converted.dataobj), np.asarray(truth.dataobj))

    center["vendor"] = "ge"  # the writer is Siemens XA's: another vendor's center cannot ask for it
    with pytest.raises(ConfigError, match=r"demo.centers.1.vendor: 'siemens' was expected"):
        validate_config(tiny_config)


# Series whose DICOM carries no diffusion tag: b-values from the user


def write_untagged_series(folder, volumes, grid, patient, uids):
    """A DWI series of 3 volumes whose export dropped every b-value tag (standard and private)."""
    files = write_dwi_series(folder, volumes, BVALS, grid, "standard", patient, uids)
    for path in files:
        ds = pydicom.dcmread(path)
        del ds[0x00189087], ds[0x00189075]
        ds.save_as(path)
    return files


def test_a_series_without_b_value_tags_is_refused_unless_its_b_values_are_given(tmp_path, grid, decaying, patient,
                                                                                uids):
    write_untagged_series(tmp_path / "dcm", decaying, grid, patient, uids)
    assert frame_diffusion(pydicom.dcmread(next((tmp_path / "dcm").iterdir()))) == [(None, None)]
    with pytest.raises(HeaderQCError, match="has no diffusion b-value .* give them in a .bval file"):
        convert_series(tmp_path / "dcm", tmp_path / "out", "T06", "DWI", log=lambda *_: None)

    (tmp_path / "dwi.bval").write_text("0 500 1000\n")
    (tmp_path / "dwi.bvec").write_text("0 1 0\n0 0 0.6\n0 0 0.8\n")
    record = convert_series(tmp_path / "dcm", tmp_path / "out", "T06", "DWI", log=lambda *_: None,
                            bval=tmp_path / "dwi.bval", bvec=tmp_path / "dwi.bvec")
    assert record["bvals"] == BVALS and record["bvals_from"] == "b-value file"
    assert np.loadtxt(tmp_path / "out" / "sub-T06_dwi.bval").tolist() == BVALS
    assert np.loadtxt(tmp_path / "out" / "sub-T06_dwi.bvec").tolist() == [[0, 1, 0], [0, 0, 0.6], [0, 0, 0.8]]
    converted = nib.load(tmp_path / "out" / "sub-T06_dwi.nii.gz")
    truth = nib.as_closest_canonical(nib.Nifti1Image(np.moveaxis(decaying, 0, -1), grid.affine_ras()))
    assert np.array_equal(np.asarray(nib.as_closest_canonical(converted).dataobj), np.asarray(truth.dataobj))


@pytest.mark.parametrize("bval, bvec, message", [
    ("0 1000\n", None, r"the bval file of the sample sheet holds 2 b-values but the series has 3 volumes \(9 images "
                       r"at 3 slice positions\); give one b-value per volume"),
    ("0 500 1000\n", "1 0 0\n0 1 0\n", r"the bvec file of the sample sheet holds 2 rows of 3 values; give 3 rows"),
    ("0 five 1000\n", None, "cannot read the bval file of the sample sheet: not a table of numbers"),
    ("500 500 1000\n", None, r"no b0 volume \(lowest b-value 500 > b0_max 10\)"),
    ("1000 500 0\n", None, r"the volumes the bval file of the sample sheet gives b=0 are no brighter .* than those "
                           r"it gives b=1000 .*: the b-values are not in the series' volume order"),
])
def test_given_b_values_that_do_not_fit_the_series_are_refused(tmp_path, grid, decaying, patient, uids, bval, bvec,
                                                               message):
    write_untagged_series(tmp_path / "dcm", decaying, grid, patient, uids)
    (tmp_path / "b.bval").write_text(bval)
    if bvec:
        (tmp_path / "b.bvec").write_text(bvec)
    with pytest.raises(HeaderQCError, match=message):
        convert_series(tmp_path / "dcm", tmp_path / "out", "T07", "DWI", log=lambda *_: None,
                       source="multicenter/sub-T07 DWI (dicom_dir in the sample sheet)",
                       bval=tmp_path / "b.bval", bvec=tmp_path / "b.bvec" if bvec else None)
    assert _only_outputs(tmp_path / "out") == []


def test_given_b_values_never_replace_the_series_own(tmp_path, grid, volumes, patient, uids):
    write_enhanced_dwi_series(tmp_path / "dcm", volumes, BVALS, grid, patient, uids)
    (tmp_path / "b.bval").write_text("0 600 1200\n")
    with pytest.raises(HeaderQCError, match=r"gives b-values but the DICOM holds its own \(b=0, b=500, b=1000\)"):
        convert_series(tmp_path / "dcm", tmp_path / "out", "T08", "DWI", log=lambda *_: None,
                       bval=tmp_path / "b.bval")


def test_cli_convert_takes_b_values_for_an_untagged_series(tmp_path, grid, decaying, patient, uids):
    import json
    import sys

    write_untagged_series(tmp_path / "dcm", decaying, grid, patient, uids)
    (tmp_path / "dwi.bval").write_text("0\n500\n1000\n")  # a column is one row of b-values too
    command = [sys.executable, "-m", "dwisynth.cli", "convert", str(tmp_path / "dcm"), "-o", str(tmp_path / "out"),
               "--subject", "T09"]
    refused = subprocess.run(command, capture_output=True, text=True)
    assert refused.returncode != 0 and "--bval" in refused.stderr and not (tmp_path / "out").exists()
    done = subprocess.run(command + ["--bval", str(tmp_path / "dwi.bval")], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    assert json.loads((tmp_path / "out" / "sub-T09_dwi_qc.json").read_text())["bvals"] == BVALS
    assert np.loadtxt(tmp_path / "out" / "sub-T09_dwi.bvec").tolist() == [[0, 0, 0]] * 3


@pytest.mark.workflow
def test_the_workflow_passes_the_sheets_bval_column_to_conversion(tmp_path, grid, decaying, patient, uids):
    import sys

    import pandas as pd
    import yaml

    from helpers import REPO

    write_untagged_series(tmp_path / "dicom" / "S0001", decaying, grid, patient, uids)
    (tmp_path / "S0001.bval").write_text("0 500 1000\n")
    pd.DataFrame([{"cohort": "c1", "center": "h1", "subject": "S0001", "organ": "brain", "modality": "DWI",
                   "dicom_dir": "dicom/S0001", "bval": "S0001.bval"}]).to_csv(tmp_path / "samples.tsv", sep="\t",
                                                                               index=False)
    (tmp_path / "config.yaml").write_text(yaml.safe_dump({"samples": "samples.tsv", "demo": {"enabled": False}}))
    target = "results/c1/nifti/sub-S0001/sub-S0001_dwi.bval"
    proc = subprocess.run([sys.executable, "-m", "snakemake", target, "--cores", "1", "--snakefile",
                           str(REPO / "Snakefile"), "--directory", str(tmp_path), "--configfile",
                           str(tmp_path / "config.yaml")], capture_output=True, text=True, cwd=REPO)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert np.loadtxt(tmp_path / target).tolist() == BVALS


def test_a_siemens_enhanced_file_dcm2niix_cannot_assemble_is_refused_not_scrambled(tmp_path, grid, volumes, patient,
                                                                                    uids):
    """With one PlaneOrientationSequence shared by all frames, dcm2niix (1.0.20260724) sorts a Siemens file's
    frames by slice position alone: slices and volumes come out mixed and without b-values."""
    [path] = write_enhanced_dwi_series(tmp_path / "dcm", volumes, BVALS, grid, patient, uids)
    ds = pydicom.dcmread(path)
    orientation = ds.PerFrameFunctionalGroupsSequence[0].PlaneOrientationSequence
    for frame in ds.PerFrameFunctionalGroupsSequence:
        del frame.PlaneOrientationSequence
    ds.SharedFunctionalGroupsSequence[0].PlaneOrientationSequence = orientation
    ds.save_as(path)
    with pytest.raises(HeaderQCError, match=r"dcm2niix wrote no .bval although the headers hold b-values "
                                            r"\[0.0, 500.0, 1000.0\]"):
        convert_series(tmp_path / "dcm", tmp_path / "out", "T10", "DWI", log=lambda *_: None)
    assert _only_outputs(tmp_path / "out") == []
