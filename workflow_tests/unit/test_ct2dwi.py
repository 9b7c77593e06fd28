"""CT -> DWI: input scaling, the CT brain mask, the dataset (no DWI voxel in any input), experiments,
lesion metrics, training to synthesis, and the errors a user meets."""

from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch

from dwisynth.cli import main as cli
from dwisynth.ct2dwi import (Cell, experiment_cells, lesion_metrics, load_lesion_mask, LesionMaskError,
                             score_shard, score_subject, synthesize_ct2dwi, train_ct2dwi, training_members)
from dwisynth.dataset import write_slice_shard
from dwisynth.errors import ConfigError
from dwisynth.io import save_nifti, write_bval
from dwisynth.loader import MASK, SliceDataset, hu_window_scaling, inputs_to_network
from dwisynth.preprocess.masking import CTIntensityError, MaskError, check_ct_hu, ct_brain_mask

AFFINE = np.diag([3.0, 3.0, 4.0, 1.0])
CT2DWI = {"target_b": [1000], "hu_window": [0, 80]}
TRAINING = {"batch_size": 4, "crop": 32, "checkpoint_every": 50, "log_every": 5, "threads": 1,
            "validation_subjects": 0}


def head(seed: int, shape=(40, 40, 6)):
    """A head CT (HU) of brain with a lesion inside a skull and scalp, its DWI b0/b1000 (S/S0), the masks.

    DWI b1000: parenchyma 0.45, the lesion (4 HU darker on CT) 1.1 (restricted diffusion), CSF 0.05."""
    rng = np.random.default_rng(seed)
    x, y = np.mgrid[: shape[0], : shape[1]]
    r = np.hypot(x - 20 + rng.uniform(-2, 2), y - 20 + rng.uniform(-2, 2))
    brain = np.repeat((r < 12)[..., None], shape[2], 2)
    csf = np.repeat((r < 3)[..., None], shape[2], 2)
    cy, cx = rng.integers(14, 24, 2)
    lesion = np.repeat((np.hypot(x - cy, y - cx) < 3)[..., None], shape[2], 2) & brain & ~csf
    ct = np.full(shape, -1000.0)
    ct[brain] = 35.0
    ct[csf] = 8.0
    ct[lesion] = 25.0  # clearer than a real early infarct (-4 HU): a short CPU run must find it
    ct[np.repeat(((r >= 13) & (r < 15))[..., None], shape[2], 2)] = 1200.0
    ct[np.repeat(((r >= 15) & (r < 17))[..., None], shape[2], 2)] = 30.0  # scalp: brain-like HU outside the skull
    ct = ct + rng.normal(0, 1.0, shape)
    b1000 = np.where(brain, 0.45, 0.0) + np.where(lesion, 0.65, 0.0) - np.where(csf, 0.40, 0.0)
    dwi = np.stack([brain * 1.0, b1000], -1) + np.abs(rng.normal(0, 0.02, shape + (2,)))
    return ct.astype(np.float32), dwi.astype(np.float32), brain, lesion


def write_stroke_subject(root: Path, subject: str, seed: int, cohort="stroke", center="strokeA"):
    ct, dwi, brain, lesion = head(seed)
    stem = root / f"sub-{subject}"
    files = {k: f"{stem}_{k}.nii.gz" for k in ("dwi", "ct", "ctmask", "mask", "lesion")}
    save_nifti(dwi, AFFINE, files["dwi"])
    write_bval([0, 1000], f"{stem}.bval")
    save_nifti(ct, AFFINE, files["ct"])
    save_nifti(ct_brain_mask(ct).astype(np.uint8), AFFINE, files["ctmask"], np.uint8)
    save_nifti(brain.astype(np.uint8), AFFINE, files["mask"], np.uint8)
    save_nifti(lesion.astype(np.uint8), AFFINE, files["lesion"], np.uint8)
    shard = root / f"sub-{subject}_slices.npz"
    write_slice_shard(files["dwi"], f"{stem}.bval", files["mask"], shard, [0.0, 1000.0],
                      {"cohort": cohort, "subject": subject, "center": center, "organ": "brain"},
                      ct_path=files["ct"], ct_mask_path=files["ctmask"])
    return {**files, "bval": f"{stem}.bval", "shard": str(shard)}


