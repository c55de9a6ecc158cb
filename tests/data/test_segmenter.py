"""iEEG segmenter: lengths at any rate, z-score, patching, NaN skipping, notch, Laplacian, channel drops."""

from __future__ import annotations

import csv
import warnings
from pathlib import Path

import numpy as np
import pytest

from neurofm.data.segmenter import IEEGSegmenter, is_white_matter_or_ventricle, parse_contact
from neurofm.data.session import Channels

SHARED = Path(__file__).resolve().parents[2] / ".." / "shared" / "data" / "ieeg"


def _channels(names, regions=None, bad=None, types=None, xyz=None):
    n = len(names)
    return Channels(names=list(names), xyz=np.zeros((n, 3)) if xyz is None else np.asarray(xyz, float),
                    regions={k: np.asarray(v, dtype=object) for k, v in (regions or {}).items()},
                    bad=np.zeros(n, bool) if bad is None else np.asarray(bad, bool), coordinate_space="mni",
                    types=None if types is None else np.asarray(types, dtype=object))


@pytest.mark.parametrize("rate, expect", [(2048, (6144, 512)), (1000, (3000, 250)), (512, (1536, 128)),
                                          (200, (600, 50))])
def test_plan_default_3s_12_patches(rate, expect):
    p = IEEGSegmenter().plan(rate)
    assert (p.segment_samples, p.patch_len, p.n_patches) == (*expect, 12)


def test_plan_errors_name_the_numbers():
    with pytest.raises(ValueError, match=r"750 samples.*12 equal patches.*62\.5"):
        IEEGSegmenter().plan(250)
    with pytest.raises(ValueError, match=r"2\.5 s at 1001 Hz is 2502\.5 samples"):
        IEEGSegmenter(segment_s=2.5).plan(1001)
    with pytest.raises(ValueError, match="one way only"):
        IEEGSegmenter(segment_s=3.0, patch_len=512)
    # resampling fixes an awkward rate: 250 Hz -> 256 Hz
    p = IEEGSegmenter(sampling_rate=256).plan(250)
    assert (p.segment_samples, p.patch_len, p.up, p.down) == (768, 64, 128, 125)
    # lengths in samples work at any rate
    p = IEEGSegmenter(patch_len=100, n_patches=5).plan(333.3)
    assert p.segment_samples == 500 and p.segment_s == pytest.approx(500 / 333.3)


def test_segments_are_zscored_patched_and_nan_skipped():
    rng = np.random.default_rng(0)
    rate = 200.0
    data = rng.normal(3.0, 5.0, size=(int(rate * 3 * 4) + 17, 3)).astype(np.float32)
    data[int(rate * 3 * 1) + 5, 1] = np.nan  # poisons segment 1
    seg = IEEGSegmenter(segment_s=3.0, n_patches=12)
    out = seg(data, rate)
    assert out.n_skipped == 1 and len(out.x) == 3
    assert out.t0.tolist() == [0.0, 6.0, 9.0]
    assert np.isfinite(out.x).all()
    np.testing.assert_allclose(out.x.mean(-1), 0, atol=1e-5)
    np.testing.assert_allclose(out.x.std(-1), 1, atol=1e-4)
    # z-score is per channel per segment: segment 2 equals z-scoring its raw slice alone
    raw = data[1200:1800].T
    np.testing.assert_allclose(out.x[1], (raw - raw.mean(1, keepdims=True)) / raw.std(1, keepdims=True), atol=1e-4)
    p = seg.patch(out.x, out.plan)
    assert p.shape == (3, 3, 12, 50)
    np.testing.assert_array_equal(p[0, 2, 1], out.x[0, 2, 50:100])


def test_flat_channel_is_masked_not_nan():
    data = np.random.default_rng(1).normal(size=(600, 2)).astype(np.float32)
    data[:, 1] = 7.0
    out = IEEGSegmenter(segment_s=3.0).__call__(data, 200.0)
    assert out.channel_mask.tolist() == [[True, False]]
    assert np.all(out.x[0, 1] == 0)


def test_too_short_recording_is_an_error():
    with pytest.raises(ValueError, match="fewer than one patch"):
        IEEGSegmenter().__call__(np.zeros((100, 2), np.float32), 2048)


def test_notch_removes_line_noise_keeps_signal():
    rate, n = 1000.0, 6000
    t = np.arange(n) / rate
    sig = np.sin(2 * np.pi * 7 * t)
    noise = 2 * np.sin(2 * np.pi * 60 * t) + np.sin(2 * np.pi * 180 * t)
    data = (sig + noise)[:, None].astype(np.float32)
    x = IEEGSegmenter(line_noise=60).preprocess(data, IEEGSegmenter().plan(rate),
                                                IEEGSegmenter().channel_plan(None, 1))[:, 0]
    mid = slice(1000, 5000)
    spec = np.abs(np.fft.rfft(x[mid]))
    freqs = np.fft.rfftfreq(4000, 1 / rate)
    amp = lambda f: spec[np.argmin(np.abs(freqs - f))]
    assert amp(60) < 0.02 * amp(7) and amp(180) < 0.02 * amp(7)
    np.testing.assert_allclose(x[mid], sig[mid], atol=0.05)


