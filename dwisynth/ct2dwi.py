"""CT -> DWI synthesis for acute ischemic stroke: experiments, training, synthesis and scoring.

Every method sees the same two inputs, slice by slice on the DWI grid: the CT (HU, mapped to
[-1, 1] through `ct2dwi.hu_window`) and a brain mask computed from that CT alone
(`preprocess.masking.ct_brain_mask`), because a CT-only patient has no DWI. The target is the
normalized DWI (S/S0) at `ct2dwi.target_b`. The HD-BET DWI mask is the scoring mask and picks the
training crops; it never enters a network.

Experiments (`experiment_cells`), each a set of (experiment, method) cells with a model at
`results/models/ct2dwi/{experiment}/{method}/model.pt`:
- `main`: every method of `ct2dwi.methods` on every center's train split (mixed training), each with the
  lesion supervision of `ct2dwi.guidance` (lesion-weighted L1 and lesion oversampling, every network alike);
- `unguided` (when the guidance is on): every method again without it, so that the architecture effect and
  the supervision effect are separate rows of the main table;
- `ablation`: JMMDA-GAN with exactly one module off (`nomask`, `nodwt`, `noedge`, `noadaptive`);
- `sensitivity`: JMMDA-GAN for each wavelet x head count (`<wavelet>_h<heads>`; the cell equal to
  main's configuration reuses main's model);
- `crosscenter`: JMMDA-GAN trained on one center's train subjects (`from_<center>`), scored on every
  test subject, so the in-center and cross-center rows sit side by side.
Every cell trains for the same `ct2dwi.steps` with the same lr, batch, crop and schedule. With `ct2dwi.seeds`
> 1, main, unguided and the ablations are trained again from seeds seed+1, ... (experiments `<name>_rep2`,
...); the tables report each setting's mean over seeds and their spread.

Scores (`score_subject`): the standard metrics of `dwisynth.metrics` inside the DWI brain mask, plus
lesion metrics on the same brain-mask scale (not re-scaled inside the lesion), the lesion contrast
C = lesion mean / host mean - 1 (`metrics.lesion_contrast`, host from `metrics.host_ring`) of the synthesis,
and its conspicuity against the acquisition (C / C_acquired: 1 is a faithful lesion). On the demo,
`score_against_truth` scores every main method and the acquisition against the noise-free truth.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import nibabel as nib
import numpy as np

from dwisynth.errors import ConfigError, DwisynthError
from dwisynth.evaluate import LESION_METRICS

# the experiment tables' lesion columns: evaluate's, and the conspicuity against the acquisition
LESION_COLUMNS = list(dict.fromkeys([*LESION_METRICS, "lesion_conspicuity_vs_acquired"]))

ABLATIONS = {"nomask": "mask_fusion", "nodwt": "dwt", "noedge": "edge_attention", "noadaptive": "adaptive_fusion"}
GRIDS = ("ablation", "sensitivity", "crosscenter")
REPLICATED = ("main", "ablation")  # the grids ct2dwi.seeds repeats (unguided is part of main)
UNGUIDED = "unguided"
PROPOSED = "jmmdagan"
BASELINE = "pix2pix"  # what `summarize` compares CT -> DWI methods with (there is no cDWI from a CT)


class LesionMaskError(DwisynthError):
    """A lesion mask is missing or does not lie on the DWI grid."""


@dataclass(frozen=True)
class Cell:
    """One trained model of one experiment: its method, settings and training centers."""

    experiment: str
    method: str
    grid: str  # main, ablation, sensitivity or crosscenter
    overrides: tuple = ()  # (key, value) pairs over the network's config block
    train_centers: tuple[str, ...] = ()  # empty: every center
    model_experiment: str = ""  # where its model lives, when another cell trains the same thing
    guided: bool = False  # trained with ct2dwi.guidance (lesion-weighted L1, lesion oversampling)
    replicate: int = 0  # trained from seed + replicate (ct2dwi.seeds)

    @property
    def model_from(self) -> str:
        return self.model_experiment or self.experiment

    @property
    def setting(self) -> str:
        """The experiment without its replicate suffix: what the tables average over seeds."""
        return self.experiment.rsplit("_rep", 1)[0] if self.replicate else self.experiment

    def describe(self, block: dict) -> dict:
        """The columns the experiment tables carry."""
        return {"experiment": self.experiment, "setting": self.setting, "grid": self.grid,
                "replicate": self.replicate + 1,
                "lesion_guidance": ("yes" if self.guided else "no") if self.method != TRUTH else "",
                "train_centers": "+".join(self.train_centers) or "all",
                "wavelet": block.get("wavelet", "") if self.method == PROPOSED else "",
                "heads": block.get("heads", "") if self.method == PROPOSED else "",
                "modules_off": ",".join(k for k, v in self.overrides if v is False)}


def guidance_on(config: dict) -> bool:
    """Whether ct2dwi.guidance gives the CT -> DWI networks any lesion supervision."""
    guidance = config["ct2dwi"].get("guidance", {})
    return bool(guidance.get("lesion_weight", 0) or guidance.get("lesion_oversample", 0))


def cell_training(config: dict, cell: Cell) -> dict:
    """The training block a cell trains with: the shared `training` block whose lesion supervision is the
    cell's (ct2dwi.guidance when guided, none otherwise; the multi-b lesion settings never reach CT -> DWI)."""
    guidance = config["ct2dwi"].get("guidance", {}) if cell.guided else {}
    return {**config["training"], "lesion_weight": float(guidance.get("lesion_weight", 0.0)),
            "lesion_oversample": float(guidance.get("lesion_oversample", 0.0))}


