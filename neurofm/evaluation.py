"""The behaviour-decoding evaluation protocol of DESIGN.md 8, as reusable pure functions.

Every behaviour number neurofm reports (ridge floor, Neuroformer pretrained or from scratch,
few-shot fine-tuning) goes through the same four steps, so numbers side by side are
comparable:

1. **Bins** (:func:`session_position_data`): spikes counted in ``bin_size`` bins over the
   span where both spikes and behaviour exist; the behaviour is the mean of its samples in
   each bin (NaN where a bin holds none).
2. **What is scored** (:func:`moving_mask`): recordings mix behaviour and rest (linear-track:
   a run, then rest with the animal still), and a position decoder scored on rest bins
   mostly measures where the animal sat. Only bins where the speed exceeds a threshold are
   scored (and, by default, trained on): the speed of the Gaussian-smoothed position (smoothed
   first, so tracking jitter of a still animal averages out), or a measured speed channel
   smoothed (:func:`moving_speed`).
3. **Folds** (:func:`blocked_folds`): blocked K-fold cross-validation. Each test block is a
   contiguous stretch of bins; ``gap_s`` seconds on each side of it are removed from
   training, because neighbouring bins share the same behavioural bout and slow drifts
   (a random split of bins leaks the test set into training).
4. **Scores** (:func:`evaluate_decoder`): the held-out predictions of all folds are pooled
   and R2 and Pearson r are computed once over every scored bin (per output, then
   averaged over outputs, e.g. x and y), not averaged per fold.

:class:`DecodingProtocol` holds every choice and :meth:`DecodingProtocol.describe` states
them in one line, to print next to every number. :func:`decoding_setup` builds the bins,
folds and masks once so that several decoders (ridge, Neuroformer) share them exactly;
:func:`ridge_floor` is the DESIGN.md 8 floor (ridge on binned counts with history) plus a
mean-position null on the same setup. Few-shot decoding labels only a fraction of the
training bins, in contiguous chunks (:func:`neurofm.data.splits.labelled_windows`, the one
few-shot definition, shared with fine-tuning and the recipes' decoder arms).

Units: times and durations in seconds; position in the file's unit (``/behavior/<name>``
attribute ``unit``; camera pixels for linear-track); speed in position units per second.
"""

from __future__ import annotations

import dataclasses
import math
import os
from dataclasses import dataclass, field
from typing import Callable, Sequence

import numpy as np
from scipy.ndimage import gaussian_filter1d, median_filter
from scipy.stats import chi2, norm

from neurofm import metrics
from neurofm.baselines import (DEFAULT_ALPHAS, Ridge, _n_bins, bin_spikes, bin_timeseries, blocked_splits,
                               history_features)
from neurofm.data.session import DISCONTINUITIES, Session, SessionFormatError
from neurofm.data.splits import Intervals, labelled_windows

__all__ = [
    "DecodingProtocol", "DecodingData", "DecodingSetup", "RidgeFitPredict", "blocked_oof", "holdout_fold",
    "speed_from_position", "position_jumps", "remove_glitches", "moving_speed", "moving_mask", "blocked_folds",
    "evaluate_decoder",
    "session_position_data", "decoding_setup", "mean_fit_predict", "ridge_floor",
]

Fold = tuple[np.ndarray, np.ndarray]  # (train_idx, test_idx), int64 bin indices


# --------------------------------------------------------------------------------------------
# the protocol
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class DecodingProtocol:
    """Every choice behind a behaviour-decoding number (defaults: DESIGN.md 8, linear-track).

    Attributes
    ----------
    bin_size : s. One decoded value per bin (50 ms).
    n_history : bins of spike counts a decoder may read for bin t: t and the
        ``n_history - 1`` bins before it (6 bins = 300 ms). The first ``n_history - 1`` bins
        of the recording lack a full history and are neither trained on nor scored.
    behavior : name of the decoded variable under ``/behavior``.
    speed_name : a ``/behavior`` variable holding speed; when the file has none, speed is
        that of the smoothed ``behavior`` trajectory (:func:`moving_speed`).
    speed_threshold : position units per second (px/s on linear-track). A bin is "moving"
        when its :func:`moving_speed` is above this. 20 px/s on linear-track sits well above
        a still animal (speed 0 in most rest bins: the pixel position repeats) and below
        running speeds (50-120 px/s); 17.3% of its bins are moving. The floor depends on it
        (faster bins are easier), so quote it with every number.
    smooth_s : s, standard deviation of the Gaussian that smooths the position (or a
        measured speed) before the threshold, so jitter and single glitchy bins neither
        enter nor leave a run.
    n_folds, gap_s : blocked K-fold CV; ``gap_s`` seconds are removed from training on
        each side of every test block.
    fold_span : "recording" (default: the K blocks tile every bin, rest included, so on
        linear-track, whose second half is rest, only the first 3 of 5 folds hold scored
        bins) or "moving" (the blocks tile the bins from the first to the last moving bin;
        bins outside are never tested or trained on).
    train_on : "moving" (fit only on moving bins, as scored; default) or "all" (every
        training bin with behaviour, rest included).
    label_fraction : fraction of the eligible training bins whose behaviour is labelled
        (few-shot decoding; 1.0 = all). Chosen in contiguous chunks of ``chunk_s``.
    chunk_s : s, length of one labelled chunk in few-shot decoding.
    contiguous_labels : label chunks (default) or independent single bins (only to show
        how much random single bins inflate a few-shot score): the chunks of
        :func:`neurofm.data.splits.labelled_windows`, drawn per bin end time, one draw for
        every fold.
    seed : seeds the few-shot chunk choice.
    alpha : ridge penalty: "blocked_cv" (chosen per outer fold by ``inner_folds``-fold
        blocked CV on that fold's training bins, with the same gap, maximising pooled R2),
        "holdout" (last 20% of the training bins, :func:`holdout_fold`: the former rule), or a
        number (fixed).
    alphas : candidate penalties (features are standardised, so alpha is in units of
        "number of bins").
    inner_folds : folds of the inner CV that chooses alpha.
    """

    bin_size: float = 0.05
    n_history: int = 6
    behavior: str = "position"
    speed_name: str = "speed"
    speed_threshold: float = 20.0
    smooth_s: float = 0.5
    n_folds: int = 5
    gap_s: float = 5.0
    fold_span: str = "recording"
    train_on: str = "moving"
    label_fraction: float = 1.0
    chunk_s: float = 5.0
    contiguous_labels: bool = True
    seed: int = 0
    alpha: str | float = "blocked_cv"
    alphas: tuple[float, ...] = tuple(float(a) for a in DEFAULT_ALPHAS)
    inner_folds: int = 4

    def __post_init__(self):
        if not self.bin_size > 0:
            raise ValueError(f"DecodingProtocol.bin_size must be > 0 s, got {self.bin_size}")
        if self.n_history < 1:
            raise ValueError(f"DecodingProtocol.n_history must be >= 1 bin, got {self.n_history}")
        if self.n_folds < 2:
            raise ValueError(f"DecodingProtocol.n_folds must be >= 2, got {self.n_folds}")
        if self.gap_s < 0 or self.smooth_s < 0 or self.speed_threshold < 0:
            raise ValueError("DecodingProtocol: gap_s, smooth_s and speed_threshold must be >= 0")
        if self.fold_span not in ("recording", "moving"):
            raise ValueError(f"DecodingProtocol.fold_span must be 'recording' or 'moving', got {self.fold_span!r}")
        if self.train_on not in ("moving", "all"):
            raise ValueError(f"DecodingProtocol.train_on must be 'moving' or 'all', got {self.train_on!r}")
        if not 0 < self.label_fraction <= 1:
            raise ValueError(f"DecodingProtocol.label_fraction must be in (0, 1], got {self.label_fraction}")
        if isinstance(self.alpha, str) and self.alpha not in ("blocked_cv", "holdout"):
            raise ValueError(f"DecodingProtocol.alpha must be 'blocked_cv', 'holdout' or a number, got {self.alpha!r}")

    def replace(self, **changes) -> "DecodingProtocol":
        """A copy with some fields changed (e.g. ``label_fraction=0.1``)."""
        return dataclasses.replace(self, **changes)

    @property
    def gap_bins(self) -> int:
        """The gap in whole bins (rounded up, so the gap is never shorter than ``gap_s``)."""
        return int(math.ceil(self.gap_s / self.bin_size - 1e-9))

    def describe(self, unit: str = "", speed_measured: bool = False) -> str:
        """The protocol in one line, to print next to every number it produced (``speed_measured``:
        the moving rule read the file's speed channel, not the position)."""
        u = f" {unit}" if unit else " units"
        alpha = (f"alpha by {self.inner_folds}-fold inner blocked CV" if self.alpha == "blocked_cv"
                 else "alpha on the last 20% of training bins" if self.alpha == "holdout" else f"alpha {self.alpha:g}")
        span = "whole recording" if self.fold_span == "recording" else "moving span"
        how = f"{self.chunk_s:g} s chunks" if self.contiguous_labels else "random single bins"
        labels = ("all training bins labelled" if self.label_fraction >= 1 else
                  f"{self.label_fraction:.0%} of training bins labelled ({how}, seed {self.seed})")
        speed = (f"/behavior/{self.speed_name} Gaussian-smoothed" if speed_measured
                 else "speed of the Gaussian-smoothed trajectory")
        return (f"{self.behavior}: {self.bin_size * 1e3:g} ms bins, {self.n_history} bins of history "
                f"(current + {self.n_history - 1} past); scored on moving bins ({speed}, sigma {self.smooth_s:g} s, "
                f"> {self.speed_threshold:g}{u}/s); trained on {self.train_on} bins; "
                f"{self.n_folds}-fold blocked CV over the {span}, {self.gap_s:g} s gap each side; {labels}; {alpha}; "
                f"R2 and Pearson r pooled over held-out bins, averaged over outputs")


