"""DICOM series -> NIfTI with dcm2niix, then header QC and de-identification.

One call converts one series folder and touches no other series. Files are
written to a temporary folder beside the destination and moved in only when
every check has passed, so a failure leaves no half-written output.
"""

from __future__ import annotations

import functools
import gzip
import hashlib
import json
import os
import re
import shutil
import subprocess
import tempfile
from collections import Counter
from pathlib import Path

import nibabel as nib
import numpy as np

from dwisynth.dicom import element_value, first_number, read_bvalue, read_series_headers, vendor_from_manufacturer
from dwisynth.errors import DicomSeriesError, HeaderQCError
from dwisynth.identifiers import find_identifiers, series_identifiers
from dwisynth.io import check_image_values

MODALITY_SUFFIX = {"DWI": "dwi", "CT": "ct"}
DICOM_MODALITY = {"DWI": "MR", "CT": "CT"}

# dcm2niix -ba y drops names, IDs, dates and UIDs but keeps these; they identify
# the site or the device and, with the date of a scan, can identify a patient.
IDENTIFYING_SIDECAR_KEYS = {
    "InstitutionName", "InstitutionAddress", "InstitutionalDepartmentName", "StationName",
    "DeviceSerialNumber", "ReferringPhysicianName", "PerformingPhysicianName", "OperatorsName",
    "PatientName", "PatientID", "PatientBirthDate", "AccessionNumber", "StudyInstanceUID",
    "SeriesInstanceUID", "AcquisitionDateTime", "StudyDate", "SeriesDate", "AcquisitionDate",
    "ProcedureStepDescription", "PatientWeight", "PatientSize",
}

# Sidecar keys whose values dcm2niix writes from fixed vocabularies (never typed by a person).
SIDECAR_DESCRIPTOR_KEYS = (
    "Modality", "Manufacturer", "ManufacturersModelName", "BodyPart", "PatientPosition", "MRAcquisitionType",
    "ScanningSequence", "SequenceVariant", "ScanOptions", "SequenceName", "PulseSequenceType", "ImageType",
    "PhaseEncodingAxis", "PhaseEncodingDirection", "InPlanePhaseEncodingDirectionDICOM", "BidsGuess",
    "ConversionSoftware", "ConversionSoftwareVersion",
)


def dcm2niix_binary() -> str:
    import dcm2niix

    return dcm2niix.bin


@functools.lru_cache(maxsize=1)  # one binary per installation: asked once per process, not per series
def dcm2niix_version() -> str:
    out = subprocess.run([dcm2niix_binary(), "--version"], capture_output=True, text=True)
    text = (out.stdout + out.stderr).strip().splitlines()
    return next((line for line in text if "v1." in line), text[-1] if text else "unknown").strip()


def _file_label(ds, headers, pseudonymous: bool) -> str:
    """A file of the series as messages may name it: its name, or its position when the folder and file
    names must stay out of logs (they can hold a patient's name)."""
    if not pseudonymous:
        return Path(ds.filename).name
    return f"file {sorted(str(h.filename) for h in headers).index(str(ds.filename)) + 1} of {len(headers)} (by name)"


def _without_file_names(text: str, dicom_dir: Path, folder: str) -> str:
    """dcm2niix's output with each file of the series named by its position (as `read_series_headers` names
    it) and the series folder by `folder`: folder and file names can hold a patient's name.

    One pass, so a label already written is never rewritten; a path under the folder that is not one of its
    files (dcm2niix also searches subfolders, whose names may hold spaces) is cut to the end of its line.
    A name on its own is replaced only if it holds a letter: "3" in "Found 3 DICOM file(s)" is a count.
    """
    files = sorted(p for p in dicom_dir.iterdir() if p.is_file() and not p.name.startswith("."))
    labels = {p.name: f"file {i} of {len(files)} (by name)" for i, p in enumerate(files, 1)}
    names = "|".join(re.escape(n) for n in sorted(labels, key=len, reverse=True)) or "(?!)"  # (?!) matches nothing
    worded = "|".join(re.escape(n) for n in sorted(labels, key=len, reverse=True) if re.search("[A-Za-z]", n))
    spellings = {str(dicom_dir), str(dicom_dir.absolute()), str(dicom_dir.resolve())}
    folders = "|".join(re.escape(s) for s in sorted(spellings, key=len, reverse=True))
    pattern = (rf"(?:{folders})/(?P<file>{names})(?![\w.-])|(?P<folder>(?:{folders})[^\n'\"]*)"
               + (rf"|(?<![\w.-])(?P<bare>{worded})(?![\w.-])" if worded else ""))

    def label(match: re.Match) -> str:
        if match["file"] is not None:
            return labels[match["file"]]
        return folder if match["folder"] is not None else labels[match["bare"]]

    return re.sub(pattern, label, text)