def experiment_cells(config: dict, centers, grids=("main", *GRIDS)) -> list[Cell]:
    """Every (experiment, method) cell of the requested grids; centers: the CT -> DWI centers."""
    ct = config["ct2dwi"]
    proposed = config.get(PROPOSED, {})
    guided = guidance_on(config)  # every cell but the unguided rows trains with the configured guidance
    cells = []
    for replicate in range(int(ct.get("seeds", 1))):
        suffix = f"_rep{replicate + 1}" if replicate else ""
        if "main" in grids:
            cells += [Cell("main" + suffix, m, "main", guided=guided, replicate=replicate) for m in ct["methods"]]
            if guided:
                cells += [Cell(UNGUIDED + suffix, m, "main", replicate=replicate) for m in ct["methods"]]
        if "ablation" in grids:
            cells += [Cell(name + suffix, PROPOSED, "ablation", ((module, False),), guided=guided, replicate=replicate)
                      for name, module in ABLATIONS.items()]
    if "sensitivity" in grids:
        main_wavelet, main_heads = proposed.get("wavelet", "haar"), proposed.get("heads", 4)
        for wavelet in ct["sensitivity"]["wavelets"]:
            for heads in ct["sensitivity"]["heads"]:
                same = wavelet == main_wavelet and heads == main_heads and PROPOSED in ct["methods"]
                cells.append(Cell(f"{wavelet}_h{heads}", PROPOSED, "sensitivity",
                                  (("wavelet", wavelet), ("heads", heads)), model_experiment="main" if same else "",
                                  guided=guided))
    if "crosscenter" in grids:
        cells += [Cell(f"from_{c}", PROPOSED, "crosscenter", train_centers=(c,), guided=guided)
                  for c in sorted(centers)]
    return cells


def find_cell(cells, experiment: str, method: str) -> Cell:
    for cell in cells:
        if cell.experiment == experiment and cell.method == method:
            return cell
    raise ConfigError(f"no CT -> DWI experiment {experiment!r} with method {method!r}")


def network_block(config: dict, cell: Cell) -> dict:
    """The cell's network config: the network's block, its steps (ct2dwi.steps_per_method, else the shared
    ct2dwi.steps) and the shared lr, the cell's overrides. A sensitivity cell whose heads do not divide the
    channels fails here, naming the cell."""
    from dwisynth.networks.base import config_block_name, config_from_block, network_class

    steps = config["ct2dwi"].get("steps_per_method", {}).get(cell.method, config["ct2dwi"]["steps"])
    block = {**config.get(config_block_name(cell.method), {}), "steps": steps,
             "lr": config["ct2dwi"]["lr"], **dict(cell.overrides)}
    config_from_block(network_class(cell.method).Config, block, f"ct2dwi experiment {cell.experiment}")
    return block


