"""Path-level preprocessing steps: what each workflow rule and `dwisynth preprocess` run.

Each step reads NIfTI, calls the array functions, and writes its outputs; all
outputs are in RAS orientation (nibabel's closest canonical) from the first step on.
"""

from __future__ import annotations

import json
from pathlib import Path

import nibabel as nib
import numpy as np

from dwisynth.diffusion import adc_fit_bvalues, fit_adc, noise_sigma_background, noise_sigma_repeats, trace_average
from dwisynth.errors import DwisynthError
from dwisynth.io import load_dwi_image, save_nifti, write_bval
from dwisynth.preprocess.masking import (BRAIN_METHODS, body_mask, check_3d_extent, check_ct_hu, check_mask,
                                        hd_bet_v1_mask, hd_bet_v2_mask)
from dwisynth.preprocess.normalize import check_finite, normalize_dwi, snap_bvalues
from dwisynth.preprocess.registration import apply_transforms, register, transform_matrix_lps


def _load(path):
    img = nib.as_closest_canonical(nib.load(path))
    return img, np.asarray(img.dataobj, dtype=np.float64)


def _load_dwi(dwi_path, bval_path, b0_max: float):
    """(image, 4D float array in RAS, b-values, mean b0) of a DWI and its .bval, checked as `load_dwi` checks."""
    img, dwi, bvals = load_dwi_image(dwi_path, bval_path, canonical=True)
    b0 = bvals <= b0_max
    if not b0.any():  # every step reads the mean b0 (the registration reference, the mask, the CT's target)
        raise DwisynthError(f"{bval_path}: no b0 volume (lowest b-value {bvals.min():g} > b0_max {b0_max:g}) in "
                            f"{dwi_path}; preprocessing needs one: add the b0 to the series or raise bvalues.b0_max")
    return img, dwi, bvals, dwi[..., b0].mean(-1)


def _write_json(record, path):
    Path(path).write_text(json.dumps(record, indent=2) + "\n")


class RegistrationError(DwisynthError):
    """A registration that converged somewhere implausible."""


def check_plausible_motion(matrix: np.ndarray, subject: str, what: str, max_mm: float = 40.0,
                           max_deg: float = 20.0) -> None:
    """Patients move millimetres and degrees between scans; far more means the optimizer got lost."""
    angle = np.degrees(np.arccos(np.clip((np.trace(matrix[:3, :3]) - 1) / 2, -1, 1)))
    shift = float(np.linalg.norm(matrix[:3, 3]))
    if angle > max_deg or shift > max_mm:
        raise RegistrationError(
            f"sub-{subject}: registration of {what} converged to a {angle:.0f} degree, {shift:.0f} mm motion; "
            "check that the two series belong together and cover the same anatomy"
        )


def register_dwi(dwi_path, bval_path, out_dwi, out_bval, out_json, subject: str, seed: int, motion: bool,
                 b0_max: float = 10.0, log=print) -> None:
    """Each b-volume rigidly onto the mean b0 (when motion is on); always reorients to RAS."""
    img, dwi, bvals, b0 = _load_dwi(dwi_path, bval_path, b0_max)
    check_finite(dwi, subject, "the converted DWI")
    # fixed_to_moving_lps maps a b0 point to the same point in the volume, as ANTs defines it
    record = {"reference": "mean b0", "transform": "Rigid" if motion else "none", "seed": seed, "volumes": []}
    out = dwi.copy()
    for v, b in enumerate(bvals):
        matrix = np.eye(4)
        if motion and b > b0_max:
            moved, transforms = register(b0, dwi[..., v], img.affine, img.affine, "Rigid", seed)
            matrix = transform_matrix_lps(transforms[0])
            check_plausible_motion(matrix, subject, f"b={b:g} onto b0")
            out[..., v] = moved
            log(f"[register] sub-{subject} b={b:g} onto b0")
        record["volumes"].append({"volume": v, "bval": float(b), "fixed_to_moving_lps": matrix.round(6).tolist()})
    save_nifti(out, img.affine, out_dwi)
    write_bval(bvals, out_bval)
    _write_json(record, out_json)


def torch_device(setting: str = "auto"):
    """config `device` -> what HD-BET takes: 'cpu' or a CUDA index. Masking asks Slurm for no GPU, so CUDA is
    used when usable, never required (dwisynth.device)."""
    from dwisynth.device import inference_device  # imports torch: only for a job that masks

    return 0 if inference_device(setting, job="HD-BET masking").type == "cuda" else "cpu"


