"""dcm2niix conversion: b-values per vendor convention, voxel values, geometry, errors."""

import json
import logging
import os
import subprocess
import sys
import textwrap
import warnings
from pathlib import Path

import nibabel as nib
import numpy as np
import pydicom
import pytest

from dwisynth.convert import convert_series, staging_folder
from dwisynth.dicom import VENDORS, element_value, read_bvalue, write_ct_series, write_dwi_series
from dwisynth.errors import DicomSeriesError, HeaderQCError
from dwisynth.scan import scan_dicom_tree


def canonical(img):
    canon = nib.as_closest_canonical(img)
    return canon.affine, np.asarray(canon.dataobj)


@pytest.mark.parametrize("vendor", VENDORS)
def test_vendor_bvalue_tag_is_read_back_after_dcm2niix(tmp_path, vendor, small_grid, small_dwi, patient, uids):
    volumes, bvals = small_dwi
    files = write_dwi_series(tmp_path / "dcm", volumes, bvals, small_grid, vendor, patient, uids)
    # the tag itself, as pydicom reads it by the vendor's convention
    per_file = [read_bvalue(pydicom.dcmread(f, stop_before_pixels=True)) for f in files]
    assert sorted(set(per_file)) == bvals

    record = convert_series(tmp_path / "dcm", tmp_path / "out", "T01", "DWI", log=lambda *_: None)
    stem = tmp_path / "out" / "sub-T01_dwi"
    assert np.loadtxt(f"{stem}.bval").tolist() == bvals
    assert record["vendor"] == vendor and record["bvals"] == bvals

    converted = nib.load(f"{stem}.nii.gz")
    expected = nib.Nifti1Image(np.moveaxis(volumes, 0, -1), small_grid.affine_ras())
    conv_affine, conv_data = canonical(converted)
    exp_affine, exp_data = canonical(expected)
    assert np.allclose(conv_affine, exp_affine, atol=1e-3)
    assert np.array_equal(conv_data, exp_data)


def test_ct_hounsfield_units_survive_conversion(tmp_path, small_grid, patient, uids):
    hu = np.random.default_rng(1).integers(-1000, 1500, size=small_grid.shape)
    write_ct_series(tmp_path / "ct", hu, small_grid, patient, uids)
    record = convert_series(tmp_path / "ct", tmp_path / "out", "T02", "CT", log=lambda *_: None)
    img = nib.load(tmp_path / "out" / "sub-T02_ct.nii.gz")
    _, data = canonical(img)
    _, expected = canonical(nib.Nifti1Image(hu.astype(np.int16), small_grid.affine_ras()))
    assert np.array_equal(np.round(data), expected)
    assert record["modality"] == "CT" and img.ndim == 3


def test_sidecar_and_files_hold_no_identifier(tmp_path, small_grid, small_dwi, patient, uids):
    volumes, bvals = small_dwi
    write_dwi_series(tmp_path / "dcm", volumes, bvals, small_grid, "siemens", patient, uids)
    record = convert_series(tmp_path / "dcm", tmp_path / "out", "T03", "DWI", log=lambda *_: None)
    assert "InstitutionAddress" in record["sidecar_keys_removed"]
    for path in (tmp_path / "out").iterdir():
        blob = (nib.load(path).header.binaryblock if path.name.endswith(".nii.gz") else path.read_bytes())
        for identifier in (patient.name, patient.patient_id, patient.birth_date, patient.institution,
                           patient.institution_address, "Herbert", uids["study"]):
            assert identifier.encode() not in blob, (path, identifier)


def _only_outputs(folder: Path):
    return sorted(p.name for p in folder.iterdir()) if folder.exists() else []


def test_truncated_dicom_names_the_file_and_writes_nothing(tmp_path, small_grid, small_dwi, patient, uids):
    volumes, bvals = small_dwi
    files = write_dwi_series(tmp_path / "dcm", volumes, bvals, small_grid, "philips", patient, uids)
    bad = files[5]
    bad.write_bytes(bad.read_bytes()[:300])
    with pytest.raises(DicomSeriesError, match=bad.name):
        convert_series(tmp_path / "dcm", tmp_path / "out", "T04", "DWI", log=lambda *_: None)
    assert _only_outputs(tmp_path / "out") == []


