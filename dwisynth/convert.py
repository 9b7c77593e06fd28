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
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import nibabel as nib
import numpy as np

from dwisynth.dicom import (FrameError, element_value, first_number, image_frames, is_enhanced, read_bvalue,
                            read_series_headers, vendor_from_manufacturer)
from dwisynth.errors import DicomSeriesError, HeaderQCError
from dwisynth.identifiers import find_identifiers, find_identifiers_in_text, series_identifiers
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


def _file_labels(headers, pseudonymous: bool) -> dict[str, str]:
    """Each file of the series (by its filename) as messages may name it: its name, or its position when the
    folder and file names must stay out of logs (they can hold a patient's name). Built once per series: one
    sort per file made the check of a 544-file series take a fifth of a second."""
    names = sorted(str(h.filename) for h in headers)
    return {name: f"file {i} of {len(names)} (by name)" if pseudonymous else Path(name).name
            for i, name in enumerate(names, 1)}


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


def _series_images(folder: str, headers, pseudonymous: bool) -> list[tuple[str, float | None, tuple | None]]:
    """(how messages name it, b-value, ImagePositionPatient) of every 2D image of the series: each classic
    file, each frame of an enhanced multi-frame file."""
    images, labels = [], _file_labels(headers, pseudonymous)
    for ds in headers:
        if not is_enhanced(ds):  # the common case, kept to the two reads the checks need
            images.append((labels[str(ds.filename)], read_bvalue(ds),
                           element_value(ds, "ImagePositionPatient", [0, 0, 0])))
            continue
        label = labels[str(ds.filename)]
        try:
            frames = image_frames(ds)
        except FrameError as exc:
            raise HeaderQCError(f"{folder}: image {label}: {exc}; the file is damaged: re-export the series") from None
        for frame in frames:
            if frame.position is None:
                raise HeaderQCError(
                    f"{folder}: image {label}{frame.label()} has no position (PlanePositionSequence in its "
                    "per-frame or shared functional groups); the file is damaged: re-export the series")
            images.append((label + frame.label(), frame.bval, frame.position))
    return images


def supplied_file_names(bval: str | Path, bvec: str | Path | None, in_sheet: bool) -> tuple[str, str]:
    """How messages name a user's b-value and gradient files: by path, or by sample-sheet column when the
    paths must stay out of logs (they can hold a patient's name, like dicom_dir)."""
    if in_sheet:
        return "the bval file of the sample sheet", "the bvec file of the sample sheet"
    return str(bval), str(bvec)


def read_supplied_gradients(folder: str, bval: str | Path, bvec: str | Path | None,
                            in_sheet: bool = False) -> tuple[np.ndarray, np.ndarray]:
    """b-values (s/mm²) and gradient directions (3, n) a user gives for a series whose DICOM carries none, in
    FSL's format: the .bval file one row of n numbers, the .bvec file three rows of n (without one: zeros, as
    dcm2niix writes for trace-weighted images)."""
    bval_name, bvec_name = supplied_file_names(bval, bvec, in_sheet)

    def load(path: str | Path, name: str) -> np.ndarray:
        try:
            values = np.loadtxt(path, ndmin=2, dtype=float)
        except (OSError, ValueError) as exc:
            reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else "not a table of numbers"
            raise HeaderQCError(f"{folder}: cannot read {name}: {reason}; give a text file of whitespace-"
                                "separated numbers, FSL's .bval/.bvec format") from None
        if values.size == 0 or not np.isfinite(values).all():
            raise HeaderQCError(f"{folder}: {name} holds no values or a value that is not a finite number")
        return values

    bvals = load(bval, bval_name)
    if 1 not in bvals.shape:
        raise HeaderQCError(f"{folder}: {bval_name} holds a {bvals.shape[0]} x {bvals.shape[1]} table; give one "
                            "row of b-values, one per volume")
    bvals = bvals.ravel()
    if (bvals < 0).any():
        raise HeaderQCError(f"{folder}: {bval_name} holds a negative b-value")
    if bvec is None:
        return bvals, np.zeros((3, bvals.size))
    bvecs = load(bvec, bvec_name)
    if bvecs.shape != (3, bvals.size):
        raise HeaderQCError(f"{folder}: {bvec_name} holds {bvecs.shape[0]} rows of {bvecs.shape[1]} values; give 3 "
                            f"rows (x, y, z) of {bvals.size} values, one per b-value")
    return bvals, bvecs


