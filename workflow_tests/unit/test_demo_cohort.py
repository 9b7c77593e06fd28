"""The demo cohort: plan, truth maps agree with the DICOM, determinism."""

import json

import nibabel as nib
import numpy as np
import pytest

from dwisynth.convert import convert_series
from dwisynth.demo.anatomy import TISSUES, calibrated_diffusivity, ct_hu, make_phantom, mixture_signal, tissue_maps
from dwisynth.demo.cohort import (generate_demo_cohort, plan_demo_cohort, sample_sheet, simulate_subject,
                                  subject_rng, write_subject)
from dwisynth.diffusion import fit_adc, ivim_signal, kurtosis_decay
from dwisynth.geometry import Grid


def test_plan_covers_every_vendor_organ_and_stroke(tiny_config):
    plans = plan_demo_cohort(tiny_config)
    assert {p.vendor for p in plans} == {"siemens", "ge", "philips", "standard"}
    assert {p.organ for p in plans} == {"brain", "abdomen"}
    stroke = [p for p in plans if p.stroke]
    assert stroke and all(set(p.series) == {"DWI", "CT"} for p in stroke)
    heldout = [p for p in plans if 75.0 in p.bvals]
    assert all(850.0 in p.bvals for p in heldout)
    # per center and organ: the first is a held-out test subject, the next a few-shot train subject
    assert {p.subject: p.split for p in heldout} == {"HAbrain01": "test", "HAabdomen01": "test",
                                                      "HAabdomen02": "train"}
    sheet = sample_sheet(plans)
    assert len(sheet) == len(plans) + len(stroke)
    assert all(p.split == "" for p in stroke)  # without stroke.test_subjects_per_center the split decides


def test_stroke_test_subjects_per_center_fixes_the_first_subjects_of_each_center_to_test(tiny_config):
    import copy

    config = copy.deepcopy(tiny_config)
    config["demo"]["stroke"].update(subjects_per_center=3, test_subjects_per_center=2)
    stroke = [p for p in plan_demo_cohort(config) if p.stroke]
    for center in {p.center for p in stroke}:
        splits = [p.split for p in sorted(stroke, key=lambda p: p.subject) if p.center == center]
        assert splits == ["test", "test", "train"], (center, splits)


def test_same_seed_gives_same_subject(tiny_config):
    plan = plan_demo_cohort(tiny_config)[0]
    a, b = simulate_subject(plan, tiny_config), simulate_subject(plan, tiny_config)
    assert np.array_equal(a.acquired, b.acquired) and a.patient == b.patient
    tiny_config["seed"] += 1
    assert not np.array_equal(simulate_subject(plan, tiny_config).acquired, a.acquired)


def test_the_cohort_is_the_same_bytes_with_two_workers(tiny_config, tmp_path):
    """`make demo` writes the cohort with a process per core: it must equal the one-process cohort file for file."""
    tiny_config["demo"]["outdir"] = str(tmp_path / "one")
    one = generate_demo_cohort(tiny_config, progress=lambda *_: None, workers=1)
    tiny_config["demo"]["outdir"] = str(tmp_path / "two")
    said = []
    two = generate_demo_cohort(tiny_config, progress=said.append, workers=2)
    assert one.drop(columns="dicom_dir").equals(two.drop(columns="dicom_dir"))
    n = len(plan_demo_cohort(tiny_config))
    assert [line.split()[1] for line in said] == [f"{i}/{n}" for i in range(1, n + 1)]  # in order
    files = sorted(p.relative_to(tmp_path / "one") for p in (tmp_path / "one").rglob("*") if p.is_file())
    assert len(files) > 100
    differing = [f for f in files if f.name != "samples.tsv"  # its dicom_dir column names the folder: compared above
                 and (tmp_path / "one" / f).read_bytes() != (tmp_path / "two" / f).read_bytes()]
    assert not differing, differing[:5]
    assert sorted(p.relative_to(tmp_path / "two") for p in (tmp_path / "two").rglob("*") if p.is_file()) == files


@pytest.mark.parametrize("fit_b", [(0, 100, 400, 800, 1000), (0, 100, 600, 1000), (0, 100, 400, 600, 800, 1000),
                                   (0, 100, 1000), (0, 1000)])
def test_every_tissue_reads_its_table_adc_on_every_center_b_set(fit_b):
    b = np.array(fit_b, float)
    for name, tissue in TISSUES.items():
        signal = mixture_signal({name: np.ones(1)}, b, b)
        fitted = fit_adc(signal, b, max_adc=np.inf)[0]
        assert abs(fitted / tissue.adc - 1) < 0.03, (name, fitted, tissue.adc)