def training_members(split_records: list[dict], cell: Cell) -> list[dict]:
    """The cell's train-split CT -> DWI subjects (one center's for a cross-center cell)."""
    train = [r for r in split_records if r["task"] == "ct2dwi" and r["split"] == "train"]
    if cell.train_centers:
        chosen = [r for r in train if r["center"] in cell.train_centers]
        if not chosen:
            have = sorted({r["center"] for r in train})
            raise ConfigError(f"ct2dwi experiment {cell.experiment}: center {'+'.join(cell.train_centers)} has no "
                              f"train-split stroke subject (centers with some: {', '.join(have) or 'none'}); add "
                              "subjects or drop crosscenter from ct2dwi.grids")
        return chosen
    if not train:
        raise ConfigError("ct2dwi: no train-split stroke subject (a DWI series with a CT row in the sample sheet)")
    return train


# --- lesion masks -----------------------------------------------------------------------------
def read_lesion_table(path) -> dict[tuple[str, str], str]:
    """`ct2dwi.lesion_masks`: a TSV with cohort, subject, path -> {(cohort, subject): path}."""
    import pandas as pd

    if not Path(path).is_file():
        raise ConfigError(f"ct2dwi.lesion_masks: {path} not found; give a TSV with cohort, subject, path, or null")
    try:
        table = pd.read_csv(path, sep="\t", dtype=str, keep_default_na=False)
    except (OSError, ValueError) as exc:  # pandas' empty-file and parser errors, a spreadsheet's bytes: ValueErrors
        raise ConfigError(f"ct2dwi.lesion_masks: {path} cannot be read ({type(exc).__name__}: {exc}); give a "
                          "tab-separated text file with the columns cohort, subject, path") from exc
    missing = {"cohort", "subject", "path"} - set(table.columns)
    if missing:
        raise ConfigError(f"{path}: lesion mask table needs the columns cohort, subject, path (missing "
                          f"{', '.join(sorted(missing))})")
    return {(r.cohort, r.subject): r.path for r in table.itertuples()}


def lesion_mask_path(config: dict, table: dict, cohort: str, subject: str) -> str | None:
    """A stroke subject's lesion mask: its row of ct2dwi.lesion_masks (`table`, from read_lesion_table),
    else the demo's truth when the demo is on; None when unknown."""
    from dwisynth import layout

    if (cohort, subject) in table:
        return table[(cohort, subject)]
    if config["demo"]["enabled"]:
        return f"{layout.demo_truth_stem(config['demo']['outdir'], cohort, subject)}_desc-lesion_mask.nii.gz"
    return None


def load_lesion_mask(path, reference_path, subject: str) -> np.ndarray:
    """A lesion mask as bool on the grid of the reference (the normalized DWI, RAS voxel order).

    Masks are read in RAS voxel order (the demo truth is written in the DICOM's LPS order); one on
    another grid is an error, never resampled silently."""
    path = Path(path)
    if not path.is_file():
        raise LesionMaskError(f"sub-{subject}: lesion mask {path} not found; list it in ct2dwi.lesion_masks "
                              "(cohort, subject, path)")
    img = nib.as_closest_canonical(nib.load(path))
    reference = nib.load(reference_path)
    if img.shape[:3] != reference.shape[:3] or not np.allclose(img.affine, reference.affine, atol=1e-3):
        raise LesionMaskError(f"sub-{subject}: lesion mask {path} ({img.shape[:3]}) is not on the DWI grid of "
                              f"{reference_path} ({reference.shape[:3]}); resample it onto the DWI first")
    return np.asarray(img.dataobj) > 0


def run_lesion_mask(run, config: dict, cohort: str, subject: str) -> np.ndarray:
    """A stroke subject's lesion mask in a finished run (paths relative to the run's folder), found as the
    workflow finds it, on its normalized DWI grid; for tools that read a run (bench/)."""
    from dwisynth import layout

    listed = config["ct2dwi"].get("lesion_masks")
    table = read_lesion_table(Path(run) / listed) if listed else {}
    path = lesion_mask_path(config, table, cohort, subject)
    if path is None:
        raise LesionMaskError(f"sub-{subject}: no lesion mask; list it in ct2dwi.lesion_masks (cohort, subject, path)")
    return load_lesion_mask(Path(run) / path, Path(run) / layout.preproc(cohort, subject)["dwi"], subject)


def training_lesions(spec: dict) -> dict[tuple[str, str], np.ndarray]:
    """{"cohort/subject": {"mask": path, "reference": normalized DWI}} -> {(cohort, subject): bool volume}."""
    return {tuple(key.split("/", 1)): load_lesion_mask(v["mask"], v["reference"], key.split("/", 1)[1])
            for key, v in spec.items()}


