"""The demo cohort: plan, truth maps agree with the DICOM, determinism."""

import json

import nibabel as nib
import numpy as np
import pytest

from dwisynth.convert import convert_series
from dwisynth.demo.cohort import plan_demo_cohort, sample_sheet, simulate_subject, write_subject
from dwisynth.diffusion import fit_mono_exponential


def test_plan_covers_every_vendor_organ_and_stroke(tiny_config):
    plans = plan_demo_cohort(tiny_config)
    assert {p.vendor for p in plans} == {"siemens", "ge", "philips", "standard"}
    assert {p.organ for p in plans} == {"brain", "abdomen"}
    stroke = [p for p in plans if p.stroke]
    assert stroke and all(set(p.series) == {"DWI", "CT"} for p in stroke)
    heldout = [p for p in plans if 75.0 in p.bvals]
    assert heldout and all(p.split == "test" and 850.0 in p.bvals for p in heldout)
    sheet = sample_sheet(plans)
    assert len(sheet) == len(plans) + len(stroke)


def test_same_seed_gives_same_subject(tiny_config):
    plan = plan_demo_cohort(tiny_config)[0]
    a, b = simulate_subject(plan, tiny_config), simulate_subject(plan, tiny_config)
    assert np.array_equal(a.acquired, b.acquired) and a.patient == b.patient
    tiny_config["seed"] += 1
    assert not np.array_equal(simulate_subject(plan, tiny_config).acquired, a.acquired)


@pytest.mark.parametrize("organ", ["abdomen", "brain"])
def test_noise_free_signal_fits_to_truth_adc(tiny_config, organ):
    plan = next(p for p in plan_demo_cohort(tiny_config) if p.organ == organ and not p.stroke)
    write_subject(simulate_subject(plan, tiny_config))
    stem = f"{plan.truth_dir}/sub-{plan.subject}"
    truth_adc = nib.load(f"{stem}_desc-truth_adc.nii.gz").get_fdata()
    purity = nib.load(f"{stem}_desc-purity_probseg.nii.gz").get_fdata()
    signal = nib.load(f"{stem}_desc-noisefree_dwi.nii.gz").get_fdata()
    bvals = np.loadtxt(f"{stem}_desc-noisefree_dwi.bval")
    # from b 600 the IVIM pseudo-diffusion term has decayed (exp(-b D*) < 0.003), leaving exp(-b ADC)
    high = bvals >= 600
    pure = (purity > 0.999) & (truth_adc > 0)
    assert pure.sum() > 50
    _, fitted = fit_mono_exponential(signal[pure][:, high], bvals[high])
    assert np.max(np.abs(fitted - truth_adc[pure])) < 0.01  # x10^-3 mm²/s
    assert np.median(np.abs(fitted - truth_adc[pure])) < 1e-3


def test_demo_dicom_converts_to_the_generated_volumes(tiny_config, tmp_path):
    plans = plan_demo_cohort(tiny_config)
    for plan in [next(p for p in plans if p.vendor == v) for v in ("ge", "philips")]:
        sim = simulate_subject(plan, tiny_config)
        write_subject(sim)
        record = convert_series(plan.series["DWI"], tmp_path / plan.subject, plan.subject, log=lambda *_: None)
        assert record["bvals"] == plan.bvals
        img = nib.as_closest_canonical(nib.load(tmp_path / plan.subject / f"sub-{plan.subject}_dwi.nii.gz"))
        expected = nib.as_closest_canonical(nib.Nifti1Image(np.moveaxis(sim.acquired, 0, -1), sim.grid.affine_ras()))
        assert np.allclose(img.affine, expected.affine, atol=1e-3)
        assert np.array_equal(np.asarray(img.dataobj), np.asarray(expected.dataobj))


def test_stroke_subject_has_rigid_ct_misalignment_and_bright_infarct_with_low_adc(tiny_config):
    plan = next(p for p in plan_demo_cohort(tiny_config) if p.stroke)
    sim = simulate_subject(plan, tiny_config)
    write_subject(sim)
    meta = json.loads(open(f"{plan.truth_dir}/sub-{plan.subject}_truth.json").read())
    motion = np.array(meta["ct_to_dwi_lps"])
    assert not np.allclose(motion, np.eye(4))
    assert np.allclose(motion[:3, :3] @ motion[:3, :3].T, np.eye(3), atol=1e-6)  # rigid
    # infarct is bright at b1000 in DWI
    b1000 = sim.acquired[plan.bvals.index(1000.0)].astype(float)
    brain = sim.organ_mask & ~sim.lesion_mask
    assert b1000[sim.lesion_mask].mean() > 1.3 * b1000[brain].mean()
    assert np.median(sim.maps["adc"][sim.lesion_mask]) < 0.7
    # CT: brain tissue in the soft-tissue window, skull bright, air dark
    assert 20 < np.median(sim.ct_noise_free[sim.ct_noise_free > 0][sim.ct_noise_free[sim.ct_noise_free > 0] < 100]) < 45
    assert sim.ct_hu.max() >= 1100 and sim.ct_hu.min() <= -990
