"""iEEG evaluation protocols: held-out channel reconstruction and event-detection AUROC."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import torch

from neurofm import evaluation_ieeg as ei
from neurofm.data.segmenter import parse_contact
from neurofm.data.session import Session, SessionWriter
from neurofm.data.synthetic import simulate_ieeg

SHARED = Path(__file__).resolve().parents[1] / ".." / "shared" / "data"
SEEG = SHARED / "ieeg" / "sample_seeg.edf"
SEEG_ELECTRODES = SHARED / "ieeg" / "sample_seeg_electrodes.tsv"

FS = 100.0
DURATION = 20.0
# 1 s segments of 4 x 25 samples; train = first 75% (0..14.5 s), test = last 25% (15.5..20 s)
PROTOCOL = ei.ReconstructionProtocol(segment_s=1.0, n_patches=4, test_fraction=0.25, gap_s=1.0)


def _orthonormal_pair(rng, n: int) -> tuple[np.ndarray, np.ndarray]:
    """Two zero-mean, unit-std (population), exactly uncorrelated series of ``n`` samples."""
    a = rng.standard_normal((n, 2))
    a -= a.mean(axis=0)
    q, _ = np.linalg.qr(a)  # orthonormal columns, still zero-mean
    return q[:, 0] * math.sqrt(n), q[:, 1] * math.sqrt(n)


def _write_shaft_session(path: Path, a: float, b: float, seed: int = 0) -> Path:
    """A session where contact A3 is ``a * u + b * v`` per 1-s segment and A2 = u, A4 = v.

    ``u``, ``v`` are orthonormal in every 1-s segment, then each segment gets a random gain and
    offset shared by A2, A3 and A4 (so raw A3 = (A2 + A4) / 2 + const exactly when a = b = 1/sqrt 2).
    B1, B2 (no contact with both neighbours) and DC01..DC03 (non-neural name) are noise.
    """
    rng = np.random.default_rng(seed)
    n_seg, T = int(DURATION), int(FS)
    names = ["A2", "A3", "A4", "B1", "B2", "DC01", "DC02", "DC03"]
    data = rng.standard_normal((n_seg * T, len(names))).astype(np.float64) * 30.0
    for s in range(n_seg):
        u, v = _orthonormal_pair(rng, T)
        gain, offset = rng.uniform(5, 50), rng.uniform(-100, 100)
        rows = slice(s * T, (s + 1) * T)
        data[rows, 0] = gain * u + offset
        data[rows, 1] = gain * (a * u + b * v) + offset
        data[rows, 2] = gain * v + offset
    with SessionWriter(path, session_id=path.stem) as w:
        w.add_continuous(data.astype(np.float32), FS)
        xyz = np.array([[-30.0, 10, 5], [-27, 10, 5], [-24, 10, 5], [20, -5, 0], [23, -5, 0],
                        [np.nan] * 3, [np.nan] * 3, [np.nan] * 3])
        w.add_channels(names, x=xyz[:, 0], y=xyz[:, 1], z=xyz[:, 2],
                       regions={"destrieux": ["ctx_lh_G_front_sup"] * 3 + ["ctx_rh_G_front_sup"] * 2 + [""] * 3})
    return path


@pytest.fixture(scope="module")
def mean_session(tmp_path_factory):
    """A3 literally the mean of its neighbours A2 and A4."""
    return _write_shaft_session(tmp_path_factory.mktemp("recon") / "mean.h5", 1 / math.sqrt(2), 1 / math.sqrt(2))


# --------------------------------------------------------------------------------------------
# channel selection
# --------------------------------------------------------------------------------------------


def test_evaluation_channels_need_both_same_shaft_neighbours():
    names = ["L'1", "L'2", "L'3", "L'10", "L'9", "L'11", "N'2", "N'3", "N'4", "DC01", "DC02", "DC03",
             "EKG1", "EKG2", "X5", "RH 03", "RH 02", "RH 04", "Cz"]
    usable = ~ei.non_neural_names(names)
    assert not usable[[9, 10, 11, 12, 13]].any() and usable[[0, 14, 15, 18]].all()
    # one rule with the converter's channel typing
    from neurofm.data.session import channel_types_from_names

    assert usable.tolist() == (channel_types_from_names(names) == "").tolist()
    idx, nb = ei.evaluation_channels(names, usable)
    assert [names[i] for i in idx] == ["L'2", "L'10", "N'3", "RH 03"]
    assert [(names[p], names[q]) for p, q in nb] == [("L'1", "L'3"), ("L'9", "L'11"), ("N'2", "N'4"),
                                                   ("RH 02", "RH 04")]
    # without the name filter the DC inputs would form a "shaft"
    idx_all, _ = ei.evaluation_channels(names)
    assert "DC02" in [names[i] for i in idx_all]
    # an unusable neighbour disqualifies the contact
    usable[names.index("L'3")] = False
    idx, _ = ei.evaluation_channels(names, usable)
    assert "L'2" not in [names[i] for i in idx]


def test_reconstruction_data_channels_and_blocks(mean_session):
    data = ei.reconstruction_data(mean_session, PROTOCOL)
    assert data.channel_names[int(data.eval_channels[0])] == "A3" and len(data.eval_channels) == 1
    assert [data.channel_names[i] for i in data.neighbours[0]] == ["A2", "A4"]
    assert not data.usable[[5, 6, 7]].any()  # DC01..03 excluded by name
    # contiguous blocks with the gap: every train segment ends >= gap before any test segment starts
    seg_s = data.plan.segment_s
    assert len(data.train) == 14 and len(data.test) == 4
    assert data.train.t0.max() + seg_s <= data.test.t0.min() - PROTOCOL.gap_s + 1e-9
    assert data.test.t0.max() + seg_s <= DURATION + 1e-9
    assert data.train.x.shape[1:] == (8, 100)
    # segments are z-scored per channel per segment
    np.testing.assert_allclose(data.test.x.mean(-1), 0, atol=1e-5)
    np.testing.assert_allclose(data.test.x.std(-1), 1, atol=1e-4)
    assert "test = last 25%" in data.describe() and "4 patches x 25 samples at 100 Hz" in data.describe()


# --------------------------------------------------------------------------------------------
# R2 and batches
# --------------------------------------------------------------------------------------------


def test_reconstruction_r2_by_hand():
    true = np.array([[1.0, 2, 3], [4, 5, 6]])
    pred = np.array([[1.0, 2, 4], [4, 4, 6]])
    # pooled over all 6 values: SSE = 1 + 1, mean 3.5, SST = 17.5
    assert ei.reconstruction_r2(pred, true) == pytest.approx(1 - 2 / 17.5)
    # only the first (channel, segment) row: SSE 1, SST 2
    assert ei.reconstruction_r2(pred, true, scored=[True, False]) == pytest.approx(0.5)
    # pooled over rows, not the mean of per-row R2s (rows score 1 and 1 - 1/2 here: mean 0.75)
    pred2 = np.array([[1.0, 2, 3], [4, 4, 6]])
    pooled = ei.reconstruction_r2(pred2, true)
    assert pooled == pytest.approx(1 - 1 / 17.5) and abs(pooled - 0.75) > 0.1
    assert ei.reconstruction_r2(torch.tensor(pred), torch.tensor(true)) == pytest.approx(1 - 2 / 17.5)
    with pytest.raises(ValueError, match="differ"):
        ei.reconstruction_r2(pred[:, :2], true)


def test_batches_hide_the_held_out_channel(mean_session):
    data = ei.reconstruction_data(mean_session, PROTOCOL)
    batches = list(ei.reconstruction_batches(data, "test", batch_size=3))
    assert [b["x"].shape[0] for b in batches] == [3, 1]  # 4 test segments of the one channel
    b = batches[0]
    c = int(data.eval_channels[0])
    assert b["x"].dtype == torch.float32 and b["x"].shape == (3, 8, 100)
    assert b["channel_mask"].dtype == torch.bool and b["held_out_mask"].dtype == torch.bool
    assert torch.all(b["x"][:, c] == 0) and torch.all(b["held_out"] == c)
    assert b["held_out_mask"][:, c].all() and b["held_out_mask"].sum() == 3
    assert b["channel_mask"][:, c].all()  # a real channel, hidden
    assert not b["channel_mask"][:, 5:].any() and torch.all(b["x"][:, 5:] == 0)  # non-neural: like padding
    assert torch.equal(b["x"][:, 0], torch.from_numpy(data.test.x[:3, 0]))  # the rest untouched
    assert torch.equal(b["segment"], torch.arange(3)) and torch.equal(batches[1]["segment"], torch.tensor([3]))
    for key in ("coords", "parcel", "lobe", "session", "t0", "neighbours", "scored"):
        assert key in b
    assert b["coords"].shape == (3, 8, 3) and b["coords"].dtype == torch.int64
    assert (b["coords"][0, :5] >= 0).all() and (b["coords"][0, 5:] == -1).all()
    assert (b["parcel"][0, :5] > 0).all() and (b["parcel"][0, 5:] == 0).all()
    # a predictor that reads the hidden channel gets zeros: R2 0, nothing leaks
    leak = ei.score_reconstruction(lambda bt: bt["x"][torch.arange(len(bt["x"])), bt["held_out"]], data)
    assert leak["r2"] == pytest.approx(0.0, abs=1e-6)
    with pytest.raises(ValueError, match=r"return \(B, T\)"):
        ei.score_reconstruction(lambda bt: np.zeros((len(bt["x"]), 7)), data)


def test_neighbour_mean_is_exact_when_the_channel_is_their_mean(mean_session):
    data = ei.reconstruction_data(mean_session, PROTOCOL)
    res = ei.score_reconstruction(ei.neighbour_mean_baseline, data, return_predictions=True)
    assert res["r2"] == pytest.approx(1.0, abs=1e-5)
    assert res["n_channels"] == 1 and res["n_segments"] == 4 and res["n_scored"] == 4
    # the streamed pooled R2 equals the array form on the returned predictions
    assert res["r2"] == pytest.approx(ei.reconstruction_r2(res["pred"], res["true"], res["scored"]), abs=1e-9)
    # a worse predictor scores lower on the same samples
    shifted = ei.score_reconstruction(lambda b: np.roll(ei.neighbour_mean_baseline(b), 5, axis=-1), data)
    assert shifted["r2"] < 0.9


def test_least_squares_neighbours_learns_unequal_weights(tmp_path):
    a, b = 0.8, 0.6  # A3 = 0.8 u + 0.6 v: unit variance, no longer the neighbours' mean
    data = ei.reconstruction_data(_write_shaft_session(tmp_path / "w.h5", a, b, seed=1), PROTOCOL)
    mean = ei.score_reconstruction(ei.neighbour_mean_baseline, data)
    # z-scored mean of orthonormal u, v is (u + v) / sqrt 2: r = (a + b) / sqrt 2, R2 = 2 r - 1
    r = (a + b) / math.sqrt(2)
    assert mean["pearson_r"] == pytest.approx(r, abs=1e-4)
    assert mean["r2"] == pytest.approx(2 * r - 1, abs=1e-4)
    ls = ei.LeastSquaresBaseline("neighbours", ridge=0.0).fit(data)
    c = int(data.eval_channels[0])
    np.testing.assert_allclose(ls.weights_[c, data.neighbours[0]], [a, b], atol=1e-4)
    assert ei.score_reconstruction(ls, data)["r2"] == pytest.approx(1.0, abs=1e-5)
    ls_all = ei.LeastSquaresBaseline("all").fit(data)
    assert ls_all.weights_[c, c] == 0 and np.all(ls_all.weights_[c, ~data.usable] == 0)
    assert ei.score_reconstruction(ls_all, data)["r2"] > 0.999
    with pytest.raises(RuntimeError, match="fit"):
        ei.LeastSquaresBaseline()(next(ei.reconstruction_batches(data)))


def test_protocol_errors_name_the_fix(mean_session):
    with pytest.raises(ValueError, match="fewer than 1.*shorter segments"):
        ei.reconstruction_data(mean_session, PROTOCOL.replace(segment_s=5.0, n_patches=5))
    with pytest.raises(ValueError, match="test_fraction"):
        ei.ReconstructionProtocol(test_fraction=1.0)


# --------------------------------------------------------------------------------------------
# event detection
# --------------------------------------------------------------------------------------------


def test_score_auroc_by_hand():
    assert ei.score_auroc([0.1, 0.4, 0.35, 0.8], [0, 0, 1, 1]) == pytest.approx(0.75)
    assert ei.score_auroc(torch.tensor([[0.0, 1], [1, 0]]), [1, 0]) == pytest.approx(1.0)  # 2-class logits
    with pytest.raises(ValueError, match="one class"):
        ei.score_auroc([0.1, 0.2], [1, 1])


def test_band_power_detects_simulated_speech_events(tmp_path):
    path = simulate_ieeg(tmp_path / "sim.h5", n_channels=24, duration=600.0, sampling_rate=256.0, n_regions=3,
                         seed=2)
    protocol = ei.EventProtocol(events="word_onset", segment_s=0.5, n_patches=4, gap_s=2.0)
    data = ei.event_data(path, protocol)
    assert data.label_map == {"nonspeech": 0, "speech": 1}
    # contiguous train < valid < test blocks, every segment wholly inside its block, gaps respected
    for a, b in (("train", "valid"), ("valid", "test")):
        assert data.split(a).t0.max() + 0.5 <= data.split(b).t0.min() - 2.0 + 1e-9
        blk = data.blocks[a]
        assert np.all(blk.contains(data.split(a).t0, data.split(a).t0 + 0.5))
    assert min(np.bincount(data.test.label)) >= 10
    # segments start at event onsets and carry their labels
    with Session(path) as s:
        ev = s.events("word_onset")
    onset_label = dict(zip(np.round(ev["onset"], 6), ev["label"]))
    assert all(onset_label[round(t, 6)] == ("speech" if y else "nonspeech")
               for t, y in zip(data.test.t0, data.test.label))
    res = ei.band_power_baseline(data)
    assert res["auroc"] > 0.7, res
    assert res["alpha"] in protocol.alphas and res["n_test"] == len(data.test)
    # a model's predictor is scored on exactly the same test segments through the batch path
    via_batches = ei.score_classifier(lambda b: res["model"].decision_function(b["x"].numpy()), data)
    assert via_batches["auroc"] == pytest.approx(res["auroc"])
    batch = next(ei.event_batches(data, "test", batch_size=4))
    assert batch["x"].shape == (4, 24, 128) and batch["label"].dtype == torch.int64
    with pytest.raises(ValueError, match="no event labelled"):
        ei.event_data(path, protocol.replace(labels=("nonspeech", "music")))


# --------------------------------------------------------------------------------------------
# the real sample sEEG
# --------------------------------------------------------------------------------------------


def test_sample_seeg_reconstruction_baselines(tmp_path):
    if not SEEG.exists():
        pytest.skip(f"shared data folder absent ({SHARED})")
    from neurofm.data.ieeg import convert_ieeg

    with pytest.warns(UserWarning):  # unmatched MARK rows, unit inferred as mm, EKG/DC typed by name
        path = convert_ieeg(SEEG, tmp_path / "seeg.h5", electrodes=SEEG_ELECTRODES)
    protocol = ei.ReconstructionProtocol(segment_s=1.0, n_patches=4, test_fraction=0.3, gap_s=1.0)
    data = ei.reconstruction_data(path, protocol)
    names = data.channel_names
    # the converter types EKG1/2 (ecg) and DC01..08 (misc) by name, and the segmenter drops them:
    # 98 - 10 channels reach the batches, all usable; the same 76 contacts are evaluated
    assert len(names) == 88 and data.usable.all() and not any(n.startswith(("DC", "EKG")) for n in names)
    assert len(data.eval_channels) == 76 and len(data.test) == 5
    for c, (lo, hi) in zip(data.eval_channels, data.neighbours):
        shaft, n = parse_contact(names[c])
        assert parse_contact(names[lo]) == (shaft, n - 1) and parse_contact(names[hi]) == (shaft, n + 1)
        assert not names[c].startswith(("DC", "EKG"))
    res = ei.reconstruction_baselines(data)
    r2 = {k: v["r2"] for k, v in res.items()}
    # measured (1 s segments, last 30%): neighbour mean 0.56, LS neighbours 0.76, LS all 0.79
    assert 0.4 < r2["neighbour mean"] < 0.7, r2
    assert 0.6 < r2["LS neighbours"] < 0.9, r2
    assert 0.6 < r2["LS all channels"] < 0.95, r2
    assert r2["neighbour mean"] < r2["LS neighbours"] <= r2["LS all channels"] + 0.02
    assert all(v["n_scored"] == 76 * 5 and np.isfinite(v["r2_per_channel"]).all() for v in res.values())
    # batches mix channels; the batch size changes nothing
    small = ei.score_reconstruction(ei.neighbour_mean_baseline, data, batch_size=7)
    assert small["r2"] == pytest.approx(r2["neighbour mean"], abs=1e-9)
    np.testing.assert_allclose(small["r2_per_channel"], res["neighbour mean"]["r2_per_channel"], atol=1e-9)


def test_test_period_blocks_are_contiguous_and_balanced():
    t0 = np.r_[np.arange(50) * 2.0, np.arange(30) * 2.0]  # two sessions with overlapping clocks
    sess = np.r_[np.zeros(50, int), np.ones(30, int)]
    b = ei.test_period_blocks(t0, sess, n_blocks=8)
    assert set(b) == set(range(8)) and np.bincount(b).max() - np.bincount(b).min() <= 1
    order = np.lexsort((t0, sess))
    assert (np.diff(b[order]) >= 0).all()  # blocks follow time within sessions
    assert ei.test_period_blocks(np.arange(60.0), n_blocks=20).max() == 11  # >= 5 segments per block
    assert ei.test_period_blocks(np.arange(6.0), n_blocks=10).max() == 4  # but at least 5 blocks for a CI
