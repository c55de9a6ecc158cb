"""Metrics against closed-form answers and independent implementations."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torchmetrics.functional as tmf

from neurofm import metrics


# --------------------------------------------------------------------------------------------
# bits per spike
# --------------------------------------------------------------------------------------------


def _nlb_bits_per_spike(rates, spikes):
    """Straight from the NLB formula, written independently of neurofm.metrics."""
    rates, spikes = rates.reshape(-1, rates.shape[-1]), spikes.reshape(-1, spikes.shape[-1])
    keep = ~np.isnan(spikes)
    null = np.tile(np.nanmean(spikes, axis=0, keepdims=True), (len(spikes), 1))

    def nll(r, y):
        r, y = r[keep].copy(), y[keep]
        r[r == 0] = 1e-9
        return np.sum(r - y * np.log(r) + np.array([math.lgamma(v + 1) for v in y]))

    return (nll(null, spikes) - nll(rates, spikes)) / np.nansum(spikes) / np.log(2)


def test_bits_per_spike_hand_computed():
    spikes = np.array([[1.0], [0.0]])
    rates = np.array([[0.9], [0.1]])
    # log L(model) = log 0.9 - 0.9 - 0.1; log L(null, rate 0.5) = log 0.5 - 1; one spike
    expected = ((np.log(0.9) - 1.0) - (np.log(0.5) - 1.0)) / np.log(2)
    assert metrics.bits_per_spike(rates, spikes) == pytest.approx(expected, rel=1e-12)
    assert expected == pytest.approx(0.8479969, rel=1e-6)


def test_bits_per_spike_null_model_scores_zero():
    rng = np.random.default_rng(0)
    spikes = rng.poisson(0.3, size=(5, 40, 7)).astype(float)
    mean = spikes.mean(axis=(0, 1))
    assert metrics.bits_per_spike(np.broadcast_to(mean, spikes.shape), spikes) == pytest.approx(0.0, abs=1e-12)
    per = metrics.bits_per_spike(np.broadcast_to(mean, spikes.shape), spikes, per_neuron=True)
    assert per.shape == (7,) and np.allclose(per, 0.0)


def test_bits_per_spike_matches_independent_nlb_implementation():
    rng = np.random.default_rng(1)
    true_rates = rng.gamma(2.0, 0.2, size=(3, 50, 6))
    spikes = rng.poisson(true_rates).astype(float)
    spikes[0, :5, 2] = np.nan  # NLB leaves out NaN bins
    for rates in (true_rates, true_rates * 1.3, np.where(rng.random(true_rates.shape) < 0.05, 0.0, true_rates)):
        ours = metrics.bits_per_spike(rates, spikes)
        assert ours == pytest.approx(_nlb_bits_per_spike(rates, spikes), rel=1e-10)
    # the generating rates beat the null; a wrongly scaled version does worse
    assert metrics.bits_per_spike(true_rates, spikes) > metrics.bits_per_spike(true_rates * 3, spikes)
    assert metrics.bits_per_spike(true_rates, spikes) > 0


def test_bits_per_spike_per_neuron_and_custom_null():
    spikes = np.array([[2.0, 0.0], [0.0, 0.0], [1.0, 0.0]])
    rates = np.array([[1.5, 0.1], [0.2, 0.1], [1.0, 0.1]])
    per = metrics.bits_per_spike(rates, spikes, per_neuron=True)
    assert np.isnan(per[1])  # no spikes: undefined
    single = metrics.bits_per_spike(rates[:, :1], spikes[:, :1])
    assert per[0] == pytest.approx(single)
    # a null rate equal to the held-out mean reproduces the default
    assert metrics.bits_per_spike(rates, spikes, null_rates=spikes.mean(axis=0)) == pytest.approx(
        metrics.bits_per_spike(rates, spikes))
    # the null itself as prediction scores exactly zero against itself
    assert metrics.bits_per_spike(np.full_like(rates, 0.7), spikes, null_rates=0.7) == pytest.approx(0.0)


def test_bits_per_spike_perfect_deterministic_rates():
    """Rates equal to the counts: the per-bin maximum of the Poisson likelihood."""
    spikes = np.array([[1.0], [0.0], [0.0], [1.0]])
    bps = metrics.bits_per_spike(spikes.copy(), spikes)
    # model: 2 * (log 1 - 1) + 2 * (0 - 1e-9); null rate 0.5: 2 * (log .5 - .5) - 2 * .5
    expected = ((-2.0 - 2e-9) - (2 * np.log(0.5) - 2.0)) / (2 * np.log(2))
    assert bps == pytest.approx(expected) and bps == pytest.approx(1.0, abs=1e-8)


def test_bits_per_spike_input_checks():
    with pytest.raises(ValueError, match="shape"):
        metrics.bits_per_spike(np.ones((3, 2)), np.ones((3, 3)))
    with pytest.raises(ValueError, match=">= 0"):
        metrics.bits_per_spike(-np.ones((3, 2)), np.ones((3, 2)))
    with pytest.raises(ValueError, match="no spikes"):
        metrics.bits_per_spike(np.ones((3, 2)), np.zeros((3, 2)))


# --------------------------------------------------------------------------------------------
# PSTH r
# --------------------------------------------------------------------------------------------


def test_psth_r():
    t = np.linspace(0, 1, 50)
    shape = np.stack([np.sin(2 * np.pi * t) + 1.5, np.exp(-t), np.ones_like(t)], axis=1)  # (T, 3)
    rng = np.random.default_rng(0)
    true = rng.poisson(np.broadcast_to(5 * shape, (40, 50, 3))).astype(float)
    pred = rng.poisson(np.broadcast_to(5 * shape, (25, 50, 3))).astype(float)  # different trial count
    r = metrics.psth_r(pred, true)
    assert r.shape == (3,) and r[0] > 0.9 and r[1] > 0.5
    assert abs(r[2]) < 0.6  # flat PSTH: only noise correlates
    # a time-reversed prediction anticorrelates; an exact one gives 1
    assert metrics.psth_r(pred[:, ::-1], true)[0] < -0.5
    assert np.allclose(metrics.psth_r(shape[:, :2], 2 * shape[:, :2] + 1), 1.0)
    assert np.isnan(metrics.psth_r(shape, shape)[2])  # constant: undefined
    # smoothing reduces noise
    assert metrics.psth_r(pred, true, sigma=2)[1] > r[1]
    with pytest.raises(ValueError, match="differ in shape"):
        metrics.psth_r(pred[:, :10], true)


# --------------------------------------------------------------------------------------------
# window F1
# --------------------------------------------------------------------------------------------


def test_window_f1_hand_computed():
    true = [[1, 2, 3], [4], [], [5, 5]]
    pred = [[1, 2, 9], [], [7], [5]]
    # window 0: TP 2, P 2/3, R 2/3, F1 2/3; window 1: P 0, R 0; window 2 not scored (no true spike);
    # window 3 (sets): TP 1, P 1, R 1
    macro = metrics.window_f1(true, pred)
    assert macro["n_windows"] == 3
    assert macro["precision"] == pytest.approx((2 / 3 + 0 + 1) / 3)
    assert macro["recall"] == pytest.approx((2 / 3 + 0 + 1) / 3)
    assert macro["f1"] == pytest.approx((2 / 3 + 0 + 1) / 3)
    micro = metrics.window_f1(true, pred, average="micro")
    # TP 3; predicted sets 3 + 0 + 1 + 1 = 5; true sets 3 + 1 + 0 + 1 = 5
    assert micro["precision"] == pytest.approx(3 / 5) and micro["recall"] == pytest.approx(3 / 5)
    # multiset: window 3 has 2 true spikes of unit 5 and 1 predicted
    assert metrics.window_f1([set(w) for w in true], [set(w) for w in pred]) == macro  # sets work too
    multi = metrics.window_f1(true, pred, average="micro", multiset=True)
    assert multi["precision"] == pytest.approx(3 / 5) and multi["recall"] == pytest.approx(3 / 6)


def test_window_f1_reference_quirks():
    true = [[1, 2, 3], [1, 2]]
    pred = [[1], [1, 2, 3, 4]]
    # window 0: TP 1, FP 0, FN 2 -> reference scores P = R = 1; window 1: FN 0 -> also 1
    ref = metrics.window_f1(true, pred, reference=True)
    assert ref["precision"] == ref["recall"] == ref["f1"] == pytest.approx(1.0)
    plain = metrics.window_f1(true, pred)
    assert plain["recall"] == pytest.approx((1 / 3 + 1) / 2) and plain["precision"] == pytest.approx((1 + 0.5) / 2)


def test_window_f1_perfect_and_disjoint():
    rng = np.random.default_rng(0)
    windows = [rng.integers(0, 50, rng.integers(1, 10)) for _ in range(30)]
    assert metrics.window_f1(windows, windows)["f1"] == 1.0
    shifted = [w + 100 for w in windows]
    assert metrics.window_f1(windows, shifted)["f1"] == 0.0
    with pytest.raises(ValueError, match="windows"):
        metrics.window_f1(windows, windows[:-1])


# --------------------------------------------------------------------------------------------
# R2, Pearson, AUROC
# --------------------------------------------------------------------------------------------


def test_r2_and_pearson():
    y = np.array([[1.0, 0.0], [2.0, 1.0], [3.0, 0.0], [4.0, 1.0]])
    assert metrics.r2_score(y, y) == 1.0
    assert metrics.r2_score(y, np.broadcast_to(y.mean(axis=0), y.shape)) == 0.0
    pred = y.copy()
    pred[:, 0] += 1.0  # residual 1 per sample; ss_tot of column 0 = 5
    raw = metrics.r2_score(y, pred, multioutput="raw_values")
    assert raw == pytest.approx([1 - 4 / 5, 1.0])
    assert metrics.r2_score(y, pred) == pytest.approx((0.2 + 1.0) / 2)
    assert metrics.r2_score(y[:, 0], pred[:, 0]) == pytest.approx(0.2)
    # Pearson ignores offset and scale; R2 does not
    assert metrics.pearson_r(y, 3 * y + 7) == pytest.approx(1.0)
    assert metrics.pearson_r(y[:, 0], -y[:, 0]) == pytest.approx(-1.0)
    assert metrics.r2_score(y, 3 * y + 7) < 0
    rng = np.random.default_rng(0)
    a, b = rng.standard_normal(200), rng.standard_normal(200)
    assert metrics.pearson_r(a, b) == pytest.approx(np.corrcoef(a, b)[0, 1])
    with pytest.raises(ValueError, match="shape"):
        metrics.r2_score(y, y[:, 0])
    with pytest.raises(ValueError, match="NaN"):
        metrics.r2_score([1.0, np.nan], [1.0, 2.0])


def test_auroc_hand_computed_and_ties():
    y = np.array([0, 0, 1, 1])
    assert metrics.auroc(y, [0.1, 0.4, 0.35, 0.8]) == pytest.approx(0.75)
    assert metrics.auroc(y, [0.1, 0.2, 0.3, 0.4]) == 1.0
    assert metrics.auroc(y, [0.4, 0.3, 0.2, 0.1]) == 0.0
    assert metrics.auroc(y, [0.5, 0.5, 0.5, 0.5]) == 0.5  # ties count half
    assert metrics.auroc(y.astype(bool), [0.1, 0.5, 0.5, 0.9]) == pytest.approx(0.875)
    with pytest.raises(ValueError, match="one class"):
        metrics.auroc([1, 1, 1], [0.1, 0.2, 0.3])


def test_auroc_matches_torchmetrics():
    rng = np.random.default_rng(3)
    y = rng.integers(0, 2, 300)
    s = np.round(y * 0.7 + rng.standard_normal(300), 1)  # rounding makes ties
    ref = tmf.auroc(torch.tensor(s), torch.tensor(y), task="binary").item()
    assert metrics.auroc(y, s) == pytest.approx(ref, abs=1e-6)
    labels = rng.integers(0, 4, 300)
    scores = rng.standard_normal((300, 4)) + 1.2 * np.eye(4)[labels]
    ref = tmf.auroc(torch.tensor(scores).softmax(-1), torch.tensor(labels), task="multiclass", num_classes=4,
                    average="macro").item()
    # softmax is not rank-preserving per column, so score the same probabilities
    probs = torch.tensor(scores).softmax(-1).numpy()
    assert metrics.auroc(labels, probs) == pytest.approx(ref, abs=1e-6)
    per_class = metrics.auroc(labels, probs, average="none")
    assert per_class.shape == (4,) and np.all(per_class > 0.7)
    with pytest.raises(ValueError, match="integers"):
        metrics.auroc(labels + 1, probs)


def test_roc_curve_area_equals_auroc_with_ties():
    from neurofm.metrics import auroc, roc_curve

    rng = np.random.default_rng(0)
    y = rng.integers(0, 2, 300)
    s = np.round(y + rng.normal(0, 1.2, 300), 1)  # many ties
    fpr, tpr = roc_curve(y, s)
    assert fpr[0] == tpr[0] == 0 and fpr[-1] == tpr[-1] == 1
    assert (np.diff(fpr) >= 0).all() and (np.diff(tpr) >= 0).all()
    assert np.sum(np.diff(fpr) * (tpr[1:] + tpr[:-1]) / 2) == pytest.approx(auroc(y, s), abs=1e-12)
    fpr, tpr = roc_curve([0, 0, 1, 1], [0.1, 0.2, 0.3, 0.4])  # perfect: up, then across
    assert list(zip(fpr, tpr)) == [(0, 0), (0, 0.5), (0, 1), (0.5, 1), (1, 1)]
    with pytest.raises(ValueError, match="one class"):
        roc_curve([1, 1], [0.2, 0.3])


def test_regression_moments_streamed_in_chunks_equal_the_one_shot_metrics():
    """score_reconstruction feeds RegressionMoments batch by batch: the merged moments give the
    same Pearson r and R2 as the whole arrays at once, also far from zero mean, where the raw
    sums sum(y^2) - (sum y)^2 / n lose every significant digit."""
    rng = np.random.default_rng(0)
    y = 1e6 + rng.normal(size=(1000, 2))
    p = y + 0.5 * rng.normal(size=y.shape) + np.array([0.0, 0.3])
    m = metrics.RegressionMoments()
    for chunk in np.array_split(np.arange(1000), [1, 7, 300, 301, 301, 999]):  # uneven, one empty
        m.add(y[chunk], p[chunk])
    assert m.n == 1000
    yc, pc = y - y.mean(0), p - p.mean(0)
    r_two_pass = (yc * pc).sum(0) / np.sqrt((yc ** 2).sum(0) * (pc ** 2).sum(0))
    np.testing.assert_allclose(m.pearson(), r_two_pass, rtol=1e-10)
    np.testing.assert_allclose(m.pearson(), metrics.pearson_r(y, p, multioutput="raw_values"), rtol=1e-10)
    np.testing.assert_allclose(m.r2(), metrics.r2_score(y, p, multioutput="raw_values"), rtol=1e-10)
    assert np.isnan(metrics.RegressionMoments().add(np.ones(5), np.arange(5.0)).pearson()[0])
    with pytest.raises(ValueError, match="earlier chunks"):
        m.add(y[:3, :1], p[:3, :1])


def test_window_f1_per_window_scores_average_to_the_macro_score():
    true = [[1, 2], [], [3], [1, 1, 4]]
    pred = [[1], [5], [], [4, 6]]
    out = metrics.window_f1(true, pred, per_window=True)
    # window 0: P 1, R 1/2 -> 2/3; window 1: no recorded spike, not scored; window 2: 0; window 3: P 1/2, R 1/2
    np.testing.assert_allclose(out["f1_per_window"], [2 / 3, np.nan, 0.0, 0.5])
    assert out["f1"] == pytest.approx(np.nanmean(out["f1_per_window"]))
    assert "f1_per_window" not in metrics.window_f1(true, pred)
    with pytest.raises(ValueError, match="per_window"):
        metrics.window_f1(true, pred, average="micro", per_window=True)
