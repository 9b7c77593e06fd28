import numpy as np
import pytest

from dwisynth.diffusion import (adc_fit_bvalues, fit_adc, fit_mono_exponential, ivim_signal, kurtosis_decay,
                                noise_sigma_background, noise_sigma_repeats, trace_average)


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


def test_adc_of_an_anisotropic_tensor_on_30_directions_is_the_mean_diffusivity():
    n = 30  # directions on a Fibonacci sphere, the tensor in a random orientation
    i = np.arange(n) + 0.5
    z, phi = 1 - 2 * i / n, np.pi * (1 + 5**0.5) * i
    g = np.stack([np.sqrt(1 - z * z) * np.cos(phi), np.sqrt(1 - z * z) * np.sin(phi), z], 1)
    rotation = np.linalg.qr(np.random.default_rng(0).normal(size=(3, 3)))[0]
    tensor = rotation @ np.diag([1.7, 0.4, 0.3]) @ rotation.T  # x10^-3 mm²/s, white-matter-like
    bvals = np.r_[0.0, np.full(n, 1000.0)]
    signal = np.r_[1.0, np.exp(-1000 * 1e-3 * np.einsum("ni,ij,nj->n", g, tensor, g))]
    trace, b = trace_average(signal[None], bvals)
    assert fit_adc(trace, b)[0] == pytest.approx(np.trace(tensor) / 3, rel=0.01)
    # the arithmetic mean of the directions (the old averaging) reads about 9% low
    assert fit_adc(np.r_[1.0, signal[1:].mean()][None], [0, 1000])[0] < 0.93 * np.trace(tensor) / 3


def test_weights_from_the_predicted_signal_beat_weights_from_the_observed_signal_at_low_snr():
    rng = np.random.default_rng(1)
    bvals = np.array([0, 100, 400, 600, 800, 1000.0])
    clean = ivim_signal(np.full(20000, 100.0), 1.3, bvals)
    noisy = clean + rng.normal(0, 6, clean.shape)
    _, reweighted = fit_mono_exponential(noisy, bvals)
    # the observed-S² weighting, written out: it favours exactly the samples noise pushed up
    y, w = np.log(np.clip(noisy, 1e-6, None)), np.clip(noisy, 1e-6, None) ** 2
    sw, sb, sbb = w.sum(-1), (w * bvals).sum(-1), (w * bvals**2).sum(-1)
    slope = (sw * (w * bvals * y).sum(-1) - sb * (w * y).sum(-1)) / (sw * sbb - sb**2)
    observed = -slope / 1e-3
    assert abs(np.median(reweighted) - 1.3) < 0.5 * abs(np.median(observed) - 1.3)


def test_compared_adc_maps_use_the_b_values_all_of_them_hold():
    allowed = [0, 100, 400, 600, 800, 1000]
    acquired = [0, 75, 100, 600, 850, 1000]  # a held-out subject: 75 and 850 are in no method's images
    synthetic = [0, 100, 400, 600, 800, 1000]
    assert adc_fit_bvalues(allowed, acquired) == [0, 100, 600, 1000]
    assert adc_fit_bvalues(allowed, synthetic, acquired) == [0, 100, 600, 1000]
    with pytest.raises(ValueError, match=r"two distinct b-values among \[1000.0\]"):
        fit_adc(np.ones((2, 2)), [0, 1000], use_b=[1000])


def _rician(clean, sigma, rng):
    return np.abs(clean + rng.normal(0, sigma, clean.shape) + 1j * rng.normal(0, sigma, clean.shape))


def test_the_log_bias_of_a_rician_magnitude_matches_its_closed_form():
    from scipy.special import exp1

    rng = np.random.default_rng(5)
    for signal in (0.1, 1.0, 2.0):  # in units of sigma
        m = np.abs(signal + rng.normal(0, 1, 1_000_000) + 1j * rng.normal(0, 1, 1_000_000))
        assert np.mean(np.log(m)) - np.log(signal) == pytest.approx(0.5 * exp1(signal**2 / 2), abs=3e-3)


