"""Stage 2 (MineGAN): what it may see in training, what it records, how it resumes and synthesizes."""

import os
import signal
import subprocess
import sys
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
from dwisynth.inference import load_model, synthesize_volume
from dwisynth.io import save_nifti, write_bval
from dwisynth.layout import synth_folder_files
from dwisynth.loader import SliceDataset
from dwisynth.synthesis import synthesize_subject, train_model
from dwisynth.training import Trainer

BASE_B = [0.0, 100.0, 400.0, 800.0, 1000.0]
HELDOUT_B = [75.0, 850.0]
SENTINEL = 77.0  # S/S0 no tissue reaches: planted in every held-out image of a shard
BVALUES = {"inputs": [0.0, 100.0], "targets": [400.0, 800.0, 1000.0], "heldout": HELDOUT_B, "b0_max": 10}
TRAINING = {"batch_size": 4, "crop": 24, "checkpoint_every": 4, "log_every": 2, "threads": 1,
            "validation_subjects": 1, "validate_every": 4}
STAGE1 = {"ngf": 8, "ndf": 8, "n_residual": 1, "pool_size": 4, "steps": 6, "lr": 5e-4}
MINEGAN = {"ngf": 8, "ndf": 8, "n_residual": 2, "pretrain_steps": 6, "mine_steps": 4, "finetune_steps": 4,
           "lr": 5e-4, "b_range": [0, 1000], "z_dim": 4, "miner_width": 16, "embed_width": 16,
           "fewshot": {"k": 3, "mine_steps": 4, "finetune_steps": 4}}
ADC = {"bvalues": BASE_B, "max_adc": 4.0, "equivalence_margin": 0.02}


def write_subject(root: Path, subject: str, seed: int, heldout: bool, sentinel: bool = True):
    """A phantom subject (S/S0 scale); with `heldout`, also acquired at 75 and 850 (sentinel-filled)."""
    rng = np.random.default_rng(seed)
    shape = (28, 28, 5)
    yy, xx = np.mgrid[: shape[0], : shape[1]]
    body = (yy - 14) ** 2 / 11**2 + (xx - 14) ** 2 / 10**2 < 1
    adc = np.zeros(shape)
    adc[body] = 1.0
    for z in range(shape[2]):
        cy, cx = rng.integers(9, 19, 2)
        adc[..., z][((yy - cy) ** 2 + (xx - cx) ** 2 < 16) & body] = 2.5
    bvals = sorted(BASE_B + (HELDOUT_B if heldout else []))
    clean = ivim_signal(np.where(adc > 0, 1.0, 0.0), adc, bvals, np.where(adc > 0, 0.1, 0.0), 20.0)
    dwi = np.abs(clean + rng.normal(0, 0.02, clean.shape)).astype(np.float32)
    if heldout and sentinel:
        for b in HELDOUT_B:
            dwi[..., bvals.index(b)] = SENTINEL
    affine = np.diag([2.0, 2.0, 4.0, 1.0])
    stem = root / f"sub-{subject}"
    mask = np.repeat(body[..., None], shape[2], 2)
    save_nifti(dwi, affine, f"{stem}_dwi.nii.gz")
    write_bval(bvals, f"{stem}_dwi.bval")
    save_nifti(mask.astype(np.uint8), affine, f"{stem}_mask.nii.gz", dtype=np.uint8)
    shard = root / f"sub-{subject}_slices.npz"
    write_slice_shard(f"{stem}_dwi.nii.gz", f"{stem}_dwi.bval", f"{stem}_mask.nii.gz", shard,
                      sorted(BASE_B + HELDOUT_B), {"cohort": "c", "subject": subject})
    return shard


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    """Five train subjects (two acquired at the held-out b), stage 1, zero-shot and few-shot MineGAN."""
    root = tmp_path_factory.mktemp("minegan")
    shards = [write_subject(root, f"P{i}", i, heldout=i in (1, 2)) for i in range(5)]
    write_subject(root, "T0", 50, heldout=True, sentinel=False)
    common = dict(training=TRAINING, bvalues=BVALUES, seed=5, device="cpu", progress=False)
    stage1 = train_model("dc2anet", "abdomen", shards, root / "dc2anet", STAGE1, **common)
    zero = train_model("minegan", "abdomen", shards, root / "minegan", MINEGAN, upstream={"stage1": stage1}, **common)
    few = train_model("mineganfewshot", "abdomen", shards, root / "fewshot", MINEGAN, upstream={"zeroshot": zero},
                      **common)
    return {"root": root, "shards": shards, "stage1": stage1, "minegan": zero, "mineganfewshot": few,
            "common": common}


