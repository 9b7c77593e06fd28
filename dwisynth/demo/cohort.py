"""Plan, simulate and write the demo cohort as vendor DICOM plus noise-free truth.

The plan is a pure function of the config, so the workflow knows every series
before any file exists (no checkpoints), and each subject draws its random
numbers from its own stream: adding subjects never changes existing ones.
"""

from __future__ import annotations

import json
import shutil
import zlib
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
from scipy import ndimage

from dwisynth.config import adc_settings
from dwisynth.demo.anatomy import (LESION_TISSUES, TISSUES, BrainPhantom, ct_hu, make_phantom, mixture_signal,
                                   tissue_maps)
from dwisynth.diffusion import adc_fit_bvalues, fit_adc
from dwisynth.dicom import PatientInfo, series_uids, write_ct_series, write_dwi_series, write_enhanced_dwi_series
from dwisynth.geometry import Grid
from dwisynth.io import save_nifti, write_bval

BODY_PART = {"brain": "BRAIN", "breast": "BREAST", "abdomen": "ABDOMEN", "neck": "NECK", "pelvis": "PROSTATE"}
SHEET_COLUMNS = ["cohort", "center", "subject", "organ", "modality", "dicom_dir", "vendor", "split"]


@dataclass
class SubjectPlan:
    cohort: str
    center: str
    subject: str
    organ: str
    vendor: str
    bvals: list[float]
    snr: float
    scale: float
    split: str = ""
    stroke: bool = False
    dicom: str = "classic"  # classic single-frame files, or enhanced multi-frame (Siemens XA style)
    series: dict[str, str] = field(default_factory=dict)  # modality -> dicom_dir
    truth_dir: str = ""


def _center_code(center: dict) -> str:
    return center.get("code") or "".join(ch for ch in center["name"] if ch.isalnum())


def plan_demo_cohort(config: dict) -> list[SubjectPlan]:
    """Every subject and series the demo generator will write, from the config alone."""
    demo = config["demo"]
    heldout = [float(b) for b in config["bvalues"]["heldout"]]
    root = Path(demo["outdir"])
    plans: list[SubjectPlan] = []

    def add(center, cohort, organ, index, split, extra_b, stroke=False):
        code = _center_code(center)
        subject = f"{code}{'stroke' if stroke else organ}{index + 1:02d}"
        bvals = sorted({float(b) for b in center["bvalues"]} | set(extra_b))
        plan = SubjectPlan(cohort, center["name"], subject, organ, center["vendor"], bvals,
                           float(center["snr"]), float(center["scale"]), split, stroke, center.get("dicom", "classic"))
        base = root / "dicom" / cohort / subject
        plan.series["DWI"] = str(base / "DWI")
        if stroke:
            plan.series["CT"] = str(base / "CT")
        plan.truth_dir = str(root / "truth" / cohort / f"sub-{subject}")
        plans.append(plan)

    n_test = demo["heldout_test_subjects"]
    n_fewshot = demo["heldout_fewshot_subjects"]
    for center in demo["centers"]:
        for organ in center["organs"]:
            for i in range(center.get("subjects", demo["subjects_per_center"])):
                extra, split = [], ""
                if center.get("heldout_acquisitions", False):
                    if i < n_test:
                        extra, split = heldout, "test"
                    elif i < n_test + n_fewshot:
                        extra, split = heldout, "train"
                add(center, center["cohort"], organ, i, split, extra)
    stroke = demo["stroke"]
    for center in stroke["centers"]:
        for i in range(stroke["subjects_per_center"]):
            n_test_stroke = stroke.get("test_subjects_per_center", 0)
            split = ("test" if i < n_test_stroke else "train") if n_test_stroke else ""
            add(center, stroke["cohort"], "brain", i, split, [], stroke=True)
    return plans


def sample_sheet(plans: list[SubjectPlan]) -> pd.DataFrame:
    rows = [
        {"cohort": p.cohort, "center": p.center, "subject": p.subject, "organ": p.organ, "modality": modality,
         "dicom_dir": path, "vendor": p.vendor, "split": p.split}
        for p in plans
        for modality, path in p.series.items()
    ]
    return pd.DataFrame(rows, columns=SHEET_COLUMNS)


def subject_rng(seed: int, subject: str) -> np.random.Generator:
    return np.random.default_rng(np.random.SeedSequence([int(seed), zlib.crc32(subject.encode())]))


FIRST = ["Jane", "John", "Maria", "Wei", "Amara", "Lukas", "Sofia", "Omar", "Elena", "Kenji"]
LAST = ["Doe", "Smith", "Garcia", "Chen", "Okafor", "Muller", "Rossi", "Haddad", "Petrova", "Sato"]
STREETS = ["Linden Alley", "Harbour Road", "Quarry Lane", "Orchard Way", "Mill Street"]