# --------------------------------------------------------------------------------------------
# masks and folds
# --------------------------------------------------------------------------------------------


def _fill_nan(a: np.ndarray) -> np.ndarray:
    """Linear interpolation over NaN rows of (T,) or (T, D) (constant beyond the ends)."""
    a = np.array(a, dtype=np.float64)
    a2 = a.reshape(len(a), -1)
    ok = np.isfinite(a2).all(axis=1)
    if not ok.any():
        raise ValueError("no finite sample to interpolate from")
    if ok.all():
        return a
    idx = np.arange(len(a2))
    for d in range(a2.shape[1]):
        a2[:, d] = np.interp(idx, idx[ok], a2[ok, d])
    return a2.reshape(a.shape)


#: A position jump (a virtual-reality teleport back to the start of the track, a wrapped
#: circular coordinate): a change between neighbouring bins larger than JUMP_EXTENT_FRACTION of
#: the trajectory's extent (its 1st-99th percentile span) and than JUMP_STEPS times its 90th
#: percentile step (the step of running, however often a lap ends: a 9 s lap's teleport bins
#: are over 1% of the bins). No animal crosses a quarter of its arena in one 50 ms bin; a jump
#: read as movement makes a still mouse "run" at metres per second around every lap's end.
JUMP_EXTENT_FRACTION = 0.25
JUMP_STEPS = 10.0


def position_jumps(position) -> tuple[np.ndarray, np.ndarray]:
    """Where a binned trajectory (T,) or (T, D) jumps (:data:`JUMP_EXTENT_FRACTION`), NaN rows first
    filled by interpolation: ``(cuts, mixed)``. ``cuts`` (K,) are the bins that start a new piece of
    the trajectory (the bin after a jump); ``mixed`` (M,) are bins whose mean position mixes both
    sides of a jump (a jump spread over two steps: it left before the bin and arrived after it),
    which belong to neither side and have no speed."""
    p = _fill_nan(np.asarray(position, dtype=np.float64))
    p = p.reshape(len(p), -1)
    empty = np.zeros(0, dtype=np.int64)
    if len(p) < 3:
        return empty, empty
    step = np.linalg.norm(np.diff(p, axis=0), axis=1)  # step[i]: bin i -> i + 1
    extent = float(np.linalg.norm(np.percentile(p, 99, axis=0) - np.percentile(p, 1, axis=0)))
    limit = max(JUMP_EXTENT_FRACTION * extent, JUMP_STEPS * float(np.percentile(step, 90)))
    if not limit > 0:
        return empty, empty
    one = step > limit
    pair = np.linalg.norm(p[2:] - p[:-2], axis=1) > limit  # bin i + 1 between bins i and i + 2
    mixed = np.flatnonzero(pair & ~one[:-1] & ~one[1:]) + 1
    cuts = np.union1d(np.flatnonzero(one) + 1, np.concatenate([mixed, mixed + 1]))
    return cuts.astype(np.int64), mixed.astype(np.int64)


#: A tracker glitch (a frame far off its neighbours, then back) is a bin further than GLITCH_K
#: robust SDs from the median of the GLITCH_BINS bins centred on it: a Hampel filter, which
#: replaces such a bin by that median (:func:`remove_glitches`).
GLITCH_BINS = 5
GLITCH_K = 3.0
_MAD_SD = 1.4826  # a Gaussian's sd per median absolute deviation


