"""What the viewer does to a study, without the web server: open it, synthesize at a b-value, read voxels, export.

A study is one subject's images as the workflow leaves them: a normalized DWI (S/S0, RAS voxel order) with its
b-values and organ mask, and/or a CT on a grid a CT -> DWI model can read. It comes from a subject under
`results/`, or from a DICOM series folder / NIfTI that goes through the same conversion (de-identified) and
preprocessing as the workflow (`dwisynth.convert.convert_series`, `preprocess_subject`). Synthesis calls the
functions `dwisynth synthesize` and `dwisynth ct2dwi` call, so the viewer shows the numbers the CLI writes.

Every file lives in the session's workspace folder under a study id ("s1", ...); nothing is written elsewhere.
Messages name the study by its id or the path the user gave, never by a DICOM header value.
"""

from __future__ import annotations

import functools
import json
import shutil
import zipfile
from dataclasses import dataclass, field
from pathlib import Path

import nibabel as nib
import numpy as np

from dwisynth.errors import DwisynthError

ORGANS = ("brain", "breast", "abdomen", "neck", "pelvis")
BODY_PART_ORGAN = {"BRAIN": "brain", "HEAD": "brain", "BREAST": "breast", "ABDOMEN": "abdomen", "LIVER": "abdomen",
                   "NECK": "neck", "PELVIS": "pelvis", "PROSTATE": "pelvis"}


class ViewerError(DwisynthError):
    """A request the viewer refuses; `status` is the HTTP status the server answers with."""

    def __init__(self, message: str, status: int = 400):
        super().__init__(message)
        self.status = status


@dataclass(frozen=True)
class ModelInfo:
    """A model.pt under the models folder, as the page lists it."""

    id: str  # its folder below the models folder: "minegan/abdomen", "ct2dwi/main/jmmdagan"
    path: Path
    method: str
    task: str  # "multib" | "ct2dwi"
    organ: str
    input_b: tuple[float, ...]
    trained_b: tuple[float, ...]  # the b-values it was trained (or held out) for: the slider's ticks
    b_range: tuple[float, float] | None  # a b-conditioned model takes any b in here; None: trained_b only

    def describe(self) -> dict:
        return {"id": self.id, "method": self.method, "task": self.task, "organ": self.organ,
                "input_b": list(self.input_b), "trained_b": list(self.trained_b),
                "b_range": list(self.b_range) if self.b_range else None}


def list_models(models_dir: str | Path) -> list[ModelInfo]:
    """Every readable model.pt below models_dir (unreadable ones are left out with a note on stdout)."""
    import torch

    root = Path(models_dir)
    found = []
    for path in sorted(root.rglob("model.pt")) if root.is_dir() else []:
        try:
            record = torch.load(path, map_location="cpu", weights_only=True)
            b_range = tuple(float(v) for v in record["b_range"]) if record.get("b_conditioned") else None
            trained = record.get("synthesize_b", record["target_b"])
            found.append(ModelInfo(str(path.parent.relative_to(root)), path, str(record["method"]),
                                   str(record.get("task", "multib")), str(record.get("organ", "")),
                                   tuple(float(b) for b in record["input_b"]), tuple(sorted(float(b) for b in trained)),
                                   b_range))
        except Exception as exc:  # a half-trained or foreign file must not take the viewer down
            print(f"[view] {path}: not listed ({exc.__class__.__name__}: {exc})")
    return found


