"""The shared trainer, DC²Anet, pix2pix and synthesis: behaviour on a small IVIM phantom."""

import hashlib
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import nibabel as nib
import numpy as np
import pandas as pd
import pytest
import torch

from dwisynth.dataset import write_slice_shard
from dwisynth.diffusion import ivim_signal
from dwisynth.errors import ConfigError
from dwisynth.layout import synth_folder_files
from dwisynth.inference import ModelFileError, cdwi_volume, load_model, synthesize_volume
from dwisynth.io import save_nifti, write_bval
from dwisynth.loader import SliceDataset, chunked_percentile
from dwisynth.networks.base import build_network
from dwisynth.synthesis import synthesize_subject, train_model
from dwisynth.training import Batch, Trainer, TrainerConfig

INPUT_B = [0.0, 100.0]
TARGET_B = [400.0, 800.0, 1000.0]
ACQUIRED_B = [0.0, 100.0, 400.0, 800.0, 1000.0]
# (S0, ADC x10^-3 mm²/s, IVIM f): tissues told apart by S0 as on real b0 images
TISSUES = [(0.0, 0.0, 0.0), (1.0, 0.7, 0.02), (1.6, 1.3, 0.15), (2.5, 3.0, 0.0), (0.8, 1.9, 0.2)]
ADC = {"bvalues": ACQUIRED_B, "max_adc": 4.0, "equivalence_margin": 0.02}
TINY = {
    "dc2anet": {"ngf": 8, "ndf": 8, "n_residual": 1, "pool_size": 4, "norm": "none", "weights": {}},
    "pix2pix": {"ngf": 8, "ndf": 8, "levels": 3, "l1_weight": 100.0, "norm": "none"},
}


def phantom(seed: int, shape=(32, 32, 6), snr: float = 30.0):
    """4D DWI (S/S0 scale) of random tissue blobs, the labels and the body mask."""
    rng = np.random.default_rng(seed)
    labels = np.zeros(shape, int)
    yy, xx = np.mgrid[: shape[0], : shape[1]]
    for z in range(shape[2]):
        body = (yy - 16) ** 2 / 14**2 + (xx - 16) ** 2 / 12**2 < 1
        labels[..., z][body] = 1
        for tissue in (2, 3, 4):
            cy, cx, r = rng.integers(8, 24), rng.integers(8, 24), rng.integers(3, 6)
            labels[..., z][((yy - cy) ** 2 + (xx - cx) ** 2 < r**2) & body] = tissue
    s0, adc, f = (np.array([t[i] for t in TISSUES])[labels] for i in range(3))
    clean = ivim_signal(s0, adc, ACQUIRED_B, f, np.where(f > 0, 20.0, 0.0))
    sigma = 1.0 / snr
    noisy = np.abs(clean + rng.normal(0, sigma, clean.shape) + 1j * rng.normal(0, sigma, clean.shape))
    return noisy.astype(np.float32), clean.astype(np.float32), labels > 0


def write_subject(root: Path, subject: str, seed: int, drop_b=()):
    dwi, clean, mask = phantom(seed)
    keep = [i for i, b in enumerate(ACQUIRED_B) if b not in drop_b]
    affine = np.diag([2.0, 2.0, 4.0, 1.0])
    stem = root / f"sub-{subject}"
    save_nifti(dwi[..., keep], affine, f"{stem}_dwi.nii.gz")
    write_bval([ACQUIRED_B[i] for i in keep], f"{stem}_dwi.bval")
    save_nifti(mask.astype(np.uint8), affine, f"{stem}_mask.nii.gz", dtype=np.uint8)
    shard = root / f"sub-{subject}_slices.npz"
    write_slice_shard(f"{stem}_dwi.nii.gz", f"{stem}_dwi.bval", f"{stem}_mask.nii.gz", shard, ACQUIRED_B,
                      {"cohort": "c", "subject": subject})
    return shard, clean, mask


@pytest.fixture(scope="module")
def cohort(tmp_path_factory):
    """Six training subjects (two lack b 400 and 800) and one test subject."""
    root = tmp_path_factory.mktemp("phantom")
    shards = [write_subject(root, f"P{i}", i, drop_b=(400.0, 800.0) if i >= 4 else ())[0] for i in range(6)]
    test_shard, clean, mask = write_subject(root, "T0", 100)
    return {"root": root, "shards": shards + [test_shard], "clean": clean, "mask": mask}


def tiny_trainer(cohort, method, out_dir, steps=12, checkpoint_every=5, **kw):
    data = SliceDataset(cohort["shards"][:6], INPUT_B, TARGET_B)
    model = build_network(method, TINY[method], len(INPUT_B), len(TARGET_B), seed=7)
    config = TrainerConfig(steps=steps, batch_size=4, crop=24, checkpoint_every=checkpoint_every, log_every=2,
                           seed=7, device="cpu", progress=False, **kw)
    return Trainer(model, data, config, out_dir, {"method": method, "input_b": INPUT_B, "target_b": TARGET_B})


def fixed_batch(cohort, n=4):
    data = SliceDataset(cohort["shards"][:6], INPUT_B, TARGET_B)
    inputs, targets, present, mask = (torch.stack(x) for x in zip(*(data[i] for i in range(n))))
    scale = 3.0
    return Batch(2 * inputs / scale - 1, 2 * targets / scale - 1, present, mask)


