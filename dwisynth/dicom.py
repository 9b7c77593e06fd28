"""Write and read DICOM series with each vendor's diffusion b-value convention.

Vendors differ in where they store the b-value, and dcm2niix follows each one
(docs/design.md, Conversion):

========== ============================ ==========================================
vendor     Manufacturer                 b-value tag
========== ============================ ==========================================
siemens    SIEMENS                      (0019,100C) IS, creator SIEMENS MR HEADER
ge         GE MEDICAL SYSTEMS           (0043,1039) IS, first value - 1e9
philips    Philips Medical Systems      (2001,1003) FL, creator Philips Imaging DD 001
standard   any (Canon here)             (0018,9087) FD + (0018,9075) ISOTROPIC/NONE
========== ============================ ==========================================

Enhanced multi-frame files (Enhanced MR and Legacy Converted Enhanced MR, e.g. Siemens XA) hold many frames,
each with its b-value in MRDiffusionSequence > DiffusionBValue of its functional groups (per frame, or shared
by all): `frame_diffusion` and `image_frames` read one file's frames, `write_enhanced_dwi_series` writes them.
"""

from __future__ import annotations

import io
import mmap
import struct
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pydicom
from pydicom.datadict import DicomDictionary, tag_for_keyword
from pydicom.dataelem import RawDataElement, empty_value_for_VR
from pydicom.dataset import Dataset, FileDataset, FileMetaDataset
from pydicom.sequence import Sequence
from pydicom.tag import BaseTag
from pydicom.uid import ExplicitVRLittleEndian, generate_uid

from dwisynth.errors import DicomSeriesError
from dwisynth.geometry import Grid

# Header values are patient data. pydicom 3 checks a value against its VR when it converts it (on first access,
# long after dcmread) and warns and logs an invalid one with the value itself ("Invalid value for VR UI:
# '1.2.Doe.3'"), which reaches job logs. dwisynth never relies on that check, so it is off for reading, for the
# whole process: a setting scoped around dcmread would miss the later conversions, and a scoped change of this
# global would race between the viewer's threads. Every dwisynth reader of DICOM imports this module.
pydicom.config.settings.reading_validation_mode = pydicom.config.IGNORE

MR_IMAGE_STORAGE = "1.2.840.10008.5.1.4.1.1.4"
CT_IMAGE_STORAGE = "1.2.840.10008.5.1.4.1.1.2"
GE_B_OFFSET = 1_000_000_000
IN_MEMORY_BYTES = 8 << 20  # larger (multi-frame) files are parsed from disk

MANUFACTURERS = {
    "siemens": "SIEMENS",
    "ge": "GE MEDICAL SYSTEMS",
    "philips": "Philips Medical Systems",
    "standard": "Canon Medical Systems",
}
VENDORS = tuple(MANUFACTURERS)


@dataclass(frozen=True)
class PatientInfo:
    """Identifiers a hospital export carries; they must never leave conversion."""

    name: str
    patient_id: str
    birth_date: str  # YYYYMMDD
    institution: str
    institution_address: str
    sex: str = "O"


def vendor_from_manufacturer(manufacturer: str) -> str:
    text = (manufacturer or "").lower()
    if "siemens" in text:
        return "siemens"
    if text.startswith("ge") or "general electric" in text:
        return "ge"
    if "philips" in text:
        return "philips"
    return "standard"


PRIVATE_BVALUE_TAGS = {
    "siemens": (0x0019, 0x0C, "SIEMENS MR HEADER"),
    "ge": (0x0043, 0x39, "GEMS_PARM_01"),
    "philips": (0x2001, 0x03, "Philips Imaging DD 001"),
}


_CONVERTED: dict[tuple, object] = {}
_CONVERTED_LIMIT = 200_000
_CHARACTER_SET = 0x00080005
# numbers, codes, dates and UIDs: their conversion does not depend on the character set
_DEFAULT_REPERTOIRE_VRS = frozenset({"US", "UL", "SS", "SL", "FD", "FL", "DS", "IS", "CS", "UI", "DA", "TM", "DT",
                                     "AS", "AT"})


def element_value(ds: Dataset, keyword: str | int, default=None):
    """`ds[keyword].value`, with each distinct raw value converted once per process.

    pydicom reads a header as raw bytes and converts an element on first access (tens of microseconds); the
    files of a series repeat most values (sizes, b-values, UIDs, names), and checking a 300-file series spent
    a fifth of its time converting. The key holds everything the conversion depends on: the tag, its VR,
    the byte order and the file's character set. Private elements are converted as usual: with implicit
    VR their meaning depends on their creator, which the key does not hold. The value may be shared between
    files: read it, do not change it.
    """
    # a plain int: pydicom's tag type compares in Python, which showed in the cache's lookups
    tag = int(keyword) if isinstance(keyword, int) else tag_for_keyword(keyword)
    element = ds.get_item(tag) if tag is not None else None
    if element is None:
        return default
    if not isinstance(element, RawDataElement) or (tag >> 16) % 2:
        return ds[tag].value
    charset = None
    if element.VR not in _DEFAULT_REPERTOIRE_VRS:
        charset = ds.get_item(_CHARACTER_SET)
        if charset is not None:
            charset = charset.value if isinstance(charset.value, bytes) else repr(charset.value)
    key = (tag, element.VR, element.is_little_endian, charset, element.value)
    if key not in _CONVERTED:
        if len(_CONVERTED) >= _CONVERTED_LIMIT:
            _CONVERTED.clear()
        _CONVERTED[key] = ds[tag].value
    return _CONVERTED[key]


_PRIVATE_SLOTS: dict[tuple[int, str], int] = {}


def private_value(ds: Dataset, group: int, element: int, creator: str):
    """A private element's value, found through its creator (pydicom's `get_private_item`, which scans every
    creator slot of the group: slow on each file of a long series, so the slot last found is tried first)."""
    slot = _PRIVATE_SLOTS.get((group, creator))
    if slot is not None and str(element_value(ds, (group << 16) | slot, "")).strip() == creator:
        return ds[(group << 16) | (slot << 8) | element].value
    item = ds.get_private_item(group, element, creator)  # KeyError when absent
    _PRIVATE_SLOTS[(group, creator)] = (item.tag.element >> 8) & 0xFF
    return item.value