def remove_glitches(x) -> np.ndarray:
    """A binned trajectory (T,) or (T, D) with its tracker glitches replaced (a Hampel filter):
    per coordinate, a bin further than :data:`GLITCH_K` robust SDs from the running median of
    the :data:`GLITCH_BINS` bins centred on it takes that median's value.

    A running median keeps exactly every stretch where a coordinate rises or falls monotonically
    (a run, a reach, a step, a teleport), so only bins that go out and come back within two bins
    (100 ms in 50 ms bins) deviate from it: a glitched frame (or two in a row), the tracker's
    jitter, or the tip of a reversal sharper than the bins resolve. The robust SD is 1.4826 x the
    median of the non-zero deviations over the input, that is of the jitter: a bin that equals
    its running median says nothing about the noise, and on a quantised position at rest (pixels
    repeating exactly) most bins do, which would put the SD at 0 and make every one-pixel wobble
    a glitch. A glitch of centimetres under millimetres of jitter is tens of SDs out. ``x`` must
    be finite (fill NaN first); one vectorised median filter, so long sessions cost little."""
    x = np.asarray(x, dtype=np.float64)
    x2 = x.reshape(len(x), -1)
    if len(x2) < GLITCH_BINS:
        return x
    med = median_filter(x2, size=(GLITCH_BINS, 1), mode="nearest")
    dev = np.abs(x2 - med)
    scale = np.array([_MAD_SD * np.median(v[v > 0]) if (v > 0).any() else np.inf for v in dev.T])
    return np.where(dev > GLITCH_K * scale, med, x2).reshape(x.shape)


def speed_from_position(position, bin_size: float, smooth_s: float = 0.0) -> np.ndarray:
    """Speed per bin, (T,) in position units per second, of the trajectory smoothed by ``smooth_s``.

    Each coordinate of the position (T,) or (T, D), NaN bins first filled by linear
    interpolation between their neighbours, is smoothed with a Gaussian of standard deviation
    ``smooth_s`` seconds (0 = the raw trajectory); then central differences (one-sided at the
    ends) give the velocity, and speed is its Euclidean norm over the D coordinates. Bins whose
    position was NaN get the interpolated speed (they are never scored, having no position).

    Smoothing comes *before* the norm on purpose: tracking jitter averages out of the position
    but not out of the norm of a jittery velocity, whose mean is positive however much it is
    smoothed afterwards (:func:`moving_speed`).

    A jump of the position (:func:`position_jumps`: a VR teleport at the end of a lap) is no
    movement: the trajectory is smoothed and differenced on each side of it separately, and a
    bin mixing both sides, or a piece one bin long, has speed NaN (never moving). A tracker
    glitch (a frame far off its neighbours, then back) is no movement either: each piece's
    glitched bins are replaced by their running median (:func:`remove_glitches`) before the
    smoothing, whatever its sigma.
    """
    position = np.asarray(position, dtype=np.float64)
    if position.ndim not in (1, 2) or len(position) < 2:
        raise ValueError(f"speed_from_position: position must be (T,) or (T, D) with T >= 2, got {position.shape}")
    if not bin_size > 0 or not smooth_s >= 0:
        raise ValueError(f"speed_from_position: need bin_size > 0 s and smooth_s >= 0 s, got {bin_size}, {smooth_s}")
    p = _fill_nan(position).reshape(len(position), -1)
    cuts, mixed = position_jumps(p)
    out = np.full(len(p), np.nan)
    for a, b in zip(np.r_[0, cuts], np.r_[cuts, len(p)]):
        if b - a < 2:
            continue
        q = remove_glitches(p[a:b])
        if smooth_s > 0:
            q = gaussian_filter1d(q, smooth_s / bin_size, axis=0, mode="nearest")
        out[a:b] = np.linalg.norm(np.gradient(q, axis=0) / bin_size, axis=1)  # (units / s)
    out[mixed] = np.nan
    return out


def moving_speed(bin_size: float, smooth_s: float, *, position=None, speed=None) -> np.ndarray:
    """The speed the moving rule thresholds, (T,) units per second; NaN where the input is NaN.

    Give exactly one of:

    * ``position`` (T,) or (T, D): the speed of the trajectory Gaussian-smoothed with
      sigma ``smooth_s`` (:func:`speed_from_position`): position is smoothed, then
      differentiated, then the norm taken. A still animal with tracking jitter has speed
      near 0 here; the smoothed norm of the frame-to-frame change would not be (white
      jitter of sd ``e`` per coordinate gives the raw speed a mean of order
      ``e / bin_size``, and smoothing the speed keeps that mean: 4.5 cm/s for 3 mm at
      30 Hz in 50 ms bins).
    * ``speed`` (T,): a measured speed (a ``speed`` behaviour channel: treadmill, wheel),
      Gaussian-smoothed itself (so single jittery bins neither enter nor leave a run).

    Bins where the input is NaN are filled by interpolation for the smoothing and are NaN in
    the output (they never count as moving). All NaN in, all NaN out.
    """
    if (position is None) == (speed is None):
        raise ValueError("moving_speed: give exactly one of position= (T,) or (T, D) and speed= (T,)")
    if not bin_size > 0 or not smooth_s >= 0:
        raise ValueError(f"moving_speed: need bin_size > 0 and smooth_s >= 0, got {bin_size}, {smooth_s}")
    x = np.asarray(position if speed is None else speed, dtype=np.float64)
    if speed is not None and x.ndim != 1:
        raise ValueError(f"moving_speed: speed must be (T,), got shape {x.shape}")
    if x.ndim not in (1, 2):
        raise ValueError(f"moving_speed: position must be (T,) or (T, D), got shape {x.shape}")
    finite = np.isfinite(x.reshape(len(x), -1)).all(axis=1)
    if not finite.any():
        return np.full(len(x), np.nan)
    if speed is None:
        s = speed_from_position(x, bin_size, smooth_s)
    else:
        s = _fill_nan(x)
        if smooth_s > 0:
            s = gaussian_filter1d(s, smooth_s / bin_size, mode="nearest")
    return np.where(finite, s, np.nan)


def moving_mask(speed, bin_size: float, threshold: float, smooth_s: float, *, position=None) -> np.ndarray:
    """Bins where the animal moves: :func:`moving_speed` > ``threshold``; (T,) bool.

    Parameters
    ----------
    speed : (T,) measured speed per bin, position units per second, smoothed before the
        threshold; or None with ``position``.
    bin_size : s per bin.
    threshold : position units per second.
    smooth_s : s, standard deviation of the Gaussian kernel (0 = no smoothing).
    position : (T,) or (T, D) position per bin (keyword; with ``speed=None``): the speed is
        that of the smoothed trajectory, so tracking jitter of a still animal is not movement.

    NaN bins (no speed, or no position) are never moving.
    """
    if speed is not None:
        speed = np.asarray(speed, dtype=np.float64)
        if speed.ndim != 1:
            raise ValueError(f"moving_mask: speed must be (T,), got shape {speed.shape}")
    if not bin_size > 0 or smooth_s < 0:
        raise ValueError(f"moving_mask: need bin_size > 0 and smooth_s >= 0, got {bin_size}, {smooth_s}")
    s = moving_speed(bin_size, smooth_s, position=position, speed=speed)
    return np.isfinite(s) & (np.nan_to_num(s, nan=-np.inf) > threshold)


#: The moving rule's smoothing sigmas (s) tried, smallest first, when it is chosen from the data
#: (:func:`smoothing_from_jitter`). 0.5 s suits a camera-tracked rat; 0.05 s is one 50 ms bin.
SMOOTH_LADDER = (0.05, 0.1, 0.25, 0.5, 1.0)
#: The jitter alone must stay under this fraction of the threshold at its 99.9th percentile.
JITTER_MARGIN = 0.5
JITTER_QUANTILE = 0.999
_D2_QUANTILE = 0.1  # |second difference| quantile the jitter is read from (a still tenth suffices)