# --- training ---------------------------------------------------------------------------------
def train_ct2dwi(cell: Cell, shards, out_dir, block: dict, training: dict, ct2dwi: dict, seed: int,
                 device: str = "auto", lesion_masks: dict | None = None, progress: bool = True) -> Path:
    """Train one cell's network on the given train-split shards; returns model.pt's path.

    training: the cell's training block (`cell_training`: its lesion supervision); lesion_masks:
    {(cohort, subject): (X, Y, Z) bool on the DWI grid} for that supervision (only for a guided cell)."""
    from dwisynth.loader import SliceDataset
    from dwisynth.networks.base import build_network
    from dwisynth.synthesis import trainer_config
    from dwisynth.training import Trainer

    target_b = float(ct2dwi["target_b"][0])
    seed = seed + cell.replicate  # a replicate of ct2dwi.seeds trains from its own seed
    by_slice = None if lesion_masks is None else {k: np.moveaxis(v, -1, 0) for k, v in lesion_masks.items()}
    data = SliceDataset.from_ct(shards, target_b, ct2dwi["hu_window"], by_slice)
    if data.skipped:
        print(f"[train] skipped (no b={target_b:g}): {', '.join(Path(s).name for s in data.skipped)}")
    subjects = data.subject_keys()
    model = build_network(cell.method, block, data.inputs.shape[1], 1, seed)
    print(f"[train] ct2dwi {cell.experiment}/{cell.method}: {len(data)} slices from {len(subjects)} subjects "
          f"({'+'.join(cell.train_centers) or 'every center'})")
    config = trainer_config(training, model, training.get("intensity_max"), seed, device, progress)
    meta = {"method": cell.method, "task": "ct2dwi", "organ": "brain", "input_b": [], "target_b": [target_b],
            "voxel_sizes": shard_voxel_sizes(shards),
            "input_scaling": data.input_scaling, "input_channels": ["ct", "ct_brain_mask"],
            "experiment": cell.experiment, "train_centers": list(cell.train_centers), "replicate": cell.replicate + 1,
            "lesion_guidance": {k: training.get(k, 0.0) for k in ("lesion_weight", "lesion_oversample")},
            "train_subjects": [[c, s] for c, s in subjects], "seed": seed, "upstream": {}, **model.describe()}
    return Trainer(model, data, config, out_dir, meta).fit()


def shard_voxel_sizes(shards) -> list[list[float]]:
    """The distinct in-plane voxel sizes (mm) of the shards' DWI grids (shards written before they were
    recorded give none)."""
    sizes = set()
    for path in shards:
        with np.load(path) as shard:
            size = json.loads(str(shard["metadata"])).get("voxel_size")
        if size:
            sizes.add(tuple(size[:2]))
    return [list(s) for s in sorted(sizes)]


# --- synthesis --------------------------------------------------------------------------------
VOXEL_TOLERANCE = 0.25  # relative in-plane voxel size difference a model still accepts


def check_voxel_size(model, zooms, source: str) -> None:
    """Refuse a grid whose in-plane voxel size is far from every one the model was trained on: its
    convolutions learned anatomy in pixels, so a 1 mm CT fed to a 3 mm model gives a plausible-looking
    wrong image."""
    trained = model.record.get("voxel_sizes") or []
    if not trained:
        return
    size = np.asarray(zooms[:2], float)
    if any(np.all(np.abs(size / np.asarray(t) - 1) <= VOXEL_TOLERANCE) for t in trained):
        return
    have = ", ".join("x".join(f"{v:g}" for v in t) for t in trained)
    raise DwisynthError(f"{source}: voxel size {'x'.join(f'{v:.3g}' for v in size)} mm in-plane, but the model "
                        f"was trained on {have} mm; synthesize on the patient's DWI grid (`dwisynth ct2dwi ... "
                        "--grid DWI.nii.gz`) or resample the CT to the training voxel size")


def check_ct2dwi_model(model, source: str) -> None:
    if model.record.get("task") != "ct2dwi":
        raise ConfigError(f"{source} is a multi-b model ({model.record.get('method')}, {model.record.get('organ')}): "
                          "it synthesizes DWI from low-b DWI, not from CT; use `dwisynth synthesize`, or give "
                          "`dwisynth ct2dwi` a model from results/models/ct2dwi/")