def test_a_known_hu_maps_to_its_place_in_the_window():
    ct = torch.tensor([-1000.0, 0.0, 20.0, 40.0, 80.0, 1200.0]).view(1, 1, 1, 6)
    mask = torch.tensor([0.0, 1.0, 1.0, 0.0, 1.0, 0.0]).view(1, 1, 1, 6)
    x = inputs_to_network(torch.cat([ct, mask], 1), [hu_window_scaling([0, 80]), MASK], intensity_max=2.0)
    assert x[0, 0, 0].tolist() == pytest.approx([-1.0, -1.0, -0.5, 0.0, 1.0, 1.0])
    assert x[0, 1, 0].tolist() == [-1.0, 1.0, 1.0, -1.0, 1.0, -1.0]


def test_ct_brain_mask_keeps_the_brain_and_leaves_out_the_scalp():
    ct, _, brain, _ = head(0)
    mask = ct_brain_mask(ct)
    dice = 2 * (mask & brain).sum() / (mask.sum() + brain.sum())
    assert dice > 0.95, dice
    x, y = np.mgrid[:40, :40]
    scalp = np.hypot(x - 20, y - 20) >= 16
    assert not (mask[..., 0] & scalp).any()


def test_a_ct_not_in_hounsfield_units_or_without_brain_is_refused():
    ct, *_ = head(1)
    with pytest.raises(CTIntensityError, match="not in Hounsfield units"):
        check_ct_hu(ct + 1024.0, "sub-x ct.nii.gz")  # raw stored values, no RescaleIntercept
    with pytest.raises(MaskError, match="CT brain mask is empty"):
        ct_brain_mask(np.where(ct > 500, ct, -1000.0))  # skull only


def test_ct_dataset_inputs_hold_the_ct_and_its_mask_and_no_dwi_voxel(tmp_path):
    a = write_stroke_subject(tmp_path, "SA01", 0)
    data = SliceDataset.from_ct([a["shard"]], 1000.0, [0, 80])
    # the same CT with another DWI: the inputs are unchanged, the targets follow the DWI
    img = nib.load(a["dwi"])
    save_nifti(np.asarray(img.dataobj) * 3.0 + 0.5, img.affine, a["dwi"])
    other = tmp_path / "other.npz"
    write_slice_shard(a["dwi"], a["bval"], a["mask"], other, [0.0, 1000.0], {"cohort": "stroke", "subject": "SA01"},
                      ct_path=a["ct"], ct_mask_path=a["ctmask"])
    changed = SliceDataset.from_ct([other], 1000.0, [0, 80])
    np.testing.assert_array_equal(data.inputs, changed.inputs)
    assert not np.allclose(data.targets, changed.targets)
    ct = np.asarray(nib.load(a["ct"]).dataobj)
    np.testing.assert_array_equal(data.inputs[:, 0], np.moveaxis(ct, -1, 0))
    assert data.input_scaling == [hu_window_scaling([0, 80]), MASK]
    # the network's S/S0 range comes from the DWI target (there is no signal input)
    np.testing.assert_array_equal(np.concatenate(list(data.signal_chunks())), data.targets[:, 0][data.masks])


def test_a_shard_without_ct_or_a_ct_off_the_dwi_grid_is_refused(tmp_path):
    a = write_stroke_subject(tmp_path, "SA01", 0)
    plain = tmp_path / "plain.npz"
    write_slice_shard(a["dwi"], a["bval"], a["mask"], plain, [0.0, 1000.0], {"cohort": "stroke", "subject": "SA01"})
    with pytest.raises(ValueError, match="no CT slices"):
        SliceDataset.from_ct([plain], 1000.0, [0, 80])
    save_nifti(np.zeros((40, 38, 6)), AFFINE, tmp_path / "small_ct.nii.gz")
    with pytest.raises(ValueError, match="not the DWI grid"):
        write_slice_shard(a["dwi"], a["bval"], a["mask"], tmp_path / "x.npz", [0.0, 1000.0],
                          {"cohort": "stroke", "subject": "SA01"}, ct_path=tmp_path / "small_ct.nii.gz",
                          ct_mask_path=a["ctmask"])


