"""Real brains through masking: slabs, scanner orientations and intensity scales, a gate on every mask.

The brain is the demo's (the MNI152 maps, deformed per subject) sampled on a real DTI's 2 mm grid and
cut to a 64 mm slab from the ventricles to the vertex, as a real Philips series that HD-BET missed.
"""

from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from dwisynth.demo.anatomy import BrainPhantom, mixture_signal
from dwisynth.demo.cohort import rician
from dwisynth.geometry import Grid
from dwisynth.preprocess.masking import MaskError, check_mask, pad_to_head_field
from dwisynth.preprocess.qa import dice
from dwisynth.preprocess.steps import make_mask

BVALS = [0.0, 1000.0]


def brain_series(shape, spacing, lowest_slice_mm: float, seed: int = 3):
    """(RAS image of b 0 and b 1000, truth brain mask in RAS) of a demo brain on this grid; slices go
    up from lowest_slice_mm (mm above the scanner isocentre, where the demo puts MNI z = 18 mm)."""
    rng = np.random.default_rng(seed)
    centred = Grid.centred(shape, spacing)
    grid = Grid(centred.shape, centred.spacing, (*centred.origin_lps[:2], lowest_slice_mm))
    phantom = BrainPhantom(rng, lesion=None)
    fractions = phantom.fractions(grid.world_coordinates_lps())
    dwi = rician(mixture_signal(fractions, BVALS, BVALS), 1 / 30, rng)
    # the grid is LPS; its RAS affine flips the first two axes, so the RAS array is flipped likewise
    image = nib.as_closest_canonical(nib.Nifti1Image(dwi.astype(np.float32), grid.affine_ras()))
    return image, phantom.organ_mask(fractions)[::-1, ::-1]


def as_scanner_wrote_it(image: nib.Nifti1Image, axcodes: str, top: float, dtype) -> nib.Nifti1Image:
    """The image stored in another voxel orientation, its b0 maximum at `top` in `dtype`."""
    ornt = nib.orientations.ornt_transform(nib.orientations.axcodes2ornt("RAS"),
                                           nib.orientations.axcodes2ornt(axcodes))
    stored = image.as_reoriented(ornt)
    data = np.asarray(stored.dataobj, dtype=np.float64)
    data = data * top / data[..., 0].max()
    if np.issubdtype(dtype, np.integer):
        data = np.round(data)
    return nib.Nifti1Image(data.astype(dtype), stored.affine)


def write_series(tmp_path: Path, image: nib.Nifti1Image, name: str) -> tuple[Path, Path]:
    dwi, bval = tmp_path / f"{name}_dwi.nii.gz", tmp_path / f"{name}_dwi.bval"
    nib.save(image, dwi)
    bval.write_text(" ".join(f"{b:g}" for b in BVALS) + "\n")
    return dwi, bval


@pytest.fixture(scope="module")
def slab():
    """A 64 mm slab of 2 mm slices from the lateral ventricles (MNI z about 21 mm) to the vertex."""
    return brain_series((96, 104, 32), (2.0, 2.0, 2.0), lowest_slice_mm=3.0)


@pytest.mark.parametrize("axcodes, top, dtype", [
    ("LPS", 4095, np.uint16),  # DICOM's patient frame, 12-bit integers
    ("PSL", 300, np.int16),  # axes permuted (a sagittal-style storage order), a small integer range
    ("LAS", 1e5, np.float32),  # FSL's radiological storage, a float scale
])
def test_hd_bet_finds_the_brain_in_a_slab_whatever_the_orientation_and_scale(tmp_path, slab, axcodes, top, dtype):
    image, truth = slab
    dwi, bval = write_series(tmp_path, as_scanner_wrote_it(image, axcodes, top, dtype), f"sub-S{axcodes}")
    out_mask, out_json = tmp_path / "mask.nii.gz", tmp_path / "mask.json"
    make_mask(dwi, bval, out_mask, out_json, f"S{axcodes}", "brain", "hd-bet-v1")
    written = nib.load(out_mask)
    assert np.allclose(written.affine, image.affine)  # on the series' own grid, in RAS like every step's output
    mask = np.asarray(written.dataobj) > 0
    assert dice(mask, truth) >= 0.9, (axcodes, dice(mask, truth))


