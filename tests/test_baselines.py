"""Baselines on simulated sessions: each must find the structure the generator put there."""

from __future__ import annotations


import numpy as np
import pytest

from neurofm import baselines, metrics
from neurofm.data import synthetic
from neurofm.data.session import Session

N_UNITS, DURATION = 30, 150.0


@pytest.fixture(scope="module")
def network(tmp_path_factory) -> dict:
    path = synthetic.simulate_spikes(tmp_path_factory.mktemp("net") / "net.h5", n_units=N_UNITS,
                                     duration=DURATION, seed=1)
    with Session(path) as s:
        times, units = s.spikes()
        ts, speed = s.behavior("speed")
        W = s.ground_truth()["connectivity"]
    return dict(times=times, units=units, speed_t=ts, speed=speed, W=W)


# --------------------------------------------------------------------------------------------
# binning helpers
# --------------------------------------------------------------------------------------------


def test_bin_spikes_counts_and_edges():
    times = np.array([0.0, 0.05, 0.099, 0.1, 0.25, 0.31, -0.01, 0.4])
    units = np.array([0, 1, 0, 0, 2, 1, 0, 2])
    counts = baselines.bin_spikes(times, units, 3, 0.0, 0.3, 0.1)
    assert counts.shape == (3, 3)
    np.testing.assert_array_equal(counts, [[2, 1, 0], [1, 0, 0], [0, 0, 1]])  # 0.31, 0.4, -0.01 dropped
    with pytest.raises(ValueError, match="unit_index"):
        baselines.bin_spikes(times, units + 5, 3, 0.0, 0.3, 0.1)


def test_bin_timeseries_means_and_gaps():
    ts = np.array([0.0, 0.02, 0.11, 0.35])
    v = np.array([[1.0, 10.0], [3.0, 30.0], [5.0, 50.0], [7.0, 70.0]])
    out = baselines.bin_timeseries(ts, v, 0.0, 0.4, 0.1)
    np.testing.assert_allclose(out[[0, 1, 3]], [[2.0, 20.0], [5.0, 50.0], [7.0, 70.0]])
    assert np.isnan(out[2]).all()
    assert baselines.bin_timeseries(ts, v[:, 0], 0.0, 0.4, 0.1).shape == (4,)


def test_aligned_counts_matches_bin_spikes(network):
    times, units = network["times"], network["units"]
    onsets = np.array([10.0, 33.3, 70.05])
    trials = baselines.aligned_counts(times, units, N_UNITS, onsets, 0.2, 0.5, 0.05)
    assert trials.shape == (3, 14, N_UNITS)
    for k, t in enumerate(onsets):
        np.testing.assert_array_equal(trials[k], baselines.bin_spikes(times, units, N_UNITS, t - 0.2, t + 0.5, 0.05))


def test_history_features_lags_and_context():
    counts = np.arange(10.0).reshape(5, 2)
    past = baselines.history_features(counts, 2)
    np.testing.assert_array_equal(past[2], [2, 3, 0, 1])  # bin 2: lag 1 = bin 1, lag 2 = bin 0
    np.testing.assert_array_equal(past[0], 0)
    with_now = baselines.history_features(counts, 2, include_current=True, context=np.array([[-1.0, -2.0]]))
    np.testing.assert_array_equal(with_now[0], [0, 1, -1, -2])


# --------------------------------------------------------------------------------------------
# spike encoding: GLM vs mean rate
# --------------------------------------------------------------------------------------------


def test_glm_recovers_history_effects_better_than_mean_rate(network):
    counts = baselines.bin_spikes(network["times"], network["units"], N_UNITS, 0.0, DURATION, 0.005)
    n = int(0.8 * len(counts))  # first 80% train, last 20% test
    train, test = counts[:n], counts[n:]
    glm = baselines.PoissonGLM(n_history=4).fit(train)
    assert glm.converged_
    rates_glm = glm.predict(test, context=train)
    rates_mean = baselines.MeanRatePoisson().fit(train).predict(len(test))
    assert rates_glm.shape == rates_mean.shape == test.shape
    bps_glm = metrics.bits_per_spike(rates_glm, test)
    bps_mean = metrics.bits_per_spike(rates_mean, test)
    assert bps_mean < 0.005  # the training mean is no better than the held-out mean
    assert bps_glm > bps_mean + 0.015
    # the fitted lag-1 couplings follow the true W (row = target, column = source)
    W = network["W"]
    off = ~np.eye(N_UNITS, dtype=bool)
    lag1 = glm.coupling_[0]
    assert glm.coupling_.shape == (4, N_UNITS, N_UNITS)
    assert np.corrcoef(lag1[off], W[off])[0, 1] > 0.35
    assert np.corrcoef(lag1[off], W.T[off])[0, 1] < 0.2  # and not the transpose
    assert np.mean(np.diag(lag1)) < -0.1  # self-inhibition (refractoriness)