def _epoch(models, zero_shot: bool):
    """(largest value in the arrays the trainer draws from, whether any batch of one epoch marks a held-out b
    present) for a MineGAN trainer on the shards."""
    from dwisynth.networks.base import build_network
    from dwisynth.training import TrainerConfig, step_generator

    target_b = [0.0, 100.0, 400.0, 800.0, 1000.0, 75.0, 850.0]
    data = SliceDataset(models["shards"], BVALUES["inputs"], target_b, HELDOUT_B, zero_shot=zero_shot)
    model = build_network("minegan", MINEGAN, 2, len(target_b), 5)
    model.prepare({"stage1": load_model(models["stage1"], "cpu").record}, BVALUES, 5)
    config = TrainerConfig(steps=14, batch_size=4, crop=24, seed=5, device="cpu", progress=False,
                           validation_subjects=0)
    trainer = Trainer(model, data, config, models["root"] / f"epoch{zero_shot}", {"method": "minegan"})
    largest = max(float(trainer.data.inputs.max()), float(trainer.data.targets.max()))
    heldout_present = False
    for step in range(len(trainer.data) // config.batch_size + 1):  # one epoch and a bit
        batch = trainer.batch(step, step_generator(5, step))
        heldout_present |= bool(batch.present[:, -2:].any())
    return largest, heldout_present


def test_zero_shot_batches_never_hold_a_held_out_image(models):
    largest, heldout_present = _epoch(models, zero_shot=True)
    assert largest < SENTINEL / 2 and not heldout_present
    # the control: without zero_shot the planted images are there and reach the batches
    largest, heldout_present = _epoch(models, zero_shot=False)
    assert largest == SENTINEL and heldout_present


def test_few_shot_images_are_listed_and_come_from_train_subjects_only(models):
    record = torch.load(models["mineganfewshot"], weights_only=True)
    images = record["fewshot_images"]
    assert len(images) == 2 * MINEGAN["fewshot"]["k"]  # k per held-out b
    assert {b for *_, b in images} == set(HELDOUT_B)
    train = {tuple(s) for s in record["train_subjects"]}
    validation = {tuple(s) for s in record["validation_subjects"]}
    assert {(c, s) for c, s, _, _ in images} <= {("c", "P1"), ("c", "P2")} - validation
    assert all((c, s) in train for c, s, _, _ in images)
    zero = torch.load(models["minegan"], weights_only=True)
    assert record["upstream"] == {"zeroshot": zero["fingerprint"]}
    assert zero["upstream"]["stage1"] == torch.load(models["stage1"], weights_only=True)["fingerprint"]


def test_few_shot_k_above_the_available_slices_names_the_count(models, tmp_path):
    block = {**MINEGAN, "fewshot": {**MINEGAN["fewshot"], "k": 500}}
    with pytest.raises(ConfigError, match=r"holds \d+ slices at b = 75.*fewshot.k"):
        train_model("mineganfewshot", "abdomen", models["shards"], tmp_path, block,
                    upstream={"zeroshot": models["minegan"]}, **models["common"])
    assert not (tmp_path / "model.pt").exists()


def test_few_shot_subject_outside_the_train_split_is_refused(models, tmp_path):
    block = {**MINEGAN, "fewshot": {**MINEGAN["fewshot"], "subjects": ["c/T0"]}}
    with pytest.raises(ConfigError, match="c/T0 not among this organ's train-split"):
        train_model("mineganfewshot", "abdomen", models["shards"], tmp_path, block,
                    upstream={"zeroshot": models["minegan"]}, **models["common"])


def test_few_shot_without_any_subject_at_the_held_out_b_points_at_the_fix(models, tmp_path):
    plain = [s for s in models["shards"] if s.name not in ("sub-P1_slices.npz", "sub-P2_slices.npz")]
    with pytest.raises(ConfigError, match="heldout_fewshot_subjects"):
        train_model("mineganfewshot", "abdomen", plain, tmp_path, MINEGAN,
                    upstream={"zeroshot": models["minegan"]}, **models["common"])


def test_synthesis_at_any_b_keeps_geometry_writes_bval_and_repeats_exactly(models, tmp_path):
    stem = models["root"] / "sub-T0"
    written = []
    for run in ("a", "b"):
        outputs = synth_folder_files(tmp_path / run, "minegan", "T0")
        written.append(synthesize_subject(models["minegan"], f"{stem}_dwi.nii.gz", f"{stem}_dwi.bval",
                                          f"{stem}_mask.nii.gz", outputs, ADC, "T0", device="cpu",
                                          target_b=[75, 850, 400]))
    assert written[0] == [0.0, 100.0, 75.0, 850.0, 400.0]
    a, b = (nib.load(synth_folder_files(tmp_path / r, "minegan", "T0")["dwi"]) for r in ("a", "b"))
    reference = nib.load(f"{stem}_dwi.nii.gz")
    assert a.shape == (*reference.shape[:3], 5) and np.allclose(a.affine, reference.affine)
    assert np.array_equal(a.get_fdata(), b.get_fdata())
    bval = np.loadtxt(synth_folder_files(tmp_path / "a", "minegan", "T0")["bval"]).tolist()
    assert bval == written[0]
    assert np.isfinite(a.get_fdata()).all()


def test_b_outside_the_range_and_b_off_a_fixed_model_are_refused(models):
    model = load_model(models["minegan"], "cpu")
    dwi = np.ones((28, 28, 2, 5), np.float32)
    with pytest.raises(ConfigError, match=r"b in \[0, 1000\].*not 1500"):
        synthesize_volume(model, dwi, BASE_B, "T0", [1500])
    stage1 = load_model(models["stage1"], "cpu")
    with pytest.raises(ConfigError, match="MineGAN model"):
        synthesize_volume(stage1, dwi, BASE_B, "T0", [850])


def test_minegan_records_its_b_range_trained_b_and_embedded_stage1(models):
    record = torch.load(models["minegan"], weights_only=True)
    assert record["b_conditioned"] and record["b_range"] == [0.0, 1000.0]
    assert record["trained_b"] == [0.0, 100.0, 400.0, 800.0, 1000.0]
    assert record["synthesize_b"] == [75.0, 400.0, 800.0, 850.0, 1000.0]
    assert any(k.startswith("stage1.") for k in record["state_dict"])
    # the stack mixes inputs and stage-1 images, so both are on stage 1's intensity scale
    stage1 = torch.load(models["stage1"], weights_only=True)
    few = torch.load(models["mineganfewshot"], weights_only=True)
    assert record["intensity_max"] == stage1["intensity_max"] == few["intensity_max"]


def test_a_stage1_retrained_to_other_weights_under_the_same_settings_retrains_minegan(models, tmp_path, capsys):
    """A GPU retrain of DC²Anet with unchanged settings gives other weights under the same fingerprint:
    MineGAN must not resume on (and re-export) the stage 1 it embedded before."""
    import shutil

    out = shutil.copytree(models["root"] / "minegan", tmp_path / "minegan")
    stage1 = torch.load(models["stage1"], weights_only=True)
    stage1["state_dict"] = {k: v + 0.01 if v.is_floating_point() else v for k, v in stage1["state_dict"].items()}
    torch.save(stage1, tmp_path / "stage1.pt")
    assert stage1["fingerprint"] == torch.load(models["stage1"], weights_only=True)["fingerprint"]
    capsys.readouterr()
    retrained = train_model("minegan", "abdomen", models["shards"], out, MINEGAN,
                            upstream={"stage1": tmp_path / "stage1.pt"}, **models["common"])
    err = capsys.readouterr().err
    assert "training from scratch" in err and "meta.upstream_weights.stage1" in err and "resumed" not in err
    embedded = torch.load(retrained, weights_only=True)["state_dict"]
    name = next(k for k in stage1["state_dict"] if stage1["state_dict"][k].is_floating_point())
    assert torch.equal(embedded[f"stage1.{name}"], stage1["state_dict"][name])


KILL_RUNNER = """
import sys
sys.path.insert(0, {tests!r})
from test_minegan import resume_trainer
resume_trainer({shards!r}, {stage1!r}, {out!r}).fit()
"""


def resume_trainer(shards, stage1, out):
    """A MineGAN trainer with a long mining phase (B), checkpointing often."""
    from dwisynth.networks.base import build_network
    from dwisynth.training import TrainerConfig

    block = {**MINEGAN, "pretrain_steps": 4, "mine_steps": 300, "finetune_steps": 4}
    torch.set_num_threads(1)
    data = SliceDataset(shards, BVALUES["inputs"], [0.0, 100.0, 400.0, 800.0, 1000.0, 75.0, 850.0], HELDOUT_B)
    model = build_network("minegan", block, 2, 7, 5)
    model.prepare({"stage1": load_model(stage1, "cpu").record}, BVALUES, 5)
    config = TrainerConfig(steps=model.training_steps(), batch_size=4, crop=24, checkpoint_every=8, seed=5,
                           device="cpu", progress=False, validation_subjects=0)
    return Trainer(model, data, config, Path(out), {"method": "minegan"})


def test_kill_in_the_mining_phase_resumes_to_the_uninterrupted_weights(models, tmp_path):
    out = tmp_path / "killed"
    shards = [str(s) for s in models["shards"]]
    runner = KILL_RUNNER.format(tests=str(Path(__file__).parent), shards=shards, stage1=str(models["stage1"]),
                                out=str(out))
    proc = subprocess.Popen([sys.executable, "-c", runner], env={**os.environ, "OMP_NUM_THREADS": "1"})
    deadline = time.time() + 120
    while time.time() < deadline and proc.poll() is None:
        if (out / "checkpoint.pt").exists():
            try:
                step = torch.load(out / "checkpoint.pt", weights_only=False)["step"]
            except Exception:  # mid-replace
                continue
            if step >= 16:  # well inside phase B (steps 4..303)
                break
        time.sleep(0.1)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    killed_at = torch.load(out / "checkpoint.pt", weights_only=False)["step"]
    assert 4 < killed_at < 304 and not (out / "model.pt").exists()

    resumed = resume_trainer(shards, models["stage1"], out)
    assert resumed.try_resume() and resumed.model.phase(resumed.step) == "mine"
    resumed = resume_trainer(shards, models["stage1"], out)
    resumed.fit()
    straight = resume_trainer(shards, models["stage1"], tmp_path / "straight")
    straight.fit()
    for key, value in straight.model.state_dict().items():
        assert torch.equal(value, resumed.model.state_dict()[key]), key


def test_loglinear_interpolation_is_exact_for_a_mono_exponential_and_copies_held_b():
    from dwisynth.diffusion import loglinear_interpolation

    b = np.array([0.0, 100.0, 400.0, 1000.0])
    adc = np.array([0.8, 2.0])[:, None] * 1e-3
    signal = np.exp(-b[None] * adc)  # two voxels
    out = loglinear_interpolation(signal, b, [75.0, 850.0, 400.0, 1200.0])
    np.testing.assert_allclose(out, np.exp(-np.array([75.0, 850.0, 400.0, 1200.0])[None] * adc), rtol=1e-6)
    # a bi-exponential (IVIM) is read between neighbours, not along one line from b 0
    ivim = 0.8 * np.exp(-b * 1e-3) + 0.2 * np.exp(-b * 20e-3)
    between = loglinear_interpolation(ivim, b, [850.0])[0]
    truth = 0.8 * np.exp(-0.85) + 0.2 * np.exp(-17)
    assert abs(between - truth) / truth < 0.02


def test_b_code_is_continuous_and_the_miner_starts_at_the_pretrained_conditioning():
    from dwisynth.networks.blocks import FiLMCode, fourier_features

    codes = fourier_features(torch.tensor([800.0, 850.0, 900.0, 75.0]), 6)
    assert torch.dist(codes[0], codes[1]) < torch.dist(codes[0], codes[3])
    miner = FiLMCode(codes.shape[1] + 4, 16, 2, 8)
    assert torch.count_nonzero(miner(torch.cat([codes, torch.randn(4, 4)], 1))) == 0


def test_cli_synthesizes_held_out_b_and_refuses_a_b_out_of_range_before_writing(models, tmp_path):
    from dwisynth.cli import main

    stem = models["root"] / "sub-T0"
    config = tmp_path / "config.yaml"
    config.write_text("bvalues: {inputs: [0, 100], targets: [400, 800, 1000], heldout: [75, 850]}\ndevice: cpu\n")
    common = [str(models["minegan"]), f"{stem}_dwi.nii.gz", "--bval", f"{stem}_dwi.bval", "--normalized",
              "--mask", f"{stem}_mask.nii.gz", "--subject", "T0", "--config", str(config)]
    assert main(["synthesize", *common, "--b", "1500", "-o", str(tmp_path / "bad")]) == 2
    assert not (tmp_path / "bad").exists()
    assert main(["synthesize", *common, "--b", "75", "850", "-o", str(tmp_path / "out")]) == 0
    out = tmp_path / "out" / "sub-T0_desc-minegan_dwi.bval"
    assert np.loadtxt(out).tolist() == [75.0, 850.0]  # what was asked for, not the inputs again


def test_a_fresh_generator_returns_the_log_linear_reading_of_the_stack(models):
    from dwisynth.networks.minegan import BValueSynthesizer, loglinear_reading

    record = load_model(models["minegan"], "cpu").record
    fresh = BValueSynthesizer(**record["kwargs"])
    x = torch.rand(2, 2, 24, 24) * 1.6 - 0.8
    stack = fresh.stack(x)
    b = torch.tensor([75.0, 850.0])
    out = fresh.generate(stack, b)
    u = (stack + 1) / 2  # sqrt(S / imax): log-linear in S is log-linear in u
    stack_b = record["kwargs"]["stack_b"]
    expect_75 = torch.exp(0.25 * torch.log(u[0, stack_b.index(0.0)]) + 0.75 * torch.log(u[0, stack_b.index(100.0)]))
    torch.testing.assert_close(out[0, 0], torch.clamp(2 * expect_75 - 1, -1, 1), atol=1e-5, rtol=1e-5)
    # at a b the stack holds, that channel is blanked and the reading comes from its neighbours
    available = torch.ones(1, len(stack_b), dtype=torch.bool)
    available[0, stack_b.index(400.0)] = False
    reading = loglinear_reading(stack[:1], torch.tensor(stack_b), torch.tensor([400.0]), available)
    w = (400.0 - 100.0) / (800.0 - 100.0)
    expect = torch.exp((1 - w) * torch.log(u[0, stack_b.index(100.0)]) + w * torch.log(u[0, stack_b.index(800.0)]))
    torch.testing.assert_close(reading[0, 0], torch.clamp(2 * expect - 1, -1, 1), atol=1e-5, rtol=1e-5)


def test_log_linear_reading_picks_neighbours_per_sample_and_extrapolates_beyond_the_ends():
    from dwisynth.networks.minegan import loglinear_reading

    stack_b = torch.tensor([0.0, 100.0, 400.0, 1000.0])
    s = torch.tensor([1.0, 0.8, 0.5, 0.2])  # S/S0 per channel, one value per image
    stack = (2 * torch.sqrt(s) - 1)[None, :, None, None].expand(4, -1, 2, 2).clone()
    available = torch.ones(4, 4, dtype=torch.bool)
    available[1, 1] = False  # b 100 blanked: read between 0 and 400
    b = torch.tensor([75.0, 100.0, 1200.0, 0.0])
    available[3, 0] = False  # b 0 blanked: extrapolated back from 100 and 400
    out = ((loglinear_reading(stack, stack_b, b, available)[:, 0, 0, 0] + 1) / 2) ** 2
    log_s = torch.log(s)
    expected = torch.exp(torch.stack([0.25 * log_s[0] + 0.75 * log_s[1], 0.75 * log_s[0] + 0.25 * log_s[2],
                                      -1 / 3 * log_s[2] + 4 / 3 * log_s[3], 4 / 3 * log_s[1] - 1 / 3 * log_s[2]]))
    torch.testing.assert_close(out, torch.clamp(expected, max=1.0), atol=1e-5, rtol=1e-4)


def test_node_correction_is_the_free_correction_times_its_factor(models):
    """correction: node scales the generator's correction by s + (1 - s)(b - b_lower)(b_upper - b) / 250², s the
    reading's share from stage-1 channels: at b 75 between the acquired 0 and 100 0.03 of the free one, at
    850 between stage-1's 800 and 1000 all of it, at 250 between the acquired 100 and stage-1's 400 half of
    it plus half of 0.36."""
    from dwisynth.networks.minegan import BValueSynthesizer, node_factor

    kwargs = load_model(models["minegan"], "cpu").record["kwargs"]
    assert kwargs["correction"] == "node" and kwargs["n_acquired"] == 2
    torch.manual_seed(0)
    free = BValueSynthesizer(**{**kwargs, "correction": "free"})
    torch.nn.init.normal_(free.G.up[-2].weight, std=1e-3)  # a fresh generator returns the reading: make it correct
    node = BValueSynthesizer(**kwargs)
    node.load_state_dict(free.state_dict())
    fresh = BValueSynthesizer(**kwargs)  # its correction is zero: the log-linear reading alone
    stack = free.stack(torch.rand(3, 2, 24, 24) * 0.8 - 0.6)
    b = torch.tensor([75.0, 850.0, 250.0])
    everything = torch.ones(3, len(kwargs["stack_b"]), dtype=torch.bool)
    factor = node_factor(torch.tensor(kwargs["stack_b"]), b, everything, kwargs["n_acquired"])
    torch.testing.assert_close(factor, torch.tensor([75.0 * 25 / 250 ** 2, 1.0, 0.5 + 0.5 * 150 * 150 / 250 ** 2]))
    reading = fresh.generate(stack, b)
    correction_free, correction_node = free.generate(stack, b) - reading, node.generate(stack, b) - reading
    assert correction_free.abs().mean() > 1e-4
    torch.testing.assert_close(correction_node, correction_free * factor[:, None, None, None], atol=1e-6, rtol=1e-4)


def test_a_leaky_generator_pushed_negative_everywhere_still_learns_and_a_relu_one_does_not():
    # the 10x abdomen run's ReLU generator died after a loss spike: every last-layer unit zero, no gradient back
    from dwisynth.networks.blocks import FiLMResnetGenerator

    x, film = torch.randn(2, 3, 16, 16), torch.zeros(2, 2, 2, 32)
    grads = {}
    for activation in ("relu", "leaky"):
        torch.manual_seed(0)
        g = FiLMResnetGenerator(3, 1, ngf=8, n_blocks=2, activation=activation)
        upsample_conv = [m for m in g.up if isinstance(m, torch.nn.Sequential)][-1][-1]
        torch.nn.init.constant_(upsample_conv.bias, -50.0)  # what one bad Adam step can do to a layer
        g(x, film).sum().backward()
        grads[activation] = sum(p.grad.abs().sum().item() for p in g.down.parameters())
    assert grads["relu"] == 0.0 and grads["leaky"] > 1e-3, grads


def test_a_minegan_file_written_before_the_activation_option_loads_with_relu(models):
    from dwisynth.networks.minegan import BValueSynthesizer

    record = torch.load(models["minegan"], weights_only=True)
    assert record["kwargs"]["activation"] == "leaky"
    old = {k: v for k, v in record["kwargs"].items() if k != "activation"}
    relus = [m for m in BValueSynthesizer(**old).G.modules() if isinstance(m, torch.nn.ReLU)]
    assert relus and not [m for m in BValueSynthesizer(**old).G.modules() if isinstance(m, torch.nn.LeakyReLU)]


def test_the_bridge_draws_b_between_acquired_stage1_neighbours_and_labels_it_with_their_reading():
    from dwisynth.networks.minegan import draw_bridges

    image_b = torch.tensor([0.0, 75.0, 100.0, 400.0, 800.0, 850.0, 1000.0])
    bridgeable = torch.tensor([False, False, False, True, True, False, True])  # the trained stage-1 targets
    adc = torch.tensor([0.8e-3, 1.5e-3, 2.5e-3, 1.0e-3])  # one mono-exponential per sample
    images = (2 * torch.exp(-image_b[None] * adc[:, None] / 2) - 1)[:, :, None, None].expand(-1, -1, 3, 3).clone()
    present = torch.ones(4, 7, dtype=torch.bool)
    present[1, 4] = False  # no 800: 400-1000 is one pair
    present[2, 3:] = False  # no stage-1 target: only the inputs, dropped
    present[3, [4, 6]] = False  # 400 alone: no pair, dropped
    seen = {0: set(), 1: set()}
    for step in range(80):
        rows, b, reading = draw_bridges(images, present, image_b, bridgeable, torch.Generator().manual_seed(step))
        assert rows.tolist() == [0, 1]
        assert (b >= 400).all()  # never from the inputs, where perfusion bends the curve
        s = ((reading[:, 0, 0, 0] + 1) / 2) ** 2  # back to S/S0
        torch.testing.assert_close(s, torch.exp(-b * adc[rows]), rtol=1e-4, atol=1e-6)
        for i, value in enumerate(b.tolist()):
            seen[i].add(next(k for k, edge in enumerate((800, 1000)) if value < edge))
    assert seen == {0: {0, 1}, 1: {0, 1}}


def test_validation_scores_the_held_out_b_against_its_acquired_neighbours_and_exports_on_every_b(models, tmp_path):
    """850 (between stage-1 targets 800 and 1000) is scored without an image at 850; 75 (between the acquired
    inputs) is not; the exported step is the one with the best mean of all scored b."""
    out = tmp_path / "bridged"
    train_model("minegan", "abdomen", models["shards"], out, MINEGAN, upstream={"stage1": models["stage1"]},
                **models["common"])
    log = pd.read_csv(out / "training_log.csv").dropna(subset=["val_psnr"])
    assert "val_bridged_psnr_b850" in log and "val_bridged_psnr_b75" not in log and "val_psnr_b850" not in log
    trained = [c for c in log if c.startswith("val_psnr_b")]
    expected = log[trained + ["val_bridged_psnr_b850"]].mean(axis=1)
    np.testing.assert_allclose(log["val_score"], expected, atol=2e-3)
    record = torch.load(out / "model.pt", weights_only=True)
    best = log.loc[log["val_score"].idxmax()]
    assert record["selected_step"] == best["step"]
    assert record["validation_score"] == pytest.approx(best["val_score"], abs=1e-3)
    # the reference is the reading of the subject's own 800 and 1000: exact on a mono-exponential
    model = prepared_minegan(models)
    target_b = model.target_b
    # bridges end only on the trained stage-1 targets: not the acquired inputs, not the held-out b
    assert [b for b, ok in zip(target_b, model.bridge_channels(target_b).tolist()) if ok] == [400.0, 800.0, 1000.0]
    s = torch.exp(-torch.tensor(target_b) * 1.2e-3)
    targets = (2 * torch.sqrt(s) - 1)[None, :, None, None].expand(3, -1, 2, 2).clone()
    present = torch.ones(3, len(target_b), dtype=torch.bool)
    present[:, target_b.index(75.0)] = present[:, target_b.index(850.0)] = False
    present[1, target_b.index(1000.0)] = False  # nothing above 850: no reference
    present[2, target_b.index(850.0)] = True  # acquired at 850: scored on its image, not bridged
    references = model.bridged_references(targets, present, target_b)
    assert list(references) == [850.0]
    rows, reference = references[850.0]
    assert rows.tolist() == [0]
    torch.testing.assert_close(((reference[0, 0] + 1) / 2) ** 2, torch.full((2, 2), float(np.exp(-0.85 * 1.2))),
                               rtol=1e-4, atol=1e-6)


def prepared_minegan(models):
    from dwisynth.networks.base import build_network

    model = build_network("minegan", MINEGAN, 2, 7, 5)
    model.prepare({"stage1": load_model(models["stage1"], "cpu").record}, BVALUES, 5)
    return model


def test_training_lesion_weight_adds_the_lesion_term_at_the_b_each_item_is_trained_on(models, tmp_path):
    """MineGAN trains one b per item; the lesion term follows the items it keeps (batch.lesion[sample])."""
    from dwisynth.training import Batch, TrainerConfig

    data = SliceDataset([str(s) for s in models["shards"]], BVALUES["inputs"],
                        [0.0, 100.0, 400.0, 800.0, 1000.0, 75.0, 850.0], HELDOUT_B)
    inputs, targets, present, mask = (torch.stack(x) for x in zip(*(data[i] for i in range(4))))
    batch = Batch(inputs / 1.5 - 1, targets / 1.5 - 1, present, mask,
                  lesion=torch.zeros(4, *inputs.shape[2:], dtype=torch.bool))
    batch.lesion[:, 8:12, 8:12] = True
    totals = {}
    for weight in (0.0, 0.2):
        model = prepared_minegan(models)
        config = TrainerConfig(steps=model.training_steps(), batch_size=4, crop=24, seed=5, device="cpu",
                               progress=False, validation_subjects=0, lesion_weight=weight)
        trainer = Trainer(model, data, config, tmp_path / str(weight), {"method": "minegan"})
        totals[weight] = model.training_step(batch, trainer.optimizers, torch.Generator().manual_seed(3), 0)
    voxel = model.voxel_l1_weight()
    assert "lesion_l1" not in totals[0.0] and totals[0.2]["lesion_l1"] > 0
    assert totals[0.2]["g_total"] == pytest.approx(totals[0.0]["g_total"] + 0.2 * voxel * totals[0.2]["lesion_l1"],
                                                   rel=1e-5)


def _toy_subject(root: Path, subject: str, seed: int, heldout_factor: float | None):
    """A uniform mono-exponential body (ADC 1); with heldout_factor, also acquired at b 850 with that factor on
    its signal: a b where the zero-shot answer (the interpolation of 800 and 1000) is wrong."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[:28, :28]
    body = (yy - 14) ** 2 / 11**2 + (xx - 14) ** 2 / 10**2 < 1
    bvals = sorted(BASE_B + ([850.0] if heldout_factor else []))
    clean = ivim_signal(np.where(body, 1.0, 0.0)[..., None].repeat(5, 2), 1.0, bvals)
    if heldout_factor:
        clean[..., bvals.index(850.0)] *= heldout_factor
    dwi = np.abs(clean + rng.normal(0, 0.02, clean.shape)).astype(np.float32)
    stem, affine = root / f"sub-{subject}", np.diag([2.0, 2.0, 4.0, 1.0])
    save_nifti(dwi, affine, f"{stem}_dwi.nii.gz")
    write_bval(bvals, f"{stem}_dwi.bval")
    save_nifti(np.repeat(body[..., None], 5, 2).astype(np.uint8), affine, f"{stem}_mask.nii.gz", dtype=np.uint8)
    shard = root / f"sub-{subject}_slices.npz"
    write_slice_shard(f"{stem}_dwi.nii.gz", f"{stem}_dwi.bval", f"{stem}_mask.nii.gz", shard, BASE_B + [850.0],
                      {"cohort": "c", "subject": subject})
    return shard, dwi, bvals, body


def test_few_shot_mining_moves_a_wrong_zero_shot_answer_toward_the_shots(tmp_path):
    """The miner must mine: k acquired slices at a held-out b whose zero-shot answer is wrong (850 acquired at 0.89
    of the interpolation, still between 800 and 1000, so a monotone answer can reach it) move the output there,
    on a test subject none of the shots came from."""
    factor = 0.89
    shards = [_toy_subject(tmp_path, f"P{i}", i, factor if i in (1, 2) else None)[0] for i in range(5)]
    _, dwi, bvals, body = _toy_subject(tmp_path, "T0", 50, factor)
    bvalues = {**BVALUES, "heldout": [850.0]}
    training = {**TRAINING, "batch_size": 8, "validation_subjects": 0, "checkpoint_every": 1000}
    common = dict(training=training, bvalues=bvalues, seed=5, device="cpu", progress=False)
    stage1 = train_model("dc2anet", "abdomen", shards, tmp_path / "s1", {**STAGE1, "steps": 100, "lr": 2e-3},
                         **common)
    block = {**MINEGAN, "pretrain_steps": 100, "mine_steps": 0, "finetune_steps": 0,
             "fewshot": {"k": 4, "mine_steps": 150, "finetune_steps": 0}}
    zero = train_model("minegan", "abdomen", shards, tmp_path / "z", block, upstream={"stage1": stage1}, **common)
    few = train_model("mineganfewshot", "abdomen", shards, tmp_path / "f", block, upstream={"zeroshot": zero},
                      **common)
    inputs = dwi[..., [bvals.index(b) for b in BASE_B]]
    shots = float(dwi[..., bvals.index(850.0)][body].mean())
    zero_850, few_850 = (float(synthesize_volume(load_model(m, "cpu"), inputs, BASE_B, "T0", [850.0])[..., 0][body]
                               .mean()) for m in (zero, few))
    assert zero_850 - shots > 0.02, (zero_850, shots)  # zero-shot: near the interpolation, 0.047 above the shots
    assert abs(few_850 - shots) < 0.5 * abs(zero_850 - shots), (zero_850, few_850, shots)