def jitter_sd(x, pieces=None) -> np.ndarray:
    """(D,) the standard deviation of the white jitter of a binned trajectory (T,) or (T, D) per
    coordinate (or of a measured speed (T,)), read from its second differences: on a still bin
    they are the jitter's alone (variance 6 sd^2), and any movement only makes them larger, so
    their 10th percentile over all bins, scaled to a Gaussian's, is the jitter's (an upper bound
    when under a tenth of the bins is still). ``pieces``: slices of continuous stretches (no
    difference is taken across a pause or a position jump); NaN differences are skipped."""
    x = np.asarray(x, dtype=np.float64)
    x = x.reshape(len(x), -1)
    d2 = [np.diff(x[sl], n=2, axis=0) for sl in (pieces if pieces is not None else [slice(0, len(x))])]
    d2 = np.abs(np.concatenate([d for d in d2 if len(d)] or [np.zeros((0, x.shape[1]))]))
    d2 = d2[np.isfinite(d2).all(axis=1)]
    if not len(d2):
        return np.zeros(x.shape[1])
    z = float(norm.ppf(0.5 + _D2_QUANTILE / 2))  # |N(0, 1)|'s 10th percentile
    return np.percentile(d2, 100 * _D2_QUANTILE, axis=0) / (z * np.sqrt(6.0))


def jitter_speed(sd, bin_size: float, smooth_s: float, measured: bool = False) -> float:
    """The 99.9th percentile (:data:`JITTER_QUANTILE`) of the speed the moving rule reads off
    white jitter alone, of standard deviation ``sd`` (D,) per coordinate, for sigma ``smooth_s``:
    the position smoothed and differentiated (:func:`speed_from_position`, a linear filter h:
    velocity sd ``sd * |h|`` per coordinate, speed its norm over D coordinates: the chi quantile
    with D degrees of freedom of the largest sd, exact for equal sds and an upper bound otherwise),
    or of a measured speed (``measured``) smoothed (filter g: a Gaussian's one-sided quantile)."""
    sd = np.atleast_1d(np.asarray(sd, dtype=np.float64))
    sigma = smooth_s / bin_size
    n = int(np.ceil(4 * max(sigma, 1))) + 2
    impulse = np.zeros(2 * n + 1)
    impulse[n] = 1.0
    g = gaussian_filter1d(impulse, sigma, mode="constant") if sigma > 0 else impulse
    if measured:
        return float(np.sqrt(np.sum(sd ** 2)) * np.linalg.norm(g) * norm.ppf(JITTER_QUANTILE))
    h = np.gradient(g) / bin_size
    return float(np.max(sd) * np.linalg.norm(h) * np.sqrt(chi2.ppf(JITTER_QUANTILE, len(sd))))


def smoothing_from_jitter(sd, bin_size: float, threshold, measured: bool = False) -> float:
    """The smallest sigma of :data:`SMOOTH_LADDER` whose jitter speed (:func:`jitter_speed` of
    ``sd``) stays under :data:`JITTER_MARGIN` of the threshold (``threshold``: a number, or a
    function of sigma: the data's threshold at that sigma); the largest when none does.

    Less smoothing keeps short holds and pauses still (0.5 s blurs a 0.5 s hold between 1 s
    reaches into movement); the smoothing is there only so that the tracker's jitter of a still
    animal does not read as movement, so it is the least that achieves that."""
    for s in SMOOTH_LADDER:
        t = threshold(s) if callable(threshold) else threshold
        if jitter_speed(sd, bin_size, s, measured) <= JITTER_MARGIN * t:
            return s
    return SMOOTH_LADDER[-1]


def blocked_folds(bins, n_folds: int = 5, gap_s: float = 5.0, bin_size: float | None = None) -> list[Fold]:
    """Blocked K-fold CV over a regular grid of bins: ``[(train_idx, test_idx), ...]``.

    The ``T`` bins are cut into ``n_folds`` contiguous test blocks of (nearly) equal length,
    block ``k`` = bins ``[e_k, e_{k+1})`` with ``e = round(linspace(0, T, n_folds + 1))``, so
    every bin is a test bin in exactly one fold. Fold ``k`` trains on every other bin except
    ``g = ceil(gap_s / bin_size)`` bins on each side of its test block: between the end of
    the last training bin and the start of the first test bin (and vice versa) lie at
    least ``gap_s`` seconds.

    This is :class:`neurofm.data.splits.BlockedKFold`'s layout (equal blocks, fold k tests
    block k, gap on both sides) on the bin grid: :func:`neurofm.baselines.blocked_splits`,
    whose folds choose the baselines' penalties too. ``BlockedKFold`` cuts the time axis in
    seconds for windowed datasets; its block edges fall inside bins, and any rule turning
    those edges into bins either drops straddling bins from every test set or shortens the
    gap by up to a bin, so here the edges are whole bins.

    Parameters
    ----------
    bins : int ``T`` (number of bins) or (T,) bin times in s (a regular grid, e.g. bin starts).
    n_folds : number of test blocks.
    gap_s : s removed from training on each side of the test block.
    bin_size : s per bin; required with an int, inferred from (and checked against) times.
    """
    if np.ndim(bins) == 0:
        T = int(bins)
        if bin_size is None:
            raise ValueError("blocked_folds: pass bin_size (s) with a number of bins, or pass the bin times")
    else:
        times = np.asarray(bins, dtype=np.float64)
        if times.ndim != 1 or len(times) < 2:
            raise ValueError(f"blocked_folds: bin times must be (T,) with T >= 2, got shape {times.shape}")
        steps = np.diff(times)
        step = float(np.median(steps))
        if bin_size is None:
            bin_size = step
        if not np.allclose(steps, bin_size, rtol=1e-6, atol=1e-9):
            raise ValueError(f"blocked_folds: bin times are not a regular grid of {bin_size} s "
                             f"(steps {steps.min():.6g}..{steps.max():.6g} s); pass regular bins")
        T = len(times)
    if not bin_size > 0:
        raise ValueError(f"blocked_folds: bin_size must be > 0 s, got {bin_size}")
    if n_folds < 2 or T < n_folds:
        raise ValueError(f"blocked_folds: need 2 <= n_folds <= number of bins, got n_folds={n_folds}, T={T}")
    if gap_s < 0:
        raise ValueError(f"blocked_folds: gap_s must be >= 0, got {gap_s}")
    g = int(math.ceil(gap_s / bin_size - 1e-9))
    try:
        return blocked_splits(T, n_folds, g, unit="bins")
    except ValueError as e:
        raise ValueError(f"blocked_folds: {e} (gap {gap_s} s = {g} bins)") from None


# --------------------------------------------------------------------------------------------
# scoring
# --------------------------------------------------------------------------------------------


