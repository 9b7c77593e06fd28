"""Issue 38: MineGAN's any-b output must not rise with b. `generate` blanks a stack channel only at exactly its
b-value, so its output jumps at the stack's b-values; `BValueSynthesizer.synthesize` (inference) is monotone
by construction and keeps the trained outputs where they already fall."""

import numpy as np
import pytest
import torch

from dwisynth.networks.minegan import BValueSynthesizer

STACK_B = [0.0, 100.0, 400.0, 600.0, 800.0, 1000.0]
# S/S0 of one voxel at STACK_B: a steep perfusion drop before 100 is what the old rule mis-read at 100
SIGNAL = [1.0, 0.95, 0.5, 0.4, 0.3, 0.25]


def _fresh():
    torch.manual_seed(0)
    stage1 = {"method": "dc2anet", "kwargs": {"in_channels": 2, "out_channels": 4, "ngf": 4, "n_blocks": 1,
                                               "norm": "none", "upsample": "resize"}}
    # a fresh generator's last layer is zero: its output is the log-linear reading of the stack
    return BValueSynthesizer(stage1, STACK_B, ngf=4, n_residual=1, norm="none", upsample="resize",
                             n_frequencies=2, embed_width=8, z_dim=2, miner_width=8, mined=True,
                             correction="node", n_acquired=2, activation="leaky").eval()


def _stack():
    t = 2 * torch.sqrt(torch.tensor(SIGNAL)) - 1  # network scale with imax = 1
    return t[None, :, None, None].expand(1, -1, 16, 16).contiguous()


def _s(t):  # network scale (..., H, W) -> S/S0 of one voxel
    return float(((t.reshape(-1, *t.shape[-2:])[0, 0, 0] + 1) / 2) ** 2)


@torch.no_grad()
def test_old_rule_rises_at_a_stack_b_value_and_synthesize_does_not():
    net, stack = _fresh(), _stack()
    old = {b: _s(net.generate(stack, torch.tensor([b]))) for b in (100.0, 125.0)}
    # b 100 blanked: read between 0 and 400, 0.5 ** 0.25; b 125: between the acquired 100 and 400
    assert old[100.0] == pytest.approx(0.5 ** 0.25, abs=1e-4)
    assert old[125.0] == pytest.approx(0.95 * (0.5 / 0.95) ** (25 / 300), abs=1e-4)
    assert old[125.0] - old[100.0] > 0.05  # the seam of issue 38: a 6% of S0 rise over 25 s/mm²

    grid = np.arange(0.0, 1000.0 + 1e-6, 5.0)  # finer than the 25 s/mm² lattice: monotone between its points
    new = net.synthesize(stack, grid.tolist(), 1000.0)
    curve = ((new[0, :, 0, 0] + 1) / 2) ** 2
    assert torch.all(curve[1:] <= curve[:-1] + 1e-6)
    assert _s(new[0, grid.tolist().index(125.0)]) <= _s(new[0, grid.tolist().index(100.0)])
    # where the old outputs already fall, the trained b-values keep them
    for b in (600.0, 800.0, 1000.0):
        assert _s(new[0, grid.tolist().index(b)]) == pytest.approx(_s(net.generate(stack, torch.tensor([b]))),
                                                                   abs=1e-5)


@torch.no_grad()
def test_synthesize_gives_a_b_the_same_image_whatever_else_is_requested():
    net, stack = _fresh(), _stack()
    alone = net.synthesize(stack, [850.0], 1000.0)
    among = net.synthesize(stack, [75.0, 850.0, 1000.0], 1000.0)
    torch.testing.assert_close(alone[:, 0], among[:, 1])
    with pytest.raises(ValueError, match="envelope"):
        net.synthesize(stack, [850.0], 1000.0, envelope="median")


