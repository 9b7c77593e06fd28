"""`dwisynth scan`: every series of a DICOM tree is a row or a '# skipped' line with its reason, through
symbolic links (datalad / git-annex trees), and the draft validates with no patient identifier in it."""

import dataclasses
import os
import subprocess
import sys

import numpy as np
import pydicom
import pytest

from dwisynth.config import read_sample_sheet
from dwisynth.convert import convert_series
from dwisynth.dicom import series_uids, write_ct_series, write_dwi_series, write_enhanced_dwi_series
from dwisynth.identifiers import find_identifiers_in_text, series_identifiers
from dwisynth.scan import report_lines, scan_tree, write_drafted_sheet


def dwisynth_scan(root, sheet):
    return subprocess.run([sys.executable, "-m", "dwisynth.cli", "scan", str(root), "-o", str(sheet)],
                          capture_output=True, text=True)


def patient_number(patient, n):
    return dataclasses.replace(patient, patient_id=f"MRN76543{n:02d}")


def write_dwi(folder, small_grid, small_dwi, patient, number, vendor="siemens", **kwargs):
    volumes, bvals = small_dwi
    return write_dwi_series(folder, volumes, bvals, small_grid, vendor, patient, series_uids("scan", number),
                            body_part="HEAD", **kwargs)


def retype(files, image_type, description=None):
    """Rewrite what a scanner writes for another kind of series (ADC map, localizer, directional DWI)."""
    for path in files:
        ds = pydicom.dcmread(path)
        ds.ImageType = image_type
        if description is not None:
            ds.SeriesDescription = description
        ds.save_as(path)


def identifiers_in(text, root):
    """The identifiers of every DICOM header under root that text holds, as conversion checks its outputs."""
    headers = [pydicom.dcmread(path, stop_before_pixels=True) for path in root.rglob("*.dcm")]
    return {str(found) for found in find_identifiers_in_text(text, series_identifiers(headers))}


def test_series_folders_that_are_symbolic_links_are_all_found(tmp_path, small_grid, small_dwi, patient):
    # a datalad-like tree: the export's series folders are links into a store under the same root
    root = tmp_path / "dataset"
    for n, vendor in enumerate(("siemens", "ge", "philips"), 1):
        write_dwi(root / ".store" / f"obj{n}", small_grid, small_dwi, patient_number(patient, n), n, vendor)
        (root / "export" / f"case{n}").mkdir(parents=True)
        (root / "export" / f"case{n}" / "DWI").symlink_to(root / ".store" / f"obj{n}", target_is_directory=True)

    scan = scan_tree(root, cohort="c1")

    assert list(scan.sheet["dicom_dir"]) == [str(root / "export" / f"case{n}" / "DWI") for n in (1, 2, 3)]
    assert list(scan.sheet["vendor"]) == ["siemens", "ge", "philips"]
    assert list(scan.sheet["subject"]) == ["S0001", "S0002", "S0003"]
    assert scan.skipped == [] and report_lines(scan, root) == []


def test_series_whose_files_are_symbolic_links_are_found_and_convert(tmp_path, small_grid, small_dwi, patient):
    # a git-annex tree: each file is a link into .git/annex/objects, which also holds a (hidden) second copy
    root = tmp_path / "dataset"
    objects = root / ".git" / "annex" / "objects"
    files = write_dwi(objects, small_grid, small_dwi, patient, 1)
    series = root / "sourcedata" / "DWI"
    series.mkdir(parents=True)
    for path in files:
        (series / path.name).symlink_to(os.path.relpath(path, series))
    (series / "IM_99999.dcm").symlink_to("../../.git/annex/objects/not-fetched")  # content not fetched

    scan = scan_tree(root, cohort="c1")

    assert list(scan.sheet["dicom_dir"]) == [str(series)] and list(scan.sheet["review"]) == [""]
    assert scan.links_broken == [series / "IM_99999.dcm"]
    assert report_lines(scan, root) == [f"# not followed: link {series / 'IM_99999.dcm'} leads nowhere (a "
                                        "git-annex file not fetched? `datalad get` it, or remove the link)"]
    (series / "IM_99999.dcm").unlink()
    record = convert_series(series, tmp_path / "out", "S0001", "DWI", log=lambda *_: None)
    assert record["bvals"] == small_dwi[1] and record["n_dicom_files"] == len(files)


