"""JMMDA-GAN (CT -> DWI): exact wavelets, config checks, each module trains, and the mask's role."""

import numpy as np
import pytest
import pywt
import torch

from dwisynth.errors import ConfigError
from dwisynth.networks.base import block_schema, build_network, config_from_block
from dwisynth.networks.blocks import WAVELETS, DWT2d, IDWT2d, pad_to_multiple
from dwisynth.networks.jmmda import JMMDAConfig, JMMDAGAN
from dwisynth.training import Batch

TINY = {"ngf": 8, "ndf": 8, "levels": 2, "heads": 2, "lr": 1e-3}


@pytest.fixture(autouse=True)
def one_deterministic_thread():
    threads, deterministic = torch.get_num_threads(), torch.are_deterministic_algorithms_enabled()
    torch.set_num_threads(1)
    torch.use_deterministic_algorithms(True)  # as the trainer on CPU
    yield
    torch.set_num_threads(threads)
    torch.use_deterministic_algorithms(deterministic)


def stroke_batch(n: int = 4, size: int = 32, seed: int = 0, lesion: bool = False) -> Batch:
    """CT in a brain-shaped ellipse, its mask (-1 / +1), and a DWI that is a smooth function of the CT inside
    the mask (-1 outside); with `lesion`, a bright disc in the DWI and its lesion mask."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[:size, :size] / size
    inputs, targets, lesions = [], [], []
    for _ in range(n):
        cy, cx = rng.uniform(0.4, 0.6, 2)
        brain = (yy - cy) ** 2 / 0.38**2 + (xx - cx) ** 2 / 0.3**2 < 1
        ct = np.where(brain, 0.3 * np.sin(6 * yy + rng.uniform(0, 3)) + 0.2 * np.cos(5 * xx), -1.0)
        dwi = np.where(brain, np.tanh(1.5 * ct + 0.2), -1.0)
        disc = ((yy - cy) ** 2 + (xx - cx) ** 2 < 0.1**2) & brain
        if lesion:
            dwi = np.where(disc, 0.9, dwi)
        inputs.append([ct, np.where(brain, 1.0, -1.0)])
        targets.append([dwi])
        lesions.append(disc)
    inputs = torch.tensor(np.array(inputs), dtype=torch.float32)
    return Batch(inputs, torch.tensor(np.array(targets), dtype=torch.float32), torch.ones(n, 1, dtype=torch.bool),
                 inputs[:, 1] > 0, torch.tensor(np.array(lesions)) if lesion else None)


def adam_like_the_trainer(model):
    c = model.config
    return {name: torch.optim.Adam(params, lr=c.lr, betas=tuple(c.betas))
            for name, params in model.parameter_groups().items()}


@pytest.mark.parametrize("wavelet", WAVELETS)
def test_dwt_then_idwt_returns_the_input_and_matches_pywavelets(wavelet):
    x = torch.randn(2, 3, 16, 20, generator=torch.Generator().manual_seed(1))
    ll, high = DWT2d(wavelet)(x)
    assert ll.shape == (2, 3, 8, 10) and high.shape == (2, 9, 8, 10)
    torch.testing.assert_close(IDWT2d(wavelet)(ll, high), x, atol=1e-5, rtol=0)
    approximation, details = pywt.dwt2(x.double().numpy(), wavelet, mode="periodization")
    np.testing.assert_allclose(ll.numpy(), approximation, atol=1e-5)
    for ours, theirs in zip(high.chunk(3, 1), details):  # horizontal, vertical, diagonal
        np.testing.assert_allclose(ours.numpy(), theirs, atol=1e-5)


def test_haar_of_a_constant_is_twice_the_constant_without_detail():
    ll, high = DWT2d("haar")(torch.full((1, 2, 8, 8), 0.7))
    torch.testing.assert_close(ll, torch.full_like(ll, 1.4))  # orthonormal: 4 samples x 1/2
    assert high.abs().max() < 1e-7


def test_dwt_refuses_an_unknown_wavelet_and_odd_sizes():
    with pytest.raises(ValueError, match="haar"):
        DWT2d("db4")
    with pytest.raises(ValueError, match="even"):
        DWT2d("haar")(torch.zeros(1, 1, 8, 7))


def test_heads_not_dividing_ngf_is_refused_naming_the_key_and_valid_values():
    with pytest.raises(ConfigError, match=r"jmmdagan\.heads = 3.*16, 32, 64.*1, 2, 4, 8, 16"):
        config_from_block(JMMDAConfig, {"ngf": 16, "heads": 3}, "jmmdagan")
    schema = block_schema(JMMDAConfig)["properties"]
    assert schema["wavelet"]["enum"] == list(WAVELETS) and schema["wavelet"]["default"] == "haar"
    assert schema["levels"]["maximum"] == 4 and "lesion" not in schema["weights"]["properties"]  # a training setting


def _l1_before_and_after_training(block: dict, seed: int, steps: int = 40) -> tuple[float, float]:
    model = build_network("jmmdagan", block, 2, 1, seed=seed)
    optimizers = adam_like_the_trainer(model)
    batch = stroke_batch(seed=seed)

    def l1():
        with torch.no_grad():
            return float((model.inference_network()(batch.inputs) - batch.targets).abs().mean())

    before = l1()
    model.train()
    for step in range(steps):
        losses = model.training_step(batch, optimizers, torch.Generator().manual_seed(step), step)
        assert all(np.isfinite(v) for v in losses.values()), losses
    return before, l1()


@pytest.mark.parametrize("switch", [None, "mask_fusion", "dwt", "edge_attention", "adaptive_fusion"])
def test_every_module_switched_off_still_trains(switch):
    block = {**TINY, **({switch: False} if switch else {})}
    for seed in (0, 1):
        before, after = _l1_before_and_after_training(block, seed)
        # an all-background image (-1) is where an unnormalized tanh generator can get stuck: beat it well
        background = float((stroke_batch(seed=seed).targets + 1).abs().mean())
        assert after < 0.6 * before and after < 0.5 * background, (switch, seed, before, after, background)


def test_without_mask_fusion_neither_generator_nor_discriminator_sees_the_mask():
    batch = stroke_batch()
    flipped = batch.inputs.clone()
    flipped[:, 1] = -flipped[:, 1]
    for mask_fusion in (False, True):
        model = build_network("jmmdagan", {**TINY, "mask_fusion": mask_fusion}, 2, 1, seed=0)
        with torch.no_grad():
            change = (model.G(batch.inputs) - model.G(flipped)).abs().max()
        assert (change == 0) if not mask_fusion else (change > 1e-4), (mask_fusion, change)
        # the discriminator's first conv: CT (+ mask) + DWI channels
        first_conv = next(m for m in model.D.modules() if isinstance(m, torch.nn.Conv2d))
        assert first_conv.in_channels == (3 if mask_fusion else 2)
        # a training step trains on either input, and without mask fusion the mask changes no loss
        losses = [model_losses(mask_fusion, inputs) for inputs in (batch.inputs, flipped)]
        assert (losses[0] == losses[1]) if not mask_fusion else (losses[0] != losses[1]), (mask_fusion, losses)


def model_losses(mask_fusion: bool, inputs: torch.Tensor) -> dict:
    model = build_network("jmmdagan", {**TINY, "mask_fusion": mask_fusion}, 2, 1, seed=0)
    batch = stroke_batch()
    batch = Batch(inputs, batch.targets, batch.present, batch.mask, batch.lesion)
    return model.training_step(batch, adam_like_the_trainer(model), torch.Generator().manual_seed(0), 0)


ABLATION_MODULES = {  # each ablation switch -> the only parameters (name patterns) it may add, drop or reshape
    "mask_fusion": [r"G\.stem\.(mask_stem|fuse|gate)\.", r"^D\.net\.initial_conv\.conv\.weight$"],
    "dwt": [r"G\.encoder\.\d+\.split\.", r"G\.decoder\.\d+\.idwt\."],
    "edge_attention": [r"G\.encoder\.\d+\.edge_attention\."],
    "adaptive_fusion": [r"G\.(encoder|decoder)\.\d+\.fusion\.(local|logits)"],
}


@pytest.mark.parametrize("switch", list(ABLATION_MODULES))
def test_each_ablation_differs_from_the_full_model_in_exactly_its_own_module(switch):
    import re

    def shapes(block):
        model = build_network("jmmdagan", block, 2, 1, seed=0)
        return {name: tuple(p.shape) for name, p in model.named_parameters()}, model

    (full, full_model), (ablated, ablated_model) = shapes(TINY), shapes({**TINY, switch: False})
    changed = {n for n in full.keys() | ablated.keys() if full.get(n) != ablated.get(n)}
    assert changed, switch  # the switch removes something
    own = [re.compile(p) for p in ABLATION_MODULES[switch]]
    assert all(any(p.search(n) for p in own) for n in changed), (switch, sorted(changed))
    # and nothing else changed kind: the same module classes everywhere outside the ablated module
    kinds = lambda m: {n: type(x).__name__ for n, x in m.named_modules()}  # noqa: E731
    full_kinds, ablated_kinds = kinds(full_model), kinds(ablated_model)
    other = {n for n in full_kinds.keys() | ablated_kinds.keys()
             if full_kinds.get(n) != ablated_kinds.get(n) and not any(p.search(n + ".") for p in own)}
    assert not other, (switch, sorted(other))


def test_output_covers_a_padded_slice_in_the_tanh_range():
    model = build_network("jmmdagan", {"ngf": 8, "ndf": 8, "levels": 3, "heads": 2}, 2, 1, seed=0)
    spec = model.inference_spec()
    assert spec["pad_multiple"] == 8
    network = JMMDAGAN.build_inference_network(**spec["kwargs"])
    network.load_state_dict(model.inference_network().state_dict())
    x, (h, w) = pad_to_multiple(torch.rand(2, 2, 64, 76) * 2 - 1, spec["pad_multiple"], -1.0)
    assert x.shape[-2:] == (64, 80)
    with torch.no_grad():
        out = network(x)
    assert out.shape == (2, 1, 64, 80) and out.abs().max() <= 1
    with pytest.raises(ValueError, match="multiples of 8"):
        network(torch.zeros(1, 2, 64, 76))


def test_lesion_weight_adds_a_positive_lesion_term_only_when_masks_exist():
    model = build_network("jmmdagan", TINY, 2, 1, seed=0)
    model.lesion_weight = 0.05  # training.lesion_weight, which the trainer sets on every network alike
    optimizers = adam_like_the_trainer(model)
    losses = model.training_step(stroke_batch(lesion=True), optimizers, torch.Generator(), 0)
    assert losses["lesion_l1"] > 0
    assert "lesion_l1" not in model.training_step(stroke_batch(), optimizers, torch.Generator(), 1)


def test_the_lesion_weight_weighs_the_lesion_against_each_networks_own_voxel_l1():
    """One guidance setting for a comparison: JMMDA-GAN and pix2pix weigh their voxel L1 at 100, the L1 U-Net at 1,
    so lesion_weight scales each network's lesion term by its own voxel weight: the same lesion-to-image balance."""
    blocks = {"jmmdagan": TINY, "pix2pix": {"ngf": 8, "ndf": 8, "levels": 3, "lr": 1e-3},
              "unet": {"ngf": 8, "levels": 3, "lr": 1e-3}}
    expected_voxel = {"jmmdagan": 100.0, "pix2pix": 100.0, "unet": 1.0}
    batch = stroke_batch(lesion=True)
    for method, block in blocks.items():
        totals = {}
        for weight in (0.0, 0.5):
            model = build_network(method, block, 2, 1, seed=0)
            model.lesion_weight = weight
            losses = model.training_step(batch, adam_like_the_trainer(model), torch.Generator().manual_seed(0), 0)
            totals[weight] = (losses["g_total"], losses.get("lesion_l1"))
        assert model.voxel_l1_weight() == expected_voxel[method]
        (base, _), (guided, lesion) = totals[0.0], totals[0.5]
        assert lesion > 0 and guided == pytest.approx(base + 0.5 * expected_voxel[method] * lesion, rel=1e-5), method
