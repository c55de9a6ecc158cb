"""Synthetic generators: reproducible files whose ground truth really shapes the data."""

from __future__ import annotations

import csv
import hashlib
import json
import re
from pathlib import Path

import numpy as np
import pytest
from scipy import signal

from neurofm.data import synthetic
from neurofm.data.session import Session

DURATION_SPIKES = 120.0
N_UNITS = 30


@pytest.fixture(scope="module")
def spike_file(tmp_path_factory) -> Path:
    return synthetic.simulate_spikes(tmp_path_factory.mktemp("sim") / "net.h5", n_units=N_UNITS,
                                     duration=DURATION_SPIKES, seed=1)


@pytest.fixture(scope="module")
def ieeg_file(tmp_path_factory) -> Path:
    return synthetic.simulate_ieeg(tmp_path_factory.mktemp("sim") / "seeg.h5", n_channels=32, duration=180.0,
                                   sampling_rate=256.0, n_regions=4, seed=3)


def _md5(path: Path) -> str:
    return hashlib.md5(Path(path).read_bytes()).hexdigest()


# --------------------------------------------------------------------------------------------
# spikes
# --------------------------------------------------------------------------------------------


def test_spikes_same_seed_same_file(tmp_path):
    kw = dict(n_units=8, duration=5.0, stimulus=True)
    a = synthetic.simulate_spikes(tmp_path / "a.h5", seed=7, **kw)
    b = synthetic.simulate_spikes(tmp_path / "b.h5", seed=7, **kw)
    c = synthetic.simulate_spikes(tmp_path / "c.h5", seed=8, **kw)
    assert _md5(a) == _md5(b)
    with Session(a) as sa, Session(c) as sc:
        assert sa.n_spikes > 0 and sc.n_spikes > 0
        ta, tc = sa.spikes()[0], sc.spikes()[0]
        assert ta.shape != tc.shape or not np.array_equal(ta, tc)
        assert not np.array_equal(sa.ground_truth()["connectivity"], sc.ground_truth()["connectivity"])


def test_spikes_file_layout(spike_file):
    with Session(spike_file) as s:
        assert s.kinds == ["spikes"]
        assert s.n_units == N_UNITS and s.duration == pytest.approx(DURATION_SPIKES)
        times, units = s.spikes()
        assert np.all(np.diff(times) >= 0) and times[0] >= 0 and times[-1] < DURATION_SPIKES
        rates = np.bincount(units, minlength=N_UNITS) / DURATION_SPIKES
        assert 2.0 < rates.mean() < 20.0 and rates.max() < 100.0  # stable: no runaway
        assert set(s.unit_table()["cell_type"]) == {"excitatory", "inhibitory"}

        ts, speed = s.behavior("speed")
        _, pos = s.behavior("position")
        assert np.allclose(np.diff(ts), 0.01)
        assert speed.min() >= 0 and speed.max() > 10  # runs
        assert (speed < 1).mean() > 0.15  # and rests
        assert pos.min() >= 0 and pos.max() <= 200.0 and np.ptp(pos) > 100
        run = s.intervals("running")
        assert len(run["start"]) >= 3 and np.all(run["end"] > run["start"])

        gt = s.ground_truth()
        W = gt["connectivity"]
        assert W.shape == (N_UNITS, N_UNITS)
        assert gt["speed_tuning"].shape == gt["baseline_rate"].shape == (N_UNITS,)
        off = ~np.eye(N_UNITS, dtype=bool)
        assert 0.03 < (W[off] != 0).mean() < 0.2
        inh = gt["inhibitory"].astype(bool)
        assert np.all(W[:, inh][off[:, inh]] <= 0) and np.all(W[:, ~inh][off[:, ~inh]] >= 0)  # Dale's law
        params = json.loads(s.attrs["generator_params"])
        assert params["seed"] == 1 and params["n_units"] == N_UNITS
        assert s.attrs["generator"].endswith("simulate_spikes")


def _ccg_ratio(trains, i, j, duration, window=0.01):
    """Spikes of i within ``window`` after a spike of j, over the count expected by chance."""
    ti, tj = trains[i], trains[j]
    hits = (np.searchsorted(ti, tj + window) - np.searchsorted(ti, tj)).sum()
    return hits / (len(ti) / duration * window * len(tj))