def test_cross_center_cells_train_only_on_their_centers_train_subjects():
    config = {"ct2dwi": {"methods": ["jmmdagan", "pix2pix", "unet"], "sensitivity": {"wavelets": ["haar", "db2"],
                                                                                   "heads": [2, 4]}},
              "jmmdagan": {"wavelet": "haar", "heads": 4}}
    cells = experiment_cells(config, ["strokeA", "strokeB"])
    names = {(c.experiment, c.method) for c in cells}
    assert {("main", "jmmdagan"), ("main", "pix2pix"), ("main", "unet"), ("nomask", "jmmdagan"),
            ("nodwt", "jmmdagan"), ("noadaptive", "jmmdagan"), ("db2_h2", "jmmdagan"),
            ("from_strokeA", "jmmdagan"), ("from_strokeB", "jmmdagan")} <= names
    assert next(c for c in cells if c.experiment == "haar_h4").model_from == "main"  # main's settings: no retrain
    split = [{"task": "ct2dwi", "cohort": "stroke", "center": c, "subject": s, "split": sp}
             for c, s, sp in [("strokeA", "SA1", "train"), ("strokeA", "SA2", "test"), ("strokeB", "SB1", "train"),
                              ("strokeB", "SB2", "train"), ("strokeC", "SC1", "test")]]
    cross = next(c for c in cells if c.experiment == "from_strokeB")
    assert [r["subject"] for r in training_members(split, cross)] == ["SB1", "SB2"]
    assert sorted(r["subject"] for r in training_members(split, cells[0])) == ["SA1", "SB1", "SB2"]
    with pytest.raises(ConfigError, match="strokeC has no train-split stroke subject"):
        training_members(split, Cell("from_strokeC", "jmmdagan", "crosscenter", train_centers=("strokeC",)))


def test_a_baselines_own_steps_equalize_the_budget_and_the_ablations_keep_the_proposed_networks():
    from dwisynth.ct2dwi import network_block

    config = {"ct2dwi": {"methods": ["jmmdagan", "pix2pix", "unet"], "steps": 300, "lr": 5e-4,
                         "steps_per_method": {"pix2pix": 1150, "unet": 2900},
                         "sensitivity": {"wavelets": ["haar"], "heads": [4]}},
              "jmmdagan": {"ngf": 8, "wavelet": "haar", "heads": 4}, "pix2pix": {"ngf": 8}, "unet": {"ngf": 8}}
    cells = {(c.experiment, c.method): c for c in experiment_cells(config, ["strokeA"])}
    steps = {key: network_block(config, cell)["steps"] for key, cell in cells.items() if key[0] in ("main", "nodwt")}
    assert steps == {("main", "jmmdagan"): 300, ("main", "pix2pix"): 1150, ("main", "unet"): 2900,
                     ("nodwt", "jmmdagan"): 300}


