"""De-identification refuses real leaks only: an identifying value shared with a non-identifying field or
with dwisynth's own vocabulary converts, and appears only where that field or dwisynth put it; the same
value typed into free text beside a real identifier is still refused."""

import json
import re
from pathlib import Path

import numpy as np
import pydicom
import pytest

from dwisynth.convert import convert_series, dcm2niix_version
from dwisynth.dicom import PatientInfo, series_uids, write_dwi_series
from dwisynth.errors import HeaderQCError
from dwisynth.identifiers import (find_identifiers_in_text, identifiers_from_values, searchable_text, tokens,
                                  tool_vocabulary)

SOURCE = "multicenter/sub-T01 DWI (dicom_dir in the sample sheet)"  # as the workflow names a series
BVALS = [0, 1000]


def _release_date() -> str:
    return re.search(r"v1\.0\.(\d{8})", dcm2niix_version()).group(1)


def write_series(folder: Path, grid, name="Testpatient^Herbert", patient_id="MRN7654321", date="20250101",
                 vendor="siemens", **headers) -> dict[str, str]:
    """A two-b DWI series with the given header values; returns every identifying (attribute, value) planted."""
    patient = PatientInfo(name, patient_id, "19571103", headers.pop("InstitutionName", "Saint Ludger Clinic 42"),
                          "77 Kestrel Road, Fairhaven 4455")
    uids = series_uids("collisions", 5, date=date)
    volumes = np.random.default_rng(3).integers(1, 4000, size=(len(BVALS), *grid.shape)).astype(np.uint16)
    headers = {"StationName": "MRC20925", "OperatorsName": "Tech^Sam", "ReferringPhysicianName": "Doctor^Alma",
               **headers}
    for path in write_dwi_series(folder, volumes, BVALS, grid, vendor, patient, uids):
        ds = pydicom.dcmread(path)
        for keyword, value in headers.items():
            setattr(ds, keyword, value)
        ds.save_as(path)
    identifying = {"PatientName": name, "PatientID": patient_id, "PatientBirthDate": patient.birth_date,
                   "InstitutionName": patient.institution, "InstitutionAddress": patient.institution_address,
                   "StudyDate": date, "StudyInstanceUID": uids["study"], "SeriesInstanceUID": uids["series"],
                   "FrameOfReferenceUID": uids["frame"], "AccessionNumber": uids["accession"]}
    return {**identifying, **{k: v for k, v in headers.items() if k in (
        "StationName", "OperatorsName", "ReferringPhysicianName")}}


def _holds(text, run: tuple[str, ...]) -> bool:
    return f" {' '.join(run)} " in f" {' '.join(tokens(text))} "


def places_holding(run: tuple[str, ...], out: Path, log_lines) -> set[str]:
    """Where the token run occurs: "file name", a JSON key of a sidecar or QC record, "log"."""
    found = {"file name" for path in out.iterdir() if _holds(path.name, run)}
    for path in out.glob("*.json"):
        found.update(key for key, value in json.loads(path.read_text()).items() if _holds(str(value), run))
    return found | ({"log"} if _holds(" ".join(log_lines), run) else set())


DESCRIPTION = {"SeriesDescription", "ProtocolName"}
NAMED_BY_DWISYNTH = {"file name", "log"}  # sub-T01_dwi.nii.gz, and the workflow's "multicenter/sub-T01 DWI"

