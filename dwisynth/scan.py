"""Draft a sample sheet from a DICOM tree (hospital export or TCIA download).

One row per series (SeriesInstanceUID). Subjects get pseudonyms S0001...; the
patient identifiers stay in the DICOM. Guessed columns are flagged in `review`
for a person to confirm before the workflow runs.
"""

from __future__ import annotations

from collections import defaultdict
from pathlib import Path

import pandas as pd

from dwisynth.dicom import read_bvalue, read_header, vendor_from_manufacturer

ORGAN_KEYWORDS = {
    "brain": ("brain", "head", "cerebr", "neuro", "skull"),
    "breast": ("breast", "mamm"),
    "abdomen": ("abdom", "liver", "kidney", "renal", "pancrea", "spleen"),
    "neck": ("neck", "thyroid", "pharyn", "laryn", "hn"),
    "pelvis": ("pelvi", "prostat", "rectum", "bladder", "uter", "cervix"),
}


def guess_organ(ds) -> str:
    text = " ".join(str(ds.get(k, "")) for k in ("BodyPartExamined", "StudyDescription", "SeriesDescription")).lower()
    for organ, words in ORGAN_KEYWORDS.items():
        if any(w in text for w in words):
            return organ
    return ""


def scan_dicom_tree(root: str | Path, cohort: str = "study") -> pd.DataFrame:
    root = Path(root)
    series = {}
    folders_per_series = defaultdict(set)
    series_per_folder = defaultdict(set)
    for path in sorted(p for p in root.rglob("*") if p.is_file()):
        try:
            ds = read_header(path)
        except Exception:
            continue  # not DICOM (DICOMDIR, notes, thumbnails)
        uid = str(ds.get("SeriesInstanceUID", ""))
        if not uid:
            continue
        folders_per_series[uid].add(path.parent)
        series_per_folder[path.parent].add(uid)
        info = series.setdefault(uid, {"ds": ds, "bvals": set(), "patient": str(ds.get("PatientID", ""))})
        b = read_bvalue(ds)
        if b is not None:
            info["bvals"].add(b)
    pseudonyms: dict[str, str] = {}
    rows = []
    for uid, info in series.items():
        ds = info["ds"]
        modality = {"CT": "CT", "MR": "DWI"}.get(str(ds.get("Modality", "")), "")
        if modality == "DWI" and not info["bvals"]:
            continue  # MR but not diffusion
        if not modality:
            continue
        subject = pseudonyms.setdefault(info["patient"], f"S{len(pseudonyms) + 1:04d}")
        folder = sorted(folders_per_series[uid])[0]
        review = []
        organ = guess_organ(ds)
        if not organ:
            review.append("organ")
        if len(folders_per_series[uid]) > 1 or len(series_per_folder[folder]) > 1:
            review.append("folder mixes series")
        rows.append({
            "cohort": cohort,
            "center": _center(ds),
            "subject": subject,
            "organ": organ,
            "modality": modality,
            "dicom_dir": str(folder),
            "vendor": vendor_from_manufacturer(str(ds.get("Manufacturer", ""))) if modality == "DWI" else "",
            "split": "",
            "review": ",".join(review),
        })
    return pd.DataFrame(rows, columns=["cohort", "center", "subject", "organ", "modality", "dicom_dir",
                                       "vendor", "split", "review"])


def _center(ds) -> str:
    """A center label from the scanner, not the institution (which can identify)."""
    vendor = vendor_from_manufacturer(str(ds.get("Manufacturer", "")))
    model = "".join(ch for ch in str(ds.get("ManufacturerModelName", "")) if ch.isalnum())
    return f"{vendor}{model}" or "unknown"
