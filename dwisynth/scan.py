"""Draft a sample sheet from a DICOM tree (hospital export, TCIA download, datalad / git-annex dataset).

One row per series (SeriesInstanceUID) the workflow takes: trace-weighted DWI with several b-values (classic
or enhanced multi-frame) and CT. Every other series is listed with the reason it was skipped, as comment
lines at the end of the sheet (`read_sample_sheet` ignores lines starting with '#'): nothing is dropped
without a word. Symbolic links are followed (each folder once, so a link cycle ends); a link that leads
outside the scanned root is reported, not followed, as the workflow reads only under its data_root.

Subjects get pseudonyms S0001...; the patient identifiers stay in the DICOM. The sheet holds folder paths
(dicom_dir needs them); a series description that holds an identifier of its own header is not shown, and
the summary on stderr names no folder and no description (folder names can hold a patient's name).
Guessed columns are flagged in `review` for a person to confirm before the workflow runs.
"""

from __future__ import annotations

import os
import re
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd
from pydicom.dataset import Dataset

from dwisynth.dicom import frame_diffusion, read_header, vendor_from_manufacturer
from dwisynth.errors import DwisynthError
from dwisynth.identifiers import PLACEHOLDER_WORDS, find_identifiers_in_text, series_identifiers
from dwisynth.io import written_whole

COLUMNS = ["cohort", "center", "subject", "organ", "modality", "dicom_dir", "vendor", "split", "review"]
ORGAN_KEYWORDS = {
    "brain": ("brain", "head", "cerebr", "neuro", "skull"),
    "breast": ("breast", "mamm"),
    "abdomen": ("abdom", "liver", "kidney", "renal", "pancrea", "spleen"),
    "neck": ("neck", "thyroid", "pharyn", "laryn", "hn"),
    "pelvis": ("pelvi", "prostat", "rectum", "bladder", "uter", "cervix"),
}
SECONDARY_CAPTURE_STORAGE = "1.2.840.10008.5.1.4.1.1.7"
# ImageType values (any position) that mark a map computed from DWI, as Siemens, GE, Philips and Canon write
# them: ADC, exponential ADC, FA, colour FA, tensor
DERIVED_MAP_TYPES = {"ADC": "ADC", "EADC": "exponential ADC", "EXP": "exponential ADC",
                     "EXP_ADC": "exponential ADC", "FA": "FA", "COLFA": "colour FA", "COLOR_FA": "colour FA",
                     "FA_COLOR": "colour FA", "TENSOR": "tensor"}
# the same maps named in the SeriesDescription of a DERIVED series (Siemens "..._ColFA", Philips "dADC_...")
DERIVED_MAP_NAMES = {"adc": "ADC", "dadc": "ADC", "eadc": "exponential ADC", "exp": "exponential ADC", "fa": "FA",
                     "colfa": "colour FA", "tensor": "tensor"}
DERIVED_MAP_WORDS = re.compile(rf"(?<![a-z0-9])({'|'.join(DERIVED_MAP_NAMES)})(?![a-z0-9])")
LOCALIZER_WORDS = re.compile(r"(?<![a-z0-9])(scout|locali[sz]er|loc|survey|tri-?pilot|3-?plane)(?![a-z0-9])")
TRACE_TYPES = {"TRACE", "TRACEW", "ISOTROPIC"}
PHASE_TYPES = {"P", "PHASE"}
LINK_FIX = ("scan a folder that holds both the links and what they lead to (for a datalad / git-annex "
            "dataset its top folder), or copy the series under the root with `cp -rL`")


@dataclass
class Skipped:
    """A series with no row: where it is, what it is, why it was skipped (`kind` counts it in the summary)."""

    dicom_dir: str
    description: str
    kind: str
    reason: str


@dataclass
class TreeWalk:
    files: list[Path]
    links_outside: list[tuple[Path, Path]]  # (link, where it leads): not followed
    links_broken: list[Path]  # lead nowhere (a git-annex file whose content was not fetched)
    folders_unreadable: list[Path]