def read_bvalue(ds: Dataset) -> float | None:
    """The diffusion b-value (s/mm²) of one image, by its vendor's convention.

    The standard tag (0018,9087) wins when present, as dcm2niix does; private
    tags are looked up through their private creator, wherever the block sits.
    None means the image carries no b-value (not a diffusion image).
    """
    standard = element_value(ds, 0x00189087)
    if standard is not None:
        return float(standard)
    vendor = vendor_from_manufacturer(str(element_value(ds, "Manufacturer", "")))
    if vendor not in PRIVATE_BVALUE_TAGS:
        return None
    group, element, creator = PRIVATE_BVALUE_TAGS[vendor]
    try:
        value = private_value(ds, group, element, creator)
    except KeyError:
        return None
    value = first_number(value)
    if vendor == "ge":
        return float(int(value) % GE_B_OFFSET)
    return float(value)


def first_number(value) -> float:
    """First value of a (possibly multi-valued, possibly undecoded) element as a number."""
    if isinstance(value, (bytes, bytearray)):
        value = value.decode(errors="ignore").strip("\x00 ")
    if isinstance(value, str):
        return float(value.split("\\")[0])
    if isinstance(value, (list, tuple)) or hasattr(value, "__getitem__") and not isinstance(value, (int, float)):
        return float(value[0])
    return float(value)


ENHANCED_MR_IMAGE_STORAGE = "1.2.840.10008.5.1.4.1.1.4.1"
LEGACY_CONVERTED_ENHANCED_MR_IMAGE_STORAGE = "1.2.840.10008.5.1.4.1.1.4.4"
ENHANCED_SOP_CLASSES = frozenset({ENHANCED_MR_IMAGE_STORAGE, LEGACY_CONVERTED_ENHANCED_MR_IMAGE_STORAGE})
# (0018,9089) of a classic image, where the vendor keeps it: Siemens' DiffusionGradientDirection, GE's three
# user-data values; Philips keeps its own in (2005,10B0..B2) under a creator dcm2niix reads, not needed here
PRIVATE_DIRECTION_TAGS = {
    "siemens": [(0x0019, 0x0E, "SIEMENS MR HEADER")],
    "ge": [(0x0019, 0xBB, "GEMS_ACQU_01"), (0x0019, 0xBC, "GEMS_ACQU_01"), (0x0019, 0xBD, "GEMS_ACQU_01")],
}


def is_enhanced(ds: Dataset) -> bool:
    """Whether the file is a multi-frame image with functional groups (Enhanced MR, Legacy Converted
    Enhanced MR, or any SOP class that carries PerFrameFunctionalGroupsSequence)."""
    sop_class = str(element_value(ds, "SOPClassUID", "") or ds.get("file_meta", Dataset()).get(
        "MediaStorageSOPClassUID", ""))
    return sop_class in ENHANCED_SOP_CLASSES or "PerFrameFunctionalGroupsSequence" in ds


def functional_group(ds: Dataset, frame: int, keyword: str) -> Dataset | None:
    """The first item of a functional-group macro (e.g. "MRDiffusionSequence") for one frame (0-based) of an
    enhanced file: from the frame's own groups, else from the groups shared by every frame; None if neither."""
    per_frame = ds.get("PerFrameFunctionalGroupsSequence")
    if per_frame is not None and frame < len(per_frame):
        group = per_frame[frame].get(keyword)
        if group:
            return group[0]
    shared = ds.get("SharedFunctionalGroupsSequence")
    if shared:
        group = shared[0].get(keyword)
        if group:
            return group[0]
    return None


def number_of_frames(ds: Dataset) -> int:
    return int(element_value(ds, "NumberOfFrames", 1) or 1)


def _unit(vector) -> tuple[float, float, float] | None:
    """A gradient direction as a unit vector; None for none or zero (b0 and trace images)."""
    if isinstance(vector, (bytes, bytearray)):  # a private element read without its VR
        vector = np.frombuffer(vector, "<f8") if len(vector) == 24 else vector.decode(errors="ignore").strip("\x00 ")
    if isinstance(vector, str):
        vector = vector.split("\\")
    try:
        values = np.asarray([float(v) for v in list(vector)[:3]], float)
    except (TypeError, ValueError):
        return None
    norm = float(np.linalg.norm(values)) if values.size == 3 else 0.0
    if not np.isfinite(norm) or norm < 1e-6:
        return None
    return tuple(float(v) for v in values / norm)


def _classic_direction(ds: Dataset) -> tuple[float, float, float] | None:
    standard = element_value(ds, 0x00189089)
    if standard is not None:
        return _unit(standard)
    vendor = vendor_from_manufacturer(str(element_value(ds, "Manufacturer", "")))
    try:
        values = [private_value(ds, group, element, creator)
                  for group, element, creator in PRIVATE_DIRECTION_TAGS.get(vendor, [])]
    except KeyError:
        return None
    if not values:
        return None
    return _unit(values[0] if len(values) == 1 else [first_number(v) for v in values])


def frame_diffusion(ds: Dataset) -> list[tuple[float | None, tuple[float, float, float] | None]]:
    """(b-value in s/mm², unit gradient direction) of each frame of one file, in frame order.

    Enhanced multi-frame files: from each frame's MRDiffusionSequence (DiffusionBValue, and
    DiffusionGradientDirectionSequence > DiffusionGradientOrientation), falling back to the groups shared by
    every frame, as dcm2niix reads them. A classic single-frame file: one entry, its b-value by the vendor's
    convention (`read_bvalue`) and the direction where the standard tag or the vendor's private one holds it.
    b is None for a frame without a b-value (not diffusion-weighted); the direction is None for b0, for an
    enhanced frame whose DiffusionDirectionality is ISOTROPIC (trace) and where no tag holds one (GE marks its
    trace images with the direction (1, 1, 1)/sqrt(3), returned as written).
    """
    if not is_enhanced(ds):
        b = read_bvalue(ds)
        return [(b, _classic_direction(ds) if b else None)]
    frames = []
    for frame in range(number_of_frames(ds)):
        diffusion = functional_group(ds, frame, "MRDiffusionSequence")
        b = direction = None
        if diffusion is not None and diffusion.get("DiffusionBValue") is not None:
            b = float(diffusion.DiffusionBValue)
            gradient = diffusion.get("DiffusionGradientDirectionSequence")
            if gradient and str(diffusion.get("DiffusionDirectionality", "")).upper() != "ISOTROPIC":
                direction = _unit(gradient[0].get("DiffusionGradientOrientation"))
        frames.append((b, direction if b else None))
    return frames