def test_pixel_data_short_by_two_bytes_is_refused_though_the_header_is_complete(tmp_path, small_grid, small_dwi,
                                                                                 patient, uids):
    volumes, bvals = small_dwi
    files = write_dwi_series(tmp_path / "dcm", volumes, bvals, small_grid, "standard", patient, uids)
    bad = files[-1]
    bad.write_bytes(bad.read_bytes()[:-2])
    assert pydicom.dcmread(bad, stop_before_pixels=True).Rows  # the header alone reads fine
    with pytest.raises(DicomSeriesError, match=rf"{bad.name}.*pixel data has \d+ of \d+ bytes"):
        convert_series(tmp_path / "dcm", tmp_path / "out", "T04", "DWI", log=lambda *_: None)
    assert _only_outputs(tmp_path / "out") == []


def test_siemens_bvalues_are_read_wherever_each_file_puts_its_private_block(tmp_path, small_grid, small_dwi, patient,
                                                                            uids):
    """The private creator's slot is remembered from file to file; a file that reserves another slot must still
    be read through its own creator."""
    volumes, bvals = small_dwi
    files = write_dwi_series(tmp_path / "dcm", volumes, bvals, small_grid, "siemens", patient, uids)
    for path in files[1::2]:  # every other file: the block at (0019,11xx) behind an unrelated creator at 0010
        ds = pydicom.dcmread(path)
        b = ds[0x0019, 0x100C].value
        del ds[0x0019, 0x100C]
        ds[0x0019, 0x0010].value = "ACME PRIVATE"
        ds.add_new((0x0019, 0x0011), "LO", "SIEMENS MR HEADER")
        ds.add_new((0x0019, 0x110C), "IS", b)
        ds.save_as(path)
    expected = [read_bvalue(pydicom.dcmread(f, stop_before_pixels=True)) for f in files]
    assert sorted(set(expected)) == bvals
    record = convert_series(tmp_path / "dcm", tmp_path / "out", "T09", "DWI", log=lambda *_: None)
    assert record["header_bvals"] == bvals and record["bvals"] == np.loadtxt(
        tmp_path / "out" / "sub-T09_dwi.bval").tolist()


def test_a_cached_header_value_is_decoded_in_each_files_character_set(tmp_path):
    """The same raw bytes read as different names under Latin-1 and UTF-8: the conversion cache must not
    hand one file's decoding to the other (the identifier scan would look for the wrong name)."""
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.uid import ExplicitVRLittleEndian

    names = {}
    for charset in ("ISO_IR 100", "ISO_IR 192"):
        ds = Dataset()
        ds.file_meta = FileMetaDataset()
        ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
        ds.file_meta.MediaStorageSOPClassUID = ds.SOPClassUID = "1.2.840.10008.5.1.4.1.1.4"
        ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID = "1.2.3.4"
        ds.SpecificCharacterSet = charset
        ds.add_new(0x00100010, "PN", "M\u00fcller".encode("utf-8"))  # raw bytes, written as they are
        ds.save_as(tmp_path / f"{charset}.dcm", enforce_file_format=True)
        names[charset] = str(element_value(pydicom.dcmread(tmp_path / f"{charset}.dcm"), "PatientName"))
    assert names == {"ISO_IR 100": "M\u00c3\u00bcller", "ISO_IR 192": "M\u00fcller"}


def test_series_without_b0_is_rejected(tmp_path, small_grid, small_dwi, patient, uids):
    volumes, _ = small_dwi
    write_dwi_series(tmp_path / "dcm", volumes, [50, 100, 500, 1000], small_grid, "ge", patient, uids)
    with pytest.raises(HeaderQCError, match="no b0"):
        convert_series(tmp_path / "dcm", tmp_path / "out", "T05", "DWI", log=lambda *_: None)
    assert _only_outputs(tmp_path / "out") == []


def test_series_with_a_missing_slice_is_rejected_as_inconsistent(tmp_path, small_grid, small_dwi, patient, uids):
    volumes, bvals = small_dwi
    files = write_dwi_series(tmp_path / "dcm", volumes, bvals, small_grid, "siemens", patient, uids)
    files[-1].unlink()
    with pytest.raises(HeaderQCError, match="inconsistent b-values"):
        convert_series(tmp_path / "dcm", tmp_path / "out", "T06", "DWI", log=lambda *_: None)


def test_sheet_modality_must_match_the_dicom(tmp_path, small_grid, small_dwi, patient, uids):
    volumes, bvals = small_dwi
    write_dwi_series(tmp_path / "dcm", volumes, bvals, small_grid, "siemens", patient, uids)
    with pytest.raises(HeaderQCError, match="sheet says CT"):
        convert_series(tmp_path / "dcm", tmp_path / "out", "T07", "CT", log=lambda *_: None)
    # dcm2niix, started beside the header checks, was stopped before its staging folder went: nothing is left
    assert not staging_folder(tmp_path / "out", "sub-T07_ct").exists() and not (tmp_path / "out").exists()


