"""Datasets: lazy reads, rank x worker sharding, seeded shuffles, streaming memory,
behaviour/stimulus per window, iEEG padding and skipping."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader

from neurofm.data.datasets import (EpochDataLoader, IEEGSegmentDataset, SpikeWindowDataset, StreamingIEEGDataset,
                                   StreamingSpikeDataset, behavior_features, collate_ieeg, collate_spikes,
                                   sample_weights)
from neurofm.data.segmenter import IEEGSegmenter
from neurofm.data.session import Session, SessionWriter
from neurofm.data.splits import BlockedKFold
from neurofm.data.tokenizer import SpikeTokenizer, UnitVocab

SHARED = Path(__file__).resolve().parents[2] / ".." / "shared" / "data" / "ieeg"


@pytest.fixture(scope="module")
def spike_files(tmp_path_factory):
    d = tmp_path_factory.mktemp("spikes")
    rng = np.random.default_rng(0)
    paths = []
    for k, (T, n_units) in enumerate([(12.0, 4), (9.0, 6)]):
        t = np.sort(rng.uniform(0, T, int(T * n_units * 15)))
        bt = np.arange(0, T, 1 / 50)
        with SessionWriter(d / f"s{k}.h5", session_id=f"s{k}") as w:
            w.add_units([f"u{i}" for i in range(n_units)])
            w.add_spikes(t, rng.integers(0, n_units, len(t)), t_start=0.0, t_end=T)
            w.add_behavior("speed", bt, np.stack([bt, 2 * bt], 1))
            ft = np.arange(0, T, 0.05)
            w.add_stimulus("video", ft, (np.arange(len(ft)) % 256).astype(np.uint8)[:, None, None] * np.ones((1, 2, 3), np.uint8))
        paths.append(d / f"s{k}.h5")
    return paths


@pytest.fixture(scope="module")
def tokenizer(spike_files):
    return SpikeTokenizer(0.05, 0.1, 0.01, 16, 24, UnitVocab.from_sessions([Session(p) for p in spike_files]))


def _keys(batch):
    return list(zip(batch["session"].tolist(), np.round(batch["interval"].numpy(), 6).tolist()))


# --------------------------------------------------------------------------------------------
# map-style
# --------------------------------------------------------------------------------------------


def test_map_style_window_matches_direct_tokenization(spike_files, tokenizer):
    ds = SpikeWindowDataset(spike_files, tokenizer, "train")
    s, t = ds.window(len(ds) - 1)
    item = ds[len(ds) - 1]
    sess = Session(spike_files[s])
    times, units = sess.spikes()
    ref = tokenizer.tokenize(times, tokenizer.vocab.encode(sess.session_id, units), [t])
    for k in ("id", "dt", "target_id", "id_prev", "dt_prev"):
        assert np.array_equal(item[k], ref[k][0]), k
    assert item["session"] == s == 1 and item["interval"] == pytest.approx(t)
    b = collate_spikes([ds[i] for i in range(5)])
    assert b["id"].shape == (5, 16) and b["id"].dtype == torch.int64 and b["mask"].dtype == torch.bool
    assert b["id_prev"].shape == (5, 24) and b["interval"].dtype == torch.float64


def test_behavior_and_stimulus_per_window(spike_files, tokenizer):
    ds = SpikeWindowDataset(spike_files, tokenizer, None, behavior=["speed"], behavior_seq_len=5,
                            stimulus="video", stimulus_frames=3, stimulus_window=0.15)
    b = collate_spikes([ds[i] for i in range(0, 40, 7)])
    iv = b["interval"].numpy()
    # speed = [t, 2t] sampled at 50 Hz: the mean over [end - 0.05, end) is the mean sample time
    samples = [np.arange(0, 12, 0.02)[(np.arange(0, 12, 0.02) >= e - 0.05 - 1e-12) & (np.arange(0, 12, 0.02) < e - 1e-12)]
               for e in iv]
    expect = np.array([[s.mean(), 2 * s.mean()] for s in samples])
    np.testing.assert_allclose(b["behavior"]["speed"].numpy(), expect, atol=2e-5)
    assert b["behavior_mask"]["speed"].all()
    # input sequence: linear in time, so interpolation is exact; times are bin centres
    assert b["behavior_seq"]["speed"].shape == (len(iv), 5, 2)
    np.testing.assert_allclose(b["behavior_seq_t"][0].numpy(), (np.arange(5) + 0.5) * 0.01, atol=1e-7)
    q = iv[:, None] - 0.05 + b["behavior_seq_t"].numpy()
    np.testing.assert_allclose(b["behavior_seq"]["speed"][..., 0].numpy(), q, atol=1e-4)
    # stimulus: the 3 frames (20 Hz) before interval + window_curr, newest last; frame k has value k/255
    st = b["stimulus"].numpy()
    assert st.shape == (len(iv), 3, 2, 3)
    for i, e in enumerate(iv):
        last = int(np.ceil((e + 0.05) / 0.05 - 1e-9)) - 1
        want = [k / 255 if k >= 0 and k * 0.05 >= e + 0.05 - 0.15 - 1e-9 else 0 for k in (last - 2, last - 1, last)]
        np.testing.assert_allclose(st[i, :, 0, 0], want, atol=1e-6)


def test_behaviour_width_mismatch_across_sessions_is_named_when_the_dataset_is_built(tmp_path):
    """position (T, 2) in one file and (T,) in another used to crash mid-epoch in the collate."""
    paths = []
    for k, values in enumerate((np.ones((100, 2)), np.ones(100), np.ones((100, 1)))):
        with SessionWriter(tmp_path / f"w{k}.h5", session_id=f"w{k}") as w:
            w.add_units(["u0"])
            w.add_spikes(np.linspace(0.1, 1.9, 30), np.zeros(30, int), t_start=0.0, t_end=2.0)
            w.add_behavior("position", np.arange(100) / 50, values)
        paths.append(tmp_path / f"w{k}.h5")
    tk = SpikeTokenizer(0.05, 0.05, 0.01, 8, 8, UnitVocab.from_sessions([Session(p) for p in paths]))
    for cls in (SpikeWindowDataset, StreamingSpikeDataset):
        with pytest.raises(ValueError) as err:
            cls(paths[:2], tk, None, behavior=["position"])
        msg = str(err.value)
        assert "/behavior/position" in msg and str(paths[0]) in msg and str(paths[1]) in msg
        assert "(100, 2)" in msg and "(100,)" in msg and "leave it out of behavior=" in msg
    # (T,) and (T, 1) are the same width: fine together, one value per window
    ds = StreamingSpikeDataset(paths[1:], tk, None, behavior=["position"], batch_size=64, shuffle=True)
    assert all(b["behavior"]["position"].shape[1:] == (1,) for b in ds)


def test_behavior_features_gaps_and_missing():
    ts = np.array([0.0, 0.1, 0.2, 1.0, 1.1])
    v = np.array([0.0, 1.0, np.nan, 10.0, 11.0])
    f = behavior_features(ts, v, np.array([0.0, 0.5, 0.95]), np.array([0.3, 0.9, 1.15]), seq_len=3, max_gap=0.25)
    np.testing.assert_allclose(f["mean"][:, 0], [0.5, 0.0, 10.5])
    assert f["mask"].tolist() == [True, False, True]
    # window 1 has no samples and the nearest ones are 0.9 s apart: no input samples either
    assert f["seq_mask"][1].tolist() == [False, False, False] and (f["seq"][1] == 0).all()
    # window 0: times 0.05 (0..0.1 interpolated), 0.15 and 0.25 (neighbours 0.1 and 1.0: gap too big; NaN row ignored)
    assert f["seq_mask"][0].tolist() == [True, False, False]
    np.testing.assert_allclose(f["seq"][0, 0, 0], 0.5)


def test_behavior_window_mean_weighs_each_sample_by_the_time_it_stands_for():
    """A wheel logged densely while it turns (1 ms) and every 100 ms at rest: the window's target
    is the time average (moving 10% of the window), not the sample average (92% of the samples
    move). Regular samples, and a gap over max_gap, keep the plain mean."""
    t = np.sort(np.r_[np.arange(0.0, 1.0, 0.1), np.arange(0.5, 0.6, 0.001)])
    moving = ((t >= 0.5) & (t < 0.6)).astype(float)
    f = behavior_features(t, moving, np.array([0.0]), np.array([1.0]))
    assert moving.mean() > 0.9 and abs(float(f["mean"][0, 0]) - 0.1) < 0.06  # the sample at 0.5 stands for 0.05 s
    regular = np.arange(0.0, 10.0, 0.01)
    starts = np.arange(0.0, 9.5, 0.5)
    got = behavior_features(regular, np.sin(regular), starts, starts + 0.5)["mean"][:, 0]
    lo, hi = np.searchsorted(regular, starts - 1e-9), np.searchsorted(regular, starts + 0.5 - 1e-9)
    np.testing.assert_array_equal(got, np.array([np.sin(regular[a:b]).mean() for a, b in zip(lo, hi)], np.float32))
    np.testing.assert_allclose(sample_weights(np.array([0.0, 0.1, 0.2, 5.0, 5.1]), 0.25), [0.1] * 5)
    assert sample_weights(np.array([3.0]), 0.25).tolist() == [1.0]


def test_window_inside_a_tracking_gap_has_no_label(tmp_path):
    """2-D hand velocity at 100 Hz with 2 s of samples missing (a tracking dropout): a window
    inside the gap reads no behaviour sample, so its label is masked and its input samples are
    zeros. Reading it raised "cannot reshape array of size 0 into shape (0,newaxis)", which
    stopped `neurofm finetune` on a reaching recording before the first step."""
    rng = np.random.default_rng(1)
    t = np.sort(rng.uniform(0, 10.0, 400))
    bt = np.arange(0, 10.0, 0.01)
    bt = bt[(bt < 4.0) | (bt >= 6.0)]
    with SessionWriter(tmp_path / "gap.h5", session_id="gap") as w:
        w.add_units(["u0", "u1"])
        w.add_spikes(t, rng.integers(0, 2, len(t)), t_start=0.0, t_end=10.0)
        w.add_behavior("hand_velocity", bt, np.stack([np.sin(bt), np.cos(bt)], 1), unit="mm/s")
    tk = SpikeTokenizer(0.05, 0.1, 0.01, 16, 24, UnitVocab.from_sessions([Session(tmp_path / "gap.h5")]))
    ds = SpikeWindowDataset([tmp_path / "gap.h5"], tk, None, behavior=["hand_velocity"], behavior_seq_len=5)
    ends = np.array([ds.window(i)[1] for i in range(len(ds))])
    inside = int(np.flatnonzero((ends > 4.6) & (ends < 5.4))[0])   # the window and its samples' reach: in the gap
    item, before = ds[inside], ds[inside - 40]
    assert item["behavior_mask"]["hand_velocity"] == False and before["behavior_mask"]["hand_velocity"] == True  # noqa: E712
    assert item["behavior"]["hand_velocity"].shape == (2,) and (item["behavior"]["hand_velocity"] == 0).all()
    assert item["behavior_seq"]["hand_velocity"].shape == (5, 2) and not item["behavior_seq_mask"]["hand_velocity"].any()
    f = behavior_features(np.zeros(0), np.zeros(0), np.array([0.0]), np.array([0.05]))   # (T,) with T = 0
    assert f["mean"].shape == (1, 1) and f["mask"].tolist() == [False]


# --------------------------------------------------------------------------------------------
# streaming
# --------------------------------------------------------------------------------------------


def _stream_epoch(spike_files, tokenizer, epoch, world=2, workers=2, even=False, **kw):
    seen = {}
    for rank in range(world):
        ds = StreamingSpikeDataset(spike_files, tokenizer, "train", batch_size=7, seed=3, rank=rank, world_size=world,
                                   even_ranks=even, block_windows=16, shuffle_buffer=20, num_workers=workers, **kw)
        ds.set_epoch(epoch)
        loader = DataLoader(ds, batch_size=None, num_workers=workers)
        batches = list(loader)
        assert len(batches) == len(ds)  # len() is exact, so Lightning's progress and DDP agree
        seen[rank] = [k for b in batches for k in _keys(b)]
    return seen


def test_streaming_2_ranks_x_2_workers_each_window_exactly_once(spike_files, tokenizer):
    expected = SpikeWindowDataset(spike_files, tokenizer, "train")
    want = Counter((s, round(t, 6)) for s, t in (expected.window(i) for i in range(len(expected))))
    assert len(want) == len(expected) > 300
    seen = _stream_epoch(spike_files, tokenizer, epoch=0)
    got = Counter(seen[0] + seen[1])
    assert got == want  # every window once, none twice, nothing else
    assert not set(seen[0]) & set(seen[1])
    # even_ranks: equal share per rank (DDP), each window at most once, fewer than world_size dropped
    seen_even = _stream_epoch(spike_files, tokenizer, epoch=0, even=True)
    assert len(seen_even[0]) == len(seen_even[1])
    got = Counter(seen_even[0] + seen_even[1])
    assert max(got.values()) == 1 and len(want) - sum(got.values()) < 2 and set(got) <= set(want)


def test_streaming_shuffle_reproducible_and_changes_with_epoch(spike_files, tokenizer):
    a = _stream_epoch(spike_files, tokenizer, epoch=0, world=1, workers=0)
    b = _stream_epoch(spike_files, tokenizer, epoch=0, world=1, workers=0)
    c = _stream_epoch(spike_files, tokenizer, epoch=1, world=1, workers=0)
    assert a == b
    assert a[0] != c[0] and sorted(a[0]) == sorted(c[0])
    # shuffled: not in time order, and sessions interleave
    assert a[0] != sorted(a[0])
    # no shuffle: time order within each block, blocks in order
    ds = StreamingSpikeDataset(spike_files, tokenizer, "train", batch_size=50, shuffle=False, rank=0, world_size=1)
    keys = [k for bt in ds for k in _keys(bt)]
    assert keys == sorted(keys)


def test_streaming_items_equal_map_style_items(spike_files, tokenizer):
    ms = SpikeWindowDataset(spike_files, tokenizer, "valid", behavior=["speed"])
    by_key = {(s, round(t, 6)): i for i, (s, t) in enumerate(ms.window(i) for i in range(len(ms)))}
    st = StreamingSpikeDataset(spike_files, tokenizer, "valid", behavior=["speed"], batch_size=9, seed=1,
                               rank=0, world_size=1)
    n = 0
    for b in st:
        for r, key in enumerate(_keys(b)):
            ref = ms[by_key[key]]
            for k in ("id", "dt", "target_dt", "id_prev", "dt_prev", "n_dropped"):
                assert np.array_equal(b[k][r].numpy(), np.asarray(ref[k])), k
            np.testing.assert_allclose(b["behavior"]["speed"][r].numpy(), ref["behavior"]["speed"], rtol=1e-5)
            n += 1
    assert n == len(ms)


def test_streaming_reads_blocks_never_the_whole_file(spike_files, tokenizer, monkeypatch):
    """Constant memory: every read covers at most one block of windows; nothing reads a whole session."""
    calls = []
    orig = Session.spikes

    def spy(self, t0=None, t1=None):
        assert t0 is not None and t1 is not None, "a streaming dataset read a whole session"
        out = orig(self, t0, t1)
        calls.append((t1 - t0, len(out[0])))
        return out

    monkeypatch.setattr(Session, "spikes", spy)
    block = 16
    ds = StreamingSpikeDataset(spike_files, tokenizer, None, batch_size=8, rank=0, world_size=1, block_windows=block,
                               shuffle_buffer=32)
    n = sum(len(b["interval"]) for b in ds)
    assert n == len(ds.index)
    max_span = (block - 1) * 0.05 + tokenizer.span_before + 1e-6
    assert max(c[0] for c in calls) <= max_span
    n_spikes = sum(Session(p).n_spikes for p in spike_files)
    assert max(c[1] for c in calls) < n_spikes / 10
    # each spike is read about once (blocks overlap only by the previous-window margin)
    assert sum(c[1] for c in calls) < 1.25 * n_spikes


def test_streaming_memory_does_not_grow_with_session_length(tmp_path):
    """Peak traced allocation streaming a 4x longer session stays the same (blocks + buffer only)."""
    import tracemalloc

    rng = np.random.default_rng(2)
    peaks = []
    for T in (40.0, 160.0):
        t = np.sort(rng.uniform(0, T, int(T * 400)))
        with SessionWriter(tmp_path / f"m{T:g}.h5", session_id=f"m{T:g}") as w:
            w.add_units([f"u{i}" for i in range(20)])
            w.add_spikes(t, rng.integers(0, 20, len(t)), t_start=0.0, t_end=T)
        s = Session(tmp_path / f"m{T:g}.h5")
        tk = SpikeTokenizer(0.05, 0.05, 0.01, 48, 48, UnitVocab.from_sessions([s]))
        ds = StreamingSpikeDataset([s], tk, None, batch_size=16, rank=0, world_size=1, block_windows=32,
                                   shuffle_buffer=64)
        tracemalloc.start()
        n = sum(len(b["interval"]) for b in ds)
        peaks.append(tracemalloc.get_traced_memory()[1])
        tracemalloc.stop()
        assert n == len(ds.index)
    assert peaks[1] < 1.25 * peaks[0], peaks


def test_epoch_loader_sets_epoch(spike_files, tokenizer):
    ds = StreamingSpikeDataset(spike_files, tokenizer, "train", batch_size=64, rank=0, world_size=1, seed=5)
    loader = EpochDataLoader(ds, batch_size=None)
    e0 = [k for b in loader for k in _keys(b)]
    e1 = [k for b in loader for k in _keys(b)]
    assert ds.epoch == 1 and e0 != e1 and sorted(e0) == sorted(e1)


# --------------------------------------------------------------------------------------------
# iEEG
# --------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def ieeg_files(tmp_path_factory):
    d = tmp_path_factory.mktemp("ieeg")
    rng = np.random.default_rng(0)
    paths = []
    for k, (C, T) in enumerate([(3, 40.0), (5, 30.0)]):
        rate = 100.0
        data = rng.normal(size=(int(rate * T), C)).astype(np.float32) * (1 + np.arange(C))
        names = [f"A{i + 1}" for i in range(C)]
        regions = {"destrieux": ["ctx_lh_G_front_sup", "ctx_lh_S_central"] * C}
        regions["destrieux"] = regions["destrieux"][:C]
        with SessionWriter(d / f"e{k}.h5", session_id=f"e{k}") as w:
            w.add_continuous(data, rate)
            w.add_channels(names, x=np.arange(C, dtype=float), y=np.zeros(C), z=np.zeros(C), regions=regions)
            w.add_events("words", onset=[5.0, 12.0, 20.0, 25.5], label=["noun", "verb", "noun", "verb"])
            bt = np.arange(0, T, 0.1)
            w.add_behavior("pitch", bt, bt)
        paths.append(d / f"e{k}.h5")
    return paths


def test_ieeg_batches_pad_channels_with_mask(ieeg_files):
    seg = IEEGSegmenter(segment_s=2.0, n_patches=4)
    ds = IEEGSegmentDataset(ieeg_files, seg, None, target="pitch", events="words")
    assert len(ds) == 20 + 15
    b = collate_ieeg([ds[0], ds[len(ds) - 1]])
    assert b["x"].shape == (2, 5, 200) and b["channel_mask"].tolist() == [[True] * 3 + [False] * 2, [True] * 5]
    assert (b["x"][0, 3:] == 0).all() and (b["coords"][0, 3:] == -1).all() and (b["parcel"][0, 3:] == 0).all()
    assert b["parcel"][0, 0] > 0 and b["coords"][1, 4].tolist() == [104, 100, 100]
    np.testing.assert_allclose(b["x"][1].std(-1, correction=0).numpy(), 1, atol=1e-4)
    assert b["session"].tolist() == [0, 1] and b["t0"].tolist() == [0.0, 28.0]
    np.testing.assert_allclose(b["target"][:, 0].numpy(), [0.95, 28.95], atol=1e-4)
    # grid labels: 1 where a word onset falls in the segment
    labels = {float(ds[i]["t0"]): int(ds[i]["label"]) for i in range(20)}
    assert [t for t, v in labels.items() if v] == [4.0, 12.0, 20.0, 24.0]


def test_ieeg_event_locked_labels_and_splits(ieeg_files):
    seg = IEEGSegmenter(segment_s=2.0, n_patches=4)
    ds = IEEGSegmentDataset(ieeg_files, seg, None, events="words", event_locked=True, event_offset=-0.5)
    assert len(ds) == 8
    items = [ds[i] for i in range(len(ds))]
    assert [it["t0"] for it in items[:4]] == [4.5, 11.5, 19.5, 25.0]
    assert [it["label"] for it in items[:4]] == [0, 1, 0, 1]  # noun, verb (sorted labels)
    cv = BlockedKFold(n_folds=2, fold=0, gap=1.0)  # e0: test [0, 20), train [21, 40]; e1: [0, 15) / [16, 30]
    tr = IEEGSegmentDataset(ieeg_files, seg, "train", splits=cv, events="words", event_locked=True)
    te = IEEGSegmentDataset(ieeg_files, seg, "test", splits=cv, events="words", event_locked=True)
    t_tr = {(s, t) for s, t, _ in (tr.index.locate(i) for i in range(len(tr)))}
    t_te = {(s, t) for s, t, _ in (te.index.locate(i) for i in range(len(te)))}
    assert t_te == {(0, 5.0), (0, 12.0), (1, 5.0), (1, 12.0)}
    assert t_tr == {(0, 25.5), (1, 20.0), (1, 25.5)}  # (0, 20.0) straddles e0's test/gap edge: dropped


def test_ieeg_nan_segments_skipped_and_counted(ieeg_files, monkeypatch):
    orig = Session.continuous_samples

    def poisoned(self, i0, i1):
        x = orig(self, i0, i1).copy()
        j = 1050 - i0  # sample 1050 (t = 10.5 s) of every session is NaN
        if 0 <= j < len(x):
            x[j, 0] = np.nan
        return x

    monkeypatch.setattr(Session, "continuous_samples", poisoned)
    seg = IEEGSegmenter(segment_s=2.0, n_patches=4)
    ds = IEEGSegmentDataset(ieeg_files, seg, None)
    hit = [i for i in range(len(ds)) if ds[i] is None]
    assert [ds.index.locate(i)[1] for i in hit] == [10.0, 10.0]
    b = collate_ieeg([ds[i] for i in range(3, 8)])
    assert b["n_skipped"].item() == 1 and len(b["x"]) == 4 and torch.isfinite(b["x"]).all()
    st = StreamingIEEGDataset(ieeg_files, seg, None, batch_size=4, rank=0, world_size=1, block_windows=5)
    n = sum(len(bb["x"]) for bb in st)
    assert n == len(ds) - 2 and st.skipped == 2


def test_ieeg_segments_start_at_the_continuous_t_start(tmp_path, spike_files):
    rng = np.random.default_rng(2)
    with SessionWriter(tmp_path / "late.h5", session_id="late") as w:
        w.add_continuous(rng.normal(size=(1000, 2)).astype(np.float32), 100.0, t_start=5.0)
    assert Session(tmp_path / "late.h5").continuous_t_start == 5.0
    assert Session(spike_files[0]).continuous_t_start is None
    ds = IEEGSegmentDataset([tmp_path / "late.h5"], IEEGSegmenter(segment_s=2.0, n_patches=4, line_noise=None), None,
                            spatial_vocab=None, context_s=0.0)
    assert [ds.index.locate(i)[1] for i in range(len(ds))] == [5.0, 7.0, 9.0, 11.0, 13.0]
    raw = Session(tmp_path / "late.h5").continuous(9.0, 11.0)  # (200, 2): the third segment's samples
    z = (raw - raw.mean(0)) / raw.std(0)
    np.testing.assert_allclose(ds[2]["x"], z.T, atol=1e-4)


def test_real_seeg_recording_streams(tmp_path):
    """The real 98-contact sEEG EDF (1000 Hz, 20 s) through Laplacian, notch, drops, segments."""
    edf = SHARED / "sample_seeg.edf"
    if not edf.exists():
        pytest.skip(f"shared data folder absent ({SHARED})")
    mne = pytest.importorskip("mne")
    import csv

    raw = mne.io.read_raw_edf(edf, preload=True, verbose="error")
    rows = {r["name"]: r for r in csv.DictReader((SHARED / "sample_seeg_electrodes.tsv").open(), delimiter="\t")}
    names = raw.ch_names
    lab = [rows.get(n, {}).get("destriuex", "") for n in names]
    num = lambda v: float(v) if v not in ("", "n/a", None) else np.nan
    xyz = np.array([[num(rows.get(n, {}).get(a)) for a in "xyz"] for n in names])
    types = ["ecg" if n.startswith("EKG") else "misc" if n.startswith(("MARK", "EVENT", "DC")) else "seeg" for n in names]
    with SessionWriter(tmp_path / "seeg.h5", session_id="seeg") as w:
        w.add_continuous(raw.get_data().T * 1e6, raw.info["sfreq"])
        w.add_channels(names, *xyz.T, regions={"destrieux": lab}, types=types)
    seg = IEEGSegmenter(line_noise=60, laplacian=True, drop_non_grey=True)
    ds = StreamingIEEGDataset([tmp_path / "seeg.h5"], seg, None, batch_size=4, rank=0, world_size=1, shuffle=False)
    batches = list(ds)
    assert sum(len(b["x"]) for b in batches) == 6  # 20 s / 3 s
    x = batches[0]["x"]
    assert x.shape[1] < 98 and x.shape[2] == 3000 and torch.isfinite(x).all()
    assert (batches[0]["parcel"] > 0).any() and (batches[0]["coords"] >= 0).any()
