"""Voxel grids shared by the DICOM writer, the NIfTI writer and the phantoms.

Arrays are indexed (i, j, k) = (column, row, slice) of an axial DICOM series whose
ImageOrientationPatient is [1, 0, 0, 0, 1, 0]: i runs along +x (patient left),
j along +y (posterior), k along +z (superior), i.e. LPS, the DICOM convention.
NIfTI affines are RAS, so x and y change sign.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class Grid:
    shape: tuple[int, int, int]
    spacing: tuple[float, float, float]  # mm, (column, row, slice)
    origin_lps: tuple[float, float, float]  # mm, centre of voxel (0, 0, 0)

    @classmethod
    def centred(cls, shape, spacing) -> "Grid":
        """A grid whose centre lies at the scanner isocentre."""
        shape = tuple(int(n) for n in shape)
        spacing = tuple(float(s) for s in spacing)
        origin = tuple(-(n - 1) * s / 2.0 for n, s in zip(shape, spacing))
        return cls(shape, spacing, origin)

    def affine_lps(self) -> np.ndarray:
        affine = np.diag([*self.spacing, 1.0])
        affine[:3, 3] = self.origin_lps
        return affine

    def affine_ras(self) -> np.ndarray:
        return np.diag([-1.0, -1.0, 1.0, 1.0]) @ self.affine_lps()

    def slice_position_lps(self, k: int) -> tuple[float, float, float]:
        x0, y0, z0 = self.origin_lps
        return (x0, y0, z0 + k * self.spacing[2])

    def world_coordinates_lps(self) -> np.ndarray:
        """(3, nx, ny, nz) array of voxel-centre positions in mm."""
        axes = [o + s * np.arange(n) for o, s, n in zip(self.origin_lps, self.spacing, self.shape)]
        return np.stack(np.meshgrid(*axes, indexing="ij"))