@pytest.mark.parametrize("n, q", [(1, 99.9), (2, 50.0), (1000, 99.9), (70001, 99.5), (70001, 0.0), (70001, 100.0)])
def test_percentile_over_chunks_is_numpys_bit_for_bit(n, q):
    rng = np.random.default_rng(n)
    values = np.concatenate([rng.lognormal(0, 1, n - n // 3), -rng.exponential(1, n // 6),
                             np.full(n // 3 - n // 6, 0.75)]).astype(np.float32)  # negatives and many ties
    rng.shuffle(values)
    chunks = lambda: np.array_split(values, 7)  # noqa: E731 - a fresh pass over the values per call
    assert chunked_percentile(chunks, q) == float(np.percentile(values, q))
    assert chunked_percentile(lambda: [values[:0]], q) is None


def test_slices_are_read_from_unlinked_files_with_the_shards_values_and_the_in_memory_digest(
        cohort, tmp_path, monkeypatch):
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))  # where the dataset's files would be
    monkeypatch.setattr("dwisynth.loader.CHUNK_ROWS", 5)  # several chunks per pass
    data = SliceDataset(cohort["shards"][:6], INPUT_B, TARGET_B)
    assert isinstance(data.inputs.base, np.memmap) and list(tmp_path.iterdir()) == []
    # the arrays as the shards hold them, loaded whole
    images, masks = [], []
    for path in cohort["shards"][:6]:
        with np.load(path) as shard:
            images.append(shard["images"])
            masks.append(shard["mask"].astype(bool))
    images, masks = np.concatenate(images), np.concatenate(masks)
    grid = [float(b) for b in np.load(cohort["shards"][0])["bvals"]]
    np.testing.assert_array_equal(data.inputs, images[:, [grid.index(b) for b in INPUT_B]])
    np.testing.assert_array_equal(data.targets[:, 2], images[:, grid.index(1000.0)])
    np.testing.assert_array_equal(data.masks, masks)
    # a split copies rows chunk by chunk and gives the rows boolean indexing gives
    held = data.subject_keys()[:1]
    train, validation = data.split_subjects(held)
    keep = np.array([s not in held for s in data.subjects])
    np.testing.assert_array_equal(train.targets, data.targets[keep])
    np.testing.assert_array_equal(validation.masks, data.masks[~keep])
    # the digest streams the same bytes an in-memory hash of each whole array reads: fingerprints unchanged
    whole = hashlib.sha256(json.dumps([data.input_b, data.target_b, data.subjects, [], None]).encode())
    for array in (data.inputs, data.targets, data.present, data.masks):
        whole.update(str((array.dtype, array.shape)).encode())
        whole.update(np.array(array).tobytes())
    assert data.digest() == whole.hexdigest()[:16]
    assert len(data) > 5 and list(tmp_path.iterdir()) == []  # more than one chunk; no file left


def test_a_full_temp_disk_is_a_clear_error_before_any_slice_is_written(cohort, tmp_path, monkeypatch):
    import errno

    from dwisynth.errors import DwisynthError

    def full(fd, offset, length):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    monkeypatch.setattr(os, "posix_fallocate", full)
    with pytest.raises(DwisynthError, match=rf"{tmp_path}: no room for .* GB of training slices; point TMPDIR"):
        SliceDataset(cohort["shards"][:2], INPUT_B, TARGET_B)
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("method", ["dc2anet", "pix2pix"])
def test_training_steps_lower_the_voxel_loss_on_a_fixed_batch(cohort, method):
    model = build_network(method, TINY[method], len(INPUT_B), len(TARGET_B), seed=1)
    optimizers = {k: torch.optim.Adam(p, lr=1e-3, betas=(0.5, 0.999)) for k, p in model.parameter_groups().items()}
    batch, generator = fixed_batch(cohort), torch.Generator().manual_seed(0)
    losses = [model.training_step(batch, optimizers, generator, step)["voxel_l1"] for step in range(40)]
    assert np.mean(losses[-5:]) < 0.6 * np.mean(losses[:3])


def test_dc2anet_paired_warmup_trains_the_generator_alone_then_the_whole_dual_cycle(cohort):
    block = {**TINY["dc2anet"], "steps": 4, "paired_warmup": 0.5}
    model = build_network("dc2anet", block, len(INPUT_B), len(TARGET_B), seed=1)
    assert [model.phase(step) for step in range(4)] == ["paired", "paired", "dual-cycle", "dual-cycle"]
    optimizers = {k: torch.optim.Adam(p, lr=1e-3) for k, p in model.parameter_groups().items()}
    batch, generator = fixed_batch(cohort), torch.Generator().manual_seed(0)

    def changed(before):
        return {name for name, state in before.items()
                if any(not torch.equal(v, getattr(model, name).state_dict()[k]) for k, v in state.items())}

    def snapshot():
        return {name: {k: v.clone() for k, v in getattr(model, name).state_dict().items()}
                for name in ("G", "F", "D_high", "D_low")}

    before = snapshot()
    losses = model.training_step(batch, optimizers, generator, 0)
    assert set(losses) == {"voxel_l1", "gradient", "ssim", "g_total"} and changed(before) == {"G"}
    before = snapshot()
    losses = model.training_step(batch, optimizers, generator, 2)
    assert {"cycle_low", "cycle_high", "adv_supervised", "d_low"} <= set(losses)
    assert changed(before) == {"G", "F", "D_high", "D_low"}


def test_dc2anet_exports_a_step_of_its_dual_cycle_phase_and_schedules_its_lr_over_it(cohort, tmp_path):
    """The paired warm-up is validated and logged, but the exported model has trained on the whole objective;
    the lr stays constant through the warm-up and decays over the second half of the dual-cycle phase."""
    data = SliceDataset(cohort["shards"][:6], INPUT_B, TARGET_B)
    model = build_network("dc2anet", {**TINY["dc2anet"], "steps": 40, "paired_warmup": 0.5}, len(INPUT_B),
                          len(TARGET_B), seed=7)
    assert model.lr_decay_start() == 30
    config = TrainerConfig(steps=40, batch_size=4, crop=24, checkpoint_every=40, log_every=5, seed=7, device="cpu",
                           progress=False, validate_every=5, decay_start=model.lr_decay_start())
    trainer = Trainer(model, data, config, tmp_path, {"method": "dc2anet", "input_b": INPUT_B, "target_b": TARGET_B})
    record = torch.load(trainer.fit(), weights_only=True)
    log = pd.read_csv(tmp_path / "training_log.csv")
    # the file grew by appends, rewritten when the dual-cycle phase brought its loss columns: it still holds
    # every row under every column
    pd.testing.assert_frame_equal(log, pd.DataFrame(trainer.log_rows), check_dtype=False)
    assert log["adv_supervised"].isna().sum() == 4 and log["step"].tolist() == list(range(5, 45, 5))
    validated = log.dropna(subset=["val_psnr"])
    assert set(validated["phase"]) == {"paired", "dual-cycle"}
    assert record["selected_step"] > 20
    dual = validated[validated["phase"] == "dual-cycle"]
    assert record["validation_psnr"] == pytest.approx(dual["val_psnr"].max(), abs=1e-3)
    lr = log.set_index("step")["lr"]
    assert lr[5] == lr[20] == lr[30] > lr[35] > lr[40] == 0


def test_subjects_missing_target_b_still_train_through_their_acquired_b(cohort):
    data = SliceDataset(cohort["shards"][:6], INPUT_B, TARGET_B)
    present = data.present.reshape(6, -1, 3)[:, 0]
    assert present[:4].all() and present[4:].tolist() == [[False, False, True]] * 2
    model = build_network("dc2anet", TINY["dc2anet"], 2, 3, seed=1)
    optimizers = {k: torch.optim.Adam(p, lr=1e-3) for k, p in model.parameter_groups().items()}
    batch = fixed_batch(cohort)
    batch.present[:] = torch.tensor([False, False, True])  # only b 1000 acquired
    before = {k: v.clone() for k, v in model.G.state_dict().items()}
    losses = model.training_step(batch, optimizers, torch.Generator().manual_seed(0), 0)
    assert np.isfinite(list(losses.values())).all()
    assert any(not torch.equal(before[k], v) for k, v in model.G.state_dict().items())


def test_trainer_writes_log_and_model_and_resumes_to_the_same_weights(cohort, tmp_path):
    straight = tiny_trainer(cohort, "dc2anet", tmp_path / "straight")
    straight.fit()
    log = pd.read_csv(tmp_path / "straight" / "training_log.csv")
    assert log["step"].tolist() == [2, 4, 6, 8, 10, 12]
    assert {"lr", "images_per_s", "voxel_l1", "cycle_low", "d_supervised"} <= set(log.columns)
    assert log["lr"].iloc[-1] < log["lr"].iloc[0]  # linear decay in the second half

    interrupted = tiny_trainer(cohort, "dc2anet", tmp_path / "resumed")
    interrupted.fit(stop_after=7)  # last checkpoint at step 5: steps 6-7 are lost, as in a kill
    resumed = tiny_trainer(cohort, "dc2anet", tmp_path / "resumed")
    resumed.fit()
    assert resumed.step == 12
    for key, value in straight.model.state_dict().items():
        assert torch.equal(value, resumed.model.state_dict()[key]), key
    assert pd.read_csv(tmp_path / "resumed" / "training_log.csv")["step"].tolist() == log["step"].tolist()


def test_a_channels_last_network_trains_in_that_layout_and_exports_what_it_trained(cohort, tmp_path):
    trainer = tiny_trainer(cohort, "dc2anet", tmp_path, steps=4)
    path = trainer.fit()
    convs = [m.weight for m in trainer.model.G.modules() if isinstance(m, torch.nn.Conv2d)]
    assert convs and all(w.is_contiguous(memory_format=torch.channels_last) for w in convs)
    assert not build_network("pix2pix", TINY["pix2pix"], 2, 3, 0).channels_last  # a choice per network
    exported = load_model(path)  # a fresh network in the default layout, as synthesis builds it
    x = torch.rand(2, len(INPUT_B), 24, 24) * 2 - 1
    record = torch.load(path, weights_only=True)
    trainer.model.G.load_state_dict(record["state_dict"])
    with torch.no_grad():
        assert torch.allclose(exported.network(x), trainer.model.G(x), atol=1e-5)


KILL_RUNNER = """
import sys
import tempfile
sys.path.insert(0, {tests!r})
from pathlib import Path
from test_training import tiny_trainer
tiny_trainer({cohort!r}, "pix2pix", Path({out!r}), steps=400, checkpoint_every=20).fit()
"""


def test_training_killed_mid_run_resumes_to_the_uninterrupted_result(cohort, tmp_path):
    out = tmp_path / "killed"
    runner = KILL_RUNNER.format(tests=str(Path(__file__).parent), cohort={"shards": [str(s) for s in cohort["shards"]]},
                                out=str(out))
    proc = subprocess.Popen([sys.executable, "-c", runner], 
                            env={**os.environ, "OMP_NUM_THREADS": str(torch.get_num_threads())})
    deadline = time.time() + 120
    while not (out / "checkpoint.pt").exists() and time.time() < deadline and proc.poll() is None:
        time.sleep(0.2)
    time.sleep(0.5)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert (out / "checkpoint.pt").exists() and not (out / "model.pt").exists()
    killed_at = torch.load(out / "checkpoint.pt", weights_only=False)["step"]
    assert 0 < killed_at < 400

    resumed = tiny_trainer(cohort, "pix2pix", out, steps=400, checkpoint_every=20)
    resumed.fit()
    straight = tiny_trainer(cohort, "pix2pix", tmp_path / "straight", steps=400, checkpoint_every=20)
    straight.fit()
    for key, value in straight.model.state_dict().items():
        assert torch.equal(value, resumed.model.state_dict()[key]), key


def test_a_corrupt_checkpoint_falls_back_to_the_previous_one_and_says_so(cohort, tmp_path, capsys):
    """A disk that filled up or a node that died mid-sync can leave a garbled checkpoint.pt; the
    previous checkpoint is kept beside it, and resuming from it still ends at the uninterrupted weights."""
    tiny_trainer(cohort, "pix2pix", tmp_path / "run", steps=12, checkpoint_every=5).fit(stop_after=10)
    checkpoint, previous = tmp_path / "run" / "checkpoint.pt", tmp_path / "run" / "checkpoint.previous.pt"
    assert torch.load(previous, weights_only=False)["step"] == 5
    checkpoint.write_bytes(checkpoint.read_bytes()[:1000])  # truncated
    resumed = tiny_trainer(cohort, "pix2pix", tmp_path / "run", steps=12, checkpoint_every=5)
    assert resumed.try_resume() and resumed.step == 5
    said = capsys.readouterr().err
    assert "checkpoint.pt is unreadable" in said and "trying the previous checkpoint" in said
    resumed.fit()
    straight = tiny_trainer(cohort, "pix2pix", tmp_path / "straight", steps=12, checkpoint_every=5)
    straight.fit()
    for key, value in straight.model.state_dict().items():
        assert torch.equal(value, resumed.model.state_dict()[key]), key
    previous.write_bytes(b"garbage")
    checkpoint.write_bytes(b"garbage")
    fresh = tiny_trainer(cohort, "pix2pix", tmp_path / "run", steps=12, checkpoint_every=5)
    assert not fresh.try_resume() and fresh.step == 0
    assert "training from scratch" in capsys.readouterr().err


def test_checkpoint_pt_never_goes_missing_while_a_new_one_replaces_it(cohort, tmp_path, monkeypatch):
    """A kill can land between any two file operations of a save: at each of them checkpoint.pt must exist
    (the previous one is kept by a second name, not by moving checkpoint.pt aside)."""
    import dwisynth.training as training

    trainer = tiny_trainer(cohort, "pix2pix", tmp_path / "run", steps=12, checkpoint_every=5)
    trainer.fit(stop_after=5)
    checkpoint = tmp_path / "run" / "checkpoint.pt"
    seen = []
    real_replace = os.replace

    def replace(src, dst):
        seen.append(checkpoint.exists())
        real_replace(src, dst)
        seen.append(checkpoint.exists())

    monkeypatch.setattr(training.os, "replace", replace)
    trainer.fit(stop_after=10)
    assert len(seen) >= 4 and all(seen)
    assert torch.load(tmp_path / "run" / "checkpoint.previous.pt", weights_only=False)["step"] == 5
    assert torch.load(checkpoint, weights_only=False)["step"] == 10
    assert not list((tmp_path / "run").glob("*.tmp"))


def test_checkpoint_from_another_configuration_is_not_resumed(cohort, tmp_path):
    tiny_trainer(cohort, "pix2pix", tmp_path, steps=6).fit(stop_after=5)
    other = tiny_trainer(cohort, "pix2pix", tmp_path, steps=6, lr=1e-3)
    assert other.try_resume() is False and other.step == 0


def test_model_trained_on_cpu_synthesizes_with_input_geometry_and_bvalues(cohort, tmp_path):
    model_path = train_model("pix2pix", "abdomen", cohort["shards"][:6], tmp_path / "m",
                             {**TINY["pix2pix"], "steps": 4, "lr": 2e-4, "betas": [0.5, 0.999]},
                             {"batch_size": 2, "crop": None, "checkpoint_every": 2, "log_every": 2, "threads": 1},
                             {"inputs": INPUT_B, "targets": TARGET_B, "heldout": [75]}, seed=3, device="cpu",
                             progress=False)
    record = torch.load(model_path, weights_only=True)
    assert record["train_subjects"] == [["c", f"P{i}"] for i in range(6)]  # (cohort, subject) of every shard
    assert all(v.device.type == "cpu" for v in record["state_dict"].values())
    stem = cohort["root"] / "sub-T0"
    outputs = synth_folder_files(tmp_path, "pix2pix", "T0")
    written = synthesize_subject(model_path, f"{stem}_dwi.nii.gz", f"{stem}_dwi.bval", f"{stem}_mask.nii.gz",
                                 outputs, ADC, "T0", device="cpu")
    out = outputs["dwi"]
    assert written == INPUT_B + TARGET_B
    img, ref = nib.load(out), nib.load(f"{stem}_dwi.nii.gz")
    assert img.shape == (*ref.shape[:3], 5) and np.allclose(img.affine, ref.affine)
    assert np.loadtxt(outputs["bval"]).tolist() == written
    adc = nib.load(outputs["adc"]).get_fdata()
    assert adc.shape == ref.shape[:3] and np.isfinite(adc).all()
    assert (adc[~cohort["mask"]] == 0).all() and (adc[cohort["mask"]] > 0).any()  # fitted inside the mask only
    assert np.array_equal(img.get_fdata()[..., :2], ref.get_fdata()[..., :2].astype(np.float32))


def test_pix2pix_beats_computed_dwi_on_a_held_out_subject(cohort, tmp_path):
    trainer = tiny_trainer(cohort, "pix2pix", tmp_path, steps=400, checkpoint_every=1000, lr=1e-3)
    model = load_model(trainer.fit(), device="cpu")
    stem = cohort["root"] / "sub-T0"
    dwi = nib.load(f"{stem}_dwi.nii.gz").get_fdata()
    mask, clean = cohort["mask"], cohort["clean"]
    truth = clean[..., [ACQUIRED_B.index(b) for b in TARGET_B]]
    synthetic = synthesize_volume(model, dwi, ACQUIRED_B)
    cdwi = cdwi_volume(dwi, ACQUIRED_B, INPUT_B, TARGET_B, mask)
    network_error = np.abs(synthetic - truth)[mask].mean()
    cdwi_error = np.abs(cdwi - truth)[mask].mean()
    assert network_error < 0.8 * cdwi_error, (network_error, cdwi_error)


def test_perceptual_loss_without_weights_is_a_config_error():
    block = {**TINY["dc2anet"], "weights": {"perceptual": 1.0}, "perceptual_weights": None}
    with pytest.raises(ConfigError, match="perceptual_weights"):
        build_network("dc2anet", block, 2, 3, seed=0)


def test_loading_a_checkpoint_as_a_model_names_the_right_file(cohort, tmp_path):
    tiny_trainer(cohort, "pix2pix", tmp_path, steps=6).fit(stop_after=5)
    with pytest.raises(ModelFileError, match="model.pt"):
        load_model(tmp_path / "checkpoint.pt")
    (tmp_path / "broken.pt").write_bytes(b"not a model")
    with pytest.raises(ModelFileError, match="broken.pt"):
        load_model(tmp_path / "broken.pt")


def test_cli_synthesize_preprocesses_a_raw_nifti_and_writes_synthetic_images_and_adc(cohort, tmp_path):
    from dwisynth.cli import main

    model_dir = tmp_path / "model"
    tiny_trainer(cohort, "pix2pix", model_dir, steps=4).fit()
    stem = cohort["root"] / "sub-T0"
    raw = np.abs(nib.load(f"{stem}_dwi.nii.gz").get_fdata()) * 800  # scanner units, as a converted series
    save_nifti(raw, nib.load(f"{stem}_dwi.nii.gz").affine, tmp_path / "raw.nii.gz")
    config = tmp_path / "config.yaml"
    config.write_text("bvalues: {inputs: [0, 100], targets: [400, 800, 1000], heldout: [75]}\n"
                      "registration: {dwi_motion: false}\ndevice: cpu\n")
    out = tmp_path / "out"
    args = [str(model_dir / "model.pt"), str(tmp_path / "raw.nii.gz"), "--bval", f"{stem}_dwi.bval",
            "--organ", "abdomen", "--subject", "new01", "--config", str(config), "-o", str(out)]
    assert main(["synthesize", *args]) == 0
    synthetic = nib.load(out / "sub-new01_desc-pix2pix_dwi.nii.gz")
    assert synthetic.shape == (32, 32, 6, 3)  # the requested b-values only (default: the model's targets)
    assert np.loadtxt(out / "sub-new01_desc-pix2pix_dwi.bval").tolist() == TARGET_B
    assert (out / "sub-new01_desc-pix2pix_adc.nii.gz").exists() and (out / "sub-new01_desc-norm_dwi.nii.gz").exists()
    assert main(["synthesize", *args, "--b", "850"]) == 2  # an untrained b needs stage 2


# --- honest resume: what a checkpoint must share with the run ------------------------------------

def _train(shards, out_dir, **block):
    return train_model("dc2anet", "abdomen", shards, out_dir, {**TINY["dc2anet"], "steps": 4, **block},
                       {"batch_size": 2, "crop": 24, "checkpoint_every": 2, "log_every": 2, "threads": 1},
                       {"inputs": INPUT_B, "targets": TARGET_B, "heldout": [75]}, seed=3, device="cpu",
                       progress=False)


@pytest.mark.parametrize("change, named", [("loss weight", "network.weights.voxel"), ("ndf", "network.ndf"),
                                           ("one voxel of one shard", "data")])
def test_a_changed_setting_or_training_voxel_trains_from_scratch(cohort, tmp_path, capsys, change, named):
    import shutil

    shards = [shutil.copy(s, tmp_path) for s in cohort["shards"][:6]]
    first = torch.load(_train(shards, tmp_path / "m"), weights_only=True)
    rerun = torch.load(_train(shards, tmp_path / "m"), weights_only=True)  # unchanged: resumes, nothing to do
    assert "resumed from" in capsys.readouterr().err and rerun["fingerprint"] == first["fingerprint"]
    block = {}
    if change == "loss weight":
        block = {"weights": {"voxel": 50.0}}
    elif change == "ndf":
        block = {"ndf": 16}
    else:
        with np.load(shards[2]) as data:
            arrays = {k: data[k] for k in data.files}
        z, y, x = np.argwhere(arrays["mask"])[0]
        arrays["images"][z, 3, y, x] += 0.01  # b 800 of one voxel inside the organ
        np.savez_compressed(shards[2], **arrays)
    changed = torch.load(_train(shards, tmp_path / "m", **block), weights_only=True)
    err = capsys.readouterr().err
    assert "training from scratch" in err and named in err and "resumed" not in err
    assert changed["fingerprint"] != first["fingerprint"] and changed["trained_steps"] == 4
    if block:  # a changed loss or discriminator trains another generator (one voxel may go unsampled in 4 steps)
        assert any(not torch.equal(v, first["state_dict"][k]) for k, v in changed["state_dict"].items())


def test_a_weights_file_rewritten_at_the_same_path_trains_from_scratch(cohort, tmp_path, capsys):
    """A network's fixed weights (DC²Anet's VGG16 file) shape what it learns: the checkpoint follows the
    file's bytes, not its path."""
    weights = tmp_path / "vgg16.pth"
    weights.write_bytes(b"first release")
    first = torch.load(_train(cohort["shards"][:6], tmp_path / "m", perceptual_weights=str(weights)),
                       weights_only=True)
    weights.write_bytes(b"other release")
    capsys.readouterr()
    changed = torch.load(_train(cohort["shards"][:6], tmp_path / "m", perceptual_weights=str(weights)),
                         weights_only=True)
    err = capsys.readouterr().err
    assert "training from scratch" in err and "files.perceptual_weights" in err and "resumed" not in err
    assert changed["fingerprint"] != first["fingerprint"]


def test_resume_loads_the_checkpoint_on_cpu_whatever_the_training_device(cohort, tmp_path):
    tiny_trainer(cohort, "pix2pix", tmp_path, steps=6).fit(stop_after=5)
    saved_rng = torch.load(tmp_path / "checkpoint.pt", weights_only=False)["torch_rng"]
    resumed = tiny_trainer(cohort, "pix2pix", tmp_path, steps=6)
    # As on a GPU node: the job's device is not the CPU. The RNG state must still be loaded on
    # the CPU (torch.set_rng_state refuses a device tensor; mapping to the device crashed every GPU resume).
    resumed.device = torch.device("meta")
    torch.manual_seed(123)
    assert resumed.try_resume() and resumed.step == 5
    assert torch.equal(torch.get_rng_state(), saved_rng)


def test_phases_start_in_order_and_a_resume_reenters_the_phase_it_stopped_in(cohort, tmp_path):
    from plugins.phased_tiny_conv import PhasedTinyConv

    def trainer(out):
        data = SliceDataset(cohort["shards"][:6], INPUT_B, TARGET_B)
        model = build_network("phasedtinyconv", {"steps": 8}, 2, 3, seed=1)
        config = TrainerConfig(steps=8, batch_size=2, crop=24, checkpoint_every=2, log_every=2, seed=1,
                               device="cpu", progress=False)
        return Trainer(model, data, config, out, {"method": "phasedtinyconv"})

    PhasedTinyConv.phases_seen.clear()
    straight = trainer(tmp_path / "straight")
    first_layer = straight.model.G[0].weight.detach().clone()
    straight.fit()
    assert PhasedTinyConv.phases_seen == ["pretrain", "finetune"]
    log = pd.read_csv(tmp_path / "straight" / "training_log.csv")
    assert log["phase"].tolist() == ["pretrain", "pretrain", "finetune", "finetune"]
    assert not torch.equal(first_layer, straight.model.G[0].weight)

    trainer(tmp_path / "resumed").fit(stop_after=6)
    PhasedTinyConv.phases_seen.clear()
    resumed = trainer(tmp_path / "resumed")
    resumed.fit()
    assert PhasedTinyConv.phases_seen == ["finetune"]  # the frozen layer stays frozen after the resume
    for key, value in straight.model.state_dict().items():
        assert torch.equal(value, resumed.model.state_dict()[key]), key


def test_a_network_registered_outside_dwisynth_trains_and_synthesizes(cohort, tmp_path):
    from dwisynth.config import config_schema, validate_config
    from dwisynth.networks.base import networks
    from plugins.tiny_conv import TinyConv

    assert networks()["tinyconv"] is TinyConv
    assert config_schema()["properties"]["tinyconv"]["properties"]["width"]["default"] == 8
    config = validate_config({"bvalues": {}, "tinyconv": {"steps": 30}})
    assert config["tinyconv"] == {"steps": 30, "width": 8, "lr": 2e-4, "betas": [0.5, 0.999], "decay_start": None,
                                  "grad_clip": None, "warmup_steps": None}
    assert "tinyconv" in config["methods"]
    with pytest.raises(ConfigError, match="did you mean 'width'"):
        validate_config({"bvalues": {}, "tinyconv": {"widht": 4}})
    model_path = train_model("tinyconv", "abdomen", cohort["shards"][:6], tmp_path, config["tinyconv"],
                             {"batch_size": 4, "crop": 24, "checkpoint_every": 10, "log_every": 10, "threads": 1},
                             config["bvalues"] | {"targets": TARGET_B}, seed=1, device="cpu", progress=False)
    stem = cohort["root"] / "sub-T0"
    outputs = synth_folder_files(tmp_path, "tinyconv", "T0")
    written = synthesize_subject(model_path, f"{stem}_dwi.nii.gz", f"{stem}_dwi.bval", f"{stem}_mask.nii.gz",
                                 outputs, ADC, "T0", device="cpu")
    assert written == INPUT_B + TARGET_B and nib.load(outputs["dwi"]).shape[-1] == 5


def test_synthetic_adc_uses_the_acquired_b_values_for_scoring_and_all_of_them_for_a_patient(cohort, tmp_path):
    from dwisynth.diffusion import fit_adc

    model_path = tmp_path / "m"
    tiny_trainer(cohort, "pix2pix", model_path, steps=2).fit()
    stem = cohort["root"] / "sub-T0"
    dwi, mask = nib.load(f"{stem}_dwi.nii.gz"), nib.load(f"{stem}_mask.nii.gz").get_fdata() > 0
    save_nifti(dwi.get_fdata()[..., :2], dwi.affine, tmp_path / "low.nii.gz")  # a patient with b 0 and 100 only
    write_bval(INPUT_B, tmp_path / "low.bval")
    maps = {}
    for as_acquired in (True, False):
        out = synth_folder_files(tmp_path / str(as_acquired), "pix2pix", "T0")
        synthesize_subject(model_path / "model.pt", tmp_path / "low.nii.gz", tmp_path / "low.bval",
                           f"{stem}_mask.nii.gz", out, ADC, "T0", device="cpu", adc_as_acquired=as_acquired)
        maps[as_acquired] = nib.load(out["adc"]).get_fdata()
        synthetic, bvals = nib.load(out["dwi"]).get_fdata(), np.loadtxt(out["bval"])
    assert np.allclose(maps[True][mask], fit_adc(synthetic, bvals, use_b=INPUT_B)[mask], atol=1e-5)
    assert np.allclose(maps[False][mask], fit_adc(synthetic, bvals, use_b=ACQUIRED_B)[mask], atol=1e-5)


def sabotaged_trainer(cohort, out, sabotage="noise", sabotage_step=30, steps=60, **kw):
    from plugins.sabotaged_tiny_conv import SabotagedTinyConv  # noqa: F401 (registers the network)

    data = SliceDataset(cohort["shards"][:6], INPUT_B, TARGET_B)
    model = build_network("sabotagedtinyconv", {"steps": steps, "sabotage": sabotage,
                                                "sabotage_step": sabotage_step}, 2, 3, seed=3)
    config = TrainerConfig(steps=steps, batch_size=4, crop=24, lr=3e-3, checkpoint_every=10, log_every=10,
                           seed=3, device="cpu", progress=False, validate_every=5, **kw)
    return Trainer(model, data, config, out, {"method": "sabotagedtinyconv", "input_b": INPUT_B,
                                              "target_b": TARGET_B})


def test_validation_holds_out_a_training_subject_and_exports_the_best_step_when_training_collapses(
        cohort, tmp_path, capsys):
    from dwisynth.inference import synthesize_slices
    from dwisynth.training import masked_psnr

    trainer = sabotaged_trainer(cohort, tmp_path)
    held_out = trainer.validation.subject_keys()
    assert len(held_out) == 1 and held_out[0] not in trainer.data.subject_keys()
    assert held_out[0] in SliceDataset(cohort["shards"][:6], INPUT_B, TARGET_B).subject_keys()  # train, never test
    model_path = trainer.fit()
    record = torch.load(model_path, weights_only=True)
    assert "collapsed" in record["stopped_early"] and "collapsed" in capsys.readouterr().err
    assert record["selected_step"] < 30 <= record["trained_steps"] < 60  # stopped soon after the wreck
    assert record["validation_subjects"] == [list(held_out[0])]
    log = pd.read_csv(tmp_path / "training_log.csv")
    validated = log.dropna(subset=["val_psnr"])
    assert validated["step"].tolist()[:5] == [5, 10, 15, 20, 25]
    assert validated["val_psnr"].iloc[-1] < validated["val_psnr"].max() - 6
    assert validated["val_psnr"].iloc[:5].is_monotonic_increasing or validated["val_psnr"].iloc[4] > validated[
        "val_psnr"].iloc[0]  # it learned before the wreck
    # model.pt holds the weights of the best validation, not the wrecked last ones
    model = load_model(model_path, "cpu")
    v = trainer.validation
    prediction = synthesize_slices(model, v.inputs)
    rows = [v.present[:, j] for j in range(len(TARGET_B))]
    scores = [masked_psnr(prediction[r, j], v.targets[r, j], v.masks[r]) for j, r in enumerate(rows) if r.any()]
    assert np.mean(scores) == pytest.approx(validated["val_psnr"].max(), abs=1e-3)
    assert record["selected_step"] == validated.loc[validated["val_psnr"].idxmax(), "step"]


def test_a_loss_that_blows_up_before_any_validation_stops_with_advice(cohort, tmp_path):
    from dwisynth.training import TrainingDiverged

    with pytest.raises(TrainingDiverged, match=r"loss blew up at step 3.*lower the lr"):
        sabotaged_trainer(cohort, tmp_path, sabotage="nan", sabotage_step=3).fit()
    assert not (tmp_path / "model.pt").exists()


def test_warm_up_ramps_the_lr_and_clipping_bounds_the_gradient_norm(cohort, tmp_path):
    trainer = tiny_trainer(cohort, "pix2pix", tmp_path, steps=20, warmup_steps=4, grad_clip=0.01)
    lrs = []
    for step in range(5):
        lrs.append(next(iter(trainer.optimizers.values())).param_groups[0]["lr"])
        batch = trainer.batch(step, torch.Generator().manual_seed(step))
        trainer.model.training_step(batch, trainer.optimizers, torch.Generator().manual_seed(step), step)
        for sched in trainer.schedulers.values():
            sched.step()
        for name, opt in trainer.optimizers.items():
            norm = torch.linalg.vector_norm(torch.stack([p.grad.norm() for g in opt.param_groups
                                                         for p in g["params"] if p.grad is not None]))
            assert norm <= 0.01 * (1 + 1e-4), name  # the pre-step hook clipped it
    assert lrs == pytest.approx([2e-4 * k / 4 for k in (1, 2, 3, 4)] + [2e-4])


@pytest.mark.parametrize("kind, upsample, checkerboard", [("resnet", "bilinear", False), ("resnet", "resize", False),
                                                            ("resnet", "transposed", True), ("unet", "bilinear", False),
                                                            ("unet", "transposed", True)])
def test_resize_convolution_leaves_no_checkerboard_on_a_flat_image(kind, upsample, checkerboard):
    """DC²Anet's ResNet generator and the U-Net of pix2pix and the L1 U-Net alike."""
    from dwisynth.networks.blocks import ResnetGenerator
    from dwisynth.networks.pix2pix import unet_generator

    torch.manual_seed(0)
    generator = (ResnetGenerator(2, 1, ngf=8, n_blocks=1, norm="none", upsample=upsample) if kind == "resnet"
                 else unet_generator(2, 1, ngf=8, levels=3, norm="none", upsample=upsample)).eval()
    with torch.no_grad():
        out = generator(torch.full((1, 2, 64, 64), 0.3))[0, 0, 20:44, 20:44]  # away from the padded border
    parity = [out[i::2, j::2].mean() for i in (0, 1) for j in (0, 1)]  # the four pixel phases
    spread = float(max(parity) - min(parity))
    assert (spread > 1e-3) is checkerboard, spread
    assert float(out.std()) < 1e-4 or checkerboard  # flat in, flat out (up to the far border)


def _impulse_centroid_shift(network: torch.nn.Module, size: int = 48) -> np.ndarray:
    """Mean (dy, dx) of the response centroid to single-pixel inputs, with every weight made positive (a blob)."""
    with torch.no_grad():
        for module in network.modules():
            if isinstance(module, (torch.nn.Conv2d, torch.nn.ConvTranspose2d)):
                module.weight.abs_()
                module.bias.zero_()
        ys, xs = torch.meshgrid(torch.arange(float(size)), torch.arange(float(size)), indexing="ij")
        shifts = []
        for cy in range(20, 26):
            for cx in range(20, 26):
                x = torch.zeros(1, 1, size, size)
                x[0, 0, cy, cx] = 1
                y = (network(x) - network(torch.zeros_like(x)))[0, 0].clamp(min=0)
                shifts.append([float((y * ys).sum() / y.sum()) - cy, float((y * xs).sum() / y.sum()) - cx])
    return np.mean(shifts, axis=0)


@pytest.mark.parametrize("kind, upsample, in_place", [("resnet", "bilinear", True), ("resnet", "transposed", True),
                                                      ("resnet", "resize", False), ("unet", "bilinear", True)])
def test_upsampling_puts_the_decoders_content_back_where_the_encoder_took_it(kind, upsample, in_place):
    """A nearest resize after stride-2 convs (kernel 3, padding 1) drew everything ~1.5 px down and right through
    DC²Anet's two levels (a lesion of 2-3 voxels beside itself); the bilinear, grid-aligned upsampling does not."""
    from dwisynth.networks.blocks import ResnetGenerator
    from dwisynth.networks.pix2pix import unet_generator

    torch.manual_seed(0)
    network = (ResnetGenerator(1, 1, ngf=4, n_blocks=0, norm="none", upsample=upsample).model[:-1]
               if kind == "resnet" else unet_generator(1, 1, 4, 3, "none", upsample)[0])
    shift = _impulse_centroid_shift(network)
    assert (np.abs(shift).max() < 0.3) if in_place else (shift.min() > 1.0), shift


def test_signed_gradient_difference_prefers_the_noise_free_image_and_the_magnitude_form_prefers_stripes():
    """On a noisy target the published | |grad pred| - |grad target| | pays for stripes of the noise's
    gradient size over the noise-free truth (what painted the demo pelvis at b 1000); the signed form's
    minimum is the truth."""
    from dwisynth.networks.losses import gradient_difference

    rng = np.random.default_rng(0)
    yy, xx = np.mgrid[:64, :64] / 64.0
    truth = 0.5 * np.exp(-((xx - 0.5) ** 2 + (yy - 0.5) ** 2) / 0.05) - 0.2  # smooth blob
    noise = rng.normal(0, 0.2, (64, 64))
    # alternating rows and columns: a gradient of one size everywhere, the median of the noise's |gradient|
    # (0.2 * sqrt(2) * 0.674), the magnitude form's optimum where the truth is flat
    step = 0.2 * np.sqrt(2) * 0.674
    stripes = step / 2 * ((-1.0) ** np.arange(64)[None, :] + (-1.0) ** np.arange(64)[:, None])
    as_tensor = lambda a: torch.tensor(a, dtype=torch.float32)[None, None]  # noqa: E731
    target, clean, striped = as_tensor(truth + noise), as_tensor(truth), as_tensor(truth + stripes)
    magnitude = {name: float(gradient_difference(image, target, form="magnitude"))
                 for name, image in (("clean", clean), ("striped", striped))}
    signed = {name: float(gradient_difference(image, target, form="signed"))
              for name, image in (("clean", clean), ("striped", striped))}
    assert magnitude["striped"] < 0.8 * magnitude["clean"], magnitude
    assert signed["clean"] < 0.95 * signed["striped"], signed
    with pytest.raises(ValueError, match="signed"):
        gradient_difference(clean, target, form="absolute")


def test_a_network_blocks_grad_clip_overrides_the_training_blocks_and_null_defers_to_it():
    from dwisynth.synthesis import trainer_config

    training = {"batch_size": 2, "crop": 16, "checkpoint_every": 10, "log_every": 5, "grad_clip": 4.0}
    own = build_network("pix2pix", {**TINY["pix2pix"], "grad_clip": 2.5}, len(INPUT_B), len(TARGET_B), seed=1)
    deferring = build_network("pix2pix", TINY["pix2pix"], len(INPUT_B), len(TARGET_B), seed=1)
    assert trainer_config(training, own, 1.0, 0, "cpu").grad_clip == 2.5
    assert trainer_config(training, deferring, 1.0, 0, "cpu").grad_clip == 4.0
    assert trainer_config({**training, "grad_clip": None}, deferring, 1.0, 0, "cpu").grad_clip is None


def test_a_phase_after_an_overfit_warm_up_starts_from_its_best_validated_step_also_when_resumed_there(
        cohort, tmp_path, capsys):
    from plugins.warm_started_tiny_conv import WarmStartedTinyConv  # noqa: F401 (registers the network)

    data = SliceDataset(cohort["shards"][:6], INPUT_B, TARGET_B)
    config = TrainerConfig(steps=50, batch_size=4, crop=24, lr=3e-3, checkpoint_every=10, log_every=5, seed=3,
                           device="cpu", progress=False, validate_every=5)

    def trainer():
        model = build_network("warmstartedtinyconv", {"steps": 50, "warm_steps": 30, "wreck_step": 22}, 2, 3, seed=3)
        return Trainer(model, data, config, tmp_path, {"method": "warmstartedtinyconv", "input_b": INPUT_B,
                                                       "target_b": TARGET_B})

    first = trainer()
    first.fit(stop_after=30)  # killed at the end of the warm-up; the checkpoint holds its best weights
    best = first.warm["best"]
    second = trainer()
    started = {}
    start_phase = second.model.start_phase
    second.model.start_phase = lambda phase, optimizers: (
        started.setdefault(phase, {k: t.clone() for k, t in second.model.inference_network().state_dict().items()}),
        start_phase(phase, optimizers))
    record = torch.load(second.fit(), weights_only=True)
    log = pd.read_csv(tmp_path / "training_log.csv").dropna(subset=["val_psnr"]).set_index("step")["val_psnr"]
    assert log[25] < log[20] - 1 and log[30] < log[20] - 1  # the wreck at step 22
    assert best["step"] == log.loc[:30].idxmax() <= 20
    assert record["warm_started_from"] == best["step"]
    for name, weight in best["state_dict"].items():  # the main phase's first step saw the best warm-up weights
        torch.testing.assert_close(started["main"][name], weight)
    assert f"main starts from step {best['step']}" in capsys.readouterr().err
    assert record["selected_step"] > 30 and log[35] > log[30] + 1


def _copy_error(skips: bool, steps: int = 80) -> float:
    """L1 error of a tiny ResnetGenerator taught to copy pixel-sized detail, on a fresh pattern."""
    from dwisynth.networks.blocks import ResnetGenerator

    torch.manual_seed(0)
    net = ResnetGenerator(1, 1, 8, 1, "none", "bilinear", skips)
    opt = torch.optim.Adam(net.parameters(), 2e-3)
    draws = torch.Generator().manual_seed(1)

    def pattern():
        return (torch.rand(8, 1, 32, 32, generator=draws) > 0.5).float() * 1.2 - 0.6

    for _ in range(steps):
        x = pattern()
        loss = (net(x) - x).abs().mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
    x = pattern()
    with torch.no_grad():
        return float((net(x) - x).abs().mean())


def test_generator_skips_carry_pixel_detail_the_bottleneck_loses_with_the_same_weights():
    from dwisynth.networks.blocks import ResnetGenerator

    plain, skipped = (ResnetGenerator(2, 3, 8, 2, "none", "resize", s) for s in (False, True))
    assert plain.state_dict().keys() == skipped.state_dict().keys()  # no extra weights, same names
    skipped.load_state_dict(plain.state_dict())
    x = torch.randn(2, 2, 32, 36)
    assert not torch.allclose(plain(x), skipped(x))  # the skips change what the same weights compute
    without, with_skips = _copy_error(False), _copy_error(True)
    assert with_skips < 0.4 * without, (with_skips, without)  # measured 0.10 against 0.51


def test_dc2anet_with_skips_exports_an_inference_network_that_computes_its_generator(cohort):
    model = build_network("dc2anet", {**TINY["dc2anet"], "skips": True}, len(INPUT_B), len(TARGET_B), seed=7)
    spec = model.inference_spec()
    assert spec["kwargs"]["skips"] is True
    exported = type(model).build_inference_network(**spec["kwargs"])
    exported.load_state_dict(model.G.state_dict())
    x = torch.randn(1, len(INPUT_B), 32, 32)
    assert torch.equal(exported(x), model.G(x))


def test_multib_lesion_masks_reach_the_batches_and_survive_few_shot_rows(cohort):
    """training.lesion_oversample for multi-b networks: lesion slices are drawn and cropped around the lesion."""
    lesion = np.zeros((6, 32, 32), bool)  # (Z, H, W) in the shard's slice order
    lesion[2, 14:17, 14:17] = True
    data = SliceDataset(cohort["shards"][:6], INPUT_B, TARGET_B, lesion_masks={("c", "P0"): lesion})
    assert data.lesions.shape == data.masks.shape
    assert int(data.lesions.reshape(len(data), -1).any(1).sum()) == 1  # P0's slice 2 alone; others have none
    model = build_network("pix2pix", TINY["pix2pix"], len(INPUT_B), len(TARGET_B), seed=7)
    config = TrainerConfig(steps=2, batch_size=4, crop=16, seed=7, device="cpu", progress=False,
                           validation_subjects=0, lesion_oversample=1.0)
    trainer = Trainer(model, data, config, cohort["root"] / "lesion_run", {"method": "pix2pix"})
    batch = trainer.batch(0, torch.Generator().manual_seed(0))
    assert batch.lesion is not None and bool(batch.lesion.flatten(1).any(1).all())  # every item holds the lesion
    extra = data.with_extra(data, {TARGET_B[0]: np.array([0, 1])}, share=0.2)
    assert len(extra.lesions) == len(extra) and not extra.lesions[len(data):].any()


def test_a_network_block_sets_its_own_lr_warmup(cohort):
    from dwisynth.synthesis import trainer_config

    model = build_network("dc2anet", {**TINY["dc2anet"], "warmup_steps": 30}, len(INPUT_B), len(TARGET_B), seed=7)
    assert trainer_config({"batch_size": 2, "crop": 16, "checkpoint_every": 5, "log_every": 1, "warmup_steps": 5},
                          model, None, 7, "cpu").warmup_steps == 30
    other = build_network("pix2pix", TINY["pix2pix"], len(INPUT_B), len(TARGET_B), seed=7)
    assert trainer_config({"batch_size": 2, "crop": 16, "checkpoint_every": 5, "log_every": 1, "warmup_steps": 5},
                          other, None, 7, "cpu").warmup_steps == 5


def test_log_ratio_inputs_give_the_decay_between_input_b_values_on_the_network_scale():
    from dwisynth.networks.blocks import LOG_RATIO_GAIN, LOG_RATIO_LIMIT, ResnetGenerator, signal_log_ratios, to_network

    imax = 3.0
    s0 = torch.tensor([1.3, 2.0, 0.8, 0.0])  # tumour, fluid, white matter, background
    s100 = s0 * torch.tensor([0.89, 0.73, 0.915, 1.0])
    x = to_network(torch.stack([s0, s100])[None, :, :, None], imax)  # (1, 2, 4, 1)
    ratios = signal_log_ratios(x)[0, 0, :, 0]
    expected = torch.clamp(LOG_RATIO_GAIN * torch.log(torch.tensor([0.89, 0.73, 0.915, 1.0])), -LOG_RATIO_LIMIT, 3)
    assert torch.allclose(ratios[:3], expected[:3], atol=1e-4)  # fluid falls fastest: the tumour is not fluid
    assert float(ratios[3]) == 0.0 and float(ratios.abs().max()) <= LOG_RATIO_LIMIT  # background: bounded, no NaN
    net = ResnetGenerator(2, 4, 8, 1, "none", "resize", skips=True, log_ratios=True)
    assert net.model[1].in_channels == 3 and net(torch.rand(1, 2, 32, 32) * 2 - 1).shape == (1, 4, 32, 32)


def test_lesion_l1_is_the_mean_error_over_lesion_voxels_of_acquired_channels():
    from dwisynth.networks.losses import lesion_l1

    target = torch.zeros(2, 2, 8, 8)
    pred = torch.full_like(target, 100.0)  # far off outside the lesion: not counted
    lesion = torch.zeros(2, 8, 8, dtype=torch.bool)
    lesion[0, 2:4, 2:4] = True  # 4 voxels in item 0, none in item 1
    pred[0, 0][lesion[0]] = 1.0  # acquired channel: error 1
    pred[0, 1][lesion[0]] = 5.0  # channel 1 not acquired in item 0: not counted
    present = torch.tensor([[True, False], [True, True]])
    assert float(lesion_l1(pred, target, present, lesion)) == pytest.approx(1.0)
    assert float(lesion_l1(pred, target, present, torch.zeros_like(lesion))) == 0.0


@pytest.mark.parametrize("method", ["dc2anet", "pix2pix"])
def test_training_lesion_weight_adds_one_lesion_term_to_every_multib_network(cohort, method):
    """training.lesion_weight is a trainer setting each network adds alike, relative to its own voxel L1: total =
    total without it + w x voxel weight x lesion L1 (same initial weights); nothing without a lesion mask."""
    batch = fixed_batch(cohort)
    batch.lesion = torch.zeros(len(batch.inputs), *batch.inputs.shape[2:], dtype=torch.bool)
    batch.lesion[:, 10:14, 12:15] = True
    runs = {}
    for weight in (0.0, 0.5):
        trainer = tiny_trainer(cohort, method, cohort["root"] / f"lesion_weight_{method}_{weight}",
                               validation_subjects=0, lesion_weight=weight)
        assert trainer.model.lesion_weight == weight
        runs[weight] = trainer.model.training_step(batch, trainer.optimizers, torch.Generator().manual_seed(0), 0)
    voxel = trainer.model.voxel_l1_weight()
    assert voxel == 100.0  # both networks' default voxel L1
    assert "lesion_l1" not in runs[0.0] and runs[0.5]["lesion_l1"] > 0
    assert runs[0.5]["g_total"] == pytest.approx(runs[0.0]["g_total"] + 0.5 * voxel * runs[0.5]["lesion_l1"], rel=1e-5)
    batch.lesion = None
    trainer = tiny_trainer(cohort, method, cohort["root"] / f"lesion_weight_{method}_none", validation_subjects=0,
                           lesion_weight=0.5)
    assert "lesion_l1" not in trainer.model.training_step(batch, trainer.optimizers, torch.Generator(), 0)


def test_validation_logs_the_lesion_psnr_of_held_out_subjects_with_lesions_and_model_pt_records_it(cohort, tmp_path):
    """Lesion settings trade image PSNR for the lesion: validation reports both (selection stays on the image),
    so a study can choose them on its train split."""
    import pandas as pd

    lesion = np.zeros((6, 32, 32), bool)
    lesion[2:4, 12:17, 12:17] = True
    masks = {("c", f"P{i}"): lesion for i in range(6)}
    data = SliceDataset(cohort["shards"][:6], INPUT_B, TARGET_B, lesion_masks=masks)
    model = build_network("pix2pix", TINY["pix2pix"], len(INPUT_B), len(TARGET_B), seed=7)
    config = TrainerConfig(steps=4, batch_size=4, crop=24, seed=7, device="cpu", progress=False, validate_every=2,
                           checkpoint_every=2, log_every=1, lesion_oversample=0.5, lesion_weight=10.0)
    trainer = Trainer(model, data, config, tmp_path / "run", {"method": "pix2pix"})
    scores = trainer.validate()
    assert np.isfinite(scores["val_lesion_psnr"]) and scores["val_lesion_psnr"] != scores["val_psnr"]
    assert scores["val_score"] == pytest.approx(np.mean([v for k, v in scores.items() if k.startswith("val_psnr_b")]))
    record = torch.load(trainer.fit(), weights_only=False)
    assert np.isfinite(record["validation_lesion_psnr"])
    assert "val_lesion_psnr" in pd.read_csv(tmp_path / "run" / "training_log.csv").columns


def test_model_pt_records_the_training_seconds_summed_over_a_resume(cohort, tmp_path):
    """The tables carry each model's measured training time (equal-budget comparisons)."""
    trainer = tiny_trainer(cohort, "pix2pix", tmp_path / "run", steps=12, checkpoint_every=4)
    trainer.fit(stop_after=8)
    first = torch.load(tmp_path / "run" / "checkpoint.pt", weights_only=False)["training_seconds"]
    assert first > 0
    resumed = tiny_trainer(cohort, "pix2pix", tmp_path / "run", steps=12, checkpoint_every=4)
    record = torch.load(resumed.fit(), weights_only=False)
    assert record["training_seconds"] > first and record["trained_steps"] == 12