def evaluate_decoder(fit_predict: Callable, X, Y, folds: Sequence[Fold], score_mask, *, train_mask=None) -> dict:
    """Cross-validated decoding scored on pooled held-out predictions.

    For each fold ``k``: the training bins are ``train_idx`` where ``train_mask`` holds and
    ``Y`` is finite (few-shot: ``train_mask`` holds only on the labelled bins,
    :attr:`DecodingSetup.labelled`); the decoder is fitted on them and
    predicts the fold's test bins where ``score_mask`` holds and ``Y`` is finite. The
    predictions of all folds are pooled and scored once: R2 and Pearson r per output
    (:func:`neurofm.metrics.r2_score`, :func:`neurofm.metrics.pearson_r`), and their means
    over outputs.

    Parameters
    ----------
    fit_predict : ``fit_predict(X_train, Y_train, X_test) -> (n_test, D)`` predictions; a
        fresh model per call. ``X`` rows are selected with integer index arrays, so ``X``
        may be any per-bin array: lagged counts (T, F), or simply the bin indices
        ``np.arange(T)`` for a model that reads its own inputs (e.g. spike-token windows
        ending at each bin).
    X : (T, ...) per-bin inputs.
    Y : (T,) or (T, D) targets; NaN where unknown (never trained on or scored).
    folds : from :func:`blocked_folds`.
    score_mask : (T,) bool, bins that are scored (e.g. moving bins).
    train_mask : (T,) bool, bins that may be trained on (default: all).

    Returns
    -------
    dict: ``r2`` (D,), ``r2_mean``, ``pearson_r`` (D,), ``pearson_r_mean``, ``n_scored``,
    ``n_train`` (per fold), ``predictions`` (T, D) (NaN outside scored test bins),
    ``scored`` (T,) bool (the bins behind the scores).
    """
    Y = np.asarray(Y, dtype=np.float64)
    Y2 = Y.reshape(len(Y), -1)  # (T, D)
    T, D = Y2.shape
    if len(X) != T:
        raise ValueError(f"evaluate_decoder: X has {len(X)} rows but Y has {T}; one row per bin in both")
    score_mask = np.asarray(score_mask, dtype=bool)
    train_mask = np.ones(T, dtype=bool) if train_mask is None else np.asarray(train_mask, dtype=bool)
    if score_mask.shape != (T,) or train_mask.shape != (T,):
        raise ValueError(f"evaluate_decoder: score_mask {score_mask.shape} and train_mask {train_mask.shape} "
                         f"must both be ({T},)")
    known = np.isfinite(Y2).all(axis=1)
    predictions = np.full((T, D), np.nan)
    scored = np.zeros(T, dtype=bool)
    n_train = []
    seen = np.zeros(T, dtype=bool)
    for k, (train_idx, test_idx) in enumerate(folds):
        train_idx, test_idx = np.asarray(train_idx, dtype=np.int64), np.asarray(test_idx, dtype=np.int64)
        if seen[test_idx].any() or np.intersect1d(train_idx, test_idx).size:
            raise ValueError(f"evaluate_decoder: fold {k}'s test bins overlap its training bins or an earlier "
                             f"fold's test bins; use blocked_folds")
        seen[test_idx] = True
        tr = train_idx[train_mask[train_idx] & known[train_idx]]
        te = test_idx[score_mask[test_idx] & known[test_idx]]
        n_train.append(int(tr.size))
        if te.size == 0:
            continue
        if tr.size == 0:
            raise ValueError(f"evaluate_decoder: fold {k} has no labelled training bins (train_mask and Y leave "
                             f"none); widen train_mask or use fewer folds")
        pred = np.asarray(fit_predict(X[tr], Y2[tr] if Y.ndim > 1 else Y[tr], X[te]), dtype=np.float64)
        pred = pred.reshape(len(te), -1)
        if pred.shape != (len(te), D):
            raise ValueError(f"evaluate_decoder: fit_predict returned shape {pred.shape} for {len(te)} test bins "
                             f"of {D} outputs")
        predictions[te] = pred
        scored[te] = True
    if scored.sum() < 2:
        raise ValueError("evaluate_decoder: fewer than 2 scored bins over all folds; check score_mask "
                         "(e.g. the speed threshold) and that Y has values there")
    y, p = Y2[scored], predictions[scored]
    r2 = np.atleast_1d(metrics.r2_score(y, p, multioutput="raw_values"))
    r = np.atleast_1d(metrics.pearson_r(y, p, multioutput="raw_values"))
    return {"r2": r2, "r2_mean": float(np.mean(r2)), "pearson_r": r, "pearson_r_mean": float(np.mean(r)),
            "n_scored": int(scored.sum()), "n_train": n_train, "predictions": predictions, "scored": scored}


def mean_fit_predict(X_train, Y_train, X_test) -> np.ndarray:
    """Null decoder: every test bin gets the training mean of Y (ignores the spikes).

    Pooled over folds its R2 is at most 0 and is exactly 0 only when every fold's training
    mean equals the pooled mean of the scored bins; a negative value measures how much the
    behaviour's mean differs between blocks.
    """
    Y_train = np.asarray(Y_train, dtype=np.float64)
    return np.broadcast_to(Y_train.mean(axis=0), (len(X_test),) + Y_train.shape[1:]).copy()


def blocked_oof(fit_predict: Callable, X, Y, n_folds: int = 4, gap: int = 0) -> np.ndarray:
    """Out-of-fold predictions of ``fit_predict(X_train, Y_train, X_test)`` over rows in time
    order: :func:`blocked_folds` (``n_folds`` contiguous blocks, ``gap`` rows dropped from training
    on each side of the held-out block), each row predicted by the fit that did not see its
    block. Two feature sets fitted alike on the same rows compare prediction by prediction
    (:func:`neurofm.report.start_gain`). ValueError when the rows are too few for the folds (or a
    fold's fit fails)."""
    X, Y = np.asarray(X), np.asarray(Y)
    out = None
    for tr, te in blocked_folds(len(X), n_folds, gap_s=float(gap), bin_size=1.0):
        p = np.asarray(fit_predict(X[tr], Y[tr], X[te]), dtype=np.float64)
        if out is None:
            out = np.zeros((len(X),) + p.shape[1:])
        out[te] = p
    return out


def holdout_fold(n: int, gap: int = 0, val_fraction: float = 0.2) -> list[tuple[np.ndarray, np.ndarray]]:
    """One fold: the last ``val_fraction`` of ``n`` time-ordered rows held out, the rows before it
    less ``gap`` to fit; the single validation block on which the baselines chose their penalty
    before blocked CV (:func:`neurofm.baselines.penalty_folds`), kept to compare against."""
    n_fit = int(n * (1 - val_fraction))
    if n_fit - gap < 2 or n - n_fit < 2:
        raise ValueError(f"holdout_fold: {n} rows are too few for a holdout of the last {val_fraction:.0%} "
                         f"after a gap of {gap}; pass a fixed alpha")
    return [(np.arange(n_fit - gap), np.arange(n_fit, n))]