def test_guidance_trains_every_network_alike_and_an_unguided_copy_and_seeds_replicate_main_and_ablations():
    from dwisynth.ct2dwi import ABLATIONS, cell_from_params, cell_params, cell_training

    config = {"ct2dwi": {"methods": ["jmmdagan", "pix2pix", "unet"], "steps": 300, "lr": 5e-4, "seeds": 3,
                         "guidance": {"lesion_weight": 1.0, "lesion_oversample": 0.5}},
              "training": {"lesion_weight": 0.3, "lesion_oversample": 0.2, "batch_size": 8}}
    cells = experiment_cells(config, ["strokeA"], ("main", "ablation"))
    first = [c for c in cells if c.replicate == 0]
    # per seed: main (guided) and unguided for every method, and one ablation per module
    assert sorted((c.experiment, c.method, c.guided) for c in first if c.grid == "main") == sorted(
        [("main", m, True) for m in ("jmmdagan", "pix2pix", "unet")]
        + [("unguided", m, False) for m in ("jmmdagan", "pix2pix", "unet")])
    assert {c.experiment for c in first if c.grid == "ablation"} == set(ABLATIONS) and all(
        c.guided for c in first if c.grid == "ablation")
    assert len(cells) == 3 * len(first)
    third = [c for c in cells if c.replicate == 2]
    assert {c.experiment for c in third} == {f"{c.experiment}_rep3" for c in first}
    assert {c.setting for c in third} == {c.experiment for c in first}
    # the same lesion supervision for every guided cell, none for an unguided one; never the multi-b settings
    for cell in cells:
        training = cell_training(config, cell)
        expected = (1.0, 0.5) if cell.guided else (0.0, 0.0)
        assert (training["lesion_weight"], training["lesion_oversample"]) == expected, cell
        assert training["batch_size"] == 8
        assert cell_from_params(cell_params(cell)) == cell
    # without guidance: no unguided copy (main is unguided) and nothing trains with lesion masks
    plain = experiment_cells({**config, "ct2dwi": {**config["ct2dwi"], "guidance": {}, "seeds": 1}}, ["strokeA"],
                             ("main", "ablation"))
    assert "unguided" not in {c.experiment for c in plain} and not any(c.guided for c in plain)


def test_grid_tables_average_each_setting_over_seeds_with_its_spread_and_a_same_seed_difference_to_main():
    import pandas as pd

    from dwisynth.ct2dwi import grid_summary

    rows = []
    psnr = {("main", "jmmdagan"): [20.0, 22.0], ("unguided", "jmmdagan"): [19.0, 20.0],
            ("main", "pix2pix"): [18.0, 18.0], ("nodwt", "jmmdagan"): [19.0, 21.5]}
    for (setting, method), values in psnr.items():
        for replicate, value in enumerate(values, 1):
            for subject, offset in (("SA1", -1.0), ("SB1", 1.0)):  # subject mean = value
                rows.append({"experiment": setting + (f"_rep{replicate}" if replicate > 1 else ""),
                             "setting": setting, "replicate": replicate, "method": method, "slice": "volume",
                             "grid": "ablation" if setting == "nodwt" else "main", "subject": subject,
                             "lesion_guidance": "no" if setting == "unguided" else "yes", "wavelet": "haar",
                             "heads": 4, "modules_off": "dwt" if setting == "nodwt" else "", "psnr": value + offset,
                             **{m: 0.5 for m in ("ssim", "mse", "superpixel_r", "lesion_psnr", "lesion_contrast",
                                                 "lesion_conspicuity_vs_acquired")}})
    experiments = pd.DataFrame(rows)
    experiments["modules_off"] = experiments["modules_off"].replace("", np.nan)  # as read back from the TSV
    main = grid_summary(experiments, "main").set_index(["experiment", "method"])
    assert set(main.index) == {("main", "jmmdagan"), ("unguided", "jmmdagan"), ("main", "pix2pix")}
    assert main.loc[("main", "jmmdagan"), "psnr"] == pytest.approx(21.0)
    assert main.loc[("main", "jmmdagan"), "psnr_sd"] == pytest.approx(np.std([20, 22], ddof=1))
    assert main.loc[("unguided", "jmmdagan"), "psnr_vs_main"] == pytest.approx(-1.5)  # (-1 - 2) / 2
    assert (main["seeds"] == 2).all() and (main["n"] == 2).all()
    ablation = grid_summary(experiments, "ablation").set_index(["experiment", "method"])
    assert ablation.loc[("nodwt", "jmmdagan"), "psnr_vs_main"] == pytest.approx(-0.75)  # (-1 - 0.5) / 2
    assert ablation.loc[("main", "jmmdagan"), "psnr_vs_main"] == pytest.approx(0.0)
    assert ablation.loc[("nodwt", "jmmdagan"), "modules_off"] == "dwt"