@dataclass(frozen=True)
class ImageFrame:
    """One 2D image of a series: a classic file, or one frame of an enhanced multi-frame file."""

    frame: int | None  # 0-based frame of an enhanced file; None for a classic single-frame file
    frames_in_file: int
    bval: float | None  # s/mm²
    direction: tuple[float, float, float] | None
    position: tuple[float, float, float] | None  # ImagePositionPatient, mm (LPS)
    orientation: tuple[float, ...] | None  # ImageOrientationPatient, row then column direction cosines

    def label(self) -> str:
        """How messages name the frame within its file ("" for a classic file)."""
        return "" if self.frame is None else f" frame {self.frame + 1} of {self.frames_in_file}"


class FrameError(ValueError):
    """An enhanced file whose functional groups do not describe each of its frames."""


def _floats(value) -> tuple[float, ...] | None:
    return None if value is None else tuple(float(v) for v in value)


def image_frames(ds: Dataset) -> list[ImageFrame]:
    """The 2D images one file holds, each with its b-value, direction, position and orientation.

    A classic file is one image (its top-level ImagePositionPatient/ImageOrientationPatient); an enhanced file
    one per frame, from the frame's functional groups (PlanePositionSequence, PlaneOrientationSequence,
    MRDiffusionSequence) or the shared ones. FrameError when the per-frame groups do not match NumberOfFrames.
    """
    diffusion = frame_diffusion(ds)
    if not is_enhanced(ds):
        (b, direction), = diffusion
        return [ImageFrame(None, 1, b, direction, _floats(element_value(ds, "ImagePositionPatient")),
                           _floats(element_value(ds, "ImageOrientationPatient")))]
    n = number_of_frames(ds)
    per_frame = ds.get("PerFrameFunctionalGroupsSequence")
    if per_frame is not None and len(per_frame) != n:
        raise FrameError(f"NumberOfFrames is {n} but PerFrameFunctionalGroupsSequence describes {len(per_frame)}")
    frames = []
    for frame, (b, direction) in enumerate(diffusion):
        position = functional_group(ds, frame, "PlanePositionSequence")
        orientation = functional_group(ds, frame, "PlaneOrientationSequence")
        frames.append(ImageFrame(
            frame, n, b, direction,
            _floats(position.get("ImagePositionPatient")) if position is not None else None,
            _floats(orientation.get("ImageOrientationPatient")) if orientation is not None else None))
    return frames


def _check_pixel_bytes(ds: Dataset, remaining: int) -> None:
    """Raise when the file's bytes after its header cannot hold the image its header describes.
    (Compressed transfer syntaxes are smaller by design and dcm2niix decodes them; a deflated file's
    position says nothing about its content.)"""
    syntax = element_value(ds.file_meta, "TransferSyntaxUID")  # cached: converting it was a tenth of a header read
    if syntax is None:
        raise ValueError("no transfer syntax in its file meta information")
    if syntax.is_deflated:  # pydicom inflated the whole file to read its header: the position is its end
        return
    if remaining <= 0:
        raise ValueError("no pixel data")
    if syntax.is_compressed:
        return
    element_header = 8 if syntax.is_implicit_VR else 12  # tag, (VR, reserved,) length
    expected = int(element_value(ds, "Rows")) * int(element_value(ds, "Columns")) * int(
        element_value(ds, "BitsAllocated")) // 8 * int(element_value(ds, "SamplesPerPixel", 1)) * int(
        element_value(ds, "NumberOfFrames", 1) or 1)
    if remaining - element_header < expected:
        raise ValueError(f"pixel data has {max(remaining - element_header, 0)} of {expected} bytes")


# What a header read keeps (`read_header`, `read_series_headers`). Every standard element that is not a sequence
# (a few dozen short values: whatever attribute a check, the identifier scan or `dwisynth scan` reads is among
# them); of the sequences and private elements only these. The rest is skipped unparsed: Philips classic
# headers carry kilobytes of nested private sequences of undefined length, which pydicom parses in full whatever
# it is asked for, and parsing them made a conversion 8.6 times as slow as dcm2niix's.
HEADER_SEQUENCES = {
    0x52009229: "SharedFunctionalGroupsSequence: an enhanced file's geometry, and its b-value in some exports",
    0x52009230: "PerFrameFunctionalGroupsSequence: each frame's b-value, direction and position",
    0x00209221: "DimensionOrganizationSequence: how an enhanced file's frames are organised",
    0x00209222: "DimensionIndexSequence: which dimensions order an enhanced file's frames",
}
# Private elements kept in whatever creator slot a file puts them (with the creators of their groups): the
# vendor b-value and gradient-direction tags dcm2niix reads, against which its output is checked.
HEADER_PRIVATE_ELEMENTS = frozenset((group, element) for group, element, _ in [
    *PRIVATE_BVALUE_TAGS.values(), *(tag for tags in PRIVATE_DIRECTION_TAGS.values() for tag in tags)])
_HEADER_PRIVATE_GROUPS = frozenset(group for group, _ in HEADER_PRIVATE_ELEMENTS)
_SEQUENCE_TAGS = frozenset(tag for tag, entry in DicomDictionary.items() if entry[0] == "SQ")  # for implicit VR
_VR_NAMES = {vr.encode(): vr for vr in "AE AS AT CS DA DS DT FL FD IS LO LT OB OD OF OL OV OW PN SH SL SQ SS ST SV "
                                       "TM UC UI UL UN UR US UT UV".split()}
_LONG_VRS = frozenset(b"OB OD OF OL OV OW SQ SV UC UN UR UT UV".split())  # 4-byte length after 2 reserved bytes
_SHORT_VRS = frozenset(_VR_NAMES) - _LONG_VRS  # 2-byte length
_EXPLICIT = struct.Struct("<HH2sH")  # group, element, VR, 2-byte length
_TAG_LENGTH = struct.Struct("<HHI")  # group, element, 4-byte length: implicit VR, items and delimiters
_LENGTH = struct.Struct("<I")
_PIXEL_TAGS = frozenset({0x7FE00008, 0x7FE00009, 0x7FE00010})  # where pydicom's stop_before_pixels stops
_UNDEFINED = 0xFFFFFFFF
_IMPLICIT_VR_LITTLE_ENDIAN = "1.2.840.10008.1.2"
_NOT_WALKED_SYNTAXES = frozenset({"1.2.840.10008.1.2.2", "1.2.840.10008.1.2.1.99"})  # big endian, deflated