def _check_dwi_headers(folder: str, headers, pseudonymous: bool = False) -> dict:
    vendor = vendor_from_manufacturer(str(element_value(headers[0], "Manufacturer", "")))
    per_image = []
    for ds in headers:
        b = read_bvalue(ds)
        if b is None:
            raise HeaderQCError(
                f"{folder}: image {_file_label(ds, headers, pseudonymous)} has no diffusion b-value in the tags dcm2niix reads "
                f"for {vendor} ({ds.get('Manufacturer', 'no Manufacturer')}); is this a DWI series?"
            )
        position = tuple(round(float(x), 2) for x in element_value(ds, "ImagePositionPatient", [0, 0, 0]))
        per_image.append((round(b, 1), position))
    positions = {p for _, p in per_image}
    images_per_b = Counter(b for b, _ in per_image)
    # Every b-value must cover every slice position, possibly several times (repeats are averaged later).
    incomplete = {b: n for b, n in images_per_b.items()
                  if n % len(positions) or {p for bb, p in per_image if bb == b} != positions}
    if incomplete:
        detail = ", ".join(f"b={b:g}: {n} images" for b, n in sorted(images_per_b.items()))
        raise HeaderQCError(
            f"{folder}: inconsistent b-values, not every b-value covers the {len(positions)} slice positions "
            f"({detail}); the export is incomplete or mixes series: re-export the series"
        )
    if len(images_per_b) == 1:
        raise HeaderQCError(
            f"{folder}: every image has b={next(iter(images_per_b)):g}; an ADC and a synthesis need a b0 and at "
            "least one higher b-value: export the series with all its b-values into this folder"
        )
    return {"vendor": vendor, "header_bvals": sorted(images_per_b)}


def _check_slice_spacing(folder: str, headers) -> None:
    """Slices evenly spaced along the slice normal. dcm2niix fills a gap by interpolation (its _Eq image),
    which would hide a missing slice from every later step; mixed 5/10 mm head-CT reconstructions too."""
    row_col = np.asarray(element_value(headers[0], "ImageOrientationPatient", [1, 0, 0, 0, 1, 0]), float).reshape(2, 3)
    normal = np.cross(row_col[0], row_col[1])
    positions = [np.asarray(element_value(ds, "ImagePositionPatient", [0, 0, 0]), float) for ds in headers]
    depths = sorted({round(float(np.dot(normal, position)), 2) for position in positions})
    steps = np.diff(depths)
    if steps.size < 2 or steps.max() <= 1.1 * steps.min():
        return
    jump = int(np.argmax(np.abs(steps - np.median(steps)))) + 1
    raise HeaderQCError(
        f"{folder}: slice spacing is uneven ({steps.min():.2f} to {steps.max():.2f} mm; the gap of "
        f"{steps[jump - 1]:.2f} mm follows slice {jump} of {len(depths)}): slices are missing or reconstructions "
        "with different spacing are mixed; re-export the complete series with one slice spacing"
    )


def _pick_output(tmp: Path, stem: str, folder: str) -> Path:
    """The one image dcm2niix wrote; with gantry tilt its tilt-corrected copy (stroke head CT is often
    tilted away from the orbits; the uncorrected image has sheared geometry NIfTI cannot hold)."""
    corrected = sorted(tmp.glob(f"{stem}_Tilt*.nii.gz")) or sorted(tmp.glob(f"{stem}_Eq*.nii.gz"))
    if len(corrected) == 1:
        return corrected[0]
    # dcm2niix splits volumes it takes for derived maps into _ADC files (Philips isotropic
    # convention); they are dropped here, and the b-value check reports what is missing.
    images = sorted(p for p in tmp.glob("*.nii.gz") if not p.name.startswith(f"{stem}_ADC"))
    if len(images) != 1:
        names = ", ".join(p.name for p in images) or "none"
        raise DicomSeriesError(
            f"{folder}: dcm2niix wrote {len(images)} images ({names}) where one series should give one; "
            "the folder probably mixes series or echoes: give each series its own folder"
        )
    return images[0]