def test_lesion_metrics_reward_a_faithful_lesion_and_see_an_erased_one():
    _, dwi, brain, lesion = head(2)
    acquired = dwi[..., 1]
    perfect = lesion_metrics(acquired, acquired, brain, lesion)
    assert perfect["lesion_conspicuity_vs_acquired"] == pytest.approx(1.0) and perfect["lesion_psnr"] == float("inf")
    # C = lesion / host - 1: the lesion (~1.1) against its ring (parenchyma ~0.45, some CSF ~0.05): > 1.1 / 0.45 - 1
    assert perfect["lesion_contrast"] > 1.1 / 0.45 - 1
    erased = np.where(lesion, 0.45, acquired)
    scores = lesion_metrics(erased, acquired, brain, lesion)
    assert scores["lesion_conspicuity_vs_acquired"] < 0.2 and scores["lesion_psnr"] < 20 and scores["lesion_ssim"] < 0.9
    # the lesion is scored on the brain's scale: halving the lesion error quarters its MSE
    half = lesion_metrics((erased + acquired) / 2, acquired, brain, lesion)
    assert half["lesion_mse"] == pytest.approx(scores["lesion_mse"] / 4, rel=1e-6)


def test_a_lesion_mask_on_another_grid_or_missing_is_refused(tmp_path):
    a = write_stroke_subject(tmp_path, "SA01", 0)
    assert load_lesion_mask(a["lesion"], a["dwi"], "SA01").sum() > 0
    save_nifti(np.zeros((20, 20, 6), np.uint8), AFFINE, tmp_path / "wrong.nii.gz", np.uint8)
    with pytest.raises(LesionMaskError, match="not on the DWI grid"):
        load_lesion_mask(tmp_path / "wrong.nii.gz", a["dwi"], "SA01")
    with pytest.raises(LesionMaskError, match="not found"):
        load_lesion_mask(tmp_path / "none.nii.gz", a["dwi"], "SA01")


@pytest.fixture(scope="module")
def trained_jmmda(tmp_path_factory):
    root = tmp_path_factory.mktemp("ct2dwi")
    subjects = [write_stroke_subject(root, f"SA0{i}", i) for i in range(3)]
    block = {"ngf": 8, "ndf": 8, "levels": 2, "heads": 2, "steps": 400, "lr": 1e-3}
    model = train_ct2dwi(Cell("main", "jmmdagan", "main"), [s["shard"] for s in subjects], root / "model", block,
                         TRAINING, CT2DWI, seed=3, device="cpu", progress=False)
    return model, root


def test_ct2dwi_training_learns_and_writes_dwi_b1000_on_the_ct_grid(trained_jmmda, tmp_path):
    model_path, _ = trained_jmmda
    new = write_stroke_subject(tmp_path, "SA09", 9)
    out = {"dwi": str(tmp_path / "out_dwi.nii.gz"), "bval": str(tmp_path / "out_dwi.bval")}
    assert synthesize_ct2dwi(model_path, new["ct"], new["ctmask"], out, "SA09", "cpu") == 1000.0
    img, ct = nib.load(out["dwi"]), nib.load(new["ct"])
    assert img.shape == ct.shape + (1,) and np.allclose(img.affine, ct.affine)
    assert np.loadtxt(out["bval"], ndmin=1).tolist() == [1000.0]
    record = torch.load(model_path, weights_only=True)
    assert record["task"] == "ct2dwi" and record["input_channels"] == ["ct", "ct_brain_mask"]
    # learned: better than predicting the brain's mean b1000 everywhere in it (the lesion is brighter)
    _, dwi, brain, lesion = head(9)
    pred, truth = np.asarray(img.dataobj)[..., 0], dwi[..., 1]
    mse = np.mean((pred[brain] - truth[brain]) ** 2)
    constant = np.mean((truth[brain].mean() - truth[brain]) ** 2)
    assert mse < 0.7 * constant, (mse, constant)
    assert pred[lesion].mean() > pred[brain & ~lesion].mean() + 0.15  # the lesion is bright, from CT alone