class _NotPlain(Exception):
    """A file whose layout the quick walk does not follow (no preamble, deflated, big endian, a truncated or
    malformed element): pydicom reads its whole header, as it names the damage."""


def _element_header(data, pos: int, implicit: bool) -> tuple[int, int, bytes | None, int, int]:
    """(group, element, VR or None, value length, position of the value) of the element at pos."""
    if pos + 8 > len(data):
        raise _NotPlain
    if implicit:
        group, element, length = _TAG_LENGTH.unpack_from(data, pos)
        return group, element, None, length, pos + 8
    group, element, vr, length = _EXPLICIT.unpack_from(data, pos)
    if group == 0xFFFE:  # an item or a delimiter: no VR in any syntax
        return group, element, None, _LENGTH.unpack_from(data, pos + 4)[0], pos + 8
    if vr in _LONG_VRS:
        if pos + 12 > len(data):
            raise _NotPlain
        return group, element, vr, _LENGTH.unpack_from(data, pos + 8)[0], pos + 12
    if vr not in _VR_NAMES:
        raise _NotPlain  # e.g. a sequence item switching to implicit VR
    return group, element, vr, length, pos + 8


def _after_undefined_length(data, pos: int, implicit: bool) -> int:
    """The position after an undefined-length value (a sequence, or encapsulated data) whose items start at pos.

    One loop over the items and their elements, down through nested undefined-length values (the stack holds
    the levels above), with no call per element: those calls cost as much as pydicom's own parse. Plain
    elements (defined length, an item's usual content) are passed in a tight inner loop; a read past the end
    of the data (struct.error) means a damaged file. An undefined-length UN holds implicit VR (PS3.5 6.2.2).
    """
    unpack_tag_length, unpack_explicit, unpack_length = (
        _TAG_LENGTH.unpack_from, _EXPLICIT.unpack_from, _LENGTH.unpack_from)
    in_items, stack = True, []  # stack: (in_items, implicit) of the levels to return to
    try:
        while True:
            if in_items:
                group, element, length = unpack_tag_length(data, pos)
                pos += 8
                if group != 0xFFFE:
                    raise _NotPlain
                if element == 0xE0DD:  # the sequence's end
                    if not stack:
                        return pos
                    in_items, implicit = stack.pop()
                elif element != 0xE000:
                    raise _NotPlain
                elif length == _UNDEFINED:  # an item that ends with a delimiter: walk its elements
                    stack.append((True, implicit))
                    in_items = False
                else:
                    pos += length
                continue
            if implicit:
                group, element, length = unpack_tag_length(data, pos)
                while group != 0xFFFE and length != _UNDEFINED:
                    pos += 8 + length
                    group, element, length = unpack_tag_length(data, pos)
                vr, pos = None, pos + 8
            else:
                group, element, vr, length = unpack_explicit(data, pos)
                while vr in _SHORT_VRS:  # an item's end has no VR: its zero length is never one
                    pos += 8 + length
                    group, element, vr, length = unpack_explicit(data, pos)
                if group == 0xFFFE:
                    length = unpack_length(data, pos + 4)[0]
                    pos += 8
                elif vr in _LONG_VRS:
                    length = unpack_length(data, pos + 8)[0]
                    pos += 12
                else:
                    raise _NotPlain  # e.g. an item switching to implicit VR: pydicom knows how to read it
            if group == 0xFFFE:
                if element != 0xE00D:
                    raise _NotPlain
                in_items, implicit = stack.pop()  # the item's end
            elif length == _UNDEFINED:
                stack.append((False, implicit))
                in_items, implicit = True, implicit or vr == b"UN"
            else:
                pos += length
    except (struct.error, IndexError):  # past the end of the data; an item's end with no item open
        raise _NotPlain from None


def _walk_header(data) -> tuple[list, list, bool, int]:
    """The file meta elements and the kept dataset elements of a file's bytes, each (tag, VR, value length,
    value position, element start, element end); whether the dataset is implicit VR; where its pixel data
    element starts (the file's end without one). Lengths only: nothing is converted."""
    if data[128:132] != b"DICM":
        raise _NotPlain
    meta, pos, syntax = [], 132, None
    while pos + 8 <= len(data) and data[pos:pos + 2] == b"\x02\x00":  # group 0002: explicit VR little endian
        group, element, vr, length, value = _element_header(data, pos, False)
        if length == _UNDEFINED or vr is None:
            raise _NotPlain
        meta.append((group << 16 | element, vr, length, value, pos, value + length))
        if element == 0x0010:
            syntax = bytes(data[value:value + length]).rstrip(b"\0 ").decode("ascii", "replace")
        pos = value + length
    if syntax is None or syntax in _NOT_WALKED_SYNTAXES or syntax in pydicom.uid.PrivateTransferSyntaxes:
        raise _NotPlain
    implicit = syntax == _IMPLICIT_VR_LITTLE_ENDIAN
    size, kept = len(data), []
    unpack_tag_length, unpack_explicit, unpack_length = (
        _TAG_LENGTH.unpack_from, _EXPLICIT.unpack_from, _LENGTH.unpack_from)
    while pos < size:  # the element header inlined, as in _after_undefined_length: a call each cost a fifth
        if pos + 8 > size:
            raise _NotPlain
        vr = None
        if implicit:
            group, element, length = unpack_tag_length(data, pos)
            value = pos + 8
        else:
            group, element, vr, length = unpack_explicit(data, pos)
            if vr in _LONG_VRS:
                if pos + 12 > size:
                    raise _NotPlain
                length = unpack_length(data, pos + 8)[0]
                value = pos + 12
            elif vr in _VR_NAMES:
                value = pos + 8
            else:
                raise _NotPlain
        tag = group << 16 | element
        if tag in _PIXEL_TAGS:
            break
        end = _after_undefined_length(data, value, implicit or vr == b"UN") if length == _UNDEFINED else value + length
        if group & 1:  # private: the listed elements in any slot, and their groups' creators
            keep = ((group, element & 0xFF) in HEADER_PRIVATE_ELEMENTS if element >= 0x100
                    else element >= 0x10 and group in _HEADER_PRIVATE_GROUPS)
        else:  # standard: all but the sequences not listed
            keep = tag in HEADER_SEQUENCES or not (
                vr == b"SQ" or length == _UNDEFINED or (vr is None and tag in _SEQUENCE_TAGS))
        if keep:
            kept.append((tag, vr, length, value, pos, end))
        pos = end
    if pos > size:
        raise _NotPlain  # the last element runs past the end of the file
    return meta, kept, implicit, pos