# id: header values, and for each shared value's token run every place it may appear: where the
# non-identifying field or dwisynth put it
COLLISIONS = {
    "station name = model name (Canon classic)": (
        dict(vendor="standard", Manufacturer="CANON_MEC", ManufacturerModelName="Vantage Orian",
             StationName="Vantage Orian"),
        {("vantage", "orian"): {"ManufacturersModelName"}}),
    "station name = model name, repeated in the series description": (
        dict(ManufacturerModelName="Vantage Orian", StationName="Vantage Orian",
             SeriesDescription="Vantage Orian DWI", ProtocolName="Vantage Orian DWI"),
        {("vantage", "orian"): {"ManufacturersModelName", *DESCRIPTION}}),
    "station name = one-word model name": (
        dict(vendor="philips", ManufacturerModelName="Achieva", StationName="ACHIEVA"),
        {("achieva",): {"ManufacturersModelName"}}),
    "institution name = a word of the series description": (
        dict(InstitutionName="RESEARCH", SeriesDescription="research dwi", ProtocolName="research dwi"),
        {("research",): DESCRIPTION}),
    "institution name = manufacturer (a vendor's demo site)": (
        dict(Manufacturer="Siemens Healthineers", InstitutionName="Siemens Healthineers"),
        {("siemens", "healthineers"): {"Manufacturer", "manufacturer"}}),
    "patient-name part sub (a research export's BIDS name)": (
        dict(name="PROJ_sub-017"), {("sub",): NAMED_BY_DWISYNTH}),
    "patient-name part ses": (
        dict(name="PROJ_sub-017_ses-02", SeriesDescription="ses-02_dwi", ProtocolName="ses-02_dwi"),
        {("ses",): DESCRIPTION, ("sub",): NAMED_BY_DWISYNTH}),
    "patient-name part dwi (an Indonesian given name)": (
        dict(name="Dwi^Astuti"), {("dwi",): {"BidsGuess", "modality", *NAMED_BY_DWISYNTH}}),
    "patient-name part = organ in body part and description": (
        dict(name="Brain^Walter", BodyPartExamined="BRAIN", SeriesDescription="DWI brain",
             ProtocolName="DWI brain"),
        {("brain",): {"BodyPart", *DESCRIPTION}}),
    "patient-name part = body part in the description": (
        dict(name="Head^Anna", SeriesDescription="ep2d_diff head", ProtocolName="ep2d_diff head"),
        {("head",): DESCRIPTION}),
    "patient name = project named after a method (dc2anet)": (
        dict(name="dc2anet_sub-03", SeriesDescription="dwi for dc2anet", ProtocolName="dwi for dc2anet"),
        {("dc", "2", "anet"): DESCRIPTION, ("sub",): NAMED_BY_DWISYNTH}),
    "patient name = project named after a method (pix2pix)": (
        dict(name="pix2pix_sub-07", SeriesDescription="pix2pix dwi", ProtocolName="pix2pix dwi"),
        {("pix", "2", "pix"): DESCRIPTION, ("sub",): NAMED_BY_DWISYNTH}),
    "patient ID of b-value digits": (
        dict(patient_id="1000", SeriesDescription="DWI b0 b1000", ProtocolName="DWI b0 b1000"),
        {("1000",): {"bvals", "header_bvals", "log", *DESCRIPTION}}),  # the record's and log's b-values
    "study date = dcm2niix's release date": (
        dict(date=_release_date()), {(_release_date(),): {"ConversionSoftwareVersion", "dcm2niix"}}),
    "study date = the scanner software's build date": (
        dict(SoftwareVersions="R5.7.1 (2025.01.01)"), {("2025", "01", "01"): {"SoftwareVersions"}}),
    "operator name = manufacturer": (
        dict(OperatorsName="SIEMENS"), {("siemens",): {"Manufacturer", "manufacturer", "vendor"}}),
    "referring physician = protocol word": (
        dict(ReferringPhysicianName="RESEARCH", ProtocolName="RESEARCH_ep2d_diff"), {("research",): {"ProtocolName"}}),
    "anonymiser's placeholders in name, ID, institution and comments": (
        dict(name="ANONYMIZED", patient_id="ANONYMIZED", InstitutionName="ANONYMIZED",
             ImageComments="anonymized export"),
        {("anonymized",): {"ImageComments"}}),
}


def _within(form: tuple[str, ...], run: tuple[str, ...]) -> bool:
    return f" {' '.join(form)} " in f" {' '.join(run)} "


@pytest.mark.parametrize("case", COLLISIONS)
def test_identifier_shared_with_a_public_field_converts_and_appears_only_there(tmp_path, small_grid, case):
    headers, shared = COLLISIONS[case]
    planted = write_series(tmp_path / "dcm", small_grid, **headers)
    said = []
    record = convert_series(tmp_path / "dcm", tmp_path / "out", "T01", "DWI", log=said.append, source=SOURCE)
    assert record["checks"] == "passed" and record["bvals"] == [float(b) for b in BVALS]
    outputs = sorted((tmp_path / "out").iterdir())
    assert len(outputs) == 5

    for run, allowed in shared.items():
        found = places_holding(run, tmp_path / "out", said)
        assert found and found <= allowed, (run, found)  # a real collision, and only where public fields put it
    # every other form of every planted identifier is nowhere
    others = {i for i in identifiers_from_values(planted.items()) if not any(_within(i.tokens, r) for r in shared)}
    for text in [searchable_text(p) for p in outputs] + ["\n".join(said)]:
        assert find_identifiers_in_text(text, others) == set()


def test_numeric_patient_id_equal_to_digits_of_a_measurement_converts(tmp_path, small_grid):
    """Numbers are written from numeric tags, never typed: the ImagingFrequency's digits are no patient ID."""
    write_series(tmp_path / "dcm", small_grid, patient_id="253312", ImagingFrequency=123.253312)
    record = convert_series(tmp_path / "dcm", tmp_path / "out", "T01", "DWI", log=lambda *_: None, source=SOURCE)
    sidecar = json.loads((tmp_path / "out" / "sub-T01_dwi.json").read_text())
    assert record["checks"] == "passed" and sidecar["ImagingFrequency"] == 123.253312