def results_subjects(results_dir: str | Path) -> list[dict]:
    """Subjects of a workflow run that the viewer can open: cohort, subject, organ, and whether a CT is there."""
    from dwisynth.layout import preproc_files

    results = Path(results_dir)
    organs = {}
    split = results / "datasets" / "split.tsv"
    if split.is_file():
        import pandas as pd

        table = pd.read_csv(split, sep="\t", dtype=str)
        organs = {(r.cohort, r.subject): (r.organ, r.split) for r in table.itertuples()}
    subjects = []
    for norm in sorted(results.glob("*/preproc/sub-*/sub-*_desc-norm_dwi.nii.gz")):
        cohort, subject = norm.parts[-4], norm.parent.name[len("sub-"):]
        files = preproc_files(norm.parent / f"sub-{subject}")
        organ, split_name = organs.get((cohort, subject), ("", ""))
        subjects.append({"cohort": cohort, "subject": subject, "organ": organ, "split": split_name,
                         "ct": Path(files["ct"]).is_file()})
    return subjects


@dataclass
class Study:
    """One opened subject. Paths point into the workspace (or, for a results subject, into results/)."""

    id: str
    label: str  # what the page calls it: "multicenter/sub-HAabdomen01", or "upload 2"
    organ: str | None
    folder: Path  # the study's own folder in the workspace: syntheses and exports go here
    dwi: Path | None = None  # normalized DWI (S/S0), 4D, RAS
    bval: Path | None = None
    mask: Path | None = None
    norm_record: Path | None = None
    adc: Path | None = None  # the acquired ADC (the workflow's fit of the normalized DWI)
    ct: Path | None = None  # CT in HU on the grid to synthesize on
    ct_mask: Path | None = None
    acquired_b: list[float] = field(default_factory=list)
    syntheses: dict = field(default_factory=dict)  # synthesis id -> Synthesis

    def describe(self) -> dict:
        return {"id": self.id, "label": self.label, "organ": self.organ, "acquired_b": self.acquired_b,
                "has_dwi": self.dwi is not None, "has_ct": self.ct is not None,
                "files": sorted(self.display_files())}

    def display_files(self) -> dict[str, Path]:
        """The 3D volumes the page may load, by name (the server serves nothing else)."""
        files = {name: self.folder / "display" / f"{name}.nii" for name in ("b0", "ct")}
        files = {k: v for k, v in files.items() if v.is_file()}
        for synthesis in self.syntheses.values():
            files |= synthesis.display
        return files


@dataclass
class Synthesis:
    """One synthesis of a study: the CLI's outputs (4D DWI + .bval [+ ADC]) and the 3D volumes the page shows."""

    id: str
    model: ModelInfo
    b: float
    outputs: dict  # {dwi, bval[, adc]} as `dwisynth synthesize` / `dwisynth ct2dwi` write them
    display: dict[str, Path]  # "<id>-synthetic", "<id>-adc", "<id>-acquired", "<id>-difference"

    def describe(self) -> dict:
        return {"id": self.id, "model": self.model.id, "b": self.b,
                "volumes": {name.split("-", 1)[1]: name for name in self.display}}


def _save_display(volume: np.ndarray, affine, path: Path) -> None:
    """Uncompressed float32 NIfTI: the browser loads it without inflating, and it is what the server reads back."""
    from dwisynth.io import save_nifti

    path.parent.mkdir(parents=True, exist_ok=True)
    save_nifti(np.asarray(volume, np.float32), affine, path)


def _volume_at(dwi_path, bval_path, b: float) -> np.ndarray | None:
    """The 3D volume at b (mean of repeats), or None when the image does not hold b."""
    from dwisynth.io import load_dwi

    data, bvals = load_dwi(dwi_path, bval_path, check=False)
    chosen = np.isclose(bvals, b)
    return data[..., chosen].mean(-1).astype(np.float32) if chosen.any() else None


def _b0_display(study: Study) -> None:
    """The study's own b0 (or CT): what the page shows as soon as a study is open."""
    if study.dwi is not None:
        img = nib.load(study.dwi)
        bvals = np.loadtxt(study.bval, ndmin=1)
        b0 = _volume_at(study.dwi, study.bval, float(bvals.min()))
        _save_display(b0, img.affine, study.folder / "display" / "b0.nii")
    if study.ct is not None:
        img = nib.load(study.ct)
        _save_display(np.asarray(img.dataobj, np.float32), img.affine, study.folder / "display" / "ct.nii")