_BASE_TAGS: dict[int, BaseTag] = {}


def _raw_elements(data, elements, implicit: bool) -> dict:
    """pydicom's raw elements (converted on first access, as dcmread leaves them) of walked elements."""
    raw = {}
    for tag, vr, length, value, _, _ in elements:
        base = _BASE_TAGS.get(tag) or _BASE_TAGS.setdefault(tag, BaseTag(tag))
        name = _VR_NAMES.get(vr)
        raw[base] = RawDataElement(base, name, length, data[value:value + length] if length
                                   else empty_value_for_VR(name, raw=True), value, implicit, True)
    return raw


def _header_from_walk(data, path: Path) -> tuple[Dataset, int]:
    """The kept header of a file, as pydicom's dcmread reads it, and where its pixel data element starts."""
    meta, kept, implicit, pixels_at = _walk_header(data)
    if any(length == _UNDEFINED for _, _, length, _, _, _ in kept):
        # a kept undefined-length sequence (an enhanced file's functional groups): pydicom parses it, from the
        # file's bytes less the elements not kept
        dataset_start = meta[-1][5] if meta else 132
        kept_bytes = b"".join([data[:dataset_start], *(data[start:end] for _, _, _, _, start, end in kept)])
        ds = pydicom.dcmread(io.BytesIO(kept_bytes), stop_before_pixels=True)
        ds.filename = str(path)
        return ds, pixels_at
    ds = FileDataset(str(path), Dataset(_raw_elements(data, kept, implicit)), preamble=bytes(data[:128]),
                     file_meta=FileMetaDataset(_raw_elements(data, meta, False)), is_implicit_VR=implicit,
                     is_little_endian=True)
    ds.set_original_encoding(implicit, True)
    return ds, pixels_at


def _read_kept_header(path: Path) -> tuple[Dataset, int]:
    """One file's header as `read_header` keeps it, and the bytes from its pixel data element to the file's end.

    The file is walked element by element (lengths only, nothing converted) and only the kept elements become
    pydicom's (raw, converted on first access, as dcmread leaves them). A file the walk does not follow is read
    by pydicom in full. A file up to IN_MEMORY_BYTES is read into memory (pydicom's many small reads cost a
    fifth of a parse from disk); a larger (multi-frame) one is mapped: only its header's pages are read.
    """
    size = path.stat().st_size
    with open(path, "rb") as file:
        data = file.read() if size <= IN_MEMORY_BYTES else mmap.mmap(file.fileno(), 0, access=mmap.ACCESS_READ)
        try:
            ds, pixels_at = _header_from_walk(data, path)
        except _NotPlain:
            stream = io.BytesIO(data) if isinstance(data, bytes) else file
            ds = pydicom.dcmread(stream, stop_before_pixels=True)
            ds.filename = str(path)
            pixels_at = stream.tell()
        finally:
            if isinstance(data, mmap.mmap):
                data.close()
    return ds, size - pixels_at


def read_header(path: str | Path, **kwargs) -> Dataset:
    """One file's header without its pixels: every standard element but the sequences not in HEADER_SEQUENCES,
    and the private elements of HEADER_PRIVATE_ELEMENTS; its values converted without warnings that echo them
    (see reading_validation_mode above). kwargs (such as specific_tags) read through pydicom's dcmread as given."""
    if kwargs:
        return pydicom.dcmread(path, stop_before_pixels=True, **kwargs)
    return _read_kept_header(Path(path))[0]


def read_series_headers(dicom_dir: str | Path, source: str | None = None) -> list[Dataset]:
    """Read every file's header in a series folder (`read_header`), failing on the first bad file.

    dcm2niix skips unreadable files with a warning; a series silently missing
    slices is worse than a clear stop, so each file is opened here first.
    source: the series as messages name it instead of its path, whose folder and file names can hold a
    patient's name (`dwisynth.convert.convert_series`); a bad file is then named by its position.
    """
    folder = Path(dicom_dir)
    where = source or str(folder)
    if not folder.is_dir():
        raise DicomSeriesError(f"{where}: DICOM folder does not exist; check dicom_dir in the sample sheet")
    files = sorted(p for p in folder.iterdir() if p.is_file() and not p.name.startswith("."))
    if not files:
        raise DicomSeriesError(f"{where}: folder holds no files; check dicom_dir in the sample sheet")
    headers = []
    for index, path in enumerate(files, 1):
        size = None
        try:
            # The header only: the bytes from the pixel data element on tell whether the pixels are complete
            # (a truncated file often has a complete header) without reading them.
            size = path.stat().st_size
            ds, pixel_bytes = _read_kept_header(path)
            _check_pixel_bytes(ds, pixel_bytes)
        except Exception as exc:  # pydicom raises many types for broken files
            named = path if source is None else f"{source}: file {index} of {len(files)} (by name)"
            # an OSError's text holds the path ("Permission denied: '/data/Doe_Jane/IM1.dcm'"): its reason only
            reason = (exc.strerror or type(exc).__name__) if isinstance(exc, OSError) else str(exc)
            error = DicomSeriesError(
                f"{named}: not a readable DICOM image ({reason}"
                f"{'' if size is None else f'; {size} bytes'}); remove or re-export this file"
            )
            # a chained cause prints its own text (the path again) in the job's traceback
            raise error from (exc if source is None else None)
        headers.append(ds)
    return headers


def _base_dataset(sop_class: str, modality: str, patient: PatientInfo, vendor: str, uids: dict) -> Dataset:
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = sop_class
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    meta.ImplementationClassUID = generate_uid(entropy_srcs=["dwisynth"])
    ds = Dataset()
    ds.file_meta = meta
    ds.SOPClassUID = sop_class
    ds.Modality = modality
    ds.Manufacturer = MANUFACTURERS[vendor]
    ds.InstitutionName = patient.institution
    ds.InstitutionAddress = patient.institution_address
    ds.PatientName = patient.name
    ds.PatientID = patient.patient_id
    ds.PatientBirthDate = patient.birth_date
    ds.PatientSex = patient.sex
    ds.StudyDate = ds.SeriesDate = ds.AcquisitionDate = uids["date"]
    ds.StudyTime = ds.SeriesTime = ds.AcquisitionTime = "120000"
    ds.AccessionNumber = uids["accession"]
    ds.StudyInstanceUID = uids["study"]
    ds.SeriesInstanceUID = uids["series"]
    ds.FrameOfReferenceUID = uids["frame"]
    ds.StudyID = "1"
    ds.SeriesNumber = uids["series_number"]
    ds.ImageOrientationPatient = [1, 0, 0, 0, 1, 0]
    ds.PatientPosition = "HFS"
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.BitsAllocated = 16
    ds.BitsStored = 16
    ds.HighBit = 15
    return ds


