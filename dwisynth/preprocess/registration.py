"""Rigid/affine registration with ANTsPy, on arrays with a NIfTI (RAS) affine.

ANTs works in ITK's LPS physical space; the conversion from a NIfTI affine is
done here once. Determinism: one ITK thread and a fixed ANTs random seed
(ants.config.set_ants_deterministic), so the same input gives the same output.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

RAS_TO_LPS = np.diag([-1.0, -1.0, 1.0])


def to_ants(volume: np.ndarray, affine: np.ndarray):
    import ants

    spacing = np.linalg.norm(affine[:3, :3], axis=0)
    direction = RAS_TO_LPS @ (affine[:3, :3] / spacing)
    origin = RAS_TO_LPS @ affine[:3, 3]
    return ants.from_numpy(np.asarray(volume, dtype=np.float32), origin=tuple(origin), spacing=tuple(spacing),
                           direction=direction)


def make_deterministic(seed: int) -> None:
    import ants

    os.environ["ITK_GLOBAL_DEFAULT_NUMBER_OF_THREADS"] = "1"
    ants.config.set_ants_deterministic(True, int(seed))


def register(fixed: np.ndarray, moving: np.ndarray, affine_fixed: np.ndarray, affine_moving: np.ndarray,
             transform: str = "Rigid", seed: int = 42, fixed_mask: np.ndarray | None = None,
             iterations=(200, 100, 50)):
    """Register moving onto fixed; returns (moved array on the fixed grid, list of ANTs transforms in memory).

    transform: 'Rigid' or 'Affine' (mutual information, so contrasts may differ:
    b1000 onto b0, CT onto DWI). ANTs writes the transforms to files in /tmp; they are read back and
    deleted here (left behind, a demo run leaves hundreds of them).
    """
    import ants

    if transform not in ("Rigid", "Affine"):
        raise ValueError(f"registration transform must be Rigid or Affine, got {transform!r}")
    make_deterministic(seed)
    fixed_img = to_ants(fixed, affine_fixed)
    moving_img = to_ants(moving, affine_moving)
    mask = to_ants(fixed_mask.astype(np.float32), affine_fixed) if fixed_mask is not None else None
    result = ants.registration(fixed_img, moving_img, type_of_transform=transform, mask=mask,
                               aff_metric="mattes", aff_sampling=32, aff_random_sampling_rate=0.5,
                               aff_iterations=tuple(iterations), aff_shrink_factors=(4, 2, 1),
                               aff_smoothing_sigmas=(2, 1, 0))
    transforms = [ants.read_transform(str(path)) for path in result["fwdtransforms"]]
    for path in {*result["fwdtransforms"], *result["invtransforms"]}:  # Rigid/Affine: one file for both
        Path(path).unlink(missing_ok=True)
    return result["warpedmovout"].numpy(), transforms


def apply_transforms(fixed: np.ndarray, moving: np.ndarray, affine_fixed, affine_moving, transforms,
                     interpolator: str = "linear", default_value: float = 0.0) -> np.ndarray:
    """moving resampled onto fixed's grid through the one Rigid/Affine transform `register` returns;
    voxels mapped outside moving read default_value."""
    (transform,) = transforms
    image = to_ants(np.asarray(moving, dtype=np.float64) - default_value, affine_moving)
    moved = transform.apply_to_image(image, reference=to_ants(fixed, affine_fixed), interpolation=interpolator)
    # outside voxels read 0, i.e. default_value after the shift back (linear mixing at the border is the same)
    return moved.numpy() + default_value


def transform_matrix_lps(transform) -> np.ndarray:
    """4x4 matrix mapping fixed-space points (LPS mm) to moving-space points, as ANTs defines it
    (transform: an ANTs transform or its file)."""
    import ants

    tx = transform if isinstance(transform, ants.ANTsTransform) else ants.read_transform(str(transform))
    params = np.asarray(tx.parameters)
    centre = np.asarray(tx.fixed_parameters)
    matrix = params[:9].reshape(3, 3)
    translation = params[9:12]
    m = np.eye(4)
    m[:3, :3] = matrix
    m[:3, 3] = translation + centre - matrix @ centre
    return m

