"""Canonical iEEG frequency bands, and which of them a window of samples resolves.

One table for every band-power figure in neurofm: the baselines' features
(:mod:`neurofm.baselines` re-exports :data:`BANDS`) and BaRISTA's optional band-power
pretraining target (:class:`neurofm.models.barista.Barista`, ``power_target``). It lives in
the lowest layer because models and baselines may not import each other. Plain Python: no
NumPy, no torch.
"""

from __future__ import annotations

from typing import Mapping

__all__ = ["BANDS", "resolved_bands"]

# Canonical iEEG bands (Hz), [low, high).
BANDS: dict[str, tuple[float, float]] = {
    "delta": (1.0, 4.0), "theta": (4.0, 8.0), "alpha": (8.0, 13.0), "beta": (13.0, 30.0),
    "gamma": (30.0, 70.0), "high_gamma": (70.0, 150.0),
}


def resolved_bands(sampling_rate: float, n_samples: int,
                   bands: Mapping[str, tuple[float, float]] | None = None) -> dict[str, tuple[float, float]]:
    """The bands (default :data:`BANDS`, in their order) that hold at least one FFT bin of an
    ``n_samples`` window at ``sampling_rate``, with each upper edge cut at Nyquist.

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
