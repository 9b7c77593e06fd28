"""Digital anatomy for the demo cohort, as continuous functions of position.

Each phantom maps world coordinates (LPS, mm) to tissue fractions, so the same
subject can be sampled on the DWI grid and, misaligned, on the CT grid.
Tissue parameters are literature values (docs/design.md, Tissue parameters); ADC and D* in
x10^-3 mm²/s, S0 relative to grey matter on a fat-suppressed b0, CT in HU.

The literature ADC is an *apparent* ADC: what a mono-exponential fit over a clinical
b-set reads, perfusion included. Each tissue's IVIM D is therefore calibrated per
b-set so the fit of its noise-free signal returns the table value, and a mixed voxel's
signal is the sum of its compartments' signals (not one exponential of averaged ADCs).
"""

from __future__ import annotations

import functools
from dataclasses import dataclass

import numpy as np
from scipy import ndimage


@dataclass(frozen=True)
class Tissue:
    label: int
    s0: float
    adc: float  # apparent ADC over a clinical b-set (the literature value), not IVIM D
    perfusion_fraction: float = 0.0
    pseudo_diffusion: float = 30.0
    hu: float | None = 40.0  # None: the HU of the tissue it replaces, plus hu_offset
    hu_offset: float = 0.0
    kurtosis: float = 0.0  # diffusional kurtosis K of the tissue term (0: free water)


# Kurtosis K (mean kurtosis, rounded from the reported ranges; README, demo cohort): brain WM about 1, GM 0.7-0.8
# (Jensen 2005), high-grade glioma about 0.7 (Van Cauter 2012), acute infarct raised to about 1.2 (Hui 2012);
# breast malignant about 0.9 against benign 0.6 (Sun 2015); liver about 0.8 (Rosenkrantz 2012, liver), kidney
# about 0.6 (Pentang 2014); head-and-neck SCC about 0.9, lymphoma higher (Jansen 2010); prostate tumour about 1
# against benign peripheral zone 0.6 and transition zone 0.7 (Rosenkrantz 2012, prostate). Fluids: 0.
TISSUES: dict[str, Tissue] = {
    # brain (IVIM fraction small in brain)
    "cortical_gm": Tissue(1, 1.00, 0.89, 0.05, 10.0, hu=40, kurtosis=0.75),
    "deep_gm": Tissue(2, 0.95, 0.75, 0.04, 10.0, hu=38, kurtosis=0.8),
    "wm": Tissue(3, 0.80, 0.70, 0.03, 10.0, hu=25, kurtosis=1.0),
    "csf": Tissue(4, 2.00, 3.20, 0.0, 10.0, hu=8, kurtosis=0.0),
    "brain_tumour": Tissue(5, 1.30, 0.80, 0.06, 10.0, hu=35, kurtosis=0.7),
    # early infarct on CT: 2-5 HU below the parenchyma it replaces (why CT misses it)
    "acute_infarct": Tissue(6, 1.05, 0.60, 0.02, 10.0, hu=None, hu_offset=-4.0, kurtosis=1.2),
    # breast (fat suppressed, so fat has little signal)
    "fat": Tissue(10, 0.10, 0.20, 0.0, 30.0, hu=-100, kurtosis=0.0),
    "fibroglandular": Tissue(11, 1.00, 1.92, 0.08, 30.0, hu=30, kurtosis=0.5),
    "breast_malignant": Tissue(12, 1.20, 1.03, 0.10, 30.0, hu=45, kurtosis=0.9),
    "breast_benign": Tissue(13, 1.30, 1.50, 0.08, 30.0, hu=40, kurtosis=0.6),
    "muscle": Tissue(14, 0.55, 1.45, 0.06, 30.0, hu=50, kurtosis=0.6),
    # abdomen: IVIM perfusion is real in liver, kidney, spleen
    "liver": Tissue(20, 0.70, 1.28, 0.25, 50.0, hu=60, kurtosis=0.8),
    "kidney": Tissue(21, 1.10, 1.94, 0.20, 40.0, hu=35, kurtosis=0.6),
    "spleen": Tissue(22, 1.10, 0.85, 0.15, 40.0, hu=45, kurtosis=0.8),
    "pancreas": Tissue(23, 0.90, 1.60, 0.15, 40.0, hu=40, kurtosis=0.7),
    "liver_metastasis": Tissue(24, 1.00, 1.00, 0.08, 40.0, hu=45, kurtosis=0.9),
    # neck
    "spinal_cord": Tissue(30, 0.90, 1.10, 0.03, 20.0, hu=35, kurtosis=0.9),
    "neck_scc": Tissue(31, 1.15, 0.87, 0.08, 30.0, hu=45, kurtosis=0.9),
    "lymphoma_node": Tissue(32, 1.25, 0.60, 0.05, 30.0, hu=45, kurtosis=1.1),
    # pelvis
    "urine": Tissue(40, 2.20, 3.00, 0.0, 30.0, hu=5, kurtosis=0.0),
    "prostate_pz": Tissue(41, 1.00, 1.80, 0.08, 30.0, hu=40, kurtosis=0.6),
    "prostate_tz": Tissue(42, 0.85, 1.34, 0.08, 30.0, hu=40, kurtosis=0.7),
    "prostate_tumour": Tissue(43, 0.95, 0.98, 0.06, 30.0, hu=42, kurtosis=1.0),
}