def test_a_subject_scored_from_its_shard_scores_as_the_workflow_scores_its_synthesized_volume(trained_jmmda,
                                                                                                tmp_path):
    # bench/ trains outside the workflow and scores from shards: the numbers must be the workflow's
    model_path, _ = trained_jmmda
    new = write_stroke_subject(tmp_path, "SA07", 7)
    out = {"dwi": str(tmp_path / "out_dwi.nii.gz"), "bval": str(tmp_path / "out_dwi.bval")}
    synthesize_ct2dwi(model_path, new["ct"], new["ctmask"], out, "SA07", "cpu")
    read = lambda key: np.asarray(nib.load(new[key]).dataobj)  # noqa: E731
    lesion = read("lesion") > 0
    workflow = score_subject(np.asarray(nib.load(out["dwi"]).dataobj)[..., 0], read("dwi")[..., 1], read("mask") > 0,
                             lesion, 1000.0)[-1]
    from_shard = score_shard(model_path, new["shard"], 1000.0, lesion)
    assert 10 < workflow["psnr"] < 60
    for key in ("psnr", "ssim", "lesion_psnr", "lesion_contrast"):
        assert from_shard[key] == pytest.approx(workflow[key], rel=1e-4), key


def test_models_refuse_the_other_task(trained_jmmda, tmp_path, capsys):
    model_path, root = trained_jmmda
    new = write_stroke_subject(tmp_path, "SA08", 8)
    assert cli(["synthesize", str(model_path), new["dwi"], "--bval", new["bval"], "-o", str(tmp_path / "o")]) == 2
    assert "CT -> DWI model" in capsys.readouterr().err
    # dwisynth ct2dwi on a NIfTI CT writes b 1000 on its grid
    assert cli(["ct2dwi", str(model_path), new["ct"], "--subject", "SA08", "-o", str(tmp_path / "c")]) == 0
    written = tmp_path / "c" / "sub-SA08_desc-jmmdagan_dwi.nii.gz"
    assert nib.load(written).shape == (40, 40, 6, 1)
    assert not list((tmp_path / "o").glob("*dwi.nii.gz"))


def test_a_ct_at_another_voxel_size_is_refused_until_put_on_the_training_grid(trained_jmmda, tmp_path, capsys):
    model_path, _ = trained_jmmda
    assert torch.load(model_path, weights_only=True)["voxel_sizes"] == [[3.0, 3.0]]
    new = write_stroke_subject(tmp_path, "SA07", 7)
    ct = nib.load(new["ct"])
    fine = tmp_path / "fine_ct.nii.gz"  # the same head CT, labelled 1 mm in-plane (a thin-slice scan's grid)
    save_nifti(np.asarray(ct.dataobj), np.diag([1.0, 1.0, 4.0, 1.0]), fine)
    out = tmp_path / "refused"
    assert cli(["ct2dwi", str(model_path), str(fine), "--subject", "SA07", "-o", str(out)]) == 2
    err = capsys.readouterr().err
    assert "voxel size 1x1 mm in-plane, but the model was trained on 3x3 mm" in err and "--grid" in err
    assert not out.exists()  # nothing written
    # on the patient's 3 mm DWI grid it runs
    assert cli(["ct2dwi", str(model_path), new["ct"], "--grid", new["dwi"], "--subject", "SA07", "-o", str(out)]) == 0
    assert sorted(p.name for p in out.iterdir()) == [
        "sub-SA07_desc-jmmdagan_dwi.bval", "sub-SA07_desc-jmmdagan_dwi.nii.gz", "sub-SA07_space-synth_ct.nii.gz",
        "sub-SA07_space-synth_desc-ctbrain_mask.json", "sub-SA07_space-synth_desc-ctbrain_mask.nii.gz"]


def test_a_multib_model_is_refused_by_ct2dwi():
    from dwisynth.ct2dwi import check_ct2dwi_model
    from dwisynth.inference import SynthesisModel

    model = SynthesisModel(torch.nn.Identity(), {"task": "multib", "method": "dc2anet", "organ": "brain"},
                           torch.device("cpu"))
    with pytest.raises(ConfigError, match="multi-b model .* use `dwisynth synthesize`"):
        check_ct2dwi_model(model, "results/models/dc2anet/brain/model.pt")