@dataclass
class TreeScan:
    """What a scan found: the drafted rows and everything it did not take, each with its reason."""

    sheet: pd.DataFrame
    skipped: list[Skipped] = field(default_factory=list)
    links_outside: list[tuple[Path, Path]] = field(default_factory=list)  # (link, where it leads): not followed
    links_broken: list[Path] = field(default_factory=list)
    folders_unreadable: list[Path] = field(default_factory=list)
    unreadable: Counter = field(default_factory=Counter)  # folder -> files that are not DICOM


@dataclass
class _Series:
    ds: Dataset  # the header of its first file
    folders: set = field(default_factory=set)
    bvals: set = field(default_factory=set)  # of every frame of every file
    image_types: list = field(default_factory=list)  # each file's ImageType values

    @property
    def image_type(self) -> set:
        return set().union(*self.image_types)


def guess_organ(ds) -> str:
    text = " ".join(str(ds.get(k, "")) for k in ("BodyPartExamined", "StudyDescription", "SeriesDescription")).lower()
    for organ, words in ORGAN_KEYWORDS.items():
        if any(w in text for w in words):
            return organ
    return ""


def walk_files(root: str | Path) -> TreeWalk:
    """Every file under root, through symbolic links to folders and files, each real folder and file once
    (a link cycle or a second link to the same series is not walked again). Hidden entries (.git, .datalad,
    .DS_Store) are passed over: git-annex keeps a second copy of every file under .git/annex.

    The files are named by their path under root, links not resolved, so a series is named where the user
    sees it (and where the workflow, which resolves dicom_dir against data_root, finds it).
    """
    root = Path(root)
    real_root = root.resolve()
    seen = {real_root}
    files, outside, broken, closed = [], [], [], []
    pending = [root]
    while pending:
        folder = pending.pop()
        try:
            with os.scandir(folder) as listing:
                entries = sorted(listing, key=lambda e: e.name)
        except OSError:  # no permission: reported with the files that cannot be read
            closed.append(folder)
            continue
        for entry in entries:
            if entry.name.startswith("."):
                continue
            path = Path(entry.path)
            real = Path(os.path.realpath(path))
            if entry.is_symlink() and not real.exists():
                broken.append(path)
            elif entry.is_symlink() and not real.is_relative_to(real_root):
                outside.append((path, real))
            elif real in seen:
                continue
            elif entry.is_dir():
                seen.add(real)
                pending.append(path)
            elif entry.is_file():
                seen.add(real)
                files.append(path)
    return TreeWalk(sorted(files), outside, broken, closed)


def scan_tree(root: str | Path, cohort: str = "study") -> TreeScan:
    """Read every file's header under root and draft one row per series the workflow takes (see the module
    docstring); every other series, link and unreadable file is in the result with its reason."""
    root = Path(root)
    if not root.is_dir():
        raise DwisynthError(f"{root}: not a folder; give the folder that holds the DICOM export")
    walk = walk_files(root)
    series: dict[str, _Series] = {}
    unreadable: Counter = Counter()
    for path in walk.files:
        try:
            ds = read_header(path)
        except Exception:  # not DICOM (notes, thumbnails) or broken (pydicom raises many types): reported
            unreadable[str(path.parent)] += 1
            continue
        try:
            uid = str(ds.get("SeriesInstanceUID", ""))
            image_type = {str(v).upper() for v in _multi(ds.get("ImageType"))}
            bvals = {b for b, _ in frame_diffusion(ds) if b is not None}  # classic and enhanced multi-frame
        except (ValueError, TypeError):  # a value that breaks its VR (a b-value "n/a"): reported as unreadable
            unreadable[str(path.parent)] += 1
            continue
        if not uid:
            continue  # a DICOMDIR (an index of the export, not an image)
        info = series.setdefault(uid, _Series(ds))
        info.folders.add(path.parent)
        info.image_types.append(frozenset(image_type))
        info.bvals |= bvals
    series_per_folder = defaultdict(set)
    for uid, info in series.items():
        for folder in info.folders:
            series_per_folder[folder].add(uid)

    kept, skipped = [], []
    for info in sorted(series.values(), key=lambda info: sorted(map(str, info.folders))):
        modality, kind, reason = _classify(info)
        if modality:
            kept.append((info, modality))
        else:
            skipped.append(_skipped(info, kind, reason))
    rows = _rows(kept, skipped, series_per_folder, cohort)
    skipped.sort(key=lambda s: s.dicom_dir)
    return TreeScan(pd.DataFrame(rows, columns=COLUMNS), skipped, walk.links_outside, walk.links_broken,
                    walk.folders_unreadable, unreadable)