def test_connectivity_shapes_spike_timing(spike_file):
    """Short-lag cross-correlograms follow W: up for strong j -> i, down for inhibition."""
    with Session(spike_file) as s:
        times, units = s.spikes()
        W = s.ground_truth()["connectivity"]
    trains = [times[units == i] for i in range(N_UNITS)]
    off = ~np.eye(N_UNITS, dtype=bool)
    strong = np.argwhere(off & (W > np.quantile(W[W > 0], 0.5)))
    inhibitory = np.argwhere(off & (W < -0.5))
    unconnected = np.argwhere(off & (W == 0) & (W.T == 0))
    r_strong = np.mean([_ccg_ratio(trains, i, j, DURATION_SPIKES) for i, j in strong])
    r_inh = np.mean([_ccg_ratio(trains, i, j, DURATION_SPIKES) for i, j in inhibitory])
    r_none = np.mean([_ccg_ratio(trains, i, j, DURATION_SPIKES) for i, j in unconnected])
    assert r_strong > 1.25
    assert r_strong > r_none + 0.2
    assert r_inh < 0.85
    assert 0.8 < r_none < 1.2
    # direction matters: the reverse lag (i before j) of strong pairs shows much less
    r_reverse = np.mean([_ccg_ratio(trains, j, i, DURATION_SPIKES) for i, j in strong
                         if W[j, i] == 0])
    assert r_strong > r_reverse + 0.1


def test_speed_tuning_shapes_rates(spike_file):
    with Session(spike_file) as s:
        times, units = s.spikes()
        ts, speed = s.behavior("speed")
        tuning = s.ground_truth()["speed_tuning"]
    edges = np.arange(0, DURATION_SPIKES + 1e-9, 1.0)
    counts = np.stack([np.histogram(times[units == i], edges)[0] for i in range(N_UNITS)], axis=1)
    speed_1s = np.histogram(ts, edges, weights=speed)[0] / np.histogram(ts, edges)[0]
    r = np.array([np.corrcoef(speed_1s, counts[:, i])[0, 1] for i in range(N_UNITS)])
    # units the generator made speed-tuned follow speed; the ranking agrees with the truth
    assert np.corrcoef(tuning, r)[0, 1] > 0.5
    assert np.mean(r[tuning > 0.02]) > 0.3


def test_stimulus_drives_tuned_units(tmp_path):
    path = synthetic.simulate_spikes(tmp_path / "stim.h5", n_units=20, duration=60.0, seed=4, stimulus=True)
    with Session(path) as s:
        ft, frames = s.stimulus("gratings")
        times, units = s.spikes()
        gt = s.ground_truth()
    assert frames.shape == (len(ft), 16, 16) and frames.dtype == np.uint8
    assert np.allclose(np.diff(ft), 0.05)
    theta = gt["stimulus_orientation"]
    assert theta.shape == (len(ft),) and np.isnan(theta).any() and np.isfinite(theta).any()
    assert np.all(frames[np.isnan(theta)].std(axis=(1, 2)) < 1)  # blank frames are uniform grey
    # spikes see the frame shown 50 ms earlier
    frame_of_spike = np.floor((times - 0.05) * 20).astype(int)
    ok = (frame_of_spike >= 0) & (frame_of_spike < len(ft))
    gain_ratio = []
    for i in np.flatnonzero(gt["orientation_gain"] > 1.0):
        d = np.abs(np.angle(np.exp(2j * (theta - gt["preferred_orientation"][i])))) / 2  # orientation distance
        pref, blank = d < np.pi / 8, np.isnan(theta)
        f = frame_of_spike[ok & (units == i)]
        rate_pref = np.isin(f, np.flatnonzero(pref)).sum() / max(pref.sum(), 1)
        rate_blank = np.isin(f, np.flatnonzero(blank)).sum() / max(blank.sum(), 1)
        gain_ratio.append(rate_pref / max(rate_blank, 1e-9))
    assert len(gain_ratio) >= 3 and np.median(gain_ratio) > 1.5


def test_spike_generator_rejects_bad_arguments(tmp_path):
    with pytest.raises(ValueError, match="duration"):
        synthetic.simulate_spikes(tmp_path / "x.h5", duration=0)
    with pytest.raises(ValueError, match="stability"):
        synthetic.simulate_spikes(tmp_path / "x.h5", duration=1, stability=1.5)
    assert not (tmp_path / "x.h5").exists()


# --------------------------------------------------------------------------------------------
# iEEG
# --------------------------------------------------------------------------------------------