@torch.no_grad()
def test_beyond_the_stack_a_fresh_model_extrapolates_log_linearly_and_stays_monotone():
    """Held-out b 1500 and 2000 lie beyond the stack's 1000: the lattice there is coarser (100 s/mm²), the
    output still falls with b, and a fresh model's is the log-linear extrapolation from 800 and 1000 carried by
    the trained answer at 1000 (its offset from the unblanked reading held beyond the last node)."""
    net, stack = _fresh(), _stack()
    grid = np.arange(0.0, 2000.0 + 1e-6, 10.0)
    curve = ((net.synthesize(stack, grid.tolist(), 2000.0)[0, :, 0, 0] + 1) / 2) ** 2
    assert torch.all(curve[1:] <= curve[:-1] + 1e-6)
    trained_1000 = 0.3 * (0.3 / 0.4)  # 1000 blanked: read on from 600 and 800
    assert float(curve[grid.tolist().index(1000.0)]) == pytest.approx(trained_1000, rel=1e-4)
    for b in (1500.0, 2000.0):
        extrapolated = 0.3 * (0.25 / 0.3) ** ((b - 800) / 200)  # network scale: 2 sqrt(S) - 1, offsets add there
        expected = (np.sqrt(extrapolated) + np.sqrt(trained_1000) - np.sqrt(0.25)) ** 2
        assert float(curve[grid.tolist().index(b)]) == pytest.approx(expected, rel=1e-4)
    alone = net.synthesize(stack, [1500.0], 2000.0)
    among = net.synthesize(stack, [75.0, 1500.0, 2000.0], 2000.0)
    torch.testing.assert_close(alone[:, 0], among[:, 1])


@torch.no_grad()
def test_images_up_to_the_stack_do_not_depend_on_how_far_beyond_it_the_model_reads():
    """Issue 41: with b_range up to 2000, an extrapolation that rose lifted every b below it (the running maximum
    from the top); beyond the stack the envelope only falls from the largest stack b."""
    torch.manual_seed(0)
    net, stack = _fresh(), _stack().clone()
    stack[:, -1] = stack[:, -2] + 0.1  # b 1000 brighter than 800: two points extrapolate a rise
    grid = [0.0, 75.0, 400.0, 850.0, 1000.0]
    short = net.synthesize(stack, grid, 1000.0)
    long = net.synthesize(stack, grid + [1500.0, 2000.0], 2000.0)
    torch.testing.assert_close(long[:, : len(grid)], short)
    assert torch.all(long[:, -2:] <= long[:, len(grid) - 1: len(grid)] + 1e-6)


def test_fitted_extrapolation_reads_on_along_the_least_squares_slope_of_the_stage1_channels():
    from dwisynth.diffusion import loglinear_interpolation
    from dwisynth.networks.minegan import loglinear_reading

    b = torch.tensor(STACK_B)
    signal = torch.exp(-b * 1e-3 * 0.9) * (1 + 0.02 * torch.tensor([0, 0, 1, -1, 1, -1.0]))  # zig-zag noise
    t = (2 * torch.sqrt(signal) - 1)[None, :, None, None]
    reading = loglinear_reading(t, b, torch.tensor([2000.0]), torch.ones(1, 6, dtype=torch.bool), fit_above=400.0)
    log_s = torch.log(signal[2:]).double()
    slope = float(((b[2:] - b[2:].mean()) * log_s).sum() / ((b[2:] - b[2:].mean()) ** 2).sum())
    expected = float(signal[-1]) * np.exp(slope * 1000)
    assert float(((reading + 1) / 2) ** 2) == pytest.approx(expected, rel=1e-4)
    baseline = loglinear_interpolation(signal.numpy(), STACK_B, [2000.0], fit_above=400.0)[0]
    assert baseline == pytest.approx(expected, rel=1e-4)  # the baseline reads on the same way
    two_point = loglinear_interpolation(signal.numpy(), STACK_B, [2000.0])[0]
    truth = float(np.exp(-2.0 * 0.9))
    assert abs(expected / truth - 1) < 0.5 * abs(two_point / truth - 1)  # the fit halves the noise's error here
    rising = signal.clone()
    rising[2:] = float(signal[2])  # flat stage-1 images: the slope is capped at 0, never a rise
    flat = loglinear_interpolation(rising.numpy(), STACK_B, [1500.0, 2000.0], fit_above=400.0)
    assert np.allclose(flat, float(signal[2]))