def planted_identity(rng: np.random.Generator, center: str) -> PatientInfo:
    """Fake but realistic identifiers; the tests check none reaches results/."""
    name = f"{rng.choice(LAST)}^{rng.choice(FIRST)}{rng.integers(100, 999)}"
    year, month, day = rng.integers(1935, 1995), rng.integers(1, 13), rng.integers(1, 29)
    crc = zlib.crc32(center.encode())
    return PatientInfo(
        name=name,
        patient_id=f"MRN{rng.integers(10**6, 10**7)}",
        birth_date=f"{year}{month:02d}{day:02d}",
        institution=f"Saint {['Aldric', 'Brigid', 'Cosmas', 'Dunstan', 'Edith'][crc % 5]} Infirmary {crc % 97}",
        institution_address=f"{crc % 300 + 1} {STREETS[crc % 5]}, Northbridge {crc % 9000 + 1000}",
        sex=str(rng.choice(["F", "M"])),
    )


def gain_field(grid: Grid, rng: np.random.Generator, amplitude: float) -> np.ndarray:
    """Smooth receive-coil gain, 1 +/- amplitude over the field of view."""
    coords = grid.world_coordinates_lps()
    half = np.array([n * s / 2 for n, s in zip(grid.shape, grid.spacing)]).reshape(3, 1, 1, 1)
    u = coords / half
    a = rng.uniform(-1, 1, size=6)
    field_ = a[0] * u[0] + a[1] * u[1] + 0.5 * a[2] * u[2] + a[3] * u[0] * u[1] + a[4] * u[0] ** 2 + a[5] * u[1] ** 2
    field_ = field_ / max(np.abs(field_).max(), 1e-6)
    return 1.0 + amplitude * field_


def rician(signal: np.ndarray, sigma: float, rng: np.random.Generator) -> np.ndarray:
    """Magnitude of complex Gaussian noise added to a real signal."""
    real = signal + rng.normal(0, sigma, signal.shape)
    imag = rng.normal(0, sigma, signal.shape)
    return np.sqrt(real**2 + imag**2)


def rigid_matrix(rotation_deg, translation_mm) -> np.ndarray:
    """4x4 rigid transform (rotations about x, y, z in degrees, then translation)."""
    ax, ay, az = np.deg2rad(rotation_deg)
    rx = np.array([[1, 0, 0], [0, np.cos(ax), -np.sin(ax)], [0, np.sin(ax), np.cos(ax)]])
    ry = np.array([[np.cos(ay), 0, np.sin(ay)], [0, 1, 0], [-np.sin(ay), 0, np.cos(ay)]])
    rz = np.array([[np.cos(az), -np.sin(az), 0], [np.sin(az), np.cos(az), 0], [0, 0, 1]])
    m = np.eye(4)
    m[:3, :3] = rz @ ry @ rx
    m[:3, 3] = translation_mm
    return m


@dataclass
class SimulatedSubject:
    plan: SubjectPlan
    grid: Grid
    acquired: np.ndarray  # (n_b, nx, ny, nz) uint16, what the DICOM holds
    noise_free: np.ndarray  # (nx, ny, nz, n_truth_b) float
    truth_bvals: list[float]
    maps: dict[str, np.ndarray]  # s0, d, f, dstar (IVIM) and adc (apparent, on fit_bvals), ...
    fit_bvals: list[float]
    organ_mask: np.ndarray
    lesion_mask: np.ndarray
    sigma: float
    patient: PatientInfo
    ct_hu: np.ndarray | None = None
    ct_noise_free: np.ndarray | None = None
    ct_to_dwi: np.ndarray | None = None