@pytest.mark.parametrize("organ", ["abdomen", "brain"])
def test_each_tissue_reads_its_table_adc_on_the_subjects_b_set(tiny_config, organ):
    """The literature ADC is apparent: the noise-free signal of a nearly pure voxel, fitted on the b-values
    the workflow fits, reads the table value; IVIM D sits below it wherever perfusion is real."""
    plan = next(p for p in plan_demo_cohort(tiny_config) if p.organ == organ and not p.stroke)
    sim = simulate_subject(plan, tiny_config)
    write_subject(sim)
    stem = f"{plan.truth_dir}/sub-{plan.subject}"
    signal = nib.load(f"{stem}_desc-noisefree_dwi.nii.gz").get_fdata()
    bvals = np.loadtxt(f"{stem}_desc-noisefree_dwi.bval")
    labels = nib.load(f"{stem}_dseg.nii.gz").get_fdata()
    purity = nib.load(f"{stem}_desc-purity_probseg.nii.gz").get_fdata()
    truth_adc = nib.load(f"{stem}_desc-truth_adc.nii.gz").get_fdata()
    ivim_d = nib.load(f"{stem}_desc-truth_ivimd.nii.gz").get_fdata()
    kurtosis = nib.load(f"{stem}_desc-truth_kurtosis.nii.gz").get_fdata()
    fit_bvals = json.loads(open(f"{stem}_truth.json").read())["adc_fit_bvals"]
    assert fit_bvals == [b for b in plan.bvals if b in (0, 100, 400, 600, 800, 1000)]
    checked = with_kurtosis = 0
    for name, tissue in TISSUES.items():
        pure = (labels == tissue.label) & (purity > 0.98)  # MNI brain maps are rarely purer
        if pure.sum() < 5:
            continue
        fitted = fit_adc(signal[pure], bvals, use_b=fit_bvals, max_adc=np.inf)
        assert abs(np.median(fitted) / tissue.adc - 1) < 0.03, (name, np.median(fitted), tissue.adc)
        assert np.allclose(truth_adc[pure], fitted, atol=1e-4)  # the truth file is that apparent ADC
        purest = (labels == tissue.label) & (purity > 0.999)  # S0-weighted means: 2% of CSF moves GM's a lot
        if purest.sum() >= 5:  # the truth carries D and K
            assert np.isclose(np.median(ivim_d[purest]), calibrated_diffusivity(name, tuple(fit_bvals)), rtol=0.01)
            assert np.isclose(np.median(kurtosis[purest]), tissue.kurtosis, atol=0.01)
            with_kurtosis += tissue.kurtosis > 0
        if tissue.perfusion_fraction >= 0.1:  # liver, kidney, spleen, pancreas, breast lesions
            # perfusion raises the apparent ADC: the tissue term alone, fitted the same way, reads lower
            d = calibrated_diffusivity(name, tuple(fit_bvals))
            no_perfusion = fit_adc(kurtosis_decay(d, np.array(fit_bvals, float), tissue.kurtosis)[None],
                                   np.array(fit_bvals, float), max_adc=np.inf)[0]
            assert no_perfusion < 0.97 * tissue.adc, name
        checked += 1
    assert checked >= 4 and with_kurtosis >= 1


def test_a_mixed_voxel_is_the_sum_of_its_compartments():
    b = np.array([0.0, 100, 400, 600, 800, 1000])
    fit_b = tuple(b)
    fractions = {"cortical_gm": np.array([0.7]), "csf": np.array([0.3])}
    signal = mixture_signal(fractions, b, fit_b)[0]
    expected = np.zeros_like(b)
    for name, frac in (("cortical_gm", 0.7), ("csf", 0.3)):
        t, d = TISSUES[name], calibrated_diffusivity(name, fit_b)
        f, dstar, k = t.perfusion_fraction, t.pseudo_diffusion, t.kurtosis
        tissue_term = np.exp(-b * d * 1e-3 + (b * d * 1e-3) ** 2 * k / 6)  # b <= 1000 < b_K = 3 / (2 D K)
        expected += frac * t.s0 * (f * np.exp(-b * dstar * 1e-3) + (1 - f) * tissue_term)
    assert np.allclose(signal, expected, rtol=1e-12)
    # one decay of the averaged parameters (the old model) is 28% low at b 1000
    maps = tissue_maps(fractions, fit_b)
    averaged = ivim_signal(maps["s0"], maps["d"], b, maps["f"], maps["dstar"], maps["kurtosis"])[0]
    assert averaged[-1] < 0.75 * signal[-1]


def test_early_infarct_is_four_hu_below_the_parenchyma_it_replaces(tiny_config):
    plan = next(p for p in plan_demo_cohort(tiny_config) if p.stroke)
    phantom = make_phantom("brain", subject_rng(tiny_config["seed"], plan.subject), lesion="acute_infarct")
    grid_cfg = tiny_config["demo"]["grids"]["brain"]
    coords = Grid.centred(grid_cfg["matrix"], grid_cfg["spacing"]).world_coordinates_lps()
    hu, _ = ct_hu(phantom, coords)
    healthy = phantom.fractions(coords, lesion=False)
    healthy_hu = sum(frac * TISSUES[name].hu for name, frac in healthy.items())
    infarct = phantom.fractions(coords)["acute_infarct"]
    assert infarct.max() > 0.9
    assert np.allclose(hu - healthy_hu, -4.0 * infarct)
    core = infarct > 0.9
    in_wm = core & (healthy["wm"] > 0.8)
    in_gm = core & (healthy["cortical_gm"] + healthy["deep_gm"] > 0.8)
    for where, tissue_hu in ((in_wm, TISSUES["wm"].hu), (in_gm, TISSUES["cortical_gm"].hu)):
        if where.any():  # WM infarct reads below WM, GM infarct below GM: never brighter than WM
            assert abs(np.median(hu[where]) - (tissue_hu - 4.0 * np.median(infarct[where]))) < 2.0


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
