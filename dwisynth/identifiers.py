"""Patient and site identifiers: which ones a DICOM series carries, and whether any survives in a file.

Matching is by whole tokens of *values*, never of keys and never by substring: a surname "Echo" must
not match the sidecar key `EchoTime`, and "Ann" must not match "Annual". A token is a run of digits or
a run of letters (case-folded, any script), so "20250101", "2025-01-01" and "2025-01-01T12:00" are
all found for the scan date 20250101. A multi-token identifier (full name, institution, UID, address)
must appear as the same consecutive tokens.

A name part that is also a token of the series' own machine-written descriptors (Manufacturer, model,
sequence names, image type...) is not checked on its own: a patient called Philips scanned on a Philips
scanner cannot be told apart from the vendor field, which must stay. Their full name is still checked.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path

TOKEN = re.compile(r"\d+|[^\W\d_]+")

# attribute -> kind; every value of these is an identifier
IDENTIFYING_ATTRIBUTES = {
    "PatientName": "name", "OtherPatientNames": "name", "PatientBirthName": "name",
    "PatientMotherBirthName": "name", "ReferringPhysicianName": "name", "PerformingPhysicianName": "name",
    "OperatorsName": "name", "NameOfPhysiciansReadingStudy": "name", "RequestingPhysician": "name",
    "PatientID": "id", "OtherPatientIDs": "id", "IssuerOfPatientID": "id", "AccessionNumber": "id",
    "DeviceSerialNumber": "id", "StudyID": "id",
    "PatientBirthDate": "date", "StudyDate": "date", "SeriesDate": "date", "AcquisitionDate": "date",
    "ContentDate": "date",
    "InstitutionName": "site", "InstitutionAddress": "site", "InstitutionalDepartmentName": "site",
    "StationName": "site", "PatientAddress": "site", "PatientTelephoneNumbers": "site",
    "StudyInstanceUID": "uid", "SeriesInstanceUID": "uid", "SOPInstanceUID": "uid", "FrameOfReferenceUID": "uid",
}
# Machine-written enumerations and vendor strings, never typed by hand: a name part among their tokens
# is ambiguous on its own (see the module docstring).
DESCRIPTOR_ATTRIBUTES = (
    "Manufacturer", "ManufacturerModelName", "SoftwareVersions", "Modality", "ImageType", "ScanningSequence",
    "SequenceVariant", "ScanOptions", "SequenceName", "MRAcquisitionType", "BodyPartExamined", "PatientPosition",
    "PatientSex", "InPlanePhaseEncodingDirection",
)
# Identifiers shorter than this are too common to test (a one-letter initial, a StudyID "1"); an ID of
# digits only needs 6 (a PatientID "1000" would match every b = 1000).
MIN_ID_CHARS = {"name": 2, "id": 3, "date": 8, "site": 3, "uid": 8}
MIN_NUMERIC_ID_DIGITS = 6


def tokens(text) -> tuple[str, ...]:
    return tuple(TOKEN.findall(str(text).casefold()))


@dataclass(frozen=True)
class Identifier:
    """One identifying value as consecutive tokens, and the DICOM attribute it came from."""

    tokens: tuple[str, ...]
    attribute: str

    def __str__(self) -> str:  # what an error message may show: the attribute, never the value
        return self.attribute


def _values(element_value) -> list[str]:
    if element_value is None:
        return []
    if isinstance(element_value, (list, tuple)) or type(element_value).__name__ == "MultiValue":
        return [str(v) for v in element_value if str(v).strip()]
    text = str(element_value).strip()
    return [text] if text else []


def header_values(headers, attributes) -> set[tuple[str, str]]:
    """(attribute, value) of every attribute in every header. Each distinct raw value is converted once: a
    series' files share most of them, and pydicom's conversion, not reading, is what costs (300 files x 40
    attributes took half a second per series)."""
    from pydicom.datadict import tag_for_keyword

    import dwisynth.dicom  # noqa: F401  (converts values without pydicom's warnings, which echo them)

    keyword = {tag_for_keyword(attribute): attribute for attribute in attributes}
    wanted = set(keyword) - {None}
    found: set[tuple[str, str]] = set()
    seen = set()
    for ds in headers:
        for tag in wanted.intersection(ds.keys()):  # most attributes are absent: a set operation skips them
            element = ds.get_item(tag)
            raw = (int(tag), element.value if isinstance(element.value, bytes) else repr(element.value))
            if raw in seen:
                continue
            seen.add(raw)
            found.update((keyword[tag], value) for value in _values(ds[tag].value))
    return found


def descriptor_tokens(headers) -> set[str]:
    return {t for _, value in header_values(headers, DESCRIPTOR_ATTRIBUTES) for t in tokens(value)}


def series_identifiers(headers, also_ambiguous=()) -> set[Identifier]:
    """Every identifier a series' headers carry, in the token forms it may be written in.

    also_ambiguous: other fixed strings the outputs legitimately hold (the converter's version, whose
    release date could equal a scan date); a single token of theirs is not checked on its own.
    """
    ambiguous = descriptor_tokens(headers) | {t for text in also_ambiguous for t in tokens(text)}
    return identifiers_from_values(header_values(headers, IDENTIFYING_ATTRIBUTES), ambiguous)


def identifiers_from_values(values, ambiguous=frozenset()) -> set[Identifier]:
    """Identifiers of (DICOM attribute, value) pairs, e.g. {("PatientName", "Doe^Jane")}; ambiguous: tokens
    not checked on their own."""
    found: set[Identifier] = set()
    for attribute, value in values:
        found.update(_forms(str(value).strip(), attribute, IDENTIFYING_ATTRIBUTES[attribute], ambiguous))
    return found


def _forms(value: str, attribute: str, kind: str, ambiguous: set[str]) -> set[Identifier]:
    if len(value.replace("^", "").strip()) < MIN_ID_CHARS[kind]:
        return set()
    if kind == "id" and value.isdigit() and len(value) < MIN_NUMERIC_ID_DIGITS:
        return set()
    forms = {tokens(value)}
    if kind == "name":
        parts = tokens(value)
        forms.update((p,) for p in parts if len(p) >= MIN_ID_CHARS["name"] and not p.isdigit())
        forms.add(tuple(reversed(parts)))  # "Jane Doe" for Doe^Jane
    if kind == "date" and len(value) == 8 and value.isdigit():
        forms.add((value[:4], value[4:6], value[6:]))  # 2025-01-01, 2025/01/01, 2025-01-01T12:00
        forms.add((value[6:], value[4:6], value[:4]))  # 01.01.2025
    return {Identifier(t, attribute) for t in forms if t and not (len(t) == 1 and t[0] in ambiguous)}


def find_identifiers_in_text(text: str, identifiers) -> set[Identifier]:
    """The identifiers whose tokens occur, consecutively and whole, in text."""
    found = tokens(text)
    single = set(found)
    joined = " " + " ".join(found) + " "
    return {i for i in identifiers
            if (i.tokens[0] in single if len(i.tokens) == 1 else " " + " ".join(i.tokens) + " " in joined)}


def _json_values(obj) -> list[str]:
    if isinstance(obj, dict):
        return [v for value in obj.values() for v in _json_values(value)]
    if isinstance(obj, list):
        return [v for value in obj for v in _json_values(value)]
    return [] if obj is None else [str(obj)]


def searchable_text(path: Path) -> str:
    """A file's name and the text it holds that could carry an identifier: JSON values (not keys), a
    NIfTI's free-text header fields and extensions, any other file's text."""
    path = Path(path)
    parts = [path.name]
    if path.name.endswith((".nii.gz", ".nii")):
        import nibabel as nib

        header = nib.load(path).header
        # descrip is dcm2niix's "TE=70;Time=120000.000;phase=1": its values, not its keys
        descrip = bytes(header["descrip"]).decode("utf-8", errors="ignore")
        parts += [item.split("=", 1)[-1] for item in descrip.split(";")]
        parts += [bytes(header[f]).decode("utf-8", errors="ignore") for f in ("aux_file", "intent_name")]
        parts += [bytes(e.get_content() or b"").decode("utf-8", errors="ignore") for e in header.extensions]
    elif path.suffix == ".json":
        try:
            parts += _json_values(json.loads(path.read_text(encoding="utf-8", errors="ignore")))
        except json.JSONDecodeError:
            parts.append(path.read_text(errors="ignore"))
    else:
        parts.append(path.read_bytes().decode("utf-8", errors="ignore"))
    return "\n".join(parts)


def find_identifiers(paths, identifiers) -> list[tuple[str, Identifier]]:
    """(file, identifier) for every identifier found in a file's name or content."""
    return [(str(path), i) for path in paths
            for i in sorted(find_identifiers_in_text(searchable_text(path), identifiers), key=str)]