def _check_dwi_headers(folder: str, headers, pseudonymous: bool = False, b0_max: float | None = None,
                       supplied_bvals: np.ndarray | None = None, supplied_named: str = "the b-value file") -> dict:
    """The series' b-values and slice positions, per image (classic files) or frame (enhanced files).
    supplied_bvals: b-values a user gives, one per volume, for a series whose DICOM carries none."""
    vendor = vendor_from_manufacturer(str(element_value(headers[0], "Manufacturer", "")))
    images = _series_images(folder, headers, pseudonymous)
    if supplied_bvals is not None:
        return _check_supplied_bvals(folder, images, vendor, supplied_bvals, supplied_named, b0_max)
    per_image = []
    for label, b, position in images:
        if b is None:
            manufacturer = headers[0].get("Manufacturer", "no Manufacturer")
            where = (f"in the tags dcm2niix reads for {vendor} ({manufacturer})" if not is_enhanced(headers[0])
                     else "in its MRDiffusionSequence (per-frame or shared functional groups)")
            raise HeaderQCError(f"{folder}: image {label} has no diffusion b-value {where}; is this a DWI series? "
                                "If its export dropped the b-values, give them in a .bval file (dwisynth convert "
                                "--bval, or the bval column of the sample sheet)")
        per_image.append((round(b, 1), tuple(round(float(x), 2) for x in position)))
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
    _check_bvalue_set(folder, sorted(images_per_b), b0_max,
                      "export the series with all its b-values into this folder")
    return {"vendor": vendor, "header_bvals": sorted(images_per_b)}


def _check_bvalue_set(folder: str, bvals: list[float], b0_max: float | None, fix: str) -> None:
    """A b0 and at least one higher b-value."""
    if len(bvals) == 1:
        raise HeaderQCError(f"{folder}: every image has b={bvals[0]:g}; an ADC and a synthesis need a b0 and at "
                            f"least one higher b-value: {fix}")
    if b0_max is not None and min(bvals) > b0_max:
        raise HeaderQCError(
            f"{folder}: no b0 volume (lowest b-value {min(bvals):g} > b0_max {b0_max:g}); ADC and "
            "normalization need a b0: add the b0 series to this folder or raise bvalues.b0_max"
        )


def _check_supplied_bvals(folder: str, images, vendor: str, bvals: np.ndarray, named: str,
                          b0_max: float | None) -> dict:
    """Supplied b-values stand in for tags the DICOM lacks: never beside tags it has, one per volume."""
    tagged = sorted({round(b, 1) for _, b, _ in images if b is not None})
    if tagged:
        own = ", ".join(f"b={b:g}" for b in tagged)
        raise HeaderQCError(f"{folder}: {named} gives b-values but the DICOM holds its own ({own}); leave out the "
                            "b-value file so the DICOM's are used")
    per_position = Counter(tuple(round(float(x), 2) for x in position) for _, _, position in images)
    counts = set(per_position.values())
    if len(counts) != 1:
        raise HeaderQCError(f"{folder}: the {len(per_position)} slice positions hold {min(counts)} to {max(counts)} "
                            "images each; the export is incomplete or mixes series: re-export the series")
    n_volumes = counts.pop()
    if bvals.size != n_volumes:
        raise HeaderQCError(
            f"{folder}: {named} holds {bvals.size} b-values but the series has {n_volumes} volumes ({len(images)} "
            f"images at {len(per_position)} slice positions); give one b-value per volume, in acquisition order")
    header_bvals = sorted({round(float(b), 1) for b in bvals})
    _check_bvalue_set(folder, header_bvals, b0_max, f"check {named}")
    return {"vendor": vendor, "header_bvals": header_bvals, "bvals_from": "b-value file"}


def _check_supplied_order(folder: str, img, bvals: np.ndarray, named: str) -> None:
    """Signal falls with b: volumes given the lowest b-value must be brighter in the body than those given the
    highest, or the file lists the b-values in another order than the series' volumes (dcm2niix's order)."""
    data = np.asanyarray(img.dataobj, dtype=np.float32)
    if data.ndim != 4 or data.shape[3] != bvals.size:
        return  # the count check after this one names the mismatch
    mean = data.mean(axis=3)
    body = mean > np.percentile(mean, 75)
    signal = data[body].mean(axis=0)
    low, high = signal[bvals == bvals.min()].mean(), signal[bvals == bvals.max()].mean()
    if low <= high:
        raise HeaderQCError(
            f"{folder}: the volumes {named} gives b={bvals.min():g} are no brighter ({low:.4g}) than those it gives "
            f"b={bvals.max():g} ({high:.4g}), though signal falls with b: the b-values are not in the series' "
            "volume order: list them in the order of the volumes as dcm2niix stacks them (by acquisition)")