LESION_TISSUES = {"brain_tumour", "acute_infarct", "breast_malignant", "breast_benign",
                  "liver_metastasis", "neck_scc", "lymphoma_node", "prostate_tumour"}


class Phantom:
    """Base: subclasses define fractions(coords) -> {tissue: fraction array}."""

    organ_tissues: tuple[str, ...] = ()

    def fractions(self, coords: np.ndarray, lesion: bool = True) -> dict[str, np.ndarray]:
        """Tissue fractions at coords; lesion=False gives the healthy anatomy the lesion replaced."""
        raise NotImplementedError

    def organ_mask(self, fractions: dict[str, np.ndarray]) -> np.ndarray:
        """Voxels that are mostly organ tissue (brain for brain, body otherwise)."""
        total = sum(fractions[t] for t in fractions if t in self.organ_tissues or t in LESION_TISSUES)
        return total >= 0.5


def _soft_ellipsoid(coords, centre, radii, edge_mm=1.5, rotation_deg=0.0) -> np.ndarray:
    """Fraction in [0, 1] of an ellipsoid, with a smooth partial-volume edge."""
    rel = coords - np.asarray(centre, dtype=float).reshape(3, 1, 1, 1)
    if rotation_deg:
        a = np.deg2rad(rotation_deg)
        x = rel[0] * np.cos(a) - rel[1] * np.sin(a)
        y = rel[0] * np.sin(a) + rel[1] * np.cos(a)
        rel = np.stack([x, y, rel[2]])
    radii = np.asarray(radii, dtype=float).reshape(3, 1, 1, 1)
    r = np.sqrt(((rel / radii) ** 2).sum(0))
    mean_radius = float(np.mean(radii))
    return 1.0 / (1.0 + np.exp(np.clip((r - 1.0) * mean_radius / edge_mm, -50, 50)))


def _exclusive(layers: list[tuple[str, np.ndarray]]) -> dict[str, np.ndarray]:
    """Stack tissues front to back: each layer takes what the ones before left."""
    remaining = None
    out: dict[str, np.ndarray] = {}
    for name, frac in layers:
        if remaining is None:
            remaining = np.ones_like(frac)
        take = np.clip(frac, 0, 1) * remaining
        out[name] = out.get(name, 0) + take
        remaining = remaining - take
    return out