# Labels copied by hand from FreeSurferColorLUT.txt (aparc.a2009s+aseg and aparc+aseg):
# an independent list, so a typo in the generator's table fails here.
FREESURFER_LABELS = {
    "ctx_lh_G_temp_sup-Lateral", "ctx_lh_G_temporal_middle", "ctx_lh_S_front_sup", "ctx_lh_G_front_inf-Triangul",
    "ctx_rh_G_temporal_middle", "ctx_rh_G_front_middle", "ctx_lh_G_pariet_inf-Supramar", "ctx_lh_G_precentral",
    "ctx_lh_G_oc-temp_lat-fusifor", "ctx_rh_G_insular_short", "ctx_rh_G_cingul-Post-dorsal", "ctx_lh_G_postcentral",
    "ctx_rh_G_front_inf-Opercular",
    "ctx-lh-superiortemporal", "ctx-lh-middletemporal", "ctx-lh-superiorfrontal", "ctx-lh-parstriangularis",
    "ctx-rh-middletemporal", "ctx-rh-rostralmiddlefrontal", "ctx-lh-supramarginal", "ctx-lh-precentral",
    "ctx-lh-fusiform", "ctx-rh-insula", "ctx-rh-posteriorcingulate", "ctx-lh-postcentral", "ctx-rh-parsopercularis",
    "Left-Hippocampus", "Right-Hippocampus", "Left-Amygdala",
    "Left-Cerebral-White-Matter", "Right-Cerebral-White-Matter", "Unknown",
}


def test_region_table_uses_real_atlas_names():
    for destrieux, desikan, xyz, freq, _ in synthetic.IEEG_REGIONS:
        assert destrieux in FREESURFER_LABELS and desikan in FREESURFER_LABELS
        hemi_d = "lh" if ("_lh_" in destrieux or destrieux.startswith("Left")) else "rh"
        hemi_k = "lh" if ("-lh-" in desikan or desikan.startswith("Left")) else "rh"
        assert hemi_d == hemi_k == ("lh" if xyz[0] < 0 else "rh")
    # the package's lobe table (used by BaRISTA's spatial vocabulary) knows every cortical label
    table = Path(synthetic.__file__).parent / "tables" / "lobes.tsv"
    if table.exists():
        rows = {(r["atlas"], r["region"]) for r in csv.DictReader(table.open(), delimiter="\t")}
        for destrieux, desikan, *_ in synthetic.IEEG_REGIONS:
            if destrieux.startswith("ctx_"):
                assert ("destrieux", destrieux[7:]) in rows
                assert ("desikan", desikan[7:]) in rows


def test_ieeg_file_layout(ieeg_file):
    with Session(ieeg_file) as s:
        assert s.kinds == ["continuous"]
        assert s.sampling_rate == 256.0 and s.n_samples == 180 * 256 and s.n_channels == 32
        x = s.continuous(0.0, 10.0)
        assert x.dtype == np.float32 and x.shape == (2560, 32)
        ch = s.channels()
        gt = s.ground_truth()
    assert all(re.fullmatch(r"[LR][A-Z]'*[1-8]", n) for n in ch.names), ch.names
    assert ch.names[:2] == ["LA1", "LA2"]
    assert np.isfinite(ch.xyz).all() and np.abs(ch.xyz).max() < 100
    destrieux, desikan = ch.regions["destrieux"], ch.regions["desikan-killiany"]
    assert set(destrieux) | set(desikan) <= FREESURFER_LABELS
    assert "Unknown" in set(destrieux) and "Left-Cerebral-White-Matter" in set(destrieux)
    grey = ~np.isin(destrieux, ["Unknown", "Left-Cerebral-White-Matter", "Right-Cerebral-White-Matter"])
    assert grey.mean() > 0.4
    names_d = [n.decode() if isinstance(n, bytes) else n for n in gt["region_destrieux"]]
    assert len(names_d) == 4
    # a grey-matter contact carries its region's label in both atlases, and that region drives it
    pairs = {d: k for d, k, *_ in synthetic.IEEG_REGIONS}
    for c in np.flatnonzero(grey):
        assert desikan[c] == pairs[destrieux[c]]
        assert names_d[gt["channel_region"][c]] == destrieux[c]
    assert gt["mixing"].shape == (32, 4)
    assert set(gt["responsive_regions"]) == {0, 2}
    # contacts of one shaft are 3.5 mm apart, and the region's contacts sit near each other
    la = [i for i, n in enumerate(ch.names) if n.startswith("LA")]
    assert np.allclose(np.linalg.norm(np.diff(ch.xyz[la], axis=0), axis=1), 3.5)