def test_a_link_cycle_is_walked_once(tmp_path, small_grid, small_dwi, patient):
    root = tmp_path / "export"
    files = write_dwi(root / "case" / "DWI", small_grid, small_dwi, patient, 1)
    (root / "case" / "DWI" / "again").symlink_to(root, target_is_directory=True)  # back up to the root
    (root / "case" / "here").symlink_to(".", target_is_directory=True)  # itself
    (root / "a").symlink_to("b")  # two links that lead to each other lead nowhere
    (root / "b").symlink_to("a")

    scan = scan_tree(root)

    assert list(scan.sheet["dicom_dir"]) == [str(root / "case" / "DWI")] and scan.skipped == []
    assert sorted(scan.links_broken) == [root / "a", root / "b"]
    assert len(files) == len(small_dwi[1]) * small_grid.shape[2]


def test_a_link_leading_outside_the_root_is_reported_and_not_followed(tmp_path, small_grid, small_dwi, patient):
    root, elsewhere = tmp_path / "export", tmp_path / "Testpatient_Herbert"  # a folder named after the patient
    write_dwi(root / "case1" / "DWI", small_grid, small_dwi, patient_number(patient, 1), 1)
    files = write_dwi(elsewhere / "DWI", small_grid, small_dwi, patient_number(patient, 2), 2)
    (root / "case2").symlink_to(elsewhere / "DWI", target_is_directory=True)
    (root / "case3").mkdir()
    (root / "case3" / files[0].name).symlink_to(files[0])

    proc = dwisynth_scan(root, tmp_path / "samples.tsv")

    assert proc.returncode == 0, proc.stderr
    sheet = read_sample_sheet(tmp_path / "samples.tsv")
    assert list(sheet["dicom_dir"]) == [str(root / "case1" / "DWI")]
    fix = ("scan a folder that holds both the links and what they lead to (for a datalad / git-annex dataset its "
           "top folder), or copy the series under the root with `cp -rL`")
    comments = [line for line in (tmp_path / "samples.tsv").read_text().splitlines() if line.startswith("#")]
    assert comments == [
        f"# not followed: link {root / 'case2'} leads outside {root}: {fix}",
        f"# not followed: 1 file link in {root / 'case3'} leads outside {root}: {fix}",
    ]
    assert f"2 symbolic link(s) lead outside {root} and were not followed" in proc.stderr and fix in proc.stderr
    assert "Testpatient" not in proc.stderr + (tmp_path / "samples.tsv").read_text()  # nor where links lead


def test_enhanced_dwi_derived_adc_and_localizer_are_each_listed_with_what_was_done(
        tmp_path, small_grid, small_dwi, patient):
    root = tmp_path / "export"
    volumes, bvals = small_dwi
    write_enhanced_dwi_series(root / "s1", volumes, bvals, small_grid, patient, series_uids("scan", 1),
                              series_description="ep2d_diff_b1000_TRACEW", body_part="HEAD")
    retype(write_dwi_series(root / "s2", volumes[-1:], bvals[-1:], small_grid, "siemens", patient,
                            series_uids("scan", 2), "ep2d_diff_b1000_ADC", "HEAD"),
           ["DERIVED", "PRIMARY", "DIFFUSION", "ADC", "ND"])
    retype(write_dwi(root / "s3", small_grid, small_dwi, patient, 3, series_description="AAHead_Scout"),
           ["ORIGINAL", "PRIMARY", "M", "ND", "NORM"])
    retype(write_dwi(root / "s4", small_grid, small_dwi, patient, 4, series_description="ep2d_diff_phase"),
           ["ORIGINAL", "PRIMARY", "P", "ND"])

    proc = dwisynth_scan(root, tmp_path / "samples.tsv")

    assert proc.returncode == 0, proc.stderr
    sheet = read_sample_sheet(tmp_path / "samples.tsv")  # the workflow's reader validates the draft
    assert sheet[["subject", "organ", "modality", "dicom_dir", "vendor"]].values.tolist() == [
        ["S0001", "brain", "DWI", str(root / "s1"), "siemens"]]
    comments = [line for line in (tmp_path / "samples.tsv").read_text().splitlines() if line.startswith("#")]
    assert comments == [
        f"# skipped: {root / 's2'} (ep2d_diff_b1000_ADC): derived ADC map: the workflow computes its own maps "
        "from the trace-weighted DWI",
        f"# skipped: {root / 's3'} (AAHead_Scout): localizer (named so in its description): not a diffusion series",
        f"# skipped: {root / 's4'} (ep2d_diff_phase): phase image (ImageType P/PHASE): the workflow takes "
        "magnitude images",
    ]
    assert ("skipped 3 series (1 derived map, 1 localizer, 1 phase image); each is a '# skipped:' line at the "
            f"end of {tmp_path / 'samples.tsv'} with its reason") in proc.stderr
    text = (tmp_path / "samples.tsv").read_text() + proc.stdout + proc.stderr
    assert identifiers_in(text, root) == set()