def test_laplacian_from_shaft_names():
    assert parse_contact("LA1") == ("LA", 1)
    assert parse_contact("L'12") == ("L'", 12)
    assert parse_contact("rh 03") == ("RH", 3)
    assert parse_contact("EVENTS/MARKERS") is None
    names = ["LA1", "LA2", "LA3", "L'1", "L'2", "X5"]
    ch = _channels(names)
    seg = IEEGSegmenter(laplacian=True)
    plan = seg.channel_plan(ch)
    assert [ch.names[i] for i in plan.keep] == ["LA1", "LA2", "LA3", "L'1", "L'2"]  # X5: no neighbour
    assert plan.dropped["no same-shaft neighbour for the Laplacian"] == ["X5"]
    data = np.random.default_rng(0).normal(size=(10, 6)).astype(np.float32)
    out = seg.preprocess(data, seg.plan(100.0), plan)
    np.testing.assert_allclose(out[:, 1], data[:, 1] - (data[:, 0] + data[:, 2]) / 2, atol=1e-6)
    np.testing.assert_allclose(out[:, 0], data[:, 0] - data[:, 1], atol=1e-6)
    np.testing.assert_allclose(out[:, 4], data[:, 4] - data[:, 3], atol=1e-6)


def test_bad_nonneural_and_white_matter_channels_dropped():
    assert is_white_matter_or_ventricle(["Left-Cerebral-White-Matter", "Left-Cerebral-White-Matter"])
    assert is_white_matter_or_ventricle(["Right-Lateral-Ventricle", ""])
    assert not is_white_matter_or_ventricle(["ctx_lh_G_front_sup", "Left-Cerebral-White-Matter"])
    assert not is_white_matter_or_ventricle(["Unknown", "n/a"])
    names = ["A1", "A2", "A3", "A4", "EKG1"]
    regions = {"destrieux": ["ctx_lh_G_front_sup", "Left-Cerebral-White-Matter", "ctx_lh_S_central", "Unknown", ""]}
    ch = _channels(names, regions, bad=[False, False, True, False, False], types=["seeg"] * 4 + ["ecg"])
    plan = IEEGSegmenter(drop_non_grey=True, laplacian=True).channel_plan(ch)
    # A3 bad (not a neighbour either), EKG1 non-neural, A2 white matter (still a neighbour of A1)
    assert plan.channels.names == ["A1"]
    assert plan.dropped["bad"] == ["A3"] and plan.dropped["non-neural type"] == ["EKG1"]
    assert plan.dropped["white matter / ventricle"] == ["A2"]
    assert plan.dropped["no same-shaft neighbour for the Laplacian"] == ["A4"]
    assert plan.reference[0].tolist() == [1.0, -1.0, 0, 0, 0]


def test_resampled_segments_keep_the_signal():
    rate, n = 250.0, 250 * 7
    t = np.arange(n) / rate
    data = np.sin(2 * np.pi * 5 * t)[:, None].astype(np.float32)
    seg = IEEGSegmenter(sampling_rate=256)
    out = seg(data, rate)
    assert out.x.shape[1:] == (1, 768)
    tt = out.t0[0] + np.arange(768) / 256
    ref = np.sin(2 * np.pi * 5 * tt)
    ref = (ref - ref.mean()) / ref.std()
    assert np.corrcoef(out.x[0, 0, 50:-50], ref[50:-50])[0, 1] > 0.999


def test_spatial_indices_from_the_atlas_vocabulary():
    from neurofm.atlas import SpatialVocab

    ch = _channels(["A1", "A2", "B1"], {"destrieux": ["ctx_lh_G_front_sup", "Unknown", "ctx_rh_S_central"]},
                   xyz=[[1.5, -2.0, 3.0], [np.nan, 0, 0], [10, 10, 10]])
    vocab = SpatialVocab.from_channels([ch])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        sp = IEEGSegmenter.spatial(ch, vocab)
    assert sp["coords"].shape == (3, 3) and sp["coords"][1].tolist() == [-1, -1, -1]
    assert sp["coords"][0].tolist() == [101, 98, 103]
    assert sp["parcel"][1] == 0 and sp["parcel"][0] > 0 and sp["parcel"][2] > 0
    assert sp["lobe"][0] > 0


def test_real_seeg_channels(tmp_path):
    """Real electrode table (98 contacts): shafts like L'1..L'14 and atlas labels drive the drops."""
    tsv = SHARED / "sample_seeg_electrodes.tsv"
    if not tsv.exists():
        pytest.skip(f"shared data folder absent ({SHARED})")
    rows = list(csv.DictReader(tsv.open(), delimiter="\t"))
    names = [r["name"] for r in rows]
    regions = {"destrieux": [r["destriuex"] for r in rows], "desikan": [r["desikan-killiany"] for r in rows]}
    ch = _channels(names, regions)
    plan = IEEGSegmenter(laplacian=True, drop_non_grey=True).channel_plan(ch)
    kept = plan.channels.names
    wm = plan.dropped["white matter / ventricle"]
    assert "L'1" in wm and "L'2" in kept  # L'1 is Right-Cerebral-White-Matter in both atlases
    assert 0 < len(kept) < len(names)
    for i, name in enumerate(kept):  # every kept contact is referenced to same-shaft neighbours only
        row = plan.reference[i]
        nb = [names[j] for j in np.flatnonzero(row < 0)]
        assert nb and all(parse_contact(n)[0] == parse_contact(name)[0] for n in nb)
        assert all(abs(parse_contact(n)[1] - parse_contact(name)[1]) == 1 for n in nb)
