"""Simple baselines that every neurofm number is reported against (DESIGN.md 8).

- Spikes: :class:`MeanRatePoisson` (each unit's training mean rate, the floor of bits/spike)
  and :class:`PoissonGLM` (each unit's next-bin count from a few bins of every unit's
  history: the classic coupled GLM of Pillow et al., 2008).
- Behaviour: :class:`SpikeRidgeDecoder` (ridge regression from lagged binned counts).
- iEEG classification: :class:`BandPowerRidge` (ridge on log band power per channel) and
  :class:`BandPowerLogistic` (L2 logistic regression on the same features, :class:`Logistic`);
  iEEG regression: :class:`Ridge` on ``BandPowerRidge(rate).features(segments)``.

Each baseline is fitted on a training block and scored on a held-out block with the same
metrics as the models (:mod:`neurofm.metrics`). Helpers turn session data into arrays:
:func:`bin_spikes`, :func:`bin_timeseries`, :func:`aligned_counts`, :func:`history_features`,
:func:`band_power`. Everything is vectorised NumPy/SciPy; nothing loops over spikes or bins.
"""

from __future__ import annotations

from typing import Callable, Mapping, Sequence

import numpy as np
import torch
from scipy import optimize, sparse

from neurofm import metrics
from neurofm.nn import spectral
from neurofm.nn.spectral import BANDS, bands_below_nyquist

__all__ = [
    "bin_spikes", "bin_timeseries", "aligned_counts", "history_features", "band_power", "BANDS",
    "MeanRatePoisson", "PoissonGLM", "Ridge", "SpikeRidgeDecoder", "PoissonBayesDecoder", "BandPowerRidge",
    "Logistic", "BandPowerLogistic", "blocked_splits", "penalty_folds", "PENALTY_FOLDS", "auroc_or_mse",
]

DEFAULT_ALPHAS = tuple(np.logspace(-1, 5, 13))
#: inner folds that choose a penalty (:class:`Ridge`, :class:`Logistic`): every sample validates once,
#: in a block of 1/5 of the samples, the size of the single holdout block those fits used before
PENALTY_FOLDS = 5


def blocked_splits(n: int, n_folds: int, gap: int = 0, unit: str = "samples") -> list[tuple[np.ndarray, np.ndarray]]:
    """Blocked K-fold over ``n`` samples in time order: ``[(train_idx, val_idx), ...]``.

    Block ``k`` = samples ``[e_k, e_{k+1})`` with ``e = round(linspace(0, n, n_folds + 1))``, so
    every sample is held out in exactly one fold; fold ``k`` trains on every other sample except
    ``gap`` samples on each side of its block (autocorrelated neighbours do not leak).
    ValueError when a fold has no training sample left (``unit`` names the samples in messages)."""
    n, n_folds, gap = int(n), int(n_folds), int(gap)
    if n_folds < 2 or n < n_folds:
        raise ValueError(f"need 2 <= n_folds <= number of {unit}, got n_folds={n_folds}, n={n}")
    if gap < 0:
        raise ValueError(f"gap must be >= 0 {unit}, got {gap}")
    edges = np.round(np.linspace(0, n, n_folds + 1)).astype(np.int64)
    folds = []
    for k in range(n_folds):
        a, b = int(edges[k]), int(edges[k + 1])
        train = np.concatenate([np.arange(0, max(a - gap, 0)), np.arange(min(b + gap, n), n)]).astype(np.int64)
        if train.size == 0:
            raise ValueError(f"fold {k} has no training {unit} left ({n} {unit}, {n_folds} folds, gap {gap}); "
                             f"use fewer folds or a shorter gap")
        folds.append((train, np.arange(a, b, dtype=np.int64)))
    return folds