# Real leaks beside a collision or in a free-text field (names typed into SeriesDescription, short name parts
# and dates are tested in test_convert.py)
LEAKS = {
    "patient ID in the protocol name": (dict(ProtocolName="MRN7654321 dwi"), "PatientID"),
    "birth date in the image comments": (dict(ImageComments="born 1957-11-03"), "PatientBirthDate"),
    "institution in the series description": (dict(SeriesDescription="Saint Ludger Clinic 42 DWI"),
                                               "InstitutionName"),
    "address in the image comments": (dict(ImageComments="77 Kestrel Road, Fairhaven 4455"), "InstitutionAddress"),
    "study UID in the image comments": (dict(ImageComments="uid {study}"), "StudyInstanceUID"),
    "accession number in the protocol name": (dict(ProtocolName="dwi {accession}"), "AccessionNumber"),
    "a station name of its own in the series description": (dict(SeriesDescription="MRC20925 dwi"), "StationName"),
    "the rest of a name whose part is dwi": (dict(name="Dwi^Astuti", SeriesDescription="DWI Astuti"), "PatientName"),
    "a full name whose part is an organ": (dict(name="Brain^Walter", ImageComments="Walter Brain"), "PatientName"),
    "the station beside the model it equals": (dict(ManufacturerModelName="Vantage Orian", StationName="Orian 7",
                                                    SeriesDescription="Vantage Orian 7 DWI"), "StationName"),
    "a referring physician's own name in the protocol": (dict(ProtocolName="dwi Doctor Alma"),
                                                          "ReferringPhysicianName"),
}


@pytest.mark.parametrize("case", LEAKS)
def test_real_leak_is_refused_naming_the_attribute_never_the_value(tmp_path, small_grid, case):
    headers, attribute = LEAKS[case]
    uids = series_uids("collisions", 5)
    headers = {k: v.format(**uids) if isinstance(v, str) else v for k, v in headers.items()}
    planted = write_series(tmp_path / "dcm", small_grid, **headers)
    said = []
    with pytest.raises(HeaderQCError, match=f"identifiers survived.*{attribute}") as error:
        convert_series(tmp_path / "dcm", tmp_path / "out", "T01", "DWI", log=said.append, source=SOURCE)
    assert not (tmp_path / "out").exists()
    identifiers = identifiers_from_values(planted.items(), tool_vocabulary())  # the message may say "DWI"
    assert find_identifiers_in_text(str(error.value) + "\n".join(said), identifiers) == set()


def test_subject_label_holding_the_patient_id_is_refused_without_echoing_it(tmp_path, small_grid):
    """The file names are the tool's, but the label in them is the user's: a label equal to the patient ID
    leaks it into every output name."""
    planted = write_series(tmp_path / "dcm", small_grid)
    with pytest.raises(HeaderQCError, match="subject label.*PatientID.*pseudonym") as error:
        convert_series(tmp_path / "dcm", tmp_path / "out", "MRN7654321", "DWI", log=lambda *_: None,
                       source="multicenter/a subject DWI")
    assert find_identifiers_in_text(str(error.value), identifiers_from_values(planted.items())) == set()
    assert not (tmp_path / "out").exists()


def test_public_text_covers_a_run_within_one_value_never_across_two():
    """Two descriptors "Vantage" and "Orian" do not make a StationName "Vantage Orian" public; the model name
    "Vantage Orian 1.5T" does, and so does a name part that is a word of dwisynth's file names."""
    from dwisynth.identifiers import PublicText, series_identifiers

    apart, model = PublicText.of(["Vantage", "Orian"]), PublicText.of(["Vantage Orian 1.5T"])
    assert not apart.holds(("vantage", "orian")) and model.holds(("vantage", "orian"))
    assert not model.holds(("orian", "vantage")) and not model.holds(("orian", "1", "5", "t", "x"))

    ds = pydicom.Dataset()
    ds.PatientName, ds.StationName, ds.ManufacturerModelName = "Norm^Xfm-Kowalski", "Vantage Orian", "Vantage"
    found = {(i.attribute, " ".join(i.tokens)) for i in series_identifiers([ds])}
    assert found == {("PatientName", "norm xfm kowalski"), ("PatientName", "kowalski xfm norm"),
                     ("PatientName", "kowalski"), ("StationName", "vantage orian")}  # desc-norm, _xfm.json
