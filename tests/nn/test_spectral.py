"""One implementation of the iEEG band-power features: the torch Welch log band power
(neurofm.nn.spectral) equals scipy.signal.welch's, the baselines read it, and the fine-tuned
BaRISTA model's read-out reads the same numbers as the decode report's band-power arm."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from scipy import signal

from neurofm import baselines
from neurofm.models.barista import BandPowerReadout
from neurofm.nn import spectral


def _scipy_band_power(x, fs, bands):
    nperseg = int(min(x.shape[-1], max(4, fs // 2)))
    f, p = signal.welch(x, fs=fs, nperseg=nperseg, axis=-1)
    return np.log10(np.stack([p[..., (f >= lo) & (f < hi)].mean(-1) for lo, hi in bands.values()], -1) + 1e-20)


@pytest.mark.parametrize("T, fs", [(128, 256.0), (500, 1000.0), (1536, 512.0), (101, 256.0), (37, 128.0)])
def test_torch_welch_band_power_equals_scipy(T, fs):
    x = np.random.default_rng(T).standard_normal((3, 5, T)) * np.arange(1, 6)[:, None]
    bands = spectral.bands_below_nyquist(fs)
    ref = _scipy_band_power(x, fs, bands)
    ours = spectral.band_power(torch.from_numpy(x), fs, bands).numpy()
    np.testing.assert_allclose(ours, ref, rtol=0, atol=1e-12)
    np.testing.assert_allclose(baselines.band_power(x, fs, bands), ref, rtol=0, atol=1e-12)  # the baselines read it
    assert baselines.BandPowerRidge(fs).bands == bands


def test_bands_below_nyquist_is_the_baselines_rule():
    assert list(spectral.bands_below_nyquist(128.0)) == ["delta", "theta", "alpha", "beta", "gamma"]
    assert spectral.bands_below_nyquist(128.0)["gamma"] == (30.0, 64.0)  # cut at Nyquist
    assert spectral.bands_below_nyquist(2048.0) == spectral.BANDS == baselines.BANDS
    with pytest.raises(ValueError, match="holds no frequency bin"):
        spectral.band_power(torch.zeros(1, 2, 64), 100.0, {"hg": (70.0, 150.0)})


def test_readout_features_are_the_band_power_arms_features():
    """The read-out's features of a batch (padded channels zeroed) are BandPowerRidge.features of
    the same segments, as the decode report computes them, to float64 round-off; its output is
    the linear map of them."""
    fs, C, T = 256.0, 6, 128
    x = torch.randn(4, C, T)
    mask = torch.ones(4, C, dtype=torch.bool)
    mask[1, 4:] = False
    ro = BandPowerReadout(C, fs, spectral.bands_below_nyquist(fs), out_dim=2)
    arm = baselines.BandPowerRidge(fs)
    expect = arm.features((x * mask[..., None]).numpy())
    np.testing.assert_allclose(ro.features(x, mask).numpy(), expect, rtol=0, atol=1e-10)
    assert not ro(x, mask).abs().sum()  # starts at zero: adds nothing until the recipe sets it
    with torch.no_grad():
        ro.out.weight.normal_()
        ro.out.bias.normal_()
    with torch.no_grad():
        out = ro(x, mask).numpy()
    np.testing.assert_allclose(out, expect @ ro.out.weight.detach().double().numpy().T
                               + ro.out.bias.detach().double().numpy(), rtol=1e-6, atol=1e-5)
    with pytest.raises(ValueError, match="fitted on 6 channels, got 5"):
        ro(x[:, :5])