def series_uids(seed_text: str, series_number: int, date: str = "20250101") -> dict:
    """Deterministic UIDs: the same seed text gives the same DICOM bytes."""
    uid = lambda kind: generate_uid(entropy_srcs=[seed_text, kind])  # noqa: E731
    return {
        "study": uid("study"),
        "series": uid(f"series{series_number}"),
        "frame": uid("frame"),
        "accession": "ACC" + uid("accession")[-8:].replace(".", "0"),
        "series_number": series_number,
        "date": date,
        "seed": seed_text,
    }


def _set_geometry(ds: Dataset, grid: Grid, k: int) -> None:
    ds.ImagePositionPatient = [round(v, 4) for v in grid.slice_position_lps(k)]
    ds.PixelSpacing = [grid.spacing[1], grid.spacing[0]]  # row spacing, column spacing
    ds.SliceThickness = grid.spacing[2]
    ds.SpacingBetweenSlices = grid.spacing[2]
    ds.SliceLocation = round(grid.slice_position_lps(k)[2], 4)
    ds.Rows = grid.shape[1]
    ds.Columns = grid.shape[0]


def _set_bvalue(ds: Dataset, vendor: str, bval: float) -> None:
    b = int(round(bval))
    if vendor == "siemens":
        block = ds.private_block(0x0019, "SIEMENS MR HEADER", create=True)
        block.add_new(0x0C, "IS", str(b))
        block.add_new(0x0D, "CS", "NONE" if b == 0 else "DIRECTIONAL")
        ds.SequenceName = f"*ep_b{b}t" if b else "*ep_b0"
    elif vendor == "ge":
        block = ds.private_block(0x0043, "GEMS_PARM_01", create=True)
        block.add_new(0x39, "IS", [GE_B_OFFSET + b, 0, 0, 0])
        # dcm2niix zeroes a GE b-value whose gradient direction is zero, so trace
        # images carry the isotropic direction (1, 1, 1)/sqrt(3).
        acq = ds.private_block(0x0019, "GEMS_ACQU_01", create=True)
        for element in (0xBB, 0xBC, 0xBD):
            acq.add_new(element, "DS", "0.57735" if b else "0")
    elif vendor == "philips":
        block = ds.private_block(0x2001, "Philips Imaging DD 001", create=True)
        block.add_new(0x03, "FL", float(b))
        block.add_new(0x04, "CS", "O" if b == 0 else "I")
    else:
        ds.add_new((0x0018, 0x9087), "FD", float(b))
        ds.add_new((0x0018, 0x9075), "CS", "NONE" if b == 0 else "ISOTROPIC")


def write_dwi_series(
    out_dir: str | Path,
    volumes: np.ndarray,
    bvals,
    grid: Grid,
    vendor: str,
    patient: PatientInfo,
    uids: dict,
    series_description: str = "ep2d_diff_trace",
    body_part: str = "",
) -> list[Path]:
    """Write trace-weighted DWI as single-frame MR images, one file per slice and b.

    volumes: (n_b, nx, ny, nz) unsigned integers (stored as uint16, no rescale).
    """
    if vendor not in MANUFACTURERS:
        raise ValueError(f"unknown vendor {vendor!r}; choose one of {VENDORS}")
    volumes = np.asarray(volumes)
    if volumes.shape[1:] != grid.shape or len(bvals) != volumes.shape[0]:
        raise ValueError(f"volumes {volumes.shape} do not fit grid {grid.shape} and {len(bvals)} b-values")
    if volumes.min() < 0 or volumes.max() > 65535:
        raise ValueError("DWI volumes must hold values in 0..65535")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    written = []
    nz = grid.shape[2]
    for v, bval in enumerate(bvals):
        for k in range(nz):
            ds = _base_dataset(MR_IMAGE_STORAGE, "MR", patient, vendor, uids)
            ds.SeriesDescription = ds.ProtocolName = series_description
            if body_part:
                ds.BodyPartExamined = body_part
            ds.MagneticFieldStrength = 3.0
            ds.EchoTime = 70
            ds.RepetitionTime = 4000
            ds.ScanningSequence = "EP"
            ds.SequenceVariant = "SK"
            ds.MRAcquisitionType = "2D"
            ds.InPlanePhaseEncodingDirection = "COL"
            ds.ImageType = ["ORIGINAL", "PRIMARY", "DIFFUSION", "TRACEW"]
            instance = v * nz + k + 1
            ds.InstanceNumber = instance
            ds.AcquisitionNumber = v + 1
            ds.SOPInstanceUID = generate_uid(entropy_srcs=[uids["seed"], "sop", str(uids["series_number"]), str(instance)])
            ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
            _set_geometry(ds, grid, k)
            _set_bvalue(ds, vendor, bval)
            ds.PixelRepresentation = 0
            ds.PixelData = np.ascontiguousarray(volumes[v, :, :, k].T.astype("<u2")).tobytes()
            path = out / f"IM_{instance:05d}.dcm"
            ds.save_as(path, enforce_file_format=True)
            written.append(path)
    return written


def _sequence_of(item: Dataset) -> Sequence:
    return Sequence([item])


def _dataset(**attributes) -> Dataset:
    ds = Dataset()
    for keyword, value in attributes.items():
        setattr(ds, keyword, value)
    return ds


def _enhanced_diffusion_item(bval: float, direction) -> Dataset:
    """One MRDiffusionSequence item: DiffusionBValue, and a gradient orientation for a directional image."""
    item = _dataset(DiffusionBValue=float(bval))
    if bval and direction is not None:
        item.DiffusionDirectionality = "DIRECTIONAL"
        item.DiffusionGradientDirectionSequence = _sequence_of(
            _dataset(DiffusionGradientOrientation=[float(v) for v in direction]))
    else:
        item.DiffusionDirectionality = "ISOTROPIC" if bval else "NONE"
    return item