def test_a_sagittal_slab_is_padded_to_hd_bets_field_with_air_not_with_the_brain_it_cuts():
    slab = np.full((20, 112, 112), 500.0)  # 20 sagittal slices of 2 mm: brain on the faces that cut it
    slab[:, :8], slab[:, -8:], slab[:, :, :8], slab[:, :, -8:] = 3.0, 3.0, 3.0, 3.0  # air around the head
    padded, original = pad_to_head_field(slab, (2.0, 2.0, 2.0))
    assert padded.shape == (96, 112, 112)  # 192 mm, as HD-BET's 128 voxels of 1.5 mm
    assert np.array_equal(padded[original], slab)
    assert set(np.unique(padded[:38])) == {3.0} and set(np.unique(padded[58:])) == {3.0}


def test_a_brain_mask_of_a_few_hundred_voxels_stops_the_subject_with_the_volume_and_the_fix():
    """The real Philips slab: HD-BET's mask held 368 voxels (2.9 ml) of a 112 x 112 x 32 series at 2 mm."""
    mask = np.zeros((112, 112, 32), bool)
    mask[50:58, 50:57, 10:17] = True  # 392 voxels
    with pytest.raises(MaskError, match=r"sub-P042: the hd-bet-v1 brain mask holds 3\.1 ml \(392 voxels\), outside "
                                        r"the 64 to 1600 ml .* masking\.method: threshold .* or hd-bet-v2"):
        check_mask(mask, "P042", "hd-bet-v1", spacing=(2.0, 2.0, 2.0))


def test_a_brain_mask_filling_the_field_of_view_stops_the_subject():
    with pytest.raises(MaskError, match=r"sub-P043: the hd-bet-v1 brain mask holds 3211\.3 ml"):
        check_mask(np.ones((112, 112, 32), bool), "P043", "hd-bet-v1", spacing=(2.0, 2.0, 2.0))


def test_the_truth_brain_of_a_slab_and_of_a_whole_head_pass_the_gate(slab):
    _, slab_truth = slab
    assert check_mask(slab_truth, "P044", "hd-bet-v1", spacing=(2.0, 2.0, 2.0)).sum() == slab_truth.sum()
    _, head_truth = brain_series((64, 76, 44), (3.0, 3.0, 4.0), lowest_slice_mm=-86.0)  # the demo's brain grid
    assert check_mask(head_truth, "P045", "hd-bet-v1", spacing=(3.0, 3.0, 4.0)).sum() == head_truth.sum()


def test_a_body_mask_that_caught_one_bright_organ_stops_the_subject():
    """Otsu on the demo pelvis found the bladder, not the body (body_mask's docstring)."""
    mask = np.zeros((72, 52, 12), bool)
    mask[30:40, 20:30, 3:9] = True  # a bladder-sized blob, 1.3% of the field of view
    with pytest.raises(MaskError, match=r"sub-P046: the otsu body mask holds 90\.0 ml, 1\.3% of this 72 x 52 x 12 "
                                        r"field of view at 5 x 5 x 6 mm"):
        check_mask(mask, "P046", "otsu", spacing=(5.0, 5.0, 6.0))
    body = np.zeros((72, 52, 12), bool)
    body[10:62, 8:44] = True  # half the field of view: a body
    assert check_mask(body, "P046", "threshold", spacing=(5.0, 5.0, 6.0)).sum() == body.sum()
    small_head = np.zeros((72, 52, 12), bool)
    small_head[26:46, 16:31] = True  # 8%: a preterm head in a wide field of view is still a body
    assert check_mask(small_head, "P046", "threshold", spacing=(5.0, 5.0, 6.0)).sum() == small_head.sum()


def test_a_two_slice_series_is_refused_by_hd_bet_with_the_fix_and_masked_by_the_threshold(tmp_path):
    """A real GE series of 256 x 256 x 2 died inside HD-BET ("attempt to get argmax of an empty sequence")."""
    image, truth = brain_series((256, 256, 2), (0.9375, 0.9375, 5.0), lowest_slice_mm=0.0)
    dwi, bval = write_series(tmp_path, as_scanner_wrote_it(image, "LPS", 4095, np.uint16), "sub-P047")
    out_mask, out_json = tmp_path / "mask.nii.gz", tmp_path / "mask.json"
    with pytest.raises(MaskError, match=r"sub-P047: the series is too thin for hd-bet-v1, a 3D brain extraction: 2 "
                                        r"slices \(10 mm\), where it needs at least 4 slices and 10 mm; "
                                        r"set masking\.method: threshold"):
        make_mask(dwi, bval, out_mask, out_json, "P047", "brain", "hd-bet-v1")
    assert not out_mask.exists() and not out_json.exists()
    make_mask(dwi, bval, out_mask, out_json, "P047", "brain", "threshold")  # the fix the message names
    mask = np.asarray(nib.load(out_mask).dataobj) > 0
    assert dice(mask, truth) >= 0.9, dice(mask, truth)