def synthesize_ct2dwi(model_path, ct_path, ct_mask_path, out: dict, subject: str = "?", device: str = "auto") -> float:
    """DWI at the model's target b from a CT on the grid to synthesize on (HU) and its CT brain mask.

    Writes out["dwi"] (one-volume 4D NIfTI on the CT's grid) and out["bval"]; returns the b-value."""
    from dwisynth.inference import load_model, synthesize_slices
    from dwisynth.io import save_nifti, write_bval
    from dwisynth.preprocess.masking import check_ct_hu

    model = load_model(model_path, device)
    check_ct2dwi_model(model, str(model_path))
    img = nib.load(ct_path)
    check_voxel_size(model, img.header.get_zooms(), f"sub-{subject} {ct_path}")
    ct = np.asarray(img.dataobj, dtype=np.float32)
    check_ct_hu(ct, f"sub-{subject} {ct_path}")
    mask = np.asarray(nib.load(ct_mask_path).dataobj) > 0
    if mask.shape != ct.shape:
        raise DwisynthError(f"sub-{subject}: CT brain mask {ct_mask_path} {mask.shape} is not on the CT's grid "
                            f"{ct.shape} ({ct_path})")
    slices = np.stack([np.moveaxis(ct, -1, 0), np.moveaxis(mask, -1, 0).astype(np.float32)], 1)  # (Z, 2, X, Y)
    b = model.target_b[0]
    synthetic = np.moveaxis(synthesize_slices(model, slices, [b])[:, 0], 0, -1)
    Path(out["dwi"]).parent.mkdir(parents=True, exist_ok=True)
    save_nifti(synthetic[..., None], img.affine, out["dwi"])
    write_bval([b], out["bval"])
    return b


def noise_free_ct2dwi(truth_dwi, truth_bval, raw_dwi, raw_bval, norm_dwi, norm_bval, out: dict, target_b,
                      b0_max: float = 10.0) -> None:
    """The demo's noise-free DWI at target_b on the acquisition's normalized scale (the noise floor)."""
    from dwisynth.io import save_nifti, write_bval
    from dwisynth.synthesis import noise_free_volume

    reference, _, _ = noise_free_volume(truth_dwi, truth_bval, raw_dwi, raw_bval, norm_dwi, norm_bval, target_b,
                                        b0_max)
    Path(out["dwi"]).parent.mkdir(parents=True, exist_ok=True)
    save_nifti(reference, nib.load(norm_dwi).affine, out["dwi"])
    write_bval([float(b) for b in target_b], out["bval"])


# --- scoring ----------------------------------------------------------------------------------
def lesion_metrics(pred: np.ndarray, ref: np.ndarray, brain: np.ndarray, lesion: np.ndarray,
                   labels: np.ndarray | None = None) -> dict[str, float]:
    """Metrics inside the lesion on the brain mask's scale (both divided by the reference's robust maximum
    in the brain, as the whole-brain metrics); the lesion contrast of pred (C = lesion mean / host mean - 1,
    host: `metrics.host_ring` in the brain, of the commonest `labels` tissue when a label map is given) and
    its conspicuity against the reference (C_pred / C_ref: 1 is a faithful lesion, 0 an erased one)."""
    from dwisynth.metrics import host_ring, lesion_contrast, robust_max, ssim_in_mask

    lesion = lesion & brain
    if lesion.sum() == 0:
        return dict.fromkeys(LESION_COLUMNS, float("nan"))
    scale = robust_max(ref, brain)
    p, r = pred / scale, ref / scale
    mse = float(np.mean((p[lesion] - r[lesion]) ** 2))
    slices = np.flatnonzero(lesion.reshape(-1, lesion.shape[-1]).any(0))
    ssim = np.average([ssim_in_mask(p[..., z], r[..., z], lesion[..., z]) for z in slices],
                      weights=[lesion[..., z].sum() for z in slices])  # the mean over every lesion voxel
    host = host_ring(lesion, brain, labels)
    contrast, ref_contrast = lesion_contrast(p, lesion, host), lesion_contrast(r, lesion, host)
    return {"lesion_psnr": float("inf") if mse == 0 else float(10 * np.log10(1.0 / mse)),
            "lesion_ssim": float(ssim), "lesion_mse": mse,
            "lesion_mae": float(np.mean(np.abs(p[lesion] - r[lesion]))),
            "lesion_contrast": contrast, "lesion_conspicuity_vs_acquired": _ratio(contrast, ref_contrast)}