def write_enhanced_dwi_series(
    out_dir: str | Path,
    volumes: np.ndarray,
    bvals,
    grid: Grid,
    patient: PatientInfo,
    uids: dict,
    series_description: str = "ep2d_diff_trace",
    body_part: str = "",
    bvecs=None,
    volumes_per_file: int | None = None,
    shared_diffusion: bool = False,
    private_bvalue: bool = True,
    vendor: str = "siemens",
    legacy_converted: bool = False,
) -> list[Path]:
    """Write DWI as Enhanced MR Image Storage, as Siemens XA scanners export it: multi-frame files whose
    frames run slice fastest, then b, each frame's b-value, position, orientation and dimension indices in its
    PerFrameFunctionalGroupsSequence item, pixel spacing shared by every frame.

    volumes: (n_b, nx, ny, nz) unsigned integers (stored as uint16, no rescale); bvecs: (n_b, 3) gradient
    directions, None for trace-weighted images (DiffusionDirectionality ISOTROPIC).
    volumes_per_file: None writes the whole series into one file; k writes files of k volumes (k * nz frames).
    dcm2niix stacks single-volume files of a Siemens series into one image, but not files of several volumes.
    shared_diffusion: the MRDiffusionSequence sits in SharedFunctionalGroupsSequence, which needs one
    b-value per file (volumes_per_file 1).
    private_bvalue: each frame's item also carries Siemens' private (0019,100C) b-value, as exports
    converted from classic images keep it (siemens only).
    vendor: the Manufacturer written, "siemens" or "standard" (Canon, whose enhanced files dcm2niix orders by
    their DimensionIndexValues). legacy_converted: Legacy Converted Enhanced MR Image Storage instead.
    """
    if vendor not in ("siemens", "standard"):
        raise ValueError(f"enhanced DWI is written for vendor siemens or standard, not {vendor!r}")
    volumes = np.asarray(volumes)
    n_b = volumes.shape[0]
    if volumes.shape[1:] != grid.shape or len(bvals) != n_b:
        raise ValueError(f"volumes {volumes.shape} do not fit grid {grid.shape} and {len(bvals)} b-values")
    if volumes.min() < 0 or volumes.max() > 65535:
        raise ValueError("DWI volumes must hold values in 0..65535")
    per_file = n_b if volumes_per_file is None else int(volumes_per_file)
    if shared_diffusion and per_file != 1:
        raise ValueError("shared_diffusion needs one b-value per file: volumes_per_file=1")
    directions = [None] * n_b if bvecs is None else [tuple(v) for v in np.asarray(bvecs, float)]
    nz = grid.shape[2]
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    written = []
    for number, first in enumerate(range(0, n_b, per_file), 1):
        file_volumes = range(first, min(first + per_file, n_b))
        sop_class = LEGACY_CONVERTED_ENHANCED_MR_IMAGE_STORAGE if legacy_converted else ENHANCED_MR_IMAGE_STORAGE
        ds = _base_dataset(sop_class, "MR", patient, vendor, uids)
        del ds.ImageOrientationPatient  # per frame, in the functional groups
        ds.SeriesDescription = ds.ProtocolName = series_description
        if body_part:
            ds.BodyPartExamined = body_part
        ds.ManufacturerModelName, ds.SoftwareVersions = (("MAGNETOM Vida", "syngo MR XA50") if vendor == "siemens"
                                                         else ("Vantage Galan 3T", "V7.0"))
        ds.MagneticFieldStrength = 3.0
        ds.ImageType = ds.FrameType = ["ORIGINAL", "PRIMARY", "DIFFUSION", "TRACEW"]
        ds.PixelPresentation, ds.VolumetricProperties = "MONOCHROME", "VOLUME"
        ds.VolumeBasedCalculationTechnique = "NONE"
        ds.ComplexImageComponent = "MAGNITUDE"
        ds.AcquisitionContrast = "DIFFUSION"
        ds.ContentQualification = "PRODUCT"
        ds.ResonantNucleus = "1H"
        ds.MRAcquisitionType = "2D"
        ds.InstanceNumber = number
        ds.ContentDate, ds.ContentTime = uids["date"], "120000"
        ds.AcquisitionDateTime = uids["date"] + "120000"
        ds.SOPInstanceUID = generate_uid(entropy_srcs=[uids["seed"], "enhanced", str(uids["series_number"]),
                                                       str(number)])
        ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
        ds.Rows, ds.Columns = grid.shape[1], grid.shape[0]
        ds.NumberOfFrames = len(file_volumes) * nz
        ds.PixelRepresentation = 0
        dimension = generate_uid(entropy_srcs=[uids["seed"], "dimensions"])
        ds.DimensionOrganizationSequence = _sequence_of(_dataset(DimensionOrganizationUID=dimension))
        ds.DimensionIndexSequence = Sequence([
            _dataset(DimensionOrganizationUID=dimension, DimensionIndexPointer=pointer,
                     FunctionalGroupPointer=group, DimensionDescriptionLabel=label)
            for pointer, group, label in (
                (0x00209056, 0x00209111, "Stack ID"),
                (0x00209057, 0x00209111, "In-Stack Position Number"),
                (0x00209128, 0x00209111, "Temporal Position Index"),
            )])
        shared = _dataset(
            PixelMeasuresSequence=_sequence_of(_dataset(
                PixelSpacing=[grid.spacing[1], grid.spacing[0]],  # row spacing, column spacing
                SliceThickness=grid.spacing[2], SpacingBetweenSlices=grid.spacing[2])),
            PixelValueTransformationSequence=_sequence_of(_dataset(
                RescaleIntercept=0, RescaleSlope=1, RescaleType="US")),
            MRTimingAndRelatedParametersSequence=_sequence_of(_dataset(RepetitionTime=4000.0)),
            MREchoSequence=_sequence_of(_dataset(EffectiveEchoTime=70.0)),
            # dcm2niix turns gradient directions into the image frame with it
            MRFOVGeometrySequence=_sequence_of(_dataset(InPlanePhaseEncodingDirection="COLUMN")),
        )
        if shared_diffusion:
            v = file_volumes[0]
            shared.MRDiffusionSequence = _sequence_of(_enhanced_diffusion_item(bvals[v], directions[v]))
        ds.SharedFunctionalGroupsSequence = _sequence_of(shared)
        frames = []
        for v in file_volumes:
            for k in range(nz):
                frame = _dataset(
                    FrameContentSequence=_sequence_of(_dataset(
                        StackID="1", InStackPositionNumber=k + 1, TemporalPositionIndex=v + 1,
                        DimensionIndexValues=[1, k + 1, v + 1])),
                    PlanePositionSequence=_sequence_of(_dataset(
                        ImagePositionPatient=[round(x, 4) for x in grid.slice_position_lps(k)])),
                    # per frame, as Siemens XA writes it: dcm2niix orders a Siemens file's frames by slice
                    # position when the orientation precedes every position (shared), mixing slices and volumes
                    PlaneOrientationSequence=_sequence_of(_dataset(ImageOrientationPatient=[1, 0, 0, 0, 1, 0])),
                    MRImageFrameTypeSequence=_sequence_of(_dataset(
                        FrameType=["ORIGINAL", "PRIMARY", "DIFFUSION", "TRACEW"])),
                )
                if not shared_diffusion:
                    frame.MRDiffusionSequence = _sequence_of(_enhanced_diffusion_item(bvals[v], directions[v]))
                if private_bvalue and vendor == "siemens":
                    frame.private_block(0x0019, "SIEMENS MR HEADER", create=True).add_new(
                        0x0C, "IS", str(int(round(bvals[v]))))
                frames.append(frame)
        ds.PerFrameFunctionalGroupsSequence = Sequence(frames)
        ds.PixelData = np.ascontiguousarray(
            np.stack([volumes[v, :, :, k].T for v in file_volumes for k in range(nz)]).astype("<u2")).tobytes()
        path = out / f"EN_{number:05d}.dcm"
        ds.save_as(path, enforce_file_format=True)
        written.append(path)
    return written