def convert_series(
    dicom_dir: str | Path,
    out_dir: str | Path,
    subject: str,
    modality: str = "DWI",
    b0_max: float = 10.0,
    log=print,
    source: str | None = None,
) -> dict:
    """Convert one DICOM series folder to BIDS-named NIfTI in out_dir.

    Writes sub-<subject>_<dwi|ct>.nii.gz and .json (+ .bval/.bvec for DWI) and a
    QC record sub-<subject>_<dwi|ct>_qc.json; returns the QC record.
    source: how messages and the log name the series, e.g. "multicenter/sub-HA01 DWI (dicom_dir in the
    sample sheet)"; the workflow gives one so that no folder or file name (which can hold a patient's
    name) reaches logs/. Without it messages show the folder path.
    """
    path = Path(dicom_dir)
    folder = source or str(path)  # what messages say
    out = Path(out_dir)
    if modality not in MODALITY_SUFFIX:
        raise HeaderQCError(f"{folder}: modality {modality!r} unknown; use one of {sorted(MODALITY_SUFFIX)}")
    suffix = MODALITY_SUFFIX[modality]
    stem = f"sub-{subject}_{suffix}"

    # Stage outside results/: a killed job must not leave raw (identifying) sidecars there. The folder is
    # named after the destination, so a rerun after a kill (which runs no `finally`) removes what it left.
    tmp = staging_folder(out, stem)
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    dcm2niix = None
    try:
        # dcm2niix converts into the staging folder while the headers are read and checked here (two cores
        # overlap: the conversion costs little more than dcm2niix alone); a failed check stops it
        if path.is_dir():
            said = tempfile.TemporaryFile("w+")
            dcm2niix = subprocess.Popen([dcm2niix_binary(), "-b", "y", "-ba", "y", "-z", "y", "-f", stem,
                                         "-o", str(tmp), str(path)], stdout=said, stderr=subprocess.STDOUT, text=True)
        headers = read_series_headers(path, source)
        log(f"[convert] {folder}: {len(headers)} DICOM files read")
        found_modality = {str(element_value(ds, "Modality", "")) for ds in headers}
        if found_modality != {DICOM_MODALITY[modality]}:
            raise HeaderQCError(
                f"{folder}: the sample sheet says {modality} but the DICOM Modality is {sorted(found_modality)}; "
                "fix the modality column or the dicom_dir"
            )
        series = {str(element_value(ds, "SeriesInstanceUID", "")) for ds in headers}
        if len(series) != 1:
            raise DicomSeriesError(
                f"{folder}: folder holds {len(series)} series (SeriesInstanceUID); dcm2niix converts every file "
                "in a folder, so give each series its own folder (dwisynth scan drafts the sheet per series)"
            )
        record = {"subject": subject, "modality": modality, "n_dicom_files": len(headers),
                  "manufacturer": str(headers[0].get("Manufacturer", "")),
                  "vendor": vendor_from_manufacturer(str(headers[0].get("Manufacturer", ""))),
                  "dcm2niix": dcm2niix_version()}
        if modality == "DWI":
            record.update(_check_dwi_headers(folder, headers, source is not None))
        _check_slice_spacing(folder, headers)
        tilt = first_number(headers[0].get("GantryDetectorTilt", 0) or 0)
        if tilt:
            record["gantry_tilt_deg"] = tilt

        if dcm2niix.wait() != 0:
            said.seek(0)
            text = said.read().strip()
            if source is not None:
                text = _without_file_names(text, path, folder)
            raise DicomSeriesError(f"{folder}: dcm2niix failed (exit {dcm2niix.returncode}): {text}")
        image = _pick_output(tmp, stem, folder)
        final = {"image": out / f"{stem}.nii.gz", "json": out / f"{stem}.json"}
        # dcm2niix writes the sidecar (and bval/bvec) under the base name even for an _Eq image
        staged = {"image": image, "json": tmp / f"{stem}.json"}
        # decompressed in one call: nibabel's streamed read of the gzip took a third longer
        img = nib.Nifti1Image.from_bytes(gzip.decompress(image.read_bytes()) if image.suffix == ".gz"
                                         else image.read_bytes())
        check_image_values(np.asanyarray(img.dataobj), folder)
        record["shape"] = list(img.shape)
        record["voxel_mm"] = [round(float(z), 4) for z in img.header.get_zooms()[:3]]
        if modality == "DWI":
            staged["bval"] = tmp / f"{stem}.bval"
            staged["bvec"] = tmp / f"{stem}.bvec"
            final["bval"], final["bvec"] = out / f"{stem}.bval", out / f"{stem}.bvec"
            record.update(_check_dwi_output(folder, img, staged["bval"], record["header_bvals"], b0_max))
        elif img.ndim != 3:
            raise HeaderQCError(f"{folder}: CT converted to {img.ndim}D {img.shape}; expected one 3D volume")
        sidecar = json.loads(staged["json"].read_text())
        removed = sorted(k for k in sidecar if k in IDENTIFYING_SIDECAR_KEYS)
        for key in removed:
            del sidecar[key]
        staged["json"].write_text(json.dumps(sidecar, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
        record["sidecar_keys_removed"] = removed
        # dcm2niix's own enumerations ("Gradient Echo EPI") are not identifiers, even for a patient named Echo
        identifiers = series_identifiers(headers, also_ambiguous=[record["dcm2niix"]] + [
            json.dumps(sidecar[k]) for k in SIDECAR_DESCRIPTOR_KEYS if k in sidecar])
        qc_path = tmp / f"{stem}_qc.json"
        record["checks"] = "passed"
        qc_path.write_text(json.dumps(record, indent=2) + "\n")
        staged["qc"], final["qc"] = qc_path, out / f"{stem}_qc.json"
        leaks = find_identifiers(staged.values(), identifiers)
        if leaks:
            # name the attribute, never the value: this message reaches logs/
            where = "; ".join(f"{Path(f).name} holds the {i.attribute}" for f, i in leaks[:5])
            raise HeaderQCError(f"{folder}: patient or site identifiers survived de-identification ({where}); "
                                "nothing was written. Remove the identifier from the DICOM field that carries "
                                "it (often SeriesDescription, ProtocolName or ImageComments) and convert again")
        out.mkdir(parents=True, exist_ok=True)
        for key, src in staged.items():  # copy beside the target, then rename: no partial file under its name
            partial = final[key].with_name(f".{final[key].name}.partial")
            shutil.copyfile(src, partial)
            os.replace(partial, final[key])
        log(f"[convert] {folder} -> {final['image']} {tuple(img.shape)}"
            + (f" b={record['bvals']}" if modality == "DWI" else ""))
        return record
    finally:
        if dcm2niix is not None:
            if dcm2niix.poll() is None:  # a check failed while it ran
                dcm2niix.kill()
                dcm2niix.wait()
            said.close()
        shutil.rmtree(tmp, ignore_errors=True)


def staging_folder(out_dir: Path, stem: str) -> Path:
    """Where one conversion stages dcm2niix's raw output: in the temp folder, one per destination."""
    key = hashlib.sha256(f"{Path(out_dir).resolve()}/{stem}".encode()).hexdigest()[:16]
    return Path(tempfile.gettempdir()) / f"dwisynth-convert-{key}"


def _check_dwi_output(folder: str, img, bval_path: Path, header_bvals, b0_max: float) -> dict:
    if not bval_path.exists():
        raise HeaderQCError(f"{folder}: dcm2niix wrote no .bval; the series has no diffusion information")
    bvals = np.loadtxt(bval_path, ndmin=1)
    n_volumes = img.shape[3] if img.ndim == 4 else 1
    if bvals.size != n_volumes:
        raise HeaderQCError(f"{folder}: {bvals.size} b-values for {n_volumes} volumes; re-export the series")
    converted = sorted(set(np.round(bvals, 1).tolist()))
    if len(converted) != len(header_bvals) or not np.allclose(converted, header_bvals, atol=1.0):
        raise HeaderQCError(
            f"{folder}: inconsistent b-values, dcm2niix read {sorted(set(bvals.tolist()))} but the "
            f"headers hold {header_bvals}; check the vendor tags"
        )
    if bvals.min() > b0_max:
        raise HeaderQCError(
            f"{folder}: no b0 volume (lowest b-value {bvals.min():g} > b0_max {b0_max:g}); ADC and "
            "normalization need a b0: add the b0 series to this folder or raise bvalues.b0_max"
        )
    return {"bvals": [float(b) for b in bvals], "n_volumes": int(n_volumes)}
