"""NIfTI reading and writing at the edges; everything inside works on arrays."""

from __future__ import annotations

from contextlib import contextmanager
from pathlib import Path

import nibabel as nib
import numpy as np

from dwisynth.errors import DwisynthError


def check_image_values(data: np.ndarray, source, bvals=None) -> None:
    """Refuse an image no later step can use, naming it: no voxels, NaN/Inf voxels, or a volume
    that is zero everywhere (an aborted export or a damaged file). bvals label the volumes of a 4D DWI."""
    data = np.asanyarray(data)
    if data.size == 0:
        raise DwisynthError(f"{source}: the image is empty (shape {data.shape}); re-export or reconvert it")
    volumes = data.reshape(*data.shape[:3], -1) if data.ndim >= 3 else data.reshape(*data.shape, 1)
    def name(v):
        label = f"b={float(bvals[v]):g}" if bvals is not None and len(bvals) == volumes.shape[-1] else f"{v + 1}"
        return f"volume {v + 1} of {volumes.shape[-1]} ({label})" if volumes.shape[-1] > 1 else "the image"
    for v in range(volumes.shape[-1]):
        volume = volumes[..., v]
        if np.issubdtype(volume.dtype, np.floating):
            bad = int(np.count_nonzero(~np.isfinite(volume)))
            if bad:
                raise DwisynthError(f"{source}: {name(v)} holds {bad} NaN/Inf voxels; the file is damaged or marks "
                                    "missing data with NaN: re-export it from the scanner or PACS")
        if not np.any(volume):
            raise DwisynthError(f"{source}: {name(v)} is zero everywhere; the export is incomplete or the file "
                                "is damaged: re-export the series")


def load_dwi(dwi_path: str | Path, bval_path: str | Path, canonical: bool = False,
             check: bool = True) -> tuple[np.ndarray, np.ndarray]:
    """4D DWI (x, y, z, n_b) as float and its b-values (s/mm²), refused with a message naming the file when
    the .bval does not give one number per volume, or the image is empty, non-finite or holds an all-zero
    volume (`check_image_values`).

    canonical: reorient to RAS (nibabel's closest canonical), the voxel order of every
    image under results/ (the demo truth is written in the DICOM's LPS order).
    """
    _, data, bvals = load_dwi_image(dwi_path, bval_path, canonical, check)
    return data, bvals


def load_dwi_image(dwi_path: str | Path, bval_path: str | Path, canonical: bool = False,
                   check: bool = True) -> tuple[nib.Nifti1Image, np.ndarray, np.ndarray]:
    """`load_dwi`, and the (reoriented) image its array came from, for its affine and header."""
    img = nib.load(dwi_path)
    if canonical:
        img = nib.as_closest_canonical(img)
    data = np.asarray(img.dataobj, dtype=np.float64)
    if data.ndim == 3:
        data = data[..., None]
    if check and data.size == 0:
        check_image_values(data, dwi_path)
    try:
        bvals = np.loadtxt(bval_path, ndmin=1)
    except ValueError as exc:
        raise DwisynthError(f"{bval_path}: not a .bval ({exc}); it holds the b-values (s/mm²) of {dwi_path}, "
                            "one number per volume on one line") from exc
    if bvals.size != data.shape[-1]:
        raise DwisynthError(f"{bval_path}: {bvals.size} b-values for {data.shape[-1]} volumes in {dwi_path}")
    if check:
        check_image_values(data, dwi_path, bvals)
    return img, data, bvals


def load_mask(path: str | Path, canonical: bool = False) -> np.ndarray:
    img = nib.load(path)
    return np.asarray((nib.as_closest_canonical(img) if canonical else img).dataobj) > 0


def load_map(path: str | Path, canonical: bool = False) -> np.ndarray:
    """A 3D map (ADC, HU) as float; canonical reorients to RAS like everything under results/."""
    img = nib.load(path)
    return np.asarray((nib.as_closest_canonical(img) if canonical else img).dataobj, dtype=np.float64)


def save_nifti(array: np.ndarray, affine: np.ndarray, out_path: str | Path, dtype=np.float32) -> None:
    """Save array with an affine (RAS, mm), qform and sform both set."""
    img = nib.Nifti1Image(np.asarray(array, dtype=dtype), affine)
    img.header.set_qform(affine, code=1)
    img.header.set_sform(affine, code=1)
    img.header.set_xyzt_units("mm")
    Path(out_path).parent.mkdir(parents=True, exist_ok=True)
    nib.save(img, out_path)


def save_like(array: np.ndarray, reference: str | Path, out_path: str | Path, dtype=np.float32) -> None:
    """Save array with the geometry of a reference image."""
    save_nifti(array, nib.load(reference).affine, out_path, dtype)


def write_bval(bvals, path: str | Path) -> None:
    Path(path).write_text(" ".join(f"{float(b):g}" for b in bvals) + "\n")


@contextmanager
def written_whole(path: str | Path, tmp: str | Path | None = None):
    """Yields the file to write instead of `path` (default: .partial-<name> beside it, whose suffixes still
    tell nibabel the format), renamed onto `path` when the block succeeds and removed when it fails: a failed
    command leaves no half-written file, under the final name or beside it."""
    path = Path(path)
    tmp = Path(tmp) if tmp else path.with_name(f".partial-{path.name}")
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        yield tmp
        tmp.replace(path)
    finally:
        tmp.unlink(missing_ok=True)


def write_table(table, path: str | Path) -> None:
    """A TSV written whole or not at all (a failed job leaves no half table)."""
    path = Path(path)
    with written_whole(path, path.with_name(path.name + ".tmp")) as tmp:
        table.to_csv(tmp, sep="\t", index=False, float_format="%.6g")


def load_on_grid(path: str | Path, reference: str | Path | nib.spatialimages.SpatialImage, order: int = 1) -> np.ndarray:
    """An image brought onto a reference image's voxel grid through both affines (nibabel's resample_from_to):
    a copy stored in another voxel order (LPS, a transpose, a flip) lands on the same anatomy. order 0 for
    masks and label maps, 1 for intensities; a 4D image keeps its volumes. Outside its field of view: 0."""
    from nibabel.processing import resample_from_to

    img = nib.load(path)
    ref = nib.load(reference) if isinstance(reference, (str, Path)) else reference
    shape = tuple(ref.shape[:3]) + tuple(img.shape[3:])
    return np.asarray(resample_from_to(img, (shape, ref.affine), order=order, mode="constant", cval=0.0).dataobj,
                      dtype=np.float64)