@functools.lru_cache(maxsize=1)
def _mni_maps():
    from nilearn.datasets import load_mni152_brain_mask, load_mni152_gm_template, load_mni152_wm_template

    gm_img = load_mni152_gm_template(resolution=2)
    gm = gm_img.get_fdata(dtype=np.float32)
    wm = load_mni152_wm_template(resolution=2).get_fdata(dtype=np.float32)
    brain = ndimage.gaussian_filter(load_mni152_brain_mask(resolution=2).get_fdata(dtype=np.float32), 0.7)
    maps = {"gm": np.clip(gm, 0, 1), "wm": np.clip(wm, 0, 1), "brain": np.clip(brain, 0, 1)}
    return maps, np.linalg.inv(gm_img.affine)


class BrainPhantom(Phantom):
    """MNI152 2009a GM/WM/CSF maps (nilearn, offline), deformed per subject."""

    organ_tissues = ("cortical_gm", "deep_gm", "wm", "csf")
    # MNI RAS point placed at the scanner isocentre
    centre_ras = np.array([0.0, -18.0, 18.0])

    def __init__(self, rng: np.random.Generator, lesion: str | None = "brain_tumour"):
        self.maps, self.mni_inv_affine = _mni_maps()
        # Subject variation: global scale, and a smooth random displacement (mm).
        self.scale = rng.uniform(0.93, 1.07, size=3)
        self.shift = rng.uniform(-4, 4, size=3)
        coarse = rng.normal(0, 2.5, size=(3, 5, 5, 5))
        self.displacement = [ndimage.zoom(c, 8, order=3) for c in coarse]  # covers MNI extent coarsely
        self.lesion = lesion
        self.lesion_centre = self.centre_ras + np.array(
            [rng.choice([-1, 1]) * rng.uniform(20, 40), rng.uniform(-30, 20), rng.uniform(-5, 25)]
        )
        self.lesion_radii = rng.uniform(6, 12, size=3)

    def _mni_coordinates(self, coords_lps):
        ras = coords_lps * np.array([-1, -1, 1.0]).reshape(3, 1, 1, 1)
        ras = ras / self.scale.reshape(3, 1, 1, 1) + (self.centre_ras + self.shift).reshape(3, 1, 1, 1)
        # smooth displacement indexed by normalized position within a 200 mm box
        box = (ras + 100.0) / 200.0 * (self.displacement[0].shape[0] - 1)
        disp = np.stack([ndimage.map_coordinates(d, box, order=1, mode="nearest") for d in self.displacement])
        ras = ras + disp
        hom = np.concatenate([ras, np.ones((1, *ras.shape[1:]))])
        return np.tensordot(self.mni_inv_affine, hom, axes=1)[:3], ras

    def fractions(self, coords, lesion: bool = True):
        vox, ras = self._mni_coordinates(coords)
        sample = lambda m: ndimage.map_coordinates(self.maps[m], vox, order=1, mode="constant")  # noqa: E731
        gm, wm, brain = sample("gm"), sample("wm"), sample("brain")
        tissue_sum = gm + wm
        over = np.maximum(tissue_sum, 1.0)
        gm, wm = gm / over, wm / over
        csf = np.clip(brain - gm - wm, 0, 1)
        # deep grey matter: GM near the centre (basal ganglia, thalami)
        deep = _soft_ellipsoid(ras, self.centre_ras + [0, 0, -12], [28, 30, 18], edge_mm=4)
        with_lesion = bool(self.lesion) and lesion
        lesion_fraction = np.zeros_like(gm)
        if with_lesion:
            lesion_fraction = _soft_ellipsoid(ras, self.lesion_centre, self.lesion_radii, 2.0)
        out = {
            "deep_gm": gm * deep * (1 - lesion_fraction),
            "cortical_gm": gm * (1 - deep) * (1 - lesion_fraction),
            "wm": wm * (1 - lesion_fraction),
            "csf": csf,
        }
        if with_lesion:
            out[self.lesion] = lesion_fraction * (gm + wm)  # the lesion replaces parenchyma, not CSF
        return out