def _ratio(value: float, reference: float) -> float:
    return value / reference if np.isfinite(reference) and reference != 0 else float("nan")


def volume_at(dwi_path, bval_path, b: float, what: str) -> np.ndarray:
    """The 3D volume at b of a DWI (an error naming the file when it holds no such b)."""
    from dwisynth.io import load_dwi

    dwi, bvals = load_dwi(dwi_path, bval_path)
    bvals = [float(v) for v in bvals]
    if float(b) not in bvals:
        raise DwisynthError(f"{dwi_path}: the {what} DWI holds no b={b:g}")
    return dwi[..., bvals.index(float(b))]


def score_subject(p: np.ndarray, r: np.ndarray, mask: np.ndarray, lesion: np.ndarray | None,
                  target_b: float, labels: np.ndarray | None = None) -> list[dict]:
    """Per-slice rows and the volume row (with the lesion metrics) of one synthetic volume p against the
    acquired r at target_b, inside the mask; labels: a tissue label map on the grid (the lesion's host), or None."""
    from dwisynth.metrics import volume_metrics

    slices, volume = volume_metrics(p, r, mask)
    volume = {**volume, **(lesion_metrics(p, r, mask, lesion, labels) if lesion is not None
                           else dict.fromkeys(LESION_COLUMNS, float("nan")))}
    label = {"b_value": float(target_b), "seen": "trained"}
    return [{**label, **row} for row in slices] + [{**label, "slice": "volume", **volume}]


def score_shard(model_path, shard_path, target_b: float, lesion: np.ndarray | None = None,
                device: str = "cpu") -> dict:
    """The volume row of one subject scored from its training shard (slices the shard keeps, X, Y, Z order),
    as `score_subject` scores a workflow test subject; lesion: its (X, Y, Z) mask on the DWI grid, or None.
    For tools that train outside the workflow (bench/) and have no synthesized NIfTI."""
    from dwisynth.inference import load_model, synthesize_slices

    model = load_model(model_path, device)
    with np.load(shard_path) as shard:
        grid = [float(b) for b in shard["bvals"]]
        slices = np.stack([shard["ct"], shard["ct_mask"]], 1).astype(np.float32)
        reference = shard["images"][:, grid.index(target_b)].astype(np.float32)
        mask, index = shard["mask"].astype(bool), shard["slice_index"]
    synthetic = synthesize_slices(model, slices, [target_b])[:, 0]
    to_xyz = lambda a: np.moveaxis(a, 0, -1)  # noqa: E731 (shards hold slices first)
    kept_lesion = None if lesion is None else to_xyz(np.moveaxis(lesion, -1, 0)[index])
    return score_subject(to_xyz(synthetic), to_xyz(reference), to_xyz(mask), kept_lesion, target_b)[-1]


def score_experiment(records: list[dict], cells: list[Cell], blocks: dict, target_b: float, progress=print):
    """Scores of one experiment's methods on every CT -> DWI test subject.

    records: per test subject cohort, center, subject, `acquired` (normalized dwi, bval), `mask` (DWI brain
    mask), `lesion` (mask path or None), `dseg` (a tissue label map, e.g. the demo's, or None: the lesion's
    host) and `synth` {method: (dwi, bval)}; cells: the experiment's cells; blocks: {method: its network
    block}. Returns a data frame of slice and volume rows."""
    import pandas as pd

    from dwisynth.evaluate import METRICS, TABLE_KEYS
    from dwisynth.io import load_mask

    rows = []
    for i, s in enumerate(records, 1):
        lesion = load_lesion_mask(s["lesion"], s["acquired"][0], s["subject"]) if s.get("lesion") else None
        labels = subject_labels(s)
        acquired, mask = volume_at(*s["acquired"], target_b, "acquired"), load_mask(s["mask"])
        ids = {"task": "ct2dwi", "cohort": s["cohort"], "center": s["center"], "organ": "brain",
               "subject": s["subject"]}
        for cell in cells:
            if cell.method not in s["synth"]:
                continue
            synthetic = volume_at(*s["synth"][cell.method], target_b, "synthetic")
            scores = score_subject(synthetic, acquired, mask, lesion, target_b, labels)
            rows += [{**ids, "method": cell.method, **cell.describe(blocks.get(cell.method, {})), **row}
                     for row in scores]
        progress(f"[ct2dwi] {i}/{len(records)} sub-{s['subject']} scored")
    columns = TABLE_KEYS + ["experiment", "setting", "grid", "replicate", "lesion_guidance", "train_centers",
                            "wavelet", "heads", "modules_off", "slice",
                            "b_value", "seen"] + METRICS + LESION_COLUMNS
    return pd.DataFrame(rows).reindex(columns=columns)