def make_mask(dwi_path, bval_path, out_mask, out_json, subject: str, organ: str, method: str,
              b0_max: float = 10.0, device="cpu", threads: int | None = None, precision: str = "float32") -> None:
    img, dwi, bvals, b0 = _load_dwi(dwi_path, bval_path, b0_max)
    # HD-BET sees the highest b-value: with CSF dark its Dice is 0.98 on the demo
    # brain, against 0.84 on b0 where bright CSF and sulci confuse it.
    high_b = dwi[..., int(np.argmax(bvals))]
    spacing = img.header.get_zooms()[:3]
    if organ != "brain":
        method = "threshold"  # HD-BET is a brain model
    if method not in BRAIN_METHODS:
        raise ValueError(f"masking.method must be one of {BRAIN_METHODS}, got {method!r}")
    if method.startswith("hd-bet"):
        check_3d_extent(high_b.shape, spacing, subject, method)
    if method == "hd-bet-v1":
        if threads:
            import torch

            torch.set_num_threads(int(threads))
        mask = hd_bet_v1_mask(high_b, spacing, mode="fast", device=device, precision=precision)
    elif method == "hd-bet-v2":
        tmp_in = Path(out_mask).with_name(f".sub-{subject}_highb.nii.gz")
        save_nifti(high_b, img.affine, tmp_in)
        tmp_out = Path(out_mask).with_name(f".sub-{subject}_bet.nii.gz")
        try:
            hd_bet_v2_mask(tmp_in, tmp_out, device="cuda" if device != "cpu" else "cpu")
            mask = np.asarray(nib.load(str(tmp_out).replace(".nii.gz", "_bet.nii.gz")).dataobj) > 0
        finally:
            for p in Path(out_mask).parent.glob(f".sub-{subject}_*"):
                p.unlink()
    else:
        mask, method = body_mask(b0, spacing=spacing)
    mask = check_mask(mask, subject, method, spacing=spacing)
    save_nifti(mask, img.affine, out_mask, dtype=np.uint8)
    _write_json({"organ": organ, "method": method, "image": f"b{bvals.max():g}" if method.startswith("hd-bet") else "b0",
                 **({"precision": precision} if method == "hd-bet-v1" else {}), "voxels": int(mask.sum()),
                 "volume_ml": round(float(mask.sum() * np.prod(spacing)) / 1000, 2)}, out_json)


def normalize(dwi_path, bval_path, mask_path, out_dwi, out_bval, out_json, subject: str, grid, tolerance: float,
              n4: bool, b0_max: float = 10.0) -> None:
    img, dwi = _load(dwi_path)
    mask = np.asarray(nib.load(mask_path).dataobj) > 0
    bvals = snap_bvalues(np.loadtxt(bval_path, ndmin=1), grid, tolerance, subject)
    b0_repeats = dwi[..., bvals <= b0_max]
    sigma_raw = noise_sigma_repeats(b0_repeats, mask) if b0_repeats.shape[-1] >= 2 else None
    dwi, bvals = trace_average(dwi, bvals, b0_max)
    normalized, record = normalize_dwi(dwi, bvals, mask, img.affine, subject, n4=n4, b0_max=b0_max)
    record["bvals"] = [float(b) for b in bvals]
    # noise of one b0 volume on the normalized scale, for adc.noise_floor: repeats
    record["noise_sigma_repeats"] = None if sigma_raw is None else sigma_raw / record["b0_reference"]
    save_nifti(normalized, img.affine, out_dwi)
    write_bval(bvals, out_bval)
    _write_json(record, out_json)


def noise_floor_sigma(dwi: np.ndarray, mask: np.ndarray, method: str, norm_record=None, source="") -> np.ndarray | None:
    """Per-volume noise sigma for the Rician-floor correction (`adc.noise_floor`), or None for `none`.

    background: each volume's own background (a noise-free synthetic volume gets 0: nothing to remove);
    repeats: the acquisition's repeated-b0 sigma from its normalization record, for every volume.
    """
    if method == "none":
        return None
    if method == "background":
        return np.array([noise_sigma_background(dwi[..., v], mask) for v in range(dwi.shape[-1])])
    sigma = json.loads(Path(norm_record).read_text()).get("noise_sigma_repeats") if norm_record else None
    if sigma is None:
        raise DwisynthError(f"{source}: adc.noise_floor is 'repeats' but the acquisition has no repeated b0 "
                            f"volumes ({norm_record}); use adc.noise_floor: background or none")
    return np.full(dwi.shape[-1], float(sigma))


def adc(dwi_path, bval_path, mask_path, out_adc, settings: dict, reference_bvals=None,
        norm_record=None) -> list[float]:
    """ADC map of a DWI inside the mask, fitted on the b-values of `adc_fit_bvalues(settings['bvalues'], ...)`.

    settings: the resolved `adc` block (`dwisynth.config.adc_settings`); reference_bvals: the acquisition's
    b-values when `dwi_path` is a synthesis of it, so both ADC maps use the same b-values; norm_record:
    the acquisition's normalization record (its repeated-b0 noise, for `noise_floor: repeats`).
    Returns the b-values fitted on.
    """
    img, dwi = _load(dwi_path)
    if dwi.ndim == 3:
        dwi = dwi[..., None]
    bvals = np.loadtxt(bval_path, ndmin=1)
    mask = np.asarray(nib.load(mask_path).dataobj) > 0
    sigma = noise_floor_sigma(dwi, mask, settings.get("noise_floor", "none"), norm_record, dwi_path)
    use_b = adc_fit_bvalues(settings["bvalues"], bvals, *([reference_bvals] if reference_bvals is not None else []))
    try:
        adc_map = fit_adc(dwi, bvals, mask=mask, max_adc=settings["max_adc"], use_b=use_b, sigma=sigma)
    except ValueError as exc:
        raise DwisynthError(f"{dwi_path}: {exc}; set adc.bvalues to b-values this image holds") from exc
    save_nifti(adc_map, img.affine, out_adc)
    return use_b