def open_results_subject(results_dir: str | Path, cohort: str, subject: str, study_id: str, folder: Path) -> Study:
    """A subject the workflow preprocessed: its normalized DWI, mask and (stroke) CT on the DWI grid."""
    from dwisynth.layout import preproc_files

    known = {(s["cohort"], s["subject"]): s for s in results_subjects(results_dir)}
    if (cohort, subject) not in known:
        raise ViewerError(f"{cohort}/sub-{subject} is not a preprocessed subject of {results_dir} "
                          "(pick one from the list, or run the workflow first)", 404)
    files = preproc_files(Path(results_dir) / cohort / "preproc" / f"sub-{subject}" / f"sub-{subject}")
    study = Study(study_id, f"{cohort}/sub-{subject}", known[(cohort, subject)]["organ"] or None, folder,
                  dwi=Path(files["dwi"]), bval=Path(files["bval"]), mask=Path(files["mask"]),
                  norm_record=Path(files["norm_record"]), adc=Path(files["adc"]))
    if Path(files["ct"]).is_file():
        study.ct, study.ct_mask = Path(files["ct"]), Path(files["ct_mask"])
    study.acquired_b = sorted({float(b) for b in np.loadtxt(study.bval, ndmin=1)})
    _b0_display(study)
    return study


def _series_modality(folder: Path) -> tuple[str, str | None]:
    """(DICOM Modality of the folder's first readable file, organ from BodyPartExamined or None)."""
    from dwisynth.dicom import read_header

    for path in sorted(p for p in folder.iterdir() if p.is_file() and not p.name.startswith(".")):
        try:
            ds = read_header(path, specific_tags=["Modality", "BodyPartExamined"])
        except Exception:  # conversion reads every file and names a broken one; here any readable file will do
            continue
        part = str(ds.get("BodyPartExamined", "")).upper()
        return str(ds.get("Modality", "")), BODY_PART_ORGAN.get(part)
    raise ViewerError(f"{folder}: no DICOM file here (give a DICOM series folder, a NIfTI with its .bval, or a CT "
                      "NIfTI)")