class RidgeFitPredict:
    """Ridge (:class:`neurofm.baselines.Ridge`) as a ``fit_predict`` for :func:`evaluate_decoder`.

    ``alpha="blocked_cv"``: the penalty is chosen on the training bins alone by
    ``inner_folds``-fold blocked CV (:func:`blocked_folds` over the training rows in time
    order, ``gap`` rows removed each side: rows skip rest bins, so ``gap`` rows span at
    least ``gap`` bins), maximising the pooled R2 averaged over outputs; one
    eigendecomposition per inner fold scores every alpha. Too few rows for those folds and
    gaps (a few labelled chunks): :class:`~neurofm.baselines.Ridge`'s own blocked CV (5 folds,
    fewer with few rows, no gap) instead, and ``cv_r2_`` is NaN. ``"holdout"``: the penalty
    with the least squared error on one block, the last 20% of the training rows, fitted on
    the rows before it less a gap (:func:`holdout_fold`; the rule Ridge had before blocked CV,
    kept to compare against). A number: fixed. The chosen alpha of each call is appended to
    ``alphas_``.
    """

    def __init__(self, alpha: str | float = "blocked_cv", alphas: Sequence[float] = DEFAULT_ALPHAS,
                 inner_folds: int = 4, gap: int = 100):
        self.alpha, self.alphas = alpha, np.asarray(alphas, dtype=np.float64)
        self.inner_folds, self.gap = int(inner_folds), int(gap)
        self.alphas_: list[float] = []

    def cv_scores(self, X, Y, per_fold: bool = False):
        """(len(alphas),) the blocked-CV score of every alpha on ``X`` (n, F), ``Y`` (n, D): R2
        pooled over the inner test blocks, averaged over outputs. One definition for choosing
        the penalty and for comparing feature sets fitted on the same rows (same folds).
        ``per_fold``: also each inner fold's own R2 (its test block's sum of squares),
        (len(alphas), inner_folds), and every alpha's out-of-fold predictions,
        (len(alphas), n, D): the inner test blocks cover every row once."""
        X = np.asarray(X, dtype=np.float64)
        Y = np.asarray(Y, dtype=np.float64).reshape(len(X), -1)
        n = len(X)
        try:
            folds = blocked_folds(n, self.inner_folds, gap_s=float(self.gap), bin_size=1.0)
        except ValueError as e:
            raise ValueError(f"RidgeFitPredict: {n} training bins are too few for {self.inner_folds}-fold inner CV "
                             f"with a gap of {self.gap} bins ({e}); pass a fixed alpha") from None
        preds = Ridge(self.alphas).cv_predictions(X, Y, folds)

        def r2(y, p) -> float:  # averaged over outputs; an output that does not vary counts as 1 - SSE
            ss_tot = ((y - y.mean(axis=0)) ** 2).sum(axis=0)
            return float(np.mean(1 - ((y - p) ** 2).sum(axis=0) / np.where(ss_tot > 0, ss_tot, 1.0)))

        pooled = np.array([r2(Y, p) for p in preds])
        if not per_fold:
            return pooled
        return pooled, np.array([[r2(Y[te], p[te]) for _, te in folds] for p in preds]), preds

    def choose_alpha(self, X, Y) -> float:
        """The alpha with the best :meth:`cv_scores`; its score is kept in ``cv_r2_``, its inner
        folds' own R2 in ``cv_fold_r2_`` and its out-of-fold predictions (each row predicted by
        the fit that did not see its inner block; (n, D)) in ``cv_pred_``: two feature sets
        fitted on the same rows compare prediction by prediction (:func:`neurofm.report.paired_gain`)."""
        scores, per_fold, preds = self.cv_scores(X, Y, per_fold=True)
        i = int(np.argmax(scores))
        self.cv_r2_, self.cv_fold_r2_, self.cv_pred_ = float(scores[i]), per_fold[i], preds[i]
        return float(self.alphas[i])

    def fit(self, X_train, Y_train) -> Ridge:
        """The fitted :class:`Ridge` (targets as (n, D)), alpha chosen as the instance says."""
        X_train = np.asarray(X_train, dtype=np.float64)
        Y2 = np.asarray(Y_train, dtype=np.float64).reshape(len(Y_train), -1)
        if self.alpha == "blocked_cv":
            try:
                model = Ridge(self.choose_alpha(X_train, Y2))
            except ValueError:  # too few rows for the inner folds and gaps (a few labelled chunks)
                model = Ridge(self.alphas)  # its own blocked CV: more, shorter folds, no gap
                self.cv_r2_, self.cv_fold_r2_, self.cv_pred_ = float("nan"), None, None
        elif self.alpha == "holdout":
            fold = holdout_fold(len(X_train), self.gap)
            te = fold[0][1]
            preds = Ridge(self.alphas).cv_predictions(X_train, Y2, fold)[:, te]
            model = Ridge(float(self.alphas[int(np.argmin(((preds - Y2[te]) ** 2).mean(axis=(1, 2))))]))
        else:
            model = Ridge(float(self.alpha))
        model.fit(X_train, Y2)
        self.alphas_.append(model.alpha_)
        return model

    def __call__(self, X_train, Y_train, X_test) -> np.ndarray:
        return self.fit(X_train, Y_train).predict(np.asarray(X_test, dtype=np.float64))


# --------------------------------------------------------------------------------------------
# from a session file
# --------------------------------------------------------------------------------------------