def subject_labels(record: dict) -> np.ndarray | None:
    """The record's tissue label map (`dseg`, e.g. the demo's, stored in LPS) on its normalized DWI grid, or None."""
    from dwisynth.io import load_on_grid

    if not record.get("dseg"):
        return None
    return np.rint(load_on_grid(record["dseg"], record["acquired"][0], order=0)).astype(int)


# --- scores against the demo's truth ------------------------------------------------------------------
TRUTH = "noisefree"  # the main experiment's method that is the demo's noise-free truth at target_b


def score_against_truth(records: list[dict], target_b: float, label_names=None, progress=print):
    """The demo's CT -> DWI scores against the truth: (truth_metrics, lesion_contrast) data frames, scored as
    the multi-b ones are (`evaluate.truth_metric_rows`, `evaluate.lesion_contrast_rows`: PSNR, SSIM, MAE in the
    brain mask on the truth's scale and the residual's spectral peak; the infarct's contrast against its host
    ring, C_truth, C_acquired and the conspicuity C / C_truth), with task ct2dwi and organ brain.

    records: as `score_experiment`'s, whose synth holds the noise-free truth (`TRUTH`), with `label_names` (the
    dseg's TSV; default: label_names); every other method and the acquisition are scored against the truth.
    Records without the truth score nothing (real data)."""
    import pandas as pd

    from dwisynth.evaluate import (LESION_CONTRAST_COLUMNS, TRUTH_METRICS_COLUMNS, lesion_contrast_rows,
                                   subject_lesions, truth_metric_rows)
    from dwisynth.io import load_mask

    metric_rows, lesion_rows = [], []
    b = [float(target_b)]
    for s in records:
        if TRUTH not in s["synth"]:
            continue
        volume = lambda files, what: (volume_at(*files, target_b, what)[..., None], b)  # noqa: E731
        truth = volume(s["synth"][TRUTH], "noise-free truth")
        images = {"acquired": volume(s["acquired"], "acquired")}
        images |= {m: volume(files, "synthetic") for m, files in s["synth"].items() if m != TRUTH}
        mask = load_mask(s["mask"])
        lesions = subject_lesions({"lesion": s.get("lesion"), "dseg": s.get("dseg"),
                                   "label_names": s.get("label_names", label_names)}, s["acquired"][0], mask)
        ids = {"task": "ct2dwi", "cohort": s["cohort"], "center": s["center"], "organ": "brain",
               "subject": s["subject"]}
        metric_rows += [{**ids, **row} for row in truth_metric_rows(images, truth, mask, b)]
        lesion_rows += [{**ids, **row} for row in lesion_contrast_rows({**images, "truth": truth}, lesions, b,
                                                                        organ=mask)]
        progress(f"[ct2dwi] sub-{s['subject']} scored against the truth")
    return (pd.DataFrame(metric_rows).reindex(columns=TRUTH_METRICS_COLUMNS),
            pd.DataFrame(lesion_rows).reindex(columns=LESION_CONTRAST_COLUMNS))


def compute_record(cell: Cell, model_path, benchmark_path) -> dict:
    """One cell's row of ct2dwi_compute.tsv (`dwisynth.training.model_compute`)."""
    from dwisynth.training import model_compute

    return {"experiment": cell.experiment, "method": cell.method, **model_compute(model_path, benchmark_path)}