def scan_dicom_tree(root: str | Path, cohort: str = "study") -> pd.DataFrame:
    """The drafted sample sheet alone (`scan_tree` for what was skipped and why)."""
    return scan_tree(root, cohort).sheet


def _multi(value) -> list:
    if value is None:
        return []
    return [value] if isinstance(value, str) else list(value)


def _classify(info: _Series) -> tuple[str, str, str]:
    """(modality of the row, "", "") for a series the workflow takes, else ("", kind, reason)."""
    ds, image_type = info.ds, info.image_type  # of every file
    modality = str(ds.get("Modality", ""))
    description = str(ds.get("SeriesDescription", "")).lower()
    if modality not in ("MR", "CT"):
        return "", "not MR or CT", f"Modality {modality or 'missing'}: dwisynth takes MR DWI and CT"
    if str(ds.get("SOPClassUID", "")) == SECONDARY_CAPTURE_STORAGE:
        return "", "secondary capture", "secondary capture (a picture of images, not an image series)"
    if "LOCALIZER" in image_type or LOCALIZER_WORDS.search(description):
        why = "ImageType LOCALIZER" if "LOCALIZER" in image_type else "named so in its description"
        return "", "localizer", f"localizer ({why}): not a diffusion series"
    # a series whose every file is a phase image or a map; one that only holds some is a row with a review note
    if all(t & PHASE_TYPES for t in info.image_types) or str(ds.get("ComplexImageComponent", "")).upper() == "PHASE":
        return "", "phase image", "phase image (ImageType P/PHASE): the workflow takes magnitude images"
    maps = [_map_name(t) for t in info.image_types]
    derived_map = maps[0] if all(maps) else None
    if derived_map is None and all("DERIVED" in t for t in info.image_types):
        word = DERIVED_MAP_WORDS.search(description)
        derived_map = word and DERIVED_MAP_NAMES[word[1]]
    if derived_map:
        return "", "derived map", (f"derived {derived_map} map: the workflow computes its own maps from the "
                                   "trace-weighted DWI")
    if modality == "CT":
        return "CT", "", ""
    if not info.bvals:
        return "", "not DWI", "MR with no diffusion b-value in its tags: not a DWI series"
    if len(info.bvals) == 1:
        b = next(iter(info.bvals))
        return "", "one b-value", (f"one b-value only (b={b:g} s/mm²): a DWI row needs b0 and a higher b in one "
                                   "series; export them together into one folder")
    return "DWI", "", ""


def _map_name(image_type) -> str | None:
    return next((DERIVED_MAP_TYPES[t] for t in sorted(image_type) if t in DERIVED_MAP_TYPES), None)


def _mixed_images(info: _Series) -> list[str]:
    """Review notes for a series that holds some phase images or derived maps among its DWI (Philips can
    export them in one series); dcm2niix converts every file of the folder."""
    notes = []
    if any(t & PHASE_TYPES for t in info.image_types):
        notes.append("holds phase images")
    if any(_map_name(t) for t in info.image_types):
        notes.append("holds derived maps")
    return notes


def _skipped(info: _Series, kind: str, reason: str) -> Skipped:
    ds = info.ds
    description = str(ds.get("SeriesDescription", "")).strip() or "no description"
    if find_identifiers_in_text(description, series_identifiers([ds])):
        description = "description not shown: it holds a patient identifier"
    return Skipped(str(sorted(info.folders)[0]), description, kind, reason)