def test_glm_selects_penalty_and_takes_covariates(network):
    counts = baselines.bin_spikes(network["times"], network["units"], N_UNITS, 0.0, 60.0, 0.02)
    speed = baselines.bin_timeseries(network["speed_t"], network["speed"], 0.0, 60.0, 0.02)
    glm = baselines.PoissonGLM(n_history=2, l2=(1.0, 100.0)).fit(counts, covariates=speed)
    assert glm.l2_ in (1.0, 100.0) and len(glm.val_bits_per_spike_) == 2
    assert glm.predict(counts[:10], covariates=speed[:10]).shape == (10, N_UNITS)
    with pytest.raises(ValueError, match="covariates"):
        glm.predict(counts[:10])


# --------------------------------------------------------------------------------------------
# behaviour decoding: ridge
# --------------------------------------------------------------------------------------------


def test_ridge_closed_form_matches_normal_equations():
    rng = np.random.default_rng(0)
    X = rng.standard_normal((200, 5))
    y = X @ np.array([1.0, -2.0, 0.0, 0.5, 3.0]) + 4.0 + 0.1 * rng.standard_normal(200)
    model = baselines.Ridge(alphas=10.0).fit(X, y)
    Z = (X - X.mean(0)) / X.std(0)
    w = np.linalg.solve(Z.T @ Z + 10.0 * np.eye(5), Z.T @ (y - y.mean()))
    np.testing.assert_allclose(model.coef_[:, 0], w, rtol=1e-8)
    assert model.predict(X).shape == (200,)
    # alpha chosen by blocked inner CV: tiny noise -> a small alpha wins
    chosen = baselines.Ridge().fit(X, y)
    assert chosen.alpha_ <= 10.0 and metrics.r2_score(y, chosen.predict(X)) > 0.99


def test_ridge_penalty_is_chosen_over_every_block_not_a_last_block_of_rest():
    """Time-ordered training samples whose last 20% are a different regime (rest: the features
    vary, the target does not follow them). The former rule chose alpha on that block alone and
    took the largest penalty (predicting the mean: test R2 near 0); blocked 5-fold CV scores every
    block, pooled, and keeps the fit."""
    rng = np.random.default_rng(3)
    F = 30
    w = rng.standard_normal(F)

    def active(n):
        X = rng.standard_normal((n, F))
        return X, X @ w + rng.standard_normal(n)

    X, y = active(160)
    X_rest = rng.standard_normal((40, F))
    X, y = np.concatenate([X, X_rest]), np.concatenate([y, 0.1 * rng.standard_normal(40)])
    model = baselines.Ridge().fit(X, y)
    assert model.val_scores_.shape == model.alphas.shape and model.alpha_ <= 100.0
    Xte, yte = active(300)
    assert metrics.r2_score(yte, model.predict(Xte)) > 0.8
    # the former rule, on the last block alone, chose a penalty that shrinks the fit to the mean
    from neurofm.evaluation import holdout_fold

    fold = holdout_fold(len(X))
    te = fold[0][1]
    held = baselines.Ridge().cv_predictions(X, y[:, None], fold)[:, te, 0]
    old = model.alphas[np.argmin(((held - y[te]) ** 2).mean(axis=1))]
    assert old >= 1e4 and metrics.r2_score(yte, baselines.Ridge(old).fit(X, y).predict(Xte)) < 0.3


