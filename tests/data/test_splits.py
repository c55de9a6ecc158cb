"""Time-block splits: no window in two splits, gaps respected, file intervals, blocked K-fold."""

from __future__ import annotations

import numpy as np
import pytest

from neurofm.data.datasets import SpikeWindowDataset
from neurofm.data.session import Session, SessionWriter
from neurofm.data.splits import BlockedKFold, Intervals, TimeBlockSplit, TrialSplit, grid_runs, time_blocks
from neurofm.data.tokenizer import SpikeTokenizer, UnitVocab


def _session(path, T=60.0, intervals=None, trials=None):
    rng = np.random.default_rng(1)
    t = np.sort(rng.uniform(0, T, int(T * 40)))
    with SessionWriter(path, session_id=path.stem) as w:
        w.add_units(["a", "b", "c"])
        w.add_spikes(t, rng.integers(0, 3, len(t)), t_start=0.0, t_end=T)
        for name, (s, e) in (intervals or {}).items():
            w.add_intervals(name, s, e)
        if trials is not None:
            w.add_intervals("trials", *trials)
    return Session(path)


def _extents(ds, before, after=0.0):
    """(split-independent) windows as (session, start, end) of everything they read."""
    out = []
    for i in range(len(ds)):
        s, t = ds.window(i)
        out.append((s, t - before, t + after))
    return out


def _min_distance(a, b):
    """Smallest distance between any window of a and any of b in the same session (negative = overlap)."""
    best = np.inf
    for s in {x[0] for x in a} & {x[0] for x in b}:
        A = np.array([(x[1], x[2]) for x in a if x[0] == s])
        B = np.array([(x[1], x[2]) for x in b if x[0] == s])
        d = np.maximum(B[None, :, 0] - A[:, None, 1], A[:, None, 0] - B[None, :, 1])
        best = min(best, d.min())
    return best


def test_time_blocks_fractions_and_gap():
    b = time_blocks(0.0, 100.0, {"train": 0.8, "valid": 0.1, "test": 0.1}, gap=2.0)
    assert b["train"].pairs() == [(0.0, 79.0)]
    assert b["valid"].pairs() == [(81.0, 89.0)]
    assert b["test"].pairs() == [(91.0, 100.0)]
    assert b["train"].distance_to(b["valid"]) == pytest.approx(2.0)
    with pytest.raises(ValueError, match="fractions"):
        time_blocks(0, 1, {"train": -1, "test": 1})


@pytest.mark.parametrize("stride", [0.05, 0.02])
def test_no_window_in_two_splits_and_gap_respected(tmp_path, stride):
    s = _session(tmp_path / "s.h5")
    tk = SpikeTokenizer(0.05, 0.15, 0.01, 16, 32, UnitVocab.from_sessions([s]))
    gap = 1.5
    splitter = TimeBlockSplit(gap=gap)
    sets = {name: SpikeWindowDataset([s], tk, name, splits=splitter, stride=stride) for name in ("train", "valid", "test")}
    ext = {k: _extents(v, before=0.2) for k, v in sets.items()}
    assert all(len(v) for v in ext.values())
    keys = {k: {(x[0], round(x[2], 9)) for x in v} for k, v in ext.items()}
    assert not keys["train"] & keys["valid"] and not keys["train"] & keys["test"] and not keys["valid"] & keys["test"]
    for a, b in (("train", "valid"), ("valid", "test"), ("train", "test")):
        assert _min_distance(ext[a], ext[b]) >= gap - 1e-9, (a, b)
    # every window lies wholly inside its split's block
    blocks = splitter(s)
    for name, e in ext.items():
        st = np.array([x[1] for x in e]), np.array([x[2] for x in e])
        assert blocks[name].contains(*st).all()
    # nearly all of each block is used: what is lost is at most one window extent per block edge
    n_all = len(SpikeWindowDataset([s], tk, None, stride=stride))
    assert sum(len(v) for v in sets.values()) >= n_all - (2 * gap + 3 * 0.2) / stride - 6