def open_path(path: Path, organ: str | None, config: dict, study_id: str, folder: Path, log=print) -> Study:
    """A DICOM series folder (DWI or CT), a DWI NIfTI with its .bval beside it, or a CT NIfTI (HU), through the
    workflow's conversion and preprocessing into the study folder."""
    from dwisynth.convert import convert_series
    from dwisynth.preprocess.steps import ct_brain_mask, preprocess_subject

    if organ is not None and organ not in ORGANS:
        raise ViewerError(f"organ {organ!r} unknown; choose one of {', '.join(ORGANS)}")
    subject = study_id.replace("-", "")
    work = folder / "input"
    work.mkdir(parents=True, exist_ok=True)
    if path.is_dir():
        modality, organ_from_header = _series_modality(path)
        if modality not in ("MR", "CT"):
            raise ViewerError(f"{path}: DICOM Modality {modality!r}; the viewer opens MR diffusion or CT series")
        modality = "DWI" if modality == "MR" else "CT"
        organ = organ or organ_from_header
        log(f"[view] {study_id}: converting the {modality} series")
        convert_series(path, work, subject, modality, b0_max=config["bvalues"]["b0_max"], log=lambda _: None)
        image = work / f"sub-{subject}_{'dwi' if modality == 'DWI' else 'ct'}.nii.gz"
        bval = work / f"sub-{subject}_dwi.bval" if modality == "DWI" else None
    elif path.is_file() and path.name.endswith((".nii", ".nii.gz")):
        image = path
        bval = path.with_name(path.name.removesuffix(".gz").removesuffix(".nii") + ".bval")
        modality = "DWI" if bval.is_file() else "CT"
        bval = bval if modality == "DWI" else None
        sidecar = path.with_name(path.name.removesuffix(".gz").removesuffix(".nii") + ".json")
        if organ is None and sidecar.is_file():  # dcm2niix's sidecar calls BodyPartExamined "BodyPart"
            fields = json.loads(sidecar.read_text())
            organ = BODY_PART_ORGAN.get(str(fields.get("BodyPart", fields.get("BodyPartExamined", ""))).upper())
    elif path.exists():
        raise ViewerError(f"{path}: neither a DICOM series folder nor a NIfTI (.nii, .nii.gz)")
    else:
        raise ViewerError(f"{path}: no such file or folder", 404)
    study = Study(study_id, f"{study_id} ({modality})", organ, folder)
    if modality == "DWI":
        if organ is None:
            raise ViewerError(f"{path}: the series does not say which organ it shows (BodyPartExamined); "
                              f"choose the organ ({', '.join(ORGANS)}) and open it again")
        log(f"[view] {study_id}: preprocessing (registration, {organ} mask, normalization, ADC)")
        files = preprocess_subject(image, bval, subject, organ, config, folder / "preproc" / f"sub-{subject}",
                                   log=lambda _: None)
        study.dwi, study.bval, study.mask = Path(files["dwi"]), Path(files["bval"]), Path(files["mask"])
        study.norm_record, study.adc = Path(files["norm_record"]), Path(files["adc"])
        study.acquired_b = sorted({float(b) for b in np.loadtxt(study.bval, ndmin=1)})
    else:
        from dwisynth.io import save_nifti
        from dwisynth.preprocess.masking import check_ct_hu

        img = nib.as_closest_canonical(nib.load(image))  # RAS voxel order, as every image under results/
        ct = img.get_fdata(dtype=np.float32)
        if ct.ndim != 3:
            raise ViewerError(f"{path}: a {ct.ndim}D image with no .bval beside it; a DWI NIfTI needs its .bval "
                              "(same name), a CT is one 3D volume")
        check_ct_hu(ct, str(path))
        study.ct = folder / "preproc" / f"sub-{subject}_ct.nii.gz"
        study.ct_mask = folder / "preproc" / f"sub-{subject}_desc-ctbrain_mask.nii.gz"
        save_nifti(ct, img.affine, study.ct)
        log(f"[view] {study_id}: CT brain mask")
        ct_brain_mask(study.ct, study.ct_mask, folder / "preproc" / f"sub-{subject}_desc-ctbrain_mask.json", subject,
                      config["ct2dwi"]["brain_hu"])
        study.organ = "brain"
    _b0_display(study)
    return study


UPLOAD_SUFFIXES = (".zip", ".nii", ".nii.gz")


def unpack_upload(upload: Path, into: Path, max_bytes: int) -> Path:
    """An uploaded NIfTI (as is) or zip (a DICOM series folder, or a NIfTI with its .bval) -> the path to open.

    The zip is checked before anything is extracted: no member may leave the folder, and the members may not
    add up to more than max_bytes (a small zip can inflate to many GB)."""
    if not upload.name.endswith(".zip"):
        return upload
    try:
        archive = zipfile.ZipFile(upload)
    except zipfile.BadZipFile as exc:
        raise ViewerError(f"{upload.name}: not a readable zip archive ({exc})") from exc
    with archive:
        members = [m for m in archive.infolist() if not m.is_dir()]
        total = sum(m.file_size for m in members)
        if total > max_bytes:
            raise ViewerError(f"{upload.name}: unpacks to {total / 2**20:.0f} MiB, more than the {max_bytes / 2**20:.0f}"
                              " MiB the viewer accepts (dwisynth view --max-upload-mb)", 413)
        into.mkdir(parents=True, exist_ok=True)
        for member in members:
            target = (into / member.filename).resolve()
            if not target.is_relative_to(into.resolve()):
                raise ViewerError(f"{upload.name}: member {member.filename!r} would be written outside the upload")
        archive.extractall(into)
    files = [p for p in into.rglob("*") if p.is_file() and not p.name.startswith(".")]
    niftis = [p for p in files if p.name.endswith((".nii", ".nii.gz"))]
    if len(niftis) == 1:
        return niftis[0]
    folders = {p.parent for p in files}
    if not niftis and len(folders) == 1:
        return folders.pop()
    raise ViewerError(f"{upload.name}: holds {len(niftis)} NIfTI files in {len(folders)} folders; zip one DICOM "
                      "series folder, or one NIfTI with its .bval")


