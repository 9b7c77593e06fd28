"""Patient and site identifiers: which ones a DICOM series carries, and whether any survives in a file.

Matching is by whole tokens of *values*, never of keys and never by substring: a surname "Echo" must
not match the sidecar key `EchoTime`, and "Ann" must not match "Annual". A token is a run of digits or
a run of letters (case-folded, any script), so "20250101", "2025-01-01" and "2025-01-01T12:00" are
all found for the scan date 20250101. A multi-token identifier (full name, institution, UID, address)
must appear as the same consecutive tokens.

An identifying value that is also public text is not checked: a value that appears only where a
non-identifying field or dwisynth itself put it is no leak, and a leak of it could not be told apart. Public
text is the series' machine-written descriptors (Manufacturer, model, software versions, sequence names,
image type... and the converter's kept enumerations and version) and dwisynth's own vocabulary (BIDS
entities and the words of its file names such as sub, ses, dwi; organ and network names; the placeholders
anonymisers write). A single-token identifier is public when the token is (a patient called Philips on a
Philips scanner, a name part "sub" beside the file name sub-01_dwi.nii.gz); a longer one when its tokens
run consecutively inside one descriptor value (a StationName equal to the model name "Vantage Orian", which
the sidecar keeps and a series description may repeat). The rest stays checked wherever it appears, free
text included: the full name of a patient called Brain^Walter, or a StationName of its own typed into the
SeriesDescription.

Numbers (JSON numbers, .bval/.bvec content) are not searched: they are written from numeric tags and
gradient tables, which carry no typed identifier, and their digits (an ImagingFrequency of 123.253312)
would collide with numeric patient IDs.
"""

from __future__ import annotations

import functools
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
    "PatientSex", "InPlanePhaseEncodingDirection", "ReceiveCoilName", "TransmitCoilName", "PulseSequenceName",
)
# Words anonymisers and research exports write where a name, ID or site would go; they name no one.
PLACEHOLDER_WORDS = frozenset({
    "anonymous", "anonymized", "anonymised", "anon", "deidentified", "removed", "redacted", "unknown", "none",
    "research", "study", "phantom", "volunteer", "test", "qa",
})
# BIDS entities a research export or dwisynth writes into names (sub-01_ses-02_acq-b1000_dwi), and diffusion
# words its suffixes and descriptions use; the words of dwisynth's own file names come from dwisynth.layout.
BIDS_AND_DIFFUSION_WORDS = frozenset({
    "sub", "ses", "task", "acq", "dir", "run", "rec", "desc", "space", "dwi", "sbref", "ct", "adc", "cdwi",
    "trace", "diffusion", "diff", "dti", "epi",
})
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


@dataclass(frozen=True)
class PublicText:
    """Text that is no identifier wherever it appears: its words, and each value as one run of tokens."""

    words: frozenset[str]
    runs: str  # " vantage orian \n v 1 0 20260724 \n": a run never spans two values

    @classmethod
    def of(cls, texts=(), words=()) -> PublicText:
        runs = [tokens(text) for text in texts]
        return cls(frozenset(words).union(*runs), "".join(f" {' '.join(run)} \n" for run in runs))

    def holds(self, form: tuple[str, ...]) -> bool:
        if len(form) == 1:
            return form[0] in self.words
        return f" {' '.join(form)} " in self.runs


def _fixed_parts_of_paths(function) -> list[str]:
    """A layout function's paths with every argument (cohort, subject...) empty but the modality."""
    import inspect

    from dwisynth import layout

    parameters = list(inspect.signature(function).parameters)
    results = []
    for modality in layout.MODALITY_SUFFIX if "modality" in parameters else [None]:
        result = function(*[modality if p == "modality" else "" for p in parameters])
        results += list(result.values()) if isinstance(result, dict) else [result]
    return results