def _high_gamma_ratio(x, fs, onsets, is_speech):
    """Per channel: 70-110 Hz power 0-400 ms after speech events over that after non-speech ones."""
    b, a = signal.butter(4, [70, 110], btype="band", fs=fs)
    power = signal.filtfilt(b, a, x, axis=0) ** 2
    idx = np.round(onsets * fs).astype(int)
    win = int(0.4 * fs)
    post = np.stack([power[i:i + win].mean(axis=0) for i in idx])  # (events, C)
    return post[is_speech].mean(axis=0) / post[~is_speech].mean(axis=0)


def test_ieeg_events_evoke_responses_in_responsive_regions_only(ieeg_file):
    with Session(ieeg_file) as s:
        x = s.continuous().astype(np.float64)
        fs = s.sampling_rate
        ev = s.events("word_onset")
        gt = s.ground_truth()
        labels = s.channels().regions["destrieux"]
    assert set(ev["label"]) == {"speech", "nonspeech"}
    gaps = np.diff(ev["onset"])
    assert gaps.min() >= 2.0 - 1e-9 and gaps.max() <= 4.0 + 1e-9
    speech = ev["label"] == "speech"
    ratio = _high_gamma_ratio(x, fs, ev["onset"], speech)
    responsive = gt["responsive_regions"]
    mixing = gt["mixing"]
    names_d = [n.decode() if isinstance(n, bytes) else n for n in gt["region_destrieux"]]
    in_responsive = np.isin(labels, [names_d[r] for r in responsive])  # grey matter of a responsive region
    remote = mixing[:, responsive].max(axis=1) < 0.05  # barely any signal from responsive regions
    assert in_responsive.sum() >= 4 and remote.sum() >= 4
    assert ratio[in_responsive].min() > 1.4
    assert np.all(np.abs(ratio[remote] - 1) < 0.2)
    # the ERP: a negative deflection ~100 ms after speech onsets in responsive grey matter
    idx = np.round(ev["onset"][speech] * fs).astype(int)
    epochs = np.stack([x[i - int(0.2 * fs):i + int(0.4 * fs)] for i in idx])  # (events, T, C)
    at_100ms = epochs[:, int(0.3 * fs)] - epochs[:, : int(0.2 * fs)].mean(axis=1)  # (events, C), baseline-corrected
    t_stat = at_100ms.mean(axis=0) / (at_100ms.std(axis=0, ddof=1) / np.sqrt(len(idx)))
    assert np.median(t_stat[in_responsive]) < -3.5 and np.all(t_stat[in_responsive] < -2)
    assert np.all(np.abs(t_stat[remote]) < 3.5)
    # ground truth records which events had a response where
    scale = gt["event_response_scale"]
    assert np.all(scale[~speech] == 0) and np.all(scale[speech][:, responsive] > 0)
    assert np.all(np.delete(scale, responsive, axis=1) == 0)


def test_ieeg_reproducible_and_independent_of_chunking(tmp_path):
    kw = dict(n_channels=10, duration=12.0, sampling_rate=200.0, n_regions=3, seed=5)
    a = synthetic.simulate_ieeg(tmp_path / "a.h5", **kw)
    b = synthetic.simulate_ieeg(tmp_path / "b.h5", **kw)
    c = synthetic.simulate_ieeg(tmp_path / "c.h5", chunk_duration=1.3, **kw)
    d = synthetic.simulate_ieeg(tmp_path / "d.h5", **{**kw, "seed": 6})
    assert _md5(a) == _md5(b)
    with Session(a) as sa, Session(c) as sc, Session(d) as sd:
        assert np.array_equal(sa.continuous(), sc.continuous())
        assert not np.array_equal(sa.continuous(), sd.continuous())
        assert sa.n_samples == 2400 and sa.channels().names[-2:] == ["LB1", "LB2"]  # a short last shaft


def test_ieeg_line_noise_option(tmp_path):
    def peak_ratio(path):
        with Session(path) as s:
            f, p = signal.welch(s.continuous(), fs=s.sampling_rate, nperseg=512, axis=0)
        at = p[np.argmin(np.abs(f - 60))].mean()
        near = p[(np.abs(f - 60) > 3) & (np.abs(f - 60) < 10)].mean()
        return at / near

    kw = dict(n_channels=8, duration=10.0, sampling_rate=256.0, n_regions=2, seed=0)
    assert peak_ratio(synthetic.simulate_ieeg(tmp_path / "noisy.h5", **kw)) > 5
    assert peak_ratio(synthetic.simulate_ieeg(tmp_path / "clean.h5", line_noise=None, **kw)) < 2