def register_ct(ct_path, dwi_path, bval_path, out_ct, out_json, subject: str, transform: str, seed: int,
                b0_max: float = 10.0) -> None:
    """CT onto the DWI b0 grid (Rigid or Affine, mutual information)."""
    ct_img, ct = _load(ct_path)
    check_finite(ct, subject, "the CT")
    check_ct_hu(ct, f"sub-{subject} {ct_path}")
    img, _, _, b0 = _load_dwi(dwi_path, bval_path, b0_max)
    # Brain window (0-80 HU): skull and air saturate, leaving a brain silhouette like the b0's.
    # With a wider window (-100..200) one demo subject converged 130 mm off.
    _, transforms = register(b0, np.clip(ct, 0, 80), img.affine, ct_img.affine, transform, seed)
    matrix = transform_matrix_lps(transforms[0])
    check_plausible_motion(matrix, subject, "CT onto DWI")
    full = apply_transforms(b0, ct, img.affine, ct_img.affine, transforms, default_value=-1000.0)
    save_nifti(full, img.affine, out_ct)
    _write_json({"transform": transform, "seed": seed,
                 "fixed_to_moving_lps": matrix.round(6).tolist(),
                 "convention": "maps a point in DWI space (LPS mm) to the same point in CT space"}, out_json)


def preprocess_subject(dwi_path, bval_path, subject: str, organ: str, config: dict, stem, ct_path=None,
                       log=print) -> dict[str, str]:
    """The workflow's chain for one subject outside Snakemake: register, mask, normalize, ADC (+ CT onto DWI).

    stem: output prefix (`<folder>/sub-<id>`); returns the written files by name (`dwisynth.layout.preproc_files`).
    """
    from dwisynth.config import bvalue_grid
    from dwisynth.layout import preproc_files

    b, files = config["bvalues"], preproc_files(stem)
    Path(files["dwi"]).parent.mkdir(parents=True, exist_ok=True)
    log(f"[preprocess] sub-{subject}: registration")
    register_dwi(dwi_path, bval_path, files["reg_dwi"], files["reg_bval"], files["reg_xfm"], subject, config["seed"],
                 config["registration"]["dwi_motion"], b["b0_max"], log=log)
    method = config["masking"]["method"]
    if method == "hd-bet-v2" and organ == "brain":
        from dwisynth.preprocess.masking import install_hd_bet_v2_weights

        install_hd_bet_v2_weights(config["masking"]["hdbet_v2_weights"])
    log(f"[preprocess] sub-{subject}: {organ} mask")
    make_mask(files["reg_dwi"], files["reg_bval"], files["mask"], files["mask_record"], subject, organ, method,
              b["b0_max"], device=torch_device(config["device"]), precision=config["masking"]["hdbet_precision"])
    log(f"[preprocess] sub-{subject}: normalization and ADC")
    normalize(files["reg_dwi"], files["reg_bval"], files["mask"], files["dwi"], files["bval"], files["norm_record"],
              subject, bvalue_grid(config), b["tolerance"], config["normalization"]["n4"], b["b0_max"])
    from dwisynth.config import adc_settings

    adc(files["dwi"], files["bval"], files["mask"], files["adc"], adc_settings(config),
        norm_record=files["norm_record"])
    written = {k: v for k, v in files.items() if not k.startswith("ct")}
    if ct_path:
        register_ct(ct_path, files["reg_dwi"], files["reg_bval"], files["ct"], files["ct_xfm"], subject,
                    config["registration"]["ct_transform"], config["seed"], b["b0_max"])
        ct_brain_mask(files["ct"], files["ct_mask"], files["ct_mask_record"], subject, config["ct2dwi"]["brain_hu"])
        written |= {k: files[k] for k in ("ct", "ct_xfm", "ct_mask", "ct_mask_record")}
    return written


def ct_brain_mask(ct_path, out_mask, out_json, subject: str, brain_hu=(-15.0, 100.0)) -> None:
    """The brain mask of the CT on the DWI grid, from HU alone (`masking.ct_brain_mask`)."""
    from dwisynth.preprocess.masking import ct_brain_mask as brain_from_hu

    img = nib.load(ct_path)
    ct = np.asarray(img.dataobj, dtype=np.float32)
    mask = brain_from_hu(ct, brain_hu, source=f"sub-{subject} {ct_path}")
    save_nifti(mask.astype(np.uint8), img.affine, out_mask, np.uint8)
    _write_json({"method": "ct-hu", "brain_hu": list(map(float, brain_hu)), "voxels": int(mask.sum())}, out_json)