def write_ct_series(
    out_dir: str | Path,
    hu: np.ndarray,
    grid: Grid,
    patient: PatientInfo,
    uids: dict,
    vendor: str = "siemens",
    series_description: str = "Head 5mm",
) -> list[Path]:
    """Write a CT volume (Hounsfield units, (nx, ny, nz)) as signed 16-bit slices."""
    hu = np.asarray(hu)
    if hu.shape != grid.shape:
        raise ValueError(f"CT volume {hu.shape} does not fit grid {grid.shape}")
    stored = np.clip(np.round(hu + 1024), -32768, 32767).astype("<i2")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    written = []
    for k in range(grid.shape[2]):
        ds = _base_dataset(CT_IMAGE_STORAGE, "CT", patient, vendor, uids)
        ds.SeriesDescription = ds.ProtocolName = series_description
        ds.BodyPartExamined = "HEAD"
        ds.ImageType = ["ORIGINAL", "PRIMARY", "AXIAL"]
        ds.KVP = 120
        ds.InstanceNumber = k + 1
        ds.AcquisitionNumber = 1
        ds.SOPInstanceUID = generate_uid(entropy_srcs=[uids["seed"], "ct", str(k)])
        ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
        _set_geometry(ds, grid, k)
        ds.RescaleIntercept = -1024
        ds.RescaleSlope = 1
        ds.RescaleType = "HU"
        written.append(_save_slice(ds, stored[:, :, k], out / f"CT_{k + 1:05d}.dcm"))
    return written


def _save_slice(ds: Dataset, pixels: np.ndarray, path: Path) -> Path:
    """Store one (x, y) slice as rows = y, columns = x, and write the file."""
    ds.PixelRepresentation = int(pixels.dtype.kind == "i")
    ds.PixelData = np.ascontiguousarray(pixels.T).tobytes()
    ds.save_as(path, enforce_file_format=True)
    return path


def write_derived_series(out_dir: str | Path, volume: np.ndarray, affine: np.ndarray, bval: float, pseudonym: str,
                         description: str, seed_text: str) -> list[Path]:
    """A synthetic DWI volume (x, y, z floats on a NIfTI grid, RAS affine) as a derived MR series a PACS can show.

    New UIDs (from seed_text), ImageType DERIVED\\SECONDARY\\DIFFUSION, the b-value in the standard
    DiffusionBValue (0018,9087), and the pseudonym in place of every patient attribute: nothing of the source
    series' header is copied. Pixels are unsigned 16-bit with a RescaleSlope that keeps 1/60000 of the range.
    """
    volume = np.nan_to_num(np.asarray(volume, np.float64), nan=0.0, posinf=0.0, neginf=0.0).clip(min=0.0)
    slope = float(volume.max()) / 60000.0 if volume.max() > 0 else 1.0
    stored = np.round(volume / slope).astype("<u2")
    to_lps = np.diag([-1.0, -1.0, 1.0])
    axes = to_lps @ np.asarray(affine, float)[:3, :3]
    spacing = np.linalg.norm(axes, axis=0)
    row_dir, col_dir = axes[:, 0] / spacing[0], axes[:, 1] / spacing[1]  # along a row: voxel axis 0; a column: 1
    uids = series_uids(seed_text, 900)
    patient = PatientInfo(pseudonym, pseudonym, "", "", "")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    written = []
    for k in range(volume.shape[2]):
        ds = _base_dataset(MR_IMAGE_STORAGE, "MR", patient, "standard", uids)
        for attribute in ("InstitutionName", "InstitutionAddress", "PatientBirthDate", "AccessionNumber"):
            delattr(ds, attribute)
        ds.Manufacturer = "dwisynth"
        ds.SeriesDescription = ds.ProtocolName = description
        ds.ImageType = ["DERIVED", "SECONDARY", "DIFFUSION"]
        ds.DerivationDescription = "synthesized by dwisynth from the acquired low-b images"
        ds.ImageOrientationPatient = [round(float(v), 6) for v in (*row_dir, *col_dir)]
        ds.ImagePositionPatient = [round(float(v), 4) for v in to_lps @ (np.asarray(affine, float) @ [0, 0, k, 1])[:3]]
        ds.PixelSpacing = [float(spacing[1]), float(spacing[0])]  # row spacing, column spacing
        ds.SliceThickness = ds.SpacingBetweenSlices = float(spacing[2])
        ds.Rows, ds.Columns = volume.shape[1], volume.shape[0]
        ds.InstanceNumber = k + 1
        ds.SOPInstanceUID = generate_uid(entropy_srcs=[seed_text, "derived", str(k)])
        ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
        ds.add_new((0x0018, 0x9087), "FD", float(bval))
        ds.add_new((0x0018, 0x9075), "CS", "NONE" if bval == 0 else "ISOTROPIC")
        ds.RescaleSlope, ds.RescaleIntercept = f"{slope:.10g}"[:16], "0"
        written.append(_save_slice(ds, stored[:, :, k], out / f"SYN_{k + 1:05d}.dcm"))
    return written