def test_ieeg_generator_rejects_bad_arguments(tmp_path):
    with pytest.raises(ValueError, match="n_regions"):
        synthetic.simulate_ieeg(tmp_path / "x.h5", n_regions=1, duration=1)
    with pytest.raises(ValueError, match="sampling_rate"):
        synthetic.simulate_ieeg(tmp_path / "x.h5", sampling_rate=-1, duration=1)


def test_cli_simulate(tmp_path, capsys):
    from neurofm.cli import main

    out = tmp_path / "s.h5"
    assert main(["simulate", "spikes", str(out), "--duration", "2", "--n-units", "5", "--stimulus", "--seed", "3"]) == 0
    assert "wrote" in capsys.readouterr().out
    with Session(out) as s:
        assert s.n_units == 5 and s.stimulus_names == ["gratings"]
        assert json.loads(s.attrs["generator_params"])["seed"] == 3
    out = tmp_path / "i.h5"
    assert main(["simulate", "ieeg", str(out), "--duration", "3", "--n-channels", "6", "--sampling-rate", "200",
                 "--n-regions", "2", "--line-noise", "0"]) == 0
    with Session(out) as s:
        assert s.n_channels == 6 and s.sampling_rate == 200.0
        assert json.loads(s.attrs["generator_params"])["line_noise"] is None


@pytest.fixture(scope="module")
def subject_files(tmp_path_factory) -> list[Path]:
    return synthetic.simulate_ieeg_subjects(tmp_path_factory.mktemp("subjects"), 4, duration=(90.0, 90.0, 90.0, 60.0),
                                            sampling_rate=256.0, seed=2)


def test_subjects_share_parcels_but_not_coordinates(subject_files):
    from neurofm.atlas import SpatialVocab

    channels = []
    for p in subject_files:
        with Session(p) as s:
            channels.append(s.channels())
            assert s.behavior_names == ["grip_force"] and "word_onset" in s.event_names
    labels = [set(ch.regions["destrieux"]) - {"Unknown", "Left-Cerebral-White-Matter", "Right-Cerebral-White-Matter"}
              for ch in channels]
    assert len({frozenset(x) for x in labels}) > 1  # each subject its own layout
    assert labels[-1] <= set().union(*labels[:-1])  # the held-out subject's parcels were all seen
    vocab = SpatialVocab.from_channels(channels[:-1])
    held = vocab.encode(channels[-1])
    grey = np.isin(channels[-1].regions["destrieux"], sorted(labels[-1]))
    assert (held["parcel"][grey] > 0).all()  # every grey-matter contact maps to a pretrained parcel row
    # the same region sits at different coordinates in different subjects (own space, own placement)
    region = sorted(set.intersection(*labels))[0]
    centres = [np.asarray(ch.xyz)[np.asarray(ch.regions["destrieux"]) == region].mean(0) for ch in channels]
    assert min(np.linalg.norm(a - b) for i, a in enumerate(centres) for b in centres[i + 1:]) > 3.0


def test_subject_grip_force_follows_behaviour_region_high_gamma(subject_files):
    from neurofm.baselines import band_power

    with Session(subject_files[0]) as s:
        x = s.continuous()
        fs = s.sampling_rate
        regions = np.asarray(s.channels().regions["destrieux"])
        ts, force = s.behavior("grip_force")
        assert s.h5["behavior/grip_force"].attrs["unit"] == "mN" and force.min() >= 200.0
    x = np.asarray(x, dtype=np.float64)
    motor = np.isin(regions, synthetic.IEEG_BEHAVIOR_REGIONS)
    assert motor.any()
    seg = int(fs)
    n = len(x) // seg
    segs = x[: n * seg].reshape(n, seg, -1).transpose(0, 2, 1)  # (n, C, T)
    hg = band_power(segs, fs, {"hg": (70.0, 120.0)})[..., 0]  # (n, C) log power
    f = np.array([force[(ts >= i) & (ts < i + 1)].mean() for i in range(n)])
    r_motor = np.corrcoef(hg[:, motor].mean(1), f)[0, 1]
    r_other = np.corrcoef(hg[:, ~motor & np.char.startswith(regions.astype(str), "ctx")].mean(1), f)[0, 1]
    assert r_motor > 0.6 and r_motor > r_other + 0.3