def test_penalty_folds_tile_the_samples_in_time_order_fewer_when_few():
    folds = baselines.penalty_folds(103, gap=3)
    assert len(folds) == baselines.PENALTY_FOLDS == 5
    held = np.concatenate([te for _, te in folds])
    np.testing.assert_array_equal(held, np.arange(103))  # every sample held out once, blocks in order
    for tr, te in folds:
        assert np.all(np.abs(tr[:, None] - te[None, :]) > 3)  # the gap on each side of the block
        assert len(tr) == 103 - len(te) - 3 * (int(te[0] > 0) + int(te[-1] < 102))
    assert len(baselines.penalty_folds(7)) == 3  # blocks of at least 2 samples
    with pytest.raises(ValueError, match="Ridge.fit: 3 samples are too few to choose the penalty by blocked CV"):
        baselines.Ridge().fit(np.arange(6.0).reshape(3, 2), np.arange(3.0))
    assert baselines.Ridge(1.0).fit(np.arange(6.0).reshape(3, 2), np.arange(3.0)).alpha_ == 1.0
    with pytest.raises(ValueError, match="pass a single alpha"):  # a gap that leaves no fold anything to fit
        baselines.Ridge(gap=20).fit(np.random.default_rng(0).normal(size=(30, 2)), np.arange(30.0))
    # the former holdout share maps to the fold count: a held-out block of that share, each in turn
    assert baselines.Ridge(val_fraction=0.25).n_folds == 4 and baselines.Logistic(val_fraction=0.2).n_folds == 5
    with pytest.raises(ValueError, match="val_fraction must be in"):
        baselines.Ridge(val_fraction=0.9)


def test_ridge_leaves_never_varying_columns_out_of_its_solve(monkeypatch):
    """A model pretrained on one day and fine-tuned on another has count columns for the first
    day's units, which never fire in the second: 440 of 880 columns on a 110-unit reaching day, or
    4,400 of 4,840 for a model of ten such days, where the blocked-CV ridge of the fine-tuning start
    took 145 s per fit instead of 1.6 s (the eigendecomposition grows with the cube of the
    columns). They get weight 0 whatever the penalty; now they stay out of the solve, and the fit
    (weights, predictions, blocked-CV choice) is what it was."""
    from neurofm.evaluation import RidgeFitPredict

    rng = np.random.default_rng(0)
    live = rng.poisson(1.0, (600, 12)).astype(np.float64)
    y = live @ rng.standard_normal((12, 2)) + rng.standard_normal((600, 2))
    X = np.zeros((600, 40))
    X[:, 3:15] = live
    X[:, 30] = 7.0  # constant, not zero: also no information
    sizes = []
    eigh = np.linalg.eigh
    monkeypatch.setattr(np.linalg, "eigh", lambda a: sizes.append(a.shape[0]) or eigh(a))
    full = RidgeFitPredict("blocked_cv", gap=10).fit(X, y)
    assert sizes and set(sizes) == {12}
    assert np.all(full.coef_[:3] == 0) and np.all(full.coef_[15:] == 0)
    alone = RidgeFitPredict("blocked_cv", gap=10).fit(live, y)
    assert full.alpha_ == alone.alpha_
    np.testing.assert_allclose(full.coef_[3:15], alone.coef_, rtol=1e-10)
    np.testing.assert_allclose(full.predict(X), alone.predict(live), atol=1e-10)
    W, b = full.linear_map()
    np.testing.assert_allclose(X @ W + b, full.predict(X), atol=1e-10)


def test_ridge_decodes_speed_on_held_out_block(network):
    bin_size = 0.05
    counts = baselines.bin_spikes(network["times"], network["units"], N_UNITS, 0.0, DURATION, bin_size)
    speed = baselines.bin_timeseries(network["speed_t"], network["speed"], 0.0, DURATION, bin_size)
    n = int(0.8 * len(counts))  # contiguous held-out block: the last 20% of the session
    dec = baselines.SpikeRidgeDecoder(n_history=6, gap=20).fit(counts[:n], speed[:n])
    pred = dec.predict(counts[n:], context=counts[:n])
    r2 = metrics.r2_score(speed[n:], pred)
    assert r2 > 0.3, f"held-out speed R2 {r2:.3f}"
    assert metrics.pearson_r(speed[n:], pred) > 0.6
    # shuffling time destroys it: the decoder uses the neural signal, not the target's mean
    rng = np.random.default_rng(0)
    shuffled = counts[:n][rng.permutation(n)]
    null = baselines.SpikeRidgeDecoder(n_history=6).fit(shuffled, speed[:n]).predict(counts[n:], context=counts[:n])
    assert metrics.r2_score(speed[n:], null) < r2 - 0.2


# --------------------------------------------------------------------------------------------
# iEEG: band power classifier
# --------------------------------------------------------------------------------------------