def test_cli_reports_corrupt_file_and_exits_nonzero(tmp_path, small_grid, small_dwi, patient, uids):
    volumes, bvals = small_dwi
    files = write_dwi_series(tmp_path / "dcm", volumes, bvals, small_grid, "siemens", patient, uids)
    files[0].write_bytes(b"not a dicom file at all")
    proc = subprocess.run([sys.executable, "-m", "dwisynth.cli", "convert", str(tmp_path / "dcm"), "-o",
                           str(tmp_path / "out"), "--subject", "T08"], capture_output=True, text=True)
    assert proc.returncode == 2
    assert files[0].name in proc.stderr and "re-export" in proc.stderr


def test_cli_converts_one_series(tmp_path, small_grid, small_dwi, patient, uids):
    volumes, bvals = small_dwi
    write_dwi_series(tmp_path / "dcm", volumes, bvals, small_grid, "standard", patient, uids)
    proc = subprocess.run([sys.executable, "-m", "dwisynth.cli", "convert", str(tmp_path / "dcm"), "-o",
                           str(tmp_path / "out"), "--subject", "T09"], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    qc = json.loads((tmp_path / "out" / "sub-T09_dwi_qc.json").read_text())
    assert qc["checks"] == "passed" and qc["bvals"] == [float(b) for b in bvals]


def test_identifier_typed_into_a_kept_field_is_caught_even_non_ascii(tmp_path, small_grid, small_dwi, uids):
    from dwisynth.dicom import PatientInfo

    patient = PatientInfo("Müller^Jürgen", "MRN1112223", "19500101", "Klinik Nord", "Weg 1, Ort 9999")
    volumes, bvals = small_dwi
    write_dwi_series(tmp_path / "dcm", volumes, bvals, small_grid, "siemens", patient, uids,
                     series_description="DWI müller jürgen")  # a technologist typed the name in
    with pytest.raises(HeaderQCError, match="identifiers survived"):
        convert_series(tmp_path / "dcm", tmp_path / "out", "T10", "DWI", log=lambda *_: None)
    assert _only_outputs(tmp_path / "out") == []


def test_patient_named_like_the_vendor_or_a_header_key_converts(tmp_path, small_grid, small_dwi, uids):
    """Identifiers are matched as whole tokens of values: the surname Philips on a Philips scanner and the
    given name Echo (sidecar key EchoTime) used to make conversion refuse this clean series."""
    from dwisynth.dicom import PatientInfo

    patient = PatientInfo("Philips^Echo", "MRN4445556", "19620304", "Clinic West", "1 Elm Street, Town 1234")
    volumes, bvals = small_dwi
    write_dwi_series(tmp_path / "dcm", volumes, bvals, small_grid, "philips", patient, uids)
    record = convert_series(tmp_path / "dcm", tmp_path / "out", "T20", "DWI", log=lambda *_: None)
    sidecar = json.loads((tmp_path / "out" / "sub-T20_dwi.json").read_text())
    assert record["checks"] == "passed" and sidecar["Manufacturer"] == "Philips" and "EchoTime" in sidecar
    assert "4445556" not in json.dumps(sidecar) and "19620304" not in json.dumps(sidecar)


@pytest.mark.parametrize("typed, attribute", [
    ("DWI Li", "PatientName"),             # a two-letter name part, as a whole token
    ("DWI scan 2025-01-01", "StudyDate"),  # the scan date, in another spelling than the DICOM's
    ("DWI 01.01.2025", "StudyDate"),
])
def test_short_name_parts_and_scan_dates_typed_into_a_kept_field_are_caught(tmp_path, small_grid, small_dwi, uids,
                                                                             typed, attribute):
    from dwisynth.dicom import PatientInfo

    patient = PatientInfo("Li^Wu", "MRN9998887", "19700101", "Clinic East", "2 Oak Road, City 4321")
    volumes, bvals = small_dwi
    write_dwi_series(tmp_path / "dcm", volumes, bvals, small_grid, "ge", patient, uids, series_description=typed)
    with pytest.raises(HeaderQCError, match=f"identifiers survived.*{attribute}") as error:
        convert_series(tmp_path / "dcm", tmp_path / "out", "T21", "DWI", log=lambda *_: None)
    assert "2025" not in str(error.value) and "Li" not in str(error.value).split("identifiers")[1]
    assert _only_outputs(tmp_path / "out") == []


def test_workflow_messages_name_the_pseudonym_never_the_folder_or_file(tmp_path, small_grid, small_dwi, patient,
                                                                       uids):
    """Folder and file names of an export can hold the patient's name; logs/ must not."""
    volumes, bvals = small_dwi
    folder = tmp_path / "Testpatient_Herbert_MRN7654321" / "DWI"
    files = write_dwi_series(folder, volumes, bvals, small_grid, "siemens", patient, uids)
    bad = files[5].rename(folder / "Herbert_slice6.dcm")
    intact = bad.read_bytes()
    bad.write_bytes(intact[:300])
    said = []
    with pytest.raises(DicomSeriesError) as error:
        convert_series(folder, tmp_path / "out", "T22", "DWI", log=said.append,
                       source="multicenter/sub-T22 DWI (dicom_dir in the sample sheet)")
    message = str(error.value)
    assert message.startswith("multicenter/sub-T22 DWI") and f"of {len(files)} (by name)" in message
    assert "herbert" not in (message + " ".join(said)).casefold() and "MRN" not in message
    bad.write_bytes(intact)
    convert_series(folder, tmp_path / "out", "T22", "DWI", log=said.append, source="multicenter/sub-T22 DWI")
    assert said and not any("herbert" in line.casefold() or str(folder) in line for line in said)


def test_identifier_tokens_match_values_never_keys_or_substrings():
    from dwisynth.identifiers import Identifier, find_identifiers_in_text, tokens

    ann, doe = Identifier(("ann",), "PatientName"), Identifier(("doe", "ann"), "PatientName")
    date = Identifier(("2025", "01", "02"), "StudyDate")
    assert tokens("Doe^Ann 2025-01-02T12:00") == ("doe", "ann", "2025", "01", "02", "t", "12", "00")
    assert find_identifiers_in_text("annual report; AnnotationKey", {ann, doe, date}) == set()
    assert find_identifiers_in_text("Ann Doe", {ann, doe}) == {ann}  # the pair in the other order is another form
    assert find_identifiers_in_text("doe, ANN", {doe}) == {doe}
    assert find_identifiers_in_text("acquired 2025/01/02 at noon", {date}) == {date}
    assert find_identifiers_in_text("2025-01-03", {date}) == set()


def test_repeated_b0_volumes_are_accepted(tmp_path, small_grid, small_dwi, patient, uids):
    volumes, _ = small_dwi
    write_dwi_series(tmp_path / "dcm", volumes, [0, 0, 500, 1000], small_grid, "siemens", patient, uids)
    record = convert_series(tmp_path / "dcm", tmp_path / "out", "T11", "DWI", log=lambda *_: None)
    assert sorted(record["bvals"]) == [0, 0, 500, 1000] and record["n_volumes"] == 4


def test_header_values_invalid_for_their_vr_are_read_without_a_warning_or_log_that_echoes_them(
        tmp_path, small_grid, small_dwi, patient, uids, capfd, caplog):
    """pydicom 3 warns and logs a value that breaks its VR with the value itself ("Invalid value for VR UI:
    '1.2.826.0.MRN7654321'") when it first converts it; conversion and scan run in jobs whose output is logs/."""
    volumes, bvals = small_dwi
    files = write_dwi_series(tmp_path / "Export" / "DWI", volumes, bvals, small_grid, "siemens", patient, uids)
    with warnings.catch_warnings():  # as a hospital export may hold them: a date with dashes, the ID in a UID
        warnings.simplefilter("ignore")
        for path in files:
            ds = pydicom.dcmread(path)
            ds.PatientBirthDate = "1957-11-03"
            ds.StudyInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = "1.2.826.0.MRN7654321"
            ds.save_as(path)
    caplog.set_level(logging.DEBUG)
    said = []
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        convert_series(files[0].parent, tmp_path / "out", "T23", "DWI", log=said.append, source="study/sub-T23 DWI")
        assert len(scan_dicom_tree(tmp_path / "Export")) == 1
    out, err = capfd.readouterr()
    text = "\n".join([str(w.message) for w in caught] + [caplog.text, out, err] + said)
    assert "7654321" not in text and "1957" not in text, text


def _without_reading_every_file():
    """Root reads a file whatever its mode: the command drops the capabilities that let it (PR_CAPBSET_DROP of
    CAP_DAC_OVERRIDE and CAP_DAC_READ_SEARCH, effective from its exec on)."""
    if os.geteuid() == 0:
        import ctypes

        libc = ctypes.CDLL(None, use_errno=True)
        for capability in (1, 2):
            if libc.prctl(24, capability, 0, 0, 0) != 0:
                raise OSError(ctypes.get_errno(), "prctl(PR_CAPBSET_DROP)")


def test_an_unreadable_file_is_named_by_position_and_its_path_stays_out_of_the_job_log(tmp_path, small_grid,
                                                                                      small_dwi, patient, uids):
    """An OSError's text holds the path ("Permission denied: '/data/Testpatient_Herbert/DWI/...'"); the job's
    traceback (its log) must show neither it nor the chained error."""
    folder = tmp_path / "Testpatient_Herbert_MRN7654321" / "DWI"
    volumes, bvals = small_dwi
    files = write_dwi_series(folder, volumes, bvals, small_grid, "siemens", patient, uids)
    files[2].chmod(0o000)
    script = textwrap.dedent(f"""
        from dwisynth.dicom import read_series_headers
        read_series_headers({str(folder)!r}, source="multicenter/sub-T24 DWI (dicom_dir in the sample sheet)")
    """)
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                          preexec_fn=_without_reading_every_file)
    assert proc.returncode == 1 and "DicomSeriesError: multicenter/sub-T24 DWI" in proc.stderr, proc.stderr
    assert f"file 3 of {len(files)} (by name): not a readable DICOM image (Permission denied" in proc.stderr
    assert "herbert" not in proc.stderr.casefold() and "MRN" not in proc.stderr, proc.stderr