def _is_trace(info: _Series) -> bool:
    return bool(info.image_type & TRACE_TYPES)


def _rows(kept, skipped: list[Skipped], series_per_folder, cohort: str) -> list[dict]:
    """One DWI row per patient (the trace-weighted series with the most b-values first) and its CT, if any;
    other series of the same patient and a CT without DWI go to `skipped`, as the sheet allows one series
    per subject and modality and a CT is registered to its subject's DWI."""
    def patient(info):
        # the ID with name and birth date (one MRN at two sites are two patients); a blank or placeholder ID
        # ("ANONYMOUS") says nothing, so each study is then its own subject
        ds = info.ds
        patient_id = str(ds.get("PatientID", "")).strip()
        if not patient_id or patient_id.casefold() in PLACEHOLDER_WORDS:
            return ("study", str(ds.get("StudyInstanceUID", "")) or str(sorted(info.folders)[0]))
        return ("patient", patient_id, str(ds.get("PatientName", "")), str(ds.get("PatientBirthDate", "")))

    def study(info):
        return str(info.ds.get("StudyInstanceUID", ""))

    def preference(kept_series):  # every DWI before any CT; a CT of the chosen DWI's study first
        info, modality = kept_series
        if modality == "DWI":
            return False, not _is_trace(info), -len(info.bvals)
        dwi = chosen_dwi_study.get(patient(info))
        return True, study(info) != dwi, 0

    chosen: dict[tuple, _Series] = {}
    chosen_dwi_study = {}
    dwis = [(info, modality) for info, modality in kept if modality == "DWI"]
    for info, modality in sorted(dwis, key=preference):
        chosen_dwi_study.setdefault(patient(info), study(info))
    for info, modality in sorted(kept, key=preference):
        key = (patient(info), modality)
        if modality == "CT" and (patient(info), "DWI") not in chosen:
            skipped.append(_skipped(info, "CT without DWI", "CT of a patient with no DWI series here: the "
                                    "workflow registers a CT to its subject's DWI"))
        elif key not in chosen:
            chosen[key] = info
        else:
            first = str(sorted(chosen[key].folders)[0])
            skipped.append(_skipped(info, f"second {modality}", (
                f"the same patient has another {modality} series, the row for {first}; one {modality} series "
                "per subject: put this folder in that row's dicom_dir to use this one instead")))
    pseudonyms: dict[str, str] = {}
    rows = []
    for (key, modality), info in sorted(chosen.items(), key=lambda item: (sorted(map(str, item[1].folders)),
                                                                           item[0][1])):
        ds = info.ds
        folder = sorted(info.folders)[0]
        review = []
        organ = guess_organ(ds)
        if not organ:
            review.append("organ")
        if len(info.folders) > 1 or len(series_per_folder[folder]) > 1:
            review.append("folder mixes series")
        review += _mixed_images(info)
        rows.append({
            "cohort": cohort,
            "center": _center(ds),
            "subject": pseudonyms.setdefault(key, f"S{len(pseudonyms) + 1:04d}"),
            "organ": organ,
            "modality": modality,
            "dicom_dir": str(folder),
            "vendor": vendor_from_manufacturer(str(ds.get("Manufacturer", ""))) if modality == "DWI" else "",
            "split": "",
            "review": ",".join(review),
        })
    return rows


def _center(ds) -> str:
    """A center label from the scanner, not the institution (which can identify)."""
    vendor = vendor_from_manufacturer(str(ds.get("Manufacturer", "")))
    model = "".join(ch for ch in str(ds.get("ManufacturerModelName", "")) if ch.isalnum())
    return f"{vendor}{model}" or "unknown"