def test_splits_from_file_intervals(tmp_path):
    s = _session(tmp_path / "f.h5", intervals={"train": ([0.0, 40.0], [20.0, 50.0]), "valid": ([25.0], [35.0]),
                                               "test": ([52.0], [60.0])})
    tk = SpikeTokenizer(0.05, 0.05, 0.01, 16, 16, UnitVocab.from_sessions([s]))
    train = SpikeWindowDataset([s], tk, "train", splits=TimeBlockSplit(gap=1.0))
    ends = np.array([train.window(i)[1] for i in range(len(train))])
    assert ((ends - 0.1 >= -1e-9) & (ends <= 20 + 1e-9) | (ends - 0.1 >= 40 - 1e-9) & (ends <= 50 + 1e-9)).all()
    assert ends.min() == pytest.approx(0.1) and ends.max() == pytest.approx(50.0)
    # explicit blocks given in code win over fractions and overlapping blocks are refused
    with pytest.raises(ValueError, match="overlap"):
        TimeBlockSplit(blocks={"train": [(0, 30)], "test": [(20, 40)]})(s)
    b = TimeBlockSplit(blocks={"train": [(0, 30)], "test": [(31, 40)]}, gap=1.0)(s)
    assert b["test"].pairs() == [(31.0, 40.0)]


def test_file_intervals_that_overlap_are_an_error_naming_the_file(tmp_path):
    s = _session(tmp_path / "bad.h5", intervals={"train": ([0.0], [30.0]), "valid": ([29.0], [40.0]),
                                                 "test": ([45.0], [60.0])})
    with pytest.raises(ValueError, match=r"bad\.h5.*overlap"):
        TimeBlockSplit()(s)


def test_blocked_kfold_folds_cover_and_keep_gap(tmp_path):
    s = _session(tmp_path / "k.h5", T=50.0)
    cv = BlockedKFold(n_folds=5, gap=2.0)
    folds = cv.folds(s)
    tests = [f["test"] for f in folds]
    assert sum(t.duration for t in tests) == pytest.approx(50.0)  # test blocks tile the recording
    for f in folds:
        assert f["train"].distance_to(f["test"]) == pytest.approx(2.0)
    tk = SpikeTokenizer(0.05, 0.05, 0.01, 16, 16, UnitVocab.from_sessions([s]))
    seen = []
    for k in range(5):
        sp = BlockedKFold(5, k, gap=2.0)
        tr = SpikeWindowDataset([s], tk, "train", splits=sp)
        te = SpikeWindowDataset([s], tk, "test", splits=sp)
        e_tr, e_te = _extents(tr, 0.1), _extents(te, 0.1)
        assert _min_distance(e_tr, e_te) >= 2.0 - 1e-9
        seen += [round(x[2], 6) for x in e_te]
    assert len(seen) == len(set(seen))  # each window is tested in at most one fold
    with pytest.raises(ValueError, match="fold"):
        BlockedKFold(5, 5)


def test_trial_split_contiguous_groups_with_gap(tmp_path):
    starts = np.arange(0, 60, 6.0)
    s = _session(tmp_path / "t.h5", trials=(starts, starts + 4.0))
    b = TrialSplit({"train": 0.6, "valid": 0.2, "test": 0.2}, gap=3.0)(s)
    assert len(b["train"]) == 6 and b["train"].end.max() < b["valid"].start.min()
    assert b["train"].distance_to(b["valid"]) >= 3.0 and b["valid"].distance_to(b["test"]) >= 3.0


def test_intervals_contains_and_grid_runs():
    iv = Intervals([0.0, 10.0], [5.0, 12.0])
    assert iv.contains([0.0, 4.0, 4.5, 9.0, 10.0], [1.0, 5.0, 5.5, 11.0, 12.0]).tolist() == [True, True, False, False, True]
    k0, n = grid_runs(iv, origin=0.0, stride=0.5, before=1.0, after=0.0)
    # ends 1.0..5.0 in block 1 (9 windows), 11.0..12.0 in block 2 (3 windows)
    assert k0.tolist() == [2, 22] and n.tolist() == [9, 3]
    with pytest.raises(ValueError, match="overlap"):
        Intervals([0.0, 1.0], [2.0, 3.0])