def penalty_folds(n: int, gap: int = 0, n_folds: int = PENALTY_FOLDS, what: str = "penalty_folds"
                  ) -> list[tuple[np.ndarray, np.ndarray]]:
    """The inner folds on which :class:`Ridge` and :class:`Logistic` choose their penalty: ``n_folds``
    contiguous blocks of the ``n`` time-ordered samples (:func:`blocked_splits`), fewer when the
    samples are few (every block holds at least 2), ``gap`` samples dropped from training on each
    side of each block. A ValueError naming ``what`` when no fold layout leaves every fold at
    least 2 training samples."""
    k = min(int(n_folds), int(n) // 2)
    folds = None
    if k >= 2:
        try:
            folds = blocked_splits(n, k, gap)
        except ValueError:
            folds = None
    if folds is None or min(len(tr) for tr, _ in folds) < 2:
        raise ValueError(f"{what}: {n} samples are too few to choose the penalty by blocked CV "
                         f"({max(k, 2)} folds of at least 2 samples, {gap} dropped on each side of each "
                         f"held-out block, at least 2 left to fit); pass a single alpha")
    return folds


def _n_folds(n_folds: int, val_fraction: float | None, who: str) -> int:
    """The fold count, or ``round(1 / val_fraction)`` when a caller of the former holdout rule passes that."""
    if val_fraction is not None:
        if not 0 < val_fraction <= 0.5:
            raise ValueError(f"{who}: val_fraction must be in (0, 0.5] (1 / the number of inner folds), "
                             f"got {val_fraction}")
        n_folds = int(round(1 / val_fraction))
    if int(n_folds) < 2:
        raise ValueError(f"{who}: n_folds must be >= 2, got {n_folds}")
    return int(n_folds)


def _n_bins(t0: float, t1: float, bin_size: float) -> int:
    if not bin_size > 0:
        raise ValueError(f"bin_size must be positive, got {bin_size}")
    if not t1 > t0:
        raise ValueError(f"need t1 > t0, got [{t0}, {t1}]")
    return int(np.floor((t1 - t0) / bin_size + 1e-9))


def bin_spikes(times, unit_index, n_units: int, t0: float, t1: float, bin_size: float) -> np.ndarray:
    """Spike counts per bin: ``(T, N)`` int64 with ``T = floor((t1 - t0) / bin_size)``.

    Bin ``k`` covers ``[t0 + k * bin_size, t0 + (k + 1) * bin_size)``; spikes outside the
    ``T`` whole bins are dropped. ``times`` (s) and ``unit_index`` (int, < ``n_units``) pair up.
    """
    times = np.asarray(times, dtype=np.float64).ravel()
    unit_index = np.asarray(unit_index, dtype=np.int64).ravel()
    if times.shape != unit_index.shape:
        raise ValueError(f"bin_spikes: {times.size} times but {unit_index.size} unit indices")
    if unit_index.size and (unit_index.min() < 0 or unit_index.max() >= n_units):
        raise ValueError(f"bin_spikes: unit_index must be in [0, {n_units})")
    T = _n_bins(t0, t1, bin_size)
    k = np.floor((times - t0) / bin_size).astype(np.int64)
    keep = (k >= 0) & (k < T)
    flat = np.bincount(k[keep] * n_units + unit_index[keep], minlength=T * n_units)
    return flat.reshape(T, n_units).astype(np.int64)


def bin_timeseries(timestamps, values, t0: float, t1: float, bin_size: float) -> np.ndarray:
    """Mean of a sampled variable (e.g. behaviour) in each bin of :func:`bin_spikes`.

    ``values`` (S,) or (S, D) at ``timestamps`` (S,) s. Returns (T,) or (T, D) float64 with
    NaN in bins that hold no sample (drop those bins before fitting or scoring).
    """
    ts = np.asarray(timestamps, dtype=np.float64).ravel()
    values = np.asarray(values, dtype=np.float64)
    if values.shape[:1] != ts.shape:
        raise ValueError(f"bin_timeseries: {ts.size} timestamps but values of shape {values.shape}")
    v2 = values.reshape(len(ts), -1)
    T = _n_bins(t0, t1, bin_size)
    k = np.floor((ts - t0) / bin_size).astype(np.int64)
    keep = (k >= 0) & (k < T)
    n = np.bincount(k[keep], minlength=T).astype(np.float64)
    sums = np.stack([np.bincount(k[keep], weights=v2[keep, d], minlength=T) for d in range(v2.shape[1])], axis=1)
    with np.errstate(invalid="ignore", divide="ignore"):
        mean = np.where(n[:, None] > 0, sums / n[:, None], np.nan)
    return mean[:, 0] if values.ndim == 1 else mean


def aligned_counts(times, unit_index, n_units: int, onsets, t_before: float, t_after: float,
                   bin_size: float) -> np.ndarray:
    """Counts in bins aligned to each onset: ``(K, T, N)`` for K onsets (PSTHs, :func:`metrics.psth_r`).

    Trial ``k`` covers ``[onsets[k] - t_before, onsets[k] + t_after)`` in
    ``T = floor((t_before + t_after) / bin_size)`` bins. ``times`` must be sorted (as
    session files store them).
    """
    times = np.asarray(times, dtype=np.float64).ravel()
    unit_index = np.asarray(unit_index, dtype=np.int64).ravel()
    onsets = np.asarray(onsets, dtype=np.float64).ravel()
    if times.shape != unit_index.shape:
        raise ValueError(f"aligned_counts: {times.size} times but {unit_index.size} unit indices")
    if times.size > 1 and np.any(np.diff(times) < 0):
        raise ValueError("aligned_counts: spike times must be sorted")
    T = _n_bins(-t_before, t_after, bin_size)
    starts = onsets - t_before
    i0 = np.searchsorted(times, starts, side="left")
    i1 = np.searchsorted(times, onsets + t_after, side="left")
    n = i1 - i0
    trial = np.repeat(np.arange(onsets.size), n)
    # index of every selected spike: i0[trial] + position within its trial
    within = np.arange(n.sum()) - np.repeat(np.cumsum(n) - n, n)
    idx = i0[trial] + within
    k = np.floor((times[idx] - starts[trial]) / bin_size).astype(np.int64)
    keep = (k >= 0) & (k < T)
    flat = np.bincount((trial[keep] * T + k[keep]) * n_units + unit_index[idx][keep],
                       minlength=onsets.size * T * n_units)
    return flat.reshape(onsets.size, T, n_units)


def history_features(counts, n_lags: int, *, include_current: bool = False, context=None) -> np.ndarray:
    """Lagged copies of every unit's counts: ``(T, n_lags * N)``, lag-major columns.

    Column block ``l`` holds ``counts[t - lag]`` with ``lag = l + 1`` (``include_current=False``:
    only the past, as an encoding model needs) or ``lag = l`` (``include_current=True``: the
    current bin too, as a decoder may use). Bins before the start come from ``context``
    ((Tc, N) counts that precede ``counts``, e.g. the end of the training block) or are 0.
    """
    counts = np.asarray(counts, dtype=np.float64)
    if counts.ndim != 2:
        raise ValueError(f"history_features: counts must be (T, N), got shape {counts.shape}")
    if n_lags < 1:
        raise ValueError(f"history_features: n_lags must be >= 1, got {n_lags}")
    T, N = counts.shape
    pad = np.zeros((n_lags, N))
    if context is not None:
        context = np.asarray(context, dtype=np.float64)
        if context.ndim != 2 or context.shape[1] != N:
            raise ValueError(f"history_features: context must be (Tc, {N}), got shape {context.shape}")
        pad = np.concatenate([pad, context])[-n_lags:]
    full = np.concatenate([pad, counts])  # row n_lags + t is bin t
    first = 0 if include_current else 1
    return np.concatenate([full[n_lags - lag: n_lags - lag + T] for lag in range(first, first + n_lags)], axis=1)


# --------------------------------------------------------------------------------------------
# spike encoding baselines
# --------------------------------------------------------------------------------------------


class MeanRatePoisson:
    """Each unit fires at its training mean rate: the null model of bits/spike.

    ``fit(counts (T, N))``; ``predict(n_bins) -> (n_bins, N)`` rates in spikes per bin. On
    held-out data it scores slightly below 0 bits/spike (the NLB null uses the held-out mean).
    """

    def fit(self, counts) -> "MeanRatePoisson":
        counts = np.asarray(counts, dtype=np.float64)
        if counts.ndim != 2:
            raise ValueError(f"MeanRatePoisson.fit: counts must be (T, N), got shape {counts.shape}")
        self.rate_ = counts.mean(axis=0)  # (N,) spikes per bin
        return self

    def predict(self, n_bins: int) -> np.ndarray:
        return np.broadcast_to(self.rate_, (int(n_bins), self.rate_.size)).copy()


class PoissonGLM:
    """Coupled Poisson GLM: each unit's count in bin t from the last ``n_history`` bins of all units.

    ``rate[t, i] = exp(b_i + sum_{lag, j} coupling[lag - 1, i, j] * counts[t - lag, j] + covariates[t] @ beta_i)``

    fitted by maximising the Poisson log-likelihood with an L2 penalty ``l2 / 2 * ||w||^2``
    on all weights but the biases (a N(0, 1 / l2) prior on the effect of one spike on the
    log-rate), jointly for all units with L-BFGS (analytic gradient; the history design is
    sparse, so each evaluation is two sparse matrix products). With ``n_history * bin_size``
    spanning the coupling time constant, the GLM captures the directed interactions that a
    mean-rate model cannot.

    ``l2`` may be a sequence: each value is then fitted on the first ``1 - val_fraction`` of
    the training bins and scored (bits/spike) on the rest, and the best is refitted on all.
    Few spikes per unit and many units call for a strong penalty (the default 10 keeps a
    30-unit, 4-lag model from overfitting a couple of minutes of data).
    """

    def __init__(self, n_history: int = 5, l2: float | Sequence[float] = 10.0, val_fraction: float = 0.2,
                 max_iter: int = 500, tol: float = 1e-7):
        self.n_history = int(n_history)
        self.l2s = np.atleast_1d(np.asarray(l2, dtype=np.float64))
        if (self.l2s < 0).any():
            raise ValueError(f"PoissonGLM: l2 must be >= 0, got {l2}")
        self.val_fraction, self.max_iter, self.tol = float(val_fraction), int(max_iter), float(tol)

    def _design(self, counts, covariates, context):
        X = history_features(counts, self.n_history, include_current=False, context=context)
        if covariates is not None:
            cov = np.asarray(covariates, dtype=np.float64).reshape(len(X), -1)
            X = np.concatenate([X, (cov - self.cov_mean_) / self.cov_std_], axis=1)
        if X.size and np.count_nonzero(X) < 0.2 * X.size:
            return sparse.csr_matrix(X)
        return X

    def _fit_weights(self, X, Y, l2: float, theta0: np.ndarray | None = None):
        T, N = Y.shape
        F = X.shape[1]
        XT = X.T.tocsr() if sparse.issparse(X) else X.T

        def objective(theta):
            Wb = theta.reshape(F + 1, N)
            eta = np.clip(X @ Wb[:F] + Wb[F], -30.0, 20.0)  # (T, N)
            mu = np.exp(eta)
            resid = mu - Y
            loss = (mu - Y * eta).sum() + 0.5 * l2 * (Wb[:F] ** 2).sum()
            grad = np.concatenate([XT @ resid + l2 * Wb[:F], resid.sum(axis=0, keepdims=True)])
            return loss / T, grad.ravel() / T

        if theta0 is None:
            theta0 = np.zeros((F + 1, N))
            theta0[F] = np.log(Y.mean(axis=0) + 1e-3)
        res = optimize.minimize(objective, theta0.ravel(), jac=True, method="L-BFGS-B",
                                options={"maxiter": self.max_iter, "gtol": self.tol})
        return res.x.reshape(F + 1, N), res

    def fit(self, counts, covariates=None) -> "PoissonGLM":
        """``counts`` (T, N) training counts in time order; ``covariates`` (T, D) optional extra
        regressors (e.g. binned speed), standardised internally."""
        Y = np.asarray(counts, dtype=np.float64)
        if Y.ndim != 2:
            raise ValueError(f"PoissonGLM.fit: counts must be (T, N), got shape {Y.shape}")
        T, N = Y.shape
        self.has_covariates_ = covariates is not None
        if covariates is not None:
            cov = np.asarray(covariates, dtype=np.float64).reshape(T, -1)
            if len(cov) != T:
                raise ValueError(f"PoissonGLM.fit: {len(cov)} covariate rows for {T} bins")
            self.cov_mean_, self.cov_std_ = cov.mean(axis=0), np.where(cov.std(axis=0) > 0, cov.std(axis=0), 1.0)
        X = self._design(Y, covariates, None)  # (T, F)
        theta = None
        if self.l2s.size > 1:
            n_fit = int(T * (1 - self.val_fraction))
            Xv = X[n_fit:]
            self.val_bits_per_spike_ = []
            for l2 in np.sort(self.l2s)[::-1]:  # strong to weak penalty, warm-started
                theta, _ = self._fit_weights(X[:n_fit], Y[:n_fit], l2, theta)
                rates = np.exp(np.clip(Xv @ theta[:-1] + theta[-1], -30.0, 20.0))
                self.val_bits_per_spike_.append((l2, metrics.bits_per_spike(rates, Y[n_fit:],
                                                                            null_rates=Y[:n_fit].mean(axis=0))))
            self.l2_ = max(self.val_bits_per_spike_, key=lambda pair: pair[1])[0]
        else:
            self.l2_ = float(self.l2s[0])
        Wb, res = self._fit_weights(X, Y, self.l2_)
        F = X.shape[1]
        self.weights_, self.bias_ = Wb[:F], Wb[F]  # (F, N), (N,)
        self.n_units_, self.converged_, self.n_iter_ = N, bool(res.success), int(res.nit)
        return self

    @property
    def coupling_(self) -> np.ndarray:
        """``(n_history, N, N)``: ``coupling_[lag - 1, i, j]`` = effect of one spike of j, ``lag``
        bins ago, on i's log-rate (same convention as the simulator's ground truth)."""
        N = self.n_units_
        return self.weights_[: self.n_history * N].reshape(self.n_history, N, N).transpose(0, 2, 1)

    def predict(self, counts, covariates=None, context=None) -> np.ndarray:
        """One-step-ahead rates ``(T, N)`` (spikes per bin) for bins with observed ``counts``
        (T, N): each bin from the recorded history before it. ``context`` (Tc, N): counts
        just before ``counts`` (e.g. the training block's end) so the first bins have history."""
        if (covariates is not None) != self.has_covariates_:
            raise ValueError("PoissonGLM.predict: pass covariates exactly when the model was fitted with them")
        X = self._design(counts, covariates, context)
        return np.exp(np.clip(X @ self.weights_ + self.bias_, -30.0, 20.0))


# --------------------------------------------------------------------------------------------
# ridge regression and decoders
# --------------------------------------------------------------------------------------------


class Ridge:
    """Ridge regression in closed form, ``alpha`` chosen by blocked K-fold inner cross-validation.

    Features are standardised with training statistics and targets centred, so ``alpha`` is
    on the scale of the number of samples. With several ``alphas``, the time-ordered training
    samples are cut into ``n_folds`` contiguous blocks (:func:`penalty_folds`: 5, fewer when
    the samples are few); each block is predicted by a fit on the others (minus ``gap``
    samples on each side of it, so autocorrelated neighbours do not leak), and ``score``
    (default negative MSE) of every alpha is computed once on all the held-out predictions
    pooled (``val_scores_``): one score over every sample, so a block that holds little
    variance (a stretch of rest) or one class does not get a score of its own to swing the
    choice, and a ``score`` that falls back to another metric on such a block cannot mix
    scales. The best alpha (``alpha_``) is refitted on all training samples. One
    eigendecomposition of ``X^T X`` per fold serves every alpha. ``val_fraction`` (kept for
    callers of the former single holdout block) sets ``n_folds = round(1 / val_fraction)``:
    a held-out block of that share of the samples, each block in turn.
    """

    def __init__(self, alphas: float | Sequence[float] = DEFAULT_ALPHAS, val_fraction: float | None = None,
                 gap: int = 0, score: Callable[[np.ndarray, np.ndarray], float] | None = None,
                 n_folds: int = PENALTY_FOLDS):
        self.alphas = np.atleast_1d(np.asarray(alphas, dtype=np.float64))
        if (self.alphas < 0).any():
            raise ValueError(f"Ridge: alphas must be >= 0, got {self.alphas}")
        self.n_folds, self.gap = _n_folds(n_folds, val_fraction, "Ridge"), int(gap)
        self.score = score or (lambda y, p: -float(np.mean((y - p) ** 2)))

    @staticmethod
    def _solve(X, Y, alphas):
        """Standardise, then return (mean, std, y_mean, list of (F, D) weights per alpha).

        A constant column (a unit that never fires in these samples: the checkpoint's units of
        other sessions, when a model pretrained on them is fine-tuned on a new one) standardises
        to zeros and gets weight 0 whatever the penalty, so it is left out of the
        eigendecomposition, whose cost grows with the cube of the columns: fine-tuning a model of
        110 units on a new day of 110 built 880 count columns of which 440 never vary."""
        mu, sd = X.mean(axis=0), X.std(axis=0)
        live = sd > 0
        sd = np.where(live, sd, 1.0)
        Z = (X[:, live] - mu[live]) / sd[live]
        y_mean = Y.mean(axis=0)
        evals, evecs = np.linalg.eigh(Z.T @ Z)
        proj = evecs.T @ (Z.T @ (Y - y_mean))  # (F_live, D)
        weights = []
        for a in alphas:
            w = np.zeros((X.shape[1], Y.shape[1]))
            w[live] = evecs @ (proj / (np.clip(evals, 0, None) + a)[:, None])
            weights.append(w)
        return mu, sd, y_mean, weights

    def cv_predictions(self, X, Y, folds) -> np.ndarray:
        """``(len(alphas), n, D)``: each fold's held-out rows predicted by every alpha's fit on that
        fold's training rows (NaN on rows no fold holds out). ``X`` (n, F), ``Y`` (n, D)."""
        X = np.asarray(X, dtype=np.float64)
        Y = np.asarray(Y, dtype=np.float64).reshape(len(X), -1)
        preds = np.full((self.alphas.size,) + Y.shape, np.nan)
        for tr, te in folds:
            mu, sd, y_mean, weights = self._solve(X[tr], Y[tr], self.alphas)
            Z = (X[te] - mu) / sd
            for i, w in enumerate(weights):
                preds[i, te] = Z @ w + y_mean
        return preds

    def fit(self, X, y) -> "Ridge":
        """``X`` (n, F) features, ``y`` (n,) or (n, D) targets, in time order."""
        X = np.asarray(X, dtype=np.float64)
        Y = np.asarray(y, dtype=np.float64)
        self._one_d = Y.ndim == 1
        Y = Y.reshape(len(Y), -1)
        if X.ndim != 2 or len(X) != len(Y):
            raise ValueError(f"Ridge.fit: X must be (n, F) and y (n,) or (n, D); got {X.shape} and {np.shape(y)}")
        if not (np.isfinite(X).all() and np.isfinite(Y).all()):
            raise ValueError("Ridge.fit: X or y contains NaN/inf; drop those samples first")
        alphas = self.alphas
        if alphas.size > 1:
            folds = penalty_folds(len(X), self.gap, self.n_folds, "Ridge.fit")
            preds = self.cv_predictions(X, Y, folds)
            self.val_scores_ = np.array([self.score(Y, p) for p in preds])  # the folds' blocks cover every row
            self.alpha_ = float(alphas[int(np.nanargmax(self.val_scores_))])
        else:
            self.alpha_ = float(alphas[0])
        self.x_mean_, self.x_std_, self.y_mean_, (self.coef_,) = self._solve(X, Y, [self.alpha_])
        return self

    def predict(self, X) -> np.ndarray:
        """``(n,)`` or ``(n, D)`` predictions, matching the training targets."""
        X = np.asarray(X, dtype=np.float64)
        if X.ndim != 2 or X.shape[1] != self.coef_.shape[0]:
            raise ValueError(f"Ridge.predict: X must be (n, {self.coef_.shape[0]}), got {X.shape}")
        out = (X - self.x_mean_) / self.x_std_ @ self.coef_ + self.y_mean_
        return out[:, 0] if self._one_d else out

    def linear_map(self) -> tuple[np.ndarray, np.ndarray]:
        """``(W (F, D), b (D,))`` on the raw features, standardisation folded in: ``X @ W + b`` is
        :meth:`predict` (as (n, D)). What a model's ``Linear`` copies to start at this fit."""
        W = self.coef_ / self.x_std_[:, None]
        return W, self.y_mean_ - self.x_mean_ @ W


class SpikeRidgeDecoder:
    """Ridge from binned counts with history to behaviour (the DESIGN.md 8 floor).

    Features for bin t: every unit's counts in bins ``t - n_history + 1 .. t`` (the current
    bin and ``n_history - 1`` before it; :func:`history_features` with ``include_current``).
    ``fit(counts (T, N), y (T,) or (T, D))``, ``predict(counts, context) -> (T,) or (T, D)``.
    Bins with NaN targets are dropped from the fit (their features still serve as history).
    """

    def __init__(self, n_history: int = 6, alphas: float | Sequence[float] = DEFAULT_ALPHAS,
                 val_fraction: float | None = None, gap: int = 0):
        self.n_history = int(n_history)
        self.ridge = Ridge(alphas, val_fraction=val_fraction, gap=gap)

    def features(self, counts, context=None) -> np.ndarray:
        return history_features(counts, self.n_history, include_current=True, context=context)

    def fit(self, counts, y) -> "SpikeRidgeDecoder":
        X = self.features(counts)
        y = np.asarray(y, dtype=np.float64)
        if len(y) != len(X):
            raise ValueError(f"SpikeRidgeDecoder.fit: {len(X)} bins of counts but {len(y)} targets")
        ok = np.isfinite(y.reshape(len(y), -1)).all(axis=1)
        self.ridge.fit(X[ok], y[ok])
        return self

    def predict(self, counts, context=None) -> np.ndarray:
        return self.ridge.predict(self.features(counts, context))


class PoissonBayesDecoder:
    """Poisson place-field Bayes decoder (Zhang et al., 1998) for a 1-D or 2-D variable.

    ``fit(counts (n, N), y (n,) or (n, D))``: on a grid of ``n_grid`` bins per dimension
    spanning the 1st-99th percentile of the training targets, each unit's expected count per
    window is its summed count divided by the occupancy, both Gaussian-smoothed by
    ``smooth_bins`` grid bins (a place field), floored at ``min_rate`` times the unit's mean
    so no bin rules a unit out. ``predict(counts)``: the posterior over the grid from
    independent Poisson counts (``log p = sum_i c_i log f_i(x) - f_i(x)``) with the training
    occupancy as prior; returns the posterior mean (lower squared error than the MAP on a
    coarse grid). ``counts`` are spikes per unit in the decoding window (same length at fit
    and predict time).
    """

    def __init__(self, n_grid: int | None = None, smooth_bins: float = 1.0, min_rate: float = 0.01):
        self.n_grid, self.smooth_bins, self.min_rate = n_grid, float(smooth_bins), float(min_rate)

    def fit(self, counts, y) -> "PoissonBayesDecoder":
        from scipy.ndimage import gaussian_filter

        C = np.asarray(counts, dtype=np.float64)
        Y = np.asarray(y, dtype=np.float64)
        self._one_d = Y.ndim == 1
        Y = Y.reshape(len(Y), -1)
        if C.ndim != 2 or len(C) != len(Y):
            raise ValueError(f"PoissonBayesDecoder.fit: counts must be (n, N) and y (n,) or (n, D); "
                             f"got {C.shape} and {np.shape(y)}")
        D = Y.shape[1]
        if D > 2:
            raise ValueError(f"PoissonBayesDecoder: decodes 1-D or 2-D variables; got {D} dimensions")
        ok = np.isfinite(Y).all(axis=1)
        C, Y = C[ok], Y[ok]
        if len(Y) < 2:
            raise ValueError("PoissonBayesDecoder.fit: fewer than 2 windows with a finite target")
        n_grid = self.n_grid or (40 if D == 1 else 20)
        lo, hi = np.percentile(Y, 1, axis=0), np.percentile(Y, 99, axis=0)
        hi = np.where(hi > lo, hi, lo + 1e-6)
        self.edges_ = [np.linspace(lo[d], hi[d], n_grid + 1) for d in range(D)]
        idx = np.stack([np.clip(np.searchsorted(self.edges_[d], Y[:, d], side="right") - 1, 0, n_grid - 1)
                        for d in range(D)], axis=1)
        flat = np.ravel_multi_index(tuple(idx.T), (n_grid,) * D)
        G = n_grid ** D
        occ = np.bincount(flat, minlength=G).astype(np.float64)
        sums = np.stack([np.bincount(flat, weights=C[:, i], minlength=G) for i in range(C.shape[1])], axis=1)
        shape = (n_grid,) * D
        sig = (self.smooth_bins,) * D
        occ_s = gaussian_filter(occ.reshape(shape), sig, mode="nearest").ravel()
        sums_s = np.stack([gaussian_filter(sums[:, i].reshape(shape), sig, mode="nearest").ravel()
                           for i in range(C.shape[1])], axis=1)
        with np.errstate(invalid="ignore", divide="ignore"):
            f = sums_s / occ_s[:, None]
        mean_rate = C.mean(axis=0)
        f = np.where(np.isfinite(f), f, mean_rate[None, :])
        self.fields_ = np.maximum(f, self.min_rate * mean_rate[None, :] + 1e-9)  # (G, N) counts per window
        self.log_prior_ = np.log(occ_s / occ_s.sum() + 1e-12)
        centres = [0.5 * (e[1:] + e[:-1]) for e in self.edges_]
        self.grid_ = np.stack([g.ravel() for g in np.meshgrid(*centres, indexing="ij")], axis=1)  # (G, D)
        return self

    def predict(self, counts) -> np.ndarray:
        C = np.asarray(counts, dtype=np.float64)
        if C.ndim != 2 or C.shape[1] != self.fields_.shape[1]:
            raise ValueError(f"PoissonBayesDecoder.predict: counts must be (n, {self.fields_.shape[1]}), got {C.shape}")
        logp = C @ np.log(self.fields_).T - self.fields_.sum(axis=1)[None, :] + self.log_prior_[None, :]  # (n, G)
        logp -= logp.max(axis=1, keepdims=True)
        post = np.exp(logp)
        post /= post.sum(axis=1, keepdims=True)
        out = post @ self.grid_
        return out[:, 0] if self._one_d else out


# --------------------------------------------------------------------------------------------
# iEEG: band power
# --------------------------------------------------------------------------------------------


def band_power(x, sampling_rate: float, bands: Mapping[str, tuple[float, float]] | None = None,
               *, log: bool = True) -> np.ndarray:
    """Mean power spectral density per band (Welch): ``(..., C, n_bands)`` for ``x`` (..., C, T).

    Welch segments of ``min(T, sampling_rate / 2)`` samples (2 Hz resolution) with 50%
    overlap; ``log`` returns log10 power, which makes band powers roughly Gaussian and
    comparable across bands. Every band must contain at least one frequency bin below
    Nyquist (choose bands for the sampling rate; :class:`BandPowerRidge` does). Computed in
    float64 by :func:`neurofm.nn.spectral.band_power`, the features the fine-tuned BaRISTA
    model's band-power read-out reads too.
    """
    x = torch.as_tensor(np.asarray(x, dtype=np.float64))
    return spectral.band_power(x, sampling_rate, bands, log=log).numpy()


def auroc_or_mse(Y: np.ndarray, P: np.ndarray) -> float:
    """Penalty score of a ridge classifier on +-1 one-vs-rest targets ``Y`` (n, K'): the AUROC of
    its scores ``P``, or -MSE when the held-out rows hold one class (:class:`Ridge`'s ``score``)."""
    labels = np.argmax(Y, axis=1) if Y.shape[1] > 1 else (Y[:, 0] > 0).astype(int)
    try:
        return float(metrics.auroc(labels, P if P.shape[1] > 1 else P[:, 0]))
    except ValueError:  # one class only in the held-out rows: fall back to MSE
        return -float(np.mean((Y - P) ** 2))


class BandPowerRidge:
    """Ridge classifier on log band power per channel: the iEEG baseline of DESIGN.md 8.

    Features: :func:`band_power` of every channel in each band below Nyquist, flattened
    (C * n_bands). Classes are regressed one-vs-rest on +-1 targets (binary: one column);
    ``alpha`` is chosen by :class:`Ridge`'s blocked inner CV of the (time-ordered) training
    segments, scored by AUROC over the pooled held-out predictions.
    ``decision_function`` gives scores for :func:`neurofm.metrics.auroc`.
    """

    def __init__(self, sampling_rate: float, bands: Mapping[str, tuple[float, float]] | None = None,
                 alphas: float | Sequence[float] = DEFAULT_ALPHAS, val_fraction: float | None = None):
        self.sampling_rate = float(sampling_rate)
        self.bands = bands_below_nyquist(self.sampling_rate, bands)
        self.alphas, self.val_fraction = alphas, val_fraction

    def features(self, segments) -> np.ndarray:
        """``(B, C, T)`` segments -> ``(B, C * n_bands)`` log band powers."""
        segments = np.asarray(segments, dtype=np.float64)
        if segments.ndim != 3:
            raise ValueError(f"BandPowerRidge: segments must be (B, C, T), got shape {segments.shape}")
        bp = band_power(segments, self.sampling_rate, self.bands)
        return bp.reshape(len(segments), -1)


    def fit(self, segments, labels) -> "BandPowerRidge":
        """``segments`` (B, C, T) in time order, ``labels`` (B,) int class indices ``0..K-1``."""
        labels = np.asarray(labels)
        X = self.features(segments)
        if labels.shape != (len(X),):
            raise ValueError(f"BandPowerRidge.fit: labels must be ({len(X)},), got shape {labels.shape}")
        self.classes_ = np.unique(labels)
        if self.classes_.size < 2:
            raise ValueError("BandPowerRidge.fit: training labels hold a single class")
        onehot = (labels[:, None] == self.classes_[None, :]).astype(np.float64) * 2 - 1  # (B, K)
        Y = onehot[:, 1:] if self.classes_.size == 2 else onehot
        self.ridge = Ridge(self.alphas, val_fraction=self.val_fraction, score=auroc_or_mse).fit(X, Y)
        return self

    def decision_function(self, segments) -> np.ndarray:
        """Scores: ``(B,)`` for two classes (higher = ``classes_[1]``), else ``(B, K)``."""
        scores = self.ridge.predict(self.features(segments))
        return scores[:, 0] if self.classes_.size == 2 else scores

    def predict(self, segments) -> np.ndarray:
        scores = self.decision_function(segments)
        idx = (scores > 0).astype(int) if scores.ndim == 1 else np.argmax(scores, axis=1)
        return self.classes_[idx]


class Logistic:
    """L2-penalised logistic regression (one-vs-rest for K > 2), penalty chosen by AUROC in blocked
    K-fold inner cross-validation.

    Features are standardised with training statistics; the loss is the mean log-loss plus
    ``alpha / (2 n) * |w|^2`` (so ``alpha`` is on the scale of a number of samples, as in
    :class:`Ridge`), minimised by L-BFGS. With several ``alphas`` the time-ordered samples are
    cut into ``n_folds`` contiguous blocks (:func:`penalty_folds`, the folds of :class:`Ridge`;
    ``gap`` samples dropped from training on each side of each block); every alpha is fitted on
    each fold's training samples and scored by AUROC on its block, and ``val_scores_`` is the
    AUROC averaged over the folds that can be scored (:meth:`scorable`: every class in the
    fold's training samples, two classes in its block; per fold in ``fold_scores_``, NaN for
    the others). AUROC is a ranking within one block, so it is averaged over folds rather
    than pooled (each fold's fit has its own offset). The best alpha (``alpha_``) is refitted
    on all samples. ``val_fraction`` sets ``n_folds = round(1 / val_fraction)`` as in :class:`Ridge`.
    """

    def __init__(self, alphas: float | Sequence[float] = DEFAULT_ALPHAS, val_fraction: float | None = None,
                 gap: int = 0, n_folds: int = PENALTY_FOLDS):
        self.alphas = np.atleast_1d(np.asarray(alphas, dtype=np.float64))
        if (self.alphas <= 0).any():
            raise ValueError(f"Logistic: alphas must be > 0, got {self.alphas}")
        self.n_folds, self.gap = _n_folds(n_folds, val_fraction, "Logistic"), int(gap)

    @staticmethod
    def _fit_binary(Z: np.ndarray, y: np.ndarray, alpha: float, w0: np.ndarray | None = None) -> np.ndarray:
        """Weights (F + 1,) (intercept last) for 0/1 targets ``y``, from ``w0`` (default zeros)."""
        n, F = Z.shape
        X1 = np.hstack([Z, np.ones((n, 1))])

        def loss(w):
            z = X1 @ w
            nll = np.mean(np.logaddexp(0.0, z) - y * z)
            grad = X1.T @ (1.0 / (1.0 + np.exp(-z)) - y) / n
            reg = 0.5 * alpha / n * (w[:F] @ w[:F])
            grad[:F] += alpha / n * w[:F]
            return nll + reg, grad

        return optimize.minimize(loss, np.zeros(F + 1) if w0 is None else w0, jac=True, method="L-BFGS-B",
                                 options={"maxiter": 500}).x

    def _fit(self, X: np.ndarray, labels: np.ndarray, alpha: float, W0: np.ndarray | None = None):
        mu, sd = X.mean(0), X.std(0)
        sd = np.where(sd > 0, sd, 1.0)
        Z = (X - mu) / sd
        cols = self.classes_[1:] if self.classes_.size == 2 else self.classes_
        W = np.stack([self._fit_binary(Z, (labels == c).astype(np.float64), alpha, None if W0 is None else W0[:, j])
                      for j, c in enumerate(cols)], 1)  # (F+1, K')
        return mu, sd, W

    @staticmethod
    def _scores(X, mu, sd, W) -> np.ndarray:
        Z = (np.asarray(X, dtype=np.float64) - mu) / sd
        return Z @ W[:-1] + W[-1]

    def scorable(self, labels, folds) -> np.ndarray:
        """``(len(folds),)`` bool: the folds whose training samples hold every class of ``labels``
        and whose held-out block holds two classes or more (those an AUROC can score)."""
        labels = np.asarray(labels)
        k = np.unique(labels).size
        return np.array([np.unique(labels[tr]).size == k and np.unique(labels[te]).size >= 2 for tr, te in folds])

    def penalty_folds(self, labels, what: str = "Logistic.fit") -> list[tuple[np.ndarray, np.ndarray]]:
        """The inner folds :meth:`fit` chooses the penalty on for time-ordered ``labels`` (n,)
        (:func:`penalty_folds`); a ValueError naming ``what`` when none of them can be scored."""
        labels = np.asarray(labels)
        folds = penalty_folds(len(labels), self.gap, self.n_folds, what)
        if not self.scorable(labels, folds).any():
            blocks = ", ".join(str(dict(zip(*np.unique(labels[te], return_counts=True)))) for _, te in folds)
            raise ValueError(f"{what}: none of the {len(folds)} blocked inner folds of the {len(labels)} "
                             f"time-ordered samples has every class in its training samples and two classes in "
                             f"its held-out block (class counts per block: {blocks}); interleave the classes in "
                             f"time, add samples, or pass a single alpha")
        return folds

    def fit(self, X, labels) -> "Logistic":
        """``X`` (n, F) in time order, ``labels`` (n,) class labels (at least two classes)."""
        X = np.asarray(X, dtype=np.float64)
        labels = np.asarray(labels)
        if X.ndim != 2 or labels.shape != (len(X),):
            raise ValueError(f"Logistic.fit: X must be (n, F) and labels (n,); got {X.shape} and {labels.shape}")
        if not np.isfinite(X).all():
            raise ValueError("Logistic.fit: X contains NaN/inf; drop those samples first")
        self.classes_ = np.unique(labels)
        if self.classes_.size < 2:
            raise ValueError("Logistic.fit: training labels hold a single class")
        alpha = float(self.alphas[0])
        if self.alphas.size > 1:
            folds = self.penalty_folds(labels)
            ok = self.scorable(labels, folds)
            y = np.searchsorted(self.classes_, labels)
            order = np.argsort(-self.alphas)  # strong to weak penalty, each fit starting at the previous one
            self.fold_scores_ = np.full((self.alphas.size, len(folds)), np.nan)
            for f, (tr, te) in enumerate(folds):
                if not ok[f]:
                    continue
                W = None
                for i in order:
                    mu, sd, W = self._fit(X[tr], labels[tr], self.alphas[i], W)
                    s = self._scores(X[te], mu, sd, W)
                    self.fold_scores_[i, f] = (metrics.auroc((y[te] == 1).astype(int), s[:, 0]) if s.shape[1] == 1
                                               else metrics.auroc(y[te], s))
            self.val_scores_ = self.fold_scores_[:, ok].mean(axis=1)
            alpha = float(self.alphas[int(np.nanargmax(self.val_scores_))])
        self.alpha_ = alpha
        self.x_mean_, self.x_std_, self.coef_ = self._fit(X, labels, alpha)
        return self

    def decision_function(self, X) -> np.ndarray:
        """Log-odds: ``(n,)`` for two classes (higher = ``classes_[1]``), else ``(n, K)`` one-vs-rest."""
        s = self._scores(X, self.x_mean_, self.x_std_, self.coef_)
        return s[:, 0] if self.classes_.size == 2 else s

    def linear_map(self) -> tuple[np.ndarray, np.ndarray]:
        """``(W (F, K'), b (K',))`` on the raw features, standardisation folded in: ``X @ W + b`` is
        :meth:`decision_function` (as (n, K'); K' = 1 for two classes)."""
        W = self.coef_[:-1] / self.x_std_[:, None]
        return W, self.coef_[-1] - self.x_mean_ @ W


class BandPowerLogistic(BandPowerRidge):
    """:class:`Logistic` on the log band power features of :class:`BandPowerRidge`."""

    def fit(self, segments, labels) -> "BandPowerLogistic":
        """``segments`` (B, C, T) in time order, ``labels`` (B,) class indices."""
        return self.fit_features(self.features(segments), labels)

    def fit_features(self, X, labels) -> "BandPowerLogistic":
        """Fit on precomputed ``features(segments)`` (B, C * n_bands)."""
        self.model = Logistic(self.alphas, val_fraction=self.val_fraction).fit(X, labels)
        self.classes_ = self.model.classes_
        return self

    def decision_function(self, segments) -> np.ndarray:
        return self.model.decision_function(self.features(segments))