def _check_slice_spacing(folder: str, headers) -> None:
    """Slices evenly spaced along the slice normal. dcm2niix fills a gap by interpolation (its _Eq image),
    which would hide a missing slice from every later step; mixed 5/10 mm head-CT reconstructions too."""
    first = image_frames(headers[0])[0] if is_enhanced(headers[0]) else None
    orientation = first.orientation if first is not None else element_value(headers[0], "ImageOrientationPatient")
    row_col = np.asarray(orientation or [1, 0, 0, 0, 1, 0], float).reshape(2, 3)
    normal = np.cross(row_col[0], row_col[1])
    positions = [np.asarray(position, float) for ds in headers for position in (
        [frame.position for frame in image_frames(ds)] if is_enhanced(ds)
        else [element_value(ds, "ImagePositionPatient", [0, 0, 0])])]
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
    corrected = sorted(tmp.glob(f"{stem}_Tilt*.nii")) or sorted(tmp.glob(f"{stem}_Eq*.nii"))
    if len(corrected) == 1:
        return corrected[0]
    # dcm2niix splits volumes it takes for derived maps into _ADC files (Philips isotropic
    # convention); they are dropped here, and the b-value check reports what is missing.
    images = sorted(p for p in tmp.glob("*.nii") if not p.name.startswith(f"{stem}_ADC"))
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
    bval: str | Path | None = None,
    bvec: str | Path | None = None,
) -> dict:
    """Convert one DICOM series folder to BIDS-named NIfTI in out_dir.

    Writes sub-<subject>_<dwi|ct>.nii.gz and .json (+ .bval/.bvec for DWI) and a
    QC record sub-<subject>_<dwi|ct>_qc.json; returns the QC record.
    source: how messages and the log name the series, e.g. "multicenter/sub-HA01 DWI (dicom_dir in the
    sample sheet)"; the workflow gives one so that no folder or file name (which can hold a patient's
    name) reaches logs/. Without it messages show the folder path.
    bval, bvec: FSL-format files with the b-values (one per volume, in acquisition order) and gradient
    directions of a DWI series whose DICOM carries no diffusion tag (`read_supplied_gradients`); refused
    for a series that has its own.
    """
    path = Path(dicom_dir)
    folder = source or str(path)  # what messages say
    out = Path(out_dir)
    if modality not in MODALITY_SUFFIX:
        raise HeaderQCError(f"{folder}: modality {modality!r} unknown; use one of {sorted(MODALITY_SUFFIX)}")
    supplied_bvals = supplied_bvecs = None
    if bval is not None or bvec is not None:
        if modality != "DWI" or bval is None:
            raise HeaderQCError(f"{folder}: " + ("b-values are for DWI series only" if modality != "DWI" else
                                "a gradient-direction file needs its b-value file: give both"))
        supplied_bvals, supplied_bvecs = read_supplied_gradients(folder, bval, bvec, source is not None)
    suffix = MODALITY_SUFFIX[modality]
    stem = f"sub-{subject}_{suffix}"

    # Stage outside results/: a killed job must not leave raw (identifying) sidecars there. The folder is
    # named after the destination, so a rerun after a kill (which runs no `finally`) removes what it left.
    tmp = staging_folder(out, stem)
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    dcm2niix = None
    compressor = ThreadPoolExecutor(max_workers=1)
    try:
        # dcm2niix converts into the staging folder while the headers are read and checked here (two cores
        # overlap: the conversion costs little more than dcm2niix alone); a failed check stops it. It writes
        # the image uncompressed (-z n): its gzip took two thirds of its time, and the checks decompressed the
        # image again. A thread gzips it as soon as it is written, beside the header checks (zlib releases
        # the GIL); the checks read it uncompressed.
        if path.is_dir():
            said = tempfile.TemporaryFile("w+")
            dcm2niix = subprocess.Popen([dcm2niix_binary(), "-b", "y", "-ba", "y", "-z", "n", "-f", stem,
                                         "-o", str(tmp), str(path)], stdout=said, stderr=subprocess.STDOUT, text=True)
            compressed = compressor.submit(_gzip_images, dcm2niix, tmp)
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
            record.update(_check_dwi_headers(
                folder, headers, source is not None, b0_max, supplied_bvals,
                supplied_file_names(bval, bvec, source is not None)[0]))
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
        staged = {"image": image, "json": tmp / f"{stem}.json"}  # the image checked uncompressed, copied gzipped
        img = nib.Nifti1Image.from_bytes(image.read_bytes())
        check_image_values(np.asanyarray(img.dataobj), folder)
        record["shape"] = list(img.shape)
        record["voxel_mm"] = [round(float(z), 4) for z in img.header.get_zooms()[:3]]
        if modality == "DWI":
            staged["bval"] = tmp / f"{stem}.bval"
            staged["bvec"] = tmp / f"{stem}.bvec"
            final["bval"], final["bvec"] = out / f"{stem}.bval", out / f"{stem}.bvec"
            if supplied_bvals is not None:  # in place of what dcm2niix wrote from no tags (nothing, or zeros)
                _check_supplied_order(folder, img, supplied_bvals,
                                      supplied_file_names(bval, bvec, source is not None)[0])
                staged["bval"].write_text(" ".join(f"{b:g}" for b in supplied_bvals) + "\n")
                staged["bvec"].write_text("".join(" ".join(f"{v:g}" for v in row) + "\n" for row in supplied_bvecs))
            record.update(_check_dwi_output(folder, img, staged["bval"], record["header_bvals"], b0_max))
        elif img.ndim != 3:
            raise HeaderQCError(f"{folder}: CT converted to {img.ndim}D {img.shape}; expected one 3D volume")
        sidecar = json.loads(staged["json"].read_text())
        removed = sorted(k for k in sidecar if k in IDENTIFYING_SIDECAR_KEYS)
        for key in removed:
            del sidecar[key]
        staged["json"].write_text(json.dumps(sidecar, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
        record["sidecar_keys_removed"] = removed
        # dcm2niix's own enumerations ("Gradient Echo EPI") and the record's are not identifiers, even for a
        # patient named Echo or a scan on the day of dcm2niix's release
        identifiers = series_identifiers(headers, also_public=[record["dcm2niix"], record["vendor"], "passed"] + [
            json.dumps(sidecar[k]) for k in SIDECAR_DESCRIPTOR_KEYS if k in sidecar])
        qc_path = tmp / f"{stem}_qc.json"
        record["checks"] = "passed"
        qc_path.write_text(json.dumps(record, indent=2) + "\n")
        staged["qc"], final["qc"] = qc_path, out / f"{stem}_qc.json"
        leaks = find_identifiers(staged.values(), identifiers)
        if leaks:
            # name the attribute and the kind of output, never the value nor the file name (a subject label
            # can be the identifier): this message reaches logs/
            output = {"image": "NIfTI image", "json": "sidecar", "bval": ".bval", "bvec": ".bvec", "qc": "QC record"}
            kind = {str(path): output[key] for key, path in staged.items()}
            in_names = [i for f, i in leaks if find_identifiers_in_text(Path(f).name, {i})]
            where = "; ".join(f"the {kind[f]} holds the {i.attribute}" for f, i in leaks[:5])
            raise HeaderQCError(f"{folder}: patient or site identifiers survived de-identification ({where}); "
                                "nothing was written. Remove the identifier from the DICOM field that carries "
                                "it (often SeriesDescription, ProtocolName or ImageComments) and convert again"
                                + (f"; the subject label (in every file name) holds the {in_names[0].attribute}: "
                                   "give the subject a pseudonym in the sample sheet" if in_names else ""))
        staged["image"] = compressed.result()[image.name]
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
        compressor.shutdown(wait=True)  # a compression still writing into the staging folder ends first
        shutil.rmtree(tmp, ignore_errors=True)


# zlib's level 6 (dcm2niix's default) took 1.2 s for a 544-slice DWI that dcm2niix's own gzip wrote in 0.25 s;
# level 1 took 0.13 s for a file 5% larger than dcm2niix's (bench/conversion.py).
GZIP_LEVEL = 1


def _gzip_images(dcm2niix: subprocess.Popen, tmp: Path) -> dict[str, Path]:
    """Once dcm2niix has succeeded, each image it wrote gzipped beside it (name -> .nii.gz), with no file name
    or time in the gzip header."""
    if dcm2niix.wait() != 0:
        return {}
    gzipped = {}
    for image in sorted(tmp.glob("*.nii")):
        gzipped[image.name] = image.with_name(f"{image.name}.gz")
        gzipped[image.name].write_bytes(gzip.compress(image.read_bytes(), compresslevel=GZIP_LEVEL, mtime=0))
    return gzipped


def staging_folder(out_dir: Path, stem: str) -> Path:
    """Where one conversion stages dcm2niix's raw output: in the temp folder, one per destination."""
    key = hashlib.sha256(f"{Path(out_dir).resolve()}/{stem}".encode()).hexdigest()[:16]
    return Path(tempfile.gettempdir()) / f"dwisynth-convert-{key}"


def _check_dwi_output(folder: str, img, bval_path: Path, header_bvals, b0_max: float) -> dict:
    if not bval_path.exists():
        raise HeaderQCError(f"{folder}: dcm2niix wrote no .bval although the headers hold b-values {header_bvals}: "
                            "dcm2niix cannot assemble this export's diffusion information; re-export "
                            "the series (classic DICOM, or enhanced with one volume per file)")
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
