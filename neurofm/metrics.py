"""Evaluation metrics with their published definitions (DESIGN.md 8).

Pure NumPy functions: arrays in, numbers out, no model or dataset objects, so the same
function scores a neurofm model, a baseline (:mod:`neurofm.baselines`) and a number read
from a paper. Every function checks the shapes it is given and says which argument is wrong.

- Spikes: :func:`bits_per_spike` (Neural Latents Benchmark), :func:`psth_r` (per-neuron PSTH
  correlation), :func:`window_f1` (Neuroformer's window-level ID-set precision/recall/F1).
- Behaviour: :func:`r2_score` (pooled over all held-out predictions), :func:`pearson_r`, both
  from :class:`RegressionMoments` (also fed batch by batch by streaming scorers).
- iEEG classification: :func:`auroc` (binary and one-vs-rest), :func:`roc_curve` (its curve).
"""

from __future__ import annotations

from typing import Any, Iterable, Sequence

import numpy as np
from scipy.ndimage import gaussian_filter1d
from scipy.special import gammaln
from scipy.stats import rankdata

__all__ = ["bits_per_spike", "psth_r", "window_f1", "r2_score", "pearson_r", "RegressionMoments", "auroc",
           "roc_curve"]

_LN2 = np.log(2.0)


def _poisson_log_likelihood(rates: np.ndarray, spikes: np.ndarray) -> np.ndarray:
    """Element-wise Poisson log-likelihood ``y log r - r - log y!`` (NaN where spikes are NaN).

    Zero rates are replaced by 1e-9, as the Neural Latents Benchmark does, so a zero rate
    with a spike is heavily penalised instead of giving -inf.
    """
    rates = np.where(rates == 0, 1e-9, rates)
    return spikes * np.log(rates) - rates - gammaln(spikes + 1.0)


def bits_per_spike(rates, spikes, null_rates=None, *, per_neuron: bool = False):
    """Bits per spike: how much better ``rates`` predict ``spikes`` than each neuron's mean rate.

    The Neural Latents Benchmark definition (Pei et al., 2021; ``nlb_tools.evaluation``)::

        bits/spike = (log L(rates) - log L(null)) / (total spikes * ln 2)

    with Poisson log-likelihoods summed over every bin and neuron, and ``null`` each neuron's
    mean spike count per bin over the *evaluated* data. 0 means no better than a constant
    rate; positive is better. NaN spike entries are left out (as NLB does).

    Parameters
    ----------
    rates : array (..., N)
        Predicted rates in spikes **per bin** (not per second), >= 0. Leading axes are any
        arrangement of bins, e.g. ``(T, N)`` or ``(trials, T, N)``.
    spikes : array (..., N)
        Observed spike counts, same shape.
    null_rates : array broadcastable to (..., N), optional
        Rates of the null model (spikes per bin). Default: the per-neuron mean of ``spikes``
        (the NLB null). Pass e.g. the training-set mean to compare against a fitted baseline.
    per_neuron : bool
        If True, return (N,) bits/spike, each neuron's log-likelihood gain over its own
        spike count (NaN for neurons without spikes). Default: the pooled NLB number.

    Returns
    -------
    float, or (N,) array when ``per_neuron``.
    """
    rates = np.asarray(rates, dtype=np.float64)
    spikes = np.asarray(spikes, dtype=np.float64)
    if rates.shape != spikes.shape:
        raise ValueError(f"bits_per_spike: rates has shape {rates.shape} but spikes has {spikes.shape}; "
                         "they must match (..., N)")
    if spikes.ndim < 1 or spikes.size == 0:
        raise ValueError(f"bits_per_spike: spikes must be a non-empty (..., N) array, got shape {spikes.shape}")
    observed = ~np.isnan(spikes)
    if np.isnan(rates[observed]).any():
        raise ValueError("bits_per_spike: rates contain NaN where spikes are observed")
    if (rates[observed] < 0).any():
        raise ValueError("bits_per_spike: rates must be >= 0 (spikes per bin); pass exp(log-rates) for log-rates")
    lead = tuple(range(spikes.ndim - 1))
    if null_rates is None:
        null = np.nanmean(spikes, axis=lead, keepdims=True)
    else:
        null = np.asarray(null_rates, dtype=np.float64)
        if (null < 0).any() or np.isnan(null).any():
            raise ValueError("bits_per_spike: null_rates must be >= 0 and not NaN")
    try:
        null = np.broadcast_to(null, spikes.shape)
    except ValueError:
        raise ValueError(f"bits_per_spike: null_rates of shape {np.shape(null_rates)} do not broadcast to "
                         f"spikes {spikes.shape}; pass (N,) per-neuron rates per bin") from None
    gain = _poisson_log_likelihood(rates, spikes) - _poisson_log_likelihood(null, spikes)  # (..., N)
    if per_neuron:
        n_spikes = np.nansum(spikes, axis=lead)
        with np.errstate(invalid="ignore", divide="ignore"):
            return np.where(n_spikes > 0, np.nansum(gain, axis=lead) / (n_spikes * _LN2), np.nan)
    total = np.nansum(spikes)
    if total <= 0:
        raise ValueError("bits_per_spike: the evaluated data hold no spikes, so bits/spike is undefined")
    return float(np.nansum(gain) / (total * _LN2))