def check_model_fits(study: Study, model: ModelInfo, b: float) -> float:
    """Refuse a model that cannot synthesize this study at b, saying what would; returns b."""
    if model.task == "ct2dwi":
        if study.ct is None:
            raise ViewerError(f"{model.id} is a CT -> DWI model: it needs a CT, and {study.label} has none; "
                              "open the patient's CT (or pick a multi-b model)")
        if b != model.trained_b[0]:
            raise ViewerError(f"{model.id} synthesizes DWI at b = {model.trained_b[0]:g} only, not {b:g}")
        return b
    if study.dwi is None:
        raise ViewerError(f"{study.label} is a CT; {model.id} is a multi-b model that synthesizes from low-b DWI. "
                          "Pick a CT -> DWI model (ct2dwi/...)")
    if study.organ and model.organ and model.organ != study.organ:
        raise ViewerError(f"{model.id} is the {model.organ} model; {study.label} is {study.organ}. "
                          f"Pick a {study.organ} model")
    if model.b_range:
        lo, hi = model.b_range
        if not lo <= b <= hi:
            raise ViewerError(f"b = {b:g} is outside {model.id}'s range [{lo:g}, {hi:g}] s/mm²")
    elif b not in model.trained_b:
        raise ViewerError(f"{model.id} ({model.method}) synthesizes b = {', '.join(f'{v:g}' for v in model.trained_b)}"
                          f" only, not {b:g}; any other b needs a MineGAN model")
    missing = [v for v in model.input_b if v not in study.acquired_b]
    if missing:
        raise ViewerError(f"{model.id} needs b = {', '.join(f'{v:g}' for v in missing)} as input; {study.label} "
                          f"has b = {', '.join(f'{v:g}' for v in study.acquired_b)}")
    return b


def synthesize(study: Study, model: ModelInfo, b: float, synthesis_id: str, config: dict) -> Synthesis:
    """The model's image of the study at b, its ADC and, where the study acquired b, the difference."""
    from dwisynth.config import adc_settings
    from dwisynth.layout import synth_folder_files

    b = check_model_fits(study, model, float(b))
    out = study.folder / "synth" / synthesis_id
    subject = study.id.replace("-", "")
    if model.task == "ct2dwi":
        from dwisynth.ct2dwi import synthesize_ct2dwi

        outputs = {k: v for k, v in synth_folder_files(out, model.method, subject).items() if k != "adc"}
        synthesize_ct2dwi(model.path, study.ct, study.ct_mask, outputs, subject, config["device"])
    else:
        from dwisynth.synthesis import synthesize_subject

        outputs = synth_folder_files(out, model.method, subject)
        synthesize_subject(model.path, study.dwi, study.bval, study.mask, outputs, adc_settings(config), subject,
                           device=config["device"], target_b=[b], adc_as_acquired=False)
    written = nib.load(outputs["dwi"])
    affine = written.affine
    synthetic = np.asarray(written.dataobj, np.float32)[..., -1]  # a multi-b stack holds the inputs first
    display = {f"{synthesis_id}-synthetic": out / "display" / "synthetic.nii"}
    _save_display(synthetic, affine, display[f"{synthesis_id}-synthetic"])
    if "adc" in outputs:
        display[f"{synthesis_id}-adc"] = out / "display" / "adc.nii"
        _save_display(np.asarray(nib.load(outputs["adc"]).dataobj, np.float32), affine, display[f"{synthesis_id}-adc"])
    acquired = _volume_at(study.dwi, study.bval, b) if study.dwi is not None else None
    if acquired is not None and acquired.shape == synthetic.shape:
        display[f"{synthesis_id}-acquired"] = out / "display" / "acquired.nii"
        display[f"{synthesis_id}-difference"] = out / "display" / "difference.nii"
        _save_display(acquired, affine, display[f"{synthesis_id}-acquired"])
        _save_display(synthetic - acquired, affine, display[f"{synthesis_id}-difference"])
    synthesis = Synthesis(synthesis_id, model, b, outputs, display)
    study.syntheses[synthesis_id] = synthesis
    return synthesis