@dataclass
class DecodingData:
    """A session's spikes and behaviour on one bin grid (see :func:`session_position_data`).

    ``counts`` (T, N) int64 spikes per unit per bin; ``position`` (T, D) float64, mean of the
    behaviour's samples in each bin (NaN where none); ``speed`` (T,) position units / s, per
    bin and unsmoothed: the file's speed channel (``speed_measured``) or the finite
    differences of ``position`` (glitches removed, jitter included: threshold :meth:`moving_speed`, not this);
    ``bin_times`` (T,) s, bin starts (bin t covers ``[bin_times[t], bin_times[t] + bin_size)``);
    ``moving`` (T,) bool (also False where position is NaN); ``breaks`` (K,) s, the recording's
    discontinuities inside the bins (``/intervals/discontinuities``): the moving rule's speed
    is smoothed and differenced within each stretch between them, never across a pause, and
    a bin that a discontinuity cuts has none (never moving).
    """

    counts: np.ndarray
    position: np.ndarray
    speed: np.ndarray
    bin_times: np.ndarray
    moving: np.ndarray
    bin_size: float
    unit: str = ""
    speed_source: str = ""
    unit_ids: list[str] = field(default_factory=list)
    session_id: str = ""
    behavior: str = "position"
    speed_measured: bool = False  # speed is the file's speed channel, not derived from position
    breaks: np.ndarray = field(default_factory=lambda: np.zeros(0))

    def _speed_input(self) -> dict:
        return {"speed": self.speed} if self.speed_measured else {"position": self.position}

    def stretches(self) -> list[slice]:
        """The bins of each continuous stretch of the recording, in order: the bins wholly inside
        each piece of the grid's span cut at ``breaks`` (:meth:`~neurofm.data.splits.Intervals.cut`,
        as the spike splits cut their time blocks), so a break strictly inside a bin drops that
        bin from both sides."""
        out = []
        if not self.n_bins:
            return out
        t0 = self.bin_times[0]
        pieces = Intervals(np.array([t0]), np.array([self.bin_end[-1]])).cut(self.breaks)
        for a, b in zip(pieces.start, pieces.end):
            i0 = int(np.ceil((a - t0) / self.bin_size - 1e-9))  # first bin starting at or after a
            i1 = int(np.floor((b - t0) / self.bin_size + 1e-9))  # one past the last bin ending by b
            if i1 > i0:
                out.append(slice(i0, min(i1, self.n_bins)))
        return out

    def whole_history(self, n_history: int) -> np.ndarray:
        """(T,) bool: bin t and the ``n_history - 1`` bins before it lie in one stretch
        (:meth:`stretches`): a decoder reading them reads no count from across a pause."""
        ok = np.zeros(self.n_bins, dtype=bool)
        for sl in self.stretches():
            ok[sl.start + n_history - 1:sl.stop] = True
        return ok

    def moving_speed(self, smooth_s: float) -> np.ndarray:
        """(T,) the speed the moving rule thresholds (:func:`moving_speed`): the measured speed
        smoothed, or the speed of the smoothed position, each stretch between the recording's
        discontinuities on its own; NaN where that input is NaN, in a bin a discontinuity cuts
        and in a one-bin stretch of position (no speed from one sample)."""
        (key, x), = self._speed_input().items()
        out = np.full(self.n_bins, np.nan)
        for sl in self.stretches():
            if key == "speed" or sl.stop - sl.start >= 2:
                out[sl] = moving_speed(self.bin_size, smooth_s, **{key: x[sl]})
        return out

    def jitter_sd(self) -> np.ndarray:
        """(D,) the jitter of the moving rule's input (:func:`jitter_sd`): the position's per
        coordinate, or the measured speed's, from second differences within each stretch between
        discontinuities and, for position, between its jumps (:func:`position_jumps`)."""
        (key, x), = self._speed_input().items()
        pieces = []
        for sl in self.stretches():
            cuts = position_jumps(x[sl])[0] if key == "position" and sl.stop - sl.start >= 3 else []
            edges = np.r_[sl.start, np.asarray(cuts, dtype=np.int64) + sl.start, sl.stop]
            pieces += [slice(a, b) for a, b in zip(edges[:-1], edges[1:]) if b - a >= 3]
        return jitter_sd(x, pieces)

    def moving_mask(self, threshold: float, smooth_s: float) -> np.ndarray:
        """(T,) bool: :meth:`moving_speed` above ``threshold`` (:func:`moving_mask`'s rule), False
        where position is NaN."""
        s = self.moving_speed(smooth_s)
        return np.isfinite(s) & (np.nan_to_num(s, nan=-np.inf) > threshold) & np.isfinite(self.position).all(axis=1)

    @property
    def n_bins(self) -> int:
        return len(self.bin_times)

    @property
    def bin_end(self) -> np.ndarray:
        """(T,) s: bin ends (a Neuroformer window's ``interval`` is its end time)."""
        return self.bin_times + self.bin_size


def _open(session) -> tuple[Session, bool]:
    if isinstance(session, Session):
        return session, False
    if isinstance(session, (str, os.PathLike)):
        return Session(session), True
    raise TypeError(f"expected a Session or the path of a session file, got {type(session).__name__}")


def session_position_data(session, protocol: DecodingProtocol | None = None, *, counts: bool = True) -> DecodingData:
    """Bin a session's spikes and behaviour for decoding (DESIGN.md 8).

    The bins cover the span where both exist: from the later of the first spike and the
    first behaviour sample to the earlier of the last ones (the file does not store the
    spike recording's own bounds, and a decoder has nothing to read, or nothing to score,
    outside that overlap). Speed comes from ``/behavior/<protocol.speed_name>`` when the
    file has it (its binned mean, absolute value or norm over columns), else from the
    binned position by finite differences (:func:`speed_from_position`); the moving rule
    thresholds :meth:`DecodingData.moving_speed` (a measured speed smoothed, or the speed of
    the smoothed position).

    ``session``: a :class:`~neurofm.data.session.Session` or a session file path. ``counts=False``:
    the bins, position and speed only (``counts`` has no columns), reading just the first and
    last spike times, not every spike (what the moving rule's threshold needs).
    """
    protocol = protocol or DecodingProtocol()
    s, opened = _open(session)
    try:
        if protocol.behavior not in s.behavior_names:
            raise SessionFormatError(s.path, f"/behavior/{protocol.behavior}",
                                     f"missing (behaviour in this file: {s.behavior_names or 'none'})",
                                     "set DecodingProtocol.behavior to one of them, or convert a recording "
                                     "with tracking")
        if s.n_spikes == 0:
            raise SessionFormatError(s.path, "/spikes", "no spikes", "decode from a session that holds spikes")
        if counts:
            times, unit_index = s.spikes()
            first, last = float(times[0]), float(times[-1])
        else:
            first, last = s.spike_span()
        ts, values = s.behavior(protocol.behavior)
        if len(ts) < 2:
            raise SessionFormatError(s.path, f"/behavior/{protocol.behavior}", f"{len(ts)} sample(s)",
                                     "decoding needs a sampled behaviour trace")
        t0, t1 = max(first, float(ts[0])), min(last, float(ts[-1]))
        if t1 - t0 < protocol.bin_size * protocol.n_folds * 2:
            raise SessionFormatError(s.path, f"/behavior/{protocol.behavior}",
                                     f"spikes and behaviour overlap only in [{t0:.3f}, {t1:.3f}] s",
                                     "decode a session whose behaviour is tracked while spikes are recorded")
        binned = (bin_spikes(times, unit_index, s.n_units, t0, t1, protocol.bin_size) if counts  # (T, N)
                  else np.zeros((_n_bins(t0, t1, protocol.bin_size), 0), dtype=np.int64))
        T = len(binned)
        position = bin_timeseries(ts, values, t0, t1, protocol.bin_size).reshape(T, -1)  # (T, D)
        unit = s.behavior_unit(protocol.behavior)
        if protocol.speed_name in s.behavior_names and protocol.speed_name != protocol.behavior:
            st, sv = s.behavior(protocol.speed_name)
            sv = np.asarray(sv, dtype=np.float64)
            sv = np.abs(sv) if sv.ndim == 1 else np.linalg.norm(sv, axis=1)
            speed = bin_timeseries(st, sv, t0, t1, protocol.bin_size)
            source, measured = f"/behavior/{protocol.speed_name}", True
        else:
            if not np.isfinite(position).all(axis=1).any():
                raise SessionFormatError(s.path, f"/behavior/{protocol.behavior}", "no sample inside the spike span",
                                         "check that spike and behaviour timestamps share one clock")
            speed = speed_from_position(position, protocol.bin_size)
            source, measured = f"finite differences of /behavior/{protocol.behavior}", False
        bin_times = t0 + protocol.bin_size * np.arange(T)
        breaks = (np.asarray(s.intervals(DISCONTINUITIES)["start"], dtype=np.float64)
                  if DISCONTINUITIES in s.interval_names else np.zeros(0))
        data = DecodingData(counts=binned, position=position, speed=speed, bin_times=bin_times,
                            moving=np.zeros(T, dtype=bool), bin_size=protocol.bin_size, unit=unit,
                            speed_source=source, unit_ids=s.unit_ids, session_id=s.session_id,
                            behavior=protocol.behavior, speed_measured=measured,
                            breaks=breaks[(breaks > t0) & (breaks < t0 + T * protocol.bin_size)])
        data.moving = data.moving_mask(protocol.speed_threshold, protocol.smooth_s)
        return data
    finally:
        if opened:
            s.close()