def psth_r(pred, true, *, sigma: float = 0.0) -> np.ndarray:
    """Per-neuron Pearson r between predicted and recorded PSTHs.

    A PSTH is the mean count per bin across repeats aligned to the same event (trials of a
    stimulus, or windows aligned to an event); this compares *when* each neuron fires, not
    trial-by-trial noise.

    Parameters
    ----------
    pred, true : array (K, T, N) or (T, N)
        Counts per trial, time bin and neuron (the PSTH is their mean over the K trials; the
        two may have different K, e.g. 20 generated vs 10 recorded repeats), or PSTHs already
        averaged, (T, N).
    sigma : float
        Gaussian smoothing of each PSTH along time, in bins (0 = none).

    Returns
    -------
    (N,) array: r per neuron; NaN where either PSTH is constant (r undefined).
    """
    pred, true = np.asarray(pred, dtype=np.float64), np.asarray(true, dtype=np.float64)
    psths = []
    for name, a in (("pred", pred), ("true", true)):
        if a.ndim == 3:
            a = np.nanmean(a, axis=0)
        elif a.ndim != 2:
            raise ValueError(f"psth_r: {name} must be (trials, T, N) or (T, N), got shape {a.shape}")
        psths.append(gaussian_filter1d(a, sigma, axis=0, mode="nearest") if sigma > 0 else a)
    p, t = psths
    if p.shape != t.shape:
        raise ValueError(f"psth_r: PSTHs differ in shape: pred {p.shape}, true {t.shape}; both must be (T, N)")
    if p.shape[0] < 2:
        raise ValueError(f"psth_r: need at least 2 time bins, got {p.shape[0]}")
    return _columnwise_r(p, t)