def test_band_power_finds_the_right_band():
    fs = 256.0
    t = np.arange(512) / fs
    rng = np.random.default_rng(0)
    x = np.stack([np.sin(2 * np.pi * 10 * t), np.sin(2 * np.pi * 100 * t)]) + 0.01 * rng.standard_normal((2, 512))
    bp = baselines.band_power(x, fs)
    assert bp.shape == (2, 6)
    names = list(baselines.BANDS)
    assert names[int(np.argmax(bp[0]))] == "alpha" and names[int(np.argmax(bp[1]))] == "high_gamma"
    with pytest.raises(ValueError, match="high_gamma"):
        baselines.band_power(x, 100.0)  # 70-150 Hz is above Nyquist at 100 Hz


def test_band_power_ridge_detects_speech_events(tmp_path):
    path = synthetic.simulate_ieeg(tmp_path / "seeg.h5", n_channels=24, duration=300.0, sampling_rate=256.0,
                                   n_regions=3, seed=2)
    with Session(path) as s:
        fs = s.sampling_rate
        events = s.events("word_onset")
        segments = np.stack([s.continuous(t, t + 0.5).T for t in events["onset"]])  # (B, C, T): 500 ms after onset
    labels = (events["label"] == "speech").astype(int)
    n = int(0.8 * len(labels))
    clf = baselines.BandPowerRidge(fs).fit(segments[:n], labels[:n])
    scores = clf.decision_function(segments[n:])
    assert scores.shape == (len(labels) - n,)
    auc = metrics.auroc(labels[n:], scores)
    assert auc > 0.8, f"held-out AUROC {auc:.3f}"
    assert set(clf.predict(segments[n:])) <= {0, 1}


def test_poisson_bayes_decoder_recovers_2d_position_from_place_cells():
    """Units with Gaussian place fields in a 100 cm arena: the Bayes decoder finds the position
    (R2 well above ridge's on the same counts, since fields are not linear in position)."""
    rng = np.random.default_rng(0)
    n, N = 6000, 40
    pos = rng.uniform(0, 100, (n, 2))  # positions visited all over a 100 cm arena
    centres = rng.uniform(0, 100, (N, 2))
    rate = 0.2 + 3.0 * np.exp(-((pos[:, None, :] - centres[None]) ** 2).sum(-1) / (2 * 12.0 ** 2))  # per window
    counts = rng.poisson(rate)
    tr, te = slice(0, 4800), slice(4800, n)
    dec = baselines.PoissonBayesDecoder().fit(counts[tr], pos[tr])
    pred = dec.predict(counts[te])
    assert pred.shape == (1200, 2)
    r2_bayes = metrics.r2_score(pos[te], pred)
    r2_ridge = metrics.r2_score(pos[te], baselines.Ridge().fit(counts[tr], pos[tr]).predict(counts[te]))
    assert r2_bayes > 0.8 and r2_bayes > r2_ridge + 0.1
    one_d = baselines.PoissonBayesDecoder().fit(counts[tr], pos[tr, 0]).predict(counts[te])
    assert one_d.shape == (1200,) and metrics.r2_score(pos[te, 0], one_d) > 0.7
    with pytest.raises(ValueError, match="1-D or 2-D"):
        baselines.PoissonBayesDecoder().fit(counts[tr], np.zeros((4800, 3)))


def test_place_cell_simulator(tmp_path):
    path = synthetic.simulate_place_cells(tmp_path / "pc.h5", n_units=30, duration=300, rate_hz=0.5, seed=3,
                                          run_s=20, rest_s=20, final_rest=0.3)
    again = synthetic.simulate_place_cells(tmp_path / "pc2.h5", n_units=30, duration=300, rate_hz=0.5, seed=3,
                                           run_s=20, rest_s=20, final_rest=0.3)
    with Session(path) as s, Session(again) as s2:
        t, u = s.spikes()
        np.testing.assert_array_equal(t, s2.spikes()[0])  # same arguments, same spikes
        assert s.n_units == 30 and s.behavior_names == ["position", "speed"]
        ts, pos = s.behavior("position")
        _, speed = s.behavior("speed")
        assert pos.shape == (len(ts), 2) and pos.min() >= 0 and pos.max() <= 100
        run = s.intervals("running")
        assert run["end"].max() <= 300 * 0.7 + 1e-6  # the last 30% is rest
        assert speed[ts > 300 * 0.7 + 1].max() < 0.5
        gt = s.ground_truth()
        # place cells fire more inside their field while running than outside
        counts = baselines.bin_spikes(t, u, 30, 0, 300, 1.0 / 50)
        moving = speed[: len(counts)] > 5
        d = np.linalg.norm(pos[: len(counts), None, :] - gt["place_center"][None], axis=-1)
        inside = (d < gt["place_width"][None]) & moving[:, None]
        outside = (d > 3 * gt["place_width"][None]) & moving[:, None]
        place = gt["place_gain"] > 0
        rate_in = (counts * inside).sum(0)[place] / inside.sum(0)[place].clip(1)
        rate_out = (counts * outside).sum(0)[place] / outside.sum(0)[place].clip(1)
        assert np.median(rate_in / np.maximum(rate_out, 1e-3)) > 3