def test_the_trace_series_is_a_patients_row_and_every_other_series_says_why_not(
        tmp_path, small_grid, small_dwi, patient):
    root = tmp_path / "export"
    retype(write_dwi(root / "a_directional", small_grid, small_dwi, patient, 1, "philips"),
           ["ORIGINAL", "PRIMARY", "DIFFUSION", "NONE"])
    write_dwi(root / "b_trace", small_grid, small_dwi, patient, 2, "philips")
    write_dwi(root / "c_b0", small_grid, (small_dwi[0][:1], [0]), patient, 3, "philips")
    other = patient_number(patient, 9)
    hu = np.zeros(small_grid.shape)
    write_ct_series(root / "d_ct", hu, small_grid, other, series_uids("scan", 4))  # no DWI of this patient
    write_ct_series(root / "e_ct", hu, small_grid, patient, series_uids("scan", 5))

    scan = scan_tree(root, cohort="c1")
    write_drafted_sheet(scan, root, tmp_path / "samples.tsv")

    assert read_sample_sheet(tmp_path / "samples.tsv")[["subject", "modality", "dicom_dir"]].values.tolist() == [
        ["S0001", "DWI", str(root / "b_trace")], ["S0001", "CT", str(root / "e_ct")]]
    assert [(s.dicom_dir, s.kind) for s in scan.skipped] == [
        (str(root / "a_directional"), "second DWI"), (str(root / "c_b0"), "one b-value"),
        (str(root / "d_ct"), "CT without DWI")]
    assert scan.skipped[0].reason == (
        f"the same patient has another DWI series, the row for {root / 'b_trace'}; one DWI series per subject: "
        "put this folder in that row's dicom_dir to use this one instead")


def test_a_description_holding_the_patients_name_is_not_shown(tmp_path, small_grid, small_dwi, patient):
    root = tmp_path / "export"
    write_dwi(root / "dwi", small_grid, small_dwi, patient, 1)
    retype(write_dwi(root / "loc", small_grid, small_dwi, patient, 2), ["ORIGINAL", "PRIMARY", "LOCALIZER"],
           "localizer Herbert Testpatient")

    scan = scan_tree(root)

    assert report_lines(scan, root) == [
        f"# skipped: {root / 'loc'} (description not shown: it holds a patient identifier): localizer (ImageType "
        "LOCALIZER): not a diffusion series"]


def test_a_tree_with_no_series_the_workflow_takes_fails_and_writes_no_sheet(tmp_path, small_grid, small_dwi,
                                                                            patient):
    root = tmp_path / "export"
    retype(write_dwi(root / "adc", small_grid, small_dwi, patient, 1), ["DERIVED", "PRIMARY", "DIFFUSION", "FA"])
    (root / "notes.txt").write_text("export notes\n")

    proc = dwisynth_scan(root, tmp_path / "samples.tsv")

    assert proc.returncode == 2 and not (tmp_path / "samples.tsv").exists()
    assert (f"{root}: no series the workflow takes (trace-weighted DWI with several b-values, or CT with its "
            "subject's DWI); found 1 derived map, 1 file(s) not DICOM or not readable; no sheet written") in proc.stderr