class RegressionMoments:
    """Running centred moments of paired samples ``(y, y_hat)``, per output column, fed chunk by
    chunk: the one implementation of Pearson r and R2 in neurofm (:func:`pearson_r`,
    :func:`r2_score`, :func:`psth_r` feed it their whole arrays as one chunk; streaming
    scorers such as :func:`neurofm.evaluation_ieeg.score_reconstruction` feed it batch by batch
    without keeping the predictions).

    Chunks merge by Chan et al.'s pairwise update of means and centred sums, so there is no
    ``sum y^2 - (sum y)^2 / n`` cancellation, and one chunk gives exactly the two-pass sums.

    Attributes (after :meth:`add`): ``n`` samples; ``ss_y``, ``ss_p`` centred sums of squares,
    ``s_yp`` centred cross sum, ``sse`` sum of squared errors, each ``(D,)``.
    """

    def __init__(self) -> None:
        self.n = 0
        self.mean_y = self.mean_p = self.ss_y = self.ss_p = self.s_yp = self.sse = np.zeros(0)

    def add(self, y, p) -> "RegressionMoments":
        """Add a chunk: ``y``, ``y_hat`` of equal shape ``(n,)`` or ``(n, D)`` (D fixed across chunks)."""
        y = np.asarray(y, dtype=np.float64)
        p = np.asarray(p, dtype=np.float64)
        if y.shape != p.shape:
            raise ValueError(f"RegressionMoments.add: y has shape {y.shape} but y_hat has {p.shape}")
        if y.ndim not in (1, 2):
            raise ValueError(f"RegressionMoments.add: expected (n,) or (n, D) samples, got shape {y.shape}")
        if len(y) == 0:
            return self
        y, p = y.reshape(len(y), -1), p.reshape(len(p), -1)
        nb = y.shape[0]
        mb_y, mb_p = y.mean(axis=0), p.mean(axis=0)
        dy, dp = y - mb_y, p - mb_p
        ss_y, ss_p, s_yp = (dy * dy).sum(axis=0), (dp * dp).sum(axis=0), (dy * dp).sum(axis=0)
        sse = ((y - p) ** 2).sum(axis=0)
        if self.n == 0:
            self.mean_y, self.mean_p, self.ss_y, self.ss_p, self.s_yp, self.sse = mb_y, mb_p, ss_y, ss_p, s_yp, sse
        else:
            if mb_y.shape != self.mean_y.shape:
                raise ValueError(f"RegressionMoments.add: chunk has {mb_y.shape[0]} output(s), earlier chunks "
                                 f"{self.mean_y.shape[0]}")
            na, n = self.n, self.n + nb
            d_y, d_p = mb_y - self.mean_y, mb_p - self.mean_p
            w = na * nb / n
            self.ss_y = self.ss_y + ss_y + d_y * d_y * w
            self.ss_p = self.ss_p + ss_p + d_p * d_p * w
            self.s_yp = self.s_yp + s_yp + d_y * d_p * w
            self.sse = self.sse + sse
            self.mean_y = self.mean_y + d_y * (nb / n)
            self.mean_p = self.mean_p + d_p * (nb / n)
        self.n += nb
        return self

    def pearson(self) -> np.ndarray:
        """``(D,)`` Pearson r; NaN where either side is constant (or nothing was added)."""
        denom = np.sqrt(self.ss_y * self.ss_p)
        with np.errstate(invalid="ignore", divide="ignore"):
            return np.where(denom > 0, self.s_yp / np.where(denom > 0, denom, 1.0), np.nan)

    def r2(self) -> np.ndarray:
        """``(D,)`` ``1 - SSE / SS_tot``, pooled over every sample added; NaN where y is constant."""
        with np.errstate(invalid="ignore", divide="ignore"):
            return np.where(self.ss_y > 0, 1.0 - self.sse / np.where(self.ss_y > 0, self.ss_y, 1.0), np.nan)