def simulate_subject(plan: SubjectPlan, config: dict) -> SimulatedSubject:
    demo = config["demo"]
    rng = subject_rng(config["seed"], plan.subject)
    grid_cfg = demo["grids"][plan.organ]
    grid = Grid.centred(grid_cfg["matrix"], grid_cfg["spacing"])
    lesion = "acute_infarct" if plan.stroke else None
    phantom = make_phantom(plan.organ, rng, lesion=lesion)
    coords = grid.world_coordinates_lps()
    fractions = phantom.fractions(coords)
    # the b-values the workflow fits this subject's ADC on: each tissue's apparent ADC over them is the table's
    fit_bvals = adc_fit_bvalues(adc_settings(config)["bvalues"], plan.bvals)
    maps = tissue_maps(fractions, fit_bvals)
    gain = gain_field(grid, rng, demo["gain_amplitude"]) * rng.uniform(0.9, 1.1)
    maps["s0"] = plan.scale * maps["s0"] * gain
    b_config = {float(b) for key in ("inputs", "targets", "heldout") for b in config["bvalues"][key]}
    truth_bvals = sorted(set(plan.bvals) | b_config)
    noise_free = (plan.scale * gain)[..., None] * mixture_signal(fractions, truth_bvals, fit_bvals)
    tissue = maps["tissue_fraction"] >= 1e-3
    maps["adc"] = np.zeros(grid.shape)
    maps["adc"][tissue] = fit_adc(noise_free[tissue], truth_bvals, use_b=fit_bvals, max_adc=np.inf)
    sigma = plan.scale / plan.snr
    acquired_idx = [truth_bvals.index(b) for b in plan.bvals]
    noisy = rician(noise_free[..., acquired_idx], sigma, rng)
    acquired = np.clip(np.round(np.moveaxis(noisy, -1, 0)), 0, 65535).astype(np.uint16)
    lesion_mask = sum((fractions[t] for t in fractions if t in LESION_TISSUES), np.zeros(grid.shape)) >= 0.5
    subject = SimulatedSubject(plan, grid, acquired, noise_free, truth_bvals, maps, fit_bvals,
                               phantom.organ_mask(fractions), lesion_mask, sigma,
                               planted_identity(rng, plan.center))
    if plan.stroke:
        _simulate_ct(subject, phantom, demo["stroke"], rng)
    return subject


def _simulate_ct(subject: SimulatedSubject, phantom: BrainPhantom, stroke_cfg: dict, rng) -> None:
    """Head CT of the same anatomy, misaligned by a small random rigid motion.

    ct_to_dwi maps a point in CT scanner space (LPS mm) to the same anatomical
    point in DWI scanner space; registration must recover it.
    """
    grid = subject.grid
    mis = stroke_cfg["misalignment"]
    rotation = rng.uniform(-1, 1, 3) * mis["rotation_deg"]
    translation = rng.uniform(-1, 1, 3) * mis["translation_mm"]
    ct_to_dwi = rigid_matrix(rotation, translation)
    coords = grid.world_coordinates_lps()
    flat = coords.reshape(3, -1)
    moved = (ct_to_dwi[:3, :3] @ flat + ct_to_dwi[:3, 3:4]).reshape(coords.shape)
    hu, brain = ct_hu(phantom, moved)
    # Skull and scalp as shells around the brain, from the distance to its surface.
    outside = ndimage.distance_transform_edt(brain < 0.5, sampling=grid.spacing)
    skull = (outside > 2) & (outside <= 8)
    scalp = (outside > 8) & (outside <= 12)
    background = np.full(grid.shape, -1000.0)
    hu = np.where(brain >= 0.5, hu / np.maximum(brain, 1e-6), background)
    hu = np.where(skull, 1200.0, hu)
    hu = np.where(scalp, 30.0, hu)
    subject.ct_noise_free = hu
    subject.ct_hu = np.round(hu + rng.normal(0, stroke_cfg["ct_noise_hu"], grid.shape))
    subject.ct_to_dwi = ct_to_dwi


def _save(array, grid: Grid, path: Path, dtype=np.float32) -> None:
    save_nifti(array, grid.affine_ras(), path, dtype)