@functools.lru_cache(maxsize=1)
def tool_vocabulary() -> frozenset[str]:
    """Words dwisynth writes itself: those of every file name in dwisynth.layout (so a new kind of file needs
    no edit here), BIDS entities, organ and body-part names, and anonymisers' placeholders. Network names are
    apart (`network_vocabulary`): the registry imports torch."""
    import inspect

    from dwisynth import layout
    from dwisynth.viewer.studies import BODY_PART_ORGAN, ORGANS

    paths = [value for name, value in vars(layout).items() if name.isupper() and isinstance(value, str)]
    for name, function in inspect.getmembers(layout, inspect.isfunction):
        if function.__module__ == layout.__name__ and not name.startswith("_"):
            paths += _fixed_parts_of_paths(function)
    words = {t for path in paths for t in tokens(Path(path).name) if not t.isdigit()}
    return frozenset(words | BIDS_AND_DIFFUSION_WORDS | PLACEHOLDER_WORDS | set(ORGANS)
                     | {part.casefold() for part in BODY_PART_ORGAN})


@functools.lru_cache(maxsize=1)
def network_vocabulary() -> PublicText:
    """The registered networks' names ("dc2anet" is the tokens dc 2 anet) as public text."""
    from dwisynth.networks.base import networks

    return PublicText.of(networks())


def series_identifiers(headers, also_public=()) -> set[Identifier]:
    """Every identifier a series' headers carry, in the token forms it may be written in, less those that are
    public text (see the module docstring).

    also_public: other fixed strings the outputs legitimately hold (the converter's version, whose release
    date could equal a scan date; the sidecar's kept enumerations).
    """
    descriptors = [value for _, value in header_values(headers, DESCRIPTOR_ATTRIBUTES)]
    public = PublicText.of([*descriptors, *also_public], tool_vocabulary())
    return identifiers_from_values(header_values(headers, IDENTIFYING_ATTRIBUTES), public)


def identifiers_from_values(values, public=frozenset()) -> set[Identifier]:
    """Identifiers of (DICOM attribute, value) pairs, e.g. {("PatientName", "Doe^Jane")}; public: a PublicText
    whose forms are not checked, or tokens not checked on their own."""
    if not isinstance(public, PublicText):
        public = PublicText.of(words=public)
    found: set[Identifier] = set()
    for attribute, value in values:
        found.update(_forms(str(value).strip(), attribute, IDENTIFYING_ATTRIBUTES[attribute], public))
    return found


def _forms(value: str, attribute: str, kind: str, public: PublicText) -> set[Identifier]:
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
    return {Identifier(t, attribute) for t in forms if t and not public.holds(t)}


def find_identifiers_in_text(text: str, identifiers) -> set[Identifier]:
    """The identifiers whose tokens occur, consecutively and whole, in text."""
    found = tokens(text)
    single = set(found)
    joined = " " + " ".join(found) + " "
    return {i for i in identifiers
            if (i.tokens[0] in single if len(i.tokens) == 1 else " " + " ".join(i.tokens) + " " in joined)}


def _json_values(obj) -> list[str]:
    """The strings of a JSON document (numbers are measurements: see the module docstring)."""
    if isinstance(obj, dict):
        return [v for value in obj.values() for v in _json_values(value)]
    if isinstance(obj, list):
        return [v for value in obj for v in _json_values(value)]
    return [obj] if isinstance(obj, str) else []


def searchable_text(path: Path) -> str:
    """A file's name and the text it holds that could carry an identifier: JSON string values (not keys), a
    NIfTI's free-text header fields and extensions, any other file's text but a .bval/.bvec's numbers."""
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
    elif path.suffix not in (".bval", ".bvec"):
        parts.append(path.read_bytes().decode("utf-8", errors="ignore"))
    return "\n".join(parts)


def find_identifiers(paths, identifiers) -> list[tuple[str, Identifier]]:
    """(file, identifier) for every identifier found in a file's name or content, but network names."""
    found = [(str(path), i) for path in paths
             for i in sorted(find_identifiers_in_text(searchable_text(path), identifiers), key=str)]
    if found:  # only then: the network registry imports torch (3 s per conversion)
        found = [(path, i) for path, i in found if not network_vocabulary().holds(i.tokens)]
    return found