def test_dcm2niix_output_is_scrubbed_in_one_pass_so_counts_and_labels_stay_right(tmp_path):
    """Numbered file names (a count is not a name), a labelled file is never relabelled, and a subfolder
    whose name holds a space is cut with the rest of its line."""
    from dwisynth.convert import _without_file_names

    folder = tmp_path / "Doe_Jane" / "DWI"
    folder.mkdir(parents=True)
    for name in ("1", "2", "24", "3", "4", "Doe_IM5.dcm"):
        (folder / name).write_bytes(b"")
    said = (f"Found 24 DICOM file(s)\nUnable to decode {folder}/3\nwarning: Doe_IM5.dcm is odd\n"
            f"skipping {folder}/Doe Jane old/x.dcm (no image)\n")
    text = _without_file_names(said, folder, "multicenter/sub-T25 DWI")
    assert text.splitlines() == ["Found 24 DICOM file(s)", "Unable to decode file 4 of 6 (by name)",
                                 "warning: file 6 of 6 (by name) is odd", "skipping multicenter/sub-T25 DWI"], text


def test_dcm2niix_failing_on_a_file_names_it_by_position_never_by_folder_or_file_name(tmp_path, small_grid, small_dwi,
                                                                                     patient, uids):
    """dcm2niix prints the paths of the files it fails on; the message (it reaches logs/) keeps what went
    wrong and names the file as the header checks do."""
    volumes, bvals = small_dwi
    folder = tmp_path / "Testpatient_Herbert_MRN7654321" / "DWI"
    files = write_dwi_series(folder, volumes, bvals, small_grid, "standard", patient, uids)
    bad = files[3].rename(folder / "Herbert_slice4.dcm")
    ds = pydicom.dcmread(bad)  # damaged JPEG 2000 pixel data: the header checks pass, dcm2niix cannot decode it
    ds.file_meta.TransferSyntaxUID = pydicom.uid.JPEG2000Lossless
    ds.PixelData = pydicom.encaps.encapsulate([b"\xff\x4f\xff\x51" + bytes(20)])
    ds["PixelData"].VR, ds["PixelData"].is_undefined_length = "OB", True
    ds.save_as(bad, enforce_file_format=True)
    position = sorted(p.name for p in folder.iterdir()).index(bad.name) + 1
    with pytest.raises(DicomSeriesError, match="dcm2niix failed") as error:
        convert_series(folder, tmp_path / "out", "T25", "DWI", log=lambda *_: None,
                       source="multicenter/sub-T25 DWI (dicom_dir in the sample sheet)")
    message = str(error.value)
    assert f"file {position} of {len(files)} (by name)" in message, message
    assert "herbert" not in message.casefold() and "MRN" not in message and str(tmp_path) not in message
    assert _only_outputs(tmp_path / "out") == []
