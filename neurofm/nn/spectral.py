"""Log band power per channel (Welch), the one implementation of the iEEG band-power features.

The decode report's band-power arms (:mod:`neurofm.baselines`: ``band_power``,
``BandPowerRidge``, ``BandPowerLogistic``) and the fine-tuned BaRISTA model's band-power
read-out (:class:`neurofm.models.barista.BandPowerReadout`) both read these features, so that a
model started at the band-power fit predicts what that arm predicts. Torch, so the model
computes them inside its forward pass (any device, differentiable though nothing needs it);
the baselines call it on float64 tensors.

Welch as :func:`scipy.signal.welch` computes it with its defaults (a test compares the two):
segments of ``nperseg`` samples, 50% overlap (the last partial segment dropped), each
segment's mean removed, a periodic Hann window, one-sided density scaling
(``|rfft|^2 / (fs * sum(w^2))``, doubled except at DC and, for even ``nperseg``, Nyquist),
averaged over segments.
"""

from __future__ import annotations

import math
from typing import Mapping

import torch
from torch import Tensor

__all__ = ["BANDS", "bands_below_nyquist", "resolved_bands", "welch_nperseg", "welch_psd", "band_power"]

#: Canonical iEEG bands (Hz), [low, high).
BANDS: dict[str, tuple[float, float]] = {
    "delta": (1.0, 4.0), "theta": (4.0, 8.0), "alpha": (8.0, 13.0), "beta": (13.0, 30.0),
    "gamma": (30.0, 70.0), "high_gamma": (70.0, 150.0),
}


def bands_below_nyquist(sampling_rate: float, bands: Mapping[str, tuple[float, float]] | None = None
                        ) -> dict[str, tuple[float, float]]:
    """The bands a recording at ``sampling_rate`` can measure: those starting more than 2 Hz
    (one Welch bin) below Nyquist, their upper edge cut at Nyquist."""
    nyquist = float(sampling_rate) / 2
    bands = dict(BANDS if bands is None else bands)
    return {k: (float(lo), float(min(hi, nyquist))) for k, (lo, hi) in bands.items() if lo < nyquist - 2.0}


def resolved_bands(sampling_rate: float, n_samples: int,
                   bands: Mapping[str, tuple[float, float]] | None = None) -> dict[str, tuple[float, float]]:
    """The bands (default :data:`BANDS`, in their order) that hold at least one FFT bin of an
    ``n_samples`` window at ``sampling_rate``, with each upper edge cut at Nyquist: the bands
    :func:`band_power` can measure on one short window (BaRISTA's patch-level power target).

    The bins are ``k * sampling_rate / n_samples`` for ``0 < k < n_samples / 2``: neither the DC
    bin (a window's mean) nor the Nyquist bin (real-valued, aliased). A band is kept when some
    bin ``f`` has ``low <= f < min(high, Nyquist)``. E.g. 64 samples at 256 Hz (4 Hz bins):
    delta [1, 4) holds no bin and is dropped; theta holds one (4 Hz), high gamma 14 (72-124 Hz).
    """
    if not sampling_rate > 0:
        raise ValueError(f"resolved_bands: sampling_rate must be positive, got {sampling_rate}")
    if n_samples < 4:
        raise ValueError(f"resolved_bands: a window of {n_samples} samples resolves no band (need >= 4)")
    step, nyquist = sampling_rate / n_samples, sampling_rate / 2
    freqs = [k * step for k in range(1, (n_samples + 1) // 2)]  # 0 < k < n / 2
    out = {}
    for name, (lo, hi) in dict(BANDS if bands is None else bands).items():
        hi = min(hi, nyquist)
        if any(lo <= f < hi for f in freqs):
            out[name] = (float(lo), float(hi))
    return out


def welch_nperseg(n_samples: int, sampling_rate: float) -> int:
    """Welch segment length: half a second (2 Hz resolution), at most the whole signal, at least 4."""
    return int(min(n_samples, max(4, sampling_rate // 2)))


def welch_psd(x: Tensor, sampling_rate: float, nperseg: int) -> tuple[Tensor, Tensor]:
    """``(freqs (F,), psd (..., C, F))`` of ``x`` (..., T), in ``x``'s dtype (pass float64 for
    scipy's numbers to ~1e-12)."""
    if x.shape[-1] < nperseg:
        raise ValueError(f"welch_psd: {x.shape[-1]} samples, fewer than one {nperseg}-sample segment")
    step = nperseg - nperseg // 2
    seg = x.unfold(-1, nperseg, step)  # (..., n_seg, nperseg)
    seg = seg - seg.mean(-1, keepdim=True)
    n = torch.arange(nperseg, dtype=x.dtype, device=x.device)
    win = 0.5 - 0.5 * torch.cos(2 * math.pi * n / nperseg)  # periodic Hann (scipy's get_window('hann', n))
    spec = torch.fft.rfft(seg * win, dim=-1)
    psd = (spec.real ** 2 + spec.imag ** 2) / (float(sampling_rate) * (win ** 2).sum())
    double = torch.full((psd.shape[-1],), 2.0, dtype=x.dtype, device=x.device)
    double[0] = 1.0
    if nperseg % 2 == 0:
        double[-1] = 1.0
    psd = (psd * double).mean(-2)
    freqs = torch.arange(psd.shape[-1], dtype=x.dtype, device=x.device) * (float(sampling_rate) / nperseg)
    return freqs, psd


def band_power(x: Tensor, sampling_rate: float, bands: Mapping[str, tuple[float, float]] | None = None,
               *, log: bool = True) -> Tensor:
    """Mean power spectral density per band: ``(..., C, n_bands)`` for ``x`` (..., C, T).

    Welch segments of :func:`welch_nperseg` samples; ``log`` returns ``log10(power + 1e-20)``
    (roughly Gaussian, comparable across bands; a zero (padded) channel gives -20). Every band
    must contain at least one frequency bin (choose them with :func:`bands_below_nyquist`)."""
    bands = dict(BANDS if bands is None else bands)
    if x.dim() < 1 or x.shape[-1] < 4:
        raise ValueError(f"band_power: x must be (..., C, T) with T >= 4 samples, got shape {tuple(x.shape)}")
    nperseg = welch_nperseg(x.shape[-1], sampling_rate)
    freqs, psd = welch_psd(x, sampling_rate, nperseg)
    cols = []
    for name, (lo, hi) in bands.items():
        sel = (freqs >= lo) & (freqs < hi)
        if not bool(sel.any()):
            raise ValueError(f"band_power: band {name!r} [{lo}, {hi}) Hz holds no frequency bin at "
                             f"{sampling_rate} Hz sampling with {nperseg}-sample segments; drop or widen it")
        cols.append(sel.to(x.dtype) / sel.sum())
    power = psd @ torch.stack(cols, dim=1)  # (..., C, n_bands): the mean over each band's bins
    return torch.log10(power + 1e-20) if log else power