@pytest.mark.parametrize("truth, ivim_f", [(1.0, 0.0), (2.0, 0.0), (2.5, 0.0), (1.0, 0.25)])
def test_noise_floor_fit_at_snr_10_reduces_the_adc_bias_and_never_overcorrects(truth, ivim_f):
    rng = np.random.default_rng(2)
    bvals = np.array([0, 100, 400, 600, 800, 1000.0])
    clean = ivim_signal(np.full(20000, 1.0), truth, bvals, ivim_f, 50.0)
    target = fit_adc(clean[:1], bvals, max_adc=np.inf)[0]  # what a noise-free scan gives (liver: IVIM-inflated)
    noisy = _rician(clean, 0.1, rng)  # SNR 10 at b0
    uncorrected = np.median(fit_adc(noisy, bvals, max_adc=np.inf)) - target
    corrected = np.median(fit_adc(noisy, bvals, max_adc=np.inf, sigma=0.1)) - target
    assert uncorrected < 0 and uncorrected <= corrected <= 0.005  # the floor biases ADC low; no overshoot
    if truth == 2.5:  # b 1000 near the floor (S = 0.8 sigma): the bias drops below a third
        assert abs(corrected) < abs(uncorrected) / 3


def test_noise_floor_fit_leaves_noise_free_volumes_alone():
    bvals = np.array([0, 100, 400, 600, 800, 1000.0])
    clean = ivim_signal(np.full(100, 1.0), 1.5, bvals)
    # per-volume sigma as `noise_floor: background` gives a synthesis with noisy inputs and clean targets
    assert np.allclose(fit_adc(clean, bvals, sigma=[0.1, 0.1, 0, 0, 0, 0]), 1.5, atol=0.02)
    assert np.allclose(fit_adc(clean, bvals, sigma=0.0), 1.5, atol=1e-6)


def test_noise_sigma_from_the_background_and_from_repeats():
    rng = np.random.default_rng(3)
    clean = np.zeros((40, 40, 6))
    clean[10:30, 10:30] = 1.0
    mask = clean > 0
    assert noise_sigma_background(_rician(clean, 0.05, rng), mask) == pytest.approx(0.05, rel=0.05)
    repeats = np.stack([_rician(clean, 0.05, rng) for _ in range(3)], -1)
    assert noise_sigma_repeats(repeats, mask) == pytest.approx(0.05, rel=0.05)
    assert noise_sigma_background(clean, mask) == 0.0  # a noise-free image has no floor to remove


def test_samples_quantized_to_zero_get_no_weight():
    # an integer DICOM at low scale stores faint high-b signal as 0: ln 0 must not drag the fit
    bvals = np.array([0, 100, 400, 600, 800, 1000.0])
    signal = ivim_signal(np.full(50, 1.0), 1.0, bvals)
    signal[:, -2:] = np.where(np.arange(50)[:, None] % 2 == 0, 0.0, signal[:, -2:])
    assert np.allclose(fit_adc(signal, bvals), 1.0, atol=1e-6)


def test_kurtosis_decay_is_the_dki_form_in_range_and_keeps_decaying_beyond():
    d, k = 1.0, 1.0  # b_K = 3 / (2 D K) = 1500 s/mm²
    b = np.arange(0.0, 5001.0, 25.0)
    signal = kurtosis_decay(d, b, k)
    x = b * 1e-3 * d
    inside = b <= 1500
    assert np.allclose(signal[inside], np.exp(-x + x**2 * k / 6)[inside], rtol=1e-12)
    assert np.all(np.diff(signal) < 0)  # the quadratic form rises again from b = 3000
    log_s = np.log(signal)
    slope_before, slope_after = (log_s[60] - log_s[59]) / 25, (log_s[61] - log_s[60]) / 25  # b 1475-1500-1525
    assert abs(slope_after - slope_before) < 1e-5 and abs(slope_after + d * 1e-3 / 2) < 1e-5  # tangent -D/2
    assert np.allclose(kurtosis_decay(0.8, b, 0.0), np.exp(-b * 0.8e-3), rtol=1e-12)  # K = 0: mono-exponential


def test_log_linear_reading_errs_by_the_kurtosis_curvature():
    """Between or beyond b1 and b2 the log-linear reading of exp(-bD + b²D²K/6) errs in ln S by exactly
    -D²K/6 (b - b1)(b - b2) (within b_K): under 0.1% at 850 between 800 and 1000, 11% at 2000 from them (white
    matter, D 0.75, K 1)."""
    d, k = 0.75, 1.0  # b_K = 2000
    b1, b2 = 800.0, 1000.0
    s1, s2 = kurtosis_decay(d, np.array([b1, b2]), k)
    errors = {}
    for b in (850.0, 1500.0, 2000.0):
        reading = np.exp(np.log(s1) + (b - b1) / (b2 - b1) * (np.log(s2) - np.log(s1)))
        errors[b] = np.log(reading) - np.log(kurtosis_decay(d, np.array([b]), k)[0])
        assert np.isclose(errors[b], -(d * 1e-3) ** 2 * k / 6 * (b - b1) * (b - b2), rtol=1e-9)
    assert abs(errors[850.0]) < 1e-3 and errors[2000.0] < -0.1