def grid_summary(experiments, grid: str):
    """One grid's table from the experiment rows (volume rows of main and the grid's experiments).

    main, ablation, sensitivity: per setting (the experiment without its replicate suffix) and method, the mean
    score over test subjects of each replicate (ct2dwi.seeds), then their mean over replicates, their spread
    (`<metric>_sd`, the SD over replicates; empty with one seed) and the difference to main's JMMDA-GAN of the
    same replicate, averaged (`<metric>_vs_main`). crosscenter: the in-center and cross-center means and their
    drop."""
    import pandas as pd

    volumes = experiments[experiments["slice"].astype(str) == "volume"].copy()
    for column, default in (("setting", volumes["experiment"]), ("replicate", 1), ("lesion_guidance", "")):
        if column not in volumes:  # experiment tables written before seeds and guidance
            volumes[column] = default
    scores = ["psnr", "ssim", "mse", "superpixel_r", "lesion_psnr", "lesion_contrast",
              "lesion_conspicuity_vs_acquired"]
    if grid == "crosscenter":
        rows = []
        for (experiment, method, centers), table in volumes[volumes["grid"] == grid].groupby(
                ["experiment", "method", "train_centers"]):
            trained = set(centers.split("+"))
            inside, outside = table[table["center"].isin(trained)], table[~table["center"].isin(trained)]
            row = {"experiment": experiment, "method": method, "train_centers": centers,
                   "n_in_center": len(inside), "n_cross_center": len(outside)}
            for metric in scores:
                row[f"{metric}_in_center"] = inside[metric].mean()
                row[f"{metric}_cross_center"] = outside[metric].mean()
                row[f"{metric}_drop"] = row[f"{metric}_in_center"] - row[f"{metric}_cross_center"]
            rows.append(row)
        return pd.DataFrame(rows)
    keys = ["setting", "grid", "method", "lesion_guidance", "wavelet", "heads", "modules_off"]
    volumes[keys[3:]] = volumes[keys[3:]].astype(object).where(volumes[keys[3:]].notna(), "")  # TSV blanks read NaN
    # main: main and its unguided copy; another grid: its rows and the reference, main's JMMDA-GAN
    if grid == "main":
        chosen = volumes[volumes["grid"] == "main"]
    else:
        chosen = volumes[(volumes["grid"] == grid) | ((volumes["setting"] == "main") & (volumes["method"] == PROPOSED))]
    per_replicate = chosen.groupby([*keys, "replicate"])[scores].mean().reset_index()
    subjects = chosen.groupby([*keys, "replicate"]).size().to_numpy()
    main = volumes[(volumes["setting"] == "main") & (volumes["method"] == PROPOSED)]
    reference = main.groupby("replicate")[scores].mean()
    # each replicate against main's JMMDA-GAN of the same seed (a single-seed grid: main's first seed)
    same_seed = per_replicate["replicate"].where(per_replicate["replicate"].isin(reference.index),
                                                 reference.index.min() if len(reference) else np.nan)
    differences = per_replicate[scores].to_numpy() - reference.reindex(same_seed)[scores].to_numpy()
    per_replicate = per_replicate.assign(n=subjects, **{f"{m}_vs_main": differences[:, i]
                                                        for i, m in enumerate(scores)})
    grouped = per_replicate.groupby(keys, sort=False)
    table = grouped[scores].mean().join(grouped[scores].std(ddof=1).add_suffix("_sd"))
    table = table.join(grouped[[f"{m}_vs_main" for m in scores]].mean())
    table = table.join(grouped["n"].max()).join(grouped.size().rename("seeds")).reset_index()
    table = table.rename(columns={"setting": "experiment"})
    order = ["experiment", "grid", "method", "lesion_guidance", "wavelet", "heads", "modules_off", "n", "seeds"]
    order += [c for metric in scores for c in (metric, f"{metric}_sd")] + [f"{m}_vs_main" for m in scores]
    return table[order]


def cell_from_params(params: dict) -> Cell:
    """A Cell back from the dict a rule passes (Snakemake params must be plain data)."""
    return Cell(params["experiment"], params["method"], params["grid"],
                tuple((k, v) for k, v in params["overrides"]), tuple(params["train_centers"]),
                params.get("model_experiment", ""), params.get("guided", False), params.get("replicate", 0))


def cell_params(cell: Cell) -> dict:
    return {"experiment": cell.experiment, "method": cell.method, "grid": cell.grid,
            "overrides": [list(kv) for kv in cell.overrides], "train_centers": list(cell.train_centers),
            "model_experiment": cell.model_experiment, "guided": cell.guided, "replicate": cell.replicate}