def report_lines(scan: TreeScan, root: str | Path) -> list[str]:
    """The comment lines that list, under the sheet, what the scan did not take and why."""
    lines = [f"# skipped: {s.dicom_dir} ({s.description}): {s.reason}" for s in scan.skipped]
    lines += [f"# not followed: {links} outside {root}: {LINK_FIX}" for links in _grouped_links(scan.links_outside)]
    lines += [f"# not followed: link {link} leads nowhere (a git-annex file not fetched? `datalad get` it, "
              "or remove the link)" for link in scan.links_broken]
    lines += [f"# not read: {folder}: {n} file{'s' * (n > 1)} not DICOM or not readable"
              for folder, n in sorted(scan.unreadable.items())]
    lines += [f"# not read: {folder}: folder not readable (permissions)" for folder in scan.folders_unreadable]
    return lines


def _grouped_links(links: list[tuple[Path, Path]]) -> list[str]:
    """"link X leads" for a link to a folder, "n file links in X lead" for the links to files of one folder (a
    git-annex series is a folder of links), in the order of X. Where they lead is not said: only paths under
    the scanned root, which the sheet's dicom_dir holds anyway, are written."""
    grouped = [(link, f"link {link} leads") for link, target in links if target.is_dir()]
    file_links = Counter(link.parent for link, target in links if not target.is_dir())
    grouped += [(folder, f"1 file link in {folder} leads" if n == 1 else f"{n} file links in {folder} lead")
                for folder, n in file_links.items()]
    return [text for _, text in sorted(grouped)]


def _counts(scan: TreeScan) -> list[str]:
    """What was not taken, counted by reason ("2 derived map", "1 link leading outside the root")."""
    kinds = Counter(s.kind for s in scan.skipped)
    counts = [f"{n} {kind}" for kind, n in sorted(kinds.items())]
    for n, what in ((len(scan.links_outside), "link(s) leading outside the root"),
                    (len(scan.links_broken), "link(s) leading nowhere"),
                    (sum(scan.unreadable.values()), "file(s) not DICOM or not readable"),
                    (len(scan.folders_unreadable), "folder(s) not readable")):
        if n:
            counts.append(f"{n} {what}")
    return counts


def summary(scan: TreeScan, root: str | Path, sheet_path: str | Path) -> list[str]:
    """What the user reads on stderr: counts by reason, no folder and no description (see the docstring)."""
    said = []
    if scan.skipped:
        kinds = Counter(s.kind for s in scan.skipped)
        said.append(f"[scan] skipped {len(scan.skipped)} series ("
                    + ", ".join(f"{n} {kind}" for kind, n in sorted(kinds.items()))
                    + f"); each is a '# skipped:' line at the end of {sheet_path} with its reason")
    if scan.links_outside:
        said.append(f"[scan] {len(scan.links_outside)} symbolic link(s) lead outside {root} and were not followed "
                    f"('# not followed:' lines in {sheet_path}); {LINK_FIX}")
    if scan.links_broken:
        said.append(f"[scan] {len(scan.links_broken)} symbolic link(s) lead nowhere ('# not followed:' lines in "
                    f"{sheet_path}); fetch their content (`datalad get`) or remove them")
    unread = [count for count in _counts(scan) if "not readable" in count]
    if unread:
        said.append(f"[scan] {' and '.join(unread)} ('# not read:' lines in {sheet_path})")
    return said


def write_drafted_sheet(scan: TreeScan, root: str | Path, path: str | Path) -> None:
    """The sheet, then its comment lines, written whole or not at all; no sheet when no series is a row."""
    path = Path(path)
    if scan.sheet.empty:
        raise DwisynthError(
            f"{root}: no series the workflow takes (trace-weighted DWI with several b-values, or CT with its "
            f"subject's DWI); found {', '.join(_counts(scan)) or 'no file'}; no sheet written. Give the folder "
            "that holds the DWI export")
    with written_whole(path, path.with_name(path.name + ".tmp")) as tmp:
        with open(tmp, "w", encoding="utf-8", newline="") as out:
            scan.sheet.to_csv(out, sep="\t", index=False, lineterminator="\n")
            out.writelines(line + "\n" for line in report_lines(scan, root))
