"""Decoding protocol (DESIGN.md 8): folds, masks, pooled scores, and the linear-track floor."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from scipy.ndimage import gaussian_filter1d

from neurofm import evaluation as ev
from neurofm.data.session import DISCONTINUITIES, Session, SessionWriter
from neurofm.data.splits import BlockedKFold, labelled_windows

SHARED = Path(__file__).resolve().parents[1] / ".." / "shared" / "data"
LINEAR_TRACK = SHARED / "spikes" / "linear-track.nwb"


# --------------------------------------------------------------------------------------------
# folds
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("T, n_folds, gap_s, bin_size", [(1000, 5, 5.0, 0.05), (997, 3, 0.12, 0.05),
                                                         (50, 5, 0.0, 1.0), (403, 4, 2.0, 0.25)])
def test_blocked_folds_partition_contiguity_and_gap(T, n_folds, gap_s, bin_size):
    folds = ev.blocked_folds(T, n_folds, gap_s, bin_size)
    assert len(folds) == n_folds
    g = int(np.ceil(gap_s / bin_size - 1e-9))
    tested = np.concatenate([te for _, te in folds])
    np.testing.assert_array_equal(np.sort(tested), np.arange(T))  # every bin tested exactly once
    sizes = [len(te) for _, te in folds]
    assert max(sizes) - min(sizes) <= 1
    for train, test in folds:
        assert np.all(np.diff(test) == 1)  # one contiguous block
        assert np.intersect1d(train, test).size == 0
        # time from the end of any training bin to the start of any test bin (and back) >= gap
        dist_bins = np.abs(train[:, None] - test[None, :]).min() - 1
        assert dist_bins * bin_size >= gap_s - 1e-9
        # and nothing else is dropped: train = complement of [test - g, test + g]
        expected = np.setdiff1d(np.arange(T), np.arange(test[0] - g, test[-1] + g + 1))
        np.testing.assert_array_equal(train, expected)


def test_blocked_folds_from_times_and_agreement_with_BlockedKFold():
    t0, bs, T = 100.0, 0.05, 2000
    times = t0 + bs * np.arange(T)
    folds = ev.blocked_folds(times, 5, 5.0)  # bin size inferred from the grid
    assert [len(te) for _, te in folds] == [400] * 5
    for k, (_, te) in enumerate(folds):
        iv = BlockedKFold(5, k, gap=5.0).split_span(t0, t0 + T * bs, k)
        # same test block as the seconds-based splitter, to within one bin
        assert abs(times[te[0]] - iv["test"].start[0]) <= bs + 1e-9
        assert abs(times[te[-1]] + bs - iv["test"].end[0]) <= bs + 1e-9
    with pytest.raises(ValueError, match="regular grid"):
        ev.blocked_folds(np.r_[times[:10], times[10:20] + 0.01], 2, 0.0)
    with pytest.raises(ValueError, match="bin_size"):
        ev.blocked_folds(100, 5, 1.0)
    with pytest.raises(ValueError, match="no training bins"):
        ev.blocked_folds(100, 2, 10.0, 0.1)


# --------------------------------------------------------------------------------------------
# masks
# --------------------------------------------------------------------------------------------


def test_speed_from_position_and_moving_mask_on_synthetic_trace():
    bs = 0.05
    t = np.arange(1200) * bs  # 60 s
    # still 0-20 s, run at 40 units/s along a diagonal 20-40 s, still 40-60 s
    s_along = np.clip(t - 20.0, 0, 20.0) * 40.0
    pos = np.stack([s_along * 0.6, s_along * 0.8], axis=1)
    rng = np.random.default_rng(0)
    pos += rng.normal(0, 0.1, pos.shape)  # tracking jitter
    pos[100:103] = np.nan  # lost samples while still
    pos[600] = np.nan  # and one while running
    speed = ev.speed_from_position(pos, bs)
    assert speed.shape == (1200,) and np.isfinite(speed).all()
    np.testing.assert_allclose(np.median(speed[450:750]), 40.0, rtol=0.05)  # units / s
    assert np.median(speed[:380]) < 5.0
    # a single-bin glitch while still: raw speed crosses the threshold, smoothed does not
    glitch = speed.copy()
    glitch[200] = 300.0
    assert ev.moving_mask(glitch, bs, 20.0, 0.0)[200]
    moving = ev.moving_mask(glitch, bs, 20.0, 0.5)
    assert not moving[150:350].any()
    assert moving[420:780].all()
    run = np.flatnonzero(moving)
    assert abs(run[0] * bs - 20.0) < 0.75 and abs((run[-1] + 1) * bs - 40.0) < 0.75
    nan_speed = speed.copy()
    nan_speed[500] = np.nan
    m = ev.moving_mask(nan_speed, bs, 20.0, 0.5)
    assert not m[500] and m[499] and m[501]
    with pytest.raises(ValueError, match=r"\(T,\)"):
        ev.moving_mask(np.zeros((3, 2)), bs, 1.0, 0.0)


def test_tracking_jitter_at_rest_is_not_movement(jittered_open_field):
    """Issue 10: the norm of a jittery velocity has a positive mean that smoothing the speed keeps,
    so an open field tracked with 3 mm jitter "moved" while the animal rested. The moving rule
    smooths the position first, then differentiates."""
    from neurofm.baselines import bin_timeseries

    path, simulated, ts, true_speed = jittered_open_field
    # a fifth of the running speed, as the recipe's default threshold (0.2 x p95): ~2.6 cm/s
    threshold = 0.2 * float(np.percentile(true_speed, 95))
    p = ev.DecodingProtocol(speed_threshold=threshold)
    data = ev.session_position_data(path, p)
    true = bin_timeseries(ts, true_speed, data.bin_times[0], data.bin_end[-1], p.bin_size)
    rest, run = true == 0, true > 2 * threshold  # the simulated animal still / clearly running
    assert rest.mean() > 0.5 and run.mean() > 0.2
    assert not data.speed_measured and "finite differences" in data.speed_source
    # the old rule (Gaussian-smoothed norm of the frame-to-frame change) "moves" at ~4.5 cm/s at rest
    old = ev.moving_mask(data.speed, p.bin_size, threshold, p.smooth_s)
    assert old[rest].mean() > 0.9
    # the rule: speed of the smoothed trajectory, ~0.07 cm/s at rest
    speed = data.moving_speed(p.smooth_s)
    assert np.median(speed[rest]) < 0.1 * threshold
    assert data.moving[rest].mean() < 0.01 and data.moving[run].mean() > 0.95
    np.testing.assert_array_equal(data.moving, ev.decoding_setup(path, p, data=data).score_mask
                                  | (np.arange(data.n_bins) < p.n_history - 1) & data.moving)
    np.testing.assert_array_equal(
        data.moving, ev.moving_mask(None, p.bin_size, threshold, p.smooth_s, position=data.position))
    # a measured speed channel is smoothed itself, as before
    measured = ev.session_position_data(simulated, p)
    assert measured.speed_measured and measured.speed_source == "/behavior/speed"
    np.testing.assert_allclose(measured.moving_speed(p.smooth_s),
                               gaussian_filter1d(measured.speed, p.smooth_s / p.bin_size, mode="nearest"))
    assert measured.moving[rest].mean() == 0 and measured.moving[run].mean() > 0.95
    assert "(/behavior/speed Gaussian-smoothed, sigma 0.5 s" in ev.decoding_setup(simulated, p, measured).describe()
    assert "(speed of the Gaussian-smoothed trajectory, sigma 0.5 s" in ev.decoding_setup(path, p, data).describe()
    with pytest.raises(ValueError, match="exactly one of position"):
        ev.moving_speed(p.bin_size, p.smooth_s, position=data.position, speed=data.speed)


def test_labelled_windows_fraction_whole_chunks_and_seeds():
    end = np.r_[np.arange(0, 3000), np.arange(4000, 9013)] * 0.05 + 0.05  # bin ends, a hole for the test block
    session = np.zeros(len(end), dtype=np.int64)
    chunk = np.floor(end / 5.0)
    chunks = np.unique(chunk)
    for fraction in (0.05, 0.1, 0.37, 0.5, 0.8):
        for seed in range(4):
            m = labelled_windows(session, end, fraction, 5.0, seed)
            # each 5 s chunk is labelled whole or not at all
            assert all(len(set(m[chunk == c])) == 1 for c in chunks)
            # stratified in time: every stretch of consecutive chunks holds the fraction to within two
            on = np.isin(chunks, chunk[m]).astype(int)
            for run in (chunks <= 30, chunks >= 40):  # the two training stretches either side of the hole
                c = np.r_[0, np.cumsum(on[run])]
                for n in (10, 20, int(run.sum())):
                    got = c[n:] - c[:-n]
                    assert np.abs(got - fraction * n).max() <= 2, (fraction, seed, n)
    a = labelled_windows(session, end, 0.1, 5.0, 1)
    np.testing.assert_array_equal(a, labelled_windows(session, end, 0.1, 5.0, 1))
    assert not np.array_equal(a, labelled_windows(session, end, 0.1, 5.0, 2))
    assert not np.array_equal(a, labelled_windows(session + 1, end, 0.1, 5.0, 1))  # each session its own draw
    # a subset of the windows, in any order, gets the same labels (the draw is per window, not per list)
    idx = np.random.default_rng(0).permutation(len(end))[:500]
    np.testing.assert_array_equal(labelled_windows(session[idx], end[idx], 0.1, 5.0, 1), a[idx])
    single = labelled_windows(session, end, 0.1, 0.05, 1)  # bin-sized chunks: random single bins
    assert np.sum(np.diff(single.astype(int)) == 1) > 300  # scattered, not chunks
    assert labelled_windows(session, end, 1.0, 5.0, 0).all()
    with pytest.raises(ValueError, match="fraction"):
        labelled_windows(session, end, 0.0, 5.0, 0)


# --------------------------------------------------------------------------------------------
# pooled scores
# --------------------------------------------------------------------------------------------


def test_evaluate_decoder_pools_predictions_like_a_hand_computation():
    rng = np.random.default_rng(0)
    T = 600
    X = rng.normal(size=(T, 3))
    Y = np.stack([X @ [1.0, -2.0, 0.5], X @ [0.0, 1.0, 1.0]], axis=1) + rng.normal(0, 1.0, (T, 2))
    Y[:200] += 3.0  # block means differ, so pooled and per-fold R2 differ
    Y[37] = np.nan  # unknown: never trained on or scored
    score = rng.random(T) < 0.7
    train_ok = rng.random(T) < 0.9
    folds = ev.blocked_folds(T, 3, 1.0, 0.1)

    def ols(Xtr, Ytr, Xte):
        A = np.c_[Xtr, np.ones(len(Xtr))]
        w = np.linalg.lstsq(A, Ytr, rcond=None)[0]
        return np.c_[Xte, np.ones(len(Xte))] @ w

    out = ev.evaluate_decoder(ols, X, Y, folds, score, train_mask=train_ok)

    ok = np.isfinite(Y).all(axis=1)
    preds, truth, per_fold = [], [], []
    for tr, te in folds:
        tr = tr[train_ok[tr] & ok[tr]]
        te = te[score[te] & ok[te]]
        p = ols(X[tr], Y[tr], X[te])
        preds.append(p)
        truth.append(Y[te])
        per_fold.append(1 - ((Y[te] - p) ** 2).sum(0) / ((Y[te] - Y[te].mean(0)) ** 2).sum(0))
    P, Yt = np.concatenate(preds), np.concatenate(truth)
    r2 = 1 - ((Yt - P) ** 2).sum(0) / ((Yt - Yt.mean(0)) ** 2).sum(0)
    r = [np.corrcoef(Yt[:, d], P[:, d])[0, 1] for d in range(2)]
    np.testing.assert_allclose(out["r2"], r2, rtol=1e-12)
    assert out["r2_mean"] == pytest.approx(r2.mean(), rel=1e-12)
    np.testing.assert_allclose(out["pearson_r"], r, rtol=1e-12)
    assert out["n_scored"] == len(Yt) == int((score & ok).sum())
    assert not out["scored"][37] and np.isnan(out["predictions"][~out["scored"]]).all()
    assert abs(out["r2_mean"] - np.mean(per_fold)) > 1e-3  # pooled, not the mean of fold R2s

    null = ev.evaluate_decoder(ev.mean_fit_predict, X, Y, folds, score, train_mask=train_ok)
    assert null["r2_mean"] < 0  # block means differ: the training mean is a worse guess than the pooled mean

    labelled = labelled_windows(np.zeros(T, dtype=np.int64), np.arange(1, T + 1) * 0.1, 0.25, 1.0, 0)
    few = ev.evaluate_decoder(ols, X, Y, folds, score, train_mask=train_ok & labelled)
    ok_tr = train_ok & np.isfinite(Y).all(axis=1)
    assert few["n_train"] == [int((ok_tr & labelled)[np.asarray(tr)].sum()) for tr, _ in folds]
    assert all(f < n for f, n in zip(few["n_train"], out["n_train"]))
    with pytest.raises(ValueError, match="overlap"):
        ev.evaluate_decoder(ols, X, Y, [(np.arange(0, 300), np.arange(200, 400))], score)


def test_protocol_validation_and_describe():
    p = ev.DecodingProtocol()
    text = p.describe("pixels")
    for piece in ("50 ms bins", "6 bins of history", "> 20 pixels/s", "5-fold blocked CV", "5 s gap",
                  "all training bins labelled", "pooled"):
        assert piece in text
    assert "10% of training bins labelled (5 s chunks, seed 0)" in p.replace(label_fraction=0.1).describe()
    assert p.gap_bins == 100
    with pytest.raises(ValueError, match="label_fraction"):
        ev.DecodingProtocol(label_fraction=0.0)
    with pytest.raises(ValueError, match="alpha"):
        ev.DecodingProtocol(alpha="best")


# --------------------------------------------------------------------------------------------
# session files
# --------------------------------------------------------------------------------------------


def _place_cell_session(path: Path, seed: int = 0, discontinuities=()) -> Path:
    """Back-and-forth runs on a 100-unit-long track for 300 s, then 200 s of rest; 12 place cells;
    ``discontinuities``: times written to /intervals/discontinuities (a paused recording)."""
    rng = np.random.default_rng(seed)
    fs = 60.0
    t = np.arange(0, 500.0, 1 / fs)
    phase = (t / 5.0) % 2  # one lap (5 s) out, one back
    along = np.where(t < 300, np.where(phase < 1, phase, 2 - phase) * 100.0, 30.0)
    pos = np.stack([along, 0.5 * along + 10.0], axis=1) + rng.normal(0, 0.3, (len(t), 2))
    centres = np.linspace(0, 100, 12)
    dt = 0.002
    tt = np.arange(0, 500.0, dt)
    a = np.interp(tt, t, along)
    rate = 1.0 + 25.0 * np.exp(-0.5 * ((a[:, None] - centres[None, :]) / 8.0) ** 2)  # (T, 12) Hz
    spk_t, spk_u = np.nonzero(rng.random(rate.shape) < rate * dt)
    times = tt[spk_t] + rng.uniform(0, dt, len(spk_t))
    order = np.argsort(times)
    with SessionWriter(path, session_id="place") as w:
        w.add_units([f"u{i}" for i in range(12)])
        w.add_spikes(times[order], spk_u[order], t_start=0.0, t_end=500.0)
        keep = ~((t > 100) & (t < 100.2))  # tracking lost for 0.2 s
        w.add_behavior("position", t[keep], pos[keep].astype(np.float32), unit="cm")
        if len(discontinuities):
            w.add_intervals(DISCONTINUITIES, list(discontinuities), list(discontinuities))
    return path


def test_session_position_data_and_ridge_floor_on_place_cells(tmp_path):
    path = _place_cell_session(tmp_path / "place.h5")
    p = ev.DecodingProtocol(alpha=100.0)
    data = ev.session_position_data(path, p)
    T = data.n_bins
    assert data.counts.shape == (T, 12) and data.position.shape == (T, 2) and data.speed.shape == (T,)
    assert data.unit == "cm" and "finite differences" in data.speed_source
    with Session(path) as s:
        t0 = max(s.spikes()[0][0], s.behavior("position")[0][0])
        ts, v = s.behavior("position")
    assert data.bin_times[0] == pytest.approx(t0)
    k = 1234  # position is the mean of the samples inside the bin
    inside = (ts >= data.bin_times[k]) & (ts < data.bin_times[k] + p.bin_size)
    np.testing.assert_allclose(data.position[k], v[inside].mean(0), rtol=1e-6)
    lost = (data.bin_times > 100.02) & (data.bin_times + p.bin_size < 100.18)
    assert lost.any() and np.isnan(data.position[lost]).all() and not data.moving[lost].any()
    # x runs at 20 cm/s, y at 10 cm/s: speed 22.4 cm/s; rest after 300 s
    assert np.median(data.speed[(data.bin_times > 10) & (data.bin_times < 290)]) == pytest.approx(22.36, rel=0.05)
    # the smoothed trajectory (sigma 0.5 s) slows through each instant 180-degree turn: its speed
    # is 22.4 x erf(d / 0.71 s) at d s from the turn, under 20 cm/s for 0.8 s either side of each
    # of the turns 5 s apart, so ~68% of the running bins are above the threshold
    assert 0.6 < data.moving[(data.bin_times > 20) & (data.bin_times < 280)].mean() < 0.75
    assert not data.moving[data.bin_times > 305].any()

    out = ev.ridge_floor(path, p)
    assert out["ridge"]["r2_mean"] > 0.6 and out["ridge"]["pearson_r_mean"] > 0.8
    assert -0.1 < out["null"]["r2_mean"] <= 0.0
    assert out["n_moving"] == out["ridge"]["n_scored"]
    assert "cm/s" in out["protocol"]
    # the setup is reusable: a few-shot protocol on the same bins and folds
    few = ev.ridge_floor(None, p.replace(label_fraction=0.1), setup=out["setup"])
    assert few["setup"].data is out["setup"].data
    np.testing.assert_array_equal(few["setup"].score_mask, out["setup"].score_mask)
    fs, lab = few["setup"], few["setup"].labelled  # 10% of the 5 s chunks, one draw for every fold
    known = np.isfinite(fs.data.position).all(axis=1)
    assert 0 < lab.sum() < len(lab)
    assert few["ridge"]["n_train"] == [int((fs.train_mask & lab & known)[tr].sum()) for tr, _ in fs.folds]
    assert all(0 < a < b for a, b in zip(few["ridge"]["n_train"], out["ridge"]["n_train"]))
    assert few["ridge"]["r2_mean"] < out["ridge"]["r2_mean"]


def test_session_position_data_errors(tmp_path):
    path = tmp_path / "nobehav.h5"
    with SessionWriter(path, session_id="x") as w:
        w.add_units(["a"])
        w.add_spikes(np.linspace(0, 10, 50), np.zeros(50, dtype=int), t_start=0.0, t_end=10.0)
    with pytest.raises(ValueError, match=r"/behavior/position.*DecodingProtocol.behavior"):
        ev.session_position_data(path)


# --------------------------------------------------------------------------------------------
# the real recording
# --------------------------------------------------------------------------------------------


@pytest.mark.skipif(not LINEAR_TRACK.exists(), reason="../shared/data is absent (real recordings not available)")
def test_linear_track_ridge_floor(tmp_path, monkeypatch):
    from neurofm.data.nwb import convert_nwb

    with pytest.warns(UserWarning, match="repeat"):
        path = convert_nwb(LINEAR_TRACK, tmp_path / "linear-track.h5")
    out = ev.ridge_floor(path, ev.DecodingProtocol())
    ridge, null = out["ridge"], out["null"]
    # measured 0.252 (x 0.241, y 0.264), r 0.50, on 6,766 moving bins (17.2% of the bins; 6,790 and 0.259
    # before the tracker's start, a jump from a placeholder position, stopped counting as movement). DESIGN.md 8
    # says about 0.19: that was 0.191 on 10,812 bins when speed was the smoothed norm of the
    # frame-to-frame change, whose pixel jitter also counted 4,022 pauses and slow bins (speed of the
    # smoothed trajectory median 10 px/s) as moving; faster bins decode better (0.27 at 30 px/s)
    assert 0.21 < ridge["r2_mean"] < 0.31
    assert (ridge["r2"] > 0.15).all() and ridge["pearson_r_mean"] > 0.42
    assert 5800 < ridge["n_scored"] < 7800
    assert -0.1 < null["r2_mean"] <= 0.0  # measured -0.009
    assert ridge["r2_mean"] > null["r2_mean"] + 0.1
    # the animal runs in the first half only: the last two of five blocks hold no scored bin
    setup = out["setup"]
    assert [int(setup.score_mask[te].sum()) > 0 for _, te in setup.folds] == [True, True, True, False, False]
    # the glitch filter moves no bin of the default rule here (it replaces 56 of 39,362 bins: the
    # tracker's start and a few 2-20 px spikes), so the README's 6,766 bins stand
    data, p = setup.data, setup.protocol
    assert ridge["n_scored"] == 6766
    with monkeypatch.context() as m:
        m.setattr(ev, "remove_glitches", lambda x: np.asarray(x, dtype=np.float64))
        np.testing.assert_array_equal(data.moving_mask(p.speed_threshold, p.smooth_s), data.moving)
    # why the data's sigma is not the default: the pixel position repeats exactly at rest, the
    # measured jitter is 0 and the rule would pick 0.05 s (8,663 moving bins, ridge 0.204)
    np.testing.assert_array_equal(data.jitter_sd(), [0.0, 0.0])


def test_position_data_without_counts_reads_two_spike_times_and_gives_the_same_grid(tmp_path, monkeypatch):
    """The moving rule (its threshold, MovingWindows, `neurofm inspect`'s test-block check) needs
    the bin grid and the speed, not the spikes: ``counts=False`` reads only the first and last
    spike times, never ``/spikes`` whole, and gives the same bins, position, speed and moving mask."""
    from neurofm.data.synthetic import simulate_spikes
    from neurofm.evaluation import DecodingProtocol, session_position_data

    path = simulate_spikes(tmp_path / "s.h5", n_units=6, duration=120.0, seed=3)
    full = session_position_data(path, DecodingProtocol(speed_threshold=5.0))
    monkeypatch.setattr(Session, "spikes", lambda self, *a, **k: pytest.fail("read the spikes"))
    grid = session_position_data(path, DecodingProtocol(speed_threshold=5.0), counts=False)
    assert grid.counts.shape == (full.n_bins, 0) and full.counts.shape[1] == 6
    np.testing.assert_array_equal(grid.bin_times, full.bin_times)
    np.testing.assert_array_equal(grid.position, full.position)
    np.testing.assert_array_equal(grid.moving, full.moving)
    assert full.moving.any() and (~full.moving).any()


def test_decoding_setup_scores_no_bin_whose_history_crosses_a_discontinuity(tmp_path):
    """The bench's blocked CV (decoding_setup / ridge_floor) scored and trained on bins whose
    n_history-bin window of counts reached back across a pause recorded in
    /intervals/discontinuities (and on the bin the pause cuts), though the spike splits and the
    moving rule already treat each stretch on its own. It now takes the stretches the moving
    rule uses (DecodingData.stretches, which cut the bin grid as the splits cut time blocks)."""
    pause = 150.013  # inside a 50 ms bin, while the animal runs
    path = _place_cell_session(tmp_path / "place.h5", discontinuities=[pause])
    with Session(path) as s:
        assert DISCONTINUITIES in s.interval_names and s.intervals(DISCONTINUITIES)["start"].tolist() == [pause]
    for train_on in ("moving", "all"):
        p = ev.DecodingProtocol(alpha=100.0, train_on=train_on)
        setup = ev.decoding_setup(path, p)
        d = setup.data
        k = int(np.searchsorted(d.bin_times, pause)) - 1  # the bin the pause cuts
        assert d.bin_times[k] < pause < d.bin_end[k]
        assert [(sl.start, sl.stop) for sl in d.stretches()] == [(0, k), (k + 1, d.n_bins)]
        reach = np.arange(k, k + p.n_history)  # the cut bin and those whose history reaches it
        assert not setup.score_mask[reach].any() and not setup.train_mask[reach].any()
        after = k + p.n_history  # the first bin with its whole history after the pause
        if train_on == "all":  # every bin with a position and a whole history
            assert setup.train_mask[after] and np.isfinite(d.position[after]).all()
        assert setup.train_mask[: p.n_history - 1].sum() == 0  # the recording's start, as before
        assert setup.train_mask[p.n_history - 1: k].any()
    out = ev.ridge_floor(None, setup=setup)
    assert out["ridge"]["r2_mean"] > 0.6


def test_ridge_with_too_few_rows_for_its_inner_folds_chooses_the_penalty_without_gaps():
    """A few labelled chunks (170 bins with 5 s gaps of 100 bins) left no training rows in some
    inner fold, and bench/linear_track.py's 10%-label row crashed; the penalty is now chosen by
    Ridge's own blocked CV without gaps, and the blocked-CV score is NaN (not some other fit's)."""
    from neurofm.evaluation import RidgeFitPredict

    rng = np.random.default_rng(0)
    X = rng.normal(size=(170, 5))
    Y = X @ np.array([1.0, -2.0, 0.5, 0.0, 0.0]) + 0.1 * rng.normal(size=170)
    rfp = RidgeFitPredict("blocked_cv", gap=100)
    model = rfp.fit(X, Y)
    assert np.isnan(rfp.cv_r2_) and rfp.cv_pred_ is None
    assert np.corrcoef(model.predict(X).ravel(), Y)[0, 1] > 0.99
    plenty = RidgeFitPredict("blocked_cv", gap=5)
    plenty.fit(X, Y)
    assert np.isfinite(plenty.cv_r2_) and plenty.cv_pred_.shape == (170, 1)


def test_holdout_alpha_is_the_least_squared_error_on_the_last_fifth_after_a_gap():
    """``alpha="holdout"`` keeps the former single-block rule (to compare against): fitted on the
    rows before the last 20% less the gap, the alpha with the least squared error on that 20%."""
    from neurofm.baselines import DEFAULT_ALPHAS, Ridge
    from neurofm.evaluation import RidgeFitPredict, holdout_fold

    rng = np.random.default_rng(1)
    X = rng.normal(size=(150, 8))
    Y = X @ rng.normal(size=8) + 2.0 * rng.normal(size=150)
    model = RidgeFitPredict("holdout", gap=10).fit(X, Y)
    (tr, te), = holdout_fold(150, 10)
    assert tr[-1] == 109 and te[0] == 120 and te[-1] == 149
    errors = [np.mean((Ridge(a).fit(X[tr], Y[tr]).predict(X[te]) - Y[te]) ** 2) for a in DEFAULT_ALPHAS]
    assert model.alpha_ == DEFAULT_ALPHAS[int(np.argmin(errors))]
    with pytest.raises(ValueError, match="too few for a holdout"):
        RidgeFitPredict("holdout", gap=10).fit(X[:12], Y[:12])


def _foraging(seed=0, T=12000, bs=0.05, jitter=0.05, glitches=0.0):
    """An open field in 50 ms bins (cm): 5-10 s rests between 5-10 s runs at 10-30 cm/s that turn
    smoothly, tracked with ``jitter`` cm of noise per bin, and a ``glitches`` fraction of the bins
    displaced by N(0, 5 cm) per coordinate (a tracker's wrong frame): (position (T, 2), true speed (T,))."""
    rng = np.random.default_rng(seed)
    speed, t, run = np.zeros(T), 0, False
    while t < T:
        n = int(rng.uniform(5, 10) / bs)
        speed[t:t + n] = rng.uniform(10, 30) if run else 0.0
        t, run = t + n, not run
    speed = np.convolve(speed, np.ones(10) / 10, mode="same")  # 0.5 s to speed up and slow down
    heading = np.cumsum(rng.normal(0, 0.1, T))
    pos = np.cumsum(speed[:, None] * np.c_[np.cos(heading), np.sin(heading)] * bs, axis=0)
    pos += rng.normal(0, jitter, pos.shape)
    g = rng.random(T) < glitches
    pos[g] += rng.normal(0, 5.0, (g.sum(), 2))
    return pos, speed


def test_tracker_glitches_are_not_movement(monkeypatch):
    """A tracker's isolated wrong frames (3% of the bins off by centimetres, then back) went unseen by
    the jitter estimate (the stillest tenth of the bins), so the rule chose little smoothing and each
    glitch read as movement: 15% of the still bins were scored. Glitches are removed (a Hampel filter
    on the binned position) before either rule smooths."""
    bs = 0.05
    pos, true = _foraging(glitches=0.03)
    still, moving = true < 1.0, true > 5.0
    thr = lambda s: 0.2 * np.percentile(ev.speed_from_position(pos, bs, s), 95)  # noqa: E731
    sigma = ev.smoothing_from_jitter(ev.jitter_sd(pos), bs, thr)
    assert sigma == 0.05  # half a millimetre of jitter needs no more
    clean, _ = _foraging(glitches=0.0)
    for s in (sigma, ev.DecodingProtocol().smooth_s):  # the data's sigma and the default 0.5 s
        m = ev.moving_mask(None, bs, thr(s), s, position=pos)
        m0 = ev.moving_mask(None, bs, thr(s), s, position=clean)  # 0.5 s blurs the runs' ends into rest
        assert m[still].mean() < m0[still].mean() + 0.002 and m[moving].mean() > 0.95, s
    assert m0[still].mean() > 0.01  # the default's own cost, glitches or not
    np.testing.assert_allclose(ev.speed_from_position(pos, bs, sigma)[still].mean(),
                               ev.speed_from_position(clean, bs, sigma)[still].mean(), rtol=0.2)
    # a glitch is replaced by the median of the bins around it: at rest, where it was; in a run, at
    # most two bins' travel off (a neighbour's place)
    error = np.abs(ev.remove_glitches(pos) - clean).max(axis=1)
    assert error[still].max() < 0.5 and np.all(error < 2 * 30 * bs + 0.5)
    # without the filter the glitches read as movement at the data's sigma
    monkeypatch.setattr(ev, "remove_glitches", lambda x: np.asarray(x, dtype=np.float64))
    assert ev.moving_mask(None, bs, thr(sigma), sigma, position=pos)[still].mean() > 0.05


def test_glitch_filter_keeps_fast_real_movement():
    """A running median keeps every monotonic stretch exactly: a 10 cm reach in 150 ms (three
    50 ms bins) and back after a 0.3 s hold, a 2 m/s dash and a VR teleport come through the
    glitch filter unchanged but for the jitter, and their speed with them."""
    bs = 0.05
    rng = np.random.default_rng(0)
    s = np.linspace(0, 1, 4)[1:-1]
    reach = 10 * (10 * s**3 - 15 * s**4 + 6 * s**5)
    x = np.concatenate([np.zeros(40), reach, np.full(6, 10.0), reach[::-1], np.zeros(40),
                        np.arange(1, 41) * 2.0 * 100 * bs, np.full(40, 400.0), np.full(40, 0.0)])
    pos = np.c_[x, 0.5 * x] + rng.normal(0, 0.02, (len(x), 2))
    fixed = ev.remove_glitches(pos)
    assert np.abs(fixed - pos).max() < 0.1  # at most a jitter outlier replaced
    for sigma in (0.05, 0.5):
        np.testing.assert_allclose(ev.speed_from_position(fixed, bs, sigma), ev.speed_from_position(pos, bs, sigma),
                                   atol=0.5)
    peak = ev.speed_from_position(pos, bs, 0.05)[40:46].max()
    assert peak > 0.4 * np.hypot(10, 5) / 0.15  # the reach is not flattened (0.15 s at mean speed)


def test_quantised_position_repeats_at_rest_and_needs_no_jitter_floor():
    """A pixel position (60 Hz camera, integer pixels, 0.3 px of noise before rounding) repeats exactly
    at rest: the measured jitter is 0 and the rule picks the smallest sigma. A floor (the rounding
    error of the binned position's smallest step, 1/3 px / sqrt(12)) would not change that: its
    jitter speed at 0.05 s is a few px/s, far under half the threshold. The glitch filter leaves
    one-pixel flicker alone (its SD is the non-zero deviations', not 0) and removes a glitch."""
    bs, fs = 0.05, 60.0
    rng = np.random.default_rng(1)
    v = np.repeat(rng.choice([0.0, 100.0], 60) * rng.uniform(0.5, 1.5, 60), int(6 * fs))  # px/s, 6 s each
    v = np.convolve(v, np.ones(18) / 18, mode="same")
    frames = np.round(np.cumsum(v) / fs + 0.3 * rng.normal(size=len(v)) + 0.5)
    pos = frames.reshape(-1, 3).mean(axis=1)  # 3 frames a bin
    true = v.reshape(-1, 3).mean(axis=1)
    still, moving = true < 5.0, true > 25.0
    sd = ev.jitter_sd(pos)
    assert sd[0] == 0.0
    thr = lambda s: 0.2 * np.percentile(ev.speed_from_position(pos, bs, s), 95)  # noqa: E731
    assert ev.smoothing_from_jitter(sd, bs, thr) == 0.05
    assert ev.jitter_speed([1 / 3 / np.sqrt(12)], bs, 0.05) < 0.2 * ev.JITTER_MARGIN * thr(0.05)
    assert (ev.remove_glitches(pos) != pos).mean() < 0.005
    m = ev.moving_mask(None, bs, thr(0.05), 0.05, position=pos)
    assert m[still].mean() < 0.005 and m[moving].mean() > 0.95
    glitched = frames.copy()
    rest = np.flatnonzero(np.repeat(still, 3))[::50]
    glitched[rest] += np.round(rng.choice([-1, 1], len(rest)) * rng.uniform(20, 40, len(rest)))
    gpos = glitched.reshape(-1, 3).mean(axis=1)
    assert ev.moving_mask(None, bs, thr(0.05), 0.05, position=gpos)[still].mean() < 0.005


def _reaching(seed=0, n=120, fs=1000.0, noise=5e-5):
    """Centre-out reaches (minimum-jerk, 8 cm, 0.8-1.2 s) between 0.4-0.6 s holds, a hand sampled
    at 1 kHz with 0.05 mm sensor noise, binned to 50 ms: (binned position (T, 2) m, true speed (T,))."""
    rng = np.random.default_rng(seed)
    chunks, pos = [np.zeros((int(fs), 2))], np.zeros(2)
    for k in range(n):
        target = np.zeros(2) if k % 2 else 0.08 * np.array([np.cos(k), np.sin(k)])
        m = int(rng.uniform(0.8, 1.2) * fs)
        s = np.linspace(0, 1, m)[:, None]
        chunks.append(pos + (10 * s**3 - 15 * s**4 + 6 * s**5) * (target - pos))
        pos = target
        chunks.append(np.repeat(pos[None], int(rng.uniform(0.4, 0.6) * fs), 0))
    p = np.concatenate(chunks)
    p = p[:len(p) // 50 * 50]
    speed = np.linalg.norm(np.gradient(p, 1 / fs, axis=0), axis=1)
    measured = p + rng.normal(0, noise, p.shape)
    return measured.reshape(-1, 50, 2).mean(axis=1), speed.reshape(-1, 50).mean(axis=1)


def test_jitter_speed_is_the_pipelines_own_on_white_noise():
    """jitter_speed's closed form (the smoothing and difference as one linear filter, a chi norm)
    against speed_from_position run on white jitter alone."""
    for sd, low, high in (([2.0, 2.0], 0.93, 1.07), ([1.0, 2.0], 0.8, 1.0)):  # exact; a bound for unequal sds
        noise = np.random.default_rng(1).normal(0.0, sd, (200_000, 2))
        for s in ev.SMOOTH_LADDER:
            empirical = np.percentile(ev.speed_from_position(noise, 0.05, s), 100 * ev.JITTER_QUANTILE)
            assert low < empirical / ev.jitter_speed(sd, 0.05, s) < high, (sd, s)
    one = np.random.default_rng(2).normal(0.0, 1.0, 200_000)
    for s in ev.SMOOTH_LADDER:  # a measured speed's jitter: smoothed, not differenced
        empirical = np.percentile(ev.moving_speed(0.05, s, speed=one), 100 * ev.JITTER_QUANTILE)
        assert 0.93 < empirical / ev.jitter_speed([1.0], 0.05, s, measured=True) < 1.07, s
    np.testing.assert_allclose(ev.jitter_sd(one), [1.0], rtol=0.05)
    with_steps = one + np.repeat(np.arange(2000) * 10.0, 100)  # movement only adds to second differences
    assert ev.jitter_sd(with_steps)[0] >= 0.99 * ev.jitter_sd(one)[0]


def test_smoothing_from_jitter_keeps_holds_still_and_open_field_rest_unscored(jittered_open_field):
    """A motor-cortex trial: sigma 0.5 s blurred the 0.5 s holds between reaches into movement, so
    half the still bins were scored. The rule smooths only as much as the measured jitter needs."""
    bs = 0.05
    pos, true = _reaching()
    sd = ev.jitter_sd(pos)
    assert np.all(sd < 3e-5)  # 0.05 mm per 1 kHz sample, averaged over 50 samples a bin: 0.007 mm
    thr = lambda s: 0.2 * np.percentile(ev.speed_from_position(pos, bs, s), 95)  # noqa: E731
    sigma = ev.smoothing_from_jitter(sd, bs, thr)
    assert sigma <= 0.1
    still, moving = true < 0.002, true > 0.02
    new = ev.moving_mask(None, bs, thr(sigma), sigma, position=pos)
    old = ev.moving_mask(None, bs, thr(0.5), 0.5, position=pos)
    assert old[still].mean() > 0.3 and new[still].mean() < 0.01 and new[moving].mean() > 0.85
    # an open field at 30 Hz with 3 mm jitter (the README's example): more smoothing, rest unscored
    from neurofm.baselines import bin_timeseries

    path, _, ts, true_speed = jittered_open_field
    data = ev.session_position_data(path, ev.DecodingProtocol(), counts=False)
    sd = data.jitter_sd()
    assert np.all((0.15 < sd) & (sd < 0.35))  # 0.3 cm a frame, 1.5 frames a bin
    threshold = 0.2 * float(np.nanpercentile(data.moving_speed(0.5), 95))
    sigma = ev.smoothing_from_jitter(sd, bs, threshold)
    assert sigma > 0.05 and ev.jitter_speed(sd, bs, sigma) <= ev.JITTER_MARGIN * threshold
    true = bin_timeseries(ts, true_speed, data.bin_times[0], data.bin_end[-1], bs)
    m = data.moving_mask(threshold, sigma)
    assert m[true == 0].mean() < 0.01 and m[true > 2 * threshold].mean() > 0.95
    # none fits: the widest
    assert ev.smoothing_from_jitter([1e3], bs, 1.0) == ev.SMOOTH_LADDER[-1]