class BodyPhantom(Phantom):
    """Procedural anatomy of ellipsoids for breast, abdomen, neck and pelvis."""

    def __init__(self, organ: str, rng: np.random.Generator):
        self.organ = organ
        self.rng = rng
        jitter = lambda scale=1.0: rng.uniform(0.9, 1.1) * scale  # noqa: E731
        self.j = [jitter() for _ in range(12)]
        self.offsets = rng.uniform(-6, 6, size=(6, 3)) * np.array([1, 1, 0.5])
        self.lesion_choice = rng.integers(0, 2)
        self.organ_tissues = {
            "breast": ("fibroglandular", "fat", "muscle"),
            "abdomen": ("liver", "kidney", "spleen", "pancreas", "muscle", "fat"),
            "neck": ("muscle", "spinal_cord", "fat"),
            "pelvis": ("prostate_pz", "prostate_tz", "urine", "muscle", "fat"),
        }[organ]
        self.lesion_offset = rng.uniform(-1, 1, size=3)

    def fractions(self, coords, lesion: bool = True):
        layers = self._layers(coords)
        if not lesion:  # the lesion is the front layer: without it, the tissues behind take its place
            layers = [(name, frac) for name, frac in layers if name not in LESION_TISSUES]
        out = _exclusive(layers)
        out.pop("air", None)
        return out

    def _layers(self, coords) -> list[tuple[str, np.ndarray]]:
        """Tissues front to back (see _exclusive); each organ's lesion comes first."""
        j, o = self.j, self.offsets
        E = _soft_ellipsoid
        body_depth = 200
        if self.organ == "breast":
            left = E(coords, [60 * j[0], -40, 0], [55 * j[1], 50 * j[2], body_depth])
            right = E(coords, [-60 * j[3], -40, 0], [55 * j[4], 50 * j[5], body_depth])
            fg_l = E(coords, [60 * j[0] + o[0, 0], -45 + o[0, 1], o[0, 2]], [32 * j[6], 28 * j[7], 40])
            fg_r = E(coords, [-60 * j[3] + o[1, 0], -45 + o[1, 1], o[1, 2]], [30 * j[8], 27 * j[9], 40])
            chest = E(coords, [0, 20, 0], [120, 25, body_depth])
            side = 1 if self.lesion_choice else -1
            lesion = "breast_malignant" if self.rng_flag(0) else "breast_benign"
            les = E(coords, [side * 60 * j[0] + 8 * self.lesion_offset[0], -50 + 6 * self.lesion_offset[1],
                             10 * self.lesion_offset[2]], [8 * j[10], 7 * j[11], 7], edge_mm=1.0)
            return [(lesion, les), ("fibroglandular", np.maximum(fg_l, fg_r)), ("muscle", chest),
                    ("fat", np.maximum(left, right))]
        if self.organ == "abdomen":
            body = E(coords, [0, 0, 0], [150 * j[0], 105 * j[1], body_depth])
            liver = E(coords, [-55 + o[0, 0], -10 + o[0, 1], o[0, 2]], [70 * j[2], 60 * j[3], 80], rotation_deg=15)
            spleen = E(coords, [75 + o[1, 0], 25 + o[1, 1], o[1, 2]], [28 * j[4], 40 * j[5], 50])
            kid_l = E(coords, [55 + o[2, 0], 50 + o[2, 1], o[2, 2] - 10], [22, 30 * j[6], 45])
            kid_r = E(coords, [-55 + o[3, 0], 50 + o[3, 1], o[3, 2] - 15], [22, 30 * j[7], 45])
            pancreas = E(coords, [10 + o[4, 0], 10 + o[4, 1], 0], [45 * j[8], 12, 20], rotation_deg=-10)
            muscle = E(coords, [0, 75, 0], [70, 22, body_depth])
            met = E(coords, [-60 + 20 * self.lesion_offset[0], -15 + 20 * self.lesion_offset[1], 10 * self.lesion_offset[2]],
                    [11 * j[9], 10 * j[10], 10], edge_mm=1.0) * liver
            return [("liver_metastasis", met), ("liver", liver), ("spleen", spleen),
                    ("kidney", np.maximum(kid_l, kid_r)), ("pancreas", pancreas), ("muscle", muscle), ("fat", body)]
        if self.organ == "neck":
            neck = E(coords, [0, 0, 0], [60 * j[0], 55 * j[1], body_depth])
            airway = E(coords, [0, -25 + o[0, 1], 0], [9, 7, body_depth])
            cord = E(coords, [0, 30 + o[1, 1] * 0.3, 0], [6, 5, body_depth])
            muscle = E(coords, [0, 10, 0], [50 * j[2], 42 * j[3], body_depth])
            side = 1 if self.lesion_choice else -1
            node = E(coords, [side * 35 + o[2, 0], -5 + o[2, 1], o[2, 2]], [9 * j[4], 8 * j[5], 10], edge_mm=1.0)
            scc = E(coords, [-side * 15 + o[3, 0], -30 + o[3, 1], o[3, 2]], [11 * j[6], 9 * j[7], 10], edge_mm=1.0)
            return [("neck_scc", scc), ("lymphoma_node", node), ("air", airway), ("spinal_cord", cord),
                    ("muscle", muscle), ("fat", neck)]
        if self.organ == "pelvis":
            body = E(coords, [0, 0, 0], [160 * j[0], 110 * j[1], body_depth])
            bladder = E(coords, [0, -40 + o[0, 1], 30], [40 * j[2], 35 * j[3], 30])
            prostate = E(coords, [o[1, 0] * 0.5, 10 + o[1, 1] * 0.5, -10], [22 * j[4], 17 * j[5], 20])
            tz = E(coords, [o[1, 0] * 0.5, 5 + o[1, 1] * 0.5, -10], [12 * j[6], 9 * j[7], 14])
            muscle = np.maximum(E(coords, [85, 20, 0], [35, 45, body_depth]), E(coords, [-85, 20, 0], [35, 45, body_depth]))
            side = 1 if self.lesion_choice else -1
            tumour = E(coords, [side * 10 + o[1, 0] * 0.5, 18 + o[1, 1] * 0.5, -10 + 5 * self.lesion_offset[2]],
                       [6 * j[8], 5 * j[9], 6], edge_mm=1.0) * prostate
            return [("prostate_tumour", tumour), ("prostate_tz", tz * prostate), ("prostate_pz", prostate),
                    ("urine", bladder), ("muscle", muscle), ("fat", body)]
        raise ValueError(f"unknown organ {self.organ!r}")

    def rng_flag(self, index: int) -> bool:
        return bool((self.lesion_choice + index) % 2)

    def organ_mask(self, fractions):
        """Body outline: every tissue counts (fat has signal on b0, though little)."""
        return sum(fractions.values()) >= 0.5


