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
"""

from __future__ import annotations

import io
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pydicom
from pydicom.datadict import tag_for_keyword
from pydicom.dataelem import RawDataElement
from pydicom.dataset import Dataset, FileMetaDataset
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


def _check_pixel_bytes(ds: Dataset, remaining: int) -> None:
    """Raise when the file's bytes after its header cannot hold the image its header describes.
    (Compressed transfer syntaxes are smaller by design and dcm2niix decodes them; a deflated file's
    position says nothing about its content.)"""
    if remaining <= 0:
        raise ValueError("no pixel data")
    syntax = ds.file_meta.TransferSyntaxUID
    if syntax.is_compressed or syntax.is_deflated:
        return
    element_header = 8 if syntax.is_implicit_VR else 12  # tag, (VR, reserved,) length
    expected = int(element_value(ds, "Rows")) * int(element_value(ds, "Columns")) * int(
        element_value(ds, "BitsAllocated")) // 8 * int(element_value(ds, "SamplesPerPixel", 1)) * int(
        element_value(ds, "NumberOfFrames", 1) or 1)
    if remaining - element_header < expected:
        raise ValueError(f"pixel data has {max(remaining - element_header, 0)} of {expected} bytes")


def read_header(path: str | Path, **kwargs) -> Dataset:
    """One file's header, without its pixels, its values converted without warnings that echo them (see
    reading_validation_mode above); kwargs such as specific_tags go to pydicom's dcmread."""
    return pydicom.dcmread(path, stop_before_pixels=True, **kwargs)


def read_series_headers(dicom_dir: str | Path, source: str | None = None) -> list[Dataset]:
    """Read every file's header in a series folder, failing on the first bad file.

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
            # The header only: pydicom stops at the pixel data and leaves the stream there, so the bytes
            # that follow tell whether the pixels are complete (a truncated file often has a complete header)
            # without converting them. A single-frame file is parsed from memory: pydicom's many small reads
            # and tells cost a fifth of the parse on a file.
            size = path.stat().st_size
            with open(path, "rb") as file:
                stream = io.BytesIO(file.read()) if size <= IN_MEMORY_BYTES else file
                ds = pydicom.dcmread(stream, stop_before_pixels=True)
                pixels_at = stream.tell()
            ds.filename = str(path)
            _check_pixel_bytes(ds, size - pixels_at)
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