def test_logistic_separates_and_picks_its_penalty_by_auroc():
    rng = np.random.default_rng(0)

    def split(n):
        y = rng.integers(0, 2, n)
        x = rng.normal(size=(n, 20))
        x[:, 5] += 1.5 * y
        return x, y

    (xtr, ytr), (xte, yte) = split(300), split(200)
    model = baselines.Logistic().fit(xtr, ytr)
    assert model.alpha_ in model.alphas and model.val_scores_.shape == model.alphas.shape
    assert metrics.auroc(yte, model.decision_function(xte)) > 0.8
    three = baselines.Logistic(alphas=10.0).fit(xtr, (ytr + (xtr[:, 0] > 1)).astype(int))
    assert three.decision_function(xte).shape == (200, 3)
    with pytest.raises(ValueError, match="single class"):
        baselines.Logistic().fit(xtr, np.zeros(300))


def test_logistic_scores_the_folds_that_hold_both_classes_and_says_when_none_does():
    """The last 20% of the time-ordered samples hold one class: the former rule refused to fit
    ("leave a class missing"); blocked CV leaves that fold out of the AUROC average. When no fold
    has every class to fit and two to score (classes in long runs), the error says so."""
    rng = np.random.default_rng(2)
    y = np.concatenate([rng.integers(0, 2, 160), np.zeros(40, dtype=int)])
    x = rng.normal(size=(200, 5))
    x[:, 0] += 2.0 * y
    model = baselines.Logistic().fit(x, y)
    assert model.fold_scores_.shape == (model.alphas.size, 5)
    assert np.isnan(model.fold_scores_[:, 4]).all() and np.isfinite(model.fold_scores_[:, :4]).all()
    np.testing.assert_allclose(model.val_scores_, model.fold_scores_[:, :4].mean(axis=1))
    assert model.val_scores_.max() > 0.8
    runs = np.repeat([0, 1, 0, 1, 0], 20)  # every 20-sample block one class
    with pytest.raises(ValueError, match="none of the 5 blocked inner folds of the 100 time-ordered samples"):
        baselines.Logistic().fit(rng.normal(size=(100, 3)), runs)
    assert baselines.Logistic(1.0).fit(rng.normal(size=(100, 3)), runs).alpha_ == 1.0


def test_band_power_logistic_finds_a_high_gamma_burst():
    rng = np.random.default_rng(1)
    fs, n, C, T = 256.0, 160, 4, 256
    t = np.arange(T) / fs
    y = rng.integers(0, 2, n)
    x = rng.normal(size=(n, C, T))
    x[:, 1] += 1.5 * y[:, None] * np.sin(2 * np.pi * 100 * t)[None, :]  # 100 Hz in channel 1 for class 1
    clf = baselines.BandPowerLogistic(fs).fit(x[:120], y[:120])
    assert metrics.auroc(y[120:], clf.decision_function(x[120:])) > 0.9


def test_linear_map_folds_the_standardisation_into_raw_feature_weights():
    """What the fine-tuning starts copy into a Linear: X @ W + b is the fit's own prediction."""
    from neurofm.baselines import Logistic, Ridge

    rng = np.random.default_rng(5)
    X = rng.normal(3.0, [0.5, 4.0, 20.0], size=(200, 3))
    y = X @ np.array([[1.0, -2.0], [0.3, 0.1], [-0.05, 0.02]]) + rng.normal(size=(200, 2))
    r = Ridge(alphas=[1.0, 10.0]).fit(X, y)
    W, b = r.linear_map()
    np.testing.assert_allclose(X @ W + b, r.predict(X), rtol=1e-10, atol=1e-10)
    labels = (y[:, 0] > np.median(y[:, 0])).astype(int)
    lr = Logistic(alphas=1.0).fit(X, labels)
    W, b = lr.linear_map()
    np.testing.assert_allclose((X @ W + b)[:, 0], lr.decision_function(X), rtol=1e-10, atol=1e-10)