@pytest.mark.parametrize("changes, reason", [
    ({"ImageType": ["DERIVED", "PRIMARY", "DIFFUSION", "EADC"]}, "derived exponential ADC map:"),
    ({"ImageType": ["DERIVED", "PRIMARY", "DIFFUSION", "ND"], "SeriesDescription": "ep2d_diff_ColFA"},
     "derived colour FA map:"),
    ({"Modality": "OT"}, "Modality OT: dwisynth takes MR DWI and CT"),
    ({"SOPClassUID": "1.2.840.10008.5.1.4.1.1.7"}, "secondary capture"),
    ({"ImageType": ["ORIGINAL", "PRIMARY", "M", "ND"], "SeriesDescription": "t2_tse_tra"},
     "MR with no diffusion b-value in its tags: not a DWI series"),
])
def test_each_kind_of_series_the_workflow_does_not_take_is_named(tmp_path, small_grid, small_dwi, patient,
                                                                 changes, reason):
    files = write_dwi(tmp_path / "series", small_grid, small_dwi, patient, 1, "standard")
    for path in files:
        ds = pydicom.dcmread(path)
        for keyword, value in changes.items():
            setattr(ds, keyword, value)
        if "t2_tse_tra" in changes.values():  # a T2 image carries no b-value
            del ds[0x00189087], ds[0x00189075]
        ds.save_as(path)

    scan = scan_tree(tmp_path)

    assert scan.sheet.empty and [s.reason.startswith(reason) for s in scan.skipped] == [True]


def test_an_enhanced_series_of_one_b_value_per_file_is_a_row(tmp_path, small_grid, small_dwi, patient):
    volumes, bvals = small_dwi  # each file's b-value in the groups shared by its frames
    write_enhanced_dwi_series(tmp_path / "xa", volumes, bvals, small_grid, patient, series_uids("scan", 1),
                              volumes_per_file=1, shared_diffusion=True, private_bvalue=False, body_part="HEAD")

    scan = scan_tree(tmp_path)

    assert scan.sheet[["dicom_dir", "modality", "review"]].values.tolist() == [[str(tmp_path / "xa"), "DWI", ""]]
    assert scan.skipped == []


def test_a_dwi_series_holding_some_derived_maps_is_a_row_marked_for_review(tmp_path, small_grid, small_dwi,
                                                                           patient):
    files = write_dwi(tmp_path / "dwi", small_grid, small_dwi, patient, 1, "philips")
    retype(files[-small_grid.shape[2]:], ["DERIVED", "PRIMARY", "ADC", "ADC"])  # as Philips may export them

    scan = scan_tree(tmp_path)

    assert scan.sheet[["dicom_dir", "review"]].values.tolist() == [[str(tmp_path / "dwi"), "holds derived maps"]]
    assert scan.skipped == []


@pytest.mark.parametrize("blank_id", ["", "ANONYMOUS"])
def test_patients_with_a_blank_or_placeholder_id_are_told_apart_by_study(tmp_path, small_grid, small_dwi, patient,
                                                                          blank_id):
    # anonymised exports often blank the ID or write one placeholder for everyone: three patients, three rows
    root = tmp_path / "export"
    for n in range(3):
        anonymous = dataclasses.replace(patient, patient_id=blank_id, name=f"Case{n}^Anon")
        volumes, bvals = small_dwi
        write_dwi_series(root / f"P{n}", volumes, bvals, small_grid, "siemens", anonymous,
                         series_uids(f"case{n}", 1), body_part="HEAD")  # each its own study

    scan = scan_tree(root, cohort="c1")

    assert scan.sheet[["subject", "dicom_dir"]].values.tolist() == [
        [f"S{n + 1:04d}", str(root / f"P{n}")] for n in range(3)]
    assert scan.skipped == []


def test_one_id_with_two_names_is_two_patients_and_a_ct_comes_from_the_dwis_study(tmp_path, small_grid, small_dwi,
                                                                                 patient):
    root = tmp_path / "export"
    write_dwi(root / "a_dwi", small_grid, small_dwi, patient, 1)
    other_site = dataclasses.replace(patient, name="Other^Person")  # the same MRN at another hospital
    write_dwi(root / "b_dwi", small_grid, small_dwi, other_site, 2)
    hu = np.zeros(small_grid.shape)
    earlier_study = dict(series_uids("scan-earlier", 3))
    write_ct_series(root / "c_ct_other_study", hu, small_grid, patient, earlier_study)
    same_study = series_uids("scan", 4)  # write_dwi's seed: the study of a_dwi
    write_ct_series(root / "d_ct_same_study", hu, small_grid, patient, same_study)

    scan = scan_tree(root, cohort="c1")

    assert scan.sheet[["subject", "modality", "dicom_dir"]].values.tolist() == [
        ["S0001", "DWI", str(root / "a_dwi")], ["S0002", "DWI", str(root / "b_dwi")],
        ["S0001", "CT", str(root / "d_ct_same_study")]]
    assert [(s.dicom_dir, s.kind) for s in scan.skipped] == [(str(root / "c_ct_other_study"), "second CT")]