def _in_grid(shape, voxel) -> tuple[int, int, int]:
    i, j, k = (int(v) for v in voxel)
    if not all(0 <= v < n for v, n in zip((i, j, k), shape[:3])):
        raise ViewerError(f"voxel ({i}, {j}, {k}) is outside the image {tuple(shape[:3])}")
    return i, j, k


def mono_exponential(bvals, signal) -> tuple[float, float] | None:
    """(S0, ADC x10^-3 mm²/s) of one voxel's points by the project's ADC fit (`diffusion.fit_mono_exponential`),
    or None where the points cannot be fitted (fewer than two b-values, a signal that is not positive)."""
    from dwisynth.diffusion import fit_mono_exponential

    b, s = np.asarray(bvals, float), np.asarray(signal, float)
    if np.unique(b).size < 2 or np.any(s <= 0):
        return None
    s0, adc = fit_mono_exponential(s[None], b)
    return float(s0[0]), float(adc[0])


def voxel_values(study: Study, synthesis: Synthesis | None, voxel, model_curve_b=None) -> dict:
    """Everything the page shows at one voxel: the shown volumes' values, the acquired signal at each b,
    the synthetic signal the model gives over its b-range (one slice synthesized per b), and the
    mono-exponential fit of the acquired points."""
    reference = study.dwi or study.ct
    shape = nib.load(reference).shape
    i, j, k = _in_grid(shape, voxel)
    out = {"voxel": [i, j, k], "values": {}}
    for name, path in (synthesis.display.items() if synthesis else ()):
        out["values"][name.split("-", 1)[1]] = float(np.asarray(nib.load(path).dataobj)[i, j, k])
    if study.ct is not None:
        out["values"]["ct"] = float(np.asarray(nib.load(study.ct).dataobj)[i, j, k])
    if study.dwi is not None:
        from dwisynth.io import load_dwi

        data, bvals = load_dwi(study.dwi, study.bval, check=False)
        points = {}
        for b in sorted(set(bvals.tolist())):
            points[b] = float(data[i, j, k, np.isclose(bvals, b)].mean())
        out["acquired"] = [[b, v] for b, v in points.items()]
        out["in_mask"] = bool(np.asarray(nib.load(study.mask).dataobj)[i, j, k] > 0)
        fit = mono_exponential(list(points), list(points.values()))
        out["fit"] = {"s0": fit[0], "adc": fit[1]} if fit else None
    if synthesis is not None and synthesis.model.task == "multib" and model_curve_b is not None:
        out["synthetic_curve"] = _model_curve(data, bvals, synthesis.model, (i, j, k), model_curve_b)
    return out


@functools.lru_cache(maxsize=4)
def _loaded(path: str, mtime_ns: int, size: int):
    """A model for the voxel curve, loaded once per file version (a retrained model.pt is a new key)."""
    from dwisynth.inference import load_model

    return load_model(path, "cpu")