def make_phantom(organ: str, rng: np.random.Generator, lesion: str | None = None) -> Phantom:
    if organ == "brain":
        return BrainPhantom(rng, lesion=lesion if lesion is not None else "brain_tumour")
    return BodyPhantom(organ, rng)


@functools.lru_cache(maxsize=None)
def calibrated_diffusivity(tissue: str, fit_bvals: tuple[float, ...]) -> float:
    """The IVIM D (x10^-3 mm²/s) whose noise-free signal, fitted mono-exponentially on fit_bvals
    with the workflow's own ADC fit, reads the tissue's literature (apparent) ADC.

    Perfusion raises the apparent ADC above D, most when the b-set holds low b-values; kurtosis lowers it,
    most when the b-set reaches high b-values.
    """
    from scipy.optimize import brentq

    from dwisynth.diffusion import fit_adc, ivim_signal

    t = TISSUES[tissue]
    b = np.asarray(fit_bvals, float)

    def apparent(d):
        signal = ivim_signal(1.0, d, b, t.perfusion_fraction, t.pseudo_diffusion, t.kurtosis)[None]
        return float(fit_adc(signal, b, max_adc=np.inf)[0])

    return float(brentq(lambda d: apparent(d) - t.adc, 1e-4, 3.0 * t.adc + 1.0, xtol=1e-7))


