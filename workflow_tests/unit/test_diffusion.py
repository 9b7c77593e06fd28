import numpy as np
import pytest

from dwisynth.diffusion import fit_mono_exponential, ivim_signal


def test_adc_recovers_truth_on_noise_free_phantom():
    truth = np.full((8, 8), 0.8)  # x10^-3 mm²/s
    bvals = np.array([0, 500, 1000])
    dwi = ivim_signal(1000.0, truth, bvals)
    s0, adc = fit_mono_exponential(dwi, bvals)
    assert np.allclose(adc, 0.8, atol=1e-9)
    assert np.allclose(s0, 1000.0, rtol=1e-9)


def test_two_point_adc_matches_closed_form():
    s = np.array([1200.0, 1200.0 * np.exp(-1000 * 1.5e-3)])
    _, adc = fit_mono_exponential(s, [0, 1000])
    assert adc == pytest.approx(np.log(s[0] / s[1]) / 1000 / 1e-3)


def test_weighting_limits_noise_bias_at_high_b():
    rng = np.random.default_rng(0)
    bvals = np.array([0, 200, 400, 600, 800, 1000])
    clean = ivim_signal(np.full(20000, 100.0), 1.0, bvals)
    noisy = clean + rng.normal(0, 3, clean.shape)
    _, weighted = fit_mono_exponential(noisy, bvals, weighted=True)
    _, plain = fit_mono_exponential(noisy, bvals, weighted=False)
    assert abs(np.median(weighted) - 1.0) < 0.01
    assert np.std(weighted) < np.std(plain)


def test_ivim_perfusion_raises_low_b_signal_by_f():
    s = ivim_signal(1.0, 1.0, [0, 75, 1000], perfusion_fraction=0.2, pseudo_diffusion=50.0)
    mono = ivim_signal(1.0, 1.0, [0, 75, 1000])
    assert s[0] == pytest.approx(1.0)
    assert s[1] < mono[1]  # perfusion signal is gone by b 75 ...
    assert s[2] == pytest.approx(0.8 * mono[2], rel=1e-6)  # ... so high b keeps (1 - f) of the signal


def test_fit_refuses_a_single_b_value():
    with pytest.raises(ValueError, match="two distinct b-values"):
        fit_mono_exponential(np.ones((2, 2)), [0, 0])


def test_mask_zeroes_outside():
    bvals = [0, 1000]
    dwi = ivim_signal(np.full((2, 2), 100.0), 1.0, bvals)
    mask = np.array([[1, 0], [0, 1]], bool)
    _, adc = fit_mono_exponential(dwi, bvals, mask=mask)
    assert adc[0, 1] == 0 and adc[0, 0] == pytest.approx(1.0)