def write_subject(sim: SimulatedSubject, series_number: int = 1) -> None:
    """Write the subject's DICOM series and its truth maps (the truth holds no identifiers)."""
    plan = sim.plan
    seed_text = f"dwisynth-demo-{plan.subject}"
    for modality, folder in plan.series.items():
        if Path(folder).exists():
            shutil.rmtree(folder)
    if plan.dicom == "enhanced":
        write_enhanced_dwi_series(plan.series["DWI"], sim.acquired, plan.bvals, sim.grid, sim.patient,
                                  series_uids(seed_text, series_number), series_description="DWI trace",
                                  body_part=BODY_PART[plan.organ])
    else:
        write_dwi_series(plan.series["DWI"], sim.acquired, plan.bvals, sim.grid, plan.vendor, sim.patient,
                         series_uids(seed_text, series_number), series_description="DWI trace",
                         body_part=BODY_PART[plan.organ])
    if plan.stroke:
        write_ct_series(plan.series["CT"], sim.ct_hu, sim.grid, sim.patient, series_uids(seed_text, series_number + 1),
                        vendor=plan.vendor, series_description="Head CT")
    truth = Path(plan.truth_dir)
    truth.mkdir(parents=True, exist_ok=True)
    stem = truth / f"sub-{plan.subject}"
    _save(sim.maps["s0"], sim.grid, Path(f"{stem}_desc-truth_s0.nii.gz"))
    _save(sim.maps["adc"], sim.grid, Path(f"{stem}_desc-truth_adc.nii.gz"))  # apparent, on fit_bvals
    _save(sim.maps["d"], sim.grid, Path(f"{stem}_desc-truth_ivimd.nii.gz"))
    _save(sim.maps["f"], sim.grid, Path(f"{stem}_desc-truth_ivimf.nii.gz"))
    _save(sim.maps["dstar"], sim.grid, Path(f"{stem}_desc-truth_ivimdstar.nii.gz"))
    _save(sim.maps["kurtosis"], sim.grid, Path(f"{stem}_desc-truth_kurtosis.nii.gz"))
    _save(sim.maps["purity"], sim.grid, Path(f"{stem}_desc-purity_probseg.nii.gz"))
    _save(sim.maps["label"], sim.grid, Path(f"{stem}_dseg.nii.gz"), dtype=np.int16)
    _save(sim.organ_mask, sim.grid, Path(f"{stem}_desc-organ_mask.nii.gz"), dtype=np.uint8)
    _save(sim.lesion_mask, sim.grid, Path(f"{stem}_desc-lesion_mask.nii.gz"), dtype=np.uint8)
    _save(sim.noise_free, sim.grid, Path(f"{stem}_desc-noisefree_dwi.nii.gz"))
    write_bval(sim.truth_bvals, f"{stem}_desc-noisefree_dwi.bval")
    meta = {
        "cohort": plan.cohort, "center": plan.center, "organ": plan.organ, "vendor": plan.vendor,
        "acquired_bvals": plan.bvals, "noise_sigma": sim.sigma, "snr": plan.snr, "scale": plan.scale,
        "split": plan.split, "adc_units": "1e-3 mm2/s", "adc_fit_bvals": sim.fit_bvals,
        "signal_model": "per tissue S0 [f exp(-b D*) + (1 - f) exp(-b D + b^2 D^2 K / 6)], the log-signal "
                        "continued on its tangent beyond b = 3 / (2 D K) (dwisynth.diffusion.kurtosis_decay)",
    }
    if plan.stroke:
        _save(sim.ct_noise_free, sim.grid, Path(f"{stem}_desc-truth_ct.nii.gz"))
        meta["ct_to_dwi_lps"] = sim.ct_to_dwi.round(6).tolist()
    Path(f"{stem}_truth.json").write_text(json.dumps(meta, indent=2) + "\n")


def write_tissue_table(root: Path) -> None:
    rows = [{"index": t.label, "name": name, "s0": t.s0, "adc": t.adc, "ivim_f": t.perfusion_fraction,
             "ivim_dstar": t.pseudo_diffusion, "kurtosis": t.kurtosis,
             "hu": t.hu if t.hu is not None else f"parenchyma{t.hu_offset:+g}"}
            for name, t in TISSUES.items()]
    pd.DataFrame(rows).to_csv(root / "dseg.tsv", sep="\t", index=False)


def _simulate_and_write(plan: SubjectPlan, config: dict) -> dict:
    sim = simulate_subject(plan, config)
    write_subject(sim)
    return dict(sim.patient.__dict__)


def generate_demo_cohort(config: dict, progress=print, workers: int = 1) -> pd.DataFrame:
    """Simulate and write every planned subject; returns (and writes) the sample sheet.

    The planted identifiers go to planted_phi.json beside the DICOM (an input
    area, never results/), so tests can prove that none leaks.
    workers: subjects simulated at once, in processes; each subject has its own random stream
    (`subject_rng`), so the files are the same bytes for any number of workers.
    """
    import concurrent.futures
    import contextlib
    import multiprocessing

    root = Path(config["demo"]["outdir"])
    plans = plan_demo_cohort(config)
    root.mkdir(parents=True, exist_ok=True)
    (root / "truth").mkdir(exist_ok=True)
    write_tissue_table(root / "truth")
    planted = {}
    with contextlib.ExitStack() as stack:
        if workers > 1:
            pool = stack.enter_context(concurrent.futures.ProcessPoolExecutor(
                min(workers, len(plans)), mp_context=multiprocessing.get_context("fork")))
            patients = pool.map(_simulate_and_write, plans, [config] * len(plans))
        else:
            patients = (_simulate_and_write(plan, config) for plan in plans)
        for i, (plan, patient) in enumerate(zip(plans, patients), 1):
            uids = series_uids(f"dwisynth-demo-{plan.subject}", 1)
            planted[plan.subject] = {**patient, "study_uid": uids["study"], "series_uid": uids["series"],
                                     "accession": uids["accession"], "scan_date": uids["date"]}
            progress(f"[demo-cohort] {i}/{len(plans)} {plan.cohort}/{plan.subject} ({plan.organ}, {plan.vendor}, "
                     f"b={','.join(f'{b:g}' for b in plan.bvals)}{', +CT' if plan.stroke else ''})")
    sheet = sample_sheet(plans)
    sheet.to_csv(root / "samples.tsv", sep="\t", index=False)
    (root / "planted_phi.json").write_text(json.dumps(planted, indent=2) + "\n")
    return sheet
