"""Spike tokenizer: golden vectors of the reference implementation, and edge cases."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from neurofm.data.session import Session, SessionWriter
from neurofm.data.tokenizer import DtVocab, SpikeTokenizer, UnitVocab, UnknownUnitError

# vendored from ../shared/golden (data only: the reference tokenizer's output; see its README),
# so the faithfulness check runs in any clone
GOLDEN = Path(__file__).resolve().parents[1] / "golden" / "neuroformer_tokens.json"


# --------------------------------------------------------------------------------------------
# golden vectors
# --------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def golden():
    return json.loads(GOLDEN.read_text())


def _spike_train(golden):
    """Spike times (bin start, as the reference) and unit indices, time-sorted."""
    m = golden["spike_matrix"]
    nz = np.asarray(m["nonzero_neuron_bin_count"])
    units = np.repeat(nz[:, 0], nz[:, 2])
    times = np.repeat(nz[:, 1], nz[:, 2]) * m["dt_s"]
    order = np.argsort(times, kind="stable")
    return times[order], units[order], m["n_neurons"]


def _windows(golden):
    return [(case, w) for case in golden["cases"] for w in case["windows"]]


def test_golden_covers_26_windows(golden):
    assert len(_windows(golden)) == 26


@pytest.mark.parametrize("case_i", [0, 1])
def test_golden_vectors(golden, case_i):
    case = golden["cases"][case_i]
    cfg = case["config"]
    times, units, n_units = _spike_train(golden)
    vocab = UnitVocab([UnitVocab.key("g", str(k)) for k in range(n_units)])
    vocab.bind("g", [str(k) for k in range(n_units)])
    tk = SpikeTokenizer(cfg["window"]["curr"], cfg["window"]["prev"], cfg["resolution"]["dt"],
                        cfg["block_size"]["id"], cfg["block_size"]["prev_id"], vocab)
    # the dt vocabulary is the reference's, index for index
    gdt = case["vocab"]["dt"]
    assert (tk.dt_vocab.SOS, tk.dt_vocab.EOS, tk.dt_vocab.PAD, len(tk.dt_vocab)) == (
        gdt["SOS"], gdt["EOS"], gdt["PAD"], gdt["size"])
    np.testing.assert_allclose(tk.dt_vocab.offsets(), [o for o, _ in gdt["offset_seconds_to_index"]], atol=1e-12)

    gid = case["vocab"]["ID"]
    gsym = {gid["SOS"]: "SOS", gid["EOS"]: "EOS", gid["PAD"]: "PAD"}

    def golden_symbols(seq):
        return [gsym.get(int(x), int(x)) for x in seq]

    def our_symbols(seq):
        return [UnitVocab.SPECIALS[x] if x < 3 else x - 3 for x in seq.tolist()]

    intervals = [w["interval"] for w in case["windows"]]
    out = tk.tokenize(times, vocab.encode("g", units), intervals)
    dt = cfg["resolution"]["dt"]
    for i, w in enumerate(case["windows"]):
        x, y, flags = w["x"], w["y"], " ".join(w["flags"])
        label = f"{case['name']} @ {w['interval']}"
        # IDs and targets: identical by symbol in every window
        assert our_symbols(out["id"][i]) == golden_symbols(x["id"]), label
        assert our_symbols(out["target_id"][i]) == golden_symbols(y["id"]), label
        assert our_symbols(out["id_prev"][i]) == golden_symbols(x["id_prev"]), label
        # pad counts
        assert int((out["target_id"][i] == UnitVocab.PAD).sum()) == x["pad"], label
        assert int((~out["mask_prev"][i]).sum()) + 1 == x["pad_prev"], label
        # dt targets are never touched by either reference bug
        assert out["target_dt"][i].tolist() == y["dt"], label

        for key, which in (("dt", "current"), ("dt_prev", "previous")):
            ours = out[key][i].copy()
            expect = np.asarray(x[key], dtype=np.int64)
            if f"{which} window starts before t=0" in flags:
                # bug 2: ours measures from the window's nominal start (< 0), the reference from t = 0
                start = w["interval"] - cfg["window"]["curr"] - (cfg["window"]["prev"] if which == "previous" else 0)
                spike = out["id" if which == "current" else "id_prev"][i] >= 3
                expect[spike] += int(round(-start / dt))
            if f"{which} window overflow" in flags:
                # bug 1: the reference's SOS slot holds the last dropped spike's dt; ours is 0
                assert ours[0] == 0, label
                ours, expect = ours[1:], expect[1:]
            assert ours.tolist() == expect.tolist(), label


def test_bug2_window_explicit(golden):
    """prev 0.15 @ 0.1: previous window [-0.10, 0.05) with spikes at bins 0, 2, 2, 2, 4 -> dt 10, 12, 12, 12, 14."""
    times, units, n = _spike_train(golden)
    vocab = UnitVocab([f"g/{k}" for k in range(n)])
    vocab.bind("g", [str(k) for k in range(n)])
    out = SpikeTokenizer(0.05, 0.15, 0.01, 12, 24, vocab).tokenize(times, vocab.encode("g", units), [0.1])
    assert out["dt_prev"][0, :7].tolist() == [0, 10, 12, 12, 12, 14, 17]
    assert out["id_prev"][0, 1:6].tolist() == [3 + 3, 3 + 1, 3 + 5, 3 + 5, 3 + 0]


# --------------------------------------------------------------------------------------------
# edge cases
# --------------------------------------------------------------------------------------------


def _tk(B=6, Bp=8, curr=0.05, prev=0.05, n_units=4):
    vocab = UnitVocab([f"s/{k}" for k in range(n_units)])
    vocab.bind("s", [str(k) for k in range(n_units)])
    return SpikeTokenizer(curr, prev, 0.01, B, Bp, vocab), vocab


def test_empty_windows_and_empty_train():
    tk, vocab = _tk()
    out = tk.tokenize(np.zeros(0), np.zeros(0, dtype=np.int64), [0.05, 0.1])
    pad = UnitVocab.PAD
    assert out["id"].tolist() == [[1, 2, pad, pad, pad, pad]] * 2
    assert out["target_id"].tolist() == [[2, pad, pad, pad, pad, pad]] * 2
    assert out["dt"][0].tolist() == [0, tk.dt_vocab.EOS] + [tk.dt_vocab.PAD] * 4
    assert out["mask"].sum(1).tolist() == [2, 2]
    assert out["n_dropped"].tolist() == [0, 0]


def test_overflow_keeps_latest_spikes_aligned():
    tk, vocab = _tk(B=6)  # capacity 4
    # 7 spikes in one window, units cycling so every kept (id, dt) pair is checkable
    t = np.array([0.100, 0.101, 0.111, 0.122, 0.131, 0.1405, 0.1449])
    u = np.array([3, 0, 1, 2, 3, 1, 0])
    out = tk.tokenize(t, vocab.encode("s", u), [0.15])
    # dt bins: 0,0,1,2,3,4,4 -> ordered by (bin, unit): (0,u0)(0,u3)(1,u1)(2,u2)(3,u3)(4,u0)(4,u1)
    assert out["n_dropped"].tolist() == [3]
    assert out["id"][0].tolist() == [1, 3 + 2, 3 + 3, 3 + 0, 3 + 1, 2]
    assert out["dt"][0].tolist() == [0, 2, 3, 4, 4, tk.dt_vocab.EOS]
    assert out["target_id"][0].tolist() == [3 + 2, 3 + 3, 3 + 0, 3 + 1, 2, 0]
    assert out["mask"][0].all()


def test_overflow_cut_inside_a_dt_bin_keeps_highest_units():
    """The sequence is ordered (bin, unit) BEFORE trimming, so a cut inside a bin drops low units."""
    tk, vocab = _tk(B=4)  # capacity 2
    t = np.array([0.120, 0.121, 0.122])  # same dt bin
    u = np.array([2, 0, 3])
    out = tk.tokenize(t, vocab.encode("s", u), [0.15])
    assert out["id"][0, 1:3].tolist() == [3 + 2, 3 + 3]
    assert out["n_dropped"].tolist() == [1]


def test_units_only_in_previous_window():
    tk, vocab = _tk()
    t = np.array([0.01, 0.02, 0.07])
    u = np.array([3, 3, 1])
    out = tk.tokenize(t, vocab.encode("s", u), [0.1])
    assert out["id_prev"][0, :4].tolist() == [1, 6, 6, 2]
    assert out["dt_prev"][0, :3].tolist() == [0, 1, 2]
    assert out["id"][0, :3].tolist() == [1, 4, 2]  # current window: unit 1 only
    assert out["dt"][0, 1] == 2  # 0.07 - 0.05


def test_boundary_spike_belongs_to_the_window_starting_there():
    """0.2 - 0.05 in floats is 0.15000000000000002; a spike at 0.15 is still in [0.15, 0.2)."""
    tk, vocab = _tk()
    out = tk.tokenize(np.array([0.15]), vocab.encode("s", [2]), [0.15, 0.2])
    assert out["id"][0, 1] == 2 and out["id"][1, 1] == 5  # not in the first, in the second


def test_many_windows_match_one_at_a_time():
    """The vectorised path equals tokenizing each window alone (random data, overlapping windows)."""
    rng = np.random.default_rng(3)
    tk, vocab = _tk(B=10, Bp=14, curr=0.05, prev=0.1, n_units=7)
    t = np.sort(rng.uniform(0, 2, 400))
    tok = vocab.encode("s", rng.integers(0, 7, 400))
    ends = np.round(rng.uniform(0.0, 2.2, 50), 3)
    allw = tk.tokenize(t, tok, ends)
    for i, e in enumerate(ends):
        one = tk.tokenize(t, tok, [e])
        for k in ("id", "dt", "id_prev", "dt_prev", "target_id", "target_dt", "n_dropped"):
            assert np.array_equal(allw[k][i], one[k][0]), (k, e)
    # order within each window is (dt bin, unit) over spike slots
    for i in range(len(ends)):
        m = allw["id"][i] >= 3
        pairs = list(zip(allw["dt"][i][m].tolist(), allw["id"][i][m].tolist()))
        assert pairs == sorted(pairs)


def test_vocab_layout_extension_and_unknown_units(tmp_path):
    v = UnitVocab(["a/u0", "a/u1"])
    assert (v.PAD, v.SOS, v.EOS, len(v)) == (0, 1, 2, 5)
    assert v.token("a/u1") == 4
    assert v.extend(["a/u1", "b/u0"]) == [5]  # existing kept, new appended
    assert v.token("a/u0") == 3 and v.token("b/u0") == 5
    assert UnitVocab.from_dict(v.to_dict()) == v
    assert v.decode([0, 1, 2, 5]) == ["PAD", "SOS", "EOS", "b/u0"]
    with pytest.raises(UnknownUnitError, match=r"'c/x'.*extend"):
        v.bind("c", ["x"])
    with pytest.raises(KeyError, match="bind"):
        v.encode("never", [0])
    with pytest.raises(UnknownUnitError, match=r"^unit 'c/x' is not in"):  # one unit: singular
        v.bind("c", ["x"])
    with pytest.raises(UnknownUnitError, match=r"^units 'c/u0', .*'c/u4' and 3 more are not in"):
        v.bind("c", [f"u{i}" for i in range(8)])
    # session files: vocabulary from one, extended by another
    for sid, units in (("s1", ["u0", "u1"]), ("s2", ["u0", "u9"])):
        with SessionWriter(tmp_path / f"{sid}.h5", session_id=sid) as w:
            w.add_units(units)
            w.add_spikes([0.1, 0.2], [0, 1])
    s1, s2 = Session(tmp_path / "s1.h5"), Session(tmp_path / "s2.h5")
    vocab = UnitVocab.from_sessions([s1])
    with pytest.raises(UnknownUnitError, match="s2/u0"):
        vocab.bind("s2", s2.unit_ids)
    assert vocab.extend_from_sessions([s2]) == [5, 6]
    assert vocab.bind("s2", s2.unit_ids).tolist() == [5, 6]


def test_dt_vocab_rejects_windows_off_the_dt_grid():
    with pytest.raises(ValueError, match="multiple of dt"):
        DtVocab(0.055, 0.05, 0.01)
    v = DtVocab(0.05, 0.15, 0.01)
    assert (v.K, v.SOS, v.EOS, v.PAD, len(v)) == (15, 16, 17, 18, 19)


def test_tokenize_session_reads_only_what_it_needs(tmp_path):
    rng = np.random.default_rng(0)
    t = np.sort(rng.uniform(0, 5, 500))
    u = rng.integers(0, 3, 500)
    with SessionWriter(tmp_path / "s.h5", session_id="s") as w:
        w.add_units(["a", "b", "c"])
        w.add_spikes(t, u)
    s = Session(tmp_path / "s.h5")
    tk = SpikeTokenizer(0.05, 0.05, 0.01, 20, 20, UnitVocab.from_sessions([s]))
    ends = np.array([1.0, 1.05, 3.3])
    a = tk.tokenize_session(s, ends)
    b = tk.tokenize(t, tk.vocab.encode("s", u), ends)
    for k in a:
        assert np.array_equal(a[k], b[k]), k
    with pytest.raises(ValueError, match="unit tokens"):
        tk.tokenize(t, u, ends)


def test_shuffle_within_bins_moves_ids_only_inside_their_bin():
    from neurofm.data.tokenizer import shuffle_within_bins

    # current window: [SOS] bin1: 3 5 7, bin2: 4 9, bin3: 6 [EOS] PAD; previous window: no SOS
    ids = np.array([[1, 3, 5, 7, 4, 9, 6, 2, 0], [8, 3, 4, 5, 2, 0, 0, 0, 0]])
    dts = np.array([[0, 1, 1, 1, 2, 2, 3, 11, 12], [0, 0, 0, 1, 11, 12, 12, 12, 12]])
    rng = np.random.default_rng(0)
    seen = set()
    for _ in range(60):
        out = shuffle_within_bins(ids, dts, rng)
        assert np.array_equal(ids, [[1, 3, 5, 7, 4, 9, 6, 2, 0], [8, 3, 4, 5, 2, 0, 0, 0, 0]])  # input kept
        assert list(out[0, [0, 6, 7, 8]]) == [1, 6, 2, 0] and list(out[1, 3:]) == [5, 2, 0, 0, 0, 0]
        assert sorted(out[0, 1:4]) == [3, 5, 7] and sorted(out[0, 4:6]) == [4, 9] and sorted(out[1, :3]) == [3, 4, 8]
        seen.add(tuple(out[0, 1:4]))
    assert len(seen) == 6  # every order of the 3-spike bin is drawn