def mixture_signal(fractions: dict[str, np.ndarray], bvals, fit_bvals) -> np.ndarray:
    """Noise-free S(b) of each voxel, relative S0 units: the sum over its tissues of
    fraction x S0 x [f exp(-b D*) + (1 - f) exp(-b D + b² D² K / 6)] (`diffusion.ivim_signal`), with D
    calibrated on fit_bvals.
    Returns (*shape, n_b)."""
    from dwisynth.diffusion import ivim_signal

    key = tuple(float(b) for b in sorted(fit_bvals))
    shape = next(iter(fractions.values())).shape
    signal = np.zeros((*shape, len(bvals)))
    for name, frac in fractions.items():
        t = TISSUES[name]
        compartment = ivim_signal(t.s0, calibrated_diffusivity(name, key), bvals, t.perfusion_fraction,
                                  t.pseudo_diffusion, t.kurtosis)
        signal += np.asarray(frac)[..., None] * compartment
    return signal


def tissue_maps(fractions: dict[str, np.ndarray], fit_bvals) -> dict[str, np.ndarray]:
    """Per-voxel S0, the IVIM parameters (D, f, D*), the kurtosis K, HU and the dominant label from tissue
    fractions.

    D, f, D* and K of a mixed voxel are S0-weighted means, a description only: its signal is
    the sum of compartments (`mixture_signal`), and its apparent ADC is fitted from that.
    HU is fraction-weighted; a tissue without its own HU (hu=None) is left to `ct_hu`.
    """
    shape = next(iter(fractions.values())).shape
    key = tuple(float(b) for b in sorted(fit_bvals))
    s0 = np.zeros(shape)
    d = np.zeros(shape)
    f = np.zeros(shape)
    dstar = np.zeros(shape)
    kurtosis = np.zeros(shape)
    hu = np.zeros(shape)
    total = np.zeros(shape)
    best = np.zeros(shape)
    label = np.zeros(shape, dtype=np.int16)
    for name, frac in fractions.items():
        t = TISSUES[name]
        w = frac * t.s0
        s0 += w
        d += w * calibrated_diffusivity(name, key)
        f += w * t.perfusion_fraction
        dstar += w * t.pseudo_diffusion
        kurtosis += w * t.kurtosis
        if t.hu is not None:
            hu += frac * t.hu
        total += frac
        better = frac > best
        label[better & (frac > 0.5)] = t.label
        best = np.maximum(best, frac)
    with np.errstate(invalid="ignore", divide="ignore"):
        for arr in (d, f, dstar, kurtosis):
            arr /= np.where(s0 > 0, s0, 1)
            arr[total < 1e-3] = 0.0  # background has no tissue parameters
    return {"s0": s0, "d": d, "f": f, "dstar": dstar, "kurtosis": kurtosis, "hu": hu, "tissue_fraction": total,
            "purity": best, "label": label}


def ct_hu(phantom: Phantom, coords: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Fraction-weighted HU of the tissue at coords, and the tissue fraction.

    A lesion without its own HU (the early infarct) reads the HU of the parenchyma it
    replaced, shifted by its hu_offset: 4 HU below GM in GM, 4 HU below WM in WM.
    """
    lesioned = phantom.fractions(coords)
    healthy = phantom.fractions(coords, lesion=False)
    hu = sum(frac * TISSUES[name].hu for name, frac in healthy.items())
    for name, frac in lesioned.items():
        if TISSUES[name].hu is None:
            hu = hu + frac * TISSUES[name].hu_offset
    return hu, sum(lesioned.values())