def _columnwise_r(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Pearson r of each column of ``a`` (T, D) with the same column of ``b``; NaN if constant."""
    return RegressionMoments().add(a, b).pearson()


def _flatten_windows(name: str, windows: Sequence[Iterable[int]]) -> tuple[np.ndarray, np.ndarray]:
    """Per-window ID collections -> (window index, id) as two int64 arrays."""
    arrays = [np.asarray(list(w) if isinstance(w, (set, frozenset)) else w, dtype=np.int64).ravel() for w in windows]
    lengths = np.fromiter((a.size for a in arrays), dtype=np.int64, count=len(arrays))
    ids = np.concatenate(arrays) if arrays else np.zeros(0, dtype=np.int64)
    if ids.size and ids.min() < 0:
        raise ValueError(f"window_f1: {name} holds negative unit IDs; pass unit indices >= 0")
    return np.repeat(np.arange(len(arrays)), lengths), ids


def window_f1(true_ids: Sequence[Iterable[int]], pred_ids: Sequence[Iterable[int]], *,
              average: str = "macro", multiset: bool = False, reference: bool = False,
              per_window: bool = False) -> dict[str, Any]:
    """Window-level precision, recall and F1 of the *sets* of unit IDs that fire.

    Neuroformer's spike-prediction score (``compute_scores`` in the authors' analysis code):
    for each window, compare the set of units that spiked with the set the model generated,
    ignoring spike order and timing within the window.

    Parameters
    ----------
    true_ids, pred_ids : sequences of length W
        For each window, the IDs (int) of the recorded and of the predicted spikes
        (repeats allowed; duplicates collapse unless ``multiset``).
    average : "macro" or "micro"
        ``"macro"`` (Neuroformer's): precision, recall and F1 per window, then their mean
        over the windows that hold at least one recorded spike (windows with none are not
        scored, as in the reference). Per window ``P = TP / |pred|`` (0 if nothing
        predicted), ``R = TP / |true|``, ``F1 = 2PR / (P + R)`` (0 if P + R = 0).
        ``"micro"``: TP, FP and FN summed over all windows first, then one P, R and F1.
    multiset : bool
        Count repeated IDs: ``TP = sum over IDs of min(true count, predicted count)``, so
        predicting one spike of a unit that fired three times earns one of three.
    reference : bool
        Reproduce the reference code's special cases exactly (macro only), for comparison
        with published numbers: a window with TP > 0 and either no false positives or no
        false negatives scores P = R = 1 (the reference's shortcut), TP = 0 scores 0.

    Returns
    -------
    dict with ``precision``, ``recall``, ``f1`` (floats) and ``n_windows`` (windows scored);
    ``f1_per_window`` with ``per_window``.
    """
    if len(true_ids) != len(pred_ids):
        raise ValueError(f"window_f1: {len(true_ids)} windows of true IDs but {len(pred_ids)} of predicted IDs")
    if average not in ("macro", "micro"):
        raise ValueError(f"window_f1: average must be 'macro' or 'micro', got {average!r}")
    if per_window and average != "macro":
        raise ValueError("window_f1: per_window=True needs average='macro' (micro has no per-window score)")
    if reference and (average != "macro" or multiset):
        raise ValueError("window_f1: reference=True reproduces the reference's macro set score; "
                         "use average='macro', multiset=False")
    n_win = len(true_ids)
    wt, it = _flatten_windows("true_ids", true_ids)
    wp, ip = _flatten_windows("pred_ids", pred_ids)
    m = int(max(it.max(initial=-1), ip.max(initial=-1))) + 1
    key_t, key_p = wt * m + it, wp * m + ip  # one int per (window, id)
    if multiset:
        ut, ct = np.unique(key_t, return_counts=True)
        up, cp = np.unique(key_p, return_counts=True)
        common, i_t, i_p = np.intersect1d(ut, up, assume_unique=True, return_indices=True)
        tp = np.bincount(common // max(m, 1), weights=np.minimum(ct[i_t], cp[i_p]), minlength=n_win)
        n_true = np.bincount(wt, minlength=n_win).astype(np.float64)
        n_pred = np.bincount(wp, minlength=n_win).astype(np.float64)
    else:
        ut, up = np.unique(key_t), np.unique(key_p)
        common = np.intersect1d(ut, up, assume_unique=True)
        tp = np.bincount(common // max(m, 1), minlength=n_win).astype(np.float64)
        n_true = np.bincount(ut // max(m, 1), minlength=n_win).astype(np.float64)
        n_pred = np.bincount(up // max(m, 1), minlength=n_win).astype(np.float64)
    fp, fn = n_pred - tp, n_true - tp

    if average == "micro":
        P = tp.sum() / n_pred.sum() if n_pred.sum() else 0.0
        R = tp.sum() / n_true.sum() if n_true.sum() else 0.0
        F = 2 * P * R / (P + R) if P + R > 0 else 0.0
        return {"precision": float(P), "recall": float(R), "f1": float(F), "n_windows": n_win}

    scored = n_true > 0
    tp, fp, fn, n_true, n_pred = tp[scored], fp[scored], fn[scored], n_true[scored], n_pred[scored]
    if not scored.any():
        raise ValueError("window_f1: no window holds a recorded spike, so the macro score is undefined")
    with np.errstate(invalid="ignore", divide="ignore"):
        P = np.where(n_pred > 0, tp / np.maximum(n_pred, 1), 0.0)
        R = tp / n_true
        if reference:
            shortcut = (tp > 0) & ((fp == 0) | (fn == 0))
            P = np.where(tp == 0, 0.0, np.where(shortcut, 1.0, P))
            R = np.where(tp == 0, 0.0, np.where(shortcut, 1.0, R))
        F = np.where(P + R > 0, 2 * P * R / np.where(P + R > 0, P + R, 1.0), 0.0)
    out: dict[str, Any] = {"precision": float(P.mean()), "recall": float(R.mean()), "f1": float(F.mean()),
                           "n_windows": int(scored.sum())}
    if per_window:
        out["f1_per_window"] = np.full(n_win, np.nan)
        out["f1_per_window"][scored] = F
    return out


def _check_pair(fn: str, y_true, y_pred) -> tuple[np.ndarray, np.ndarray]:
    y_true = np.asarray(y_true, dtype=np.float64)
    y_pred = np.asarray(y_pred, dtype=np.float64)
    if y_true.shape != y_pred.shape:
        raise ValueError(f"{fn}: y_true has shape {y_true.shape} but y_pred has {y_pred.shape}; both (n,) or (n, D)")
    if y_true.ndim not in (1, 2) or y_true.shape[0] < 2:
        raise ValueError(f"{fn}: expected (n,) or (n, D) with n >= 2, got shape {y_true.shape}")
    if not (np.isfinite(y_true).all() and np.isfinite(y_pred).all()):
        raise ValueError(f"{fn}: inputs contain NaN or inf; drop those samples (e.g. bins without behaviour)")
    return y_true.reshape(len(y_true), -1), y_pred.reshape(len(y_pred), -1)


def _reduce(fn: str, values: np.ndarray, multioutput: str, one_d: bool):
    if multioutput == "raw_values":
        return values[0] if one_d else values
    if multioutput == "uniform_average":
        return float(np.mean(values))
    raise ValueError(f"{fn}: multioutput must be 'uniform_average' or 'raw_values', got {multioutput!r}")


def r2_score(y_true, y_pred, *, multioutput: str = "uniform_average"):
    """Coefficient of determination, pooled over all given samples.

    ``R2 = 1 - sum (y - y_hat)^2 / sum (y - mean y)^2`` per output, over every sample passed
    in at once: to score blocked cross-validation, concatenate the held-out predictions of
    all folds and call this once (DESIGN.md 8), rather than averaging per-fold R2s.

    Parameters
    ----------
    y_true, y_pred : array (n,) or (n, D)
    multioutput : "uniform_average" (mean over the D outputs, e.g. x and y) or "raw_values" ((D,)).

    Returns
    -------
    float, or (D,) with ``raw_values``; NaN for an output whose true values are constant.
    """
    one_d = np.ndim(y_true) == 1
    y, p = _check_pair("r2_score", y_true, y_pred)
    return _reduce("r2_score", RegressionMoments().add(y, p).r2(), multioutput, one_d)


def pearson_r(y_true, y_pred, *, multioutput: str = "uniform_average"):
    """Pearson correlation per output over all given samples (see :func:`r2_score` for shapes).

    Returns a float (mean over outputs) or (D,) with ``multioutput="raw_values"``; NaN for an
    output where either side is constant.
    """
    one_d = np.ndim(y_true) == 1
    y, p = _check_pair("pearson_r", y_true, y_pred)
    return _reduce("pearson_r", _columnwise_r(y, p), multioutput, one_d)


def _binary_auroc(positive: np.ndarray, scores: np.ndarray) -> float:
    """Mann-Whitney AUROC: P(score of a positive > score of a negative), ties count half."""
    n_pos = int(positive.sum())
    n_neg = positive.size - n_pos
    if n_pos == 0 or n_neg == 0:
        return np.nan
    ranks = rankdata(scores)  # average ranks for ties
    return float((ranks[positive].sum() - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg))


def auroc(y_true, scores, *, average: str = "macro"):
    """Area under the ROC curve (rank-based, exact with ties).

    Parameters
    ----------
    y_true : array (n,)
        Binary labels (0/1 or bool) when ``scores`` is 1-D; class indices ``0..K-1`` when
        ``scores`` is (n, K).
    scores : array (n,) or (n, K)
        Higher = more likely positive (probabilities, logits or decision values all work:
        only the ranking matters). (n, K): one score per class, scored one-vs-rest.
    average : "macro" or "none"
        Multiclass only: mean of the per-class one-vs-rest AUROCs over the classes that have
        both positives and negatives (as torchmetrics' ``average="macro"``), or the (K,)
        values (NaN for a class absent from ``y_true``).

    Returns
    -------
    float (binary or macro), or (K,) array with ``average="none"``.
    """
    y_true = np.asarray(y_true)
    scores = np.asarray(scores, dtype=np.float64)
    if y_true.ndim != 1 or scores.shape[:1] != y_true.shape:
        raise ValueError(f"auroc: y_true must be (n,) and scores (n,) or (n, K); got {y_true.shape} and {scores.shape}")
    if not np.isfinite(scores).all():
        raise ValueError("auroc: scores contain NaN or inf")
    if scores.ndim == 1:
        labels = np.unique(y_true)
        if not np.isin(labels, [0, 1]).all():
            raise ValueError(f"auroc: binary labels must be 0/1 or bool, got values {labels[:5]}; "
                             "for several classes pass scores of shape (n, K)")
        value = _binary_auroc(y_true.astype(bool), scores)
        if np.isnan(value):
            raise ValueError("auroc: y_true holds only one class, so AUROC is undefined")
        return value
    if scores.ndim != 2:
        raise ValueError(f"auroc: scores must be (n,) or (n, K), got shape {scores.shape}")
    K = scores.shape[1]
    y_int = y_true.astype(np.int64)
    if (y_int != y_true).any() or y_int.min() < 0 or y_int.max() >= K:
        raise ValueError(f"auroc: multiclass labels must be integers in [0, {K}) to index the {K} score columns")
    per_class = np.array([_binary_auroc(y_int == k, scores[:, k]) for k in range(K)])
    if average == "none":
        return per_class
    if average != "macro":
        raise ValueError(f"auroc: average must be 'macro' or 'none', got {average!r}")
    if np.isnan(per_class).all():
        raise ValueError("auroc: no class has both positive and negative samples")
    return float(np.nanmean(per_class))


def roc_curve(y_true, scores) -> tuple[np.ndarray, np.ndarray]:
    """Binary ROC curve: ``(fpr, tpr)`` (P,) from (0, 0) to (1, 1), one point per distinct score.

    ``y_true`` (n,) 0/1 or bool, ``scores`` (n,) (higher = positive). Tied scores move the
    curve diagonally, so the trapezoid area under it equals :func:`auroc` exactly.
    """
    y = np.asarray(y_true)
    s = np.asarray(scores, dtype=np.float64)
    if y.ndim != 1 or s.shape != y.shape:
        raise ValueError(f"roc_curve: y_true and scores must both be (n,), got {y.shape} and {s.shape}")
    if not np.isin(np.unique(y), [0, 1]).all():
        raise ValueError("roc_curve: y_true must be binary (0/1 or bool)")
    if not np.isfinite(s).all():
        raise ValueError("roc_curve: scores contain NaN or inf")
    y = y.astype(bool)
    n_pos, n_neg = int(y.sum()), int((~y).sum())
    if n_pos == 0 or n_neg == 0:
        raise ValueError("roc_curve: y_true holds only one class, so the ROC curve is undefined")
    order = np.argsort(-s, kind="stable")
    s, y = s[order], y[order]
    last = np.r_[np.flatnonzero(np.diff(s) != 0), len(s) - 1]  # last index of each distinct score
    tp = np.cumsum(y)[last]
    fp = (last + 1) - tp
    return np.r_[0.0, fp / n_neg], np.r_[0.0, tp / n_pos]