def _model_curve(data: np.ndarray, bvals, model: ModelInfo, voxel, b_values) -> list[list[float]]:
    """The model's signal at `voxel` for each b (its own trained b-values for a fixed-target model), from the
    study's normalized DWI `data` (x, y, z, b) and its b-values; one slice is synthesized."""
    from dwisynth.inference import synthesize_slices

    i, j, k = voxel
    stat = Path(model.path).stat()
    network = _loaded(str(model.path), stat.st_mtime_ns, stat.st_size)
    inputs = np.stack([data[..., k, list(map(float, bvals)).index(b)] for b in model.input_b])[None]
    wanted = [float(b) for b in b_values if model.b_range is None or model.b_range[0] <= b <= model.b_range[1]]
    if model.b_range is None:
        wanted = list(model.trained_b)
    values = synthesize_slices(network, inputs.astype(np.float32), wanted)[0, :, i, j]
    return [[b, float(v)] for b, v in zip(wanted, values)]


def roi_adc(study: Study, synthesis: Synthesis, voxel, radius: float) -> dict:
    """Mean and SD of the synthetic and the acquired ADC in a disc of `radius` voxels around the voxel, in its
    slice and inside the organ mask."""
    if "adc" not in synthesis.outputs:
        raise ViewerError(f"{synthesis.model.id} gives one b-value; there is no ADC to measure")
    adc = np.asarray(nib.load(synthesis.outputs["adc"]).dataobj, float)
    i, j, k = _in_grid(adc.shape, voxel)
    x, y = np.ogrid[:adc.shape[0], :adc.shape[1]]
    disc = (x - i) ** 2 + (y - j) ** 2 <= float(radius) ** 2
    region = np.zeros(adc.shape, bool)
    region[..., k] = disc
    region &= np.asarray(nib.load(study.mask).dataobj) > 0
    if not region.any():
        raise ViewerError(f"the ROI around ({i}, {j}, {k}) holds no voxel of the {study.organ or 'organ'} mask")
    result = {"voxels": int(region.sum()), "synthetic": _mean_sd(adc[region])}
    if study.adc is not None and study.adc.is_file():
        result["acquired"] = _mean_sd(np.asarray(nib.load(study.adc).dataobj, float)[region])
    return result


def _mean_sd(values: np.ndarray) -> dict:
    return {"mean": float(values.mean()), "sd": float(values.std(ddof=1)) if values.size > 1 else 0.0}


def export(study: Study, synthesis: Synthesis, fmt: str, out_zip: Path) -> Path:
    """A zip of the synthesis for the user: `nifti` (4D DWI, .bval, ADC as `dwisynth synthesize` writes them) or
    `dicom` (a derived MR series of the synthetic volume at b: new UIDs, DERIVED\\SECONDARY, b in (0018,9087),
    the study's pseudonym in place of any patient attribute)."""
    if fmt not in ("nifti", "dicom"):
        raise ViewerError(f"export format {fmt!r} unknown; use nifti or dicom")
    staging = out_zip.with_name(out_zip.name + ".partial")
    with zipfile.ZipFile(staging, "w", zipfile.ZIP_DEFLATED) as archive:
        if fmt == "nifti":
            for path in synthesis.outputs.values():
                archive.write(path, Path(path).name)
        else:
            from dwisynth.dicom import write_derived_series

            folder = study.folder / "export" / f"{synthesis.id}-dicom"
            shutil.rmtree(folder, ignore_errors=True)
            img = nib.load(synthesis.display[f"{synthesis.id}-synthetic"])
            written = write_derived_series(folder, np.asarray(img.dataobj, np.float32), img.affine, synthesis.b,
                                           pseudonym=study.id,
                                           description=f"dwisynth {synthesis.model.method} b{synthesis.b:g}",
                                           seed_text=f"{study.id}-{synthesis.id}")
            for path in written:
                archive.write(path, f"{study.id}_{synthesis.id}_dicom/{path.name}")
            shutil.rmtree(folder, ignore_errors=True)
    staging.replace(out_zip)
    return out_zip