def test_lesion_oversampling_puts_the_lesion_in_the_crops_and_leaves_other_runs_alone(tmp_path):
    from dwisynth.networks.base import build_network
    from dwisynth.training import Trainer, TrainerConfig

    subjects = [write_stroke_subject(tmp_path, f"SA0{i}", i) for i in range(2)]
    lesions = {("stroke", f"SA0{i}"): np.moveaxis(head(i)[3], -1, 0) for i in range(2)}
    shards = [s["shard"] for s in subjects]

    def batches(share, with_lesions, steps=6):
        data = SliceDataset.from_ct(shards, 1000.0, [0, 80], lesions if with_lesions else None)
        model = build_network("unet", {"ngf": 8, "levels": 2, "steps": steps}, 2, 1, 0)
        config = TrainerConfig(steps=steps, batch_size=8, crop=8, validation_subjects=0, device="cpu",
                               progress=False, lesion_oversample=share)
        trainer = Trainer(model, data, config, tmp_path / f"run{share}{with_lesions}", {"method": "unet"})
        return [trainer.batch(step, torch.Generator().manual_seed(step)) for step in range(steps)]

    lesion_share = lambda runs: np.mean([bool(b.lesion[i].any()) for b in runs for i in range(len(b.lesion))])  # noqa: E731
    # an 8-px crop centred on a random brain voxel holds the 3-px-radius lesion in a minority of items
    baseline = lesion_share(batches(0.0, True))
    assert baseline < 0.5
    assert lesion_share(batches(1.0, True)) == 1.0
    assert baseline + 0.2 < lesion_share(batches(0.5, True)) < 1.0
    # off (or without lesion masks) it draws nothing: the same crops as a run that never heard of lesions
    plain, off = batches(0.0, False), batches(0.5, False)
    for a, b in zip(plain, off):
        assert torch.equal(a.inputs, b.inputs) and torch.equal(a.targets, b.targets)


def test_against_the_truth_the_truth_has_conspicuity_1_and_a_lesion_painted_to_its_host_about_0(tmp_path):
    from dwisynth.ct2dwi import score_against_truth

    a = write_stroke_subject(tmp_path, "SA01", 4)
    _, dwi, brain, lesion = head(4)
    truth = dwi[..., 1]
    labels = np.where(brain, 3, 0) + np.where(lesion, 3, 0)  # wm 3, the infarct 6
    save_nifti(labels.astype(np.int16), AFFINE, tmp_path / "dseg.nii.gz", np.int16)
    (tmp_path / "dseg.tsv").write_text("index\tname\n3\twm\n6\tacute_infarct\n")
    synth = {}
    for method, image in (("noisefree", truth), ("copy", truth), ("erased", np.where(lesion, 0.45 + 0.01, truth))):
        synth[method] = (str(tmp_path / f"{method}.nii.gz"), str(tmp_path / f"{method}.bval"))
        save_nifti(image[..., None], AFFINE, synth[method][0])
        write_bval([1000], synth[method][1])
    record = {"cohort": "stroke", "center": "strokeA", "subject": "SA01", "acquired": (a["dwi"], a["bval"]),
              "mask": a["mask"], "lesion": a["lesion"], "dseg": str(tmp_path / "dseg.nii.gz"), "synth": synth}
    metrics, lesions = score_against_truth([record], 1000.0, tmp_path / "dseg.tsv", progress=lambda _: None)
    by = lesions.set_index("method")
    assert set(by.index) == {"truth", "acquired", "copy", "erased"} and (lesions["task"] == "ct2dwi").all()
    assert by.loc["truth", "conspicuity"] == pytest.approx(1.0) and by.loc["copy", "conspicuity"] == pytest.approx(1.0)
    assert abs(by.loc["erased", "conspicuity"]) < 0.1 and by.loc["erased", "relative_error_vs_truth"] < -0.9
    assert by.loc["erased", "lesion_name"] == "acute_infarct" and by.loc["erased", "host_name"] == "wm"
    assert by.loc["erased", "voxels"] == int((lesion & brain).sum())
    scores = metrics.set_index("method")
    assert set(scores.index) == {"acquired", "copy", "erased"}  # the truth is not scored against itself
    assert scores.loc["copy", "psnr"] == float("inf") and scores.loc["copy", "mae"] == 0
    assert scores.loc["erased", "psnr"] < 40 and scores.loc["erased", "ssim"] < 1