def test_subjects_reproducible_and_single_subject_default_unchanged(tmp_path, subject_files):
    again = synthetic.simulate_ieeg_subjects(tmp_path / "again", 4, duration=(90.0, 90.0, 90.0, 60.0),
                                             sampling_rate=256.0, seed=2)
    with Session(again[1]) as a, Session(subject_files[1]) as b:
        assert np.array_equal(np.asarray(a.h5["continuous/data"]), np.asarray(b.h5["continuous/data"]))
    with pytest.raises(ValueError, match="n_subjects"):
        synthetic.simulate_ieeg_subjects(tmp_path / "one", 1)
    with pytest.raises(ValueError, match="behavior_regions"):
        synthetic.simulate_ieeg(tmp_path / "b.h5", n_regions=8, duration=10.0, behavior="grip_force")


def test_cli_simulate_subjects(tmp_path, capsys):
    from neurofm.cli import main

    assert main(["simulate", "ieeg", str(tmp_path / "subs"), "--subjects", "3", "--duration", "20",
                 "--sampling-rate", "128"]) == 0
    assert "hold out sub-03.h5" in capsys.readouterr().out
    paths = sorted((tmp_path / "subs").glob("sub-*.h5"))
    assert len(paths) == 3
    with Session(paths[2]) as s:
        assert s.n_channels == 30 and s.behavior_names == ["grip_force"]


def _place_fingerprint(path) -> str:
    """sha256 of a place-cell file's spikes, behaviour, ground truth and attributes."""
    h = hashlib.sha256()
    with Session(path) as s:
        for a in s.spikes():
            h.update(np.asarray(a).tobytes())
        for b in ("position", "speed"):
            for a in s.behavior(b):
                h.update(np.asarray(a).tobytes())
        for k, v in sorted(s.ground_truth().items()):
            h.update(k.encode())
            h.update(np.asarray(v).tobytes())
        h.update(repr(sorted((k, str(v)) for k, v in s.attrs.items())).encode())
    return h.hexdigest()


# Written by simulate_place_cells BEFORE units_seed existed (the code of commit 802878d).
PLACE_SEED7_SHA256 = "ef7b587b7f6c6bfc8faec639825a8959bbdb129a6b3218c6f1f035332eeab92c"
PLACE_SEED7 = dict(n_units=12, duration=120, rate_hz=1.0, seed=7, run_s=20, rest_s=10)


def test_place_default_unchanged_by_units_seed(tmp_path):
    """A call without units_seed (or with units_seed = seed) writes the file it wrote before the argument existed."""
    assert _place_fingerprint(synthetic.simulate_place_cells(tmp_path / "a.h5", **PLACE_SEED7)) == PLACE_SEED7_SHA256
    same = synthetic.simulate_place_cells(tmp_path / "b.h5", units_seed=PLACE_SEED7["seed"], **PLACE_SEED7)
    assert _place_fingerprint(same) == PLACE_SEED7_SHA256


def test_place_sibling_days_share_units_not_spikes(tmp_path):
    """units_seed fixes the animal's units; seed draws the day's behaviour and spikes."""
    args = dict(n_units=20, duration=200, rate_hz=1.0, run_s=20, rest_s=10)
    day0 = synthetic.simulate_place_cells(tmp_path / "d0.h5", seed=11, **args)
    day1 = synthetic.simulate_place_cells(tmp_path / "d1.h5", seed=12, units_seed=11, **args)
    other = synthetic.simulate_place_cells(tmp_path / "o.h5", seed=12, **args)  # another animal, day 1's seed
    with Session(day0) as s0, Session(day1) as s1, Session(other) as so:
        g0, g1, go = s0.ground_truth(), s1.ground_truth(), so.ground_truth()
        for k in ("place_center", "place_width", "place_gain", "speed_gain", "baseline_rate"):
            np.testing.assert_array_equal(g0[k], g1[k])  # the same units: no drift across days
            assert not np.array_equal(g1[k], go[k]) or not g1[k].any()
        assert list(s0.unit_ids) == list(s1.unit_ids)
        assert s0.subject_id == s1.subject_id != so.subject_id
        # the day comes from seed: day 1 has the other animal's trajectory, not day 0's
        np.testing.assert_array_equal(s1.behavior("position")[1], so.behavior("position")[1])
        assert not np.array_equal(s0.behavior("position")[1], s1.behavior("position")[1])
        t0, t1 = s0.spikes()[0], s1.spikes()[0]
        assert len(t0) != len(t1) or not np.array_equal(t0, t1)
        assert "units_seed" in str(s1.attrs.get("generator_params", "")) and "units_seed" not in str(
            s0.attrs.get("generator_params", ""))