@dataclass
class DecodingSetup:
    """Bins, folds and masks shared by every decoder scored under one protocol.

    ``score_mask``: moving bins with a position and a full spike history inside one stretch
    between the recording's discontinuities (:meth:`DecodingData.whole_history`). ``train_mask``:
    the same (``train_on="moving"``) or every bin with a position and a full history
    (``"all"``). ``folds``: :func:`blocked_folds` over all bins (``fold_span="recording"``:
    folds are contiguous stretches of the recording, whatever is scored in them) or over the
    span from the first to the last moving bin (``"moving"``).
    """

    protocol: DecodingProtocol
    data: DecodingData
    folds: list[Fold]
    score_mask: np.ndarray
    train_mask: np.ndarray

    @property
    def labelled(self) -> np.ndarray:
        """(T,) bool: the bins whose behaviour is labelled (few-shot: the protocol's fraction,
        :func:`~neurofm.data.splits.labelled_windows` on bin end times, in ``chunk_s`` chunks or,
        without ``contiguous_labels``, bin by bin)."""
        p = self.protocol
        return labelled_windows(np.zeros(self.data.n_bins, dtype=np.int64), self.data.bin_end, p.label_fraction,
                                p.chunk_s if p.contiguous_labels else p.bin_size, p.seed)

    def evaluate(self, fit_predict: Callable, X) -> dict:
        """:func:`evaluate_decoder` on this setup (few-shot: trained on the labelled bins only)."""
        return evaluate_decoder(fit_predict, X, self.data.position, self.folds, self.score_mask,
                                train_mask=self.train_mask & self.labelled)

    def describe(self) -> str:
        return self.protocol.describe(self.data.unit, self.data.speed_measured)


def decoding_setup(session, protocol: DecodingProtocol | None = None, data: DecodingData | None = None
                   ) -> DecodingSetup:
    """Bins (:func:`session_position_data`, or ``data`` already binned), folds and masks.

    The moving mask is recomputed (:meth:`DecodingData.moving_mask`) with this protocol's
    threshold and smoothing, so one binned ``data`` serves protocols that differ in those.
    """
    protocol = protocol or DecodingProtocol()
    data = data if data is not None else session_position_data(session, protocol)
    if abs(data.bin_size - protocol.bin_size) > 1e-12 or data.behavior != protocol.behavior:
        raise ValueError(f"decoding_setup: data hold {data.behavior!r} in {data.bin_size} s bins but the protocol "
                         f"asks for {protocol.behavior!r} in {protocol.bin_size} s bins; bin again with this protocol")
    T = data.n_bins
    history = data.whole_history(protocol.n_history)  # a full n_history-bin window of counts, in one stretch
    has_pos = np.isfinite(data.position).all(axis=1)
    moving = data.moving_mask(protocol.speed_threshold, protocol.smooth_s)
    score = moving & has_pos & history
    train = score.copy() if protocol.train_on == "moving" else has_pos & history
    if protocol.fold_span == "recording":
        folds = blocked_folds(T, protocol.n_folds, protocol.gap_s, protocol.bin_size)
    else:
        moving_bins = np.flatnonzero(score)
        if moving_bins.size < protocol.n_folds:
            raise ValueError(f"decoding_setup: {moving_bins.size} moving bins, too few for {protocol.n_folds} folds; "
                             f"lower DecodingProtocol.speed_threshold ({protocol.speed_threshold})")
        a, b = int(moving_bins[0]), int(moving_bins[-1]) + 1
        span_folds = blocked_folds(b - a, protocol.n_folds, protocol.gap_s, protocol.bin_size)
        folds = [(tr + a, te + a) for tr, te in span_folds]
    return DecodingSetup(protocol=protocol, data=data, folds=folds, score_mask=score, train_mask=train)


def ridge_floor(session_path, protocol: DecodingProtocol | None = None, *, setup: DecodingSetup | None = None
                ) -> dict:
    """The DESIGN.md 8 floor: ridge on binned counts with history, plus a mean null, one setup.

    Features for bin t: every unit's counts in bins ``t - n_history + 1 .. t``
    (:func:`neurofm.baselines.history_features` with the current bin), standardised by
    the ridge. ``protocol.label_fraction < 1`` gives the few-shot floor.

    Parameters
    ----------
    session_path : session file (or open Session); not read when ``setup`` is given and
        ``protocol`` bins the same way (same ``bin_size``, ``behavior``, ``speed_name``).
    protocol : defaults to :class:`DecodingProtocol` (``setup.protocol`` when only a setup
        is given). With a ``setup`` and a different protocol, the setup's binned data are
        reused and the masks and folds rebuilt for the new protocol (threshold, smoothing,
        history, folds, few-shot and alpha may all differ).
    setup : a :func:`decoding_setup` to reuse (its bins, folds and masks).

    Returns
    -------
    dict: ``protocol`` (the describe line), ``ridge`` and ``null`` (:func:`evaluate_decoder`
    results; ``ridge["alphas"]`` the chosen penalty per fold), ``n_bins``, ``n_units``,
    ``n_moving``, ``setup`` (for other decoders to reuse).
    """
    if setup is None:
        setup = decoding_setup(session_path, protocol)
    elif protocol is not None and protocol != setup.protocol:
        same_bins = (protocol.bin_size, protocol.behavior, protocol.speed_name) == \
            (setup.protocol.bin_size, setup.protocol.behavior, setup.protocol.speed_name)
        setup = decoding_setup(session_path, protocol, data=setup.data if same_bins else None)
    p = setup.protocol
    data = setup.data
    X = history_features(data.counts, p.n_history, include_current=True)  # (T, n_history * N)
    ridge = RidgeFitPredict(p.alpha, p.alphas, p.inner_folds, gap=p.gap_bins)
    result_ridge = setup.evaluate(ridge, X)
    result_ridge["alphas"] = list(ridge.alphas_)
    result_null = setup.evaluate(mean_fit_predict, X)
    return {"protocol": setup.describe(), "ridge": result_ridge, "null": result_null, "n_bins": data.n_bins,
            "n_units": data.counts.shape[1], "n_moving": int(setup.score_mask.sum()), "setup": setup}
